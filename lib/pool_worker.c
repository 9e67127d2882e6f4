/*
 * A pool's worker: its initializer, then chunks claimed from the job table (pool_jobs.c)
 * until the pool closes, is terminated, or the worker retires after maxtasksperchild tasks.
 * The same loop runs in a worker process of any launcher and in a worker thread; the
 * launcher says how functions are resolved and may replace the step that runs a task
 * (mp__worker_how_t).
 */
#include "pool_jobs.h"
#include "trace.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The running task's failure message (mp_task_fail), per thread: thread workers share a
 * process. The flag, read after every item, is in the static TLS block (initial-exec: one
 * byte of the room every process keeps for the libraries it loads), where the default model
 * of a shared library costs a call to __tls_get_addr (about 20 instructions) per chunk. */
static __thread char task_msg[MP__POOL_MSG];
static __thread bool task_has_msg __attribute__((tls_model("initial-exec")));

/* The flag's address, taken once per chunk: the compiler would take it again at every item
 * (each task call may change the thread's state, as far as it knows). */
__attribute__((noinline)) static bool *task_flag(void) {
  return &task_has_msg;
}

int mp_task_fail(const char *fmt, ...) {
  task_msg[0] = '\0';
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(task_msg, sizeof task_msg, fmt, ap);
    va_end(ap);
  }
  task_has_msg = true;
  return MP_ETASK;
}

/* The message of a task that returned rc, in buf. */
static void failure_message(int rc, char *buf, size_t cap) {
  if (task_has_msg)
    snprintf(buf, cap, "%s", task_msg);
  else
    snprintf(buf, cap, "the task returned %d", rc);
}

/* Item i of task failed (rc), or overran its room: recorded in the task. */
static int item_failed(mp__task_t *task, uint64_t i, int rc, bool overran) {
  if (overran)
    snprintf(task->msg, sizeof task->msg,
             "the task overran its result: it wrote past its %llu bytes of room",
             (unsigned long long)task->result_cap);
  else
    failure_message(rc, task->msg, sizeof task->msg);
  task->failed_item = task->first + i;
  return task->code = MP_ETASK;
}

/* The items of a task whose slots start with head bytes of length (MP__VARSIZE_HEAD for a
 * variable-size job, else 0): inlined for each, so that a fixed-size item's loop tests
 * nothing of the other kind. The loop reads what it needs once, into locals (a store through
 * task->running could alias the task, so its fields would be read again at every item),
 * and so is the failure flag's address. */
__attribute__((always_inline)) static inline int run_items(mp__task_t *task,
                                                           const size_t head) {
  mp_task_fn_t fn = (mp_task_fn_t)task->call;
  const size_t room = task->result_size, cap = task->result_cap, item_size = task->item_size;
  const uint64_t canary = MP__JOB_CANARY_WORD, count = task->count;
  _Atomic uint64_t *running = task->running;
  bool *has_msg = task_flag();
  char *out = task->output;
  const char *in = task->input;
  size_t len = cap;
  *has_msg = false;
  for (uint64_t i = 0; i < count; i++, out += room, in += item_size) {
    uint64_t size = item_size;
    if (head)
      size = mp__var_length(in, item_size - head);
    len = cap;
    /* The canary sits just past this task's room: in the next item's result, not written
     * yet, or in the slot's own canary after the last one (a variable-size slot's padding
     * holds it at once). */
    memcpy(out + head + cap, &canary, sizeof canary);
    atomic_store_explicit(running, i, memory_order_relaxed);
    int rc = fn(in + head, size, out + head, &len);
    uint64_t after;
    memcpy(&after, out + head + cap, sizeof after);
    if (__builtin_expect(after != canary || rc != 0 || *has_msg, 0)) {
      if (after != canary || rc != 0)
        return item_failed(task, i, rc, after != canary);
      *has_msg = false; /* mp_task_fail, and then 0: not the message of a later failure */
    }
    if (head) {
      uint64_t kept = len < cap ? len : cap;
      memcpy(out, &kept, sizeof kept);
    }
  }
  task->result_len = len < cap ? len : cap;
  return 0;
}

int mp__run_task(mp__task_t *task, void *arg) {
  (void)arg;
  return task->varsize ? run_items(task, MP__VARSIZE_HEAD) : run_items(task, 0);
}

typedef struct {
  mp__pool_shared_t *sh;
  uint32_t w;
  int notify_fd;
  const mp__worker_how_t *how;
  mp__fn_t fns[MP__POOL_MAX_FNS]; /* resolved in this process, on first use */
  mp__warm_t warm;                /* a process's own: threads share the pool's pages */
} worker_t;

static int resolve(const worker_t *wk, const mp__fnref_t *ref, mp__fn_t local, mp__fn_t *fn) {
  if (wk->how->local) {
    *fn = local;
    return 0;
  }
  return mp__fnref_resolve(ref, fn);
}

