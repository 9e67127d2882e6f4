/*
 * bench: libmp's benchmark program.
 *
 * Each row times one libmp operation and the bare system calls that do the same job, in the
 * same run, and prints both per-op costs and their ratio (libmp / baseline, lower is better).
 * The machine this runs on is shared and noisy: absolute times drift from run to run, the
 * ratio of two measurements taken side by side drifts much less. So a row runs several
 * rounds, alternates which side goes first from round to round, and keeps each side's best
 * round: noise only ever adds time, so the minimum is the closest estimate of the cost.
 *
 * A new row is one function that fills a bench_result_t, plus one line in rows[].
 *
 * Usage: bench [--csv] [--only PREFIX] [--iterations N] [--rounds N]
 */
#include <mp.h>

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The argument that makes this program return at once: the posix_spawn baseline's child. */
#define BARE_CHILD_ARG "--bare-child"

#define DEFAULT_ROUNDS 11

typedef struct {
  int iterations; /* operations per round and side; 0 keeps each row's own default */
  int rounds;
} bench_config_t;

/* Per-op costs, in the row's unit. */
typedef struct {
  double libmp;
  double baseline;
} bench_result_t;

typedef struct {
  const char *name;
  const char *unit;
  void (*run)(const bench_config_t *cfg, bench_result_t *result);
} bench_row_t;

/* One operation of one side of a row. It exits the program when it fails: a number measured
 * over failed operations would be meaningless. */
typedef void (*bench_op_t)(void *state);

/* ================================ failures ================================ */

static void die_mp(const char *call, int rc) {
  fprintf(stderr, "bench: %s failed: %s (%s): %s\n", call, mp_err_name(rc), mp_strerror(rc),
          mp_last_error());
  exit(1);
}

static void die_sys(const char *call, int err) {
  fprintf(stderr, "bench: %s failed: %s\n", call, strerror(err));
  exit(1);
}

/* ================================ timing ================================ */

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/*
 * Runs `iterations` calls of each side per round, for cfg->rounds rounds, and stores each
 * side's best per-op time in nanoseconds. The side that goes first alternates, so neither
 * always inherits the caches, the CPU frequency or the pending reaping the other left behind.
 */
static void bench_pair(const bench_config_t *cfg, int default_iterations, bench_op_t libmp_op,
                       bench_op_t baseline_op, void *state, double *libmp_ns,
                       double *baseline_ns) {
  int iterations = cfg->iterations > 0 ? cfg->iterations : default_iterations;
  bench_op_t ops[2] = {libmp_op, baseline_op};
  double best[2] = {HUGE_VAL, HUGE_VAL};

  for (int round = 0; round < cfg->rounds; round++) {
    for (int turn = 0; turn < 2; turn++) {
      int side = turn ^ (round & 1);
      double start = now_ns();
      for (int i = 0; i < iterations; i++)
        ops[side](state);
      double per_op = (now_ns() - start) / iterations;
      if (per_op < best[side])
        best[side] = per_op;
    }
  }
  *libmp_ns = best[0];
  *baseline_ns = best[1];
}

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
    die_mp("mp_process_create", rc);
  if ((rc = mp_process_start(proc)) < 0)
    die_mp("mp_process_start", rc);
  if ((rc = mp_process_join(proc, MP_FOREVER)) < 0)
    die_mp("mp_process_join", rc);
  if ((rc = mp_process_exitcode(proc, &exitcode)) < 0)
    die_mp("mp_process_exitcode", rc);
  if (exitcode != 0) {
    fprintf(stderr, "bench: a libmp child exited with %d instead of 0\n", exitcode);
    exit(1);
  }
  if ((rc = mp_process_close(proc)) < 0)
    die_mp("mp_process_close", rc);
}

/* The baselines check the child's status too, as the libmp side checks its exit code. */
static void reap(pid_t pid) {
  int status;

  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR)
      die_sys("waitpid", errno);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fprintf(stderr, "bench: a bare child ended with wait status %#x instead of 0\n", status);
    exit(1);
  }
}

static void bare_fork_once(void *state) {
  (void)state;
  pid_t pid = fork();

  if (pid < 0)
    die_sys("fork", errno);
  if (pid == 0)
    _exit(0); /* not exit(): the child must not run the parent's atexit handlers */
  reap(pid);
}

