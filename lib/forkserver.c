/*
 * The fork server: a fresh, single-threaded image of the program, spawned on first use,
 * that forks each "forkserver" child on request. Forking there is safe (no other thread can
 * hold a lock) and cheaper than an exec, and children start from a clean state.
 *
 * The parent holds one control socket to its server. To start a child it makes a fresh
 * socket pair and sends one end over the control socket (SCM_RIGHTS), then streams the
 * request on its own end. The server reads the request and resolves the target as a
 * spawned child does (spawn.c), then forks; the child answers READY with its pid and its
 * own pidfd, which the parent watches and signals
 * through. When its target returns, the child sends EXITED with its exit code just before
 * it exits; the server, once it has reaped a child, sends STATUS with the wait status, which
 * is what the parent reads of a child that was killed. The server stays off the path of a
 * normal start and join: only the request passes through it.
 *
 * The server ends when the control socket reaches end of file, which happens when the
 * parent exits for any reason, killed included: no server outlives its program. Its
 * children then die with it unless they were started with die_with_parent false.
 */
#include "internal.h"

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------ the client ------------------------------ */

static pthread_mutex_t server_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t server_owner; /* the process the server serves: a forked child needs its own */
static pid_t server_pid;
static int server_ctl = -1;

static void forget_server(void) {
  if (server_ctl >= 0)
    close(server_ctl);
  server_ctl = -1;
  server_pid = 0;
  server_owner = 0;
}

/* Stops the server (if any) and reaps it; the lock is held. */
static void stop_server(void) {
  if (server_owner != getpid()) {
    forget_server();
    return;
  }
  pid_t pid = server_pid;
  forget_server();
  if (pid > 0)
    waitpid(pid, NULL, 0);
}

static int start_server(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return mp__syserror("socketpair for the fork server");
  pid_t pid;
  int rc = mp__spawn_image("forkserver", sv[1], -1, &pid);
  close(sv[1]);
  if (rc < 0) {
    close(sv[0]);
    return rc;
  }
  server_ctl = sv[0];
  server_pid = pid;
  server_owner = getpid();
  return 0;
}

int mp__forkserver_request(int sock) {
  static const char fork_request = 'F';
  pthread_mutex_lock(&server_lock);
  int rc = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (server_owner != getpid()) {
      forget_server();
      rc = start_server();
      if (rc < 0)
        break;
    }
    rc = mp__send_record(server_ctl, &fork_request, 1, sock);
    if (rc == 0)
      break;
    /* The server died (killed by someone): reap it and start another, once. */
    stop_server();
    rc = mp__error(MP_ESPAWN, "the fork server is gone: %s", mp_strerror(rc));
  }
  pthread_mutex_unlock(&server_lock);
  return rc;
}

void mp__forkserver_stop(void) {
  if (!server_owner)
    return; /* never started: skip the lock, which a forked child would have to copy */
  pthread_mutex_lock(&server_lock);
  stop_server();
  pthread_mutex_unlock(&server_lock);
}

void mp__forkserver_after_fork(void) {
  mp__reset_lock(&server_lock);
  if (server_owner)
    forget_server(); /* the child's own server starts when it first needs one */
}

/* ------------------------------ the server ------------------------------ */

/*
 * The server is single-threaded and all its children are its own, so it learns of their
 * end from SIGCHLD through a signalfd, which needs no pidfd support (valgrind has none).
 */
typedef struct {
  pid_t pid;
  int sock;
} served_child_t;

typedef struct {
  served_child_t *children;
  size_t count, cap;
} server_t;

/* Reads the request before forking, so the child starts with it in memory: it neither
 * allocates nor resolves, and writes (so copies) as few pages as it can. */
static void serve_fork(server_t *s, int sock, pid_t self, int ctl, int sigfd) {
  mp__request_t *req = NULL;
  int rc = mp__request_read(sock, &req);
  if (rc == 0 && s->count == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 16;
    served_child_t *children = realloc(s->children, cap * sizeof *children);
    if (children) {
      s->children = children;
      s->cap = cap;
    } else {
      rc = mp__error(MP_ENOMEM, "the fork server has no memory for another child");
    }
  }
  pid_t pid = rc == 0 ? fork() : -1;
  if (pid == 0) {
    /* Keep only this child's socket, and give it the default signal state. */
    close(ctl);
    close(sigfd);
    for (size_t i = 0; i < s->count; i++)
      close(s->children[i].sock);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGINT, SIG_DFL);
    mp__request_run(req, sock, false, self, -1);
  }
  if (rc == 0 && pid < 0)
    rc = mp__syserror("the fork server could not fork");
  mp__request_free(req);
  if (rc < 0) {
    if (rc != -EPIPE)
      mp__send_error(sock, rc);
    close(sock);
    return;
  }
  s->children[s->count++] = (served_child_t){.pid = pid, .sock = sock};
}

static void reap_served(server_t *s) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (size_t i = 0; i < s->count; i++) {
      if (s->children[i].pid != pid)
        continue;
      mp__reply_t rec = {MP__REC_STATUS, status};
      mp__send_record(s->children[i].sock, &rec, sizeof rec, -1);
      close(s->children[i].sock);
      s->children[i] = s->children[--s->count];
      break;
    }
  }
}

void mp__forkserver_main(int ctl) {
  /* Ctrl-C in the terminal is for the program and the children, not for the server. */
  signal(SIGINT, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sigfd < 0)
    _exit(1);
  pid_t self = getpid();
  server_t s = {0};
  struct pollfd fds[2] = {{.fd = ctl, .events = POLLIN}, {.fd = sigfd, .events = POLLIN}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      _exit(1);
    }
    if (fds[1].revents) {
      struct signalfd_siginfo info;
      while (read(sigfd, &info, sizeof info) > 0)
        ;
      reap_served(&s);
    }
    if (fds[0].revents) {
      char request;
      int sock = -1;
      ssize_t n = mp__recv_record(ctl, &request, 1, &sock);
      if (n == 0 || (n < 0 && n != -EINTR))
        _exit(0); /* the program has gone */
      if (sock >= 0)
        serve_fork(&s, sock, self, ctl, sigfd);
    }
  }
}
