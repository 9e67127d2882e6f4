/*
 * The Pool, Python's multiprocessing.Pool: the API, async results, iterators, and the
 * supervisor.
 *
 * The supervisor is one thread running a libuv loop. It starts the workers and replaces
 * those that end (watching each worker process's sentinel, and under "fork" the zygote's
 * socket for its replacements), fails or requeues the task a dead worker was running, runs
 * the callbacks of async results, frees the jobs whose last reference a worker dropped, and
 * carries out terminate. It is woken by an eventfd that workers write (a job with callbacks
 * completed, a worker changed state, a job block is free) and by uv_async requests from the
 * user's threads. It is never on the path of a task: submitters publish jobs in the shared
 * arena and wait on them directly (pool_transport.c).
 */
#include "internal.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

/* How long terminate waits for the workers' ends before it gives up on them. */
#define TERMINATE_WAIT_NS 5000000000ll
#define TIMER_MS 100
#define SPARES 8
/* Failed starts in a row, with no worker left, that terminate the pool. */
#define MAX_START_FAILURES 5

typedef struct mp_pool_s mp_pool_t;

/* Where workers come from: processes of a context, forked by a zygote for "fork", or
 * threads. An MPI launcher would be one more table. A launcher reports a worker's end with
 * worker_ended(), from the supervisor's loop. */
typedef struct {
  /* Once, before the supervisor starts (under fork the first workers and the zygote are
   * forked here). */
  int (*open)(mp_pool_t *pool);
  /* Starts worker w, from the supervisor's thread. */
  int (*start)(mp_pool_t *pool, uint32_t w);
  /* Stops every worker at once (a thread cannot be stopped: its task runs to its end);
   * their ends are reported as usual. */
  void (*stop)(mp_pool_t *pool);
  /* Once every worker has ended: releases what open made. */
  void (*close)(mp_pool_t *pool);
} launcher_t;

typedef struct {
  mp_pool_t *pool;
  uint32_t w;
  bool running;
  mp_process_t *proc; /* a child of the pool's process (not the zygote's) */
  uv_poll_t *poll;    /* on its sentinel */
  pthread_t thread;   /* the thread launcher's */
  _Atomic bool thread_ended;
  int thread_code;
} worker_t;

enum { REQ_START = 1, REQ_TERMINATE = 2, REQ_STOP = 4 };

/* A live pool's first word; cleared when it is destroyed (free() overwrites it too). */
#define POOL_MAGIC 0x5b706d2d706f6f6cull /* "loop-mp[" */

