/* value_array: Value and Array, shared typed memory, with and without a lock. */
#include "chart.h"
#include "demo.h"

#include <math.h>

static const demo_info_t info = {
    "value_array [fork|spawn|forkserver] [increments]",
    "Value and Array (seed 003: Python's Value('i', 0), Array('d', 10), RawValue,\n"
    "RawArray): typed elements in shared memory that every process sees.\n"
    "  1. Typed elements: children fill an Array('d') of squares, an Array('c') of text\n"
    "     and an Array of structs (raw elements); the parent reads them back.\n"
    "  2. With and without a lock: 4 processes add 1 `increments` times (default 100000)\n"
    "     to a Value('l') (its lock held by each add), to a RawValue (no lock: updates are\n"
    "     lost), and each to its own slot of a RawArray (no lock needed: nothing is\n"
    "     shared). Nanoseconds per update show what the lock costs.\n"
    "Exits 1 if a typed element reads back wrong, or a locked or own-slot count is not\n"
    "exact.",
    true};

#define WORKERS 4

typedef struct {
  double x, y;
  int id;
} point_t;

typedef struct {
  mp_array_t *squares, *text, *points;
  int id;
} fill_args_t;

/* Part 1's child: element id of each array. */
static int fill(void *arg, size_t size) {
  (void)size;
  fill_args_t *a = arg;
  CHECK(mp_array_set_double(a->squares, (size_t)a->id, (double)a->id * a->id));
  CHECK(mp_array_set_long(a->text, (size_t)a->id, "shared"[a->id]));
  point_t p = {a->id / 2.0, -a->id / 2.0, a->id};
  CHECK(mp_array_write(a->points, (size_t)a->id, 1, &p));
  return 0;
}

enum { LOCKED_VALUE, RAW_VALUE, OWN_SLOT, FORMS };

typedef struct {
  mp_value_t *value;
  mp_array_t *slots;
  mp_barrier_t *ready;
  long increments;
  int form, id;
} add_args_t;

static int adder(void *arg, size_t size) {
  (void)size;
  add_args_t *a = arg;
  CHECK(mp_barrier_wait(a->ready, 30));
  if (a->form == LOCKED_VALUE) {
    for (long i = 0; i < a->increments; i++)
      CHECK(mp_value_add_long(a->value, 1, NULL));
  } else if (a->form == RAW_VALUE) {
    volatile long *v = mp_value_ptr(a->value); /* a RawValue's element: no lock */
    for (long i = 0; i < a->increments; i++)
      *v = *v + 1;
  } else {
    volatile long *slot = (long *)mp_array_ptr(a->slots) + a->id;
    for (long i = 0; i < a->increments; i++)
      *slot = *slot + 1;
  }
  return 0;
}

