# The trace (docs/trace.md): its suite ran in the README's test command (jansson is
# installed there); here the two demos of the issue, traced, must give JSON that holds
# events from at least two processes, at least one of them a lock or queue event, and a text
# timeline (a trace with no events parses too: parsing alone proves nothing).
meson compile -C build >/dev/null  # the test command builds only what the tests need, not the demos
trace_dir=$(mktemp -d)
for demo in deadlock producer_consumer; do
  MP_TRACE="$trace_dir/$demo.json" ./build/demos/$demo fork 3 >/dev/null
  python3 -c '
import json, sys
events = [e for e in json.load(open(sys.argv[1]))["traceEvents"] if e.get("ph") != "M"]
pids = {e["pid"] for e in events}
sync = [e for e in events if e.get("cat", "").split(".")[0] in ("lock", "queue")]
if len(pids) < 2 or not sync:
    sys.exit("%s: events from %d process(es), %d lock or queue events: want 2 and 1"
             % (sys.argv[1], len(pids), len(sync)))
' "$trace_dir/$demo.json"
  ./build/demos/timeline "$trace_dir/$demo.json" >/dev/null
done
rm -rf "$trace_dir"
echo "trace: deadlock and producer_consumer traces hold events of 2+ processes, with locks or queues, and print"
