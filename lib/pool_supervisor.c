/*
 * The Pool's supervisor: the workers' lives. One thread running a libuv loop starts the
 * workers (through the launcher, pool_launcher.h) and replaces those that end, tells the job
 * table which worker was lost (it fails or requeues what that worker ran), runs the callbacks
 * of async results (through pool.c's hook), frees the jobs whose last reference a worker
 * dropped, and carries out terminate. It is woken by an eventfd that workers write (a job
 * with callbacks completed, a worker changed state, a job block is free), by the launcher's
 * watchers and by uv_async requests from the user's threads. It is never on the path of a
 * task. pool.c calls in (pool_private.h); nothing here calls pool.c.
 */
#include "pool_private.h"
#include "trace.h"

#include <signal.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#define TIMER_MS 100
/* Failed starts in a row, with no worker ready, that end creation or the pool. */
#define MAX_START_FAILURES 5

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

void mp__pool_do_terminate(mp_pool_t *pool) {
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
  mp__pool_do_terminate(pool);
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
  /* A creation error stops replacements while creation runs; one reported as creation
   * ended (the supervisor read `creating` just before) does not stop a running pool's. */
  bool creation_failed = atomic_load(&pool->creating) && atomic_load(&pool->create_rc);
  return !(flags & MP__POOL_TERMINATED) && !creation_failed &&
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
    snprintf(init_msg, sizeof init_msg, "the initializer failed: %.*s", MP__POOL_MSG,
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
    mp__pool_start_worker(pool, w);
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

mp__launcher_events_t mp__pool_launcher_events(mp_pool_t *pool) {
  return (mp__launcher_events_t){pool, worker_started, worker_start_failed, worker_ended,
                                 launcher_broken};
}

void mp__pool_start_worker(mp_pool_t *pool, uint32_t w) {
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

static void on_event(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  mp_pool_t *pool = handle->data;
  uint64_t count;
  while (read(pool->event_fd, &count, sizeof count) > 0)
    ;
  pool->run_callbacks(pool);
  mp__jobs_reclaim(pool->jobs);
  maybe_all_ended(pool);
}

static void on_timer(uv_timer_t *handle) {
  mp_pool_t *pool = handle->data;
  pool->run_callbacks(pool); /* in case a worker died before it could say a job was complete */
  mp__jobs_reclaim(pool->jobs);
  mp__jobs_restore_flags(pool->jobs);
  if (!replacements_wanted(pool))
    return;
  for (uint32_t w = 0; w < pool->n_workers; w++)
    if (!pool->running[w])
      mp__pool_start_worker(pool, w);
}

void mp__pool_close_handle(uv_handle_t *handle, void *arg) {
  (void)arg;
  if (!uv_is_closing(handle))
    uv_close(handle, NULL);
}

static void on_request(uv_async_t *handle) {
  mp_pool_t *pool = handle->data;
  uint32_t req = atomic_exchange(&pool->requests, 0);
  if (req & REQ_TERMINATE)
    mp__pool_do_terminate(pool);
  if (req & REQ_STOP) {
    atomic_fetch_or(&pool->requests, REQ_STOP); /* no more replacements */
    uv_walk(&pool->loop, mp__pool_close_handle, NULL);
  }
  pool->run_callbacks(pool);
  maybe_all_ended(pool);
}

static void *supervisor_main(void *arg) {
  mp_pool_t *pool = arg;
  uv_run(&pool->loop, UV_RUN_DEFAULT);
  return NULL;
}

int mp__pool_start_supervisor(mp_pool_t *pool) {
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
