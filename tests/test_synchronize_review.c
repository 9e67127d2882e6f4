/*
 * Review of lib/synchronize.c (stop 23, rev-sync): each case fails on HEAD 58e596b and
 * names the promise it tests (docs/api.md, docs/architecture.md).
 */
#include "mp_test.h"

#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>

typedef struct {
  mp_condition_t *cond;
  mp_semaphore_t *sem;
  mp_barrier_t *barrier;
  mp_event_t *ready;
  long *shared;
  int n;
} job_t;

/* ============================ Condition ============================ */

/* A waiter in another process: waits long, so that only a notify ends it early. */
static int child_waits_long(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  if (mp_condition_acquire(job->cond, 10) != 0)
    return 2;
  mp_event_set(job->ready);
  mp_condition_wait(job->cond, 60);
  return 3;
}

typedef struct {
  mp_condition_t *cond;
  _Atomic int waiting;
  int rc;
  double took;
} waiter_t;

static void *thread_waits(void *arg) {
  waiter_t *w = arg;
  mp_condition_acquire(w->cond, MP_FOREVER);
  atomic_store(&w->waiting, 1);
  double t0 = mp_test_now();
  w->rc = mp_condition_wait(w->cond, 5);
  w->took = mp_test_now() - t0;
  mp_condition_release(w->cond);
  return NULL;
}

/*
 * notify(1) wakes the longest sleeper, a process; it is killed while it waits to take the
 * lock back (the notifier still holds it). A live thread was waiting when the notify ran, so
 * by docs/api.md ("notify(1) is spent on the dead waiter only if no live waiter is there to
 * take it") it must get the notify. On HEAD the wake-up went to the dead one and the live
 * thread sleeps to its deadline (for ever with MP_FOREVER).
 */
START_TEST(test_condition_woken_waiter_killed) {
  job_t job = {0};
  MP_ASSERT_OK(mp_condition_create(&job.cond, NULL));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *p = mp_test_start(_i, child_waits_long, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  MP_ASSERT_OK(mp_condition_acquire(job.cond, 20)); /* free once the child waits */
  MP_ASSERT_OK(mp_condition_release(job.cond));
  mp_test_sleep(0.2); /* the child is asleep on the futex: it is woken first */
  waiter_t w = {.cond = job.cond};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_waits, &w), 0);
  while (!atomic_load(&w.waiting))
    mp_test_sleep(0.01);
  MP_ASSERT_OK(mp_condition_acquire(job.cond, 20)); /* the thread waits */
  mp_test_sleep(0.2);
  MP_ASSERT_OK(mp_condition_notify(job.cond, 1));
  mp_test_sleep(0.3); /* the woken child now blocks on the lock we hold */
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 20), -SIGKILL);
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp_condition_release(job.cond));
  T_INT_EQ(pthread_join(t, NULL), 0);
  MP_ASSERT_OK(w.rc);
  T_ASSERT(w.took < 2, "the live waiter got the notify only at its deadline: %.2f s", w.took);
  mp_event_close(job.ready);
  mp_condition_close(job.cond);
}
END_TEST

/* ============================== Barrier ============================== */

static int slow_action(void *arg) {
  (void)arg;
  mp_test_sleep(0.5);
  return 0;
}

typedef struct {
  mp_barrier_t *b;
  double timeout;
  int rc;
} arrival_t;

static void *thread_arrives(void *arg) {
  arrival_t *a = arg;
  a->rc = mp_barrier_wait(a->b, a->timeout);
  return NULL;
}

/*
 * A round whose parties all arrived and whose action succeeded is broken by a thread that
 * came for the next round while the action ran and whose (short) timeout passed then. In
 * Python that thread waits for the action under the barrier's lock and only then enters the
 * next round: the full round returns its indices.
 */
