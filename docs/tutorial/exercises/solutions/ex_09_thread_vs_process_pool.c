/* Exercise 09, a solution: the scratch buffer is per thread (_Thread_local), so each worker
 * has its own in a pool of threads as in a pool of processes. */
#include "exercises.h"

#include <string.h>

static _Thread_local long scratch[16];

int ex09_init(const void *arg, size_t size) {
  (void)arg;
  (void)size;
  memset(scratch, 0, sizeof scratch); /* a fresh buffer for this worker */
  return 0;
}

int ex09_task(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  scratch[0] = *(const long *)arg;
  ex09_pause();
  *(long *)result = 3 * scratch[0];
  return 0;
}
