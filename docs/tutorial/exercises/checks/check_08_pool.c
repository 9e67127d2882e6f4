/* The check of exercise 08: data parallelism with map, task parallelism with
 * apply_async, on pools of each kind. */
#include "check.h"

static long digit_sum(long x) {
  long sum = 0;
  for (; x > 0; x /= 10)
    sum += x % 10;
  return sum;
}

static long divisor_count(long x) {
  long count = 0;
  for (long d = 1; d <= x; d++)
    count += x % d == 0;
  return count;
}

/* The check's two tasks meet at a 2-party Barrier: each fails unless the other runs at the
 * same time. */
static int meet_then(const ex08_job_t *job, ex08_result_t *r, long (*compute)(long)) {
  if (mp_barrier_wait(job->both, 10) < 0)
    return mp_task_fail("the other task did not run at the same time: submit both before "
                        "you wait for either");
  r->value = compute(job->x);
  r->pid = (int)getpid();
  return 0;
}

int ex08_digit_sum(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size, (void)result_size;
  return meet_then(arg, result, digit_sum);
}

int ex08_divisor_count(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size, (void)result_size;
  return meet_then(arg, result, divisor_count);
}

static int is_prime(long x) {
  if (x < 2)
    return 0;
  for (long d = 2; d * d <= x; d++)
    if (x % d == 0)
      return 0;
  return 1;
}

static bool in_worker(mp_context_t *ctx, int pid) {
  bool threads = strcmp(mp_context_start_method(ctx), "thread") == 0;
  return threads ? pid == (int)getpid() : pid > 0 && pid != (int)getpid();
}

static void part(mp_context_t *ctx) {
  uint64_t rng = check_seed();
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  o.processes = 2;
  o.context = ctx;
  CHECK_SETUP(mp_pool_create(&pool, &o));

  enum { N = 500 };
  long numbers[N], count = -1, expected = 0;
  int pid = 0;
  for (int i = 0; i < N; i++) {
    numbers[i] = (long)(check_next(&rng) % 100000);
    expected += is_prime(numbers[i]);
  }
  int rc = ex08_count_primes(pool, numbers, N, &count, &pid);
  if (rc < 0)
    check_fail("ex08_count_primes returned %s", check_why(rc));
  else if (count != expected)
    check_fail("ex08_count_primes counted %ld primes among %d numbers, expected %ld", count, N,
               expected);
  else if (!in_worker(ctx, pid))
    check_fail("numbers[0] was done by pid %d, not by a worker of the pool: use mp_pool_map "
               "with ex08_is_prime",
               pid);

  mp_barrier_t *both;
  CHECK_SETUP(mp_barrier_create(&both, 2, NULL, NULL));
  ex08_job_t a = {100000 + (long)(check_next(&rng) % 900000), both};
  ex08_job_t b = {1000 + (long)(check_next(&rng) % 9000), both};
  ex08_result_t digits = {-1, 0}, divisors = {-1, 0};
  long want_digits = digit_sum(a.x), want_divisors = divisor_count(b.x);
  rc = ex08_two_tasks(pool, &a, &b, &digits, &divisors);
  if (rc < 0)
    check_fail("ex08_two_tasks returned %s", check_why(rc));
  else {
    if (digits.value != want_digits)
      check_fail("the digit sum of %ld came back as %ld, expected %ld", a.x, digits.value,
                 want_digits);
    if (divisors.value != want_divisors)
      check_fail("the divisor count of %ld came back as %ld, expected %ld", b.x, divisors.value,
                 want_divisors);
    if (!in_worker(ctx, digits.pid) || !in_worker(ctx, divisors.pid))
      check_fail("the two tasks ran in pids %d and %d, not in the pool's workers", digits.pid,
                 divisors.pid);
  }
  CHECK_SETUP(mp_barrier_close(both));
  CHECK_SETUP(mp_pool_close(pool));
  CHECK_SETUP(mp_pool_join(pool, 30));
  mp_pool_destroy(pool);
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_pool_contexts,
                "ex08: map over 500 numbers, two different tasks at once", part);
  return check_done("ex_08_pool");
}
