# The libFuzzer targets of tests/fuzz, built with clang, each run for 20 s (mpi_wire 10) from
# its seed corpus (new inputs go to a scratch folder, not into the tree). A crash, a leak or a
# sanitizer report fails CI and leaves its reproducer in the scratch folder, printed below.
# About 4 minutes on 2 loaded cores, from scratch: 2.5 to build, 1.8 to run.
apt-get install -y -qq clang libclang-rt-14-dev >/dev/null
{ [ -d build-fuzz ] || CC=clang meson setup build-fuzz -Dfuzz=enabled -Dwerror=true -Ddemos=false >/dev/null; }
fuzzers=(spawn_request forkserver_records connection_frames queue_ring tracker_records)
# What crosses between MPI ranks: built where Open MPI was found (10 s: two small checks).
ninja -C build-fuzz -t targets all 2>/dev/null | grep -q '^tests/fuzz/fuzz_mpi_wire:' &&
  fuzzers+=(mpi_wire)
meson compile -C build-fuzz "${fuzzers[@]/#/fuzz_}" >/dev/null
for target in "${fuzzers[@]}"; do
  scratch=$(mktemp -d)
  log="$scratch.log"
  seconds=20
  [ "$target" = mpi_wire ] && seconds=10
  if ! (cd "$scratch" && "$OLDPWD/build-fuzz/tests/fuzz/fuzz_$target" -max_total_time=$seconds \
          -max_len=4096 "$scratch" "$OLDPWD/tests/fuzz/corpus/$target" >"$log" 2>&1); then
    tail -40 "$log"
    echo "fuzz_$target failed: its reproducer (crash-*, leak-*, timeout-*) is in $scratch"
    false
  fi
  echo "fuzz_$target: $(grep -a DONE "$log" | tail -1)"
done
