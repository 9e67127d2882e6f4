#!/bin/sh
# The "mpi" context's bench rows, under mpirun on loopback, from a build folder:
#   demos/bench_mpi.sh BUILD_DIR [ROUNDS]
# mpi.map_chunk1: the pool's map with chunksize 1 against the bare MPI task farm
# (demos/mpi_farm.c), same 3 worker ranks, 3 items in flight per rank (the pool's chunks in
# flight per rank, lib/pool_mpi.c's DEPTH); each side runs ROUNDS jobs in turn, the best job
# counts (noise only adds time); the ratio is libmp / farm.
# mpi.idle: the CPU an idle pool's ranks use. mpi.calc_pi: demos/mpi_calc_pi's speed-up.
# The machine's load is printed with the figures: oversubscribed ranks share its cores.
set -e
build=${1:?usage: bench_mpi.sh BUILD_DIR [ROUNDS]}
rounds=${2:-5}
root=
[ "$(id -u)" = 0 ] && root=--allow-run-as-root
run() {
  mpirun -np 4 --oversubscribe $root --mca btl self,vader --mca oob_tcp_if_include lo "$@"
}
best() { sort -n | head -1; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores"
farm=$(mktemp)
pool=$(mktemp)
i=0
while [ $i -lt "$rounds" ]; do
  run "$build/demos/mpi_farm" 5000 3 3 | sed -n 's/.*: \([0-9]*\) ns.*/\1/p' >>"$farm"
  run "$build/demos/bench_mpi" map 5000 3 | sed -n 's/.*: \([0-9]*\) ns.*/\1/p' >>"$pool"
  i=$((i + 1))
done
f=$(best <"$farm")
p=$(best <"$pool")
rm -f "$farm" "$pool"
echo "mpi.map_chunk1: libmp $p ns/item, bare farm $f ns/item, ratio $(awk "BEGIN { printf \"%.2f\", $p / $f }")"
run "$build/demos/bench_mpi" idle 5
run "$build/demos/mpi_calc_pi" 400000000 48 | sed 's/^/mpi.calc_pi: /'
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
