/*
 * bench: libmp's benchmark program (bench.h says how rows are measured).
 *
 * Usage: bench [--csv] [--only PREFIX] [--iterations N] [--rounds N]
 */
#include "bench.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#define DEFAULT_ROUNDS 11

/* ================================ failures ================================ */

__attribute__((noreturn)) void bench_die_mp(const char *call, int rc) {
  fprintf(stderr, "bench: %s failed: %s (%s): %s\n", call, mp_err_name(rc), mp_strerror(rc),
          mp_last_error());
  exit(1);
}

__attribute__((noreturn)) void bench_die_sys(const char *call, int err) {
  fprintf(stderr, "bench: %s failed: %s\n", call, strerror(err));
  exit(1);
}

/* ================================ timing ================================ */

double bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

bool bench_spin(int i, double spin_end, bool yield) {
  bench_relax();
  if (i % 64 != 0)
    return true;
  if (bench_now_ns() >= spin_end)
    return false;
  if (yield)
    sched_yield();
  return true;
}

bool bench_one_cpu(void) {
  static int cpus; /* 0: not read yet */
  if (cpus == 0) {
    cpu_set_t set;
    cpus = sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0 ? CPU_COUNT(&set)
                                                                              : 2;
  }
  return cpus == 1;
}

int bench_iterations(const bench_config_t *cfg, int default_iterations) {
  return cfg->iterations > 0 ? cfg->iterations : default_iterations;
}

int bench_pair_side(long long op, int iterations) {
  long long turn = op / iterations; /* two turns a round */
  return (int)((turn & 1) ^ ((turn >> 1) & 1));
}

/* Each side's best per-op time; and, if faults is not NULL, its mean faults per op. */
static void run_pair(const bench_config_t *cfg, int default_iterations, bench_op_t libmp_op,
                     bench_op_t baseline_op, void *state, double ns[2], double faults[2]) {
  int iterations = bench_iterations(cfg, default_iterations);
  bench_op_t ops[2] = {libmp_op, baseline_op};
  double fault_sum[2] = {0, 0};

  ns[0] = ns[1] = HUGE_VAL;
  for (int round = 0; round < cfg->rounds; round++) {
    for (int turn = 0; turn < 2; turn++) {
      int side = bench_pair_side((2LL * round + turn) * iterations, iterations);
      double faults_before = faults ? bench_faults() : 0;
      double start = bench_now_ns();
      for (int i = 0; i < iterations; i++)
        ops[side](state);
      double per_op = (bench_now_ns() - start) / iterations;
      if (faults)
        fault_sum[side] += bench_faults() - faults_before;
      if (per_op < ns[side])
        ns[side] = per_op;
    }
  }
  if (faults)
    for (int side = 0; side < 2; side++)
      faults[side] = fault_sum[side] / ((double)iterations * cfg->rounds);
}

void bench_pair(const bench_config_t *cfg, int default_iterations, bench_op_t libmp_op,
                bench_op_t baseline_op, void *state, double *libmp_ns, double *baseline_ns) {
  double ns[2];
  run_pair(cfg, default_iterations, libmp_op, baseline_op, state, ns, NULL);
  *libmp_ns = ns[0];
  *baseline_ns = ns[1];
}

void bench_pair_faults(const bench_config_t *cfg, int default_iterations, bench_op_t libmp_op,
                       bench_op_t baseline_op, void *state, double ns[2], double faults[2]) {
  run_pair(cfg, default_iterations, libmp_op, baseline_op, state, ns, faults);
}

/* ================================ page faults ================================ */

/* minflt + cminflt of a live process, from /proc/PID/stat (fields 10 and 11); 0 if it is
 * gone. The command name (field 2) may hold spaces: the fields after it follow its ')'. */
static double live_faults(const char *pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%s/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  size_t len = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[len] = '\0';
  char *p = strrchr(buf, ')');
  unsigned long minflt = 0, cminflt = 0;
  if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %lu %lu", &minflt, &cminflt) != 2)
    return 0;
  return (double)minflt + (double)cminflt;
}

double bench_faults(void) {
  struct rusage self, children;
  getrusage(RUSAGE_SELF, &self);
  getrusage(RUSAGE_CHILDREN, &children);
  double total = (double)self.ru_minflt + (double)children.ru_minflt;

  /* The live children of every thread: /proc/self/task/TID/children, pids apart by spaces. */
  DIR *tasks = opendir("/proc/self/task");
  struct dirent *task;
  while (tasks && (task = readdir(tasks)) != NULL) {
    if (task->d_name[0] == '.')
      continue;
    char path[300], pid[32];
    snprintf(path, sizeof path, "/proc/self/task/%s/children", task->d_name);
    FILE *f = fopen(path, "r");
    if (!f)
      continue;
    while (fscanf(f, "%31s", pid) == 1)
      total += live_faults(pid);
    fclose(f);
  }
  if (tasks)
    closedir(tasks);
  return total;
}

