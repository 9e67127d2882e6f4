/*
 * bench: libmp's benchmark program (bench.h says how rows are measured).
 *
 * Usage: bench [--csv] [--only PREFIX] [--iterations N] [--rounds N]
 */
#include "bench.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

void bench_pair(const bench_config_t *cfg, int default_iterations, bench_op_t libmp_op,
                bench_op_t baseline_op, void *state, double *libmp_ns, double *baseline_ns) {
  int iterations = cfg->iterations > 0 ? cfg->iterations : default_iterations;
  bench_op_t ops[2] = {libmp_op, baseline_op};
  double best[2] = {HUGE_VAL, HUGE_VAL};

  for (int round = 0; round < cfg->rounds; round++) {
    for (int turn = 0; turn < 2; turn++) {
      int side = turn ^ (round & 1);
      double start = bench_now_ns();
      for (int i = 0; i < iterations; i++)
        ops[side](state);
      double per_op = (bench_now_ns() - start) / iterations;
      if (per_op < best[side])
        best[side] = per_op;
    }
  }
  *libmp_ns = best[0];
  *baseline_ns = best[1];
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
          "  --csv           print 'row,unit,libmp,baseline,ratio' and one line per row\n"
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
    printf("row,unit,libmp,baseline,ratio\n");
  } else {
    printf("libmp and its bare baseline, interleaved over %d round%s; each side's best round.\n"
           "ratio = libmp / baseline, lower is better.\n\n",
           cfg.rounds, cfg.rounds == 1 ? "" : "s");
    printf("%-*s  %-*s  %10s  %10s  %6s\n", name_width, "row", unit_width, "unit", "libmp",
           "baseline", "ratio");
  }

  for (size_t i = 0; i < row_count; i++) {
    if (!row_selected(all_rows[i], only))
      continue;
    /* Written out before each row, so a person sees rows as they finish and a forked child
     * never holds a copy of unwritten output. */
    fflush(stdout);

    bench_result_t result;
    all_rows[i]->run(&cfg, &result);
    double ratio = result.libmp / result.baseline;
    if (csv)
      printf("%s,%s,%.3f,%.3f,%.3f\n", all_rows[i]->name, all_rows[i]->unit, result.libmp,
             result.baseline, ratio);
    else
      printf("%-*s  %-*s  %10.2f  %10.2f  %6.2f\n", name_width, all_rows[i]->name, unit_width,
             all_rows[i]->unit, result.libmp, result.baseline, ratio);
  }
  return 0;
}
