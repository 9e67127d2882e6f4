/*
 * Check suite of the process layer: mp_process_t under each start method.
 *
 * Children report through their exit code: 0 (or the documented value) for success, a
 * distinct number for each check that failed in the child.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <sys/pidfd.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "mp_test.h"

#ifndef OTHER_BUILD_PATH
#error "OTHER_BUILD_PATH must name the other libmp program"
#endif
#ifndef MODULE_A_PATH
#error "MODULE_A_PATH must name variant A of the test module"
#endif
#ifndef MODULE_B_PATH
#error "MODULE_B_PATH must name variant B of the test module"
#endif

#define IS_FORK(i) (strcmp(METHODS[(i)], "fork") == 0)

/* ===================================================================================== */
/* Helpers usable in the test process and in children (no Check calls).                 */

/* Appends text to a file; async-signal-safe. */
static void append_text(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return;
  size_t len = strlen(text);
  if (write(fd, text, len) != (ssize_t)len) {
  }
  close(fd);
}

static void append_pid_line(const char *path, const char *tag, int pid) {
  char line[64];
  snprintf(line, sizeof line, "%s %d\n", tag, pid);
  append_text(path, line);
}

/* Reads at most cap-1 bytes of a file into buf, NUL-terminated; returns the length. */
static size_t read_text(const char *path, char *buf, size_t cap) {
  size_t len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    ssize_t n;
    while (len + 1 < cap && (n = read(fd, buf + len, cap - 1 - len)) > 0) len += (size_t)n;
    close(fd);
  }
  buf[len] = '\0';
  return len;
}

/* Whether the file holds a line equal to token. */
static bool file_has_line(const char *path, const char *token) {
  char buf[4096];
  read_text(path, buf, sizeof buf);
  size_t tl = strlen(token);
  for (const char *line = buf; *line;) {
    const char *end = strchr(line, '\n');
    size_t ll = end ? (size_t)(end - line) : strlen(line);
    if (ll == tl && strncmp(line, token, tl) == 0) return true;
    if (!end) break;
    line = end + 1;
  }
  return false;
}

/* Waits (polling) until the file holds the line token; false after timeout seconds. */
static bool wait_for_line(const char *path, const char *token, double timeout) {
  double end = mp_test_now() + timeout;
  for (;;) {
    if (file_has_line(path, token)) return true;
    if (mp_test_now() > end) return false;
    mp_test_sleep(0.005);
  }
}

/* The pid on the line "tag <pid>", or 0. */
static pid_t file_pid(const char *path, const char *tag) {
  char buf[4096];
  read_text(path, buf, sizeof buf);
  size_t tl = strlen(tag);
  for (const char *line = buf; *line;) {
    if (strncmp(line, tag, tl) == 0 && line[tl] == ' ') return (pid_t)atoi(line + tl + 1);
    const char *end = strchr(line, '\n');
    if (!end) break;
    line = end + 1;
  }
  return 0;
}

static uint64_t fnv1a(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

/* Whether a pidfd becomes readable (its process ended) within timeout seconds. */
static bool pidfd_dies_within(int pidfd, double timeout) {
  struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
  int r;
  do {
    r = poll(&pfd, 1, (int)(timeout * 1000));
  } while (r < 0 && errno == EINTR);
  return r == 1;
}

/* Reaps pid if it is a child of ours: 1 (status filled), 0 (not our child), -1 (not within
 * timeout seconds). */
static int reap_pid(pid_t pid, int *status, double timeout) {
  double end = mp_test_now() + timeout;
  for (;;) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r == pid) return 1;
    if (r < 0 && errno == ECHILD) return 0;
    if (mp_test_now() > end) return -1;
    mp_test_sleep(0.005);
  }
}

static void reap_leftover_zombies(void) {
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

static char *make_temp_file(void) {
  char *path = strdup("/tmp/libmp-test-XXXXXX");
  int fd = mkstemp(path);
  if (fd >= 0) close(fd);
  return path;
}

/* ===================================================================================== */
/* Targets.                                                                              */

static int t_return7(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 7;
}

static int t_exit3(void *arg, size_t size) {
  (void)arg;
  (void)size;
  exit(3);
}

static int t_abort(void *arg, size_t size) {
  (void)arg;
  (void)size;
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  abort();
}

static int t_raise_sigkill(void *arg, size_t size) {
  (void)arg;
  (void)size;
  raise(SIGKILL);
  return 99;
}

static int t_pause(void *arg, size_t size) {
  (void)arg;
  (void)size;
  for (;;) pause();
  return 98;
}

/* Sleeps the double in arg seconds, then returns 5. */
static int t_sleep_then_5(void *arg, size_t size) {
  double seconds;
  if (size != sizeof seconds) return 90;
  memcpy(&seconds, arg, sizeof seconds);
  mp_test_sleep(seconds);
  return 5;
}

/* Returns the int in arg. */
static int t_return_arg(void *arg, size_t size) {
  int v;
  if (size != sizeof v) return 255;
  memcpy(&v, arg, sizeof v);
  return v;
}

static int g_global = 0;

static int t_return_global(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return g_global;
}

#define BIG_SIZE ((size_t)16 << 20)

static int t_check_big(void *arg, size_t size) {
  if (size != BIG_SIZE) return 2;
  uint64_t want;
  memcpy(&want, arg, sizeof want);
  return fnv1a((const unsigned char *)arg + 8, size - 8) == want ? 0 : 1;
}

static int t_env(void *arg, size_t size) {
  (void)arg;
  (void)size;
  if (getenv("LIBMP_CHILD") != NULL) return 1;
  const char *marker = getenv("LIBMP_TEST_MARKER");
  if (marker == NULL || strcmp(marker, "kept") != 0) return 2;
  return 0;
}

/* The exit code counts the child's fds that are the pipe whose identity arg holds. */
static int t_inherited_fds(void *arg, size_t size) {
  (void)size;
  const struct stat *pipe_stat = arg;
  int found = 0;
  for (int fd = 0; fd < 256; fd++) {
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_dev == pipe_stat->st_dev && st.st_ino == pipe_stat->st_ino)
      found++;
  }
  return found;
}

static int t_no_environment(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return getenv("LIBMP_TEST_MARKER") == NULL && getenv("LIBMP_CHILD") == NULL ? 0 : 1;
}

struct ident_arg {
  int parent_pid;
  char name[64];
  int nested; /* also check the default names of the child's own children */
};

static int t_identity(void *arg, size_t size) {
  struct ident_arg a;
  if (size != sizeof a) return 9;
  memcpy(&a, arg, sizeof a);
  mp_process_t *me = mp_current_process();
  if (me == NULL) return 10;
  const char *name = mp_process_name(me);
  if (name == NULL || strcmp(name, a.name) != 0) return 11;
  if (mp_process_pid(me) != getpid()) return 12;
  mp_process_t *parent = mp_parent_process();
  if (parent == NULL) return 13;
  if (mp_process_pid(parent) != a.parent_pid) return 14;
  const char *pname = mp_process_name(parent);
  if (pname == NULL || strcmp(pname, "MainProcess") != 0) return 15;
  if (mp_process_is_alive(parent) != 1) return 16;
  int code;
  if (mp_process_exitcode(parent, &code) != MP_ENOTCHILD) return 17;
  if (mp_process_join(parent, 0) != MP_ETIMEDOUT) return 18;
  if (mp_process_close(parent) != MP_EINVAL) return 19;
  if (mp_process_join(me, 0) != MP_ENOTCHILD) return 20;
  if (mp_active_children(NULL, 0) != 0) return 21;
  if (a.nested) {
    for (int k = 1; k <= 2; k++) {
      mp_process_t *q = NULL;
      if (mp_process_create(&q, NULL, t_return7, NULL, 0, NULL) != 0) return 22;
      char want[96];
      snprintf(want, sizeof want, "%s:%d", a.name, k);
      const char *qn = mp_process_name(q);
      bool ok = qn != NULL && strcmp(qn, want) == 0;
      mp_process_close(q);
      if (!ok) return 22 + k;
    }
  }
  return 0;
}

/* ----- intermediate parents for the lifetime tests ----- */

struct life_arg {
  int method;
  char path[200];
  bool from_fork; /* test_forked_copy_joins_parent_ended_unreaped */
};

static char g_life_path[200];

static void life_on_term(int sig) {
  (void)sig;
  append_text(g_life_path, "DTERM\n");
  _exit(0);
}

/* Daemon grandchild: says it is ready, records a SIGTERM and exits. */
static int life_daemon(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a) return 40;
  memcpy(&a, arg, sizeof a);
  memcpy(g_life_path, a.path, sizeof g_life_path);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = life_on_term;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  append_text(a.path, "DREADY\n");
  for (;;) pause();
  return 41;
}

/* Non-daemon grandchild: finishes 0.3 s after the daemon is ready. */
static int life_nondaemon(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a) return 42;
  memcpy(&a, arg, sizeof a);
  if (!wait_for_line(a.path, "DREADY", 10.0)) return 43;
  mp_test_sleep(0.3);
  append_text(a.path, "NDONE\n");
  return 0;
}

/*
 * P's grandchild: started under P's method, with the daemon and die-with-parent flags
 * given, its pid written to P's file under tag. Returns 0 or a nonzero step number.
 */
static int start_grandchild(const struct life_arg *a, mp_target_t target, bool daemon,
                            bool die_with_parent, const char *tag) {
  mp_context_t *ctx = NULL;
  mp_process_t *g = NULL;
  if (mp_get_context(METHODS[a->method], &ctx) != 0) return 1;
  if (mp_process_create(&g, ctx, target, a, sizeof *a, tag) != 0) return 2;
  if (mp_process_set_daemon(g, daemon) != 0) return 3;
  if (mp_process_set_die_with_parent(g, die_with_parent) != 0) return 4;
  if (mp_process_start(g) != 0) return 5;
  append_pid_line(a->path, tag, mp_process_pid(g));
  return 0;
}

/* P: starts a daemon and a non-daemon child, then returns (a normal exit). Only the exit
 * handling may end the daemon, not P's death: it does not die with P. */
static int life_exit_parent(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a) return 20;
  memcpy(&a, arg, sizeof a);
  if (start_grandchild(&a, life_daemon, true, false, "D") != 0) return 21;
  if (start_grandchild(&a, life_nondaemon, false, true, "N") != 0) return 22;
  if (!wait_for_line(a.path, "DREADY", 10.0)) return 23;
  return 0;
}

/* P: starts a daemon and a non-daemon child that pause, then pauses. */
static int life_kill_parent(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a) return 20;
  memcpy(&a, arg, sizeof a);
  if (start_grandchild(&a, t_pause, true, true, "D") != 0) return 21;
  if (start_grandchild(&a, t_pause, false, true, "N") != 0) return 22;
  append_text(a.path, "READY\n");
  for (;;) pause();
  return 23;
}

/* P: starts a child that may outlive it, then pauses. */
static int life_orphan_parent(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a) return 20;
  memcpy(&a, arg, sizeof a);
  if (start_grandchild(&a, t_pause, false, false, "G") != 0) return 21;
  append_text(a.path, "READY\n");
  for (;;) pause();
  return 22;
}

/* The pid a pidfd refers to (its fdinfo's "Pid:" line), 0 if fd is no pidfd. */
static pid_t pid_of_pidfd(int fd) {
  char path[64], line[128];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  FILE *f = fopen(path, "re");
  pid_t pid = 0;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "Pid:", 4) == 0)
      pid = (pid_t)atoi(line + 4);
  if (f)
    fclose(f);
  return pid;
}

/* How many of this process's fds are pidfds. */
static int count_pidfds(void) {
  DIR *d = opendir("/proc/self/fd");
  int n = 0;
  for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
    char path[300], target[64];
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t len = readlink(path, target, sizeof target - 1);
    if (len > 0) {
      target[len] = '\0';
      n += strcmp(target, "anon_inode:[pidfd]") == 0;
    }
  }
  if (d)
    closedir(d);
  return n;
}

struct parent_pidfd_arg {
  pid_t parent;
  int method;
};

/* A child's view of its parent's pidfd: a fork or spawn child opens it when first asked,
 * a forkserver child has it from its spare; either refers to its parent, the test. */
static int t_parent_pidfd(void *arg, size_t size) {
  struct parent_pidfd_arg a;
  if (size != sizeof a) return 30;
  memcpy(&a, arg, sizeof a);
  bool pidfds = getenv("LIBMP_NO_PIDFD") == NULL;
  bool from_spare = strcmp(METHODS[a.method], "forkserver") == 0;
  if (count_pidfds() != (pidfds && from_spare ? 1 : 0)) return 31;
  mp_process_t *parent = mp_parent_process();
  if (parent == NULL || mp_process_pid(parent) != a.parent) return 32;
  int fd = mp_process_sentinel(parent);
  if (!pidfds)
    return fd == -EBADF && mp_process_is_alive(parent) == 1 ? 0 : 33;
  if (fd < 0 || pid_of_pidfd(fd) != a.parent) return 34;
  if (count_pidfds() != 1) return 35;
  if (mp_process_is_alive(parent) != 1) return 36;
  if (mp_process_join(parent, 0) != MP_ETIMEDOUT) return 37;
  if (mp_process_sentinel(parent) != fd) return 38; /* the same, however often asked */
  return 0;
}

/* G: waits until its parent P is dead and reaped (the test says so), and only then asks
 * about it: P's pid may be anyone's by then, so the answer must not come from it. */
static int t_parent_gone_first_look(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a) return 50;
  memcpy(&a, arg, sizeof a);
  mp_process_t *parent = mp_parent_process();
  if (parent == NULL) return 51;
  pid_t p = (pid_t)mp_process_pid(parent);
  if (p <= 0) return 52;
  append_text(a.path, "GREADY\n");
  if (!wait_for_line(a.path, "PDEAD", 10.0)) return 53;
  int fd = mp_process_sentinel(parent);
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  bool ok = mp_process_is_alive(parent) == 0 &&
            mp_process_join(parent, 5.0) == 0 &&
            (fd == -EBADF || (fd >= 0 && poll(&pfd, 1, 0) == 1));
  append_text(a.path, ok ? "GONE-OK\n" : "GONE-BAD\n");
  return 0;
}

