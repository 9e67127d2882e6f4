/*
 * Soak: pool maps, and queues with several producers and consumers, while random workers,
 * producers and consumers are SIGKILLed.
 *
 *   soak [--seconds S] [--method fork|spawn|forkserver] [--part all|pool|queues] [--seed N]
 *        [--fail-start N]
 *
 * Every other map is of many one-item chunks of no work, so that a kill lands in the
 * claiming and completing of chunks rather than in a task.
 * Each part runs S seconds. It counts, and fails on: a wrong map result (a result must be
 * right, or zero in a map that failed with MP_EWORKERDIED), a map that did not end (60 s), a
 * pool that ended itself; a corrupt message, a duplicated one, one that arrived without
 * having been put, and more missing messages than consumers killed inside a get (each
 * consumer raises a flag in shared memory around its get and the recording of what it got,
 * and the killer reads the flag of the consumer it killed); a child that failed or did not
 * end; and, at the end, a process, an fd or a /dev/shm entry of this run left behind.
 * What a put in progress at a producer's death did is free: its message may arrive once,
 * or not at all. A start that fails is a failure, reported once: the queue part then stops
 * killing and starting, ends the children that run, and counts nothing as missing if no
 * consumer was left to empty the queue. --seed replays a run's random choices (not its timing);
 * --fail-start N makes the queue part's Nth start fail (its argument NULL), to check that.
 * Exit 0 if nothing failed, 1 if something did.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mp.h"

#define MAX_INC 1024  /* producer incarnations in one run */
#define MAX_SEQ 16384 /* messages per producer incarnation */
#define PRODUCERS 3
#define CONSUMERS 3
#define RING 65536 /* messages above 8 KiB spill into arena blocks */
#define MSG_MAX 40000
#define MAGIC 0x4b414f53u /* "SOAK" */
#define WORKERS 3
#define ITEMS 400
#define QUICK_ITEMS 100000 /* a quick map's items, each a chunk of its own */
#define PID_SLOTS 64
#define JOIN_SECONDS 30.0

/* Shared by every process of the run: a named segment, attached by name in each child. */
typedef struct {
  _Atomic int stop_producers, stop_consumers;
  _Atomic long corrupt;
  _Atomic int in_get[CONSUMERS];   /* the consumer in this slot is in a get (or recording) */
  _Atomic int attempting[MAX_INC]; /* the seq an incarnation is putting */
  _Atomic int done[MAX_INC];       /* how many of its puts returned 0 */
} control_t;

typedef struct {
  char shm_name[64];
  mp_queue_t *queue;
  _Atomic unsigned char *seen; /* MAX_INC * MAX_SEQ delivery counts, in the arena */
  int inc;                     /* a producer's incarnation */
  int slot;                    /* a consumer's flag; -1 for a producer */
  unsigned seed;
} role_t;

