/*
 * Check suite of the "mpi" context: the Pool's calls with MPI ranks as workers. Run under
 * mpirun -np 4 by tests/mpi_run.sh (rank 0 runs the suite, ranks 1-3 are the workers); run
 * alone, it checks that the context is refused with a sentence. `test_mpi kill` maps a task
 * that kills its rank: the job must end (mpi_run.sh checks how); `test_mpi other-build`, with
 * tests/other_build on the other ranks, must be refused by the build-id check.
 *
 * The tests run in rank 0 itself (CK_NOFORK): MPI starts once per process, and the pool's
 * ranks serve one test's pool after another.
 */
#include <spawn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mp_test.h"

#ifdef MP_TEST_MPI
#include "../lib/pool_mpi.h" /* the wire's checks: this suite links the static library */
#include <mpi.h>
#endif

#define RANKS 3 /* mpirun -np 4 */
#define REFUSED (-1000)

static mp_pool_t *test_pool;

static void destroy_test_pool(void) {
  mp_pool_destroy(test_pool);
  test_pool = NULL;
}

static mp_pool_t *make_pool(int processes, const mp_pool_options_t *extra) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  if (extra)
    o = *extra;
  o.processes = processes;
  MP_ASSERT_OK(mp_get_context("mpi", &o.context));
  MP_ASSERT_OK(mp_pool_create(&test_pool, &o));
  mp_test_set_hook(destroy_test_pool);
  return test_pool;
}

typedef struct {
  long square;
  int pid;  /* the process that ran the item */
  int seed; /* the initializer's value on that rank */
} result_t;

static int initialized_seed;

static int set_seed(const void *arg, size_t size) {
  if (size != sizeof(int))
    return mp_task_fail("the initializer got %zu bytes", size);
  memcpy(&initialized_seed, arg, sizeof initialized_seed);
  return initialized_seed < 0 ? mp_task_fail("a negative seed %d", initialized_seed) : 0;
}

static int square(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  long x;
  memcpy(&x, arg, sizeof x);
  if (x == REFUSED)
    return mp_task_fail("item %d is refused", REFUSED);
  result_t r = {x * x, getpid(), initialized_seed};
  memcpy(result, &r, sizeof r);
  *result_size = sizeof r;
  return 0;
}

static void check_squares(const long *items, const result_t *results, size_t n) {
  for (size_t i = 0; i < n; i++) {
    T_INT_EQ(results[i].square, items[i] * items[i]);
    T_ASSERT(results[i].pid != getpid(), "item %zu ran on rank 0", i);
  }
}

#define N_ITEMS 200

static long *numbers(size_t n) {
  long *items = malloc(n * sizeof *items);
  ck_assert_ptr_nonnull(items);
  for (size_t i = 0; i < n; i++)
    items[i] = (long)i - 50;
  return items;
}

START_TEST(test_map_every_rank) {
  mp_pool_t *pool = make_pool(MP_POOL_CPU_COUNT, NULL);
  T_INT_EQ(mp_pool_processes(pool), RANKS);
  long *items = numbers(N_ITEMS);
  result_t results[N_ITEMS];
  static const size_t chunks[] = {1, 0, 7, N_ITEMS};
  for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
    memset(results, 0, sizeof results);
    MP_ASSERT_OK(mp_pool_map(pool, square, items, N_ITEMS, sizeof(long), results,
                             sizeof(result_t), chunks[c]));
    check_squares(items, results, N_ITEMS);
  }
  MP_ASSERT_OK(mp_pool_starmap(pool, square, items, N_ITEMS, sizeof(long), results,
                               sizeof(result_t), 3));
  check_squares(items, results, N_ITEMS);
  free(items);
  MP_ASSERT_OK(mp_pool_close(pool));
  MP_ASSERT_OK(mp_pool_join(pool, 30));
  destroy_test_pool();
}
END_TEST

#ifdef MP_TEST_MPI
/* Runs on a rank: sleeps, then says whether the rank's next message (a chunk) has come. */
static int next_is_queued(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result_size;
  usleep(20000); /* rank 0's worker thread takes at most a few ms to send ahead */
  int flag = 0;
  /* A probe may take a few turns of MPI's progress to see what came; the next chunk never
   * comes while this one runs if rank 0 sends it only on this one's reply. */
  for (int i = 0; i < 1000 && !flag; i++)
    MPI_Iprobe(0, MPI_ANY_TAG, mp__mpi_comm, &flag, MPI_STATUS_IGNORE);
  memcpy(result, &flag, sizeof flag);
  return 0;
}

/* Several chunks are in flight per rank: while a rank runs one, its next is already there,
 * so it never waits for rank 0 between chunks (but near the job's end: the last 3). */
