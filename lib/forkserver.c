/*
 * The fork server: a fresh, single-threaded image of the program, spawned on first use,
 * whose forks become the "forkserver" children. Forking there is safe (no other thread can
 * hold a lock) and cheaper than an exec, and children start from a clean state.
 *
 * The parent holds one control socket to its server. To start a child it makes a fresh
 * socket pair, sends one end over the control socket (SCM_RIGHTS) and streams the request
 * on its own end. A spare the server forked in advance takes it, reads and resolves the
 * request as a spawned child does (spawn.c) and answers READY with its pid and its own
 * pidfd, which the parent watches and signals through. When its target returns, the child
 * sends EXITED with its exit code just before it exits; the server, once it has reaped a
 * child, sends STATUS with the wait status, which is what the parent reads of a child that
 * was killed. The server itself stays off the path of a start and a join.
 *
 * The server ends when the control socket hangs up, which happens when the parent exits
 * for any reason, killed included: no server outlives its program. Its children then die
 * with it unless they were started with die_with_parent false.
 */
#include "internal.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* ------------------------------ the client ------------------------------ */

/* One struct within one cache line: a child of any fork() of a program with a server
 * forgets it (the atfork handler), and each page it writes there is a fault at every fork. */
static struct __attribute__((aligned(64))) {
  pthread_mutex_t lock;
  pid_t owner; /* the process the server serves: a forked child needs its own */
  pid_t pid;
  int pidfd; /* to signal it even if the program reaped it (SIG_IGN) */
  int ctl;
} server = {.lock = PTHREAD_MUTEX_INITIALIZER, .pidfd = -1, .ctl = -1};

_Static_assert(sizeof server <= 64, "the client's state stays in one page");

/* Child text, with inline closes: libc's close would be one more code page to fault in.
 * One store each: merged into one vector store, they loaded their constant from .rodata,
 * another page to fault in. */
#define FORGET(field, value) __atomic_store_n(&server.field, value, __ATOMIC_RELAXED)
MP__CHILD_TEXT static void forget_server(void) {
  if (server.ctl >= 0)
    mp__raw_syscall(SYS_close, server.ctl, 0, 0, 0);
  if (server.pidfd >= 0)
    mp__raw_syscall(SYS_close, server.pidfd, 0, 0, 0);
  FORGET(ctl, -1);
  FORGET(pidfd, -1);
  FORGET(pid, 0);
  FORGET(owner, 0);
}

/* Stops the server (if any) and reaps it; the lock is held. It has no work left that
 * matters (its children have been joined or opted out), so SIGKILL: nothing, not even a
 * stopped server, can make the program's exit wait. */
static void stop_server(void) {
  if (server.owner != getpid()) {
    forget_server();
    return;
  }
  pid_t pid = server.pid;
  if (server.pidfd >= 0)
    mp__pidfd_send_signal(server.pidfd, SIGKILL);
  else if (pid > 0)
    kill(pid, SIGKILL);
  forget_server();
  while (pid > 0 && waitpid(pid, NULL, 0) < 0 && errno == EINTR)
    ;
}

static int start_server(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return mp__syserror("socketpair for the fork server");
  /* Published before the spawn, so that a fork() in another thread meanwhile closes its
   * copy (the atfork handler): a copy would keep the server from seeing us go. */
  server.ctl = sv[0];
  server.owner = getpid();
  pid_t pid;
  int rc = mp__spawn_image("forkserver", sv[1], -1, &pid);
  close(sv[1]);
  if (rc < 0) {
    forget_server();
    return rc;
  }
  server.pid = pid;
  server.pidfd = mp__have_pidfd() ? mp__pidfd_open(pid) : -1;
  return 0;
}

/* The one record the program sends on the control socket, with the child's socket. */
#define FORK_REQUEST 'F'

/* Whether the server has ended, waiting until deadline: its pidfd readable or, without one,
 * the control socket's hang-up (once its last spare has gone too); the lock is held. */
static bool server_ended(int64_t deadline) {
  return mp__poll_fd(server.pidfd >= 0 ? server.pidfd : server.ctl,
                     server.pidfd >= 0 ? POLLIN : POLLRDHUP, deadline) != 0;
}

