/*
 * The Pool, Python's multiprocessing.Pool: the API, submitting, async results, iterators and
 * the Ctrl-C rule. It drives the job table (pool_jobs.h), which owns the shared job block and
 * its protocol, and the supervisor (pool_supervisor.c), which owns the workers' lives through
 * a launcher (pool_launcher.h). The item and lazy forms (pool_items.c) are built on this
 * file's submissions and iterators. Calls run one way (pool_private.h): pool_items.c ->
 * pool.c -> pool_supervisor.c; the supervisor runs callbacks through pool->run_callbacks.
 *
 * No thread of the pool is on the path of a task: submitters publish jobs in the shared
 * arena and wait on them directly.
 */
#include "pool_private.h"

#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* How long terminate waits for the workers' ends before it gives up on them. */
#define TERMINATE_WAIT_NS 5000000000ll
/* Applies a stream may hold back and show the workers together (mp__jobs_set_hold): 64 in
 * flight went from 0.32-0.35 to 0.17-0.18 us a task (pool.apply_pipelined; 4 or 16 held did
 * worse, docs/architecture.md). */
#define APPLIES_HELD 8

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
        return mp__error(MP_ETASK, "mp_pool_create: the initializer failed in worker %u: %.*s",
                         w + 1, MP__POOL_MSG, mp__jobs_worker_error(pool->jobs, w));
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

/* Its job, or its chunk of a batch, is done or failed. */
static bool result_finished(const mp_async_result_t *ar) {
  return ar->batched ? mp__job_chunk_finished(ar->job, ar->chunk) : mp__job_complete(ar->job);
}

static void release_result(mp_async_result_t *ar);