START_TEST(test_chunks_in_flight) {
  mp_pool_t *pool = make_pool(1, NULL);
  enum { N = 16 };
  long items[N] = {0};
  int queued[N];
  MP_ASSERT_OK(mp_pool_map(pool, next_is_queued, items, N, sizeof items[0], queued,
                           sizeof queued[0], 1));
  int n_queued = 0;
  for (int i = 0; i < N; i++)
    n_queued += queued[i];
  /* Every chunk but the last few had its next one queued behind it; one miss is load. */
  T_ASSERT(n_queued >= N - 5, "%d of %d chunks found the next one queued", n_queued, N);
  T_INT_EQ(queued[N - 1], 0);
  destroy_test_pool();
}
END_TEST
#endif

static int slow_pid(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result_size;
  usleep(200000);
  int pid = getpid();
  memcpy(result, &pid, sizeof pid);
  return 0;
}

/* A short map's chunks are not claimed ahead: each rank runs one of them at once. */
START_TEST(test_short_map_spreads) {
  mp_pool_t *pool = make_pool(MP_POOL_CPU_COUNT, NULL);
  long items[RANKS] = {0};
  int pids[RANKS];
  MP_ASSERT_OK(
      mp_pool_map(pool, slow_pid, items, RANKS, sizeof items[0], pids, sizeof pids[0], 1));
  for (int i = 0; i < RANKS; i++)
    for (int j = 0; j < i; j++)
      T_ASSERT(pids[i] != pids[j], "items %d and %d ran on one rank", j, i);
  destroy_test_pool();
}
END_TEST

static _Atomic int callbacks, error_callbacks;

static int on_result(mp_async_result_t *ar, void *user_data) {
  (void)user_data;
  result_t r;
  if (mp_async_result_get(ar, &r, sizeof r, NULL, 0) == 0 && r.square == 49)
    atomic_fetch_add(&callbacks, 1);
  return 0;
}

static int on_error(mp_async_result_t *ar, void *user_data) {
  (void)user_data;
  if (mp_async_result_get(ar, NULL, 0, NULL, 0) == MP_ETASK)
    atomic_fetch_add(&error_callbacks, 1);
  return 0;
}

START_TEST(test_apply_and_callbacks) {
  mp_pool_t *pool = make_pool(2, NULL);
  long x = 12;
  result_t r;
  size_t len = 0;
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x, sizeof x, &r, sizeof r, &len));
  T_INT_EQ(r.square, 144);
  T_INT_EQ(len, sizeof r);
  mp_async_callbacks_t cbs = {on_result, on_error, NULL};
  mp_async_result_t *ok[8], *bad;
  long seven = 7, refused = REFUSED;
  for (int i = 0; i < 8; i++)
    MP_ASSERT_OK(
        mp_pool_apply_async(pool, square, &seven, sizeof seven, sizeof r, &cbs, &ok[i]));
  MP_ASSERT_OK(
      mp_pool_apply_async(pool, square, &refused, sizeof refused, sizeof r, &cbs, &bad));
  for (int i = 0; i < 8; i++) {
    MP_ASSERT_OK(mp_async_result_get(ok[i], &r, sizeof r, NULL, 30));
    T_INT_EQ(r.square, 49);
    mp_async_result_free(ok[i]);
  }
  MP_ASSERT_ERR(mp_async_result_get(bad, &r, sizeof r, NULL, 30), MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "item -1000 is refused"), "the task's message crosses");
  mp_async_result_free(bad);
  MP_ASSERT_OK(mp_pool_close(pool));
  MP_ASSERT_OK(mp_pool_join(pool, 30)); /* callbacks have run once join returns */
  T_INT_EQ(atomic_load(&callbacks), 8);
  T_INT_EQ(atomic_load(&error_callbacks), 1);
  destroy_test_pool();
}
END_TEST

static void check_iterator(mp_imap_t *it, const long *items, size_t n, bool ordered) {
  bool seen[N_ITEMS] = {0};
  for (size_t k = 0; k < n; k++) {
    result_t r;
    size_t index = SIZE_MAX;
    MP_ASSERT_OK(mp_imap_next(it, &r, &index, 30));
    T_ASSERT(index < n && !seen[index], "index %zu once", index);
    if (ordered)
      T_INT_EQ(index, k);
    seen[index] = true;
    T_INT_EQ(r.square, items[index] * items[index]);
  }
  result_t r;
  MP_ASSERT_ERR(mp_imap_next(it, &r, NULL, 30), MP_EEOF);
  mp_imap_free(it);
}

START_TEST(test_imap) {
  mp_pool_t *pool = make_pool(MP_POOL_CPU_COUNT, NULL);
  long *items = numbers(N_ITEMS);
  mp_imap_t *it;
  MP_ASSERT_OK(
      mp_pool_imap(pool, square, items, N_ITEMS, sizeof(long), sizeof(result_t), 1, &it));
  check_iterator(it, items, N_ITEMS, true);
  MP_ASSERT_OK(mp_pool_imap_unordered(pool, square, items, N_ITEMS, sizeof(long),
                                      sizeof(result_t), 4, &it));
  check_iterator(it, items, N_ITEMS, false);
  free(items);
  destroy_test_pool();
}
END_TEST

