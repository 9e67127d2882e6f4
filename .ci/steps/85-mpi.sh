# The "mpi" context: Open MPI installed, a build with -Dmpi=enabled, the mpi suite (the
# Pool's tests under mpirun -np 4 on loopback, a build-id mismatch, a rank killed mid-map),
# and demos/mpi_calc_pi under mpirun. About a minute here, most of it apt.
apt-get install -y -qq --no-install-recommends libopenmpi-dev openmpi-bin >/dev/null
{ [ -d build-mpi ] || meson setup build-mpi -Dwerror=true -Dmpi=enabled >/dev/null; }
meson compile -C build-mpi >/dev/null
meson test -C build-mpi --print-errorlogs --suite mpi
mpi_root=
[ "$(id -u)" = 0 ] && mpi_root=--allow-run-as-root
mpirun -np 4 --oversubscribe $mpi_root --mca btl self,vader --mca oob_tcp_if_include lo \
  build-mpi/demos/mpi_calc_pi 20000000 12
echo "mpi: suite and demo passed (Open MPI $(mpirun --version | head -1 | awk '{print $NF}'))"