int mp__forkserver_request(int sock, pid_t self) {
  static const char fork_request = FORK_REQUEST;
  pthread_mutex_lock(&server.lock);
  int rc = 0;
  for (int attempt = 0; attempt < 2; attempt++) {
    if (server.owner != self) {
      forget_server();
      rc = start_server();
      if (rc < 0)
        break;
    }
    rc = mp__send_record(server.ctl, &fork_request, 1, sock);
    if (rc == 0)
      break;
    /* Other refusals (ETOOMANYREFS: this user's fds in flight past our fd limit, which any
     * process of the user can cause; ENOBUFS, ENOMEM) come from a live server: stopping it
     * would kill its running children too. */
    if (rc != -EPIPE && rc != -ECONNRESET && !server_ended(mp__now_ns())) {
      rc = mp__error(rc, "the request could not be sent to the fork server: %s",
                     mp_strerror(rc));
      break;
    }
    /* The server died (killed by someone): reap it and start another, once. */
    stop_server();
    rc = mp__error(MP_ESPAWN, "the fork server is gone: %s", mp_strerror(rc));
  }
  pthread_mutex_unlock(&server.lock);
  return rc;
}

/* How long a start that no child took over waits to see the server's end: its spares die of
 * it (PR_SET_PDEATHSIG), which may end the start a moment before its pidfd tells, or,
 * without one, before the last spare's death hangs up the control socket. A server that
 * runs (only the spare died, killed) costs that start this wait. */
#define GONE_WAIT_SECONDS 0.1

void mp__forkserver_check(pid_t self) {
  pthread_mutex_lock(&server.lock);
  if (server.owner == self && server_ended(mp__deadline(GONE_WAIT_SECONDS)))
    stop_server();
  pthread_mutex_unlock(&server.lock);
}

/* At the process's end, after its children were joined (they may be the server's). */
MP__CHILD_TEXT static void stop_at_exit(void) {
  if (!server.owner)
    return; /* never started: skip the lock, which a forked child would have to copy */
  pthread_mutex_lock(&server.lock);
  stop_server();
  pthread_mutex_unlock(&server.lock);
}

MP__CHILD_TEXT static void after_fork_in_child(void) {
  mp__reset_lock(&server.lock);
  if (server.owner || server.ctl >= 0) /* also a fork in the middle of start_server() */
    forget_server(); /* the child's own server starts when it first needs one */
}

/* A registration of spawn.c's start-up order (step 2): see mp__role_t. */
__attribute__((constructor(102))) static void install_hooks(void) {
  mp__on_exit(stop_at_exit, MP__EXIT_LAST);
  pthread_atfork(NULL, NULL, after_fork_in_child);
}

/* ------------------------------ the server ------------------------------ */

/*
 * The server keeps two spare children forked in advance, blocked on the control socket. A
 * request wakes a spare, not the server: no fork lies on the path of a start, which is
 * what makes a forkserver start about as cheap as a bare fork(). The spare tells the server
 * it was taken (its pid and the request's socket, for the exit status) and the server forks
 * a replacement while the taken one runs; with two, back-to-back starts never wait for that
 * fork. Without any spare (fork failing, or no fd left for another child's socket), the
 * server takes requests itself and answers each with the error.
 *
 * The server holds one fd per running child (its socket, for STATUS). A socket that arrives
 * past the fd limit is cut off, so the server holds a free fd slot (a copy of its signalfd)
 * for each spare and one for a request it refuses, and frees one just before each receive:
 * a spare is forked only with its slot held, and at the limit starts are refused instead.
 *
 * The server is single-threaded and all its children are its own, so it learns of their
 * end from SIGCHLD through a signalfd, which needs no pidfd support (valgrind has none).
 */
typedef struct {
  pid_t pid;
  int sock;
} served_child_t;

/* Two: while the server forks the next, the other waits, so back-to-back starts do not
 * wait for a fork. */
#define SPARES 2

typedef struct {
  pid_t self;
  /* The process whose start-up socket ctl is (spawn.c checked it). */
  pid_t program_pid;
  int ctl;      /* from the program, shared with the spare */
  int program;  /* the program's pidfd, or -1 */
  int sigfd;    /* SIGCHLD */
  int taken[2]; /* spare to server: "I took a request" */
  pid_t spares[SPARES]; /* 0: an empty place */
  int fork_errno;       /* why the last spare could not be forked (EMFILE: no slot to hold) */
  int held[SPARES + 1]; /* the free fd slots held: one per spare, one for a refusal */
  int held_count;
  /* The fd limit the program gave us, the children's (the kernel's struct rlimit64), if
   * ours was raised. */
  uint64_t child_files[2];
  bool files_raised;
  uid_t uid;            /* ours, for the requests' peers (mp__peer_ids) */
  gid_t gid;
  served_child_t *children; /* `few` until more are served at once */
  size_t count, cap;
  /* On the server's stack, beside the frames it writes after every fork anyway: a list on
   * the heap was one more page to copy per start (docs/architecture.md). */
  served_child_t few[8];
} server_t;

