/*
 * The trace (docs/trace.md): the file is read back with a real JSON parser (jansson) and
 * checked for what a reader of the timeline relies on, under every start method.
 *
 * Run with "--program PATH METHOD" (the MP_TRACE test), this binary is a small traced
 * program instead of the suite.
 */
#include "mp_test.h"

#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define ROUNDS 40

/* ------------------------------- reading a trace ------------------------------- */

/* A trace file of this test, different for each test and each run. */
static void trace_path(char *buf, size_t cap, const char *what, int method) {
  snprintf(buf, cap, "/tmp/libmp-test-trace-%d-%s-%d.json", (int)getpid(), what, method);
}

static json_t *load_trace(const char *path) {
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  T_ASSERT(root != NULL, "%s does not parse: line %d: %s", path, err.line, err.text);
  T_ASSERT(json_is_array(json_object_get(root, "traceEvents")), "%s has no traceEvents", path);
  return root;
}

static const char *str_of(json_t *obj, const char *key) {
  const char *s = json_string_value(json_object_get(obj, key));
  return s ? s : "";
}

static json_int_t int_of(json_t *obj, const char *key) {
  return json_integer_value(json_object_get(obj, key));
}

static double num_of(json_t *obj, const char *key) {
  return json_number_value(json_object_get(obj, key));
}

static json_t *arg(json_t *event, const char *key) {
  return json_object_get(json_object_get(event, "args"), key);
}

/* The event's "name" is name (or starts with it, if prefix). */
static bool named(json_t *event, const char *name, bool prefix) {
  const char *n = str_of(event, "name");
  return prefix ? strncmp(n, name, strlen(name)) == 0 : strcmp(n, name) == 0;
}

/* How many events have this phase and name (NULL: any name) and pid (0: any). */
static int count(json_t *root, const char *ph, const char *name, bool prefix, json_int_t pid) {
  json_t *events = json_object_get(root, "traceEvents"), *e;
  size_t i;
  int n = 0;
  json_array_foreach(events, i, e) {
    if (strcmp(str_of(e, "ph"), ph) == 0 && (!name || named(e, name, prefix)) &&
        (!pid || int_of(e, "pid") == pid))
      n++;
  }
  return n;
}

/* The directory an unfinished trace file names, where the events wait for the merge. */
static void events_dir(const char *path, char *dir, size_t cap) {
  json_t *root = load_trace(path);
  T_INT_EQ(json_array_size(json_object_get(root, "traceEvents")), 0);
  json_t *other = json_object_get(root, "otherData");
  T_ASSERT(json_object_get(other, "libmp_incomplete") != NULL, "the placeholder says so");
  snprintf(dir, cap, "%s", str_of(other, "libmp_dir"));
  T_ASSERT(dir[0] == '/', "the placeholder names the directory: '%s'", dir);
  json_decref(root);
}

static void assert_removed(const char *dir) {
  struct stat st;
  T_ASSERT(stat(dir, &st) < 0 && errno == ENOENT, "%s is removed after the merge", dir);
}

/* The label of pid's lane ("Process-1 (spawn)"), or "". */
static const char *process_label(json_t *root, json_int_t pid) {
  json_t *events = json_object_get(root, "traceEvents"), *e;
  size_t i;
  json_array_foreach(events, i, e) {
    if (named(e, "process_name", false) && int_of(e, "pid") == pid)
      return json_string_value(arg(e, "name"));
  }
  return "";
}

/* ------------------------------- what the children do ------------------------------- */

typedef struct {
  mp_lock_t *lock;
  mp_event_t *go;   /* NULL, or set when the rounds may begin */
  mp_event_t *done; /* lock_then_sleep: set after the rounds */
  mp_value_t *counter;
  int rounds;
} lock_arg_t;

/* Takes the lock `rounds` times, adding to the counter inside. */
static int lock_rounds(void *arg, size_t size) {
  (void)size;
  lock_arg_t *a = arg;
  if (a->go && mp_event_wait(a->go, 30) < 0)
    return 2;
  long *counter = mp_value_ptr(a->counter);
  for (int i = 0; i < a->rounds; i++) {
    if (mp_lock_acquire(a->lock, 30) < 0)
      return 3;
    (*counter)++;
    if (mp_lock_release(a->lock) < 0)
      return 4;
  }
  return 0;
}

/* Takes the lock, then says so and sleeps until killed. */
static int lock_then_sleep(void *arg, size_t size) {
  lock_arg_t *a = arg;
  int rc = lock_rounds(arg, size);
  if (rc != 0)
    return rc;
  mp_event_set(a->done);
  for (;;)
    pause();
}

static lock_arg_t lock_arg_new(const char *name) {
  lock_arg_t a = {.rounds = ROUNDS};
  MP_ASSERT_OK(mp_lock_create(&a.lock));
  MP_ASSERT_OK(mp_raw_value_create(&a.counter, MP_TYPE_BYTES(sizeof(long)), NULL));
  MP_ASSERT_OK(mp_set_name(a.lock, name));
  return a;
}

static void lock_arg_free(lock_arg_t *a) {
  mp_lock_close(a->lock);
  mp_value_close(a->counter);
  if (a->go)
    mp_event_close(a->go);
  if (a->done)
    mp_event_close(a->done);
}

/* ------------------------------------ tests ------------------------------------ */

/* One child of each start method: three processes with lanes of their own, labelled with
 * their method, each with its holds of the lock and its exit code. */
START_TEST(test_three_methods) {
  char path[128];
  trace_path(path, sizeof path, "methods", 0);
  lock_arg_t a = lock_arg_new("shared lock");
  a.rounds = 3;
  MP_ASSERT_OK(mp_trace_start(path));
  T_ASSERT(mp_trace_enabled(), "tracing is on after mp_trace_start");
  char dir[4096];
  events_dir(path, dir, sizeof dir);
  mp_process_t *p[N_METHODS];
  for (int m = 0; m < N_METHODS; m++)
    p[m] = mp_test_start(m, lock_rounds, &a, sizeof a);
  int pids[N_METHODS];
  for (int m = 0; m < N_METHODS; m++) {
    pids[m] = mp_process_pid(p[m]);
    mp_test_join_ok(p[m], 30);
  }
  MP_ASSERT_OK(mp_trace_stop());
  T_ASSERT(!mp_trace_enabled(), "tracing is off after mp_trace_stop");
  json_t *root = load_trace(path);
  for (int m = 0; m < N_METHODS; m++) {
    char want[64];
    snprintf(want, sizeof want, "(%s)", METHODS[m]);
    const char *label = process_label(root, pids[m]);
    T_ASSERT(strstr(label, want) != NULL, "pid %d is '%s', not %s", pids[m], label, want);
    T_INT_EQ(count(root, "X", "hold shared lock", false, pids[m]), 3);
    T_INT_EQ(count(root, "i", "exit", false, pids[m]), 1);
    T_INT_EQ(count(root, "i", "ended (exit code 0)", false, pids[m]), 1);
    T_INT_EQ(count(root, "i", "start", false, pids[m]), 1);
  }
  T_ASSERT(strstr(process_label(root, getpid()), "(main)") != NULL, "the tracing process");
  json_decref(root);
  assert_removed(dir);
  unlink(path);
  lock_arg_free(&a);
}
END_TEST

typedef struct {
  double start, end;
  json_int_t pid;
} interval_t;

static int by_start(const void *x, const void *y) {
  const interval_t *a = x, *b = y;
  return (a->start > b->start) - (a->start < b->start);
}

/* Three processes and the parent contend for one Lock: the holds the trace shows never
 * overlap, there is one per acquire, and each has its wait before it. */
START_TEST(test_lock_holds_never_overlap) {
  char path[128];
  trace_path(path, sizeof path, "holds", _i);
  lock_arg_t a = lock_arg_new("counter lock");
  MP_ASSERT_OK(mp_event_create(&a.go));
  MP_ASSERT_OK(mp_trace_start(path));
  mp_process_t *p[3];
  for (int i = 0; i < 3; i++)
    p[i] = mp_test_start(_i, lock_rounds, &a, sizeof a);
  MP_ASSERT_OK(mp_event_set(a.go));
  T_INT_EQ(lock_rounds(&a, sizeof a), 0);
  for (int i = 0; i < 3; i++)
    mp_test_join_ok(p[i], 60);
  MP_ASSERT_OK(mp_trace_stop());
  T_INT_EQ(*(long *)mp_value_ptr(a.counter), 4 * ROUNDS);

  json_t *root = load_trace(path), *e;
  json_t *events = json_object_get(root, "traceEvents");
  interval_t holds[4 * ROUNDS + 1];
  size_t n = 0, i;
  json_array_foreach(events, i, e) {
    if (!named(e, "hold counter lock", false))
      continue;
    T_ASSERT(n < 4 * ROUNDS, "more holds than acquires");
    double ts = num_of(e, "ts");
    holds[n++] = (interval_t){ts, ts + num_of(e, "dur"), int_of(e, "pid")};
  }
  T_INT_EQ(n, 4 * ROUNDS);
  T_INT_EQ(count(root, "X", "wait counter lock", false, 0), 4 * ROUNDS);
  qsort(holds, n, sizeof holds[0], by_start);
  int switches = 0;
  for (i = 1; i < n; i++) {
    /* 1 ns of slack for the sum of two decimal microsecond values */
    T_ASSERT(holds[i].start >= holds[i - 1].end - 0.001,
             "hold of pid %lld at %.3f us starts before pid %lld's ends at %.3f us",
             (long long)holds[i].pid, holds[i].start, (long long)holds[i - 1].pid,
             holds[i - 1].end);
    switches += holds[i].pid != holds[i - 1].pid;
  }
  T_ASSERT(switches >= 3, "the lock passed between processes (%d times)", switches);
  json_decref(root);
  unlink(path);
  lock_arg_free(&a);
}
END_TEST