/* Callbacks of completed results, in the parent, one at a time. */
static void run_callbacks(mp_pool_t *pool) {
  for (;;) {
    pthread_mutex_lock(&pool->lock);
    mp_async_result_t **link = &pool->callbacks, *ar = NULL;
    for (; *link; link = &(*link)->next) {
      if (result_finished(*link)) {
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
    atomic_store(&ar->callbacks_ran, true);
    mp__job_wake_waiter(ar->job);
    release_result(ar); /* the list's reference */
  }
}

static void destroy(mp_pool_t *pool);

/* What creation makes before the workers: the job table, the eventfd, the loop, the
 * launcher's state. */
static int make_parts(mp_pool_t *pool, const mp_pool_options_t *o) {
  int rc = mp__jobs_create(&pool->jobs, pool->n_workers, o->maxtasksperchild, o->retries);
  if (rc == 0)
    mp__jobs_set_hold(pool->jobs, APPLIES_HELD);
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
      .events = mp__pool_launcher_events(pool),
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
  pool->run_callbacks = run_callbacks;
  atomic_store(&pool->creating, true);
  rc = make_parts(pool, o);
  /* The first workers start from this thread, before the supervisor's exists (fork's are
   * forked here); a failure ends creation. */
  for (uint32_t w = 0; rc == 0 && w < pool->n_workers && !atomic_load(&pool->create_rc); w++)
    mp__pool_start_worker(pool, w);
  if (rc == 0 && (rc = atomic_load(&pool->create_rc)) < 0)
    mp__error(rc, "mp_pool_create: %s", pool->create_msg);
  if (rc == 0)
    rc = mp__pool_start_supervisor(pool);
  /* Only an initializer's outcome is waited for. Without one, a worker takes the first job
   * as it starts, where a wait would put it to sleep once ready and cost a wake-up per
   * worker (and the caller a sleep of its own); Python's Pool does not wait either. A worker
   * lost at its start is then replaced as any other. */
  if (rc == 0 && o->initializer)
    rc = await_workers(pool);
  atomic_store(&pool->creating, false);
  /* Without an initializer nothing waited: a launcher's error the supervisor reported
   * meanwhile still ends creation (one it reports from now on is a running pool's). */
  if (rc == 0 && (rc = atomic_load(&pool->create_rc)) < 0)
    mp__error(rc, "mp_pool_create: %s", pool->create_msg);
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
    mp__pool_do_terminate(pool);
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
    uv_walk(&pool->loop, mp__pool_close_handle, NULL);
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

int mp__pool_check_open(mp_pool_t *pool, const char *what) {
  uint32_t flags = mp__jobs_flags(pool->jobs);
  if (flags & MP__POOL_TERMINATED)
    return mp__error(MP_ETERMINATED, "%s: the pool was terminated%s", what,
                     pool->why_terminated);
  if (flags & MP__POOL_CLOSED)
    return mp__error(MP_ECLOSED, "%s: the pool is closed", what);
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

/* The checks of every submission: a live pool, a function, items if they have bytes. */
static int check_submission(mp_pool_t *pool, const spec_t *s) {
  check_pool(pool, s->what);
  if (!pool || !s->fn)
    return mp__error(MP_EINVAL, "%s: %s is NULL", s->what, pool ? "the function" : "pool");
  if (!s->items && !(s->flags & MP__JOB_OPEN) && s->n && s->item_size)
    return mp__error(MP_EINVAL, "%s: items is NULL but n is %zu", s->what, s->n);
  return 0;
}

static int submit(mp_pool_t *pool, const spec_t *s, mp__jobrec_t **out) {
  int rc = check_submission(pool, s);
  if (rc < 0)
    return rc;
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
  rc = mp__pool_check_open(pool, s->what);
  if (rc == 0)
    rc = mp__jobs_function(pool->jobs, (mp__fn_t)s->fn, &spec.fn);
  if (rc < 0)
    return rc;
  spec.chunksize = mp__chunksize(s->n, !s->chunksize && (s->flags & MP__JOB_ITERATOR) ? 1 : s->chunksize,
                                 pool->n_workers);
  rc = mp__jobs_submit(pool->jobs, &spec, out);
  return rc < 0 ? mp__error_prefix(rc, "%s", s->what) : 0;
}

_Static_assert(sizeof(mp_async_result_t) <= MP__JOB_OWNER_BYTES &&
                   _Alignof(mp_async_result_t) <= _Alignof(uint64_t),
               "an async result fits its job's owner record");

static bool with_callbacks(const mp_async_callbacks_t *callbacks) {
  return callbacks && (callbacks->callback || callbacks->error_callback);
}

/* The request of chunk of job (whose reference it takes over), written whole into its
 * owner's record (a few stores: the record's memset before, an inline `rep stos` at every
 * apply, was slow to start), listed for its callbacks if it has some. */
static mp_async_result_t *make_request(mp_pool_t *pool, mp__jobrec_t *job, uint32_t chunk,
                                       const mp_async_callbacks_t *callbacks, bool is_apply) {
  bool has_callbacks = with_callbacks(callbacks);
  mp_async_result_t *ar = mp__job_owner(job, chunk);
  *ar = (mp_async_result_t){.magic = RESULT_MAGIC,
                            .pool = pool,
                            .job = job,
                            .has_callbacks = has_callbacks,
                            .refs = has_callbacks ? 2 : 1,
                            .is_apply = is_apply,
                            .batched = job->head.flags & MP__JOB_BATCH,
                            .chunk = chunk};
  if (has_callbacks) {
    ar->callbacks = *callbacks;
    pthread_mutex_lock(&pool->lock);
    ar->next = pool->callbacks;
    pool->callbacks = ar;
    pthread_mutex_unlock(&pool->lock);
    /* It may have completed before it was listed (or be empty): look now. */
    mp__pool_notify(pool->event_fd);
  }
  return ar;
}

/* A request for s, in *out (NULL on failure). */
int mp__pool_make_result(mp_pool_t *pool, spec_t *s, const mp_async_callbacks_t *callbacks,
                         bool is_apply, mp_async_result_t **out) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: ar is NULL", s->what);
  *out = NULL;
  if (with_callbacks(callbacks))
    s->flags |= MP__JOB_NOTIFY;
  mp__jobrec_t *job;
  int rc = submit(pool, s, &job);
  if (rc < 0)
    return rc;
  *out = make_request(pool, job, 0, callbacks, is_apply);
  return 0;
}

/* An apply's request: a job of its own, or a chunk of the batch of applies in flight
 * (mp__jobs_apply). */
static int make_apply(mp_pool_t *pool, const char *what, mp_task_fn_t fn, const void *arg,
                      size_t size, size_t result_max, const mp_async_callbacks_t *callbacks,
                      mp_async_result_t **out) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: ar is NULL", what);
  *out = NULL;
  spec_t s = {what, fn, arg, 1, size, result_max, 1, 0, 0};
  mp__apply_spec_t spec = {0, with_callbacks(callbacks), arg, size, result_max};
  int rc = check_submission(pool, &s);
  if (rc == 0)
    rc = mp__pool_check_open(pool, what);
  if (rc == 0)
    rc = mp__jobs_function(pool->jobs, (mp__fn_t)fn, &spec.fn);
  if (rc < 0)
    return rc;
  mp__jobrec_t *job;
  uint32_t chunk;
  if ((rc = mp__jobs_apply(pool->jobs, &spec, &job, &chunk)) < 0)
    return mp__error_prefix(rc, "%s", what);
  *out = make_request(pool, job, chunk, callbacks, true);
  return 0;
}

int mp_pool_map_async(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n,
                      size_t item_size, size_t result_size, size_t chunksize,
                      const mp_async_callbacks_t *callbacks, mp_async_result_t **ar) {
  spec_t s = {"mp_pool_map_async", fn, items, n, item_size, result_size, chunksize, 0, 0};
  return mp__pool_make_result(pool, &s, callbacks, false, ar);
}

int mp_pool_starmap_async(mp_pool_t *pool, mp_task_fn_t fn, const void *tuples, size_t n,
                          size_t tuple_size, size_t result_size, size_t chunksize,
                          const mp_async_callbacks_t *callbacks, mp_async_result_t **ar) {
  spec_t s = {"mp_pool_starmap_async", fn, tuples, n, tuple_size, result_size, chunksize, 0, 0};
  return mp__pool_make_result(pool, &s, callbacks, false, ar);
}

int mp_pool_apply_async(mp_pool_t *pool, mp_task_fn_t fn, const void *arg, size_t size,
                        size_t result_max, const mp_async_callbacks_t *callbacks,
                        mp_async_result_t **ar) {
  return make_apply(pool, "mp_pool_apply_async", fn, arg, size, result_max, callbacks, ar);
}

/* The end of a blocking call: Ctrl-C terminates the pool. */
int mp__pool_end_sync(mp_pool_t *pool, const char *what, int rc) {
  if (rc != MP_EINTR)
    return rc;
  mp_pool_terminate(pool);
  return mp__error(MP_EINTR, "%s: interrupted by SIGINT; the pool was terminated", what);
}

/* The end of a blocking call: get, free. Ctrl-C (SIGINT caught by a handler) ends the
 * pool, as leaving Python's `with Pool()` on KeyboardInterrupt does. */
static int finish_sync(mp_pool_t *pool, const char *what, mp_async_result_t *ar, void *result,
                       size_t cap, size_t *len) {
  int rc = mp_async_result_get(ar, result, cap, len, MP_FOREVER);
  mp_async_result_free(ar);
  return mp__pool_end_sync(pool, what, rc);
}

/* A blocking map: submit, get, free. */
static int run_sync(mp_pool_t *pool, spec_t *s, void *results) {
  if (!results && s->n && s->result_size)
    return mp__error(MP_EINVAL, "%s: results is NULL", s->what);
  mp_async_result_t *ar;
  int rc = mp__pool_make_result(pool, s, NULL, false, &ar);
  if (rc < 0)
    return rc;
  uint64_t need = s->n * s->result_size; /* checked by the submission */
  mp__jobs_prepare_results(results, need); /* while the workers work */
  return finish_sync(pool, s->what, ar, results, need, NULL);
}

int mp_pool_map(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n, size_t item_size,
                void *results, size_t result_size, size_t chunksize) {
  spec_t s = {"mp_pool_map", fn, items, n, item_size, result_size, chunksize, 0, 0};
  return run_sync(pool, &s, results);
}

int mp_pool_starmap(mp_pool_t *pool, mp_task_fn_t fn, const void *tuples, size_t n,
                    size_t tuple_size, void *results, size_t result_size, size_t chunksize) {
  spec_t s = {"mp_pool_starmap", fn, tuples, n, tuple_size, result_size, chunksize, 0, 0};
  return run_sync(pool, &s, results);
}

int mp_pool_apply(mp_pool_t *pool, mp_task_fn_t fn, const void *arg, size_t size, void *result,
                  size_t result_cap, size_t *result_len) {
  mp_async_result_t *ar;
  int rc = make_apply(pool, "mp_pool_apply", fn, arg, size, result_cap, NULL, &ar);
  return rc < 0 ? rc : finish_sync(pool, "mp_pool_apply", ar, result, result_cap, result_len);
}

/* ---------------------------- async results ---------------------------- */

static bool result_ready(const mp__jobrec_t *job, void *arg) {
  (void)job; /* ar's */
  const mp_async_result_t *ar = arg;
  return result_finished(ar) &&
         (!ar->has_callbacks || atomic_load(&ar->callbacks_ran) || on_supervisor(ar->pool));
}

/* A finished result's abort code (the pool was terminated before it was done), or 0. */
static int result_aborted(const mp_async_result_t *ar) {
  return ar->batched ? mp__job_chunk_aborted(ar->job, ar->chunk) : mp__job_aborted(ar->job);
}

static int result_take(const mp_async_result_t *ar, void *result, size_t cap, size_t *len) {
  if (ar->batched)
    return mp__job_take_chunk(ar->job, ar->chunk, result, cap, len);
  return mp__job_take(ar->job, ar->is_apply, result, cap, len);
}

/* Waits on job until can_go_on, ending early on SIGINT (Ctrl-C: the one rule of signals.c,
 * watched only by a wait that blocks, and only once it is about to sleep). */
static int wait_job(mp__jobrec_t *job, bool (*can_go_on)(const mp__jobrec_t *, void *), void *arg,
                    double timeout, const char *what) {
  int rc = mp__job_wait(job, can_go_on, arg, timeout > 0,
                        mp__deadline(timeout));
  if (rc == MP_ETIMEDOUT)
    return mp__error(rc, "%s: not ready after %g s", what, timeout);
  if (rc == MP_EINTR)
    return mp__error(rc, "%s: interrupted by SIGINT", what);
  return rc;
}

/* A look at an apply of a batch ends the caller's stream: the applies held back are shown
 * to the workers first (mp__jobs_set_hold). */
static void end_stream(const mp_async_result_t *ar) {
  if (ar->batched)
    mp__jobs_flush(ar->pool->jobs);
}

/* The result once ready: waited for, an abort told, then taken. */
static int wait_and_take(mp_async_result_t *ar, void *result, size_t cap, size_t *len,
                         double timeout) {
  int rc = wait_job(ar->job, result_ready, ar, timeout, "mp_async_result_get");
  if (rc < 0)
    return rc;
  if ((rc = result_aborted(ar)) < 0)
    return mp__error(rc, "mp_async_result_get: %s before the work was done%s",
                     mp__job_abort_reason(rc),
                     rc == MP_ETERMINATED ? ar->pool->why_terminated : "");
  if (!ar->is_apply && cap >= ar->job->head.n * ar->job->head.result_size)
    mp__jobs_prepare_results(result, ar->job->head.n * ar->job->head.result_size);
  return result_take(ar, result, cap, len);
}

int mp_async_result_get(mp_async_result_t *ar, void *result, size_t cap, size_t *len,
                        double timeout) {
  check_result(ar, "mp_async_result_get");
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_get: ar is NULL");
  if (!result && cap)
    return mp__error(MP_EINVAL, "mp_async_result_get: result is NULL with a capacity");
  end_stream(ar);
  /* An apply a worker finished before it was asked for (in a stream, most of them): no
   * wait, no look at failures or aborts, one look at its state word. */
  int rc = ar->batched && !ar->has_callbacks
               ? mp__job_take_done_chunk(ar->job, ar->chunk, result, cap, len)
               : 1;
  if (rc == 1)
    rc = wait_and_take(ar, result, cap, len, timeout);
  return rc == MP_ETOOSMALL ? mp__error_prefix(rc, "mp_async_result_get") : rc;
}

int mp_async_result_wait(mp_async_result_t *ar, double timeout) {
  check_result(ar, "mp_async_result_wait");
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_wait: ar is NULL");
  end_stream(ar);
  return wait_job(ar->job, result_ready, ar, timeout, "mp_async_result_wait");
}

int mp_async_result_ready(mp_async_result_t *ar) {
  check_result(ar, "mp_async_result_ready");
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_ready: ar is NULL");
  end_stream(ar);
  return result_ready(ar->job, ar);
}

int mp_async_result_successful(mp_async_result_t *ar) {
  check_result(ar, "mp_async_result_successful");
  if (!ar)
    return mp__error(MP_EINVAL, "mp_async_result_successful: ar is NULL");
  if (!result_ready(ar->job, ar))
    return mp__error(MP_ENOTREADY, "mp_async_result_successful: the result is not ready");
  return !result_aborted(ar) && result_take(ar, NULL, 0, NULL) == 0;
}

/* Drops a reference to ar: the caller's, or the callback list's. */
static void release_result(mp_async_result_t *ar) {
  /* A count of 1 is the last reference (the callback list drops only its own): then no
   * read-modify-write, a locked instruction per apply. */
  if (atomic_load(&ar->refs) != 1 && atomic_fetch_sub(&ar->refs, 1) != 1)
    return;
  ar->magic = 0;
  mp__jobs_release(ar->pool->jobs, ar->job); /* ar is in the job's record: the last use */
}

void mp_async_result_free(mp_async_result_t *ar) {
  /* Its callbacks may still use it after the caller's free: a second free is told apart by
   * the caller's flag. */
  check_live(ar, ar && !ar->caller_freed ? ar->magic : 0, RESULT_MAGIC, "mp_async_result_free",
             "async result", "mp_async_result_free");
  if (!ar)
    return;
  ar->caller_freed = true;
  release_result(ar);
}

/* ------------------------------ iterators ------------------------------ */

int mp__pool_start_iterator(mp_imap_t *it, spec_t *s, const mp__feed_t *feed) {
  s->flags |= MP__JOB_ITERATOR | MP__JOB_WAKE_EACH | (feed ? MP__JOB_OPEN : 0);
  s->window = 4 * it->pool->n_workers;
  int rc = submit(it->pool, s, &it->job);
  if (rc < 0) {
    it->job = NULL;
    return rc;
  }
  it->feed = feed ? *feed : (mp__feed_t){s->items, NULL, NULL};
  it->next_chunk = 0;
  it->active = -1;
  it->taken = 0;
  while (mp__jobs_feed(it->pool->jobs, it->job, &it->feed))
    ;
  return 0;
}

void mp__pool_end_iterator(mp_imap_t *it) {
  if (!it->job)
    return;
  if (!mp__job_complete(it->job))
    mp__jobs_abort(it->pool->jobs, it->job, MP_ETERMINATED);
  mp__jobs_release(it->pool->jobs, it->job);
  it->job = NULL;
}

static int make_iterator(mp_pool_t *pool, spec_t *s, bool ordered, mp_imap_t **out) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: it is NULL", s->what);
  check_pool(pool, s->what);
  if (!pool)
    return mp__error(MP_EINVAL, "%s: pool is NULL", s->what);
  mp_imap_t *it = calloc(1, sizeof *it);
  if (!it)
    return mp__error(MP_ENOMEM, "%s: no memory", s->what);
  it->magic = IMAP_MAGIC;
  it->pool = pool;
  it->ordered = ordered;
  int rc = mp__pool_start_iterator(it, s, NULL);
  if (rc < 0) {
    free(it);
    return rc;
  }
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

static bool iterator_can_go_on(const mp__jobrec_t *job, void *arg) {
  const mp_imap_t *it = arg;
  return mp__job_finished_chunk(job, it->ordered, it->next_chunk) >= 0 ||
         mp__job_aborted(job);
}

/* The active chunk is delivered: its window slot takes the next chunk. */
static void take_chunk(mp_imap_t *it) {
  mp__jobs_return_chunk(it->pool->jobs, it->job, (uint32_t)it->active, &it->feed);
  it->active = -1;
  it->taken++;
  if (it->ordered)
    it->next_chunk++;
}

/* Item failure rc was delivered: the rest of its chunk never ran, and its slot is returned.
 * The refill may call a lazy input's source, which may set this thread's error: the
 * failure's sentence is kept (review, stop 22). */
__attribute__((noinline, cold)) static int take_failed_chunk(mp_imap_t *it, int rc) {
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", mp_last_error());
  take_chunk(it);
  return mp__error(rc, "%s", msg);
}

/* The next result (a variable-size one's bytes), its length in *len if not NULL. */
int mp__pool_next_raw(mp_imap_t *it, void *result, size_t *len, size_t *index, double timeout) {
  mp__jobrec_t *job = it->job;
  if (it->active < 0) {
    if (it->taken == mp__job_chunks(job))
      return MP_EEOF;
    int rc = wait_job(job, iterator_can_go_on, it, timeout, "mp_imap_next");
    if (rc < 0)
      return rc;
    it->active = mp__job_finished_chunk(job, it->ordered, it->next_chunk);
    if (it->active < 0) {
      int aborted = mp__job_aborted(job);
      return mp__error(aborted, "mp_imap_next: %s", mp__job_abort_reason(aborted));
    }
    mp__job_view_chunk(job, (uint32_t)it->active, &it->view);
    it->item = 0;
  }
  uint32_t chunk = (uint32_t)it->active;
  uint64_t i = (uint64_t)chunk * job->head.chunksize + it->item, failed;
  if (index)
    *index = i;
  int rc;
  if (it->item >= it->view.fails_at &&
      (rc = mp__job_item_failure(job, chunk, i, &failed)) < 0) {
    if (index)
      *index = failed;
    return take_failed_chunk(it, rc);
  }
  uint64_t got = mp__chunk_item(&it->view, it->item, result);
  if (len)
    *len = got;
  if (++it->item == it->view.items)
    take_chunk(it);
  return 0;
}

int mp_imap_next(mp_imap_t *it, void *result, size_t *index, double timeout) {
  check_iterator(it, "mp_imap_next");
  if (it && !it->job)
    return mp__error(MP_EINVAL, "mp_imap_next: an iterator of items of any size: use "
                                "mp_imap_next_item");
  if (!it || (!result && it->job->head.result_size))
    return mp__error(MP_EINVAL, "mp_imap_next: %s is NULL", it ? "result" : "it");
  if (it->job->head.flags & MP__JOB_VARSIZE)
    return mp__error(MP_EINVAL, "mp_imap_next: results of any size: use mp_imap_next_item");
  return mp__pool_next_raw(it, result, NULL, index, timeout);
}

void mp_imap_free(mp_imap_t *it) {
  check_iterator(it, "mp_imap_free");
  if (!it)
    return;
  it->magic = 0;
  free(it->lazy);
  mp__pool_end_iterator(it);
  free(it);
}
