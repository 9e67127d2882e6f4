/*
 * Exercise 08: the Pool (docs/tutorial/08-pool.md).
 *
 * Data parallelism (one task over many numbers) and task parallelism (two different tasks
 * at once). The check runs it on pools of fork, spawn and forkserver workers, and of
 * threads. Check: meson test -C build --suite exercises ex_08_pool --print-errorlogs
 */
#include "exercises.h"

#include <stdlib.h>
#include <unistd.h>

int ex08_is_prime(const void *arg, size_t size, void *result, size_t *result_size) {
  long x = *(const long *)arg;
  ex08_result_t *r = result;
  (void)size;
  (void)result_size;
  (void)x;
  (void)r;
  /* TODO(student): r->value = 1 if x is prime, else 0; r->pid = getpid(). */
  return mp_task_fail("TODO(student): ex08_is_prime is not written yet");
}

int ex08_count_primes(mp_pool_t *pool, const long *numbers, size_t n, long *count,
                      int *worker_pid) {
  (void)pool;
  (void)numbers;
  (void)n;
  (void)count;
  (void)worker_pid;
  /* TODO(student): map ex08_is_prime over the numbers (mp_pool_map: items of sizeof(long),
   * results of sizeof(ex08_result_t)), then count the primes and give results[0].pid. */
  return MP_ENOSYS;
}

int ex08_two_tasks(mp_pool_t *pool, const ex08_job_t *a, const ex08_job_t *b,
                   ex08_result_t *digits, ex08_result_t *divisors) {
  (void)pool;
  (void)a;
  (void)b;
  (void)digits;
  (void)divisors;
  /* TODO(student): submit ex08_digit_sum on a and ex08_divisor_count on b with
   * mp_pool_apply_async, then collect both (mp_async_result_get) and free the requests. */
  return MP_ENOSYS;
}
