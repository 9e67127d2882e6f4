/* threads_vs_processes: what a thread shares with its process, and what a child copies. */
#include "calc_pi.h"
#include "chart.h"
#include "demo.h"

#include <pthread.h>

static const demo_info_t info = {
    "threads_vs_processes [fork|spawn|forkserver] [starts]",
    "A thread runs inside its process and shares its memory; a process has memory of its\n"
    "own (seeds 000, 001, 004). Shown in three parts:\n"
    "  1. A global counter: a thread adds 1000 to it and the main program sees the change;\n"
    "     a child process adds 1000 to its global and the parent's does not move. Under\n"
    "     fork the child starts from a copy of the parent's value, under spawn and\n"
    "     forkserver from the value in the source.\n"
    "  2. What starting costs: a thread (pthread_create + join) against a process of the\n"
    "     start method (mp_process_start + join), `starts` times each (default 200):\n"
    "     min and median, in microseconds.\n"
    "  3. The lecture's calc_pi(10^7) serially, then split over 2 threads and over 2\n"
    "     processes, beside the lecture's Python figures (6.73 s, 7.05 s, 4.04 s).\n"
    "Exits 1 if the thread's change is not seen, the child's is, or a thread start is not\n"
    "cheaper than a process start.",
    true};

/* 0 in the source; main() and its thread change it. */
static long g_counter = 0;

static void *thread_adds(void *arg) {
  (void)arg;
  for (int i = 0; i < 1000; i++)
    g_counter++;
  return NULL;
}

/* The child adds 1000 to its own g_counter and tells the parent what it started from,
 * through a shared Value: the one thing both processes see. */
static int child_adds(void *arg, size_t size) {
  (void)size;
  mp_value_t *seen = *(mp_value_t **)arg;
  CHECK(mp_value_set_long(seen, g_counter));
  thread_adds(NULL);
  return 0;
}