START_TEST(test_initializer_runs_on_the_ranks) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  int seed = 4242;
  o.initializer = set_seed;
  o.initargs = &seed;
  o.initargs_size = sizeof seed;
  mp_pool_t *pool = make_pool(MP_POOL_CPU_COUNT, &o);
  long *items = numbers(30);
  result_t results[30];
  MP_ASSERT_OK(
      mp_pool_map(pool, square, items, 30, sizeof(long), results, sizeof(result_t), 1));
  for (int i = 0; i < 30; i++)
    T_INT_EQ(results[i].seed, seed);
  T_INT_EQ(initialized_seed, 0); /* never on rank 0 */
  free(items);
  destroy_test_pool();

  seed = -3;
  mp_pool_t *failed = NULL;
  MP_ASSERT_OK(mp_get_context("mpi", &o.context));
  o.processes = 1;
  MP_ASSERT_ERR(mp_pool_create(&failed, &o), MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "a negative seed -3"), "the initializer's message");
}
END_TEST

static int child_target(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

START_TEST(test_failures_and_refusals) {
  mp_pool_t *pool = make_pool(MP_POOL_CPU_COUNT, NULL);
  long *items = numbers(N_ITEMS);
  result_t results[N_ITEMS];
  items[120] = REFUSED;
  MP_ASSERT_ERR(
      mp_pool_map(pool, square, items, N_ITEMS, sizeof(long), results, sizeof(result_t), 5),
      MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "item -1000 is refused"), "the rank's message");
  free(items);

  /* A lock's handle in the argument: shared memory does not reach another rank. */
  mp_lock_t *lock;
  MP_ASSERT_OK(mp_lock_create(&lock));
  struct {
    long x;
    mp_lock_t *lock;
  } arg = {3, lock};
  result_t r;
  int rc = mp_pool_apply(pool, square, &arg, sizeof arg, &r, sizeof r, NULL);
  T_INT_EQ(rc, MP_ECROSS);
  T_ASSERT(strstr(mp_last_error(), "libmp handle"), "says why");
  mp_lock_close(lock);

  /* The pool still works after both. */
  long x = 5;
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x, sizeof x, &r, sizeof r, NULL));
  T_INT_EQ(r.square, 25);
  destroy_test_pool();

  /* More workers than ranks. */
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = RANKS + 1;
  MP_ASSERT_OK(mp_get_context("mpi", &o.context));
  MP_ASSERT_ERR(mp_pool_create(&test_pool, &o), MP_EINVAL);
  T_ASSERT(strstr(mp_last_error(), "mpirun -np 5"), "says how to run: %s", mp_last_error());

  /* No processes of its own. */
  mp_process_t *p;
  MP_ASSERT_OK(mp_process_create(&p, o.context, child_target, NULL, 0, NULL));
  MP_ASSERT_ERR(mp_process_start(p), MP_EMETHOD);
  mp_process_close(p);
}
END_TEST

#ifdef MP_TEST_MPI
/* ----------------------- what crosses between ranks, forged ----------------------- */

enum { OUT_LEN = 3 * sizeof(result_t), SEQ = 7 };

/* A reply as a rank sends it: the head, msg (NULL: none), then results bytes of results. */
static size_t forge_reply(char *buf, int32_t code, const char *msg, uint64_t failed,
                          size_t results) {
  mp__mpi_reply_head_t r = {code, msg ? (uint32_t)strlen(msg) + 1 : 0, failed, 8, SEQ};
  memset(buf, 0x5a, MP__MPI_ROOM(sizeof r + MP__POOL_MSG) + OUT_LEN);
  memcpy(buf, &r, sizeof r);
  if (msg)
    memcpy(buf + sizeof r, msg, r.msg_len);
  return MP__MPI_ROOM(sizeof r + r.msg_len) + results;
}

