# The suite under AddressSanitizer and UndefinedBehaviorSanitizer; any report fails the test
# that triggered it. Sanitized children start several times slower (a spawn re-executes an
# instrumented image), so Check's timeouts and the tests' own time bounds are tripled
# (CK_TIMEOUT_MULTIPLIER, read by tests/mp_test.h too), and meson's with them.
ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
CK_TIMEOUT_MULTIPLIER=3 \
  bash -c '{ [ -d build-san ] || meson setup build-san -Dwerror=true \
      -Db_sanitize=address,undefined -Db_lundef=false; } &&
    meson test -C build-san --print-errorlogs --timeout-multiplier 3'
