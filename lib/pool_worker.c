/*
 * A pool's worker: its initializer, then chunks of tasks claimed from the shared jobs
 * (pool_transport.c) until the pool closes, is terminated, or the worker retires after
 * maxtasksperchild tasks. The same loop runs in a worker process of any start method and in
 * a worker thread of the "thread" context.
 *
 * Under "fork", the first workers are forked by the pool's creator and replacements by the
 * zygote: a child forked with them, before the supervisor thread started, single-threaded
 * for the rest of its life, so that every worker is forked from the same safe state.
 */
#include "internal.h"

#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* The running task's failure message (mp_task_fail), per thread: thread workers share a
 * process. */
static __thread char task_msg[MP__POOL_MSG];
static __thread bool task_has_msg;

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
static const char *failure_message(int rc, char *buf, size_t cap) {
  if (task_has_msg)
    return task_msg;
  snprintf(buf, cap, "the task returned %d", rc);
  return buf;
}

typedef struct {
  mp__pool_shared_t *sh;
  uint32_t w;
  int notify_fd;
  mp__fn_t fns[MP__POOL_MAX_FNS]; /* resolved in this process, on first use */
} worker_t;

static int resolve(worker_t *wk, const mp__fnref_t *ref, mp__fn_t local, mp__fn_t *fn) {
  if (wk->sh->threads) {
    *fn = local;
    return 0;
  }
  return mp__fnref_resolve(ref, fn);
}

static void run_chunk(worker_t *wk, mp__job_t *job, uint32_t chunk) {
  mp__pool_shared_t *sh = wk->sh;
  uint32_t status = MP__CHUNK_DONE;
  uint64_t first = (uint64_t)chunk * job->chunksize;
  if (!wk->fns[job->fn]) {
    int rc = resolve(wk, sh->fns[job->fn], sh->local_fns[job->fn], &wk->fns[job->fn]);
    if (rc < 0) {
      mp__job_record_error(job, chunk, first, rc, mp_last_error());
      mp__pool_complete(sh, job, chunk, wk->w, MP__CHUNK_FAILED, wk->notify_fd);
      return;
    }
  }
  mp_task_fn_t fn = (mp_task_fn_t)wk->fns[job->fn];
  const char *in = mp__job_input(job, chunk);
  char *out = mp__job_output(job, chunk);
  uint64_t count = mp__job_chunk_items(job, chunk);
  _Atomic uint64_t *run_item = &sh->workers[wk->w].run_item;
  size_t len = job->result_size;
  for (uint64_t i = 0; i < count; i++) {
    len = job->result_size;
    task_has_msg = false;
    /* The canary sits just past this task's room: in the next item's result, not written
     * yet, or in the slot's own canary after the last one. */
    const uint64_t canary = MP__JOB_CANARY_WORD;
    char *end = out + (i + 1) * job->result_size;
    memcpy(end, &canary, sizeof canary);
    atomic_store_explicit(run_item, i, memory_order_relaxed);
    int rc = fn(in + i * job->item_size, job->item_size, out + i * job->result_size, &len);
    char buf[128];
    if (memcmp(end, &canary, sizeof canary) != 0) {
      snprintf(buf, sizeof buf,
               "the task overran its result: it wrote past its %llu bytes of room",
               (unsigned long long)job->result_size);
      mp__job_record_error(job, chunk, first + i, MP_ETASK, buf);
      status = MP__CHUNK_FAILED;
      break;
    }
    if (rc != 0) {
      mp__job_record_error(job, chunk, first + i, MP_ETASK,
                           failure_message(rc, buf, sizeof buf));
      status = MP__CHUNK_FAILED;
      break;
    }
  }
  if (job->n == 1)
    atomic_store(&job->result_len, len < job->result_size ? len : job->result_size);
  mp__pool_complete(sh, job, chunk, wk->w, status, wk->notify_fd);
}

static void set_state(worker_t *wk, uint32_t state) {
  atomic_store(&wk->sh->workers[wk->w].state, state);
  atomic_fetch_add(&wk->sh->status, 1);
  mp__futex_wake(&wk->sh->status, INT32_MAX);
  mp__pool_notify(wk->notify_fd);
}

static bool run_initializer(worker_t *wk) {
  mp__pool_shared_t *sh = wk->sh;
  if (!sh->init_ref)
    return true;
  mp__fn_t fn;
  int rc = resolve(wk, sh->init_ref, sh->init_local, &fn);
  char buf[64];
  if (rc < 0) {
    snprintf(sh->workers[wk->w].error, MP__POOL_MSG, "%s", mp_last_error());
    return false;
  }
  task_has_msg = false;
  rc = ((mp_initializer_t)fn)(sh->initargs, sh->initargs_size);
  if (rc != 0)
    snprintf(sh->workers[wk->w].error, MP__POOL_MSG, "%s",
             failure_message(rc, buf, sizeof buf));
  return rc == 0;
}