/* Rank 0 believes a rank's reply only if its length is the head's and its results'. */
START_TEST(test_reply_checked) {
  static char buf[MP__MPI_ROOM(sizeof(mp__mpi_reply_head_t) + MP__POOL_MSG) + OUT_LEN];
  mp__mpi_reply_head_t r;
  size_t at, results;
  /* Whole: a success, a failure with its results, a refusal without them. */
  size_t len = forge_reply(buf, 0, NULL, 0, OUT_LEN);
  MP_ASSERT_OK(mp__mpi_reply_check(buf, len, SEQ, 10, 3, OUT_LEN, 2, &r, &at, &results));
  T_INT_EQ(at, MP__MPI_ROOM(sizeof r));
  T_INT_EQ(results, OUT_LEN);
  len = forge_reply(buf, MP_ETASK, "it failed", 11, OUT_LEN);
  MP_ASSERT_OK(mp__mpi_reply_check(buf, len, SEQ, 10, 3, OUT_LEN, 2, &r, &at, &results));
  T_INT_EQ(r.failed_item, 11);
  T_INT_EQ(results, OUT_LEN);
  len = forge_reply(buf, MP_ERESOLVE, "another build", 10, 0);
  MP_ASSERT_OK(mp__mpi_reply_check(buf, len, SEQ, 10, 3, OUT_LEN, 2, &r, &at, &results));
  T_INT_EQ(results, 0);
  len = forge_reply(buf, 1, "an initializer's", 0, 0);
  MP_ASSERT_OK(mp__mpi_reply_check(buf, len, SEQ, 0, 0, 0, 2, &r, &at, &results));

  /* Malformed: each is refused with a sentence naming the rank. */
  struct {
    int32_t code;
    const char *msg;
    uint64_t failed;
    size_t results;
    long change;      /* added to the length */
    uint32_t msg_len; /* if not 0, written over the head's */
  } bad[] = {
      {0, NULL, 0, OUT_LEN, -1, 0},                /* a result cut short */
      {0, NULL, 0, 0, 0, 0},                       /* a success without its results */
      {0, NULL, 0, OUT_LEN, 8, 0},                 /* bytes past the results */
      {MP_ETASK, "x", 9, OUT_LEN, 0, 0},           /* a failed item before the chunk */
      {MP_ETASK, "x", 13, OUT_LEN, 0, 0},          /* ...and after it */
      {MP_ETASK, NULL, 10, OUT_LEN, 0, 0},         /* a failure without its message */
      {0, "x", 10, OUT_LEN, 0, 0},                 /* a success with one */
      {MP_ETASK, "x", 10, 0, 0, MP__POOL_MSG + 1}, /* a message longer than one can be */
      {MP_ETASK, "x", 10, 0, -(long)MP__MPI_ROOM(sizeof r + 2) + 20, 0}, /* a head cut */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    len = forge_reply(buf, bad[i].code, bad[i].msg, bad[i].failed, bad[i].results) +
          (size_t)bad[i].change;
    if (bad[i].msg_len)
      memcpy(buf + offsetof(mp__mpi_reply_head_t, msg_len), &bad[i].msg_len, sizeof(uint32_t));
    MP_ASSERT_ERR(mp__mpi_reply_check(buf, len, SEQ, 10, 3, OUT_LEN, 2, &r, &at, &results),
                  MP_EWORKERDIED);
    T_ASSERT(strstr(mp_last_error(), "rank 2 sent a malformed reply"), "case %zu: %s", i,
             mp_last_error());
  }

  /* The answer to another message: refused if it is to come, was never sent (0) or was
   * unreadable; dropped (1) if it was sent before, whatever its shape. */
  static const struct {
    uint64_t seq;
    int rc;
  } answers[] = {{SEQ + 1, MP_EWORKERDIED}, {0, MP_EWORKERDIED}, {SEQ - 1, 1}, {1, 1}};
  for (size_t i = 0; i < sizeof answers / sizeof answers[0]; i++) {
    len = forge_reply(buf, 0, NULL, 0, i % 2 ? 0 : OUT_LEN);
    memcpy(buf + offsetof(mp__mpi_reply_head_t, seq), &answers[i].seq, sizeof(uint64_t));
    T_INT_EQ(mp__mpi_reply_check(buf, len, SEQ, 10, 3, OUT_LEN, 2, &r, &at, &results),
             answers[i].rc);
  }
}
END_TEST

/* A task message as rank 0 sends it: head, the executable's path, count items of 8 bytes. */
static size_t forge_task(char *buf, mp__mpi_task_head_t *h, uint64_t count) {
  *h = (mp__mpi_task_head_t){
      .path_len = 1, .item_size = 8, .result_size = 16, .result_cap = 16, .count = count};
  memset(buf, 0, 1024);
  memcpy(buf, h, sizeof *h);
  return MP__MPI_ROOM(sizeof *h + 1) + count * 8;
}

