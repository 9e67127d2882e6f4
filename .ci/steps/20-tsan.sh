# The suites that found races under ThreadSanitizer (gcc's: libtsan2 comes with gcc; clang
# works the same with CC=clang). A report ends the process that made it (halt_on_error,
# exit code 66), so the test that triggered it fails. handle_segv=0: tests kill children with
# SIGSEGV on purpose, and TSan would catch the signal and exit 66 instead.
# Left out for time (the whole suite takes about 20 minutes under TSan here): queues (its
# 64 MiB message outlasts the test's own 30 s waits), pool (its initializer test writes one
# global from every thread worker, a race in the test; zygote_killed can fail under TSan's
# deferred signals, see docs/architecture.md, "Under ThreadSanitizer"), the -no-pidfd runs
# and the demos. About 7 minutes, build included, on the 2-core machine under load.
apt-get install -y -qq libtsan2 >/dev/null
{ [ -d build-tsan ] || meson setup build-tsan -Dwerror=true -Db_sanitize=thread \
    -Db_lundef=false >/dev/null; }
TSAN_OPTIONS=halt_on_error=1:handle_segv=0 CK_TIMEOUT_MULTIPLIER=4 \
  meson test -C build-tsan --print-errorlogs --timeout-multiplier 4 \
  heap sharedctypes synchronize process connection shared_memory
