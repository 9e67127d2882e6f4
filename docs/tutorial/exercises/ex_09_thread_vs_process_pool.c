/*
 * Exercise 09: a thread pool is not a process pool
 * (docs/tutorial/09-thread-vs-process-pool.md).
 *
 * Each worker gets a scratch buffer from the initializer and uses it in every task. The
 * check runs this on pools of processes (fork, spawn, forkserver) and of threads.
 * Check: meson test -C build --suite exercises ex_09_thread_vs_process_pool --print-errorlogs
 */
#include "exercises.h"

#include <stdlib.h>

/* TODO(student): right for a pool of processes, wrong for a pool of threads. Why? Make
 * each worker have its own buffer in both kinds of pool (one word is enough). */
static long *scratch;

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
