#!/bin/sh
# Review rev-trace: demos/timeline on a trace file it did not write. A "dur" below zero on a
# wait that gave up ("timed_out") makes its column b = (ts + dur - t0) / per_col negative,
# and the instants' pass writes t->row[b] (x runs from b while x <= b && x < width): a write
# before the lane's buffer. A far one (here b near INT_MIN, the cast of -7e11) is a
# SIGSEGV; a near one (dur of -1000 us: row[-710]) silently corrupts the heap. Only
# "ts" >= t0 is assumed, nothing bounds dur, and the same holds for "ts":1e308 with
# "ts":-1e308 (per_col infinite, b = NaN cast to int).
# Usage: tests/review/timeline_crafted.sh build/demos/timeline
# Exits 0 if timeline refuses or survives every file, 1 (saying which) otherwise.
timeline=${1:-build/demos/timeline}
dir=$(mktemp -d) || exit 2
trap 'rm -rf "$dir"' EXIT
fail=0
write() { # name, first event's fields
  cat > "$dir/$1.json" <<JSON
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
write huge_span '"ts":-1e308,"dur":0.0' '"ts":1e308'
for f in far_negative_dur huge_span; do
  "$timeline" "$dir/$f.json" > /dev/null 2>&1
  rc=$?
  if [ $rc -ge 128 ]; then
    echo "FAIL: timeline $f.json died of signal $((rc - 128))"
    fail=1
  else
    echo "ok: timeline $f.json exited $rc"
  fi
done
exit $fail