/* What a spare runs before and while it takes a request is child code too: inline system
 * calls (MP__CHILD_TEXT), not libc's close, sigprocmask, signal, prctl and getppid. */
MP__CHILD_TEXT static void reset_child_state(const server_t *s) {
  mp__raw_syscall(SYS_close, s->sigfd, 0, 0, 0);
  mp__raw_syscall(SYS_close, s->taken[0], 0, 0, 0);
  for (size_t i = 0; i < s->count; i++)
    mp__raw_syscall(SYS_close, s->children[i].sock, 0, 0, 0);
  for (int i = 0; i < s->held_count; i++)
    mp__raw_syscall(SYS_close, s->held[i], 0, 0, 0);
  if (s->files_raised)
    mp__raw_syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, (long)s->child_files, 0);
  mp__kernel_sigset_t none = {{0}};
  mp__raw_syscall(SYS_rt_sigprocmask, SIG_SETMASK, (long)&none, 0, sizeof none);
#if defined(__x86_64__) || defined(__aarch64__)
  /* SIG_DFL needs no restorer: the kernel's own struct sigaction, empty mask, no flags. */
  struct {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
  } dfl = {.handler = SIG_DFL};
  mp__raw_syscall(SYS_rt_sigaction, SIGINT, (long)&dfl, 0, sizeof dfl.mask);
#else
  signal(SIGINT, SIG_DFL); /* the kernel's struct differs elsewhere */
#endif
}

/* The spare: waits for a request, reports that it took it, becomes the child. */
MP__CHILD_TEXT static MP__NORETURN void run_spare(const server_t *s) {
  reset_child_state(s);
  /* The server is single-threaded: SIGKILL at its death is safe until the request says. */
  mp__raw_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0);
  if (mp__raw_syscall(SYS_getppid, 0, 0, 0, 0) != s->self)
    _exit(0);
  /* What does not depend on the request is done now, while no start waits for it: the
   * system calls (its pid, its pidfd; the program's pidfd is the server's, kept as the
   * child's parent's) and the first writes of the pages the child writes. */
  pid_t self = (pid_t)mp__raw_syscall(SYS_getpid, 0, 0, 0, 0);
  mp__spare_t spare = {.self = self,
                       .server = s->self,
                       .program = s->program_pid,
                       .self_pidfd = mp__have_pidfd() ? mp__pidfd_open(self) : -1,
                       .program_fd = s->program};
  mp__request_prepare();
  mp__child_prepare();
  int sock = -1;
  for (;;) {
    char request;
    ssize_t n = mp__recv_record(s->ctl, &request, 1, &sock, 0);
    if (n == 0 || (n < 0 && n != -EINTR && n != -EMSGSIZE))
      _exit(0); /* the program has gone */
    if (sock >= 0 && n == 1 && request == FORK_REQUEST)
      break;
    if (sock >= 0)
      close(sock);
    sock = -1;
  }
  /* The same rule as for the server's own start-up: a request comes from the program. */
  if (mp__check_peer_as(sock, s->program_pid, s->uid, s->gid, "a fork server request") < 0) {
    dprintf(STDERR_FILENO, "libmp: the fork server refused a request: %s\n", mp_last_error());
    _exit(127);
  }
  mp__reply_t taken = {MP__REC_READY, self};
  int sent = mp__send_record(s->taken[1], &taken, sizeof taken, sock);
  if (sent == -EPIPE || sent == -ECONNRESET)
    _exit(1); /* the server has gone: the parent reads end of file, and asks a new one */
  /* The report cannot carry the socket (ETOOMANYREFS: this user's fds in flight past our
   * limit; ENOBUFS): the server does not know this child, which must not run. */
  if (sent < 0)
    mp__request_refuse(sock, mp__error(sent, "the fork server's child could not report its "
                                             "start to the server: %s",
                                       mp_strerror(sent)));
  /* The control socket and "taken" are closed after READY, which the start waits for. */
  spare.server_fds[0] = s->ctl;
  spare.server_fds[1] = s->taken[1];
  /* Still SIGKILL at the server's death: the request decides (mp__request_run), and with
   * die_with_parent the child's own death signal replaces it, one system call fewer. */
  mp__request_t *req;
  int rc = mp__request_read(sock, &req);
  if (rc < 0)
    mp__request_refuse(sock, rc);
  mp__request_run(req, sock, false, &spare, -1);
}

