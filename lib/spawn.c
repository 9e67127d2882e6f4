/*
 * Starting a fresh image of the program as a libmp child, and the child's take-over.
 *
 * A spawned child (and the fork server, and the segment tracker) is the running executable,
 * posix_spawn()ed with LIBMP_CHILD="<role> <fd> <sentinel>" in its environment. A
 * constructor recognises it before main() runs, removes the variable (so it reaches neither
 * the child's own children nor a program it execs) and runs the role's main (the table of
 * roles: MP__ROLE in internal.h), which never returns: main() does not run again in a child,
 * so there is no guard to forget and no fork bomb when one is forgotten.
 *
 * The child and its parent then speak over a SOCK_SEQPACKET socket. The parent streams the
 * request (who the child is, the target by identity, the argument bytes) in records of at
 * most MP__RECORD_MAX bytes; the child answers with one READY or ERROR record. Records are
 * atomic, which matters for the fork server, whose records share the socket with the
 * child's. A child that dies before answering closes its end: the parent reads end of file
 * and reports MP_ESPAWN instead of waiting.
 */
#include "internal.h"
#include "trace.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

typedef mp__request_head_t request_head_t;
#define REQUEST_HEAD_SENT MP__REQUEST_HEAD_SENT

/* --------------------------- the parent's side --------------------------- */

/* Waits until sock is ready for events, or the child (watched through fd `child`, -1 for
 * none) has ended: 0, or -EPIPE once the child has ended. Another thread's fork() may hold
 * a copy of the child's end of the socket, so its death need not end the socket. */
static int wait_for_sock_or_child(int sock, short events, int child) {
  struct pollfd fds[2] = {{.fd = sock, .events = events}, {.fd = child, .events = POLLIN}};
  while (poll(fds, 2, -1) < 0)
    if (errno != EINTR)
      return -errno;
  return fds[0].revents || !fds[1].revents ? 0 : -EPIPE;
}

/* The fd that tells of a spawned child's end, or -1 where there is none (forkserver). */
static int child_watch(const mp_process_t *proc, bool from_forkserver) {
  if (from_forkserver)
    return -1;
  return proc->pidfd >= 0 ? proc->pidfd : proc->status_fd;
}

/* Sends iov[0..n) as consecutive records of at most MP__RECORD_MAX bytes, no copy made. */
static int send_stream(int sock, struct iovec *iov, int n, int child) {
  while (n > 0) {
    struct iovec chunk[8];
    int used = 0;
    size_t room = MP__RECORD_MAX;
    for (int i = 0; i < n && used < 8 && room > 0; i++) {
      size_t take = iov[i].iov_len < room ? iov[i].iov_len : room;
      chunk[used++] = (struct iovec){.iov_base = iov[i].iov_base, .iov_len = take};
      room -= take;
    }
    struct msghdr msg = {.msg_iov = chunk, .msg_iovlen = (size_t)used};
    ssize_t sent = sendmsg(sock, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0 && (errno == EAGAIN || errno == EINTR)) {
      int rc = wait_for_sock_or_child(sock, POLLOUT, child);
      if (rc < 0)
        return rc;
      continue;
    }
    if (sent < 0)
      return -errno;
    /* A SOCK_SEQPACKET record goes whole: advance past exactly what was sent. */
    size_t done = (size_t)sent;
    while (n > 0 && done >= iov->iov_len) {
      done -= iov->iov_len;
      iov++, n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + done;
      iov->iov_len -= done;
    }
    while (n > 0 && iov->iov_len == 0)
      iov++, n--;
  }
  return 0;
}

/* The fd of object i given to the child. Its key was this process's when it was given
 * (mp__process_pass_fd looked), so a key gone since is an object closed since. */
static int passed_fd(const mp_process_t *proc, size_t i) {
  int fd = mp__fd_lookup(proc->passed[i]);
  return fd == MP_ENOTPASSED ? mp__error(MP_ECLOSED, "an object given to the child "
                                                     "(mp_process_pass_*) was closed since")
                             : fd;
}

