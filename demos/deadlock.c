/*
 * A deadlock (seed 003): process 1 takes lock A then lock B, process 2 takes B then A. If
 * each gets its first lock before the other asks for its second, each waits for a lock the
 * other holds and will not release: for ever, with Python's blocking acquire(). Here a
 * Barrier makes sure both hold their first lock before either asks for its second (so the
 * deadlock happens every time), and the second acquire has a timeout: it returns
 * MP_ETIMEDOUT instead of hanging, the process backs off and releases what it holds.
 * The fix is a global lock order: every process takes A before B. Then whoever gets A first
 * also gets B, and the other waits for A only until the first is done.
 *
 * Usage: deadlock [fork|spawn|forkserver] [rounds]
 */
#include "demo.h"

/* Exit codes of a worker. */
#define GOT_BOTH 0
#define TIMED_OUT 3

typedef struct {
  mp_lock_t *first, *second;
  /* NULL: do not wait for the other to hold its first lock, nor for it to have tried its
   * second before letting go of the first. */
  mp_barrier_t *holding;
  double timeout;
  char first_name[2], second_name[2]; /* bytes, not pointers: they cross to "spawn" */
} worker_args_t;

static int worker(void *arg, size_t size) {
  (void)size;
  worker_args_t *a = arg;
  const char *me = mp_process_name(mp_current_process());
  CHECK(mp_lock_acquire(a->first, a->timeout));
  if (a->holding)
    CHECK(mp_barrier_wait(a->holding, 30));
  int rc = mp_lock_acquire(a->second, a->timeout);
  if (rc == MP_ETIMEDOUT) {
    printf("    %s holds %s, waited %.1f s for %s: MP_ETIMEDOUT, backs off\n", me,
           a->first_name, a->timeout, a->second_name);
    fflush(stdout);
  }
  /* Letting go of the first lock before the other's wait is over would let it through:
   * wait until both have tried their second. */
  if (a->holding)
    CHECK(mp_barrier_wait(a->holding, 30));
  if (rc == MP_ETIMEDOUT) {
    CHECK(mp_lock_release(a->first));
    return TIMED_OUT;
  }
  CHECK(rc);
  CHECK(mp_lock_release(a->second));
  CHECK(mp_lock_release(a->first));
  return GOT_BOTH;
}

/* Runs two workers; counts in outcomes[GOT_BOTH] and outcomes[TIMED_OUT]. */
static void run(mp_context_t *ctx, worker_args_t args[2], int outcomes[4]) {
  mp_process_t *procs[2];
  demo_start(procs, 2, ctx, worker, args, sizeof args[0]);
  for (int i = 0; i < 2; i++) {
    int code;
    CHECK(mp_process_join(procs[i], 60));
    CHECK(mp_process_exitcode(procs[i], &code));
    if (code != GOT_BOTH && code != TIMED_OUT) {
      fprintf(stderr, "deadlock: %s exited with %d\n", mp_process_name(procs[i]), code);
      exit(1);
    }
    outcomes[code]++;
    CHECK(mp_process_close(procs[i]));
  }
}

static const demo_info_t info = {
    "deadlock [fork|spawn|forkserver] [rounds]",
    "Two processes take two Locks in opposite order (seed 003): each holds one and waits\n"
    "for the other's, a deadlock, caught here by acquire timeouts (MP_ETIMEDOUT) instead of\n"
    "hanging. Then both take them in one global order, `rounds` times (default 20): no\n"
    "deadlock. Exits 1 if the deadlock or its fix did not behave so.",
    false};

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  int rounds = (int)demo_count(argc, argv, 2, 20);
  mp_lock_t *a, *b;
  mp_barrier_t *holding;
  CHECK(mp_lock_create(&a));
  CHECK(mp_lock_create(&b));
  CHECK(mp_barrier_create(&holding, 2, NULL, NULL));
  printf("Deadlock with two processes (%s) and two Locks, A and B.\n\n",
         mp_context_start_method(ctx));

  printf("1. Opposite order: the first takes A then B, the second B then A, each waiting\n"
         "   until the other holds its first lock. Neither can go on; the timeout ends it.\n");
  int opposite[4] = {0};
  worker_args_t crossed[2] = {{a, b, holding, 0.5, "A", "B"}, {b, a, holding, 0.5, "B", "A"}};
  double start = demo_now();
  run(ctx, crossed, opposite);
  printf("   %d of 2 acquires timed out (%.2f s): a deadlock, detected instead of hung.\n\n",
         opposite[TIMED_OUT], demo_now() - start);

  printf(
      "2. One global order: both take A then B, %d rounds. One may wait for A, never both.\n",
      rounds);
  int ordered[4] = {0};
  worker_args_t same[2] = {{a, b, NULL, 30, "A", "B"}, {a, b, NULL, 30, "A", "B"}};
  start = demo_now();
  demo_progress("rounds", 0, rounds);
  for (int r = 0; r < rounds; r++) {
    run(ctx, same, ordered);
    demo_progress("rounds", r + 1, rounds);
  }
  printf("   %d of %d processes got both locks, %d timed out (%.2f s).\n\n", ordered[GOT_BOTH],
         2 * rounds, ordered[TIMED_OUT], demo_now() - start);

  CHECK(mp_barrier_close(holding));
  CHECK(mp_lock_close(a));
  CHECK(mp_lock_close(b));
  /* Both held their first lock when they asked for the second: both must time out. */
  if (opposite[TIMED_OUT] != 2 || ordered[GOT_BOTH] != 2 * rounds) {
    printf("FAILED: the deadlock or its fix did not behave as explained.\n");
    return 1;
  }
  printf("The opposite order deadlocked every time; the global lock order never does.\n");
  return 0;
}
