# What starting a child costs per start method (data: fork_vs_spawn --csv:
# method,first_us,mean_us,min_us).
load scripts.'/common.gp'
set title 'Start and join of a child that returns at once'
set ylabel 'microseconds'
set yrange [0:*]
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key top left
plot data skip 1 using 4:xtic(1) title 'min', \
     data skip 1 using 3 title 'mean', \
     data skip 1 using 2 title 'first (forkserver: with its server)'