int mp__bootstrap_open(const mp_process_t *proc, mp__fnref_t *ref, int sv[2]) {
  int rc = mp__fnref_from_pointer((mp__fn_t)proc->target, ref);
  /* Before any child is made for it (a close after this is found as the fds are sent). */
  for (size_t i = 0; rc == 0 && i < proc->n_passed; i++) {
    int fd = passed_fd(proc, i);
    rc = fd < 0 ? fd : 0;
  }
  if (rc < 0)
    return rc;
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return mp__syserror("socketpair for the child");
  return 0;
}

int mp__bootstrap_send(int sock, mp_process_t *proc, const mp__fnref_t *ref, pid_t self,
                       bool from_forkserver) {
  const char *parent_name = mp__current_name();
  request_head_t head;
  memset(&head, 0, sizeof head); /* padding included: it is sent whole */
  head.magic = MP__REQUEST_MAGIC;
  head.version = MP__REQUEST_VERSION;
  head.parent_pid = self;
  head.flags = proc->die_with_parent ? MP__REQUEST_DIE_WITH_PARENT : 0;
  head.arg_size = proc->size;
  head.name_len = (uint32_t)strlen(proc->name);
  head.identity_len = (uint32_t)strlen(proc->identity);
  head.parent_name_len = (uint32_t)strlen(parent_name);
  head.target_path_len = (uint32_t)strlen(ref->path);
  head.target = *ref;
  struct iovec iov[] = {
      {&head, REQUEST_HEAD_SENT},
      {head.target.path, head.target_path_len},
      {proc->name, head.name_len},
      {proc->identity, head.identity_len},
      {(void *)parent_name, head.parent_name_len},
      {proc->arg, proc->size},
  };
  /* The caller's bytes go as they are, a struct's padding too: no value crosses an exec. */
  MP__SCANNED(proc->arg, proc->size);
  int arena_fd = -1;
  head.has_arena = mp__heap_describe(&head.arena, &arena_fd);
  head.n_fds = (uint32_t)proc->n_passed;
  int rc = send_stream(sock, iov, (int)(sizeof iov / sizeof iov[0]),
                       child_watch(proc, from_forkserver));
  if (rc == 0 && head.has_arena)
    rc = mp__send_record(sock, &head.arena, sizeof head.arena, arena_fd);
  for (size_t i = 0; rc == 0 && i < proc->n_passed; i++) {
    int fd = passed_fd(proc, i);
    rc = fd < 0 ? fd : mp__send_record(sock, &proc->passed[i], sizeof proc->passed[i], fd);
  }
  if (rc == -EPIPE || rc == -ECONNRESET) /* it refused early: its ERROR says why */
    return mp__bootstrap_await(sock, proc, from_forkserver);
  return rc < 0 ? mp__error(rc, "sending the request to the child: %s", mp_strerror(rc)) : 0;
}

