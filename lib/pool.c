/*
 * The Pool, Python's multiprocessing.Pool: the API, async results, iterators, and the
 * supervisor. Three rooms with one-way doors: this file drives the job table (pool_jobs.h),
 * which owns the shared job block and its protocol, and a launcher (pool_launcher.h), which
 * owns the workers and reports their starts and ends through the events given to it.
 *
 * The supervisor is one thread running a libuv loop. It starts the workers and replaces
 * those that end, tells the job table which worker was lost (it fails or requeues what that
 * worker ran), runs the callbacks of async results, frees the jobs whose last reference a
 * worker dropped, and carries out terminate. It is woken by an eventfd that workers write (a
 * job with callbacks completed, a worker changed state, a job block is free), by the
 * launcher's watchers and by uv_async requests from the user's threads. It is never on the
 * path of a task: submitters publish jobs in the shared arena and wait on them directly.
 */
#include "pool_jobs.h"
#include "trace.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include <uv.h>

/* How long terminate waits for the workers' ends before it gives up on them. */
#define TERMINATE_WAIT_NS 5000000000ll
#define TIMER_MS 100
/* Failed starts in a row, with no worker ready, that end creation or the pool. */
#define MAX_START_FAILURES 5
/* A live pool's first word; cleared when it is destroyed. */
#define POOL_MAGIC 0x5b706d2d706f6f6cull /* "loop-mp[" */

enum { REQ_TERMINATE = 1, REQ_STOP = 2 };

struct mp_pool_s {
  uint64_t magic;
  mp__jobs_t *jobs;
  uint32_t n_workers;
  const mp__launcher_ops_t *launcher;
  void *launcher_state;
  mp_context_t *ctx;
  int event_fd;
  uint64_t event_key;
  pthread_mutex_t lock;         /* the callback list */
  mp_async_result_t *callbacks; /* results whose callbacks have not run */
  _Atomic int callback_errors;
  bool *running; /* by worker: started and not yet ended */
  uint32_t live;
  uint32_t start_failures; /* in a row */
  bool launcher_closed;
  /* The supervisor. */
  pthread_t thread;
  bool thread_started;
  uv_loop_t loop;
  uv_async_t async;
  uv_poll_t event_poll;
  uv_timer_t timer;
  _Atomic uint32_t requests;
  _Atomic uint32_t progress; /* futex: bumped when the workers are all gone */
  _Atomic bool all_ended;
  _Atomic bool creating;
  _Atomic int create_rc;
  char create_msg[2 * MP__POOL_MSG];
  char why_terminated[3 * MP__POOL_MSG]; /* "" for mp_pool_terminate() */
  bool joined;
  bool loop_open;
  pid_t owner;                 /* the process that made it */
  struct mp_pool_s *next_live; /* the program's live pools, ended at exit */
};

struct mp_async_result_s {
  mp_pool_t *pool;
  mp__job_t *job;
  mp_async_callbacks_t callbacks;
  bool has_callbacks;
  _Atomic uint32_t refs; /* the owner's, and the callback list's */
  bool is_apply;         /* its result has the task's length, not n * result_size */
  mp_async_result_t *next;
};

typedef struct lazy_s lazy_t;

struct mp_imap_s {
  mp_pool_t *pool;
  mp__job_t *job; /* NULL for a lazy iterator, whose batches are iterators of their own */
  lazy_t *lazy;
  char *scratch; /* a variable-size result as the job holds it: its length, then its bytes */
  const char *items;
  bool ordered;
  uint32_t next_chunk; /* ordered: the chunk to deliver next */
  int64_t active;      /* the chunk being delivered, or -1 */
  uint64_t item;       /* its next item */
  uint32_t taken;      /* chunks delivered whole */
};

/* Use after destroy is undefined, but a destroyed pool's magic word is gone: abort there
 * rather than act on freed memory. */
static void check_pool(const mp_pool_t *pool, const char *what) {
  if (pool && pool->magic != POOL_MAGIC) {
    fprintf(stderr, "libmp: %s: %p is not a live pool (used after mp_pool_destroy?)\n", what,
            (const void *)pool);
    abort();
  }
}

static bool on_supervisor(const mp_pool_t *pool) {
  return pool->thread_started && pthread_equal(pthread_self(), pool->thread);
}

static void request(mp_pool_t *pool, uint32_t what) {
  atomic_fetch_or(&pool->requests, what);
  uv_async_send(&pool->async);
}

static bool terminated(const mp_pool_t *pool) {
  return mp__jobs_flags(pool->jobs) & MP__POOL_TERMINATED;
}

/* ---------------------------- the supervisor ---------------------------- */

static void start_worker(mp_pool_t *pool, uint32_t w);

static void describe_end(mp_pool_t *pool, uint32_t w, int exitcode, char *buf, size_t cap) {
  int pid = mp__jobs_worker_pid(pool->jobs, w);
  const char *why = mp__jobs_worker_error(pool->jobs, w);
  /* The common mistake: a pointer of the parent's in an item, which a worker that does not
   * share or copy the parent's memory reads as garbage. It cannot be told from a bug in
   * the task: a hint, not a verdict. */
  const char *method = mp_context_start_method(pool->ctx);
  bool own_memory = method && (!strcmp(method, "spawn") || !strcmp(method, "forkserver"));
  if (exitcode < 0)
    snprintf(buf, cap, "worker %u (pid %d) was killed by signal %d (%s)%s", w + 1, pid,
             -exitcode, strsignal(-exitcode),
             own_memory && (-exitcode == SIGSEGV || -exitcode == SIGBUS)
                 ? "; under spawn and forkserver a pointer of the parent's in an item "
                   "points at nothing in the worker: send the bytes"
                 : "");
  else
    snprintf(buf, cap, "worker %u (pid %d) exited with status %d%s%.200s", w + 1, pid, exitcode,
             exitcode && why[0] ? ": " : "", exitcode ? why : "");
}

static void end_create(mp_pool_t *pool, int rc, const char *msg) {
  if (!atomic_load(&pool->creating))
    return;
  if (rc < 0 && atomic_load(&pool->create_rc) == 0) {
    snprintf(pool->create_msg, sizeof pool->create_msg, "%s", msg);
    atomic_store(&pool->create_rc, rc);
  }
  mp__jobs_wake_status(pool->jobs);
}

static void maybe_all_ended(mp_pool_t *pool) {
  uint32_t flags = mp__jobs_flags(pool->jobs);
  if (pool->live > 0 || !(flags & (MP__POOL_CLOSED | MP__POOL_TERMINATED)))
    return;
  if ((flags & MP__POOL_CLOSED) && !(flags & MP__POOL_TERMINATED) &&
      mp__jobs_work_left(pool->jobs))
    return;
  if (!pool->launcher_closed) {
    pool->launcher_closed = true;
    pool->launcher->close(pool->launcher_state);
  }
  atomic_store(&pool->all_ended, true);
  atomic_fetch_add(&pool->progress, 1);
  mp__futex_wake(&pool->progress, INT32_MAX);
}

static void do_terminate(mp_pool_t *pool) {
  pool->launcher->stop(pool->launcher_state);
  mp__jobs_abort_all(pool->jobs, MP_ETERMINATED);
  maybe_all_ended(pool);
}

