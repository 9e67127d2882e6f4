/*
 * The MPI job: which rank this process is, MPI's start and end, and the life of a rank other
 * than 0. Under mpirun every rank runs the same program; the ranks but 0 are taken over
 * before main (spawn.c's start-up roles) and serve tasks sent by rank 0's pool until rank 0
 * ends, then exit. Rank 0 starts MPI on first use of the "mpi" context and, at its exit,
 * stops the other ranks and ends MPI (starting it first if the program never used it, as
 * MPI_Init is collective and the other ranks wait in it).
 *
 * The environment is not trusted: a set-user-ID (AT_SECURE) process never takes a role,
 * Open MPI's variables must parse as a rank below the size, with the PMIx identity mpirun
 * gives each rank (PMIX_RANK the same rank, a PMIX_NAMESPACE), and once MPI starts, its
 * rank and size must be the environment's, or the process is no rank after all: MPI ends,
 * a worker rank runs main, rank 0 is refused the context. Only the process mpirun started
 * takes its rank: every descendant inherits the variables (a rank's system("./tool"), a
 * fork and exec), and a libmp program among them would otherwise act as that rank (as rank
 * 0, end the job at its exit, stopping the real rank 0's workers). Open MPI names no process
 * in the environment, so the taker does: RANK_MARK holds the job (PMIX_NAMESPACE), its pid
 * and its start time; an image of the same job with another pid, or the same pid and
 * another start time (a reused pid, another pid namespace), is a descendant. The same pid
 * and start time is the rank itself, after an exec; another job is a new mpirun's rank.
 */
#include "pool_mpi.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <time.h>
#include <unistd.h>

pthread_mutex_t mp__mpi_lock = PTHREAD_MUTEX_INITIALIZER;
MPI_Comm mp__mpi_comm = MPI_COMM_NULL;

#define RANK_MARK "LIBMP_MPI_RANK_TAKEN"

static int env_rank = -1; /* from Open MPI's environment; -1: not a rank */
static int env_size;
static bool descendant;   /* Open MPI's variables are an ancestor rank's */
static pid_t rank0_pid;
static bool started, ended; /* under mp__mpi_lock */
static int world_size;

/* A non-negative int in the environment, or -1. */
static int env_int(const char *name) {
  const char *s = getenv(name);
  if (!s || *s < '0' || *s > '9')
    return -1;
  char *end;
  long v = strtol(s, &end, 10);
  return *end || v > INT_MAX ? -1 : (int)v;
}

static int mpi_error(int code, int err, const char *what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(err, text, &len) != MPI_SUCCESS)
    snprintf(text, sizeof text, "MPI error %d", err);
  return mp__error(code, "%s: %s", what, text);
}

/* Waits a little longer at each call: a few yields, then sleeps from 1 us to 1 ms. */
static void back_off(unsigned *polls) {
  if (++*polls < 16) {
    sched_yield();
    return;
  }
  unsigned shift = *polls - 16 < 10 ? *polls - 16 : 10;
  struct timespec ts = {0, 1000L << shift};
  nanosleep(&ts, NULL);
}

/* What a wait tests: MPI_Testall's requests, or MPI_Improbe's source and tag. */
typedef struct {
  int n, source, tag;
  MPI_Request *reqs;
  MPI_Status *statuses;
  MPI_Message message;
} wait_t;

/* Tests w under mp__mpi_lock (a probe if w->reqs is NULL) until it is done, waiting a
 * little longer each time. */
static int wait_for(wait_t *w) {
  for (unsigned polls = 0;; back_off(&polls)) {
    int done = 0, rc = MPI_ERR_OTHER;
    pthread_mutex_lock(&mp__mpi_lock);
    bool over = ended;
    if (!over && w->reqs)
      rc = MPI_Testall(w->n, w->reqs, &done, w->statuses ? w->statuses : MPI_STATUSES_IGNORE);
    else if (!over)
      rc = MPI_Improbe(w->source, w->tag, mp__mpi_comm, &done, &w->message, w->statuses);
    pthread_mutex_unlock(&mp__mpi_lock);
    if (rc != MPI_SUCCESS)
      return over ? mp__error(MP_ECLOSED, "MPI has ended: the program is exiting")
                  : mpi_error(MP_EWORKERDIED, rc, "waiting for an MPI message");
    if (done)
      return 0;
  }
}

int mp__mpi_wait(int n, MPI_Request *reqs, MPI_Status *statuses) {
  wait_t w = {.n = n, .reqs = reqs, .statuses = statuses};
  return wait_for(&w);
}

