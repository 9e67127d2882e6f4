/*
 * Exercise 10: overhead and Amdahl's law (docs/tutorial/10-overhead-amdahl.md).
 *
 * Check: meson test -C build --suite exercises ex_10_overhead --print-errorlogs
 */
#include "exercises.h"

#include <time.h>

double ex10_amdahl(double s, int n) {
  (void)s;
  (void)n;
  /* TODO(student): the best speed-up on n workers when a fraction s of the time is serial. */
  return 1;
}

double ex10_fit_overhead(const double *work, const double *seconds, size_t k,
                         double *per_unit) {
  (void)work;
  (void)seconds;
  (void)k;
  /* TODO(student): the least-squares line through (work[i], seconds[i]): its slope in
   * *per_unit, its intercept (the fixed overhead, the time of no work) returned. */
  *per_unit = 0;
  return 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int ex10_time_pool(mp_context_t *ctx, int workers, uint64_t samples, double *seconds,
                   double *pi) {
  double start = now();
  (void)ctx;
  (void)workers;
  (void)samples;
  /* TODO(student): create a pool of `workers` processes of ctx (mp_pool_options_t), starmap
   * 4 ex10_calc_pi tasks of `samples` samples (and seeds 1 .. 4), close, join and destroy
   * the pool; *pi = 4 * (all inside) / (all samples). */
  *pi = 0;
  *seconds = now() - start;
  return MP_ENOSYS;
}
