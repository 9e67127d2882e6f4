/*
 * Amdahl's law (seed 003). A job is a serial part, run by the main process alone, and a
 * parallel part split into tasks for a Pool (mp_pool_starmap). With a serial fraction s of
 * the one-worker time, n workers give at best a speed-up of 1 / (s + (1 - s) / n): the
 * serial part does not shrink. Past the number of cores, more workers only share the same
 * cores, so the bound on this machine is the law with min(n, cores). Each point is measured
 * several times and its min (the run the machine disturbed least) is compared with the
 * bound: a speed-up above it, or runs far apart, say the machine was busy, and the demo
 * says so instead of printing the number as if it were the law's.
 */
#include "calc_pi.h"
#include "chart.h"
#include "demo.h"

#include <math.h>

static const demo_info_t info = {
    "amdahl [fork|spawn|forkserver] [milliseconds] [repeats]",
    "Amdahl's law measured: a job of `milliseconds` of calc_pi work (default 300), 20% of\n"
    "it serial and the rest in 24 tasks on a Pool of n = 1 .. cores + 2 workers (at most\n"
    "8), started beforehand. Each point is run `repeats` times (default 5): min and median\n"
    "time, the speed-up of the min against n = 1, and the bounds 1 / (s + (1 - s) / n),\n"
    "with n and with min(n, cores). A speed-up above the bound, or a median far above the\n"
    "min (a busy machine), is flagged. Exits 1 if a pool computes a wrong pi.\n"
    "The overhead of starting a pool is the `overhead` demo's study.",
    true};

#define TASKS 24
#define MAX_WORKERS 8

/* One run of the job on pool: the serial part here, then TASKS tasks. Returns seconds. */
static double job(mp_pool_t *pool, uint64_t serial, uint64_t per_task, double *serial_time) {
  pi_task_t tasks[TASKS];
  uint64_t counts[TASKS], inside = 0;
  for (int i = 0; i < TASKS; i++)
    tasks[i] = (pi_task_t){per_task, (uint64_t)i + 1};
  double start = demo_now();
  volatile uint64_t sink = pi_count_inside(serial, 99);
  (void)sink;
  *serial_time = demo_now() - start;
  CHECK(mp_pool_starmap(pool, pi_task, tasks, TASKS, sizeof tasks[0], counts, sizeof counts[0],
                        1));
  double seconds = demo_now() - start;
  for (int i = 0; i < TASKS; i++)
    inside += counts[i];
  double pi = 4.0 * (double)inside / ((double)per_task * TASKS);
  if (per_task * TASKS >= 100000 && fabs(pi - M_PI) > 0.05) {
    fprintf(stderr, "amdahl: the pool computed pi = %f\n", pi);
    exit(1);
  }
  return seconds;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  double budget = (double)demo_count(argc, argv, 2, 300) / 1000;
  int repeats = (int)demo_count_at_most(argc, argv, 3, 5, 32);
  int cpus = mp_cpu_count();
  int max_workers = cpus + 2 < MAX_WORKERS ? cpus + 2 : MAX_WORKERS;

  /* How many samples a second this machine does, to size the job to the budget. */
  double start = demo_now();
  volatile uint64_t sink = pi_count_inside(1000000, 1);
  (void)sink;
  double rate = 1000000 / (demo_now() - start);
  uint64_t samples = (uint64_t)(rate * budget);
  if (samples < 10 * TASKS)
    samples = 10 * TASKS;
  const double serial_share = 0.2;
  uint64_t serial = (uint64_t)((double)samples * serial_share);
  uint64_t per_task = (samples - serial) / TASKS;
  double load = demo_load();

  printf("Amdahl's law: a job of %llu calc_pi samples (%.0f ms here), %.0f%% of them serial,\n"
         "the rest in %d tasks on a pool of n workers (%s), %d runs per point.\n"
         "Bound: 1 / (s + (1 - s) / n), s measured with n = 1; with %d cores, n workers get\n"
         "at most min(n, %d) cores. Load average now: %.1f.\n\n",
         (unsigned long long)samples, budget * 1e3, 100 * serial_share, TASKS,
         mp_context_start_method(ctx), repeats, cpus, cpus, load);
  printf("  %7s %9s %9s %9s %7s %8s  %s\n", "workers", "min", "median", "speed-up", "bound",
         "on cores", "");
  demo_csv("workers,min_s,median_s,speedup,bound,bound_cores");

  double t1 = 0, s = serial_share;
  double xs[MAX_WORKERS], speedups[MAX_WORKERS];
  double bx[100], by[100], bcy[100];
  int flagged = 0;
  demo_progress("amdahl", 0, max_workers);
  for (int n = 1; n <= max_workers; n++) {
    mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
    mp_pool_t *pool;
    o.processes = n;
    o.context = ctx;
    CHECK(mp_pool_create(&pool, &o));
    double t[32], serial_min = INFINITY;
    for (int r = 0; r < repeats; r++) {
      double st;
      t[r] = job(pool, serial, per_task, &st);
      serial_min = fmin(serial_min, st);
    }
    CHECK(mp_pool_close(pool));
    CHECK(mp_pool_join(pool, 60));
    mp_pool_destroy(pool);
    double median = demo_median(t, (size_t)repeats), min = t[0]; /* sorted */
    if (n == 1) {
      t1 = min;
      s = serial_min / min;
    }
    int cores = n < cpus ? n : cpus;
    double speedup = t1 / min, bound = 1 / (s + (1 - s) / n);
    double bound_cores = 1 / (s + (1 - s) / cores);
    const char *flag = "";
    if (speedup > bound_cores * 1.05)
      flag = "above the bound: the n = 1 run was slowed (a busy machine)";
    else if (repeats > 1 && median > 1.5 * min)
      flag = "runs far apart: a busy machine";
    flagged += *flag != '\0';
    printf("  %7d %8.3fs %8.3fs %9.2f %7.2f %8.2f  %s\n", n, min, median, speedup, bound,
           bound_cores, flag);
    demo_csv("%d,%.6f,%.6f,%.4f,%.4f,%.4f", n, min, median, speedup, bound, bound_cores);
    xs[n - 1] = n, speedups[n - 1] = speedup;
    demo_progress("amdahl", n, max_workers);
  }
  printf("  (measured serial fraction s = %.2f)\n\n", s);
  if (flagged)
    printf("%d point(s) flagged: other programs took cores during the runs; compare the\n"
           "speed-ups with the bound on an idle machine (or with more repeats).\n\n",
           flagged);
  printf("The speed-up stays under the bound: the serial part does not shrink, and past %d\n"
         "workers there are no more cores. The lecture's rule: if x%% of a program is\n"
         "parallel, x%% is the most it can save.\n",
         cpus);

  if (demo_opt.chart) {
    for (int i = 0; i < 100; i++) {
      bx[i] = 1 + (max_workers - 1) * i / 99.0;
      by[i] = 1 / (s + (1 - s) / bx[i]);
      bcy[i] = 1 / (s + (1 - s) / fmin(bx[i], cpus));
    }
    chart_series_t series[] = {{"Amdahl's bound", '.', bx, by, 100},
                               {"bound on the cores", ':', bx, bcy, 100},
                               {"measured (min)", 'o', xs, speedups, (size_t)max_workers}};
    chart_plot(stdout,
               &(chart_t){"Speed-up against workers", "workers", "speed-up", false, false, 0},
               series, 3);
  }
  return 0;
}
