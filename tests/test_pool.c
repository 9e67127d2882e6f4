/*
 * Check suite of the Pool: every call under fork, spawn, forkserver and the thread context;
 * dead workers (SIGKILL, a segfault, exit() in a task) under the three process contexts.
 * Each test destroys its pool, which kills and reaps every worker even when the test fails
 * half-way (the pool is also destroyed by the cleanup hook).
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>

#include "mp_test.h"

static const char *const CONTEXTS[] = {"fork", "spawn", "forkserver", "thread"};
#define N_CONTEXTS 4
#define N_PROCESS_CONTEXTS 3
#define IS_THREAD(i) ((i) == 3)

/* The pool the running test made, destroyed by the cleanup hook if an assertion fails. */
static mp_pool_t *test_pool;

static void destroy_test_pool(void) {
  mp_pool_destroy(test_pool);
  test_pool = NULL;
}

static mp_pool_t *make_pool(int i, int processes, const mp_pool_options_t *extra) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  if (extra)
    o = *extra;
  o.processes = processes;
  MP_ASSERT_OK(mp_get_context(CONTEXTS[i], &o.context));
  MP_ASSERT_OK(mp_pool_create(&test_pool, &o));
  mp_test_set_hook(destroy_test_pool);
  return test_pool;
}

static void end_pool(void) {
  mp_test_set_hook(NULL);
  destroy_test_pool();
}

/* ------------------------------- tasks ------------------------------- */

static int square(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  int x = *(const int *)arg;
  *(int *)result = x * x;
  return 0;
}

static void nap(double seconds) {
  mp_test_sleep(seconds);
}

static int slow_square(const void *arg, size_t size, void *result, size_t *result_size) {
  nap(0.002);
  return square(arg, size, result, result_size);
}

static int sleep_arg_ms(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result;
  (void)result_size;
  nap(*(const int *)arg / 1000.0);
  return 0;
}

static int fail_only_13(const void *arg, size_t size, void *result, size_t *result_size) {
  if (*(const int *)arg == 13)
    return mp_task_fail("thirteen is unlucky");
  return square(arg, size, result, result_size);
}

static int fail_on_13(const void *arg, size_t size, void *result, size_t *result_size) {
  int x = *(const int *)arg;
  if (x == 13)
    return mp_task_fail("thirteen is unlucky (%d)", x);
  if (x == 14)
    return 7; /* no message */
  return square(arg, size, result, result_size);
}

static int report_tid(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result_size;
  *(int *)result = (int)gettid();
  return 0;
}

/* Python's starmap over tuples: a C tuple is a struct. */
typedef struct {
  int a;
  double b;
} pair_t;

static int add_pair(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  const pair_t *p = arg;
  *(double *)result = p->a + p->b;
  return 0;
}

/* An apply with a variable-length result: "x" repeated arg times. */
static int repeat_x(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  size_t n = *(const size_t *)arg;
  if (n > *result_size)
    return mp_task_fail("%zu bytes do not fit %zu", n, *result_size);
  memset(result, 'x', n);
  *result_size = n;
  return 0;
}

static int kill_self_every_1000(const void *arg, size_t size, void *result,
                                size_t *result_size) {
  if (*(const int *)arg % 1000 == 7)
    raise(SIGKILL);
  return square(arg, size, result, result_size);
}

/* AddressSanitizer turns a segfault into an abort (abort_on_error=1). */
#ifdef __SANITIZE_ADDRESS__
#define SEGV_DEATH "signal 6"
#define SEGV_HINTED false /* an abort is no segfault: the worker's death gives no hint */
#else
#define SEGV_DEATH "signal 11"
#define SEGV_HINTED true
#endif

static int segfault(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result;
  (void)result_size;
  raise(SIGSEGV);
  return 0;
}

static int exit_3(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result;
  (void)result_size;
  exit(3);
}

/* Dies on the first attempt only: the marker file says it has tried once. */
static int die_once(const void *arg, size_t size, void *result, size_t *result_size) {
  const char *marker = arg;
  (void)size;
  if (access(marker, F_OK) != 0) {
    int fd = open(marker, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    close(fd);
    raise(SIGKILL);
  }
  *(int *)result = 42;
  *result_size = sizeof(int);
  return 0;
}

static _Atomic int init_value; /* set by the initializer in each worker (threads too) */

static int set_init_value(const void *arg, size_t size) {
  if (size != sizeof(int))
    return mp_task_fail("initargs of %zu bytes", size);
  init_value = *(const int *)arg;
  return 0;
}

static int failing_init(const void *arg, size_t size) {
  (void)arg;
  (void)size;
  return mp_task_fail("no database here");
}

static int read_init_value(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result_size;
  *(int *)result = init_value;
  return 0;
}

/* ------------------------------- maps ------------------------------- */

#define N_ITEMS 1000
static int items[N_ITEMS];

static void fill_items(void) {
  for (int k = 0; k < N_ITEMS; k++)
    items[k] = k;
}

START_TEST(test_map_chunksizes) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  T_INT_EQ(mp_pool_processes(pool), 2);
  static int results[N_ITEMS];
  size_t sizes[] = {0, 1, 7, N_ITEMS, 5 * N_ITEMS};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    memset(results, 0xff, sizeof results);
    MP_ASSERT_OK(
        mp_pool_map(pool, square, items, N_ITEMS, sizeof(int), results, sizeof(int), sizes[s]));
    for (int k = 0; k < N_ITEMS; k++)
      T_INT_EQ(results[k], k * k);
  }
  /* Empty input: nothing to do, at once. */
  MP_ASSERT_OK(mp_pool_map(pool, square, NULL, 0, sizeof(int), NULL, sizeof(int), 0));
  end_pool();
}
END_TEST

/* A chunksize beyond the input is one chunk of it all, however large (n + chunksize - 1 does
 * not wrap to run nothing, nor asks memory for items that do not exist). */
START_TEST(test_huge_chunksize) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int results[10];
  size_t sizes[] = {(size_t)1 << 32, (size_t)1 << 40, SIZE_MAX};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    memset(results, 0xff, sizeof results);
    MP_ASSERT_OK(
        mp_pool_map(pool, square, items, 10, sizeof(int), results, sizeof(int), sizes[s]));
    for (int k = 0; k < 10; k++)
      T_INT_EQ(results[k], k * k);
    mp_imap_t *it;
    MP_ASSERT_OK(
        mp_pool_imap(pool, square, items, 10, sizeof(int), sizeof(int), sizes[s], &it));
    int r, got = 0;
    size_t index;
    while (mp_imap_next(it, &r, &index, 10) == 0) {
      T_INT_EQ(index, got);
      T_INT_EQ(r, got * got);
      got++;
    }
    mp_imap_free(it);
    T_INT_EQ(got, 10);
  }
  end_pool();
}
END_TEST

/* A failed submission's message is the call's name in front of the reason, intact. */
START_TEST(test_submit_error_message) {
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  MP_ASSERT_ERR(mp_pool_map(pool, square, NULL, (size_t)1 << 32, 0, NULL, 0, 1), MP_EINVAL);
  T_STR_EQ(mp_last_error(), "mp_pool_map: 4294967296 chunks: use a larger chunksize");
  end_pool();
}
END_TEST

START_TEST(test_starmap) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  pair_t pairs[50];
  double sums[50];
  for (int k = 0; k < 50; k++)
    pairs[k] = (pair_t){k, k / 2.0};
  MP_ASSERT_OK(
      mp_pool_starmap(pool, add_pair, pairs, 50, sizeof(pair_t), sums, sizeof(double), 0));
  for (int k = 0; k < 50; k++)
    T_ASSERT(sums[k] == k + k / 2.0, "sum %d is %g", k, sums[k]);
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_starmap_async(pool, add_pair, pairs, 50, sizeof(pair_t), sizeof(double),
                                     3, NULL, &ar));
  memset(sums, 0, sizeof sums);
  MP_ASSERT_OK(mp_async_result_get(ar, sums, sizeof sums, NULL, 10));
  T_ASSERT(sums[49] == 49 + 24.5, "last sum is %g", sums[49]);
  mp_async_result_free(ar);
  end_pool();
}
END_TEST

START_TEST(test_map_async) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  mp_async_result_t *ar;
  MP_ASSERT_OK(
      mp_pool_map_async(pool, square, items, N_ITEMS, sizeof(int), sizeof(int), 0, NULL, &ar));
  static int results[N_ITEMS];
  size_t len = 0;
  MP_ASSERT_ERR(mp_async_result_get(ar, results, sizeof results - 1, &len, 10), MP_ETOOSMALL);
  T_INT_EQ(len, sizeof results);
  MP_ASSERT_OK(mp_async_result_wait(ar, 10));
  T_INT_EQ(mp_async_result_ready(ar), 1);
  T_INT_EQ(mp_async_result_successful(ar), 1);
  MP_ASSERT_OK(mp_async_result_get(ar, results, sizeof results, &len, 0));
  for (int k = 0; k < N_ITEMS; k++)
    T_INT_EQ(results[k], k * k);
  mp_async_result_free(ar);
  end_pool();
}
END_TEST

START_TEST(test_map_failure) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  static int results[N_ITEMS];
  MP_ASSERT_ERR(mp_pool_map(pool, fail_on_13, items, 100, sizeof(int), results, sizeof(int), 1),
                MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "item 13: thirteen is unlucky (13)") != NULL, "message: %s",
           mp_last_error());
  /* The other items are accounted for: their results are there. */
  T_INT_EQ(results[12], 144);
  T_INT_EQ(results[99], 99 * 99);
  T_INT_EQ(results[13], 0);
  /* A task that fails without a message. */
  MP_ASSERT_ERR(
      mp_pool_map(pool, fail_on_13, items + 14, 5, sizeof(int), results, sizeof(int), 0),
      MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "the task returned 7") != NULL, "message: %s",
           mp_last_error());
  /* The pool goes on. */
  MP_ASSERT_OK(mp_pool_map(pool, square, items, 10, sizeof(int), results, sizeof(int), 0));
  T_INT_EQ(results[9], 81);
  end_pool();
}
END_TEST

/* Leaves a message at item 3 and succeeds; fails at item 5 with no message of its own. */
static int note_then_fail(const void *arg, size_t size, void *result, size_t *result_size) {
  int x = *(const int *)arg;
  if (x == 3) {
    mp_task_fail("a note of item 3");
    *(int *)result = x;
    return 0;
  }
  if (x == 5)
    return 7;
  return square(arg, size, result, result_size);
}

/* Fails item 1 with a message, item 2 without one. */
static int fail_twice(const void *arg, size_t size, void *result, size_t *result_size) {
  int x = *(const int *)arg;
  if (x == 1)
    return mp_task_fail("a note of item 1");
  if (x == 2)
    return 7;
  return square(arg, size, result, result_size);
}

/* The failure is item 5's own: "the task returned 7", not the note item 3 left. */
static void check_not_the_note(void) {
  T_ASSERT(strstr(mp_last_error(), "item 5: the task returned 7") &&
               !strstr(mp_last_error(), "note"),
           "message: %s", mp_last_error());
}

/* A message a task left at an item that then succeeded is not a later item's: in the same
 * chunk, in the worker's next chunk (one worker, chunks of 2: item 3 ends one, item 5 is in
 * the next), and in the loop of items of any size. Every item starts with none: the worker
 * clears the flag once per chunk, and again after an item that set it and succeeded. */
START_TEST(test_stale_failure_message) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int results[10];
  MP_ASSERT_ERR(
      mp_pool_map(pool, note_then_fail, items, 10, sizeof(int), results, sizeof(int), 10),
      MP_ETASK);
  check_not_the_note();
  mp_item_t in[10];
  for (int k = 0; k < 10; k++)
    in[k] = (mp_item_t){&items[k], sizeof(int)};
  mp_item_t *out = NULL;
  MP_ASSERT_ERR(mp_pool_map_items(pool, note_then_fail, in, 10, sizeof(int), 10, &out),
                MP_ETASK);
  check_not_the_note();
  free(out);
  end_pool();
  pool = make_pool(_i, 1, NULL);
  MP_ASSERT_ERR(
      mp_pool_map(pool, note_then_fail, items, 10, sizeof(int), results, sizeof(int), 2),
      MP_ETASK);
  check_not_the_note();
  /* A chunk that failed with a message leaves the flag set: the next chunk's failure, in
   * the same worker, is still its own. */
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap(pool, fail_twice, items, 4, sizeof(int), sizeof(int), 2, &it));
  int r;
  MP_ASSERT_OK(mp_imap_next(it, &r, NULL, 10));
  MP_ASSERT_ERR(mp_imap_next(it, &r, NULL, 10), MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "a note of item 1"), "message: %s", mp_last_error());
  MP_ASSERT_ERR(mp_imap_next(it, &r, NULL, 10), MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "item 2: the task returned 7") &&
               !strstr(mp_last_error(), "note"),
           "message: %s", mp_last_error());
  mp_imap_free(it);
  end_pool();
}
END_TEST

/* A result buffer that a fork shares copy-on-write again after a map wrote it, then written
 * by the next maps, whole and in part: every result lands (the parent maps a buffer's pages
 * in at once the first time, and again only after a fork). */
START_TEST(test_results_after_fork) {
  enum { N = 40000 }; /* 160 KB of results: mapped in at once; 40001^2 fits an int */
  static int in[N], out[N];
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  for (int k = 0; k < N; k++)
    in[k] = k;
  MP_ASSERT_OK(mp_pool_map(pool, square, in, N, sizeof(int), out, sizeof(int), 0));
  T_INT_EQ(out[N - 1], (N - 1) * (N - 1));
  pid_t pid = fork();
  if (pid == 0)
    _exit(0);
  T_ASSERT(pid > 0, "fork: %s", strerror(errno));
  int status;
  T_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
  for (int round = 1; round <= 2; round++) {
    for (int k = 0; k < N; k++)
      in[k] = k + round;
    MP_ASSERT_OK(mp_pool_map(pool, square, in, N, sizeof(int), out, sizeof(int), 0));
    for (int k = 0; k < N; k++)
      T_ASSERT(out[k] == (k + round) * (k + round), "round %d: result %d is %d", round, k,
               out[k]);
  }
  MP_ASSERT_OK(mp_pool_map(pool, square, in, N / 2, sizeof(int), out + N / 4, sizeof(int), 0));
  for (int k = 0; k < N / 2; k++)
    T_ASSERT(out[N / 4 + k] == (k + 2) * (k + 2), "part: result %d is %d", k, out[N / 4 + k]);
  T_INT_EQ(out[0], 4);
  end_pool();
}
END_TEST

/* ------------------------------- iterators ------------------------------- */

START_TEST(test_imap_ordered) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  size_t chunksizes[] = {0, 3, 2 * N_ITEMS};
  for (size_t s = 0; s < 3; s++) {
    mp_imap_t *it;
    MP_ASSERT_OK(mp_pool_imap(pool, square, items, N_ITEMS, sizeof(int), sizeof(int),
                              chunksizes[s], &it));
    for (int k = 0; k < N_ITEMS; k++) {
      int r = -1;
      size_t index = 0;
      MP_ASSERT_OK(mp_imap_next(it, &r, &index, 10));
      T_INT_EQ(index, k);
      T_INT_EQ(r, k * k);
    }
    int r;
    MP_ASSERT_ERR(mp_imap_next(it, &r, NULL, 1), MP_EEOF);
    mp_imap_free(it);
  }
  end_pool();
}
END_TEST

START_TEST(test_imap_unordered) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  mp_imap_t *it;
  MP_ASSERT_OK(
      mp_pool_imap_unordered(pool, slow_square, items, 200, sizeof(int), sizeof(int), 0, &it));
  static bool seen[200];
  memset(seen, 0, sizeof seen);
  for (int k = 0; k < 200; k++) {
    int r;
    size_t index = 1000;
    MP_ASSERT_OK(mp_imap_next(it, &r, &index, 10));
    T_ASSERT(index < 200 && !seen[index], "index %zu twice or out of range", index);
    seen[index] = true;
    T_INT_EQ(r, (int)(index * index));
  }
  int r;
  MP_ASSERT_ERR(mp_imap_next(it, &r, NULL, 1), MP_EEOF);
  mp_imap_free(it);
  /* Empty input. */
  MP_ASSERT_OK(mp_pool_imap_unordered(pool, square, NULL, 0, sizeof(int), sizeof(int), 0, &it));
  MP_ASSERT_ERR(mp_imap_next(it, &r, NULL, 1), MP_EEOF);
  mp_imap_free(it);
  end_pool();
}
END_TEST

