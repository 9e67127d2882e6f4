# The trace (docs/trace.md): its suite ran in the README's test command (jansson is
# installed there); here the two demos of the issue, traced, must give JSON that parses and
# a text timeline.
trace_dir=$(mktemp -d)
for demo in deadlock producer_consumer; do
  MP_TRACE="$trace_dir/$demo.json" ./build/demos/$demo fork 3 >/dev/null
  python3 -m json.tool "$trace_dir/$demo.json" >/dev/null
  ./build/demos/timeline "$trace_dir/$demo.json" >/dev/null
done
rm -rf "$trace_dir"
echo "trace: deadlock and producer_consumer traces parse and print"
