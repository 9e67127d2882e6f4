/* Exercise 01, a solution: one process per job, started together, then joined. */
#include "exercises.h"

static int worker(void *arg, size_t size) {
  const ex01_job_t *job = arg;
  if (size != sizeof *job || ex01_report(job) < 0)
    return 100;
  return __builtin_popcount(job->value);
}

int ex01_run(mp_context_t *ctx, int n, const ex01_job_t *jobs, int *exitcodes) {
  mp_process_t *procs[EX01_MAX_CHILDREN];
  int rc = 0, started;
  if (n < 0 || n > EX01_MAX_CHILDREN)
    return MP_EINVAL;
  /* Start them all first: a join right after each start would run them one by one. */
  for (started = 0; started < n; started++) {
    rc = mp_process_create(&procs[started], ctx, worker, &jobs[started], sizeof jobs[started],
                           NULL);
    if (rc < 0)
      break;
    rc = mp_process_start(procs[started]);
    if (rc < 0) {
      mp_process_close(procs[started]);
      break;
    }
  }
  for (int i = 0; i < started; i++) {
    int jrc = mp_process_join(procs[i], MP_FOREVER);
    if (jrc == 0)
      jrc = mp_process_exitcode(procs[i], &exitcodes[i]);
    if (jrc < 0 && rc == 0)
      rc = jrc;
    mp_process_close(procs[i]);
  }
  return rc;
}
