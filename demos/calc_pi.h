/*
 * The lectures' calc_pi, in C: the share of random points of the unit square that fall in
 * the quarter disc is pi / 4. Shared by the demos that time it (amdahl, overhead,
 * pool_calc_pi), so that their figures compare.
 */
#ifndef DEMO_CALC_PI_H
#define DEMO_CALC_PI_H

#include "demo.h"

/* A Pool task's argument: Python's starmap tuple (N,), with a seed per task so that the
 * tasks draw different points. */
typedef struct {
  uint64_t samples;
  uint64_t seed;
} pi_task_t;

/* How many of samples points fall inside, from a xorshift generator: cheap, and the same in
 * every process (Python's random.uniform would time only itself). */
static inline uint64_t pi_count_inside(uint64_t samples, uint64_t seed) {
  uint64_t s = seed * 0x9E3779B97F4A7C15ull | 1, inside = 0;
  for (uint64_t i = 0; i < samples; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    double x = (double)(s >> 11) * 0x1p-53;
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    double y = (double)(s >> 11) * 0x1p-53;
    inside += x * x + y * y < 1.0;
  }
  return inside;
}

/* The Pool task: a pi_task_t in, its count of points inside (uint64_t) out. */
static inline int pi_task(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  const pi_task_t *t = arg;
  *(uint64_t *)result = pi_count_inside(t->samples, t->seed);
  return 0;
}

/* The estimate of pi from `tasks` tasks of `samples` each, as the lectures' submit() makes
 * it: a fresh Pool of `workers` (MP_POOL_CPU_COUNT: the default) of ctx, one starmap with
 * Python's default chunksize, close, join. ctx NULL runs the tasks one after the other in
 * this process instead. *seconds: the time of all of it. */
static inline double pi_submit(mp_context_t *ctx, int workers, int tasks, uint64_t samples,
                               double *seconds) {
  pi_task_t *args = calloc((size_t)tasks, sizeof *args);
  uint64_t *inside = calloc((size_t)tasks, sizeof *inside), total = 0;
  if (!args || !inside) {
    fprintf(stderr, "calc_pi: no memory\n");
    exit(1);
  }
  for (int i = 0; i < tasks; i++)
    args[i] = (pi_task_t){samples, (uint64_t)i + 1};
  double start = demo_now();
  if (!ctx) {
    for (int i = 0; i < tasks; i++)
      inside[i] = pi_count_inside(args[i].samples, args[i].seed);
  } else {
    mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
    mp_pool_t *pool;
    o.processes = workers;
    o.context = ctx;
    CHECK(mp_pool_create(&pool, &o));
    CHECK(mp_pool_starmap(pool, pi_task, args, (size_t)tasks, sizeof args[0], inside,
                          sizeof inside[0], 0));
    CHECK(mp_pool_close(pool));
    CHECK(mp_pool_join(pool, 60));
    mp_pool_destroy(pool);
  }
  *seconds = demo_now() - start;
  for (int i = 0; i < tasks; i++)
    total += inside[i];
  free(args);
  free(inside);
  return 4.0 * (double)total / ((double)samples * tasks);
}

#endif /* DEMO_CALC_PI_H */