int mp__bootstrap_await(int sock, mp_process_t *proc, bool from_forkserver) {
  struct {
    mp__reply_t head;
    char text[1024];
  } rec;
  /* With nothing else to watch (a fork server's child), the read itself waits: no poll
   * before it, one system call fewer on the start's path. */
  int child = child_watch(proc, from_forkserver);
  int rc = child >= 0 ? wait_for_sock_or_child(sock, POLLIN, child) : 0;
  if (rc < 0 && rc != -EPIPE)
    return mp__error(rc, "waiting for the child: %s", mp_strerror(rc));
  int fd = -1;
  bool cut;
  /* A READY sent just before the child ended is already queued: read before judging. */
  ssize_t n =
      mp__recv_record_cut(sock, &rec, sizeof rec - 1, &fd, child >= 0 ? MSG_DONTWAIT : 0, &cut);
  if (n == -EAGAIN)
    n = 0; /* the child ended with nothing said */
  if (n < 0 && n != -ECONNRESET)
    return mp__error((int)n, "waiting for the child: %s", mp_strerror((int)n));
  /* A child that exits with our request unread resets the connection: also an end. */
  if (n <= 0)
    return from_forkserver
               ? mp__error(MP__ENOTAKEOVER, "the fork server's child ended before it took over")
               : mp__error(MP_ESPAWN, "the child exited before it took over: is the executable "
                                      "a libmp program?");
  if ((size_t)n < sizeof rec.head || ((fd >= 0 || cut) && rec.head.type != MP__REC_READY)) {
    if (fd >= 0)
      close(fd);
    return mp__error(MP_ESPAWN, "the child sent a malformed record");
  }
  switch (rec.head.type) {
  case MP__REC_READY:
    /* A pid of 0 or -1 would later make kill(pid) signal our group, or everyone. */
    if (rec.head.value <= 0) {
      if (fd >= 0)
        close(fd);
      return mp__error(MP_ESPAWN, "the child sent a malformed record: READY with pid %d",
                       (int)rec.head.value);
    }
    if (from_forkserver) {
      proc->pid = rec.head.value;
      /* -1 where there are no pidfds, or where the pidfd was cut off (no fd number was free
       * here as it came): then the child, which runs its target by now, is watched through
       * its socket and signalled by pid, as without pidfds, not disowned by a failed start. */
      proc->pidfd = fd;
    } else if (fd >= 0) {
      close(fd); /* a child passes no fd: one sent anyway is not kept */
    }
    return 0;
  case MP__REC_ERROR:
    /* Only a negative code is an error: 0 would pass for success, > 0 is no MP_E* code. */
    if (rec.head.value >= 0)
      return mp__error(MP_ESPAWN, "the child sent a malformed record: ERROR with code %d",
                       (int)rec.head.value);
    rec.text[n - (ssize_t)sizeof rec.head] = '\0';
    return mp__error(rec.head.value, "%s", rec.text);
  case MP__REC_STATUS:
    return mp__error(MP_ESPAWN, "the child ended (wait status %#x) before it took over",
                     (unsigned)rec.head.value);
  default:
    return mp__error(MP_ESPAWN, "the child sent an unknown record %u", rec.head.type);
  }
}

/* Builds environ plus MP__CHILD_ENV=value (replacing an inherited one) in one allocation. */
static char **child_environ(const char *value) {
  extern char **environ;
  size_t count = 0, prefix = strlen(MP__CHILD_ENV);
  while (environ && environ[count]) /* clearenv() leaves environ NULL */
    count++;
  size_t var_len = prefix + 1 + strlen(value) + 1;
  char **env = malloc((count + 2) * sizeof *env + var_len);
  if (!env)
    return NULL;
  char *var = (char *)(env + count + 2);
  snprintf(var, var_len, "%s=%s", MP__CHILD_ENV, value);
  size_t out = 0;
  env[out++] = var;
  for (size_t i = 0; i < count; i++)
    if (strncmp(environ[i], MP__CHILD_ENV, prefix) != 0 || environ[i][prefix] != '=')
      env[out++] = environ[i];
  env[out] = NULL;
  return env;
}

/* Moves fd above the numbers the child expects its fds at, so that no dup2() of the
 * child's file actions overwrites another, nor lands on itself (which keeps close-on-exec). */
static int move_above_targets(int fd, int *moved) {
  *moved = -1;
  if (fd != MP__BOOTSTRAP_FD && fd != MP__SENTINEL_FD)
    return fd;
  *moved = fcntl(fd, F_DUPFD_CLOEXEC, MP__SENTINEL_FD + 1);
  return *moved;
}

/* The linker's table of start-up roles (see MP__ROLE). */
extern const mp__role_t *const __start_mp__roles[], *const __stop_mp__roles[];

static const mp__role_t *find_role(const char *name) {
  for (const mp__role_t *const *r = __start_mp__roles; r < __stop_mp__roles; r++)
    if (strcmp((*r)->name, name) == 0)
      return *r;
  return NULL;
}