/* Where pid is among the spares (pid 0: an empty place), or NULL. */
static pid_t *find_spare(server_t *s, pid_t pid) {
  for (int i = 0; i < SPARES; i++)
    if (s->spares[i] == pid)
      return &s->spares[i];
  return NULL;
}

/* Holds one more free fd slot; false at the fd limit. */
static bool hold_slot(server_t *s) {
  if (s->held_count == SPARES + 1) /* one per spare and one for a refusal: never more */
    return false;
  int fd = fcntl(s->sigfd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0)
    return false;
  s->held[s->held_count++] = fd;
  return true;
}

/* Frees a held slot, if any, for the fd the next receive brings. */
static void release_slot(server_t *s) {
  if (s->held_count > 0)
    close(s->held[--s->held_count]);
}

/* Holds again the slots that receives freed but did not use (one per spare, one for a
 * refusal), then forks spares into the empty places, each with one more; false if there
 * is still no spare at all. */
static bool fork_spares(server_t *s) {
  int live = 0;
  for (int i = 0; i < SPARES; i++)
    live += s->spares[i] != 0;
  while (s->held_count < live + 1 && hold_slot(s))
    ;
  pid_t *place;
  while ((place = find_spare(s, 0)) != NULL) {
    if (!hold_slot(s)) { /* for the socket its "taken" record brings */
      s->fork_errno = EMFILE;
      break;
    }
    pid_t pid = fork();
    if (pid == 0)
      run_spare(s);
    if (pid < 0) {
      s->fork_errno = errno;
      release_slot(s);
      break;
    }
    *place = pid;
    live++;
  }
  return live > 0;
}

static bool track_child(server_t *s, pid_t pid, int sock) {
  if (s->count == s->cap) {
    size_t cap = 2 * s->cap;
    served_child_t *children =
        realloc(s->children == s->few ? NULL : s->children, cap * sizeof *children);
    if (!children)
      return false;
    if (s->children == s->few)
      memcpy(children, s->few, sizeof s->few);
    s->children = children;
    s->cap = cap;
  }
  s->children[s->count++] = (served_child_t){.pid = pid, .sock = sock};
  return true;
}

/* Without a spare: take the request and refuse it, since no child can be made now. */
static void refuse_without_spare(server_t *s) {
  char request;
  int sock = -1;
  release_slot(s); /* held again by fork_spares */
  ssize_t n = mp__recv_record(s->ctl, &request, 1, &sock, MSG_DONTWAIT);
  /* -EMSGSIZE: not a request, or its socket cut off (the fd limit lowered under the held
   * slot): the kernel closed that socket, so its start sees its child's end. */
  if (n == 0 || (n < 0 && n != -EAGAIN && n != -EINTR && n != -EMSGSIZE))
    _exit(0); /* the program has gone */
  if (sock >= 0)
    mp__refuse_start(sock, s->fork_errno == EMFILE
                               ? mp__error(-EMFILE, "the fork server has no fd left for "
                                                    "another child (one per running child)")
                               : mp__error(MP_ESPAWN, "the fork server cannot fork: %s",
                                           mp_strerror(-s->fork_errno)));
}

/* Handles one "taken" message, if any: true if there was one. */
static bool spare_taken(server_t *s) {
  mp__reply_t taken = {0};
  int sock = -1;
  release_slot(s); /* a spare's goes to its socket; another is held again by fork_spares */
  bool cut; /* the record whole, its socket cut off (the fd limit lowered under the slot) */
  ssize_t n =
      mp__recv_record_cut(s->taken[0], &taken, sizeof taken, &sock, MSG_DONTWAIT, &cut);
  pid_t *spare =
      n == (ssize_t)sizeof taken && taken.value > 0 ? find_spare(s, taken.value) : NULL;
  if (!spare) {
    if (sock >= 0)
      close(sock); /* only a spare can say so, and of itself */
    return n > 0 || n == -EMSGSIZE;
  }
  *spare = 0;
  if (sock < 0 || !track_child(s, taken.value, sock)) {
    /* Untracked, it would never be reported (a killed child would pass for SIGKILLed, one
     * of a dead server): stop it now, its start fails or its child ends killed. */
    kill(taken.value, SIGKILL);
    if (sock >= 0)
      close(sock);
  }
  return true;
}

