/*
 * Ctrl-C and blocking calls (docs/api.md): a process blocked in a libmp call gets SIGINT.
 * With a handler of the program's, the call returns MP_EINTR promptly; under SIG_DFL the
 * process dies of SIGINT as usual. Under every start method.
 */
#include "mp_test.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

enum {
  CALL_EVENT_WAIT,
  CALL_JOIN,
  CALL_SEMAPHORE,
  CALL_CONDITION,
  CALL_BARRIER,
  CALL_QUEUE_GET,
  CALL_QUEUE_PUT,
  CALL_QUEUE_JOIN, /* a JoinableQueue with one task never done */
  CALL_CONN_POLL,
  CALL_WAIT,
  CALL_LOCK,        /* held by the test */
  CALL_RLOCK,       /* held by the test */
  CALL_VALUE,       /* a Value whose lock the test holds */
  CALL_RECV,        /* nothing sent; no timeout: a read that SA_RESTART restarts */
  CALL_RECV_TIMED,  /* nothing sent; a timeout */
  CALL_RECV_LOCKED, /* another receiver (a thread of the test) holds the end */
  CALL_SEND_LOCKED, /* another sender (a thread of the test) holds the end */
  N_CALLS
};
static const char *const CALLS[] = {"mp_event_wait",
                                    "mp_process_join",
                                    "mp_semaphore_acquire",
                                    "mp_condition_wait",
                                    "mp_barrier_wait",
                                    "mp_queue_get",
                                    "mp_queue_put",
                                    "mp_queue_join",
                                    "mp_conn_poll",
                                    "mp_wait",
                                    "mp_lock_acquire",
                                    "mp_lock_acquire (RLock)",
                                    "mp_value_add_long",
                                    "mp_conn_recv",
                                    "mp_conn_recv (timeout)",
                                    "mp_conn_recv (end in use)",
                                    "mp_conn_send (end in use)"};

enum { NO_HANDLER, HANDLER, HANDLER_RESTART }; /* the last with SA_RESTART */

typedef struct {
  int call;
  int handler;
  mp_event_t *never;                    /* never set */
  mp_event_t *ready;                    /* set once the handler is in place */
  mp_semaphore_t *empty;                /* no permit */
  mp_condition_t *cond;                 /* never notified */
  mp_barrier_t *barrier;                /* of 2 parties, the child only */
  mp_queue_t *empty_queue, *full_queue; /* the full one: maxsize 1, one item */
  mp_queue_t *unfinished;               /* joinable, one task not done */
  mp_conn_t *quiet, *other;             /* a pipe on which nothing is sent */
  mp_lock_t *held, *rheld;              /* held by the test */
  mp_value_t *value;                    /* its lock held by the test */
  mp_conn_t *busy, *busy_other;         /* busy: a thread of the test receives on it */
} job_t;

static void on_sigint(int sig) {
  (void)sig;
}

