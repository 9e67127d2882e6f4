/*
 * MP_TRACE: a timeline of what every process did (docs/trace.md, include/mp/trace.h).
 *
 * Recording. Each process writes fixed-size binary records into a ring of its own, a
 * MAP_SHARED mapping of the file <dir>/<pid>.<n>.ring: an event takes a slot with one atomic
 * add on the ring's counter (no lock, and nothing shared with another process), reads the
 * clock and stores 64 bytes, the type word last. Every half ring (a block), the event that
 * completes it appends the block to the process's log, <dir>/<pid>.<n>.bin, with one
 * write(). The ring's pages stay mapped: a fresh page for every 64 events (a log mapped
 * whole) costs a page fault each, many times the event itself on a virtual machine. The
 * ring is a file so that what a process recorded survives its SIGKILL, and the whole
 * program's: the merge reads each log and then the ring's events the log lacks; a record
 * cut by a death keeps type 0 and is skipped. dir is in /dev/shm (tmpfs): appending there
 * costs a fraction of a disk file's page cache, and it outlives the processes.
 *
 * Processes. The process that starts the trace (MP_TRACE, or mp_trace_start()) is its top:
 * it makes the directory, names it in the placeholder it writes at the trace's path, and
 * passes it on in LIBMP_TRACE_DIR to children that exec (spawn, the fork server and its
 * children); a forked child inherits the state and opens files of its own at its first
 * event (the fork handler forgets the parent's). At its end (its normal exit, or
 * mp_trace_stop()) the top merges every file into the trace-event JSON (merge below) and
 * removes the directory.
 *
 * Names. Shared objects live at the same address in every process, so an object is its
 * address: the merge numbers them per kind in order of first event, unless mp_set_name()
 * recorded a name for the address.
 */
#include "trace.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* ================================ records ================================ */

enum {
  REC_HEADER = 1, /* record 0 of a file: obj = pid, v = {ppid, method, MAGIC, dropped} */
  REC_PROCESS,    /* this process's name (str.s) and method (str.n) */
  REC_THREAD,     /* this thread's name */
  REC_NAME,       /* obj is named str.s */
  REC_ACQUIRED,   /* obj of kind acquired; v[0]: when the wait began, v[1]: 0,
                     MP_EOWNERDEAD, or the error that ended the wait (not acquired) */
  REC_RELEASED,
  REC_WAITED,    /* v[0]: when the wait began, v[1]: 1 if it ended well */
  REC_QUEUE_PUT, /* v[0]: began, v[1]: bytes */
  REC_QUEUE_GET,
  REC_SEND, /* v[0]: began, v[1]: bytes, v[2]: the call's result */
  REC_RECV,
  REC_SHM,         /* kind: MP__TRK_SHM_*, str.n: size, str.s: the segment's name */
  REC_START,       /* obj: the child's pid, str.n: its method, str.s: its name */
  REC_EXIT,        /* str.n: the exit code; kind 1: not known (the top's end) */
  REC_REAPED,      /* obj: the child's pid, v[0]: its exit code, v[1]: 1 if unknown */
  REC_CHUNK,       /* obj: the pool; v = {map, chunk | worker << 32, first, count, began};
                      kind: CHUNK_DONE or CHUNK_FAILED */
  REC_TASK_FAILED, /* obj: the map, str.n: the item, str.s: the message's start */
  REC_WORKER_END,  /* obj: the worker's pid; str.n: worker | exit code << 32; kind:
                      replaced; str.s: why */
  REC_MARK,        /* str.s: the label */
};

enum { CHUNK_DONE, CHUNK_FAILED }; /* a REC_CHUNK's kind */

#define STR_MAX 32
#define MAGIC INT64_C(0x31525452504d424c) /* "LBMPRTR1" */

typedef struct {
  _Atomic uint16_t type; /* stored last: 0 is a slot not (wholly) written */
  uint16_t kind;
  uint32_t tid;
  int64_t ts; /* CLOCK_MONOTONIC, ns */
  uint64_t obj;
  union {
    int64_t v[5];
    struct {
      int64_t n;
      char s[STR_MAX];
    } str;
  } u;
} rec_t;

_Static_assert(sizeof(rec_t) == 64, "a record is one cache line");

/* How a process came to be, as its lane's label says. */
enum { M_MAIN, M_FORK, M_SPAWN, M_FORKSERVER, M_SERVER, M_HELPER, M_COUNT };
static const char *const method_names[M_COUNT] = {"main",       "fork",        "spawn",
                                                  "forkserver", "fork server", "helper"};

static const char *const kind_names[MP__TRK_KINDS] = {
    "Object",    "Lock",  "RLock",   "Semaphore", "BoundedSemaphore",
    "Condition", "Event", "Barrier", "Queue",     "Connection"};

/* ============================ this process's state ============================ */

#define RING_RECS ((uint64_t)8192)  /* a process's ring: 512 KiB */
#define BLOCK_RECS ((uint64_t)4096) /* copied to the log half a ring at a time */
#define NAMES_MAX 256
#define ENV_DIR "LIBMP_TRACE_DIR"
#define SHM_DIR "/dev/shm/libmp-trace-" /* + mkdtemp's 6 characters */

/* A process's ring file: this header, then RING_RECS slots; event n is in slot n % RING_RECS
 * until its block is appended to the process's log file. Both survive the process. */
typedef struct {
  int64_t magic;
  _Atomic uint64_t next;    /* events taken */
  _Atomic uint64_t flushed; /* events in the log, a multiple of BLOCK_RECS */
  _Atomic int64_t dropped;  /* events lost to a failed write */
  int64_t pad[4];
} ring_head_t;

_Static_assert(sizeof(ring_head_t) == sizeof(rec_t), "the header takes one slot's place");

_Atomic int mp__trace_on;

static struct {
  pthread_mutex_t lock;      /* opening the files, appending to the log */
  ring_head_t *_Atomic head; /* the mapped ring file, or NULL before the first event */
  _Atomic int merging;       /* stops whose merge runs: the exit waits for them */
  ring_head_t *retired;      /* a stopped trace's, still mapped: see forget_file() */
  int log_fd;
  int method;
  bool top; /* this process started the trace and writes the file */
  char dir[PATH_MAX];
  char path[PATH_MAX]; /* the top's trace file */
} T = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, NULL, -1, M_MAIN, false, "", ""};

/* The merges of stops this thread won and runs: a signal handler that exits in the middle
 * of one cannot wait for it (wait_for_merges). Volatile, as what a handler reads: else the
 * compiler may drop the count around a merge that never reads it. */
static __thread volatile sig_atomic_t tls_merging;

/* Steps any merge of this process has taken (a file read, a comparison of the sort, a
 * record learnt or written, a file removed): the exit waits for a thread's merge as long as
 * this moves. A relaxed load and store, no atomic add: the sort's comparison takes one, and
 * two merges at once losing a step still move it. */
static _Atomic uint64_t merge_steps;

static void step(void) {
  atomic_store_explicit(&merge_steps,
                        atomic_load_explicit(&merge_steps, memory_order_relaxed) + 1,
                        memory_order_relaxed);
}

/* The current process's name, from process.c (above this file): see mp__trace_name_source. */
static const char *(*name_source)(void);

void mp__trace_name_source(const char *(*current_name)(void)) {
  name_source = current_name;
}

/* The fork server's pid: a child it forks, untraced, keeps T.method == M_SERVER rather than
 * write T's page in every child (see after_fork_in_child); this tells them apart. */
static pid_t server_pid;

static int method(void) {
  return T.method == M_SERVER && getpid() != server_pid ? M_FORKSERVER : T.method;
}

static const char *process_name(void) {
  /* Before process.c's constructor (MP_TRACE is read by spawn.c's first one) this can only
   * be the program's main process. */
  return name_source ? name_source() : "MainProcess";
}

#define RING_OF(h) ((rec_t *)((h) + 1))
#define RING_FILE_SIZE ((RING_RECS + 1) * sizeof(rec_t))

static __thread uint32_t tls_tid; /* 0 until the thread's first event */

/* Names given by mp_set_name(), written again into every file this process opens. */
static struct {
  pthread_mutex_t lock;
  size_t n;
  struct {
    uint64_t obj;
    char name[STR_MAX];
  } e[NAMES_MAX];
} names = {PTHREAD_MUTEX_INITIALIZER, 0, {{0, ""}}};

static void copy_str(char dst[STR_MAX], const char *src) {
  size_t n = src ? strnlen(src, STR_MAX - 1) : 0;
  memcpy(dst, src ? src : "", n);
  memset(dst + n, 0, STR_MAX - n);
}

/* Under T.lock, for the ring h of the running trace: appends every block whose events have
 * all been taken to the log, oldest first, waiting for the slots still being written (a
 * few stores away). */
