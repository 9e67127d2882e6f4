#!/bin/sh
# Runs the measuring demos with --csv and draws each figure to PNG and SVG with gnuplot.
# Usage: plots.sh GNUPLOT SCRIPTS_DIR OUT_DIR AMDAHL OVERHEAD FORK_VS_SPAWN RACE_CONDITION
# (meson's `plots` target passes them: meson compile -C build plots).
set -e
gnuplot=$1 scripts=$2 out=$3
mkdir -p "$out"

# measure NAME EXE ARGS...: the demo's CSV in OUT_DIR/NAME.csv, its explanations in .log.
measure() {
  name=$1
  shift
  echo "plots: running $(basename "$1") ${2:-} --csv"
  if ! "$@" --csv >"$out/$name.csv" 2>"$out/$name.log"; then
    echo "plots: $(basename "$1") failed; see $out/$name.log" >&2
    exit 1
  fi
}
measure amdahl "$4"
measure overhead "$5"
measure fork_vs_spawn "$6"
measure race_condition "$7"

# draw FIGURE DATA
draw() {
  for kind in png svg; do
    "$gnuplot" -e "scripts='$scripts'; data='$out/$2.csv'; term_kind='$kind'; out='$out/$1.$kind'" \
      "$scripts/$1.gp"
  done
  echo "plots: $out/$1.png and .svg"
}
draw speedup amdahl
draw overhead overhead
draw start_costs fork_vs_spawn
draw lost_updates race_condition