/* P: starts G, which does not die with it, then pauses. */
static int life_gone_parent(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a) return 20;
  memcpy(&a, arg, sizeof a);
  if (start_grandchild(&a, t_parent_gone_first_look, false, false, "G") != 0) return 21;
  if (!wait_for_line(a.path, "GREADY", 10.0)) return 22;
  append_text(a.path, "READY\n");
  for (;;) pause();
  return 23;
}

/* ===================================================================================== */
/* Exit codes, join, terminate, kill.                                                      */

START_TEST(test_exit_codes) {
  mp_context_t *ctx = mp_test_ctx(_i);
  struct {
    mp_target_t target;
    int expected;
  } cases[] = {{t_return7, 7}, {t_exit3, 3}, {t_abort, -SIGABRT}, {t_raise_sigkill, -SIGKILL}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    mp_process_t *p;
    T_PROC_NEW(&p, ctx, cases[k].target, NULL, 0, NULL);
    MP_ASSERT_OK(mp_process_start(p));
    int code = mp_test_join_code(p, 10.0);
    T_ASSERT(code == cases[k].expected, "%s: case %zu exited with %d, expected %d",
             METHODS[_i], k, code, cases[k].expected);
    T_PROC_CLOSE(p);
  }
}
END_TEST

START_TEST(test_return_value_low_8_bits) {
  mp_context_t *ctx = mp_test_ctx(_i);
  int values[] = {0, 1, 255, 256 + 4};
  int expected[] = {0, 1, 255, 4};
  for (size_t k = 0; k < 4; k++) {
    mp_process_t *p;
    T_PROC_NEW(&p, ctx, t_return_arg, &values[k], sizeof values[k], NULL);
    MP_ASSERT_OK(mp_process_start(p));
    T_INT_EQ(mp_test_join_code(p, 10.0), expected[k]);
    T_PROC_CLOSE(p);
  }
}
END_TEST

START_TEST(test_join_timeout_terminate) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t_pause, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));

  double t0 = mp_test_now();
  MP_ASSERT_ERR(mp_process_join(p, 0.1), MP_ETIMEDOUT);
  double waited = mp_test_now() - t0;
  T_ASSERT(waited >= 0.099 && waited < 5.0, "join(0.1) took %.3f s", waited);

  t0 = mp_test_now();
  MP_ASSERT_ERR(mp_process_join(p, 0), MP_ETIMEDOUT);
  MP_ASSERT_ERR(mp_process_join(p, -1.0), MP_ETIMEDOUT);
  waited = mp_test_now() - t0;
  T_ASSERT(waited < 0.5, "join(0) and join(-1) took %.3f s", waited);
  T_INT_EQ(mp_process_is_alive(p), 1);

  MP_ASSERT_OK(mp_process_terminate(p));
  T_INT_EQ(mp_test_join_code(p, MP_FOREVER), -SIGTERM);
  T_INT_EQ(mp_process_is_alive(p), 0);
  T_PROC_CLOSE(p);
}
END_TEST

START_TEST(test_kill) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t_pause, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_ERR(mp_process_join(p, 0.05), MP_ETIMEDOUT);
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, MP_FOREVER), -SIGKILL);
  T_PROC_CLOSE(p);
}
END_TEST

START_TEST(test_signal_finished_child) {
  mp_context_t *ctx = mp_test_ctx(_i);
  /* Ended but not yet joined: left alone, the exit code stays the target's. */
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t_return7, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  int s = mp_process_sentinel(p);
  T_ASSERT(s >= 0, "sentinel %d", s);
  struct pollfd pfd = {.fd = s, .events = POLLIN};
  T_INT_EQ(poll(&pfd, 1, 10000), 1);
  MP_ASSERT_OK(mp_process_terminate(p));
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 10.0), 7);
  /* Joined: still fine. */
  MP_ASSERT_OK(mp_process_terminate(p));
  MP_ASSERT_OK(mp_process_kill(p));
  int code = 0;
  MP_ASSERT_OK(mp_process_exitcode(p, &code));
  T_INT_EQ(code, 7);
  /* Joining again is harmless. */
  MP_ASSERT_OK(mp_process_join(p, 0));
  T_PROC_CLOSE(p);
}
END_TEST

/* ===================================================================================== */
/* State: is_alive, exitcode, pid.                                                         */

START_TEST(test_state) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t_pause, NULL, 0, NULL);
  int code = 12345;
  T_INT_EQ(mp_process_is_alive(p), 0);
  MP_ASSERT_ERR(mp_process_pid(p), MP_ENOTSTARTED);
  MP_ASSERT_ERR(mp_process_exitcode(p, &code), MP_ENOTSTARTED);

  MP_ASSERT_OK(mp_process_start(p));
  int pid = mp_process_pid(p);
  T_ASSERT(pid > 0 && pid != getpid(), "pid %d after start", pid);
  T_INT_EQ(mp_process_is_alive(p), 1);
  MP_ASSERT_ERR(mp_process_exitcode(p, &code), MP_EALIVE);
  T_INT_EQ(code, 12345);
  T_INT_EQ(kill(pid, 0), 0); /* the pid is a live process */

  MP_ASSERT_OK(mp_process_terminate(p));
  /* Ended, not joined yet: not alive. */
  struct pollfd pfd = {.fd = mp_process_sentinel(p), .events = POLLIN};
  T_INT_EQ(poll(&pfd, 1, 10000), 1);
  T_INT_EQ(mp_process_is_alive(p), 0);
  MP_ASSERT_OK(mp_process_join(p, 10.0));
  T_INT_EQ(mp_process_is_alive(p), 0);
  MP_ASSERT_OK(mp_process_exitcode(p, &code));
  T_INT_EQ(code, -SIGTERM);
  T_INT_EQ(mp_process_pid(p), pid);
  T_PROC_CLOSE(p);
}
END_TEST

/* ===================================================================================== */
/* Names, current and parent process.                                                      */

START_TEST(test_names) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *a, *b, *c;
  /* A Check test runs in a fresh process that has created no process yet. */
  T_PROC_NEW(&a, ctx, t_return7, NULL, 0, NULL);
  T_PROC_NEW(&b, ctx, t_return7, NULL, 0, NULL);
  T_STR_EQ(mp_process_name(a), "Process-1");
  T_STR_EQ(mp_process_name(b), "Process-2");
  T_PROC_NEW(&c, ctx, t_return7, NULL, 0, "worker-a");
  T_STR_EQ(mp_process_name(c), "worker-a");
  MP_ASSERT_OK(mp_process_set_name(c, "renamed"));
  T_STR_EQ(mp_process_name(c), "renamed");
  MP_ASSERT_OK(mp_process_start(c));
  MP_ASSERT_OK(mp_process_set_name(c, "renamed-after-start"));
  T_STR_EQ(mp_process_name(c), "renamed-after-start");
  T_INT_EQ(mp_test_join_code(c, 10.0), 7);
  T_STR_EQ(mp_process_name(c), "renamed-after-start");
  T_ASSERT(mp_process_name(NULL) == NULL, "name of NULL");
  T_PROC_CLOSE(a);
  T_PROC_CLOSE(b);
  T_PROC_CLOSE(c);
}
END_TEST

/* A child renames itself and its parent (Python's current_process().name = ...), then
 * allocates: a spawned or fork-server child's names live beside its argument in its
 * request's static storage, which a rename must not hand to free() (it did: the next
 * allocations were placed over the argument). */
static int t_rename_current_and_parent(void *arg, size_t size) {
  char before[64];
  if (size == 0 || size > sizeof before)
    return 2;
  memcpy(before, arg, size);
  if (mp_process_set_name(mp_current_process(), "renamed-child") < 0 ||
      mp_process_set_name(mp_parent_process(), "renamed-parent") < 0)
    return 3;
  char *blocks[16];
  for (int i = 0; i < 16; i++)
    if ((blocks[i] = malloc(48)) != NULL)
      memset(blocks[i], 'x', 48);
  int rc = memcmp(arg, before, size) != 0 ||
           strcmp(mp_process_name(mp_current_process()), "renamed-child") != 0 ||
           strcmp(mp_process_name(mp_parent_process()), "renamed-parent") != 0;
  for (int i = 0; i < 16; i++)
    free(blocks[i]);
  return rc;
}

START_TEST(test_child_renames_itself) {
  mp_context_t *ctx = mp_test_ctx(_i);
  static const char payload[] = "the child's argument";
  mp_process_t *c;
  T_PROC_NEW(&c, ctx, t_rename_current_and_parent, payload, sizeof payload, "short");
  MP_ASSERT_OK(mp_process_start(c));
  T_INT_EQ(mp_test_join_code(c, 10.0), 0);
  T_PROC_CLOSE(c);
}
END_TEST

START_TEST(test_main_process) {
  mp_process_t *me = mp_current_process();
  T_ASSERT(me != NULL, "mp_current_process() is NULL");
  T_ASSERT(mp_current_process() == me, "mp_current_process() changes");
  T_STR_EQ(mp_process_name(me), "MainProcess");
  T_INT_EQ(mp_process_pid(me), getpid());
  T_INT_EQ(mp_process_is_alive(me), 1);
  T_ASSERT(mp_parent_process() == NULL, "the test process has a parent process");
}
END_TEST

START_TEST(test_child_identity) {
  mp_context_t *ctx = mp_test_ctx(_i);
  struct ident_arg ia;
  memset(&ia, 0, sizeof ia);
  ia.parent_pid = getpid();
  snprintf(ia.name, sizeof ia.name, "Process-1");
  ia.nested = 1;
  mp_process_t *child, *busy, *named;
  T_PROC_NEW(&child, ctx, t_identity, &ia, sizeof ia, NULL);
  T_STR_EQ(mp_process_name(child), "Process-1");
  /* A running sibling: the child must not count it among its own children. */
  T_PROC_NEW(&busy, ctx, t_pause, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(busy));
  MP_ASSERT_OK(mp_process_start(child));
  int code = mp_test_join_code(child, 10.0);
  T_ASSERT(code == 0, "%s: the child's identity check %d failed", METHODS[_i], code);

  /* A named child, renamed before start, sees its new name. */
  struct ident_arg ib = ia;
  snprintf(ib.name, sizeof ib.name, "renamed-child");
  ib.nested = 0;
  T_PROC_NEW(&named, ctx, t_identity, &ib, sizeof ib, "named-child");
  MP_ASSERT_OK(mp_process_set_name(named, "renamed-child"));
  MP_ASSERT_OK(mp_process_start(named));
  MP_ASSERT_OK(mp_process_set_name(named, "renamed-after-start"));
  code = mp_test_join_code(named, 10.0);
  T_ASSERT(code == 0, "%s: the named child's identity check %d failed", METHODS[_i], code);

  MP_ASSERT_OK(mp_process_kill(busy));
  MP_ASSERT_OK(mp_process_join(busy, 10.0));
  T_PROC_CLOSE(busy);
  T_PROC_CLOSE(child);
  T_PROC_CLOSE(named);
}
END_TEST

/* ===================================================================================== */
/* Sentinel and active children.                                                           */

START_TEST(test_sentinel) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *p;
  double delay = 0.3;
  T_PROC_NEW(&p, ctx, t_sleep_then_5, &delay, sizeof delay, NULL);
  MP_ASSERT_ERR(mp_process_sentinel(p), MP_ENOTSTARTED);
  MP_ASSERT_OK(mp_process_start(p));
  double t0 = mp_test_now();
  int s = mp_process_sentinel(p);
  T_ASSERT(s >= 0, "sentinel %d (%s)", s, mp_err_name(s));
  T_INT_EQ(mp_process_sentinel(p), s);
  struct pollfd pfd = {.fd = s, .events = POLLIN};
  T_INT_EQ(poll(&pfd, 1, 0), 0); /* still running: not readable */
  T_INT_EQ(poll(&pfd, 1, 10000), 1);
  T_ASSERT(pfd.revents & POLLIN, "revents 0x%x", pfd.revents);
  double waited = mp_test_now() - t0;
  T_ASSERT(waited > 0.15, "the sentinel became readable after %.3f s, before the child ended",
           waited);
  T_INT_EQ(mp_process_is_alive(p), 0);
  T_INT_EQ(mp_test_join_code(p, 10.0), 5);
  /* Joined: the sentinel stays the same open fd, readable, until the object is closed. */
  T_INT_EQ(mp_process_sentinel(p), s);
  T_INT_EQ(poll(&pfd, 1, 0), 1);
  T_ASSERT(!(pfd.revents & POLLNVAL), "the sentinel was closed by the join");
  T_PROC_CLOSE(p);
}
END_TEST