START_TEST(test_imap_timeout_and_failure) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  int ms = 300;
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap(pool, sleep_arg_ms, &ms, 1, sizeof(int), 0, 0, &it));
  double t0 = mp_test_now();
  MP_ASSERT_ERR(mp_imap_next(it, NULL, NULL, 0.05), MP_ETIMEDOUT);
  T_ASSERT(mp_test_now() - t0 >= 0.05, "timed out early");
  MP_ASSERT_OK(mp_imap_next(it, NULL, NULL, 10));
  mp_imap_free(it);
  /* A failed item is reported at its place; the iteration goes on. */
  MP_ASSERT_OK(mp_pool_imap(pool, fail_on_13, items + 10, 6, sizeof(int), sizeof(int), 1, &it));
  for (int k = 10; k < 16; k++) {
    int r;
    size_t index;
    int rc = mp_imap_next(it, &r, &index, 10);
    T_INT_EQ(index, k - 10);
    if (k == 13 || k == 14)
      MP_ASSERT_ERR(rc, MP_ETASK);
    else
      MP_ASSERT_OK(rc);
  }
  mp_imap_free(it);
  end_pool();
}
END_TEST

/* imap keeps a bounded number of tasks in flight: each task appends a byte to a file named
 * after its item (the test's pid), so the file's size counts the tasks that ran. */
static int count_task(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  char path[64];
  snprintf(path, sizeof path, "/tmp/libmp-imap-%d", *(const int *)arg);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0 || write(fd, "x", 1) != 1)
    return mp_task_fail("cannot append to %s", path);
  close(fd);
  *(int *)result = 1;
  return 0;
}

START_TEST(test_imap_bounded) {
  enum { N = 100000 };
  static int many[N];
  for (int k = 0; k < N; k++)
    many[k] = (int)getpid();
  char path[64];
  snprintf(path, sizeof path, "/tmp/libmp-imap-%d", (int)getpid());
  unlink(path);
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap(pool, count_task, many, N, sizeof(int), sizeof(int), 1, &it));
  struct stat st;
  for (int tries = 0; tries < 1000 && stat(path, &st) != 0; tries++)
    nap(0.01);
  nap(0.3); /* time for many more tasks, were they fed */
  T_ASSERT(stat(path, &st) == 0, "no task ran");
  T_ASSERT(st.st_size >= 1 && st.st_size <= 64, "%lld tasks ran while none was taken",
           (long long)st.st_size);
  int r = 0;
  for (int k = 0; k < 100; k++)
    MP_ASSERT_OK(mp_imap_next(it, &r, NULL, 10));
  T_INT_EQ(r, 1);
  /* Freeing it drops the chunks never fed; the pool goes on at once. */
  mp_imap_free(it);
  unlink(path);
  static int results[1000];
  fill_items();
  MP_ASSERT_OK(mp_pool_map(pool, square, items, 1000, sizeof(int), results, sizeof(int), 0));
  T_INT_EQ(results[999], 999 * 999);
  end_pool();
}
END_TEST

/* test_free_while_running's marks: files named after the test's pid and what they count,
 * one byte a mark (a task's view of time, whatever process it runs in). */
static void mark_path(char *path, size_t cap, int pid, const char *what) {
  snprintf(path, cap, "/tmp/libmp-abandon-%d-%s", pid, what);
}

static bool add_mark(int pid, const char *what) {
  char path[64];
  mark_path(path, sizeof path, pid, what);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  bool ok = fd >= 0 && write(fd, "x", 1) == 1;
  if (fd >= 0)
    close(fd);
  return ok;
}

static long marks(int pid, const char *what) {
  char path[64];
  struct stat st;
  mark_path(path, sizeof path, pid, what);
  return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Waits up to 10 s for n marks. */
static bool wait_marks(int pid, const char *what, long n) {
  for (int tries = 0; tries < 2000 && marks(pid, what) < n; tries++)
    nap(0.005);
  return marks(pid, what) >= n;
}

static void clear_marks(int pid) {
  const char *const whats[] = {"slow", "go", "fast", "done"};
  char path[64];
  for (size_t k = 0; k < sizeof whats / sizeof *whats; k++) {
    mark_path(path, sizeof path, pid, whats[k]);
    unlink(path);
  }
}

/* An item of test_free_while_running: a negative x marks a slow task, which says it runs,
 * waits for the test's go, writes its result and says it did. */
typedef struct {
  int pid, x;
} marked_t;

static int square_marked(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  const marked_t *m = arg;
  int pid = m->pid, x = m->x; /* read first: a reused block's input is another job's */
  if (x < 0 && (!add_mark(pid, "slow") || !wait_marks(pid, "go", 1)))
    return mp_task_fail("no go");
  *(int *)result = x * x;
  return add_mark(pid, x < 0 ? "done" : "fast") ? 0 : mp_task_fail("cannot mark");
}

/* An iterator freed while its chunks run: the next job of its shape must not get its block
 * while those tasks can still write their results there (they did, over the next job's). */
START_TEST(test_free_while_running) {
  int pid = getpid();
  clear_marks(pid);
  mp_pool_t *pool = make_pool(_i, 3, NULL);
  const marked_t slow[2] = {{pid, -1}, {pid, -2}}, fast[2] = {{pid, 5}, {pid, 6}};
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap(pool, square_marked, slow, 2, sizeof *slow, sizeof(int), 1, &it));
  T_ASSERT(wait_marks(pid, "slow", 2), "%ld of the 2 slow tasks ran", marks(pid, "slow"));
  mp_imap_free(it);
  MP_ASSERT_OK(mp_pool_imap(pool, square_marked, fast, 2, sizeof *fast, sizeof(int), 1, &it));
  /* The third worker runs the new tasks, then the freed ones write their results. */
  T_ASSERT(wait_marks(pid, "fast", 2), "%ld of the 2 new tasks ran", marks(pid, "fast"));
  T_ASSERT(add_mark(pid, "go"), "no go");
  T_ASSERT(wait_marks(pid, "done", 2), "%ld of the 2 freed tasks ended", marks(pid, "done"));
  for (int k = 0; k < 2; k++) {
    int r = 0;
    MP_ASSERT_OK(mp_imap_next(it, &r, NULL, 10));
    T_INT_EQ(r, fast[k].x * fast[k].x);
  }
  mp_imap_free(it);
  clear_marks(pid);
  end_pool();
}
END_TEST

/* ------------------------------- apply ------------------------------- */

START_TEST(test_apply) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int x = 9, r = 0;
  size_t len = 0;
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x, sizeof x, &r, sizeof r, &len));
  T_INT_EQ(r, 81);
  T_INT_EQ(len, sizeof r);
  /* A result of any size, shorter than its room. */
  size_t n = 100000;
  char *buf = malloc(200000);
  MP_ASSERT_OK(mp_pool_apply(pool, repeat_x, &n, sizeof n, buf, 200000, &len));
  T_INT_EQ(len, 100000);
  T_ASSERT(buf[0] == 'x' && buf[99999] == 'x', "result bytes");
  /* The buffer too small: kept, and given with enough room. */
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_apply_async(pool, repeat_x, &n, sizeof n, 200000, NULL, &ar));
  MP_ASSERT_ERR(mp_async_result_get(ar, buf, 10, &len, 10), MP_ETOOSMALL);
  T_INT_EQ(len, 100000);
  MP_ASSERT_OK(mp_async_result_get(ar, buf, 200000, &len, 10));
  mp_async_result_free(ar);
  free(buf);
  /* A failure with its message. */
  x = 13;
  MP_ASSERT_ERR(mp_pool_apply(pool, fail_on_13, &x, sizeof x, &r, sizeof r, NULL), MP_ETASK);
  T_STR_EQ(mp_last_error(), "thirteen is unlucky (13)");
  end_pool();
}
END_TEST

/* Applies in flight share batches whatever their sizes: arguments and results that fit a
 * chunk's cell (16 bytes) and those that do not, mixed in one stream, each given back whole;
 * a buffer too small for either is told so (mp_test_apply_sizes). Twice: the second round's
 * batches reuse the first's blocks. */
START_TEST(test_apply_sizes_in_a_batch) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  for (int round = 0; round < 2; round++)
    mp_test_apply_sizes(pool, MP_TEST_APPLIES_MAX, round);
  end_pool();
}
END_TEST

START_TEST(test_apply_async_timeouts) {
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  int ms = 300;
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_apply_async(pool, sleep_arg_ms, &ms, sizeof ms, 0, NULL, &ar));
  T_INT_EQ(mp_async_result_ready(ar), 0);
  MP_ASSERT_ERR(mp_async_result_successful(ar), MP_ENOTREADY);
  double t0 = mp_test_now();
  MP_ASSERT_ERR(mp_async_result_get(ar, NULL, 0, NULL, 0.05), MP_ETIMEDOUT);
  T_ASSERT(mp_test_now() - t0 >= 0.05, "timed out early");
  MP_ASSERT_ERR(mp_async_result_wait(ar, 0), MP_ETIMEDOUT);
  MP_ASSERT_OK(mp_async_result_wait(ar, 10));
  T_INT_EQ(mp_async_result_successful(ar), 1);
  mp_async_result_free(ar);
  /* Many in flight at once, collected afterwards, beyond the pool's slots. */
  enum { MANY = 600 };
  static mp_async_result_t *ars[MANY];
  for (int k = 0; k < MANY; k++)
    MP_ASSERT_OK(mp_pool_apply_async(pool, square, &k, sizeof k, sizeof(int), NULL, &ars[k]));
  for (int k = 0; k < MANY; k++) {
    int r = -1;
    MP_ASSERT_OK(mp_async_result_get(ars[k], &r, sizeof r, NULL, 10));
    T_INT_EQ(r, k * k);
    mp_async_result_free(ars[k]);
  }
  end_pool();
}
END_TEST

/* ----------------------------- held applies ----------------------------- */

/* Applies that follow others in a stream may be held back and shown to the workers together
 * (lib/pool.c, APPLIES_HELD). HELD_QUICK quick ones follow two that keep both workers busy
 * for HELD_BUSY_MS, so that no worker sleeps when they are appended: they are held. */
enum { HELD_QUICK = 5, HELD_BUSY_MS = 200 };

static _Atomic int held_callbacks;

static int count_callback(mp_async_result_t *ar, void *user) {
  (void)ar;
  (void)user;
  held_callbacks++;
  return 0;
}

/* A held-applies test's pool and results: two busy applies, then the quick ones of x. */
typedef struct {
  mp_pool_t *pool;
  mp_async_result_t *busy[2], *quick[HELD_QUICK];
  int x[HELD_QUICK];
} held_t;

/* A pool of 2 (context i) with both workers busy, then HELD_QUICK squares of 0.. with
 * callbacks (or none). */
static void stream_behind_busy_workers(int i, held_t *h, const mp_async_callbacks_t *callbacks) {
  static const int ms = HELD_BUSY_MS;
  h->pool = make_pool(i, 2, NULL);
  for (int k = 0; k < 2; k++)
    MP_ASSERT_OK(
        mp_pool_apply_async(h->pool, sleep_arg_ms, &ms, sizeof ms, 0, NULL, &h->busy[k]));
  for (int k = 0; k < HELD_QUICK; k++) {
    h->x[k] = k;
    MP_ASSERT_OK(mp_pool_apply_async(h->pool, square, &h->x[k], sizeof h->x[k], sizeof(int),
                                     callbacks, &h->quick[k]));
  }
}

/* The end of a held-applies test: each quick apply's square checked (if squared), every
 * result freed, the pool destroyed. */
static void end_held(held_t *h, bool squared) {
  for (int k = 0; k < HELD_QUICK && squared; k++) {
    int r = -1;
    MP_ASSERT_OK(mp_async_result_get(h->quick[k], &r, sizeof r, NULL, 0));
    T_INT_EQ(r, k * k);
  }
  for (int k = 0; k < 2; k++)
    mp_async_result_free(h->busy[k]);
  for (int k = 0; k < HELD_QUICK; k++)
    mp_async_result_free(h->quick[k]);
  end_pool();
}

/* Held applies run with no wait and no look at a result: a worker that runs out of work
 * takes them (each callback counts one). Before, with nothing to take them, they stayed
 * held for ever. */
START_TEST(test_held_applies_run_unwaited) {
  held_t h;
  mp_async_callbacks_t counting = {count_callback, count_callback, NULL};
  held_callbacks = 0;
  stream_behind_busy_workers(_i, &h, &counting);
  double until = mp_test_now() + 20 * mp_test_slowdown();
  while (held_callbacks < HELD_QUICK && mp_test_now() < until)
    nap(0.001);
  T_INT_EQ(held_callbacks, HELD_QUICK);
  end_held(&h, true);
}
END_TEST

/* A close with applies held: join returns and each has its result. The close shows them
 * (test_held_applies_closed), and so would the workers' take once they run out of work;
 * on 887aa4f, whose take did not raise a closed limit, a close without its show left join
 * waiting out its timeout. */
START_TEST(test_close_runs_held_applies) {
  held_t h;
  stream_behind_busy_workers(_i, &h, NULL);
  MP_ASSERT_OK(mp_pool_close(h.pool));
  MP_ASSERT_OK(mp_pool_join(h.pool, 20));
  end_held(&h, true);
}
END_TEST

/* A terminate fails the held applies with the rest: each get returns, with its result or
 * MP_ETERMINATED. */
START_TEST(test_terminate_fails_held_applies) {
  held_t h;
  stream_behind_busy_workers(_i, &h, NULL);
  MP_ASSERT_OK(mp_pool_terminate(h.pool));
  for (int k = 0; k < HELD_QUICK; k++) {
    int r = -1, rc = mp_async_result_get(h.quick[k], &r, sizeof r, NULL, 10);
    T_ASSERT(rc == MP_ETERMINATED || (rc == 0 && r == k * k), "apply %d: %d (%s), result %d", k,
             rc, mp_last_error(), r);
  }
  end_held(&h, false);
}
END_TEST

/* ------------------------------- callbacks ------------------------------- */

static _Atomic int callbacks_run, error_callbacks_run, callback_sum;

static int on_result(mp_async_result_t *ar, void *user) {
  int r = 0;
  if (mp_async_result_get(ar, &r, sizeof r, NULL, 0) == 0)
    callback_sum += r;
  callbacks_run++;
  return user ? -1 : 0; /* user data set: a failing callback */
}

static int on_error(mp_async_result_t *ar, void *user) {
  (void)user;
  if (mp_async_result_get(ar, NULL, 0, NULL, 0) == MP_ETASK &&
      strstr(mp_last_error(), "thirteen"))
    error_callbacks_run++;
  return 0;
}

START_TEST(test_callbacks) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  callbacks_run = error_callbacks_run = callback_sum = 0;
  int failing = 1;
  mp_async_callbacks_t fails = {on_result, on_error, &failing};
  mp_async_callbacks_t ok = {on_result, on_error, NULL};
  mp_async_result_t *ar[4];
  int x[4] = {2, 13, 3, 4};
  MP_ASSERT_OK(
      mp_pool_apply_async(pool, fail_on_13, &x[0], sizeof(int), sizeof(int), &fails, &ar[0]));
  MP_ASSERT_OK(
      mp_pool_apply_async(pool, fail_on_13, &x[1], sizeof(int), sizeof(int), &ok, &ar[1]));
  MP_ASSERT_OK(
      mp_pool_apply_async(pool, fail_on_13, &x[2], sizeof(int), sizeof(int), &ok, &ar[2]));
  MP_ASSERT_OK(
      mp_pool_map_async(pool, square, &x[3], 1, sizeof(int), sizeof(int), 0, &ok, &ar[3]));
  for (int k = 0; k < 4; k++)
    MP_ASSERT_OK(mp_async_result_wait(ar[k], 10));
  /* get() after the callback: the callbacks have run once ready. */
  T_INT_EQ(callbacks_run, 3);
  T_INT_EQ(error_callbacks_run, 1);
  T_INT_EQ(callback_sum, 4 + 9 + 16);
  T_INT_EQ(mp_pool_callback_errors(pool), 1);
  /* A result freed before its callback ran still has its callback. */
  mp_async_result_t *early;
  int ms = 50;
  MP_ASSERT_OK(
      mp_pool_apply_async(pool, sleep_arg_ms, &ms, sizeof ms, sizeof(int), &ok, &early));
  mp_async_result_free(early);
  for (int k = 0; k < 4; k++)
    mp_async_result_free(ar[k]);
  for (int tries = 0; tries < 1000 && callbacks_run < 4; tries++)
    nap(0.01);
  T_INT_EQ(callbacks_run, 4);
  end_pool();
}
END_TEST

