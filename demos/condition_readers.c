/* condition_readers: the lecture's multi-reader example, unsafe, and its fix with a
 * Condition. */
#include "demo.h"

static const demo_info_t info = {
    "condition_readers [fork|spawn|forkserver] [rounds]",
    "Seed 003 ends on a question: writers add to their slots of an Array while an Event is\n"
    "set; a reader clears the Event, waits at a Barrier of the writers and itself (so all\n"
    "writers have stopped), copies the Array, waits at a Barrier of the readers, and sets\n"
    "the Event again. Is it safe for several readers? No. Shown with 3 writers:\n"
    "  1. that protocol with one reader, `rounds` reads (default 50): every copy is\n"
    "     consistent (taken twice, the same both times: no writer ran meanwhile);\n"
    "  2. the same with two readers: the Barrier of writers + 1 counts the second reader\n"
    "     as a writer, lets a copy start while a writer still writes, or leaves a reader\n"
    "     waiting for writers that wait for it (a deadlock, ended by a timeout);\n"
    "  3. the fix with a Condition: readers count themselves in under its lock, writers\n"
    "     write only while no reader is in, and wait (Condition.wait_for) otherwise.\n"
    "Exits 1 if the one-reader protocol gives a torn copy, or the Condition a torn copy\n"
    "or a stuck reader (part 2 goes wrong more or less often: printed, not checked).",
    false};

#define WRITERS 3
#define READERS_MAX 2

typedef struct {
  long readers; /* readers in (reading or waiting to) */
  long writing; /* writers writing now */
  long stop;    /* set by main at the end */
  long torn, stuck, reads;
} shared_t;

enum { LECTURE, CONDITION };

typedef struct {
  int protocol, id, readers, rounds;
  double timeout; /* a Barrier wait longer than this counts as stuck */
  shared_t *sh;   /* in a raw Value: plain memory every process sees */
  volatile long *slots;
  mp_event_t *writing;
  mp_barrier_t *writers_and_reader, *readers_barrier;
  mp_condition_t *cond;
} args_t;

static bool no_reader(void *arg) {
  shared_t *sh = arg;
  return sh->readers == 0 || sh->stop;
}

static bool no_writer(void *arg) {
  return ((shared_t *)arg)->writing == 0;
}

/* A few additions, then a pause: writers that spun without one would keep every core
 * busy, and the scheduler would leave a writer off a core for many milliseconds. */
static void write_a_little(args_t *a) {
  for (int i = 0; i < 100; i++)
    a->slots[a->id]++;
  usleep(200);
}

static int writer(void *arg, size_t size) {
  (void)size;
  args_t *a = arg;
  shared_t *sh = a->sh;
  while (!__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE)) {
    if (a->protocol == LECTURE) {
      if (mp_event_wait(a->writing, 0.1) == MP_ETIMEDOUT)
        continue;
      while (mp_event_is_set(a->writing) && !__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE))
        write_a_little(a);
      if (mp_barrier_wait(a->writers_and_reader, a->timeout) == MP_EBROKEN)
        return 0; /* stuck, or the end (main aborts the Barrier) */
    } else {
      CHECK(mp_condition_acquire(a->cond, MP_FOREVER));
      CHECK(mp_condition_wait_for(a->cond, no_reader, sh, MP_FOREVER));
      sh->writing++;
      CHECK(mp_condition_release(a->cond));
      write_a_little(a);
      CHECK(mp_condition_acquire(a->cond, MP_FOREVER));
      if (--sh->writing == 0)
        CHECK(mp_condition_notify_all(a->cond));
      CHECK(mp_condition_release(a->cond));
    }
  }
  return 0;
}

/* Copies the slots twice, a moment apart: different copies mean a writer ran meanwhile. */
static bool torn_copy(args_t *a) {
  long first[WRITERS], second[WRITERS];
  for (int i = 0; i < WRITERS; i++)
    first[i] = a->slots[i];
  for (volatile int spin = 0; spin < 20000; spin++)
    ;
  for (int i = 0; i < WRITERS; i++)
    second[i] = a->slots[i];
  return memcmp(first, second, sizeof first) != 0;
}

static int reader(void *arg, size_t size) {
  (void)size;
  args_t *a = arg;
  shared_t *sh = a->sh;
  for (int r = 0; r < a->rounds; r++) {
    usleep((useconds_t)(20000 + 7000 * a->id)); /* the lecture's reader sleeps 1 s */
    if (a->protocol == LECTURE) {
      CHECK(mp_event_clear(a->writing));
      if (mp_barrier_wait(a->writers_and_reader, a->timeout) == MP_EBROKEN)
        return __atomic_add_fetch(&sh->stuck, 1, __ATOMIC_RELAXED), 0;
      __atomic_add_fetch(&sh->torn, torn_copy(a), __ATOMIC_RELAXED);
      if (mp_barrier_wait(a->readers_barrier, a->timeout) == MP_EBROKEN)
        return __atomic_add_fetch(&sh->stuck, 1, __ATOMIC_RELAXED), 0;
      CHECK(mp_event_set(a->writing));
    } else {
      CHECK(mp_condition_acquire(a->cond, MP_FOREVER));
      sh->readers++;
      int rc = mp_condition_wait_for(a->cond, no_writer, sh, a->timeout);
      CHECK(mp_condition_release(a->cond));
      if (rc == MP_ETIMEDOUT)
        return __atomic_add_fetch(&sh->stuck, 1, __ATOMIC_RELAXED), 0;
      CHECK(rc);
      __atomic_add_fetch(&sh->torn, torn_copy(a), __ATOMIC_RELAXED);
      CHECK(mp_condition_acquire(a->cond, MP_FOREVER));
      if (--sh->readers == 0)
        CHECK(mp_condition_notify_all(a->cond));
      CHECK(mp_condition_release(a->cond));
    }
    __atomic_add_fetch(&sh->reads, 1, __ATOMIC_RELAXED);
  }
  return 0;
}

