/*
 * The seed lectures' calc_pi on a Pool: the same starmap on a pool of threads and on pools of
 * processes of each start method, against the serial loop. In Python the thread pool gains
 * nothing (the GIL); in C threads and processes both use every core, and what differs is what
 * a pool costs to start.
 *
 * Usage: pool_calc_pi [samples] [workers]
 */
#include <mp.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
  uint64_t samples;
  uint64_t seed;
} pi_args_t;

/* The samples of the unit square that fall in the quarter disc (xorshift, as Python's
 * random.uniform would be too slow to show anything but itself). */
static int calc_pi(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  const pi_args_t *a = arg;
  uint64_t s = a->seed | 1, inside = 0;
  for (uint64_t i = 0; i < a->samples; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    double x = (double)(s >> 11) * 0x1p-53;
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    double y = (double)(s >> 11) * 0x1p-53;
    inside += x * x + y * y < 1.0;
  }
  *(uint64_t *)result = inside;
  return 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* pi from `workers` tasks of samples / workers each, on a pool of the context (NULL: none,
 * the tasks run one after the other in this process). */
static double run(const char *context, uint64_t samples, int workers, double *seconds) {
  pi_args_t *args = calloc((size_t)workers, sizeof *args);
  uint64_t *counts = calloc((size_t)workers, sizeof *counts);
  if (!args || !counts) {
    fprintf(stderr, "pool_calc_pi: no memory\n");
    exit(1);
  }
  for (int i = 0; i < workers; i++)
    args[i] = (pi_args_t){samples / (uint64_t)workers, (uint64_t)i + 1};
  double start = now();
  if (!context) {
    for (int i = 0; i < workers; i++) {
      size_t len = sizeof counts[i];
      calc_pi(&args[i], sizeof args[i], &counts[i], &len);
    }
  } else {
    mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
    mp_pool_t *pool = NULL;
    o.processes = workers;
    if (mp_get_context(context, &o.context) < 0 || mp_pool_create(&pool, &o) < 0 ||
        mp_pool_starmap(pool, calc_pi, args, (size_t)workers, sizeof args[0], counts,
                        sizeof counts[0], 1) < 0) {
      fprintf(stderr, "pool_calc_pi: %s\n", mp_last_error());
      exit(1);
    }
    mp_pool_close(pool);
    mp_pool_join(pool, MP_FOREVER);
    mp_pool_destroy(pool);
  }
  *seconds = now() - start;
  uint64_t inside = 0;
  for (int i = 0; i < workers; i++)
    inside += counts[i];
  free(args);
  free(counts);
  return 4.0 * (double)inside / (double)(samples / (uint64_t)workers * (uint64_t)workers);
}

int main(int argc, char **argv) {
  uint64_t samples = argc > 1 ? strtoull(argv[1], NULL, 10) : 100000000ull;
  int workers = argc > 2 ? atoi(argv[2]) : mp_cpu_count();
  if (samples == 0 || workers < 1) {
    fprintf(stderr, "usage: pool_calc_pi [samples] [workers]\n");
    return 2;
  }
  const char *contexts[] = {NULL, "thread", "fork", "forkserver", "spawn"};
  double serial = 0;
  printf("calc_pi, %llu samples, %d workers\n", (unsigned long long)samples, workers);
  for (size_t i = 0; i < sizeof contexts / sizeof contexts[0]; i++) {
    double seconds, pi = run(contexts[i], samples, workers, &seconds);
    if (!contexts[i])
      serial = seconds;
    printf("  %-12s pi = %.6f  %7.3f s  speed-up %.2f\n", contexts[i] ? contexts[i] : "serial",
           pi, seconds, serial / seconds);
  }
  return 0;
}