static void flush_blocks(ring_head_t *h) {
  uint64_t from;
  if (h != T.head)
    return; /* the trace stopped meanwhile */
  while (atomic_load(&h->next) - (from = atomic_load(&h->flushed)) >= BLOCK_RECS) {
    rec_t *block = &RING_OF(h)[from % RING_RECS];
    for (uint64_t j = 0; j < BLOCK_RECS; j++)
      while (!atomic_load_explicit(&block[j].type, memory_order_acquire))
        sched_yield();
    size_t done = 0, size = BLOCK_RECS * sizeof(rec_t);
    while (done < size) {
      ssize_t n = write(T.log_fd, (char *)block + done, size - done);
      if (n <= 0 && errno == EINTR)
        continue;
      if (n <= 0) { /* a full disk: the block is lost, counted */
        atomic_fetch_add(&h->dropped, (int64_t)BLOCK_RECS);
        break;
      }
      done += (size_t)n;
    }
    for (uint64_t j = 0; j < BLOCK_RECS; j++) /* free for the events a ring later */
      atomic_store_explicit(&block[j].type, 0, memory_order_relaxed);
    atomic_store_explicit(&h->flushed, from + BLOCK_RECS, memory_order_release);
  }
}

/* Opens file dir/<pid>.<n><suffix> for a process: the first free n. */
static int create_file(char *file, size_t cap, int n, const char *suffix) {
  if ((size_t)snprintf(file, cap, "%s/%d.%d%s", T.dir, (int)getpid(), n, suffix) >= cap)
    return -ENAMETOOLONG;
  int fd = open(file, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
  return fd >= 0 ? fd : -errno;
}

/* Under T.lock: this process's log file, starting with its header record, and its ring. */
static int open_files(void) {
  char log[PATH_MAX], ring[PATH_MAX];
  int n = 0, log_fd = -EEXIST, ring_fd = -1;
  for (; log_fd == -EEXIST && n < 1000; n++) /* .n: a pid the system used again */
    log_fd = create_file(log, sizeof log, n, ".bin");
  if (log_fd < 0)
    return log_fd;
  ring_fd = create_file(ring, sizeof ring, n - 1, ".ring");
  size_t size = RING_FILE_SIZE;
  void *map = MAP_FAILED;
  rec_t head = {.ts = mp__now_ns(), .obj = (uint64_t)getpid()};
  head.tid = (uint32_t)syscall(SYS_gettid);
  head.u.v[0] = getppid();
  head.u.v[1] = method();
  head.u.v[2] = MAGIC;
  atomic_store(&head.type, REC_HEADER);
  int err = ring_fd < 0 ? ring_fd : 0;
  if (!err &&
      (ftruncate(ring_fd, (off_t)size) < 0 ||
       (map = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, ring_fd, 0)) == MAP_FAILED ||
       write(log_fd, &head, sizeof head) != (ssize_t)sizeof head))
    err = -errno;
  if (ring_fd >= 0)
    close(ring_fd); /* the mapping keeps the file */
  if (err) {
    if (map != MAP_FAILED)
      munmap(map, size);
    close(log_fd);
    unlink(log);
    unlink(ring);
    return err;
  }
  ring_head_t *h = map;
  h->magic = MAGIC;
  T.log_fd = log_fd;
  atomic_store_explicit(&T.head, h, memory_order_release);
  return 0;
}

static rec_t *slot(int64_t ts);
static void event_str(int type, int kind, uint64_t obj, int64_t n, const char *s);

/* The first events of a file: this process's name and method, and the names it knows. */
static void announce(void) {
  event_str(REC_PROCESS, 0, 0, method(), process_name());
  pthread_mutex_lock(&names.lock);
  for (size_t i = 0; i < names.n; i++)
    event_str(REC_NAME, 0, names.e[i].obj, 0, names.e[i].name);
  pthread_mutex_unlock(&names.lock);
}

/* The first event of a child (the top opens its files in mp_trace_start()): its files, then
 * announce(). Recording is checked again under T.lock: an event begun before a stop may
 * get here after it, and must not open files in the stopped trace's directory. */
static ring_head_t *open_slow(void) {
  pthread_mutex_lock(&T.lock);
  bool opening = !T.head && MP__TRACING(), opened = opening && open_files() == 0;
  if (opening && !opened) /* say nothing: a library does not print; the trace shows the gap */
    atomic_store(&mp__trace_on, 0);
  ring_head_t *h = T.head;
  pthread_mutex_unlock(&T.lock);
  if (opened)
    announce();
  return h;
}

static void commit(rec_t *r, int type);

/* The thread's first event: its id, and its name for the lane. */
static uint32_t new_thread(void) {
  tls_tid = (uint32_t)syscall(SYS_gettid);
  rec_t *r = slot(mp__now_ns());
  if (r) {
    char name[STR_MAX] = "";
    pthread_getname_np(pthread_self(), name, 16); /* the kernel keeps 16 bytes */
    r->obj = 0;
    r->u.str.n = 0;
    copy_str(r->u.str.s, name);
    commit(r, REC_THREAD);
  }
  return tls_tid;
}

/* A slot for an event at ts, its tid and ts filled, or NULL (no file). commit() publishes
 * it. */
static rec_t *slot(int64_t ts) {
  uint32_t tid = tls_tid;
  if (__builtin_expect(tid == 0, 0))
    tid = new_thread();
  ring_head_t *h = atomic_load_explicit(&T.head, memory_order_acquire);
  if (__builtin_expect(!h, 0) && !(h = open_slow()))
    return NULL;
  uint64_t i = atomic_fetch_add_explicit(&h->next, 1, memory_order_relaxed);
  /* The ring is full only if the log writes fall behind: then this thread writes them. */
  while (__builtin_expect(
      i - atomic_load_explicit(&h->flushed, memory_order_acquire) >= RING_RECS, 0)) {
    pthread_mutex_lock(&T.lock);
    bool running = h == T.head;
    flush_blocks(h);
    pthread_mutex_unlock(&T.lock);
    if (!running)
      return NULL;
  }
  rec_t *r = &RING_OF(h)[i % RING_RECS];
  r->tid = tid;
  r->ts = ts;
  return r;
}

/* Publishes the record; the event that completes a block appends it to the log. */
static void commit(rec_t *r, int type) {
  atomic_store_explicit(&r->type, (uint16_t)type, memory_order_release);
  ring_head_t *h = atomic_load_explicit(&T.head, memory_order_relaxed);
  if (__builtin_expect(h && (uint64_t)(r - RING_OF(h) + 1) % BLOCK_RECS == 0, 0)) {
    pthread_mutex_lock(&T.lock);
    flush_blocks(h);
    pthread_mutex_unlock(&T.lock);
  }
}

/* An event about obj with up to three numbers. */
static void event3(int type, int kind, const void *obj, int64_t a, int64_t b, int64_t c) {
  rec_t *r = slot(mp__now_ns());
  if (!r)
    return;
  r->kind = (uint16_t)kind;
  r->obj = (uint64_t)(uintptr_t)obj;
  r->u.v[0] = a;
  r->u.v[1] = b;
  r->u.v[2] = c;
  commit(r, type);
}

/* An event with a number and a string. */
static void event_str(int type, int kind, uint64_t obj, int64_t n, const char *s) {
  rec_t *r = slot(mp__now_ns());
  if (!r)
    return;
  r->kind = (uint16_t)kind;
  r->obj = obj;
  r->u.str.n = n;
  copy_str(r->u.str.s, s);
  commit(r, type);
}

/* ================================ event sites ================================ */

void mp__trace_acquired(int kind, const void *obj, int64_t t0, int rc) {
  event3(REC_ACQUIRED, kind, obj, t0, rc, 0);
}

void mp__trace_released(int kind, const void *obj) {
  event3(REC_RELEASED, kind, obj, 0, 0, 0);
}

void mp__trace_waited(int kind, const void *obj, int64_t t0, bool ok) {
  event3(REC_WAITED, kind, obj, t0, ok, 0);
}

void mp__trace_queue_put(const void *queue, size_t len, int64_t t0) {
  event3(REC_QUEUE_PUT, MP__TRK_QUEUE, queue, t0, (int64_t)len, 0);
}

void mp__trace_queue_get(const void *queue, size_t len, int64_t t0) {
  event3(REC_QUEUE_GET, MP__TRK_QUEUE, queue, t0, (int64_t)len, 0);
}

void mp__trace_conn_send(const void *conn, size_t len, int64_t t0, int rc) {
  event3(REC_SEND, MP__TRK_CONNECTION, conn, t0, (int64_t)len, rc);
}

void mp__trace_conn_recv(const void *conn, size_t len, int64_t t0, int rc) {
  event3(REC_RECV, MP__TRK_CONNECTION, conn, t0, (int64_t)len, rc);
}

void mp__trace_shm(int op, const char *name, size_t size) {
  event_str(REC_SHM, op, 0, (int64_t)size, name);
}

static int method_of(const char *name) {
  for (int m = 0; m < M_COUNT; m++)
    if (name && strcmp(name, method_names[m]) == 0)
      return m;
  return M_MAIN;
}

void mp__trace_process_start(const mp_process_t *proc) {
  event_str(REC_START, 0, (uint64_t)proc->pid, method_of(proc->ops->name), proc->name);
}

