/*
 * What a libmp image does with what it starts with (spawn.c's start-up, the fork server's
 * and the tracker's): the LIBMP_CHILD variable, fd 3 and the request read from it.
 *
 * The suite runs images of itself with a crafted environment and fd 3, as an attacker would,
 * and as their parent speaks the request's wire format (internal.h): it links the static
 * library for that, and so that a setuid copy of it loads nothing from the build tree (the
 * dynamic loader ignores $ORIGIN in a secure-execution process). Run as `test_startup peer`,
 * its main() prints what it sees and exits: a line on stdout means main() ran.
 */
#include "../lib/internal.h"
#include "mp_test.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

/* The unprivileged user the secure-execution tests run as, and the owner of the setuid
 * copy: any two uids other than ours would do. */
#define NOBODY 65534
#define COPY_OWNER 2

static char self_exe[4096];

typedef struct {
  int status; /* wait status, or -1 if it did not end in time (then killed) */
  char out[4096], err[4096];
} image_result_t;

/* Reads fd until end of file or the deadline into buf (NUL-terminated). */
static void drain(int fd, char *buf, size_t cap, double deadline) {
  size_t used = 0;
  for (;;) {
    int left_ms = (int)((deadline - mp_test_now()) * 1000);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (left_ms <= 0 || poll(&p, 1, left_ms) <= 0)
      break;
    ssize_t n = read(fd, buf + used, cap - 1 - used);
    if (n <= 0)
      break;
    used += (size_t)n;
    if (used == cap - 1)
      break;
  }
  buf[used] = '\0';
}

/* How an image is run. */
typedef struct {
  const char *exe;  /* default: this test binary */
  const char *env;  /* LIBMP_CHILD's value, or NULL */
  int fd3;          /* what the image finds at fd 3, or -1 for nothing */
  bool via_middle;  /* its parent is a process in between, not the test */
  uid_t as_uid;     /* 0: ours; else run as this uid and gid */
  const char *mode; /* argv[1]: "peer" (NULL) or "starter" */
} image_spec_t;

static MP__NORETURN void exec_image(const image_spec_t *spec, int out, int err) {
  dup2(out, 1);
  dup2(err, 2);
  if (spec->fd3 >= 0) {
    if (spec->fd3 != 3)
      dup2(spec->fd3, 3);
    fcntl(3, F_SETFD, 0);
  } else {
    close(3);
  }
  if (spec->env)
    setenv(MP__CHILD_ENV, spec->env, 1);
  if (spec->as_uid &&
      (setgroups(0, NULL) < 0 || setresgid(spec->as_uid, spec->as_uid, spec->as_uid) < 0 ||
       setresuid(spec->as_uid, spec->as_uid, spec->as_uid) < 0))
    _exit(120);
  const char *exe = spec->exe ? spec->exe : self_exe;
  execl(exe, exe, spec->mode ? spec->mode : "peer", (char *)NULL);
  _exit(121);
}

/* Runs an image as spec says and collects its output and status within timeout s. */
static void run_image(const image_spec_t *spec, double timeout, image_result_t *r) {
  int out[2], err[2];
  T_ASSERT(pipe2(out, O_CLOEXEC) == 0 && pipe2(err, O_CLOEXEC) == 0, "pipe: %s",
           strerror(errno));
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    if (!spec->via_middle)
      exec_image(spec, out[1], err[1]);
    pid_t inner = fork();
    if (inner == 0)
      exec_image(spec, out[1], err[1]);
    int status = 0;
    while (inner > 0 && waitpid(inner, &status, 0) < 0 && errno == EINTR)
      ;
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  mp_test_track_pid(pid);
  close(out[1]);
  close(err[1]);
  double deadline = mp_test_now() + timeout * mp_test_slowdown();
  drain(out[0], r->out, sizeof r->out, deadline);
  drain(err[0], r->err, sizeof r->err, deadline);
  close(out[0]);
  close(err[0]);
  r->status = -1;
  while (mp_test_now() < deadline) {
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      r->status = status;
      break;
    }
    mp_test_sleep(0.01);
  }
  if (r->status == -1) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
}

static int count_lines(const char *text) {
  int n = 0;
  for (; *text; text++)
    n += *text == '\n';
  return n;
}

/* The image refused to start: exit 127, one line on stderr, main() did not run. */
static void assert_refused(const image_result_t *r, const char *what) {
  T_ASSERT(r->status != -1, "%s: the image did not exit", what);
  T_ASSERT(WIFEXITED(r->status) && WEXITSTATUS(r->status) == 127,
           "%s: wait status %#x, expected exit 127 (stderr: %s)", what, (unsigned)r->status,
           r->err);
  T_STR_EQ(r->out, "");
  T_INT_EQ(count_lines(r->err), 1);
  T_ASSERT(strncmp(r->err, "libmp: ", 7) == 0, "%s: stderr '%s'", what, r->err);
}

