/*
 * Shared helpers of libmp's Check suites.
 *
 * Assertions: MP_ASSERT_OK / MP_ASSERT_ERR check a libmp return code and print its name, its
 * text and the thread's mp_last_error() when they fail; T_ASSERT / T_INT_EQ / T_STR_EQ are
 * plain assertions. All of them first run mp_test_cleanup(), which kills and reaps every
 * process the test registered (T_PROC_NEW / mp_test_track / mp_test_track_pid), so a failing
 * test does not leave children behind (Check's failure path is _exit(), which skips any
 * teardown).
 *
 * Start methods: METHODS[] is indexed by the _i of tcase_add_loop_test(tc, fn, 0, 3).
 */
#ifndef MP_TEST_H
#define MP_TEST_H

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mp.h"

/* Failure messages are cut to their buffers on purpose (clang has no such warning). */
#ifndef __clang__
#pragma GCC diagnostic ignored "-Wformat-truncation"
#endif

#define MP_TEST_UNUSED __attribute__((unused))

static const char *const METHODS[] MP_TEST_UNUSED = {"fork", "spawn", "forkserver"};
#define N_METHODS 3

/* ------------------------------------------------------------------------------------- */
/* Registry of what a failing test must clean up.                                          */

#define MP_TEST_MAX_TRACKED 512
static mp_process_t *mp_test_procs[MP_TEST_MAX_TRACKED] MP_TEST_UNUSED;
static pid_t mp_test_pids[64] MP_TEST_UNUSED;
static void (*mp_test_hook)(void) MP_TEST_UNUSED;

static inline void mp_test_track(mp_process_t *p) {
  for (size_t i = 0; i < MP_TEST_MAX_TRACKED; i++) {
    if (mp_test_procs[i] == NULL) {
      mp_test_procs[i] = p;
      return;
    }
  }
}

static inline void mp_test_untrack(mp_process_t *p) {
  for (size_t i = 0; i < MP_TEST_MAX_TRACKED; i++) {
    if (mp_test_procs[i] == p) mp_test_procs[i] = NULL;
  }
}

/* A raw pid (a grandchild, say) to SIGKILL and reap if the test fails. */
static inline void mp_test_track_pid(pid_t pid) {
  for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++) {
    if (mp_test_pids[i] == 0) {
      mp_test_pids[i] = pid;
      return;
    }
  }
}

/* A raw pid the test has reaped itself: nothing left to kill. */
static inline void mp_test_untrack_pid(pid_t pid) {
  for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++) {
    if (mp_test_pids[i] == pid)
      mp_test_pids[i] = 0;
  }
}

/* An extra cleanup step (leaving a cgroup, say) to run if the test fails. */
static inline void mp_test_set_hook(void (*fn)(void)) { mp_test_hook = fn; }

static inline void mp_test_sleep(double seconds);

/* Kills and reaps everything registered. Safe to call more than once. */
static inline void mp_test_cleanup(void) {
  for (size_t i = 0; i < MP_TEST_MAX_TRACKED; i++) {
    mp_process_t *p = mp_test_procs[i];
    if (p == NULL) continue;
    mp_test_procs[i] = NULL;
    if (mp_process_pid(p) > 0) {
      (void)mp_process_kill(p);
      (void)mp_process_join(p, 5.0);
    }
    (void)mp_process_close(p);
  }
  for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++) {
    if (mp_test_pids[i] > 0) {
      (void)kill(mp_test_pids[i], SIGKILL);
      /* Ours to reap only if it came back to us (we are a subreaper): a short while. */
      for (int tries = 0; tries < 100; tries++) {
        pid_t r = waitpid(mp_test_pids[i], NULL, WNOHANG);
        if (r != 0) break;
        mp_test_sleep(0.01);
      }
      mp_test_pids[i] = 0;
    }
  }
  if (mp_test_hook != NULL) {
    void (*fn)(void) = mp_test_hook;
    mp_test_hook = NULL;
    fn();
  }
}

/* ------------------------------------------------------------------------------------- */
/* Assertions.                                                                             */

#define T_FAIL(...)                                                                        \
  do {                                                                                     \
    char t_msg_[1536];                                                                     \
    snprintf(t_msg_, sizeof t_msg_, __VA_ARGS__);                                          \
    mp_test_cleanup();                                                                     \
    ck_abort_msg("%s", t_msg_);                                                            \
  } while (0)