__attribute__((format(printf, 2, 3))) static void terminate_because(mp_pool_t *pool,
                                                                   const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pool->why_terminated, sizeof pool->why_terminated, fmt, ap);
  va_end(ap);
  mp__jobs_set_flag(pool->jobs, MP__POOL_TERMINATED);
  do_terminate(pool);
}

/* A worker could not be started, or died before it was ready (a lost start, not a failed
 * initializer: a kill from outside, or out of memory): the timer tries again. Only when
 * MAX_START_FAILURES starts in a row failed with no worker ready (out of processes, a
 * broken executable, a worker killed at every start) does nothing ever run the work: then
 * creation fails, or the pool is terminated, as for an initializer that fails. */
static void start_failed(mp_pool_t *pool, uint32_t w, int rc, const char *msg) {
  mp__jobs_worker_gone(pool->jobs, w);
  if (++pool->start_failures < MAX_START_FAILURES || terminated(pool))
    return;
  char why[2 * MP__POOL_MSG];
  snprintf(why, sizeof why, "%u starts in a row failed, the last: %s (%s)",
           pool->start_failures, msg, mp_err_name(rc));
  if (atomic_load(&pool->creating))
    end_create(pool, rc, why);
  else if (mp__jobs_ready(pool->jobs) == 0)
    terminate_because(pool, ": no worker is ready and %s", why);
}

static bool replacements_wanted(mp_pool_t *pool) {
  uint32_t flags = mp__jobs_flags(pool->jobs);
  return !(flags & MP__POOL_TERMINATED) && !atomic_load(&pool->create_rc) &&
         (!(flags & MP__POOL_CLOSED) || mp__jobs_work_left(pool->jobs)) &&
         !(atomic_load(&pool->requests) & REQ_STOP);
}

/* Events of the launcher. */

static void worker_started(void *arg, uint32_t w, int pid) {
  mp_pool_t *pool = arg;
  mp__jobs_worker_started(pool->jobs, w, pid);
}

static void worker_start_failed(void *arg, uint32_t w, int rc, const char *why) {
  mp_pool_t *pool = arg;
  if (!pool->running[w])
    return;
  pool->running[w] = false;
  pool->live--;
  end_create(pool, rc, why); /* a launcher's error at creation is final */
  start_failed(pool, w, rc, why);
  maybe_all_ended(pool);
}

/* A worker has ended: fail (or requeue) what it ran, replace it if work remains. */
static void worker_ended(void *arg, uint32_t w, int exitcode) {
  mp_pool_t *pool = arg;
  if (!pool->running[w])
    return;
  pool->running[w] = false;
  pool->live--;
  uint32_t state = mp__jobs_worker_state(pool->jobs, w);
  bool ended_by_terminate = terminated(pool);
  char msg[2 * MP__POOL_MSG];
  describe_end(pool, w, exitcode, msg, sizeof msg);
  if (state == MP__WORKER_INIT_FAILED) {
    char init_msg[2 * MP__POOL_MSG];
    snprintf(init_msg, sizeof init_msg, "the initializer failed: %s",
             mp__jobs_worker_error(pool->jobs, w));
    if (atomic_load(&pool->creating))
      end_create(pool, MP_ETASK, init_msg);
    else if (!ended_by_terminate) /* none can start, and Python would respawn it forever */
      terminate_because(pool, ": a replacement worker could not start: %s", init_msg);
  } else if (state == MP__WORKER_STARTING && !ended_by_terminate) {
    char lost[2 * MP__POOL_MSG + 32];
    snprintf(lost, sizeof lost, "%s before it was ready", msg);
    start_failed(pool, w, MP_EWORKERDIED, lost);
  } else if (state != MP__WORKER_RETIRED && state != MP__WORKER_DONE && !ended_by_terminate) {
    mp__jobs_worker_lost(pool->jobs, w, msg);
  }
  bool was_ready = state != MP__WORKER_STARTING && state != MP__WORKER_INIT_FAILED;
  if (was_ready)
    pool->start_failures = 0; /* it was started: starts work */
  mp__jobs_worker_gone(pool->jobs, w);
  mp__jobs_reclaim(pool->jobs);
  MP__TRACE(pool_worker_end, mp__jobs_shared(pool->jobs), w,
            mp__jobs_worker_pid(pool->jobs, w), exitcode, msg,
            was_ready && replacements_wanted(pool));
  /* A lost start is retried by the timer: at its pace, not in a loop of deaths. */
  if (was_ready && replacements_wanted(pool))
    start_worker(pool, w);
  maybe_all_ended(pool);
}

/* The launcher cannot start workers any more: nothing could replace a worker. */
static void launcher_broken(void *arg, const char *why) {
  mp_pool_t *pool = arg;
  if (terminated(pool))
    return; /* told to end: it did */
  end_create(pool, MP_EWORKERDIED, why);
  terminate_because(pool, ": %s", why);
}

static void start_worker(mp_pool_t *pool, uint32_t w) {
  if (terminated(pool))
    return; /* by the failed start of another worker, say */
  mp__jobs_worker_starting(pool->jobs, w);
  int pid = 0;
  int rc = pool->launcher->start(pool->launcher_state, w, &pid);
  if (rc < 0) {
    char msg[MP__POOL_MSG];
    snprintf(msg, sizeof msg, "%s", mp_last_error());
    end_create(pool, rc, msg); /* a launcher's error at creation is final */
    start_failed(pool, w, rc, msg);
    return;
  }
  if (pid > 0)
    mp__jobs_worker_started(pool->jobs, w, pid);
  pool->running[w] = true;
  pool->live++;
}

/* Callbacks of completed results, in the parent, one at a time. */
static void run_callbacks(mp_pool_t *pool) {
  for (;;) {
    pthread_mutex_lock(&pool->lock);
    mp_async_result_t **link = &pool->callbacks, *ar = NULL;
    for (; *link; link = &(*link)->next) {
      if (mp__job_complete((*link)->job)) {
        ar = *link;
        *link = ar->next;
        break;
      }
    }
    pthread_mutex_unlock(&pool->lock);
    if (!ar)
      return;
    int outcome = mp_async_result_get(ar, NULL, 0, NULL, 0);
    mp_result_cb_t cb = outcome == 0 || outcome == MP_ETOOSMALL ? ar->callbacks.callback
                                                                : ar->callbacks.error_callback;
    if (cb && cb(ar, ar->callbacks.user_data) != 0)
      atomic_fetch_add(&pool->callback_errors, 1);
    mp__job_callbacks_done(ar->job);
    mp_async_result_free(ar); /* the list's reference */
  }
}

static void on_event(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  mp_pool_t *pool = handle->data;
  uint64_t count;
  while (read(pool->event_fd, &count, sizeof count) > 0)
    ;
  run_callbacks(pool);
  mp__jobs_reclaim(pool->jobs);
  maybe_all_ended(pool);
}

static void on_timer(uv_timer_t *handle) {
  mp_pool_t *pool = handle->data;
  run_callbacks(pool); /* in case a worker died before it could say a job was complete */
  mp__jobs_reclaim(pool->jobs);
  if (!replacements_wanted(pool))
    return;
  for (uint32_t w = 0; w < pool->n_workers; w++)
    if (!pool->running[w])
      start_worker(pool, w);
}

