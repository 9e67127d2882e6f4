/*
 * Process launchers: workers that are processes.
 *
 * spawn and forkserver: each worker is an mp_process child of the pool's context, started
 * by the supervisor and watched by its sentinel.
 *
 * fork: the first workers are the pool's own children, forked at creation from the thread
 * creating the pool, before the supervisor thread starts; the replacements are forked by a
 * zygote, a single-threaded child forked then too, on request over a SOCK_SEQPACKET
 * socket, and it reports on that socket each of its workers' start and end. So every
 * worker, the replacements too, starts from the program as it was at creation, and none
 * from a process running the supervisor. Both sides of the zygote are here. End of file on
 * the socket tells the zygote to kill and reap its workers and exit; a zygote that dies
 * breaks the launcher (no worker could be replaced).
 */
#include "pool_launcher.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* What a worker process or the zygote is started with. */
typedef struct {
  mp__pool_shared_t *sh;
  uint32_t w;         /* the worker's record; the zygote's: the number of workers */
  uint64_t sock_key;  /* the zygote's socket to the pool */
} boot_t;

/* The zygote's records: requests from the pool, reports from the zygote. */
enum { ZYGOTE_START = 1, ZYGOTE_STARTED, ZYGOTE_EXITED };
typedef struct {
  uint32_t op;
  uint32_t w;
  int32_t value; /* STARTED: the pid, or -errno; EXITED: the wait status */
} zygote_msg_t;

static const mp__worker_how_t process_how = {false, mp__run_task, NULL, NULL};

/* Ctrl-C reaches the whole process group: the pool's process decides what it ends. */
static int run_worker(const boot_t *boot, uint32_t w) {
  signal(SIGINT, SIG_IGN);
  return mp__pool_worker_main(boot->sh, w, &process_how);
}

static int worker_target(void *arg, size_t size) {
  if (size != sizeof(boot_t)) {
    fprintf(stderr, "libmp: a pool worker got %zu bytes of start-up, not %zu\n", size,
            sizeof(boot_t));
    return 1;
  }
  const boot_t *boot = arg;
  return run_worker(boot, boot->w);
}

/* ------------------------------ the zygote ------------------------------ */

typedef struct {
  int sock;
  int sigfd;
  pid_t *pids; /* by worker record */
  uint32_t n;
  sigset_t old_mask;
} zygote_t;

static void zygote_send(zygote_t *z, uint32_t op, uint32_t w, int32_t value) {
  zygote_msg_t msg = {op, w, value};
  mp__send_record(z->sock, &msg, sizeof msg, -1);
}

static MP__NORETURN void become_worker(zygote_t *z, const boot_t *boot, uint32_t w) {
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
  mp__child_exit(run_worker(boot, w), false);
}

static void zygote_fork(zygote_t *z, const boot_t *boot, uint32_t w) {
  if (w >= z->n)
    return;
  mp__flush_std_streams();
  pid_t pid = fork();
  if (pid == 0)
    become_worker(z, boot, w);
  if (pid > 0)
    z->pids[w] = pid;
  zygote_send(z, ZYGOTE_STARTED, w, pid > 0 ? pid : -errno);
}

static void zygote_reap(zygote_t *z, bool block) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, block ? 0 : WNOHANG)) > 0) {
    for (uint32_t w = 0; w < z->n; w++) {
      if (z->pids[w] == pid) {
        z->pids[w] = 0;
        zygote_send(z, ZYGOTE_EXITED, w, status);
      }
    }
  }
}

/* The zygote's loop: start workers on request, report their ends; when the pool shuts
 * down its socket (or its process dies), kill the workers, reap them, and exit. */