/* One run: WRITERS writers and `readers` readers of `rounds` reads each. */
static shared_t run(mp_context_t *ctx, int protocol, int readers, int rounds, double timeout) {
  mp_value_t *shared;
  mp_array_t *slots;
  args_t a = {protocol, 0, readers, rounds, timeout, NULL, NULL, NULL, NULL, NULL, NULL};
  CHECK(mp_raw_value_create(&shared, MP_TYPE_BYTES(sizeof(shared_t)), NULL));
  CHECK(mp_raw_array_create(&slots, 'l', WRITERS, NULL));
  a.sh = mp_value_ptr(shared);
  a.slots = mp_array_ptr(slots);
  CHECK(mp_event_create(&a.writing));
  CHECK(mp_event_set(a.writing));
  CHECK(mp_barrier_create(&a.writers_and_reader, WRITERS + 1, NULL, NULL));
  CHECK(mp_barrier_create(&a.readers_barrier, readers, NULL, NULL));
  CHECK(mp_condition_create(&a.cond, NULL));

  mp_process_t *w[WRITERS], *r[READERS_MAX];
  args_t wa[WRITERS], ra[READERS_MAX];
  for (int i = 0; i < WRITERS; i++)
    wa[i] = a, wa[i].id = i;
  for (int i = 0; i < readers; i++)
    ra[i] = a, ra[i].id = i;
  demo_start(w, WRITERS, ctx, writer, wa, sizeof wa[0]);
  demo_start(r, readers, ctx, reader, ra, sizeof ra[0]);
  int failed = demo_join(r, readers, 120);
  /* The end: stop the writers wherever they wait. */
  CHECK(mp_condition_acquire(a.cond, MP_FOREVER));
  __atomic_store_n(&a.sh->stop, 1, __ATOMIC_RELEASE);
  CHECK(mp_condition_notify_all(a.cond));
  CHECK(mp_condition_release(a.cond));
  CHECK(mp_event_set(a.writing));
  CHECK(mp_barrier_abort(a.writers_and_reader));
  failed += demo_join(w, WRITERS, 60);
  if (failed) {
    fprintf(stderr, "condition_readers: %d processes failed\n", failed);
    exit(1);
  }
  shared_t result = *a.sh;
  CHECK(mp_event_close(a.writing));
  CHECK(mp_barrier_close(a.writers_and_reader));
  CHECK(mp_barrier_close(a.readers_barrier));
  CHECK(mp_condition_close(a.cond));
  CHECK(mp_value_close(shared));
  CHECK(mp_array_close(slots));
  return result;
}

static void row(const char *what, int readers, int rounds, shared_t s) {
  printf("   %-40s %7d %6ld/%-4ld %6ld %6ld\n", what, readers, s.reads, (long)readers * rounds,
         s.torn, s.stuck);
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  int rounds = (int)demo_count(argc, argv, 2, 50);
  printf("%d writers and 1 or 2 readers (%s), %d reads per reader.\n\n", WRITERS,
         mp_context_start_method(ctx), rounds);
  printf("   %-40s %7s %11s %6s %6s\n", "protocol", "readers", "reads done", "torn", "stuck");
  demo_progress("protocols", 0, 3);
  shared_t one = run(ctx, LECTURE, 1, rounds, 1);
  demo_progress("protocols", 1, 3);
  row("1. Event + two Barriers", 1, rounds, one);
  shared_t two = run(ctx, LECTURE, 2, rounds, 1);
  demo_progress("protocols", 2, 3);
  row("2. Event + two Barriers", 2, rounds, two);
  shared_t fixed = run(ctx, CONDITION, 2, rounds, 20);
  demo_progress("protocols", 3, 3);
  row("3. Condition (readers in, writers out)", 2, rounds, fixed);
  printf("\n   torn: copies that changed while being taken (a writer was writing);\n"
         "   stuck: a reader waited 1 s at a Barrier (20 s for the writers in 3) and gave\n"
         "   up: a deadlock, or as good as one.\n\n");
  if (one.stuck)
    printf("One reader got stuck: a writer came back to Event.wait() only after the reader\n"
           "had set the Event and cleared it again, missed the round, and never reached the\n"
           "Barrier. The lecture's reader sleeps 1 s between rounds, which makes that rare,\n"
           "not impossible; its copies, though, are never torn.\n");
  if (two.torn || two.stuck)
    printf("With two readers the lecture's protocol went wrong: the Barrier sized for\n"
           "writers + 1 reader took the second reader for a writer.\n");
  else
    printf("With two readers the lecture's protocol happened to survive this run; it is\n"
           "still unsafe (run it again, or with more rounds).\n");
  if (one.torn || fixed.torn || fixed.stuck || fixed.reads != 2L * rounds) {
    printf("FAILED: a safe protocol gave a torn copy or got stuck.\n");
    return 1;
  }
  printf("One reader is safe; with a Condition, so are many.\n");
  return 0;
}
