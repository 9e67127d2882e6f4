/*
 * fork_vs_spawn: what each start method costs, and what a child inherits.
 *
 * Python's multiprocessing makes a child in one of three ways, and libmp mirrors them:
 *   "fork"        fork() of this process,
 *   "spawn"       a fresh run of this program (posix_spawn of the running executable),
 *   "forkserver"  a fork made by a server, itself a fresh run of this program.
 * This program starts children of each kind and shows
 *   1. how long a start and a join take,
 *   2. which value of a global variable each child sees,
 *   3. that main() runs once, although spawn executes this program again for every child.
 *
 * Try it: ./build/demos/fork_vs_spawn (a few seconds); --help says more.
 */
#include "chart.h"
#include "demo.h"

static const demo_info_t info = {
    "fork_vs_spawn [starts]",
    "What each start method (fork, spawn, forkserver) costs, and what a child inherits:\n"
    "  1. `starts` starts and joins of a child that returns at once, per method (default\n"
    "     30, the methods taking turns): first, mean and min microseconds;\n"
    "  2. which value of a global each method's child sees;\n"
    "  3. that main() runs once, although spawn runs this program again for each child.\n"
    "Exits 1 if a child fails.",
    true};

/* Starts per method in part 1 (argv[1]), interleaved so that a burst of noise hits all
 * methods. */
static int g_repetitions = 30;

/* 1 as the source says; main() sets it to 42 before part 2 starts any child. */
static int g_value = 1;

/* Set by the first statement of main(): a process in which it is false never ran main(). */
static bool g_main_ran = false;

typedef struct {
  const char *name;
  const char *why; /* one line on where its cost comes from */
  mp_context_t *ctx;
  int starts; /* children started, for part 3 */
} method_t;

enum { METHOD_FORK, METHOD_SPAWN, METHOD_FORKSERVER, METHOD_COUNT };

static method_t methods[METHOD_COUNT] = {
    [METHOD_FORK] = {.name = "fork",
                     .why = "copies this process; pages are shared copy-on-write. Cheapest."},
    [METHOD_SPAWN] = {.name = "spawn",
                      .why = "runs the program afresh: exec, dynamic linking, start-up."},
    [METHOD_FORKSERVER] = {.name = "forkserver",
                           .why = "a server, run once from the program, forks children ahead of time."},
};

