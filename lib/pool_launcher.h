/*
 * Where a Pool's workers come from: launchers behind one table of operations, and what a
 * worker runs. The pool (pool.c creates, pool_supervisor.c drives) uses a launcher through
 * mp__launcher_ops_t and learns of its workers through the events it gave it; it never asks
 * which launcher it has, and no launcher calls into the pool's files. One launcher per worker kind: processes of a context (spawn, forkserver),
 * fork's (the first workers forked at creation, replacements by a zygote: pool_process.c),
 * threads (pool_thread.c), MPI ranks (pool_mpi.c: a thread launcher whose workers replace
 * the "run a task" step, mp__worker_how_t, to send the task to a rank).
 *
 * Ownership: the launcher owns its per-worker state (processes, sentinels, threads, the
 * zygote) from open() to free(); the shared block it hands to workers is the job table's
 * (opaque here) and outlives every worker; the loop is the supervisor's.
 */
#ifndef MP_POOL_LAUNCHER_H
#define MP_POOL_LAUNCHER_H

#include "internal.h"

#include <uv.h>

#define MP__TASK_ARG_COPY 24 /* mp__task_t.arg_copy */
#define MP__POOL_MSG 512 /* a task's failure message, a worker's reason */

/* The job table's shared block (pool_jobs.h): opaque to launchers. */
typedef struct mp__pool_shared_s mp__pool_shared_t;

/* --------------------------------- a task --------------------------------- */

/* One claimed chunk as a worker sees it (filled in by the job table's claim). Its input and
 * output are the worker's until it completes the chunk. */
typedef struct {
  void *job;      /* the job table's */
  uint32_t chunk; /* the chunk's number in its job */
  uint32_t fn;    /* the function's index in the pool's table */
  mp__fn_t call;  /* the function, resolved in this worker (set before the run step) */
  const char *input;
  uint64_t item_size;
  char *output;         /* count results of result_size bytes, then a canary */
  uint64_t result_size; /* each result's slot */
  /* A variable-size job's items and result slots start with their length (a uint64_t),
   * and a task may write result_cap bytes of its slot; else result_cap is result_size. */
  bool varsize;
  uint64_t result_cap;
  uint64_t first;       /* the chunk's first item's index in its job */
  uint64_t count;
  _Atomic uint64_t *running; /* where the running item's offset is recorded */
  /* A batch chunk's argument, copied out of its cell (pool_jobs.c): the task's pointer
   * then leads to no line of the batch's protocol. Its length word, then its bytes. */
  _Alignas(8) char arg_copy[MP__TASK_ARG_COPY];
  /* Set by the run step. */
  uint64_t result_len; /* the last item's result length (an apply's) */
  uint64_t failed_item;
  int code;
  char msg[MP__POOL_MSG];
} mp__task_t;

/* Runs the task's items in order until one fails: 0, or the failure's negative code with
 * task->failed_item and task->msg set. mp__run_task is the local one. */
typedef int (*mp__run_task_t)(mp__task_t *task, void *arg);
int mp__run_task(mp__task_t *task, void *arg);

/* Runs an initializer here: 0, or its code with its message in error (MP__POOL_MSG bytes).
 * A remote launcher replaces it (mp__worker_how_t.init) to run it on the worker's rank. */
typedef int (*mp__run_init_t)(mp__fn_t fn, const void *args, size_t size, void *arg,
                              char *error);
int mp__run_initializer(mp__fn_t fn, const void *args, size_t size, void *arg, char *error);

/* How a worker resolves and runs its tasks. */
typedef struct {
  bool local;           /* a thread of the pool's process: functions are plain pointers */
  mp__run_task_t run;   /* mp__run_task, or a remote launcher's */
  void *run_arg;
  mp__run_init_t init;  /* NULL: mp__run_initializer (MPI: pool_mpi.c) */
} mp__worker_how_t;

/* A worker's life (pool_worker.c): its initializer, then tasks until the pool closes or is
 * terminated, or it retires; returns its exit status (0, or non-zero with the reason in its
 * record). */
