# The suites under ThreadSanitizer (gcc's: libtsan2 comes with gcc; clang works the same with
# CC=clang). A report ends the process that made it (halt_on_error, exit code 66), so the
# test that triggered it fails. handle_segv=0: tests kill children with SIGSEGV on purpose,
# and TSan would catch the signal and exit 66 instead.
# Whole suites: heap, sharedctypes, synchronize, process, connection, shared_memory,
# pool_jobs, pool_shared. Of the
# pool and the queues, the test cases that fit TSan's pace (Check's CK_RUN_CASE, one case
# a run): left out are the pool's "dead" and "end" cases (zygote_killed can fail under
# TSan's deferred signals, docs/architecture.md, "Under ThreadSanitizer"), its "faults" case
# (test_destroyed_pool uses a freed pool on purpose, which TSan reports before libmp can
# abort) and the queues' "processes" (its 64 MiB message outlasts the test's own 30 s waits
# under TSan). The whole
# suite takes about 20 minutes under TSan here; this, about 9 with the build.
apt-get install -y -qq libtsan2 >/dev/null
{ [ -d build-tsan ] || meson setup build-tsan -Dwerror=true -Db_sanitize=thread \
    -Db_lundef=false >/dev/null; }
export TSAN_OPTIONS=halt_on_error=1:handle_segv=0 CK_TIMEOUT_MULTIPLIER=4
meson test -C build-tsan --print-errorlogs --timeout-multiplier 4 \
  heap sharedctypes synchronize process connection shared_memory pool_jobs pool_shared
for tcase in map imap forms apply held in_flight forged workers input; do
  CK_RUN_CASE=$tcase meson test -C build-tsan --print-errorlogs --timeout-multiplier 4 \
    --logbase "tsan-pool-$tcase" pool
done
# Threads that race a close, once more on one CPU: TSan's reports there depend on the order in
# which the threads release the end's lock, which one CPU changes.
CK_RUN_CASE="close under a call" meson test -C build-tsan --print-errorlogs \
  --timeout-multiplier 4 --wrapper 'taskset -c 0' --logbase tsan-connection-one-cpu connection
for tcase in local readiness deaths flavors; do
  CK_RUN_CASE=$tcase meson test -C build-tsan --print-errorlogs --timeout-multiplier 4 \
    --logbase "tsan-queues-$tcase" queues
done
unset TSAN_OPTIONS CK_TIMEOUT_MULTIPLIER