#define T_ASSERT(cond, ...)                                                                \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      char t_what_[1024];                                                                  \
      snprintf(t_what_, sizeof t_what_, __VA_ARGS__);                                      \
      T_FAIL("assertion '%s' failed: %s (last error: \"%s\")", #cond, t_what_,             \
             mp_last_error());                                                             \
    }                                                                                      \
  } while (0)

#define T_INT_EQ(a, b)                                                                     \
  do {                                                                                     \
    long long t_a_ = (long long)(a), t_b_ = (long long)(b);                                \
    if (t_a_ != t_b_)                                                                      \
      T_FAIL("assertion '%s == %s' failed: %lld != %lld (last error: \"%s\")", #a, #b,     \
             t_a_, t_b_, mp_last_error());                                                 \
  } while (0)

#define T_STR_EQ(a, b)                                                                     \
  do {                                                                                     \
    const char *t_a_ = (a), *t_b_ = (b);                                                   \
    if (t_a_ == NULL || t_b_ == NULL || strcmp(t_a_, t_b_) != 0)                           \
      T_FAIL("assertion '%s == %s' failed: \"%s\" != \"%s\"", #a, #b,                      \
             t_a_ ? t_a_ : "(null)", t_b_ ? t_b_ : "(null)");                              \
  } while (0)

/* rc must be 0. */
#define MP_ASSERT_OK(rc)                                                                   \
  do {                                                                                     \
    int t_rc_ = (rc);                                                                      \
    if (t_rc_ != 0)                                                                        \
      T_FAIL("%s returned %d (%s: %s), expected 0; last error: \"%s\"", #rc, t_rc_,        \
             mp_err_name(t_rc_), mp_strerror(t_rc_), mp_last_error());                     \
  } while (0)

/* rc must be the error code err. */
#define MP_ASSERT_ERR(rc, err)                                                             \
  do {                                                                                     \
    int t_rc_ = (rc), t_err_ = (err);                                                      \
    if (t_rc_ != t_err_)                                                                   \
      T_FAIL("%s returned %d (%s: %s), expected %d (%s); last error: \"%s\"", #rc, t_rc_,  \
             t_rc_ < 0 ? mp_err_name(t_rc_) : "not an error",                              \
             t_rc_ < 0 ? mp_strerror(t_rc_) : "", t_err_, mp_err_name(t_err_),              \
             mp_last_error());                                                             \
  } while (0)

/* ------------------------------------------------------------------------------------- */
/* Small utilities.                                                                        */

static inline double mp_test_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* How much slower than native the suite runs: Check's CK_TIMEOUT_MULTIPLIER, which the
 * valgrind setup sets, stretches the time bounds that tests assert too. */
static inline double mp_test_slowdown(void) {
  const char *text = getenv("CK_TIMEOUT_MULTIPLIER");
  double factor = text ? atof(text) : 1.0;
  return factor >= 1.0 ? factor : 1.0;
}

static inline void mp_test_sleep(double seconds) {
  struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* fn()'s result in a plain fork of the test process, which shares its arena, at most
 * `seconds` (scaled by the slowdown): -SIG if a signal killed it, -1000 if it did not end in
 * time (killed then). */
static inline int mp_test_run_in_fork(int (*fn)(void), double seconds) {
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    alarm(0);
    _exit(fn());
  }
  mp_test_track_pid(pid);
  int status = 0;
  double until = mp_test_now() + seconds * mp_test_slowdown();
  pid_t got;
  while ((got = waitpid(pid, &status, WNOHANG)) == 0 && mp_test_now() < until)
    mp_test_sleep(0.01);
  if (got == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  mp_test_untrack_pid(pid); /* reaped */
  if (got == 0)
    return -1000;
  return WIFSIGNALED(status) ? -WTERMSIG(status) : WEXITSTATUS(status);
}

/* ------------------------------------------------------------------------------------- */
/* A child stopped at chosen instructions (ptrace), to kill it exactly there.              */

/*
 * Forks a child that stops for this process to trace it: 0 in the child, which goes on when
 * the parent steps or detaches it; in the parent, the child's pid once it has stopped, tracked
 * so that a failing test kills and reaps it. Where ptrace is refused (a seccomp profile) the
 * test fails, saying so, rather than passing without its case.
 */
static inline pid_t mp_test_fork_traced(void) {
  pid_t child = fork();
  if (child == 0) {
    if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) != 0)
      _exit(77);
    raise(SIGSTOP);
    return 0;
  }
  T_ASSERT(child > 0, "fork: %s", strerror(errno));
  mp_test_track_pid(child);
  int status;
  T_ASSERT(waitpid(child, &status, 0) == child, "waitpid: %s", strerror(errno));
  T_ASSERT(!WIFEXITED(status) || WEXITSTATUS(status) != 77,
           "ptrace is refused here (PTRACE_TRACEME): this test traces a child");
  T_ASSERT(WIFSTOPPED(status), "the child did not stop for its tracer (status 0x%x)", status);
  return child;
}

