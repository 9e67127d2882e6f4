/*
 * The "mpi" context and its launcher, on rank 0. The launcher is the thread launcher with
 * another way of working: worker w is a thread of rank 0 that owns one rank and sends each
 * chunk it claims to its rank as one message, which answers with one reply. The thread keeps
 * up to DEPTH chunks in flight (it claims the next ones while its rank runs one), so the
 * rank starts its next chunk at once. Its initializer runs on the rank too. A rank belongs
 * to one pool at a time.
 */
#include "pool_mpi.h"
#include "pool_jobs.h"
#include "trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int mpi_launch(mp_process_t *proc) {
  (void)proc;
  return mp__error(MP_EMETHOD, "the \"mpi\" context starts no processes; its pools' workers "
                               "are the MPI job's ranks (mp_pool_create)");
}

static int mpi_collect(mp_process_t *proc, int *wait_status) {
  (void)proc;
  (void)wait_status;
  return -ECHILD;
}

static const mp__popen_ops_t mpi_popen = {"mpi", mpi_launch, mpi_collect};
static mp_context_t mpi_context = {&mpi_popen};

int mp__mpi_get_context(mp_context_t **ctx) {
  int size, rc = mp__mpi_start(&size);
  if (rc < 0)
    return rc;
  *ctx = &mpi_context;
  return 0;
}

/* ------------------------------ a worker's link ------------------------------ */

/* Chunks in flight per rank: the one it runs and the next ones, already sent, so that it
 * starts the next as soon as it replies, while its worker thread takes the reply. */
#define DEPTH 3

/* A chunk (or an initializer) sent to the rank, until its reply is taken. */
typedef struct {
  mp__task_t task;
  size_t out_len; /* the task's results' bytes */
  int64_t t0;     /* for the trace */
  uint64_t seq;   /* the message's number, which its reply echoes */
  char *msg, *reply;
  size_t msg_cap, reply_cap;
  MPI_Request send;
} flight_t;

typedef struct {
  int rank;
  uint32_t w;
  mp__pool_shared_t *sh;
  int notify_fd;
  mp__fn_t last; /* the last function sent, and its reference */
  mp__fnref_t ref;
  flight_t flights[DEPTH]; /* a ring: n in flight from the oldest, head; replies come in
                              the order of the messages (MPI does not overtake) */
  uint32_t head, n;
  uint64_t after; /* chunks after the last one claimed, in its job */
} link_t;

/* Shared memory does not reach another machine: bytes that hold a libmp handle (an aligned
 * word pointing into the arena, as process.c finds them) do not cross. */
static int refuse_handles(const char *bytes, size_t size, const char *what) {
  for (size_t at = 0; at + sizeof(uintptr_t) <= size; at += sizeof(uintptr_t)) {
    uintptr_t word;
    memcpy(&word, bytes + at, sizeof word);
    MP__SCANNED(&word, sizeof word);
    if (word % sizeof(uintptr_t) == 0 && mp__shared_contains((void *)word))
      return mp__error(MP_ECROSS,
                       "%s holds a libmp handle (a lock, queue, Value...) at byte "
                       "%zu: shared memory does not reach another MPI rank",
                       what, at);
  }
  return 0;
}

static int function_ref(link_t *k, mp__fn_t fn) {
  if (fn != k->last) {
    int rc = mp__fnref_from_pointer(fn, &k->ref);
    if (rc < 0)
      return rc;
    k->last = fn;
  }
  return 0;
}

/* Every message's number, from 1, in every pool: a reply names the message it answers, so
 * that the rank's own reply to a message whose first reply was refused (a malformed one
 * came before it) is told from the next message's, in this pool or a later one. */
static _Atomic uint64_t messages_sent;

/* Sends a message (the head, fn's path, the payload) to the link's rank, with room for its
 * reply with results_len bytes of results, in the flight after the n in flight; it is then
 * in flight. */