void mp__trace_process_child(const char *name) {
  event_str(REC_PROCESS, 0, 0, method(), name);
}

void mp__trace_process_exit(int code) {
  event_str(REC_EXIT, 0, 0, code, NULL);
}

void mp__trace_process_reaped(const mp_process_t *proc) {
  event3(REC_REAPED, 0, (const void *)(uintptr_t)proc->pid, proc->exitcode, proc->status_lost,
         0);
}

void mp__trace_pool_chunk(const void *pool, uint64_t map, uint32_t chunk, uint32_t w,
                          uint64_t first, uint64_t count, int64_t t0, int rc,
                          uint64_t failed_item, const char *msg) {
  rec_t *r = slot(mp__now_ns());
  if (r) {
    r->kind = rc == 0 ? CHUNK_DONE : CHUNK_FAILED;
    r->obj = (uint64_t)(uintptr_t)pool;
    r->u.v[0] = (int64_t)map;
    r->u.v[1] = (int64_t)((uint64_t)chunk | (uint64_t)w << 32);
    r->u.v[2] = (int64_t)first;
    r->u.v[3] = (int64_t)count;
    r->u.v[4] = t0;
    commit(r, REC_CHUNK);
  }
  if (rc != 0)
    event_str(REC_TASK_FAILED, 0, map, (int64_t)failed_item, msg);
}

void mp__trace_pool_worker_end(const void *pool, uint32_t w, int pid, int exitcode,
                               const char *msg, bool replaced) {
  (void)pool;
  event_str(REC_WORKER_END, replaced, (uint64_t)(uint32_t)pid,
            (int64_t)((uint64_t)w | (uint64_t)(uint32_t)exitcode << 32), msg);
}

/* ================================ the public API ================================ */

bool mp_trace_enabled(void) {
  return MP__TRACING();
}

int mp_trace_mark(const char *label) {
  if (!label)
    return mp__error(MP_EINVAL, "mp_trace_mark: label is NULL");
  if (MP__TRACING())
    event_str(REC_MARK, 0, 0, 0, label);
  return 0;
}

int mp_set_name(void *object, const char *name) {
  if (!object || !mp__shared_contains(object))
    return mp__error(MP_EINVAL, "mp_set_name: the object is NULL or not a shared handle");
  if (!name || !*name || strlen(name) > MP_TRACE_NAME_MAX)
    return mp__error(MP_EINVAL, "mp_set_name: the name is NULL, empty or longer than %d bytes",
                     MP_TRACE_NAME_MAX);
  uint64_t obj = (uint64_t)(uintptr_t)object;
  pthread_mutex_lock(&names.lock);
  size_t i = 0;
  while (i < names.n && names.e[i].obj != obj)
    i++;
  bool kept = i < NAMES_MAX;
  if (kept) {
    names.e[i].obj = obj;
    copy_str(names.e[i].name, name);
    names.n += i == names.n;
  }
  pthread_mutex_unlock(&names.lock);
  if (MP__TRACING()) {
    event_str(REC_NAME, 0, obj, 0, name);
    return 0;
  }
  return kept ? 0
              : mp__error(MP_ENOMEM, "mp_set_name: %d names are remembered already", NAMES_MAX);
}

/* Under T.lock: forgets this process's files, at the end of a trace and in a forked child
 * (the parent's are the parent's). At the end of a trace another thread may still be in the
 * middle of an event in the ring: it stays mapped until the next trace ends (or a fork), and
 * its events go nowhere. */
static void forget_file(bool in_child) {
  ring_head_t *h = T.head;
  atomic_store(&T.head, NULL);
  if (T.retired)
    munmap(T.retired, RING_FILE_SIZE);
  T.retired = NULL;
  if (h && in_child)
    munmap(h, RING_FILE_SIZE);
  else
    T.retired = h;
  if (T.log_fd >= 0)
    close(T.log_fd);
  T.log_fd = -1;
}

/* A file a traced process makes in the directory: <pid>.<n>.bin or <pid>.<n>.ring. */
static bool is_process_file(const char *name) {
  const char *p = name;
  for (int part = 0; part < 2; part++) {
    const char *digits = p;
    while (*p >= '0' && *p <= '9')
      p++;
    if (p == digits || *p++ != '.')
      return false;
  }
  return strcmp(p, "bin") == 0 || strcmp(p, "ring") == 0;
}

/* Removes the processes' files from the directory open at dir_fd, then the directory if
 * nothing else is left in it: anything else there is not libmp's to delete. */
static void remove_dir(int dir_fd, const char *dir) {
  int fd = dup(dir_fd);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    if (fd >= 0)
      close(fd);
    return;
  }
  rewinddir(d); /* the merge read it through a descriptor that shares the offset */
  struct dirent *e;
  while ((e = readdir(d))) {
    step();
    if (is_process_file(e->d_name))
      unlinkat(dir_fd, e->d_name, 0);
  }
  closedir(d);
  rmdir(dir); /* fails, harmlessly, if something else is there */
}

static void json_escape(char *out, size_t cap, const char *s);
static int merge_dir(const char *path, const char *dir);

/* The text a trace file holds until the merge writes it: valid JSON that says why it is
 * empty, and where the events are. An existing trace is overwritten, as a program's output
 * file is, but only a regular file of the caller's with no other name: never a symbolic
 * link's target, nor a hard link's (in a shared folder either could name any file the
 * caller may write: a hard link needs no access to its file where fs.protected_hardlinks
 * is 0), nor another user's file. */
static int write_placeholder(const char *path, const char *dir) {
  char esc[3 * PATH_MAX];
  json_escape(esc, sizeof esc, dir);
  int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0600);
  if (fd < 0)
    return errno == ELOOP ? MP_EINVAL : -errno; /* ELOOP: a symbolic link */
  struct stat st;
  FILE *f = NULL;
  int err = 0;
  if (fstat(fd, &st) < 0)
    err = -errno;
  else if (!S_ISREG(st.st_mode) || st.st_uid != geteuid() || st.st_nlink > 1)
    err = MP_EINVAL;
  else if (ftruncate(fd, 0) < 0 || !(f = fdopen(fd, "w")))
    err = -errno;
  if (err) {
    close(fd);
    return err;
  }
  fprintf(f,
          "{\"traceEvents\":[],\n\"otherData\":{\"libmp_incomplete\":\"the program has not "
          "written its trace yet (it runs, or was killed): demos/timeline --repair FILE "
          "writes it from libmp_dir\",\n\"libmp_dir\":\"%s\"}}\n",
          esc);
  err = ferror(f) ? -EIO : 0;
  return fclose(f) != 0 || err ? -EIO : 0;
}

/* path made absolute against the working directory, with room left for the directory's
 * suffix and a process's file name. */
static int absolute_path(const char *what, const char *path, char abs[PATH_MAX]) {
  abs[0] = 0;
  if (path[0] != '/' && !getcwd(abs, PATH_MAX - 1))
    return mp__syserror("%s: getcwd", what);
  size_t cwd_len = strlen(abs);
  if (cwd_len && abs[cwd_len - 1] != '/')
    abs[cwd_len++] = '/';
  if (cwd_len + strlen(path) + 40 >= PATH_MAX) /* + ".XXXXXX/<pid>.<n>.ring" */
    return mp__error(MP_EINVAL, "%s: the path is too long", what);
  snprintf(abs + cwd_len, PATH_MAX - cwd_len, "%s", path);
  return 0;
}

/* Undoes a start whose files were opened: they and the directory go. */
static void discard(const char *dir) {
  forget_file(false);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    remove_dir(fd, dir);
    close(fd);
  }
}

/* Under T.lock, while this process does not trace: makes the trace's directory, this
 * process's files in it, LIBMP_TRACE_DIR and the placeholder at path, then turns recording
 * on; on an error, what it made is undone (path is touched only by a failed write of it). */
static int begin(const char *path) {
  char abs[PATH_MAX];
  int rc = absolute_path("mp_trace_start", path, abs);
  if (rc < 0)
    return rc;
  /* The events wait in memory (tmpfs), where appending costs a fraction of a disk's page
   * cache, and which outlives the program's processes until the merge or a reboot. */
  char dir[PATH_MAX] = SHM_DIR "XXXXXX";
  if (!mkdtemp(dir)) {
    if ((size_t)snprintf(dir, sizeof dir, "%s.XXXXXX", abs) >= sizeof dir || !mkdtemp(dir))
      return mp__syserror("mp_trace_start: making a directory %s", dir);
  }
  /* Opened here rather than at the first event, so that a failure (EMFILE, a full /dev/shm,
   * RLIMIT_FSIZE) is this call's error, not a trace that records none of this process's
   * events while mp_trace_enabled() says it does. */
  memcpy(T.dir, dir, sizeof T.dir);
  rc = open_files();
  if (rc < 0) {
    rmdir(dir);
    return mp__error(rc, "mp_trace_start: creating this process's event files in %s: %s", dir,
                     strerror(-rc));
  }
  /* In place if a trace was stopped before; else it adds a variable (the header says when
   * that is safe). */
  if (setenv(ENV_DIR, dir, 1) < 0) {
    rc = mp__syserror("mp_trace_start: setenv");
    discard(dir);
    return rc;
  }
  rc = write_placeholder(abs, dir);
  if (rc < 0) {
    setenv(ENV_DIR, "", 1); /* it exists now: emptied in place, as mp_trace_stop() does */
    discard(dir);
    return mp__error(rc, "mp_trace_start: writing %s: %s", abs,
                     rc == MP_EINVAL
                         ? "a symbolic or hard link, or not the caller's regular file"
                         : strerror(-rc));
  }
  memcpy(T.path, abs, sizeof T.path);
  T.top = true;
  atomic_store(&mp__trace_on, 1);
  return 0;
}