/* --------------------------- applies in flight --------------------------- */

/* Applies submitted while others are in flight share batches (lib/pool_jobs.c): each is its
 * own request all the same. A slow apply first keeps the worker busy, so that those after
 * it queue. */
static mp_async_result_t *hold_worker(mp_pool_t *pool, int ms) {
  static int held;
  held = ms;
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_apply_async(pool, sleep_arg_ms, &held, sizeof held, 0, NULL, &ar));
  return ar;
}

/* Many applies in flight: each result its own, taken in any order; one failure among them
 * fails that apply alone; results of any size up to result_max; a buffer too small. */
START_TEST(test_applies_in_flight) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  enum { MANY = 300 };
  static mp_async_result_t *ars[MANY];
  static int x[MANY];
  mp_async_result_t *held = hold_worker(pool, 50);
  for (int k = 0; k < MANY; k++) {
    x[k] = k;
    MP_ASSERT_OK(mp_pool_apply_async(pool, fail_only_13, &x[k], sizeof x[k], sizeof(int), NULL,
                                     &ars[k]));
  }
  for (int j = 0; j < MANY; j++) {
    int k = (j * 7) % MANY, r = -1;
    if (k == 13) {
      MP_ASSERT_ERR(mp_async_result_get(ars[k], &r, sizeof r, NULL, 10), MP_ETASK);
      T_STR_EQ(mp_last_error(), "thirteen is unlucky");
      T_INT_EQ(mp_async_result_successful(ars[k]), 0);
    } else {
      MP_ASSERT_OK(mp_async_result_get(ars[k], &r, sizeof r, NULL, 10));
      T_INT_EQ(r, k * k);
      T_INT_EQ(mp_async_result_successful(ars[k]), 1);
    }
    T_INT_EQ(mp_async_result_ready(ars[k]), 1);
  }
  for (int k = 0; k < MANY; k++)
    mp_async_result_free(ars[k]);
  MP_ASSERT_OK(mp_async_result_get(held, NULL, 0, NULL, 10));
  mp_async_result_free(held);
  /* Results of any size, and two functions in turn (each closes the other's batch). */
  static size_t lens[MANY];
  held = hold_worker(pool, 50);
  for (int k = 0; k < MANY; k++) {
    lens[k] = (size_t)(k * 37) % 500;
    if (k % 3)
      MP_ASSERT_OK(
          mp_pool_apply_async(pool, repeat_x, &lens[k], sizeof lens[k], 500, NULL, &ars[k]));
    else
      MP_ASSERT_OK(
          mp_pool_apply_async(pool, square, &x[k], sizeof x[k], sizeof(int), NULL, &ars[k]));
  }
  for (int k = MANY - 1; k >= 0; k--) {
    char buf[500];
    size_t len = 0;
    if (k % 3 == 0) {
      int r = -1;
      MP_ASSERT_OK(mp_async_result_get(ars[k], &r, sizeof r, &len, 10));
      T_INT_EQ(r, k * k);
      T_INT_EQ(len, sizeof r);
      continue;
    }
    if (lens[k] > 10) {
      MP_ASSERT_ERR(mp_async_result_get(ars[k], buf, 10, &len, 10), MP_ETOOSMALL);
      T_INT_EQ(len, lens[k]);
    }
    memset(buf, 0, sizeof buf);
    MP_ASSERT_OK(mp_async_result_get(ars[k], buf, sizeof buf, &len, 10));
    T_INT_EQ(len, lens[k]);
    T_ASSERT(lens[k] == 0 || (buf[0] == 'x' && buf[lens[k] - 1] == 'x'), "apply %d's bytes", k);
    T_ASSERT(buf[lens[k] % sizeof buf] == 0 || lens[k] == sizeof buf, "apply %d wrote more", k);
  }
  for (int k = 0; k < MANY; k++)
    mp_async_result_free(ars[k]);
  MP_ASSERT_OK(mp_async_result_get(held, NULL, 0, NULL, 10));
  mp_async_result_free(held);
  end_pool();
}
END_TEST

/* A worker that dies on one apply of a batch fails that apply alone. */
START_TEST(test_applies_in_flight_worker_dies) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  enum { MANY = 200 };
  static mp_async_result_t *ars[MANY];
  static int x[MANY];
  mp_async_result_t *held = hold_worker(pool, 50);
  for (int k = 0; k < MANY; k++) {
    x[k] = k;
    MP_ASSERT_OK(mp_pool_apply_async(pool, kill_self_every_1000, &x[k], sizeof x[k],
                                     sizeof(int), NULL, &ars[k]));
  }
  for (int k = MANY - 1; k >= 0; k--) {
    int r = -1;
    if (k == 7) {
      MP_ASSERT_ERR(mp_async_result_get(ars[k], &r, sizeof r, NULL, 30), MP_EWORKERDIED);
      T_ASSERT(strstr(mp_last_error(), "signal 9"), "message: %s", mp_last_error());
    } else {
      MP_ASSERT_OK(mp_async_result_get(ars[k], &r, sizeof r, NULL, 30));
      T_INT_EQ(r, k * k);
    }
    mp_async_result_free(ars[k]);
  }
  MP_ASSERT_OK(mp_async_result_get(held, NULL, 0, NULL, 10));
  mp_async_result_free(held);
  int r = 0;
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x[9], sizeof x[9], &r, sizeof r, NULL));
  T_INT_EQ(r, 81);
  end_pool();
}
END_TEST

/* Applies queued behind a busy worker: a terminate fails them; a close lets them run, and
 * join waits for them. */
START_TEST(test_applies_in_flight_end) {
  enum { MANY = 100 };
  static mp_async_result_t *ars[MANY];
  static int x[MANY];
  for (int end = 0; end < 2; end++) {
    mp_pool_t *pool = make_pool(_i, 1, NULL);
    mp_async_result_t *held = hold_worker(pool, end == 0 ? 300 : 50);
    for (int k = 0; k < MANY; k++) {
      x[k] = k;
      MP_ASSERT_OK(
          mp_pool_apply_async(pool, square, &x[k], sizeof x[k], sizeof(int), NULL, &ars[k]));
    }
    if (end == 0)
      MP_ASSERT_OK(mp_pool_terminate(pool));
    else
      MP_ASSERT_OK(mp_pool_close(pool));
    if (end == 1)
      MP_ASSERT_OK(mp_pool_join(pool, 10));
    for (int k = 0; k < MANY; k++) {
      int r = -1;
      if (end == 0) {
        MP_ASSERT_ERR(mp_async_result_get(ars[k], &r, sizeof r, NULL, 10), MP_ETERMINATED);
        T_INT_EQ(mp_async_result_successful(ars[k]), 0);
      } else {
        MP_ASSERT_OK(mp_async_result_get(ars[k], &r, sizeof r, NULL, 0));
        T_INT_EQ(r, k * k);
      }
      mp_async_result_free(ars[k]);
    }
    mp_async_result_free(held);
    end_pool();
  }
}
END_TEST

typedef struct {
  mp_pool_t *pool;
  mp_async_result_t *ar;
  int rc;
} applier_t;

static void *apply_in_thread(void *arg) {
  static int x = 7;
  applier_t *a = arg;
  a->rc = mp_pool_apply_async(a->pool, square, &x, sizeof x, sizeof(int), NULL, &a->ar);
  return NULL;
}

/* A close that comes while an apply waits for a job slot to open its batch (256 jobs in
 * flight, the oldest napping): the apply is taken and runs, and its batch is closed, so the
 * workers end once it is done and join returns. (The close once found no batch open yet, and
 * the one opened after it stayed open: join waited for ever. And a submission waiting for a
 * slot was not counted: workers that ran out of work ended before it was published, and its
 * result never came.) Under a heavy load the applier may come after the close: refused. */
START_TEST(test_close_while_a_batch_opens) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  enum { JOBS = 256 };
  static mp_async_result_t *ars[JOBS];
  static int ms = 300, x = 3;
  for (int k = 0; k < JOBS; k++)
    MP_ASSERT_OK(mp_pool_map_async(pool, k < 2 ? sleep_arg_ms : square, k < 2 ? &ms : &x, 1,
                                   sizeof(int), k < 2 ? 0 : sizeof(int), 1, NULL, &ars[k]));
  applier_t a = {pool, NULL, 1};
  pthread_t thread;
  T_INT_EQ(pthread_create(&thread, NULL, apply_in_thread, &a), 0);
  nap(0.1); /* the applier waits for the oldest job's slot */
  MP_ASSERT_OK(mp_pool_close(pool));
  T_INT_EQ(pthread_join(thread, NULL), 0);
  T_ASSERT(a.rc == 0 || a.rc == MP_ECLOSED, "apply_async returned %d", a.rc);
  MP_ASSERT_OK(mp_pool_join(pool, 10));
  if (a.rc == 0) {
    int r = 0;
    MP_ASSERT_OK(mp_async_result_get(a.ar, &r, sizeof r, NULL, 0));
    T_INT_EQ(r, 49);
    mp_async_result_free(a.ar);
  }
  for (int k = 0; k < JOBS; k++)
    mp_async_result_free(ars[k]);
  end_pool();
}
END_TEST

/* Each apply of a batch runs its own callback once it is done, and get() after its wait
 * finds it run. */
START_TEST(test_applies_in_flight_callbacks) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  enum { MANY = 150 };
  static mp_async_result_t *ars[MANY];
  static int x[MANY];
  callbacks_run = error_callbacks_run = callback_sum = 0;
  mp_async_callbacks_t ok = {on_result, on_error, NULL};
  mp_async_result_t *held = hold_worker(pool, 50);
  int sum = 0;
  for (int k = 0; k < MANY; k++) {
    x[k] = k;
    sum += k == 13 || k == 14 ? 0 : k * k;
    MP_ASSERT_OK(
        mp_pool_apply_async(pool, fail_on_13, &x[k], sizeof x[k], sizeof(int), &ok, &ars[k]));
  }
  for (int k = MANY - 1; k >= 0; k--)
    MP_ASSERT_OK(mp_async_result_wait(ars[k], 10));
  T_INT_EQ(callbacks_run, MANY - 2);
  T_INT_EQ(error_callbacks_run, 1);
  T_INT_EQ(callback_sum, sum);
  for (int k = 0; k < MANY; k++)
    mp_async_result_free(ars[k]);
  mp_async_result_free(held);
  end_pool();
}
END_TEST

/* ------------------------- initializer, maxtasks ------------------------- */

START_TEST(test_initializer) {
  int value = 1234;
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.initializer = set_init_value;
  o.initargs = &value;
  o.initargs_size = sizeof value;
  mp_pool_t *pool = make_pool(_i, 2, &o);
  int results[8], dummy[8] = {0};
  MP_ASSERT_OK(
      mp_pool_map(pool, read_init_value, dummy, 8, sizeof(int), results, sizeof(int), 1));
  for (int k = 0; k < 8; k++)
    T_INT_EQ(results[k], 1234);
  end_pool();
  /* A failing initializer fails the creation, with its message. */
  mp_pool_options_t bad = MP_POOL_OPTIONS_INIT;
  bad.processes = 2;
  bad.initializer = failing_init;
  MP_ASSERT_OK(mp_get_context(CONTEXTS[_i], &bad.context));
  mp_pool_t *none = NULL;
  MP_ASSERT_ERR(mp_pool_create(&none, &bad), MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "no database here") != NULL, "message: %s", mp_last_error());
  T_ASSERT(none == NULL, "no pool on failure");
}
END_TEST

/* A worker that takes START_NAP seconds to start: an initializer that naps, or under fork
 * a child handler of fork that naps in every child while the flag is set. */
#define START_NAP 1.0
static volatile bool nap_in_children;

static void nap_if_asked(void) {
  if (nap_in_children)
    nap(START_NAP);
}

static void register_nap_handler(void) {
  pthread_atfork(NULL, NULL, nap_if_asked);
}

static int napping_init(const void *arg, size_t size) {
  (void)arg;
  (void)size;
  nap(START_NAP);
  return 0;
}

/* mp_pool_create waits for the workers only to learn how their initializer went: with an
 * initializer it returns once each ran it; without one it returns as soon as the workers
 * are started, and a map submitted then waits for its results instead (a worker takes it
 * as it starts, with no sleep and wake-up in between). */
START_TEST(test_create_waits_for_initializers_only) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_nap_handler);
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.initializer = napping_init;
  double t0 = mp_test_now();
  mp_pool_t *pool = make_pool(_i, 2, &o);
  T_ASSERT(mp_test_now() - t0 >= START_NAP * 0.95, "created in %g s, before the initializers",
           mp_test_now() - t0);
  end_pool();
  /* Under fork the workers themselves start slowly; elsewhere they only start. */
  bool slow_start = strcmp(CONTEXTS[_i], "fork") == 0;
  nap_in_children = slow_start;
  t0 = mp_test_now();
  pool = make_pool(_i, 2, NULL);
  double created = mp_test_now() - t0;
  nap_in_children = false;
  if (slow_start)
    T_ASSERT(created < START_NAP / 2, "creation waited %g s for the workers", created);
  int items[4] = {0, 1, 2, 3}, results[4];
  MP_ASSERT_OK(mp_pool_map(pool, square, items, 4, sizeof(int), results, sizeof(int), 0));
  for (int k = 0; k < 4; k++)
    T_INT_EQ(results[k], k * k);
  if (slow_start)
    T_ASSERT(mp_test_now() - t0 >= START_NAP * 0.95, "the map did not wait for the workers");
  end_pool();
}
END_TEST

/* Fails once the marker file named by its argument exists. */
static int init_unless_marker(const void *arg, size_t size) {
  (void)size;
  return access(arg, F_OK) == 0 ? mp_task_fail("the marker is there") : 0;
}

/* A replacement whose initializer fails ends the pool instead of respawning forever. */
START_TEST(test_replacement_initializer_fails) {
  char marker[64];
  snprintf(marker, sizeof marker, "/tmp/libmp-pool-init-%d", (int)getpid());
  unlink(marker);
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.maxtasksperchild = 1;
  o.initializer = init_unless_marker;
  o.initargs = marker;
  o.initargs_size = strlen(marker) + 1;
  mp_pool_t *pool = make_pool(_i, 2, &o);
  close(open(marker, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  int in[8] = {0}, out[8];
  int rc = mp_pool_map(pool, square, in, 8, sizeof(int), out, sizeof(int), 1);
  unlink(marker);
  MP_ASSERT_ERR(rc, MP_ETERMINATED);
  T_ASSERT(strstr(mp_last_error(), "the marker is there"), "message: %s", mp_last_error());
  end_pool();
}
END_TEST

START_TEST(test_maxtasksperchild) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.maxtasksperchild = 1;
  mp_pool_t *pool = make_pool(_i, 2, &o);
  int tids[6], dummy[6] = {0};
  MP_ASSERT_OK(mp_pool_map(pool, report_tid, dummy, 6, sizeof(int), tids, sizeof(int), 1));
  for (int a = 0; a < 6; a++)
    for (int b = a + 1; b < 6; b++)
      T_ASSERT(tids[a] != tids[b], "tasks %d and %d ran in the same worker %d", a, b, tids[a]);
  end_pool();
  /* Without the limit, two workers run six tasks. */
  pool = make_pool(_i, 2, NULL);
  MP_ASSERT_OK(mp_pool_map(pool, report_tid, dummy, 6, sizeof(int), tids, sizeof(int), 1));
  int distinct = 0;
  for (int a = 0; a < 6; a++) {
    bool first = true;
    for (int b = 0; b < a; b++)
      first &= tids[a] != tids[b];
    distinct += first;
  }
  T_ASSERT(distinct <= 2, "%d workers for two", distinct);
  end_pool();
}
END_TEST

/* Two long tasks run at once, in two workers: a waking worker takes the second. */
static int nap_then_tid(const void *arg, size_t size, void *result, size_t *result_size) {
  nap(0.6); /* longer than a wake-up takes on a loaded machine */
  return report_tid(arg, size, result, result_size);
}

START_TEST(test_parallel) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int tids[2], dummy[2] = {0};
  MP_ASSERT_OK(mp_pool_map(pool, nap_then_tid, dummy, 2, sizeof(int), tids, sizeof(int), 1));
  T_ASSERT(tids[0] != tids[1], "both tasks ran in worker %d", tids[0]);
  end_pool();
}
END_TEST