int mp__spawn_image(const char *role, int sock, int sentinel, pid_t *pid) {
  const mp__role_t *known = find_role(role);
  if (!known)
    return mp__error(MP_EINVAL, "no start-up role '%s' is linked into this program", role);
  /* A fresh image of a setuid, setgid or file-capability program is in secure-execution
   * mode too, where it ignores LIBMP_CHILD (see "start-up" below) and would run main(); so
   * is any image of a process whose effective ids are not its real ones (setresuid). */
  if (getauxval(AT_SECURE) || getuid() != geteuid() || getgid() != getegid())
    return mp__error(MP_ESPAWN,
                     "this process runs in secure-execution mode (setuid, setgid or file "
                     "capabilities), or with effective ids other than its real ones: a fresh "
                     "image of it takes no start-up request, so it cannot be a %s; the fork "
                     "start method works",
                     known->what);
  char exe[PATH_MAX];
  int rc = mp__executable(exe, sizeof exe);
  if (rc < 0)
    return rc;
  char value[64];
  snprintf(value, sizeof value, "%s %d %d", role, MP__BOOTSTRAP_FD,
           sentinel >= 0 ? MP__SENTINEL_FD : -1);
  char **env = child_environ(value);
  if (!env)
    return mp__error(MP_ENOMEM, "building the child's environment");
  int moved_sock, moved_sentinel = -1;
  bool has_sentinel = sentinel >= 0;
  sock = move_above_targets(sock, &moved_sock);
  if (has_sentinel)
    sentinel = move_above_targets(sentinel, &moved_sentinel);
  if (sock < 0 || (has_sentinel && sentinel < 0)) {
    rc = mp__syserror("moving the child's fds");
    goto out;
  }
  posix_spawn_file_actions_t actions;
  posix_spawnattr_t attr;
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawn_file_actions_init(&actions);
  posix_spawnattr_init(&attr);
  /* The child inherits stdin, stdout, stderr and its own fds, nothing else, and starts with
   * default signal handling whatever the parent blocked or ignored, as a new program. */
  posix_spawn_file_actions_adddup2(&actions, sock, MP__BOOTSTRAP_FD);
  if (has_sentinel)
    posix_spawn_file_actions_adddup2(&actions, sentinel, MP__SENTINEL_FD);
  posix_spawn_file_actions_addclosefrom_np(&actions, has_sentinel ? MP__SENTINEL_FD + 1
                                                                 : MP__BOOTSTRAP_FD + 1);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  char *argv[] = {program_invocation_name, NULL};
  rc = posix_spawn(pid, exe, &actions, &attr, argv, env);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (rc != 0)
    rc = mp__error(MP_ESPAWN, "posix_spawn of %s: %s", exe, mp_strerror(-rc));
out:
  free(env);
  if (moved_sock >= 0)
    close(moved_sock);
  if (moved_sentinel >= 0)
    close(moved_sentinel);
  return rc;
}

/* ---------------------------- the child's side ---------------------------- */

typedef struct {
  int sock;
  size_t pos, len;
  char buf[MP__RECORD_MAX];
} stream_reader_t;

/* A request received: one per process at a time, static (mp__request_read). */
#define REQUEST_SMALL 512

struct mp__request_s {
  request_head_t head;
  char *name, *identity, *parent_name;
  char *arg;
  mp__fn_t target;
  /* Where the strings and a small argument go when they fit, 16-byte aligned as malloc's:
   * a fork server's child then writes no page of malloc's. */
  size_t small_used;
  _Alignas(16) char small[REQUEST_SMALL];
};

static int read_exact(stream_reader_t *r, void *dst, size_t size) {
  char *out = dst;
  while (size > 0) {
    if (r->pos == r->len) {
      ssize_t n = mp__recv_record(r->sock, r->buf, sizeof r->buf, NULL, 0);
      if (n <= 0)
        return n < 0 ? (int)n : -EPIPE;
      r->pos = 0;
      r->len = (size_t)n;
    }
    size_t take = r->len - r->pos < size ? r->len - r->pos : size;
    memcpy(out, r->buf + r->pos, take);
    r->pos += take, out += take, size -= take;
  }
  return 0;
}

/* size bytes from the stream (and `extra` zero bytes after them) in a new buffer that grows
 * as they arrive: a request that claims more than it sends costs only what it sent. Its
 * capacity is either below size or size + extra, so that the zero bytes fit once the bytes
 * are in (a name of 2^k x 64 KiB had its NUL written one byte past an exact fit). */