typedef struct {
  uint32_t magic, inc, seq, len;
  uint64_t sum;
} header_t;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_for(double seconds) {
  struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static unsigned next_random(unsigned *seed) {
  *seed = *seed * 1103515245u + 12345u;
  return *seed >> 8;
}

static uint64_t checksum(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

/* A message of inc and seq: one in four large enough to spill out of the ring. */
static size_t make_message(unsigned char *buf, int inc, int seq, unsigned *seed) {
  unsigned r = next_random(seed);
  size_t len = r % 4 == 0 ? 8192 + r % (MSG_MAX - 8192) : sizeof(header_t) + r % 512;
  for (size_t i = sizeof(header_t); i < len; i++)
    buf[i] = (unsigned char)(i * 31u + (unsigned)seq * 7u + (unsigned)inc);
  header_t h = {MAGIC, (uint32_t)inc, (uint32_t)seq, (uint32_t)len,
                checksum(buf + sizeof h, len - sizeof h)};
  memcpy(buf, &h, sizeof h);
  return len;
}

static bool message_valid(const unsigned char *buf, size_t len, header_t *h) {
  if (len < sizeof *h)
    return false;
  memcpy(h, buf, sizeof *h);
  return h->magic == MAGIC && h->len == len && h->inc < MAX_INC && h->seq < MAX_SEQ &&
         h->sum == checksum(buf + sizeof *h, len - sizeof *h);
}

/* ================================ the roles ================================ */

/* A producer: puts its messages until told to stop or MAX_SEQ are in. */
static int produce(const role_t *role, control_t *ctl, unsigned char *msg) {
  unsigned seed = role->seed;
  for (int seq = 0; seq < MAX_SEQ && !atomic_load(&ctl->stop_producers);) {
    size_t len = make_message(msg, role->inc, seq, &seed);
    atomic_store(&ctl->attempting[role->inc], seq);
    int rc = mp_queue_put(role->queue, msg, len, 0.2);
    if (rc == MP_EFULL)
      continue; /* not committed: the same message again */
    if (rc != 0) {
      fprintf(stderr, "soak: producer %d: %s (%s)\n", role->inc, mp_strerror(rc),
              mp_last_error());
      return 3;
    }
    atomic_store(&ctl->done[role->inc], ++seq);
  }
  return 0;
}

/* A consumer: gets and records messages until told to stop and the queue is empty; its
 * flag is up from before its get until what it got is recorded. */
static int consume(const role_t *role, control_t *ctl, unsigned char *buf) {
  for (;;) {
    atomic_store(&ctl->in_get[role->slot], 1);
    size_t len = 0;
    int rc = mp_queue_get(role->queue, buf, MSG_MAX, &len, 0.05);
    header_t h;
    if (rc == 0 && message_valid(buf, len, &h))
      atomic_fetch_add(&role->seen[(size_t)h.inc * MAX_SEQ + h.seq], 1);
    else if (rc == 0)
      atomic_fetch_add(&ctl->corrupt, 1);
    atomic_store(&ctl->in_get[role->slot], 0);
    if (rc == MP_EEMPTY && atomic_load(&ctl->stop_consumers))
      return 0;
    if (rc != 0 && rc != MP_EEMPTY) {
      fprintf(stderr, "soak: consumer: %s (%s)\n", mp_strerror(rc), mp_last_error());
      return 3;
    }
  }
}

/* A child's target: attaches the control block by name and plays its role. */
static int play_role(void *arg, size_t size) {
  role_t *role = arg;
  mp_shared_memory_t *shm;
  if (size != sizeof *role || mp_shared_memory_attach(&shm, role->shm_name) != 0)
    return 2;
  unsigned char *buf = malloc(MSG_MAX);
  int code = !buf             ? 2
             : role->slot < 0 ? produce(role, mp_shared_memory_buf(shm), buf)
                              : consume(role, mp_shared_memory_buf(shm), buf);
  free(buf);
  mp_shared_memory_close(shm);
  return code;
}

/* ================================ the run ================================ */

static struct {
  mp_context_t *ctx;
  const char *method;
  unsigned seed;
  int failures;
  int starts, fail_start; /* the queue part's starts; the one made to fail, or 0 */
} run;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "soak [%s]: FAIL: ", run.method);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  run.failures++;
}

static int count_fds(void) {
  int n = 0;
  DIR *dir = opendir("/proc/self/fd");
  for (struct dirent *d; dir && (d = readdir(dir));)
    n += d->d_name[0] != '.';
  if (dir)
    closedir(dir);
  return n - 1; /* the directory's own fd */
}