static int post(link_t *k, int tag, mp__fn_t fn, mp__mpi_task_head_t *head, const char *payload,
                size_t len, size_t results_len) {
  flight_t *f = &k->flights[(k->head + k->n) % DEPTH];
  int rc = function_ref(k, fn);
  if (rc < 0)
    return rc;
  const size_t path_len = strlen(k->ref.path) + 1, at = MP__MPI_ROOM(sizeof *head + path_len);
  const size_t reply_room = MP__MPI_ROOM(sizeof(mp__mpi_reply_head_t) + MP__POOL_MSG);
  if (len > (size_t)INT_MAX - at || results_len > (size_t)INT_MAX - reply_room)
    return mp__error(MP_ELIMIT,
                     "a chunk of %zu bytes, or its %zu bytes of results, is more "
                     "than one MPI message carries (2 GiB): use a smaller chunksize",
                     len, results_len);
  if (!mp__mpi_grow(&f->msg, &f->msg_cap, at + len) ||
      !mp__mpi_grow(&f->reply, &f->reply_cap, reply_room + results_len))
    return mp__error(MP_ENOMEM, "no memory for a message of %zu bytes to rank %d", at + len,
                     k->rank);
  head->offset = k->ref.offset;
  head->build_id_len = k->ref.build_id_len;
  head->path_len = (uint32_t)path_len;
  memcpy(head->build_id, k->ref.build_id, sizeof head->build_id);
  head->seq = f->seq = atomic_fetch_add(&messages_sent, 1) + 1;
  memcpy(f->msg, head, sizeof *head);
  memcpy(f->msg + sizeof *head, k->ref.path, path_len);
  if (len)
    memcpy(f->msg + at, payload, len);
  pthread_mutex_lock(&mp__mpi_lock);
  rc = MPI_Isend(f->msg, (int)(at + len), MPI_BYTE, k->rank, tag, mp__mpi_comm, &f->send);
  pthread_mutex_unlock(&mp__mpi_lock);
  if (rc != MPI_SUCCESS)
    return mp__error(MP_EWORKERDIED, "sending a task to rank %d failed (MPI error %d)", k->rank,
                     rc);
  k->n++;
  return 0;
}

int mp__mpi_reply_check(const char *reply, size_t len, uint64_t seq, uint64_t first,
                        uint64_t count, size_t out_len, int rank, mp__mpi_reply_head_t *r,
                        size_t *at, size_t *results_len) {
  const char *bad = NULL;
  if (len < sizeof *r) {
    bad = "shorter than a reply's head";
  } else {
    memcpy(r, reply, sizeof *r);
    if (r->seq != 0 && r->seq < seq)
      return 1;
    *at = MP__MPI_ROOM(sizeof *r + (r->msg_len <= MP__POOL_MSG ? r->msg_len : 0));
    /* The whole results, or none when the rank refused the message before running it. */
    *results_len = len == *at && r->code != 0 ? 0 : out_len;
    if (r->seq != seq)
      bad = "the answer to another message";
    else if (r->msg_len > MP__POOL_MSG)
      bad = "a failure's message longer than a message can be";
    else if ((r->code == 0) != (r->msg_len == 0))
      bad = r->code ? "a failure without its message" : "a success with a failure's message";
    else if (r->code != 0 && count &&
             (r->failed_item < first || r->failed_item - first >= count))
      bad = "a failed item outside its chunk";
    else if (len < *at || len - *at != *results_len) /* *at + out_len fits: see post() */
      bad = "a length other than its head's and its results' together";
  }
  if (bad)
    return mp__error(MP_EWORKERDIED,
                     "rank %d sent a malformed reply of %zu bytes (%s) to a chunk of %llu "
                     "items with %zu bytes of results",
                     rank, len, bad, (unsigned long long)count, out_len);
  return 0;
}

/* Waits for the oldest flight's reply, which is then out of flight, to a chunk of count items
 * from first with out_len bytes of results: 0 with its head in *r, its message in msg
 * (MP__POOL_MSG bytes), its results and their length in *results and *results_len. Replies
 * to earlier messages are dropped on the way. */