static void close_handle(uv_handle_t *handle, void *arg) {
  (void)arg;
  if (!uv_is_closing(handle))
    uv_close(handle, NULL);
}

static void on_request(uv_async_t *handle) {
  mp_pool_t *pool = handle->data;
  uint32_t req = atomic_exchange(&pool->requests, 0);
  if (req & REQ_TERMINATE)
    do_terminate(pool);
  if (req & REQ_STOP) {
    atomic_fetch_or(&pool->requests, REQ_STOP); /* no more replacements */
    uv_walk(&pool->loop, close_handle, NULL);
  }
  run_callbacks(pool);
  maybe_all_ended(pool);
}

static void *supervisor_main(void *arg) {
  mp_pool_t *pool = arg;
  uv_run(&pool->loop, UV_RUN_DEFAULT);
  return NULL;
}

static int start_supervisor(mp_pool_t *pool) {
  int rc = uv_async_init(&pool->loop, &pool->async, on_request);
  if (rc == 0)
    rc = uv_poll_init(&pool->loop, &pool->event_poll, pool->event_fd);
  if (rc == 0)
    rc = uv_timer_init(&pool->loop, &pool->timer);
  if (rc < 0)
    return mp__error(rc, "starting the pool's event loop: %s", uv_strerror(rc));
  pool->async.data = pool->event_poll.data = pool->timer.data = pool;
  uv_poll_start(&pool->event_poll, UV_READABLE, on_event);
  uv_timer_start(&pool->timer, on_timer, TIMER_MS, TIMER_MS);
  if ((rc = pool->launcher->watch(pool->launcher_state)) < 0)
    return rc;
  rc = mp__start_quiet_thread(&pool->thread, supervisor_main, pool);
  pool->thread_started = rc == 0;
  return rc;
}

/* ------------------------------ the pool ------------------------------ */

static int wait_all_ended(mp_pool_t *pool, int64_t deadline) {
  for (;;) {
    uint32_t seen = atomic_load(&pool->progress);
    if (atomic_load(&pool->all_ended))
      return 0;
    if (mp__futex_wait(&pool->progress, seen, deadline) == MP_ETIMEDOUT)
      return atomic_load(&pool->all_ended) ? 0 : MP_ETIMEDOUT;
  }
}

/* Waits until every worker is ready, or creation failed. */
static int await_workers(mp_pool_t *pool) {
  _Atomic uint32_t *status = mp__jobs_status_word(pool->jobs);
  for (;;) {
    uint32_t seen = atomic_load(status);
    int rc = atomic_load(&pool->create_rc);
    if (rc < 0)
      return mp__error(rc, "mp_pool_create: %s", pool->create_msg);
    for (uint32_t w = 0; w < pool->n_workers; w++)
      if (mp__jobs_worker_state(pool->jobs, w) == MP__WORKER_INIT_FAILED)
        return mp__error(MP_ETASK, "mp_pool_create: the initializer failed in worker %u: %s",
                         w + 1, mp__jobs_worker_error(pool->jobs, w));
    if (mp__jobs_ready(pool->jobs) == pool->n_workers)
      return 0;
    mp__futex_wait(status, seen, INT64_MAX);
  }
}

static int check_options(const mp_pool_options_t *o, int *processes) {
  *processes = o->processes == MP_POOL_CPU_COUNT ? mp_cpu_count() : o->processes;
  if (*processes < 1 || *processes > MP__POOL_MAX_WORKERS)
    return mp__error(MP_EINVAL, "mp_pool_create: %d processes: a pool needs 1 to %d",
                     o->processes, MP__POOL_MAX_WORKERS);
  if (!o->initargs && o->initargs_size)
    return mp__error(MP_EINVAL, "mp_pool_create: initargs is NULL but its size is %zu",
                     o->initargs_size);
  return 0;
}

/* Pools left running at exit are destroyed first, as Python's finalizer terminates them:
 * then the process layer's exit handler, which runs after this one, finds no worker left
 * that a supervisor thread could be closing under it. */
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static mp_pool_t *live_pools;

/* Adds or removes a pool; false if it was to be removed and is not there (the list is
 * read, not the pool, so that a pool destroyed twice is caught before its memory is). */
static bool link_live(mp_pool_t *pool, bool add) {
  pthread_mutex_lock(&live_lock);
  mp_pool_t **link = &live_pools;
  while (*link && *link != pool)
    link = &(*link)->next_live;
  bool found = *link != NULL;
  if (add) {
    pool->next_live = live_pools;
    live_pools = pool;
  } else if (found) {
    *link = pool->next_live;
  }
  pthread_mutex_unlock(&live_lock);
  return found;
}

static void destroy_live_pools(void) {
  for (;;) {
    pthread_mutex_lock(&live_lock);
    mp_pool_t *pool = live_pools;
    while (pool && pool->owner != getpid()) /* a forked child's copies are not its own */
      pool = pool->next_live;
    pthread_mutex_unlock(&live_lock);
    if (!pool)
      return;
    mp_pool_destroy(pool);
  }
}

static void register_exit_handler(void) {
  atexit(destroy_live_pools);
}

void mp_pool_options_init(mp_pool_options_t *options) {
  static const mp_pool_options_t defaults = MP_POOL_OPTIONS_INIT;
  if (options)
    *options = defaults;
}

static void destroy(mp_pool_t *pool);

/* What creation makes before the workers: the job table, the eventfd, the loop, the
 * launcher's state. */
static int make_parts(mp_pool_t *pool, const mp_pool_options_t *o) {
  int rc = mp__jobs_create(&pool->jobs, pool->n_workers, o->maxtasksperchild, o->retries);
  if (rc == 0 && o->initializer)
    rc = mp__jobs_set_initializer(pool->jobs, (mp__fn_t)o->initializer, o->initargs,
                                  o->initargs_size);
  if (rc < 0)
    return rc;
  pool->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (pool->event_fd < 0)
    return mp__syserror("eventfd for the pool");
  if ((rc = mp__fd_share(pool->event_fd, &pool->event_key)) < 0) {
    close(pool->event_fd);
    pool->event_fd = -1;
    return rc;
  }
  mp__jobs_set_event_key(pool->jobs, pool->event_key);
  if ((rc = uv_loop_init(&pool->loop)) < 0)
    return mp__error(rc, "starting the pool's event loop: %s", uv_strerror(rc));
  pool->loop_open = true;
  mp__launcher_config_t config = {
      .n_workers = pool->n_workers,
      .ctx = pool->ctx,
      .sh = mp__jobs_shared(pool->jobs),
      .event_key = pool->event_key,
      .event_fd = pool->event_fd,
      .loop = &pool->loop,
      .events = {pool, worker_started, worker_start_failed, worker_ended, launcher_broken},
  };
  return pool->launcher->open(&config, &pool->launcher_state);
}