int mp__mpi_recv(int source, int tag, char **buf, size_t *cap, size_t *len) {
  MPI_Status status;
  wait_t w = {.source = source, .tag = tag, .statuses = &status};
  int count = 0, rc = wait_for(&w);
  if (rc < 0)
    return rc;
  MPI_Get_count(&status, MPI_BYTE, &count);
  *len = (size_t)count;
  /* Whole: Open MPI 4.1 writes a cut message past the buffer (a large one, single-copy). */
  if (!mp__mpi_grow(buf, cap, *len))
    return mp__error(MP_ENOMEM, "no memory for a message of %zu bytes from rank %d", *len,
                     source);
  MPI_Request req;
  pthread_mutex_lock(&mp__mpi_lock);
  rc = MPI_Imrecv(*buf, count, MPI_BYTE, &w.message, &req);
  pthread_mutex_unlock(&mp__mpi_lock);
  if (rc != MPI_SUCCESS)
    return mpi_error(MP_EWORKERDIED, rc, "receiving an MPI message");
  return mp__mpi_wait(1, &req, NULL);
}

/* Starts MPI in this rank; under mp__mpi_lock on rank 0. */
static int start_mpi(void) {
  int provided, rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
  if (rc != MPI_SUCCESS)
    return mpi_error(MP_ESPAWN, rc, "MPI_Init_thread");
  started = true;
  if (provided < MPI_THREAD_SERIALIZED)
    return mp__error(MP_ESPAWN, "this MPI library gives no MPI_THREAD_SERIALIZED: the pool's "
                                "threads on rank 0 need it");
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world_size);
  /* Not the rank the environment names (PMIx's variables forged too: MPI_Init made a
   * singleton, rank 0 of 1, which would wait for "rank 0", itself, for ever): no rank. */
  if (rank != env_rank || world_size != env_size) {
    MPI_Finalize();
    ended = true;
    rc = mp__error(MP_EMETHOD,
                   "the \"mpi\" context: the environment names rank %d of %d of an Open MPI "
                   "job, but MPI made this process rank %d of %d (mpirun did not start it)",
                   env_rank, env_size, rank, world_size);
    env_rank = -1;
    return rc;
  }
  /* Collective: every rank starts MPI here, rank 0 at its first use or its exit. */
  rc = MPI_Comm_dup(MPI_COMM_WORLD, &mp__mpi_comm);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_set_errhandler(mp__mpi_comm, MPI_ERRORS_RETURN);
  return rc == MPI_SUCCESS ? 0 : mpi_error(MP_ESPAWN, rc, "MPI_Comm_dup");
}

int mp__mpi_start(int *size) {
  if (env_rank < 0 && !descendant)
    return mp__error(MP_EMETHOD, "the \"mpi\" context needs an MPI job: run the program with "
                                 "mpirun -np N (Open MPI); ranks 1 to N-1 become the pool's "
                                 "workers");
  if (descendant || getpid() != rank0_pid)
    return mp__error(MP_EMETHOD, "the \"mpi\" context belongs to the process mpirun started "
                                 "as rank 0, not to its children");
  int rc = 0;
  pthread_mutex_lock(&mp__mpi_lock);
  if (ended)
    rc = mp__error(MP_ECLOSED, "MPI has ended: the program is exiting");
  else if (!started)
    rc = start_mpi();
  *size = world_size;
  pthread_mutex_unlock(&mp__mpi_lock);
  return rc;
}

/* Rank 0's exit: the other ranks stop, and MPI ends. */
static void end_job(void) {
  if (getpid() != rank0_pid)
    return; /* a forked child of rank 0 */
  pthread_mutex_lock(&mp__mpi_lock);
  if (!ended && (started || start_mpi() == 0)) {
    for (int r = 1; r < world_size; r++)
      MPI_Send(NULL, 0, MPI_BYTE, r, MP__MPI_TAG_STOP, mp__mpi_comm);
    MPI_Comm_free(&mp__mpi_comm);
    MPI_Finalize();
  }
  ended = true;
  pthread_mutex_unlock(&mp__mpi_lock);
}

/* ------------------------------ a worker rank ------------------------------ */

typedef struct {
  char *in, *out;
  size_t in_cap, out_cap;
  mp__fnref_t ref; /* the last function resolved, and where */
  mp__fn_t fn;
} rank_state_t;

/* The message's function, resolved here (the build-id checked) or taken from the last. */
static int resolve(rank_state_t *st, const mp__mpi_task_head_t *h, const char *path,
                   mp__fn_t *fn) {
  mp__fnref_t *ref = &st->ref;
  if (!st->fn || ref->offset != h->offset || ref->build_id_len != h->build_id_len ||
      memcmp(ref->build_id, h->build_id, sizeof ref->build_id) != 0 ||
      strcmp(ref->path, path)) {
    memset(ref, 0, sizeof *ref);
    ref->offset = h->offset;
    ref->build_id_len = h->build_id_len;
    memcpy(ref->build_id, h->build_id, sizeof ref->build_id);
    memcpy(ref->path, path, h->path_len);
    int rc = mp__fnref_resolve(ref, &st->fn);
    if (rc < 0) {
      st->fn = NULL;
      return rc;
    }
  }
  *fn = st->fn;
  return 0;
}

