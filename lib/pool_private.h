/*
 * What the Pool's own files share, and no other file includes: the pool, async result and
 * iterator structs, a submission, and the calls between the three files, which run one way:
 *
 *   pool_items.c (items of any size, lazy iterators)
 *     -> pool.c (the API, submitting, async results, iterators, the Ctrl-C rule)
 *       -> pool_supervisor.c (the workers' starts and ends, the libuv loop, terminate)
 *
 * and each of them -> the job table (pool_jobs.h); the supervisor -> the launcher
 * (pool_launcher.h). Calls up the chain go through hooks the upper file sets: the
 * supervisor runs callbacks through pool->run_callbacks, and a lazy iterator's job is fed
 * by its source through the job's fill (mp__feed_t).
 */
#ifndef MP_POOL_PRIVATE_H
#define MP_POOL_PRIVATE_H

#include "pool_jobs.h"

#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

/* A live pool's first word; cleared when it is destroyed. An async result's and an
 * iterator's, cleared when they are freed. */
#define POOL_MAGIC 0x5b706d2d706f6f6cull   /* "loop-mp[" */
#define RESULT_MAGIC 0x5b706d2d746c7372ull /* "rslt-mp[" */
#define IMAP_MAGIC 0x5b706d2d70616d69ull   /* "imap-mp[" */

enum { REQ_TERMINATE = 1, REQ_STOP = 2 };

typedef struct lazy_s lazy_t;

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
  /* The supervisor. It runs the callbacks of results through this hook (pool.c's), so that
   * it calls nothing of pool.c. */
  void (*run_callbacks)(mp_pool_t *pool);
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

/* In its job's record (mp__job_owner), in the pool's process's memory, which its job
 * reference keeps: no allocation, and no worker can write it. */
struct mp_async_result_s {
  uint64_t magic;    /* RESULT_MAGIC until its last reference is dropped */
  bool caller_freed; /* the caller's reference was (the callback list may still hold one) */
  mp_pool_t *pool;
  mp__jobrec_t *job; /* with a reference, dropped when refs reaches 0 */
  mp_async_callbacks_t callbacks;
  bool has_callbacks;
  _Atomic bool callbacks_ran;
  _Atomic uint32_t refs; /* the owner's, and the callback list's */
  bool is_apply;         /* its result has the task's length, not n * result_size */
  bool batched;          /* an apply of a batch (MP__JOB_BATCH): its chunk is its own */
  uint32_t chunk;
  mp_async_result_t *next;
};

struct mp_imap_s {
  uint64_t magic; /* IMAP_MAGIC until freed */
  mp_pool_t *pool;
  mp__jobrec_t *job; /* NULL once a lazy iterator's input is delivered */
  lazy_t *lazy;      /* a lazy iterator's source (pool_items.c's), freed with it */
  mp__feed_t feed;
  bool ordered;
  uint32_t next_chunk;   /* ordered: the chunk to deliver next */
  int64_t active;        /* the chunk being delivered, or -1 */
  uint64_t item;         /* its next item */
  mp__chunk_view_t view; /* the active chunk's */
  uint32_t taken;        /* chunks delivered whole */
};

/* Use after destroy or free is undefined, but a handle's magic word is gone by then: abort
 * there rather than act on freed memory, or release a job twice. */
static inline void check_live(const void *handle, uint64_t magic, uint64_t live,
                              const char *what, const char *noun, const char *ender) {
  if (handle && magic != live) {
    fprintf(stderr, "libmp: %s: %p is not a live %s (used after %s?)\n", what, handle, noun,
            ender);
    abort();
  }
}

static inline void check_pool(const mp_pool_t *pool, const char *what) {
  check_live(pool, pool ? pool->magic : 0, POOL_MAGIC, what, "pool", "mp_pool_destroy");
}

static inline void check_result(const mp_async_result_t *ar, const char *what) {
  check_live(ar, ar ? ar->magic : 0, RESULT_MAGIC, what, "async result",
             "mp_async_result_free");
}

static inline void check_iterator(const mp_imap_t *it, const char *what) {
  check_live(it, it ? it->magic : 0, IMAP_MAGIC, what, "iterator", "mp_imap_free");
}

static inline bool on_supervisor(const mp_pool_t *pool) {
  return pool->thread_started && pthread_equal(pthread_self(), pool->thread);
}

static inline void request(mp_pool_t *pool, uint32_t what) {
  atomic_fetch_or(&pool->requests, what);
  uv_async_send(&pool->async);
}

static inline bool terminated(const mp_pool_t *pool) {
  return mp__jobs_flags(pool->jobs) & MP__POOL_TERMINATED;
}

/* A job slot for an item or a result of at most max bytes (mp__var_slot). */
static inline size_t var_slot(size_t max) {
  return mp__var_slot(max);
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

/* pool_supervisor.c, for pool.c. */

/* The events the pool's launcher reports to (the supervisor's). */
mp__launcher_events_t mp__pool_launcher_events(mp_pool_t *pool);
/* Starts worker w; a failure is the supervisor's to handle (counted, retried, or the end of
 * creation). */
void mp__pool_start_worker(mp_pool_t *pool, uint32_t w);
/* Starts the supervisor's thread and its loop, once the first workers were started. */
int mp__pool_start_supervisor(mp_pool_t *pool);
/* Stops every worker and aborts every job; on the supervisor's thread. */
void mp__pool_do_terminate(mp_pool_t *pool);
/* Closes a handle of the loop (a uv_walk callback). */
void mp__pool_close_handle(uv_handle_t *handle, void *arg);

/* pool.c, for pool_items.c. Each returns 0 or a negative MP_E* code with a sentence. */

/* MP_ETERMINATED or MP_ECLOSED, named for what, unless the pool takes work. */
int mp__pool_check_open(mp_pool_t *pool, const char *what);
/* A request for s, in *out (NULL on failure); the caller frees it (mp_async_result_free). */
int mp__pool_make_result(mp_pool_t *pool, spec_t *s, const mp_async_callbacks_t *callbacks,
                         bool is_apply, mp_async_result_t **out);
/* The end of a blocking call with outcome rc: Ctrl-C (MP_EINTR) terminates the pool. */
int mp__pool_end_sync(mp_pool_t *pool, const char *what, int rc);
/* Starts it (its pool and order set, no job) on a job over s: s's items, or with a feed
 * (not NULL) what its fill writes, an open job (MP__JOB_OPEN) of at most s->n items. it->job
 * stays NULL on failure. */
int mp__pool_start_iterator(mp_imap_t *it, spec_t *s, const mp__feed_t *feed);
/* Ends its job, if any: aborted unless complete, and released (it->job NULL). */
void mp__pool_end_iterator(mp_imap_t *it);
/* pool_items.c, for the job table's tests: the most chunks of a lazy iterator's job (0: the
 * default, UINT32_MAX / 2). */
void mp__pool_set_lazy_job_chunks(uint32_t chunks);
/* An iterator's next result (a variable-size one's bytes, into result_cap bytes of room),
 * its length in *len if not NULL; MP_EEOF after the last. */
int mp__pool_next_raw(mp_imap_t *it, void *result, size_t *len, size_t *index, double timeout);

#endif