/* Runs one instruction of a stopped traced child: false if it did not stop after it (it
 * ended, and is reaped). */
static inline bool mp_test_step(pid_t child) {
  int status;
  if (ptrace(PTRACE_SINGLESTEP, child, NULL, NULL) != 0)
    return false;
  if (waitpid(child, &status, 0) != child)
    return false;
  if (WIFSTOPPED(status))
    return true;
  mp_test_untrack_pid(child);
  return false;
}

/* Steps a traced child until reached(arg) holds after an instruction: true, the child stopped
 * there; false if it ended first or ran 5,000,000 instructions without reaching it. */
static inline bool mp_test_step_until(pid_t child, bool (*reached)(void *), void *arg) {
  for (long steps = 0; steps < 5000000; steps++) {
    if (!mp_test_step(child))
      return false;
    if (reached(arg))
      return true;
  }
  return false;
}

/* Kills a traced child (stopped or not) and reaps it, unless it ended and was reaped. */
static inline void mp_test_end_traced(pid_t child) {
  for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++) {
    if (mp_test_pids[i] == child) {
      (void)kill(child, SIGKILL);
      (void)waitpid(child, NULL, 0);
      mp_test_pids[i] = 0;
    }
  }
}

/* Sends len bytes of buf with n fds (at most MP_TEST_FDS_MAX) in one record; false and
 * errno on failure. */
#define MP_TEST_FDS_MAX 200
static inline bool mp_test_send_fds(int sock, const void *buf, size_t len, const int *fds,
                                    size_t n) {
  union {
    char space[CMSG_SPACE(MP_TEST_FDS_MAX * sizeof(int))];
    struct cmsghdr align;
  } control;
  if (n > MP_TEST_FDS_MAX) {
    errno = EINVAL;
    return false;
  }
  memset(&control, 0, sizeof control);
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = control.space,
                       .msg_controllen = CMSG_SPACE(n * sizeof(int))};
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(n * sizeof(int));
  memcpy(CMSG_DATA(c), fds, n * sizeof(int));
  return sendmsg(sock, &msg, MSG_NOSIGNAL) == (ssize_t)len;
}

/* The state letter ('Z': a zombie) and the parent of process pid, from /proc; false if it
 * has no entry. */
static inline bool mp_test_proc_state(pid_t pid, char *state, int *ppid) {
  char path[64], line[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "re");
  if (!f)
    return false;
  size_t len = fread(line, 1, sizeof line - 1, f);
  fclose(f);
  line[len] = '\0';
  const char *after = strrchr(line, ')');
  return after && sscanf(after + 1, " %c %d", state, ppid) == 2;
}

/* The context of METHODS[i], asserting success. */
static inline mp_context_t *mp_test_ctx(int i) {
  mp_context_t *ctx = NULL;
  MP_ASSERT_OK(mp_get_context(METHODS[i], &ctx));
  T_ASSERT(ctx != NULL, "mp_get_context(%s) gave NULL", METHODS[i]);
  return ctx;
}

/* Creates a process and registers it for cleanup. */
#define T_PROC_NEW(pp, ctx, target, arg, size, name)                                       \
  do {                                                                                     \
    *(pp) = NULL;                                                                          \
    MP_ASSERT_OK(mp_process_create((pp), (ctx), (target), (arg), (size), (name)));        \
    T_ASSERT(*(pp) != NULL, "mp_process_create gave a NULL process");                      \
    mp_test_track(*(pp));                                                                  \
  } while (0)

