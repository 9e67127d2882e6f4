/*
 * The lectures' calc_pi, in C: the share of random points of the unit square that fall in
 * the quarter disc is pi / 4. Shared by the demos that time it (amdahl, overhead,
 * pool_calc_pi), so that their figures compare.
 */
#ifndef DEMO_CALC_PI_H
#define DEMO_CALC_PI_H

#include <stddef.h>
#include <stdint.h>

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

#endif /* DEMO_CALC_PI_H */