int mp_trace_start(const char *path) {
  if (!path || !*path)
    return mp__error(MP_EINVAL, "mp_trace_start: path is NULL or empty");
  /* Under T.lock, as mp_trace_stop(): another thread may stop a trace while this one starts
   * the next, and each checks whether this process traces, then changes that, T's names and
   * LIBMP_TRACE_DIR. */
  pthread_mutex_lock(&T.lock);
  int rc = MP__TRACING() ? mp__error(MP_EINVAL, "mp_trace_start: this process traces already")
                         : begin(path);
  pthread_mutex_unlock(&T.lock);
  if (rc == 0)
    announce();
  return rc;
}

/* Stops recording, if this process started the trace, and copies out the names its merge
 * reads: once T.lock is let go, a start in another thread rewrites T's. The check and the
 * clearing of mp__trace_on are one step under T.lock, so of two stops at once (a thread's
 * and the exit destructor's) one merges and the other is told the trace was stopped. The
 * winner counts its merge in T.merging in the same step (merge_stopped() uncounts it): an
 * exit told the trace was stopped then finds the merge to wait for. And in tls_merging
 * first: from here on the merge is this thread's, which an exit on it must not wait for. */
static int end_recording(char path[PATH_MAX], char dir[PATH_MAX]) {
  pthread_mutex_lock(&T.lock);
  bool on = MP__TRACING(), top = T.top;
  if (on && top) {
    tls_merging++;
    atomic_fetch_add(&T.merging, 1);
    atomic_store(&mp__trace_on, 0);
    /* Emptied, not removed: another thread's spawn may be copying environ (spawn.c's
     * child_environ), and unsetenv() shifts the entries under it (one lost or copied twice,
     * a NULL copied early). Replacing the value of a variable that exists is one pointer
     * store in place (glibc keeps the old string), safe to a concurrent reader; the exit
     * destructor stops the trace this way while the program's threads still run. Under
     * T.lock, so that it cannot empty the variable a next start has just set. */
    setenv(ENV_DIR, "", 1);
    forget_file(false);
    T.top = false;
    memcpy(path, T.path, PATH_MAX);
    memcpy(dir, T.dir, PATH_MAX);
  }
  pthread_mutex_unlock(&T.lock);
  if (!on || !top)
    return mp__error(MP_EINVAL, "mp_trace_stop: %s",
                     !on ? "not tracing" : "only the process that started the trace stops it");
  return 0;
}

/* The merge of a trace end_recording() stopped, counted until it is done. */
static int merge_stopped(const char *path, const char *dir) {
  int rc = merge_dir(path, dir);
  tls_merging--;
  atomic_fetch_sub(&T.merging, 1);
  return rc;
}

int mp_trace_stop(void) {
  char path[PATH_MAX], dir[PATH_MAX];
  int rc = end_recording(path, dir);
  return rc < 0 ? rc : merge_stopped(path, dir);
}

/* The directory an unfinished trace file names (write_placeholder()), unescaped. */
static int placeholder_dir(const char *path, char *dir, size_t cap) {
  char text[4 * PATH_MAX];
  /* O_NONBLOCK: a FIFO at the path (another user's, in a shared folder) would hold the open
   * for ever; anything but a file is no trace. */
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  struct stat st;
  if (fd < 0)
    return errno == ENOENT ? mp__error(MP_ENOENT, "mp_trace_merge: no file %s", path)
                           : mp__syserror("mp_trace_merge: opening %s", path);
  if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return mp__error(MP_ENOENT, "mp_trace_merge: %s is not a file", path);
  }
  size_t len = 0;
  for (ssize_t k; len < sizeof text - 1 && (k = read(fd, text + len, sizeof text - 1 - len)) > 0;)
    len += (size_t)k;
  close(fd);
  text[len] = 0;
  const char *p = strstr(text, "\"libmp_dir\":\"");
  if (!p)
    return mp__error(MP_ENOENT, "mp_trace_merge: %s is not an unfinished trace", path);
  size_t o = 0;
  for (p += strlen("\"libmp_dir\":\""); *p && *p != '"' && o + 1 < cap; p++) {
    unsigned c = (unsigned char)*p;
    if (c == '\\' && p[1] == 'u' && strspn(p + 2, "0123456789abcdefABCDEF") >= 4 &&
        sscanf(p + 2, "%4x", &c) == 1)
      p += 5;
    else if (c == '\\' && p[1])
      c = (unsigned char)*++p;
    dir[o++] = (char)c;
  }
  dir[o] = 0;
  return 0;
}

int mp_trace_merge(const char *path) {
  char dir[PATH_MAX], abs[PATH_MAX];
  if (!path || !*path)
    return mp__error(MP_EINVAL, "mp_trace_merge: path is NULL or empty");
  int rc = absolute_path("mp_trace_merge", path, abs);
  if (rc == 0)
    rc = placeholder_dir(abs, dir, sizeof dir);
  return rc < 0 ? rc : merge_dir(abs, dir);
}

/* ============================ the fork handler, start, end ============================ */

/* A forked child records into a file of its own, opened at its first event. Child text
 * (MP__CHILD_TEXT), as every fork-child handler: every child of the program runs it. */
MP__CHILD_TEXT static void after_fork_in_child(void) {
  /* Tracing or not, another thread of the parent may have been naming an object, or
   * starting or stopping a trace, at the fork: the child has no such thread, and its copy of
   * the lock would stay held for ever (a name half copied is the worst left). Written only
   * when held, so that a bare fork copies neither page. */
  mp__reset_lock(&T.lock);
  mp__reset_lock(&names.lock);
  /* A stop's merge that another thread of the parent runs goes on there, not here: this
   * child's exit must not wait for it. Written only when set, as the locks. */
  if (atomic_load_explicit(&T.merging, memory_order_relaxed))
    atomic_store_explicit(&T.merging, 0, memory_order_relaxed);
  /* Files without recording: forked in the middle of a start or a stop; the parent's. */
  if (!MP__TRACING() && !atomic_load_explicit(&T.head, memory_order_relaxed))
    return; /* untouched: not even its page is copied (method() tells a server's child) */
  forget_file(true);
  T.top = false;
  T.method = T.method == M_SERVER ? M_FORKSERVER : M_FORK;
  tls_tid = 0;
}

/* Called once by spawn.c's first constructor, with the role LIBMP_CHILD gave this image
 * once it was checked (NULL: none, the program's own main runs): see "start-up" there. */
void mp__trace_startup(const char *role) {
  pthread_atfork(NULL, NULL, after_fork_in_child);
  /* Read once here, so that their pages are mapped before any fork: the child handler reads
   * them in every forked child, a fault on a page this process never touched. */
  (void)*(volatile const char *)&T.lock;
  (void)*(volatile const char *)&T.head;
  (void)*(volatile const char *)&T.merging;
  (void)*(volatile const char *)&names.lock;
  if (role)
    T.method = strcmp(role, "spawn") == 0        ? M_SPAWN
               : strcmp(role, "forkserver") == 0 ? M_SERVER
                                                 : M_HELPER;
  if (T.method == M_SERVER)
    server_pid = getpid();
  /* Not for a setuid program: another user's environment must not make it write files. */
  const char *dir = secure_getenv(ENV_DIR);
  if (dir && *dir && strlen(dir) < sizeof T.dir) { /* empty: a trace that was stopped */
    memcpy(T.dir, dir, strlen(dir) + 1);
    atomic_store(&mp__trace_on, 1);
    if (T.method == M_SERVER) /* it has no event of its own: its lane shows it ran */
      mp__trace_process_child("ForkServer");
    return;
  }
  const char *path = secure_getenv("MP_TRACE");
  if (path && *path && !role && mp_trace_start(path) < 0)
    fprintf(stderr, "libmp: MP_TRACE=%s: %s\n", path, mp_last_error());
}

/* How long the exit waits for a thread's merge that takes no step (merge_steps). */
#define MERGE_STALL_NS INT64_C(2000000000)

/* At the exit, the merges of stops other threads run (T.merging, less those on this thread's
 * stack: a signal handler that exits in the middle of one, which can never end). exit()
 * would end them half done: the trace a placeholder, its directory and the merge's .tmp file
 * left. It waits while they take steps, and gives up after MERGE_STALL_NS without one (a
 * merge blocked in a read or a write for ever, a thread that cannot run), saying so. It
 * holds no lock and polls, so that a signal handler that exits again, or a signal that ends
 * the process, finds nothing taken; a forked child's copy of the count is cleared
 * (after_fork_in_child). */
