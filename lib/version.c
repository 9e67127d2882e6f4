/* The version of the library itself, against the one a program was compiled with. */
#include "internal.h"

const char *mp_version(void) {
  return MP_VERSION_STRING;
}
