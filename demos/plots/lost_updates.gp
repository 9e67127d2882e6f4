# Updates lost without a lock against increments (data: race_condition --csv:
# increments,expected,lost,lost_percent).
load scripts.'/common.gp'
set title 'Race condition: 4 processes add 1 to a RawValue without a lock'
set logscale x
set format x '10^{%L}'
set xlabel 'increments per process'
set ylabel 'updates lost, % of all'
set yrange [0:*]
plot data skip 1 using 1:4 with linespoints pt 7 ps 1.5 lw 2 title 'lost updates'
