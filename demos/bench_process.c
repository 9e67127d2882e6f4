/* bench rows of the process layer: a child's whole life under each start method, against
 * the bare fork()/posix_spawn() and waitpid() it wraps. */
#include "bench.h"

#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* ================================ process rows ================================ */

/* What both sides of a process row need: the libmp context, and for the bare spawn the
 * command line that re-executes this program as a child that returns at once. */
typedef struct {
  mp_context_t *ctx;
  char **bare_argv;
} process_state_t;

static int return_zero(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

/* A whole child's life as a user writes it: create, start, join, check, close. */
static void libmp_process_once(void *state) {
  process_state_t *ps = state;
  mp_process_t *proc;
  int exitcode;
  int rc;

  if ((rc = mp_process_create(&proc, ps->ctx, return_zero, NULL, 0, NULL)) < 0)
    bench_die_mp("mp_process_create", rc);
  if ((rc = mp_process_start(proc)) < 0)
    bench_die_mp("mp_process_start", rc);
  if ((rc = mp_process_join(proc, MP_FOREVER)) < 0)
    bench_die_mp("mp_process_join", rc);
  if ((rc = mp_process_exitcode(proc, &exitcode)) < 0)
    bench_die_mp("mp_process_exitcode", rc);
  if (exitcode != 0) {
    fprintf(stderr, "bench: a libmp child exited with %d instead of 0\n", exitcode);
    exit(1);
  }
  if ((rc = mp_process_close(proc)) < 0)
    bench_die_mp("mp_process_close", rc);
}

/* The baselines check the child's status too, as the libmp side checks its exit code. */
static void reap(pid_t pid) {
  int status;

  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      bench_die_sys("waitpid", errno);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "bench: a bare child ended with wait status %#x instead of 0\n", status);
    exit(1);
  }
}

static void bare_fork_once(void *state) {
  (void)state;
  pid_t pid = fork();

  if (pid < 0)
    bench_die_sys("fork", errno);
  if (pid == 0)
    _exit(0); /* not exit(): the child must not run the parent's atexit handlers */
  reap(pid);
}

static void bare_spawn_once(void *state) {
  process_state_t *ps = state;
  pid_t pid;
  int err = posix_spawn(&pid, ps->bare_argv[0], NULL, NULL, ps->bare_argv, environ);

  if (err != 0)
    bench_die_sys("posix_spawn", err);
  reap(pid);
}

/*
 * The process rows differ only in the start method and the bare equivalent. One untimed
 * operation of each side comes first: "forkserver" starts its server on first use, and every
 * path faults in its code and data once; the rows time the steady state, which is what a
 * program that starts many children pays.
 */
static void run_process_row(const bench_config_t *cfg, const char *method, bench_op_t bare_op,
                            int default_iterations, process_state_t *state,
                            bench_result_t *result) {
  double ns[2], faults[2];
  int rc;

  if ((rc = mp_get_context(method, &state->ctx)) < 0)
    bench_die_mp("mp_get_context", rc);
  libmp_process_once(state);
  bare_op(state);
  bench_pair_faults(cfg, default_iterations, libmp_process_once, bare_op, state, ns, faults);
  result->libmp = ns[0] / 1e3;
  result->baseline = ns[1] / 1e3;
  result->faults = true;
  result->libmp_faults = faults[0];
  result->baseline_faults = faults[1];
}

static void row_process_fork(const bench_config_t *cfg, bench_result_t *result) {
  process_state_t state = {0};
  run_process_row(cfg, "fork", bare_fork_once, 100, &state, result);
}

static void row_process_spawn(const bench_config_t *cfg, bench_result_t *result) {
  /* The path the kernel resolves /proc/self/exe to, so that the bare spawn looks the
   * program up as an ordinary path, as a spawn of the running executable does. */
  static char exe[PATH_MAX];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe);

  if (len < 0)
    bench_die_sys("readlink /proc/self/exe", errno);
  if ((size_t)len == sizeof exe)
    bench_die_sys("readlink /proc/self/exe", ENAMETOOLONG);
  exe[len] = '\0';

  char *bare_argv[] = {exe, BARE_CHILD_ARG, NULL};
  process_state_t state = {.bare_argv = bare_argv};
  run_process_row(cfg, "spawn", bare_spawn_once, 25, &state, result);
}

/* A forkserver child is a fork, made by another process: the bare fork is its floor. */
static void row_process_forkserver(const bench_config_t *cfg, bench_result_t *result) {
  process_state_t state = {0};
  run_process_row(cfg, "forkserver", bare_fork_once, 100, &state, result);
}

static const bench_row_t process_rows[] = {
    {"process.fork", "us/op", row_process_fork},
    {"process.spawn", "us/op", row_process_spawn},
    {"process.forkserver", "us/op", row_process_forkserver},
};

const bench_group_t bench_process_group = BENCH_GROUP(process_rows);