START_TEST(test_barrier_newcomer_timeout_breaks_full_round) {
  mp_barrier_t *b;
  MP_ASSERT_OK(mp_barrier_create(&b, 2, slow_action, NULL));
  arrival_t first = {b, 20, 99}, late = {b, 0.1, 99};
  pthread_t t1, t2;
  T_INT_EQ(pthread_create(&t1, NULL, thread_arrives, &first), 0);
  while (mp_barrier_n_waiting(b) < 1)
    mp_test_sleep(0.005);
  arrival_t last = {b, 20, 99};
  pthread_t t3;
  T_INT_EQ(pthread_create(&t3, NULL, thread_arrives, &last), 0); /* runs the action */
  mp_test_sleep(0.1);
  T_INT_EQ(pthread_create(&t2, NULL, thread_arrives, &late), 0); /* during the action */
  T_INT_EQ(pthread_join(t1, NULL), 0);
  T_INT_EQ(pthread_join(t2, NULL), 0);
  T_INT_EQ(pthread_join(t3, NULL), 0);
  T_ASSERT(first.rc == 0 && last.rc == 1,
           "the full round, its action done, returned %d (%s) and %d: a newcomer's timeout "
           "broke it",
           first.rc, first.rc < 0 ? mp_err_name(first.rc) : "", last.rc);
  mp_barrier_close(b);
}
END_TEST

/* The same full round, reset while its action runs: Python's reset waits for the lock the
 * action holds, then finds the round draining (state 1) and changes nothing; the round
 * returns its indices. docs/api.md says "waiters of a full one (its action runs) get
 * MP_EBROKEN, as Python's". */
static void *thread_resets(void *arg) {
  mp_test_sleep(0.2);
  mp_barrier_reset(arg);
  return NULL;
}

START_TEST(test_barrier_reset_during_action) {
  mp_barrier_t *b;
  MP_ASSERT_OK(mp_barrier_create(&b, 2, slow_action, NULL));
  arrival_t first = {b, 20, 99}, last = {b, 20, 99};
  pthread_t t1, t2, t3;
  T_INT_EQ(pthread_create(&t1, NULL, thread_arrives, &first), 0);
  while (mp_barrier_n_waiting(b) < 1)
    mp_test_sleep(0.005);
  T_INT_EQ(pthread_create(&t3, NULL, thread_resets, b), 0);
  T_INT_EQ(pthread_create(&t2, NULL, thread_arrives, &last), 0); /* runs the action */
  T_INT_EQ(pthread_join(t1, NULL), 0);
  T_INT_EQ(pthread_join(t2, NULL), 0);
  T_INT_EQ(pthread_join(t3, NULL), 0);
  T_ASSERT(first.rc == 0 && last.rc == 1,
           "the full round, reset during its action, returned "
           "%d and %d",
           first.rc, last.rc);
  mp_barrier_close(b);
}
END_TEST

static int child_waits_once(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  mp_event_set(job->ready);
  int rc = mp_barrier_wait(job->barrier, 60);
  job->shared[0] = rc;
  return 0;
}

static void *thread_rounds(void *arg) {
  job_t *job = arg;
  for (int k = 0; k < job->n; k++)
    if (mp_barrier_wait(job->barrier, 20) < 0)
      return (void *)1;
  return NULL;
}

/*
 * A waiter whose round ended normally, descheduled (here: stopped) while 63 more rounds
 * complete and the 64th is aborted, reads bit g % 64 of ended_broken, which that 64th round
 * rewrote: its completed round is reported broken (docs/architecture.md: "one that slept
 * through several generations reads bit g % 64").
 */
