# The suite under AddressSanitizer and UndefinedBehaviorSanitizer; any report fails the test
# that triggered it.
ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  bash -c '{ [ -d build-san ] || meson setup build-san -Dwerror=true \
      -Db_sanitize=address,undefined -Db_lundef=false; } &&
    meson test -C build-san --print-errorlogs'