/* Runs the WORKERS adders of one form; returns the total they leave, and their seconds. */
static long run_form(mp_context_t *ctx, int form, long increments, double *seconds) {
  mp_value_t *value = NULL;
  mp_array_t *slots = NULL;
  mp_barrier_t *ready;
  if (form == LOCKED_VALUE)
    CHECK(mp_value_create(&value, 'l', NULL, NULL));
  else if (form == RAW_VALUE)
    CHECK(mp_raw_value_create(&value, 'l', NULL));
  else
    CHECK(mp_raw_array_create(&slots, 'l', WORKERS, NULL));
  CHECK(mp_barrier_create(&ready, WORKERS + 1, NULL, NULL));
  add_args_t args[WORKERS];
  mp_process_t *procs[WORKERS];
  for (int i = 0; i < WORKERS; i++)
    args[i] = (add_args_t){value, slots, ready, increments, form, i};
  demo_start(procs, WORKERS, ctx, adder, args, sizeof args[0]);
  CHECK(mp_barrier_wait(ready, 30)); /* all started: time the updates, not the starts */
  double start = demo_now();
  if (demo_join(procs, WORKERS, 120) != 0)
    exit(1);
  *seconds = demo_now() - start;
  long total = 0, x;
  if (value) {
    CHECK(mp_value_get_long(value, &total));
    CHECK(mp_value_close(value));
  } else {
    for (size_t i = 0; i < WORKERS; i++) {
      CHECK(mp_array_get_long(slots, i, &x));
      total += x;
    }
    CHECK(mp_array_close(slots));
  }
  CHECK(mp_barrier_close(ready));
  return total;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  long increments = demo_count(argc, argv, 2, 100000);
  int wrong = 0;

  printf("1. Typed elements, filled by %d %s children (child i writes element i).\n", WORKERS,
         mp_context_start_method(ctx));
  mp_array_t *squares, *text, *points;
  CHECK(mp_array_create(&squares, 'd', WORKERS, NULL, NULL));
  CHECK(mp_array_create(&text, 'c', 7, NULL, NULL));
  CHECK(mp_raw_array_create(&points, MP_TYPE_BYTES(sizeof(point_t)), WORKERS, NULL));
  fill_args_t fa[WORKERS];
  mp_process_t *procs[WORKERS];
  for (int i = 0; i < WORKERS; i++)
    fa[i] = (fill_args_t){squares, text, points, i};
  demo_start(procs, WORKERS, ctx, fill, fa, sizeof fa[0]);
  wrong += demo_join(procs, WORKERS, 60);
  double sq[WORKERS];
  char chars[8] = "";
  point_t pts[WORKERS];
  CHECK(mp_array_read(squares, 0, WORKERS, sq));
  CHECK(mp_array_read(text, 0, 7, chars));
  CHECK(mp_array_read(points, 0, WORKERS, pts));
  printf("   Array('d', %d):        [%g, %g, %g, %g]\n", WORKERS, sq[0], sq[1], sq[2], sq[3]);
  printf("   Array('c', 7):        \"%s\" (children wrote the first %d bytes)\n", chars,
         WORKERS);
  printf("   RawArray of structs:  ");
  for (int i = 0; i < WORKERS; i++) {
    printf("{%g, %g, %d}%s", pts[i].x, pts[i].y, pts[i].id, i + 1 < WORKERS ? " " : "\n");
    wrong += sq[i] != (double)i * i || pts[i].id != i || pts[i].x != i / 2.0;
  }
  wrong += strcmp(chars, "shar") != 0;
  CHECK(mp_array_close(squares));
  CHECK(mp_array_close(text));
  CHECK(mp_array_close(points));
  printf("   A typecode fixes the element's C type ('d' double, 'c' char, 'l' long...);\n"
         "   MP_TYPE_BYTES(n) makes elements of n raw bytes, for a struct. Handles cross to\n"
         "   the children as plain pointers, under every start method.\n\n");

  static const char *const names[FORMS] = {"Value('l'), lock held per add",
                                           "RawValue('l'), no lock",
                                           "RawArray('l'), one slot each"};
  static const char *const short_names[FORMS] = {"Value", "RawValue", "own slots"};
  printf("2. %d processes add 1, %ld times each, to shared memory.\n", WORKERS, increments);
  printf("   %-32s %10s %10s %8s %12s\n", "form", "expected", "got", "lost", "ns/update");
  demo_csv("form,expected,got,ns_per_update");
  double ns[FORMS];
  long expected = WORKERS * increments;
  for (int f = 0; f < FORMS; f++) {
    double seconds;
    long got = run_form(ctx, f, increments, &seconds);
    ns[f] = seconds * 1e9 / (double)increments;
    printf("   %-32s %10ld %10ld %8ld %12.1f\n", names[f], expected, got, expected - got,
           ns[f]);
    demo_csv("%s,%ld,%ld,%.2f", short_names[f], expected, got, ns[f]);
    if (f != RAW_VALUE)
      wrong += got != expected;
    else if (got == expected)
      printf("   (no update lost this time: the processes hardly overlapped; race_condition\n"
             "   widens the window between the read and the write to show it every time)\n");
  }
  printf("   The lock makes \"read, add, write\" one step: exact, and slower, as every update\n"
         "   waits for the others. Without it, updates are lost when two processes overlap.\n"
         "   Slots of their own need no lock: no two processes write the same memory.\n");
  if (demo_opt.chart)
    chart_bars(stdout, "Nanoseconds per update (each process's view)", "ns", short_names, ns,
               FORMS);
  if (wrong) {
    printf("FAILED: a Value or Array did not hold what was written.\n");
    return 1;
  }
  printf("\nEvery typed element read back right; the locked and own-slot counts are exact.\n");
  return 0;
}
