/* The check of exercise 05: consumers of a Queue that stop at a poison pill and report
 * over a Pipe. */
#include "check.h"

#define CONSUMERS 3
#define ITEMS 300

static void part(mp_context_t *ctx) {
  uint64_t rng = check_seed();
  mp_queue_t *work;
  mp_conn_t *from[CONSUMERS], *to[CONSUMERS];
  mp_process_t *procs[CONSUMERS];
  long expected = 0;
  CHECK_SETUP(mp_queue_create(&work, 0));
  for (int i = 0; i < CONSUMERS; i++) {
    CHECK_SETUP(mp_pipe(false, &from[i], &to[i]));
    ex05_consumer_t arg = {work, to[i]};
    CHECK_SETUP(mp_process_create(&procs[i], ctx, ex05_consumer, &arg, sizeof arg, NULL));
    CHECK_SETUP(mp_process_start(procs[i]));
    /* The child has its copy: without closing ours, its death would be no end of file. */
    CHECK_SETUP(mp_conn_close(to[i]));
  }
  for (int i = 0; i < ITEMS; i++) {
    int x = (int)(check_next(&rng) % 1000);
    expected += (long)x * x;
    CHECK_SETUP(mp_queue_put(work, &x, sizeof x, 10));
  }
  int rc = ex05_finish(work, CONSUMERS);
  if (rc < 0)
    check_fail("ex05_finish returned %s", check_why(rc));
  long total = 0;
  int reported = 0;
  double deadline = check_now() + 5;
  for (int i = 0; i < CONSUMERS; i++) {
    long sum;
    size_t len;
    rc = mp_conn_recv(from[i], &sum, sizeof sum, &len, check_left(deadline));
    if (rc == MP_ETIMEDOUT)
      check_fail("consumer %d sent nothing within 5 s: does it stop at the poison pill "
                 "(EX05_PILL), and does ex05_finish put one pill for each consumer?",
                 i);
    else if (rc == MP_EEOF)
      check_fail("consumer %d ended without sending its sum over its pipe", i);
    else if (rc == MP_ETOOSMALL || (rc == 0 && len != sizeof sum))
      check_fail("consumer %d sent %zu bytes, expected one long (%zu bytes)", i, len,
                 sizeof sum);
    else if (rc < 0)
      check_fail("receiving from consumer %d: %s (%s)", i, mp_err_name(rc), mp_last_error());
    else {
      total += sum;
      reported++;
      if (mp_conn_poll(from[i], 0.2) == 1 &&
          mp_conn_recv(from[i], &sum, sizeof sum, &len, 0) == 0)
        check_fail("consumer %d sent more than one message: send the sum once, at the end", i);
    }
  }
  for (int i = 0; i < CONSUMERS; i++) {
    int timed_out, code = check_join(procs[i], check_left(deadline + 2), &timed_out);
    if (timed_out)
      check_fail("consumer %d still ran 7 s after the last item (killed): it never took a pill",
                 i);
    else if (code != 0)
      check_fail("consumer %d exited with %d, expected 0", i, code);
    CHECK_SETUP(mp_conn_close(from[i]));
  }
  if (reported == CONSUMERS && total != expected)
    check_fail("the consumers' sums add up to %ld, expected %ld (the squares of the %d items)",
               total, expected, ITEMS);
  int left = mp_queue_qsize(work);
  if (left > 0)
    check_fail("%d messages were left in the queue: each consumer takes exactly one pill",
               left);
  CHECK_SETUP(mp_queue_free(work));
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_all_methods,
                "ex05_consumer, ex05_finish: 3 consumers, 300 items, a pill each", part);
  return check_done("ex_05_pipes_and_queues");
}