START_TEST(test_fd3_pipe_refused) {
  int p[2];
  T_ASSERT(pipe2(p, O_CLOEXEC) == 0, "pipe");
  image_result_t r;
  run_image(&(image_spec_t){.env = "spawn 3 -1", .fd3 = p[0]}, 10, &r);
  close(p[0]);
  close(p[1]);
  assert_refused(&r, "fd 3 a pipe");
}
END_TEST

START_TEST(test_fd3_stream_socket_refused) {
  int sv[2];
  T_ASSERT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  image_result_t r;
  run_image(&(image_spec_t){.env = "spawn 3 -1", .fd3 = sv[1]}, 10, &r);
  close(sv[0]);
  close(sv[1]);
  assert_refused(&r, "fd 3 a stream socket");
}
END_TEST

/* fd 3 is a libmp-like socket, but made by another process than the image's parent. */
START_TEST(test_fd3_peer_not_parent_refused) {
  static const char *const roles[] = {"spawn 3 -1", "forkserver 3 -1", "shm-tracker 3 -1"};
  for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++) {
    int sv[2];
    T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    image_result_t r;
    run_image(&(image_spec_t){.env = roles[i], .fd3 = sv[1], .via_middle = true}, 10, &r);
    close(sv[0]);
    close(sv[1]);
    assert_refused(&r, roles[i]);
    T_ASSERT(strstr(r.err, "peer is process") != NULL, "%s: stderr '%s'", roles[i], r.err);
  }
}
END_TEST

START_TEST(test_malformed_variable_refused) {
  static const char *const values[] = {"spawn",      "spawn 3",        "spawn 3 -1 x",
                                       "spawn 5 -1", "forkserver 3 4", "nothing 3 -1"};
  for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
    int sv[2];
    T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    image_result_t r;
    run_image(&(image_spec_t){.env = values[i], .fd3 = sv[1]}, 10, &r);
    close(sv[0]);
    close(sv[1]);
    assert_refused(&r, values[i]);
  }
}
END_TEST

/* A fork server whose control descriptor is not open exits at once: it used to fork spares
 * that died at once, about 700 processes in 3 s, until its parent died. */
START_TEST(test_forkserver_without_ctl_exits) {
  image_result_t r;
  double start = mp_test_now();
  run_image(&(image_spec_t){.env = "forkserver 3 -1", .fd3 = -1}, 10, &r);
  assert_refused(&r, "fork server without fd 3");
  T_ASSERT(mp_test_now() - start < 5 * mp_test_slowdown(), "took %.1f s",
           mp_test_now() - start);
}
END_TEST

/* A socket pair made by another process than this one, both ends received here. */
static void foreign_socketpair(int sv[2]) {
  int carrier[2];
  T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, carrier) == 0, "socketpair");
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork");
  if (pid == 0) {
    int made[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET, 0, made) < 0 ||
        mp__send_record(carrier[1], "a", 1, made[0]) < 0 ||
        mp__send_record(carrier[1], "b", 1, made[1]) < 0)
      _exit(1);
    _exit(0);
  }
  char c;
  sv[0] = sv[1] = -1;
  ssize_t n0 = mp__recv_record(carrier[0], &c, 1, &sv[0], 0);
  ssize_t n1 = mp__recv_record(carrier[0], &c, 1, &sv[1], 0);
  waitpid(pid, NULL, 0);
  close(carrier[0]);
  close(carrier[1]);
  T_ASSERT(n0 == 1 && n1 == 1 && sv[0] >= 0 && sv[1] >= 0, "no socket pair from the helper");
}

/* A fork server's spare takes a request only on a socket made by the program that started
 * the server: given another, it says so and exits, having read nothing from it. */
START_TEST(test_forkserver_foreign_request_refused) {
  int ctl[2], err[2], foreign[2];
  T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ctl) == 0, "socketpair");
  T_ASSERT(pipe2(err, O_CLOEXEC) == 0, "pipe");
  foreign_socketpair(foreign);
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork");
  if (pid == 0) {
    dup2(err[1], 2);
    dup2(ctl[1], 3);
    setenv(MP__CHILD_ENV, "forkserver 3 -1", 1);
    execl(self_exe, self_exe, "peer", (char *)NULL);
    _exit(121);
  }
  mp_test_track_pid(pid);
  close(ctl[1]);
  close(err[1]);
  T_ASSERT(mp__send_record(ctl[0], "F", 1, foreign[1]) == 0, "sending the request");
  close(foreign[1]);
  /* The spare that took it exits: its end (the only other copy) closes. */
  struct pollfd p = {.fd = foreign[0], .events = POLLIN};
  int ready = poll(&p, 1, (int)(10000 * mp_test_slowdown()));
  char line[512];
  drain(err[0], line, sizeof line, mp_test_now() + 0.5 * mp_test_slowdown());
  close(ctl[0]); /* the server ends */
  int status = 0;
  waitpid(pid, &status, 0);
  close(err[0]);
  close(foreign[0]);
  T_ASSERT(ready == 1 && (p.revents & POLLHUP), "the spare kept the foreign socket");
  T_ASSERT(strstr(line, "libmp: the fork server refused a request") != NULL, "stderr: '%s'",
           line);
  T_INT_EQ(count_lines(line), 1);
  T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server wait status %#x",
           (unsigned)status);
}
END_TEST