/* ------------------------------- a Condition's waiters ------------------------------- */

typedef struct {
  mp_condition_t *cond;
  mp_event_t *ready; /* set while the waiter holds the lock, just before it waits */
  double timeout;
} cond_arg_t;

/* Waits once: 0 notified, 1 timed out, 2 failed. */
static int cond_wait_once(void *arg, size_t size) {
  (void)size;
  const cond_arg_t *a = arg;
  if (mp_condition_acquire(a->cond, 30) < 0)
    return 2;
  mp_event_set(a->ready);
  int rc = mp_condition_wait(a->cond, a->timeout);
  mp_condition_release(a->cond);
  return rc == 0 ? 0 : rc == MP_ETIMEDOUT ? 1 : 2;
}

/* A child in mp_condition_wait: it said it holds the lock, and the lock was free again. */
static mp_process_t *start_cond_waiter(int method, cond_arg_t *a) {
  mp_process_t *p = mp_test_start(method, cond_wait_once, a, sizeof *a);
  MP_ASSERT_OK(mp_event_wait(a->ready, 20));
  mp_event_clear(a->ready);
  MP_ASSERT_OK(mp_condition_acquire(a->cond, 20));
  MP_ASSERT_OK(mp_condition_release(a->cond));
  return p;
}

/* A waiter killed after its notify and before it took its token leaves the token to
 * nobody (api.md). A live waiter that began too late for that token, and was not notified,
 * slept through its wait: it took the lock again at every 50 ms slice to look for a token
 * it could not take (rev-sync2's suspicion, stop 24; 30 holds in 1.5 s). */
START_TEST(test_condition_waiter_sleeps_beside_untaken_token) {
  char path[128];
  trace_path(path, sizeof path, "cond", _i);
  cond_arg_t a = {.timeout = MP_FOREVER};
  MP_ASSERT_OK(mp_condition_create(&a.cond, NULL));
  MP_ASSERT_OK(mp_set_name(mp_condition_lock(a.cond), "cond lock"));
  MP_ASSERT_OK(mp_event_create(&a.ready));
  MP_ASSERT_OK(mp_trace_start(path));
  mp_process_t *killed = start_cond_waiter(_i, &a);
  MP_ASSERT_OK(mp_condition_acquire(a.cond, 20));
  MP_ASSERT_OK(mp_condition_notify(a.cond, 1));
  MP_ASSERT_OK(mp_process_kill(killed)); /* woken, waiting for the lock held here */
  T_INT_EQ(mp_test_join_code(killed, 20), -SIGKILL);
  T_PROC_CLOSE(killed);
  MP_ASSERT_OK(mp_condition_release(a.cond));
  a.timeout = 1.5;
  mp_process_t *waiter[2] = {start_cond_waiter(_i, &a), start_cond_waiter(_i, &a)};
  MP_ASSERT_OK(mp_condition_acquire(a.cond, 20));
  MP_ASSERT_OK(mp_condition_notify(a.cond, 1)); /* one token, for one of the two */
  MP_ASSERT_OK(mp_condition_release(a.cond));
  int code[2], pid[2];
  for (int k = 0; k < 2; k++) {
    pid[k] = mp_process_pid(waiter[k]);
    code[k] = mp_test_join_code(waiter[k], 20);
    T_PROC_CLOSE(waiter[k]);
  }
  MP_ASSERT_OK(mp_trace_stop());
  T_ASSERT(code[0] + code[1] == 1 && code[0] * code[1] == 0,
           "one waiter notified and one timed out, not exit codes %d and %d", code[0], code[1]);
  json_t *root = load_trace(path);
  int left = code[0] == 1 ? 0 : 1;
  /* Its acquire before the wait, the look when the notify changed the futex word, the
   * take at the timeout. */
  int holds = count(root, "X", "hold cond lock", false, pid[left]);
  T_ASSERT(holds <= 4, "the waiter left without a token took the lock %d times in 1.5 s",
           holds);
  json_decref(root);
  unlink(path);
  mp_event_close(a.ready);
  mp_condition_close(a.cond);
}
END_TEST

/* ------------------------------------ the pool ------------------------------------ */

#define ITEMS 100
#define CHUNK 7
#define CHUNKS ((ITEMS + CHUNK - 1) / CHUNK)

static int square(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  long v = *(const long *)arg;
  *(long *)result = v * v;
  return 0;
}

static const char *const POOL_METHODS[] = {"fork", "spawn", "forkserver", "thread"};

static mp_pool_t *pool_new(int method, int processes, unsigned retries) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = processes;
  o.retries = retries;
  MP_ASSERT_OK(mp_get_context(POOL_METHODS[method], &o.context));
  mp_pool_t *pool = NULL;
  MP_ASSERT_OK(mp_pool_create(&pool, &o));
  return pool;
}

/* Checks that each of the trace's maps ran each of its chunks once, with the right items,
 * and returns how many maps there were. */
static int check_chunks(json_t *root, int chunks, int chunksize, int items) {
  json_t *events = json_object_get(root, "traceEvents"), *e;
  json_int_t maps[8];
  int seen[8][ITEMS] = {{0}}, n_maps = 0;
  size_t i;
  json_array_foreach(events, i, e) {
    if (strcmp(str_of(e, "cat"), "pool.chunk") != 0)
      continue;
    json_int_t map = json_integer_value(arg(e, "map"));
    int m = 0;
    while (m < n_maps && maps[m] != map)
      m++;
    if (m == n_maps) {
      T_ASSERT(n_maps < 8, "too many maps");
      maps[n_maps++] = map;
    }
    json_int_t chunk = json_integer_value(arg(e, "chunk"));
    T_ASSERT(chunk >= 0 && chunk < chunks, "chunk %lld of %d", (long long)chunk, chunks);
    T_STR_EQ(json_string_value(arg(e, "status")), "done");
    T_INT_EQ(json_integer_value(arg(e, "first")), chunk * chunksize);
    json_int_t want = chunk * chunksize + chunksize <= items ? chunksize : items % chunksize;
    T_INT_EQ(json_integer_value(arg(e, "count")), want);
    seen[m][chunk]++;
  }
  for (int m = 0; m < n_maps; m++)
    for (int c = 0; c < chunks; c++)
      T_ASSERT(seen[m][c] == 1, "map %lld ran chunk %d %d times", (long long)maps[m], c,
               seen[m][c]);
  return n_maps;
}

/* Two maps of 15 chunks: each chunk of each appears once, run by a worker. */
START_TEST(test_pool_chunks_once) {
  char path[128];
  trace_path(path, sizeof path, "pool", _i);
  MP_ASSERT_OK(mp_trace_start(path));
  mp_pool_t *pool = pool_new(_i, 3, 0);
  long in[ITEMS], out[ITEMS];
  for (int i = 0; i < ITEMS; i++)
    in[i] = i;
  for (int round = 0; round < 2; round++) {
    MP_ASSERT_OK(mp_pool_map(pool, square, in, ITEMS, sizeof(long), out, sizeof(long), CHUNK));
    T_INT_EQ(out[ITEMS - 1], (ITEMS - 1) * (ITEMS - 1));
  }
  MP_ASSERT_OK(mp_pool_close(pool));
  MP_ASSERT_OK(mp_pool_join(pool, 60));
  mp_pool_destroy(pool);
  MP_ASSERT_OK(mp_trace_stop());
  json_t *root = load_trace(path), *e;
  T_INT_EQ(check_chunks(root, CHUNKS, CHUNK, ITEMS), 2);
  size_t i;
  json_array_foreach(json_object_get(root, "traceEvents"), i, e) {
    if (strcmp(str_of(e, "cat"), "pool.chunk") != 0)
      continue;
    if (_i == 3) /* thread workers: a thread of this process, not its main one */
      T_ASSERT(int_of(e, "pid") == getpid() && int_of(e, "tid") != getpid(), "thread worker");
    else
      T_ASSERT(int_of(e, "pid") != getpid(), "a chunk ran in the pool's process");
  }
  json_decref(root);
  unlink(path);
}
END_TEST

/* A worker that dies by SIGKILL at its fifth task: the four chunks it ran before are in the
 * trace, with its loss, and each chunk still appears once (the lost one was run again). */
static int kill_at_fifth(const void *arg, size_t size, void *result, size_t *result_size) {
  static int done_here; /* per worker process */
  _Atomic int *killed = *(_Atomic int *const *)((const char *)arg + sizeof(long));
  if (++done_here == 5 && atomic_exchange(killed, 1) == 0)
    raise(SIGKILL);
  return square(arg, size, result, result_size);
}