int mp__pool_worker_main(mp__pool_shared_t *sh, uint32_t w) {
  worker_t *wk = calloc(1, sizeof *wk);
  if (!wk)
    return 1;
  wk->sh = sh;
  wk->w = w;
  int fd = mp__fd_lookup(sh->event_key);
  wk->notify_fd = fd >= 0 ? fd : -1;
  mp__worker_rec_t *rec = &sh->workers[w];
  if (!sh->threads) {
    /* Ctrl-C reaches the whole process group: the pool's process decides what it ends. */
    signal(SIGINT, SIG_IGN);
    atomic_store(&rec->pid, getpid());
  }
  if (!run_initializer(wk)) {
    set_state(wk, MP__WORKER_INIT_FAILED);
    free(wk);
    return 1;
  }
  set_state(wk, MP__WORKER_READY);
  unsigned tasks = 0;
  int code = 0;
  for (;;) {
    uint32_t seen = atomic_load(&sh->work);
    mp__job_t *job;
    uint32_t chunk;
    if (mp__pool_claim(sh, w, &job, &chunk)) {
      run_chunk(wk, job, chunk);
      if (sh->maxtasks && ++tasks >= sh->maxtasks) {
        set_state(wk, MP__WORKER_RETIRED);
        break;
      }
      continue;
    }
    uint32_t flags = atomic_load(&sh->flags);
    if (flags & MP__POOL_TERMINATED)
      break;
    if ((flags & MP__POOL_CLOSED) && atomic_load(&sh->oldest) >= atomic_load(&sh->next_seq)) {
      set_state(wk, MP__WORKER_DONE);
      break;
    }
    mp__pool_idle(sh, w, seen);
  }
  free(wk);
  return code;
}

int mp__pool_worker_target(void *arg, size_t size) {
  if (size != sizeof(mp__pool_boot_t))
    return 1;
  const mp__pool_boot_t *boot = arg;
  return mp__pool_worker_main(boot->sh, boot->w);
}

/* -------------------------------- the zygote -------------------------------- */

typedef struct {
  int sock;
  int sigfd;
  pid_t *pids; /* by worker record */
  uint32_t n;
  sigset_t old_mask;
} zygote_t;

static void zygote_send(zygote_t *z, uint32_t op, uint32_t w, int32_t value) {
  mp__zygote_msg_t msg = {op, w, value};
  mp__send_record(z->sock, &msg, sizeof msg, -1);
}

static MP__NORETURN void become_worker(zygote_t *z, mp__pool_shared_t *sh, uint32_t w) {
  close(z->sock);
  close(z->sigfd);
  sigprocmask(SIG_SETMASK, &z->old_mask, NULL);
  char name[64], identity[64];
  snprintf(name, sizeof name, "ForkPoolWorker-%u", w + 1);
  snprintf(identity, sizeof identity, "%s:%u", mp_current_process()->identity, w + 1);
  mp_process_t *parent = mp_parent_process();
  mp__child_info_t info = {
      .name = name,
      .identity = identity,
      .parent_pid = parent ? mp_process_pid(parent) : getppid(),
      .real_parent = getppid(),
      .parent_name = parent ? mp_process_name(parent) : "MainProcess",
      .die_with_parent = true,
      .sentinel = -1,
      .report_sock = -1,
  };
  mp__child_init(&info);
  mp__child_exit(mp__pool_worker_main(sh, w), false);
}

static void zygote_start(zygote_t *z, mp__pool_shared_t *sh, uint32_t w) {
  if (w >= z->n)
    return;
  mp__flush_std_streams();
  pid_t pid = fork();
  if (pid == 0)
    become_worker(z, sh, w);
  if (pid > 0)
    z->pids[w] = pid;
  zygote_send(z, MP__ZYGOTE_STARTED, w, pid > 0 ? pid : -errno);
}

static void zygote_reap(zygote_t *z, bool block) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, block ? 0 : WNOHANG)) > 0) {
    for (uint32_t w = 0; w < z->n; w++) {
      if (z->pids[w] == pid) {
        z->pids[w] = 0;
        zygote_send(z, MP__ZYGOTE_EXITED, w, status);
      }
    }
  }
}

/* The zygote's loop: start workers on request, report their ends; when the pool closes or
 * shuts down its socket (or its process dies), kill the workers, reap them, and exit. */
int mp__pool_zygote_main(void *arg, size_t size) {
  if (size != sizeof(mp__pool_boot_t))
    return 1;
  const mp__pool_boot_t *boot = arg;
  mp__pool_shared_t *sh = boot->sh;
  zygote_t z = {.sock = mp__fd_lookup(boot->sock_key), .n = sh->n_workers};
  signal(SIGINT, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, &z.old_mask);
  z.sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  z.pids = calloc(z.n, sizeof *z.pids);
  if (z.sock < 0 || z.sigfd < 0 || !z.pids)
    return 1;
  for (;;) {
    struct pollfd fds[2] = {{.fd = z.sock, .events = POLLIN},
                            {.fd = z.sigfd, .events = POLLIN}};
    if (poll(fds, 2, -1) < 0)
      continue;
    if (fds[1].revents) {
      struct signalfd_siginfo si;
      while (read(z.sigfd, &si, sizeof si) > 0)
        ;
      zygote_reap(&z, false);
    }
    if (!fds[0].revents)
      continue;
    mp__zygote_msg_t msg;
    ssize_t n = mp__recv_record(z.sock, &msg, sizeof msg, NULL, MSG_DONTWAIT);
    if (n == -EAGAIN)
      continue;
    if (n != (ssize_t)sizeof msg)
      break; /* end of file: the pool is gone or done */
    if (msg.op == MP__ZYGOTE_START)
      zygote_start(&z, sh, msg.w);
  }
  for (uint32_t w = 0; w < z.n; w++)
    if (z.pids[w] > 0)
      kill(z.pids[w], SIGKILL);
  zygote_reap(&z, true);
  free(z.pids);
  return 0;
}