/* ----------------------- requests from the real parent ----------------------- */

static int return7(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 7;
}

static int some_data[64] = {1};

/* Spawns this binary as a libmp "spawn" child of ours (we are its parent and made its
 * socket), sends head (and path, and n_arg bytes of argument) and reads its answer. */
typedef struct {
  uint32_t type;
  int32_t value;
  char text[1100];
  int status;
} answer_t;

/* Sends a request and reads the answer; with arena_fd >= 0 (and has_arena in the head), the
 * arena's record follows the stream, with that fd. */
static void send_request_fd(const mp__request_head_t *head, const char *path, size_t n_arg,
                            int arena_fd, answer_t *a) {
  int sv[2];
  T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork");
  if (pid == 0) {
    dup2(sv[1], 3);
    setenv(MP__CHILD_ENV, "spawn 3 -1", 1);
    execl(self_exe, self_exe, "peer", (char *)NULL);
    _exit(121);
  }
  mp_test_track_pid(pid);
  close(sv[1]);
  /* Records as the parent sends them: the head, the path, the strings, the argument. */
  static char stream[MP__RECORD_MAX];
  size_t len = MP__REQUEST_HEAD_SENT;
  memcpy(stream, head, len);
  /* The path's bytes as the head counts them (a NUL included), if it can have that many. */
  size_t path_len = head->target_path_len < 64 ? head->target_path_len : strlen(path);
  memcpy(stream + len, path, path_len);
  len += path_len;
  memset(stream + len, 'x', 8 + n_arg); /* name "xx", identity "xx", parent "xx", arg */
  len += 6 + n_arg;
  send(sv[0], stream, len, MSG_NOSIGNAL);
  if (arena_fd >= 0)
    mp__send_record(sv[0], &head->arena, sizeof head->arena, arena_fd);
  shutdown(sv[0], SHUT_WR); /* all there is: a child that wants more reads end of file */
  memset(a, 0, sizeof *a);
  struct pollfd p = {.fd = sv[0], .events = POLLIN};
  if (poll(&p, 1, (int)(10000 * mp_test_slowdown())) > 0) {
    char buf[sizeof(mp__reply_t) + 1100];
    ssize_t n = recv(sv[0], buf, sizeof buf - 1, 0);
    if (n >= (ssize_t)sizeof(mp__reply_t)) {
      mp__reply_t rec;
      memcpy(&rec, buf, sizeof rec);
      a->type = rec.type;
      a->value = rec.value;
      memcpy(a->text, buf + sizeof rec, (size_t)n - sizeof rec);
    }
  }
  close(sv[0]);
  a->status = -1;
  for (double deadline = mp_test_now() + 10 * mp_test_slowdown(); mp_test_now() < deadline;
       mp_test_sleep(0.01))
    if (waitpid(pid, &a->status, WNOHANG) == pid)
      break;
}

/* What mp__bootstrap_await makes of one crafted start-up reply (from the fork server, or
 * from a spawned child): its code, and the pid it took. */
static int await_reply_of(uint32_t type, int32_t value, bool from_forkserver, pid_t *pid) {
  int sv[2];
  T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  struct {
    mp__reply_t head;
    char text[8];
  } rec = {{type, value}, "forged"};
  T_ASSERT(send(sv[1], &rec, sizeof rec, MSG_NOSIGNAL) == (ssize_t)sizeof rec, "send");
  close(sv[1]);
  mp_process_t proc;
  memset(&proc, 0, sizeof proc);
  proc.pidfd = proc.status_fd = -1;
  int rc = mp__bootstrap_await(sv[0], &proc, from_forkserver);
  close(sv[0]);
  *pid = proc.pid;
  return rc;
}

