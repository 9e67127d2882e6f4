/* semaphore_connections: a Semaphore limits how many processes use a resource at once. */
#include "demo.h"

static const demo_info_t info = {
    "semaphore_connections [fork|spawn|forkserver] [clients]",
    "A Semaphore is a counter of free places (seeds 002, 003: \"a lock with N keys\", the\n"
    "database that takes only so many connections). `clients` processes (default 10) each\n"
    "open a \"connection\" 4 times: take a permit, count themselves in, hold it 20 ms,\n"
    "count themselves out, give the permit back. The most connections in use at once is\n"
    "measured: never more than the limit (3) with the Semaphore; without it, as many as\n"
    "run at once. A BoundedSemaphore also refuses a release that was never acquired.\n"
    "Exits 1 if the limit was ever passed with the Semaphore, or the bounded one accepts\n"
    "an extra release.",
    false};

#define LIMIT 3
#define VISITS 4

typedef struct {
  mp_semaphore_t *sem; /* NULL: no limit */
  mp_value_t *in_use;  /* connections open now */
  mp_value_t *most;    /* the most seen open at once */
} client_args_t;

static int client(void *arg, size_t size) {
  (void)size;
  client_args_t *a = arg;
  for (int v = 0; v < VISITS; v++) {
    if (a->sem)
      CHECK(mp_semaphore_acquire(a->sem, 30));
    long now;
    CHECK(mp_value_add_long(a->in_use, 1, &now));
    /* The most: compared and raised in one hold of the Value's own lock. */
    mp_lock_t *lock = mp_value_get_lock(a->most);
    CHECK(mp_lock_acquire(lock, 30));
    long *most = mp_value_ptr(a->most);
    if (now > *most)
      *most = now;
    CHECK(mp_lock_release(lock));
    usleep(20000); /* the connection's work */
    CHECK(mp_value_add_long(a->in_use, -1, NULL));
    if (a->sem)
      CHECK(mp_semaphore_release(a->sem));
  }
  return 0;
}

/* Runs the clients, with sem or without; returns the most connections open at once. */
static long run(mp_context_t *ctx, mp_semaphore_t *sem, int clients, double *seconds) {
  client_args_t a = {sem, NULL, NULL};
  CHECK(mp_value_create(&a.in_use, 'l', NULL, NULL));
  CHECK(mp_value_create(&a.most, 'l', NULL, NULL));
  mp_process_t *procs[64];
  double start = demo_now();
  for (int i = 0; i < clients; i++) {
    CHECK(mp_process_create(&procs[i], ctx, client, &a, sizeof a, NULL));
    CHECK(mp_process_start(procs[i]));
  }
  if (demo_join(procs, clients, 60) != 0)
    exit(1);
  *seconds = demo_now() - start;
  long most;
  CHECK(mp_value_get_long(a.most, &most));
  CHECK(mp_value_close(a.in_use));
  CHECK(mp_value_close(a.most));
  return most;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  int clients = (int)demo_count_at_most(argc, argv, 2, 10, 64);
  int wrong = 0;
  double seconds;

  printf("%d clients (%s), %d connections each of 20 ms.\n\n", clients,
         mp_context_start_method(ctx), VISITS);
  long free_most = run(ctx, NULL, clients, &seconds);
  printf("Without a limit:        at most %ld connections open at once (%.2f s)\n", free_most,
         seconds);
  mp_semaphore_t *sem;
  CHECK(mp_semaphore_create(&sem, LIMIT));
  long limited = run(ctx, sem, clients, &seconds);
  printf("With Semaphore(%d):      at most %ld connections open at once (%.2f s)\n", LIMIT,
         limited, seconds);
  int left = mp_semaphore_value(sem);
  CHECK(left);
  printf("                        %d permits free at the end: every one came back.\n", left);
  CHECK(mp_semaphore_close(sem));
  wrong += limited > LIMIT || left != LIMIT;
  printf("\nThe limit holds the clients back: with it the work takes at least %d x %d x 20 ms\n"
         "/ %d = %.2f s, since only %d connect at a time.\n\n",
         clients, VISITS, LIMIT, clients * VISITS * 0.020 / LIMIT, LIMIT);

  mp_semaphore_t *bounded;
  CHECK(mp_bounded_semaphore_create(&bounded, LIMIT));
  int extra = mp_semaphore_release(bounded);
  printf("BoundedSemaphore(%d): a release nobody acquired fails with %s (Python's\n"
         "ValueError); a plain Semaphore would take it and allow %d connections.\n",
         LIMIT, mp_err_name(extra), LIMIT + 1);
  CHECK(mp_semaphore_close(bounded));
  wrong += extra != MP_ETOOMANY;

  if (wrong) {
    printf("FAILED: the semaphore did not limit as explained.\n");
    return 1;
  }
  printf("The limit of %d was never passed.\n", LIMIT);
  return 0;
}