START_TEST(test_barrier_sleeper_outlived_64_rounds) {
  job_t job = {.n = 63};
  mp_array_t *words;
  MP_ASSERT_OK(mp_raw_array_create(&words, 'l', 1, NULL));
  job.shared = mp_array_ptr(words);
  job.shared[0] = 12345;
  MP_ASSERT_OK(mp_event_create(&job.ready));
  MP_ASSERT_OK(mp_barrier_create(&job.barrier, 2, NULL, NULL));
  mp_process_t *p = mp_test_start(_i, child_waits_once, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  while (mp_barrier_n_waiting(job.barrier) < 1)
    mp_test_sleep(0.005);
  mp_test_sleep(0.1);
  T_INT_EQ(kill(mp_process_pid(p), SIGSTOP), 0);
  T_INT_EQ(mp_barrier_wait(job.barrier, 20), 1); /* the child's round ends: released */
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_rounds, &job), 0);
  for (int k = 0; k < job.n; k++)
    T_ASSERT(mp_barrier_wait(job.barrier, 20) >= 0, "round %d", k);
  void *bad;
  T_INT_EQ(pthread_join(t, &bad), 0);
  T_ASSERT(bad == NULL, "the thread's rounds");
  MP_ASSERT_OK(mp_barrier_abort(job.barrier)); /* the 64th round after the child's */
  T_INT_EQ(kill(mp_process_pid(p), SIGCONT), 0);
  mp_test_join_ok(p, 20);
  T_ASSERT(job.shared[0] == 0, "the child's completed round returned %ld (%s)", job.shared[0],
           job.shared[0] < 0 ? mp_err_name((int)job.shared[0]) : "");
  mp_barrier_close(job.barrier);
  mp_event_close(job.ready);
  mp_array_close(words);
}
END_TEST

/* ========================== BoundedSemaphore ========================== */

/* lib/synchronize.c's layout, to forge its words as a buggy process of the program would. */
typedef struct {
  int32_t pid;
  uint32_t count;
  uint64_t start;
} proc_id_t;

typedef struct {
  uint32_t magic, bounded;
  int32_t initial;
  _Atomic uint32_t seq, sleepers;
  pthread_mutex_t mutex;
  int32_t value;
  uint32_t reclaimed;
  _Atomic int64_t scanned;
  struct {
    _Atomic uint32_t valid;
    int32_t value;
    uint32_t slot;
    proc_id_t holder;
  } redo;
  proc_id_t holders[32];
} sem_layout_t;

static int child_holds(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  if (mp_semaphore_acquire(job->sem, 10) != 0)
    return 2;
  mp_event_set(job->ready);
  for (;;)
    pause();
}

/*
 * One wild word, scanned (when holders were last looked for), makes a blocked acquirer
 * never look for a killed holder: it is taken for a look made in the future (INT64_MAX) or,
 * INT64_MIN, now - scanned overflows (undefined behaviour; it wraps negative). With
 * MP_FOREVER the acquirer waits for good; here it gets the permit only at its deadline.
 */
START_TEST(test_semaphore_wild_scanned) {
  int wild = _i / 2;
  _i %= 2;
  {
    job_t job = {0};
    MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
    MP_ASSERT_OK(mp_event_create(&job.ready));
    sem_layout_t *s = (sem_layout_t *)job.sem;
    T_INT_EQ(s->initial, 1);
    mp_process_t *p = mp_test_start(_i, child_holds, &job, sizeof(job_t));
    MP_ASSERT_OK(mp_event_wait(job.ready, 20));
    T_INT_EQ(s->holders[0].count, 1); /* the layout is lib/synchronize.c's */
    int64_t v = wild ? INT64_MIN : INT64_MAX;
    mp_test_forge(_i, (void *)&s->scanned, &v, sizeof v);
    MP_ASSERT_OK(mp_process_kill(p));
    T_INT_EQ(mp_test_join_code(p, 20), -SIGKILL);
    T_PROC_CLOSE(p);
    double t0 = mp_test_now();
    int rc = mp_semaphore_acquire(job.sem, 3);
    double took = mp_test_now() - t0;
    MP_ASSERT_ERR(rc, MP_EOWNERDEAD);
    T_ASSERT(took < 1,
             "scanned = %s: the killed holder's permit came back only at the "
             "deadline, after %.2f s (within 50 ms promised)",
             wild ? "INT64_MIN" : "INT64_MAX", took);
    mp_event_close(job.ready);
    mp_semaphore_close(job.sem);
  }
}
END_TEST

/* Forges a redo record with a wild slot and dies holding the semaphore's mutex. */
typedef struct {
  sem_layout_t *s;
  uint32_t slot;
} redo_job_t;