static int read_alloc(stream_reader_t *r, mp__request_t *req, uint64_t size, size_t extra,
                      char **out) {
  *out = NULL;
  if (size > SIZE_MAX - extra)
    return mp__error(MP_ENOMEM, "the child cannot hold %llu request bytes",
                     (unsigned long long)size);
  size_t total = (size_t)size + extra, cap = size <= MP__RECORD_MAX ? total : MP__RECORD_MAX;
  size_t room = sizeof req->small - req->small_used;
  if (total <= room) { /* all of it, in the request's own space */
    char *buf = req->small + req->small_used;
    req->small_used += (total + 15) & ~(size_t)15; /* the space ends 16-aligned: no overflow */
    if (req->small_used > sizeof req->small)
      req->small_used = sizeof req->small;
    if (read_exact(r, buf, (size_t)size) < 0)
      return -EPIPE;
    for (size_t i = 0; i < extra; i++) /* not memset: its code page, in a fork server's child */
      buf[size + i] = '\0';
    *out = buf;
    return 0;
  }
  char *buf = malloc(cap ? cap : 1);
  for (size_t got = 0; buf && got < size;) {
    if (got == cap) {
      /* Here cap < size: doubled while that stays below size, else all of it at once. */
      size_t grown = size - cap <= cap ? total : 2 * cap;
      char *bigger = realloc(buf, grown);
      if (!bigger) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = bigger;
      cap = grown;
    }
    size_t take = (cap < size ? cap : (size_t)size) - got;
    int rc = read_exact(r, buf + got, take);
    if (rc < 0) {
      free(buf);
      return -EPIPE;
    }
    got += take;
  }
  if (!buf)
    return mp__error(MP_ENOMEM, "the child could not receive %llu request bytes",
                     (unsigned long long)size);
  for (size_t i = 0; i < extra; i++) /* not memset: its code page, in a fork server's child */
    buf[size + i] = '\0';
  *out = buf;
  return 0;
}

void mp__send_error(int sock, int code) {
  struct {
    mp__reply_t head;
    char text[1024];
  } rec = {.head = {MP__REC_ERROR, code}};
  size_t len = strlen(mp_last_error());
  if (len > sizeof rec.text)
    len = sizeof rec.text;
  memcpy(rec.text, mp_last_error(), len);
  mp__send_record(sock, &rec, sizeof rec.head + len, -1);
}

void mp__refuse_start(int sock, int code) {
  if (code != -EPIPE)
    mp__send_error(sock, code);
  char byte;
  shutdown(sock, SHUT_RD); /* what is still to come fails at its sender (EPIPE) */
  while (recv(sock, &byte, 1, MSG_DONTWAIT | MSG_TRUNC) > 0)
    ;
  close(sock);
}

void mp__request_refuse(int sock, int code) {
  mp__refuse_start(sock, code);
  _exit(1);
}

/* Whether p was allocated (read_alloc), not placed in the request's own space. */
static bool allocated(const mp__request_t *req, const char *p) {
  return p && (uintptr_t)p - (uintptr_t)req->small >= sizeof req->small;
}

static void free_unless_small(mp__request_t *req, char *p) {
  if (allocated(req, p))
    free(p);
}

void mp__request_free(mp__request_t *req) {
  if (!req)
    return;
  free_unless_small(req, req->name);
  free_unless_small(req, req->identity);
  free_unless_small(req, req->parent_name);
  free_unless_small(req, req->arg);
  req->name = req->identity = req->parent_name = req->arg = NULL;
}

/* The records after the request's stream: the arena, mapped at once, then the fds passed
 * to this child, taken in under their keys. */
static int receive_fds(int sock, const request_head_t *head) {
  int rc = 0;
  for (uint32_t i = 0; i < head->has_arena + head->n_fds; i++) {
    union {
      mp__heap_map_t arena;
      uint64_t key;
    } rec;
    int fd = -1;
    ssize_t n = mp__recv_record(sock, &rec, sizeof rec, &fd, 0);
    if (n <= 0 || fd < 0) {
      if (fd >= 0)
        close(fd);
      return -EPIPE;
    }
    if (rc < 0)
      close(fd); /* still read the rest, so that no fd is left in the socket */
    else if (i < head->has_arena)
      rc = n == (ssize_t)sizeof rec.arena
               ? mp__heap_attach(fd, &rec.arena)
               : (close(fd), mp__error(MP_ESPAWN, "the child refused a malformed arena record"));
    else
      rc = n == (ssize_t)sizeof rec.key
               ? mp__fd_adopt(rec.key, fd)
               : (close(fd), mp__error(MP_ESPAWN, "the parent sent a malformed fd record"));
  }
  return rc;
}

/* The most fds a request may announce: far more than a process is passed. */
#define REQUEST_MAX_FDS 65536