/* ================================ the table ================================ */

/* Every group of rows, in the order they run: the layers bottom to top. */
static const bench_group_t *const groups[] = {
    &bench_process_group,     &bench_connection_group,    &bench_queues_group,
    &bench_synchronize_group, &bench_shared_memory_group, &bench_pool_group,
    &bench_trace_group,       &bench_pool_forms_group,
};

#define GROUP_COUNT (sizeof groups / sizeof groups[0])
#define MAX_ROWS 256

static const bench_row_t *all_rows[MAX_ROWS];
static size_t row_count;

static void collect_rows(void) {
  for (size_t g = 0; g < GROUP_COUNT; g++)
    for (size_t r = 0; r < groups[g]->count && row_count < MAX_ROWS; r++)
      all_rows[row_count++] = &groups[g]->rows[r];
}

static bool row_selected(const bench_row_t *row, const char *only) {
  return only == NULL || strncmp(row->name, only, strlen(only)) == 0;
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: bench [--csv] [--only PREFIX] [--iterations N] [--rounds N]\n"
          "  --csv           print CSV: row,unit,libmp,baseline,ratio, then the page\n"
          "                  faults per op of each side (libmp_faults,baseline_faults)\n"
          "  --only PREFIX   run only the rows whose name starts with PREFIX\n"
          "  --iterations N  operations per round and side, for every row (default: per row)\n"
          "  --rounds N      rounds per row; each side keeps its best (default: %d)\n"
          "rows:",
          DEFAULT_ROUNDS);
  for (size_t i = 0; i < row_count; i++)
    fprintf(out, " %s", all_rows[i]->name);
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
  collect_rows();

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
  for (size_t i = 0; i < row_count; i++) {
    if (!row_selected(all_rows[i], only))
      continue;
    selected++;
    if ((int)strlen(all_rows[i]->name) > name_width)
      name_width = (int)strlen(all_rows[i]->name);
    if ((int)strlen(all_rows[i]->unit) > unit_width)
      unit_width = (int)strlen(all_rows[i]->unit);
  }
  if (selected == 0) {
    fprintf(stderr, "bench: no row starts with '%s'\n", only);
    usage(stderr);
    return 2;
  }

  if (csv) {
    printf("row,unit,libmp,baseline,ratio,libmp_faults,baseline_faults\n");
  } else {
    printf("libmp and its bare baseline, interleaved over %d round%s; each side's best round.\n"
           "ratio = libmp / baseline, lower is better. flt/op: minor page faults per op,\n"
           "children included (mean over the rounds), for the rows that count them.\n\n",
           cfg.rounds, cfg.rounds == 1 ? "" : "s");
    printf("%-*s  %-*s  %10s  %10s  %6s  %12s  %12s\n", name_width, "row", unit_width, "unit",
           "libmp", "baseline", "ratio", "libmp flt/op", "base flt/op");
  }

  for (size_t i = 0; i < row_count; i++) {
    if (!row_selected(all_rows[i], only))
      continue;
    /* Written out before each row, so a person sees rows as they finish and a forked child
     * never holds a copy of unwritten output. */
    fflush(stdout);

    bench_result_t result = {0};
    all_rows[i]->run(&cfg, &result);
    double ratio = result.libmp / result.baseline;
    /* The fault columns come after the five first, which stay what they were. */
    char faults[2][32] = {"", ""};
    if (result.faults) {
      snprintf(faults[0], sizeof faults[0], "%.1f", result.libmp_faults);
      snprintf(faults[1], sizeof faults[1], "%.1f", result.baseline_faults);
    }
    if (csv)
      printf("%s,%s,%.3f,%.3f,%.3f,%s,%s\n", all_rows[i]->name, all_rows[i]->unit, result.libmp,
             result.baseline, ratio, faults[0], faults[1]);
    else
      printf("%-*s  %-*s  %10.2f  %10.2f  %6.2f  %12s  %12s\n", name_width, all_rows[i]->name,
             unit_width, all_rows[i]->unit, result.libmp, result.baseline, ratio,
             result.faults ? faults[0] : "-", result.faults ? faults[1] : "-");
  }
  return 0;
}