static void wait_for_merges(void) {
  uint64_t seen = atomic_load(&merge_steps);
  int64_t since = mp__now_ns();
  while (atomic_load(&T.merging) > tls_merging) {
    uint64_t steps = atomic_load_explicit(&merge_steps, memory_order_relaxed);
    int64_t now = mp__now_ns();
    if (steps != seen) {
      seen = steps;
      since = now;
    } else if (now - since >= MERGE_STALL_NS) {
      fprintf(stderr,
              "libmp: exiting while another thread writes a trace that took no step "
              "for %d s: it stays unfinished (demos/timeline --repair FILE)\n",
              (int)(MERGE_STALL_NS / 1000000000));
      return;
    }
    nanosleep(&(struct timespec){0, 1000000}, NULL);
  }
}

/* The top's end: after every atexit handler (process.c's joins the children and stops the
 * fork server), since the loader runs destructors last. Then the merges of stops other
 * threads began. */
__attribute__((destructor)) static void trace_fini(void) {
  if (T.top && MP__TRACING()) {
    event_str(REC_EXIT, 1, 0, 0, NULL); /* its exit code is not known here */
    char path[PATH_MAX], dir[PATH_MAX];
    if (end_recording(path, dir) == 0 && merge_stopped(path, dir) < 0) /* else a thread's */
      fprintf(stderr, "libmp: writing the trace %s: %s\n", path, mp_last_error());
  }
  wait_for_merges();
}

/* ================================ the merge ================================ */

/*
 * Reads every process's file, sorts the records by time, and writes trace-event JSON, one
 * event a line (demos/timeline reads it line by line): waits, puts, gets, sends, receives
 * and chunks are complete ("X") events on the thread's lane; a lock's hold is an "X" event
 * on a lane of its own per (process, object, holding thread), where holds never overlap;
 * starts, exits, failures and marks are instant ("i") events.
 */

/* A small open-addressing map from three words to a number. */
typedef struct {
  uint64_t k[3];
  int64_t v;
  bool used;
} entry_t;

typedef struct {
  entry_t *e;
  size_t cap, n;
} map_t;

static size_t map_hash(uint64_t a, uint64_t b, uint64_t c) {
  uint64_t h = (a * UINT64_C(0x9e3779b97f4a7c15)) ^ (b + UINT64_C(0xbf58476d1ce4e5b9));
  h = (h ^ (h >> 31)) * UINT64_C(0x94d049bb133111eb) ^ c;
  return (size_t)(h ^ (h >> 29));
}

static int64_t *map_find(const map_t *m, uint64_t a, uint64_t b, uint64_t c) {
  if (!m->cap)
    return NULL;
  for (size_t j = map_hash(a, b, c) & (m->cap - 1); m->e[j].used; j = (j + 1) & (m->cap - 1))
    if (m->e[j].k[0] == a && m->e[j].k[1] == b && m->e[j].k[2] == c)
      return &m->e[j].v;
  return NULL;
}

/* The value of key, added with value *fresh (then *fresh is true) if absent; NULL when out
 * of memory. */
static int64_t *map_at(map_t *m, uint64_t a, uint64_t b, uint64_t c, int64_t init,
                       bool *fresh) {
  if (2 * (m->n + 1) > m->cap) {
    size_t cap = m->cap ? 2 * m->cap : 256;
    entry_t *e = calloc(cap, sizeof *e);
    if (!e)
      return NULL;
    for (size_t i = 0; i < m->cap; i++) {
      if (!m->e[i].used)
        continue;
      size_t j = map_hash(m->e[i].k[0], m->e[i].k[1], m->e[i].k[2]) & (cap - 1);
      while (e[j].used)
        j = (j + 1) & (cap - 1);
      e[j] = m->e[i];
    }
    free(m->e);
    m->e = e;
    m->cap = cap;
  }
  size_t j = map_hash(a, b, c) & (m->cap - 1);
  for (; m->e[j].used; j = (j + 1) & (m->cap - 1))
    if (m->e[j].k[0] == a && m->e[j].k[1] == b && m->e[j].k[2] == c) {
      *fresh = false;
      return &m->e[j].v;
    }
  m->e[j] = (entry_t){{a, b, c}, init, true};
  m->n++;
  *fresh = true;
  return &m->e[j].v;
}

/* Grows a vector to hold one more element: false when out of memory. */
static bool grow(void **v, size_t *cap, size_t n, size_t size) {
  if (n < *cap)
    return true;
  size_t c = *cap ? 2 * *cap : 64;
  void *p = c <= SIZE_MAX / size ? realloc(*v, c * size) : NULL;
  if (!p)
    return false;
  *v = p;
  *cap = c;
  return true;
}

typedef struct {
  const rec_t *r;
  int32_t pid;
} item_t;

typedef struct {
  int pid;
  int method, start_method; /* its own view; its parent's (-1 if none was recorded) */
  char name[STR_MAX], start_name[STR_MAX];
  int64_t first, last;
  size_t rank; /* its lane's place: the processes in order of their first event */
} proc_t;

/* An acquire, on two stacks of open holds: its thread's of the object (below[BY_THREAD])
 * and its process's (below[BY_PROCESS]); below[k] is the index of the hold under it, -1
 * for none. */
enum { BY_THREAD, BY_PROCESS };

typedef struct {
  uint64_t obj;
  int pid;
  uint32_t tid;
  int kind;
  int64_t ts;
  int64_t below[2];
  bool open; /* not released yet */
} hold_t;

typedef struct {
  FILE *f;
  size_t events;
  int64_t t0;
  item_t *items;
  size_t n_items, cap_items;
  proc_t *procs;
  size_t n_procs, cap_procs;
  map_t by_pid;  /* pid -> index in procs */
  map_t names;   /* address -> index in items of its REC_NAME */
  map_t numbers; /* (address, kind) -> its number */
  int counts[MP__TRK_KINDS];
  map_t lanes; /* (pid, address, tid) -> the lane of its holds */
  int64_t n_lanes;
  hold_t *holds; /* every acquire, in order */
  size_t n_holds, cap_holds;
  map_t tops; /* (pid, address, tid or ANY_THREAD) -> the index in holds of a stack's top */
  int64_t dropped;
  int64_t corrupt; /* records and ring counts left out: see wild() */
  bool oom;
} merge_t;

static proc_t *proc_of(merge_t *m, int pid) {
  bool fresh;
  int64_t *at = map_at(&m->by_pid, (uint64_t)pid, 0, 0, (int64_t)m->n_procs, &fresh);
  if (!at ||
      (fresh && !grow((void **)&m->procs, &m->cap_procs, m->n_procs, sizeof *m->procs))) {
    m->oom = true;
    return NULL;
  }
  if (fresh)
    m->procs[m->n_procs++] = (proc_t){pid, M_MAIN, -1, "", "", INT64_MAX, INT64_MIN, 0};
  return &m->procs[*at];
}

/* s as the body of a JSON string (no quotes) into out. */
static void json_escape(char *out, size_t cap, const char *s) {
  size_t o = 0;
  for (; *s && o + 7 < cap; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      o += (size_t)snprintf(out + o, cap - o, "\\%c", c);
    else if (c < 0x20 || c >= 0x7f) /* control bytes, and bytes a cut may have split */
      o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
    else
      out[o++] = (char)c;
  }
  out[o] = 0;
}

/* A record's string, terminated (a record's may fill its field) and escaped for JSON. */
static void rec_text(const rec_t *r, char *out, size_t cap) {
  char s[STR_MAX + 1];
  memcpy(s, r->u.str.s, STR_MAX);
  s[STR_MAX] = 0;
  json_escape(out, cap, s);
}

/* One event line. dur < 0: none. args: the body of the args object, or NULL. */
static void emit(merge_t *m, const char *ph, const char *cat, const char *name, int pid,
                 int64_t tid, int64_t ts, int64_t dur, const char *args) {
  char esc[512];
  step();
  json_escape(esc, sizeof esc, name);
  fprintf(m->f, "%s{\"name\":\"%s\",\"cat\":\"%s\",\"ph\":\"%s\",\"pid\":%d,\"tid\":%lld",
          m->events++ ? ",\n" : "", esc, cat, ph, pid, (long long)tid);
  if (ts != INT64_MIN)
    fprintf(m->f, ",\"ts\":%.3f", (double)(ts - m->t0) / 1e3);
  if (dur >= 0)
    fprintf(m->f, ",\"dur\":%.3f", (double)dur / 1e3);
  if (ph[0] == 'i')
    fputs(",\"s\":\"t\"", m->f);
  fprintf(m->f, ",\"args\":{%s}}", args ? args : "");
}

static void metadata(merge_t *m, const char *what, int pid, int64_t tid, const char *key,
                     const char *value) {
  char esc[256], args[300];
  json_escape(esc, sizeof esc, value);
  snprintf(args, sizeof args, "\"%s\":\"%s\"", key, esc);
  emit(m, "M", "__metadata", what, pid, tid, INT64_MIN, -1, args);
}