int mp_pool_create(mp_pool_t **out, const mp_pool_options_t *options) {
  static const mp_pool_options_t defaults = MP_POOL_OPTIONS_INIT;
  const mp_pool_options_t *o = options ? options : &defaults;
  int processes, rc;
  if (!out)
    return mp__error(MP_EINVAL, "mp_pool_create: pool is NULL");
  if ((rc = check_options(o, &processes)) < 0)
    return rc;
  mp_context_t *ctx = o->context;
  if (!ctx && (rc = mp_get_context(NULL, &ctx)) < 0)
    return rc;
  const mp__launcher_ops_t *launcher = mp__pool_launcher(ctx, o->processes, &processes);
  mp_pool_t *pool = calloc(1, sizeof *pool);
  bool *running = calloc((size_t)processes, sizeof *running);
  if (!pool || !running) {
    free(pool);
    free(running);
    return mp__error(MP_ENOMEM, "mp_pool_create: no memory for %d workers", processes);
  }
  pool->magic = POOL_MAGIC;
  pool->ctx = ctx;
  pool->event_fd = -1;
  pool->running = running;
  pool->n_workers = (uint32_t)processes;
  pthread_mutex_init(&pool->lock, NULL);
  pool->launcher = launcher;
  atomic_store(&pool->creating, true);
  rc = make_parts(pool, o);
  /* The first workers start from this thread, before the supervisor's exists (fork's are
   * forked here); a failure ends creation. */
  for (uint32_t w = 0; rc == 0 && w < pool->n_workers && !atomic_load(&pool->create_rc); w++)
    start_worker(pool, w);
  if (rc == 0 && (rc = atomic_load(&pool->create_rc)) < 0)
    mp__error(rc, "mp_pool_create: %s", pool->create_msg);
  if (rc == 0)
    rc = start_supervisor(pool);
  if (rc == 0)
    rc = await_workers(pool);
  atomic_store(&pool->creating, false);
  if (rc < 0) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mp_last_error());
    destroy(pool);
    return mp__error(rc, "%s", msg);
  }
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, register_exit_handler);
  pool->owner = getpid();
  link_live(pool, true);
  *out = pool;
  return 0;
}

int mp_pool_processes(const mp_pool_t *pool) {
  check_pool(pool, "mp_pool_processes");
  return pool ? (int)pool->n_workers : mp__error(MP_EINVAL, "mp_pool_processes: NULL");
}

int mp_pool_callback_errors(const mp_pool_t *pool) {
  check_pool(pool, "mp_pool_callback_errors");
  return pool ? atomic_load(&pool->callback_errors)
              : mp__error(MP_EINVAL, "mp_pool_callback_errors: NULL");
}

int mp_pool_close(mp_pool_t *pool) {
  check_pool(pool, "mp_pool_close");
  if (!pool)
    return mp__error(MP_EINVAL, "mp_pool_close: pool is NULL");
  mp__jobs_set_flag(pool->jobs, MP__POOL_CLOSED);
  request(pool, 0);
  return 0;
}

int mp_pool_terminate(mp_pool_t *pool) {
  check_pool(pool, "mp_pool_terminate");
  if (!pool)
    return mp__error(MP_EINVAL, "mp_pool_terminate: pool is NULL");
  mp__jobs_set_flag(pool->jobs, MP__POOL_TERMINATED);
  if (!pool->thread_started)
    return 0;
  if (on_supervisor(pool)) {
    do_terminate(pool);
    return 0;
  }
  request(pool, REQ_TERMINATE);
  return wait_all_ended(pool, mp__now_ns() + TERMINATE_WAIT_NS) < 0
             ? mp__error(MP_ETIMEDOUT, "mp_pool_terminate: workers still run")
             : 0;
}

int mp_pool_join(mp_pool_t *pool, double timeout) {
  check_pool(pool, "mp_pool_join");
  if (!pool)
    return mp__error(MP_EINVAL, "mp_pool_join: pool is NULL");
  if (!(mp__jobs_flags(pool->jobs) & (MP__POOL_CLOSED | MP__POOL_TERMINATED)))
    return mp__error(MP_EINVAL, "mp_pool_join: the pool is still running (close it first)");
  if (wait_all_ended(pool, mp__deadline(timeout)) < 0)
    return mp__error(MP_ETIMEDOUT, "mp_pool_join: workers still run after %g s", timeout);
  pool->joined = true;
  return 0;
}

void mp_pool_destroy(mp_pool_t *pool) {
  if (!pool)
    return;
  if (!link_live(pool, false)) {
    fprintf(stderr, "libmp: mp_pool_destroy: %p is not a live pool (destroyed twice?)\n",
            (void *)pool);
    abort();
  }
  destroy(pool);
}

/* Ends the pool's workers and supervisor and frees it. */
static void destroy(mp_pool_t *pool) {
  if (!pool->joined && pool->jobs)
    mp_pool_terminate(pool);
  if (pool->thread_started) {
    request(pool, REQ_STOP);
    pthread_join(pool->thread, NULL);
  } else if (pool->loop_open) { /* creation failed before the supervisor ran it */
    uv_walk(&pool->loop, close_handle, NULL);
    uv_run(&pool->loop, UV_RUN_DEFAULT);
  }
  if (pool->loop_open)
    uv_loop_close(&pool->loop);
  if (pool->launcher_state) {
    if (!pool->launcher_closed)
      pool->launcher->close(pool->launcher_state);
    pool->launcher->free(pool->launcher_state);
  }
  while (pool->callbacks) {
    mp_async_result_t *ar = pool->callbacks;
    pool->callbacks = ar->next;
    mp_async_result_free(ar);
  }
  if (pool->event_fd >= 0)
    mp__fd_unshare(pool->event_key);
  mp__jobs_free(pool->jobs);
  pthread_mutex_destroy(&pool->lock);
  free(pool->running);
  /* Volatile: a plain store before free() is dead to the compiler, and free() may leave the
   * word as it was (a block merged into the top of the heap is not written). */
  *(volatile uint64_t *)&pool->magic = 0;
  free(pool);
}

/* ------------------------------ submitting ------------------------------ */

static int check_open(mp_pool_t *pool, const char *what) {
  uint32_t flags = mp__jobs_flags(pool->jobs);
  if (flags & MP__POOL_TERMINATED)
    return mp__error(MP_ETERMINATED, "%s: the pool was terminated%s", what,
                     pool->why_terminated);
  if (flags & MP__POOL_CLOSED)
    return mp__error(MP_ECLOSED, "%s: the pool is closed", what);
  return 0;
}

/* A job slot for an item or a result of at most max bytes: its length, then its bytes,
 * rounded up so that the next slot's bytes stay 8-aligned; 0 when that overflows. */
static size_t var_slot(size_t max) {
  size_t slot;
  if (__builtin_add_overflow(max, MP__VARSIZE_HEAD + 7, &slot))
    return 0;
  return slot & ~(size_t)7;
}

/* A submission. With MP__JOB_VARSIZE, item_size is the slot of each item and result_size
 * the task's room for each result (its slot is var_slot of it). */
typedef struct {
  const char *what;
  mp_task_fn_t fn;
  const void *items;
  size_t n, item_size, result_size, chunksize;
  uint32_t flags;
  uint32_t window;
} spec_t;

static size_t default_chunksize(const mp_pool_t *pool, size_t n) {
  size_t per = 4 * (size_t)pool->n_workers;
  size_t chunksize = n / per + (n % per != 0);
  return chunksize ? chunksize : 1;
}

