/* A build without MPI (meson option mpi): the "mpi" context is refused with a sentence. */
#include "pool_launcher.h"

int mp__mpi_get_context(mp_context_t **ctx) {
  (void)ctx;
  return mp__error(MP_EMETHOD, "the \"mpi\" context: this libmp was built without MPI "
                               "(install Open MPI's libopenmpi-dev and set up the build "
                               "with -Dmpi=enabled, then run the program with mpirun)");
}