/* An object's name: the one given to its address, or "<Kind> <n>". */
static void object_name(merge_t *m, uint64_t obj, int kind, char *out, size_t cap) {
  const int64_t *named = map_find(&m->names, obj, 0, 0);
  if (named) {
    snprintf(out, cap, "%.*s", STR_MAX, m->items[*named].r->u.str.s);
    return;
  }
  kind = kind > 0 && kind < MP__TRK_KINDS ? kind : 0;
  bool fresh;
  int64_t *n = map_at(&m->numbers, obj, (uint64_t)kind, 0, m->counts[kind] + 1, &fresh);
  if (!n) {
    m->oom = true;
    snprintf(out, cap, "%s", kind_names[kind]);
    return;
  }
  m->counts[kind] += fresh;
  snprintf(out, cap, "%s %lld", kind_names[kind], (long long)*n);
}

static const char *process_label(const proc_t *p, char *out, size_t cap) {
  int method = p->start_method >= 0 ? p->start_method : p->method;
  const char *name = method == M_SERVER ? "ForkServer"
                     : p->name[0]       ? p->name
                     : p->start_name[0] ? p->start_name
                                        : "process";
  snprintf(out, cap, "%.*s (%s)", STR_MAX, name, method_names[method]);
  return out;
}

/* The first pass: names, processes and their labels, threads. */
static void learn(merge_t *m) {
  for (size_t i = 0; i < m->n_items && !m->oom; i++) {
    const rec_t *r = m->items[i].r;
    step();
    proc_t *p = proc_of(m, m->items[i].pid);
    if (!p)
      return;
    p->first = r->ts < p->first ? r->ts : p->first;
    p->last = r->ts > p->last ? r->ts : p->last;
    uint16_t type = atomic_load_explicit(&r->type, memory_order_relaxed);
    bool fresh;
    if (type == REC_NAME) {
      int64_t *at = map_at(&m->names, r->obj, 0, 0, (int64_t)i, &fresh);
      if (at)
        *at = (int64_t)i; /* the latest name wins */
      m->oom |= !at;
    } else if (type == REC_PROCESS) {
      snprintf(p->name, sizeof p->name, "%.*s", STR_MAX - 1, r->u.str.s);
      p->method = r->u.str.n >= 0 && r->u.str.n < M_COUNT ? (int)r->u.str.n : M_MAIN;
    } else if (type == REC_START || type == REC_REAPED) {
      proc_t *child = proc_of(m, (int)r->obj);
      if (!child)
        return;
      child->first = r->ts < child->first ? r->ts : child->first;
      child->last = r->ts > child->last ? r->ts : child->last;
      if (type == REC_START) {
        child->start_method = r->u.str.n >= 0 && r->u.str.n < M_COUNT ? (int)r->u.str.n : 0;
        snprintf(child->start_name, sizeof child->start_name, "%.*s", STR_MAX - 1, r->u.str.s);
      }
    }
  }
}

static void lane_hold(merge_t *m, const hold_t *h, int64_t end, const char *what,
                      bool unreleased) {
  char name[96], label[160], args[256];
  object_name(m, h->obj, h->kind, name, sizeof name);
  bool fresh;
  int64_t *lane = map_at(&m->lanes, (uint64_t)h->pid, h->obj, h->tid, 0, &fresh);
  if (!lane) {
    m->oom = true;
    return;
  }
  if (fresh) {
    /* Lanes number past any thread id (pid_max is at most 2^22). */
    *lane = 1000000000 + ++m->n_lanes;
    if (h->tid == (uint32_t)h->pid)
      snprintf(label, sizeof label, "%s: %s", what, name);
    else
      snprintf(label, sizeof label, "%s: %s (thread %u)", what, name, h->tid);
    metadata(m, "thread_name", h->pid, *lane, "name", label);
  }
  char esc[192];
  json_escape(esc, sizeof esc, name);
  snprintf(args, sizeof args, "\"object\":\"%s\",\"thread\":%u%s", esc, h->tid,
           unreleased ? ",\"unreleased\":true" : "");
  snprintf(label, sizeof label, "hold %s", name);
  emit(m, "X", "lock.hold", label, h->pid, *lane, h->ts, end - h->ts, args);
}

#define ANY_THREAD UINT64_MAX /* a key of tops past every tid: the process's stack */

/* Opens a hold for an acquire, on top of its thread's and its process's stacks. */
static void acquire(merge_t *m, const rec_t *r, int pid) {
  if (!grow((void **)&m->holds, &m->cap_holds, m->n_holds, sizeof *m->holds)) {
    m->oom = true;
    return;
  }
  int64_t i = (int64_t)m->n_holds++;
  hold_t *h = &m->holds[i];
  *h = (hold_t){r->obj, pid, r->tid, r->kind, r->ts, {-1, -1}, true};
  for (int k = BY_THREAD; k <= BY_PROCESS; k++) {
    bool fresh;
    int64_t *top = map_at(&m->tops, (uint64_t)pid, r->obj, k == BY_THREAD ? r->tid : ANY_THREAD,
                          -1, &fresh);
    if (!top) {
      m->oom = true;
      return;
    }
    h->below[k] = *top;
    *top = i;
  }
}

/* The latest open hold on stack k of the key, or -1. A hold released through the other
 * stack is still on this one: it is popped here, once, so that every release costs O(1)
 * amortized (a scan of the open holds made a producer/consumer trace quadratic). */
static int64_t open_top(merge_t *m, int k, int pid, uint64_t obj, uint64_t tid) {
  int64_t *top = map_find(&m->tops, (uint64_t)pid, obj, tid);
  if (!top)
    return -1;
  while (*top >= 0 && !m->holds[*top].open)
    *top = m->holds[*top].below[k];
  return *top;
}

/* A release by (pid, tid): closes that thread's latest hold of obj, else the process's
 * (a Semaphore may be released by another thread), else it is an instant event (one
 * released by another process). */
static void release(merge_t *m, const rec_t *r, int pid) {
  int64_t found = open_top(m, BY_THREAD, pid, r->obj, r->tid);
  if (found < 0)
    found = open_top(m, BY_PROCESS, pid, r->obj, ANY_THREAD);
  if (found < 0) {
    char name[96], label[128];
    object_name(m, r->obj, r->kind, name, sizeof name);
    snprintf(label, sizeof label, "release %s", name);
    emit(m, "i", "lock", label, pid, r->tid, r->ts, -1, NULL);
    return;
  }
  m->holds[found].open = false;
  lane_hold(m, &m->holds[found], r->ts, "held", false);
}

/* A complete event from t0 (0 if the call began before tracing did) to the record. */
static void span(merge_t *m, const rec_t *r, int pid, const char *verb, const char *cat,
                 const char *more) {
  char name[96], label[128], esc[192], args[320];
  object_name(m, r->obj, r->kind, name, sizeof name);
  snprintf(label, sizeof label, "%s %s", verb, name);
  int64_t t0 = r->u.v[0] > 0 && r->u.v[0] <= r->ts ? r->u.v[0] : r->ts;
  json_escape(esc, sizeof esc, name);
  snprintf(args, sizeof args, "\"object\":\"%s\"%s", esc, more);
  emit(m, "X", cat, label, pid, r->tid, t0, r->ts - t0, args);
}