static void bare_spawn_once(void *state) {
  process_state_t *ps = state;
  pid_t pid;
  int err = posix_spawn(&pid, ps->bare_argv[0], NULL, NULL, ps->bare_argv, environ);

  if (err != 0)
    die_sys("posix_spawn", err);
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
  double libmp_ns, baseline_ns;
  int rc;

  if ((rc = mp_get_context(method, &state->ctx)) < 0)
    die_mp("mp_get_context", rc);
  libmp_process_once(state);
  bare_op(state);
  bench_pair(cfg, default_iterations, libmp_process_once, bare_op, state, &libmp_ns,
             &baseline_ns);
  result->libmp = libmp_ns / 1e3;
  result->baseline = baseline_ns / 1e3;
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
    die_sys("readlink /proc/self/exe", errno);
  if ((size_t)len == sizeof exe)
    die_sys("readlink /proc/self/exe", ENAMETOOLONG);
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

/* ================================ the table ================================ */

static const bench_row_t rows[] = {
    {"process.fork", "us/op", row_process_fork},
    {"process.spawn", "us/op", row_process_spawn},
    {"process.forkserver", "us/op", row_process_forkserver},
};

#define ROW_COUNT (sizeof rows / sizeof rows[0])

static bool row_selected(const bench_row_t *row, const char *only) {
  return only == NULL || strncmp(row->name, only, strlen(only)) == 0;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: bench [--csv] [--only PREFIX] [--iterations N] [--rounds N]\n"
          "  --csv           print 'row,unit,libmp,baseline,ratio' and one line per row\n"
          "  --only PREFIX   run only the rows whose name starts with PREFIX\n"
          "  --iterations N  operations per round and side, for every row (default: per row)\n"
          "  --rounds N      rounds per row; each side keeps its best (default: %d)\n"
          "rows:",
          DEFAULT_ROUNDS);
  for (size_t i = 0; i < ROW_COUNT; i++)
    fprintf(out, " %s", rows[i].name);
  fprintf(out, "\n");
}

static int parse_count(const char *option, const char *text) {
  char *end;
  long value;

  errno = 0;
  value = text ? strtol(text, &end, 10) : 0;
  if (text == NULL || errno != 0 || end == text || *end != '\0' || value < 1 ||
      value > INT_MAX) {
    fprintf(stderr, "bench: %s needs a whole number of at least 1\n", option);
    usage(stderr);
    exit(2);
  }
  return (int)value;
}

int main(int argc, char **argv) {
  bench_config_t cfg = {.iterations = 0, .rounds = DEFAULT_ROUNDS};
  const char *only = NULL;
  bool csv = false;

  if (argc == 2 && strcmp(argv[1], BARE_CHILD_ARG) == 0)
    return 0;

  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--csv") == 0) {
      csv = true;
    } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      only = argv[++i];
    } else if (strcmp(argv[i], "--iterations") == 0) {
      cfg.iterations = parse_count(argv[i], argv[i + 1]);
      i++;
    } else if (strcmp(argv[i], "--rounds") == 0) {
      cfg.rounds = parse_count(argv[i], argv[i + 1]);
      i++;
    } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else {
      fprintf(stderr, "bench: unknown or incomplete option '%s'\n", argv[i]);
      usage(stderr);
      return 2;
    }
  }

  int name_width = (int)strlen("row");
  int unit_width = (int)strlen("unit");
  size_t selected = 0;
  for (size_t i = 0; i < ROW_COUNT; i++) {
    if (!row_selected(&rows[i], only))
      continue;
    selected++;
    if ((int)strlen(rows[i].name) > name_width)
      name_width = (int)strlen(rows[i].name);
    if ((int)strlen(rows[i].unit) > unit_width)
      unit_width = (int)strlen(rows[i].unit);
  }
  if (selected == 0) {
    fprintf(stderr, "bench: no row starts with '%s'\n", only);
    usage(stderr);
    return 2;
  }

  if (csv) {
    printf("row,unit,libmp,baseline,ratio\n");
  } else {
    printf("libmp and its bare baseline, interleaved over %d round%s; each side's best round.\n"
           "ratio = libmp / baseline, lower is better.\n\n",
           cfg.rounds, cfg.rounds == 1 ? "" : "s");
    printf("%-*s  %-*s  %10s  %10s  %6s\n", name_width, "row", unit_width, "unit", "libmp",
           "baseline", "ratio");
  }

  for (size_t i = 0; i < ROW_COUNT; i++) {
    if (!row_selected(&rows[i], only))
      continue;
    /* Written out before each row, so a person sees rows as they finish and a forked child
     * never holds a copy of unwritten output. */
    fflush(stdout);

    bench_result_t result;
    rows[i].run(&cfg, &result);
    double ratio = result.libmp / result.baseline;
    if (csv)
      printf("%s,%s,%.3f,%.3f,%.3f\n", rows[i].name, rows[i].unit, result.libmp,
             result.baseline, ratio);
    else
      printf("%-*s  %-*s  %10.2f  %10.2f  %6.2f\n", name_width, rows[i].name, unit_width,
             rows[i].unit, result.libmp, result.baseline, ratio);
  }
  return 0;
}
