/* overhead: the lectures' overhead study of a Pool, run the way the lecture runs it. */
#include "calc_pi.h"
#include "chart.h"
#include "demo.h"

#include <math.h>

static const demo_info_t info = {
    "overhead [fork|spawn|forkserver] [largest N] [repeats]",
    "The lecture's overhead study (seed 001), as the lecture runs it: every call makes a\n"
    "fresh default Pool (`with ctx.Pool() as pool:`, one worker per core), runs one\n"
    "starmap of calc_pi and ends the pool; each call is repeated (`timeit(number=5)`) and\n"
    "the min and median are printed.\n"
    "  1. Vary the work: 4 tasks of N samples, N = 10^2 .. largest N (default 10^7).\n"
    "  2. Vary the workers: n = 1, 2, 4, 8, 16 tasks of 10^6/n samples (at most largest N),\n"
    "     on the default Pool as in the lecture's code, and on a Pool of n workers.\n"
    "The time at the smallest N is nearly all overhead: starting the workers, sending the\n"
    "tasks and results, ending the pool. It is printed beside the lecture's figure for\n"
    "Python (about 0.3 s). Exits 1 if a pool gives a wrong pi, or if a pool at the smallest\n"
    "N is not slower than the serial loop (which is the lesson).\n"
    "repeats: default 5, as the lecture's timeit(number=5).",
    true};

/* One call as the lecture's submit(): a fresh Pool of `workers` (MP_POOL_CPU_COUNT: the
 * default), starmap of `tasks` tasks of samples each, close, join. Returns its seconds and
 * checks the pi it computes when there are enough samples to tell. */
static double submit(mp_context_t *ctx, int workers, int tasks, uint64_t samples) {
  double seconds, pi = pi_submit(ctx, workers, tasks, samples, &seconds);
  if (samples * (uint64_t)tasks >= 100000 && fabs(pi - M_PI) > 0.05) {
    fprintf(stderr, "overhead: a pool computed pi = %f\n", pi);
    exit(1);
  }
  return seconds;
}

