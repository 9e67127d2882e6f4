/*
 * The seed lectures' calc_pi on a Pool: the same starmap on a pool of threads and on a pool
 * of processes, against the serial loop. In Python the thread pool gains nothing (the GIL);
 * in C threads and processes both use every core, and what differs is what a pool costs to
 * start.
 */
#include "calc_pi.h"
#include "chart.h"
#include "demo.h"

#include <math.h>

static const demo_info_t info = {
    "pool_calc_pi [fork|spawn|forkserver|all] [samples] [workers]",
    "calc_pi with `samples` samples (default 10^8) split into `workers` tasks (default:\n"
    "the cores) run four ways: a serial loop; a Pool of threads (Python's\n"
    "multiprocessing.dummy.Pool, the \"thread\" context); a Pool of processes of the start\n"
    "method (\"all\", the default, runs each method). Each row gives the estimate of pi, the\n"
    "seconds taken (the pool's start and end included, as `with Pool() as pool:` would)\n"
    "and the speed-up over the serial loop. The lecture's Python did 10^7 samples in\n"
    "6.73 s serially, 7.05 s on two threads (no gain: the GIL) and 4.04 s on two\n"
    "processes. Exits 1 if a row's pi is wrong.",
    true};

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  bool all = argc < 2 || !strcmp(argv[1], "all");
  mp_context_t *chosen = all ? NULL : demo_context(argc, argv, &info);
  uint64_t samples = (uint64_t)demo_count(argc, argv, 2, 100000000);
  int workers = (int)demo_count_at_most(argc, argv, 3, mp_cpu_count(), 1024);
  if (samples < (uint64_t)workers)
    samples = (uint64_t)workers;
  const char *names[] = {"serial", "thread", "fork", "spawn", "forkserver"};
  size_t rows = 0;
  const char *labels[5];
  double secs[5], serial = 0;
  int wrong = 0;

  printf("calc_pi, %llu samples in %d tasks on %d workers (load average %.1f, %d cores).\n\n",
         (unsigned long long)samples, workers, workers, demo_load(), mp_cpu_count());
  printf("  %-12s %10s %9s %9s\n", "pool", "pi", "seconds", "speed-up");
  demo_csv("pool,workers,samples,seconds,speedup,pi");
  demo_progress("pools", 0, 5);
  for (size_t i = 0; i < 5; i++) {
    demo_progress("pools", (long)i, 5);
    mp_context_t *ctx = NULL;
    if (i == 1)
      CHECK(mp_get_context("thread", &ctx));
    else if (i > 1 && (all || !strcmp(names[i], mp_context_start_method(chosen))))
      CHECK(mp_get_context(names[i], &ctx));
    else if (i > 1)
      continue;
    double seconds,
        pi = pi_submit(ctx, workers, workers, samples / (uint64_t)workers, &seconds);
    if (i == 0)
      serial = seconds;
    printf("  %-12s %10.6f %8.3fs %9.2f\n", names[i], pi, seconds, serial / seconds);
    demo_csv("%s,%d,%llu,%.6f,%.4f,%.6f", names[i], i ? workers : 1,
             (unsigned long long)samples, seconds, serial / seconds, pi);
    wrong += samples >= 100000 && fabs(pi - M_PI) > 0.05;
    labels[rows] = names[i], secs[rows++] = seconds;
  }
  demo_progress("pools", 5, 5);
  printf(
      "\n\"serial\" runs the tasks one after the other in this process. \"thread\" runs them\n"
      "on %d threads of this process; the other rows on %d worker processes. A speed-up\n"
      "near the number of free cores means the work dominates; a small one, that starting\n"
      "the pool and moving tasks cost as much as the work (try fewer samples). Unlike\n"
      "Python's threads, C threads run calc_pi in parallel: there is no GIL.\n",
      workers, workers);
  if (demo_opt.chart)
    chart_bars(stdout, "Seconds for the same work", "s", labels, secs, rows);
  if (wrong) {
    printf("FAILED: a pool computed a wrong pi.\n");
    return 1;
  }
  return 0;
}