int mp__pool_worker_main(mp__pool_shared_t *sh, uint32_t w, const mp__worker_how_t *how);

/* ------------------------------- launchers -------------------------------- */

/* What a launcher reports, always from the supervisor's thread (or, before the supervisor
 * runs, from the thread creating the pool). */
typedef struct {
  void *pool;
  /* Worker w's pid became known (a zygote's child is known after its fork). */
  void (*started)(void *pool, uint32_t w, int pid);
  /* Worker w could not be started after start() returned: rc, and why. */
  void (*start_failed)(void *pool, uint32_t w, int rc, const char *why);
  /* Worker w ended: its exit status, or minus the signal that killed it. */
  void (*ended)(void *pool, uint32_t w, int exitcode);
  /* No worker can be started any more (fork's zygote died): why. Comes before the ends of
   * the workers the launcher loses with it. */
  void (*broken)(void *pool, const char *why);
} mp__launcher_events_t;

typedef struct {
  uint32_t n_workers;
  mp_context_t *ctx;
  mp__pool_shared_t *sh; /* handed to each worker */
  uint64_t event_key;    /* the supervisor's eventfd, passed to worker processes by key */
  int event_fd;          /* the same, in this process */
  uv_loop_t *loop;       /* the supervisor's: handles may be made on it, not run */
  mp__launcher_events_t events;
  /* The thread launcher's workers: NULL, local ones; else worker w runs as hows[w] (the
   * MPI launcher's threads, each sending its tasks to its rank; pool_mpi.c). */
  const mp__worker_how_t *hows;
} mp__launcher_config_t;

typedef struct {
  /* Makes the launcher's state. Errors with a sentence. */
  int (*open)(const mp__launcher_config_t *config, void **state);
  /* Starts worker w: 0 and its pid (0 if not known yet, or a thread), or an error with a
   * sentence. Called before watch() from the thread creating the pool (fork forks the first
   * workers there), after it from the supervisor's. */
  int (*start)(void *state, uint32_t w, int *pid);
  /* The supervisor's loop is about to run: watch the workers started so far. */
  int (*watch)(void *state);
  /* Stops every worker at once (a thread cannot be stopped: its task runs to its end);
   * their ends are reported as usual. */
  void (*stop)(void *state);
  /* Every worker has ended: releases what is not needed any more. */
  void (*close)(void *state);
  /* The supervisor's loop is closed: kills and reaps what is left, frees the state. */
  void (*free)(void *state);
} mp__launcher_ops_t;

/* A context whose pools have a launcher of its own registers it with
 * MP__CONTEXT_LAUNCHER(id, popen ops, launcher, cpu_count) in its file: one table (section
 * mp__context_launchers, as MP__ROLE's), so that no other file names it (MPI's: pool_mpi.c). */
typedef struct {
  const mp__popen_ops_t *context; /* the context's, which it is the launcher of */
  const mp__launcher_ops_t *launcher;
  /* How many workers MP_POOL_CPU_COUNT means, in *processes (left as is if not known). */
  void (*cpu_count)(int *processes);
} mp__context_launcher_t;
#define MP__CONTEXT_LAUNCHER(id, ...)                                                          \
  static const mp__context_launcher_t id = {__VA_ARGS__};                                      \
  __attribute__((section("mp__context_launchers"),                                             \
                 used)) static const mp__context_launcher_t *const id##_entry = &id

/* The launcher for a context's workers: its registered one, else a process or thread
 * launcher (pool_process.c). asked is the pool's processes option: for MP_POOL_CPU_COUNT a
 * registered launcher may set the number of workers in *processes. */
const mp__launcher_ops_t *mp__pool_launcher(const mp_context_t *ctx, int asked, int *processes);
extern const mp__launcher_ops_t mp__thread_launcher;

/* Runs fn in a new thread with every signal blocked: signals are for the user's threads
 * (pool_thread.c; the supervisor's thread too). Errors with a sentence. */
int mp__start_quiet_thread(pthread_t *thread, void *(*fn)(void *), void *arg);

#endif /* MP_POOL_LAUNCHER_H */