/* The parent of pid, from /proc, or 0. */
static pid_t parent_of(pid_t pid) {
  char path[64], text[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  char *close_paren = strrchr(text, ')');
  int ppid = 0;
  return close_paren && sscanf(close_paren + 1, " %*c %d", &ppid) == 1 ? (pid_t)ppid : 0;
}

/* Writes up to cap of this process's children (grandchildren too, if deep: a fork server's
 * or a zygote's children) to out; their number. */
static size_t list_processes(pid_t *out, size_t cap, bool deep) {
  size_t n = 0;
  DIR *dir = opendir("/proc");
  for (struct dirent *d; dir && (d = readdir(dir));) {
    pid_t pid = (pid_t)atoi(d->d_name), parent = pid > 0 ? parent_of(pid) : 0;
    bool mine = parent == getpid() || (deep && parent > 1 && parent_of(parent) == getpid());
    if (mine && n < cap)
      out[n++] = pid;
  }
  if (dir)
    closedir(dir);
  return n;
}

static bool listed(pid_t pid, const pid_t *list, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (list[i] == pid)
      return true;
  return false;
}

/* ------------------------------ the pool part ------------------------------ */

typedef struct {
  long x;
  _Atomic int *pids; /* PID_SLOTS worker pids, in the arena */
  bool quick;        /* no work: the task returns at once */
} item_t;

static int square_plus(const void *arg, size_t size, void *result, size_t *result_size) {
  const item_t *item = arg;
  if (size != sizeof *item || *result_size != sizeof(long))
    return mp_task_fail("bad sizes");
  atomic_store(&item->pids[getpid() % PID_SLOTS], (int)getpid());
  double end = item->quick ? 0 : now() + 0.0002; /* long enough for a kill to land inside tasks */
  while (now() < end) {
  }
  *(long *)result = item->x * item->x + 7;
  return 0;
}

/* SIGKILLs a random worker of ours that a task has named. */
static bool kill_a_worker(_Atomic int *pids) {
  pid_t mine[256];
  size_t n = list_processes(mine, 256, true);
  for (int tries = 0; tries < PID_SLOTS; tries++) {
    pid_t pid = atomic_load(&pids[next_random(&run.seed) % PID_SLOTS]);
    if (pid > 0 && listed(pid, mine, n) && kill(pid, SIGKILL) == 0)
      return true;
  }
  return false;
}

/* SIGKILLs a process of ours that is not in before: a replacement worker starting (or a
 * fork server's new spare). */
static bool kill_a_newcomer(const pid_t *before, size_t n_before) {
  pid_t now_there[256];
  size_t n = list_processes(now_there, 256, true);
  for (size_t i = 0; i < n; i++)
    if (!listed(now_there[i], before, n_before) && kill(now_there[i], SIGKILL) == 0)
      return true;
  return false;
}

static void soak_pool(double seconds, _Atomic int *pids) {
  mp_pool_options_t opts = MP_POOL_OPTIONS_INIT;
  opts.processes = WORKERS;
  opts.context = run.ctx;
  mp_pool_t *pool = NULL;
  static item_t items[QUICK_ITEMS];
  static long results[QUICK_ITEMS];
  long maps = 0, failed_maps = 0, kills = 0, starting_kills = 0, wrong = 0, pools = 0;
  bool hunt = false; /* for a process that was not there before the last kill */
  pid_t before[256];
  size_t n_before = 0;
  for (double end = now() + seconds; now() < end;) {
    if (!pool) {
      int rc = mp_pool_create(&pool, &opts);
      if (rc != 0) {
        fail("pool: create: %s (%s)", mp_strerror(rc), mp_last_error());
        break;
      }
      pools++;
    }
    bool quick = maps % 2 == 1;
    int n = quick ? QUICK_ITEMS : ITEMS;
    for (int i = 0; i < n; i++)
      items[i] = (item_t){maps % 1000 * QUICK_ITEMS + i, pids, quick}; /* x * x fits a long */
    mp_async_result_t *ar;
    int rc = mp_pool_map_async(pool, square_plus, items, (size_t)n, sizeof items[0],
                               sizeof(long), quick ? 1 : 4, NULL, &ar);
    if (rc != 0) {
      fail("pool: map_async: %s (%s)", mp_strerror(rc), mp_last_error());
      break;
    }
    /* Every other map loses a worker at a random moment of it, and one time in two its
     * replacement too, as it starts (in this map or the next). */
    bool kill_one = next_random(&run.seed) % 2 == 0;
    double map_end = now() + 60;
    while (mp_async_result_ready(ar) == 0 && now() < map_end) {
      sleep_for(0.001 + (next_random(&run.seed) % 20) / 1000.0);
      if (hunt && kill_a_newcomer(before, n_before)) {
        starting_kills++;
        hunt = false;
      }
      if (kill_one && mp_async_result_ready(ar) == 0) {
        n_before = list_processes(before, 256, true);
        if (kill_a_worker(pids)) {
          kills++;
          kill_one = false;
          hunt = next_random(&run.seed) % 2 == 0;
        }
      }
    }
    memset(results, 0xff, (size_t)n * sizeof results[0]);
    rc = mp_async_result_get(ar, results, sizeof results, NULL, 0);
    maps++;
    if (rc == MP_ETIMEDOUT)
      fail("pool: a map did not end in 60 s (a hang)");
    else if (rc == MP_EWORKERDIED)
      failed_maps++;
    else if (rc != 0)
      fail("pool: map %ld: %s (%s)", maps, mp_strerror(rc), mp_last_error());
    for (int i = 0; i < n && (rc == 0 || rc == MP_EWORKERDIED); i++) {
      long want = items[i].x * items[i].x + 7;
      if (results[i] != want && !(rc == MP_EWORKERDIED && results[i] == 0))
        wrong++;
    }
    mp_async_result_free(ar);
    if (rc == MP_ETERMINATED || rc == MP_ETIMEDOUT) { /* start a new pool: counted above */
      mp_pool_terminate(pool);
      mp_pool_destroy(pool);
      pool = NULL;
    }
  }
  if (pool) {
    mp_pool_close(pool);
    if (mp_pool_join(pool, JOIN_SECONDS) != 0)
      fail("pool: join: %s", mp_last_error());
    mp_pool_destroy(pool);
  }
  if (wrong)
    fail("pool: %ld wrong results", wrong);
  printf("soak [%s] pool: %ld maps (%ld failed by a worker's death), %ld workers killed "
         "running and %ld starting, %ld pools, %ld wrong results\n",
         run.method, maps, failed_maps, kills, starting_kills, pools, wrong);
}

/* ------------------------------ the queue part ------------------------------ */

typedef struct {
  mp_process_t *proc;
  role_t role;
} child_t;

static int next_inc;

/* Starts the role of slot (a producer gets the next incarnation); false if it could not. */
static bool start_child(child_t *c, bool is_producer) {
  if (is_producer && next_inc == MAX_INC)
    return false;
  if (is_producer)
    c->role.inc = next_inc++;
  c->role.seed = next_random(&run.seed);
  const role_t *arg = ++run.starts == run.fail_start ? NULL : &c->role;
  int rc = mp_process_create(&c->proc, run.ctx, play_role, arg, sizeof c->role, NULL);
  if (rc == 0 && (rc = mp_process_start(c->proc)) != 0)
    mp_process_close(c->proc);
  if (rc != 0) {
    fail("queues: start: %s (%s)", mp_strerror(rc), mp_last_error());
    c->proc = NULL;
  }
  return rc == 0;
}

/* Joins c (after a kill, or at the end) and closes it; false if it hung or failed. */
static bool end_child(child_t *c, bool killed) {
  int code = 0;
  if (mp_process_join(c->proc, JOIN_SECONDS) != 0) {
    pid_t pid = (pid_t)mp_process_pid(c->proc);
    fail("queues: %s %d (%s) did not end in %g s (a hang): %s",
         c->role.slot < 0 ? "producer" : "consumer", (int)pid,
         killed ? "SIGKILLed" : "asked to stop", JOIN_SECONDS, mp_last_error());
    char cmd[160];
    snprintf(cmd, sizeof cmd, "cat /proc/%d/status | grep -E 'State|PPid'; cat /proc/%d/stack",
             (int)pid, (int)pid);
    if (system(cmd) != 0)
      fprintf(stderr, "(no /proc entry)\n");
    mp_process_kill(c->proc);
    mp_process_join(c->proc, JOIN_SECONDS);
  } else if (mp_process_exitcode(c->proc, &code) == 0 && code != 0 &&
             !(killed && code == -SIGKILL)) {
    fail("queues: a child ended with %d", code);
  }
  mp_process_close(c->proc);
  c->proc = NULL;
  return true;
}

/* drained: false if no consumer was left to take the queue's messages (a start failed,
 * reported): what is still there is then not missing. */
static void verify(control_t *ctl, _Atomic unsigned char *seen, long kills_in_get,
                   bool drained) {
  long delivered = 0, missing = 0, duplicated = 0, unput = 0, unsure = 0;
  for (int inc = 0; inc < next_inc; inc++) {
    int done = atomic_load(&ctl->done[inc]), attempting = atomic_load(&ctl->attempting[inc]);
    for (int seq = 0; seq < MAX_SEQ; seq++) {
      int n = atomic_load(&seen[(size_t)inc * MAX_SEQ + seq]);
      delivered += n;
      if (n > 1)
        duplicated++;
      else if (seq < done && n == 0)
        missing++;
      else if (seq >= done && n == 1 && seq != attempting)
        unput++;
      else if (seq >= done && seq == attempting)
        unsure++; /* a put killed in progress: either is right */
    }
  }
  long corrupt = atomic_load(&ctl->corrupt);
  printf("soak [%s] queues: %d producers' runs, %ld messages delivered, %ld missing%s "
         "(%ld consumers killed in a get), %ld duplicated, %ld corrupt, %ld never put, "
         "%ld puts cut by a kill\n",
         run.method, next_inc, delivered, missing, drained ? "" : " (no consumer ran)",
         kills_in_get, duplicated, corrupt, unput, unsure);
  if (drained && missing > kills_in_get)
    fail("queues: %ld messages missing, only %ld consumers killed in a get", missing,
         kills_in_get);
  if (duplicated || corrupt || unput)
    fail("queues: %ld duplicated, %ld corrupt, %ld never put", duplicated, corrupt, unput);
}

static void soak_queues(double seconds, const char *shm_name) {
  mp_shared_memory_t *shm;
  mp_array_t *seen_array;
  mp_queue_t *queue;
  if (mp_shared_memory_create(&shm, shm_name, sizeof(control_t), 0) != 0 ||
      mp_raw_array_create(&seen_array, 'B', (size_t)MAX_INC * MAX_SEQ, NULL) != 0 ||
      mp_queue_create_sized(&queue, 0, RING) != 0) {
    fail("queues: setup: %s", mp_last_error());
    return;
  }
  control_t *ctl = mp_shared_memory_buf(shm);
  _Atomic unsigned char *seen = mp_array_ptr(seen_array);
  child_t kids[PRODUCERS + CONSUMERS] = {0}; /* proc NULL: not running */
  bool ok = true;
  for (int i = 0; i < PRODUCERS + CONSUMERS; i++) {
    kids[i].role =
        (role_t){.queue = queue, .seen = seen, .slot = i < PRODUCERS ? -1 : i - PRODUCERS};
    snprintf(kids[i].role.shm_name, sizeof kids[i].role.shm_name, "%s", shm_name);
    ok = ok && start_child(&kids[i], i < PRODUCERS);
  }
  long kills = 0, kills_in_get = 0;
  for (double end = now() + seconds; ok && now() < end;) {
    sleep_for(0.002 + (next_random(&run.seed) % 40) / 1000.0);
    int i = (int)(next_random(&run.seed) % (PRODUCERS + CONSUMERS));
    bool is_producer = i < PRODUCERS;
    int code = 1;
    /* A producer that finished its run is replaced too. */
    bool ended =
        mp_process_join(kids[i].proc, 0) == 0 && mp_process_exitcode(kids[i].proc, &code) == 0;
    if (!ended) {
      mp_process_kill(kids[i].proc);
      kills++;
    }
    end_child(&kids[i], !ended);
    if (!is_producer && atomic_exchange(&ctl->in_get[i - PRODUCERS], 0))
      kills_in_get += !ended;
    ok = start_child(&kids[i], is_producer);
  }
  /* The end: producers stop, consumers drain the queue and stop. */
  atomic_store(&ctl->stop_producers, 1);
  for (int i = 0; i < PRODUCERS; i++)
    if (kids[i].proc)
      end_child(&kids[i], false);
  /* Without a consumer (a start failed), nobody empties the queue: no wait for it. */
  int consumers = 0;
  for (int i = PRODUCERS; i < PRODUCERS + CONSUMERS; i++)
    consumers += kids[i].proc != NULL;
  for (double end = now() + JOIN_SECONDS; consumers && mp_queue_qsize(queue) > 0 && now() < end;)
    sleep_for(0.01);
  if (consumers && mp_queue_qsize(queue) > 0)
    fail("queues: %d messages still in the queue after %g s", mp_queue_qsize(queue),
         JOIN_SECONDS);
  atomic_store(&ctl->stop_consumers, 1);
  for (int i = PRODUCERS; i < PRODUCERS + CONSUMERS; i++)
    if (kids[i].proc)
      end_child(&kids[i], false);
  printf("soak [%s] queues: %ld children killed\n", run.method, kills);
  verify(ctl, seen, kills_in_get, consumers > 0);
  mp_queue_free(queue);
  mp_array_close(seen_array);
  mp_shared_memory_unlink(shm);
  mp_shared_memory_close(shm);
}

/* ------------------------------ leftovers ------------------------------ */

static int t_nothing(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

/* Starts what lives as long as the program (a fork server, the segment tracker, libuv's
 * signal pipe) before the counts are taken. */
static void warm_up(const char *shm_name, _Atomic int *pids) {
  mp_pool_options_t opts = MP_POOL_OPTIONS_INIT;
  opts.processes = 1;
  opts.context = run.ctx;
  mp_pool_t *pool;
  if (mp_pool_create(&pool, &opts) == 0) {
    item_t item = {1, pids, false};
    long result;
    mp_pool_map(pool, square_plus, &item, 1, sizeof item, &result, sizeof result, 1);
    mp_pool_destroy(pool);
  }
  mp_process_t *p;
  if (mp_process_create(&p, run.ctx, t_nothing, NULL, 0, NULL) == 0) {
    if (mp_process_start(p) == 0)
      mp_process_join(p, JOIN_SECONDS);
    mp_process_close(p);
  }
  mp_shared_memory_t *shm;
  if (mp_shared_memory_create(&shm, shm_name, 1, 0) == 0) {
    mp_shared_memory_unlink(shm);
    mp_shared_memory_close(shm);
  }
}

static void check_leftovers(const pid_t *before, size_t n_before, int fds_before,
                            const char *prefix) {
  pid_t now_children[256];
  double end = now() + 5; /* reaped children may take a moment to go */
  size_t n;
  bool extra;
  do {
    n = list_processes(now_children, 256, false);
    extra = false;
    for (size_t i = 0; i < n; i++) {
      bool known = false;
      for (size_t j = 0; j < n_before; j++)
        known |= now_children[i] == before[j];
      extra |= !known;
    }
  } while (extra && now() < end && (sleep_for(0.05), true));
  if (extra)
    fail("leftovers: %zu children now, %zu before the run", n, n_before);
  int fds = count_fds();
  if (fds != fds_before)
    fail("leftovers: %d fds open, %d before the run", fds, fds_before);
  DIR *dir = opendir("/dev/shm");
  for (struct dirent *d; dir && (d = readdir(dir));)
    if (strncmp(d->d_name, prefix, strlen(prefix)) == 0)
      fail("leftovers: /dev/shm/%s", d->d_name);
  if (dir)
    closedir(dir);
}

int main(int argc, char **argv) {
  double seconds = 3;
  const char *part = "all", *seed = NULL;
  run.method = "fork";
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--seconds") == 0)
      seconds = atof(argv[i + 1]);
    else if (strcmp(argv[i], "--method") == 0)
      run.method = argv[i + 1];
    else if (strcmp(argv[i], "--part") == 0)
      part = argv[i + 1];
    else if (strcmp(argv[i], "--seed") == 0)
      seed = argv[i + 1];
    else if (strcmp(argv[i], "--fail-start") == 0)
      run.fail_start = atoi(argv[i + 1]);
    else {
      fprintf(stderr, "usage: soak [--seconds S] [--method M] [--part all|pool|queues] "
                      "[--seed N] [--fail-start N]\n");
      return 2;
    }
  }
  if (mp_get_context(run.method, &run.ctx) != 0) {
    fprintf(stderr, "soak: %s\n", mp_last_error());
    return 2;
  }
  run.seed = seed ? (unsigned)strtoul(seed, NULL, 10) : (unsigned)getpid() ^ (unsigned)time(NULL);
  printf("soak [%s]: %g s per part, seed %u\n", run.method, seconds, run.seed);
  fflush(stdout);
  char prefix[32], shm_name[48];
  snprintf(prefix, sizeof prefix, "mp_soak%d_", (int)getpid());
  snprintf(shm_name, sizeof shm_name, "%scontrol", prefix);
  mp_array_t *pid_array;
  if (mp_raw_array_create(&pid_array, 'i', PID_SLOTS, NULL) != 0) {
    fprintf(stderr, "soak: %s\n", mp_last_error());
    return 2;
  }
  _Atomic int *pids = mp_array_ptr(pid_array);
  warm_up(shm_name, pids);
  pid_t before[256];
  size_t n_before = list_processes(before, 256, false);
  int fds_before = count_fds();
  if (strcmp(part, "all") == 0 || strcmp(part, "pool") == 0)
    soak_pool(seconds, pids);
  if (strcmp(part, "all") == 0 || strcmp(part, "queues") == 0)
    soak_queues(seconds, shm_name);
  check_leftovers(before, n_before, fds_before, prefix);
  mp_array_close(pid_array);
  printf("soak [%s]: %s\n", run.method, run.failures ? "FAILED" : "ok");
  return run.failures ? 1 : 0;
}