static void pack_items(void *dst, const void *items, uint64_t n, uint64_t slot);

static int submit(mp_pool_t *pool, const spec_t *s, mp__job_t **out) {
  check_pool(pool, s->what);
  if (!pool || !s->fn)
    return mp__error(MP_EINVAL, "%s: %s is NULL", s->what, pool ? "the function" : "pool");
  if (!s->items && s->n && s->item_size)
    return mp__error(MP_EINVAL, "%s: items is NULL but n is %zu", s->what, s->n);
  size_t bytes, varsize = s->flags & MP__JOB_VARSIZE,
                result_slot = varsize ? var_slot(s->result_size) : s->result_size;
  if ((varsize && !result_slot) || __builtin_mul_overflow(s->n, s->item_size, &bytes) ||
      __builtin_mul_overflow(s->n, result_slot, &bytes))
    return mp__error(MP_EINVAL, "%s: %zu items of %zu bytes with results of %zu bytes overflow",
                     s->what, s->n, s->item_size, s->result_size);
  mp__job_spec_t spec = {0,
                         s->flags,
                         s->items,
                         s->n,
                         s->item_size,
                         result_slot,
                         0,
                         s->window,
                         varsize ? s->result_size : 0,
                         varsize && !(s->flags & MP__JOB_ITERATOR) ? pack_items : NULL};
  int rc = check_open(pool, s->what);
  if (rc == 0)
    rc = mp__jobs_function(pool->jobs, (mp__fn_t)s->fn, &spec.fn);
  if (rc < 0)
    return rc;
  spec.chunksize = s->chunksize                    ? s->chunksize
                   : (s->flags & MP__JOB_ITERATOR) ? 1
                                                   : default_chunksize(pool, s->n);
  if (spec.chunksize > s->n) /* one chunk holds it all: no room for items that do not exist */
    spec.chunksize = s->n ? s->n : 1;
  rc = mp__jobs_submit(pool->jobs, &spec, out);
  return rc < 0 ? mp__error_prefix(rc, "%s", s->what) : 0;
}

/* A request for s, in *out (NULL on failure). */
static int make_result(mp_pool_t *pool, spec_t *s, const mp_async_callbacks_t *callbacks,
                       bool is_apply, mp_async_result_t **out) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: ar is NULL", s->what);
  *out = NULL;
  mp_async_result_t *ar = calloc(1, sizeof *ar);
  if (!ar)
    return mp__error(MP_ENOMEM, "%s: no memory", s->what);
  bool has_callbacks = callbacks && (callbacks->callback || callbacks->error_callback);
  if (has_callbacks)
    s->flags |= MP__JOB_NOTIFY;
  int rc = submit(pool, s, &ar->job);
  if (rc < 0) {
    free(ar);
    return rc;
  }
  ar->pool = pool;
  ar->is_apply = is_apply;
  ar->has_callbacks = has_callbacks;
  atomic_init(&ar->refs, has_callbacks ? 2 : 1);
  if (has_callbacks) {
    ar->callbacks = *callbacks;
    pthread_mutex_lock(&pool->lock);
    ar->next = pool->callbacks;
    pool->callbacks = ar;
    pthread_mutex_unlock(&pool->lock);
    /* It may have completed before it was listed (or be empty): look now. */
    mp__pool_notify(pool->event_fd);
  }
  *out = ar;
  return 0;
}
int mp_pool_map_async(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n,
                      size_t item_size, size_t result_size, size_t chunksize,
                      const mp_async_callbacks_t *callbacks, mp_async_result_t **ar) {
  spec_t s = {"mp_pool_map_async", fn, items, n, item_size, result_size, chunksize, 0, 0};
  return make_result(pool, &s, callbacks, false, ar);
}

int mp_pool_starmap_async(mp_pool_t *pool, mp_task_fn_t fn, const void *tuples, size_t n,
                          size_t tuple_size, size_t result_size, size_t chunksize,
                          const mp_async_callbacks_t *callbacks, mp_async_result_t **ar) {
  spec_t s = {"mp_pool_starmap_async", fn, tuples, n, tuple_size, result_size, chunksize, 0, 0};
  return make_result(pool, &s, callbacks, false, ar);
}

int mp_pool_apply_async(mp_pool_t *pool, mp_task_fn_t fn, const void *arg, size_t size,
                        size_t result_max, const mp_async_callbacks_t *callbacks,
                        mp_async_result_t **ar) {
  spec_t s = {"mp_pool_apply_async", fn, arg, 1, size, result_max, 1, 0, 0};
  return make_result(pool, &s, callbacks, true, ar);
}

/* The end of a blocking call: Ctrl-C terminates the pool. */
static int end_sync(mp_pool_t *pool, const char *what, int rc) {
  if (rc != MP_EINTR)
    return rc;
  mp_pool_terminate(pool);
  return mp__error(MP_EINTR, "%s: interrupted by SIGINT; the pool was terminated", what);
}

/* A blocking call: submit, get, free. Ctrl-C (SIGINT caught by a handler) ends the pool, as
 * leaving Python's `with Pool()` on KeyboardInterrupt does. */
static int run_sync(mp_pool_t *pool, spec_t *s, bool is_apply, void *result, size_t cap,
                    size_t *len) {
  if (!is_apply && !result && s->n && s->result_size)
    return mp__error(MP_EINVAL, "%s: results is NULL", s->what);
  mp_async_result_t *ar;
  int rc = make_result(pool, s, NULL, is_apply, &ar);
  if (rc < 0)
    return rc;
  if (!is_apply)
    cap = s->n * s->result_size; /* checked by the submission */
  rc = mp_async_result_get(ar, result, cap, len, MP_FOREVER);
  mp_async_result_free(ar);
  return end_sync(pool, s->what, rc);
}

int mp_pool_map(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n, size_t item_size,
                void *results, size_t result_size, size_t chunksize) {
  spec_t s = {"mp_pool_map", fn, items, n, item_size, result_size, chunksize, 0, 0};
  return run_sync(pool, &s, false, results, 0, NULL);
}

int mp_pool_starmap(mp_pool_t *pool, mp_task_fn_t fn, const void *tuples, size_t n,
                    size_t tuple_size, void *results, size_t result_size, size_t chunksize) {
  spec_t s = {"mp_pool_starmap", fn, tuples, n, tuple_size, result_size, chunksize, 0, 0};
  return run_sync(pool, &s, false, results, 0, NULL);
}

int mp_pool_apply(mp_pool_t *pool, mp_task_fn_t fn, const void *arg, size_t size, void *result,
                  size_t result_cap, size_t *result_len) {
  spec_t s = {"mp_pool_apply", fn, arg, 1, size, result_cap, 1, 0, 0};
  return run_sync(pool, &s, true, result, result_cap, result_len);
}

/* ---------------------------- async results ---------------------------- */

static bool result_ready(const mp__job_t *job, void *arg) {
  const mp_async_result_t *ar = arg;
  return mp__job_complete(job) &&
         (!ar->has_callbacks || mp__job_callbacks_ran(job) || on_supervisor(ar->pool));
}

/* Waits on job until can_go_on, ending early on SIGINT (Ctrl-C: the one rule of signals.c,
 * watched only by a wait that blocks, and only once it is about to sleep). */