static served_child_t *find_child(server_t *s, pid_t pid) {
  for (size_t i = 0; i < s->count; i++)
    if (s->children[i].pid == pid)
      return &s->children[i];
  return NULL;
}

static void reap_served(server_t *s) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    served_child_t *child = find_child(s, pid);
    if (!child) {
      /* A spare sends "taken" before it can end, but it may have taken a request and
       * ended since the last look: read every such message before deciding that it was
       * an idle spare, or its parent would never be told. */
      while (spare_taken(s))
        ;
      child = find_child(s, pid);
    }
    if (!child) {
      pid_t *spare = find_spare(s, pid); /* killed while idle */
      if (spare) {
        *spare = 0;
        release_slot(s); /* its slot */
      }
      continue;
    }
    /* Inline: after a child that said EXITED the parent has often closed its end, and
     * libc's sendmsg would write errno (ECONNRESET) on the TLS page, copied after every
     * fork. */
    mp__reply_t rec = {MP__REC_STATUS, status};
    struct iovec iov = {.iov_base = &rec, .iov_len = sizeof rec};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    while (mp__raw_syscall(SYS_sendmsg, child->sock, (long)&msg, MSG_NOSIGNAL, 0) == -EINTR)
      ;
    close(child->sock);
    *child = s->children[--s->count];
  }
}

MP__ROLE(forkserver, "forkserver", "fork server", false) {
  (void)sentinel_fd;
  int ctl = fd;
  /* Ctrl-C in the terminal is for the program and the children, not for the server. */
  signal(SIGINT, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  server_t s = {.self = getpid(), .program_pid = getppid(), .ctl = ctl, .program = -1};
  s.children = s.few;
  s.cap = sizeof s.few / sizeof s.few[0];
  mp__peer_ids(&s.uid, &s.gid);
  /* Ours bounds how many children we serve at once: the hard limit, not the program's soft
   * one when it started us (which it may raise later); the children keep that one, the
   * program's limit as it was when it started us. */
  struct rlimit files;
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    s.child_files[0] = files.rlim_cur;
    s.child_files[1] = files.rlim_max;
    files.rlim_cur = files.rlim_max;
    s.files_raised = setrlimit(RLIMIT_NOFILE, &files) == 0;
  }
  s.sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (s.sigfd < 0 || socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, s.taken) < 0)
    _exit(1);
  /* The program's end, seen directly too: a copy of its control socket held elsewhere
   * would hide the hang-up. (Reparented already: the program is gone.) */
  if (mp__have_pidfd())
    s.program = mp__pidfd_open(getppid());
  if (getppid() == 1)
    _exit(0);
  mp__fnref_prepare(); /* once here, not in every child: its spares inherit the answer */
  for (;;) {
    bool has_spare = fork_spares(&s);
    /* With a spare, the control socket is the spares' to read: watch it for hang-up only,
     * which comes when the program has gone. */
    struct pollfd fds[4] = {{.fd = ctl, .events = has_spare ? POLLRDHUP : POLLIN},
                            {.fd = s.sigfd, .events = POLLIN},
                            {.fd = s.taken[0], .events = POLLIN},
                            {.fd = s.program, .events = POLLIN}};
    if (poll(fds, 4, -1) < 0) {
      if (errno == EINTR)
        continue;
      _exit(1);
    }
    if (fds[2].revents)
      spare_taken(&s);
    if (fds[1].revents) {
      struct signalfd_siginfo info;
      /* Inline: the last read fails (EAGAIN), and libc's would write errno, the server's
       * TLS page, a page it copies again after every fork. */
      while (mp__raw_syscall(SYS_read, s.sigfd, (long)&info, sizeof info, 0) > 0)
        ;
      reap_served(&s);
    }
    /* POLLNVAL too: without its control socket the server could only fork spares that
     * die at once, for ever. */
    if (fds[0].revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL) || fds[3].revents)
      _exit(0); /* the program has gone; the spares die with us */
    if (fds[0].revents & POLLIN)
      refuse_without_spare(&s);
  }
}