/* Slow applies queued in one batch run side by side: a sleeping worker is woken for them. */
START_TEST(test_applies_in_flight_parallel) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  mp_async_result_t *held = hold_worker(pool, 50), *ars[4];
  int dummy = 0, tids[4];
  double t0 = mp_test_now();
  for (int k = 0; k < 4; k++)
    MP_ASSERT_OK(mp_pool_apply_async(pool, nap_then_tid, &dummy, sizeof dummy, sizeof(int),
                                     NULL, &ars[k]));
  for (int k = 0; k < 4; k++) {
    MP_ASSERT_OK(mp_async_result_get(ars[k], &tids[k], sizeof tids[k], NULL, 30));
    mp_async_result_free(ars[k]);
  }
  double took = mp_test_now() - t0;
  int others = 0;
  for (int k = 1; k < 4; k++)
    others += tids[k] != tids[0];
  T_ASSERT(others == 2, "the 4 applies ran in %d workers besides the first's", others);
  T_ASSERT(took < 2.4, "4 applies of 0.6 s on 2 workers took %g s", took);
  mp_async_result_free(held);
  end_pool();
}
END_TEST

/* Threads submitting applies at once, each getting its own results. */
typedef struct {
  mp_pool_t *pool;
  int base;
  int bad; /* results that were not right */
} submitter_t;

static void *submit_applies(void *arg) {
  submitter_t *sub = arg;
  enum { EACH = 200 };
  mp_async_result_t *ars[EACH];
  int x[EACH];
  for (int k = 0; k < EACH; k++) {
    x[k] = sub->base + k;
    int rc =
        mp_pool_apply_async(sub->pool, square, &x[k], sizeof x[k], sizeof(int), NULL, &ars[k]);
    if (rc < 0) {
      sub->bad += EACH - k;
      for (int j = 0; j < k; j++)
        mp_async_result_free(ars[j]);
      return NULL;
    }
  }
  for (int k = EACH - 1; k >= 0; k--) {
    int r = -1;
    sub->bad += mp_async_result_get(ars[k], &r, sizeof r, NULL, 30) < 0 || r != x[k] * x[k];
    mp_async_result_free(ars[k]);
  }
  return NULL;
}

START_TEST(test_applies_in_flight_threads) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  submitter_t subs[4];
  pthread_t threads[4];
  for (int k = 0; k < 4; k++) {
    subs[k] = (submitter_t){pool, 1000 * k, 0};
    T_INT_EQ(pthread_create(&threads[k], NULL, submit_applies, &subs[k]), 0);
  }
  for (int k = 0; k < 4; k++) {
    pthread_join(threads[k], NULL);
    T_INT_EQ(subs[k].bad, 0);
  }
  end_pool();
}
END_TEST

/* ------------------------------ dead workers ------------------------------ */

START_TEST(test_sigkill_during_map) {
  enum { N = 10000 };
  static int in[N], out[N];
  for (int k = 0; k < N; k++)
    in[k] = k;
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  memset(out, 0xff, sizeof out);
  MP_ASSERT_ERR(
      mp_pool_map(pool, kill_self_every_1000, in, N, sizeof(int), out, sizeof(int), 1),
      MP_EWORKERDIED);
  T_ASSERT(strstr(mp_last_error(), "item 7: worker") && strstr(mp_last_error(), "signal 9"),
           "message: %s", mp_last_error());
  for (int k = 0; k < N; k++)
    T_INT_EQ(out[k], k % 1000 == 7 ? 0 : k * k);
  /* Each lost task is reported, by imap_unordered. */
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap_unordered(pool, kill_self_every_1000, in, N, sizeof(int),
                                      sizeof(int), 1, &it));
  int lost = 0, good = 0;
  for (int k = 0; k < N; k++) {
    int r;
    size_t index;
    int rc = mp_imap_next(it, &r, &index, 20);
    if (rc == MP_EWORKERDIED) {
      T_INT_EQ(index % 1000, 7);
      lost++;
    } else {
      MP_ASSERT_OK(rc);
      T_INT_EQ(r, (int)(index * index));
      good++;
    }
  }
  T_INT_EQ(lost, 10);
  T_INT_EQ(good, N - 10);
  mp_imap_free(it);
  end_pool();
}
END_TEST

/* Workers killed from outside at random moments: each worker announces its pid with a file
 * in the test's directory, which a killer thread reads. */
typedef struct {
  int x;
  int test_pid;
} kill_item_t;

static int announce_and_square(const void *arg, size_t size, void *result,
                               size_t *result_size) {
  static pid_t announced;
  const kill_item_t *item = arg;
  (void)size;
  (void)result_size;
  if (announced != getpid()) {
    announced = getpid();
    char path[96];
    snprintf(path, sizeof path, "/tmp/libmp-kill-%d/%d", item->test_pid, (int)announced);
    close(open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
  }
  nap(0.00002);
  *(int *)result = item->x * item->x;
  return 0;
}

static char kill_dir[64];
static _Atomic int kills_done;

static void *kill_workers(void *arg) {
  (void)arg;
  for (int round = 0; round < 200 && kills_done < 3; round++) {
    nap(0.02);
    DIR *dir = opendir(kill_dir);
    struct dirent *e;
    while (dir && (e = readdir(dir)) != NULL) {
      int pid = atoi(e->d_name);
      if (pid <= 0)
        continue;
      kill(pid, SIGKILL);
      char path[128];
      snprintf(path, sizeof path, "%s/%s", kill_dir, e->d_name);
      unlink(path);
      kills_done++;
      break;
    }
    if (dir)
      closedir(dir);
  }
  return NULL;
}

START_TEST(test_external_sigkill) {
  enum { N = 10000 };
  static kill_item_t in[N];
  static int out[N];
  for (int k = 0; k < N; k++)
    in[k] = (kill_item_t){k + 1, (int)getpid()}; /* no result is 0 unless lost */
  snprintf(kill_dir, sizeof kill_dir, "/tmp/libmp-kill-%d", (int)getpid());
  mkdir(kill_dir, 0700);
  kills_done = 0;
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  pthread_t killer;
  pthread_create(&killer, NULL, kill_workers, NULL);
  int rc = mp_pool_map(pool, announce_and_square, in, N, sizeof in[0], out, sizeof(int), 1);
  pthread_join(killer, NULL);
  T_ASSERT(rc == 0 || rc == MP_EWORKERDIED, "the map gave %s", mp_err_name(rc));
  int lost = 0;
  for (int k = 0; k < N; k++) {
    if (out[k] != (k + 1) * (k + 1)) {
      T_INT_EQ(out[k], 0);
      lost++;
    }
  }
  T_ASSERT(lost <= kills_done, "%d items lost to %d kills", lost, kills_done);
  T_ASSERT((rc == 0) == (lost == 0), "rc %d with %d items lost", rc, lost);
  /* The pool goes on with replacements. */
  MP_ASSERT_OK(
      mp_pool_map(pool, announce_and_square, in, 100, sizeof in[0], out, sizeof(int), 0));
  T_INT_EQ(out[99], 100 * 100);
  end_pool();
  DIR *dir = opendir(kill_dir);
  struct dirent *e;
  while (dir && (e = readdir(dir)) != NULL) {
    char path[128];
    snprintf(path, sizeof path, "%s/%s", kill_dir, e->d_name);
    if (e->d_name[0] != '.')
      unlink(path);
  }
  if (dir)
    closedir(dir);
  rmdir(kill_dir);
}
END_TEST

START_TEST(test_segfault_and_exit) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int x = 5, r;
  MP_ASSERT_ERR(mp_pool_apply(pool, segfault, &x, sizeof x, &r, sizeof r, NULL),
                MP_EWORKERDIED);
  T_ASSERT(strstr(mp_last_error(), SEGV_DEATH), "message: %s", mp_last_error());
  /* The hint for a pointer of the parent's, where the worker has its own memory. */
  bool own_memory = SEGV_HINTED && strcmp(CONTEXTS[_i], "fork") != 0;
  T_INT_EQ(strstr(mp_last_error(), "pointer of the parent's") != NULL, own_memory);
  MP_ASSERT_ERR(mp_pool_apply(pool, exit_3, &x, sizeof x, &r, sizeof r, NULL), MP_EWORKERDIED);
  T_ASSERT(strstr(mp_last_error(), "exited with status 3"), "message: %s", mp_last_error());
  /* Replaced: the pool works on. */
  MP_ASSERT_OK(mp_pool_apply(pool, square, &x, sizeof x, &r, sizeof r, NULL));
  T_INT_EQ(r, 25);
  end_pool();
}
END_TEST

START_TEST(test_retries) {
  char marker[64];
  snprintf(marker, sizeof marker, "/tmp/libmp-pool-retry-%d", (int)getpid());
  unlink(marker);
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.retries = 1;
  mp_pool_t *pool = make_pool(_i, 2, &o);
  int r = 0;
  MP_ASSERT_OK(mp_pool_apply(pool, die_once, marker, strlen(marker) + 1, &r, sizeof r, NULL));
  T_INT_EQ(r, 42);
  unlink(marker);
  end_pool();
}
END_TEST

/* Replacements that can never start (spawn of a program that is not libmp's) end the pool
 * once no worker is left: a map waiting forever wakes with the reason. */
START_TEST(test_replacements_cannot_start) {
  mp_pool_t *pool = make_pool(1, 1, NULL);
  MP_ASSERT_OK(mp_set_executable("/bin/true"));
  int x = 2, r;
  MP_ASSERT_ERR(mp_pool_apply(pool, exit_3, &x, sizeof x, &r, sizeof r, NULL), MP_EWORKERDIED);
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_map_async(pool, square, &x, 1, sizeof x, sizeof r, 0, NULL, &ar));
  double t0 = mp_test_now();
  MP_ASSERT_ERR(mp_async_result_get(ar, &r, sizeof r, NULL, MP_FOREVER), MP_ETERMINATED);
  T_ASSERT(strstr(mp_last_error(), "starts in a row failed") != NULL, "message: %s",
           mp_last_error());
  T_ASSERT(mp_test_now() - t0 < 10.0 * mp_test_slowdown(), "the map went on for %g s",
           mp_test_now() - t0);
  mp_async_result_free(ar);
  end_pool();
}
END_TEST

/* The worker's pid, or with a non-zero argument its parent's. */
static int report_pid(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  *(int *)result = *(const int *)arg ? getppid() : getpid();
  return 0;
}

/* The same when the process that starts replacement workers (the zygote, the fork server,
 * or the pool's own process under spawn) is out of processes: RLIMIT_NPROC 0 on it, as a
 * user other than root (for whom the limit does not apply). A first death makes the worker
 * a replacement, whose parent is that process (under fork the first workers are the pool's
 * own children). */
START_TEST(test_out_of_processes) {
  if (getuid() == 0)
    T_ASSERT(setresgid(65534, 65534, 65534) == 0 && setresuid(65534, 65534, 65534) == 0,
             "cannot become nobody: %s", strerror(errno));
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  int x = 2, r, starter;
  MP_ASSERT_ERR(mp_pool_apply(pool, exit_3, &x, sizeof x, &r, sizeof r, NULL), MP_EWORKERDIED);
  MP_ASSERT_OK(mp_pool_apply(pool, report_pid, &x, sizeof x, &starter, sizeof starter, NULL));
  struct rlimit old, none;
  T_ASSERT(prlimit(starter, RLIMIT_NPROC, NULL, &old) == 0, "prlimit: %s", strerror(errno));
  none = (struct rlimit){0, old.rlim_max}; /* the soft limit only: it can be put back */
  T_ASSERT(prlimit(starter, RLIMIT_NPROC, &none, NULL) == 0, "prlimit: %s", strerror(errno));
  /* The fork server may have a spare child ready: one more death uses it up. */
  int rc = 0;
  for (int k = 0; k < 3 && rc != MP_ETERMINATED; k++) {
    rc = mp_pool_apply(pool, exit_3, &x, sizeof x, &r, sizeof r, NULL);
    T_ASSERT(rc == MP_EWORKERDIED || rc == MP_ETERMINATED, "apply gave %s", mp_err_name(rc));
  }
  MP_ASSERT_ERR(mp_pool_map(pool, square, &x, 1, sizeof x, &r, sizeof r, 0), MP_ETERMINATED);
  T_ASSERT(strstr(mp_last_error(), "starts in a row failed") != NULL, "message: %s",
           mp_last_error());
  /* Under spawn the starter is this process, whose exit (LeakSanitizer's) needs a thread. */
  T_ASSERT(prlimit(starter, RLIMIT_NPROC, &old, NULL) == 0 || starter != getpid(),
           "prlimit: %s", strerror(errno));
  end_pool();
}
END_TEST

/* What a worker sees of the program: a global the program set before and after creating
 * the pool, and the worker's parent. */
static int program_mark;

typedef struct {
  int mark;
  int parent;
} worker_view_t;

static int report_view(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result_size;
  *(worker_view_t *)result = (worker_view_t){program_mark, (int)getppid()};
  return 0;
}

/* Workers start from the program as it was at the pool's creation: under fork the first
 * ones are the pool's own children, and a replacement, forked by the zygote, sees the same
 * state (not the program's later one); spawn and forkserver workers start fresh. */
START_TEST(test_workers_start_from_creation) {
  program_mark = 1;
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  program_mark = 2;
  bool fork_method = strcmp(CONTEXTS[_i], "fork") == 0;
  int expected = IS_THREAD(_i) ? 2 : fork_method ? 1 : 0, x = 0, r;
  worker_view_t first, replacement;
  MP_ASSERT_OK(mp_pool_apply(pool, report_view, &x, sizeof x, &first, sizeof first, NULL));
  T_INT_EQ(first.mark, expected);
  if (fork_method)
    T_INT_EQ(first.parent, (int)getpid());
  if (!IS_THREAD(_i)) {
    MP_ASSERT_ERR(mp_pool_apply(pool, exit_3, &x, sizeof x, &r, sizeof r, NULL),
                  MP_EWORKERDIED);
    MP_ASSERT_OK(
        mp_pool_apply(pool, report_view, &x, sizeof x, &replacement, sizeof replacement, NULL));
    T_INT_EQ(replacement.mark, expected);
    if (fork_method)
      T_ASSERT(replacement.parent != (int)getpid() && kill(replacement.parent, 0) == 0,
               "the replacement's parent %d is not a live zygote", replacement.parent);
  }
  end_pool();
}
END_TEST

/* True once pid has ended: gone, or a zombie that its new parent has not reaped yet. */
static bool process_ended(int pid) {
  char path[64], stat[256] = "";
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return true;
  bool read_ok = fgets(stat, sizeof stat, f) != NULL;
  fclose(f);
  const char *state = strrchr(stat, ')');
  return !read_ok || (state && state[1] == ' ' && state[2] == 'Z');
}

/* A worker's pid after a nap long enough that two such items go to two workers. */
static int napping_pid(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result_size;
  nap(0.2);
  *(int *)result = getpid();
  return 0;
}

/* The pool's zygote: the child of this process named so. */
static int find_zygote(void) {
  mp_process_t *children[16];
  int n = mp_active_children(children, 16);
  for (int k = 0; k < n && k < 16; k++)
    if (strcmp(mp_process_name(children[k]), "ForkPoolZygote") == 0)
      return mp_process_pid(children[k]);
  return -1;
}

