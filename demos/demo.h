/*
 * What the teaching demos share: the start method argument, a check of every libmp call
 * that names the call and mp_last_error() on failure, a clock, and starting and joining a
 * group of processes. Header-only so that each demo stays one program of one file.
 */
#ifndef DEMO_H
#define DEMO_H

#include <mp.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* The context of argv[1] ("fork", "spawn" or "forkserver"), or of the default start method
 * (mp_get_start_method(), which MP_START_METHOD sets) when there is no argv[1]. */
static inline mp_context_t *demo_context(int argc, char **argv, const char *usage) {
  mp_context_t *ctx;
  if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    printf("usage: %s\n", usage);
    exit(0);
  }
  CHECK(mp_get_context(argc > 1 ? argv[1] : NULL, &ctx));
  return ctx;
}

/* A positive count from argv[i], or fallback when absent. */
static inline long demo_count(int argc, char **argv, int i, long fallback) {
  if (argc <= i)
    return fallback;
  long n = strtol(argv[i], NULL, 10);
  if (n < 1) {
    fprintf(stderr, "%s: expected a positive number, got \"%s\"\n", argv[0], argv[i]);
    exit(2);
  }
  return n;
}

static inline double demo_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Starts n processes of target, each with its own copy of the size bytes at
 * args + i * size, into procs[0 .. n). stdout is flushed first: a "fork" child would
 * otherwise inherit the text not yet written, and print it again at its exit. */
static inline void demo_start(mp_process_t **procs, int n, mp_context_t *ctx,
                              mp_target_t target, const void *args, size_t size) {
  fflush(stdout);
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