static int wait_job(mp__job_t *job, bool (*can_go_on)(const mp__job_t *, void *), void *arg,
                    double timeout, const char *what) {
  int rc = mp__job_wait(job, can_go_on, arg, timeout > 0 ? mp__sigint_watch : NULL,
                        mp__deadline(timeout));
  if (rc == MP_ETIMEDOUT)
    return mp__error(rc, "%s: not ready after %g s", what, timeout);
  if (rc == MP_EINTR)
    return mp__error(rc, "%s: interrupted by SIGINT", what);
  return rc;
}

int mp_async_result_get(mp_async_result_t *ar, void *result, size_t cap, size_t *len,
                        double timeout) {
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_get: ar is NULL");
  if (!result && cap)
    return mp__error(MP_EINVAL, "mp_async_result_get: result is NULL with a capacity");
  int rc = wait_job(ar->job, result_ready, ar, timeout, "mp_async_result_get");
  if (rc < 0)
    return rc;
  if (mp__job_aborted(ar->job))
    return mp__error(mp__job_aborted(ar->job),
                     "mp_async_result_get: the pool was terminated before the work was done%s",
                     ar->pool->why_terminated);
  rc = mp__job_take(ar->job, ar->is_apply, result, cap, len);
  return rc == MP_ETOOSMALL ? mp__error_prefix(rc, "mp_async_result_get") : rc;
}

int mp_async_result_wait(mp_async_result_t *ar, double timeout) {
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_wait: ar is NULL");
  return wait_job(ar->job, result_ready, ar, timeout, "mp_async_result_wait");
}

int mp_async_result_ready(mp_async_result_t *ar) {
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_ready: ar is NULL");
  return result_ready(ar->job, ar);
}

int mp_async_result_successful(mp_async_result_t *ar) {
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_successful: ar is NULL");
  if (!result_ready(ar->job, ar))
    return mp__error(MP_ENOTREADY, "mp_async_result_successful: the result is not ready");
  return !mp__job_aborted(ar->job) && mp__job_take(ar->job, ar->is_apply, NULL, 0, NULL) == 0;
}

void mp_async_result_free(mp_async_result_t *ar) {
  if (!ar || atomic_fetch_sub(&ar->refs, 1) != 1)
    return;
  mp__jobs_release(ar->pool->jobs, ar->job);
  free(ar);
}

/* ------------------------------ iterators ------------------------------ */

static int make_iterator(mp_pool_t *pool, spec_t *s, bool ordered, mp_imap_t **out) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: it is NULL", s->what);
  check_pool(pool, s->what);
  if (!pool)
    return mp__error(MP_EINVAL, "%s: pool is NULL", s->what);
  mp_imap_t *it = calloc(1, sizeof *it);
  if (!it)
    return mp__error(MP_ENOMEM, "%s: no memory", s->what);
  s->flags |= MP__JOB_ITERATOR | MP__JOB_WAKE_EACH;
  s->window = 4 * pool->n_workers;
  /* Checked by the submission below, which fails first if it overflows. */
  size_t slot = s->flags & MP__JOB_VARSIZE ? var_slot(s->result_size) : 0;
  if (slot && !(it->scratch = malloc(slot))) {
    free(it);
    return mp__error(MP_ENOMEM, "%s: no memory", s->what);
  }
  int rc = submit(pool, s, &it->job);
  if (rc < 0) {
    free(it->scratch);
    free(it);
    return rc;
  }
  it->pool = pool;
  it->items = s->items;
  it->ordered = ordered;
  it->active = -1;
  while (mp__jobs_feed(pool->jobs, it->job, it->items))
    ;
  *out = it;
  return 0;
}

int mp_pool_imap(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n,
                 size_t item_size, size_t result_size, size_t chunksize, mp_imap_t **it) {
  spec_t s = {"mp_pool_imap", fn, items, n, item_size, result_size, chunksize, 0, 0};
  return make_iterator(pool, &s, true, it);
}

int mp_pool_imap_unordered(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n,
                           size_t item_size, size_t result_size, size_t chunksize,
                           mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_unordered", fn, items, n, item_size, result_size, chunksize, 0, 0};
  return make_iterator(pool, &s, false, it);
}

static bool iterator_can_go_on(const mp__job_t *job, void *arg) {
  const mp_imap_t *it = arg;
  return mp__job_finished_chunk(job, it->ordered, it->next_chunk) >= 0 ||
         mp__job_aborted(job);
}

/* The active chunk is delivered: its window slot takes the next chunk. */
static void take_chunk(mp_imap_t *it) {
  mp__jobs_return_chunk(it->pool->jobs, it->job, (uint32_t)it->active, it->items);
  it->active = -1;
  it->taken++;
  if (it->ordered)
    it->next_chunk++;
}

/* The next result as the job holds it (a variable-size one with its length first). */
static int next_raw(mp_imap_t *it, void *result, size_t *index, double timeout) {
  mp__job_t *job = it->job;
  if (it->active < 0) {
    if (it->taken == job->n_chunks)
      return MP_EEOF;
    int rc = wait_job(job, iterator_can_go_on, it, timeout, "mp_imap_next");
    if (rc < 0)
      return rc;
    it->active = mp__job_finished_chunk(job, it->ordered, it->next_chunk);
    if (it->active < 0)
      return mp__error(mp__job_aborted(job), "mp_imap_next: the pool was terminated");
    it->item = 0;
  }
  uint32_t chunk = (uint32_t)it->active;
  uint64_t i = (uint64_t)chunk * job->chunksize + it->item, failed;
  if (index)
    *index = i;
  int rc = mp__job_item(job, chunk, i, result, &failed);
  if (rc < 0) {
    if (index)
      *index = failed;
    take_chunk(it); /* the rest of a failed chunk never ran */
    return rc;
  }
  if (++it->item == mp__job_chunk_items(job, chunk))
    take_chunk(it);
  return 0;
}

int mp_imap_next(mp_imap_t *it, void *result, size_t *index, double timeout) {
  if (it && !it->job)
    return mp__error(MP_EINVAL, "mp_imap_next: an iterator of items of any size: use "
                                "mp_imap_next_item");
  if (!it || (!result && it->job->result_size))
    return mp__error(MP_EINVAL, "mp_imap_next: %s is NULL", it ? "result" : "it");
  if (it->scratch)
    return mp__error(MP_EINVAL, "mp_imap_next: results of any size: use mp_imap_next_item");
  return next_raw(it, result, index, timeout);
}

static void free_lazy(lazy_t *lz);

void mp_imap_free(mp_imap_t *it) {
  if (!it)
    return;
  free(it->scratch);
  if (it->lazy) {
    free_lazy(it->lazy);
    free(it);
    return;
  }
  if (!mp__job_complete(it->job))
    mp__jobs_abort(it->pool->jobs, it->job, MP_ETERMINATED);
  mp__jobs_release(it->pool->jobs, it->job);
  free(it);
}

/* ------------------------- items and results of any size ------------------------- */

static uint64_t slot_length(const char *slot) {
  uint64_t len;
  memcpy(&len, slot, sizeof len);
  return len;
}