/* Under fork a killed zygote ends the pool (no worker could be replaced): the next map
 * fails with the reason instead of hanging, and no worker is left, neither the pool's own
 * nor the zygote's. */
START_TEST(test_zygote_killed) {
  mp_pool_t *pool = make_pool(0, 2, NULL);
  int x = 0, r, zero[2] = {0, 0}, pids[2] = {0, 0};
  MP_ASSERT_ERR(mp_pool_apply(pool, exit_3, &x, sizeof x, &r, sizeof r, NULL), MP_EWORKERDIED);
  /* Until the replacement has started and takes one of the two items. */
  for (int attempt = 0; attempt < 20 && pids[0] == pids[1]; attempt++)
    MP_ASSERT_OK(mp_pool_map(pool, napping_pid, zero, 2, sizeof(int), pids, sizeof(int), 1));
  T_ASSERT(pids[0] != pids[1], "both items ran in worker %d", pids[0]);
  int zygote = find_zygote();
  T_ASSERT(zygote > 0, "no ForkPoolZygote among the children");
  T_ASSERT(kill(zygote, SIGKILL) == 0, "kill: %s", strerror(errno));
  int rc = 0, out[2];
  for (double t0 = mp_test_now(); rc == 0 && mp_test_now() - t0 < 30.0; nap(0.01))
    rc = mp_pool_map(pool, square, zero, 2, sizeof(int), out, sizeof(int), 0);
  MP_ASSERT_ERR(rc, MP_ETERMINATED);
  T_ASSERT(strstr(mp_last_error(), "zygote") != NULL, "message: %s", mp_last_error());
  end_pool();
  for (int k = 0; k < 2; k++) {
    double t0 = mp_test_now();
    while (!process_ended(pids[k]) && mp_test_now() - t0 < 30.0)
      nap(0.01);
    T_ASSERT(process_ended(pids[k]), "worker %d is left", pids[k]);
  }
}
END_TEST

/* --------------------------- ending the pool --------------------------- */

START_TEST(test_terminate_long_map) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int pids[2], dummy[2] = {0};
  MP_ASSERT_OK(mp_pool_map(pool, report_pid, dummy, 2, sizeof(int), pids, sizeof(int), 1));
  static int ms[1000];
  for (int k = 0; k < 1000; k++)
    ms[k] = 10;
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_map_async(pool, sleep_arg_ms, ms, 1000, sizeof(int), 0, 1, NULL, &ar));
  nap(0.05);
  double t0 = mp_test_now();
  MP_ASSERT_OK(mp_pool_terminate(pool));
  double took = mp_test_now() - t0;
  T_ASSERT(took < 2.0 * mp_test_slowdown(), "terminate took %g s", took);
  MP_ASSERT_ERR(mp_async_result_get(ar, NULL, 0, NULL, 5), MP_ETERMINATED);
  mp_async_result_free(ar);
  if (!IS_THREAD(_i))
    for (int k = 0; k < 2; k++)
      T_ASSERT(kill(pids[k], 0) < 0 && errno == ESRCH, "worker %d is left", pids[k]);
  MP_ASSERT_ERR(mp_pool_map(pool, square, dummy, 2, sizeof(int), pids, sizeof(int), 0),
                MP_ETERMINATED);
  MP_ASSERT_OK(mp_pool_join(pool, 5));
  end_pool();
}
END_TEST

START_TEST(test_close_join) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int ms = 100;
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_apply_async(pool, sleep_arg_ms, &ms, sizeof ms, 0, NULL, &ar));
  MP_ASSERT_ERR(mp_pool_join(pool, 1), MP_EINVAL); /* still running */
  MP_ASSERT_OK(mp_pool_close(pool));
  int x = 2, r;
  MP_ASSERT_ERR(mp_pool_apply(pool, square, &x, sizeof x, &r, sizeof r, NULL), MP_ECLOSED);
  MP_ASSERT_ERR(mp_pool_map(pool, square, &x, 1, sizeof x, &r, sizeof r, 0), MP_ECLOSED);
  mp_imap_t *it;
  MP_ASSERT_ERR(mp_pool_imap(pool, square, &x, 1, sizeof x, sizeof r, 0, &it), MP_ECLOSED);
  MP_ASSERT_OK(mp_pool_join(pool, 10));
  /* The submitted work was done before the workers left. */
  MP_ASSERT_OK(mp_async_result_get(ar, NULL, 0, NULL, 0));
  mp_async_result_free(ar);
  end_pool();
}
END_TEST

START_TEST(test_destroy_without_close) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int ms = 2000;
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_apply_async(pool, sleep_arg_ms, &ms, sizeof ms, 0, NULL, &ar));
  mp_async_result_free(ar);
  nap(0.05);
  double t0 = mp_test_now();
  end_pool();
  /* A thread worker finishes its task first, as Python's ThreadPool does. */
  T_ASSERT(mp_test_now() - t0 < (IS_THREAD(_i) ? 5.0 : 1.0) * mp_test_slowdown(),
           "destroy took %g s", mp_test_now() - t0);
}
END_TEST

/* Signals other than SIGINT do not end a wait, whatever their handler's flags. */
static _Atomic int alarms;

static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

START_TEST(test_other_signals_do_not_interrupt) {
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  int flags[] = {SA_RESTART, 0};
  for (int f = 0; f < 2; f++) {
    struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = flags[f]};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    alarms = 0;
    int ms = 300;
    mp_async_result_t *ar;
    MP_ASSERT_OK(mp_pool_apply_async(pool, sleep_arg_ms, &ms, sizeof ms, 0, NULL, &ar));
    struct itimerval every = {{0, 20000}, {0, 20000}}, off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &every, NULL);
    int rc = mp_async_result_get(ar, NULL, 0, NULL, 5.0);
    setitimer(ITIMER_REAL, &off, NULL);
    mp_async_result_free(ar);
    MP_ASSERT_OK(rc);
    T_ASSERT(alarms > 0, "no SIGALRM came during the wait");
    int x = 3, r = 0;
    setitimer(ITIMER_REAL, &every, NULL);
    rc = mp_pool_map(pool, slow_square, &x, 1, sizeof x, &r, sizeof r, 0);
    setitimer(ITIMER_REAL, &off, NULL);
    MP_ASSERT_OK(rc);
    T_INT_EQ(r, 9);
  }
  end_pool();
}
END_TEST

/* Ctrl-C during a map, with a handler installed by signal() (SA_RESTART): the map ends. */
static void on_sigint(int sig) {
  (void)sig;
}

static _Atomic bool map_returned;

/* Again and again, in case the first one comes before the map waits. */
static void *send_sigint(void *arg) {
  (void)arg;
  while (!map_returned) {
    nap(0.1);
    kill(getpid(), SIGINT);
  }
  return NULL;
}

START_TEST(test_ctrl_c) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int pids[2], dummy[2] = {0};
  MP_ASSERT_OK(mp_pool_map(pool, report_pid, dummy, 2, sizeof(int), pids, sizeof(int), 1));
  void (*old)(int) = signal(SIGINT, on_sigint);
  sigset_t block, prev;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  pthread_sigmask(SIG_BLOCK, &block, &prev);
  pthread_t thread;
  map_returned = false;
  pthread_create(&thread, NULL, send_sigint, NULL);
  pthread_sigmask(SIG_SETMASK, &prev, NULL);
  static int ms[400];
  for (int k = 0; k < 400; k++)
    ms[k] = 20;
  double t0 = mp_test_now();
  int rc = mp_pool_map(pool, sleep_arg_ms, ms, 400, sizeof(int), NULL, 0, 1);
  map_returned = true;
  pthread_join(thread, NULL);
  signal(SIGINT, old);
  MP_ASSERT_ERR(rc, MP_EINTR);
  T_ASSERT(mp_test_now() - t0 < 3.0 * mp_test_slowdown(), "the map went on for %g s",
           mp_test_now() - t0);
  if (!IS_THREAD(_i))
    for (int k = 0; k < 2; k++)
      T_ASSERT(kill(pids[k], 0) < 0 && errno == ESRCH, "worker %d is left", pids[k]);
  int x = 1, r;
  MP_ASSERT_ERR(mp_pool_apply(pool, square, &x, sizeof x, &r, sizeof r, NULL), MP_ETERMINATED);
  end_pool();
}
END_TEST

/* ------------------------------- bad input ------------------------------- */

START_TEST(test_bad_input) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  MP_ASSERT_OK(mp_get_context(CONTEXTS[_i], &o.context));
  mp_pool_t *none = NULL;
  MP_ASSERT_ERR(mp_pool_create(NULL, &o), MP_EINVAL);
  o.processes = 0;
  MP_ASSERT_ERR(mp_pool_create(&none, &o), MP_EINVAL);
  o.processes = -5;
  MP_ASSERT_ERR(mp_pool_create(&none, &o), MP_EINVAL);
  o.processes = 100000;
  MP_ASSERT_ERR(mp_pool_create(&none, &o), MP_EINVAL);
  o.processes = 1;
  o.initargs_size = 4;
  MP_ASSERT_ERR(mp_pool_create(&none, &o), MP_EINVAL);

  mp_pool_t *pool = make_pool(_i, 1, NULL);
  int x = 3, r;
  MP_ASSERT_ERR(mp_pool_apply(pool, NULL, &x, sizeof x, &r, sizeof r, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_apply(NULL, square, &x, sizeof x, &r, sizeof r, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map(pool, square, NULL, 3, sizeof x, &r, sizeof r, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map(pool, square, &x, 1, sizeof x, NULL, sizeof r, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_async(pool, square, &x, 1, sizeof x, sizeof r, 0, NULL, NULL),
                MP_EINVAL);
  /* The result buffer too small for an apply's result. */
  size_t n = 64, len = 0;
  char small[8];
  MP_ASSERT_ERR(mp_pool_apply(pool, repeat_x, &n, sizeof n, small, sizeof small, &len),
                MP_ETASK); /* the task has only result_cap bytes of room: it says so */
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_apply_async(pool, repeat_x, &n, sizeof n, 64, NULL, &ar));
  MP_ASSERT_ERR(mp_async_result_get(ar, small, sizeof small, &len, 10), MP_ETOOSMALL);
  T_INT_EQ(len, 64);
  mp_async_result_free(ar);
  /* A function that cannot cross: refused at submission. */
  void *heap_code = malloc(64);
  MP_ASSERT_ERR(
      mp_pool_apply(pool, (mp_task_fn_t)(uintptr_t)heap_code, &x, sizeof x, &r, sizeof r, NULL),
      MP_ECROSS);
  free(heap_code);
  MP_ASSERT_ERR(mp_async_result_get(NULL, NULL, 0, NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_imap_next(NULL, &r, NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_join(NULL, 0), MP_EINVAL);
  end_pool();
  mp_async_result_free(NULL);
  mp_imap_free(NULL);
  mp_pool_destroy(NULL);
}
END_TEST

/* The thread context makes no processes. */
static int noop_target(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

START_TEST(test_thread_context) {
  mp_context_t *ctx;
  MP_ASSERT_OK(mp_get_context("thread", &ctx));
  T_STR_EQ(mp_context_start_method(ctx), "thread");
  MP_ASSERT_ERR(mp_set_start_method("thread", true), MP_EMETHOD);
  mp_process_t *proc;
  T_PROC_NEW(&proc, ctx, noop_target, NULL, 0, NULL);
  MP_ASSERT_ERR(mp_process_start(proc), MP_EMETHOD);
  T_PROC_CLOSE(proc);
  /* Default options: mp_cpu_count() workers. */
  mp_pool_t *pool;
  MP_ASSERT_OK(mp_pool_create(&pool, NULL));
  T_INT_EQ(mp_pool_processes(pool), mp_cpu_count());
  mp_pool_destroy(pool);
}
END_TEST

/* ---------------------------- issue 11's faults ---------------------------- */

/* Announces its pid in the directory named by its argument (when that directory exists)
 * and then naps long enough to be killed there, before its worker is ready. */
static int announce_and_nap(const void *arg, size_t size) {
  (void)size;
  char path[128];
  snprintf(path, sizeof path, "%s/%d", (const char *)arg, (int)getpid());
  int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  if (fd < 0)
    return 0; /* no directory: start at once */
  close(fd);
  nap(30);
  return 0;
}

/* The pid announced in dir, removed from it; 0 if none came within 30 s. */
static int announced_pid(const char *dir) {
  for (double t0 = mp_test_now(); mp_test_now() - t0 < 30.0; nap(0.005)) {
    DIR *d = opendir(dir);
    struct dirent *e;
    int pid = 0;
    while (d && (e = readdir(d)) != NULL && pid <= 0)
      pid = atoi(e->d_name);
    if (d)
      closedir(d);
    if (pid > 0) {
      char path[160];
      snprintf(path, sizeof path, "%s/%d", dir, pid);
      unlink(path);
      return pid;
    }
  }
  return 0;
}

/* A replacement worker SIGKILLed before it is ready is lost, not a failed initializer: it
 * is replaced and the pool goes on (it used to end the pool, "in its initializer"). */
START_TEST(test_starting_worker_killed) {
  char dir[64];
  snprintf(dir, sizeof dir, "/tmp/libmp-pool-start-%d", (int)getpid());
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.maxtasksperchild = 1; /* each task makes a replacement */
  o.initializer = announce_and_nap;
  o.initargs = dir;
  o.initargs_size = strlen(dir) + 1;
  rmdir(dir);
  mp_pool_t *pool = make_pool(_i, 1, &o);
  T_ASSERT(mkdir(dir, 0700) == 0, "mkdir: %s", strerror(errno));
  int x = 3, r = 0;
  mp_async_result_t *first, *second;
  MP_ASSERT_OK(mp_pool_apply_async(pool, square, &x, sizeof x, sizeof r, NULL, &first));
  MP_ASSERT_OK(mp_pool_apply_async(pool, square, &x, sizeof x, sizeof r, NULL, &second));
  MP_ASSERT_OK(mp_async_result_get(first, &r, sizeof r, NULL, 30));
  /* Two replacements in a row killed while they start. */
  for (int k = 0; k < 2; k++) {
    int pid = announced_pid(dir);
    T_ASSERT(pid > 0, "no replacement announced itself");
    T_ASSERT(kill(pid, SIGKILL) == 0, "kill %d: %s", pid, strerror(errno));
  }
  rmdir(dir); /* the next replacement starts at once */
  r = 0;
  MP_ASSERT_OK(mp_async_result_get(second, &r, sizeof r, NULL, 30));
  T_INT_EQ(r, 9);
  mp_async_result_free(first);
  mp_async_result_free(second);
  end_pool();
}
END_TEST

static int kill_self_init(const void *arg, size_t size) {
  (void)arg;
  (void)size;
  raise(SIGKILL);
  return 0;
}

/* Workers that die before they are ever ready, start after start: creation fails after a
 * few tries, naming the real pid. */
START_TEST(test_workers_never_ready) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = 1;
  o.initializer = kill_self_init;
  MP_ASSERT_OK(mp_get_context(CONTEXTS[_i], &o.context));
  mp_pool_t *pool = NULL;
  MP_ASSERT_ERR(mp_pool_create(&pool, &o), MP_EWORKERDIED);
  const char *msg = mp_last_error();
  const char *pid = strstr(msg, "(pid ");
  T_ASSERT(pid && atoi(pid + 5) > 0, "message: %s", msg);
  T_ASSERT(strstr(msg, "in a row") && strstr(msg, "signal 9"), "message: %s", msg);
}
END_TEST

/* Sizes whose products overflow or cannot be held fail at once with a sentence. */
START_TEST(test_huge_sizes) {
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  int x[4] = {1, 2, 3, 4}, r[4];
  mp_async_result_t *ar = NULL;
  mp_imap_t *it = NULL;
  double t0 = mp_test_now();
  struct {
    size_t n, item_size, result_size, chunksize;
  } maps[] = {
      {SIZE_MAX, sizeof(int), sizeof(int), 0},
      {SIZE_MAX, sizeof(int), sizeof(int), 1},
      {SIZE_MAX, sizeof(int), sizeof(int), SIZE_MAX},
      {SIZE_MAX / 2 + 1, 2, sizeof(int), 0},
      {SIZE_MAX / 2 + 1, 2, sizeof(int), SIZE_MAX},
      {4, sizeof(int), SIZE_MAX, 0},
      {4, SIZE_MAX / 2, sizeof(int), 4},
      {(size_t)1 << 40, 1, 1, (size_t)1 << 20},
      {(size_t)1 << 40, 1, 1, SIZE_MAX},
  };
  for (size_t k = 0; k < sizeof maps / sizeof maps[0]; k++) {
    int rc = mp_pool_map(pool, square, x, maps[k].n, maps[k].item_size, r, maps[k].result_size,
                         maps[k].chunksize);
    T_ASSERT(rc == MP_EINVAL || rc == MP_ENOMEM, "map %zu gave %s", k, mp_err_name(rc));
    T_ASSERT(mp_last_error()[0], "map %zu: no message", k);
    rc = mp_pool_map_async(pool, square, x, maps[k].n, maps[k].item_size, maps[k].result_size,
                           maps[k].chunksize, NULL, &ar);
    T_ASSERT(rc == MP_EINVAL || rc == MP_ENOMEM, "map_async %zu gave %s", k, mp_err_name(rc));
    /* An iterator holds a window at a time: only overflows are refused. */
    if (maps[k].n == (size_t)1 << 40)
      continue;
    rc = mp_pool_imap(pool, square, x, maps[k].n, maps[k].item_size, maps[k].result_size,
                      maps[k].chunksize, &it);
    T_ASSERT(rc == MP_EINVAL || rc == MP_ENOMEM, "imap %zu gave %s", k, mp_err_name(rc));
  }
  size_t sizes[] = {SIZE_MAX, SIZE_MAX / 2, (size_t)1 << 44};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    int rc = mp_pool_apply(pool, square, x, sizes[k], r, sizeof r, NULL);
    T_ASSERT(rc == MP_EINVAL || rc == MP_ENOMEM, "apply size %zu gave %s", sizes[k],
             mp_err_name(rc));
    T_ASSERT(mp_last_error()[0], "apply: no message");
    rc = mp_pool_apply_async(pool, square, x, sizeof x[0], sizes[k], NULL, &ar);
    T_ASSERT(rc == MP_EINVAL || rc == MP_ENOMEM, "apply result_max %zu gave %s", sizes[k],
             mp_err_name(rc));
  }
  T_ASSERT(mp_test_now() - t0 < 5.0 * mp_test_slowdown(), "refusing took %g s",
           mp_test_now() - t0);
  /* The pool works on. */
  MP_ASSERT_OK(mp_pool_map(pool, square, x, 4, sizeof(int), r, sizeof(int), 0));
  T_INT_EQ(r[3], 16);
  end_pool();
}
END_TEST

/* Writes 64 bytes of 'A' into a result that has room for fewer. */
static int overrun(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  if (*(const int *)arg == 2)
    memset(result, 'A', 64);
  else
    *(int *)result = 1;
  return 0;
}

/* A task that writes past its result's room fails, with a message, and no call returns a
 * positive number (the map used to return 0x41414141). */
START_TEST(test_result_overrun) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  int in[6] = {0, 1, 2, 3, 4, 5}, out[6];
  for (size_t chunksize = 1; chunksize <= 6; chunksize += 5) {
    int rc = mp_pool_map(pool, overrun, in, 6, sizeof(int), out, sizeof(int), chunksize);
    MP_ASSERT_ERR(rc, MP_ETASK);
    T_ASSERT(strstr(mp_last_error(), "item 2:") && strstr(mp_last_error(), "overran"),
             "message: %s", mp_last_error());
  }
  int two = 2, r[2];
  MP_ASSERT_ERR(mp_pool_apply(pool, overrun, &two, sizeof two, r, sizeof r, NULL), MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "overran"), "message: %s", mp_last_error());
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap(pool, overrun, in, 6, sizeof(int), sizeof(int), 1, &it));
  for (int k = 0; k < 6; k++) {
    int v;
    size_t index;
    int rc = mp_imap_next(it, &v, &index, 30);
    if (index == 2)
      MP_ASSERT_ERR(rc, MP_ETASK);
    else
      MP_ASSERT_OK(rc);
  }
  mp_imap_free(it);
  MP_ASSERT_OK(mp_pool_map(pool, square, in, 6, sizeof(int), out, sizeof(int), 0));
  T_INT_EQ(out[5], 25);
  end_pool();
}
END_TEST