/* A rank believes a message only if it is a task it can run and reply to. */
START_TEST(test_task_checked) {
  static char buf[1024];
  mp__mpi_task_head_t h, got;
  size_t at, in_len, out_len, len = forge_task(buf, &h, 4);
  MP_ASSERT_OK(mp__mpi_task_check(buf, len, MP__MPI_TAG_TASK, &got, &at, &in_len, &out_len));
  T_INT_EQ(at, MP__MPI_ROOM(sizeof h + 1));
  T_INT_EQ(in_len, 32);
  T_INT_EQ(out_len, 64);
  MP_ASSERT_ERR(mp__mpi_task_check(buf, len, MP__MPI_TAG_REPLY, &got, &at, &in_len, &out_len),
                MP_EINVAL);
  MP_ASSERT_ERR(
      mp__mpi_task_check(buf, sizeof h - 1, MP__MPI_TAG_TASK, &got, &at, &in_len, &out_len),
      MP_EINVAL);
  MP_ASSERT_ERR(
      mp__mpi_task_check(buf, len - 1, MP__MPI_TAG_TASK, &got, &at, &in_len, &out_len),
      MP_EINVAL);
  MP_ASSERT_ERR(
      mp__mpi_task_check(buf, len + 8, MP__MPI_TAG_TASK, &got, &at, &in_len, &out_len),
      MP_EINVAL);
  /* Each field made wrong in turn. */
  for (int field = 0; field < 8; field++) {
    len = forge_task(buf, &h, 4);
    switch (field) {
    case 0:
      h.path_len = 0;
      break;
    case 1:
      h.path_len = 5000;
      break;
    case 2:
      buf[sizeof h] = 'x';
      break; /* the path without its NUL */
    case 3:
      h.build_id_len = MP__BUILD_ID_MAX + 1;
      break;
    case 4:
      h.count = UINT64_MAX / 4;
      break; /* count * item_size overflows */
    case 5:
      h.result_cap = 17;
      break;
    case 6:
      h.varsize = 1, h.item_size = 4, h.count = 8;
      break;
    case 7:
      h.result_size = h.result_cap = (uint64_t)1 << 30;
      break; /* 4 GiB of results */
    }
    memcpy(buf, &h, sizeof h);
    MP_ASSERT_ERR(mp__mpi_task_check(buf, len, MP__MPI_TAG_TASK, &got, &at, &in_len, &out_len),
                  MP_EINVAL);
  }
}
END_TEST

/* Runs on rank 1: sends rank 0 a reply of one head and no results (the answer to a message
 * it could not read, 0) before its real one. */
static int forge_short_reply(const void *arg, size_t size, void *result, size_t *result_size) {
  mp__mpi_reply_head_t r = {0, 0, 0, sizeof(result_t), 0};
  MPI_Send(&r, sizeof r, MPI_BYTE, 0, MP__MPI_TAG_REPLY, mp__mpi_comm);
  return square(arg, size, result, result_size);
}

/* Runs on rank 1: sends rank 0 a reply of 64 KiB of zeros, longer than any to its chunk,
 * before its real one. */
static int forge_long_reply(const void *arg, size_t size, void *result, size_t *result_size) {
  static char junk[65536];
  MPI_Send(junk, sizeof junk, MPI_BYTE, 0, MP__MPI_TAG_REPLY, mp__mpi_comm);
  return square(arg, size, result, result_size);
}

/* A reply shorter than its results, or longer than any, fails its chunk with a sentence
 * (the long one used to end the job: MPI_ERR_TRUNCATE); the rank's real reply that follows
 * is dropped, and the next chunk gets its own. */
START_TEST(test_short_reply_refused) {
  mp_pool_t *pool = make_pool(1, NULL);
  long x = 6;
  result_t r;
  MP_ASSERT_ERR(mp_pool_apply(pool, forge_short_reply, &x, sizeof x, &r, sizeof r, NULL),
                MP_EWORKERDIED);
  T_ASSERT(strstr(mp_last_error(), "rank 1 sent a malformed reply"), "%s", mp_last_error());
  MP_ASSERT_ERR(mp_pool_apply(pool, forge_long_reply, &x, sizeof x, &r, sizeof r, NULL),
                MP_EWORKERDIED);
  T_ASSERT(strstr(mp_last_error(), "rank 1 sent a malformed reply of 65536 bytes"), "%s",
           mp_last_error());
  x = 7;
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x, sizeof x, &r, sizeof r, NULL));
  T_INT_EQ(r.square, 49);
  destroy_test_pool();
}
END_TEST

/* Takes every message of rank's with this tag on comm left in rank 0's queue (at most 0.5 s
 * of looking), so that a test's leftovers do not answer the next test's chunks; how many
 * there were. */
static int drain_replies(int rank, int tag, MPI_Comm comm) {
  int drained = 0;
  double end = mp_test_now() + 0.5;
  while (mp_test_now() < end) {
    int flag = 0;
    MPI_Status st;
    pthread_mutex_lock(&mp__mpi_lock);
    MPI_Iprobe(rank, tag, comm, &flag, &st);
    if (flag) {
      int len = 0;
      MPI_Get_count(&st, MPI_BYTE, &len);
      char *buf = malloc(len > 0 ? (size_t)len : 1);
      MPI_Recv(buf, len, MPI_BYTE, rank, tag, comm, MPI_STATUS_IGNORE);
      free(buf);
      drained++;
    }
    pthread_mutex_unlock(&mp__mpi_lock);
    if (!flag)
      mp_test_sleep(0.01);
  }
  return drained;
}

/* Runs on rank 1: for item 5, sends rank 0 a reply of one head and no results before its
 * real one (as forge_short_reply does); every item squared. */
static int short_reply_at_5(const void *arg, size_t size, void *result, size_t *result_size) {
  long x;
  memcpy(&x, arg, sizeof x);
  if (x == 5) {
    mp__mpi_reply_head_t r = {0, 0, 0, sizeof(result_t), 0};
    MPI_Send(&r, sizeof r, MPI_BYTE, 0, MP__MPI_TAG_REPLY, mp__mpi_comm);
  }
  return square(arg, size, result, result_size);
}

