/*
 * Exercise 01: your first processes (docs/tutorial/01-processes-and-threads.md).
 *
 * Write the parts marked TODO(student), then check:
 *   meson test -C build ex_01_processes --print-errorlogs
 * (or run ./build/docs/tutorial/exercises/ex_01_processes [fork|spawn|forkserver]).
 */
#include "exercises.h"

/* The work of one child: its argument bytes are one ex01_job_t. */
static int worker(void *arg, size_t size) {
  const ex01_job_t *job = arg;
  (void)size;
  (void)job;
  /* TODO(student): call ex01_report(job) first (return 100 if it fails), then return the
   * number of bits set in job->value: that is the child's exit code. */
  return 0;
}

int ex01_run(mp_context_t *ctx, int n, const ex01_job_t *jobs, int *exitcodes) {
  (void)ctx;
  (void)n;
  (void)jobs;
  (void)exitcodes;
  (void)worker;
  /* TODO(student): create one process per job (mp_process_create with ctx, worker and
   * &jobs[i], sizeof jobs[i] as its argument bytes) and start it; once all are started,
   * join each (mp_process_join), store its exit code in exitcodes[i]
   * (mp_process_exitcode) and close it (mp_process_close). Return 0, or the first error. */
  return MP_ENOSYS;
}