/* A worker that dies in the middle of a chunk: the message names the item it was running,
 * not the chunk's first. */
START_TEST(test_died_item_named) {
  enum { N = 100 };
  int in[N], out[N];
  for (int k = 0; k < N; k++)
    in[k] = k;
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  MP_ASSERT_ERR(mp_pool_map(pool, kill_self_every_1000, in, N, sizeof(int), out, sizeof(int),
                            N),
                MP_EWORKERDIED);
  T_ASSERT(strstr(mp_last_error(), "item 7: worker"), "message: %s", mp_last_error());
  end_pool();
}
END_TEST

/* Runs fn in a forked child whose stderr is read back: the child must die of SIGABRT with a
 * message that holds `expect`. */
static void expect_abort(void (*fn)(int), int i, const char *expect) {
  int fds[2];
  T_ASSERT(pipe(fds) == 0, "pipe: %s", strerror(errno));
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    dup2(fds[1], 2);
    close(fds[0]);
    fn(i);
    _exit(0);
  }
  mp_test_track_pid(pid);
  close(fds[1]);
  char text[4096] = "";
  size_t len = 0;
  ssize_t got;
  while ((got = read(fds[0], text + len, sizeof text - 1 - len)) > 0)
    len += (size_t)got;
  text[len] = 0;
  close(fds[0]);
  int status;
  T_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
  T_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "%s: status %#x, stderr: %s",
           expect, status, text);
  T_ASSERT(strstr(text, expect), "stderr: %s", text);
}

/* A pool created, and destroyed if destroy, in a child of expect_abort. */
static mp_pool_t *destroyed_pool(int i, bool destroy) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = 1;
  mp_get_context(CONTEXTS[i], &o.context);
  mp_pool_t *pool;
  if (mp_pool_create(&pool, &o) < 0)
    _exit(2);
  if (destroy)
    mp_pool_destroy(pool);
  return pool;
}

static void destroy_twice(int i) {
  mp_pool_destroy(destroyed_pool(i, true));
}

static void map_after_destroy(int i) {
  int x = 1, r;
  mp_pool_map(destroyed_pool(i, true), square, &x, 1, sizeof x, &r, sizeof r, 0);
}

/* An async result freed twice, or read after its free, with the pool alive; then an
 * iterator. */
static void free_result_twice(int i) {
  mp_pool_t *pool = destroyed_pool(i, false);
  mp_async_result_t *ar;
  int x = 3;
  if (mp_pool_apply_async(pool, square, &x, sizeof x, sizeof x, NULL, &ar) < 0 ||
      mp_async_result_wait(ar, 10) < 0)
    _exit(2);
  mp_async_result_free(ar);
  mp_async_result_free(ar);
}

static void get_after_free(int i) {
  mp_pool_t *pool = destroyed_pool(i, false);
  mp_async_result_t *ar;
  int x = 3, r;
  if (mp_pool_apply_async(pool, square, &x, sizeof x, sizeof x, NULL, &ar) < 0)
    _exit(2);
  mp_async_result_free(ar);
  mp_async_result_get(ar, &r, sizeof r, NULL, 10);
}

static void free_iterator_twice(int i) {
  mp_pool_t *pool = destroyed_pool(i, false);
  mp_imap_t *it;
  int x[4] = {1, 2, 3, 4};
  if (mp_pool_imap(pool, square, x, 4, sizeof(int), sizeof(int), 1, &it) < 0)
    _exit(2);
  mp_imap_free(it);
  mp_imap_free(it);
}

/* Destroying a pool twice, or using it after, aborts with the name of the call; so does
 * freeing an async result or an iterator twice, or using it after (under
 * AddressSanitizer a use of freed memory is its report, which names the call too). */
START_TEST(test_destroyed_pool) {
  expect_abort(destroy_twice, _i, "mp_pool_destroy");
  expect_abort(map_after_destroy, _i, "mp_pool_map");
  expect_abort(free_result_twice, _i, "mp_async_result_free");
  expect_abort(get_after_free, _i, "mp_async_result_get");
  expect_abort(free_iterator_twice, _i, "mp_imap_free");
}
END_TEST

/* The options' initializer as a function, the form that C++ before C++20 can use. */
START_TEST(test_options_init) {
  mp_pool_options_t a = MP_POOL_OPTIONS_INIT, b;
  memset(&b, 0x5a, sizeof b);
  mp_pool_options_init(&b);
  T_ASSERT(memcmp(&a, &b, sizeof a) == 0, "mp_pool_options_init differs from the macro");
}
END_TEST

/* -------------------- items of any size, lazy input (issue 18) -------------------- */

/* An item of any size: the decimal digits of a number; the result: its square, as an int. */
static int square_text(const void *arg, size_t size, void *result, size_t *result_size) {
  char text[32];
  if (size >= sizeof text)
    return mp_task_fail("an item of %zu bytes", size);
  memcpy(text, arg, size);
  text[size] = '\0';
  int x = atoi(text);
  if (x == 13)
    return mp_task_fail("thirteen is unlucky (%d)", x);
  *(int *)result = x * x;
  *result_size = sizeof(int);
  return 0;
}

/* The item reversed: a result as long as its item. */
static int reverse(const void *arg, size_t size, void *result, size_t *result_size) {
  if (size > *result_size)
    return mp_task_fail("%zu bytes for %zu of room", size, *result_size);
  for (size_t k = 0; k < size; k++)
    ((char *)result)[k] = ((const char *)arg)[size - 1 - k];
  *result_size = size;
  return 0;
}

typedef struct {
  long next;  /* the next number to give */
  long limit; /* -1: endless */
  int fail;   /* returned once next reaches limit, if non-zero */
} counter_t;

/* Numbers as text, from 0: endless, or up to limit (then MP_EEOF, or fail). */
static int count_source(void *user_data, void *buf, size_t cap, size_t *len) {
  counter_t *c = user_data;
  if (c->limit >= 0 && c->next >= c->limit)
    return c->fail ? c->fail : MP_EEOF;
  int n = snprintf(buf, cap, "%ld", c->next++);
  *len = (size_t)n;
  return 0;
}

/* An endless generator stopped by the consumer: in order, the window bounded (the source
 * runs at most a window ahead of the consumer), and the pool works on after the stop. */
START_TEST(test_lazy_endless) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  const size_t chunksizes[] = {1, 3};
  for (int c = 0; c < 2; c++) {
    counter_t src = {0, -1, 0};
    mp_imap_t *it;
    MP_ASSERT_OK(mp_pool_imap_lazy(pool, square_text, count_source, &src, 16, sizeof(int),
                                   chunksizes[c], &it));
    for (long k = 0; k < 300; k++) {
      int r = -1;
      size_t len = 0, index = 0;
      int rc = mp_imap_next_item(it, &r, sizeof r, &len, &index, 10);
      T_INT_EQ(index, k);
      if (k == 13) {
        MP_ASSERT_ERR(rc, MP_ETASK);
        T_ASSERT(strstr(mp_last_error(), "unlucky"), "message: %s", mp_last_error());
        if (chunksizes[c] > 1) /* 14 ran not: its chunk ended at 13 */
          k = 14;
        continue;
      }
      MP_ASSERT_OK(rc);
      T_INT_EQ(len, sizeof(int));
      T_INT_EQ(r, k * k);
      /* Two batches of 2 chunks per worker at most ahead. */
      T_ASSERT(src.next <= k + 1 + 8 * (long)chunksizes[c] + 8 * (long)chunksizes[c],
               "the source ran %ld items ahead of %ld", src.next, k);
    }
    mp_imap_free(it);
    long stopped = src.next;
    int r;
    MP_ASSERT_OK(mp_pool_apply(pool, square, &(int){7}, sizeof(int), &r, sizeof r, NULL));
    T_INT_EQ(r, 49);
    T_INT_EQ(src.next, stopped); /* not called after the free */
  }
  end_pool();
}
END_TEST

/* A finite lazy input, unordered: every index once; a source that fails gives its error
 * after every earlier item, then MP_EEOF. */
START_TEST(test_lazy_finite_and_failing) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  counter_t src = {0, 100, 0};
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap_lazy_unordered(pool, square_text, count_source, &src, 16,
                                           sizeof(int), 2, &it));
  bool seen[100] = {false};
  int r;
  size_t index, len;
  for (int k = 0; k < 100; k++) { /* 13 fails; 12, before it in its chunk, is given */
    int rc = mp_imap_next_item(it, &r, sizeof r, &len, &index, 10);
    T_ASSERT(index < 100 && !seen[index], "index %zu twice", index);
    seen[index] = true;
    if (rc == MP_ETASK) {
      T_INT_EQ(index, 13);
      continue;
    }
    MP_ASSERT_OK(rc);
    T_INT_EQ(r, (int)(index * index));
  }
  MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EEOF);
  mp_imap_free(it);
  for (int k = 0; k < 100; k++)
    T_ASSERT(seen[k], "index %d never came", k);

  counter_t bad = {0, 10, MP_ECLOSED};
  MP_ASSERT_OK(
      mp_pool_imap_lazy(pool, square_text, count_source, &bad, 16, sizeof(int), 4, &it));
  for (size_t k = 0; k < 10; k++) {
    MP_ASSERT_OK(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10));
    T_INT_EQ(index, k);
  }
  MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_ECLOSED);
  T_INT_EQ(index, 10);
  T_ASSERT(strstr(mp_last_error(), "source"), "message: %s", mp_last_error());
  MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EEOF);
  mp_imap_free(it);
  end_pool();
}
END_TEST

/* Each result is its item reversed, 8-aligned. */
static void check_reversed(const mp_item_t *in, const mp_item_t *out, int n) {
  for (int k = 0; k < n; k++) {
    T_INT_EQ(out[k].size, in[k].size);
    T_ASSERT(((uintptr_t)out[k].data & 7) == 0, "result %d is not aligned", k);
    for (size_t b = 0; b < in[k].size; b++)
      T_ASSERT(((const char *)out[k].data)[b] == ((const char *)in[k].data)[in[k].size - 1 - b],
               "result %d byte %zu", k, b);
  }
}

/* A chunksize above n (up to SIZE_MAX) is n for the forms of items of any size too, as
 * docs/api.md says of every map and iterator (test_huge_chunksize: map and imap). */
START_TEST(test_items_huge_chunksize) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  static const char text[] = "abcdefghij";
  mp_item_t in[10];
  for (int k = 0; k < 10; k++)
    in[k] = (mp_item_t){text + k, 1};
  size_t sizes[] = {11, (size_t)1 << 40, SIZE_MAX};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    mp_item_t *out = NULL;
    MP_ASSERT_OK(mp_pool_map_items(pool, reverse, in, 10, 1, sizes[s], &out));
    for (int k = 0; k < 10; k++)
      T_ASSERT(out[k].size == 1 && *(const char *)out[k].data == text[k], "result %d", k);
    free(out);
    for (int ordered = 0; ordered < 2; ordered++) {
      mp_imap_t *it = NULL;
      MP_ASSERT_OK(ordered
                       ? mp_pool_imap_items(pool, reverse, in, 10, 1, sizes[s], &it)
                       : mp_pool_imap_items_unordered(pool, reverse, in, 10, 1, sizes[s], &it));
      char r;
      size_t len, index;
      int got = 0;
      while (mp_imap_next_item(it, &r, 1, &len, &index, 10) == 0) {
        T_ASSERT(len == 1 && r == text[index], "result %zu", index);
        got++;
      }
      mp_imap_free(it);
      T_INT_EQ(got, 10);
    }
  }
  end_pool();
}
END_TEST