START_TEST(test_forged_replies_refused) {
  static const struct {
    uint32_t type;
    int32_t value;
  } forged[] = {{MP__REC_ERROR, 0}, {MP__REC_ERROR, 5}, {MP__REC_READY, -1}, {MP__REC_READY, 0}};
  for (size_t i = 0; i < sizeof forged / sizeof *forged; i++)
    for (int server = 0; server < 2; server++) {
      pid_t pid = 12345;
      int rc = await_reply_of(forged[i].type, forged[i].value, server, &pid);
      T_ASSERT(rc == MP_ESPAWN, "record %u value %d: got %d", forged[i].type, forged[i].value,
               rc);
      T_ASSERT(strstr(mp_last_error(), "malformed record") != NULL, "message '%s'",
               mp_last_error());
      T_ASSERT(pid == 0, "record %u value %d: took pid %d", forged[i].type, forged[i].value,
               (int)pid);
    }
  /* The genuine ones still pass. */
  pid_t pid = 0;
  T_ASSERT(await_reply_of(MP__REC_ERROR, MP_ERESOLVE, true, &pid) == MP_ERESOLVE, "ERROR code");
  T_ASSERT(strcmp(mp_last_error(), "forged") == 0, "message '%s'", mp_last_error());
  MP_ASSERT_OK(await_reply_of(MP__REC_READY, 4242, true, &pid));
  T_ASSERT(pid == 4242, "pid %d", (int)pid);
}
END_TEST

static void send_request(const mp__request_head_t *head, const char *path, size_t n_arg,
                         answer_t *a) {
  send_request_fd(head, path, n_arg, -1, a);
}

/* A valid head for a target in this binary, no fds, names of 2 bytes. */
static void valid_head(mp__request_head_t *head, mp__fn_t target) {
  memset(head, 0, sizeof *head);
  head->magic = MP__REQUEST_MAGIC;
  head->version = MP__REQUEST_VERSION;
  head->parent_pid = getpid();
  head->name_len = head->identity_len = head->parent_name_len = 2;
  MP_ASSERT_OK(mp__fnref_from_pointer(target, &head->target));
  head->target_path_len = (uint32_t)strlen(head->target.path);
}

static void assert_refused_with(const answer_t *a, const char *expected) {
  T_ASSERT(a->type == MP__REC_ERROR, "expected '%s': record %u, wait status %#x", expected,
           a->type, (unsigned)a->status);
  T_ASSERT(strstr(a->text, expected) != NULL, "answer '%s', expected '%s'", a->text, expected);
  T_ASSERT(a->status != -1 && WIFEXITED(a->status) && WEXITSTATUS(a->status) == 1,
           "wait status %#x", (unsigned)a->status);
}

START_TEST(test_valid_request_runs) {
  mp__request_head_t head;
  valid_head(&head, (mp__fn_t)return7);
  answer_t a;
  send_request(&head, head.target.path, 0, &a);
  T_INT_EQ(a.type, MP__REC_READY);
  T_ASSERT(a.status != -1 && WIFEXITED(a.status) && WEXITSTATUS(a.status) == 7,
           "wait status %#x", (unsigned)a.status);
}
END_TEST

START_TEST(test_malformed_requests_refused) {
  mp__request_head_t head;
  answer_t a;

  valid_head(&head, (mp__fn_t)return7);
  head.target.build_id_len = 1000;
  send_request(&head, "", 0, &a);
  assert_refused_with(&a, "malformed request: its build-id length");

  valid_head(&head, (mp__fn_t)return7);
  head.target_path_len = 5000;
  send_request(&head, "", 0, &a);
  assert_refused_with(&a, "malformed request: its path length");

  valid_head(&head, (mp__fn_t)return7);
  head.n_fds = UINT32_MAX; /* with the arena's record, 0 records once wrapped */
  head.has_arena = 1;
  send_request(&head, "", 0, &a);
  assert_refused_with(&a, "malformed request: its fd count");

  valid_head(&head, (mp__fn_t)return7);
  head.target_path_len = 12;
  send_request(&head, "lib/evil.so\0", 0, &a);
  assert_refused_with(&a, "malformed request: a NUL in its path");

  valid_head(&head, (mp__fn_t)return7);
  head.target_path_len = 11;
  send_request(&head, "lib/evil.so", 0, &a);
  assert_refused_with(&a, "is not absolute");

  /* A file that is not an ELF object, and a cut one: refused before any load. */
  char junk[] = "/tmp/libmp-startup-junk-XXXXXX";
  int fd = mkstemp(junk);
  T_ASSERT(fd >= 0, "mkstemp: %s", strerror(errno));
  char elf_head[64]; /* this binary's ELF header, without its program headers */
  int self = open(self_exe, O_RDONLY | O_CLOEXEC);
  bool written = self >= 0 && read(self, elf_head, sizeof elf_head) == sizeof elf_head &&
                 write(fd, "not an object", 13) == 13;
  if (self >= 0)
    close(self);
  valid_head(&head, (mp__fn_t)return7);
  head.target_path_len = (uint32_t)strlen(junk);
  send_request(&head, junk, 0, &a);
  bool cut = written && ftruncate(fd, 0) == 0 &&
             pwrite(fd, elf_head, sizeof elf_head, 0) == sizeof elf_head;
  close(fd);
  answer_t cut_answer;
  if (cut)
    send_request(&head, junk, 0, &cut_answer);
  unlink(junk);
  T_ASSERT(cut, "writing %s: %s", junk, strerror(errno));
  assert_refused_with(&a, "is not an ELF object of this machine");
  assert_refused_with(&cut_answer, "its program headers cannot be read");

  /* The right object and build-id, but an offset into data: no jump there. */
  void *data = some_data;
  mp__fn_t not_code;
  memcpy(&not_code, &data, sizeof not_code);
  valid_head(&head, not_code);
  send_request(&head, head.target.path, 0, &a);
  assert_refused_with(&a, "lies in no executable segment");
}
END_TEST