static int child_forges_redo(void *arg, size_t size) {
  (void)size;
  redo_job_t *job = arg;
  job->s->redo.value = 1;
  job->s->redo.slot = job->slot;
  job->s->redo.holder = (proc_id_t){0x41414141, 0x41414141, 0x4141414141414141ull};
  atomic_store(&job->s->redo.valid, 1);
  if (pthread_mutex_lock(&job->s->mutex) != 0)
    return 2;
  return 0; /* ends holding it: the next locker gets EOWNERDEAD and applies the record */
}

/*
 * The redo record's slot is taken from shared memory unchecked: the next locker after an
 * owner's death writes holders[slot] wherever it points, here into a Value of the program.
 */
START_TEST(test_semaphore_wild_redo_slot) {
  mp_semaphore_t *sem;
  MP_ASSERT_OK(mp_bounded_semaphore_create(&sem, 1));
  mp_value_t *victim;
  long zero = 0;
  MP_ASSERT_OK(mp_raw_value_create(&victim, 'l', &zero));
  sem_layout_t *s = (sem_layout_t *)sem;
  char *target = mp_value_ptr(victim);
  ptrdiff_t dist = target - (char *)&s->holders[0];
  T_ASSERT(dist > 0 && dist % (ptrdiff_t)sizeof(proc_id_t) == 0, "distance %td", dist);
  redo_job_t job = {s, (uint32_t)(dist / (ptrdiff_t)sizeof(proc_id_t))};
  mp_test_join_ok(mp_test_start(_i, child_forges_redo, &job, sizeof job), 20);
  int rc = mp_semaphore_acquire(sem, 1);
  long after = 0;
  MP_ASSERT_OK(mp_value_get_long(victim, &after));
  T_ASSERT(after == 0,
           "acquire returned %d, and wrote 0x%lx into another object (slot %u "
           "of 32 taken from shared memory)",
           rc, after, job.slot);
  mp_value_close(victim);
  mp_semaphore_close(sem);
}
END_TEST

/* A permit released for its acquirer by another process (allowed: "any thread or process may
 * release") stays on the acquirer's record; when the acquirer is then killed, that record
 * returns the permit a second time, although a third process holds it now: a
 * BoundedSemaphore(1) then has two holders at once. */
static int child_acquires_and_hangs(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  if (mp_semaphore_acquire(job->sem, 10) != 0)
    return 2;
  mp_event_set(job->ready);
  for (;;)
    pause();
}

START_TEST(test_bounded_semaphore_two_holders) {
  job_t job = {0};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *a = mp_test_start(_i, child_acquires_and_hangs, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  MP_ASSERT_OK(mp_semaphore_release(job.sem)); /* handed back for it, as Python allows */
  mp_event_clear(job.ready);
  mp_process_t *c = mp_test_start(_i, child_acquires_and_hangs, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20)); /* c holds the only permit now */
  T_INT_EQ(mp_semaphore_value(job.sem), 0);
  MP_ASSERT_OK(mp_process_kill(a));
  T_INT_EQ(mp_test_join_code(a, 20), -SIGKILL);
  T_PROC_CLOSE(a);
  int rc = mp_semaphore_acquire(job.sem, 0.5);
  MP_ASSERT_OK(mp_process_kill(c));
  T_INT_EQ(mp_test_join_code(c, 20), -SIGKILL);
  T_PROC_CLOSE(c);
  T_ASSERT(rc == MP_ETIMEDOUT,
           "BoundedSemaphore(1) held by a live process, acquired again: "
           "%d (%s)",
           rc, rc < 0 ? mp_err_name(rc) : "");
  mp_event_close(job.ready);
  mp_semaphore_close(job.sem);
}
END_TEST

/* ===================== Condition: wild generation ===================== */

/* The generation word written wild (2^64-1): the next notify makes generation 0, which no
 * waiter may take; every waiter then sleeps through every notify (for ever with
 * MP_FOREVER), and nothing says MP_ECORRUPT, as a wild count of batches does. */