/* A map of strings of random lengths: map_items, imap_items in order and not. */
START_TEST(test_map_items_strings) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  enum { N = 300, MAX = 500 };
  static char text[N][MAX];
  mp_item_t in[N];
  unsigned seed = 18;
  for (int k = 0; k < N; k++) {
    size_t len = (size_t)rand_r(&seed) % MAX;
    for (size_t b = 0; b < len; b++)
      text[k][b] = (char)('a' + rand_r(&seed) % 26);
    in[k] = (mp_item_t){text[k], len};
  }
  const size_t chunksizes[] = {0, 1, 7};
  for (int c = 0; c < 3; c++) {
    mp_item_t *out = NULL;
    MP_ASSERT_OK(mp_pool_map_items(pool, reverse, in, N, MAX, chunksizes[c], &out));
    check_reversed(in, out, N);
    free(out);
  }
  /* Results that would take more than 64 MiB counted at result_max are sized before they
   * are copied (below that, copied in one pass and the rest given back, as above). */
  mp_item_t *big = NULL;
  MP_ASSERT_OK(mp_pool_map_items(pool, reverse, in, 3, (size_t)24 << 20, 1, &big));
  check_reversed(in, big, 3);
  free(big);
  for (int ordered = 0; ordered < 2; ordered++) {
    mp_imap_t *it;
    MP_ASSERT_OK(ordered ? mp_pool_imap_items(pool, reverse, in, N, MAX, 3, &it)
                         : mp_pool_imap_items_unordered(pool, reverse, in, N, MAX, 3, &it));
    char r[MAX];
    size_t len, index;
    for (size_t k = 0; k < N; k++) {
      MP_ASSERT_OK(mp_imap_next_item(it, r, sizeof r, &len, &index, 10));
      if (ordered)
        T_INT_EQ(index, k);
      T_INT_EQ(len, in[index].size);
      for (size_t b = 0; b < len; b++)
        T_ASSERT(r[b] == text[index][len - 1 - b], "result %zu byte %zu", index, b);
    }
    MP_ASSERT_ERR(mp_imap_next_item(it, r, sizeof r, &len, &index, 10), MP_EEOF);
    mp_imap_free(it);
  }
  /* Empty input, empty items. */
  mp_item_t *out = NULL;
  MP_ASSERT_OK(mp_pool_map_items(pool, reverse, NULL, 0, MAX, 0, &out));
  free(out);
  mp_item_t empty[2] = {{NULL, 0}, {"", 0}};
  MP_ASSERT_OK(mp_pool_map_items(pool, reverse, empty, 2, 0, 0, &out));
  T_INT_EQ(out[0].size, 0);
  T_INT_EQ(out[1].size, 0);
  free(out);
  end_pool();
}
END_TEST

/* Copies its item; item "B" then writes a wild length, 4096, over the length word of the
 * result before its own (results of at most 16 bytes take slots of 24: 8 for the length):
 * what a task writing out of its bounds leaves in the job's shared memory. */
static int copy_then_scribble(const void *arg, size_t size, void *result, size_t *result_size) {
  memcpy(result, arg, size);
  *result_size = size;
  if (size == 1 && ((const char *)arg)[0] == 'B') {
    uint64_t wild = 4096;
    memcpy((char *)result - 32, &wild, sizeof wild);
  }
  return 0;
}

/* Fails item 5; naps from item 9 on, so that a terminate finds those chunks unfinished. */
static int fail_5_nap_from_9(const void *arg, size_t size, void *result, size_t *result_size) {
  int x = *(const int *)arg;
  if (x == 5)
    return mp_task_fail("five fails");
  if (x >= 9)
    nap(0.5);
  return square(arg, size, result, result_size);
}

/* An iterator's window slots are reused: with one worker's window of 4 (4 x workers,
 * pool.c), chunk 9 is fed into the slot where chunk 5 failed. Aborted by a terminate, chunk
 * 9 fails with the terminate's code and its own index, not with the failure chunk 5
 * recorded in that slot. */
START_TEST(test_abort_in_a_reused_slot) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  mp_imap_t *it;
  MP_ASSERT_OK(
      mp_pool_imap(pool, fail_5_nap_from_9, items, 12, sizeof(int), sizeof(int), 1, &it));
  for (int k = 0; k < 9; k++) {
    int r = -1;
    size_t index = SIZE_MAX;
    int rc = mp_imap_next(it, &r, &index, 10);
    T_INT_EQ(index, k);
    if (k == 5) {
      MP_ASSERT_ERR(rc, MP_ETASK);
    } else {
      MP_ASSERT_OK(rc);
      T_INT_EQ(r, k * k);
    }
  }
  MP_ASSERT_OK(mp_pool_terminate(pool));
  int r;
  size_t index = SIZE_MAX;
  MP_ASSERT_ERR(mp_imap_next(it, &r, &index, 10), MP_ETERMINATED);
  T_INT_EQ(index, 9);
  T_ASSERT(strstr(mp_last_error(), "item 9") && !strstr(mp_last_error(), "five"), "message: %s",
           mp_last_error());
  mp_imap_free(it);
  end_pool();
}
END_TEST

/* A result's length is a word of shared memory, written by a worker: the parent copies no
 * more than the result's room, whatever it says. */
START_TEST(test_wild_result_length) {
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  mp_item_t in[2] = {{"A", 1}, {"B", 1}};
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap_items(pool, copy_then_scribble, in, 2, 16, 2, &it));
  struct {
    char result[16];
    char after[16]; /* a copy past result would land here */
  } buf;
  memset(&buf, 0, sizeof buf);
  size_t len = 0, index = 9;
  MP_ASSERT_OK(mp_imap_next_item(it, buf.result, sizeof buf.result, &len, &index, 10));
  T_INT_EQ(index, 0);
  T_ASSERT(len <= sizeof buf.result, "a length of %zu for a result of at most 16 bytes", len);
  T_ASSERT(buf.result[0] == 'A', "the result: %c", buf.result[0]);
  for (size_t b = 0; b < sizeof buf.after; b++)
    T_ASSERT(buf.after[b] == 0, "byte %zu past the result was written", b);
  MP_ASSERT_OK(mp_imap_next_item(it, buf.result, sizeof buf.result, &len, &index, 10));
  T_ASSERT(index == 1 && len == 1 && buf.result[0] == 'B', "the second result");
  mp_imap_free(it);
  end_pool();
}
END_TEST

/* imap's failed chunk, pinned for every form and chunksize: the chunk's items before the
 * failed one come, then the failure at its index, the rest of the chunk is skipped, the
 * next chunks come. map: the first error, a failed chunk's results zero (size 0). */
START_TEST(test_failed_chunk) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  enum { N = 20 };
  char text[N][4];
  mp_item_t in[N];
  int nums[N];
  for (int k = 0; k < N; k++) {
    in[k] = (mp_item_t){text[k], (size_t)snprintf(text[k], sizeof text[k], "%d", k)};
    nums[k] = k;
  }
  const size_t chunksizes[] = {1, 2, 4, 5};
  for (int c = 0; c < 4; c++) {
    size_t cs = chunksizes[c], first = 13 / cs * cs, end = first + cs;
    for (int form = 0; form < 2; form++) {
      mp_imap_t *it;
      if (form == 0)
        MP_ASSERT_OK(
            mp_pool_imap(pool, fail_only_13, nums, N, sizeof(int), sizeof(int), cs, &it));
      else
        MP_ASSERT_OK(mp_pool_imap_items(pool, square_text, in, N, sizeof(int), cs, &it));
      for (size_t k = 0; k < N; k++) {
        if (k > 13 && k < end)
          continue; /* never ran, never returned */
        int r = -1, rc;
        size_t index = SIZE_MAX, len;
        rc = form == 0 ? mp_imap_next(it, &r, &index, 10)
                       : mp_imap_next_item(it, &r, sizeof r, &len, &index, 10);
        T_INT_EQ(index, k);
        if (k == 13) {
          MP_ASSERT_ERR(rc, MP_ETASK);
          T_ASSERT(strstr(mp_last_error(), "item 13"), "message: %s", mp_last_error());
        } else {
          MP_ASSERT_OK(rc);
          T_INT_EQ(r, (int)(k * k));
        }
      }
      int r;
      size_t len;
      MP_ASSERT_ERR(form == 0 ? mp_imap_next(it, &r, NULL, 10)
                              : mp_imap_next_item(it, &r, sizeof r, &len, NULL, 10),
                    MP_EEOF);
      mp_imap_free(it);
    }
    mp_item_t *out = NULL;
    MP_ASSERT_ERR(mp_pool_map_items(pool, square_text, in, N, sizeof(int), cs, &out), MP_ETASK);
    T_ASSERT(strstr(mp_last_error(), "item 13"), "message: %s", mp_last_error());
    T_ASSERT(out != NULL, "no results after a failed item");
    for (size_t k = 0; k < N; k++) {
      bool failed_chunk = k >= first && k < end;
      T_INT_EQ(out[k].size, failed_chunk ? 0 : sizeof(int));
      if (!failed_chunk)
        T_INT_EQ(*(const int *)out[k].data, (int)(k * k));
    }
    free(out);
  }
  end_pool();
}
END_TEST

static int bad_source(void *user_data, void *buf, size_t cap, size_t *len) {
  (void)buf;
  *len = cap + 1;
  return *(const int *)user_data;
}

static int no_result(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result;
  *result_size = 0;
  return 0;
}

/* Results of any size with no room at all (result_max 0): each is 0 bytes, read into no
 * buffer (the slot still holds a length word, which is not a result's byte). */
START_TEST(test_results_of_no_room) {
  fill_items();
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  mp_item_t in[6];
  for (int k = 0; k < 6; k++)
    in[k] = (mp_item_t){&items[k], sizeof(int)};
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap_items(pool, no_result, in, 6, 0, 2, &it));
  for (size_t k = 0; k < 6; k++) {
    size_t len = SIZE_MAX, index = SIZE_MAX;
    MP_ASSERT_OK(mp_imap_next_item(it, NULL, 0, &len, &index, 10));
    T_INT_EQ(len, 0);
    T_INT_EQ(index, k);
  }
  size_t len;
  MP_ASSERT_ERR(mp_imap_next_item(it, NULL, 0, &len, NULL, 10), MP_EEOF);
  mp_imap_free(it);
  end_pool();
}
END_TEST

/* Bad input to the forms: NULL, overflowing and huge sizes, a source that lies. */
START_TEST(test_forms_bad_input) {
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  mp_item_t one = {"7", 1}, *out = (mp_item_t *)&one;
  mp_imap_t *it = NULL;
  counter_t src = {0, -1, 0};
  MP_ASSERT_ERR(mp_pool_map_items(pool, reverse, &one, 1, 8, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_items(NULL, reverse, &one, 1, 8, 0, &out), MP_EINVAL);
  T_ASSERT(out == NULL, "results not cleared on an error");
  MP_ASSERT_ERR(mp_pool_map_items(pool, NULL, &one, 1, 8, 0, &out), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_items(pool, reverse, NULL, 1, 8, 0, &out), MP_EINVAL);
  mp_item_t holes[2] = {{"a", 1}, {NULL, 5}};
  MP_ASSERT_ERR(mp_pool_map_items(pool, reverse, holes, 2, 8, 0, &out), MP_EINVAL);
  T_ASSERT(strstr(mp_last_error(), "item 1"), "message: %s", mp_last_error());
  MP_ASSERT_ERR(mp_pool_map_items(pool, reverse, &one, 1, SIZE_MAX, 0, &out), MP_EINVAL);
  int rc = mp_pool_map_items(pool, reverse, &one, 1, (size_t)1 << 46, 0, &out);
  T_ASSERT(rc == MP_ENOMEM, "64 TiB of results: %s", mp_err_name(rc));
  T_ASSERT(out == NULL, "results after an error");
  /* A task that writes past result_max fails. */
  mp_item_t longer = {"abcdefgh", 8};
  MP_ASSERT_ERR(mp_pool_map_items(pool, reverse, &longer, 1, 4, 0, &out), MP_ETASK);
  free(out);

  MP_ASSERT_ERR(mp_pool_imap_lazy(pool, square_text, count_source, &src, 16, 4, 0, NULL),
                MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_imap_lazy(NULL, square_text, count_source, &src, 16, 4, 0, &it),
                MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_imap_lazy(pool, NULL, count_source, &src, 16, 4, 0, &it), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_imap_lazy(pool, square_text, NULL, &src, 16, 4, 0, &it), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_imap_lazy(pool, square_text, count_source, &src, SIZE_MAX, 4, 0, &it),
                MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_imap_lazy(pool, square_text, count_source, &src, 16, SIZE_MAX, 0, &it),
                MP_EINVAL);
  MP_ASSERT_ERR(
      mp_pool_imap_lazy(pool, square_text, count_source, &src, 16, 4, SIZE_MAX / 2, &it),
      MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_imap_items(pool, reverse, holes, 2, 8, 0, &it), MP_EINVAL);
  T_INT_EQ(src.next, 0); /* never called */
  /* Too small a buffer: nothing taken; mp_imap_next refuses the form. */
  MP_ASSERT_OK(mp_pool_imap_lazy(pool, square_text, count_source, &src, 16, 4, 0, &it));
  int r;
  size_t len = 0, index;
  char small[2];
  MP_ASSERT_ERR(mp_imap_next_item(it, small, sizeof small, &len, &index, 10), MP_ETOOSMALL);
  T_INT_EQ(len, 4);
  MP_ASSERT_ERR(mp_imap_next_item(it, NULL, 4, &len, &index, 10), MP_EINVAL);
  MP_ASSERT_ERR(mp_imap_next(it, &r, &index, 10), MP_EINVAL);
  MP_ASSERT_OK(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10));
  T_INT_EQ(index, 0);
  T_INT_EQ(r, 0);
  mp_imap_free(it);
  /* A source that writes more than its room, or returns a positive value: MP_EINVAL at its
   * place. */
  const int returns[] = {0, 1};
  for (int k = 0; k < 2; k++) {
    MP_ASSERT_OK(
        mp_pool_imap_lazy(pool, square_text, bad_source, (void *)&returns[k], 16, 4, 0, &it));
    MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EINVAL);
    T_INT_EQ(index, 0);
    MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EEOF);
    mp_imap_free(it);
  }
  end_pool();
}
END_TEST

/* ------------------------- forged job blocks ------------------------- */

/* A task that rewrites the words of its own job's block before its argument: everything the
 * pool's process acts on (the async results and their callbacks, the list of its jobs, the
 * header it copies results by) must be out of its reach, or checked. The task finds its
 * job's header by the words it knows the pool wrote there (n, item size, result size,
 * chunksize, in that order); the block starts on the 64-byte line that holds them. */
enum { FORGE_CALLBACKS = 1, FORGE_LINKS, FORGE_HEADER, FORGE_HEAP_CLASS };

/* A batch's applies (lib/pool_jobs.h, MP__BATCH_APPLIES), and how far back from its
 * argument a task looks for its header: a batch's arguments (those past a cell's 16 bytes,
 * as a forge_t is; smaller ones are copied out of the cells) follow its cells, 8 KiB, and
 * its error records, 528 bytes for each apply, some 70 KiB. */
enum { BATCH_APPLIES = 128, FORGE_REACH_WORDS = 16384 };

typedef struct {
  /* The header's words, in the other order: an earlier item of a map holds them too. */
  uint64_t chunksize, result_size, item_size, n;
  uint64_t what;
  uint64_t legit[2]; /* FORGE_CALLBACKS: words to replace (the parent's callbacks) */
  uint64_t forged;   /* what is written instead (an address of the parent's) */
  uint64_t go;       /* a raw value ('q') the task waits to be 1 for, if not 0 */
} forge_t;

#define FORGE_WILD 0x0000100000001000ull /* 4096 in each half, far past any block */
#define WORD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define SET_WORD(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)

static _Atomic int forged_ran, legit_ran;

/* What a forged callback would run: it records that it ran. */
static int forged_callback(mp_async_result_t *ar, void *user_data) {
  (void)ar;
  (void)user_data;
  atomic_fetch_add(&forged_ran, 1);
  return 0;
}

static int legit_callback(mp_async_result_t *ar, void *user_data) {
  (void)ar;
  (void)user_data;
  atomic_fetch_add(&legit_ran, 1);
  return 0;
}

