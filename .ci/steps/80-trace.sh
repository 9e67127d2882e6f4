# The trace (docs/trace.md): its suite reads traces back with jansson, which the README's
# test command does not install, so it runs here in a build of its own; then the two demos
# of the issue, traced, must give JSON that parses and a text timeline. About 2 minutes
# (a build of its own) on the 2-core machine.
apt-get install -y -qq libjansson-dev >/dev/null
{ [ -d build-trace ] || meson setup build-trace -Dwerror=true >/dev/null; }
meson compile -C build-trace >/dev/null
meson test -C build-trace --print-errorlogs trace
trace_dir=$(mktemp -d)
for demo in deadlock producer_consumer; do
  MP_TRACE="$trace_dir/$demo.json" ./build-trace/demos/$demo fork 3 >/dev/null
  python3 -m json.tool "$trace_dir/$demo.json" >/dev/null
  ./build-trace/demos/timeline "$trace_dir/$demo.json" >/dev/null
done
rm -rf "$trace_dir"
echo "trace: suite passed; deadlock and producer_consumer traces parse and print"