START_TEST(test_killed_worker_events_kept) {
  char path[128];
  trace_path(path, sizeof path, "killed", _i);
  mp_value_t *flag;
  MP_ASSERT_OK(mp_raw_value_create(&flag, MP_TYPE_BYTES(sizeof(int)), NULL));
  _Atomic int *killed = mp_value_ptr(flag);
  MP_ASSERT_OK(mp_trace_start(path));
  mp_pool_t *pool = pool_new(_i, 2, 1);
  struct {
    long v;
    _Atomic int *killed;
  } in[40];
  long out[40];
  for (int i = 0; i < 40; i++)
    in[i].v = i, in[i].killed = killed;
  MP_ASSERT_OK(mp_pool_map(pool, kill_at_fifth, in, 40, sizeof in[0], out, sizeof(long), 1));
  T_INT_EQ(out[39], 39 * 39);
  T_INT_EQ(*killed, 1);
  MP_ASSERT_OK(mp_pool_close(pool));
  MP_ASSERT_OK(mp_pool_join(pool, 60));
  mp_pool_destroy(pool);
  MP_ASSERT_OK(mp_trace_stop());
  json_t *root = load_trace(path), *e;
  check_chunks(root, 40, 1, 40);
  json_int_t lost = 0;
  size_t i;
  json_array_foreach(json_object_get(root, "traceEvents"), i, e) {
    /* Replaced only if work was left when the supervisor learned of it. */
    if (named(e, "worker", true) && strstr(str_of(e, "name"), " lost")) {
      T_ASSERT(lost == 0, "one worker was lost");
      lost = json_integer_value(arg(e, "pid"));
      T_INT_EQ(json_integer_value(arg(e, "exitcode")), -SIGKILL);
    }
  }
  T_ASSERT(lost > 0, "the lost worker is in the trace");
  T_INT_EQ(count(root, "X", "map", true, lost), 4);
  T_INT_EQ(count(root, "i", "exit", false, lost), 0);
  json_decref(root);
  unlink(path);
  mp_value_close(flag);
}
END_TEST

/* ---------------------------- a program killed mid-run ---------------------------- */

/* The traced program: children that take a lock and sleep, told to the test by a pipe;
 * then it waits to be killed. */
static void killed_program(const char *path, int method, int ready_fd) {
  lock_arg_t a = lock_arg_new("program lock");
  if (mp_event_create(&a.done) < 0 || mp_trace_start(path) < 0)
    _exit(10);
  mp_context_t *ctx;
  mp_process_t *p;
  if (mp_get_context(METHODS[method], &ctx) < 0 ||
      mp_process_create(&p, ctx, lock_then_sleep, &a, sizeof a, "Sleeper") < 0 ||
      mp_process_start(p) < 0 || mp_event_wait(a.done, 30) < 0)
    _exit(11);
  mp_trace_mark("about to be killed");
  int pid = mp_process_pid(p);
  if (write(ready_fd, &pid, sizeof pid) != (ssize_t)sizeof pid)
    _exit(12);
  for (;;)
    pause();
}

START_TEST(test_killed_program_repaired) {
  char path[128], dir[4096];
  trace_path(path, sizeof path, "program", _i);
  int fds[2];
  T_ASSERT(pipe(fds) == 0, "pipe");
  pid_t program = fork();
  T_ASSERT(program >= 0, "fork");
  if (program == 0) {
    close(fds[0]);
    killed_program(path, _i, fds[1]);
  }
  mp_test_track_pid(program);
  close(fds[1]);
  int child = 0;
  T_INT_EQ(read(fds[0], &child, sizeof child), sizeof child);
  close(fds[0]);
  mp_test_track_pid(child);
  T_ASSERT(kill(program, SIGKILL) == 0, "kill");
  int status;
  T_INT_EQ(waitpid(program, &status, 0), program);
  /* Its child dies with it (die_with_parent): wait until it has gone. */
  for (int i = 0; i < 500 && kill(child, 0) == 0; i++)
    mp_test_sleep(0.01);

  /* Before the repair the file parses, and says what to do. */
  events_dir(path, dir, sizeof dir);
  MP_ASSERT_OK(mp_trace_merge(path));
  json_t *root = load_trace(path);
  T_INT_EQ(count(root, "i", "about to be killed", false, program), 1);
  T_INT_EQ(count(root, "X", "hold program lock", false, child), ROUNDS);
  T_ASSERT(strstr(process_label(root, child), "Sleeper") != NULL, "the child's lane");
  T_INT_EQ(count(root, "i", "exit", false, program), 0);
  json_decref(root);
  assert_removed(dir);
  MP_ASSERT_ERR(mp_trace_merge(path), MP_ENOENT); /* a written trace is no unfinished one */
  unlink(path);
}
END_TEST

/* ------------------------------- every kind of event ------------------------------- */

typedef struct {
  mp_queue_t *queue;
  mp_conn_t *conn;
  mp_event_t *event;
  mp_barrier_t *barrier;
  mp_condition_t *cond;
  mp_semaphore_t *sem;
  mp_value_t *flag;
  char shm_name[64];
} kinds_arg_t;

static int kinds_child(void *arg, size_t size) {
  (void)size;
  kinds_arg_t *a = arg;
  char buf[64];
  size_t len;
  /* A wait that times out (the event is never set), then a get that waits for the put. */
  if (mp_event_wait(a->event, 0.01) != MP_ETIMEDOUT ||
      mp_queue_get(a->queue, buf, sizeof buf, &len, 30) < 0)
    return 2;
  if (mp_conn_send(a->conn, "pong", 4) < 0 || mp_barrier_wait(a->barrier, 30) < 0)
    return 3;
  mp_shared_memory_t *shm;
  if (mp_shared_memory_attach(&shm, a->shm_name) < 0)
    return 4;
  mp_shared_memory_close(shm);
  if (mp_semaphore_acquire(a->sem, 30) < 0 || mp_semaphore_release(a->sem) < 0)
    return 5;
  /* Set under the lock, which only the wait gives up: once the parent holds it after
   * seeing 1, this child waits. */
  if (mp_condition_acquire(a->cond, 30) < 0)
    return 6;
  *(_Atomic int *)mp_value_ptr(a->flag) = 1;
  while (*(_Atomic int *)mp_value_ptr(a->flag) != 2)
    if (mp_condition_wait(a->cond, 30) < 0)
      return 7;
  mp_condition_release(a->cond);
  return 0;
}

START_TEST(test_every_kind_named) {
  char path[128];
  trace_path(path, sizeof path, "kinds", _i);
  kinds_arg_t a = {0};
  mp_conn_t *mine;
  mp_lock_t *cond_lock;
  MP_ASSERT_OK(mp_queue_create(&a.queue, 0));
  MP_ASSERT_OK(mp_pipe(true, &mine, &a.conn));
  MP_ASSERT_OK(mp_event_create(&a.event));
  MP_ASSERT_OK(mp_barrier_create(&a.barrier, 2, NULL, NULL));
  MP_ASSERT_OK(mp_lock_create(&cond_lock));
  MP_ASSERT_OK(mp_condition_create(&a.cond, cond_lock));
  MP_ASSERT_OK(mp_bounded_semaphore_create(&a.sem, 1));
  MP_ASSERT_OK(mp_raw_value_create(&a.flag, MP_TYPE_BYTES(sizeof(int)), NULL));
  MP_ASSERT_OK(mp_set_name(a.queue, "jobs"));
  MP_ASSERT_OK(mp_set_name(mine, "parent end"));
  MP_ASSERT_ERR(mp_set_name(&a, "not shared"), MP_EINVAL);
  MP_ASSERT_ERR(mp_set_name(a.queue, "a name longer than thirty-one bytes"), MP_EINVAL);
  snprintf(a.shm_name, sizeof a.shm_name, "libmp-trace-%d-%d", (int)getpid(), _i);
  MP_ASSERT_OK(mp_trace_start(path));
  MP_ASSERT_ERR(mp_trace_start(path), MP_EINVAL);
  mp_shared_memory_t *shm;
  MP_ASSERT_OK(mp_shared_memory_create(&shm, a.shm_name, 4096, 0));
  mp_process_t *p = mp_test_start(_i, kinds_child, &a, sizeof a);
  mp_test_sleep(0.2); /* the child's get blocks meanwhile */
  MP_ASSERT_OK(mp_queue_put(a.queue, "ping", 4, 30));
  char buf[16];
  size_t len;
  MP_ASSERT_OK(mp_conn_recv(mine, buf, sizeof buf, &len, 30));
  T_ASSERT(mp_barrier_wait(a.barrier, 30) >= 0, "barrier");
  MP_ASSERT_OK(mp_semaphore_acquire(a.sem, 30));
  mp_test_sleep(0.02);
  MP_ASSERT_OK(mp_semaphore_release(a.sem));
  while (*(_Atomic int *)mp_value_ptr(a.flag) != 1)
    mp_test_sleep(0.001);
  MP_ASSERT_OK(mp_condition_acquire(a.cond, 30));
  *(_Atomic int *)mp_value_ptr(a.flag) = 2;
  MP_ASSERT_OK(mp_condition_notify_all(a.cond));
  MP_ASSERT_OK(mp_condition_release(a.cond));
  int child = mp_process_pid(p);
  mp_test_join_ok(p, 30);
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_OK(mp_shared_memory_close(shm));
  MP_ASSERT_OK(mp_trace_mark("done"));
  MP_ASSERT_OK(mp_trace_stop());
  MP_ASSERT_ERR(mp_trace_stop(), MP_EINVAL);

  json_t *root = load_trace(path), *e;
  json_int_t me = getpid();
  T_INT_EQ(count(root, "X", "put jobs", false, me), 1);
  T_INT_EQ(count(root, "X", "get jobs", false, child), 1);
  T_INT_EQ(count(root, "X", "recv parent end", false, me), 1);
  T_INT_EQ(count(root, "X", "send Connection", true, child), 1);
  T_INT_EQ(count(root, "X", "wait Event", true, child), 1);
  T_INT_EQ(count(root, "X", "wait Barrier", true, 0), 2);
  T_INT_EQ(count(root, "X", "wait Condition", true, child), 1);
  T_INT_EQ(count(root, "X", "hold BoundedSemaphore", true, 0), 2);
  T_INT_EQ(count(root, "i", "shm create", true, me), 1);
  T_INT_EQ(count(root, "i", "shm attach", true, child), 1);
  T_INT_EQ(count(root, "i", "shm unlink", true, me), 1);
  T_INT_EQ(count(root, "i", "done", false, me), 1);
  size_t i;
  json_array_foreach(json_object_get(root, "traceEvents"), i, e) {
    if (named(e, "wait Event", true))
      T_ASSERT(json_is_true(arg(e, "timed_out")), "the Event wait timed out");
    if (named(e, "get jobs", false)) { /* it waited for the put, 200 ms after the start */
      T_INT_EQ(json_integer_value(arg(e, "bytes")), 4);
      T_ASSERT(json_number_value(arg(e, "blocked_us")) > 10000, "the get blocked: %.0f us",
               json_number_value(arg(e, "blocked_us")));
    }
  }
  json_decref(root);
  unlink(path);
  mp_queue_free(a.queue);
  mp_conn_close(mine);
  mp_conn_close(a.conn);
  mp_event_close(a.event);
  mp_barrier_close(a.barrier);
  mp_condition_close(a.cond);
  mp_lock_close(cond_lock);
  mp_semaphore_close(a.sem);
  mp_value_close(a.flag);
}
END_TEST