/* Closes a process and forgets it. */
#define T_PROC_CLOSE(p)                                                                    \
  do {                                                                                     \
    mp_process_t *t_p_ = (p);                                                              \
    MP_ASSERT_OK(mp_process_close(t_p_));                                                  \
    mp_test_untrack(t_p_);                                                                 \
  } while (0)

/* Joins a process (at most timeout seconds) and returns its exit code. */
static inline int mp_test_join_code(mp_process_t *p, double timeout) {
  int code = 12345;
  MP_ASSERT_OK(mp_process_join(p, timeout));
  MP_ASSERT_OK(mp_process_exitcode(p, &code));
  return code;
}

/* Creates and starts a process of METHODS[method] on a copy of arg, registered for cleanup. */
static inline mp_process_t *mp_test_start(int method, mp_target_t target, const void *arg,
                                          size_t size) {
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(method), target, arg, size, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  return p;
}

/* Joins a process (at most timeout seconds), asserts that it exited with 0, and closes it. */
static inline void mp_test_join_ok(mp_process_t *p, double timeout) {
  T_INT_EQ(mp_test_join_code(p, timeout), 0);
  T_PROC_CLOSE(p);
}

/* ------------------------------------------------------------------------------------- */
/* Forged shared memory: what a buggy or hostile process of the program writes.           */

#define MP_TEST_FORGE_MAX 16

/* size bytes to write at `at`, an address in the arena (the same in every process). */
typedef struct {
  void *at;
  size_t size;
  unsigned char bytes[MP_TEST_FORGE_MAX];
} mp_test_forge_t;

/* A child's target: writes the job's bytes at its address. */
MP_TEST_UNUSED static int mp_test_child_writes(void *arg, size_t size) {
  const mp_test_forge_t *job = arg;
  if (size != sizeof *job || job->size > MP_TEST_FORGE_MAX)
    return 90;
  memcpy(job->at, job->bytes, job->size);
  return 0;
}

/* A child of METHODS[method] writes the size bytes of bytes at `at`: joined, asserted to
 * have exited with 0, and the bytes asserted to be there. */
static inline void mp_test_forge(int method, void *at, const void *bytes, size_t size) {
  mp_test_forge_t job = {at, size, {0}};
  T_ASSERT(size <= MP_TEST_FORGE_MAX, "%zu bytes to forge, at most %d", size,
           MP_TEST_FORGE_MAX);
  memcpy(job.bytes, bytes, size);
  mp_test_join_ok(mp_test_start(method, mp_test_child_writes, &job, sizeof job), 30);
  T_ASSERT(memcmp(at, bytes, size) == 0, "the child forged the bytes");
}

/* The offset, in the first span bytes of obj at multiples of step, of the only place that
 * holds the size bytes of bytes (asserted: one, no more). */
static inline size_t mp_test_find_bytes(const void *obj, size_t span, size_t step,
                                        const void *bytes, size_t size) {
  size_t found = SIZE_MAX;
  for (size_t at = 0; at + size <= span; at += step)
    if (memcmp((const char *)obj + at, bytes, size) == 0) {
      T_ASSERT(found == SIZE_MAX, "two places hold the bytes: %zu and %zu", found, at);
      found = at;
    }
  T_ASSERT(found != SIZE_MAX, "the bytes in the object's first %zu", span);
  return found;
}

/* A result of as many bytes as the argument's first byte asks for (none for an empty
 * argument), each the argument's byte at i (cyclically) plus i. */
MP_TEST_UNUSED static int mp_test_sized_echo(const void *arg, size_t size, void *result,
                                             size_t *result_size) {
  const unsigned char *a = arg;
  size_t want = size ? a[0] : 0;
  if (want > *result_size)
    return mp_task_fail("%zu bytes do not fit %zu", want, *result_size);
  for (size_t i = 0; i < want; i++)
    ((unsigned char *)result)[i] = (unsigned char)(a[i % size] + i);
  *result_size = want;
  return 0;
}

#define MP_TEST_APPLIES_MAX 300