static int zygote_main(void *arg, size_t size) {
  if (size != sizeof(boot_t)) {
    fprintf(stderr, "libmp: a pool zygote got %zu bytes of start-up, not %zu\n", size,
            sizeof(boot_t));
    return 1;
  }
  const boot_t *boot = arg;
  zygote_t z = {.sock = mp__fd_lookup(boot->sock_key), .n = boot->w};
  signal(SIGINT, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, &z.old_mask);
  z.sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  z.pids = calloc(z.n, sizeof *z.pids);
  if (z.sock < 0 || z.sigfd < 0 || !z.pids) {
    fprintf(stderr, "libmp: a pool zygote cannot start: %s\n",
            z.sock < 0 ? "its socket was not passed" : strerror(errno));
    return 1;
  }
  for (;;) {
    struct pollfd fds[2] = {{.fd = z.sock, .events = POLLIN}, {.fd = z.sigfd, .events = POLLIN}};
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
    zygote_msg_t msg;
    ssize_t n = mp__recv_record(z.sock, &msg, sizeof msg, NULL, MSG_DONTWAIT);
    if (n == -EAGAIN)
      continue;
    if (n != (ssize_t)sizeof msg)
      break; /* end of file: the pool is gone or done */
    if (msg.op == ZYGOTE_START)
      zygote_fork(&z, boot, msg.w);
  }
  for (uint32_t w = 0; w < z.n; w++)
    if (z.pids[w] > 0)
      kill(z.pids[w], SIGKILL);
  zygote_reap(&z, true);
  free(z.pids);
  return 0;
}

/* ------------------------------ the pool's side ------------------------------ */

typedef struct launcher_s launcher_t;

typedef struct {
  launcher_t *launcher;
  uint32_t w;
  bool by_zygote;     /* a replacement: the zygote's child */
  mp_process_t *proc; /* a child of the pool's process */
  uv_poll_t *poll;    /* on its sentinel */
} worker_proc_t;

struct launcher_s {
  mp__launcher_config_t config;
  worker_proc_t *workers;
  bool watching;
  /* fork: the zygote. */
  mp_process_t *zygote;
  int zygote_sock;
  uv_poll_t zygote_poll;
  bool zygote_polling;
};

static int exitcode_of(int wait_status) {
  if (WIFEXITED(wait_status))
    return WEXITSTATUS(wait_status);
  return WIFSIGNALED(wait_status) ? -WTERMSIG(wait_status) : wait_status;
}

static void free_handle(uv_handle_t *handle) {
  free(handle);
}

static void report_end(launcher_t *l, uint32_t w, int exitcode) {
  l->config.events.ended(l->config.events.pool, w, exitcode);
}

static void on_sentinel(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  worker_proc_t *wp = handle->data;
  int exitcode = 0;
  if (mp_process_join(wp->proc, 0) < 0)
    return; /* not ended yet */
  if (mp_process_exitcode(wp->proc, &exitcode) < 0)
    exitcode = 0; /* status taken by the program's own waitpid(-1): an unknown end */
  uv_close((uv_handle_t *)handle, free_handle);
  mp_process_close(wp->proc);
  wp->proc = NULL;
  wp->poll = NULL;
  report_end(wp->launcher, wp->w, exitcode);
}

static void kill_and_reap(mp_process_t *proc) {
  mp_process_kill(proc);
  mp_process_join(proc, MP_FOREVER);
  mp_process_close(proc);
}

/* Watches a started worker's sentinel from the supervisor's loop. */
static int watch_process(launcher_t *l, worker_proc_t *wp) {
  int fd = mp_process_sentinel(wp->proc);
  wp->poll = malloc(sizeof *wp->poll);
  if (fd < 0 || !wp->poll || uv_poll_init(l->config.loop, wp->poll, fd) < 0) {
    /* Cannot be watched: do not let it run unwatched. */
    free(wp->poll);
    wp->poll = NULL;
    kill_and_reap(wp->proc);
    wp->proc = NULL;
    return mp__error(fd < 0 ? fd : MP_ENOMEM, "cannot watch pool worker %u", wp->w + 1);
  }
  wp->poll->data = wp;
  uv_poll_start(wp->poll, UV_READABLE | UV_DISCONNECT, on_sentinel);
  return 0;
}

static const char *worker_kind(const mp_context_t *ctx) {
  const char *method = mp_context_start_method(ctx);
  return strcmp(method, "fork") == 0 ? "Fork" : strcmp(method, "spawn") == 0 ? "Spawn" : "ForkServer";
}

/* Starts worker w as an mp_process child of the pool's context, watched once the
 * supervisor runs. */
