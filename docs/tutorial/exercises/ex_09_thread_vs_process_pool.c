/*
 * Exercise 09: a thread pool is not a process pool
 * (docs/tutorial/09-thread-vs-process-pool.md).
 *
 * Each worker has a scratch buffer, cleared by the initializer, that every task uses. The
 * check runs this on pools of processes (fork, spawn, forkserver) and of threads.
 * Check: meson test -C build --suite exercises ex_09_thread_vs_process_pool --print-errorlogs
 */
#include "exercises.h"

#include <string.h>

/* TODO(student): right for a pool of processes, wrong for a pool of threads. Why? Make
 * each worker have its own buffer in both kinds of pool (one word is enough). */
static long scratch[16];

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