/* Refuses a head that no libmp parent sends: every length is checked before it is used. */
static int check_head(const request_head_t *head) {
  if (head->magic != MP__REQUEST_MAGIC || head->version != MP__REQUEST_VERSION)
    return mp__error(MP_ESPAWN, "the child speaks another libmp protocol version");
  const char *bad = head->parent_pid <= 0                                  ? "parent pid"
                    : head->flags & ~(uint32_t)MP__REQUEST_DIE_WITH_PARENT ? "flags"
                    : head->target_path_len >= sizeof head->target.path    ? "path length"
                    : head->target.build_id_len > MP__BUILD_ID_MAX         ? "build-id length"
                    : head->has_arena > 1                                  ? "arena flag"
                    : head->n_fds > REQUEST_MAX_FDS                        ? "fd count"
                                                                           : NULL;
  return bad ? mp__error(MP_ESPAWN, "the child refused a malformed request: its %s", bad) : 0;
}

/* Reads the whole request; the caller resolves its target. */
static int read_request(stream_reader_t *reader, mp__request_t *req) {
  request_head_t *head = &req->head;
  if (read_exact(reader, head, REQUEST_HEAD_SENT) < 0)
    return -EPIPE;
  int rc = check_head(head);
  if (rc < 0)
    return rc;
  if (read_exact(reader, head->target.path, head->target_path_len) < 0)
    return -EPIPE;
  head->target.path[head->target_path_len] = '\0';
  if (head->target_path_len && memchr(head->target.path, '\0', head->target_path_len))
    return mp__error(MP_ESPAWN, "the child refused a malformed request: a NUL in its path");
  if ((rc = read_alloc(reader, req, head->name_len, 1, &req->name)) < 0 ||
      (rc = read_alloc(reader, req, head->identity_len, 1, &req->identity)) < 0 ||
      (rc = read_alloc(reader, req, head->parent_name_len, 1, &req->parent_name)) < 0 ||
      (rc = read_alloc(reader, req, head->arg_size, 0, &req->arg)) < 0)
    return rc;
  return receive_fds(reader->sock, head);
}

/* The request received: one per process at a time. Static, not from malloc: a fork server's
 * child would write malloc's arena and heap pages, and free's errno. Not cleared: the
 * reader's 64 KiB buffer and the 4 KiB path would fault in every page; a request touches
 * the pages it fills. */
static struct {
  mp__request_t req;
  stream_reader_t reader; /* its head beside the request's end: one page for both */
} in;

int mp__request_read(int sock, mp__request_t **out) {
  *out = NULL;
  mp__request_t *req = &in.req;
  req->name = req->identity = req->parent_name = req->arg = NULL;
  req->small_used = 0;
  in.reader.sock = sock;
  in.reader.pos = in.reader.len = 0;
  int rc = read_request(&in.reader, req);
  if (rc == 0)
    rc = mp__fnref_resolve(&req->head.target, &req->target);
  if (rc < 0) {
    mp__request_free(req);
    return rc;
  }
  *out = req;
  return 0;
}

/* Writes one byte of p's page as it is: the page is then this process's own. One write
 * (an atomic add of 0), not a read then a write: on a page never touched, a read maps the
 * zero page first, and the write faults again. */
MP__CHILD_TEXT static void touch(void *p) {
  __atomic_fetch_add((char *)p, 0, __ATOMIC_RELAXED);
}

MP__CHILD_TEXT void mp__request_prepare(void) {
  /* The pages a small request writes: the head's (its start, and its end beside the small
   * space and the reader's head), the first of the reader's buffer (the kernel's copy of
   * each record). */
  touch(&in.req.head);
  touch(&in.req.small_used);
  touch(in.req.small + sizeof in.req.small - 1);
  touch(&in.reader);
  touch(in.reader.buf);
  /* read_exact's memcpy, as libc's call: its code page. The size is not a constant, so that
   * the compiler cannot make it a move of its own. */
  static volatile size_t one = 1;
  memcpy(in.reader.buf, in.req.small, one);
}

