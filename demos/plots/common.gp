# Shared by the figures: the terminal (png or svg) and how the CSV files are read. Each
# figure script is run by plots.sh as
#   gnuplot -e "scripts='DIR'; data='FILE.csv'; term_kind='png'; out='FILE.png'" x.gp
if (term_kind eq 'svg') {
  set terminal svg size 900,560 dynamic enhanced font 'sans,12'
} else {
  set terminal pngcairo size 900,560 enhanced font 'sans,11'
}
set output out
set datafile separator ','
set key top left box opaque
set grid