struct mp_pool_s {
  uint64_t magic;
  mp__pool_shared_t *sh;
  const launcher_t *launcher;
  mp_context_t *ctx;
  int event_fd;
  pthread_mutex_t submit_lock; /* seq order of publication */
  pthread_mutex_t lock;        /* function table, job list, callback list */
  uint64_t next_seq;
  mp__job_t *jobs;              /* every job not freed, linked by parent_next */
  mp__job_t *spares[SPARES];    /* freed jobs' blocks, for the next jobs */
  mp_async_result_t *callbacks; /* results whose callbacks have not run */
  _Atomic int callback_errors;
  worker_t *workers;
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
  /* The zygote, under "fork". */
  mp_process_t *zygote;
  int zygote_sock;
  uv_poll_t zygote_poll;
  bool zygote_polling;
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

struct mp_imap_s {
  mp_pool_t *pool;
  mp__job_t *job;
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

/* ------------------------------ job blocks ------------------------------ */

/* Freed blocks are kept for the next jobs: their pages stay in memory, where a fresh block
 * would fault each of them in again (in the parent for the input, in a worker for the
 * output), and taking one costs no allocation. Called with pool->lock held. */
static void keep_or_release(mp_pool_t *pool, mp__job_t *job) {
  size_t smallest = 0;
  for (size_t i = 0; i < SPARES; i++) {
    if (!pool->spares[i]) {
      pool->spares[i] = job;
      return;
    }
    if (pool->spares[i]->block_size < pool->spares[smallest]->block_size)
      smallest = i;
  }
  if (pool->spares[smallest]->block_size < job->block_size) {
    mp__job_t *old = pool->spares[smallest];
    pool->spares[smallest] = job;
    job = old;
  }
  mp__shared_release(job);
}

/* The smallest kept block of at least bytes, taken (NULL if none). */
static mp__job_t *take_spare(void *ctx, uint64_t bytes) {
  mp_pool_t *pool = ctx;
  pthread_mutex_lock(&pool->lock);
  mp__job_t **best = NULL;
  for (size_t i = 0; i < SPARES; i++)
    if (pool->spares[i] && pool->spares[i]->block_size >= bytes &&
        (!best || pool->spares[i]->block_size < (*best)->block_size))
      best = &pool->spares[i];
  mp__job_t *spare = best ? *best : NULL;
  if (best)
    *best = NULL;
  pthread_mutex_unlock(&pool->lock);
  return spare;
}

/* Frees the jobs nobody refers to and no worker looks at; the pinned ones wait for the
 * supervisor's timer. Called with pool->lock held. */
static void free_unused_jobs_locked(mp_pool_t *pool) {
  for (mp__job_t **link = &pool->jobs; *link;) {
    mp__job_t *job = *link;
    if (atomic_load(&job->refs) == 0 && mp__job_unpinned(pool->sh, job)) {
      *link = job->parent_next;
      pthread_mutex_destroy(&job->err_lock);
      keep_or_release(pool, job);
    } else {
      link = (mp__job_t **)&job->parent_next;
    }
  }
}

static void free_unused_jobs(mp_pool_t *pool) {
  pthread_mutex_lock(&pool->lock);
  free_unused_jobs_locked(pool);
  pthread_mutex_unlock(&pool->lock);
}

static void release_job(mp_pool_t *pool, mp__job_t *job) {
  if (mp__job_unref(job))
    free_unused_jobs(pool);
}

static void add_job(mp_pool_t *pool, mp__job_t *job) {
  pthread_mutex_lock(&pool->lock);
  job->parent_next = pool->jobs;
  pool->jobs = job;
  pthread_mutex_unlock(&pool->lock);
}

/* Calls fn on every job still in a slot, pinned by the supervisor's record. */
static void for_each_running_job(mp_pool_t *pool, void (*fn)(mp_pool_t *, mp__job_t *, void *),
                                 void *arg) {
  mp__pool_shared_t *sh = pool->sh;
  uint64_t next = atomic_load(&sh->next_seq);
  for (uint64_t seq = atomic_load(&sh->oldest); seq < next; seq++) {
    mp__job_t *job = mp__pool_pin(sh, sh->n_workers, seq);
    if (job)
      fn(pool, job, arg);
  }
  mp__pool_unpin(sh, sh->n_workers);
}

/* ---------------------------- the supervisor ---------------------------- */

static void start_worker(mp_pool_t *pool, uint32_t w);

static void describe_end(mp_pool_t *pool, uint32_t w, int exitcode, char *buf, size_t cap) {
  int pid = atomic_load(&pool->sh->workers[w].pid);
  if (exitcode < 0)
    snprintf(buf, cap, "worker %u (pid %d) was killed by signal %d (%s)", w + 1, pid, -exitcode,
             strsignal(-exitcode));
  else
    snprintf(buf, cap, "worker %u (pid %d) exited with status %d", w + 1, pid, exitcode);
}

typedef struct {
  uint32_t w;
  const char *msg;
  bool found;
} lost_t;

/* Loses the chunk if worker w ran it; the failure names the item at `offset` in it. */
static bool lose_if_owned(mp_pool_t *pool, mp__job_t *job, uint32_t chunk, uint64_t offset,
                          lost_t *lost) {
  uint64_t v = atomic_load(mp__job_state(job, chunk));
  if (MP__CHUNK_OF(v) != chunk || MP__CHUNK_STATUS(v) != MP__CHUNK_RUNNING ||
      MP__CHUNK_OWNER(v) != lost->w + 1)
    return false;
  if (offset >= mp__job_chunk_items(job, chunk))
    offset = 0;
  mp__job_lose_chunk(pool->sh, job, chunk, (uint64_t)chunk * job->chunksize + offset,
                     MP_EWORKERDIED, lost->msg);
  lost->found = true;
  return true;
}

static void find_lost_chunk(mp_pool_t *pool, mp__job_t *job, void *arg) {
  lost_t *lost = arg;
  for (uint32_t i = 0; i < job->window && !lost->found; i++)
    lose_if_owned(pool, job, MP__CHUNK_OF(atomic_load(mp__job_state(job, i))), 0, lost);
}

/* What a worker that died half-way through completing its chunk left undone. */
static void finish_counting(mp_pool_t *pool, mp__job_t *job, void *arg) {
  const lost_t *lost = arg;
  mp__job_repair_count(job, lost->w, atomic_load(&pool->sh->workers[lost->w].run_chunk));
  mp__job_settle(pool->sh, job, -1);
}

/* The chunk worker w ran when it died: its record says which, else its owner field does. */
static void recover_chunk(mp_pool_t *pool, uint32_t w, const char *msg) {
  mp__pool_shared_t *sh = pool->sh;
  mp__worker_rec_t *rec = &sh->workers[w];
  lost_t lost = {w, msg, false};
  for_each_running_job(pool, finish_counting, &lost);
  uint64_t run = atomic_load(&rec->run_seq);
  if (run) {
    mp__job_t *job = mp__pool_pin(sh, sh->n_workers, run - 1);
    if (job)
      lose_if_owned(pool, job, atomic_load(&rec->run_chunk), atomic_load(&rec->run_item),
                    &lost);
    mp__pool_unpin(sh, sh->n_workers);
  }
  if (!lost.found)
    for_each_running_job(pool, find_lost_chunk, &lost);
}

static bool work_left(mp_pool_t *pool) {
  return atomic_load(&pool->sh->oldest) < atomic_load(&pool->sh->next_seq);
}

static void end_create(mp_pool_t *pool, int rc, const char *msg) {
  if (!atomic_load(&pool->creating))
    return;
  if (rc < 0 && atomic_load(&pool->create_rc) == 0) {
    snprintf(pool->create_msg, sizeof pool->create_msg, "%s", msg);
    atomic_store(&pool->create_rc, rc);
  }
  atomic_fetch_add(&pool->sh->status, 1);
  mp__futex_wake(&pool->sh->status, INT32_MAX);
}

static void abort_job(mp_pool_t *pool, mp__job_t *job, void *arg) {
  (void)arg;
  mp__job_abort(pool->sh, job, MP_ETERMINATED);
}

static void maybe_all_ended(mp_pool_t *pool) {
  uint32_t flags = atomic_load(&pool->sh->flags);
  if (pool->live > 0 || !(flags & (MP__POOL_CLOSED | MP__POOL_TERMINATED)))
    return;
  if ((flags & MP__POOL_CLOSED) && !(flags & MP__POOL_TERMINATED) && work_left(pool))
    return;
  if (!pool->launcher_closed) {
    pool->launcher_closed = true;
    pool->launcher->close(pool);
  }
  atomic_store(&pool->all_ended, true);
  atomic_fetch_add(&pool->progress, 1);
  mp__futex_wake(&pool->progress, INT32_MAX);
}

static void do_terminate(mp_pool_t *pool);

__attribute__((format(printf, 2, 3))) static void terminate_because(mp_pool_t *pool,
                                                                   const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(pool->why_terminated, sizeof pool->why_terminated, fmt, ap);
  va_end(ap);
  atomic_fetch_or(&pool->sh->flags, MP__POOL_TERMINATED);
  do_terminate(pool);
}

static bool any_ready(const mp_pool_t *pool) {
  for (uint32_t w = 0; w < pool->sh->n_workers; w++)
    if (atomic_load(&pool->sh->workers[w].state) == MP__WORKER_READY)
      return true;
  return false;
}

/* A worker could not be started, or died before it was ready (a lost start, not a failed
 * initializer: a kill from outside, or out of memory): the timer tries again. Only when
 * MAX_START_FAILURES starts in a row failed with no worker ready (out of processes, a
 * broken executable, a worker killed at every start) does nothing ever run the work: then
 * creation fails, or the pool is terminated, as for an initializer that fails. */
static void start_failed(mp_pool_t *pool, uint32_t w, int rc, const char *msg) {
  atomic_store(&pool->sh->workers[w].state, MP__WORKER_EMPTY);
  if (++pool->start_failures < MAX_START_FAILURES ||
      (atomic_load(&pool->sh->flags) & MP__POOL_TERMINATED))
    return;
  char why[2 * MP__POOL_MSG];
  snprintf(why, sizeof why, "%u starts in a row failed, the last: %s (%s)",
           pool->start_failures, msg, mp_err_name(rc));
  if (atomic_load(&pool->creating))
    end_create(pool, rc, why);
  else if (!any_ready(pool))
    terminate_because(pool, ": no worker is ready and %s", why);
}

/* A worker has ended: fail (or requeue) what it ran, replace it if work remains. */
static void worker_ended(mp_pool_t *pool, uint32_t w, int exitcode) {
  mp__pool_shared_t *sh = pool->sh;
  mp__worker_rec_t *rec = &sh->workers[w];
  if (!pool->workers[w].running)
    return;
  pool->workers[w].running = false;
  pool->live--;
  uint32_t state = atomic_load(&rec->state);
  bool terminated = atomic_load(&sh->flags) & MP__POOL_TERMINATED;
  char msg[MP__POOL_MSG];
  describe_end(pool, w, exitcode, msg, sizeof msg);
  if (state == MP__WORKER_INIT_FAILED) {
    char init_msg[2 * MP__POOL_MSG];
    snprintf(init_msg, sizeof init_msg, "the initializer failed: %s", rec->error);
    if (atomic_load(&pool->creating))
      end_create(pool, MP_ETASK, init_msg);
    else if (!terminated) /* none can start, and Python would respawn it forever */
      terminate_because(pool, ": a replacement worker could not start: %s", init_msg);
  } else if (state == MP__WORKER_STARTING && !terminated) {
    char lost[MP__POOL_MSG + 32];
    snprintf(lost, sizeof lost, "%s before it was ready", msg);
    start_failed(pool, w, MP_EWORKERDIED, lost);
  } else if (state != MP__WORKER_RETIRED && state != MP__WORKER_DONE && !terminated) {
    recover_chunk(pool, w, msg);
  }
  bool was_ready = state != MP__WORKER_STARTING && state != MP__WORKER_INIT_FAILED;
  if (was_ready)
    pool->start_failures = 0; /* it was started: starts work */
  atomic_store(&rec->pin, 0);
  atomic_store(&rec->run_seq, 0);
  if (atomic_exchange(&rec->idle_ticket, 0)) /* died idle: not to be woken again */
    atomic_fetch_sub(&sh->idle, 1);
  atomic_store(&rec->state, MP__WORKER_EMPTY);
  free_unused_jobs(pool);
  uint32_t flags = atomic_load(&sh->flags);
  /* A lost start is retried by the timer: at its pace, not in a loop of deaths. */
  bool wanted = was_ready && !(flags & MP__POOL_TERMINATED) && !atomic_load(&pool->create_rc) &&
                (!(flags & MP__POOL_CLOSED) || work_left(pool)) &&
                !(atomic_load(&pool->requests) & REQ_STOP);
  if (wanted)
    start_worker(pool, w);
  maybe_all_ended(pool);
}

/* Starts worker w by start(); a failure leaves its record empty. */
static int start_by(mp_pool_t *pool, uint32_t w, int (*start)(mp_pool_t *, uint32_t)) {
  mp__worker_rec_t *rec = &pool->sh->workers[w];
  atomic_store(&rec->pid, 0);
  atomic_store(&rec->state, MP__WORKER_STARTING);
  int rc = start(pool, w);
  if (rc < 0) {
    atomic_store(&rec->state, MP__WORKER_EMPTY);
    return rc;
  }
  pool->workers[w].running = true;
  pool->live++;
  return 0;
}

static void start_worker(mp_pool_t *pool, uint32_t w) {
  if (atomic_load(&pool->sh->flags) & MP__POOL_TERMINATED)
    return; /* by the failed start of another worker, say */
  int rc = start_by(pool, w, pool->launcher->start);
  if (rc < 0) {
    char msg[MP__POOL_MSG];
    snprintf(msg, sizeof msg, "%s", mp_last_error());
    end_create(pool, rc, msg); /* a launcher's error at creation is final */
    start_failed(pool, w, rc, msg);
  }
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
    atomic_store(&ar->job->callback_done, 1);
    atomic_fetch_add(&ar->job->wake, 1);
    mp__futex_wake(&ar->job->wake, INT32_MAX);
    mp_async_result_free(ar); /* the list's reference */
  }
}

static const launcher_t thread_launcher;

/* Thread workers that returned. */
static void reap_threads(mp_pool_t *pool) {
  if (pool->launcher != &thread_launcher)
    return;
  for (uint32_t w = 0; w < pool->sh->n_workers; w++) {
    worker_t *wk = &pool->workers[w];
    if (wk->running && atomic_load(&wk->thread_ended)) {
      pthread_join(wk->thread, NULL);
      worker_ended(pool, w, wk->thread_code);
    }
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
  free_unused_jobs(pool);
  reap_threads(pool);
  maybe_all_ended(pool);
}

static void on_timer(uv_timer_t *handle) {
  mp_pool_t *pool = handle->data;
  run_callbacks(pool); /* in case a worker died before it could say a job was complete */
  free_unused_jobs(pool);
  uint32_t flags = atomic_load(&pool->sh->flags);
  if ((flags & MP__POOL_TERMINATED) || atomic_load(&pool->create_rc) ||
      (atomic_load(&pool->requests) & REQ_STOP))
    return;
  for (uint32_t w = 0; w < pool->sh->n_workers; w++)
    if (!pool->workers[w].running && (!(flags & MP__POOL_CLOSED) || work_left(pool)))
      start_worker(pool, w);
}

static void close_handle(uv_handle_t *handle, void *arg) {
  (void)arg;
  if (!uv_is_closing(handle))
    uv_close(handle, NULL);
}

static void do_terminate(mp_pool_t *pool) {
  pool->launcher->stop(pool);
  for_each_running_job(pool, abort_job, NULL);
  mp__pool_wake_workers(pool->sh, INT32_MAX);
  atomic_fetch_add(&pool->sh->slot_free, 1);
  mp__futex_wake(&pool->sh->slot_free, INT32_MAX);
  free_unused_jobs(pool);
  maybe_all_ended(pool);
}

static void on_request(uv_async_t *handle) {
  mp_pool_t *pool = handle->data;
  uint32_t req = atomic_exchange(&pool->requests, 0);
  if (req & REQ_START)
    for (uint32_t w = 0; w < pool->sh->n_workers; w++)
      if (!pool->workers[w].running)
        start_worker(pool, w);
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

/* Runs fn in a new thread with every signal blocked: signals are for the user's threads. */
static int start_thread(pthread_t *thread, void *(*fn)(void *), void *arg) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(thread, NULL, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc ? mp__error(-rc, "starting a pool thread: %s", strerror(rc)) : 0;
}

/* ------------------------------ launchers ------------------------------ */

static int exitcode_of(int wait_status) {
  if (WIFEXITED(wait_status))
    return WEXITSTATUS(wait_status);
  return WIFSIGNALED(wait_status) ? -WTERMSIG(wait_status) : wait_status;
}

static void free_handle(uv_handle_t *handle) {
  free(handle);
}

/* Workers that are mp_process children of the pool's process (all but the zygote's),
 * watched by their sentinels. */
static void on_sentinel(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  worker_t *wk = handle->data;
  int exitcode = 0;
  if (mp_process_join(wk->proc, 0) < 0)
    return; /* not ended yet */
  if (mp_process_exitcode(wk->proc, &exitcode) < 0)
    exitcode = 0; /* status taken by the program's own waitpid(-1): an unknown end */
  uv_close((uv_handle_t *)handle, free_handle);
  mp_process_close(wk->proc);
  wk->proc = NULL;
  wk->poll = NULL;
  worker_ended(wk->pool, wk->w, exitcode);
}

static int nothing_to_open(mp_pool_t *pool) {
  (void)pool;
  return 0;
}

/* Starts worker w as an mp_process child of the pool's context, not yet watched. */
static int launch_process(mp_pool_t *pool, uint32_t w) {
  mp__pool_boot_t boot;
  memset(&boot, 0, sizeof boot); /* sent whole: no uninitialized padding */
  boot.sh = pool->sh;
  boot.w = w;
  const char *method = mp_context_start_method(pool->ctx);
  char name[64];
  snprintf(name, sizeof name, "%sPoolWorker-%u",
           strcmp(method, "fork") == 0    ? "Fork"
           : strcmp(method, "spawn") == 0 ? "Spawn"
                                          : "ForkServer",
           w + 1);
  mp_process_t *proc;
  int rc =
      mp_process_create(&proc, pool->ctx, mp__pool_worker_target, &boot, sizeof boot, name);
  if (rc < 0)
    return rc;
  mp_process_set_daemon(proc, true);
  if ((rc = mp__process_pass_fd(proc, pool->sh->event_key)) < 0 ||
      (rc = mp_process_start(proc)) < 0) {
    mp_process_close(proc);
    return rc;
  }
  pool->workers[w].proc = proc;
  atomic_store(&pool->sh->workers[w].pid, mp_process_pid(proc));
  return 0;
}

/* Watches a launched worker's sentinel from the supervisor's loop. */
static int watch_process(mp_pool_t *pool, uint32_t w) {
  worker_t *wk = &pool->workers[w];
  int fd = mp_process_sentinel(wk->proc);
  wk->poll = malloc(sizeof *wk->poll);
  if (fd < 0 || !wk->poll || uv_poll_init(&pool->loop, wk->poll, fd) < 0) {
    /* Cannot be watched: do not let it run unwatched. */
    free(wk->poll);
    wk->poll = NULL;
    mp_process_kill(wk->proc);
    mp_process_join(wk->proc, MP_FOREVER);
    mp_process_close(wk->proc);
    wk->proc = NULL;
    return mp__error(MP_ENOMEM, "cannot watch a new pool worker");
  }
  wk->poll->data = wk;
  uv_poll_start(wk->poll, UV_READABLE | UV_DISCONNECT, on_sentinel);
  return 0;
}

static int process_start(mp_pool_t *pool, uint32_t w) {
  int rc = launch_process(pool, w);
  return rc < 0 ? rc : watch_process(pool, w);
}

static void process_stop(mp_pool_t *pool) {
  for (uint32_t w = 0; w < pool->sh->n_workers; w++)
    if (pool->workers[w].proc)
      mp_process_kill(pool->workers[w].proc);
}

static void nothing_to_do(mp_pool_t *pool) {
  (void)pool;
}

static const launcher_t process_launcher = {nothing_to_open, process_start, process_stop,
                                            nothing_to_do};

/* Under "fork": the first workers are the pool's own children, forked when it is created;
 * the zygote forks the replacements and reports their ends on its socket. Without the
 * zygote no worker could be replaced: the pool is terminated (its workers die with it). */
static void zygote_lost(mp_pool_t *pool) {
  bool told_to_exit = atomic_load(&pool->sh->flags) & MP__POOL_TERMINATED;
  if (!told_to_exit)
    snprintf(pool->why_terminated, sizeof pool->why_terminated,
             ": its zygote died, so no worker could be replaced");
  atomic_fetch_or(&pool->sh->flags, MP__POOL_TERMINATED);
  for (uint32_t w = 0; w < pool->sh->n_workers; w++)
    if (!pool->workers[w].proc)
      worker_ended(pool, w, -SIGKILL);
  if (!told_to_exit) {
    end_create(pool, MP_EWORKERDIED, "the pool's zygote process died");
    do_terminate(pool);
  }
}

static void on_zygote(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  mp_pool_t *pool = handle->data;
  for (;;) {
    mp__zygote_msg_t msg;
    ssize_t n = mp__recv_record(pool->zygote_sock, &msg, sizeof msg, NULL, MSG_DONTWAIT);
    if (n == -EAGAIN)
      return;
    if (n != (ssize_t)sizeof msg || msg.w >= pool->sh->n_workers) {
      uv_poll_stop(handle);
      zygote_lost(pool);
      return;
    }
    if (msg.op == MP__ZYGOTE_STARTED && msg.value < 0) {
      char text[128];
      snprintf(text, sizeof text, "the zygote cannot fork a worker: %s", strerror(-msg.value));
      pool->workers[msg.w].running = false;
      pool->live--;
      end_create(pool, msg.value, text);
      start_failed(pool, msg.w, msg.value, text);
      maybe_all_ended(pool);
    } else if (msg.op == MP__ZYGOTE_STARTED) {
      atomic_store(&pool->sh->workers[msg.w].pid, msg.value);
    } else if (msg.op == MP__ZYGOTE_EXITED) {
      worker_ended(pool, msg.w, exitcode_of(msg.value));
    }
  }
}

/* The first workers and the zygote are forked here, before the supervisor thread starts:
 * every worker, the replacements too, starts from the process as it was at creation. The
 * first ones are forked by the pool's process, not by the zygote: they start while the
 * zygote is forked, and at the end they die in parallel with it, not before it. */
static int zygote_open(mp_pool_t *pool) {
  for (uint32_t w = 0; w < pool->sh->n_workers; w++) {
    int rc = start_by(pool, w, launch_process);
    if (rc < 0)
      return rc;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return mp__syserror("socketpair for the pool's zygote");
  uint64_t key;
  int rc = mp__fd_share(sv[1], &key);
  if (rc < 0) {
    close(sv[0]);
    close(sv[1]);
    return rc;
  }
  mp__pool_boot_t boot;
  memset(&boot, 0, sizeof boot);
  boot.sh = pool->sh;
  boot.sock_key = key;
  rc = mp_process_create(&pool->zygote, pool->ctx, mp__pool_zygote_main, &boot, sizeof boot,
                         "ForkPoolZygote");
  if (rc == 0) {
    mp_process_set_daemon(pool->zygote, true);
    if ((rc = mp__process_pass_fd(pool->zygote, key)) < 0 ||
        (rc = mp__process_pass_fd(pool->zygote, pool->sh->event_key)) < 0 ||
        (rc = mp_process_start(pool->zygote)) < 0) {
      mp_process_close(pool->zygote);
      pool->zygote = NULL;
    }
  }
  mp__fd_unshare(key); /* the zygote's end, ours to close now */
  if (rc < 0) {
    close(sv[0]);
    return rc;
  }
  pool->zygote_sock = sv[0];
  return 0;
}

static int zygote_start(mp_pool_t *pool, uint32_t w) {
  mp__zygote_msg_t msg = {MP__ZYGOTE_START, w, 0};
  return mp__send_record(pool->zygote_sock, &msg, sizeof msg, -1);
}

/* End of file tells the zygote to kill and reap its workers (it reports each end), then
 * exit; the pool's own are killed here. */
static void zygote_stop(mp_pool_t *pool) {
  shutdown(pool->zygote_sock, SHUT_WR);
  process_stop(pool);
}

static void zygote_close(mp_pool_t *pool) {
  if (!pool->zygote)
    return;
  if (pool->zygote_polling && !uv_is_closing((uv_handle_t *)&pool->zygote_poll))
    uv_poll_stop(&pool->zygote_poll);
  shutdown(pool->zygote_sock, SHUT_RDWR);
  if (mp_process_join(pool->zygote, 1.0) < 0) {
    mp_process_kill(pool->zygote);
    mp_process_join(pool->zygote, MP_FOREVER);
  }
  mp_process_close(pool->zygote);
  pool->zygote = NULL;
}

static const launcher_t zygote_launcher = {zygote_open, zygote_start, zygote_stop,
                                           zygote_close};

/* Threads of the pool's process, for the "thread" context. */
static void *thread_main(void *arg) {
  worker_t *wk = arg;
  wk->thread_code = mp__pool_worker_main(wk->pool->sh, wk->w);
  atomic_store(&wk->thread_ended, true);
  mp__pool_notify(wk->pool->event_fd);
  return NULL;
}

static int thread_start(mp_pool_t *pool, uint32_t w) {
  worker_t *wk = &pool->workers[w];
  atomic_store(&wk->thread_ended, false);
  return start_thread(&wk->thread, thread_main, wk);
}

static const launcher_t thread_launcher = {nothing_to_open, thread_start, nothing_to_do,
                                           nothing_to_do};

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

/* The outcome of creation: 0 once every worker is ready. */
static int creation_outcome(mp_pool_t *pool) {
  int rc = atomic_load(&pool->create_rc);
  if (rc < 0)
    return mp__error(rc, "mp_pool_create: %s", pool->create_msg);
  uint32_t ready = 0;
  for (uint32_t w = 0; w < pool->sh->n_workers; w++) {
    mp__worker_rec_t *rec = &pool->sh->workers[w];
    uint32_t state = atomic_load(&rec->state);
    if (state == MP__WORKER_INIT_FAILED)
      return mp__error(MP_ETASK, "mp_pool_create: the initializer failed in worker %u: %s",
                       w + 1, rec->error);
    ready += state == MP__WORKER_READY;
  }
  return ready == pool->sh->n_workers ? 0 : 1;
}

static int await_workers(mp_pool_t *pool) {
  for (;;) {
    uint32_t seen = atomic_load(&pool->sh->status);
    int rc = creation_outcome(pool);
    if (rc <= 0)
      return rc;
    mp__futex_wait(&pool->sh->status, seen, INT64_MAX);
  }
}

static int start_supervisor(mp_pool_t *pool) {
  int rc = uv_loop_init(&pool->loop);
  pool->loop_open = rc == 0;
  if (rc == 0)
    rc = uv_async_init(&pool->loop, &pool->async, on_request);
  if (rc == 0)
    rc = uv_poll_init(&pool->loop, &pool->event_poll, pool->event_fd);
  if (rc == 0)
    rc = uv_timer_init(&pool->loop, &pool->timer);
  if (rc == 0 && pool->zygote)
    rc = uv_poll_init(&pool->loop, &pool->zygote_poll, pool->zygote_sock);
  if (rc < 0)
    return mp__error(rc, "starting the pool's event loop: %s", uv_strerror(rc));
  pool->async.data = pool->event_poll.data = pool->timer.data = pool->zygote_poll.data = pool;
  uv_poll_start(&pool->event_poll, UV_READABLE, on_event);
  uv_timer_start(&pool->timer, on_timer, TIMER_MS, TIMER_MS);
  if (pool->zygote)
    uv_poll_start(&pool->zygote_poll, UV_READABLE | UV_DISCONNECT, on_zygote);
  pool->zygote_polling = pool->zygote != NULL;
  for (uint32_t w = 0; w < pool->sh->n_workers; w++) {
    if (pool->workers[w].proc && !pool->workers[w].poll && (rc = watch_process(pool, w)) < 0) {
      pool->workers[w].running = false;
      pool->live--;
      return rc;
    }
  }
  rc = start_thread(&pool->thread, supervisor_main, pool);
  pool->thread_started = rc == 0;
  return rc;
}

static int setup_initializer(mp__pool_shared_t *sh, const mp_pool_options_t *o) {
  if (!o->initializer)
    return 0;
  mp__fnref_t ref;
  int rc = mp__fnref_from_pointer((mp__fn_t)o->initializer, &ref);
  if (rc < 0)
    return rc;
  sh->init_ref = mp__shared_alloc(sizeof ref);
  sh->initargs = o->initargs_size ? mp__shared_alloc(o->initargs_size) : NULL;
  if (!sh->init_ref || (o->initargs_size && !sh->initargs))
    return MP_ENOMEM;
  memcpy(sh->init_ref, &ref, sizeof ref);
  sh->init_local = (mp__fn_t)o->initializer;
  if (o->initargs_size)
    memcpy(sh->initargs, o->initargs, o->initargs_size);
  sh->initargs_size = o->initargs_size;
  return 0;
}

static void free_pool(mp_pool_t *pool);

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
  mp_pool_t *pool = calloc(1, sizeof *pool);
  if (!pool)
    return mp__error(MP_ENOMEM, "mp_pool_create: no memory");
  pool->magic = POOL_MAGIC;
  pool->ctx = ctx;
  pool->event_fd = pool->zygote_sock = -1;
  pthread_mutex_init(&pool->lock, NULL);
  pthread_mutex_init(&pool->submit_lock, NULL);
  pool->launcher = ctx->ops == &mp__popen_thread ? &thread_launcher
                   : ctx->ops == &mp__popen_fork ? &zygote_launcher
                                                 : &process_launcher;
  pool->workers = calloc((size_t)processes, sizeof *pool->workers);
  mp__pool_shared_t *sh =
      mp__shared_alloc(sizeof *sh + ((size_t)processes + 1) * sizeof(mp__worker_rec_t));
  pool->sh = sh;
  if (!pool->workers || !sh) {
    free_pool(pool);
    return mp__error(MP_ENOMEM, "mp_pool_create: no memory for %d workers", processes);
  }
  for (uint32_t w = 0; w < (uint32_t)processes; w++) {
    pool->workers[w].pool = pool;
    pool->workers[w].w = w;
  }
  sh->n_workers = (uint32_t)processes;
  sh->maxtasks = o->maxtasksperchild;
  sh->retries = o->retries;
  sh->threads = pool->launcher == &thread_launcher;
  atomic_store(&sh->next_seq, MP__POOL_SLOTS);
  atomic_store(&sh->oldest, MP__POOL_SLOTS);
  pool->next_seq = MP__POOL_SLOTS;
  rc = setup_initializer(sh, o);
  if (rc == 0) {
    pool->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    rc = pool->event_fd < 0 ? mp__syserror("eventfd for the pool")
                            : mp__fd_share(pool->event_fd, &sh->event_key);
    if (rc < 0 && pool->event_fd >= 0)
      close(pool->event_fd);
    if (rc < 0)
      pool->event_fd = -1;
  }
  atomic_store(&pool->creating, true);
  if (rc == 0)
    rc = pool->launcher->open(pool);
  if (rc == 0)
    rc = start_supervisor(pool);
  if (rc == 0) {
    request(pool, REQ_START);
    rc = await_workers(pool);
  }
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
  return pool ? (int)pool->sh->n_workers : mp__error(MP_EINVAL, "mp_pool_processes: NULL");
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
  atomic_fetch_or(&pool->sh->flags, MP__POOL_CLOSED);
  mp__pool_wake_workers(pool->sh, INT32_MAX);
  request(pool, 0);
  return 0;
}

int mp_pool_terminate(mp_pool_t *pool) {
  check_pool(pool, "mp_pool_terminate");
  if (!pool)
    return mp__error(MP_EINVAL, "mp_pool_terminate: pool is NULL");
  atomic_fetch_or(&pool->sh->flags, MP__POOL_TERMINATED);
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
  if (!(atomic_load(&pool->sh->flags) & (MP__POOL_CLOSED | MP__POOL_TERMINATED)))
    return mp__error(MP_EINVAL, "mp_pool_join: the pool is still running (close it first)");
  if (wait_all_ended(pool, mp__deadline(timeout)) < 0)
    return mp__error(MP_ETIMEDOUT, "mp_pool_join: workers still run after %g s", timeout);
  pool->joined = true;
  return 0;
}

static void free_pool(mp_pool_t *pool) {
  mp__pool_shared_t *sh = pool->sh;
  while (pool->callbacks) {
    mp_async_result_t *ar = pool->callbacks;
    pool->callbacks = ar->next;
    mp_async_result_free(ar);
  }
  for (mp__job_t *job = pool->jobs, *next; job; job = next) {
    next = job->parent_next;
    mp__shared_release(job);
  }
  for (size_t i = 0; i < SPARES; i++)
    if (pool->spares[i])
      mp__shared_release(pool->spares[i]);
  if (sh) {
    for (uint32_t i = 0; i < atomic_load(&sh->n_fns); i++)
      mp__shared_release(sh->fns[i]);
    if (sh->init_ref)
      mp__shared_release(sh->init_ref);
    if (sh->initargs)
      mp__shared_release(sh->initargs);
    if (pool->event_fd >= 0)
      mp__fd_unshare(sh->event_key);
    mp__shared_release(sh);
  }
  if (pool->zygote_sock >= 0)
    close(pool->zygote_sock);
  pthread_mutex_destroy(&pool->lock);
  pthread_mutex_destroy(&pool->submit_lock);
  free(pool->workers);
  /* Volatile: a plain store before free() is dead to the compiler, and free() may leave the
   * word as it was (a block merged into the top of the heap is not written). */
  *(volatile uint64_t *)&pool->magic = 0;
  free(pool);
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
  if (!pool->joined)
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
  for (uint32_t w = 0; w < pool->sh->n_workers; w++) {
    worker_t *wk = &pool->workers[w];
    if (pool->launcher == &thread_launcher && wk->running)
      pthread_join(wk->thread, NULL);
    free(wk->poll); /* closed with the loop, its worker unreaped */
    if (wk->proc) {
      mp_process_kill(wk->proc);
      mp_process_join(wk->proc, MP_FOREVER);
      mp_process_close(wk->proc);
    }
  }
  if (!pool->launcher_closed)
    pool->launcher->close(pool);
  free_pool(pool);
}

/* ------------------------------ submitting ------------------------------ */

static int check_open(mp_pool_t *pool, const char *what) {
  uint32_t flags = atomic_load(&pool->sh->flags);
  if (flags & MP__POOL_TERMINATED)
    return mp__error(MP_ETERMINATED, "%s: the pool was terminated%s", what,
                     pool->why_terminated);
  if (flags & MP__POOL_CLOSED)
    return mp__error(MP_ECLOSED, "%s: the pool is closed", what);
  return 0;
}

/* The task function's index in the pool's table, adding it on first use. */
static int function_index(mp_pool_t *pool, mp_task_fn_t fn, uint32_t *index) {
  mp__pool_shared_t *sh = pool->sh;
  pthread_mutex_lock(&pool->lock);
  uint32_t n = atomic_load(&sh->n_fns), i = 0;
  while (i < n && sh->local_fns[i] != (mp__fn_t)fn)
    i++;
  int rc = 0;
  if (i == n) {
    mp__fnref_t ref;
    if (n == MP__POOL_MAX_FNS)
      rc = mp__error(MP_ENOMEM, "more than %d task functions in one pool", MP__POOL_MAX_FNS);
    else if ((rc = mp__fnref_from_pointer((mp__fn_t)fn, &ref)) == 0 &&
             !(sh->fns[n] = mp__shared_alloc(sizeof ref)))
      rc = MP_ENOMEM;
    if (rc == 0) {
      memcpy(sh->fns[n], &ref, sizeof ref);
      sh->local_fns[n] = (mp__fn_t)fn;
      atomic_store(&sh->n_fns, n + 1);
    }
  }
  pthread_mutex_unlock(&pool->lock);
  *index = i;
  return rc;
}

typedef struct {
  const char *what;
  mp_task_fn_t fn;
  const void *items;
  size_t n, item_size, result_size, chunksize;
  uint32_t flags;
  uint32_t window;
} spec_t;

static size_t default_chunksize(const mp_pool_t *pool, size_t n) {
  size_t per = 4 * (size_t)pool->sh->n_workers;
  size_t chunksize = n / per + (n % per != 0);
  return chunksize ? chunksize : 1;
}

static int submit(mp_pool_t *pool, const spec_t *s, mp__job_t **out) {
  check_pool(pool, s->what);
  if (!pool || !s->fn)
    return mp__error(MP_EINVAL, "%s: %s is NULL", s->what, pool ? "the function" : "pool");
  if (!s->items && s->n && s->item_size)
    return mp__error(MP_EINVAL, "%s: items is NULL but n is %zu", s->what, s->n);
  size_t bytes;
  if (__builtin_mul_overflow(s->n, s->item_size, &bytes) ||
      __builtin_mul_overflow(s->n, s->result_size, &bytes))
    return mp__error(MP_EINVAL, "%s: %zu items of %zu bytes with results of %zu bytes overflow",
                     s->what, s->n, s->item_size, s->result_size);
  int rc = check_open(pool, s->what);
  uint32_t fn;
  if (rc == 0)
    rc = function_index(pool, s->fn, &fn);
  if (rc < 0)
    return rc;
  size_t chunksize = s->chunksize                    ? s->chunksize
                     : (s->flags & MP__JOB_ITERATOR) ? 1
                                                     : default_chunksize(pool, s->n);
  if (chunksize > s->n) /* one chunk holds it all: no room for items that do not exist */
    chunksize = s->n ? s->n : 1;
  mp__job_t *job;
  rc = mp__job_create(take_spare, pool, pool->sh->n_workers, fn, s->flags, s->n, s->item_size,
                      s->result_size, chunksize, s->window, &job);
  if (rc < 0)
    return mp__error_prefix(rc, "%s", s->what);
  if (!(s->flags & MP__JOB_ITERATOR) && s->n && s->item_size)
    memcpy(mp__job_input(job, 0), s->items, s->n * s->item_size);
  add_job(pool, job);
  if (job->n_chunks > 0) {
    pthread_mutex_lock(&pool->submit_lock);
    rc = mp__job_publish(pool->sh, job, pool->next_seq, INT64_MAX);
    if (rc == 0)
      pool->next_seq++;
    pthread_mutex_unlock(&pool->submit_lock);
    if (rc < 0) {
      release_job(pool, job);
      return rc;
    }
    uint32_t wake = job->n_chunks < pool->sh->n_workers ? job->n_chunks : pool->sh->n_workers;
    if (!(s->flags & MP__JOB_ITERATOR))
      mp__pool_wake_workers(pool->sh, (int)wake);
  }
  *out = job;
  return 0;
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
  if (rc == MP_EINTR) {
    mp_pool_terminate(pool);
    return mp__error(MP_EINTR, "%s: interrupted by SIGINT; the pool was terminated", s->what);
  }
  return rc;
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

/* Ctrl-C. A futex wait fails with EINTR after any handler, SA_RESTART or not, and cannot
 * tell which signal it was; so a waiter only ends early for SIGINT, which it learns of from
 * a counter bumped by a handler chained in front of the program's own. Under SIGINT's
 * default disposition there is nothing to chain: the program dies, and its workers with it. */
static _Atomic uint32_t sigints;
static struct sigaction program_sigint; /* the handler chained to */
static pthread_mutex_t sigint_lock = PTHREAD_MUTEX_INITIALIZER;

static void count_sigint(int sig, siginfo_t *info, void *context) {
  atomic_fetch_add(&sigints, 1);
  if (program_sigint.sa_flags & SA_SIGINFO)
    program_sigint.sa_sigaction(sig, info, context);
  else if (program_sigint.sa_handler != SIG_DFL && program_sigint.sa_handler != SIG_IGN)
    program_sigint.sa_handler(sig);
}

static bool sigint_chainable(const struct sigaction *sa) {
  if (sa->sa_flags & SA_SIGINFO)
    return sa->sa_sigaction != count_sigint;
  return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN;
}

/* Chains the counter in front of the program's SIGINT handler if it has one not chained yet
 * (it may have been installed since the last wait); returns the counter, or NULL when the
 * wait does not block. */
static const _Atomic uint32_t *watch_sigint(double timeout) {
  if (!(timeout > 0))
    return NULL;
  struct sigaction now;
  pthread_mutex_lock(&sigint_lock);
  if (sigaction(SIGINT, NULL, &now) == 0 && sigint_chainable(&now)) {
    program_sigint = now;
    struct sigaction mine = now;
    mine.sa_sigaction = count_sigint;
    mine.sa_flags |= SA_SIGINFO;
    sigaction(SIGINT, &mine, NULL);
  }
  pthread_mutex_unlock(&sigint_lock);
  return &sigints;
}

static bool result_ready(const mp__job_t *job, void *arg) {
  const mp_async_result_t *ar = arg;
  return mp__job_complete(job) &&
         (!ar->has_callbacks || atomic_load(&job->callback_done) || on_supervisor(ar->pool));
}

static int wait_result(mp_async_result_t *ar, double timeout, const char *what) {
  bool ready = result_ready(ar->job, ar); /* then no need to look at SIGINT's handler */
  int rc = mp__job_wait(ar->job, result_ready, ar, ready ? NULL : watch_sigint(timeout),
                        mp__deadline(timeout));
  if (rc == MP_ETIMEDOUT)
    return mp__error(rc, "%s: not ready after %g s", what, timeout);
  if (rc == MP_EINTR)
    return mp__error(rc, "%s: interrupted by SIGINT", what);
  return rc;
}

/* A map's results, chunk by chunk (each window slot is followed by its canary); those of
 * failed chunks, which hold whatever the block held, are zeroed. */
static void copy_results(const mp__job_t *job, char *results) {
  for (uint32_t c = 0; c < job->n_chunks; c++) {
    char *to = results + (uint64_t)c * job->chunksize * job->result_size;
    uint64_t bytes = mp__job_chunk_items(job, c) * job->result_size;
    if (MP__CHUNK_STATUS(atomic_load(mp__job_state(job, c))) == MP__CHUNK_DONE)
      memcpy(to, mp__job_output(job, c), bytes);
    else
      memset(to, 0, bytes);
  }
}

/* A recorded failure's code: negative, whatever a wild write in a task left there. */
static int task_code(const mp__task_error_t *e) {
  return e->code < 0 ? e->code : MP_ETASK;
}

int mp_async_result_get(mp_async_result_t *ar, void *result, size_t cap, size_t *len,
                        double timeout) {
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_get: ar is NULL");
  if (!result && cap)
    return mp__error(MP_EINVAL, "mp_async_result_get: result is NULL with a capacity");
  int rc = wait_result(ar, timeout, "mp_async_result_get");
  if (rc < 0)
    return rc;
  mp__job_t *job = ar->job;
  if (atomic_load(&job->abort_code))
    return mp__error(atomic_load(&job->abort_code),
                     "mp_async_result_get: the pool was terminated before the work was done%s",
                     ar->pool->why_terminated);
  const mp__task_error_t *e = mp__job_error(job, 0);
  bool failed = e->item != UINT64_MAX;
  uint64_t need = ar->is_apply ? atomic_load(&job->result_len) : job->n * job->result_size;
  if (len)
    *len = need;
  if (result && !failed && cap < need)
    return mp__error(MP_ETOOSMALL,
                     "mp_async_result_get: the result has %llu bytes, the "
                     "buffer %zu",
                     (unsigned long long)need, cap);
  if (result && need && cap >= need) {
    if (!ar->is_apply)
      copy_results(job, result);
    else if (!failed)
      memcpy(result, mp__job_output(job, 0), need);
  }
  if (!failed)
    return 0;
  if (ar->is_apply)
    return mp__error(task_code(e), "%s", e->msg);
  return mp__error(task_code(e), "item %llu: %s", (unsigned long long)e->item, e->msg);
}

int mp_async_result_wait(mp_async_result_t *ar, double timeout) {
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_wait: ar is NULL");
  return wait_result(ar, timeout, "mp_async_result_wait");
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
  return !atomic_load(&ar->job->abort_code) && mp__job_error(ar->job, 0)->item == UINT64_MAX;
}

void mp_async_result_free(mp_async_result_t *ar) {
  if (!ar || atomic_fetch_sub(&ar->refs, 1) != 1)
    return;
  release_job(ar->pool, ar->job);
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
  s->flags = MP__JOB_ITERATOR | MP__JOB_WAKE_EACH;
  s->window = 4 * pool->sh->n_workers;
  int rc = submit(pool, s, &it->job);
  if (rc < 0) {
    free(it);
    return rc;
  }
  it->pool = pool;
  it->items = s->items;
  it->ordered = ordered;
  it->active = -1;
  while (mp__job_feed(pool->sh, it->job, it->items))
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

static bool chunk_finished(uint64_t v) {
  uint32_t status = MP__CHUNK_STATUS(v);
  return status == MP__CHUNK_DONE || status == MP__CHUNK_FAILED;
}

/* The chunk to deliver next, or -1 if none has finished yet. */
static int64_t finished_chunk(const mp__job_t *job, const mp_imap_t *it) {
  if (it->ordered) {
    uint64_t v = atomic_load(mp__job_state(job, it->next_chunk));
    return MP__CHUNK_OF(v) == it->next_chunk && chunk_finished(v) ? (int64_t)it->next_chunk
                                                                  : -1;
  }
  uint32_t limit = atomic_load(&job->limit);
  for (uint32_t i = 0; i < job->window; i++) {
    uint64_t v = atomic_load(mp__job_state(job, i));
    if (MP__CHUNK_OF(v) < limit && chunk_finished(v))
      return MP__CHUNK_OF(v);
  }
  return -1;
}

static bool iterator_can_go_on(const mp__job_t *job, void *arg) {
  return finished_chunk(job, arg) >= 0 || atomic_load(&job->abort_code);
}

/* The active chunk is delivered: its window slot takes the next chunk. */
static void take_chunk(mp_imap_t *it) {
  mp__job_t *job = it->job;
  uint32_t chunk = (uint32_t)it->active;
  atomic_store(mp__job_state(job, chunk), MP__CHUNK_STATE(chunk, 0, 0, MP__CHUNK_FREE));
  it->active = -1;
  it->taken++;
  if (it->ordered)
    it->next_chunk++;
  while (mp__job_feed(it->pool->sh, job, it->items))
    ;
}

int mp_imap_next(mp_imap_t *it, void *result, size_t *index, double timeout) {
  if (!it || (!result && it->job->result_size))
    return mp__error(MP_EINVAL, "mp_imap_next: %s is NULL", it ? "result" : "it");
  mp__job_t *job = it->job;
  if (it->active < 0) {
    if (it->taken == job->n_chunks)
      return MP_EEOF;
    bool ready = iterator_can_go_on(job, it);
    int rc = mp__job_wait(job, iterator_can_go_on, it, ready ? NULL : watch_sigint(timeout),
                          mp__deadline(timeout));
    if (rc == MP_ETIMEDOUT)
      return mp__error(rc, "mp_imap_next: no result after %g s", timeout);
    if (rc == MP_EINTR)
      return mp__error(rc, "mp_imap_next: interrupted by SIGINT");
    it->active = finished_chunk(job, it);
    if (it->active < 0)
      return mp__error(atomic_load(&job->abort_code), "mp_imap_next: the pool was terminated");
    it->item = 0;
  }
  uint32_t chunk = (uint32_t)it->active;
  uint64_t first = (uint64_t)chunk * job->chunksize, i = first + it->item;
  uint64_t v = atomic_load(mp__job_state(job, chunk));
  const mp__task_error_t *e = mp__job_error(job, chunk);
  if (index)
    *index = i;
  if (MP__CHUNK_STATUS(v) == MP__CHUNK_FAILED && (e->item == UINT64_MAX || i >= e->item)) {
    int code = e->item == UINT64_MAX ? atomic_load(&job->abort_code) : task_code(e);
    if (index && e->item != UINT64_MAX)
      *index = e->item;
    char msg[MP__POOL_MSG];
    snprintf(msg, sizeof msg, "%s", e->item == UINT64_MAX ? "the pool was terminated" : e->msg);
    uint64_t item = e->item == UINT64_MAX ? i : e->item;
    take_chunk(it); /* the rest of a failed chunk never ran */
    return mp__error(code ? code : MP_ETERMINATED, "item %llu: %s", (unsigned long long)item,
                     msg);
  }
  if (job->result_size)
    memcpy(result, (char *)mp__job_output(job, chunk) + it->item * job->result_size,
           job->result_size);
  if (++it->item == mp__job_chunk_items(job, chunk))
    take_chunk(it);
  return 0;
}

void mp_imap_free(mp_imap_t *it) {
  if (!it)
    return;
  if (!mp__job_complete(it->job))
    mp__job_abort(it->pool->sh, it->job, MP_ETERMINATED);
  release_job(it->pool, it->job);
  free(it);
}