START_TEST(test_active_children) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *arr[8];
  T_INT_EQ(mp_active_children(NULL, 0), 0);
  T_INT_EQ(mp_active_children(arr, 8), 0);

  mp_process_t *a, *b, *c;
  T_PROC_NEW(&a, ctx, t_pause, NULL, 0, NULL);
  T_PROC_NEW(&b, ctx, t_return7, NULL, 0, NULL);
  T_PROC_NEW(&c, ctx, t_pause, NULL, 0, NULL);
  T_INT_EQ(mp_active_children(arr, 8), 0); /* created, not started */
  MP_ASSERT_OK(mp_process_start(a));
  MP_ASSERT_OK(mp_process_start(b));
  struct pollfd pfd = {.fd = mp_process_sentinel(b), .events = POLLIN};
  T_INT_EQ(poll(&pfd, 1, 10000), 1); /* b has ended */

  memset(arr, 0, sizeof arr);
  T_INT_EQ(mp_active_children(arr, 8), 1);
  T_ASSERT(arr[0] == a, "active_children lists %p, expected a=%p", (void *)arr[0], (void *)a);

  MP_ASSERT_OK(mp_process_start(c));
  T_INT_EQ(mp_active_children(NULL, 0), 2);
  memset(arr, 0, sizeof arr);
  T_INT_EQ(mp_active_children(arr, 1), 2);
  T_ASSERT(arr[0] == a || arr[0] == c, "active_children lists %p", (void *)arr[0]);
  T_ASSERT(arr[1] == NULL, "active_children wrote beyond its capacity");
  memset(arr, 0, sizeof arr);
  T_INT_EQ(mp_active_children(arr, 8), 2);
  T_ASSERT((arr[0] == a && arr[1] == c) || (arr[0] == c && arr[1] == a),
           "active_children lists %p %p", (void *)arr[0], (void *)arr[1]);

  MP_ASSERT_OK(mp_process_kill(a));
  MP_ASSERT_OK(mp_process_kill(c));
  MP_ASSERT_OK(mp_process_join(a, 10.0));
  MP_ASSERT_OK(mp_process_join(c, 10.0));
  T_INT_EQ(mp_active_children(arr, 8), 0);

  /* b was reaped by active_children; joining it still gives its exit code. */
  T_INT_EQ(mp_test_join_code(b, 10.0), 7);
  T_PROC_CLOSE(a);
  T_PROC_CLOSE(b);
  T_PROC_CLOSE(c);
  MP_ASSERT_ERR(mp_active_children(NULL, 3), MP_EINVAL);
}
END_TEST

/* Threads that join one process at once all see it end, with its exit code. */
struct joiner {
  mp_process_t *proc;
  int rc;
  int code;
};

static void *join_in_thread(void *arg) {
  struct joiner *j = arg;
  j->rc = mp_process_join(j->proc, 10.0);
  if (j->rc == 0)
    j->rc = mp_process_exitcode(j->proc, &j->code);
  return NULL;
}

START_TEST(test_concurrent_join) {
  double delay = 0.2;
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_sleep_then_5, &delay, sizeof delay, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  struct joiner joiners[4];
  pthread_t threads[4];
  for (int k = 0; k < 4; k++) {
    joiners[k] = (struct joiner){.proc = p, .rc = -1};
    T_INT_EQ(pthread_create(&threads[k], NULL, join_in_thread, &joiners[k]), 0);
  }
  for (int k = 0; k < 4; k++)
    pthread_join(threads[k], NULL);
  for (int k = 0; k < 4; k++) {
    MP_ASSERT_OK(joiners[k].rc);
    T_INT_EQ(joiners[k].code, 5);
  }
  T_PROC_CLOSE(p);
}
END_TEST

/* mp_active_children() in one thread while another starts, joins and closes processes. */
static void *churn_processes(void *arg) {
  mp_context_t *ctx = arg;
  for (int k = 0; k < 30; k++) {
    mp_process_t *p;
    if (mp_process_create(&p, ctx, t_return7, NULL, 0, NULL) < 0)
      return (void *)1;
    int rc = mp_process_start(p);
    if (rc == 0)
      rc = mp_process_join(p, 10.0);
    mp_process_close(p);
    if (rc < 0)
      return (void *)1;
  }
  return NULL;
}

START_TEST(test_active_children_while_closing) {
  pthread_t churner;
  T_INT_EQ(pthread_create(&churner, NULL, churn_processes, mp_test_ctx(_i)), 0);
  void *failed = NULL;
  for (;;) {
    mp_process_t *list[4];
    int n = mp_active_children(list, 4);
    T_ASSERT(n >= 0 && n <= 1, "active_children gave %d", n);
    if (pthread_tryjoin_np(churner, &failed) == 0)
      break;
  }
  T_ASSERT(failed == NULL, "%s: starting, joining or closing failed in the other thread",
           METHODS[_i]);
  T_INT_EQ(mp_active_children(NULL, 0), 0);
}
END_TEST

/* ===================================================================================== */
/* What the child gets: globals, a big argument, the environment.                          */

START_TEST(test_globals) {
  mp_context_t *ctx = mp_test_ctx(_i);
  g_global = 42;
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t_return_global, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  int code = mp_test_join_code(p, 10.0);
  int expected = IS_FORK(_i) ? 42 : 0;
  T_ASSERT(code == expected, "%s: the child's global is %d, expected %d", METHODS[_i], code,
           expected);
  T_PROC_CLOSE(p);
}
END_TEST

START_TEST(test_big_argument) {
  mp_context_t *ctx = mp_test_ctx(_i);
  unsigned char *buf = malloc(BIG_SIZE);
  T_ASSERT(buf != NULL, "malloc(16 MiB)");
  uint64_t x = 0x9E3779B97F4A7C15ull ^ (uint64_t)_i;
  for (size_t k = 8; k < BIG_SIZE; k += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    memcpy(buf + k, &x, 8);
  }
  uint64_t sum = fnv1a(buf + 8, BIG_SIZE - 8);
  memcpy(buf, &sum, 8);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t_check_big, buf, BIG_SIZE, NULL);
  /* The bytes were copied at create: the caller's buffer is its own again. */
  memset(buf, 0, BIG_SIZE);
  free(buf);
  MP_ASSERT_OK(mp_process_start(p));
  int code = mp_test_join_code(p, 20.0);
  T_ASSERT(code == 0, "%s: the child saw a %s argument", METHODS[_i],
           code == 2 ? "wrongly sized" : "corrupted");
  T_PROC_CLOSE(p);
}
END_TEST

START_TEST(test_env_not_leaked) {
  mp_context_t *ctx = mp_test_ctx(_i);
  T_ASSERT(getenv("LIBMP_CHILD") == NULL, "the test process sees LIBMP_CHILD");
  T_INT_EQ(setenv("LIBMP_TEST_MARKER", "kept", 1), 0);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t_env, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  int code = mp_test_join_code(p, 10.0);
  T_ASSERT(code == 0, "%s: %s", METHODS[_i],
           code == 1 ? "the child sees LIBMP_CHILD" : "the child lost LIBMP_TEST_MARKER");
  T_ASSERT(getenv("LIBMP_CHILD") == NULL, "the test process sees LIBMP_CHILD");
  T_PROC_CLOSE(p);
}
END_TEST

/* Python's spawn passes only the fds it must: so does libmp's spawn and forkserver, also
 * fd 4, where a spawned child's sentinel would be when there are no pidfds. A forked child
 * inherits every fd, as fork() does. */
START_TEST(test_fds_not_inherited) {
  int pipe_fds[2];
  T_INT_EQ(pipe(pipe_fds), 0);
  /* Above 5 first, so that the dup2() below replace nothing of the pipe's. */
  for (int k = 0; k < 2; k++) {
    int high = fcntl(pipe_fds[k], F_DUPFD, 10);
    T_ASSERT(high >= 10, "dup above 10");
    close(pipe_fds[k]);
    pipe_fds[k] = high;
  }
  /* Inheritable (no close-on-exec) fds at 4 and 5, whatever numbers pipe() gave. */
  int saved4 = dup(4), saved5 = dup(5);
  T_INT_EQ(dup2(pipe_fds[0], 4), 4);
  T_INT_EQ(dup2(pipe_fds[1], 5), 5);
  mp_process_t *p;
  struct stat pipe_stat;
  T_INT_EQ(fstat(4, &pipe_stat), 0);
  T_PROC_NEW(&p, mp_test_ctx(_i), t_inherited_fds, &pipe_stat, sizeof pipe_stat, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  int code = mp_test_join_code(p, 10.0);
  T_PROC_CLOSE(p);
  dup2(saved4, 4), dup2(saved5, 5);
  close(pipe_fds[0]), close(pipe_fds[1]);
  int expected = IS_FORK(_i) ? 4 : 0; /* forked: both ends, at their numbers and at 4, 5 */
  T_INT_EQ(code, expected);
}
END_TEST

/* clearenv() leaves environ NULL: starting must still work, with an empty environment. */
START_TEST(test_cleared_environment) {
  T_INT_EQ(setenv("LIBMP_TEST_MARKER", "gone", 1), 0);
  T_INT_EQ(clearenv(), 0);
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_no_environment, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  T_INT_EQ(mp_test_join_code(p, 10.0), 0);
  T_PROC_CLOSE(p);
}
END_TEST

/* A program that reaps every child itself (SIGCHLD ignored) takes the exit status libmp
 * needs: the child still joins, and its exit code is reported as lost, never as 0. The
 * fork server's children are not this program's, so their status is kept. */
START_TEST(test_status_taken_by_program) {
  struct sigaction ignore = {.sa_handler = SIG_IGN}, previous;
  T_INT_EQ(sigaction(SIGCHLD, &ignore, &previous), 0);
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_raise_sigkill, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  int join_rc = mp_process_join(p, 10.0);
  int code = 12345;
  int code_rc = mp_process_exitcode(p, &code);
  sigaction(SIGCHLD, &previous, NULL);
  MP_ASSERT_OK(join_rc);
  if (strcmp(METHODS[_i], "forkserver") == 0) {
    MP_ASSERT_OK(code_rc);
    T_INT_EQ(code, -SIGKILL);
  } else {
    MP_ASSERT_ERR(code_rc, -ECHILD);
    T_INT_EQ(code, 12345);
  }
  T_PROC_CLOSE(p);
}
END_TEST

/* An image marked as libmp's child that cannot take over exits 127: it never runs main(),
 * which would run this whole suite again. */
START_TEST(test_malformed_child_marker) {
  static const char *const markers[] = {"LIBMP_CHILD=bogus", "LIBMP_CHILD=spawnx 3 -1"};
  for (size_t k = 0; k < sizeof markers / sizeof markers[0]; k++) {
    char *argv[] = {"test_process", NULL};
    char *envp[] = {(char *)markers[k], NULL};
    pid_t pid;
    T_INT_EQ(posix_spawn(&pid, "/proc/self/exe", NULL, NULL, argv, envp), 0);
    int status = 0;
    T_INT_EQ(waitpid(pid, &status, 0), pid);
    T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 127, "%s: wait status 0x%x",
             markers[k], status);
  }
}
END_TEST

/* More children alive at once than the fork server keeps in its first list (8), ended by
 * signals: their statuses come from the server's STATUS records, each to its own parent
 * socket, after the list has grown. */
#define SIGNALLED 12

START_TEST(test_many_signalled_at_once) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *procs[SIGNALLED];
  for (int k = 0; k < SIGNALLED; k++) {
    T_PROC_NEW(&procs[k], ctx, t_pause, NULL, 0, NULL);
    MP_ASSERT_OK(mp_process_start(procs[k]));
  }
  for (int k = 0; k < SIGNALLED; k++)
    MP_ASSERT_OK(k % 2 ? mp_process_kill(procs[k]) : mp_process_terminate(procs[k]));
  for (int k = SIGNALLED - 1; k >= 0; k--) {
    int code = mp_test_join_code(procs[k], 20.0);
    if (code != (k % 2 ? -SIGKILL : -SIGTERM))
      T_FAIL("%s: process %d ended with %d", METHODS[_i], k, code);
  }
  for (int k = 0; k < SIGNALLED; k++)
    T_PROC_CLOSE(procs[k]);
}
END_TEST

/* The children of parent, as /proc tells (at most cap of them); their number. */
static size_t children_of(pid_t parent, pid_t *out, size_t cap) {
  size_t n = 0;
  DIR *dir = opendir("/proc");
  for (struct dirent *d; dir && (d = readdir(dir)) != NULL;) {
    char state;
    int ppid;
    pid_t pid = (pid_t)atoi(d->d_name); /* 0 for a name that is no pid: no entry */
    if (pid > 0 && mp_test_proc_state(pid, &state, &ppid) && ppid == parent && n < cap)
      out[n++] = pid;
  }
  if (dir)
    closedir(dir);
  return n;
}

/* Killed by anyone, the fork server or its spares cost no start: the next one succeeds, and
 * its child runs. A dead server is replaced, also while its spares are still dying of its
 * death (waited for here until it is a zombie: its end is done, its spares signalled); a
 * killed spare that has not died yet can still take a request (started at once here). With
 * the old library 1 or 2 kills sufficed for a failed start (MP_ESPAWN). A joined child of
 * the fork server was the server's, so the server is this process's one child; fork and
 * spawn have none. (A start asking before the server's end is done may get a spare of it
 * as its child, which then dies with it.) */
#define KILLS 30

START_TEST(test_forkserver_killed) {
  mp_context_t *ctx = mp_test_ctx(_i);
  bool forkserver = strcmp(METHODS[_i], "forkserver") == 0;
  for (int round = 0; round <= KILLS; round++) {
    mp_process_t *p;
    T_PROC_NEW(&p, ctx, t_return7, NULL, 0, NULL);
    int rc = mp_process_start(p);
    if (rc != 0)
      T_FAIL("%s: the start after %d kills: %s (%s)", METHODS[_i], round, mp_err_name(rc),
             mp_last_error());
    T_INT_EQ(mp_test_join_code(p, 10.0), 7);
    T_PROC_CLOSE(p);
    pid_t children[4], spares[8];
    T_INT_EQ(children_of(getpid(), children, 4), forkserver);
    if (!forkserver)
      continue;
    pid_t server = children[0];
    if (round % 2) {
      size_t n = children_of(server, spares, 8); /* and the child, if not reaped yet */
      for (size_t k = 0; k < n; k++)
        kill(spares[k], SIGKILL);
      continue;
    }
    T_INT_EQ(kill(server, SIGKILL), 0);
    char state = 0;
    int ppid;
    while (mp_test_proc_state(server, &state, &ppid) && state != 'Z')
      mp_test_sleep(0.0001);
    T_ASSERT(state == 'Z', "%s: the killed server %d is no zombie", METHODS[_i], (int)server);
  }
}
END_TEST

#define MANY 200