int mp__mpi_task_check(const char *msg, size_t len, int tag, mp__mpi_task_head_t *h, size_t *at,
                       size_t *in_len, size_t *out_len) {
  if (tag != MP__MPI_TAG_TASK && tag != MP__MPI_TAG_INIT)
    return mp__error(MP_EINVAL, "a message with the unknown tag %d", tag);
  if (len < sizeof *h)
    return mp__error(MP_EINVAL, "a message of %zu bytes is no task", len);
  memcpy(h, msg, sizeof *h);
  if (h->path_len < 1 || h->path_len > sizeof((mp__fnref_t *)0)->path ||
      h->build_id_len > MP__BUILD_ID_MAX ||
      len < (*at = MP__MPI_ROOM(sizeof *h + h->path_len)) ||
      msg[sizeof *h + h->path_len - 1] != '\0')
    return mp__error(MP_EINVAL, "a task message with a malformed function reference");
  *in_len = h->item_size;
  *out_len = 0;
  if (tag == MP__MPI_TAG_TASK && (__builtin_mul_overflow(h->count, h->item_size, in_len) ||
                                  __builtin_mul_overflow(h->count, h->result_size, out_len)))
    return mp__error(MP_EINVAL, "a task's sizes overflow");
  /* A task's room, and a variable-size item's or result's length head, fit in their slots. */
  uint64_t head = h->varsize ? sizeof(uint64_t) : 0;
  if (tag == MP__MPI_TAG_TASK &&
      (h->result_size < head || h->result_cap > h->result_size - head || h->item_size < head))
    return mp__error(MP_EINVAL, "a task message with malformed sizes");
  if (*in_len != len - *at)
    return mp__error(MP_EINVAL, "a task of %zu bytes where %zu were announced", len - *at,
                     *in_len);
  /* The reply is one MPI message, whose count is an int. */
  if (*out_len > (size_t)INT_MAX - MP__MPI_ROOM(sizeof(mp__mpi_reply_head_t) + MP__POOL_MSG))
    return mp__error(MP_EINVAL, "a task's %zu bytes of results are more than one reply carries",
                     *out_len);
  return 0;
}

/* Runs one message (a chunk or an initializer); the reply is st->out's bytes from the
 * returned offset to *end. */
static size_t run_message(rank_state_t *st, int tag, size_t len, int rank, size_t *end) {
  mp__mpi_task_head_t h = {0};
  mp__mpi_reply_head_t r = {0};
  char msg[MP__POOL_MSG] = "";
  size_t at = 0, in_len = 0, out_len = 0, room = MP__MPI_ROOM(sizeof r + sizeof msg);
  mp__fn_t fn = NULL;
  int rc = mp__mpi_task_check(st->in, len, tag, &h, &at, &in_len, &out_len);
  /* The canary of the last result lies past the results (mp__run_task). */
  if (rc == 0 && !mp__mpi_grow(&st->out, &st->out_cap, room + out_len + sizeof(uint64_t)))
    rc = mp__error(MP_ENOMEM, "no memory for %zu bytes of results", out_len);
  if (rc == 0)
    rc = resolve(st, &h, st->in + sizeof h, &fn);
  /* The results go where they will be sent from once the message's length is known. */
  char *results = st->out + room;
  if (rc < 0) {
    snprintf(msg, sizeof msg, "rank %d: %s", rank, mp_last_error());
    r.failed_item = h.first;
    out_len = 0;
  } else if (tag == MP__MPI_TAG_INIT) {
    rc = mp__run_initializer(fn, st->in + at, in_len, NULL, msg);
  } else {
    _Atomic uint64_t running = 0;
    mp__task_t t = {.call = fn,
                    .input = st->in + at,
                    .item_size = h.item_size,
                    .output = results,
                    .result_size = h.result_size,
                    .varsize = h.varsize != 0,
                    .result_cap = h.result_cap,
                    .first = h.first,
                    .count = h.count,
                    .running = &running};
    rc = mp__run_task(&t, NULL);
    r.failed_item = t.failed_item;
    r.result_len = t.result_len;
    memcpy(msg, t.msg, sizeof msg);
  }
  r.code = rc;
  r.seq = h.seq;
  r.msg_len = rc ? (uint32_t)strnlen(msg, sizeof msg - 1) + 1 : 0;
  if (!st->out && !mp__mpi_grow(&st->out, &st->out_cap, room))
    abort(); /* not even a reply's head: rank 0 would wait for ever */
  size_t start = room - MP__MPI_ROOM(sizeof r + r.msg_len);
  memcpy(st->out + start, &r, sizeof r);
  memcpy(st->out + start + sizeof r, msg, r.msg_len);
  *end = room + out_len;
  return start;
}