static int child_returns(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

/* Part 3: half of the lecture's calc_pi, in a thread or in a child process. */
typedef struct {
  pi_task_t task;
  uint64_t inside; /* the thread's result */
  mp_array_t *out; /* the child's result: slot task.seed - 1 */
} half_t;

static void *half_in_thread(void *arg) {
  half_t *h = arg;
  h->inside = pi_count_inside(h->task.samples, h->task.seed);
  return NULL;
}

static int half_in_child(void *arg, size_t size) {
  (void)size;
  half_t *h = arg;
  CHECK(mp_array_set_ulong(h->out, h->task.seed - 1,
                           pi_count_inside(h->task.samples, h->task.seed)));
  return 0;
}

/* calc_pi(n) serially, on 2 threads and on 2 processes; returns 1 if a pi is wrong. */
static int calc_pi_three_ways(mp_context_t *ctx, uint64_t n) {
  half_t halves[2];
  mp_array_t *out;
  CHECK(mp_array_create(&out, 'Q', 2, NULL, NULL));
  for (int i = 0; i < 2; i++)
    halves[i] = (half_t){{n / 2, (uint64_t)i + 1}, 0, out};
  double t0 = demo_now();
  uint64_t serial = pi_count_inside(n / 2, 1) + pi_count_inside(n / 2, 2);
  double t1 = demo_now();
  pthread_t threads[2];
  for (int i = 0; i < 2; i++)
    if (pthread_create(&threads[i], NULL, half_in_thread, &halves[i]) != 0)
      exit(1);
  for (int i = 0; i < 2; i++)
    pthread_join(threads[i], NULL);
  double t2 = demo_now();
  mp_process_t *procs[2];
  demo_start(procs, 2, ctx, half_in_child, halves, sizeof halves[0]);
  int failed = demo_join(procs, 2, 120);
  double t3 = demo_now();
  unsigned long a, b;
  CHECK(mp_array_get_ulong(out, 0, &a));
  CHECK(mp_array_get_ulong(out, 1, &b));
  CHECK(mp_array_close(out));
  double pis[3] = {4.0 * (double)serial / (double)n,
                   4.0 * (double)(halves[0].inside + halves[1].inside) / (double)n,
                   4.0 * (double)(a + b) / (double)n};
  printf("3. calc_pi(%llu), as the lecture times it, in seconds:\n", (unsigned long long)n);
  printf("   %-22s %10s %10s %14s\n", "", "pi", "this run", "lecture (Python)");
  printf("   %-22s %10.5f %10.3f %14s\n", "serial", pis[0], t1 - t0, "6.73");
  printf("   %-22s %10.5f %10.3f %14s\n", "2 threads", pis[1], t2 - t1, "7.05");
  printf("   %-22s %10.5f %10.3f %14s\n", "2 processes", pis[2], t3 - t2, "4.04");
  printf("   Python's threads take turns (the GIL): no gain. C threads run at once, as\n"
         "   processes do; a process costs its start on top (part 2). C runs calc_pi about\n"
         "   %.0f times as fast as the lecture's Python loop.\n\n",
         6.73 / (t1 - t0));
  return failed || serial != halves[0].inside + halves[1].inside || serial != a + b;
}

static double thread_start_us(void) {
  pthread_t t;
  double start = demo_now();
  if (pthread_create(&t, NULL, thread_adds, NULL) != 0 || pthread_join(t, NULL) != 0) {
    fprintf(stderr, "threads_vs_processes: pthread_create failed\n");
    exit(1);
  }
  return (demo_now() - start) * 1e6;
}

static double process_start_us(mp_context_t *ctx) {
  mp_process_t *p;
  int code;
  CHECK(mp_process_create(&p, ctx, child_returns, NULL, 0, NULL));
  double start = demo_now();
  CHECK(mp_process_start(p));
  CHECK(mp_process_join(p, 60));
  double us = (demo_now() - start) * 1e6;
  CHECK(mp_process_exitcode(p, &code));
  CHECK(mp_process_close(p));
  if (code != 0)
    exit(1);
  return us;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  int starts = (int)demo_count(argc, argv, 2, 200);
  const char *method = mp_context_start_method(ctx);
  int failed = 0;

  printf("1. A global counter, g_counter, is 0 in the source.\n");
  pthread_t t;
  if (pthread_create(&t, NULL, thread_adds, NULL) != 0 || pthread_join(t, NULL) != 0)
    return 1;
  printf("   A thread added 1000 to it: main() now sees %ld (shared memory).\n", g_counter);
  failed += g_counter != 1000;

  mp_value_t *seen;
  mp_process_t *child;
  int code;
  CHECK(mp_raw_value_create(&seen, 'l', NULL));
  CHECK(mp_process_create(&child, ctx, child_adds, &seen, sizeof seen, NULL));
  CHECK(mp_process_start(child));
  CHECK(mp_process_join(child, 60));
  CHECK(mp_process_exitcode(child, &code));
  CHECK(mp_process_close(child));
  long child_start;
  CHECK(mp_value_get_long(seen, &child_start));
  CHECK(mp_value_close(seen));
  printf("   A %s child added 1000 to its g_counter, which started at %ld\n"
         "   (%s); the parent's is still %ld:\n"
         "   the child changed its own copy.\n\n",
         method, child_start,
         child_start == 1000 ? "a copy of the parent's memory at the fork"
                             : "the value in the source: a fresh program",
         g_counter);
  failed += code != 0 || g_counter != 1000;
  failed += child_start != (strcmp(method, "fork") ? 0 : 1000);

  printf("2. What a start costs: %d threads and %d %s processes, started and joined one\n"
         "   after the other; microseconds each.\n",
         starts, starts, method);
  double *tus = calloc((size_t)starts, sizeof *tus), *pus = calloc((size_t)starts, sizeof *pus);
  if (!tus || !pus)
    return 1;
  demo_progress("starts", 0, starts);
  for (int i = 0; i < starts; i++) {
    tus[i] = thread_start_us();
    pus[i] = process_start_us(ctx);
    demo_progress("starts", i + 1, starts);
  }
  double tmed = demo_median(tus, (size_t)starts), pmed = demo_median(pus, (size_t)starts);
  printf("   %-18s %10s %10s\n", "", "min (us)", "median (us)");
  printf("   %-18s %10.1f %10.1f\n", "thread", tus[0], tmed);
  printf("   %-18s %10.1f %10.1f\n", method, pus[0], pmed);
  printf(
      "   A process costs %.0f times a thread (by the min): it gets its own memory, its own\n"
      "   file table and, under spawn, a fresh run of the program. The lecture's Python\n"
      "   threads, unlike these, could not run calc_pi in parallel (the GIL).\n",
      pus[0] / tus[0]);
  demo_csv("kind,min_us,median_us");
  demo_csv("thread,%.2f,%.2f", tus[0], tmed);
  demo_csv("%s,%.2f,%.2f", method, pus[0], pmed);
  if (demo_opt.chart) {
    const char *labels[] = {"thread", method};
    double mins[] = {tus[0], pus[0]};
    chart_bars(stdout, "Start + join, min microseconds", "us", labels, mins, 2);
  }
  failed += !(tus[0] < pus[0]);
  free(tus);
  free(pus);
  printf("\n");
  failed += calc_pi_three_ways(ctx, 10000000);
  if (failed) {
    printf("FAILED: threads and processes did not behave as explained.\n");
    return 1;
  }
  printf("Threads share, processes copy; a thread is the cheaper to start.\n");
  return 0;
}