void mp__request_run(mp__request_t *req, int sock, bool exec_image, const mp__spare_t *spare,
                     int sentinel) {
  /* The spare's pidfd of the program is its parent's only if the request says so. */
  int parent_pidfd = spare ? spare->program_fd : -1;
  if (parent_pidfd >= 0 && (req->head.parent_pid != spare->program || parent_pidfd == 0)) {
    mp__raw_syscall(SYS_close, parent_pidfd, 0, 0, 0);
    parent_pidfd = -1;
  }
  /* A spare still dies with the server: the request may say that it must not. */
  if (spare && !(req->head.flags & MP__REQUEST_DIE_WITH_PARENT))
    mp__raw_syscall(SYS_prctl, PR_SET_PDEATHSIG, 0, 0, 0);
  mp__child_info_t info = {
      .name = req->name,
      .identity = req->identity,
      .parent_pid = req->head.parent_pid,
      .real_parent = spare ? spare->server : req->head.parent_pid,
      .parent_name = req->parent_name,
      .die_with_parent = req->head.flags & MP__REQUEST_DIE_WITH_PARENT,
      .sentinel = sentinel,
      .report_sock = exec_image ? -1 : sock,
      .name_owned = allocated(req, req->name),
      .parent_name_owned = allocated(req, req->parent_name),
      .parent_pidfd = parent_pidfd > 0 ? parent_pidfd : 0,
  };
  mp__child_init(&info);

  /* A spawned child's parent has its pidfd; a fork server's child sends its own (its
   * spare opened it), so that its parent, which is not its parent for the kernel, can
   * watch and signal it. The child sends READY itself, so that READY always comes before
   * its EXITED. One that cannot go (ETOOMANYREFS: the user has too many fds in flight for
   * the pidfd to go along) would leave the start waiting for an answer while the target
   * runs, for ever with one that never returns: the child refuses instead, target unrun. */
  int pidfd = spare ? spare->self_pidfd : -1;
  mp__reply_t ready = {MP__REC_READY, spare ? spare->self : getpid()};
  int rc = mp__send_record(sock, &ready, sizeof ready, pidfd);
  if (rc < 0) {
    const char *why = rc == -ETOOMANYREFS ? " (this user's processes hold more fds in flight "
                                            "on Unix sockets than the child's RLIMIT_NOFILE)"
                                          : "";
    mp__request_refuse(
        sock, mp__error(rc, "the child could not send READY: %s%s", mp_strerror(rc), why));
  }
  if (pidfd >= 0)
    mp__raw_syscall(SYS_close, pidfd, 0, 0, 0); /* not libc's: a page less for the child */
  for (int i = 0; spare && i < 2; i++) /* before the target: no program of ours holds them */
    mp__raw_syscall(SYS_close, spare->server_fds[i], 0, 0, 0);
  if (exec_image)
    close(sock);

  int code = ((mp_target_t)req->target)(req->arg, (size_t)req->head.arg_size);
  mp__child_exit(code, exec_image);
}

/* A spawned child: take the request from the parent and run it, never returning. */
MP__ROLE(spawned, "spawn", "spawned child", true) {
  int sock = fd, sentinel = sentinel_fd;
  mp__request_t *req;
  int rc = mp__request_read(sock, &req);
  if (rc < 0)
    mp__request_refuse(sock, rc);
  mp__request_run(req, sock, true, NULL, sentinel);
}

/* ------------------------------ start-up ------------------------------ */

/*
 * What starts a libmp child is input from whoever ran this image: its environment and fd 3.
 * A setuid, setgid or file-capability program may link libmp, and its environment is its
 * caller's, so a process in secure-execution mode (AT_SECURE) takes no role at all: the
 * variable is removed and main() runs as usual. Any other process takes its role only from
 * its parent: fd 3 must be a Unix socket whose peer (SO_PEERCRED, fixed when the parent
 * made the socket pair) is the parent, with our uid and gid. An image that was told to be a
 * child and cannot be one runs neither main() nor any target: one line, exit 127.
 */
static struct {
  const mp__role_t *role; /* NULL: none */
  int fd, sentinel;
} startup = {NULL, -1, -1};

static MP__NORETURN MP__PRINTF(1, 2) void refuse_startup(const char *fmt, ...) {
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  dprintf(STDERR_FILENO, "libmp: not starting as a child (%s=...): %s\n", MP__CHILD_ENV, line);
  _exit(127);
}

