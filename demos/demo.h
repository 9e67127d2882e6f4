/*
 * What the teaching demos share: their command line (demo_parse: [method] [size] and the
 * options --help, --csv, --no-chart, --trace FILE), a check of every libmp call that names
 * the call and mp_last_error() on failure, a clock, progress on a terminal, and starting and
 * joining a group of processes. Header-only so that each demo stays one program of one file
 * (with the text charts of chart.h beside it).
 */
#ifndef DEMO_H
#define DEMO_H

#include <mp.h>

#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Runs a libmp call; on a negative code, prints what failed and why, and exits 1. The
 * demos are small programs: a failed call is the end of the lesson. */
#define CHECK(call)                                                                            \
  do {                                                                                         \
    int demo_rc_ = (call);                                                                     \
    if (demo_rc_ < 0) {                                                                        \
      fprintf(stderr, "%s:%d: %s failed: %s (%s)\n", __FILE__, __LINE__, #call,                \
              mp_err_name(demo_rc_), mp_last_error());                                         \
      exit(1);                                                                                 \
    }                                                                                          \
  } while (0)

/* What a demo says about itself in --help. */
typedef struct {
  const char *usage; /* "name [fork|spawn|forkserver] [size]": the positional arguments */
  const char *about; /* what it shows and what its arguments mean, a few lines */
  bool measures;     /* it times something: takes --csv, and draws a chart unless --no-chart */
} demo_info_t;

/* The options of this run, set by demo_parse(). */
static struct {
  FILE *csv;  /* --csv: where demo_csv() writes (the real stdout); NULL without --csv */
  bool chart; /* draw the main figure as a text chart (not with --csv or --no-chart) */
} demo_opt;

/* --trace FILE: records what every process does (docs/trace.md); the file is written when
 * the demo exits normally. A demo that cannot trace says why and exits 2. */
static inline void demo_trace_start(const char *path) {
  int rc = mp_trace_start(path);
  if (rc < 0) {
    fprintf(stderr, "--trace %s: %s: %s\n", path, mp_strerror(rc), mp_last_error());
    exit(2);
  }
}

static inline void demo_help(const demo_info_t *info) {
  printf("usage: %s%s [--trace FILE]\n\n%s\n", info->usage,
         info->measures ? " [--csv] [--no-chart]" : "", info->about);
  printf("\noptions:\n"
         "  --help        this text\n");
  if (info->measures)
    printf("  --csv         the measurements as CSV on stdout (for demos/plots); the\n"
           "                explanations go to stderr\n"
           "  --no-chart    no text chart of the main figure\n");
  printf("  --trace FILE  record what every process does to FILE\n");
  exit(0);
}

/* Takes the options out of argv (updating *argc), leaving the positional arguments in
 * argv[1 ..]. --help prints the help and exits 0; a wrong option exits 2. With --csv, the
 * program's stdout (and its children's) becomes stderr, and only demo_csv() writes to the
 * real stdout: `demo --csv > data.csv` gets the data alone. */
static inline void demo_parse(int *argc, char **argv, const demo_info_t *info) {
  const char *trace = NULL;
  bool csv = false;
  int kept = 1;
  demo_opt.chart = true;
  for (int i = 1; i < *argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "-h") || !strcmp(a, "--help"))
      demo_help(info);
    else if (info->measures && !strcmp(a, "--csv"))
      csv = true;
    else if (info->measures && !strcmp(a, "--no-chart"))
      demo_opt.chart = false;
    else if (!strcmp(a, "--trace") && i + 1 < *argc)
      trace = argv[++i];
    else if (a[0] == '-' && a[1] != '\0') {
      fprintf(stderr, "%s: unknown option \"%s\"\nusage: %s (--help says more)\n", argv[0], a,
              info->usage);
      exit(2);
    } else
      argv[kept++] = argv[i];
  }
  *argc = kept;
  argv[kept] = NULL;
  if (trace)
    demo_trace_start(trace);
  if (csv) {
    fflush(stdout);
    int fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
    demo_opt.csv = fd < 0 ? NULL : fdopen(fd, "w");
    if (!demo_opt.csv || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) {
      perror("--csv");
      exit(1);
    }
    demo_opt.chart = false;
  }
}

/* One line of CSV, printf-style, when --csv was given; nothing otherwise. */
__attribute__((format(printf, 1, 2))) static inline void demo_csv(const char *fmt, ...) {
  if (!demo_opt.csv)
    return;
  va_list ap;
  va_start(ap, fmt);
  vfprintf(demo_opt.csv, fmt, ap);
  va_end(ap);
  fputc('\n', demo_opt.csv);
  fflush(demo_opt.csv);
}