START_TEST(test_condition_wild_gen) {
  mp_condition_t *cond;
  MP_ASSERT_OK(mp_condition_create(&cond, NULL));
  /* gen is the 64-bit word after magic and seq: 1 after one notify with a waiter. */
  uint64_t *gen = (uint64_t *)((char *)cond + 8);
  T_INT_EQ(*gen, 0);
  uint64_t wild = UINT64_MAX;
  mp_test_forge(_i, gen, &wild, sizeof wild);
  waiter_t w = {.cond = cond};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_waits, &w), 0);
  while (!atomic_load(&w.waiting))
    mp_test_sleep(0.01);
  MP_ASSERT_OK(mp_condition_acquire(cond, 20));
  int rc = mp_condition_notify(cond, 1);
  MP_ASSERT_OK(mp_condition_release(cond));
  T_INT_EQ(pthread_join(t, NULL), 0);
  T_ASSERT(rc == MP_ECORRUPT || (w.rc == 0 && w.took < 2),
           "notify returned %d, the waiter %d (%s) after %.2f s", rc, w.rc,
           w.rc < 0 ? mp_err_name(w.rc) : "", w.took);
  mp_condition_close(cond);
}
END_TEST

/* ============================ Lock: woken waiter killed ============================ */

typedef struct {
  mp_lock_t *lock;
  mp_event_t *ready;
} lock_job_t;

static void pin_to_cpu0(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(0, &set);
  sched_setaffinity(0, sizeof set, &set);
}

/* Sleeps on the lock at SCHED_IDLE on CPU 0: once a hog runs there, it is woken but does
 * not run before it is killed. */
static int child_idle_waiter(void *arg, size_t size) {
  (void)size;
  lock_job_t *job = arg;
  pin_to_cpu0();
  struct sched_param sp = {0};
  if (sched_setscheduler(0, SCHED_IDLE, &sp) != 0)
    return 2;
  mp_event_set(job->ready);
  mp_lock_acquire(job->lock, 60);
  return 3;
}

static int child_hog(void *arg, size_t size) {
  (void)arg;
  (void)size;
  pin_to_cpu0();
  for (volatile unsigned long n = 0;; n++) {
  }
  return 0;
}

typedef struct {
  mp_lock_t *lock;
  _Atomic int started;
  int rc;
  double took;
} lock_waiter_t;

static void *thread_acquires(void *arg) {
  lock_waiter_t *w = arg;
  atomic_store(&w->started, 1);
  double t0 = mp_test_now();
  w->rc = mp_lock_acquire(w->lock, 5);
  w->took = mp_test_now() - t0;
  if (w->rc >= 0)
    mp_lock_release(w->lock);
  return NULL;
}

/*
 * The release wakes the first sleeper (a process); it is SIGKILLed before it runs. The
 * second sleeper, a live thread, must then get the free lock: glibc's own robust lock has
 * the kernel wake another waiter when a woken one dies (list_op_pending, set while it
 * waits), but mp__mutex_lock_sig sleeps on the futex itself with no pending op recorded,
 * so the wake-up dies with the process and the live waiter sleeps to its deadline (for
 * ever with MP_FOREVER) on a lock nobody holds.
 */
START_TEST(test_lock_woken_waiter_killed) {
  lock_job_t job;
  MP_ASSERT_OK(mp_lock_create(&job.lock));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  MP_ASSERT_OK(mp_lock_acquire(job.lock, 0));
  mp_process_t *x = mp_test_start(_i, child_idle_waiter, &job, sizeof job);
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  mp_test_sleep(0.3); /* x sleeps on the mutex: first in line */
  lock_waiter_t w = {.lock = job.lock};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_acquires, &w), 0);
  while (!atomic_load(&w.started))
    mp_test_sleep(0.01);
  mp_test_sleep(0.3); /* the thread sleeps second */
  mp_process_t *hog = mp_test_start(_i, child_hog, NULL, 0);
  mp_test_sleep(0.3);
  MP_ASSERT_OK(mp_lock_release(job.lock)); /* wakes x, which cannot run */
  T_INT_EQ(kill(mp_process_pid(x), SIGKILL), 0);
  T_INT_EQ(pthread_join(t, NULL), 0);
  MP_ASSERT_OK(mp_process_kill(hog));
  T_INT_EQ(mp_test_join_code(hog, 20), -SIGKILL);
  T_PROC_CLOSE(hog);
  T_INT_EQ(mp_test_join_code(x, 20), -SIGKILL);
  T_PROC_CLOSE(x);
  T_ASSERT(w.rc == 0 && w.took < 2,
           "a free lock: the live waiter returned %d (%s) after "
           "%.2f s",
           w.rc, w.rc < 0 ? mp_err_name(w.rc) : "", w.took);
  mp_event_close(job.ready);
  mp_lock_close(job.lock);
}
END_TEST