/* Part 1's child: nothing to do, so that only the cost of making a process is left. */
static int return_zero(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

/* Part 2's child: it says what it sees. Its argument is the start method's name, which
 * crosses to the child as bytes under every method, unlike a global. */
static int report_globals(void *arg, size_t size) {
  (void)size;
  printf("   %-10s  child, pid %-7d  sees g_value = %-2d  g_main_ran = %s\n", (const char *)arg,
         (int)getpid(), g_value, g_main_ran ? "true" : "false");
  /* A child's output sits in its stdio buffer until flushed; flush before returning so
   * nothing depends on how the child's process ends. */
  fflush(stdout);
  return 0;
}

/* Starts a child of `target` with method m, joins it, and returns how long start + join
 * took, in microseconds. Creating and closing the process object is not timed. */
static double run_child(method_t *m, mp_target_t target, const void *arg, size_t size) {
  mp_process_t *proc;
  int exitcode;

  CHECK(mp_process_create(&proc, m->ctx, target, arg, size, NULL));
  /* A forked child gets a copy of this process's stdio buffer too: anything not yet written
   * would be written twice, once by each process. */
  fflush(stdout);

  double start = demo_now() * 1e6;
  CHECK(mp_process_start(proc));
  CHECK(mp_process_join(proc, MP_FOREVER));
  double elapsed = demo_now() * 1e6 - start;

  m->starts++;
  CHECK(mp_process_exitcode(proc, &exitcode));
  if (exitcode != 0) {
    fprintf(stderr, "fork_vs_spawn: a %s child exited with %d\n", m->name, exitcode);
    exit(1);
  }
  CHECK(mp_process_close(proc));
  return elapsed;
}

static void part1_cost(void) {
  double first[METHOD_COUNT], sum[METHOD_COUNT], min[METHOD_COUNT];

  printf("1. What a start costs\n"
         "   Each method starts a child that returns 0 at once, and joins it, %d times\n"
         "   (the methods take turns). \"first\" is each method's very first start, which for\n"
         "   forkserver includes starting the server. The machine's other work only ever adds\n"
         "   time, so \"min\" is the truest cost, and the methods are compared by it.\n\n",
         g_repetitions);

  for (int i = 0; i < METHOD_COUNT; i++) {
    first[i] = run_child(&methods[i], return_zero, NULL, 0);
    sum[i] = 0;
    min[i] = 1e300;
  }
  demo_progress("starts", 0, g_repetitions);
  for (int rep = 0; rep < g_repetitions; rep++) {
    demo_progress("starts", rep, g_repetitions);
    for (int i = 0; i < METHOD_COUNT; i++) {
      double us = run_child(&methods[i], return_zero, NULL, 0);
      sum[i] += us;
      if (us < min[i])
        min[i] = us;
    }
  }

  demo_progress("starts", g_repetitions, g_repetitions);
  printf("   %-10s  %10s  %10s  %10s  %12s\n", "method", "first (us)", "mean (us)", "min (us)",
         "min vs fork");
  for (int i = 0; i < METHOD_COUNT; i++) {
    double mean = sum[i] / g_repetitions;
    printf("   %-10s  %10.0f  %10.0f  %10.0f  %11.1fx\n", methods[i].name, first[i], mean,
           min[i], min[i] / min[METHOD_FORK]);
    demo_csv("%s,%.1f,%.1f,%.1f", methods[i].name, first[i], mean, min[i]);
  }
  if (demo_opt.chart) {
    const char *labels[METHOD_COUNT];
    for (int i = 0; i < METHOD_COUNT; i++)
      labels[i] = methods[i].name;
    chart_bars(stdout, "Start + join of a child, min microseconds", "us", labels, min,
               METHOD_COUNT);
  }
  printf("\n");
  for (int i = 0; i < METHOD_COUNT; i++)
    printf("   %-10s  %s\n", methods[i].name, methods[i].why);
  printf("\n");
}

static void part2_globals(void) {
  g_value = 42;
  printf("2. What a child inherits\n"
         "   g_value is 1 in the source and main() has just set it to 42; g_main_ran is false\n"
         "   in the source and main() set it to true first thing. Each child prints what it\n"
         "   sees:\n\n");

  for (int i = 0; i < METHOD_COUNT; i++)
    run_child(&methods[i], report_globals, methods[i].name, strlen(methods[i].name) + 1);

  printf(
      "\n"
      "   Why: fork() gives the child a copy of the parent's memory as it is at the moment of\n"
      "   the fork, so the forked child sees 42, and the flag main() had set. spawn runs the\n"
      "   program afresh: the child's globals hold the values written in the source, and\n"
      "   libmp calls the target instead of main(), so the flag stays false. The fork server\n"
      "   is such a fresh run of the program too, started in part 1, long before the change;\n"
      "   its children are forks of the server, not of this process, so they see the\n"
      "   server's memory, which never held 42. To give a child data under every method, pass\n"
      "   it as the target's argument (as the method's name is here) or in shared memory.\n\n");
}

static void part3_main_once(void) {
  printf(
      "3. main() ran once\n"
      "   The line \"main() starts\" at the top was printed once, yet this program was run\n"
      "   again for each of the %d spawn children and for the fork server. libmp takes a\n"
      "   spawned program over before main() and runs the target instead: there is no\n"
      "   `if __name__ == \"__main__\":` guard to forget, and no child that starts children\n"
      "   of its own by accident.\n",
      methods[METHOD_SPAWN].starts);
}

int main(int argc, char **argv) {
  g_main_ran = true;
  demo_parse(&argc, argv, &info);
  g_repetitions = (int)demo_count(argc, argv, 1, 30);
  demo_csv("method,first_us,mean_us,min_us");
  printf("fork_vs_spawn: main() starts, in process %d.\n\n", (int)getpid());

  for (int i = 0; i < METHOD_COUNT; i++)
    CHECK(mp_get_context(methods[i].name, &methods[i].ctx));

  part1_cost();
  part2_globals();
  part3_main_once();
  return 0;
}
