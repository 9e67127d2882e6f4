# The lecture's overhead study (data: overhead --csv:
# study,pool,N,tasks,workers,min_s,median_s,serial_s).
load scripts.'/common.gp'
set multiplot layout 1,2 title 'Overhead of a fresh Pool per call (starmap of calc\_pi)'
set title 'Vary the work: 4 tasks of N samples'
set key bottom right font ',9' width -2
set logscale xy
set format x '10^{%L}'
set format y '%g'
set xlabel 'N samples per task'
set ylabel 'seconds per call'
plot data skip 1 using 3:(strcol(1) eq 'work' ? $6 : NaN) with linespoints pt 7 title 'Pool() min', \
     data skip 1 using 3:(strcol(1) eq 'work' ? $7 : NaN) with linespoints pt 6 title 'Pool() median', \
     data skip 1 using 3:(strcol(1) eq 'work' ? $8 : NaN) with linespoints pt 5 title 'serial', \
     0.3 with lines dt 2 lc rgb 'grey' title "Python (lecture): 0.3 s"
unset logscale y
unset format x
set format y '%g'
set logscale x 2
set xtics (1, 2, 4, 8, 16)
set xrange [0.8:20]
set title 'Vary the workers: n tasks of 10^6/n samples'
set key top left
set xlabel 'n'
set yrange [0:*]
plot data skip 1 using 4:(strcol(1) eq 'workers' && strcol(2) eq 'default' ? $6 : NaN) \
       with linespoints pt 7 title 'Pool() (as the lecture), min', \
     data skip 1 using 4:(strcol(1) eq 'workers' && strcol(2) eq 'n' ? $6 : NaN) \
       with linespoints pt 5 title 'Pool(n), min'
unset multiplot