START_TEST(test_many_processes) {
  mp_context_t *ctx = mp_test_ctx(_i);
  static mp_process_t *procs[MANY];
  for (int k = 0; k < MANY; k++) {
    T_PROC_NEW(&procs[k], ctx, t_return_arg, &k, sizeof k, NULL);
    int rc = mp_process_start(procs[k]);
    if (rc != 0) T_FAIL("%s: start of process %d: %s (%s)", METHODS[_i], k, mp_err_name(rc),
                        mp_last_error());
  }
  for (int k = 0; k < MANY; k++) {
    int code = mp_test_join_code(procs[k], 20.0);
    if (code != k) T_FAIL("%s: process %d exited with %d", METHODS[_i], k, code);
  }
  for (int k = 0; k < MANY; k++) T_PROC_CLOSE(procs[k]);
}
END_TEST

/* ===================================================================================== */
/* What a start costs: the page faults a fork start adds to a bare fork().                */

/* AddressSanitizer writes shadow memory beside what each side writes (about 3 pages more
 * per start): there, a looser bound. ThreadSanitizer's runtime writes shadow and metadata
 * for every access, 13 faults per bare fork and 37 per start: what it counts is TSan's, so
 * the case is not built there. */
#if defined(__SANITIZE_THREAD__)
#define FAULTS_COUNTED 0
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FAULTS_COUNTED 0
#endif
#endif
#ifndef FAULTS_COUNTED
#define FAULTS_COUNTED 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define FAULT_MARGIN 8
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FAULT_MARGIN 8
#endif
#endif
#ifndef FAULT_MARGIN
#define FAULT_MARGIN 3
#endif
/* Under memcheck (`meson test --setup valgrind`) its own work faults too: about 9 pages more
 * per start than per bare fork. */
#define FAULT_MARGIN_VALGRIND 12
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

#if FAULTS_COUNTED
/* The page faults this process has taken so far, capped to an exit code. */
static int faults_so_far(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt > 255 ? 255 : (int)ru.ru_minflt;
}

static int t_report_faults(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return faults_so_far();
}

static long parent_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

/*
 * Every page a child writes or runs first, and every page its parent writes after the
 * fork, is a page fault (14-18 us on a virtual machine): the fork start method may add one
 * page on each side to a bare fork()+_exit()+waitpid() (the page of its own records,
 * docs/architecture.md, "Where the time goes"), and a little for where the stack and the
 * target fall. Before issue 14's cuts it added 5 in the child and 7 in the parent.
 */
#define FAULT_ROUNDS 20

START_TEST(test_fork_start_faults) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *p;
  /* Once each, untimed: the first start faults in its code and data in the parent. */
  T_PROC_NEW(&p, ctx, t_report_faults, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  (void)mp_test_join_code(p, 10.0);
  T_PROC_CLOSE(p);
  /* Each side in a run of its own, as a program starts them: a bare fork() between two
   * starts would make the next start copy again what the previous one wrote. */
  long libmp_parent = parent_faults();
  int libmp_child = 255, bare_child = 255; /* the fewest over the rounds */
  for (int round = 0; round < FAULT_ROUNDS; round++) {
    /* No tracking for the cleanup here: its writes would be counted as the start's. A
     * failed start or join leaves its child to the test process's end. */
    int code = 255;
    int rc = mp_process_create(&p, ctx, t_report_faults, NULL, 0, NULL);
    if (rc == 0 && (rc = mp_process_start(p)) == 0 &&
        (rc = mp_process_join(p, 10.0 * mp_test_slowdown())) == 0 &&
        (rc = mp_process_exitcode(p, &code)) == 0)
      rc = mp_process_close(p);
    T_ASSERT(rc == 0, "a fork start, join or close failed: %s", mp_err_name(rc));
    libmp_child = code < libmp_child ? code : libmp_child;
  }
  libmp_parent = parent_faults() - libmp_parent;
  long bare_parent = parent_faults();
  for (int round = 0; round < FAULT_ROUNDS; round++) {
    pid_t pid = fork();
    T_ASSERT(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0)
      _exit(faults_so_far());
    int status;
    T_INT_EQ(waitpid(pid, &status, 0), pid);
    T_ASSERT(WIFEXITED(status), "the bare child ended with status %#x", status);
    bare_child = WEXITSTATUS(status) < bare_child ? WEXITSTATUS(status) : bare_child;
  }
  bare_parent = parent_faults() - bare_parent;
  const int margin = RUNNING_ON_VALGRIND ? FAULT_MARGIN_VALGRIND : FAULT_MARGIN;
  T_ASSERT(libmp_child <= bare_child + margin,
           "a fork child took %d page faults to its target, a bare fork's child %d",
           libmp_child, bare_child);
  T_ASSERT(libmp_parent <= bare_parent + margin * FAULT_ROUNDS,
           "%d fork starts took %ld page faults in the parent, %d bare forks %ld",
           FAULT_ROUNDS, libmp_parent, FAULT_ROUNDS, bare_parent);
}
END_TEST
#endif

/* ===================================================================================== */
/* A child started from a thread: the thread's end is not its parent's death.            */

#define THREAD_CHILD_CODE 23

static int t_outlive_thread(void *arg, size_t size) {
  (void)size;
  double seconds;
  memcpy(&seconds, arg, sizeof seconds);
  mp_test_sleep(seconds); /* past the starting thread's end, and its death signal */
  return THREAD_CHILD_CODE;
}

struct thread_start {
  mp_context_t *ctx;
  double seconds;
  mp_process_t *proc;
  int rc;
};

static void *start_and_leave(void *arg) {
  struct thread_start *t = arg;
  t->rc = mp_process_create(&t->proc, t->ctx, t_outlive_thread, &t->seconds,
                            sizeof t->seconds, NULL);
  if (t->rc == 0)
    t->rc = mp_process_start(t->proc);
  return NULL; /* the thread ends while its child runs */
}

/* The kernel's death signal comes when the parent *thread* ends; the child's handler (made
 * without libc, with a return path of its own) must see the parent alive and return. */
START_TEST(test_child_outlives_starting_thread) {
  struct thread_start t = {.ctx = mp_test_ctx(_i), .seconds = 0.5 * mp_test_slowdown()};
  pthread_t thread;
  T_INT_EQ(pthread_create(&thread, NULL, start_and_leave, &t), 0);
  T_INT_EQ(pthread_join(thread, NULL), 0);
  if (t.proc)
    mp_test_track(t.proc);
  T_ASSERT(t.rc == 0, "%s: starting from a thread: %s", METHODS[_i], mp_err_name(t.rc));
  int code = mp_test_join_code(t.proc, 20.0);
  T_ASSERT(code == THREAD_CHILD_CODE, "%s: the child ended with %d after its thread ended",
           METHODS[_i], code);
  T_PROC_CLOSE(t.proc);
}
END_TEST

/* ===================================================================================== */
/* Lifetime: at the parent's normal exit, when the parent is killed.                      */

/* Waits for P to write token; stops early if P ends. On failure, says why in why[]. */
static bool wait_for_p(mp_process_t *p, const char *path, const char *token, char *why,
                       size_t whylen) {
  double end = mp_test_now() + 10.0;
  for (;;) {
    if (file_has_line(path, token)) return true;
    if (mp_process_is_alive(p) != 1) {
      int code = 0;
      (void)mp_process_join(p, 1.0);
      (void)mp_process_exitcode(p, &code);
      if (file_has_line(path, token)) return true;
      snprintf(why, whylen, "P ended with %d before writing %s", code, token);
      return false;
    }
    if (mp_test_now() > end) {
      snprintf(why, whylen, "P did not write %s within 10 s", token);
      return false;
    }
    mp_test_sleep(0.005);
  }
}

static void life_setup(struct life_arg *a, int method, char **path) {
  T_INT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), 0);
  memset(a, 0, sizeof *a);
  a->method = method;
  *path = make_temp_file();
  T_ASSERT(*path != NULL && strlen(*path) < sizeof a->path, "temp file");
  snprintf(a->path, sizeof a->path, "%s", *path);
}

START_TEST(test_exit_terminates_daemon_joins_others) {
  struct life_arg a;
  char *path;
  life_setup(&a, _i, &path);
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, life_exit_parent, &a, sizeof a, "P");
  MP_ASSERT_OK(mp_process_start(p));
  int join_rc = mp_process_join(p, 15.0);
  /* Read what happened before anything else can change it. */
  bool nondaemon_done = file_has_line(path, "NDONE");
  bool daemon_termed = file_has_line(path, "DTERM");
  pid_t d = file_pid(path, "D"), n = file_pid(path, "N");
  if (d > 0) mp_test_track_pid(d);
  if (n > 0) mp_test_track_pid(n);
  unlink(path);
  free(path);
  MP_ASSERT_OK(join_rc);
  int code = 0;
  MP_ASSERT_OK(mp_process_exitcode(p, &code));
  T_ASSERT(code == 0, "%s: P exited with %d (20-28 name the step of P that failed)",
           METHODS[_i], code);
  T_ASSERT(d > 0 && n > 0, "P recorded no pids");
  T_ASSERT(daemon_termed, "%s: the daemon child got no SIGTERM at its parent's exit",
           METHODS[_i]);
  T_ASSERT(nondaemon_done, "%s: the parent exited before its non-daemon child ended",
           METHODS[_i]);
  /* Both grandchildren are gone, reaped by P (or by whoever forked them). */
  double end = mp_test_now() + 5.0;
  bool gone = false;
  while (!gone && mp_test_now() < end) {
    (void)waitpid(d, NULL, WNOHANG);
    (void)waitpid(n, NULL, WNOHANG);
    gone = kill(d, 0) != 0 && kill(n, 0) != 0;
    if (!gone) mp_test_sleep(0.01);
  }
  T_ASSERT(gone, "%s: a grandchild still exists after its parent exited", METHODS[_i]);
  mp_test_cleanup();
  reap_leftover_zombies();
}
END_TEST

/*
 * Starts P running `target` under method `i`, waits until it wrote READY, and returns the
 * pids of the grandchildren it names by tags[k] with a pidfd on each (tracked for cleanup).
 */
static mp_process_t *start_parent_of(int i, mp_target_t target, const char *const *tags,
                                     int count, pid_t *pids, int *pidfds) {
  struct life_arg a;
  char *path;
  life_setup(&a, i, &path);
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(i), target, &a, sizeof a, "P");
  MP_ASSERT_OK(mp_process_start(p));
  char why[128] = "";
  bool ready = wait_for_p(p, path, "READY", why, sizeof why);
  for (int k = 0; k < count; k++) {
    pids[k] = file_pid(path, tags[k]);
    pidfds[k] = -1;
    if (pids[k] > 0) {
      mp_test_track_pid(pids[k]);
      pidfds[k] = pidfd_open(pids[k], 0);
    }
  }
  unlink(path);
  free(path);
  T_ASSERT(ready, "%s: %s", METHODS[i], why);
  for (int k = 0; k < count; k++)
    T_ASSERT(pidfds[k] >= 0, "%s: the grandchild %s (%d) is not running", METHODS[i],
             tags[k], pids[k]);
  return p;
}

START_TEST(test_killed_parent_takes_children) {
  static const char *const tags[2] = {"D", "N"};
  pid_t pids[2];
  int pidfds[2];
  mp_process_t *p = start_parent_of(_i, life_kill_parent, tags, 2, pids, pidfds);

  MP_ASSERT_OK(mp_process_kill(p));
  MP_ASSERT_OK(mp_process_join(p, 10.0));
  int code = 0;
  MP_ASSERT_OK(mp_process_exitcode(p, &code));
  T_INT_EQ(code, -SIGKILL);

  bool died[2];
  int reaped[2], status[2] = {0, 0};
  for (int k = 0; k < 2; k++) {
    died[k] = pidfd_dies_within(pidfds[k], 5.0);
    if (!died[k]) {
      pidfd_send_signal(pidfds[k], SIGKILL, NULL, 0);
      (void)pidfd_dies_within(pidfds[k], 5.0);
    }
    reaped[k] = reap_pid(pids[k], &status[k], 2.0);
    close(pidfds[k]);
  }
  reap_leftover_zombies();

  static const char *const role[2] = {"daemon", "non-daemon"};
  for (int k = 0; k < 2; k++) {
    T_ASSERT(died[k], "%s: the %s grandchild %d survived its killed parent", METHODS[_i],
             role[k], pids[k]);
    if (strcmp(METHODS[_i], "forkserver") != 0) {
      /* Its parent was P: it was re-parented to us, the subreaper. */
      T_ASSERT(reaped[k] == 1, "%s: could not reap the %s grandchild %d (%d)", METHODS[_i],
               role[k], pids[k], reaped[k]);
    } else {
      /* A fork server may be its parent and reap it; if it came to us, it is reaped. */
      T_ASSERT(reaped[k] != -1, "%s: the %s grandchild %d is a zombie of ours not reaped",
               METHODS[_i], role[k], pids[k]);
    }
    if (reaped[k] == 1)
      T_ASSERT(WIFSIGNALED(status[k]) && WTERMSIG(status[k]) == SIGKILL,
               "%s: the %s grandchild ended with status 0x%x, not by SIGKILL", METHODS[_i],
               role[k], status[k]);
  }
}
END_TEST

START_TEST(test_no_die_with_parent) {
  static const char *const tags[1] = {"G"};
  pid_t g;
  int pidfd;
  mp_process_t *p = start_parent_of(_i, life_orphan_parent, tags, 1, &g, &pidfd);

  MP_ASSERT_OK(mp_process_kill(p));
  MP_ASSERT_OK(mp_process_join(p, 10.0));
  bool survived = !pidfd_dies_within(pidfd, 0.5);
  /* Now end it ourselves. */
  pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
  bool ended = pidfd_dies_within(pidfd, 5.0);
  int status = 0;
  (void)reap_pid(g, &status, 1.0);
  close(pidfd);
  reap_leftover_zombies();
  T_ASSERT(survived, "%s: a child with die_with_parent=false died with its parent",
           METHODS[_i]);
  T_ASSERT(ended, "%s: could not kill the surviving grandchild", METHODS[_i]);
}
END_TEST

START_TEST(test_parent_pidfd) {
  struct parent_pidfd_arg a = {getpid(), _i};
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_parent_pidfd, &a, sizeof a, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  int code = mp_test_join_code(p, 10.0);
  T_PROC_CLOSE(p);
  T_ASSERT(code == 0, "%s: the child's look at its parent's pidfd failed at step %d "
           "(31: a pidfd before it asked, 34: not its parent's)", METHODS[_i], code);
}
END_TEST

