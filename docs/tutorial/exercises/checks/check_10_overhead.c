/* The check of exercise 10: Amdahl's bound, the fit of a fixed overhead, and the lecture's
 * timing of a fresh pool. */
#include "check.h"

#include <math.h>

int ex10_calc_pi(const void *arg, size_t size, void *result, size_t *result_size) {
  const ex10_pi_t *t = arg;
  uint64_t s = t->seed * 0x9E3779B97F4A7C15ull + 1, inside = 0;
  (void)size;
  (void)result_size;
  check_calls_here++;
  for (uint64_t i = 0; i < t->samples; i++) {
    double x = (double)(check_next(&s) >> 11) * 0x1p-53;
    double y = (double)(check_next(&s) >> 11) * 0x1p-53;
    inside += x * x + y * y < 1.0;
  }
  *(uint64_t *)result = inside;
  return 0;
}

static void part_formulas(mp_context_t *ctx) {
  (void)ctx;
  uint64_t rng = check_seed();
  for (int i = 0; i < 20; i++) {
    double s = (double)(check_next(&rng) % 1000) / 1000;
    int n = 1 + (int)(check_next(&rng) % 64);
    double want = 1 / (s + (1 - s) / n), got = ex10_amdahl(s, n);
    if (!(fabs(got - want) <= 1e-9 * want)) {
      check_fail("ex10_amdahl(%.3f, %d) = %g, expected %g", s, n, got, want);
      break;
    }
  }
  double work[6], seconds[6], a = (double)(check_next(&rng) % 1000) / 1000 + 0.01,
                              b = (double)(check_next(&rng) % 1000) * 1e-9;
  for (int i = 0; i < 6; i++) {
    work[i] = i ? work[i - 1] * 10 : 100;
    seconds[i] = a + b * work[i] + (i % 2 ? 1e-4 : -1e-4); /* a little noise */
  }
  double per_unit = -1, got = ex10_fit_overhead(work, seconds, 6, &per_unit);
  if (!(fabs(got - a) < 1e-3) || !(fabs(per_unit - b) < 1e-3 * b + 1e-12))
    check_fail("ex10_fit_overhead gave a = %g, b = %g; the points lie on a = %g, b = %g (give "
               "or take 1e-4 s of noise): a least-squares line, please",
               got, per_unit, a, b);
}

static void part_pool(mp_context_t *ctx) {
  double seconds = -1, pi = 0;
  check_calls_here = 0;
  int rc = ex10_time_pool(ctx, 2, 250000, &seconds, &pi);
  if (check_calls_here > 0)
    check_fail("ex10_calc_pi ran %d times in this process: run it on the pool's workers",
               check_calls_here);
  else if (rc < 0)
    check_fail("ex10_time_pool returned %s", check_why(rc));
  else if (!(fabs(pi - M_PI) < 0.02))
    check_fail("ex10_time_pool estimated pi = %g from 4 x 250000 samples: combine the 4 "
               "counts as 4 * inside / samples",
               pi);
  else if (!(seconds > 0 && seconds < 60))
    check_fail("ex10_time_pool took %g s by its own account: time from before the pool's "
               "creation to after its end",
               seconds);
}

int main(int argc, char **argv) {
  check_part("formulas", "ex10_amdahl, ex10_fit_overhead on points of this run", part_formulas,
             NULL);
  check_methods(argc, argv, check_all_methods, "ex10_time_pool: a fresh pool, 4 tasks",
                part_pool);
  return check_done("ex_10_overhead");
}