static int process_start(void *state, uint32_t w, int *pid) {
  launcher_t *l = state;
  worker_proc_t *wp = &l->workers[w];
  boot_t boot;
  memset(&boot, 0, sizeof boot); /* sent whole: no uninitialized padding */
  boot.sh = l->config.sh;
  boot.w = w;
  char name[64];
  snprintf(name, sizeof name, "%sPoolWorker-%u", worker_kind(l->config.ctx), w + 1);
  mp_process_t *proc;
  int rc = mp_process_create(&proc, l->config.ctx, worker_target, &boot, sizeof boot, name);
  if (rc < 0)
    return rc;
  mp_process_set_daemon(proc, true);
  if ((rc = mp__process_pass_fd(proc, l->config.event_key)) < 0 ||
      (rc = mp_process_start(proc)) < 0) {
    mp_process_close(proc);
    return rc;
  }
  wp->proc = proc;
  wp->by_zygote = false;
  *pid = mp_process_pid(proc);
  return l->watching ? watch_process(l, wp) : 0;
}

static int process_watch(void *state) {
  launcher_t *l = state;
  l->watching = true;
  for (uint32_t w = 0; w < l->config.n_workers; w++) {
    worker_proc_t *wp = &l->workers[w];
    int rc = wp->proc && !wp->poll ? watch_process(l, wp) : 0;
    if (rc < 0)
      return rc;
  }
  return 0;
}

static void process_stop(void *state) {
  launcher_t *l = state;
  for (uint32_t w = 0; w < l->config.n_workers; w++)
    if (l->workers[w].proc)
      mp_process_kill(l->workers[w].proc);
}

static int process_open(const mp__launcher_config_t *config, void **state) {
  launcher_t *l = calloc(1, sizeof *l);
  if (l)
    l->workers = calloc(config->n_workers, sizeof *l->workers);
  if (!l || !l->workers) {
    free(l);
    return mp__error(MP_ENOMEM, "no memory for %u worker processes", config->n_workers);
  }
  l->config = *config;
  l->zygote_sock = -1;
  for (uint32_t w = 0; w < config->n_workers; w++)
    l->workers[w] = (worker_proc_t){.launcher = l, .w = w};
  *state = l;
  return 0;
}

static void nothing_to_close(void *state) {
  (void)state;
}

/* The loop is closed: its polls with it, their workers not reaped yet. */
static void process_free(void *state) {
  launcher_t *l = state;
  for (uint32_t w = 0; w < l->config.n_workers; w++) {
    worker_proc_t *wp = &l->workers[w];
    free(wp->poll);
    if (wp->proc)
      kill_and_reap(wp->proc);
  }
  if (l->zygote_sock >= 0)
    close(l->zygote_sock);
  free(l->workers);
  free(l);
}

static const mp__launcher_ops_t process_launcher = {
    process_open, process_start, process_watch, process_stop, nothing_to_close, process_free,
};

/* ------------------------------ fork: the zygote's parent ------------------------------ */

/* Without the zygote no worker could be replaced: the launcher is broken, and its workers
 * are gone with it. */
static void zygote_lost(launcher_t *l) {
  l->config.events.broken(l->config.events.pool, "its zygote died, so no worker could be replaced");
  for (uint32_t w = 0; w < l->config.n_workers; w++) {
    if (l->workers[w].by_zygote) {
      l->workers[w].by_zygote = false;
      report_end(l, w, -SIGKILL);
    }
  }
}

static void on_zygote(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  launcher_t *l = handle->data;
  for (;;) {
    zygote_msg_t msg;
    ssize_t n = mp__recv_record(l->zygote_sock, &msg, sizeof msg, NULL, MSG_DONTWAIT);
    if (n == -EAGAIN)
      return;
    if (n != (ssize_t)sizeof msg || msg.w >= l->config.n_workers) {
      uv_poll_stop(handle);
      zygote_lost(l);
      return;
    }
    if (msg.op == ZYGOTE_STARTED && msg.value < 0) {
      char why[128];
      snprintf(why, sizeof why, "the zygote cannot fork a worker: %s", strerror(-msg.value));
      l->workers[msg.w].by_zygote = false;
      l->config.events.start_failed(l->config.events.pool, msg.w, msg.value, why);
    } else if (msg.op == ZYGOTE_STARTED) {
      l->config.events.started(l->config.events.pool, msg.w, msg.value);
    } else if (msg.op == ZYGOTE_EXITED && l->workers[msg.w].by_zygote) {
      l->workers[msg.w].by_zygote = false;
      report_end(l, msg.w, exitcode_of(msg.value));
    }
  }
}

