/*
 * What the checks of the exercises share: a failure counter, the start methods to run an
 * exercise under, a seed that changes from run to run (so no fixed answer passes), and
 * joining a child without ever hanging on it. Header-only: each check is one program.
 */
#ifndef CHECK_H
#define CHECK_H

#include "exercises.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int check_failures;
static const char *check_method = "";

/* Prints one problem, under the start method being checked, and counts it. */
__attribute__((format(printf, 1, 2))) static inline void check_fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("  FAIL [%s] ", check_method);
  vprintf(fmt, ap);
  printf("\n");
  fflush(stdout);
  va_end(ap);
  check_failures++;
}

/* A libmp call of the check itself: its failure is no fault of the exercise. */
#define CHECK_SETUP(call)                                                                      \
  do {                                                                                         \
    int check_rc_ = (call);                                                                    \
    if (check_rc_ < 0) {                                                                       \
      printf("check: %s failed: %s (%s)\n", #call, mp_err_name(check_rc_), mp_last_error());   \
      exit(2);                                                                                 \
    }                                                                                          \
  } while (0)

/* The start methods an exercise runs under: every one, unless the command line names some
 * (./ex_05_pipes_and_queues spawn). */
__attribute__((unused)) static const char *const check_all_methods[] = {"fork", "spawn",
                                                                        "forkserver", NULL};

/* What an exercise's error code means to its author: the skeletons return MP_ENOSYS where
 * the work is still to be written. */
static inline const char *check_why(int rc) {
  static char text[512];
  if (rc == MP_ENOSYS)
    return "MP_ENOSYS, the skeleton's: not written yet";
  snprintf(text, sizeof text, "%s%s%s", mp_err_name(rc), *mp_last_error() ? ": " : "",
           mp_last_error());
  return text;
}

/* Calls of a check's helper made in the check's own process. A helper that a child must
 * call counts its calls here: in a child the count goes up in the child's copy (or, under
 * spawn, in another program), so a count above 0 in the parent says the work was done in
 * the parent instead. */
__attribute__((unused)) static int check_calls_here;

/* A seed of this run: the answers change from run to run. */
static inline uint64_t check_seed(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ((uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20)) * 0x9E3779B97F4A7C15ull;
}

/* The next of a sequence of pseudo-random numbers (splitmix64). */
static inline uint64_t check_next(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Seconds left until deadline (a CLOCK_MONOTONIC time from check_now()), at least 0.05: a
 * check waits for many things against one deadline, so a wrong exercise costs the
 * deadline once, not once per thing. */
static inline double check_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
static inline double check_left(double deadline) {
  double left = deadline - check_now();
  return left > 0.05 ? left : 0.05;
}

/* Joins proc within timeout seconds, or kills it; returns its exit code, and sets
 * *timed_out. Frees the process object. */
static inline int check_join(mp_process_t *proc, double timeout, int *timed_out) {
  int code = 0;
  *timed_out = mp_process_join(proc, timeout) == MP_ETIMEDOUT;
  if (*timed_out) {
    CHECK_SETUP(mp_process_kill(proc));
    CHECK_SETUP(mp_process_join(proc, MP_FOREVER));
  }
  CHECK_SETUP(mp_process_exitcode(proc, &code));
  CHECK_SETUP(mp_process_close(proc));
  return code;
}

/* Pools also run on threads. */
__attribute__((unused)) static const char *const check_pool_contexts[] = {
    "fork", "spawn", "forkserver", "thread", NULL};

/* Runs one part of a check, labelled (a start method, or what the part is about): part(ctx)
 * reports its failures with check_fail(). */
static inline void check_part(const char *label, const char *what, void (*part)(mp_context_t *),
                              mp_context_t *ctx) {
  int before = check_failures;
  check_method = label;
  printf("%-11s %s\n", label, what);
  fflush(stdout);
  part(ctx);
  if (check_failures == before)
    printf("  ok\n");
  fflush(stdout);
}

/* Runs a part under every method named on the command line (by default those of
 * defaults). */
static inline void check_methods(int argc, char **argv, const char *const *defaults,
                                 const char *what, void (*part)(mp_context_t *)) {
  const char *const *methods = argc > 1 ? (const char *const *)argv + 1 : defaults;
  for (; *methods; methods++) {
    mp_context_t *ctx;
    CHECK_SETUP(mp_get_context(*methods, &ctx));
    check_part(*methods, what, part, ctx);
  }
}

/* The last line and the exit status that meson test reads. */
static inline int check_done(const char *exercise) {
  if (check_failures) {
    printf("%s: %d problem%s left (see FAIL above). Edit docs/tutorial/exercises/%s.c.\n",
           exercise, check_failures, check_failures == 1 ? "" : "s", exercise);
    return 1;
  }
  printf("%s: every check passed.\n", exercise);
  return 0;
}

#endif /* CHECK_H */