static void one_event(merge_t *m, const rec_t *r, int pid) {
  char label[160], args[400], text[3 * STR_MAX * 2];
  uint16_t type = atomic_load_explicit(&r->type, memory_order_relaxed);
  switch (type) {
  case REC_THREAD: /* threads inherit the main one's name: the id tells them apart */
    snprintf(label, sizeof label, "%.*s", STR_MAX, r->u.str.s);
    if (r->tid != (uint32_t)pid)
      snprintf(label + strlen(label), sizeof label - strlen(label), " (thread %u)", r->tid);
    metadata(m, "thread_name", pid, r->tid, "name", label);
    break;
  case REC_ACQUIRED:
    if (r->u.v[1] < 0 && r->u.v[1] != MP_EOWNERDEAD) {
      snprintf(args, sizeof args, ",\"error\":\"%s\"", mp_err_name((int)r->u.v[1]));
      span(m, r, pid, "wait", "lock.wait", args); /* a wait that ended without the lock */
      break;
    }
    if (r->u.v[0] > 0 && r->u.v[0] <= r->ts)
      span(m, r, pid, "wait", "lock.wait", r->u.v[1] ? ",\"owner_died\":true" : "");
    acquire(m, r, pid);
    break;
  case REC_RELEASED:
    release(m, r, pid);
    break;
  case REC_WAITED:
    span(m, r, pid, "wait", "wait", r->u.v[1] ? "" : ",\"timed_out\":true");
    break;
  case REC_QUEUE_PUT:
  case REC_QUEUE_GET:
  case REC_SEND:
  case REC_RECV: {
    static const char *const verbs[] = {"put", "get", "send", "recv"};
    snprintf(args, sizeof args, ",\"bytes\":%lld,\"blocked_us\":%.3f%s%s%s",
             (long long)r->u.v[1],
             r->u.v[0] > 0 && r->u.v[0] <= r->ts ? (double)(r->ts - r->u.v[0]) / 1e3 : 0.0,
             r->u.v[2] < 0 ? ",\"error\":\"" : "",
             r->u.v[2] < 0 ? mp_err_name((int)r->u.v[2]) : "", r->u.v[2] < 0 ? "\"" : "");
    span(m, r, pid, verbs[type - REC_QUEUE_PUT], type <= REC_QUEUE_GET ? "queue" : "connection",
         args);
    break;
  }
  case REC_SHM: {
    static const char *const ops[] = {"shm", "shm create", "shm attach", "shm unlink"};
    rec_text(r, text, sizeof text);
    snprintf(label, sizeof label, "%s %.*s", ops[r->kind <= 3 ? r->kind : 0], STR_MAX,
             r->u.str.s);
    snprintf(args, sizeof args, "\"name\":\"%s\",\"size\":%lld", text, (long long)r->u.str.n);
    emit(m, "i", "shared_memory", label, pid, r->tid, r->ts, -1, args);
    break;
  }
  case REC_START: {
    const char *method = method_names[r->u.str.n >= 0 && r->u.str.n < M_COUNT ? r->u.str.n : 0];
    rec_text(r, text, sizeof text);
    snprintf(label, sizeof label, "start %.*s", STR_MAX, r->u.str.s);
    snprintf(args, sizeof args, "\"child\":%lld,\"name\":\"%s\",\"method\":\"%s\"",
             (long long)r->obj, text, method);
    emit(m, "i", "process", label, pid, r->tid, r->ts, -1, args);
    snprintf(args, sizeof args, "\"parent\":%d,\"method\":\"%s\"", pid, method);
    emit(m, "i", "process", "start", (int)r->obj, (int64_t)r->obj, r->ts, -1, args);
    break;
  }
  case REC_EXIT:
    if (r->kind)
      emit(m, "i", "process", "exit", pid, r->tid, r->ts, -1, NULL);
    else {
      snprintf(args, sizeof args, "\"exitcode\":%lld", (long long)r->u.str.n);
      emit(m, "i", "process", "exit", pid, r->tid, r->ts, -1, args);
    }
    break;
  case REC_REAPED: {
    int code = (int)r->u.v[0];
    if (r->u.v[1])
      snprintf(args, sizeof args, "\"exitcode\":null,\"by\":%d", pid);
    else if (code < 0)
      snprintf(args, sizeof args, "\"exitcode\":%d,\"signal\":%d,\"by\":%d", code, -code, pid);
    else
      snprintf(args, sizeof args, "\"exitcode\":%d,\"by\":%d", code, pid);
    snprintf(label, sizeof label, code < 0 ? "killed by signal %d" : "ended (exit code %d)",
             code < 0 ? -code : code);
    emit(m, "i", "process", r->u.v[1] ? "ended" : label, (int)r->obj, (int64_t)r->obj, r->ts,
         -1, args);
    break;
  }
  case REC_CHUNK: {
    uint64_t chunk_w = (uint64_t)r->u.v[1];
    int64_t t0 = r->u.v[4] > 0 && r->u.v[4] <= r->ts ? r->u.v[4] : r->ts;
    snprintf(label, sizeof label, "map %lld", (long long)r->u.v[0]);
    snprintf(args, sizeof args,
             "\"pool\":\"0x%llx\",\"map\":%lld,\"chunk\":%u,\"first\":%lld,\"count\":%lld,"
             "\"worker\":%u,\"status\":\"%s\"",
             (unsigned long long)r->obj, (long long)r->u.v[0], (uint32_t)chunk_w,
             (long long)r->u.v[2], (long long)r->u.v[3], (uint32_t)(chunk_w >> 32) + 1,
             r->kind == CHUNK_DONE ? "done" : "failed");
    emit(m, "X", "pool.chunk", label, pid, r->tid, t0, r->ts - t0, args);
    break;
  }
  case REC_TASK_FAILED:
    rec_text(r, text, sizeof text);
    snprintf(args, sizeof args, "\"map\":%llu,\"item\":%lld,\"message\":\"%s\"",
             (unsigned long long)r->obj, (long long)r->u.str.n, text);
    emit(m, "i", "pool", "task failed", pid, r->tid, r->ts, -1, args);
    break;
  case REC_WORKER_END: {
    uint32_t w = (uint32_t)r->u.str.n;
    int code = (int)(uint32_t)((uint64_t)r->u.str.n >> 32);
    rec_text(r, text, sizeof text);
    snprintf(label, sizeof label, "worker %u %s%s", w + 1, code ? "lost" : "ended",
             r->kind ? ", replaced" : "");
    snprintf(args, sizeof args,
             "\"worker\":%u,\"pid\":%lld,\"exitcode\":%d,\"replaced\":%s,\"why\":\"%s\"", w + 1,
             (long long)r->obj, code, r->kind ? "true" : "false", text);
    emit(m, "i", "pool", label, pid, r->tid, r->ts, -1, args);
    break;
  }
  case REC_MARK:
    snprintf(label, sizeof label, "%.*s", STR_MAX, r->u.str.s);
    emit(m, "i", "mark", label, pid, r->tid, r->ts, -1, NULL);
    break;
  default: /* REC_PROCESS and REC_NAME were read by learn(); unknown types are skipped */
    break;
  }
}

static int by_time(const void *a, const void *b) {
  const item_t *x = a, *y = b;
  step();
  if (x->r->ts != y->r->ts)
    return x->r->ts < y->r->ts ? -1 : 1;
  return x->r < y->r ? -1 : x->r > y->r; /* a file's records in their order */
}

/* Past any CLOCK_MONOTONIC reading (146 years of uptime); the difference of two timestamps
 * in [0, TS_LIMIT) fits in int64. */
#define TS_LIMIT (INT64_C(1) << 62)

/* Whether a record holds a word no process writes. The files come from processes that may
 * have been killed while writing or scribbled on their mapped ring: a timestamp outside
 * [0, TS_LIMIT) would overflow ts - t0 and a hold's end - start, and a reaped child's exit
 * code outside -127..255 (minus a signal, or a status) is none, INT_MIN overflowing -code.
 * Such a record is left out and counted; the rest of the trace is written. */
static bool wild(const rec_t *r) {
  if (r->ts < 0 || r->ts >= TS_LIMIT)
    return true;
  return atomic_load_explicit(&r->type, memory_order_relaxed) == REC_REAPED &&
         (r->u.v[0] < -127 || r->u.v[0] > 255);
}

/* Adds the records of one process's file (its whole contents in recs) to the merge;
 * dropped is its ring's count, -1 if wild (read_process). */
static void add_file(merge_t *m, const rec_t *recs, size_t n, int64_t dropped) {
  if (n == 0 || atomic_load_explicit(&recs[0].type, memory_order_relaxed) != REC_HEADER ||
      recs[0].u.v[2] != MAGIC)
    return; /* not a trace file, or one whose process died before its header */
  int pid = (int)recs[0].obj;
  proc_t *p = proc_of(m, pid);
  if (!p)
    return;
  p->method = recs[0].u.v[1] >= 0 && recs[0].u.v[1] < M_COUNT ? (int)recs[0].u.v[1] : M_MAIN;
  if (dropped < 0)
    m->corrupt++;
  else /* capped: many processes' counts */
    m->dropped = dropped > INT64_MAX - m->dropped ? INT64_MAX : m->dropped + dropped;
  for (size_t i = 1; i < n; i++) {
    if (!atomic_load_explicit(&recs[i].type, memory_order_relaxed))
      continue;
    if (wild(&recs[i])) {
      m->corrupt++;
      continue;
    }
    if (!grow((void **)&m->items, &m->cap_items, m->n_items, sizeof *m->items)) {
      m->oom = true;
      return;
    }
    m->items[m->n_items++] = (item_t){&recs[i], pid};
  }
}

/* Reads one file whole, with room for `extra` more records: its records, or NULL (*n = 0)
 * if it cannot be read. */
static rec_t *read_file(int dir_fd, const char *name, size_t extra, size_t *n) {
  *n = 0;
  /* O_NONBLOCK: a FIFO planted under a process file's name would hold the open for ever. */
  int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  struct stat st;
  if (fd < 0)
    return NULL;
  size_t size = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? (size_t)st.st_size : 0;
  size -= size % sizeof(rec_t);
  rec_t *recs = size && size / sizeof(rec_t) <= SIZE_MAX / sizeof(rec_t) - extra
                    ? malloc(size + extra * sizeof(rec_t))
                    : NULL;
  size_t got = 0;
  while (recs && got < size) {
    ssize_t k = read(fd, (char *)recs + got, size - got);
    if (k <= 0)
      break;
    got += (size_t)k;
  }
  close(fd);
  *n = got / sizeof(rec_t);
  return recs;
}