/* The program's own SIGINT handler, installed as a program would. */
static void catch_sigint(void (*handler)(int), int flags) {
  struct sigaction sa = {.sa_handler = handler, .sa_flags = flags};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
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
    catch_sigint(on_sigint, job->handler == HANDLER_RESTART ? SA_RESTART : 0);
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
  } else if (job->call == CALL_QUEUE_JOIN) {
    rc = mp_queue_join(job->unfinished, 30);
  } else if (job->call == CALL_CONN_POLL) {
    rc = mp_conn_poll(job->quiet, 30);
  } else if (job->call == CALL_WAIT) {
    void *objects[] = {job->quiet, job->empty_queue};
    bool ready[2];
    rc = mp_wait(objects, 2, 30, ready);
  } else if (job->call == CALL_LOCK || job->call == CALL_RLOCK) {
    mp_lock_t *lock = job->call == CALL_LOCK ? job->held : job->rheld;
    rc = mp_lock_acquire(lock, 30);
    if (mp_lock_is_owned(lock)) /* nothing taken */
      return 5;
  } else if (job->call == CALL_VALUE) {
    rc = mp_value_add_long(job->value, 1, NULL);
  } else if (job->call == CALL_SEND_LOCKED) {
    rc = mp_conn_send(job->busy, "x", 1);
  } else if (job->call >= CALL_RECV) {
    char buf[8];
    size_t len;
    rc = mp_conn_recv(job->call == CALL_RECV_LOCKED ? job->busy : job->quiet, buf, sizeof buf,
                      &len, job->call == CALL_RECV_TIMED ? 30 : MP_FOREVER);
  } else {
    mp_process_t *child;
    mp_context_t *ctx;
    if (mp_get_context("fork", &ctx) < 0 ||
        mp_process_create(&child, ctx, sleeper, NULL, 0, "sleeper") < 0 ||
        mp_process_start(child) < 0)
      return 2;
    rc = mp_process_join(child, 30);
    /* The sentence now: the cleanup below may be interrupted too, and then close fails. */
    bool said = strstr(mp_last_error(), "interrupted by SIGINT") != NULL;
    mp_process_terminate(child);
    while (mp_process_join(child, 10) == MP_EINTR)
      ;
    mp_process_close(child);
    return rc == MP_EINTR && said ? 0 : 3;
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

/* The test's receiver on job->busy, holding its receive lock until a message comes. */
static void *busy_receiver(void *arg) {
  const job_t *job = arg;
  char buf[8];
  size_t len;
  return (void *)(intptr_t)mp_conn_recv(job->busy, buf, sizeof buf, &len, 60);
}

#define BIG (1u << 20)

/* The test's sender on job->busy: a message larger than the pipe, that nobody reads until
 * the end of the run, so that it holds the end's send lock. */
static void *busy_sender(void *arg) {
  /* Static: a child forked while this thread sends inherits no allocation it cannot free. */
  static const char msg[BIG];
  const job_t *job = arg;
  return (void *)(intptr_t)mp_conn_send(job->busy, msg, BIG);
}

static void run(int method, int call, int handler) {
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
  MP_ASSERT_OK(mp_joinable_queue_create(&job.unfinished, 0));
  MP_ASSERT_OK(mp_queue_put(job.unfinished, "x", 1, 0));
  MP_ASSERT_OK(mp_pipe(true, &job.quiet, &job.other));
  MP_ASSERT_OK(mp_lock_create(&job.held));
  MP_ASSERT_OK(mp_rlock_create(&job.rheld));
  MP_ASSERT_OK(mp_lock_acquire(job.held, 0));
  MP_ASSERT_OK(mp_lock_acquire(job.rheld, 0));
  MP_ASSERT_OK(mp_value_create(&job.value, 'l', NULL, NULL));
  MP_ASSERT_OK(mp_lock_acquire(mp_value_get_lock(job.value), 0));
  MP_ASSERT_OK(mp_pipe(true, &job.busy, &job.busy_other));
  pthread_t receiver, sender;
  T_ASSERT(pthread_create(&receiver, NULL, busy_receiver, &job) == 0, "pthread_create");
  T_ASSERT(pthread_create(&sender, NULL, busy_sender, &job) == 0, "pthread_create");
  while (mp_conn_poll(job.busy_other, 0) == 0) /* the send has begun */
    mp_test_sleep(0.001);
  mp_test_sleep(0.02); /* and the receiver is in its receive, most likely */
  mp_process_t *proc = mp_test_start(method, blocked, &job, sizeof job);
  MP_ASSERT_OK(mp_event_wait(job.ready, 30));
  double t0 = mp_test_now();
  int code = interrupt(proc);
  if (handler != NO_HANDLER)
    T_ASSERT(code == 0, "%s under %s: exit code %d, not 0 (MP_EINTR)", CALLS[call],
             METHODS[method], code);
  else
    T_ASSERT(code == -SIGINT, "%s under %s without a handler: exit code %d, not -SIGINT",
             CALLS[call], METHODS[method], code);
  T_ASSERT(mp_test_now() - t0 < 10 * mp_test_slowdown(), "%s: not prompt", CALLS[call]);
  T_PROC_CLOSE(proc);
  /* Nothing lost: the locks are still the test's, both pipes carry the next message. */
  MP_ASSERT_OK(mp_lock_release(job.held));
  MP_ASSERT_OK(mp_lock_release(job.rheld));
  long v = -1;
  MP_ASSERT_OK(mp_value_get_long(job.value, &v)); /* an RLock: held by this thread */
  T_ASSERT(v == 0, "%s: the value is %ld: an interrupted add was done", CALLS[call], v);
  MP_ASSERT_OK(mp_lock_release(mp_value_get_lock(job.value)));
  MP_ASSERT_OK(mp_conn_send(job.busy_other, "b", 1));
  void *got, *big;
  char buf[8];
  size_t len;
  T_ASSERT(pthread_join(receiver, &got) == 0, "pthread_join");
  MP_ASSERT_OK((int)(intptr_t)got);
  MP_ASSERT_OK(mp_conn_recv_alloc(job.busy_other, &big, &len, 10));
  free(big);
  T_ASSERT(len == BIG, "%s: the test's message has %zu bytes", CALLS[call], len);
  T_ASSERT(pthread_join(sender, &got) == 0, "pthread_join");
  MP_ASSERT_OK((int)(intptr_t)got);
  MP_ASSERT_OK(mp_conn_send(job.other, "q", 1));
  MP_ASSERT_OK(mp_conn_recv(job.quiet, buf, sizeof buf, &len, 10));
  T_ASSERT(len == 1 && buf[0] == 'q', "%s: the next message on the pipe is not whole",
           CALLS[call]);
  MP_ASSERT_OK(mp_event_close(job.never));
  MP_ASSERT_OK(mp_event_close(job.ready));
  MP_ASSERT_OK(mp_semaphore_close(job.empty));
  MP_ASSERT_OK(mp_condition_close(job.cond));
  MP_ASSERT_OK(mp_barrier_close(job.barrier));
  MP_ASSERT_OK(mp_queue_close(job.empty_queue));
  MP_ASSERT_OK(mp_queue_close(job.full_queue));
  MP_ASSERT_OK(mp_queue_close(job.unfinished));
  MP_ASSERT_OK(mp_conn_close(job.quiet));
  MP_ASSERT_OK(mp_conn_close(job.other));
  MP_ASSERT_OK(mp_lock_close(job.held));
  MP_ASSERT_OK(mp_lock_close(job.rheld));
  MP_ASSERT_OK(mp_value_close(job.value));
  MP_ASSERT_OK(mp_conn_close(job.busy));
  MP_ASSERT_OK(mp_conn_close(job.busy_other));
}

START_TEST(test_handler_gives_eintr) {
  for (int call = 0; call < N_CALLS; call++)
    run(_i, call, HANDLER);
}
END_TEST

/* SA_RESTART: the kernel restarts a read or a robust mutex's wait, not these calls. */
START_TEST(test_restarting_handler_gives_eintr) {
  for (int call = 0; call < N_CALLS; call++)
    run(_i, call, HANDLER_RESTART);
}
END_TEST

START_TEST(test_default_kills) {
  for (int call = 0; call < N_CALLS; call++)
    run(_i, call, NO_HANDLER);
}
END_TEST

/*
 * A receive that SIGINT interrupts once its message has begun to arrive finishes the message
 * (docs/api.md): the sender is stopped in the middle of a large message, the receiver gets
 * SIGINTs meanwhile, and then the whole message, and the next one.
 */
typedef struct {
  mp_conn_t *in, *out;
  mp_event_t *ready;
} big_job_t;

static volatile sig_atomic_t sigints_seen;

static void count_sigint(int sig) {
  (void)sig;
  sigints_seen++;
}

static int big_sender(void *arg, size_t size) {
  (void)size;
  const big_job_t *job = arg;
  char *msg = malloc(BIG);
  if (!msg)
    return 2;
  for (size_t i = 0; i < BIG; i++)
    msg[i] = (char)(i * 7);
  int rc = mp_conn_send(job->out, msg, BIG);
  free(msg);
  return rc < 0 || mp_conn_send(job->out, "next", 4) < 0 ? 3 : 0;
}

static int big_receiver(void *arg, size_t size) {
  (void)size;
  const big_job_t *job = arg;
  catch_sigint(count_sigint, 0);
  mp_event_set(job->ready);
  void *msg;
  size_t len;
  if (mp_conn_recv_alloc(job->in, &msg, &len, 60) < 0)
    return 3;
  bool whole = len == BIG;
  for (size_t i = 0; whole && i < BIG; i++)
    whole = ((char *)msg)[i] == (char)(i * 7);
  free(msg);
  char next[8];
  if (!whole || mp_conn_recv(job->in, next, sizeof next, &len, 60) < 0 || len != 4 ||
      memcmp(next, "next", 4) != 0)
    return 4;
  return sigints_seen > 0 ? 0 : 5;
}

START_TEST(test_recv_finishes_message) {
  big_job_t job;
  MP_ASSERT_OK(mp_pipe(false, &job.in, &job.out));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *sender = mp_test_start(_i, big_sender, &job, sizeof job);
  double end = mp_test_now() + 20 * mp_test_slowdown();
  while (mp_conn_poll(job.in, 0) == 0 && mp_test_now() < end) /* the message has begun */
    mp_test_sleep(0.005);
  T_ASSERT(mp_conn_poll(job.in, 0) == 1, "no message from the sender");
  T_ASSERT(kill(mp_process_pid(sender), SIGSTOP) == 0, "SIGSTOP: %s", strerror(errno));
  mp_process_t *receiver = mp_test_start(_i, big_receiver, &job, sizeof job);
  MP_ASSERT_OK(mp_event_wait(job.ready, 30));
  mp_test_sleep(0.1); /* the receiver has read what the pipe holds, and waits for the rest */
  for (int i = 0; i < 5; i++) {
    kill(mp_process_pid(receiver), SIGINT);
    mp_test_sleep(0.02);
  }
  T_ASSERT(kill(mp_process_pid(sender), SIGCONT) == 0, "SIGCONT: %s", strerror(errno));
  T_INT_EQ(mp_test_join_code(receiver, 30), 0);
  T_INT_EQ(mp_test_join_code(sender, 30), 0);
  T_PROC_CLOSE(receiver);
  T_PROC_CLOSE(sender);
  MP_ASSERT_OK(mp_event_close(job.ready));
  MP_ASSERT_OK(mp_conn_close(job.in));
  MP_ASSERT_OK(mp_conn_close(job.out));
}
END_TEST

/*
 * An interrupted lock waiter loses nothing for the others: the test holds a Lock, three
 * children wait for it, one is interrupted, and the two others take it in turn once the
 * test lets it go. The second is woken only if the first, having slept, kept the mutex's
 * "waiters" flag when it took the lock (mp__mutex_lock_sig), as glibc's own lock does.
 */
typedef struct {
  mp_lock_t *lock;
  mp_event_t *ready;
  bool interrupted; /* this waiter is the one that gets SIGINT */
} waiter_job_t;

static int lock_waiter(void *arg, size_t size) {
  (void)size;
  const waiter_job_t *job = arg;
  catch_sigint(on_sigint, 0);
  mp_event_set(job->ready);
  int rc = mp_lock_acquire(job->lock, 30);
  if (job->interrupted)
    return rc == MP_EINTR && !mp_lock_is_owned(job->lock) ? 0 : 3;
  if (rc < 0)
    return 4;
  mp_test_sleep(0.05); /* so that the other waiter sleeps while this one holds it */
  return mp_lock_release(job->lock) == 0 ? 0 : 5;
}

START_TEST(test_lock_waiters_after_interrupt) {
  mp_lock_t *lock;
  MP_ASSERT_OK(mp_lock_create(&lock));
  MP_ASSERT_OK(mp_lock_acquire(lock, 0));
  mp_process_t *procs[3];
  mp_event_t *ready[3];
  for (int i = 0; i < 3; i++) {
    MP_ASSERT_OK(mp_event_create(&ready[i]));
    waiter_job_t job = {lock, ready[i], i == 0};
    procs[i] = mp_test_start(_i, lock_waiter, &job, sizeof job);
  }
  for (int i = 0; i < 3; i++)
    MP_ASSERT_OK(mp_event_wait(ready[i], 30));
  mp_test_sleep(0.1); /* all three asleep on the mutex, most likely */
  T_INT_EQ(interrupt(procs[0]), 0);
  double t0 = mp_test_now();
  MP_ASSERT_OK(mp_lock_release(lock));
  for (int i = 1; i < 3; i++)
    T_INT_EQ(mp_test_join_code(procs[i], 10 * mp_test_slowdown()), 0);
  T_ASSERT(mp_test_now() - t0 < 5 * mp_test_slowdown(), "the waiters took %.1f s",
           mp_test_now() - t0);
  for (int i = 0; i < 3; i++) {
    T_PROC_CLOSE(procs[i]);
    MP_ASSERT_OK(mp_event_close(ready[i]));
  }
  MP_ASSERT_OK(mp_lock_close(lock));
}
END_TEST

/*
 * mp_process_join follows the Ctrl-C rule (docs/api.md, "The calls that follow the rule")
 * when it joins the parent process too: a child that joins its parent (which lives on) with
 * its own SIGINT handler gets MP_EINTR when SIGINT comes. The parent's join used to poll
 * without the SIGINT counter (and, without pidfds, to sleep in nanosleep), so it waited to
 * its deadline and returned MP_ETIMEDOUT.
 */
typedef struct {
  mp_event_t *ready;
} parent_job_t;

static int join_parent(void *arg, size_t size) {
  (void)size;
  const parent_job_t *job = arg;
  catch_sigint(on_sigint, 0);
  mp_process_t *parent = mp_parent_process();
  if (!parent)
    return 2;
  mp_event_set(job->ready);
  int rc = mp_process_join(parent, 3);
  if (rc == MP_EINTR && strstr(mp_last_error(), "interrupted by SIGINT"))
    return 0;
  return rc == MP_ETIMEDOUT ? 3 : 4;
}

START_TEST(test_join_parent_gives_eintr) {
  parent_job_t job;
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *proc = mp_test_start(_i, join_parent, &job, sizeof job);
  MP_ASSERT_OK(mp_event_wait(job.ready, 30));
  int code = interrupt(proc);
  T_ASSERT(code == 0,
           "join of the parent under %s with a SIGINT handler: exit code %d (3: MP_ETIMEDOUT "
           "after 3 s of SIGINTs, not MP_EINTR)",
           METHODS[_i], code);
  T_PROC_CLOSE(proc);
  MP_ASSERT_OK(mp_event_close(job.ready));
}
END_TEST

static Suite *signals_suite(void) {
  Suite *s = suite_create("signals");
  TCase *tc = mp_test_tcase(s, "ctrl-c", 120);
  tcase_add_loop_test(tc, test_handler_gives_eintr, 0, N_METHODS);
  tcase_add_loop_test(tc, test_restarting_handler_gives_eintr, 0, N_METHODS);
  tcase_add_loop_test(tc, test_default_kills, 0, N_METHODS);
  tcase_add_loop_test(tc, test_recv_finishes_message, 0, N_METHODS);
  tcase_add_loop_test(tc, test_lock_waiters_after_interrupt, 0, N_METHODS);
  tcase_add_loop_test(tc, test_join_parent_gives_eintr, 0, N_METHODS);
  return s;
}

MP_TEST_MAIN(signals_suite)