/* After one malformed reply, "the other chunks go on" (docs/api.md): each later item's
 * result is its own. The rank's real reply to the refused chunk comes after it: when
 * replies carried nothing of the message they answer, rank 0 took it for the next chunk's,
 * and so on, and every later item got the previous item's result, silently. */
START_TEST(test_reply_after_malformed_is_own) {
  mp_pool_t *pool = make_pool(1, NULL);
  enum { N = 12 };
  long items[N];
  for (int i = 0; i < N; i++)
    items[i] = i;
  mp_imap_t *it;
  MP_ASSERT_OK(
      mp_pool_imap(pool, short_reply_at_5, items, N, sizeof(long), sizeof(result_t), 1, &it));
  int codes[N];
  long got[N];
  for (int k = 0; k < N; k++) {
    result_t r = {0};
    size_t index = SIZE_MAX;
    codes[k] = mp_imap_next(it, &r, &index, 30);
    got[k] = r.square;
  }
  mp_imap_free(it);
  int left = drain_replies(1, MP__MPI_TAG_REPLY, mp__mpi_comm);
  destroy_test_pool();
  T_INT_EQ(codes[5], MP_EWORKERDIED);
  for (int k = 6; k < N; k++)
    T_ASSERT(codes[k] == 0 && got[k] == (long)k * k,
             "item %d after the malformed reply: %s, square %ld, not %d (%d replies left "
             "over)",
             k, mp_err_name(codes[k]), got[k], k * k, left);
}
END_TEST

/* Runs on rank 1: sends rank 0 a message of the program's own (tag 3, 8 bytes) on
 * MPI_COMM_WORLD, as a program that uses MPI between its ranks would (docs/api.md: "MPI
 * itself is the shared state"), then squares its item. */
static int send_own_note(const void *arg, size_t size, void *result, size_t *result_size) {
  long note = 12345;
  MPI_Send(&note, sizeof note, MPI_BYTE, 0, 3, MPI_COMM_WORLD);
  return square(arg, size, result, result_size);
}

/* The program's own MPI messages and the pool's are told apart: a task that sends rank 0 a
 * note of the program's on MPI_COMM_WORLD (with the tag of the pool's replies) still gets
 * its result, and rank 0's program receives the note. When the pool spoke on
 * MPI_COMM_WORLD, its worker took the note for the chunk's reply. */
START_TEST(test_program_message_not_a_reply) {
  mp_pool_t *pool = make_pool(1, NULL);
  long x = 6;
  result_t r = {0};
  int rc = mp_pool_apply(pool, send_own_note, &x, sizeof x, &r, sizeof r, NULL);
  char why[512];
  snprintf(why, sizeof why, "%s", mp_last_error());
  /* The program receives its note from rank 1. */
  long note = 0;
  int flag = 0, len = -1;
  MPI_Status st;
  for (double end = mp_test_now() + 2; !flag && mp_test_now() < end;) {
    pthread_mutex_lock(&mp__mpi_lock);
    MPI_Iprobe(1, 3, MPI_COMM_WORLD, &flag, &st);
    if (flag) {
      MPI_Get_count(&st, MPI_BYTE, &len);
      char *buf = malloc(len > 0 ? (size_t)len : 1);
      MPI_Recv(buf, len, MPI_BYTE, 1, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      if (len == sizeof note)
        memcpy(&note, buf, sizeof note);
      free(buf);
    }
    pthread_mutex_unlock(&mp__mpi_lock);
    if (!flag)
      mp_test_sleep(0.01);
  }
  drain_replies(1, 3, MPI_COMM_WORLD);
  destroy_test_pool();
  T_ASSERT(rc == 0, "the task's apply failed: %s", why);
  T_INT_EQ(r.square, 36);
  T_ASSERT(note == 12345,
           "the program's note was not received (the message of tag 3 from "
           "rank 1 had %d bytes)",
           len);
}
END_TEST
#endif

static int slow_square(const void *arg, size_t size, void *result, size_t *result_size) {
  usleep(20000);
  return square(arg, size, result, result_size);
}

START_TEST(test_terminate) {
  mp_pool_t *pool = make_pool(MP_POOL_CPU_COUNT, NULL);
  long *items = numbers(300);
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_map_async(pool, slow_square, items, 300, sizeof(long), sizeof(result_t),
                                 1, NULL, &ar));
  usleep(100000);
  MP_ASSERT_OK(mp_pool_terminate(pool));
  MP_ASSERT_OK(mp_pool_join(pool, 30));
  MP_ASSERT_ERR(mp_async_result_get(ar, NULL, 0, NULL, 30), MP_ETERMINATED);
  mp_async_result_free(ar);
  free(items);
  destroy_test_pool();
  /* The ranks are free for the next pool. */
  pool = make_pool(MP_POOL_CPU_COUNT, NULL);
  long x = 9;
  result_t r;
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x, sizeof x, &r, sizeof r, NULL));
  T_INT_EQ(r.square, 81);
  destroy_test_pool();
}
END_TEST