static int take_reply(link_t *k, uint64_t first, uint64_t count, size_t out_len,
                      mp__mpi_reply_head_t *r, char *msg, const char **results,
                      size_t *results_len) {
  flight_t *f = &k->flights[k->head];
  k->head = (k->head + 1) % DEPTH;
  k->n--;
  size_t len, at = 0; /* at: set by the check when it passes */
  int rc = mp__mpi_wait(1, &f->send, NULL);
  while (rc == 0 &&
         (rc = mp__mpi_recv(k->rank, MP__MPI_TAG_REPLY, &f->reply, &f->reply_cap, &len)) == 0 &&
         (rc = mp__mpi_reply_check(f->reply, len, f->seq, first, count, out_len, k->rank, r,
                                   &at, results_len)) == 1)
    rc = 0; /* the answer to an earlier message: dropped */
  if (rc < 0)
    return rc;
  memcpy(msg, f->reply + sizeof *r, r->msg_len);
  msg[r->msg_len ? r->msg_len - 1 : 0] = '\0';
  *results = f->reply + at;
  return 0;
}

/* Sends a chunk to the rank: it is then in flight, or failed (its code returned, with its
 * failure recorded in *task). */
static int post_task(link_t *k, mp__task_t *task) {
  flight_t *f = &k->flights[(k->head + k->n) % DEPTH];
  f->task = *task;
  f->t0 = MP__TRACING() ? mp__now_ns() : 0;
  size_t in_len = 0;
  int rc = 0;
  if (__builtin_mul_overflow(task->count, task->item_size, &in_len) ||
      __builtin_mul_overflow(task->count, task->result_size, &f->out_len))
    rc = mp__error(MP_ELIMIT, "a chunk's size overflows");
  if (rc == 0)
    rc = refuse_handles(task->input, in_len, "a task's argument");
  mp__mpi_task_head_t head = {.item_size = task->item_size,
                              .result_size = task->result_size,
                              .result_cap = task->result_cap,
                              .first = task->first,
                              .count = task->count,
                              .varsize = task->varsize};
  if (rc == 0)
    rc = post(k, MP__MPI_TAG_TASK, task->call, &head, task->input, in_len, f->out_len);
  if (rc < 0) {
    task->failed_item = task->first;
    snprintf(task->msg, sizeof task->msg, "%s", mp_last_error());
    task->code = rc;
  }
  return rc;
}

/* The oldest chunk in flight, finished: its results copied to its output, its outcome in
 * *done; returns its code. */
static int finish_task(link_t *k, mp__task_t *done) {
  const flight_t *f = &k->flights[k->head];
  *done = f->task;
  mp__mpi_reply_head_t r;
  const char *results;
  size_t results_len;
  int rc = take_reply(k, done->first, done->count, f->out_len, &r, done->msg, &results,
                      &results_len);
  if (rc < 0) {
    done->failed_item = done->first;
    snprintf(done->msg, sizeof done->msg, "%s", mp_last_error());
    return done->code = rc;
  }
  memcpy(done->output, results, results_len);
  done->result_len = r.result_len < done->result_size ? r.result_len : done->result_size;
  if (r.code == 0)
    return 0;
  done->failed_item = r.failed_item;
  return done->code = r.code < 0 ? r.code : MP_ETASK;
}

/* Completes a chunk of this worker's in the job table, as pool_worker.c does its own. */
static void complete(link_t *k, mp__task_t *task, int rc, int64_t t0) {
  MP__TRACE(pool_chunk, k->sh, mp__job_seq(task->job), task->chunk, k->w,
            task->first, task->count, t0, rc, task->failed_item, task->msg);
  mp__pool_complete(k->sh, k->w, task, rc == 0 ? MP__CHUNK_DONE : MP__CHUNK_FAILED,
                    k->notify_fd, NULL);
}