/* A process's events: its log (<pid>.<n>.bin, named by log), then those of its ring that the
 * log does not hold yet, in order; *dropped from the ring's header, -1 if it is a count the
 * process cannot have written. NULL if none. */
static rec_t *read_process(int dir_fd, const char *log, size_t *n, int64_t *dropped) {
  char ring_name[NAME_MAX + 1];
  size_t len = strlen(log) - strlen(".bin"), n_ring;
  snprintf(ring_name, sizeof ring_name, "%.*s.ring", (int)len, log);
  rec_t *recs = read_file(dir_fd, log, RING_RECS, n);
  rec_t *ring = recs ? read_file(dir_fd, ring_name, 0, &n_ring) : NULL;
  *dropped = 0;
  if (ring && n_ring == RING_RECS + 1 && ((ring_head_t *)ring)->magic == MAGIC) {
    const ring_head_t *h = (const ring_head_t *)ring;
    uint64_t next = atomic_load(&h->next), logged = *n - 1; /* the log's header is no event */
    int64_t lost = atomic_load(&h->dropped);
    *dropped = lost >= 0 && (uint64_t)lost <= next ? lost : -1; /* it counts events taken */
    /* The ring holds the last RING_RECS events at most; a block the process appended just
     * before it died is in the log and is not taken twice. */
    for (uint64_t i = logged + RING_RECS < next ? next - RING_RECS : logged; i < next; i++) {
      const rec_t *r = &ring[1 + i % RING_RECS];
      if (atomic_load_explicit(&r->type, memory_order_relaxed))
        memcpy(&recs[(*n)++], r, sizeof *r);
    }
  }
  free(ring);
  return recs;
}

static int by_first(const void *a, const void *b) {
  const proc_t *x = *(const proc_t *const *)a, *y = *(const proc_t *const *)b;
  if (x->first != y->first)
    return x->first < y->first ? -1 : 1;
  return x < y ? -1 : x > y; /* a tie in order of appearance: the same lanes every time */
}

/* Ranks the processes' lanes by one sort (counting, for each, those before it was
 * quadratic: a log naming 60 000 processes took 11 s). */
static void rank_processes(merge_t *m) {
  proc_t **order = m->n_procs ? calloc(m->n_procs, sizeof *order) : NULL;
  if (!order) {
    m->oom |= m->n_procs > 0;
    return;
  }
  for (size_t i = 0; i < m->n_procs; i++)
    order[i] = &m->procs[i];
  qsort(order, m->n_procs, sizeof *order, by_first);
  for (size_t i = 0; i < m->n_procs; i++)
    order[i]->rank = i;
  free(order);
}

static void write_trace(merge_t *m) {
  if (m->n_items) /* items is NULL when there are none */
    qsort(m->items, m->n_items, sizeof *m->items, by_time);
  m->t0 = m->n_items ? m->items[0].r->ts : 0;
  learn(m);
  rank_processes(m);
  fputs("{\"traceEvents\":[\n", m->f);
  char label[96];
  for (size_t i = 0; i < m->n_procs; i++) {
    const proc_t *p = &m->procs[i];
    metadata(m, "process_name", p->pid, 0, "name", process_label(p, label, sizeof label));
    snprintf(label, sizeof label, "\"sort_index\":%zu", p->rank);
    emit(m, "M", "__metadata", "process_sort_index", p->pid, 0, INT64_MIN, -1, label);
  }
  for (size_t i = 0; i < m->n_items; i++)
    one_event(m, m->items[i].r, m->items[i].pid);
  /* Holds never released: their process ended (or was killed) holding them. */
  for (size_t j = 0; j < m->n_holds; j++) {
    if (!m->holds[j].open)
      continue;
    const proc_t *p = proc_of(m, m->holds[j].pid);
    lane_hold(m, &m->holds[j], p ? p->last : m->holds[j].ts, "held", true);
  }
  fprintf(m->f,
          "\n],\n\"displayTimeUnit\":\"ms\",\n\"otherData\":{\"libmp_trace\":1,"
          "\"processes\":%zu,\"records\":%zu,\"dropped\":%lld,\"corrupt\":%lld}}\n",
          m->n_procs, m->n_items, (long long)m->dropped, (long long)m->corrupt);
}

/* Whether name is what mkdtemp() made of prefix + "XXXXXX". */
static bool made_from(const char *name, const char *prefix) {
  size_t len = strlen(prefix);
  if (strncmp(name, prefix, len) != 0 || strlen(name) != len + 6)
    return false;
  for (name += len; *name; name++)
    if (!(*name >= '0' && *name <= '9') && !(*name >= 'a' && *name <= 'z') &&
        !(*name >= 'A' && *name <= 'Z'))
      return false;
  return true;
}

/* Opens the events' directory of the trace at path (absolute), a descriptor or an error.
 * The name comes from a file that anyone who can write it may have edited, and the merge
 * deletes from the directory: only one mp_trace_start() makes (/dev/shm/libmp-trace-XXXXXX,
 * or path.XXXXXX), the caller's, private (0700), is taken. */
static int open_events_dir(const char *path, const char *dir) {
  char beside[PATH_MAX];
  snprintf(beside, sizeof beside, "%s.", path);
  if (!made_from(dir, SHM_DIR) && !made_from(dir, beside))
    return mp__error(MP_EINVAL,
                     "mp_trace_merge: %s names %s, which is no directory libmp makes for it "
                     "(" SHM_DIR "XXXXXX or %s.XXXXXX)",
                     path, dir, path);
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return errno == ENOENT ? mp__error(MP_ENOENT, "mp_trace_merge: no directory %s", dir)
                           : mp__syserror("mp_trace_merge: opening %s", dir);
  struct stat st;
  if (fstat(fd, &st) < 0) {
    int rc = mp__syserror("mp_trace_merge: fstat %s", dir);
    close(fd);
    return rc;
  }
  if (st.st_uid != geteuid() || (st.st_mode & 07777) != 0700) {
    close(fd);
    return mp__error(MP_EINVAL,
                     "mp_trace_merge: %s is not the caller's private directory (owner %d, "
                     "mode %o; libmp makes it with owner %d, mode 700)",
                     dir, (int)st.st_uid, (unsigned)(st.st_mode & 07777), (int)geteuid());
  }
  return fd;
}

static int merge_dir(const char *path, const char *dir) {
  char tmp[PATH_MAX];
  int dir_fd = open_events_dir(path, dir);
  if (dir_fd < 0)
    return dir_fd;
  int fd = dup(dir_fd);
  DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
  if (!d) {
    int rc = mp__syserror("mp_trace_merge: reading %s", dir);
    if (fd >= 0)
      close(fd);
    close(dir_fd);
    return rc;
  }
  merge_t m = {0};
  rec_t **files = NULL;
  size_t n_files = 0, cap_files = 0;
  struct dirent *e;
  while ((e = readdir(d)) && !m.oom) {
    size_t len = strlen(e->d_name), n;
    if (len < 5 || strcmp(e->d_name + len - 4, ".bin") != 0)
      continue;
    int64_t dropped;
    step();
    rec_t *recs = read_process(dirfd(d), e->d_name, &n, &dropped);
    if (!recs)
      continue;
    if (!grow((void **)&files, &cap_files, n_files, sizeof *files)) {
      free(recs);
      m.oom = true;
      break;
    }
    files[n_files++] = recs;
    add_file(&m, recs, n, dropped);
  }
  closedir(d);
  int rc = 0;
  /* A new file of a name nobody can guess, in the trace's folder (rename() stays there):
   * one taken in advance in a shared folder would make its owner the trace's. */
  snprintf(tmp, sizeof tmp, "%s.XXXXXX.tmp", path);
  fd = m.oom ? -1 : mkostemps(tmp, 4, O_CLOEXEC);
  bool made = fd >= 0;
  if (m.oom)
    rc = mp__error(MP_ENOMEM, "mp_trace_merge: no memory for %zu records", m.n_items);
  else if (fd < 0 || fchmod(fd, 0644) < 0 || !(m.f = fdopen(fd, "w")))
    rc = mp__syserror("mp_trace_merge: creating %s", tmp);
  if (rc == 0) {
    write_trace(&m);
    bool bad = ferror(m.f);
    if (fclose(m.f) != 0 || bad)
      rc = mp__syserror("mp_trace_merge: writing %s", tmp);
    else if (m.oom)
      rc = mp__error(MP_ENOMEM, "mp_trace_merge: no memory for %zu records", m.n_items);
    else if (rename(tmp, path) < 0)
      rc = mp__syserror("mp_trace_merge: renaming %s to %s", tmp, path);
    fd = -1;
  }
  if (fd >= 0)
    close(fd);
  if (rc < 0 && made)
    unlink(tmp);
  else if (rc == 0)
    remove_dir(dir_fd, dir);
  close(dir_fd);
  for (size_t i = 0; i < n_files; i++)
    free(files[i]);
  free(files);
  free(m.items);
  free(m.procs);
  free(m.holds);
  free(m.tops.e);
  free(m.by_pid.e);
  free(m.names.e);
  free(m.numbers.e);
  free(m.lanes.e);
  return rc;
}