/* -------------------------- more events than a ring holds -------------------------- */

#define MANY 20000 /* more than two rings of 8192: blocks go to the log, the rest stays */

static int many_marks(void *arg, size_t size) {
  (void)size;
  mp_event_t *done = *(mp_event_t **)arg;
  for (int i = 0; i < MANY / 2; i++)
    mp_trace_mark("child");
  mp_event_set(done);
  for (;;)
    if (pause() < 0 && errno != EINTR)
      return 1;
}

/* Every event is kept, whether its process appended it to its log or died with it in its
 * ring (SIGKILL). */
START_TEST(test_many_events) {
  char path[128];
  trace_path(path, sizeof path, "many", _i);
  mp_event_t *done;
  MP_ASSERT_OK(mp_event_create(&done));
  MP_ASSERT_OK(mp_trace_start(path));
  mp_process_t *p = mp_test_start(_i, many_marks, &done, sizeof done);
  for (int i = 0; i < MANY; i++)
    MP_ASSERT_OK(mp_trace_mark("parent"));
  MP_ASSERT_OK(mp_event_wait(done, 60));
  int child = mp_process_pid(p);
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 30), -SIGKILL);
  MP_ASSERT_OK(mp_trace_stop());
  json_t *root = load_trace(path);
  T_INT_EQ(count(root, "i", "parent", false, getpid()), MANY);
  T_INT_EQ(count(root, "i", "child", false, child), MANY / 2);
  T_INT_EQ(count(root, "i", "killed by signal 9", false, child), 1);
  T_INT_EQ(json_integer_value(json_object_get(json_object_get(root, "otherData"), "dropped")),
           0);
  json_decref(root);
  unlink(path);
  mp_event_close(done);
}
END_TEST

/* ------------------------------ the environment ------------------------------ */

static int tracing_here(void *arg, size_t size) {
  (void)arg, (void)size;
  return mp_trace_enabled() ? 1 : 0;
}

/* Where LIBMP_TRACE_DIR is in environ (-1: absent), and how many variables it holds. */
static long trace_var_at(size_t *count) {
  extern char **environ;
  long at = -1;
  for (*count = 0; environ && environ[*count]; (*count)++)
    if (strncmp(environ[*count], "LIBMP_TRACE_DIR=", 16) == 0)
      at = (long)*count;
  return at;
}

/* mp_trace_stop() (also run at exit, while other threads may be copying environ for a
 * spawn) leaves environ in place: the same array, the same variables at the same places, the
 * directory's emptied; a child started after it, of each method, does not trace; and a later
 * start replaces the value in place too. */
START_TEST(test_stop_keeps_environ) {
  extern char **environ;
  char path[128];
  trace_path(path, sizeof path, "environ", _i);
  MP_ASSERT_OK(mp_trace_start(path));
  size_t count, after;
  long at = trace_var_at(&count);
  char **array = environ;
  T_ASSERT(at >= 0, "mp_trace_start sets LIBMP_TRACE_DIR");
  MP_ASSERT_OK(mp_trace_stop());
  T_ASSERT(environ == array, "mp_trace_stop moved environ");
  T_INT_EQ(trace_var_at(&after), at);
  T_INT_EQ(after, count);
  T_STR_EQ(environ[at], "LIBMP_TRACE_DIR=");
  mp_process_t *p = mp_test_start(_i, tracing_here, NULL, 0);
  T_INT_EQ(mp_test_join_code(p, 30), 0);
  MP_ASSERT_OK(mp_trace_start(path));
  T_ASSERT(environ == array, "a second mp_trace_start moved environ");
  T_INT_EQ(trace_var_at(&after), at);
  MP_ASSERT_OK(mp_trace_stop());
  unlink(path);
}
END_TEST

/* ------------------------------------ MP_TRACE ------------------------------------ */

/* The program MP_TRACE traces: a child of the method, a lock between them. */
static int traced_program(int method) {
  lock_arg_t a = {.rounds = 5};
  mp_context_t *ctx;
  mp_process_t *p;
  if (!mp_trace_enabled() || mp_lock_create(&a.lock) < 0 ||
      mp_raw_value_create(&a.counter, MP_TYPE_BYTES(sizeof(long)), NULL) < 0 ||
      mp_get_context(METHODS[method], &ctx) < 0 ||
      mp_process_create(&p, ctx, lock_rounds, &a, sizeof a, NULL) < 0 ||
      mp_process_start(p) < 0 || lock_rounds(&a, sizeof a) != 0 || mp_process_join(p, 30) < 0)
    return 1;
  return 0; /* the trace is written at exit */
}

START_TEST(test_env_var) {
  char path[128], method[8], env[160], exe[4096];
  trace_path(path, sizeof path, "env", _i);
  snprintf(method, sizeof method, "%d", _i);
  snprintf(env, sizeof env, "MP_TRACE=%s", path);
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  T_ASSERT(n > 0, "readlink");
  exe[n] = 0;
  char *argv[] = {exe, "--program", method, NULL};
  char *envp[] = {env, NULL};
  pid_t pid;
  T_INT_EQ(posix_spawn(&pid, exe, NULL, NULL, argv, envp), 0);
  mp_test_track_pid(pid);
  int status;
  T_INT_EQ(waitpid(pid, &status, 0), pid);
  T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the traced program failed: %#x",
           status);
  json_t *root = load_trace(path);
  T_INT_EQ(count(root, "X", "hold Lock 1", false, 0), 10);
  T_INT_EQ(count(root, "i", "exit", false, pid), 1);
  T_ASSERT(strstr(process_label(root, pid), "MainProcess (main)") != NULL, "the top");
  json_decref(root);
  unlink(path);
}
END_TEST

/* ------------------------------- what a trace file may do ------------------------------- */

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  T_ASSERT(f != NULL, "fopen %s: %s", path, strerror(errno));
  fputs(text, f);
  T_INT_EQ(fclose(f), 0);
}

/* A placeholder, as anyone who can write the trace's file may make it, naming dir. */
static void write_placeholder_naming(const char *path, const char *dir) {
  char text[4200];
  snprintf(text, sizeof text, "{\"traceEvents\":[],\"otherData\":{\"libmp_dir\":\"%s\"}}", dir);
  write_text(path, text);
}

static bool exists(const char *path) {
  struct stat st;
  return lstat(path, &st) == 0;
}

/* The merge deletes from the directory the file names: only from one libmp made, the
 * caller's and private, and only the processes' files. */
