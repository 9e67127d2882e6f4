# Speed-up against workers, with Amdahl's bound (data: amdahl --csv:
# workers,min_s,median_s,speedup,bound,bound_cores).
load scripts.'/common.gp'
set title "Amdahl's law: speed-up of a job 20% serial, against workers"
set xlabel 'workers in the Pool'
set ylabel 'speed-up over one worker (min of the runs)'
set xrange [1:*]
set yrange [0:*]
set xtics 1
plot data skip 1 using 1:1 with lines lc rgb 'grey' dt 3 title 'linear (no serial part)', \
     data skip 1 using 1:5 with lines lw 2 lc rgb '#1f77b4' title "Amdahl's bound 1/(s+(1-s)/n)", \
     data skip 1 using 1:6 with lines lw 2 dt 2 lc rgb '#ff7f0e' title 'bound with min(n, cores)', \
     data skip 1 using 1:4 with linespoints pt 7 ps 1.5 lc rgb '#d62728' title 'measured'