/* Checks items and finds the longest one's size. */
static int items_max(const char *what, const mp_item_t *items, size_t n, size_t *max) {
  if (!items && n)
    return mp__error(MP_EINVAL, "%s: items is NULL but n is %zu", what, n);
  *max = 0;
  for (size_t i = 0; i < n; i++) {
    if (!items[i].data && items[i].size)
      return mp__error(MP_EINVAL, "%s: item %zu has %zu bytes at NULL", what, i, items[i].size);
    *max = items[i].size > *max ? items[i].size : *max;
  }
  return 0;
}

/* map_items' input, written into the job: each item's length, then its bytes. */
static void pack_items(void *dst, const void *items, uint64_t n, uint64_t slot) {
  const mp_item_t *item = items;
  for (uint64_t i = 0; i < n; i++) {
    uint64_t len = item[i].size;
    memcpy((char *)dst + i * slot, &len, sizeof len);
    if (len)
      memcpy((char *)dst + i * slot + MP__VARSIZE_HEAD, item[i].data, len);
  }
}

/* A complete map's n results as one allocation: n mp_item_t, then their bytes. */
static int unpack_results(const char *what, const mp__job_t *job, size_t n, mp_item_t **out) {
  size_t bytes;
  bool overflow = __builtin_mul_overflow(n, sizeof(mp_item_t), &bytes);
  for (size_t i = 0; i < n && !overflow; i++) {
    const char *r = mp__job_result(job, i);
    overflow = __builtin_add_overflow(bytes, r ? (slot_length(r) + 7) & ~(size_t)7 : 0, &bytes);
  }
  mp_item_t *res = overflow ? NULL : malloc(bytes ? bytes : 1);
  if (!res)
    return mp__error(MP_ENOMEM, "%s: no memory for the results of %zu items", what, n);
  char *at = (char *)(res + n);
  for (size_t i = 0; i < n; i++) {
    const char *r = mp__job_result(job, i);
    res[i].size = r ? slot_length(r) : 0;
    res[i].data = at;
    if (res[i].size)
      memcpy(at, r + MP__VARSIZE_HEAD, res[i].size);
    at += (res[i].size + 7) & ~(size_t)7;
  }
  *out = res;
  return 0;
}

int mp_pool_map_items(mp_pool_t *pool, mp_task_fn_t fn, const mp_item_t *items, size_t n,
                      size_t result_max, size_t chunksize, mp_item_t **results) {
  const char *what = "mp_pool_map_items";
  check_pool(pool, what);
  if (!results)
    return mp__error(MP_EINVAL, "%s: results is NULL", what);
  *results = NULL;
  size_t max = 0, slot = 0; /* set by the check below (gcc -O3 cannot see it) */
  int rc = items_max(what, items, n, &max);
  if (rc < 0)
    return rc;
  if (!(slot = var_slot(max)))
    return mp__error(MP_EINVAL, "%s: an item of %zu bytes overflows", what, max);
  /* The items are packed into the job, the results read from it in place. */
  spec_t s = {what, fn, items, n, slot, result_max, chunksize, MP__JOB_VARSIZE, 0};
  mp_async_result_t *ar;
  if ((rc = make_result(pool, &s, NULL, false, &ar)) < 0)
    return rc;
  rc = mp_async_result_get(ar, NULL, 0, NULL, MP_FOREVER);
  /* A failed map still gives the results of the chunks that succeeded. */
  if (rc == 0 || rc == MP_ETASK || rc == MP_EWORKERDIED) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mp_last_error());
    int unpacked = unpack_results(what, ar->job, n, results);
    rc = unpacked < 0 ? unpacked : rc < 0 ? mp__error(rc, "%s", msg) : 0;
  }
  mp_async_result_free(ar);
  return end_sync(pool, s.what, rc);
}

/*
 * A lazy iterator takes its items from a source, a batch at a time, on the caller's side:
 * two batches of half the array form's window each are in flight, one being delivered and
 * the next running; when the first is delivered whole its iterator is freed and the source
 * fills a new batch behind the other. Each batch is an iterator over a job of its own.
 */
struct lazy_s {
  mp_item_source_t source;
  void *user_data;
  spec_t spec; /* of each batch */
  size_t item_max, batch;
  struct {
    mp_imap_t *it; /* NULL: no batch (the source has ended) */
    char *buf;
    uint64_t base; /* its first item's index */
  } b[2];
  unsigned cur;  /* the batch being delivered */
  uint64_t fed;  /* items taken from the source */
  int end;       /* 0 while the source has items; then MP_EEOF, or its error */
  bool end_told; /* its error was returned */
  /* mp_pool_imap_items: the source is this array. */
  const mp_item_t *items;
  size_t n_items, next_item;
};

static void free_lazy(lazy_t *lz) {
  for (int j = 0; j < 2; j++) {
    mp_imap_free(lz->b[j].it);
    free(lz->b[j].buf);
  }
  free(lz);
}

/* Fills batch j from the source and starts its iterator. */
static int lazy_fill(mp_imap_t *it, unsigned j) {
  lazy_t *lz = it->lazy;
  size_t count = 0;
  while (!lz->end && count < lz->batch) {
    char *slot = lz->b[j].buf + count * lz->spec.item_size;
    size_t len = 0;
    int rc = lz->source(lz->user_data, slot + MP__VARSIZE_HEAD, lz->item_max, &len);
    if (rc == 0 && len > lz->item_max)
      rc = mp__error(MP_EINVAL, "the item source gave %zu bytes for %zu of room", len,
                     lz->item_max);
    else if (rc > 0)
      rc = mp__error(MP_EINVAL, "the item source returned %d", rc);
    else if (rc < 0 && rc != MP_EEOF)
      rc = mp__error(rc, "the item source failed (%s)", mp_err_name(rc));
    if (rc != 0) {
      lz->end = rc;
      break;
    }
    uint64_t l = len;
    memcpy(slot, &l, sizeof l);
    count++;
  }
  lz->b[j].base = lz->fed;
  lz->fed += count;
  if (count == 0)
    return 0;
  spec_t s = lz->spec;
  s.items = lz->b[j].buf;
  s.n = count;
  int rc = make_iterator(it->pool, &s, it->ordered, &lz->b[j].it);
  if (rc < 0 && !lz->end)
    lz->end = MP_EEOF; /* those items are lost with the pool: nothing follows the error */
  return rc;
}

/* mp_pool_imap_items' source: the caller's array, one item after the other. */
static int array_source(void *user_data, void *buf, size_t cap, size_t *len) {
  lazy_t *lz = user_data;
  (void)cap; /* the longest item's size */
  if (lz->next_item == lz->n_items)
    return MP_EEOF;
  const mp_item_t *item = &lz->items[lz->next_item++];
  if (item->size)
    memcpy(buf, item->data, item->size);
  *len = item->size;
  return 0;
}

/* Where a lazy iterator's items come from: a source, or an array. */
typedef struct {
  mp_item_source_t source;
  void *user_data;
  const mp_item_t *items;
  size_t n_items;
} lazy_input_t;

