/*
 * Amdahl's law and the cost of a pool (seeds 001 and 003).
 *
 * 1. A job is a serial part (run by the main process alone) and a parallel part split into
 *    tasks for a Pool (mp_pool_map). With a serial fraction s of the one-worker time, n
 *    workers can at best give a speed-up of 1 / (s + (1 - s) / n): the serial part does not
 *    shrink. Past the number of cores, more workers only share the same cores.
 * 2. The overhead study: calc_pi with 4 tasks of N samples each, on a fresh pool every time
 *    (as `with Pool() as pool: pool.starmap(calc_pi, ...)` does), against the serial loop.
 *    Starting workers and sending tasks is a fixed cost: for a small N it dominates and the
 *    pool is slower than the loop; for a large N it does not matter.
 * 3. A fixed amount of work split over 1, 2, ... workers, small and large: only the large one
 *    gains from more workers.
 * Times are printed, never checked: they depend on the machine and its load.
 *
 * Usage: amdahl [fork|spawn|forkserver] [milliseconds of work per run]
 */
#include "demo.h"

#include <stdint.h>

typedef struct {
  uint64_t samples;
  uint64_t seed;
} pi_task_t;

/* A uniform draw in [0, 1) from a 64-bit linear congruential generator: cheap, and the same
 * in every process. */
static double uniform(uint64_t *state) {
  *state = *state * 6364136223846793005ull + 1442695040888963407ull;
  return (double)(*state >> 11) / 9007199254740992.0;
}

/* Monte Carlo pi: how many samples of the unit square fall inside the quarter disc. */
static uint64_t count_inside(uint64_t samples, uint64_t seed) {
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1, inside = 0;
  for (uint64_t i = 0; i < samples; i++) {
    double x = uniform(&state), y = uniform(&state);
    inside += x * x + y * y <= 1.0;
  }
  return inside;
}

/* The pool task: one pi_task_t in, its count of inside samples out. */
static int calc_pi(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  const pi_task_t *t = arg;
  *(uint64_t *)result = count_inside(t->samples, t->seed);
  return 0;
}

static mp_pool_t *pool_new(mp_context_t *ctx, int workers) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  o.processes = workers;
  o.context = ctx;
  CHECK(mp_pool_create(&pool, &o));
  return pool;
}

static void pool_end(mp_pool_t *pool) {
  CHECK(mp_pool_close(pool));
  CHECK(mp_pool_join(pool, 60));
  mp_pool_destroy(pool);
}

/* Runs n tasks of samples each on pool and returns their estimate of pi. */
static double pool_pi(mp_pool_t *pool, int n, uint64_t samples) {
  pi_task_t tasks[64] = {{0, 0}};
  uint64_t counts[64] = {0}, inside = 0;
  for (int i = 0; i < n; i++)
    tasks[i] = (pi_task_t){samples, (uint64_t)i};
  CHECK(mp_pool_starmap(pool, calc_pi, tasks, (size_t)n, sizeof tasks[0], counts,
                        sizeof counts[0], 1));
  for (int i = 0; i < n; i++)
    inside += counts[i];
  return 4.0 * (double)inside / ((double)samples * n);
}

/* 1. The serial part runs in this process; the parallel part as TASKS tasks on a pool of
 * n workers started beforehand (its start is not part of the job). */
#define TASKS 24
static void amdahl(mp_context_t *ctx, int cpus, int max_workers, uint64_t job_samples) {
  const double serial_share = 0.2;
  uint64_t serial = (uint64_t)((double)job_samples * serial_share);
  uint64_t per_task = (job_samples - serial) / TASKS;
  double t1 = 0, s = serial_share;
  printf("1. Amdahl's law: a job of %llu samples, %.0f%% of them serial, the rest in %d tasks\n"
         "   on a pool of n workers. Bound: 1 / (s + (1 - s) / n), s measured with n = 1;\n"
         "   with %d cores, n workers get at most min(n, %d) cores.\n",
         (unsigned long long)job_samples, 100 * serial_share, TASKS, cpus, cpus);
  printf("   %8s %9s %9s %8s %15s %9s\n", "workers", "time", "speed-up", "bound",
         "bound on cores", "pi");
  for (int n = 1; n <= max_workers; n++) {
    mp_pool_t *pool = pool_new(ctx, n);
    double start = demo_now();
    volatile uint64_t sink = count_inside(serial, 99);
    double serial_time = demo_now() - start;
    (void)sink;
    double pi = pool_pi(pool, TASKS, per_task);
    double t = demo_now() - start;
    pool_end(pool);
    if (n == 1) {
      t1 = t;
      s = serial_time / t;
    }
    int cores = n < cpus ? n : cpus;
    printf("   %8d %8.3fs %9.2f %8.2f %15.2f %9.5f\n", n, t, t1 / t, 1 / (s + (1 - s) / n),
           1 / (s + (1 - s) / cores), pi);
  }
  printf("   (measured serial fraction s = %.2f)\n\n", s);
}