/* A worker rank that cannot go on (rank 0 would wait for ever for its reply) ends the job,
 * saying what failed and MPI's error err (MPI_SUCCESS: none). */
static MP__NORETURN void rank_fails(int err, const char *what) {
  if (err != MPI_SUCCESS)
    what = (mpi_error(MP_EWORKERDIED, err, what), mp_last_error());
  fprintf(stderr, "libmp: rank %d: %s\n", env_rank, what);
  MPI_Abort(MPI_COMM_WORLD, 1);
  abort(); /* MPI_Abort returned */
}

/* Serves rank 0 until its STOP, then exits; returns, with MPI ended, only if this process
 * is no rank of the job after all (start_mpi). */
static void serve(void) {
  pthread_mutex_lock(&mp__mpi_lock);
  int rc = start_mpi();
  if (rc < 0 && env_rank < 0) { /* no rank after all */
    pthread_mutex_unlock(&mp__mpi_lock);
    return;
  }
  if (rc < 0)
    rank_fails(MPI_SUCCESS, mp_last_error());
  rank_state_t st = {0};
  for (;;) {
    MPI_Status status;
    int flag = 0, len = 0;
    for (unsigned polls = 0;
         (rc = MPI_Iprobe(0, MPI_ANY_TAG, mp__mpi_comm, &flag, &status)) == MPI_SUCCESS &&
         !flag;
         back_off(&polls))
      ;
    if (rc == MPI_SUCCESS)
      rc = MPI_Get_count(&status, MPI_BYTE, &len);
    if (rc != MPI_SUCCESS)
      rank_fails(rc, "waiting for a task");
    if (len < 0 || !mp__mpi_grow(&st.in, &st.in_cap, (size_t)len + 1))
      rank_fails(MPI_SUCCESS, "no memory for a task's message");
    rc = MPI_Recv(st.in, len, MPI_BYTE, 0, status.MPI_TAG, mp__mpi_comm, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS)
      rank_fails(rc, "taking a task");
    if (status.MPI_TAG == MP__MPI_TAG_STOP)
      break;
    size_t end, start = run_message(&st, status.MPI_TAG, (size_t)len, env_rank, &end);
    rc = MPI_Send(st.out + start, (int)(end - start), MPI_BYTE, 0, MP__MPI_TAG_REPLY,
                  mp__mpi_comm);
    if (rc != MPI_SUCCESS)
      rank_fails(rc, "sending a reply");
  }
  free(st.in);
  free(st.out);
  MPI_Comm_free(&mp__mpi_comm);
  MPI_Finalize();
  exit(0);
}

/* Under mpirun, a rank other than 0 serves pools and exits instead of running main; rank 0
 * ends the job at its exit. */
MP__TAKE_OVER(mpi_rank_take_over) {
  if (getauxval(AT_SECURE))
    return; /* a set-user-ID program: its environment is not its user's to trust */
  int rank = env_int("OMPI_COMM_WORLD_RANK"), size = env_int("OMPI_COMM_WORLD_SIZE");
  const char *ns = getenv("PMIX_NAMESPACE");
  /* mpirun gives each rank its PMIx identity too: without it (Open MPI's variables left in a
   * shell or set by hand), MPI_Init would make the process a singleton, and rank 0's exit
   * would start MPI and an orted for nothing. */
  if (rank < 0 || size < 1 || rank >= size || env_int("PMIX_RANK") != rank || !ns || !*ns)
    return;
  char job[208], mine[256], state;
  uint64_t start = 0; /* 0 without /proc: then the pid alone tells */
  (void)mp__proc_stat(getpid(), &state, &start);
  snprintf(job, sizeof job, "%.200s ", ns);
  snprintf(mine, sizeof mine, "%s%d %llu", job, (int)getpid(), (unsigned long long)start);
  const char *mark = getenv(RANK_MARK);
  if (mark && strncmp(mark, job, strlen(job)) == 0 && strcmp(mark, mine) != 0) {
    descendant = true;
    return;
  }
  /* Before main, as spawn.c unsets LIBMP_CHILD: no thread of the program reads the
   * environment yet. Should it fail (no memory), the rank is still taken: a rank that ran
   * main instead would leave the job waiting for it. */
  (void)setenv(RANK_MARK, mine, 1);
  env_rank = rank;
  env_size = size;
  if (rank > 0) {
    serve();
    return;
  }
  rank0_pid = getpid();
  atexit(end_job);
}