/* ====================== wild pointers in the objects ====================== */

static int count_action(void *arg) {
  (void)arg;
  return 0;
}

typedef struct {
  mp_barrier_t *b;
  mp_condition_t *cond;
} wild_job_t;

static int child_uses_barrier(void *arg, size_t size) {
  (void)size;
  wild_job_t *job = arg;
  int rc = mp_barrier_wait(job->b, 5); /* one party: runs the action at once */
  return rc < 0 ? 0 : 4;
}

static int child_uses_condition(void *arg, size_t size) {
  (void)size;
  wild_job_t *job = arg;
  int rc = mp_condition_acquire(job->cond, 5);
  return rc < 0 ? 0 : 4;
}

/*
 * The Barrier's action reference and the Condition's lock are addresses kept in the
 * object's shared memory and followed unchecked (the queues and the pool check such
 * addresses with mp__shared_is_block and say MP_ECORRUPT): one wild word and the next
 * wait or acquire in any process dies of SIGSEGV.
 */
START_TEST(test_wild_object_pointers) {
  wild_job_t job;
  MP_ASSERT_OK(mp_barrier_create(&job.b, 1, count_action, NULL));
  MP_ASSERT_OK(mp_condition_create(&job.cond, NULL));
  void **action = (void **)((char *)job.b + 16); /* magic, parties, word */
  void **lock = (void **)((char *)job.cond + sizeof(uint32_t) * 2 + 8 + 4 * 3 + 4 +
                          16 * 8); /* ... batch[8], then the lock */
  T_ASSERT(*lock == mp_condition_lock(job.cond), "the condition's layout");
  T_ASSERT(*action != NULL, "the barrier's layout");
  void *wild = (void *)(uintptr_t)0x1000;
  void *saved_action = *action, *saved_lock = *lock;
  mp_test_forge(_i, action, &wild, sizeof wild);
  mp_test_forge(_i, lock, &wild, sizeof wild);
  int code_b = mp_test_join_code(mp_test_start(_i, child_uses_barrier, &job, sizeof job), 20);
  int code_c = mp_test_join_code(mp_test_start(_i, child_uses_condition, &job, sizeof job), 20);
  *action = saved_action;
  *lock = saved_lock;
  mp_barrier_close(job.b);
  mp_condition_close(job.cond);
  T_ASSERT(code_b == 0 && code_c == 0,
           "barrier wait: exit %d, condition acquire: exit %d "
           "(-11: SIGSEGV)",
           code_b, code_c);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("synchronize_review");
  TCase *tc = mp_test_tcase(s, "review", 60);
  tcase_add_loop_test(tc, test_condition_woken_waiter_killed, 0, 2);
  tcase_add_test(tc, test_barrier_newcomer_timeout_breaks_full_round);
  tcase_add_loop_test(tc, test_barrier_sleeper_outlived_64_rounds, 0, 2);
  tcase_add_loop_test(tc, test_semaphore_wild_scanned, 0, 4);
  tcase_add_loop_test(tc, test_semaphore_wild_redo_slot, 0, 2);
  tcase_add_loop_test(tc, test_bounded_semaphore_two_holders, 0, 2);
  tcase_add_loop_test(tc, test_condition_wild_gen, 0, 2);
  tcase_add_test(tc, test_barrier_reset_during_action);
  tcase_add_loop_test(tc, test_lock_woken_waiter_killed, 0, 2);
  tcase_add_loop_test(tc, test_wild_object_pointers, 0, 2);
  return s;
}

MP_TEST_MAIN(suite)