/* The time of 4 tasks of samples each: on a fresh pool of workers, or serially for 0. */
static double timed_pi(mp_context_t *ctx, int workers, int tasks, uint64_t samples) {
  double start = demo_now();
  if (workers == 0) {
    volatile uint64_t sink = 0;
    for (int i = 0; i < tasks; i++)
      sink += count_inside(samples, (uint64_t)i);
    (void)sink; /* clang counts a variable that is only written as unused */
  } else {
    mp_pool_t *pool = pool_new(ctx, workers);
    pool_pi(pool, tasks, samples);
    pool_end(pool);
  }
  return demo_now() - start;
}

int main(int argc, char **argv) {
  mp_context_t *ctx = demo_context(argc, argv, "amdahl [fork|spawn|forkserver] [milliseconds]");
  double budget = (double)demo_count(argc, argv, 2, 300) / 1000;
  int cpus = mp_cpu_count();
  int max_workers = cpus + 2 < 8 ? cpus + 2 : 8;

  /* How many samples a second this machine does, to size the runs to the budget. */
  double start = demo_now();
  volatile uint64_t sink = count_inside(1000000, 1);
  (void)sink;
  double rate = 1000000 / (demo_now() - start);
  uint64_t budget_samples = (uint64_t)(rate * budget);
  if (budget_samples < 1000)
    budget_samples = 1000;
  double load = 0;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &load) != 1)
      load = 0;
    fclose(f);
  }
  printf("Amdahl's law and pool overhead, pools of processes started by %s, %d cores.\n"
         "The machine does about %.0f million samples of calc_pi a second. Its load average\n"
         "is %.1f: other programs running take cores away, and the speed-ups with them.\n\n",
         mp_context_start_method(ctx), cpus, rate / 1e6, load);

  amdahl(ctx, cpus, max_workers, budget_samples);

  printf("2. Overhead: 4 tasks of N samples, on a new pool of %d workers vs a serial loop.\n",
         cpus);
  printf("   %12s %9s %9s %9s\n", "N", "serial", "pool", "speed-up");
  for (uint64_t n = 100; n <= budget_samples / 4; n *= 10) {
    double serial = timed_pi(ctx, 0, 4, n), pooled = timed_pi(ctx, cpus, 4, n);
    printf("   %12llu %8.4fs %8.4fs %9.2f%s\n", (unsigned long long)n, serial, pooled,
           serial / pooled, serial < pooled ? "  (overhead dominates)" : "");
  }
  printf("   With N = 100 the time of the pool is almost all overhead: that is its fixed\n"
         "   cost, starting the workers and exchanging tasks and results.\n\n");

  printf("3. The same total work split into n tasks on a new pool of n workers.\n");
  printf("   %8s %17s %17s\n", "workers", "100k samples", "budget samples");
  double small1 = 0, large1 = 0;
  uint64_t large = budget_samples;
  for (int n = 1; n <= cpus + 1 && n <= 64; n++) {
    double small = timed_pi(ctx, n, n, 100000 / (uint64_t)n);
    double big = timed_pi(ctx, n, n, large / (uint64_t)n);
    if (n == 1)
      small1 = small, large1 = big;
    printf("   %8d %8.4fs x%7.2f %8.4fs x%7.2f\n", n, small, small1 / small, big, large1 / big);
  }
  printf("   The small job gains little or nothing from more workers: each one costs more to\n"
         "   start than the work it takes over. The large one gains up to the free cores.\n");
  return 0;
}