/* A child that first asks about its parent once the parent has died is told it ended, by
 * a sentinel that is ready. */
START_TEST(test_parent_gone_before_first_look) {
  static const char *const tags[1] = {"G"};
  struct life_arg a;
  char *path;
  life_setup(&a, _i, &path);
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), life_gone_parent, &a, sizeof a, "P");
  MP_ASSERT_OK(mp_process_start(p));
  char why[128] = "";
  bool ready = wait_for_p(p, path, "READY", why, sizeof why);
  pid_t g = file_pid(path, tags[0]);
  if (g > 0) mp_test_track_pid(g);
  int killed = mp_process_kill(p);
  int joined = mp_process_join(p, 10.0);
  append_text(path, "PDEAD\n");
  bool answered = ready && wait_for_line(path, "GONE-OK", 10.0);
  bool bad = file_has_line(path, "GONE-BAD");
  int status = 0;
  if (g > 0) (void)reap_pid(g, &status, 5.0);
  unlink(path);
  free(path);
  reap_leftover_zombies();
  MP_ASSERT_OK(killed);
  MP_ASSERT_OK(joined);
  T_ASSERT(ready, "%s: %s", METHODS[_i], why);
  T_ASSERT(!bad, "%s: the orphan saw its dead parent as alive, or got no ready sentinel",
           METHODS[_i]);
  T_ASSERT(answered, "%s: the orphan never answered", METHODS[_i]);
}
END_TEST

/* G: says it is ready, then joins its parent, which ends right after without being reaped
 * (the test holds off), and says how the join went. With from_fork, a process G forks (the
 * program's own fork(), whose parent process object is a copy of G's) does so instead. */
static int t_join_zombie_parent(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a)
    return 60;
  memcpy(&a, arg, sizeof a);
  mp_process_t *parent = mp_parent_process();
  if (parent == NULL)
    return 61;
  pid_t f = a.from_fork ? fork() : 0;
  if (f > 0) {
    int status;
    return waitpid(f, &status, 0) == f && WIFEXITED(status) ? WEXITSTATUS(status) : 62;
  }
  if (f < 0)
    return 63;
  int alive_before = mp_process_is_alive(parent); /* P waits for GREADY */
  append_text(a.path, "GREADY\n");
  double t0 = mp_test_now();
  int rc = mp_process_join(parent, 3.0);
  int alive = mp_process_is_alive(parent);
  char line[96];
  snprintf(line, sizeof line, "GJOIN %d %d %.1f %d\n", rc, alive, mp_test_now() - t0,
           alive_before);
  append_text(a.path, line);
  if (a.from_fork)
    _exit(0);
  return 0;
}

/* P: starts G (which does not die with it), waits until G is ready, and ends at once
 * (_exit: a return would join G first). */
static int life_ends_unreaped(void *arg, size_t size) {
  struct life_arg a;
  if (size != sizeof a)
    return 20;
  memcpy(&a, arg, sizeof a);
  if (start_grandchild(&a, t_join_zombie_parent, false, false, "G") != 0)
    return 21;
  if (!wait_for_line(a.path, "GREADY", 10.0))
    return 22;
  mp_test_sleep(0.2); /* G is in its join */
  _exit(0);
}

/*
 * A parent that has ended is joined, and is not alive, as soon as it ends, whether or not
 * its own parent has reaped it yet. Without pidfds (LIBMP_NO_PIDFD=1, old kernels, valgrind)
 * the child looked at its parent with kill(pid, 0), which succeeds on a zombie: the join ran
 * to its deadline (MP_ETIMEDOUT) and is_alive said 1 (and a pid reused after the reap would
 * have looked alive for ever). Under forkserver P is the server's child, reaped at once.
 */
static void check_join_parent_ended_unreaped(int method, bool from_fork) {
  struct life_arg a;
  char *path;
  life_setup(&a, method, &path);
  a.from_fork = from_fork;
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(method), life_ends_unreaped, &a, sizeof a, "P");
  MP_ASSERT_OK(mp_process_start(p));
  /* P is not joined (nor reaped) until G has answered. */
  double end = mp_test_now() + 15.0;
  char text[4096] = "";
  while (!strstr(text, "GJOIN") && mp_test_now() < end) {
    mp_test_sleep(0.02);
    read_text(path, text, sizeof text);
  }
  pid_t g = file_pid(path, "G");
  int status = 0;
  int code = mp_test_join_code(p, 10.0);
  if (g > 0)
    (void)reap_pid(g, &status, 5.0);
  T_PROC_CLOSE(p);
  unlink(path);
  free(path);
  reap_leftover_zombies();
  T_INT_EQ(code, 0);
  int rc = 1, alive = -1, alive_before = -1;
  double took = -1;
  const char *line = strstr(text, "GJOIN");
  T_ASSERT(line && sscanf(line, "GJOIN %d %d %lf %d", &rc, &alive, &took, &alive_before) == 4,
           "%s: G never answered: %s", METHODS[method], text);
  T_ASSERT(rc == 0 && alive == 0 && alive_before == 1,
           "%s%s: %s join of its ended (unreaped) parent returned %s after %.1f s, is_alive "
           "%d (%d while it ran)",
           METHODS[method], getenv("LIBMP_NO_PIDFD") ? " (no pidfd)" : "",
           from_fork ? "a fork() of G, its" : "G's", mp_err_name(rc), took, alive,
           alive_before);
}

START_TEST(test_join_parent_ended_unreaped) {
  check_join_parent_ended_unreaped(_i, false);
}
END_TEST

/* The same from a process G forked itself: its parent process object is G's parent, not its
 * parent for the kernel, so it looks by pid (/proc: a zombie). */
START_TEST(test_forked_copy_joins_parent_ended_unreaped) {
  check_join_parent_ended_unreaped(_i, true);
}
END_TEST

/* ===================================================================================== */
/* set_executable: a failed exec, a non-libmp program, another libmp build.               */

/* exec_case with an argument of arg_size zero bytes (t_return7 ignores it). */
static void exec_case_sized(int i, const char *exe, int expected_rc, bool retry,
                            const char *must_mention, size_t arg_size) {
  mp_context_t *ctx = mp_test_ctx(i);
  MP_ASSERT_OK(mp_set_executable(exe));
  mp_process_t *p;
  void *arg = arg_size ? calloc(1, arg_size) : NULL;
  T_ASSERT(arg || !arg_size, "calloc");
  T_PROC_NEW(&p, ctx, t_return7, arg, arg_size, NULL);
  free(arg);
  int rc = mp_process_start(p);
  if (IS_FORK(i)) {
    /* fork runs no program: the executable does not matter. */
    MP_ASSERT_OK(rc);
    T_INT_EQ(mp_test_join_code(p, 10.0), 7);
  } else {
    MP_ASSERT_ERR(rc, expected_rc);
    const char *msg = mp_last_error();
    T_ASSERT(msg != NULL && msg[0] != '\0', "%s: no explanation of the failed start",
             METHODS[i]);
    if (must_mention != NULL)
      T_ASSERT(strstr(msg, must_mention) != NULL, "%s: \"%s\" does not mention %s",
               METHODS[i], msg, must_mention);
    T_INT_EQ(mp_process_is_alive(p), 0);
    MP_ASSERT_ERR(mp_process_pid(p), MP_ENOTSTARTED);
    MP_ASSERT_ERR(mp_process_join(p, 0), MP_ENOTSTARTED);
    if (retry) {
      /* After a failure the process can be started again. */
      MP_ASSERT_OK(mp_set_executable(NULL));
      MP_ASSERT_OK(mp_process_start(p));
      T_INT_EQ(mp_test_join_code(p, 10.0), 7);
    }
  }
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp_set_executable(NULL));
}

static void exec_case(int i, const char *exe, int expected_rc, bool retry,
                      const char *must_mention) {
  exec_case_sized(i, exe, expected_rc, retry, must_mention, 0);
}

START_TEST(test_exec_nonexistent) {
  exec_case(_i, "/nonexistent", MP_ESPAWN, true, "/nonexistent");
  if (strcmp(METHODS[_i], "forkserver") == 0) {
    /* The fork server started by the retry keeps the executable it was started from. */
    mp_context_t *ctx = mp_test_ctx(_i);
    mp_process_t *p;
    MP_ASSERT_OK(mp_set_executable("/nonexistent"));
    T_PROC_NEW(&p, ctx, t_return7, NULL, 0, NULL);
    MP_ASSERT_OK(mp_process_start(p));
    T_INT_EQ(mp_test_join_code(p, 10.0), 7);
    T_PROC_CLOSE(p);
    MP_ASSERT_OK(mp_set_executable(NULL));
  }
}
END_TEST

START_TEST(test_exec_not_libmp) { exec_case(_i, "/bin/true", MP_ESPAWN, true, NULL); }
END_TEST

START_TEST(test_exec_other_build) {
  T_ASSERT(access(OTHER_BUILD_PATH, X_OK) == 0, "%s is missing", OTHER_BUILD_PATH);
  /* A fork server started from the other build keeps running it: no retry there. */
  exec_case(_i, OTHER_BUILD_PATH, MP_ERESOLVE, strcmp(METHODS[_i], "spawn") == 0, NULL);
}
END_TEST

/* The same with an argument of 16 MiB: the child refuses the target while most of the
 * request is still to come (its close resets the connection under the program's send): the
 * start still says why, from the child's ERROR. */
START_TEST(test_exec_other_build_big_argument) {
  exec_case_sized(_i, OTHER_BUILD_PATH, MP_ERESOLVE, strcmp(METHODS[_i], "spawn") == 0, NULL,
                  16u << 20);
}
END_TEST

/* ===================================================================================== */
/* Targets in a dlopen'ed module.                                                          */

static mp_target_t module_target(void *handle) {
  void *sym = dlsym(handle, "module_target");
  T_ASSERT(sym != NULL, "dlsym: %s", dlerror());
  mp_target_t t;
  memcpy(&t, &sym, sizeof t);
  return t;
}

START_TEST(test_module_target) {
  mp_context_t *ctx = mp_test_ctx(_i);
  void *h = dlopen(MODULE_A_PATH, RTLD_NOW);
  T_ASSERT(h != NULL, "dlopen: %s", dlerror());
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, module_target(h), NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  T_INT_EQ(mp_test_join_code(p, 10.0), 41);
  T_PROC_CLOSE(p);
}
END_TEST

static bool copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY | O_CLOEXEC);
  int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
  bool ok = in >= 0 && out >= 0;
  char buf[65536];
  ssize_t n;
  while (ok && (n = read(in, buf, sizeof buf)) > 0) ok = write(out, buf, (size_t)n) == n;
  if (in >= 0) close(in);
  if (out >= 0 && close(out) != 0) ok = false;
  return ok;
}