START_TEST(test_merge_only_own_dir) {
  char path[128], victim[128], notes[256], shm[64] = "/dev/shm/libmp-trace-XXXXXX";
  char bin[128], ring[128], link[160], shm_notes[128];
  trace_path(path, sizeof path, "evil", 0);
  snprintf(victim, sizeof victim, "/tmp/libmp-test-trace-%d-victim-XXXXXX", (int)getpid());
  T_ASSERT(mkdtemp(victim) != NULL, "mkdtemp");
  snprintf(notes, sizeof notes, "%s/notes.txt", victim);
  write_text(notes, "x\n");

  /* Any other directory. */
  write_placeholder_naming(path, victim);
  MP_ASSERT_ERR(mp_trace_merge(path), MP_EINVAL);
  T_ASSERT(strstr(mp_last_error(), "no directory libmp makes") != NULL, "%s", mp_last_error());
  T_ASSERT(exists(notes), "%s is kept", notes);

  /* A symbolic link named as libmp names its directories. */
  snprintf(link, sizeof link, "%s.abcdef", path);
  T_INT_EQ(symlink(victim, link), 0);
  write_placeholder_naming(path, link);
  T_ASSERT(mp_trace_merge(path) < 0, "a symbolic link is refused");
  T_ASSERT(exists(notes), "%s is kept", notes);
  unlink(link);

  /* libmp's kind of directory, but not private; then private: only the processes' files go. */
  T_ASSERT(mkdtemp(shm) != NULL, "mkdtemp");
  snprintf(shm_notes, sizeof shm_notes, "%s/notes.txt", shm);
  snprintf(bin, sizeof bin, "%s/%d.0.bin", shm, (int)getpid());
  snprintf(ring, sizeof ring, "%s/%d.0.ring", shm, (int)getpid());
  write_text(shm_notes, "x\n");
  write_text(bin, "");
  write_text(ring, "");
  T_INT_EQ(chmod(shm, 0755), 0);
  write_placeholder_naming(path, shm);
  MP_ASSERT_ERR(mp_trace_merge(path), MP_EINVAL);
  T_ASSERT(strstr(mp_last_error(), "private") != NULL, "%s", mp_last_error());
  T_ASSERT(exists(bin) && exists(shm_notes), "nothing is removed from %s", shm);
  T_INT_EQ(chmod(shm, 0700), 0);
  MP_ASSERT_OK(mp_trace_merge(path));
  T_ASSERT(!exists(bin) && !exists(ring), "the processes' files are removed");
  T_ASSERT(exists(shm_notes), "another file is kept, and its directory");

  unlink(shm_notes);
  rmdir(shm);
  unlink(notes);
  rmdir(victim);
  unlink(path);
}
END_TEST

/* The trace's file: a symbolic link is not followed, the caller's own file is overwritten,
 * and the merge writes a file of its own (not one made in advance at a guessable name). */
START_TEST(test_output_path_safe) {
  char path[128], target[128], link[128], old_tmp[160];
  trace_path(path, sizeof path, "output", 0);
  trace_path(target, sizeof target, "target", 0);
  trace_path(link, sizeof link, "link", 0);
  write_text(target, "keep\n");
  T_INT_EQ(symlink(target, link), 0);
  MP_ASSERT_ERR(mp_trace_start(link), MP_EINVAL);
  T_ASSERT(!mp_trace_enabled(), "no trace started");
  char text[16] = "";
  FILE *f = fopen(target, "r");
  T_ASSERT(f && fgets(text, sizeof text, f), "read %s", target);
  fclose(f);
  T_STR_EQ(text, "keep\n");
  unlink(link);
  unlink(target);

  write_text(path, "an old trace\n");
  MP_ASSERT_OK(mp_trace_start(path));
  MP_ASSERT_OK(mp_trace_mark("output"));
  snprintf(old_tmp, sizeof old_tmp, "%s.%d.tmp", path, (int)getpid());
  write_text(old_tmp, "");
  struct stat planted, written;
  T_INT_EQ(stat(old_tmp, &planted), 0);
  MP_ASSERT_OK(mp_trace_stop());
  json_t *root = load_trace(path);
  T_INT_EQ(count(root, "i", "output", false, 0), 1);
  json_decref(root);
  T_INT_EQ(stat(path, &written), 0);
  T_ASSERT(written.st_ino != planted.st_ino, "the trace is not the file made in advance");
  T_INT_EQ(written.st_mode & 0777, 0644);
  unlink(old_tmp);
  unlink(path);
}
END_TEST

/* ------------------------- races, wild files, long traces ------------------------- */

#define SEM_HOLDS 100000

typedef struct {
  mp_semaphore_t *sem;
} sem_arg_t;

/* Takes the semaphore SEM_HOLDS times and keeps them (a consumer: another process gives). */
static int sem_taker(void *arg, size_t size) {
  (void)size;
  sem_arg_t *a = arg;
  for (int i = 0; i < SEM_HOLDS; i++)
    if (mp_semaphore_acquire(a->sem, 30) < 0)
      return 2;
  return 0;
}

/* A Semaphore taken in one process and given in another (producer and consumer, as Python
 * programs use one): 100 000 acquires in a child, then 100 000 releases in the parent,
 * 200 000 events in all. A merge that paired each release by scanning every open hold
 * scanned all 100 000 for each release of another process, which matches none: 2e10
 * comparisons, over 25 s (96 s at load 10; 40 000 took 4 s), where the linear merge takes
 * 0.4 to 1.2 s on a loaded 2-core machine, reading and writing included. The bound sits
 * between, several times from each. At a program's exit this runs in the exit destructor:
 * at 10^6 items the quadratic one took hours. */
START_TEST(test_merge_cross_process_releases_linear) {
  char path[128];
  trace_path(path, sizeof path, "semxp", _i);
  sem_arg_t a = {0};
  MP_ASSERT_OK(mp_semaphore_create(&a.sem, SEM_HOLDS));
  MP_ASSERT_OK(mp_trace_start(path));
  mp_process_t *p = mp_test_start(_i, sem_taker, &a, sizeof a);
  mp_test_join_ok(p, 60);
  for (int i = 0; i < SEM_HOLDS; i++)
    MP_ASSERT_OK(mp_semaphore_release(a.sem));
  double t0 = mp_test_now();
  MP_ASSERT_OK(mp_trace_stop());
  double took = mp_test_now() - t0;
  unlink(path);
  mp_semaphore_close(a.sem);
  T_ASSERT(took < 5.0 * mp_test_slowdown(),
           "merging %d events took %.2f s (quadratic in the open holds)", 2 * SEM_HOLDS, took);
}
END_TEST

/* A thread that names an object over and over while tracing is off, as a program names the
 * objects it makes. With 255 names remembered, each call scans them all under names.lock. */
typedef struct {
  char *base;
  _Atomic int stop;
} namer_t;

static void *namer_thread(void *arg) {
  namer_t *n = arg;
  while (!atomic_load(&n->stop))
    mp_set_name(n->base + 254 * 8, "busy name");
  return NULL;
}

static int name_in_child(void *arg, size_t size) {
  (void)size;
  char *base = *(char **)arg;
  return mp_set_name(base + 300 * 8, "child's name") == 0 ? 0 : 1;
}

/* A forked child of a threaded program (the fork method, while tracing is off) names an
 * object, as "a name set while tracing is off is remembered by this process and its forked
 * children" invites, while the parent's other thread names objects at every fork: the
 * child's mp_set_name() returns (the fork handler once freed names.lock only while
 * tracing, so a child forked mid-name blocked on it for ever). */
START_TEST(test_forked_child_names_while_parent_thread_names) {
  mp_value_t *block;
  MP_ASSERT_OK(mp_raw_value_create(&block, MP_TYPE_BYTES(4096), NULL));
  namer_t n = {.base = mp_value_ptr(block)};
  for (int i = 0; i < 255; i++) {
    char name[32];
    snprintf(name, sizeof name, "object %d", i);
    MP_ASSERT_OK(mp_set_name(n.base + i * 8, name));
  }
  pthread_t th;
  T_INT_EQ(pthread_create(&th, NULL, namer_thread, &n), 0);
  int stuck = 0;
  for (int round = 0; round < 10 && !stuck; round++) {
    mp_process_t *p = mp_test_start(0, name_in_child, &n.base, sizeof n.base);
    int rc = mp_process_join(p, 3);
    if (rc == MP_ETIMEDOUT || mp_process_is_alive(p) == 1) {
      stuck = round + 1;
      mp_process_kill(p);
      mp_process_join(p, 10);
    } else {
      T_INT_EQ(mp_test_join_code(p, 1), 0);
    }
    T_PROC_CLOSE(p);
  }
  atomic_store(&n.stop, 1);
  pthread_join(th, NULL);
  mp_value_close(block);
  T_ASSERT(!stuck,
           "fork %d: the child's mp_set_name() blocked for 3 s (names.lock inherited "
           "locked from the parent's naming thread)",
           stuck);
}
END_TEST

/* Takes every free descriptor of this process but one (its limit lowered to 4096 first: the
 * test's own process, Check forks one per test) into fds: how many. */
static int fill_descriptors(int fds[4096]) {
  struct rlimit lim;
  T_INT_EQ(getrlimit(RLIMIT_NOFILE, &lim), 0);
  if (lim.rlim_cur > 4096) {
    lim.rlim_cur = 4096;
    T_INT_EQ(setrlimit(RLIMIT_NOFILE, &lim), 0);
  }
  int n = 0;
  for (int fd; n < 4096 && (fd = dup(0)) >= 0;)
    fds[n++] = fd;
  T_ASSERT(n > 1 && errno == EMFILE, "filled the descriptor table (%d)", n);
  close(fds[--n]);
  return n;
}

/* mp_trace_start() when this process's own event files cannot be opened (here: one
 * descriptor left, so the log opens and the ring does not, EMFILE; a full /dev/shm or
 * RLIMIT_FSIZE does the same) returns that error, writes nothing at the path and leaves
 * recording off. It once returned 0 with recording turned off at the first event: the
 * caller was told the trace ran while nothing was recorded, mp_trace_stop() said "not
 * tracing", and the placeholder and the directory stayed. */