static void claimed(link_t *k, const mp__task_t *t) {
  k->after = ((const mp__job_t *)t->job)->head.n_chunks - t->chunk - 1;
}

/* Claims chunks of this worker's until DEPTH are in flight or none is queued, and sends
 * them (one that cannot be sent fails at once). Not near a job's end (fewer chunks left
 * than the workers would take ahead), so that the last chunks spread over the ranks as
 * without this; nor with maxtasksperchild, which counts one task per run step. */
static void top_up(link_t *k) {
  mp__pool_shared_t *sh = k->sh;
  mp__task_t t;
  while (k->n < DEPTH && k->after >= (uint64_t)sh->n_workers * DEPTH && !sh->maxtasks &&
         !(atomic_load(&sh->flags) & MP__POOL_TERMINATED) && mp__pool_claim(sh, k->w, &t)) {
    claimed(k, &t);
    t.call = t.fn < MP__POOL_MAX_FNS ? sh->local_fns[t.fn] : NULL; /* a shared word */
    MP__TRACE_CLOCK(t0);
    int rc = post_task(k, &t);
    if (rc < 0)
      complete(k, &t, rc, t0);
  }
}

/*
 * The run step of an MPI worker: the chunk runs on the worker's rank. While it runs, the
 * worker claims the next chunks and sends them too (top_up), so that DEPTH are in flight;
 * each reply is taken in turn and its chunk completed here, and more are claimed, until
 * none is queued or the job nears its end. The last chunk to finish is handed back in *task,
 * which pool_worker.c completes: the step returns with nothing in flight, so the worker idles,
 * exits or is joined only with its rank idle too.
 */
static int send_task(mp__task_t *task, void *arg) {
  link_t *k = arg;
  claimed(k, task);
  int rc = post_task(k, task);
  if (rc < 0)
    return rc;
  for (;;) {
    top_up(k);
    int64_t t0 = k->flights[k->head].t0;
    mp__task_t done;
    rc = finish_task(k, &done);
    if (k->n == 0) {
      *task = done;
      return rc;
    }
    complete(k, &done, rc, t0);
  }
}

/* The initializer step of an MPI worker: it runs on the worker's rank. */
static int send_init(mp__fn_t fn, const void *args, size_t size, void *arg, char *error) {
  link_t *k = arg;
  int rc = refuse_handles(args, size, "the initializer's argument");
  mp__mpi_task_head_t head = {.item_size = size};
  mp__mpi_reply_head_t r;
  const char *results;
  size_t results_len;
  if (rc == 0)
    rc = post(k, MP__MPI_TAG_INIT, fn, &head, args, size, 0);
  if (rc == 0)
    rc = take_reply(k, 0, 0, 0, &r, error, &results, &results_len);
  if (rc < 0) {
    snprintf(error, MP__POOL_MSG, "%s", mp_last_error());
    return rc;
  }
  return r.code;
}

/* -------------------------------- the launcher -------------------------------- */

static pthread_mutex_t ranks_lock = PTHREAD_MUTEX_INITIALIZER;
static bool *rank_taken; /* by a pool; [size], under ranks_lock */

typedef struct {
  void *threads; /* the thread launcher's state */
  uint32_t n;
  link_t *links;
  mp__worker_how_t *hows;
} mpi_launcher_t;

static void release_ranks(mpi_launcher_t *l, uint32_t n) {
  pthread_mutex_lock(&ranks_lock);
  for (uint32_t w = 0; w < n; w++)
    rank_taken[l->links[w].rank] = false;
  pthread_mutex_unlock(&ranks_lock);
}