/* Runs and completes task; next (if not NULL) gets the job's next chunk, if claimed. */
static void run_chunk(worker_t *wk, mp__task_t *task, mp__task_t *next) {
  MP__TRACE_CLOCK(t0);
  mp__pool_shared_t *sh = wk->sh;
  int rc = 0;
  if (task->fn >= MP__POOL_MAX_FNS) /* the job's word, which any process could have written */
    rc = mp__error(MP_ECORRUPT, "the job's shared memory is corrupt: function %u of %u",
                   (unsigned)task->fn, (unsigned)MP__POOL_MAX_FNS);
  else if (!wk->fns[task->fn])
    rc = resolve(wk, sh->fns[task->fn], sh->local_fns[task->fn], &wk->fns[task->fn]);
  if (rc < 0) {
    task->code = rc;
    task->failed_item = task->first;
    snprintf(task->msg, sizeof task->msg, "%s", mp_last_error());
  }
  task->call = rc == 0 ? wk->fns[task->fn] : NULL;
  if (rc == 0 && !wk->how->local)
    mp__pool_map_output(&wk->warm, task);
  if (rc == 0)
    rc = wk->how->run(task, wk->how->run_arg);
  MP__TRACE(pool_chunk, sh, mp__job_seq(task->job), task->chunk, wk->w,
            task->first, task->count, t0, rc, task->failed_item, task->msg);
  mp__pool_complete(sh, wk->w, task, rc == 0 ? MP__CHUNK_DONE : MP__CHUNK_FAILED, wk->notify_fd,
                    next);
}

static void set_state(worker_t *wk, uint32_t state) {
  atomic_store(&wk->sh->workers[wk->w].state, state);
  atomic_fetch_add(&wk->sh->status, 1);
  mp__futex_wake(&wk->sh->status, INT32_MAX);
  mp__pool_notify(wk->notify_fd);
}

/* The worker's reason to exit, in its record, and its exit status. */
static int exit_because(worker_t *wk, uint32_t state, int code, const char *why) {
  snprintf(wk->sh->workers[wk->w].error, MP__POOL_MSG, "%s", why);
  set_state(wk, state);
  return code;
}

static bool run_initializer(worker_t *wk) {
  mp__pool_shared_t *sh = wk->sh;
  if (!sh->init_ref)
    return true;
  mp__fn_t fn;
  char *error = sh->workers[wk->w].error;
  int rc = resolve(wk, sh->init_ref, sh->init_local, &fn);
  if (rc < 0) {
    snprintf(error, MP__POOL_MSG, "%s", mp_last_error());
    return false;
  }
  mp__run_init_t init = wk->how->init ? wk->how->init : mp__run_initializer;
  return init(fn, sh->initargs, sh->initargs_size, wk->how->run_arg, error) == 0;
}

int mp__run_initializer(mp__fn_t fn, const void *args, size_t size, void *arg, char *error) {
  (void)arg;
  task_has_msg = false;
  int rc = ((mp_initializer_t)fn)(args, size);
  if (rc != 0)
    failure_message(rc, error, MP__POOL_MSG);
  return rc;
}

static int serve(worker_t *wk) {
  mp__pool_shared_t *sh = wk->sh;
  unsigned tasks = 0;
  /* Two views: the chunk being run, and the one its completion may claim next. */
  mp__task_t views[2], *task = &views[0], *next = &views[1];
  bool claimed = false;
  for (;;) {
    uint32_t seen = atomic_load(&sh->work);
    if (claimed || mp__pool_claim(sh, wk->w, task)) {
      bool retire = sh->maxtasks && ++tasks >= sh->maxtasks;
      run_chunk(wk, task, retire ? NULL : next);
      if (retire)
        return exit_because(wk, MP__WORKER_RETIRED, 0, "it ran maxtasksperchild tasks");
      claimed = next->job != NULL;
      mp__task_t *ran = task;
      task = next, next = ran;
      continue;
    }
    uint32_t flags = atomic_load(&sh->flags);
    if (flags & MP__POOL_TERMINATED)
      return exit_because(wk, MP__WORKER_DONE, 0, "the pool was terminated");
    if (mp__pool_closed_and_done(sh))
      return exit_because(wk, MP__WORKER_DONE, 0, "the pool is closed and its work done");
    mp__pool_idle(sh, wk->w, seen);
  }
}

int mp__pool_worker_main(mp__pool_shared_t *sh, uint32_t w, const mp__worker_how_t *how) {
  worker_t *wk = calloc(1, sizeof *wk);
  if (!wk) {
    snprintf(sh->workers[w].error, MP__POOL_MSG, "no memory for the worker's state");
    return 1;
  }
  *wk = (worker_t){.sh = sh, .w = w, .how = how};
  int fd = mp__fd_lookup(sh->event_key);
  wk->notify_fd = fd >= 0 ? fd : -1;
  int code = run_initializer(wk) ? (set_state(wk, MP__WORKER_READY), serve(wk))
                                 : (set_state(wk, MP__WORKER_INIT_FAILED), 1);
  mp__warm_free(&wk->warm);
  free(wk);
  return code;
}