/* Min and median of `repeats` calls of submit(). */
static void timed(mp_context_t *ctx, int workers, int tasks, uint64_t samples, int repeats,
                  double *min, double *median) {
  double t[64];
  for (int r = 0; r < repeats; r++)
    t[r] = submit(ctx, workers, tasks, samples);
  *median = demo_median(t, (size_t)repeats); /* sorts t */
  *min = t[0];
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  long largest = demo_count(argc, argv, 2, 10000000);
  int repeats = (int)demo_count_at_most(argc, argv, 3, 5, 64);
  if (largest < 100)
    largest = 100;
  int cpus = mp_cpu_count();
  static const int worker_counts[] = {1, 2, 4, 8, 16};
  enum { WORKER_POINTS = 5 };

  printf(
      "The overhead study: a fresh Pool() per call (%s, %d workers by default), each call\n"
      "repeated %d times; times in seconds per call. Load average now: %.1f on %d cores.\n\n",
      mp_context_start_method(ctx), cpus, repeats, demo_load(), cpus);

  /* Study 1: N = 100, 1000, ... largest. */
  double n_values[8], mins[8], medians[8], serials[8];
  int points = 0;
  for (double n = 100; n <= (double)largest && points < 8; n *= 10)
    n_values[points++] = n;
  long calls = (long)points * repeats + WORKER_POINTS * 2L * repeats, done = 0;
  demo_progress("overhead", 0, calls);
  demo_csv("study,pool,N,tasks,workers,min_s,median_s,serial_s");
  printf("1. Vary the work: starmap(calc_pi, [(N,)] * 4) on a fresh Pool()\n");
  printf("   %10s %10s %10s %10s %10s\n", "N", "min", "median", "serial", "pool/serial");
  for (int i = 0; i < points; i++) {
    uint64_t n = (uint64_t)n_values[i];
    timed(ctx, MP_POOL_CPU_COUNT, 4, n, repeats, &mins[i], &medians[i]);
    pi_submit(NULL, 0, 4, n, &serials[i]); /* the same tasks, one after the other */
    done += repeats;
    demo_progress("overhead", done, calls);
    printf("   %10llu %10.4f %10.4f %10.4f %10.1fx\n", (unsigned long long)n, mins[i],
           medians[i], serials[i], mins[i] / serials[i]);
    demo_csv("work,default,%llu,4,%d,%.6f,%.6f,%.6f", (unsigned long long)n, cpus, mins[i],
             medians[i], serials[i]);
  }

  /* The fixed cost: the smallest N's time less its own work, which is next to nothing. */
  double overhead = mins[0] - serials[0];
  printf(
      "\n   Fixed overhead of one Pool() call, from N = 100: %.1f ms (min), %.1f ms (median).\n"
      "   The lecture backs out about 0.3 s for Python's Pool (4 cores, spawn): %.1f times\n"
      "   this. If that is the sum of its timeit(number=5), one Python call costs 0.06 s:\n"
      "   %.1f times this.\n"
      "   Serial calc_pi does %.0f million samples a second;\n"
      "   the lecture's Python did calc_pi(100_000) in 63.6 ms, 1.6 million a second.\n",
      1e3 * overhead, 1e3 * (medians[0] - serials[0]), 0.3 / overhead, 0.06 / overhead,
      4.0 * n_values[points - 1] / serials[points - 1] / 1e6);
  if (points >= 2)
    printf("   From N = %.0f to %.0f the time grows %.1f times for 10 times the work (the\n"
           "   lecture saw more than 10 times from 10^6 to 10^7).\n",
           n_values[points - 2], n_values[points - 1], mins[points - 1] / mins[points - 2]);

  /* Study 2: n tasks of 10^6 / n samples. */
  uint64_t total = largest < 1000000 ? (uint64_t)largest : 1000000;
  printf("\n2. Vary the workers: starmap(calc_pi, [(%llu // n,)] * n); min (median) seconds\n",
         (unsigned long long)total);
  printf("   %6s %22s %22s\n", "n", "Pool() (lecture)", "Pool(n)");
  double wx[WORKER_POINTS], wy[WORKER_POINTS], wy_n[WORKER_POINTS], wmed[WORKER_POINTS],
      wmed_n[WORKER_POINTS];
  for (int i = 0; i < WORKER_POINTS; i++) {
    int n = worker_counts[i];
    double dmin, dmed, nmin, nmed;
    timed(ctx, MP_POOL_CPU_COUNT, n, total / (uint64_t)n, repeats, &dmin, &dmed);
    timed(ctx, n, n, total / (uint64_t)n, repeats, &nmin, &nmed);
    done += 2L * repeats;
    demo_progress("overhead", done, calls);
    printf("   %6d %11.4f (%8.4f) %11.4f (%8.4f)\n", n, dmin, dmed, nmin, nmed);
    wx[i] = n, wy[i] = dmin, wy_n[i] = nmin, wmed[i] = dmed, wmed_n[i] = nmed;
  }
  /* One pool kind after the other, so that a plot's line through each is unbroken. */
  for (int i = 0; i < WORKER_POINTS; i++)
    demo_csv("workers,default,%llu,%d,%d,%.6f,%.6f,", (unsigned long long)total,
             worker_counts[i], cpus, wy[i], wmed[i]);
  for (int i = 0; i < WORKER_POINTS; i++)
    demo_csv("workers,n,%llu,%d,%d,%.6f,%.6f,", (unsigned long long)total, worker_counts[i],
             worker_counts[i], wy_n[i], wmed_n[i]);
  demo_progress("overhead", calls, calls);
  printf("   Past %d workers (the cores) nothing is gained, and each worker more is one more\n"
         "   process to start: Pool(n) gets slower. Pool() keeps %d workers whatever n is.\n",
         cpus, cpus);

  if (demo_opt.chart) {
    chart_series_t work[] = {{"pool, median", '+', n_values, medians, (size_t)points},
                             {"serial loop", 's', n_values, serials, (size_t)points},
                             {"pool, min", 'o', n_values, mins, (size_t)points}};
    chart_plot(stdout,
               &(chart_t){"1. Seconds per call against N: flat while the overhead dominates",
                          "N samples per task", "seconds", true, true, NAN},
               work, 3);
    chart_series_t workers[] = {{"Pool()", 'o', wx, wy, WORKER_POINTS},
                                {"Pool(n)", 'n', wx, wy_n, WORKER_POINTS}};
    chart_plot(stdout,
               &(chart_t){"2. Seconds per call against n", "n tasks (and workers for Pool(n))",
                          "seconds", true, false, 0},
               workers, 2);
  }

  if (mins[0] <= serials[0]) {
    printf("FAILED: at N = 100 the pool was not slower than the serial loop.\n");
    return 1;
  }
  printf("\nAt small N the pool costs more than the work; at large N the work dominates.\n");
  return 0;
}
