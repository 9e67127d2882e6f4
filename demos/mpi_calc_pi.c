/*
 * pi by the midpoint rule (the integral of 4 / (1 + x^2) over [0, 1], MPI's classic cpi) on
 * a Pool, against the serial loop. The same source runs on a pool of processes of one
 * machine and on the ranks of an MPI job:
 *   ./mpi_calc_pi                       a fork pool (or MP_START_METHOD's)
 *   mpirun -np 4 ./mpi_calc_pi          the "mpi" context: ranks 1-3 are the workers
 * Both print the same digits: each task sums its own slice, and the serial loop adds the
 * same slices in the same order. Exits non-zero if the pool's pi differs from the loop's.
 *
 * Usage: mpi_calc_pi [intervals] [tasks]
 */
#include <mp.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  uint64_t first, count, intervals;
} slice_t;

/* The slice's share of the integral. */
static int integrate(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  const slice_t *s = arg;
  const double h = 1.0 / (double)s->intervals;
  double sum = 0;
  for (uint64_t i = s->first; i < s->first + s->count; i++) {
    double x = h * ((double)i + 0.5);
    sum += 4.0 / (1.0 + x * x);
  }
  sum *= h;
  memcpy(result, &sum, sizeof sum);
  return 0;
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double add(const double *parts, int n) {
  double pi = 0;
  for (int i = 0; i < n; i++)
    pi += parts[i];
  return pi;
}

int main(int argc, char **argv) {
  uint64_t intervals = argc > 1 ? strtoull(argv[1], NULL, 10) : 200000000;
  int tasks = argc > 2 ? atoi(argv[2]) : 48;
  if (intervals < (uint64_t)tasks || tasks < 1) {
    fprintf(stderr, "usage: mpi_calc_pi [intervals] [tasks], intervals >= tasks >= 1\n");
    return 2;
  }
  /* Under mpirun the ranks are the workers; elsewhere the program's start method. */
  const char *method = getenv("OMPI_COMM_WORLD_RANK") ? "mpi" : NULL;
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  slice_t *slices = calloc((size_t)tasks, sizeof *slices);
  double *serial = calloc((size_t)tasks, sizeof *serial),
         *pooled = calloc((size_t)tasks, sizeof *pooled);
  if (!slices || !serial || !pooled) {
    fprintf(stderr, "mpi_calc_pi: no memory\n");
    return 1;
  }
  for (int i = 0; i < tasks; i++) {
    uint64_t first = intervals * (uint64_t)i / (uint64_t)tasks;
    uint64_t end = intervals * (uint64_t)(i + 1) / (uint64_t)tasks;
    slices[i] = (slice_t){first, end - first, intervals};
  }
  if (mp_get_context(method, &o.context) < 0 || mp_pool_create(&pool, &o) < 0) {
    fprintf(stderr, "mpi_calc_pi: %s\n", mp_last_error());
    return 1;
  }
  double start = now();
  for (int i = 0; i < tasks; i++)
    integrate(&slices[i], sizeof slices[i], &serial[i], NULL);
  double serial_s = now() - start;
  start = now();
  int rc = mp_pool_map(pool, integrate, slices, (size_t)tasks, sizeof *slices, pooled,
                       sizeof *pooled, 1);
  double pool_s = now() - start;
  if (rc < 0) {
    fprintf(stderr, "mpi_calc_pi: %s\n", mp_last_error());
    mp_pool_destroy(pool);
    return 1;
  }
  double pi = add(pooled, tasks), serial_pi = add(serial, tasks);
  printf("pi = %.15f (error %.2e), %llu intervals in %d tasks\n", pi, fabs(pi - M_PI),
         (unsigned long long)intervals, tasks);
  printf("context %s, %d workers: %.3f s; serial loop %.3f s; speed-up %.2f\n",
         mp_context_start_method(o.context), mp_pool_processes(pool), pool_s, serial_s,
         serial_s / pool_s);
  mp_pool_destroy(pool);
  free(slices);
  free(serial);
  free(pooled);
  if (pi != serial_pi) {
    fprintf(stderr, "mpi_calc_pi: the pool's pi %.17g is not the loop's %.17g\n", pi,
            serial_pi);
    return 1;
  }
  return 0;
}