START_TEST(test_start_reports_unopenable_files) {
  char path[128], dir[4096];
  trace_path(path, sizeof path, "emfile", 0);
  int fds[4096], n = fill_descriptors(fds); /* one left: the log's */
  int rc = mp_trace_start(path);
  bool on = mp_trace_enabled();
  while (n > 0)
    close(fds[--n]);
  char err[256];
  snprintf(err, sizeof err, "%s", mp_last_error());
  int stop = on || rc == 0 ? mp_trace_stop() : 0;
  bool left = false, written = access(path, F_OK) == 0;
  if (rc == 0 && !on) {
    events_dir(path, dir, sizeof dir);
    struct stat st;
    left = stat(dir, &st) == 0;
    rmdir(dir);
  }
  unlink(path);
  T_ASSERT(rc < 0 || on,
           "mp_trace_start returned %d (%s) but nothing is recorded: mp_trace_enabled() is "
           "false, mp_trace_stop() returned %s, the directory %s",
           rc, rc < 0 ? err : "success", mp_err_name(stop), left ? "was left" : "is gone");
  T_ASSERT(rc == 0 || (rc == -EMFILE && !on && !written),
           "mp_trace_start failed with %s (%s), recording %s, %s written", mp_err_name(rc), err,
           on ? "on" : "off", written ? "the path" : "nothing");
}
END_TEST

/* The trace's path is a hard link to another file of the caller's (in a shared folder, a
 * hostile user makes one where fs.protected_hardlinks is 0, as it is on systems that do not
 * turn it on: a link needs no access to the file): mp_trace_start() refuses it, MP_EINVAL,
 * as it refuses a symbolic link, and the linked file keeps its text (it was truncated and
 * given the placeholder). */
START_TEST(test_start_refuses_hard_link) {
  char path[128], victim[128];
  trace_path(path, sizeof path, "hardlink", 0);
  trace_path(victim, sizeof victim, "hardlink-victim", 0);
  write_text(victim, "precious\n");
  T_INT_EQ(link(victim, path), 0);
  int rc = mp_trace_start(path);
  if (rc == 0)
    mp_trace_stop();
  char text[64] = "";
  FILE *f = fopen(victim, "r");
  T_ASSERT(f != NULL, "open %s", victim);
  if (!fgets(text, sizeof text, f))
    text[0] = 0;
  fclose(f);
  unlink(path);
  unlink(victim);
  T_ASSERT(strcmp(text, "precious\n") == 0,
           "mp_trace_start on a hard link returned %d and overwrote the linked file: it "
           "begins '%.40s'",
           rc, text);
  MP_ASSERT_ERR(rc, MP_EINVAL);
}
END_TEST

/* The per-process files as trace.c writes them (an internal format: lib/trace.c). */
typedef struct {
  uint16_t type, kind;
  uint32_t tid;
  int64_t ts;
  uint64_t obj;
  int64_t v[5];
} file_rec_t;
#define FILE_MAGIC INT64_C(0x31525452504d424c)
#define FILE_RING_RECS 8192
enum { RV_HEADER = 1, RV_REAPED = 15, RV_MARK = 19 };

/* Writes dir/<pid>.0.bin (a header, then recs) and dir/<pid>.0.ring (a header whose
 * dropped word is `dropped`, its slots empty). */
static void write_process_files(const char *dir, int pid, const file_rec_t *recs, int n,
                                int64_t dropped) {
  char name[4200];
  file_rec_t head = {.type = RV_HEADER,
                     .tid = (uint32_t)pid,
                     .ts = 1,
                     .obj = (uint64_t)pid,
                     .v = {1, 0, FILE_MAGIC, 0, 0}};
  snprintf(name, sizeof name, "%s/%d.0.bin", dir, pid);
  FILE *f = fopen(name, "w");
  T_ASSERT(f != NULL, "fopen %s", name);
  fwrite(&head, sizeof head, 1, f);
  fwrite(recs, sizeof *recs, (size_t)n, f);
  T_INT_EQ(fclose(f), 0);
  snprintf(name, sizeof name, "%s/%d.0.ring", dir, pid);
  f = fopen(name, "w");
  T_ASSERT(f != NULL, "fopen %s", name);
  int64_t ring_head[8] = {FILE_MAGIC, 0, 0, dropped, 0, 0, 0, 0};
  fwrite(ring_head, sizeof ring_head, 1, f);
  T_INT_EQ(ftruncate(fileno(f), (off_t)(FILE_RING_RECS + 1) * 64), 0);
  T_INT_EQ(fclose(f), 0);
}

/* A repair (mp_trace_merge) of the files of a crashed program whose processes scribbled on
 * their mapped rings and logs before they died: timestamps at both ends of int64, a ring
 * header's dropped count of INT64_MAX in two processes, a reaped child's exit code of
 * INT_MIN, beside one good record. Unchecked, the merge's signed arithmetic on them
 * (ts - t0, the sum of the dropped counts, -code) overflowed (undefined: the CI's UBSan
 * build, halt_on_error=1, aborted the repair) and wrapped into a trace that said a negative
 * time, a negative number of dropped events and a negative signal. The five wild words are
 * left out and counted in otherData's "corrupt"; the good record is written. */
START_TEST(test_repair_wild_words_no_overflow) {
  char path[128], dir[64] = "/dev/shm/libmp-trace-XXXXXX";
  trace_path(path, sizeof path, "wild", 0);
  T_ASSERT(mkdtemp(dir) != NULL, "mkdtemp");
  file_rec_t a[3] = {
      {.type = RV_MARK, .tid = 1001, .ts = INT64_MIN + 1},
      {.type = RV_REAPED, .tid = 1001, .ts = 5, .obj = 1002, .v = {INT_MIN, 0}},
      {.type = RV_MARK, .tid = 1001, .ts = 7},
  };
  memcpy(&a[0].v[1], "early", 6);
  memcpy(&a[2].v[1], "kept", 5);
  file_rec_t b[1] = {{.type = RV_MARK, .tid = 1002, .ts = INT64_MAX}};
  memcpy(&b[0].v[1], "late", 5);
  write_process_files(dir, 1001, a, 3, INT64_MAX);
  write_process_files(dir, 1002, b, 1, INT64_MAX);
  write_placeholder_naming(path, dir);
  int rc = mp_trace_merge(path);
  char problems[512] = "";
  int kept = 0;
  if (rc == 0) {
    json_t *root = load_trace(path), *e;
    size_t i;
    json_array_foreach(json_object_get(root, "traceEvents"), i, e) {
      json_t *ts = json_object_get(e, "ts");
      if (ts && json_number_value(ts) < 0)
        snprintf(problems + strlen(problems), sizeof problems - strlen(problems),
                 "'%s' at ts %.3f; ", str_of(e, "name"), json_number_value(ts));
      if (strstr(str_of(e, "name"), "signal -"))
        snprintf(problems + strlen(problems), sizeof problems - strlen(problems), "'%s'; ",
                 str_of(e, "name"));
      kept += strcmp(str_of(e, "name"), "kept") == 0;
    }
    json_t *other = json_object_get(root, "otherData");
    json_int_t dropped = json_integer_value(json_object_get(other, "dropped"));
    json_int_t corrupt = json_integer_value(json_object_get(other, "corrupt"));
    if (dropped != 0 || corrupt != 5 || kept != 1)
      snprintf(problems + strlen(problems), sizeof problems - strlen(problems),
               "dropped %lld, corrupt %lld (5 wild words), 'kept' %d times; ",
               (long long)dropped, (long long)corrupt, kept);
    json_decref(root);
  }
  char name[4200];
  for (int pid = 1001; pid <= 1002; pid++) {
    snprintf(name, sizeof name, "%s/%d.0.bin", dir, pid);
    unlink(name);
    snprintf(name, sizeof name, "%s/%d.0.ring", dir, pid);
    unlink(name);
  }
  rmdir(dir);
  unlink(path);
  T_ASSERT(rc == 0 && !problems[0],
           "mp_trace_merge returned %d (%s); the trace it wrote has %s", rc, mp_err_name(rc),
           problems);
}
END_TEST

typedef struct {
  const char *path;
  _Atomic int armed, started;
  int rc;
} restarter_t;

/* Waits for the trace to stop, then starts the next one at once. */
static void *restart_thread(void *arg) {
  restarter_t *r = arg;
  atomic_store(&r->armed, 1);
  while (!atomic_load(&r->started))
    ;
  while (mp_trace_enabled())
    ;
  r->rc = mp_trace_start(r->path);
  return NULL;
}

/* One thread stops a trace while another starts the next one as soon as recording is off
 * (a program tracing its phases from two threads; "tracing is already on" is the only
 * refusal): the stop merges the first trace into its own file and removes its directory,
 * though the start rewrites the trace's path and directory while that merge runs (the
 * merge once read them from the globals, and wrote the first trace's events into the
 * second's file, leaving the first a placeholder). */