/* The context of argv[1] ("fork", "spawn" or "forkserver"), or of the default start method
 * (mp_get_start_method(), which MP_START_METHOD sets) when there is no argv[1]. */
static inline mp_context_t *demo_context(int argc, char **argv, const demo_info_t *info) {
  mp_context_t *ctx = NULL;
  const char *method = argc > 1 ? argv[1] : NULL;
  /* "thread" is a context for pools only; these demos start processes. */
  if (mp_get_context(method, &ctx) < 0 || (method && !strcmp(method, "thread"))) {
    fprintf(stderr, "%s: %s\nusage: %s\n", argv[0],
            ctx ? "\"thread\" starts no process: it is a context for pools only"
                : mp_last_error(),
            info->usage);
    exit(2);
  }
  return ctx;
}

/* A positive count from argv[i], or fallback when absent. */
static inline long demo_count(int argc, char **argv, int i, long fallback) {
  if (argc <= i)
    return fallback;
  char *end;
  long n = strtol(argv[i], &end, 10);
  if (n < 1 || *end != '\0') {
    fprintf(stderr, "%s: expected a positive number, got \"%s\"\n", argv[0], argv[i]);
    exit(2);
  }
  return n;
}

/* The same, at most most: a demo's fixed tables have room for that many. */
static inline long demo_count_at_most(int argc, char **argv, int i, long fallback, long most) {
  long n = demo_count(argc, argv, i, fallback);
  return n < most ? n : most;
}

static inline double demo_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Progress of a long piece of work: call it with done = 0 first, then as the work goes on,
 * and with done = total at the end. Once the work has taken a second it shows
 * "what: done/total" on stderr, if stderr is a terminal (never in a pipe or a log), and the
 * last call wipes it. */
static inline void demo_progress(const char *what, long done, long total) {
  static double started, shown;
  static bool visible;
  double now = demo_now();
  if (done == 0) {
    started = now;
    shown = 0;
  }
  if (!isatty(STDERR_FILENO))
    return;
  if (done >= total) {
    if (visible)
      fprintf(stderr, "\r\033[K");
    visible = false;
  } else if (now - started >= 1.0 && now - shown >= 0.2) {
    /* The cursor goes back to the start of the line: what the demo prints next (a row
     * of its table, longer than this) writes over it. */
    fprintf(stderr, "\r\033[K%s: %ld/%ld\r", what, done, total);
    shown = now;
    visible = true;
  }
}

/* The median of n values (n >= 1), which it sorts: v[0] is then their min. */
static inline int demo_cmp_double_(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
static inline double demo_median(double *v, size_t n) {
  qsort(v, n, sizeof v[0], demo_cmp_double_);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The load average of the last minute (0 if unknown): other programs running take cores
 * away from a measurement. */
static inline double demo_load(void) {
  double load = 0;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f) {
    if (fscanf(f, "%lf", &load) != 1)
      load = 0;
    fclose(f);
  }
  return load;
}

/* Starts n processes of target, each with its own copy of the size bytes at
 * args + i * size, into procs[0 .. n). */
static inline void demo_start(mp_process_t **procs, int n, mp_context_t *ctx,
                              mp_target_t target, const void *args, size_t size) {
  for (int i = 0; i < n; i++) {
    CHECK(mp_process_create(&procs[i], ctx, target, (const char *)args + (size_t)i * size, size,
                            NULL));
    CHECK(mp_process_start(procs[i]));
  }
}

/* Joins (at most timeout seconds each: a demo never hangs) and frees n processes, and
 * returns how many did not exit with 0. */
static inline int demo_join(mp_process_t **procs, int n, double timeout) {
  int failed = 0;
  for (int i = 0; i < n; i++) {
    int code;
    if (mp_process_join(procs[i], timeout) == MP_ETIMEDOUT) {
      fprintf(stderr, "%s did not end within %.0f s: killed\n", mp_process_name(procs[i]),
              timeout);
      CHECK(mp_process_kill(procs[i]));
      CHECK(mp_process_join(procs[i], MP_FOREVER));
    }
    CHECK(mp_process_exitcode(procs[i], &code));
    failed += code != 0;
    CHECK(mp_process_close(procs[i]));
  }
  return failed;
}

#endif /* DEMO_H */
