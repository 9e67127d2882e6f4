/* Exercise 09, a solution: the scratch buffer is per thread (_Thread_local), so each worker
 * has its own in a pool of threads as in a pool of processes. */
#include "exercises.h"

#include <stdlib.h>

static _Thread_local long *scratch;

int ex09_init(const void *arg, size_t size) {
  (void)arg;
  (void)size;
  scratch = malloc(16 * sizeof *scratch);
  return scratch ? 0 : mp_task_fail("no memory for the scratch buffer");
}

int ex09_task(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  scratch[0] = *(const long *)arg;
  ex09_pause();
  *(long *)result = 3 * scratch[0];
  return 0;
}
