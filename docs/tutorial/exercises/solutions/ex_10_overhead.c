/* Exercise 10, a solution: Amdahl's bound, a least-squares line, and the lecture's timing
 * of a fresh pool per call. */
#include "exercises.h"

#include <time.h>

double ex10_amdahl(double s, int n) {
  return 1 / (s + (1 - s) / n);
}

double ex10_fit_overhead(const double *work, const double *seconds, size_t k,
                         double *per_unit) {
  double mx = 0, my = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < k; i++)
    mx += work[i] / (double)k, my += seconds[i] / (double)k;
  for (size_t i = 0; i < k; i++) {
    sxx += (work[i] - mx) * (work[i] - mx);
    sxy += (work[i] - mx) * (seconds[i] - my);
  }
  *per_unit = sxy / sxx;
  return my - *per_unit * mx;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int ex10_time_pool(mp_context_t *ctx, int workers, uint64_t samples, double *seconds,
                   double *pi) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  ex10_pi_t tasks[4];
  uint64_t inside[4], total = 0;
  o.processes = workers;
  o.context = ctx;
  for (int i = 0; i < 4; i++)
    tasks[i] = (ex10_pi_t){samples, (uint64_t)i + 1};
  double start = now();
  int rc = mp_pool_create(&pool, &o);
  if (rc < 0)
    return rc;
  rc = mp_pool_starmap(pool, ex10_calc_pi, tasks, 4, sizeof tasks[0], inside, sizeof inside[0],
                       0);
  if (rc == 0 && (rc = mp_pool_close(pool)) == 0)
    rc = mp_pool_join(pool, MP_FOREVER);
  mp_pool_destroy(pool);
  *seconds = now() - start;
  if (rc < 0)
    return rc;
  for (int i = 0; i < 4; i++)
    total += inside[i];
  *pi = 4.0 * (double)total / (4.0 * (double)samples);
  return 0;
}