static int make_lazy(mp_pool_t *pool, spec_t *s, lazy_input_t in, size_t item_max,
                     size_t result_max, bool ordered, mp_imap_t **out) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: it is NULL", s->what);
  *out = NULL;
  check_pool(pool, s->what);
  if (!pool || !s->fn || !in.source)
    return mp__error(MP_EINVAL, "%s: %s is NULL", s->what,
                     !pool    ? "pool"
                     : !s->fn ? "the function"
                              : "the item source");
  int rc = check_open(pool, s->what);
  if (rc < 0)
    return rc;
  size_t chunks = 2 * (size_t)pool->n_workers, batch, bytes;
  s->item_size = var_slot(item_max);
  s->result_size = result_max;
  s->chunksize = s->chunksize ? s->chunksize : 1; /* Python's default for imap */
  s->flags = MP__JOB_VARSIZE;
  if (!s->item_size || !var_slot(result_max) ||
      __builtin_mul_overflow(chunks, s->chunksize, &batch) ||
      __builtin_mul_overflow(batch, s->item_size, &bytes))
    return mp__error(MP_EINVAL,
                     "%s: items of up to %zu bytes and results of up to %zu bytes, in chunks "
                     "of %zu, overflow",
                     s->what, item_max, result_max, s->chunksize);
  mp_imap_t *it = calloc(1, sizeof *it);
  lazy_t *lz = calloc(1, sizeof *lz);
  if (it)
    it->lazy = lz;
  for (int j = 0; lz && j < 2; j++)
    lz->b[j].buf = malloc(bytes);
  if (!it || !lz || !lz->b[0].buf || !lz->b[1].buf) {
    if (lz)
      free_lazy(lz);
    free(it);
    return mp__error(MP_ENOMEM, "%s: no memory for two batches of %zu bytes", s->what, bytes);
  }
  it->pool = pool;
  it->ordered = ordered;
  lz->source = in.source;
  lz->user_data = in.source == array_source ? lz : in.user_data;
  lz->items = in.items;
  lz->n_items = in.n_items;
  lz->spec = *s;
  lz->item_max = item_max;
  lz->batch = batch;
  if ((rc = lazy_fill(it, 0)) == 0)
    rc = lazy_fill(it, 1);
  if (rc < 0) {
    mp_imap_free(it);
    return rc;
  }
  *out = it;
  return 0;
}

int mp_pool_imap_lazy(mp_pool_t *pool, mp_task_fn_t fn, mp_item_source_t next_item,
                      void *user_data, size_t item_max, size_t result_max, size_t chunksize,
                      mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_lazy", fn, NULL, 0, 0, 0, chunksize, 0, 0};
  return make_lazy(pool, &s, (lazy_input_t){next_item, user_data, NULL, 0}, item_max,
                   result_max, true, it);
}

int mp_pool_imap_lazy_unordered(mp_pool_t *pool, mp_task_fn_t fn, mp_item_source_t next_item,
                                void *user_data, size_t item_max, size_t result_max,
                                size_t chunksize, mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_lazy_unordered", fn, NULL, 0, 0, 0, chunksize, 0, 0};
  return make_lazy(pool, &s, (lazy_input_t){next_item, user_data, NULL, 0}, item_max,
                   result_max, false, it);
}

static int imap_items(mp_pool_t *pool, spec_t *s, const mp_item_t *items, size_t n,
                      size_t result_max, bool ordered, mp_imap_t **it) {
  size_t max = 0; /* set by the check below (gcc -O3 cannot see it) */
  int rc = items_max(s->what, items, n, &max);
  if (rc == 0)
    rc = make_lazy(pool, s, (lazy_input_t){array_source, NULL, items, n}, max, result_max,
                   ordered, it);
  return rc;
}

int mp_pool_imap_items(mp_pool_t *pool, mp_task_fn_t fn, const mp_item_t *items, size_t n,
                       size_t result_max, size_t chunksize, mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_items", fn, NULL, 0, 0, 0, chunksize, 0, 0};
  return imap_items(pool, &s, items, n, result_max, true, it);
}

int mp_pool_imap_items_unordered(mp_pool_t *pool, mp_task_fn_t fn, const mp_item_t *items,
                                 size_t n, size_t result_max, size_t chunksize,
                                 mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_items_unordered", fn, NULL, 0, 0, 0, chunksize, 0, 0};
  return imap_items(pool, &s, items, n, result_max, false, it);
}

/* The next result of a plain iterator into result (cap bytes of room). */
static int plain_next_item(mp_imap_t *it, void *result, size_t cap, size_t *len, size_t *index,
                           double timeout) {
  size_t need = it->scratch ? it->job->result_cap : it->job->result_size;
  if (cap < need) { /* checked first: the result is not taken */
    if (len)
      *len = need;
    return mp__error(MP_ETOOSMALL,
                     "mp_imap_next_item: a result may have %zu bytes, the buffer "
                     "%zu",
                     need, cap);
  }
  if (!it->scratch) {
    if (len)
      *len = need;
    return next_raw(it, result, index, timeout);
  }
  int rc = next_raw(it, it->scratch, index, timeout);
  if (rc < 0)
    return rc;
  uint64_t l = slot_length(it->scratch);
  memcpy(result, it->scratch + MP__VARSIZE_HEAD, l);
  if (len)
    *len = l;
  return 0;
}

/* The next result of a lazy iterator: from the batch being delivered, then the next one. */
static int lazy_next(mp_imap_t *it, void *result, size_t cap, size_t *len, size_t *index,
                     double timeout) {
  lazy_t *lz = it->lazy;
  for (;;) {
    mp_imap_t *cur = lz->b[lz->cur].it;
    if (!cur) { /* nothing left: the source ended before this batch */
      if (lz->end == MP_EEOF || lz->end_told)
        return MP_EEOF;
      lz->end_told = true; /* its error at its place, as Python raises a generator's */
      if (index)
        *index = lz->fed;
      return mp__error(lz->end, "mp_imap_next_item: item %llu: the item source failed (%s)",
                       (unsigned long long)lz->fed, mp_err_name(lz->end));
    }
    size_t i = 0;
    int rc = plain_next_item(cur, result, cap, len, &i, timeout);
    if (rc != MP_EEOF) {
      uint64_t at = lz->b[lz->cur].base + i;
      bool failed = rc == MP_ETASK || rc == MP_EWORKERDIED;
      if (index && (rc == 0 || failed))
        *index = at;
      if (!failed)
        return rc;
      char msg[1024]; /* "item <index in the batch's job>: why" names the item in the input */
      snprintf(msg, sizeof msg, "%s", mp_last_error());
      const char *rest = strstr(msg, ": ");
      return !strncmp(msg, "item ", 5) && rest
                 ? mp__error(rc, "item %llu%s", (unsigned long long)at, rest)
                 : rc;
    }
    mp_imap_free(cur);
    lz->b[lz->cur].it = NULL;
    rc = lazy_fill(it, lz->cur); /* behind the other batch */
    lz->cur ^= 1;
    if (rc < 0)
      return rc;
  }
}

int mp_imap_next_item(mp_imap_t *it, void *result, size_t cap, size_t *len, size_t *index,
                      double timeout) {
  if (!it || (!result && cap))
    return mp__error(MP_EINVAL, "mp_imap_next_item: %s is NULL", it ? "result" : "it");
  return it->lazy ? lazy_next(it, result, cap, len, index, timeout)
                  : plain_next_item(it, result, cap, len, index, timeout);
}
