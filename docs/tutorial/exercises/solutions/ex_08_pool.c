/* Exercise 08, a solution: map for the same task over many items, apply_async for two
 * different tasks at once. */
#include "exercises.h"

#include <stdlib.h>
#include <unistd.h>

int ex08_is_prime(const void *arg, size_t size, void *result, size_t *result_size) {
  long x = *(const long *)arg;
  ex08_result_t *r = result;
  (void)size;
  (void)result_size;
  r->value = x >= 2;
  for (long d = 2; d * d <= x && r->value; d++)
    r->value = x % d != 0;
  r->pid = (int)getpid();
  return 0;
}

int ex08_count_primes(mp_pool_t *pool, const long *numbers, size_t n, long *count,
                      int *worker_pid) {
  ex08_result_t *results = calloc(n ? n : 1, sizeof *results);
  if (!results)
    return MP_ENOMEM;
  int rc = mp_pool_map(pool, ex08_is_prime, numbers, n, sizeof *numbers, results,
                       sizeof *results, 0);
  if (rc == 0) {
    *count = 0;
    for (size_t i = 0; i < n; i++)
      *count += results[i].value;
    *worker_pid = n ? results[0].pid : 0;
  }
  free(results);
  return rc;
}

int ex08_two_tasks(mp_pool_t *pool, const ex08_job_t *a, const ex08_job_t *b,
                   ex08_result_t *digits, ex08_result_t *divisors) {
  mp_async_result_t *ra, *rb;
  int rc = mp_pool_apply_async(pool, ex08_digit_sum, a, sizeof *a, sizeof *digits, NULL, &ra);
  if (rc < 0)
    return rc;
  rc = mp_pool_apply_async(pool, ex08_divisor_count, b, sizeof *b, sizeof *divisors, NULL, &rb);
  if (rc < 0) {
    mp_async_result_free(ra);
    return rc;
  }
  /* Both run now; wait for each. */
  rc = mp_async_result_get(ra, digits, sizeof *digits, NULL, 30);
  int rc2 = mp_async_result_get(rb, divisors, sizeof *divisors, NULL, 30);
  mp_async_result_free(ra);
  mp_async_result_free(rb);
  return rc < 0 ? rc : rc2;
}