/* n applies of mp_test_sized_echo in flight on pool, then each result got and every byte
 * checked. Their sizes, mixed in one stream: arguments of every length a batch's cell holds
 * (0 to 16 bytes, which its copies handle in four ways) and past it (17, 56), results of 0 to
 * 17, 33 and 48 bytes. A result longer than 8 bytes is first asked into 8 (MP_ETOOSMALL, its
 * length told, nothing written, the result kept). Every third is waited for before its get,
 * so that the get finds it done (the path that takes it with one look). seed varies the
 * bytes and pairs the sizes differently. */
static inline void mp_test_apply_sizes(mp_pool_t *pool, int n, int seed) {
  enum { RESULT_MAX = 48, ARG_SIZES = 19, WANTS = 20 };
  static mp_async_result_t *ars[MP_TEST_APPLIES_MAX];
  static unsigned char args[MP_TEST_APPLIES_MAX][56];
  size_t arg_sizes[ARG_SIZES];
  unsigned char wants[WANTS];
  T_ASSERT(n <= MP_TEST_APPLIES_MAX, "%d applies, at most %d", n, MP_TEST_APPLIES_MAX);
  for (int i = 0; i < WANTS; i++) {
    if (i < ARG_SIZES)
      arg_sizes[i] = i < 18 ? (size_t)i : 56;
    wants[i] = (unsigned char)(i < 18 ? i : i == 18 ? 33 : 48);
  }
  for (int k = 0; k < n; k++) {
    for (size_t i = 0; i < sizeof args[k]; i++)
      args[k][i] = (unsigned char)(k + i + seed);
    args[k][0] = wants[(k + seed) % WANTS];
    MP_ASSERT_OK(mp_pool_apply_async(pool, mp_test_sized_echo, args[k],
                                     arg_sizes[k % ARG_SIZES], RESULT_MAX, NULL, &ars[k]));
  }
  for (int k = 0; k < n; k++) {
    unsigned char r[RESULT_MAX], small[8] = {0};
    size_t size = arg_sizes[k % ARG_SIZES], want = size ? args[k][0] : 0, len = 99;
    if (k % 3 == 0)
      MP_ASSERT_OK(mp_async_result_wait(ars[k], 30));
    if (want > sizeof small) {
      MP_ASSERT_ERR(mp_async_result_get(ars[k], small, sizeof small, &len, 30), MP_ETOOSMALL);
      T_INT_EQ(len, want);
      for (size_t i = 0; i < sizeof small; i++)
        T_ASSERT(small[i] == 0, "apply %d: byte %zu written into a buffer too small", k, i);
    }
    MP_ASSERT_OK(mp_async_result_get(ars[k], r, sizeof r, &len, 30));
    T_INT_EQ(len, want);
    for (size_t i = 0; i < want; i++)
      T_ASSERT(r[i] == (unsigned char)(args[k][i % size] + i), "apply %d, byte %zu", k, i);
    mp_async_result_free(ars[k]);
  }
}

/* Runs misuse() in a forked child whose stderr is a pipe, and asserts that the child died of
 * SIGABRT after writing a line that contains want. */
static inline void mp_test_expect_abort(void (*misuse)(void), const char *want) {
  int out[2];
  T_ASSERT(pipe(out) == 0, "pipe: %s", strerror(errno));
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    signal(SIGABRT, SIG_DFL);
    dup2(out[1], STDERR_FILENO);
    close(out[0]);
    misuse();
    _exit(0); /* not detected */
  }
  mp_test_track_pid(pid);
  close(out[1]);
  char text[4096];
  size_t got = 0;
  ssize_t n;
  while (got < sizeof text - 1 && (n = read(out[0], text + got, sizeof text - 1 - got)) > 0)
    got += (size_t)n;
  text[got] = '\0';
  close(out[0]);
  int status = 0;
  T_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
  for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++)
    if (mp_test_pids[i] == pid)
      mp_test_pids[i] = 0; /* reaped: not to be killed */
  T_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
           "the misuse ended with status %#x, not SIGABRT; it wrote: %s", status, text);
  T_ASSERT(strstr(text, want) != NULL, "stderr lacks \"%s\": %s", want, text);
}

/*
 * Checked setup of every test case: the test process inherits the Check runner's SIGTERM,
 * SIGINT and SIGALRM handlers (the SIGTERM one kills the test's whole process group), and a
 * child started with "fork" would inherit them in turn, so that terminating the child
 * would kill the test. A program's own process has the default dispositions: restore them.
 */
