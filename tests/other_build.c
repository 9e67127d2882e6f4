/*
 * Another libmp program, a different build (and ELF build-id) from the test programs. The
 * process tests make it the executable of "spawn" and "forkserver": its libmp takes the
 * child over, finds that the requested function belongs to another build, and the start
 * must fail with MP_ERESOLVE. Run directly, it only prints a line.
 */
#include <stdio.h>

#include "mp.h"

int main(void) {
  printf("libmp other build (%s)\n", mp_strerror(MP_ERESOLVE));
  return 0;
}