/* Takes n free ranks for the pool's workers. */
static int take_ranks(mpi_launcher_t *l, int size) {
  int rc = 0;
  uint32_t w = 0;
  pthread_mutex_lock(&ranks_lock);
  if (!rank_taken && !(rank_taken = calloc((size_t)size, sizeof *rank_taken)))
    rc = mp__error(MP_ENOMEM, "no memory for the job's %d ranks", size);
  for (int r = 1; rc == 0 && r < size && w < l->n; r++)
    if (!rank_taken[r])
      l->links[w++].rank = r;
  /* Taken under the same hold: two pools created at once never share a rank. */
  for (uint32_t i = 0; rc == 0 && w == l->n && i < w; i++)
    rank_taken[l->links[i].rank] = true;
  pthread_mutex_unlock(&ranks_lock);
  if (rc < 0)
    return rc;
  if (w < l->n)
    return mp__error(MP_EINVAL,
                     "mp_pool_create: %u workers, but this MPI job has %d ranks "
                     "besides rank 0 and %u of them are free (run it with mpirun "
                     "-np %u or more, or ask for fewer workers)",
                     l->n, size - 1, w, l->n + 1);
  return 0;
}

static void free_launcher(mpi_launcher_t *l) {
  for (uint32_t w = 0; l->links && w < l->n; w++)
    for (int i = 0; i < DEPTH; i++) {
      free(l->links[w].flights[i].msg);
      free(l->links[w].flights[i].reply);
    }
  free(l->links);
  free(l->hows);
  free(l);
}

static int mpi_open(const mp__launcher_config_t *config, void **state) {
  int size, rc = mp__mpi_start(&size);
  if (rc < 0)
    return rc;
  mpi_launcher_t *l = calloc(1, sizeof *l);
  if (l) {
    l->n = config->n_workers;
    l->links = calloc(l->n, sizeof *l->links);
    l->hows = calloc(l->n, sizeof *l->hows);
  }
  if (!l || !l->links || !l->hows) {
    if (l)
      free_launcher(l);
    return mp__error(MP_ENOMEM, "no memory for %u MPI workers", config->n_workers);
  }
  /* Two pools never share the ranks: a rank's replies come in the order of its tasks. */
  rc = take_ranks(l, size);
  for (uint32_t w = 0; w < l->n; w++) {
    link_t *k = &l->links[w];
    k->w = w;
    k->sh = config->sh;
    k->notify_fd = config->event_fd;
    l->hows[w] = (mp__worker_how_t){true, send_task, k, send_init};
  }
  mp__launcher_config_t threads = *config;
  threads.hows = l->hows;
  if (rc == 0 && (rc = mp__thread_launcher.open(&threads, &l->threads)) < 0)
    release_ranks(l, l->n);
  if (rc < 0) {
    free_launcher(l);
    return rc;
  }
  *state = l;
  return 0;
}

static int mpi_start(void *state, uint32_t w, int *pid) {
  mpi_launcher_t *l = state;
  return mp__thread_launcher.start(l->threads, w, pid);
}

static int mpi_watch(void *state) {
  mpi_launcher_t *l = state;
  return mp__thread_launcher.watch(l->threads);
}

/* A worker's task runs to its end on its rank (MPI 4.1 cannot cancel it), as a thread's. */
static void mpi_stop(void *state) {
  mpi_launcher_t *l = state;
  mp__thread_launcher.stop(l->threads);
}

static void mpi_close(void *state) {
  mpi_launcher_t *l = state;
  mp__thread_launcher.close(l->threads);
}

static void mpi_free(void *state) {
  mpi_launcher_t *l = state;
  mp__thread_launcher.free(l->threads); /* joins the threads: the ranks are idle again */
  release_ranks(l, l->n);
  free_launcher(l);
}

static const mp__launcher_ops_t mpi_launcher = {
    mpi_open, mpi_start, mpi_watch, mpi_stop, mpi_close, mpi_free,
};

/* MP_POOL_CPU_COUNT: one worker per rank but rank 0. */
static void every_rank(int *processes) {
  int size;
  if (mp__mpi_start(&size) == 0)
    *processes = size > 1 ? size - 1 : 1; /* one rank: open() says how to run it */
}

MP__CONTEXT_LAUNCHER(mpi_pools, &mpi_popen, &mpi_launcher, every_rank);