/* `test_mpi descendant`, run by rank 0 with mpirun's variables inherited: a libmp program
 * that mpirun did not start takes no rank, so the "mpi" context is refused to it and its
 * exit does not end the job. */
static int descendant_of_a_rank(void) {
  mp_context_t *ctx;
  int rc = mp_get_context("mpi", &ctx);
  bool refused = rc == MP_EMETHOD && strstr(mp_last_error(), "not to its children");
  if (!refused)
    fprintf(stderr, "FAIL: the descendant got %s: %s\n", mp_err_name(rc), mp_last_error());
  return refused ? 0 : 1;
}

/* Runs `test_mpi descendant` as system() or fork and exec would, with this process's
 * environment: its exit code, or -1 (not started, killed, or still running after 30 s). */
static int run_descendant(void) {
  char *argv[] = {"test_mpi", "descendant", NULL};
  extern char **environ;
  pid_t pid, r;
  if (posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, environ) != 0)
    return -1;
  int status = 0;
  double end = mp_test_now() + 30;
  while ((r = waitpid(pid, &status, WNOHANG)) == 0 && mp_test_now() < end)
    mp_test_sleep(0.01);
  if (r == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
  return r == pid && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int descendant_task(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg, (void)size;
  int code = run_descendant();
  memcpy(result, &code, sizeof code);
  *result_size = sizeof code;
  return 0;
}

/* A libmp program that rank 0, or a task on a worker rank, runs ends alone, and the ranks
 * still serve rank 0's pool after it. */
START_TEST(test_descendant_takes_no_rank) {
  T_INT_EQ(run_descendant(), 0);
  mp_pool_t *pool = make_pool(MP_POOL_CPU_COUNT, NULL);
  long x = 7;
  result_t res;
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x, sizeof x, &res, sizeof res, NULL));
  T_INT_EQ(res.square, 49);
  int code = -2;
  MP_ASSERT_OK(mp_pool_apply(pool, descendant_task, NULL, 0, &code, sizeof code, NULL));
  T_INT_EQ(code, 0);
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x, sizeof x, &res, sizeof res, NULL));
  T_INT_EQ(res.square, 49);
  destroy_test_pool();
}
END_TEST

/* `test_mpi plain`: a program that uses no MPI; it says its main ran. */
static int plain_main(void) {
  printf("plain: main ran\n");
  fflush(stdout);
  return 0;
}

/* Runs `test_mpi plain` with env added to this process's environment, in a process group of
 * its own: its exit code, or -1 if it still ran after timeout seconds (then killed, with
 * its group, and reaped). */
static int run_plain_with(char *const extra[], double timeout) {
  extern char **environ;
  size_t n = 0, k = 0;
  while (environ[n])
    n++;
  while (extra[k])
    k++;
  char **env = calloc(n + k + 1, sizeof *env);
  ck_assert_ptr_nonnull(env);
  size_t m = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(environ[i], "OMPI_", 5) && strncmp(environ[i], "PMIX_", 5) &&
        strncmp(environ[i], "LIBMP_MPI_RANK_TAKEN=", 21))
      env[m++] = environ[i];
  for (size_t i = 0; i < k; i++)
    env[m++] = extra[i];
  char *argv[] = {"test_mpi", "plain", NULL};
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid, r;
  int rc = posix_spawn(&pid, "/proc/self/exe", NULL, &attr, argv, env);
  posix_spawnattr_destroy(&attr);
  free(env);
  if (rc != 0)
    return -2;
  int status = 0;
  double end = mp_test_now() + timeout;
  while ((r = waitpid(pid, &status, WNOHANG)) == 0 && mp_test_now() < end)
    mp_test_sleep(0.01);
  if (r == 0) {
    kill(-pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* Open MPI's variables in a process that mpirun did not start (left in a shell, set by
 * hand, inherited from a non-libmp rank) do not take a plain program over: its main runs.
 * OMPI_COMM_WORLD_RANK=1 made it a worker rank: MPI_Init made it a singleton (rank 0 of 1),
 * and it waited for ever for messages from "rank 0", itself. Without PMIx's identity it
 * takes no role; with it forged too, MPI's own rank and size are not the environment's. */
START_TEST(test_forged_rank_env_runs_main) {
  char *rank1[] = {"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2", NULL};
  int code = run_plain_with(rank1, 10);
  T_ASSERT(code == 0,
           "a plain program with OMPI_COMM_WORLD_RANK=1 forged: exit code %d "
           "(-1: still running after 10 s, main never ran)",
           code);
  char *pmix1[] = {"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2", "PMIX_RANK=1",
                   "PMIX_NAMESPACE=forged", NULL};
  code = run_plain_with(pmix1, 10);
  T_ASSERT(code == 0, "with PMIX_RANK=1 and PMIX_NAMESPACE forged too: exit code %d", code);
  char *rank0[] = {"OMPI_COMM_WORLD_RANK=0", "OMPI_COMM_WORLD_SIZE=2", NULL};
  code = run_plain_with(rank0, 10);
  T_ASSERT(code == 0, "with OMPI_COMM_WORLD_RANK=0 forged: exit code %d", code);
}
END_TEST

START_TEST(test_refused_without_mpirun) {
  mp_context_t *ctx;
  MP_ASSERT_ERR(mp_get_context("mpi", &ctx), MP_EMETHOD);
  T_ASSERT(strstr(mp_last_error(), "mpirun"), "says how to run: %s", mp_last_error());
}
END_TEST

/* `test_mpi kill`: rank 2 dies mid-map; Open MPI ends the job. */
static int kill_rank_2(const void *arg, size_t size, void *result, size_t *result_size) {
  if (atoi(getenv("OMPI_COMM_WORLD_RANK")) == 2)
    raise(SIGKILL);
  return slow_square(arg, size, result, result_size);
}

static int map_and_die(void) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  int rc = mp_get_context("mpi", &o.context);
  if (rc == 0)
    rc = mp_pool_create(&pool, &o);
  long items[N_ITEMS] = {0};
  result_t results[N_ITEMS];
  if (rc == 0)
    rc = mp_pool_map(pool, kill_rank_2, items, N_ITEMS, sizeof(long), results, sizeof(result_t),
                     1);
  fprintf(stderr, "the map returned %d (%s): the job should have ended\n", rc, mp_last_error());
  return 0;
}