/* The zygote is forked at creation, from the thread creating the pool, before the first
 * workers: those are forked by the pool's process (they start while the zygote waits, and
 * at the end they die in parallel with it, not after it). */
static int fork_open(const mp__launcher_config_t *config, void **state) {
  int rc = process_open(config, state);
  if (rc < 0)
    return rc;
  launcher_t *l = *state;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    rc = mp__syserror("socketpair for the pool's zygote");
    process_free(l);
    *state = NULL;
    return rc;
  }
  l->zygote_sock = sv[0];
  uint64_t key;
  if ((rc = mp__fd_share(sv[1], &key)) < 0) {
    close(sv[1]);
    process_free(l);
    *state = NULL;
    return rc;
  }
  boot_t boot;
  memset(&boot, 0, sizeof boot);
  boot.sh = config->sh;
  boot.w = config->n_workers;
  boot.sock_key = key;
  rc = mp_process_create(&l->zygote, config->ctx, zygote_main, &boot, sizeof boot,
                         "ForkPoolZygote");
  if (rc == 0) {
    mp_process_set_daemon(l->zygote, true);
    if ((rc = mp__process_pass_fd(l->zygote, key)) < 0 ||
        (rc = mp__process_pass_fd(l->zygote, config->event_key)) < 0 ||
        (rc = mp_process_start(l->zygote)) < 0) {
      mp_process_close(l->zygote);
      l->zygote = NULL;
    }
  }
  mp__fd_unshare(key); /* the zygote's end, ours to close now */
  if (rc < 0) {
    process_free(l);
    *state = NULL;
  }
  return rc;
}

static int fork_start(void *state, uint32_t w, int *pid) {
  launcher_t *l = state;
  if (!l->watching)
    return process_start(state, w, pid); /* a first worker: the pool's own child */
  zygote_msg_t msg = {ZYGOTE_START, w, 0};
  int rc = mp__send_record(l->zygote_sock, &msg, sizeof msg, -1);
  l->workers[w].by_zygote = rc == 0;
  *pid = 0; /* told by ZYGOTE_STARTED */
  return rc;
}

static int fork_watch(void *state) {
  launcher_t *l = state;
  int rc = uv_poll_init(l->config.loop, &l->zygote_poll, l->zygote_sock);
  if (rc < 0)
    return mp__error(rc, "watching the pool's zygote: %s", uv_strerror(rc));
  l->zygote_poll.data = l;
  uv_poll_start(&l->zygote_poll, UV_READABLE | UV_DISCONNECT, on_zygote);
  l->zygote_polling = true;
  return process_watch(state);
}

/* End of file tells the zygote to kill and reap its workers (it reports each end), then
 * exit; the pool's own are killed here. */
static void fork_stop(void *state) {
  launcher_t *l = state;
  shutdown(l->zygote_sock, SHUT_WR);
  process_stop(state);
}

static void fork_close(void *state) {
  launcher_t *l = state;
  if (!l->zygote)
    return;
  if (l->zygote_polling && !uv_is_closing((uv_handle_t *)&l->zygote_poll))
    uv_poll_stop(&l->zygote_poll);
  shutdown(l->zygote_sock, SHUT_RDWR);
  if (mp_process_join(l->zygote, 1.0) < 0)
    kill_and_reap(l->zygote);
  else
    mp_process_close(l->zygote);
  l->zygote = NULL;
}

static void fork_free(void *state) {
  fork_close(state);
  process_free(state);
}

static const mp__launcher_ops_t fork_launcher = {
    fork_open, fork_start, fork_watch, fork_stop, fork_close, fork_free,
};

extern const mp__context_launcher_t *const __start_mp__context_launchers[]
    __attribute__((weak)),
    *const __stop_mp__context_launchers[] __attribute__((weak));

const mp__launcher_ops_t *mp__pool_launcher(const mp_context_t *ctx, int asked, int *processes) {
  for (const mp__context_launcher_t *const *l = __start_mp__context_launchers;
       l < __stop_mp__context_launchers; l++)
    if ((*l)->context == ctx->ops) {
      if (asked == MP_POOL_CPU_COUNT)
        (*l)->cpu_count(processes);
      return (*l)->launcher;
    }
  return ctx->ops == &mp__popen_thread ? &mp__thread_launcher
         : ctx->ops == &mp__popen_fork ? &fork_launcher
                                       : &process_launcher;
}