START_TEST(test_stop_then_start_from_another_thread) {
  char first[128], second[128];
  trace_path(first, sizeof first, "phase1", 0);
  trace_path(second, sizeof second, "phase2", 0);
  restarter_t r = {.path = second};
  pthread_t th;
  T_INT_EQ(pthread_create(&th, NULL, restart_thread, &r), 0);
  while (!atomic_load(&r.armed))
    ;
  MP_ASSERT_OK(mp_trace_start(first));
  char first_dir[4096];
  events_dir(first, first_dir, sizeof first_dir);
  atomic_store(&r.started, 1);
  for (int i = 0; i < 20000; i++) /* a merge of some milliseconds */
    MP_ASSERT_OK(mp_trace_mark("phase one"));
  int rc = mp_trace_stop();
  pthread_join(th, NULL);
  if (r.rc == 0) {
    MP_ASSERT_OK(mp_trace_mark("phase two"));
    MP_ASSERT_OK(mp_trace_stop());
  }
  json_t *root = load_trace(first);
  int one = count(root, "i", "phase one", false, 0);
  json_t *other = json_object_get(root, "otherData");
  bool placeholder = json_object_get(other, "libmp_incomplete") != NULL;
  json_decref(root);
  unlink(first);
  unlink(second);
  bool left = rmdir(first_dir) == 0; /* emptied by the merge, not removed */
  T_INT_EQ(rc, 0);
  T_INT_EQ(r.rc, 0);
  T_ASSERT(one == 20000 && !placeholder,
           "the first trace (stopped with 0) has %d of its 20000 marks%s%s", one,
           placeholder ? ": it is still the placeholder" : "",
           left ? ", and its directory was left" : "");
}
END_TEST

/* After one failed open (as above), a later mp_trace_start() with descriptors to spare
 * records this process's own events. A flag set by the failed open once stayed set until a
 * stop (refused: "not tracing") or a fork, and every later trace of the process, enabled,
 * dropped all of its own events. */
START_TEST(test_start_after_failed_open_records) {
  char path[128], dir[4096];
  trace_path(path, sizeof path, "emfile2", 0);
  int fds[4096], n = fill_descriptors(fds);
  int first = mp_trace_start(path);
  while (n > 0)
    close(fds[--n]);
  if (first == 0 && !mp_trace_enabled()) { /* the failure above: its directory is left */
    events_dir(path, dir, sizeof dir);
    rmdir(dir);
  }
  MP_ASSERT_OK(mp_trace_start(path));
  bool on = mp_trace_enabled();
  MP_ASSERT_OK(mp_trace_mark("second start"));
  MP_ASSERT_OK(mp_trace_stop());
  json_t *root = load_trace(path);
  int marks = count(root, "i", "second start", false, getpid());
  json_decref(root);
  unlink(path);
  T_ASSERT(marks == 1,
           "a trace started once the descriptors were back (enabled: %s) has %d "
           "of this process's 1 mark",
           on ? "yes" : "no", marks);
}
END_TEST

#define MANY_PIDS 100000

/* A log that names 100 000 processes: its REC_START records (what a program that started
 * 100 000 short-lived children over its life records too, one per child; or words a dying
 * process scribbled on its ring). A merge that ranked each process's lane by counting the
 * processes that appeared before it took n_procs^2 = 10^10 steps: over 30 s (148 s at
 * load 10; 60 000 took 11 to 20 s), where ranking by one sort makes the merge about 1 s at
 * load 12. The bound sits between, several times from each. At 10^6 children the repair,
 * or the program's exit, ran for hours. */
START_TEST(test_repair_many_processes_linear) {
  char path[128], dir[64] = "/dev/shm/libmp-trace-XXXXXX";
  trace_path(path, sizeof path, "pids", 0);
  T_ASSERT(mkdtemp(dir) != NULL, "mkdtemp");
  file_rec_t *recs = calloc(MANY_PIDS, sizeof *recs);
  T_ASSERT(recs != NULL, "calloc");
  for (int i = 0; i < MANY_PIDS; i++)
    recs[i] = (file_rec_t){.type = 13 /* REC_START */,
                           .tid = 1001,
                           .ts = 10 + i,
                           .obj = (uint64_t)(100000 + i),
                           .v = {1}};
  write_process_files(dir, 1001, recs, MANY_PIDS, 0);
  free(recs);
  write_placeholder_naming(path, dir);
  double t0 = mp_test_now();
  int rc = mp_trace_merge(path);
  double took = mp_test_now() - t0;
  char name[4200];
  snprintf(name, sizeof name, "%s/1001.0.bin", dir);
  unlink(name);
  snprintf(name, sizeof name, "%s/1001.0.ring", dir);
  unlink(name);
  rmdir(dir);
  unlink(path);
  MP_ASSERT_OK(rc);
  T_ASSERT(took < 6.0 * mp_test_slowdown(),
           "merging %d records of %d processes took %.2f s (lane ranks: quadratic)", MANY_PIDS,
           MANY_PIDS + 1, took);
}
END_TEST

/* -------------------------------- the exit and a stop -------------------------------- */

static char exit_race_path[128];

static void *stop_thread(void *arg) {
  (void)arg;
  mp_trace_stop();
  return NULL;
}

/* In a plain fork: a trace of some events; a thread stops it, and main returns from the
 * program (exit) as soon as recording is off, while that thread's merge runs. */
static int exit_while_thread_stops(void) {
  if (mp_trace_start(exit_race_path) < 0)
    return 2;
  for (int i = 0; i < 200000; i++) /* a merge of a good part of a second */
    if (mp_trace_mark("before exit") < 0)
      return 3;
  pthread_t th;
  if (pthread_create(&th, NULL, stop_thread, NULL) != 0)
    return 4;
  while (mp_trace_enabled())
    ;
  exit(0); /* the exit destructor's stop is told the trace was stopped: it returns */
}

/*
 * docs/api.md and trace.h: "of two stops at once (two threads, or a thread and the exit),
 * one writes the file and the other fails". When the thread's stop takes the trace first,
 * trace_fini() (the exit's stop) fails in end_recording() and returns at once, and exit()
 * ends the process under the thread's merge_dir(): the file stays the placeholder, its
 * directory and the merge's temporary file are left. Nobody writes the trace.
 */
START_TEST(test_exit_while_thread_stops_writes_trace) {
  trace_path(exit_race_path, sizeof exit_race_path, "exit-race", 0);
  int code = mp_test_run_in_fork(exit_while_thread_stops, 20.0);
  T_INT_EQ(code, 0);
  json_error_t err;
  json_t *root = json_load_file(exit_race_path, 0, &err);
  bool placeholder = false;
  int marks = -1;
  char dir[4096] = "";
  if (root) {
    json_t *other = json_object_get(root, "otherData");
    placeholder = json_object_get(other, "libmp_incomplete") != NULL;
    marks = count(root, "i", "before exit", false, 0);
    json_decref(root);
  }
  if (placeholder) { /* clean up what the killed merge left */
    events_dir(exit_race_path, dir, sizeof dir);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'.*.tmp", dir, exit_race_path);
    T_INT_EQ(system(cmd), 0);
  }
  unlink(exit_race_path);
  T_ASSERT(root && !placeholder && marks == 200000,
           "the program exited while a thread stopped its trace: the file %s (%d of 200000 "
           "marks)%s",
           root ? "parses" : "does not parse", marks,
           placeholder ? ", it is still the placeholder: nobody wrote the trace" : "");
}
END_TEST

/* The low word of a system call's third argument, as seccomp's filter loads it. */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG2_LOW offsetof(struct seccomp_data, args[2])
#else
#define ARG2_LOW (offsetof(struct seccomp_data, args[2]) + 4)
#endif

/* Makes every openat of a directory by the calling thread wait for an answer that never
 * comes (a seccomp listener that nobody reads), as an open on a hung file system waits: a
 * merge on this thread takes no step after its first open, of the events' directory. Only
 * directories: an exit on this thread (a handler's) opens files of its own. A signal
 * interrupts the wait; the process's end kills the thread. Where the kernel refuses (no
 * seccomp, or a listener already above this process), false. */
static bool hold_my_opens(void) {
  struct sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_openat, 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, ARG2_LOW),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, O_DIRECTORY, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof filter / sizeof filter[0], filter};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER,
                 &prog) >= 0;
}

static void *held_stop_thread(void *arg) {
  atomic_int *held = arg;
  atomic_store(held, hold_my_opens() ? 1 : -1);
  if (atomic_load(held) == 1)
    mp_trace_stop();
  return NULL;
}

/* In a plain fork: a trace whose stop, in a thread, never ends: its merge's first open (of
 * the events' directory) waits for ever. Returns once the stop has begun (recording is off:
 * the merge is counted), 0; or the step that failed. */
static pthread_t stuck_thread;

static int stop_stuck(void) {
  static atomic_int held;
  if (mp_trace_start(exit_race_path) < 0)
    return 2;
  if (pthread_create(&stuck_thread, NULL, held_stop_thread, &held) != 0)
    return 4;
  while (mp_trace_enabled() && atomic_load(&held) >= 0)
    ;
  return atomic_load(&held) == 1 ? 0 : 3;
}

/* The file is the placeholder the stuck merge left: its directory goes. */
static void remove_stuck(void) {
  char dir[4096], cmd[4200];
  events_dir(exit_race_path, dir, sizeof dir);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  T_INT_EQ(system(cmd), 0);
  unlink(exit_race_path);
}

/* The code of a plain fork that held its merge (stop_stuck), said. */
static void assert_held_ran(int code) {
  T_ASSERT(code == 0,
           "the child whose merge was held ended with %d (2: no trace, 3: the kernel refused a "
           "seccomp listener, 4: no thread, -1000: it did not end)",
           code);
}

