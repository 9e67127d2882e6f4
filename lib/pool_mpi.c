/*
 * The "mpi" context and its launcher, on rank 0. The launcher is the thread launcher with
 * another way of working: worker w is a thread of rank 0 that owns rank w + 1 and, for each
 * chunk it claims, sends the chunk to its rank as one message and waits for one reply; its
 * initializer runs on the rank too. A rank belongs to one pool at a time.
 */
#include "pool_mpi.h"

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

typedef struct {
  int rank;
  mp__fn_t last; /* the last function sent, and its reference */
  mp__fnref_t ref;
  char *msg, *reply;
  size_t msg_cap, reply_cap;
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

/* Sends a task (the head, the function's path, the payload) to the link's rank as one
 * message and waits for the reply, with room for results_len bytes of results: 0 and the
 * reply's head in *r, its message in msg (MP__POOL_MSG bytes), its results in *results. */
static int exchange(link_t *k, int tag, mp__mpi_task_head_t *head, const char *payload,
                    size_t len, size_t results_len, mp__mpi_reply_head_t *r, char *msg,
                    const char **results) {
  const size_t path_len = strlen(k->ref.path) + 1, at = MP__MPI_ROOM(sizeof *head + path_len);
  const size_t reply_room = MP__MPI_ROOM(sizeof *r + MP__POOL_MSG);
  if (len > (size_t)INT_MAX - at || results_len > (size_t)INT_MAX - reply_room)
    return mp__error(MP_ELIMIT,
                     "a chunk of %zu bytes, or its %zu bytes of results, is more "
                     "than one MPI message carries (2 GiB): use a smaller chunksize",
                     len, results_len);
  if (!mp__mpi_grow(&k->msg, &k->msg_cap, at + len) ||
      !mp__mpi_grow(&k->reply, &k->reply_cap, reply_room + results_len))
    return mp__error(MP_ENOMEM, "no memory for a message of %zu bytes to rank %d", at + len,
                     k->rank);
  head->offset = k->ref.offset;
  head->build_id_len = k->ref.build_id_len;
  head->path_len = (uint32_t)path_len;
  memcpy(head->build_id, k->ref.build_id, sizeof head->build_id);
  memcpy(k->msg, head, sizeof *head);
  memcpy(k->msg + sizeof *head, k->ref.path, path_len);
  if (len)
    memcpy(k->msg + at, payload, len);
  MPI_Request reqs[2];
  pthread_mutex_lock(&mp__mpi_lock);
  int rc = MPI_Irecv(k->reply, (int)(reply_room + results_len), MPI_BYTE, k->rank,
                     MP__MPI_TAG_REPLY, MPI_COMM_WORLD, &reqs[0]);
  if (rc == MPI_SUCCESS)
    rc = MPI_Isend(k->msg, (int)(at + len), MPI_BYTE, k->rank, tag, MPI_COMM_WORLD, &reqs[1]);
  pthread_mutex_unlock(&mp__mpi_lock);
  if (rc != MPI_SUCCESS)
    return mp__error(MP_EWORKERDIED, "sending a task to rank %d failed (MPI error %d)", k->rank,
                     rc);
  if ((rc = mp__mpi_wait(2, reqs)) < 0)
    return rc;
  memcpy(r, k->reply, sizeof *r);
  if (r->msg_len > MP__POOL_MSG)
    return mp__error(MP_EWORKERDIED, "rank %d sent a malformed reply", k->rank);
  memcpy(msg, k->reply + sizeof *r, r->msg_len);
  msg[r->msg_len ? r->msg_len - 1 : 0] = '\0';
  *results = k->reply + MP__MPI_ROOM(sizeof *r + r->msg_len);
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

/* The run step of an MPI worker: the chunk runs on the worker's rank. */
static int send_task(mp__task_t *task, void *arg) {
  link_t *k = arg;
  size_t in_len = 0, out_len = 0;
  int rc = 0;
  if (__builtin_mul_overflow(task->count, task->item_size, &in_len) ||
      __builtin_mul_overflow(task->count, task->result_size, &out_len))
    rc = mp__error(MP_ELIMIT, "a chunk's size overflows");
  if (rc == 0)
    rc = function_ref(k, task->call);
  if (rc == 0)
    rc = refuse_handles(task->input, in_len, "a task's argument");
  mp__mpi_task_head_t head = {.item_size = task->item_size,
                              .result_size = task->result_size,
                              .result_cap = task->result_cap,
                              .first = task->first,
                              .count = task->count,
                              .varsize = task->varsize};
  mp__mpi_reply_head_t r;
  const char *results;
  if (rc == 0)
    rc = exchange(k, MP__MPI_TAG_TASK, &head, task->input, in_len, out_len, &r, task->msg,
                  &results);
  if (rc < 0) {
    task->failed_item = task->first;
    snprintf(task->msg, sizeof task->msg, "%s", mp_last_error());
    return task->code = rc;
  }
  memcpy(task->output, results, out_len);
  task->result_len = r.result_len < task->result_size ? r.result_len : task->result_size;
  if (r.code == 0)
    return 0;
  task->failed_item = r.failed_item;
  return task->code = r.code < 0 ? r.code : MP_ETASK;
}

/* The initializer step of an MPI worker: it runs on the worker's rank. */
static int send_init(mp__fn_t fn, const void *args, size_t size, void *arg, char *error) {
  link_t *k = arg;
  int rc = function_ref(k, fn);
  if (rc == 0)
    rc = refuse_handles(args, size, "the initializer's argument");
  mp__mpi_task_head_t head = {.item_size = size};
  mp__mpi_reply_head_t r;
  const char *results;
  if (rc == 0)
    rc = exchange(k, MP__MPI_TAG_INIT, &head, args, size, 0, &r, error, &results);
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
  pthread_mutex_unlock(&ranks_lock);
  if (rc < 0)
    return rc;
  if (w < l->n)
    return mp__error(MP_EINVAL,
                     "mp_pool_create: %u workers, but this MPI job has %d ranks "
                     "besides rank 0 and %u of them are free (run it with mpirun "
                     "-np %u or more, or ask for fewer workers)",
                     l->n, size - 1, w, l->n + 1);
  pthread_mutex_lock(&ranks_lock);
  for (w = 0; w < l->n; w++)
    rank_taken[l->links[w].rank] = true;
  pthread_mutex_unlock(&ranks_lock);
  return 0;
}

static void free_launcher(mpi_launcher_t *l) {
  for (uint32_t w = 0; l->links && w < l->n; w++) {
    free(l->links[w].msg);
    free(l->links[w].reply);
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
  for (uint32_t w = 0; w < l->n; w++)
    l->hows[w] = (mp__worker_how_t){true, send_task, &l->links[w], send_init};
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

const mp__launcher_ops_t *mp__mpi_launcher(const mp_context_t *ctx, int asked, int *processes) {
  int size;
  if (ctx->ops != &mpi_popen)
    return NULL;
  if (asked == MP_POOL_CPU_COUNT && mp__mpi_start(&size) == 0)
    *processes = size > 1 ? size - 1 : 1; /* one rank: open() says how to run it */
  return &mpi_launcher;
}
