/*
 * The tomato counter of the seed lectures: several cooks (processes) each take tomatoes from
 * one shared count. Taking one is three steps: read the count, work out one less, write it
 * back. Two cooks who read the same count both write the same result, and one tomato is
 * counted once instead of twice: a lost update. Here each process adds 1 to a shared counter
 * many times, first on a RawValue (no lock: updates are lost), then on a Value whose lock
 * makes the read-and-write one step (mp_value_add_long, or mp_value_get_lock around the
 * steps): the count is exact.
 *
 * Then the unlocked counter again with 100, 1000, ... increments per process: the longer the
 * processes overlap, the more updates are lost (the figure --csv gives to demos/plots).
 */
#include "chart.h"
#include "demo.h"

#define PROCESSES 4

typedef struct {
  mp_value_t *counter; /* a handle is valid in every process, under every start method */
  mp_barrier_t *ready; /* all cooks start counting together */
  long increments;
  int locked;
} cook_args_t;

/* The steps of "count += 1", spelt out as the interpreter does them: read the count, think
 * a little (the cook counting the pantry), write the new count. volatile keeps the compiler
 * from merging them into one add (which would only make the window smaller: an add to
 * memory is no atomic operation either). */
static void unlocked_add(volatile long *count) {
  long seen = *count;
  for (volatile int think = 0; think < 20; think++)
    ;
  *count = seen + 1;
}

static int cook(void *arg, size_t size) {
  (void)size;
  cook_args_t *a = arg;
  CHECK(mp_barrier_wait(a->ready, 30));
  for (long i = 0; i < a->increments; i++) {
    if (a->locked == 1) {
      CHECK(mp_value_add_long(a->counter, 1, NULL)); /* one hold of the lock */
    } else if (a->locked == 2) {
      /* The same by hand, as Python's `with v.get_lock(): v.value += 1`. */
      mp_lock_t *lock = mp_value_get_lock(a->counter);
      CHECK(mp_lock_acquire(lock, MP_FOREVER));
      unlocked_add(mp_value_ptr(a->counter));
      CHECK(mp_lock_release(lock));
    } else {
      unlocked_add(mp_value_ptr(a->counter));
    }
  }
  return 0;
}

/* Runs PROCESSES cooks on counter and returns the count they leave. */
static long run(mp_context_t *ctx, mp_value_t *counter, long increments, int locked,
                double *seconds) {
  mp_process_t *procs[PROCESSES];
  cook_args_t args[PROCESSES];
  mp_barrier_t *ready;
  CHECK(mp_barrier_create(&ready, PROCESSES, NULL, NULL));
  for (int i = 0; i < PROCESSES; i++)
    args[i] = (cook_args_t){counter, ready, increments, locked};
  double start = demo_now();
  demo_start(procs, PROCESSES, ctx, cook, args, sizeof args[0]);
  if (demo_join(procs, PROCESSES, 60) != 0) {
    fprintf(stderr, "race_condition: a cook failed\n");
    exit(1);
  }
  *seconds = demo_now() - start;
  CHECK(mp_barrier_close(ready));
  long got;
  CHECK(mp_value_get_long(counter, &got)); /* a raw value's accessors take no lock */
  return got;
}

static const demo_info_t info = {
    "race_condition [fork|spawn|forkserver] [increments]",
    "The tomato counter (seed 000): 4 processes each add 1 to a shared counter `increments`\n"
    "times (default 200000): on a RawValue without a lock updates are lost; with the\n"
    "Value's lock none is. Then the unlocked counter with 100, 1000, ... increments: lost\n"
    "updates against increments. Exits 1 if a locked count is not exact.",
    true};

/* Lost updates of the unlocked counter for 100, 1000, ... up to `increments` per process:
 * the figure. A short run may lose none: the processes barely overlap. */
static void sweep(mp_context_t *ctx, long increments) {
  double x[12], y[12];
  int n = 0;
  printf("\nLost updates without a lock, against increments per process:\n");
  printf("  %12s %12s %10s %8s\n", "increments", "expected", "lost", "lost %");
  demo_csv("increments,expected,lost,lost_percent");
  for (long inc = 100; inc <= increments && n < 12; inc *= 10) {
    mp_value_t *counter;
    double seconds;
    CHECK(mp_raw_value_create(&counter, 'l', NULL));
    long expected = PROCESSES * inc, lost = expected - run(ctx, counter, inc, 0, &seconds);
    CHECK(mp_value_close(counter));
    x[n] = (double)inc, y[n] = 100.0 * (double)lost / (double)expected;
    printf("  %12ld %12ld %10ld %7.1f%%\n", inc, expected, lost, y[n]);
    demo_csv("%ld,%ld,%ld,%.3f", inc, expected, lost, y[n]);
    n++;
  }
  if (demo_opt.chart)
    chart_plot(stdout,
               &(chart_t){"Updates lost without a lock", "increments per process",
                          "lost, % of all", true, false, 0},
               &(chart_series_t){"RawValue", 'o', x, y, (size_t)n}, 1);
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  long increments = demo_count(argc, argv, 2, 200000);
  long expected = PROCESSES * increments;
  static const char *const how[] = {
      "RawValue, no lock (read, then write)",
      "Value, mp_value_add_long (lock held)",
      "Value, mp_value_get_lock + read/write",
  };

  printf("Race condition: %d processes (%s) each add 1 to a shared counter %ld times.\n",
         PROCESSES, mp_context_start_method(ctx), increments);
  printf("Without a lock, two processes can read the same count and both write count+1:\n"
         "one of the two additions is lost. With the Value's lock, none is.\n\n");
  printf("  %-40s %12s %12s %10s %8s\n", "counter", "expected", "got", "lost", "time");

  int wrong = 0;
  long lost_unlocked = 0;
  demo_progress("counters", 0, 3);
  for (int locked = 0; locked < 3; locked++) {
    demo_progress("counters", locked, 3);
    mp_value_t *counter;
    if (locked)
      CHECK(mp_value_create(&counter, 'l', NULL, NULL));
    else
      CHECK(mp_raw_value_create(&counter, 'l', NULL));
    double seconds;
    long got = run(ctx, counter, increments, locked, &seconds);
    printf("  %-40s %12ld %12ld %10ld %7.3fs\n", how[locked], expected, got, expected - got,
           seconds);
    if (locked)
      wrong += got != expected;
    else
      lost_unlocked = expected - got;
    CHECK(mp_value_close(counter));
  }

  demo_progress("counters", 3, 3);
  printf("\n");
  if (lost_unlocked > 0)
    printf("Without the lock %ld of %ld updates were lost (%.1f%%).\n", lost_unlocked, expected,
           100.0 * (double)lost_unlocked / (double)expected);
  else
    printf("This run lost no update without the lock: the processes did not overlap this\n"
           "time (few increments, or one free core). A race is a matter of luck: run it\n"
           "again with more increments.\n");
  printf("The lock costs time: every update waits for the others to finish theirs.\n");
  sweep(ctx, increments);
  if (wrong) {
    printf("FAILED: a locked counter is not exact.\n");
    return 1;
  }
  printf("With the lock the count is exact.\n");
  return 0;
}