/* Its result: the words it replaced (FORGE_CALLBACKS), or -1 if it found no header. */
static int forge(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  forge_t f;
  memcpy(&f, arg, sizeof f);
  for (double end = mp_test_now() + 10; f.go && mp_test_now() < end;) {
    long go = 0;
    if (mp_value_get_long((mp_value_t *)(uintptr_t)f.go, &go) == 0 && go == 1)
      break;
    mp_test_sleep(0.001);
  }
  /* Words the pool's process writes too, whose races are the point: relaxed atomics, so
   * that ThreadSanitizer sees no data race in a thread worker. */
  uint64_t *at = (uint64_t *)((uintptr_t)arg & ~(uintptr_t)7), *hdr = NULL;
  for (size_t back = 4; back < FORGE_REACH_WORDS && !hdr; back++)
    if (WORD(at - back) == f.n && WORD(at + 1 - back) == f.item_size &&
        WORD(at + 2 - back) == f.result_size && WORD(at + 3 - back) == f.chunksize)
      hdr = at - back;
  int found = -1;
  if (hdr) {
    uint64_t *block = (uint64_t *)((uintptr_t)hdr & ~(uintptr_t)63);
    found = 0;
    if (f.what == FORGE_CALLBACKS)
      for (uint64_t *w = block; w < at; w++)
        if (WORD(w) == f.legit[0] || WORD(w) == f.legit[1])
          SET_WORD(w, f.forged), found++;
    if (f.what == FORGE_LINKS)
      SET_WORD(block, f.forged), SET_WORD(block + 1, f.forged);
    if (f.what == FORGE_HEADER)
      for (size_t k = 0; k < 22; k++)
        SET_WORD(hdr + k, FORGE_WILD);
    /* The arena's header of the block, the 64 bytes before it (magic, then size class):
     * class 40 (a block of 1 TiB). */
    if (f.what == FORGE_HEAP_CLASS)
      SET_WORD(block - 8, (WORD(block - 8) & 0xffffffffull) | (uint64_t)40 << 32);
  }
  if (result)
    memcpy(result, &found, sizeof found);
  if (result_size)
    *result_size = sizeof found;
  return 0;
}

/* The task's description of a job of n forge_t items with results of result_size. */
static forge_t forge_job(uint64_t what, uint64_t n, uint64_t result_size, mp_value_t *go) {
  forge_t f = {1, result_size, sizeof(forge_t), n, what, {0, 0}, 0, (uint64_t)(uintptr_t)go};
  return f;
}

/* A batch's slots start with a length and are rounded to 8 (docs/architecture.md). */
static uint64_t var_slot_of(uint64_t max) {
  return (max + 8 + 7) & ~(uint64_t)7;
}

static mp_value_t *go_flag(void) {
  mp_value_t *go;
  long zero = 0;
  MP_ASSERT_OK(mp_raw_value_create(&go, 'q', &zero));
  return go;
}

/* The async result's callbacks, in a lone apply's job, an apply of a batch and a map: the
 * supervisor calls the ones it was given, never what a task wrote over them. */
START_TEST(test_forged_callbacks) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  mp_value_t *go = go_flag();
  mp_async_callbacks_t cbs = {legit_callback, legit_callback, NULL};
  atomic_store(&forged_ran, 0);
  atomic_store(&legit_ran, 0);
  for (int form = 0; form < 3; form++) {
    MP_ASSERT_OK(mp_value_set_long(go, 0));
    /* form 0: the first apply, a job of its own; 1: applies after an apply share a batch;
     * 2: a map. */
    forge_t f = form == 2 ? forge_job(FORGE_CALLBACKS, 1, sizeof(int), go)
                          : forge_job(FORGE_CALLBACKS, 1, 100, go);
    if (form == 1) {
      f.n = BATCH_APPLIES; /* a batch's, of slots with their length first */
      f.item_size = var_slot_of(sizeof f);
      f.result_size = var_slot_of(100);
    }
    f.legit[0] = f.legit[1] = (uint64_t)(uintptr_t)legit_callback;
    f.forged = (uint64_t)(uintptr_t)forged_callback;
    mp_async_result_t *ar, *other = NULL;
    int found = -2;
    forge_t looks = f; /* an apply of the same batch (the same function, sizes, callbacks) */
    looks.what = 0;
    if (form == 1)
      MP_ASSERT_OK(mp_pool_apply_async(pool, forge, &looks, sizeof looks, 100, &cbs, &other));
    if (form < 2)
      MP_ASSERT_OK(mp_pool_apply_async(pool, forge, &f, sizeof f, 100, &cbs, &ar));
    else
      MP_ASSERT_OK(
          mp_pool_map_async(pool, forge, &f, 1, sizeof f, sizeof found, 1, &cbs, &ar));
    MP_ASSERT_OK(mp_value_set_long(go, 1)); /* the callbacks are in place now */
    MP_ASSERT_OK(mp_async_result_get(ar, &found, sizeof found, NULL, 10));
    MP_ASSERT_OK(mp_async_result_wait(ar, 10)); /* its callback ran */
    T_ASSERT(found >= 0, "form %d: the task did not find its job's header", form);
    mp_async_result_free(ar);
    if (other) {
      MP_ASSERT_OK(mp_async_result_wait(other, 10));
      mp_async_result_free(other);
    }
    T_INT_EQ(atomic_load(&forged_ran), 0);
    T_INT_EQ(atomic_load(&legit_ran), form == 0 ? 1 : form == 1 ? 3 : 4);
  }
  mp_value_close(go);
  end_pool();
}
END_TEST

/* The parent's list of its jobs: a task that writes an address of the parent's where the
 * links were does not make the parent write there. */
START_TEST(test_forged_links) {
  mp_pool_t *pool = make_pool(_i, 2, NULL);
  static uint64_t decoy[8];
  memset(decoy, 0, sizeof decoy);
  for (int k = 0; k < 3; k++) {
    forge_t f = forge_job(FORGE_LINKS, 1, sizeof(int), NULL);
    f.forged = (uint64_t)(uintptr_t)decoy;
    int found = -2;
    MP_ASSERT_OK(mp_pool_map(pool, forge, &f, 1, sizeof f, &found, sizeof found, 1));
    T_ASSERT(found == 0, "the task did not find its job's header");
  }
  int x[4] = {1, 2, 3, 4}, r[4];
  MP_ASSERT_OK(mp_pool_map(pool, square, x, 4, sizeof(int), r, sizeof(int), 1));
  T_ASSERT(r[0] == 1 && r[3] == 16, "a map after the forged ones");
  end_pool();
  for (size_t k = 0; k < 8; k++)
    T_ASSERT(decoy[k] == 0, "word %zu of the decoy was written: %#llx", k,
             (unsigned long long)decoy[k]);
}
END_TEST

/* The header the parent bounds by: n, sizes, chunk counts, window and offsets rewritten
 * while the job runs, in a map, an imap, a lone apply and an apply of a batch. The worker
 * that reads them back may die of it (its chunk fails with MP_EWORKERDIED); the parent
 * copies nothing out of bounds and the pool goes on. */
static void forged_header(int ctx, int form) {
  mp_pool_t *pool = make_pool(ctx, 1, NULL);
  forge_t f = forge_job(FORGE_HEADER, 1, form < 2 ? sizeof(int) : 100, NULL);
  struct {
    int r[1];
    char after[64];
  } out;
  memset(&out, 0, sizeof out);
  int rc;
  mp_async_result_t *ar, *first = NULL;
  if (form == 0) {
    rc = mp_pool_map(pool, forge, &f, 1, sizeof f, out.r, sizeof(int), 1);
  } else if (form == 1) {
    mp_imap_t *it;
    MP_ASSERT_OK(mp_pool_imap(pool, forge, &f, 1, sizeof f, sizeof(int), 1, &it));
    rc = mp_imap_next(it, out.r, NULL, 10);
    if (rc == 0)
      MP_ASSERT_ERR(mp_imap_next(it, out.r, NULL, 10), MP_EEOF);
    mp_imap_free(it);
  } else {
    if (form == 3) {
      /* An apply after an apply opens a batch: slots with their length first. The
       * batch's first apply forges nothing. */
      int r = -2;
      forge_t looks = f;
      looks.what = 0;
      char buf[100];
      MP_ASSERT_OK(mp_pool_apply(pool, forge, &looks, sizeof looks, buf, sizeof buf, NULL));
      memcpy(&r, buf, sizeof r);
      T_ASSERT(r == 0, "the lone apply did not find its header");
      f.n = looks.n = BATCH_APPLIES;
      f.item_size = looks.item_size = var_slot_of(sizeof f);
      f.result_size = looks.result_size = var_slot_of(100);
      MP_ASSERT_OK(mp_pool_apply_async(pool, forge, &looks, sizeof looks, 100, NULL, &first));
      MP_ASSERT_OK(mp_async_result_get(first, &r, sizeof r, NULL, 10));
      T_ASSERT(r == 0, "the batch's first apply did not find its header");
    }
    MP_ASSERT_OK(mp_pool_apply_async(pool, forge, &f, sizeof f, 100, NULL, &ar));
    rc = mp_async_result_get(ar, out.r, sizeof out.r, NULL, 10);
    mp_async_result_free(ar);
    mp_async_result_free(first);
  }
  T_ASSERT(rc == 0 || rc == MP_EWORKERDIED, "form %d: %s", form, mp_strerror(rc));
  for (size_t b = 0; b < sizeof out.after; b++)
    T_ASSERT(out.after[b] == 0, "byte %zu past the result was written", b);
  int xs[4] = {1, 2, 3, 4}, rs[4];
  MP_ASSERT_OK(mp_pool_map(pool, square, xs, 4, sizeof(int), rs, sizeof(int), 1));
  T_ASSERT(rs[0] == 1 && rs[3] == 16, "a map after the forged job");
  end_pool();
}

START_TEST(test_forged_header_map) {
  forged_header(_i, 0);
}
END_TEST

START_TEST(test_forged_header_imap) {
  forged_header(_i, 1);
}
END_TEST

START_TEST(test_forged_header_apply) {
  forged_header(_i, 2);
}
END_TEST

START_TEST(test_forged_header_batch) {
  forged_header(_i, 3);
}
END_TEST

/* A map's first chunk rewrites the header while its other chunks are still queued (review,
 * stop 22). The worker that completes the forging chunk dies of the wild header, and so
 * does every replacement that looks at the job to claim one of the queued chunks: it dies in
 * its claim, running no chunk, so no loss fails anything, the job stays the oldest, and the
 * next replacement dies the same way. The forged map must end (failed), and a map after it
 * must run; before, the workers died in a loop and the map after waited for ever. */
START_TEST(test_forged_header_queued_chunks) {
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  forge_t f[3];
  for (int k = 0; k < 3; k++) {
    f[k] = forge_job(k == 0 ? FORGE_HEADER : 0, 3, sizeof(int), NULL);
  }
  int out[3] = {0};
  mp_async_result_t *ar;
  MP_ASSERT_OK(mp_pool_map_async(pool, forge, f, 3, sizeof f[0], sizeof(int), 1, NULL, &ar));
  int rc = mp_async_result_get(ar, out, sizeof out, NULL, 10);
  mp_async_result_free(ar);
  int xs[4] = {1, 2, 3, 4}, rs[4] = {0};
  MP_ASSERT_OK(mp_pool_map_async(pool, square, xs, 4, sizeof(int), sizeof(int), 1, NULL, &ar));
  int after = mp_async_result_get(ar, rs, sizeof rs, NULL, 10);
  mp_async_result_free(ar);
  T_ASSERT(rc == MP_EWORKERDIED || rc == MP_ECORRUPT, "the forged map: %s; the map after: %s",
           mp_err_name(rc), mp_err_name(after));
  MP_ASSERT_OK(after);
  T_ASSERT(rs[0] == 1 && rs[3] == 16, "a map after the forged job");
  end_pool();
}
END_TEST

/* A task writes the size class in the arena's header of its job's block, the word just
 * before the block (review, stop 22): the pool's destruction releases the block and
 * believes the class (mp__shared_release), punching the pages of a 1 TiB block from there:
 * an Array allocated after the block was zeroed (a class of 63 makes a shift of 63 and an
 * index past the arena's free lists, which UBSan reports). A wild class may leak the block,
 * nothing more. */
START_TEST(test_forged_heap_class) {
  mp_pool_t *pool = make_pool(_i, 1, NULL);
  forge_t f = forge_job(FORGE_HEAP_CLASS, 1, sizeof(int), NULL);
  int found = -1;
  MP_ASSERT_OK(mp_pool_map(pool, forge, &f, 1, sizeof f, &found, sizeof found, 1));
  T_INT_EQ(found, 0);
  enum { LEN = 1 << 20 };
  mp_array_t *a;
  MP_ASSERT_OK(mp_raw_array_create(&a, 'b', LEN, NULL));
  memset(mp_array_ptr(a), 7, LEN);
  end_pool();
  const char *bytes = mp_array_ptr(a);
  size_t zeroed = 0;
  for (size_t k = 0; k < LEN; k++)
    zeroed += bytes[k] != 7;
  MP_ASSERT_OK(mp_array_close(a));
  T_ASSERT(zeroed == 0, "%zu bytes of an Array were zeroed by the pool's destruction", zeroed);
}
END_TEST

static Suite *pool_suite(void) {
  Suite *s = suite_create("pool");
  TCase *tc = mp_test_tcase(s, "map", 60);
  tcase_add_loop_test(tc, test_map_chunksizes, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_starmap, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_map_async, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_map_failure, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_stale_failure_message, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_results_after_fork, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_huge_chunksize, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_submit_error_message, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "imap", 60);
  tcase_add_loop_test(tc, test_imap_ordered, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_imap_unordered, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_imap_timeout_and_failure, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_imap_bounded, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_free_while_running, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "forms", 90);
  tcase_add_loop_test(tc, test_lazy_endless, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_lazy_finite_and_failing, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_map_items_strings, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_items_huge_chunksize, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_failed_chunk, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_wild_result_length, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_abort_in_a_reused_slot, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_results_of_no_room, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_forms_bad_input, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "apply", 60);
  tcase_add_loop_test(tc, test_apply, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_apply_async_timeouts, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_apply_sizes_in_a_batch, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_callbacks, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "held", 60);
  tcase_add_loop_test(tc, test_held_applies_run_unwaited, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_close_runs_held_applies, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_terminate_fails_held_applies, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "in_flight", 90);
  tcase_add_loop_test(tc, test_applies_in_flight, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_applies_in_flight_worker_dies, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_applies_in_flight_end, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_close_while_a_batch_opens, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_applies_in_flight_callbacks, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_applies_in_flight_parallel, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_applies_in_flight_threads, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "workers", 60);
  tcase_add_loop_test(tc, test_initializer, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_create_waits_for_initializers_only, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_maxtasksperchild, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_replacement_initializer_fails, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_parallel, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "dead", 90);
  tcase_add_loop_test(tc, test_sigkill_during_map, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_external_sigkill, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_segfault_and_exit, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_retries, 0, N_PROCESS_CONTEXTS);
  tcase_add_test(tc, test_replacements_cannot_start); /* spawn: see the test */
  tcase_add_loop_test(tc, test_out_of_processes, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_workers_start_from_creation, 0, N_CONTEXTS);
  tcase_add_test(tc, test_zygote_killed);
  tc = mp_test_tcase(s, "end", 60);
  tcase_add_loop_test(tc, test_terminate_long_map, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_close_join, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_destroy_without_close, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_ctrl_c, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_other_signals_do_not_interrupt, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "input", 30);
  tcase_add_loop_test(tc, test_bad_input, 0, N_CONTEXTS);
  tcase_add_test(tc, test_thread_context);
  tc = mp_test_tcase(s, "faults", 90);
  tcase_add_loop_test(tc, test_starting_worker_killed, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_workers_never_ready, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_huge_sizes, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_result_overrun, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_died_item_named, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_destroyed_pool, 0, N_CONTEXTS);
  tcase_add_test(tc, test_options_init);
  /* Forged job blocks: a header rewritten kills the worker that reads it, which under the
   * thread context is the pool's own process. */
  tc = mp_test_tcase(s, "forged", 90);
  tcase_add_loop_test(tc, test_forged_callbacks, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_forged_links, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_forged_header_map, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_forged_header_imap, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_forged_header_apply, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_forged_header_batch, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_forged_header_queued_chunks, 0, N_PROCESS_CONTEXTS);
  tcase_add_loop_test(tc, test_forged_heap_class, 0, N_PROCESS_CONTEXTS);
  return s;
}

MP_TEST_MAIN(pool_suite)