/* A FIFO among the events' files, named as a process's log (only the directory's user can
 * put one there): the merge reads no such file and the stop returns with the trace written;
 * the open waited for a writer for ever. */
static int stop_past_fifo(void) {
  if (mp_trace_start(exit_race_path) < 0 || mp_trace_mark("beside a FIFO") < 0)
    return 2;
  char fifo[PATH_MAX];
  snprintf(fifo, sizeof fifo, "%s/1.0.bin", getenv("LIBMP_TRACE_DIR"));
  if (mkfifo(fifo, 0600) < 0)
    return 3;
  return mp_trace_stop() == 0 ? 0 : 4;
}

START_TEST(test_fifo_among_events_does_not_hold_stop) {
  trace_path(exit_race_path, sizeof exit_race_path, "fifo-events", 0);
  int code = mp_test_run_in_fork(stop_past_fifo, 20.0);
  T_ASSERT(code == 0, "the stop beside a FIFO ended with %d (-1000: it did not end in 20 s)",
           code);
  json_t *root = load_trace(exit_race_path);
  int marks = count(root, "i", "beside a FIFO", false, 0);
  json_decref(root);
  unlink(exit_race_path);
  T_INT_EQ(marks, 1);
}
END_TEST

/* mp_trace_merge of a FIFO's path (another user's, in a shared folder) says it is no trace;
 * its open waited for a writer for ever. */
static int merge_fifo(void) {
  return mp_trace_merge(exit_race_path) == MP_ENOENT ? 0 : 1;
}

START_TEST(test_merge_of_fifo_returns) {
  trace_path(exit_race_path, sizeof exit_race_path, "fifo-path", 0);
  T_ASSERT(mkfifo(exit_race_path, 0600) == 0, "mkfifo: %s", strerror(errno));
  int code = mp_test_run_in_fork(merge_fifo, 20.0);
  unlink(exit_race_path);
  T_ASSERT(code == 0, "mp_trace_merge of a FIFO: %d (1: not MP_ENOENT, -1000: it did not end)",
           code);
}
END_TEST

static int exit_during_stuck_stop(void) {
  int rc = stop_stuck();
  if (rc == 0)
    exit(0); /* waits 2 s for a step of the merge, then gives up */
  return rc;
}

/* A merge that never ends does not hang the exit: it waits 2 s without a step, no more. */
START_TEST(test_exit_gives_up_stuck_merge) {
  trace_path(exit_race_path, sizeof exit_race_path, "exit-stuck", 0);
  double t0 = mp_test_now();
  int code = mp_test_run_in_fork(exit_during_stuck_stop, 20.0);
  double took = mp_test_now() - t0;
  remove_stuck();
  assert_held_ran(code);
  T_ASSERT(took >= 1.9 && took < 2.0 + 3.0 * mp_test_slowdown(),
           "the exit waited %.2f s for a merge that took no step: 2 s is the bound", took);
}
END_TEST

/* LeakSanitizer's hook: a child forked during the merge holds the merge's memory with no
 * thread of its own pointing to it, which its exit would call a leak (and abort). */
#if defined(__SANITIZE_ADDRESS__)
#define LEAK_CHECKED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LEAK_CHECKED 1
#endif
#endif
#ifdef LEAK_CHECKED
static volatile int leaks_unchecked;

int __lsan_is_turned_off(void);
int __lsan_is_turned_off(void) {
  return leaks_unchecked;
}
#define UNCHECK_LEAKS() (leaks_unchecked = 1)
#else
#define UNCHECK_LEAKS() ((void)0)
#endif

static int fork_during_stuck_stop(void) {
  int rc = stop_stuck();
  if (rc != 0)
    return rc;
  double t0 = mp_test_now();
  pid_t pid = fork();
  if (pid == 0) {
    UNCHECK_LEAKS();
    exit(0); /* the parent's merge is not this child's to wait for */
  }
  int status;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
    return 5;
  _exit(mp_test_now() - t0 < 1.5 ? 0 : 6); /* (the wait: 2 s); not exit(): the merge is stuck */
}

/* A child forked while a thread of its parent merges a trace exits at once: its copy of the
 * count of merges is cleared by the fork handler. */
START_TEST(test_fork_during_merge_child_exits_at_once) {
  trace_path(exit_race_path, sizeof exit_race_path, "fork-stuck", 0);
  int code = mp_test_run_in_fork(fork_during_stuck_stop, 20.0);
  remove_stuck();
  T_ASSERT(code == 0,
           "the child forked during its parent's merge: %d (6: its exit waited for "
           "a merge it does not run; 3: the kernel refused a seccomp listener)",
           code);
}
END_TEST

/* When the merging thread was told to exit: the time that the exit took, from the parent. */
static double *signalled_at;

static void exit_now(int sig) {
  (void)sig;
  exit(0);
}

static int exit_in_stuck_thread(void) {
  signal(SIGUSR1, exit_now);
  int rc = stop_stuck();
  if (rc != 0)
    return rc;
  *signalled_at = mp_test_now();
  pthread_kill(stuck_thread, SIGUSR1);
  for (;;)
    pause();
}

/* A thread that exits in the middle of its own stop's merge (a signal handler's exit())
 * does not wait for that merge, which cannot go on: the exit ends at once. */
START_TEST(test_exit_in_merging_thread_no_wait) {
  trace_path(exit_race_path, sizeof exit_race_path, "exit-own", 0);
  signalled_at = mmap(NULL, sizeof *signalled_at, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  T_ASSERT(signalled_at != MAP_FAILED, "mmap: %s", strerror(errno));
  int code = mp_test_run_in_fork(exit_in_stuck_thread, 20.0);
  double took = mp_test_now() - *signalled_at;
  munmap(signalled_at, sizeof *signalled_at);
  remove_stuck();
  assert_held_ran(code);
  T_ASSERT(took < 1.5, /* the wait would be 2 s */
           "the exit in the merging thread waited %.2f s for its own merge", took);
}
END_TEST

static Suite *trace_suite(void) {
  Suite *s = suite_create("trace");
  tcase_add_test(mp_test_tcase(s, "methods", 60), test_three_methods);
  tcase_add_loop_test(mp_test_tcase(s, "holds", 60), test_lock_holds_never_overlap, 0,
                      N_METHODS);
  tcase_add_loop_test(mp_test_tcase(s, "condition", 60),
                      test_condition_waiter_sleeps_beside_untaken_token, 0, N_METHODS);
  tcase_add_loop_test(mp_test_tcase(s, "pool", 120), test_pool_chunks_once, 0, 4);
  tcase_add_loop_test(mp_test_tcase(s, "killed worker", 120), test_killed_worker_events_kept, 0,
                      N_METHODS);
  tcase_add_loop_test(mp_test_tcase(s, "killed program", 60), test_killed_program_repaired, 0,
                      N_METHODS);
  tcase_add_loop_test(mp_test_tcase(s, "kinds", 60), test_every_kind_named, 0, N_METHODS);
  tcase_add_loop_test(mp_test_tcase(s, "MP_TRACE", 60), test_env_var, 0, N_METHODS);
  tcase_add_loop_test(mp_test_tcase(s, "many events", 120), test_many_events, 0, N_METHODS);
  tcase_add_loop_test(mp_test_tcase(s, "environ", 60), test_stop_keeps_environ, 0, N_METHODS);
  tcase_add_test(mp_test_tcase(s, "merge only own dir", 30), test_merge_only_own_dir);
  tcase_add_test(mp_test_tcase(s, "output path", 30), test_output_path_safe);
  tcase_add_loop_test(mp_test_tcase(s, "merge cross-process releases", 120),
                      test_merge_cross_process_releases_linear, 0, N_METHODS);
  tcase_add_test(mp_test_tcase(s, "forked child names", 60),
                 test_forked_child_names_while_parent_thread_names);
  tcase_add_test(mp_test_tcase(s, "start unopenable files", 30),
                 test_start_reports_unopenable_files);
  tcase_add_test(mp_test_tcase(s, "start after failed open", 30),
                 test_start_after_failed_open_records);
  tcase_add_test(mp_test_tcase(s, "hard link", 30), test_start_refuses_hard_link);
  tcase_add_test(mp_test_tcase(s, "wild words", 30), test_repair_wild_words_no_overflow);
  tcase_add_test(mp_test_tcase(s, "stop and start", 30),
                 test_stop_then_start_from_another_thread);
  tcase_add_test(mp_test_tcase(s, "many processes", 120), test_repair_many_processes_linear);
  tcase_add_test(mp_test_tcase(s, "exit and stop", 60),
                 test_exit_while_thread_stops_writes_trace);
  tcase_add_test(mp_test_tcase(s, "exit and stuck stop", 60), test_exit_gives_up_stuck_merge);
  tcase_add_test(mp_test_tcase(s, "fork during a stop", 60),
                 test_fork_during_merge_child_exits_at_once);
  tcase_add_test(mp_test_tcase(s, "exit in the merging thread", 60),
                 test_exit_in_merging_thread_no_wait);
  tcase_add_test(mp_test_tcase(s, "FIFO among the events", 60),
                 test_fifo_among_events_does_not_hold_stop);
  tcase_add_test(mp_test_tcase(s, "FIFO at the path", 60), test_merge_of_fifo_returns);
  return s;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--program") == 0)
    return traced_program(atoi(argv[2]));
  SRunner *sr = srunner_create(trace_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
