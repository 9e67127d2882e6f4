# The figures of demos/plots: gnuplot draws each from a measuring demo's --csv, to PNG and
# SVG (about two minutes: the package, a build without the tests, half a minute of demos).
apt-get install -y -qq gnuplot-nox >/dev/null
{ [ -d build-plots ] || meson setup build-plots -Dwerror=true -Dtests=false >/dev/null; }
meson compile -C build-plots plots
for fig in speedup overhead start_costs lost_updates; do
  for kind in png svg; do
    test -s "build-plots/demos/plots/$fig.$kind"
  done
done
echo "plots: 4 figures drawn, as PNG and SVG, in build-plots/demos/plots/"
