#!/bin/sh
# timeline on trace files it did not write (check_timeline.sh TIMELINE): each is read and
# printed, exit 0, its bad events left out. A "dur" below zero on a wait that gave up once
# put the wait's '!' at a negative column, written before the lane's buffer (far below:
# SIGSEGV; a little below: the heap silently overwritten, which AddressSanitizer reports);
# timestamps at both ends of a double made the column width infinite and a column NaN,
# cast to int; a timestamp of inf or nan is no time either.
timeline=$1
dir=$(mktemp -d) || exit 2
trap 'rm -rf "$dir"' EXIT
fail=0
write() { # name, the fields of the wait's time, those of a later mark's
  cat >"$dir/$1.json" <<JSON
{"traceEvents":[
{"name":"a","cat":"wait","ph":"X","pid":1,"tid":1,$2,"args":{"timed_out":true}},
{"name":"b","cat":"mark","ph":"i","pid":1,"tid":1,"ts":100.000,"s":"t","args":{}},
{"name":"c","cat":"mark","ph":"i","pid":1,"tid":1,$3,"s":"t","args":{}}
],
"displayTimeUnit":"ms",
"otherData":{"libmp_trace":1,"processes":1,"records":3,"dropped":0}}
JSON
}
write far_negative_dur '"ts":0.000,"dur":-1000000000000.0' '"ts":50.000'
write near_negative_dur '"ts":0.000,"dur":-1000.0' '"ts":50.000'
write huge_span '"ts":-1e308,"dur":0.0' '"ts":1e308'
write infinite_ts '"ts":0.000,"dur":1.0' '"ts":1e999'
write nan_ts '"ts":nan,"dur":1.0' '"ts":50.000'
for f in far_negative_dur near_negative_dur huge_span infinite_ts nan_ts; do
  "$timeline" "$dir/$f.json" >"$dir/$f.out" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    [ $rc -ge 128 ] && how="died of signal $((rc - 128))" || how="exited $rc"
    echo "FAIL: timeline $f.json $how:" >&2
    cat "$dir/$f.out" >&2
    fail=1
  fi
done
exit $fail