START_TEST(test_module_replaced_on_disk) {
  mp_context_t *ctx = mp_test_ctx(_i);
  char dir[] = "/tmp/libmp-mod-XXXXXX";
  T_ASSERT(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
  char path[128], next[128];
  snprintf(path, sizeof path, "%s/module.so", dir);
  snprintf(next, sizeof next, "%s/module.so.new", dir);
  bool copied = copy_file(MODULE_A_PATH, path) && copy_file(MODULE_B_PATH, next);
  void *h = copied ? dlopen(path, RTLD_NOW) : NULL;
  /* Another build takes the loaded file's place. A child must not even load it: its
   * constructor (which creates the marker) would run before any check of the loaded
   * object. */
  bool renamed = h != NULL && rename(next, path) == 0;
  char marker[160];
  snprintf(marker, sizeof marker, "%s/loaded", dir);
  setenv("TEST_MODULE_MARKER", marker, 1);
  mp_process_t *p = NULL;
  int rc = 1, code = 0;
  if (renamed) {
    T_PROC_NEW(&p, ctx, module_target(h), NULL, 0, NULL);
    rc = mp_process_start(p);
    if (rc == 0) code = mp_test_join_code(p, 10.0);
  }
  unsetenv("TEST_MODULE_MARKER");
  bool loaded = unlink(marker) == 0;
  unlink(path);
  unlink(next);
  rmdir(dir);
  T_ASSERT(copied && h != NULL && renamed, "setting up the module copies failed");
  T_ASSERT(!loaded, "a child loaded a module of another build");
  if (IS_FORK(_i)) {
    MP_ASSERT_OK(rc);
    T_INT_EQ(code, 41); /* variant A's code, loaded before the swap */
  } else {
    MP_ASSERT_ERR(rc, MP_ERESOLVE);
    T_ASSERT(mp_last_error()[0] != '\0', "no explanation of MP_ERESOLVE");
    T_INT_EQ(mp_process_is_alive(p), 0);
  }
  T_PROC_CLOSE(p);
}
END_TEST

/* ===================================================================================== */
/* Bad input.                                                                              */

START_TEST(test_null_arguments) {
  mp_context_t *ctx = mp_test_ctx(0);
  mp_process_t *p = NULL;
  MP_ASSERT_ERR(mp_process_create(NULL, ctx, t_return7, NULL, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_create(&p, ctx, NULL, NULL, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_create(&p, ctx, t_return7, NULL, 5, NULL), MP_EINVAL);
  int code = 0;
  MP_ASSERT_ERR(mp_process_set_daemon(NULL, true), MP_EINVAL);
  T_ASSERT(!mp_process_daemon(NULL), "NULL is a daemon");
  MP_ASSERT_ERR(mp_process_set_die_with_parent(NULL, false), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_set_name(NULL, "x"), MP_EINVAL);
  T_ASSERT(mp_process_name(NULL) == NULL, "name of NULL");
  MP_ASSERT_ERR(mp_process_start(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_join(NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_join(NULL, MP_FOREVER), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_is_alive(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_exitcode(NULL, &code), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_terminate(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_kill(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_pid(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_sentinel(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_close(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_active_children(NULL, 3), MP_EINVAL);

  /* ctx NULL is the default context; arg NULL with size 0 is fine. */
  T_PROC_NEW(&p, NULL, t_return7, NULL, 0, NULL);
  MP_ASSERT_ERR(mp_process_set_name(p, NULL), MP_EINVAL);
  T_ASSERT(mp_process_name(p) != NULL && strncmp(mp_process_name(p), "Process-", 8) == 0,
           "default name \"%s\"", mp_process_name(p) ? mp_process_name(p) : "(null)");
  T_ASSERT(!mp_process_daemon(p), "daemon by default");
  MP_ASSERT_OK(mp_process_set_daemon(p, true));
  T_ASSERT(mp_process_daemon(p), "set_daemon(true) did not stick");
  MP_ASSERT_OK(mp_process_set_daemon(p, false));
  MP_ASSERT_OK(mp_process_start(p));
  T_INT_EQ(mp_test_join_code(p, 10.0), 7);
  MP_ASSERT_ERR(mp_process_exitcode(p, NULL), MP_EINVAL);
  T_PROC_CLOSE(p);
}
END_TEST

START_TEST(test_state_errors) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *p;
  int code = 0;
  T_PROC_NEW(&p, ctx, t_pause, NULL, 0, "state");
  MP_ASSERT_ERR(mp_process_join(p, 0), MP_ENOTSTARTED);
  MP_ASSERT_ERR(mp_process_join(p, MP_FOREVER), MP_ENOTSTARTED);
  MP_ASSERT_ERR(mp_process_terminate(p), MP_ENOTSTARTED);
  MP_ASSERT_ERR(mp_process_kill(p), MP_ENOTSTARTED);
  MP_ASSERT_ERR(mp_process_exitcode(p, &code), MP_ENOTSTARTED);
  MP_ASSERT_ERR(mp_process_pid(p), MP_ENOTSTARTED);
  MP_ASSERT_ERR(mp_process_sentinel(p), MP_ENOTSTARTED);
  T_INT_EQ(mp_process_is_alive(p), 0);

  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_ERR(mp_process_start(p), MP_ESTARTED);
  MP_ASSERT_ERR(mp_process_set_daemon(p, true), MP_ESTARTED);
  MP_ASSERT_ERR(mp_process_set_die_with_parent(p, false), MP_ESTARTED);
  MP_ASSERT_ERR(mp_process_close(p), MP_EALIVE);
  /* The object stays valid. */
  T_STR_EQ(mp_process_name(p), "state");
  T_INT_EQ(mp_process_is_alive(p), 1);
  MP_ASSERT_OK(mp_process_kill(p));
  MP_ASSERT_OK(mp_process_join(p, 10.0));
  MP_ASSERT_ERR(mp_process_start(p), MP_ESTARTED);
  T_PROC_CLOSE(p);
}
END_TEST

/*
 * A process object is its starter's; a copy of it in a process forked from the starter (the
 * program's own fork(), or a fork-method child that finds a sibling's handle in a global or
 * its argument) cannot wait for the sibling, which is not its child (Python asserts "can
 * only join a child process", "can only test a child process"). The copy's waitpid() would
 * fail with ECHILD, which once read as "reaped elsewhere": is_alive said 0 and join
 * returned 0 at once while the sibling ran. Now join, is_alive, exitcode and close say
 * MP_ENOTCHILD there, and terminate signals the sibling, as Python's does from anywhere.
 */
START_TEST(test_forked_copy_cannot_wait_for_sibling) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t_pause, NULL, 0, "sibling");
  MP_ASSERT_OK(mp_process_start(p));
  int out[2];
  T_ASSERT(pipe(out) == 0, "pipe");
  pid_t c = fork();
  T_ASSERT(c >= 0, "fork");
  if (c == 0) {
    int code, got[5];
    got[0] = mp_process_is_alive(p);
    got[1] = mp_process_join(p, 0.2);
    got[2] = mp_process_exitcode(p, &code);
    got[3] = mp_process_close(p);
    got[4] = mp_process_terminate(p); /* last: the sibling ends */
    if (write(out[1], got, sizeof got) != (ssize_t)sizeof got)
      _exit(2);
    _exit(0);
  }
  mp_test_track_pid(c);
  close(out[1]);
  int got[5] = {-100, -100, -100, -100, -100};
  ssize_t n = read(out[0], got, sizeof got);
  close(out[0]);
  int status;
  waitpid(c, &status, 0);
  mp_test_untrack_pid(c);
  int joined = mp_process_join(p, 10.0), code = 0;
  if (joined == 0)
    MP_ASSERT_OK(mp_process_exitcode(p, &code));
  else /* the copy's terminate did not reach it */
    MP_ASSERT_OK(mp_process_kill(p));
  MP_ASSERT_OK(mp_process_join(p, 10.0));
  T_PROC_CLOSE(p);
  T_ASSERT(n == (ssize_t)sizeof got, "the forked copy did not answer");
  T_ASSERT(got[0] == MP_ENOTCHILD && got[1] == MP_ENOTCHILD && got[2] == MP_ENOTCHILD &&
               got[3] == MP_ENOTCHILD,
           "%s: in a forked copy, is_alive of the running sibling is %d, join(0.2) returns %s, "
           "exitcode %s and close %s",
           METHODS[_i], got[0], mp_err_name(got[1]), mp_err_name(got[2]), mp_err_name(got[3]));
  T_ASSERT(got[4] == 0 && joined == 0 && code == -SIGTERM,
           "%s: the copy's terminate returned %s, and the sibling's join %s, exit code %d",
           METHODS[_i], mp_err_name(got[4]), mp_err_name(joined), code);
}
END_TEST

/* Closing a process object twice (here with an argument of its own, which close frees) is a
 * freed handle used again: it aborts with a line naming mp_process_close, and never frees
 * the argument a second time (a double free: glibc's abort or ASan's report, with no word
 * from libmp). */
static int close_twice_method; /* the method test_close_twice's child uses */

/* A process with an argument, started, joined and closed, then closed again. */
static void close_twice(void) {
  mp_process_t *p;
  long arg = 42;
  if (mp_process_create(&p, mp_test_ctx(close_twice_method), t_return7, &arg, sizeof arg,
                        NULL) != 0 ||
      mp_process_start(p) != 0 || mp_process_join(p, 10.0) != 0 || mp_process_close(p) != 0)
    _exit(2);
  mp_process_close(p);
}

START_TEST(test_close_twice) {
  close_twice_method = _i;
  mp_test_expect_abort(close_twice, "libmp: mp_process_close");
}
END_TEST

START_TEST(test_current_process_errors) {
  mp_process_t *me = mp_current_process();
  T_ASSERT(me != NULL, "mp_current_process() is NULL");
  int code = 0;
  MP_ASSERT_ERR(mp_process_join(me, 0), MP_ENOTCHILD);
  MP_ASSERT_ERR(mp_process_join(me, 1.0), MP_ENOTCHILD);
  MP_ASSERT_ERR(mp_process_exitcode(me, &code), MP_ENOTCHILD);
  MP_ASSERT_ERR(mp_process_sentinel(me), MP_ENOTCHILD);
  MP_ASSERT_ERR(mp_process_terminate(me), MP_ENOTCHILD);
  MP_ASSERT_ERR(mp_process_close(me), MP_EINVAL);
  T_ASSERT(mp_current_process() == me, "the current process changed");
  T_STR_EQ(mp_process_name(me), "MainProcess");
}
END_TEST

START_TEST(test_heap_target_refused) {
  mp_context_t *ctx = mp_test_ctx(_i);
  void *heap = malloc(256);
  T_ASSERT(heap != NULL, "malloc");
  memset(heap, 0xc3, 256); /* ret instructions, should anyone jump there */
  mp_target_t t;
  memcpy(&t, &heap, sizeof t);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t, NULL, 0, NULL);
  int rc = mp_process_start(p);
  int alive = mp_process_is_alive(p);
  int pid = mp_process_pid(p);
  T_PROC_CLOSE(p);
  free(heap);
  MP_ASSERT_ERR(rc, MP_ECROSS);
  T_INT_EQ(alive, 0);
  MP_ASSERT_ERR(pid, MP_ENOTSTARTED);
}
END_TEST

START_TEST(test_stack_target_refused) {
  mp_context_t *ctx = mp_test_ctx(_i);
  unsigned char code[64];
  memset(code, 0xc3, sizeof code);
  void *addr = code;
  mp_target_t t;
  memcpy(&t, &addr, sizeof t);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, t, NULL, 0, NULL);
  int rc = mp_process_start(p);
  T_PROC_CLOSE(p);
  MP_ASSERT_ERR(rc, MP_ECROSS);
}
END_TEST

/* ===================================================================================== */
/* mp_cpu_count.                                                                           */

START_TEST(test_cpu_count_affinity) {
  cpu_set_t orig;
  T_INT_EQ(sched_getaffinity(0, sizeof orig, &orig), 0);
  int n = mp_cpu_count();
  T_ASSERT(n >= 1 && n <= CPU_COUNT(&orig), "mp_cpu_count() %d with %d CPUs in the mask", n,
           CPU_COUNT(&orig));
  int first = -1;
  for (int c = 0; c < CPU_SETSIZE && first < 0; c++)
    if (CPU_ISSET(c, &orig)) first = c;
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  T_INT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  int limited = mp_cpu_count();
  T_INT_EQ(sched_setaffinity(0, sizeof orig, &orig), 0);
  T_INT_EQ(limited, 1);
  T_INT_EQ(mp_cpu_count(), n);
}
END_TEST

#define CG_ROOT "/sys/fs/cgroup/cpu"
static char g_cg_dir[128];

static bool write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644); /* creates only on tmpfs */
  if (fd < 0) return false;
  size_t len = strlen(text);
  bool ok = write(fd, text, len) == (ssize_t)len;
  if (close(fd) != 0) ok = false;
  return ok;
}

static bool cg_leave(void) {
  char pid[32];
  snprintf(pid, sizeof pid, "%d\n", getpid());
  bool ok = write_file(CG_ROOT "/cgroup.procs", pid);
  if (g_cg_dir[0] != '\0' && rmdir(g_cg_dir) != 0) ok = false;
  g_cg_dir[0] = '\0';
  return ok;
}

static void cg_leave_hook(void) { (void)cg_leave(); }

START_TEST(test_cpu_count_cgroup_v1_quota) {
  cpu_set_t orig, two;
  T_INT_EQ(sched_getaffinity(0, sizeof orig, &orig), 0);
  T_ASSERT(CPU_COUNT(&orig) >= 2, "this test needs 2 CPUs, the mask has %d", CPU_COUNT(&orig));
  CPU_ZERO(&two);
  for (int c = 0, k = 0; c < CPU_SETSIZE && k < 2; c++)
    if (CPU_ISSET(c, &orig)) {
      CPU_SET(c, &two);
      k++;
    }
  T_INT_EQ(sched_setaffinity(0, sizeof two, &two), 0);
  T_ASSERT(access(CG_ROOT "/cgroup.procs", W_OK) == 0, "%s/cgroup.procs not writable",
           CG_ROOT);

  int outside = mp_cpu_count();
  snprintf(g_cg_dir, sizeof g_cg_dir, CG_ROOT "/libmp-test-%d", (int)getpid());
  bool made = mkdir(g_cg_dir, 0755) == 0 || errno == EEXIST;
  mp_test_set_hook(cg_leave_hook);
  char file[192], pid[32];
  snprintf(pid, sizeof pid, "%d\n", getpid());
  snprintf(file, sizeof file, "%s/cpu.cfs_period_us", g_cg_dir);
  bool period = made && write_file(file, "100000\n");
  snprintf(file, sizeof file, "%s/cpu.cfs_quota_us", g_cg_dir);
  bool quota = period && write_file(file, "50000\n");
  snprintf(file, sizeof file, "%s/cgroup.procs", g_cg_dir);
  bool moved = quota && write_file(file, pid);
  char self[2048];
  read_text("/proc/self/cgroup", self, sizeof self);
  bool listed = strstr(self, "libmp-test-") != NULL;
  int half = mp_cpu_count();
  /* A quota of three CPUs does not raise the count above the affinity mask's two. */
  snprintf(file, sizeof file, "%s/cpu.cfs_quota_us", g_cg_dir);
  bool quota3 = moved && write_file(file, "300000\n");
  int three = mp_cpu_count();
  bool left = cg_leave();
  mp_test_set_hook(NULL);
  sched_setaffinity(0, sizeof orig, &orig);

  T_ASSERT(made && period && quota && moved && quota3,
           "cgroup setup failed: mkdir %d period %d quota %d move %d quota3 %d", made, period,
           quota, moved, quota3);
  T_ASSERT(listed, "/proc/self/cgroup does not show the test cgroup: %s", self);
  T_ASSERT(left, "leaving or removing the test cgroup failed");
  T_INT_EQ(outside, 2);
  T_ASSERT(half == 1, "mp_cpu_count() is %d under a quota of 0.5 CPU with 2 CPUs", half);
  T_ASSERT(three == 2, "mp_cpu_count() is %d under a quota of 3 CPUs with 2 CPUs", three);
}
END_TEST

/* ===================================================================================== */

/*
 * cgroup v2: in a private mount namespace (this test process only), a tmpfs over
 * /sys/fs/cgroup holds a v2 root whose cpu.max allows half a CPU; /proc/self/cgroup has
 * its "0::/" line on every host, v1 or v2, so mp_cpu_count() reads that file.
 */
START_TEST(test_cpu_count_cgroup_v2_quota) {
  cpu_set_t two;
  T_INT_EQ(sched_getaffinity(0, sizeof two, &two), 0);
  T_ASSERT(CPU_COUNT(&two) >= 2, "needs 2 CPUs in the affinity mask, has %d", CPU_COUNT(&two));
  T_INT_EQ(unshare(CLONE_NEWNS), 0);
  T_INT_EQ(mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL), 0);
  T_INT_EQ(mount("libmp-test", "/sys/fs/cgroup", "tmpfs", 0, NULL), 0);
  T_ASSERT(write_file("/sys/fs/cgroup/cgroup.controllers", "cpu\n"), "controllers");
  T_ASSERT(write_file("/sys/fs/cgroup/cpu.max", "50000 100000\n"), "cpu.max");
  T_INT_EQ(mp_cpu_count(), 1);
  T_INT_EQ(unlink("/sys/fs/cgroup/cpu.max"), 0);
  T_ASSERT(write_file("/sys/fs/cgroup/cpu.max", "max 100000\n"), "cpu.max");
  T_INT_EQ(mp_cpu_count(), CPU_COUNT(&two));
  /* The mount namespace ends with this test's process. */
}
END_TEST

/* ===================================================================================== */
/* review rev-fs                                                                         */

#include <grp.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* Makes this process a user of its own (a uid made of its pid, which no other test uses):
 * the kernel counts fds in flight per user, and bounds a sender without CAP_SYS_RESOURCE by
 * its RLIMIT_NOFILE, so the fds that another suite running meanwhile sends as root (or a
 * test as nobody) must not count here, nor ours there. A user other than root has no
 * capabilities: the bound holds for every process of the test. */
static bool rev_fs_become_own_user(void) {
  uid_t id = 100000 + (uid_t)getpid();
  return setgroups(0, NULL) == 0 && setresgid(id, id, id) == 0 && setresuid(id, id, id) == 0;
}

/* Puts `count` copies of fd 0 in flight (sent, never received) on a new socket pair, or as
 * many as the limit takes. */
static void rev_fs_fds_in_flight(int hold[2], int count) {
  T_ASSERT(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, hold) == 0, "socketpair");
  while (count > 0) {
    int n = count < MP_TEST_FDS_MAX ? count : MP_TEST_FDS_MAX, fds[MP_TEST_FDS_MAX];
    for (int k = 0; k < n; k++)
      fds[k] = 0;
    if (!mp_test_send_fds(hold[0], "x", 1, fds, (size_t)n)) {
      /* The limit reached already (other processes of the user hold fds in flight): the
       * request's send is past it too. */
      T_ASSERT(errno == ETOOMANYREFS, "putting fds in flight: %s", strerror(errno));
      return;
    }
    count -= n;
  }
}

/* One request that the control socket refuses for a reason of its own (here ETOOMANYREFS:
 * more fds of this user in flight than its RLIMIT_NOFILE, which any other process of the
 * user can cause; ENOBUFS and ENOMEM are others) is taken for the server's death:
 * mp__forkserver_request SIGKILLs the live server, and with it every running forkserver
 * child that dies with its parent, the default. */
START_TEST(test_refused_request_kills_no_running_child) {
  T_ASSERT(rev_fs_become_own_user(), "cannot become a user of its own: %s (run it as root)",
           strerror(errno));
  mp_context_t *ctx;
  MP_ASSERT_OK(mp_get_context("forkserver", &ctx));
  mp_process_t *running, *next;
  T_PROC_NEW(&running, ctx, t_pause, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_start(running));
  struct rlimit old, lim;
  T_ASSERT(getrlimit(RLIMIT_NOFILE, &old) == 0, "getrlimit");
  lim = old;
  lim.rlim_cur = 256;
  T_ASSERT(setrlimit(RLIMIT_NOFILE, &lim) == 0, "setrlimit: %s", strerror(errno));
  int hold[2];
  rev_fs_fds_in_flight(hold, 400);
  T_PROC_NEW(&next, ctx, t_return7, NULL, 0, NULL);
  int rc = mp_process_start(next);
  char error[512];
  snprintf(error, sizeof error, "%s", mp_last_error());
  close(hold[0]);
  close(hold[1]);
  setrlimit(RLIMIT_NOFILE, &old);
  mp_test_sleep(0.5 * mp_test_slowdown()); /* a child dying with its server is dead by now */
  bool alive = mp_process_is_alive(running);
  if (rc == 0)
    mp_test_join_code(next, 10.0);
  MP_ASSERT_OK(mp_process_kill(running));
  int code = mp_test_join_code(running, 10.0);
  T_PROC_CLOSE(next);
  T_PROC_CLOSE(running);
  T_ASSERT(alive,
           "a running forkserver child died (exit code %d) because another start's request "
           "could not be sent (%s: %s)",
           code, mp_err_name(rc), error);
  T_ASSERT(rc == -ETOOMANYREFS && strstr(error, "could not be sent to the fork server"),
           "the request was not refused for the fds in flight, the case was not made: %s (%s)",
           mp_err_name(rc), error);
}
END_TEST

/* The fork server holds one fd per running child (its socket, for STATUS). Where it cannot
 * receive one more (its RLIMIT_NOFILE, the program's when it was started, which the program
 * may raise since), spare_taken() drops the spare's "taken" record whose fd was cut off: the
 * spare stays a spare in the server's list and no new one is forked for it, so once two such
 * starts have happened every later start waits, in its read of READY, for ever (until one of
 * those children ends), rather than failing. */
#define REV_FS_STARTS 90
static int rev_fs_progress[2] = {-1, -1};

static int rev_fs_start_past_server_fds(void) {
  mp_context_t *ctx;
  if (mp_get_context("forkserver", &ctx) < 0)
    return 2;
  struct rlimit old, lim;
  if (getrlimit(RLIMIT_NOFILE, &old) < 0)
    return 3;
  lim = old;
  lim.rlim_cur = 64;
  static mp_process_t *procs[REV_FS_STARTS];
  /* The server starts with the lower limit; the program raises its own again. */
  if (setrlimit(RLIMIT_NOFILE, &lim) < 0 ||
      mp_process_create(&procs[0], ctx, t_pause, NULL, 0, NULL) < 0 ||
      mp_process_start(procs[0]) < 0 || setrlimit(RLIMIT_NOFILE, &old) < 0)
    return 4;
  for (int k = 1; k < REV_FS_STARTS; k++) {
    if (mp_process_create(&procs[k], ctx, t_pause, NULL, 0, NULL) < 0)
      return 5;
    int rc = mp_process_start(procs[k]);
    if (rc < 0)
      return 0; /* an error is an answer */
    if (write(rev_fs_progress[1], &k, sizeof k) != sizeof k)
      return 6;
  }
  return 0;
}

START_TEST(test_start_past_server_fd_limit_returns) {
  T_ASSERT(pipe2(rev_fs_progress, O_CLOEXEC | O_NONBLOCK) == 0, "pipe");
  int rc = mp_test_run_in_fork(rev_fs_start_past_server_fds, 30.0);
  close(rev_fs_progress[1]);
  int k, started = 0;
  while (read(rev_fs_progress[0], &k, sizeof k) == sizeof k)
    started = k;
  close(rev_fs_progress[0]);
  T_ASSERT(rc != -1000,
           "forkserver start %d of %d did not return in 30 s (the server's RLIMIT_NOFILE "
           "64: its spares' \"taken\" records lost)",
           started + 1, REV_FS_STARTS);
  T_INT_EQ(rc, 0);
}
END_TEST

/* The fork server's own fd limit reached (lowered from outside, after its start-up, which
 * raises it to the hard limit): a start is refused with -EMFILE and returns, every running
 * child stays the server's (a SIGTERM is reported as such), and a child's end makes room for
 * the next start. With the limit under even the slots the server holds free, a start still
 * fails and the server lives on with its children: such a request, its socket cut off, ended
 * a server without spares as if the program had gone (refuse_without_spare). */
#define FS_LIMIT_MAX 80
static int fs_limit_report[2] = {-1, -1};

static int fs_limit_fail(const char *fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  ssize_t sent =
      write(fs_limit_report[1], text, len < (int)sizeof text ? len : (int)sizeof text - 1);
  (void)sent; /* unsent, the test still fails: "exit 1" */
  return 1;
}

/* Sets the fork server's soft fd limit to files. */
static bool fs_limit_set(pid_t server, rlim_t files) {
  struct rlimit lim;
  if (prlimit(server, RLIMIT_NOFILE, NULL, &lim) < 0)
    return false;
  lim.rlim_cur = files;
  return prlimit(server, RLIMIT_NOFILE, &lim, NULL) == 0;
}

static int fs_limit_server_fds(void) {
  static mp_process_t *procs[FS_LIMIT_MAX];
  mp_context_t *ctx;
  int n = 0, rc = 0, server;
  char state;
  if (mp_get_context("forkserver", &ctx) < 0 ||
      mp_process_create(&procs[n], ctx, t_pause, NULL, 0, NULL) < 0 ||
      mp_process_start(procs[n]) < 0)
    return fs_limit_fail("the first start failed: %s", mp_last_error());
  n++;
  if (!mp_test_proc_state(mp_process_pid(procs[0]), &state, &server)) /* its parent */
    return fs_limit_fail("no /proc entry of the first child");
  if (!fs_limit_set(server, 32))
    return fs_limit_fail("prlimit of the server: %s", strerror(errno));
  while (n < FS_LIMIT_MAX - 1) {
    if (mp_process_create(&procs[n], ctx, t_pause, NULL, 0, NULL) < 0)
      return fs_limit_fail("create: %s", mp_last_error());
    if ((rc = mp_process_start(procs[n])) < 0)
      break;
    n++;
  }
  if (rc != -EMFILE || n < 4)
    return fs_limit_fail("after %d starts, a start at the server's fd limit gave %s (%s), "
                         "not EMFILE",
                         n, mp_err_name(rc), mp_last_error());
  /* Under every fd the server holds (4: poll's fds), after it took every spare's report:
   * a request's socket is cut off. */
  if (!fs_limit_set(server, 4))
    return fs_limit_fail("prlimit of the server: %s", strerror(errno));
  rc = mp_process_start(procs[n]);
  mp_test_sleep(0.5 * mp_test_slowdown()); /* a child dying with its server is dead by now */
  for (int k = 0; k < n; k++)
    if (mp_process_is_alive(procs[k]) != 1)
      return fs_limit_fail("running child %d died after a start whose request the server "
                           "could not receive (%s: %s)",
                           k, mp_err_name(rc), mp_last_error());
  if (rc == 0)
    return fs_limit_fail("a start succeeded with the server's fd limit 4");
  /* The limit back: the children are still the server's, and one's end makes room. */
  if (!fs_limit_set(server, 32))
    return fs_limit_fail("prlimit of the server: %s", strerror(errno));
  int code = 0;
  if (mp_process_terminate(procs[1]) < 0 || mp_process_join(procs[1], 10.0) < 0 ||
      mp_process_exitcode(procs[1], &code) < 0 || code != -SIGTERM)
    return fs_limit_fail("a child terminated at the limit ended with %d, not -SIGTERM: the "
                         "server lost its socket (%s)",
                         code, mp_last_error());
  if (mp_process_start(procs[n]) < 0)
    return fs_limit_fail("once a child ended, a start failed: %s", mp_last_error());
  return 0; /* _exit: the server's end (hang-up) ends its children */
}

START_TEST(test_server_fd_limit_refuses_start) {
  T_ASSERT(pipe2(fs_limit_report, O_CLOEXEC | O_NONBLOCK) == 0, "pipe");
  int rc = mp_test_run_in_fork(fs_limit_server_fds, 30.0);
  close(fs_limit_report[1]);
  char text[512] = "";
  ssize_t len = read(fs_limit_report[0], text, sizeof text - 1);
  text[len > 0 ? len : 0] = '\0';
  close(fs_limit_report[0]);
  T_ASSERT(rc != -1000, "a forkserver start at the server's fd limit did not return in 30 s");
  T_ASSERT(rc == 0, "%s (exit %d)", text, rc);
}
END_TEST

/* A start whose READY arrives but whose pidfd cannot be taken in (no fd left in the program
 * at that moment: another thread took the last ones, or the limit was lowered) failed with
 * MP_EMSGSIZE (mp__recv_record refused the cut-off record), while the child had taken
 * over and ran the target: started, unwatched, unjoinable, and not stopped. The window is
 * made wide with a large argument; a thread lowers RLIMIT_NOFILE once the start's socket
 * pair exists. The child, which runs its target once READY is sent, is now kept: the start
 * succeeds, the child is watched as without pidfds (its sentinel is its socket, no pidfd)
 * and joins with its exit code. Under LIBMP_NO_PIDFD=1 READY carries no pidfd to cut off:
 * there the same start and join under the lowered limit are checked. */
static int t_mark_and_return(void *arg, size_t size) {
  (void)size;
  int fd = open((const char *)arg, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  if (fd >= 0)
    close(fd);
  return 0;
}

static struct {
  int watched; /* the fd number the start's socket pair takes first */
  struct rlimit low;
  _Atomic int lowered;
} rev_fs_limit;

static void *rev_fs_lower_limit(void *unused) {
  (void)unused;
  for (double until = mp_test_now() + 10; mp_test_now() < until;)
    if (fcntl(rev_fs_limit.watched, F_GETFD) >= 0) {
      setrlimit(RLIMIT_NOFILE, &rev_fs_limit.low);
      rev_fs_limit.lowered = 1;
      break;
    }
  return NULL;
}

#define REV_FS_ARG (64u << 20)

START_TEST(test_failed_ready_leaves_no_child_running) {
  mp_context_t *ctx;
  MP_ASSERT_OK(mp_get_context("forkserver", &ctx));
  mp_process_t *first, *p;
  T_PROC_NEW(&first, ctx, t_return7, NULL, 0, NULL); /* the server runs before the case */
  MP_ASSERT_OK(mp_process_start(first));
  T_INT_EQ(mp_test_join_code(first, 10.0), 7);
  char *arg = calloc(1, REV_FS_ARG);
  T_ASSERT(arg != NULL, "calloc");
  char *marker = arg;
  snprintf(marker, 128, "/tmp/libmp-rev-fs-ran-%d", (int)getpid());
  unlink(marker);
  T_PROC_NEW(&p, ctx, t_mark_and_return, arg, REV_FS_ARG, NULL);
  struct rlimit old;
  T_ASSERT(getrlimit(RLIMIT_NOFILE, &old) == 0, "getrlimit");
  rev_fs_limit.low = old;
  rev_fs_limit.watched = dup(0);
  T_ASSERT(rev_fs_limit.watched >= 0, "dup");
  close(rev_fs_limit.watched);
  /* Every fd below the socket pair's is taken: none is left for the pidfd, while the fds the
   * start sends (the arena's) still go. */
  rev_fs_limit.low.rlim_cur = (rlim_t)rev_fs_limit.watched;
  pthread_t thread;
  T_ASSERT(pthread_create(&thread, NULL, rev_fs_lower_limit, NULL) == 0, "pthread_create");
  int rc = mp_process_start(p);
  char error[512];
  snprintf(error, sizeof error, "%s", mp_last_error());
  pthread_join(thread, NULL);
  setrlimit(RLIMIT_NOFILE, &old);
  T_ASSERT(rev_fs_limit.lowered, "the start's socket pair was never seen");
  int sentinel = rc == 0 ? mp_process_sentinel(p) : -1;
  bool pidfd_cut = sentinel >= 0 && pid_of_pidfd(sentinel) == 0;
  int joined = rc == 0 ? mp_process_join(p, 10.0 * mp_test_slowdown()) : 0, code = -1;
  if (rc == 0 && joined == 0)
    mp_process_exitcode(p, &code);
  bool ran = false;
  for (double until = mp_test_now() + 3 * mp_test_slowdown(); !ran && mp_test_now() < until;
       mp_test_sleep(0.01))
    ran = access(marker, F_OK) == 0;
  unlink(marker);
  T_PROC_CLOSE(p);
  free(arg);
  T_ASSERT(rc == 0 || !ran,
           "mp_process_start failed (%s: %s), yet its child took over and ran the target",
           mp_err_name(rc), error);
  T_ASSERT(rc == 0, "mp_process_start failed (%s: %s) with no fd left for its pidfd",
           mp_err_name(rc), error);
  T_ASSERT(pidfd_cut || getenv("LIBMP_NO_PIDFD"),
           "the start's pidfd was received (sentinel %d): the case was not made", sentinel);
  T_ASSERT(joined == 0 && code == 0 && ran,
           "the child started with its pidfd cut off: join %s, exit code %d, target %s",
           mp_err_name(joined), code, ran ? "ran" : "never ran");
}
END_TEST

/* The READY a forkserver child sends was not checked (mp__request_run): where it cannot go
 * (here ETOOMANYREFS, its pidfd attached while the user has more fds in flight than the
 * child's RLIMIT_NOFILE and the child has no CAP_SYS_RESOURCE), the child ran the target
 * anyway, and the program's start read nothing but the child's end: with a target that
 * does not return, mp_process_start() waited for ever. Now the child answers ERROR and
 * exits before its target: the start fails with -ETOOMANYREFS. The program runs as a user
 * of its own (no capabilities, its fds in flight its own), the server with a limit of 256;
 * the program puts fds in flight while the child reads a large argument, after the spare
 * told the server it took it. */

static int rev_fs_hold[2] = {-1, -1};

/* Puts fds in flight once the child reads the request: the program's end of the start's
 * socket then holds fewer bytes unread than it did. The spare reported that it took the
 * request (its socket in flight) before it reads it, and READY, with the pidfd, comes after
 * the argument: only READY meets the flood. */
static void *rev_fs_flood_in_flight(void *unused) {
  (void)unused;
  int most = 0;
  for (double until = mp_test_now() + 10 * mp_test_slowdown(); mp_test_now() < until;) {
    int unread = 0;
    if (ioctl(rev_fs_limit.watched, SIOCOUTQ, &unread) == 0 && unread > 0 && unread < most) {
      rev_fs_fds_in_flight(rev_fs_hold, 1000);
      rev_fs_limit.lowered = 1;
      break;
    }
    most = unread > most ? unread : most;
    mp_test_sleep(0.00002);
  }
  return NULL;
}

/* As a user of its own, starts the fork server with RLIMIT_NOFILE 256, which its spares and
 * children keep; this process's own limit is then its hard one, so that fds in flight past
 * 256 refuse only the children's sends: 0, 2 (no user, no context) or 3 (no start). */
static int rev_fs_server_at_256(mp_context_t **ctx) {
  mp_process_t *first;
  struct rlimit old, low;
  if (!rev_fs_become_own_user() || getrlimit(RLIMIT_NOFILE, &old) < 0 ||
      mp_get_context("forkserver", ctx) < 0)
    return 2;
  low = old;
  low.rlim_cur = 256;
  old.rlim_cur = old.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &low) < 0 ||
      mp_process_create(&first, *ctx, t_return7, NULL, 0, NULL) < 0 ||
      mp_process_start(first) < 0 || setrlimit(RLIMIT_NOFILE, &old) < 0 ||
      mp_process_join(first, 10.0) < 0)
    return 3;
  return 0;
}

static int rev_fs_start_with_unsent_ready(void) {
  mp_context_t *ctx;
  mp_process_t *p;
  int setup = rev_fs_server_at_256(&ctx);
  if (setup != 0)
    return setup;
  char *arg = calloc(1, REV_FS_ARG);
  if (!arg || mp_process_create(&p, ctx, t_pause, arg, REV_FS_ARG, NULL) < 0)
    return 4;
  rev_fs_limit.watched = dup(0);
  close(rev_fs_limit.watched);
  pthread_t thread;
  if (pthread_create(&thread, NULL, rev_fs_flood_in_flight, NULL) != 0)
    return 5;
  int rc = mp_process_start(p);
  pthread_join(thread, NULL);
  /* Without pidfds (LIBMP_NO_PIDFD=1) READY carries no fd, and the flood does not stop it:
   * there the start succeeds (its child dies with the server as this process _exits). */
  bool pidfds = getenv("LIBMP_NO_PIDFD") == NULL;
  if (rc == 0)
    return pidfds ? 6 : 0; /* 6: READY went, the case was not made */
  /* The child's refusal, target unrun, not a failure of the program's own sends. */
  if (!pidfds || rc != -ETOOMANYREFS || !strstr(mp_last_error(), "could not send READY")) {
    fprintf(stderr, "the start failed otherwise: %s: %s\n", mp_err_name(rc), mp_last_error());
    return 7;
  }
  return 0;
}

START_TEST(test_unsent_ready_start_returns) {
  int rc = mp_test_run_in_fork(rev_fs_start_with_unsent_ready, 15.0);
  T_ASSERT(rc != 2, "cannot become a user of its own (run it as root), or no forkserver");
  T_ASSERT(rc != 6, "the child's READY was sent: the case was not made");
  T_ASSERT(rc != 7, "the start failed, but not with the child's ETOOMANYREFS on READY (or "
                    "failed without pidfds, where READY carries no fd)");
  T_ASSERT(rc != -1000, "mp_process_start() did not return in 15 s: the forkserver child "
                        "could not send READY (ETOOMANYREFS) and ran its target anyway");
  T_INT_EQ(rc, 0);
}
END_TEST

/* A spare whose report that it took a request cannot carry the request's socket (here
 * ETOOMANYREFS: the user's fds in flight past the spare's RLIMIT_NOFILE) exited as if the
 * server had gone: the start read its child's end, asked once more, and said the child
 * "ended before it took over". Now the spare answers ERROR, so the start fails with
 * -ETOOMANYREFS and says why, and the server serves the next start. */
static int rev_fs_start_with_unreported_take(void) {
  mp_context_t *ctx;
  mp_process_t *p;
  int setup = rev_fs_server_at_256(&ctx);
  if (setup != 0)
    return setup;
  if (mp_process_create(&p, ctx, t_return7, NULL, 0, NULL) < 0)
    return 4;
  int hold[2];
  rev_fs_fds_in_flight(hold, 1000);
  int rc = mp_process_start(p);
  close(hold[0]);
  close(hold[1]);
  if (rc != -ETOOMANYREFS || !strstr(mp_last_error(), "could not report its start")) {
    fprintf(stderr, "the start gave %s: %s\n", mp_err_name(rc), mp_last_error());
    return 6;
  }
  int code = 0;
  if (mp_process_start(p) < 0 || mp_process_join(p, 10.0) < 0 ||
      mp_process_exitcode(p, &code) < 0)
    return 7;
  return code == 7 ? 0 : 8;
}

START_TEST(test_unreported_take_fails_start) {
  int rc = mp_test_run_in_fork(rev_fs_start_with_unreported_take, 15.0);
  T_ASSERT(rc != 2, "cannot become a user of its own (run it as root), or no forkserver");
  T_ASSERT(rc != 6, "the start whose spare could not report it did not fail with "
                    "ETOOMANYREFS and its reason (stderr says what it gave)");
  T_ASSERT(rc != 7 && rc != 8, "the next start after the refused one failed (%d)", rc);
  T_INT_EQ(rc, 0);
}
END_TEST

static Suite *process_suite(void) {
  Suite *s = suite_create("process");
  TCase *tc;

  tc = mp_test_tcase(s, "exit", 20);
  tcase_add_loop_test(tc, test_exit_codes, 0, N_METHODS);
  tcase_add_loop_test(tc, test_return_value_low_8_bits, 0, N_METHODS);
  tcase_add_loop_test(tc, test_join_timeout_terminate, 0, N_METHODS);
  tcase_add_loop_test(tc, test_kill, 0, N_METHODS);
  tcase_add_loop_test(tc, test_signal_finished_child, 0, N_METHODS);
  tcase_add_loop_test(tc, test_state, 0, N_METHODS);

  tc = mp_test_tcase(s, "identity", 20);
  tcase_add_loop_test(tc, test_names, 0, N_METHODS);
  tcase_add_loop_test(tc, test_child_renames_itself, 0, N_METHODS);
  tcase_add_test(tc, test_main_process);
  tcase_add_loop_test(tc, test_child_identity, 0, N_METHODS);
  tcase_add_loop_test(tc, test_parent_pidfd, 0, N_METHODS);

  tc = mp_test_tcase(s, "observe", 20);
  tcase_add_loop_test(tc, test_sentinel, 0, N_METHODS);
  tcase_add_loop_test(tc, test_active_children, 0, N_METHODS);
  tcase_add_loop_test(tc, test_concurrent_join, 0, N_METHODS);
  tcase_add_loop_test(tc, test_active_children_while_closing, 0, N_METHODS);

  tc = mp_test_tcase(s, "child", 30);
  tcase_add_loop_test(tc, test_globals, 0, N_METHODS);
  tcase_add_loop_test(tc, test_big_argument, 0, N_METHODS);
  tcase_add_loop_test(tc, test_env_not_leaked, 0, N_METHODS);
  tcase_add_loop_test(tc, test_status_taken_by_program, 0, N_METHODS);
  tcase_add_test(tc, test_malformed_child_marker);
  tcase_add_loop_test(tc, test_fds_not_inherited, 0, N_METHODS);
  tcase_add_loop_test(tc, test_cleared_environment, 0, N_METHODS);
  tcase_add_loop_test(tc, test_many_processes, 0, N_METHODS);
  tcase_add_loop_test(tc, test_many_signalled_at_once, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forkserver_killed, 0, N_METHODS);
  tcase_add_loop_test(tc, test_child_outlives_starting_thread, 0, N_METHODS);

#if FAULTS_COUNTED
  tc = mp_test_tcase(s, "faults", 30);
  tcase_add_loop_test(tc, test_fork_start_faults, 0, 1); /* METHODS[0]: "fork" only */
#endif

  tc = mp_test_tcase(s, "lifetime", 30);
  tcase_add_loop_test(tc, test_exit_terminates_daemon_joins_others, 0, N_METHODS);
  tcase_add_loop_test(tc, test_killed_parent_takes_children, 0, N_METHODS);
  tcase_add_loop_test(tc, test_no_die_with_parent, 0, N_METHODS);
  tcase_add_loop_test(tc, test_parent_gone_before_first_look, 0, N_METHODS);
  tcase_add_loop_test(tc, test_join_parent_ended_unreaped, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forked_copy_joins_parent_ended_unreaped, 0, N_METHODS);

  tc = mp_test_tcase(s, "executable", 20);
  tcase_add_loop_test(tc, test_exec_nonexistent, 0, N_METHODS);
  tcase_add_loop_test(tc, test_exec_not_libmp, 0, N_METHODS);
  tcase_add_loop_test(tc, test_exec_other_build, 0, N_METHODS);
  tcase_add_loop_test(tc, test_exec_other_build_big_argument, 0, N_METHODS);

  tc = mp_test_tcase(s, "module", 20);
  tcase_add_loop_test(tc, test_module_target, 0, N_METHODS);
  tcase_add_loop_test(tc, test_module_replaced_on_disk, 0, N_METHODS);

  tc = mp_test_tcase(s, "bad-input", 20);
  tcase_add_test(tc, test_null_arguments);
  tcase_add_loop_test(tc, test_state_errors, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forked_copy_cannot_wait_for_sibling, 0, N_METHODS);
  tcase_add_test(tc, test_current_process_errors);
  tcase_add_loop_test(tc, test_close_twice, 0, N_METHODS);
  tcase_add_loop_test(tc, test_heap_target_refused, 0, N_METHODS);
  tcase_add_loop_test(tc, test_stack_target_refused, 0, N_METHODS);

  tc = mp_test_tcase(s, "review rev-fs", 60);
  tcase_add_test(tc, test_refused_request_kills_no_running_child);
  tcase_add_test(tc, test_start_past_server_fd_limit_returns);
  tcase_add_test(tc, test_server_fd_limit_refuses_start);
  tcase_add_test(tc, test_failed_ready_leaves_no_child_running);
  tcase_add_test(tc, test_unsent_ready_start_returns);
  tcase_add_test(tc, test_unreported_take_fails_start);

  tc = mp_test_tcase(s, "cpu", 10);
  tcase_add_test(tc, test_cpu_count_affinity);
  tcase_add_test(tc, test_cpu_count_cgroup_v1_quota);
  tcase_add_test(tc, test_cpu_count_cgroup_v2_quota);
  return s;
}

MP_TEST_MAIN(process_suite)