/* `test_mpi other-build` as rank 0 of a job whose other ranks run tests/other_build: each
 * rank checks the build-id and refuses the task. */
static int map_on_another_build(void) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  long items[30] = {0};
  result_t results[30];
  int rc = mp_get_context("mpi", &o.context);
  if (rc == 0)
    rc = mp_pool_create(&pool, &o);
  if (rc < 0) {
    fprintf(stderr, "FAIL: %s\n", mp_last_error());
    return 1;
  }
  rc = mp_pool_map(pool, square, items, 30, sizeof(long), results, sizeof(result_t), 1);
  bool refused = rc == MP_ERESOLVE && strstr(mp_last_error(), "another build");
  printf("%s: the map returned %s: %s\n", refused ? "OK" : "FAIL", mp_err_name(rc),
         mp_last_error());
  mp_pool_destroy(pool);
  return refused ? 0 : 1;
}

/* Applies in flight of every size a batch's cell holds and of sizes past it, mixed in one
 * stream, cross the ranks whole (mp_test_apply_sizes): the launcher sends a task's argument
 * from its cell or its slot, and its reply fills either. */
START_TEST(test_apply_sizes_in_flight) {
  mp_pool_t *pool = make_pool(2, NULL);
  mp_test_apply_sizes(pool, 120, 0);
  destroy_test_pool();
}
END_TEST

static Suite *mpi_suite(void) {
  Suite *s = suite_create("mpi");
  TCase *tc = tcase_create("mpi");
  if (getenv("OMPI_COMM_WORLD_RANK")) {
    tcase_add_test(tc, test_map_every_rank);
    tcase_add_test(tc, test_short_map_spreads);
#ifdef MP_TEST_MPI
    tcase_add_test(tc, test_chunks_in_flight);
#endif
    tcase_add_test(tc, test_apply_and_callbacks);
    tcase_add_test(tc, test_apply_sizes_in_flight);
    tcase_add_test(tc, test_imap);
    tcase_add_test(tc, test_initializer_runs_on_the_ranks);
    tcase_add_test(tc, test_failures_and_refusals);
    tcase_add_test(tc, test_terminate);
#ifdef MP_TEST_MPI
    tcase_add_test(tc, test_short_reply_refused);
    tcase_add_test(tc, test_reply_after_malformed_is_own);
    tcase_add_test(tc, test_program_message_not_a_reply);
#endif
    tcase_add_test(tc, test_descendant_takes_no_rank);
  } else {
    tcase_add_test(tc, test_refused_without_mpirun);
    tcase_add_test(tc, test_forged_rank_env_runs_main);
  }
#ifdef MP_TEST_MPI
  tcase_add_test(tc, test_reply_checked);
  tcase_add_test(tc, test_task_checked);
#endif
  suite_add_tcase(s, tc);
  return s;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "kill") == 0)
    return map_and_die();
  if (argc > 1 && strcmp(argv[1], "other-build") == 0)
    return map_on_another_build();
  if (argc > 1 && strcmp(argv[1], "descendant") == 0)
    return descendant_of_a_rank();
  if (argc > 1 && strcmp(argv[1], "plain") == 0)
    return plain_main();
  SRunner *sr = srunner_create(mpi_suite());
  srunner_set_fork_status(sr, CK_NOFORK); /* MPI starts once per process */
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