/* A request that claims a huge argument and sends little costs the child only what came:
 * it used to allocate the claim first (1 TiB: MP_ENOMEM, or the memory if it was there). */
/* An arena the request describes is checked before and after it is mapped: a file of 0
 * bytes (SIGBUS on first use), a range outside user space, a file that is no arena. */
START_TEST(test_bad_arena_refused) {
  static const struct {
    uint64_t base, reserve, file;
    const char *expected;
  } cases[] = {
      {0x551000000000ull, 1ull << 30, 0, "file size does not fit"},
      {1ull << 47, 1ull << 30, 1 << 20, "outside user space"},
      {0x551000000000ull, 1ull << 50, 1 << 20, "reserve is out of range"},
      {0x551000000123ull, 1ull << 30, 1 << 20, "not page-aligned"},
      {0x551000000000ull, 1ull << 30, 1 << 20, "header is not one"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    mp__request_head_t head;
    valid_head(&head, (mp__fn_t)return7);
    head.has_arena = 1;
    head.arena.base = cases[i].base;
    head.arena.reserve = cases[i].reserve;
    int fd = memfd_create("not-an-arena", MFD_CLOEXEC);
    T_ASSERT(fd >= 0 && ftruncate(fd, (off_t)cases[i].file) == 0, "memfd");
    answer_t a;
    send_request_fd(&head, head.target.path, 0, fd, &a);
    close(fd);
    assert_refused_with(&a, cases[i].expected);
  }
}
END_TEST

START_TEST(test_argument_claim_not_allocated) {
  mp__request_head_t head;
  valid_head(&head, (mp__fn_t)return7);
  head.arg_size = 1ull << 40;
  answer_t a;
  send_request(&head, head.target.path, 100, &a);
  T_INT_EQ(a.type, 0); /* no answer: the parent hung up mid-request */
  T_ASSERT(a.status != -1 && WIFEXITED(a.status) && WEXITSTATUS(a.status) == 1,
           "wait status %#x", (unsigned)a.status);
}
END_TEST

/* --------------------------- secure execution --------------------------- */

/* A setuid copy of this binary (owned by COPY_OWNER), in a directory NOBODY can reach. */
static void make_setuid_copy(char *dir, char *path, size_t cap) {
  T_ASSERT(mkdtemp(dir) != NULL && chmod(dir, 0755) == 0, "mkdtemp: %s", strerror(errno));
  snprintf(path, cap, "%s/test_startup", dir);
  int in = open(self_exe, O_RDONLY | O_CLOEXEC);
  int out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
  char buf[65536];
  ssize_t n;
  bool ok = in >= 0 && out >= 0;
  while (ok && (n = read(in, buf, sizeof buf)) > 0)
    ok = write(out, buf, (size_t)n) == n;
  if (in >= 0)
    close(in);
  if (out >= 0)
    close(out);
  T_ASSERT(ok && chown(path, COPY_OWNER, COPY_OWNER) == 0 && chmod(path, 04755) == 0,
           "making %s setuid: %s", path, strerror(errno));
}

/* A setuid program linked with libmp, run by another user with LIBMP_CHILD set and a socket
 * at fd 3 (the reported attack): it takes no role, removes the variable, and main() runs. */
START_TEST(test_secure_execution_ignores_variable) {
  char dir[] = "/tmp/libmp-startup-XXXXXX", path[128];
  make_setuid_copy(dir, path, sizeof path);
  static const char *const roles[] = {"spawn 3 -1", "forkserver 3 -1", "shm-tracker 3 -1"};
  image_result_t r[3];
  for (size_t i = 0; i < 3; i++) {
    int sv[2];
    T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    run_image(&(image_spec_t){.exe = path, .env = roles[i], .fd3 = sv[1], .as_uid = NOBODY}, 10,
              &r[i]);
    close(sv[0]);
    close(sv[1]);
  }
  /* The same program starting children itself: refused, where its images would run main. */
  image_result_t starter;
  run_image(&(image_spec_t){.exe = path, .fd3 = -1, .as_uid = NOBODY, .mode = "starter"}, 20,
            &starter);
  unlink(path);
  rmdir(dir);
  T_STR_EQ(starter.out, "spawn: MP_ESPAWN\nforkserver: MP_ESPAWN\nshared memory: MP_ESPAWN\n");
  for (size_t i = 0; i < 3; i++) {
    T_ASSERT(r[i].status != -1 && WIFEXITED(r[i].status) && WEXITSTATUS(r[i].status) == 0,
             "%s: wait status %#x (stderr: %s)", roles[i], (unsigned)r[i].status, r[i].err);
    T_STR_EQ(r[i].out, "main ran: AT_SECURE=1 LIBMP_CHILD=(unset)\n");
    T_STR_EQ(r[i].err, "");
  }
}
END_TEST

/* Review stop 23 (rev-tracker2): a process whose effective uid is not its real one without
 * being in secure-execution mode (a root daemon that set its euid with setresuid, as here)
 * makes images that are in that mode (exec with real != effective uid): they ignore
 * LIBMP_CHILD and run main(), for each start and for the segment tracker (on 1d4b672: "main
 * ran" once per image, the tracker's 8 times). mp__spawn_image must refuse there too. */
START_TEST(test_other_euid_starts_no_image) {
  image_result_t starter;
  run_image(&(image_spec_t){.fd3 = -1, .mode = "euid-starter"}, 40, &starter);
  T_STR_EQ(starter.out, "spawn: MP_ESPAWN\nforkserver: MP_ESPAWN\nshared memory: MP_ESPAWN\n");
}
END_TEST

/* ------------------------------ the tracker ------------------------------ */

/* The tracker's address for this process's arena, as shared_memory.c makes it from the
 * nonce (with_nonce), or as it made it before a secret was in it, which anyone could
 * compute. */
static socklen_t tracker_address(struct sockaddr_un *addr, bool with_nonce) {
  uint64_t nonce = mp__shared_nonce(0);
  mp__heap_map_t map;
  int fd;
  struct stat st;
  T_ASSERT(nonce && mp__heap_describe(&map, &fd) && fstat(fd, &st) == 0, "no arena");
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  int n = snprintf(addr->sun_path + 1, sizeof addr->sun_path - 1,
                   "libmp-shm-tracker-%u-%llx-%llx-%llx", (unsigned)getuid(),
                   (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
                   (unsigned long long)map.base);
  if (with_nonce)
    n += snprintf(addr->sun_path + 1 + n, sizeof addr->sun_path - 1 - (size_t)n, "-%016llx",
                  (unsigned long long)nonce);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* Another user binds a tracker's name first and answers as a tracker would. With the real
 * name (which only a process of the program can know: the test reads the nonce, as another
 * user can in /proc/net/unix once a tracker has listened there) the client must see that it
 * is not its user's, send it no segment name, and move to a name of a new nonce, where the
 * create works; with the name anyone can compute from the arena alone, the client must not
 * even meet it. */
static void squat_tracker_name(bool with_nonce, bool full_backlog) {
  struct sockaddr_un addr;
  socklen_t len = tracker_address(&addr, with_nonce);
  uint64_t squatted = mp__shared_nonce(0);
  int report[2], stop[2];
  T_ASSERT(pipe(report) == 0 && pipe(stop) == 0, "pipe");
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork");
  if (pid == 0) {
    close(report[0]);
    close(stop[1]);
    if (setresgid(NOBODY, NOBODY, NOBODY) < 0 || setresuid(NOBODY, NOBODY, NOBODY) < 0)
      _exit(2);
    int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (l < 0 || bind(l, (struct sockaddr *)&addr, len) < 0 ||
        listen(l, full_backlog ? 0 : 8) < 0)
      _exit(3);
    /* A backlog of none, filled by a connection of its own that it never accepts: a
     * client's connect() then waits. */
    int own = full_backlog ? socket(AF_UNIX, SOCK_SEQPACKET, 0) : -1;
    if (full_backlog && connect(own, (struct sockaddr *)&addr, len) < 0)
      _exit(6);
    char ready = 'r';
    if (write(report[1], &ready, 1) != 1)
      _exit(4);
    /* Serve until told to stop, counting the bytes the clients send. */
    long got = 0;
    double deadline = mp_test_now() + 30;
    struct pollfd fds[16] = {{.fd = stop[0], .events = POLLIN},
                             {.fd = l, .events = full_backlog ? 0 : POLLIN}};
    nfds_t n = 2;
    while (mp_test_now() < deadline && !fds[0].revents) {
      if (poll(fds, n, 100) <= 0)
        continue;
      if ((fds[1].revents & POLLIN) && n < 16) {
        int c = accept(l, NULL, NULL);
        char ok = 'K';
        if (c >= 0 && send(c, &ok, 1, MSG_NOSIGNAL) == 1)
          fds[n++] = (struct pollfd){.fd = c, .events = POLLIN};
      }
      for (nfds_t i = 2; i < n; i++) {
        char buf[512];
        ssize_t r = fds[i].revents ? recv(fds[i].fd, buf, sizeof buf, MSG_DONTWAIT) : 0;
        if (r > 0)
          got += r;
      }
    }
    if (write(report[1], &got, sizeof got) != sizeof got)
      _exit(5);
    _exit(0);
  }
  mp_test_track_pid(pid);
  close(report[1]);
  close(stop[0]);
  char ready = 0;
  T_ASSERT(read(report[0], &ready, 1) == 1, "the squatter did not start");
  char name[64];
  snprintf(name, sizeof name, "libmp-startup-%d", (int)getpid());
  mp_shared_memory_t *shm = NULL;
  int rc = mp_shared_memory_create(&shm, name, 4096, 0);
  char detail[512];
  snprintf(detail, sizeof detail, "%s", mp_last_error());
  if (rc == 0) {
    mp_shared_memory_unlink(shm);
    mp_shared_memory_close(shm);
  }
  close(stop[1]); /* a record sent is in the squatter's socket by now */
  long got = -1;
  T_ASSERT(read(report[0], &got, sizeof got) == sizeof got, "no report from the squatter");
  close(report[0]);
  waitpid(pid, NULL, 0);
  T_INT_EQ(got, 0);
  T_ASSERT(rc == 0, "the create failed beside another user's listener: %d (%s)", rc, detail);
  if (with_nonce)
    T_ASSERT(mp__shared_nonce(0) != squatted, "the program still uses the squatted name");
}

START_TEST(test_tracker_of_another_user_refused) {
  squat_tracker_name(true, false);
}
END_TEST

/* The same listener with a full backlog: a create waited in connect() for as long as it
 * stayed (review, stop 23); it moves to a new name after CONNECT_TIMEOUT_SECONDS now. */
START_TEST(test_tracker_name_with_full_backlog_left) {
  squat_tracker_name(true, true);
}
END_TEST

/* The name is unguessable: before a secret was in it, this create failed with EPERM. */
START_TEST(test_tracker_name_not_guessable) {
  squat_tracker_name(false, false);
}
END_TEST

/* ------------------------- review rev-fs ------------------------- */

/* Under AddressSanitizer its redzones see the write, and glibc's malloc debug library may
 * not be preloaded (ASan's runtime must come first): the child runs with ASan alone. */
#if defined(__SANITIZE_ADDRESS__)
#define MALLOC_CHECKED_BY_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MALLOC_CHECKED_BY_ASAN 1
#endif
#endif
#ifndef MALLOC_CHECKED_BY_ASAN
#define MALLOC_CHECKED_BY_ASAN 0
#endif

/* Renames the current process: the received name is freed, and malloc's checks look at it. */
static int rename_and_return7(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return mp_process_set_name(mp_current_process(), "renamed") == 0 ? 7 : 9;
}

/* A request whose name is exactly 2 x MP__RECORD_MAX bytes, a name any program may give
 * (mp_process_set_name has no bound): read_alloc grew its buffer to exactly the name's
 * length and wrote the terminating NUL one byte past it. The child runs with glibc's
 * malloc checks (a guard byte right after each block), which see that write when the
 * target's rename frees the name. The loop tries 1, 2 and 4 records' worth: one record's
 * first buffer was an exact fit too, four's is past malloc's mmap threshold. */
START_TEST(test_request_name_of_two_records_in_bounds) {
  mp__request_head_t head;
  valid_head(&head, (mp__fn_t)rename_and_return7);
  const size_t name_len = (size_t)MP__RECORD_MAX << _i;
  head.name_len = (uint32_t)name_len;
  size_t len = MP__REQUEST_HEAD_SENT + head.target_path_len + name_len + 4;
  char *stream = malloc(len);
  T_ASSERT(stream != NULL, "malloc");
  size_t at = 0;
  memcpy(stream, &head, MP__REQUEST_HEAD_SENT);
  at += MP__REQUEST_HEAD_SENT;
  memcpy(stream + at, head.target.path, head.target_path_len);
  at += head.target_path_len;
  memset(stream + at, 'n', name_len + 4); /* the name, identity "nn", parent's name "nn" */
  int sv[2];
  T_ASSERT(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork");
  if (pid == 0) {
    dup2(sv[1], 3);
    setenv(MP__CHILD_ENV, "spawn 3 -1", 1);
    if (!MALLOC_CHECKED_BY_ASAN) {
      setenv("LD_PRELOAD", "libc_malloc_debug.so.0", 1);
      setenv("MALLOC_CHECK_", "3", 1);
    }
    execl(self_exe, self_exe, "peer", (char *)NULL);
    _exit(121);
  }
  mp_test_track_pid(pid);
  close(sv[1]);
  bool sent = true;
  for (size_t off = 0; sent && off < len; off += MP__RECORD_MAX) {
    size_t n = len - off < MP__RECORD_MAX ? len - off : MP__RECORD_MAX;
    sent = send(sv[0], stream + off, n, MSG_NOSIGNAL) == (ssize_t)n;
  }
  free(stream);
  mp__reply_t rec = {0, 0};
  struct pollfd p = {.fd = sv[0], .events = POLLIN};
  if (poll(&p, 1, (int)(10000 * mp_test_slowdown())) > 0 &&
      recv(sv[0], &rec, sizeof rec, 0) != (ssize_t)sizeof rec)
    rec.type = 0;
  close(sv[0]);
  int status = -1;
  for (double deadline = mp_test_now() + 10 * mp_test_slowdown(); mp_test_now() < deadline;
       mp_test_sleep(0.01))
    if (waitpid(pid, &status, WNOHANG) == pid)
      break;
  T_ASSERT(sent, "sending the request: %s", strerror(errno));
  T_ASSERT(rec.type == MP__REC_READY, "no READY: record %u", rec.type);
  T_ASSERT(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 7,
           "the child with a %zu-byte name: wait status %#x, expected exit 7 (a signal: "
           "malloc found its heap corrupted)",
           name_len, (unsigned)status);
}
END_TEST

static MP__NORETURN void peer_main(void) {
  const char *value = getenv(MP__CHILD_ENV);
  printf("main ran: AT_SECURE=%lu %s=%s\n", getauxval(AT_SECURE), MP__CHILD_ENV,
         value ? value : "(unset)");
  fflush(stdout);
  /* Not exit(): LeakSanitizer's check at exit cannot run in a setuid process (it cannot
   * read its options there, nor ptrace itself). */
  _exit(0);
}

/* A start under each method but fork, and a tracked segment, from this image: in a
 * secure-execution process each is refused, and no image of it runs main(). */
static MP__NORETURN void starter_main(void) {
  static const char *const methods[] = {"spawn", "forkserver"};
  for (size_t i = 0; i < 2; i++) {
    mp_context_t *ctx = NULL;
    mp_process_t *p = NULL;
    int rc = mp_get_context(methods[i], &ctx);
    if (rc == 0)
      rc = mp_process_create(&p, ctx, return7, NULL, 0, NULL);
    if (rc == 0)
      rc = mp_process_start(p);
    printf("%s: %s\n", methods[i], mp_err_name(rc));
    if (rc == 0)
      mp_process_join(p, MP_FOREVER);
  }
  mp_shared_memory_t *shm = NULL;
  char name[64];
  snprintf(name, sizeof name, "libmp-startup-secure-%d", (int)getpid());
  int rc = mp_shared_memory_create(&shm, name, 4096, 0);
  printf("shared memory: %s\n", mp_err_name(rc));
  if (rc == 0)
    mp_shared_memory_unlink(shm);
  fflush(stdout);
  _exit(0); /* as peer_main() */
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "peer") == 0)
    peer_main();
  if (argc > 1 && strcmp(argv[1], "starter") == 0)
    starter_main();
  /* An image that euid_starter's libmp ran instead of a role: it says so and ends. */
  if (getenv("MP_TEST_IMAGE_IS_PEER"))
    peer_main();
  if (argc > 1 && strcmp(argv[1], "euid-starter") == 0) {
    setenv("MP_TEST_IMAGE_IS_PEER", "1", 1);
    if (setresuid(0, NOBODY, 0) < 0)
      _exit(122);
    starter_main();
  }
  ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
  if (n <= 0)
    return 1;
  self_exe[n] = '\0';
  Suite *s = suite_create("startup");
  TCase *tc = tcase_create("child");
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_fd3_pipe_refused);
  tcase_add_test(tc, test_fd3_stream_socket_refused);
  tcase_add_test(tc, test_fd3_peer_not_parent_refused);
  tcase_add_test(tc, test_malformed_variable_refused);
  tcase_add_test(tc, test_forkserver_without_ctl_exits);
  tcase_add_test(tc, test_forkserver_foreign_request_refused);
  tcase_add_test(tc, test_valid_request_runs);
  tcase_add_test(tc, test_malformed_requests_refused);
  tcase_add_test(tc, test_argument_claim_not_allocated);
  tcase_add_test(tc, test_forged_replies_refused);
  tcase_add_test(tc, test_bad_arena_refused);
  suite_add_tcase(s, tc);
  TCase *rev = tcase_create("review rev-fs");
  tcase_set_timeout(rev, 60);
  tcase_add_loop_test(rev, test_request_name_of_two_records_in_bounds, 0, 3);
  suite_add_tcase(s, rev);
  /* Making a setuid copy owned by another user, and becoming another user, need root. */
  if (geteuid() == 0) {
    TCase *root = tcase_create("other users");
    tcase_set_timeout(root, 60);
    tcase_add_test(root, test_secure_execution_ignores_variable);
    tcase_add_test(root, test_other_euid_starts_no_image);
    tcase_add_test(root, test_tracker_of_another_user_refused);
    tcase_add_test(root, test_tracker_name_with_full_backlog_left);
    tcase_add_test(root, test_tracker_name_not_guessable);
    suite_add_tcase(s, root);
  } else {
    printf("startup: not run without root: the secure-execution and other-user tests\n");
  }
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
