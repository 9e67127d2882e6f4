/*
 * Ctrl-C and blocking calls (docs/api.md): a process blocked in a libmp call gets SIGINT.
 * With a handler of the program's, the call returns MP_EINTR promptly; under SIG_DFL the
 * process dies of SIGINT as usual. Under every start method.
 */
#include "mp_test.h"

#include <signal.h>
#include <string.h>

enum {
  CALL_EVENT_WAIT,
  CALL_JOIN,
  CALL_SEMAPHORE,
  CALL_CONDITION,
  CALL_BARRIER,
  CALL_QUEUE_GET,
  CALL_QUEUE_PUT,
  CALL_CONN_POLL,
  CALL_WAIT,
  N_CALLS
};
static const char *const CALLS[] = {
    "mp_event_wait",     "mp_process_join", "mp_semaphore_acquire",
    "mp_condition_wait", "mp_barrier_wait", "mp_queue_get",
    "mp_queue_put",      "mp_conn_poll",    "mp_wait"};

typedef struct {
  int call;
  bool handler;
  mp_event_t *never;                    /* never set */
  mp_event_t *ready;                    /* set once the handler is in place */
  mp_semaphore_t *empty;                /* no permit */
  mp_condition_t *cond;                 /* never notified */
  mp_barrier_t *barrier;                /* of 2 parties, the child only */
  mp_queue_t *empty_queue, *full_queue; /* the full one: maxsize 1, one item */
  mp_conn_t *quiet, *other;             /* a pipe on which nothing is sent */
} job_t;

static void on_sigint(int sig) {
  (void)sig;
}

static int sleeper(void *arg, size_t size) {
  (void)arg, (void)size;
  sleep(60);
  return 0;
}

/* Blocks in the call; exits 0 if it returned MP_EINTR with its sentence, else 1 + why. */
static int blocked(void *arg, size_t size) {
  (void)size;
  const job_t *job = arg;
  if (job->handler) {
    struct sigaction sa = {.sa_handler = on_sigint};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
  }
  mp_event_set(job->ready);
  int rc = 0;
  if (job->call == CALL_EVENT_WAIT) {
    rc = mp_event_wait(job->never, 30);
  } else if (job->call == CALL_SEMAPHORE) {
    rc = mp_semaphore_acquire(job->empty, 30);
  } else if (job->call == CALL_CONDITION) {
    if (mp_condition_acquire(job->cond, 10) < 0)
      return 2;
    rc = mp_condition_wait(job->cond, 30);
    if (mp_condition_release(job->cond) < 0) /* held again after the interruption */
      return 4;
  } else if (job->call == CALL_BARRIER) {
    rc = mp_barrier_wait(job->barrier, 30);
  } else if (job->call == CALL_QUEUE_GET) {
    char buf[8];
    size_t len;
    rc = mp_queue_get(job->empty_queue, buf, sizeof buf, &len, 30);
  } else if (job->call == CALL_QUEUE_PUT) {
    rc = mp_queue_put(job->full_queue, "x", 1, 30);
  } else if (job->call == CALL_CONN_POLL) {
    rc = mp_conn_poll(job->quiet, 30);
  } else if (job->call == CALL_WAIT) {
    void *objects[] = {job->quiet, job->empty_queue};
    bool ready[2];
    rc = mp_wait(objects, 2, 30, ready);
  } else {
    mp_process_t *child;
    mp_context_t *ctx;
    if (mp_get_context("fork", &ctx) < 0 ||
        mp_process_create(&child, ctx, sleeper, NULL, 0, "sleeper") < 0 ||
        mp_process_start(child) < 0)
      return 2;
    rc = mp_process_join(child, 30);
    mp_process_terminate(child);
    mp_process_join(child, 10);
    mp_process_close(child);
  }
  return rc == MP_EINTR && strstr(mp_last_error(), "interrupted by SIGINT") ? 0 : 3;
}

/* Sends SIGINT to the child every 20 ms (it may not block yet) until it ends; its exit code. */
static int interrupt(mp_process_t *proc) {
  double end = mp_test_now() + 20 * mp_test_slowdown();
  while (mp_test_now() < end) {
    kill(mp_process_pid(proc), SIGINT);
    if (mp_process_join(proc, 0.02) == 0)
      break;
  }
  return mp_test_join_code(proc, 10);
}

static void run(int method, int call, bool handler) {
  job_t job = {.call = call, .handler = handler};
  MP_ASSERT_OK(mp_event_create(&job.never));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  MP_ASSERT_OK(mp_semaphore_create(&job.empty, 0));
  mp_lock_t *lock;
  MP_ASSERT_OK(mp_lock_create(&lock));
  MP_ASSERT_OK(mp_condition_create(&job.cond, lock));
  MP_ASSERT_OK(mp_barrier_create(&job.barrier, 2, NULL, NULL));
  MP_ASSERT_OK(mp_queue_create(&job.empty_queue, 0));
  MP_ASSERT_OK(mp_queue_create(&job.full_queue, 1));
  MP_ASSERT_OK(mp_queue_put(job.full_queue, "x", 1, 0));
  MP_ASSERT_OK(mp_pipe(true, &job.quiet, &job.other));
  mp_process_t *proc = mp_test_start(method, blocked, &job, sizeof job);
  MP_ASSERT_OK(mp_event_wait(job.ready, 30));
  double t0 = mp_test_now();
  int code = interrupt(proc);
  if (handler)
    T_ASSERT(code == 0, "%s under %s: exit code %d, not 0 (MP_EINTR)", CALLS[call],
             METHODS[method], code);
  else
    T_ASSERT(code == -SIGINT, "%s under %s without a handler: exit code %d, not -SIGINT",
             CALLS[call], METHODS[method], code);
  T_ASSERT(mp_test_now() - t0 < 10 * mp_test_slowdown(), "%s: not prompt", CALLS[call]);
  T_PROC_CLOSE(proc);
  MP_ASSERT_OK(mp_event_close(job.never));
  MP_ASSERT_OK(mp_event_close(job.ready));
  MP_ASSERT_OK(mp_semaphore_close(job.empty));
  MP_ASSERT_OK(mp_condition_close(job.cond));
  MP_ASSERT_OK(mp_barrier_close(job.barrier));
  MP_ASSERT_OK(mp_queue_close(job.empty_queue));
  MP_ASSERT_OK(mp_queue_close(job.full_queue));
  MP_ASSERT_OK(mp_conn_close(job.quiet));
  MP_ASSERT_OK(mp_conn_close(job.other));
}

START_TEST(test_handler_gives_eintr) {
  for (int call = 0; call < N_CALLS; call++)
    run(_i, call, true);
}
END_TEST

START_TEST(test_default_kills) {
  for (int call = 0; call < N_CALLS; call++)
    run(_i, call, false);
}
END_TEST

static Suite *signals_suite(void) {
  Suite *s = suite_create("signals");
  TCase *tc = mp_test_tcase(s, "ctrl-c", 120);
  tcase_add_loop_test(tc, test_handler_gives_eintr, 0, N_METHODS);
  tcase_add_loop_test(tc, test_default_kills, 0, N_METHODS);
  return s;
}

MP_TEST_MAIN(signals_suite)