static inline void mp_test_setup(void) {
  signal(SIGTERM, SIG_DFL);
  signal(SIGINT, SIG_DFL);
  signal(SIGALRM, SIG_DFL);
}

/* ------------------------------------------------------------------------------------- */
/* A holder in another pid namespace.                                                      */

/* A plain fork C enters a new pid namespace (unshare, as a sandboxing worker may) and forks
 * its init G; G forks holders until one's pid there names no process in this namespace's
 * /proc; that one runs hold() and sleeps. */
static struct {
  pid_t c, g;
  void (*hold)(void);
} mp_test_ns MP_TEST_UNUSED = {-1, -1, NULL};

/* Kills the namespace (its init: every process in it dies with it) and reaps C. */
static inline void mp_test_ns_kill(void) {
  if (mp_test_ns.g > 0)
    kill(mp_test_ns.g, SIGKILL);
  if (mp_test_ns.c > 0) {
    waitpid(mp_test_ns.c, NULL, 0);
    mp_test_untrack_pid(mp_test_ns.c);
  }
  mp_test_ns.g = mp_test_ns.c = -1;
}

/* Starts the holder, writes its pid in its namespace; false if unshare is refused (it needs
 * CAP_SYS_ADMIN). mp_test_ns_kill ends it (a failing test's cleanup does too). */
static inline bool mp_test_ns_start(void (*hold)(void), pid_t *holder_ns_pid) {
  int p[2];
  T_INT_EQ(pipe2(p, O_CLOEXEC), 0);
  mp_test_ns.hold = hold;
  mp_test_ns.c = fork();
  T_ASSERT(mp_test_ns.c >= 0, "fork: %s", strerror(errno));
  if (mp_test_ns.c == 0) {
    close(p[0]);
    int32_t g = -1;
    if (unshare(CLONE_NEWPID) == 0)
      g = fork();
    if (g != 0) {
      (void)!write(p[1], &g, sizeof g);
      if (g > 0)
        waitpid(g, NULL, 0);
      _exit(0);
    }
    for (int i = 0; i < 20000; i++) { /* G: the namespace's init */
      pid_t h = fork();
      if (h == 0) {
        char path[32];
        snprintf(path, sizeof path, "/proc/%d", (int)getpid());
        if (access(path, F_OK) == 0)
          _exit(3); /* its pid names a process out there: the next one */
        mp_test_ns.hold();
        int32_t me = getpid();
        (void)!write(p[1], &me, sizeof me);
        for (;;)
          pause();
      }
      if (h < 0)
        _exit(4);
      waitpid(h, NULL, 0);
    }
    _exit(5);
  }
  mp_test_track_pid(mp_test_ns.c);
  mp_test_set_hook(mp_test_ns_kill);
  close(p[1]);
  int32_t g = -1, h = -1;
  T_INT_EQ(read(p[0], &g, sizeof g), (ssize_t)sizeof g);
  if (g < 0) {
    close(p[0]);
    mp_test_ns_kill();
    return false;
  }
  mp_test_ns.g = g;
  struct pollfd pfd = {p[0], POLLIN, 0};
  T_ASSERT(poll(&pfd, 1, 10000) == 1, "no holder in the namespace within 10 s");
  T_INT_EQ(read(p[0], &h, sizeof h), (ssize_t)sizeof h);
  close(p[0]);
  *holder_ns_pid = h;
  return true;
}

/* A test case with the setup above and a per-test timeout (seconds), added to s. */
static inline TCase *mp_test_tcase(Suite *s, const char *name, double timeout) {
  TCase *tc = tcase_create(name);
  tcase_add_checked_fixture(tc, mp_test_setup, NULL);
  tcase_set_timeout(tc, timeout);
  suite_add_tcase(s, tc);
  return tc;
}

#define MP_TEST_MAIN(suite_fn)                                                             \
  int main(void) {                                                                         \
    SRunner *sr = srunner_create(suite_fn());                                              \
    srunner_run_all(sr, CK_NORMAL);                                                        \
    int failed = srunner_ntests_failed(sr);                                                \
    srunner_free(sr);                                                                      \
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;                                      \
  }

#endif /* MP_TEST_H */
