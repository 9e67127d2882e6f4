/* The check of exercise 01: ex01_run() under each start method. */
#include "check.h"

int ex01_report(const ex01_job_t *job) {
  int rc = mp_barrier_wait(job->together, 10);
  long me = rc < 0 ? -1 : (long)getpid();
  /* seen[2i] = the child's pid (-1: the others did not come), seen[2i+1] = the process that
   * started it (not getppid(): a forkserver child's kernel parent is the server). */
  mp_process_t *parent = mp_parent_process();
  long parent_pid = parent ? mp_process_pid(parent) : 0;
  if (mp_array_set_long(job->seen, 2 * (size_t)job->index, me) < 0 ||
      mp_array_set_long(job->seen, 2 * (size_t)job->index + 1, parent_pid) < 0)
    return MP_EINVAL;
  return rc < 0 ? rc : 0;
}

static void part(mp_context_t *ctx) {
  uint64_t rng = check_seed();
  int n = 3 + (int)(check_next(&rng) % 4);
  ex01_job_t jobs[EX01_MAX_CHILDREN];
  int exitcodes[EX01_MAX_CHILDREN];
  mp_barrier_t *together;
  mp_array_t *seen;
  CHECK_SETUP(mp_barrier_create(&together, n, NULL, NULL));
  CHECK_SETUP(mp_array_create(&seen, 'l', 2 * (size_t)n, NULL, NULL));
  for (int i = 0; i < n; i++) {
    jobs[i] = (ex01_job_t){together, seen, i, (unsigned)check_next(&rng)};
    exitcodes[i] = -1000;
  }

  int rc = ex01_run(ctx, n, jobs, exitcodes);
  if (rc < 0)
    check_fail("ex01_run returned %s: start %d children, then join them", check_why(rc), n);
  long pids[2 * EX01_MAX_CHILDREN];
  CHECK_SETUP(mp_array_read(seen, 0, 2 * (size_t)n, pids));
  int reported = 0, apart = 0;
  for (int i = 0; i < n; i++) {
    int expected = __builtin_popcount(jobs[i].value);
    if (pids[2 * i] == 0)
      continue;
    reported++;
    if (pids[2 * i] == -1)
      apart++;
    else if (pids[2 * i] == (long)getpid() || pids[2 * i + 1] != (long)getpid())
      check_fail("job %d ran in process %ld started by %ld: it must run in a child of this "
                 "process (%d)",
                 i, pids[2 * i], pids[2 * i + 1], (int)getpid());
    for (int j = 0; j < i; j++)
      if (pids[2 * i] > 0 && pids[2 * i] == pids[2 * j])
        check_fail("jobs %d and %d ran in the same process %ld: one process per job", j, i,
                   pids[2 * i]);
    if (exitcodes[i] != expected)
      check_fail("job %d (value 0x%08x): exit code %d, expected %d (the bits set in value)", i,
                 jobs[i].value, exitcodes[i], expected);
  }
  if (reported < n)
    check_fail("%d of %d children did not call ex01_report(): every child must call it first",
               n - reported, n);
  if (apart)
    check_fail("%d children waited in vain for the others: start every child before you join "
               "any, so that they run at the same time",
               apart);
  CHECK_SETUP(mp_barrier_close(together));
  CHECK_SETUP(mp_array_close(seen));
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_all_methods, "ex01_run: a child per job, all at once", part);
  return check_done("ex_01_processes");
}