void mp__peer_ids(uid_t *uid, gid_t *gid) {
  *uid = getuid() == geteuid() ? getuid() : (uid_t)-1;
  *gid = getgid() == getegid() ? getgid() : (gid_t)-1;
}

int mp__check_peer(int sock, pid_t pid, const char *what) {
  uid_t uid;
  gid_t gid;
  mp__peer_ids(&uid, &gid);
  return mp__check_peer_as(sock, pid, uid, gid, what);
}

int mp__check_peer_as(int sock, pid_t pid, uid_t uid, gid_t gid, const char *what) {
  int domain = 0, type = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
    return mp__syserror("%s: fd %d is not a socket", what, sock);
  len = sizeof type;
  if (domain != AF_UNIX || getsockopt(sock, SOL_SOCKET, SO_TYPE, &type, &len) < 0 ||
      type != SOCK_SEQPACKET)
    return mp__error(-EPERM, "%s: fd %d is not a Unix SOCK_SEQPACKET socket", what, sock);
  struct ucred cred;
  len = sizeof cred;
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
    return mp__syserror("%s: the credentials of fd %d's peer", what, sock);
  if (pid && cred.pid != pid)
    return mp__error(-EPERM, "%s: fd %d's peer is process %d, not %d", what, sock,
                     (int)cred.pid, (int)pid);
  if (uid == (uid_t)-1 || cred.uid != uid || gid == (gid_t)-1 || cred.gid != gid)
    return mp__error(-EPERM, "%s: fd %d's peer runs as uid %u gid %u, not as this process",
                     what, sock, (unsigned)cred.uid, (unsigned)cred.gid);
  return 0;
}

/*
 * The one order of a libmp image's start-up, whatever its role:
 *  1. read_startup (priority 101, the first): LIBMP_CHILD is read, checked and removed,
 *     then the trace is set up for the role (trace.c has no constructor of its own);
 *  2. libmp's registrations (priority 102: process.c's exit and fork handlers, the kinds
 *     of connection.c and queues.c, the fork hooks of forkserver.c and shared_memory.c);
 *  3. take_over (no priority: after every prioritized one, before main): the role's main,
 *     or with no role the take-overs (MP__TAKE_OVER), which return unless they take it.
 */
__attribute__((constructor(101))) static void read_startup(void) {
  const char *value = getenv(MP__CHILD_ENV);
  if (value) {
    char role[16];
    int fd = -1, sentinel = -1, end = 0;
    int parsed = sscanf(value, "%15s %d %d%n", role, &fd, &sentinel, &end);
    bool well_formed = parsed == 3 && value[end] == '\0';
    unsetenv(MP__CHILD_ENV); /* so it reaches neither our children nor a program we exec */
    if (!getauxval(AT_SECURE)) { /* else the caller's environment, not our parent's */
      const mp__role_t *known = well_formed ? find_role(role) : NULL;
      if (!well_formed || fd != MP__BOOTSTRAP_FD ||
          (sentinel != -1 && (sentinel != MP__SENTINEL_FD || !known || !known->takes_sentinel)))
        refuse_startup("malformed value");
      if (!known)
        refuse_startup("unknown role '%s'", role);
      if (mp__check_peer(fd, getppid(), "the start-up socket") < 0)
        refuse_startup("%s", mp_last_error());
      startup.role = known;
      startup.fd = fd;
      startup.sentinel = sentinel;
      if (sentinel >= 0) /* ours: no program this child execs may hold it */
        fcntl(sentinel, F_SETFD, FD_CLOEXEC);
    }
  }
  mp__trace_startup(startup.role ? startup.role->name : NULL);
}

/* The take-overs linked in (MP__TAKE_OVER): weak, as a build may have none. */
extern const mp__take_over_t __start_mp__take_overs[] __attribute__((weak)),
    __stop_mp__take_overs[] __attribute__((weak));

__attribute__((constructor)) static void take_over(void) {
  if (!startup.role) {
    for (const mp__take_over_t *t = __start_mp__take_overs; t < __stop_mp__take_overs; t++)
      (*t)();
    return;
  }
  startup.role->main(startup.fd, startup.sentinel);
  _exit(127); /* a role's main does not return */
}
