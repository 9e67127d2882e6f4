#!/bin/sh
# Runs a test program as an MPI job of 4 ranks on loopback (meson test --suite mpi).
#   mpi_run.sh pass PROGRAM [ARGS]: the job must succeed.
#   mpi_run.sh dies PROGRAM [ARGS]: a rank dies; the job must end non-zero within 30 s,
#                                   with a message naming the rank.
#   mpi_run.sh mpmd PROGRAM ARG OTHER: PROGRAM ARG as rank 0, OTHER as ranks 1-3; must succeed.
# Exit 77 (skipped) when mpirun is missing.
mode=$1
shift
if ! command -v mpirun >/dev/null 2>&1; then
  echo "mpirun not found: install openmpi-bin to run the mpi suite"
  exit 77
fi
root=
[ "$(id -u)" = 0 ] && root=--allow-run-as-root
if [ "$mode" = mpmd ]; then
  timeout -k 5 60 mpirun --oversubscribe $root --mca btl self,vader \
    --mca oob_tcp_if_include lo -np 1 "$1" "$2" : -np 3 "$3"
  exit $?
fi
if [ "$mode" = pass ]; then
  timeout -k 5 240 mpirun -np 4 --oversubscribe $root --mca btl self,vader \
    --mca oob_tcp_if_include lo "$@"
  exit $?
fi
out=$(mktemp)
start=$(date +%s)
timeout -k 5 30 mpirun -np 4 --oversubscribe $root --mca btl self,vader \
  --mca oob_tcp_if_include lo "$@" >"$out" 2>&1
rc=$?
took=$(($(date +%s) - start))
cat "$out"
if [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$took" -ge 30 ]; then
  echo "FAIL: the job with a dead rank ended with status $rc after ${took}s (0 or 124: hung)"
  rm -f "$out"
  exit 1
fi
if ! grep -q "rank 2" "$out"; then
  echo "FAIL: no message names rank 2"
  rm -f "$out"
  exit 1
fi
echo "OK: the job ended with status $rc after ${took}s, naming rank 2"
rm -f "$out"
