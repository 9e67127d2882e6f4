/*
 * The synchronization primitives (lib/synchronize.c) through the public header: Lock, RLock,
 * Semaphore, BoundedSemaphore, Event, Condition, Barrier, between processes of every start
 * method and between threads; their timeouts (lower bounds only), misuse errors, and what
 * happens when a holder is SIGKILLed.
 */
#include "mp_test.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#if defined(__x86_64__)
#include <sys/user.h>
#endif
#include <sys/wait.h>

/* What a child is told: the objects, and a number to work with. */
typedef struct {
  mp_lock_t *lock;
  mp_semaphore_t *sem;
  mp_event_t *ready, *go;
  mp_condition_t *cond;
  mp_barrier_t *barrier;
  long *shared; /* a word in the arena */
  int n;
} job_t;

/* Waits at least `expected` seconds for rc to come back: runs call, checks both. */
#define T_TAKES_AT_LEAST(call, err, expected)                                                  \
  do {                                                                                         \
    double t_t0_ = mp_test_now();                                                              \
    MP_ASSERT_ERR((call), (err));                                                              \
    double t_took_ = mp_test_now() - t_t0_;                                                    \
    T_ASSERT(t_took_ >= (expected), "%s returned after %.3f s, before %.3f s", #call, t_took_, \
             (double)(expected));                                                              \
    T_ASSERT(t_took_ < (expected) + 10, "%s took %.3f s", #call, t_took_);                     \
  } while (0)

/* ================================ Lock, RLock ================================ */

START_TEST(test_lock_basics) {
  mp_lock_t *lock;
  MP_ASSERT_OK(mp_lock_create(&lock));
  MP_ASSERT_ERR(mp_lock_release(lock), MP_ENOTHELD);
  T_ASSERT(!mp_lock_is_owned(lock), "a new lock is owned");
  MP_ASSERT_OK(mp_lock_acquire(lock, 0));
  T_ASSERT(mp_lock_is_owned(lock), "an acquired lock is not owned");
  /* A Lock is not recursive: its holder waits, as in Python, and times out. */
  MP_ASSERT_ERR(mp_lock_acquire(lock, 0), MP_ETIMEDOUT);
  MP_ASSERT_ERR(mp_lock_acquire(lock, -1), MP_ETIMEDOUT);
  T_TAKES_AT_LEAST(mp_lock_acquire(lock, 0.2), MP_ETIMEDOUT, 0.2);
  MP_ASSERT_OK(mp_lock_release(lock));
  MP_ASSERT_ERR(mp_lock_release(lock), MP_ENOTHELD);
  MP_ASSERT_OK(mp_lock_acquire(lock, MP_FOREVER));
  MP_ASSERT_OK(mp_lock_release(lock));
  MP_ASSERT_OK(mp_lock_retain(lock));
  MP_ASSERT_OK(mp_lock_close(lock));
  MP_ASSERT_OK(mp_lock_acquire(lock, 0)); /* one reference left */
  MP_ASSERT_OK(mp_lock_release(lock));
  MP_ASSERT_OK(mp_lock_close(lock));
  MP_ASSERT_ERR(mp_lock_acquire(lock, 0), MP_EINVAL); /* closed: its block is free */
}
END_TEST

START_TEST(test_rlock_recursion) {
  mp_lock_t *lock;
  MP_ASSERT_OK(mp_rlock_create(&lock));
  for (int i = 0; i < 3; i++)
    MP_ASSERT_OK(mp_lock_acquire(lock, 0));
  for (int i = 0; i < 3; i++) {
    T_ASSERT(mp_lock_is_owned(lock), "released too early, at level %d", i);
    MP_ASSERT_OK(mp_lock_release(lock));
  }
  T_ASSERT(!mp_lock_is_owned(lock), "still owned after every release");
  MP_ASSERT_ERR(mp_lock_release(lock), MP_ENOTHELD);
  MP_ASSERT_OK(mp_lock_close(lock));
}
END_TEST

/* Another thread: the lock is held by the main thread, so it can neither take nor release
 * it. */
static void *other_thread_tries(void *arg) {
  mp_lock_t *lock = arg;
  intptr_t bad = 0;
  if (mp_lock_acquire(lock, 0.05) != MP_ETIMEDOUT)
    bad |= 1;
  if (mp_lock_release(lock) != MP_ENOTHELD)
    bad |= 2;
  if (mp_lock_is_owned(lock))
    bad |= 4;
  return (void *)bad;
}

START_TEST(test_lock_owned_by_thread) {
  for (int recursive = 0; recursive < 2; recursive++) {
    mp_lock_t *lock;
    MP_ASSERT_OK(recursive ? mp_rlock_create(&lock) : mp_lock_create(&lock));
    MP_ASSERT_OK(mp_lock_acquire(lock, 0));
    pthread_t t;
    void *bad;
    T_INT_EQ(pthread_create(&t, NULL, other_thread_tries, lock), 0);
    T_INT_EQ(pthread_join(t, &bad), 0);
    T_INT_EQ((intptr_t)bad, 0);
    MP_ASSERT_OK(mp_lock_release(lock));
    MP_ASSERT_OK(mp_lock_close(lock));
  }
}
END_TEST

static int child_tries_held_lock(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  if (mp_lock_acquire(job->lock, 0.05) != MP_ETIMEDOUT)
    return 2;
  if (mp_lock_release(job->lock) != MP_ENOTHELD)
    return 3;
  mp_event_set(job->ready);
  /* The parent releases it now: this wait ends. */
  if (mp_lock_acquire(job->lock, 10) != 0)
    return 4;
  return mp_lock_release(job->lock) == 0 ? 0 : 5;
}

START_TEST(test_lock_across_processes) {
  for (int recursive = 0; recursive < 2; recursive++) {
    job_t job = {0};
    MP_ASSERT_OK(recursive ? mp_rlock_create(&job.lock) : mp_lock_create(&job.lock));
    MP_ASSERT_OK(mp_event_create(&job.ready));
    MP_ASSERT_OK(mp_lock_acquire(job.lock, 0));
    mp_process_t *p = mp_test_start(_i, child_tries_held_lock, &job, sizeof(job_t));
    MP_ASSERT_OK(mp_event_wait(job.ready, 20));
    MP_ASSERT_OK(mp_lock_release(job.lock));
    mp_test_join_ok(p, 20);
    MP_ASSERT_OK(mp_lock_acquire(job.lock, 0)); /* the child left it free */
    MP_ASSERT_OK(mp_lock_release(job.lock));
    mp_lock_close(job.lock);
    mp_event_close(job.ready);
  }
}
END_TEST

/* Mutual exclusion: inside the lock, *shared must be 0 on entry; it counts violations in
 * shared[1] and entries in shared[2]. */
static void critical_sections(job_t *job) {
  volatile long *w = job->shared;
  for (int i = 0; i < job->n; i++) {
    mp_lock_acquire(job->lock, MP_FOREVER);
    if (w[0] != 0)
      w[1]++;
    w[0] = 1;
    for (volatile int spin = 0; spin < 50; spin++) {
    }
    if (i % 64 == 0)
      sched_yield(); /* hand the core over while holding it: the others must wait */
    w[0] = 0;
    w[2]++;
    mp_lock_release(job->lock);
  }
}

static int child_critical_sections(void *arg, size_t size) {
  (void)size;
  critical_sections(arg);
  return 0;
}

static void *thread_critical_sections(void *arg) {
  critical_sections(arg);
  return NULL;
}

START_TEST(test_mutual_exclusion) {
  for (int recursive = 0; recursive < 2; recursive++) {
    job_t job = {.n = 3000};
    mp_array_t *words;
    MP_ASSERT_OK(mp_raw_array_create(&words, 'l', 3, NULL));
    job.shared = mp_array_ptr(words);
    MP_ASSERT_OK(recursive ? mp_rlock_create(&job.lock) : mp_lock_create(&job.lock));
    mp_process_t *p[3];
    for (int k = 0; k < 3; k++)
      p[k] = mp_test_start(_i, child_critical_sections, &job, sizeof(job_t));
    pthread_t t;
    T_INT_EQ(pthread_create(&t, NULL, thread_critical_sections, &job), 0);
    critical_sections(&job);
    T_INT_EQ(pthread_join(t, NULL), 0);
    for (int k = 0; k < 3; k++)
      mp_test_join_ok(p[k], 20);
    T_INT_EQ(job.shared[1], 0);
    T_INT_EQ(job.shared[2], 5 * job.n);
    mp_lock_close(job.lock);
    mp_array_close(words);
  }
}
END_TEST

/* ============================ a holder is killed ============================ */

/* The child takes what the job names, says so, and waits to be killed. */
static int child_holds_and_hangs(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  int rc = job->lock ? mp_lock_acquire(job->lock, 10) : mp_semaphore_acquire(job->sem, 10);
  if (rc != 0)
    return 2;
  if (job->lock && job->n > 1 && mp_lock_acquire(job->lock, 0) != 0) /* RLock: twice */
    return 3;
  mp_event_set(job->ready);
  for (;;)
    pause();
}

static void kill_holder(int method, job_t *job) {
  MP_ASSERT_OK(mp_event_create(&job->ready));
  mp_process_t *p = mp_test_start(method, child_holds_and_hangs, job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job->ready, 20));
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 20), -SIGKILL);
  T_PROC_CLOSE(p);
  mp_event_close(job->ready);
}

START_TEST(test_lock_holder_killed) {
  for (int recursive = 0; recursive < 2; recursive++) {
    job_t job = {.n = 1 + recursive};
    MP_ASSERT_OK(recursive ? mp_rlock_create(&job.lock) : mp_lock_create(&job.lock));
    kill_holder(_i, &job);
    MP_ASSERT_ERR(mp_lock_acquire(job.lock, 10), MP_EOWNERDEAD);
    T_ASSERT(mp_lock_is_owned(job.lock), "acquired after the death, but not owned");
    MP_ASSERT_OK(mp_lock_release(job.lock)); /* one level: the dead holder's are gone */
    MP_ASSERT_ERR(mp_lock_release(job.lock), MP_ENOTHELD);
    MP_ASSERT_OK(mp_lock_acquire(job.lock, 0)); /* consistent again */
    MP_ASSERT_OK(mp_lock_release(job.lock));
    mp_lock_close(job.lock);
  }
}
END_TEST

/* A holder killed while another process already waits: the waiter wakes with the news. */
static int child_waits_for_lock(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  mp_event_set(job->go);
  int rc = mp_lock_acquire(job->lock, 20);
  return rc == MP_EOWNERDEAD && mp_lock_release(job->lock) == 0 ? 0 : 2;
}

START_TEST(test_lock_waiter_told_of_death) {
  job_t job = {.n = 1};
  MP_ASSERT_OK(mp_lock_create(&job.lock));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  MP_ASSERT_OK(mp_event_create(&job.go));
  mp_process_t *holder = mp_test_start(_i, child_holds_and_hangs, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  mp_process_t *waiter = mp_test_start(_i, child_waits_for_lock, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.go, 20));
  mp_test_sleep(0.05);
  MP_ASSERT_OK(mp_process_kill(holder));
  mp_test_join_ok(waiter, 20);
  T_INT_EQ(mp_test_join_code(holder, 20), -SIGKILL);
  T_PROC_CLOSE(holder);
  mp_lock_close(job.lock);
  mp_event_close(job.ready);
  mp_event_close(job.go);
}
END_TEST

START_TEST(test_semaphore_holder_killed) {
  job_t job = {0};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
  kill_holder(_i, &job);
  T_INT_EQ(mp_semaphore_value(job.sem), 0);
  /* An acquirer that would time out looks for dead holders first: even a timeout of 0. */
  MP_ASSERT_ERR(mp_semaphore_acquire(job.sem, 0), MP_EOWNERDEAD);
  MP_ASSERT_OK(mp_semaphore_release(job.sem));
  kill_holder(_i, &job);
  /* A blocked acquirer finds the dead holder within a slice and gets its permit. */
  MP_ASSERT_ERR(mp_semaphore_acquire(job.sem, 10), MP_EOWNERDEAD);
  MP_ASSERT_OK(mp_semaphore_release(job.sem));
  MP_ASSERT_ERR(mp_semaphore_release(job.sem), MP_ETOOMANY); /* returned once only */
  MP_ASSERT_OK(mp_semaphore_acquire(job.sem, 0));
  MP_ASSERT_OK(mp_semaphore_release(job.sem));
  mp_semaphore_close(job.sem);
}
END_TEST

/* A process that ends normally keeps what it acquired: a permit is consumed, not lost. */
static int child_takes_permit(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  return mp_semaphore_acquire(job->sem, 10) == 0 ? 0 : 2;
}

START_TEST(test_semaphore_consumed_by_exit) {
  job_t job = {0};
  MP_ASSERT_OK(mp_semaphore_create(&job.sem, 1));
  mp_test_join_ok(mp_test_start(_i, child_takes_permit, &job, sizeof(job_t)), 20);
  T_INT_EQ(mp_semaphore_value(job.sem), 0);
  T_TAKES_AT_LEAST(mp_semaphore_acquire(job.sem, 0.3), MP_ETIMEDOUT, 0.3);
  mp_semaphore_close(job.sem);
}
END_TEST

/* A plain Semaphore counts items: one taken by a consumer that is then killed is gone. */
START_TEST(test_semaphore_item_taken_by_killed) {
  job_t job = {0};
  MP_ASSERT_OK(mp_semaphore_create(&job.sem, 0));
  MP_ASSERT_OK(mp_semaphore_release(job.sem)); /* one item produced */
  kill_holder(_i, &job);
  MP_ASSERT_ERR(mp_semaphore_acquire(job.sem, 0), MP_ETIMEDOUT);
  T_TAKES_AT_LEAST(mp_semaphore_acquire(job.sem, 0.2), MP_ETIMEDOUT, 0.2);
  T_INT_EQ(mp_semaphore_value(job.sem), 0);
  mp_semaphore_close(job.sem);
}
END_TEST

/* A live holder whose /proc entry cannot be read (the caller is out of fds) stays a holder. */
START_TEST(test_semaphore_holder_alive_without_fds) {
  job_t job = {0};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *p = mp_test_start(_i, child_holds_and_hangs, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  struct rlimit saved, none = {0, 0};
  T_INT_EQ(getrlimit(RLIMIT_NOFILE, &saved), 0);
  none.rlim_max = saved.rlim_max;
  T_INT_EQ(setrlimit(RLIMIT_NOFILE, &none), 0);
  int at_once = mp_semaphore_acquire(job.sem, 0);
  int blocked = mp_semaphore_acquire(job.sem, 0.2); /* looks every slice, and at the end */
  T_INT_EQ(setrlimit(RLIMIT_NOFILE, &saved), 0);
  MP_ASSERT_ERR(at_once, MP_ETIMEDOUT);
  MP_ASSERT_ERR(blocked, MP_ETIMEDOUT);
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 20), -SIGKILL);
  T_PROC_CLOSE(p);
  MP_ASSERT_ERR(mp_semaphore_acquire(job.sem, 10), MP_EOWNERDEAD); /* now it is dead */
  mp_event_close(job.ready);
  mp_semaphore_close(job.sem);
}
END_TEST

typedef struct {
  mp_lock_t *lock;
  mp_event_t *ready, *got; /* got: the waiter took the lock (it ran before the kill) */
} lock_job_t;

/* Pins the caller to the first CPU it may run on (both children pin to the same one): false
 * if it cannot. */
static bool pin_to_first_cpu(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0)
    return false;
  int first = 0;
  while (first < CPU_SETSIZE && !CPU_ISSET(first, &set))
    first++;
  CPU_ZERO(&set);
  CPU_SET(first, &set);
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

/* Sleeps on the lock at SCHED_IDLE on the first CPU: once a hog runs there, it is woken but
 * does not run before it is killed. */
static int child_idle_waiter(void *arg, size_t size) {
  (void)size;
  lock_job_t *job = arg;
  struct sched_param sp = {0};
  if (!pin_to_first_cpu() || sched_setscheduler(0, SCHED_IDLE, &sp) != 0)
    return 2;
  mp_event_set(job->ready);
  if (mp_lock_acquire(job->lock, 60) >= 0)
    mp_event_set(job->got);
  return 3;
}

static int child_hog(void *arg, size_t size) {
  (void)size;
  lock_job_t *job = arg;
  if (!pin_to_first_cpu())
    return 2;
  mp_event_set(job->ready);
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
  if (w->rc == 0 || w->rc == MP_EOWNERDEAD) /* the latter if x ran and took it first */
    mp_lock_release(w->lock);
  return NULL;
}

/*
 * The release wakes the first sleeper (a process); it is SIGKILLed before it runs. The
 * second sleeper, a live thread, must then get the free lock at once: the kernel wakes
 * another waiter when a woken one dies with the mutex named in its robust list
 * (list_op_pending), as mp__mutex_lock_sig names it while it sleeps. Without that the
 * wake-up died with the process and the live waiter slept to its deadline (for ever with
 * MP_FOREVER) on a lock nobody holds.
 */
/* One try; false if x ran and took the lock before the kill (SCHED_IDLE only makes that
 * rare), so that the case was not made. */
static bool woken_waiter_killed_once(int method, lock_job_t *job, lock_waiter_t *w) {
  MP_ASSERT_OK(mp_lock_acquire(job->lock, 0));
  mp_event_clear(job->ready);
  mp_event_clear(job->got);
  mp_process_t *x = mp_test_start(method, child_idle_waiter, job, sizeof *job);
  MP_ASSERT_OK(mp_event_wait(job->ready, 20));
  mp_test_sleep(0.3); /* x sleeps on the mutex: first in line */
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_acquires, w), 0);
  while (!atomic_load(&w->started))
    mp_test_sleep(0.01);
  mp_test_sleep(0.3); /* the thread sleeps second */
  mp_event_clear(job->ready);
  mp_process_t *hog = mp_test_start(method, child_hog, job, sizeof *job);
  MP_ASSERT_OK(mp_event_wait(job->ready, 20));
  mp_test_sleep(0.1);                       /* the hog has the first CPU: x, woken, does not run */
  MP_ASSERT_OK(mp_lock_release(job->lock)); /* wakes x, which cannot run */
  T_INT_EQ(kill(mp_process_pid(x), SIGKILL), 0);
  T_INT_EQ(pthread_join(t, NULL), 0);
  MP_ASSERT_OK(mp_process_kill(hog));
  T_INT_EQ(mp_test_join_code(hog, 20), -SIGKILL);
  T_PROC_CLOSE(hog);
  T_INT_EQ(mp_test_join_code(x, 20), -SIGKILL);
  T_PROC_CLOSE(x);
  return !mp_event_is_set(job->got);
}

START_TEST(test_lock_woken_waiter_killed) {
  lock_job_t job;
  MP_ASSERT_OK(mp_lock_create(&job.lock));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  MP_ASSERT_OK(mp_event_create(&job.got));
  lock_waiter_t w;
  int tries = 0;
  do
    w = (lock_waiter_t){.lock = job.lock};
  while (!woken_waiter_killed_once(_i, &job, &w) && ++tries < 5);
  T_ASSERT(tries < 5, "the woken waiter ran before its kill in each of 5 tries");
  T_ASSERT(w.rc == 0 && w.took < 2,
           "a free lock: the live waiter returned %d (%s) after %.2f s", w.rc,
           w.rc < 0 ? mp_err_name(w.rc) : "", w.took);
  mp_event_close(job.got);
  mp_event_close(job.ready);
  mp_lock_close(job.lock);
}
END_TEST

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

/*
 * One wild word, scanned (when holders were last looked for), makes a blocked acquirer
 * never look for a killed holder: it is taken for a look made in the future (INT64_MAX) or,
 * INT64_MIN, now - scanned overflows (undefined behaviour; it wraps negative). With
 * MP_FOREVER the acquirer waits for good; here it gets the permit only at its deadline.
 */
START_TEST(test_semaphore_wild_scanned) {
  int wild = _i / N_METHODS;
  _i %= N_METHODS;
  {
    job_t job = {0};
    MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
    MP_ASSERT_OK(mp_event_create(&job.ready));
    sem_layout_t *s = (sem_layout_t *)job.sem;
    T_INT_EQ(s->initial, 1);
    mp_process_t *p = mp_test_start(_i, child_holds_and_hangs, &job, sizeof(job_t));
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
START_TEST(test_bounded_semaphore_two_holders) {
  job_t job = {0};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *a = mp_test_start(_i, child_holds_and_hangs, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  MP_ASSERT_OK(mp_semaphore_release(job.sem)); /* handed back for it, as Python allows */
  mp_event_clear(job.ready);
  mp_process_t *c = mp_test_start(_i, child_holds_and_hangs, &job, sizeof(job_t));
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

/* The child releases the permit n times, each once the parent has it again. */
static int child_releases_n(void *arg, size_t size) {
  (void)size;
  const job_t *job = arg;
  double give_up = mp_test_now() + 20;
  for (int released = 0; released < job->n;) {
    int rc = mp_semaphore_release(job->sem);
    if (rc == 0)
      released++;
    else if (rc != MP_ETOOMANY || mp_test_now() > give_up)
      return 2;
    else
      sched_yield();
  }
  return 0;
}

/* A producer and a consumer: one process acquires, another releases for it. Each acquire
 * after such a release listed the semaphore again among the acquirer's held ones, with a
 * reference each, so the semaphore outlived its last close (and the list grew by one entry
 * an acquire). */
START_TEST(test_bounded_semaphore_released_by_another_freed_at_close) {
  job_t job = {.n = 100};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
  MP_ASSERT_OK(mp_semaphore_acquire(job.sem, 0));
  mp_process_t *releaser = mp_test_start(_i, child_releases_n, &job, sizeof job);
  int rc = 0;
  for (int i = 0; i < job.n && rc == 0; i++)
    rc = mp_semaphore_acquire(job.sem, 20);
  mp_test_join_ok(releaser, 20);
  MP_ASSERT_OK(rc);
  MP_ASSERT_OK(mp_semaphore_release(job.sem));
  MP_ASSERT_OK(mp_semaphore_close(job.sem));
  rc = mp_semaphore_value(job.sem);
  T_ASSERT(rc == MP_EINVAL, "after its last close the semaphore is still there (value %d)", rc);
}
END_TEST

/* The natural end of a producer and a consumer: the other process makes the last release.
 * The acquirer's held list keeps its entry (and reference), since no release of its own
 * empties its slot, so the semaphore still outlives its last close. */
START_TEST(test_bounded_semaphore_last_released_by_another_freed_at_close) {
  job_t job = {.n = 1};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
  MP_ASSERT_OK(mp_semaphore_acquire(job.sem, 0));
  mp_test_join_ok(mp_test_start(_i, child_releases_n, &job, sizeof job), 20);
  T_INT_EQ(mp_semaphore_value(job.sem), 1);
  MP_ASSERT_OK(mp_semaphore_close(job.sem));
  int rc = mp_semaphore_value(job.sem);
  T_ASSERT(rc == MP_EINVAL, "after its last close the semaphore is still there (value %d)", rc);
}
END_TEST

static void *thread_takes_handed_permit(void *arg) {
  return (void *)(intptr_t)mp_semaphore_acquire(arg, 20);
}

/* On one CPU, the main thread (at SCHED_IDLE) releases the only permit while a second thread
 * sleeps in an acquire. The release's wake-ups (the sequence word's, then the mutex's) run
 * the thread at once: it takes the permit (the process's slot 0 -> 1, `first`) between the
 * release's unlock and its held_remove, so its held_add finds the entry still listed and
 * adds none, and the release then removes that entry. The child ends normally holding the
 * permit, with no entry to clear its slot at exit. */
static int child_hands_permit_to_thread(void *arg, size_t size) {
  (void)size;
  const job_t *job = arg;
  if (!pin_to_first_cpu())
    return 2;
  if (mp_semaphore_acquire(job->sem, 20) != 0)
    return 3;
  pthread_t t;
  if (pthread_create(&t, NULL, thread_takes_handed_permit, job->sem) != 0)
    return 4;
  struct sched_param sp = {0};
  if (sched_setscheduler(0, SCHED_IDLE, &sp) != 0) /* this thread only */
    return 5;
  mp_test_sleep(0.2); /* the thread sleeps in its acquire */
  if (mp_semaphore_release(job->sem) != 0)
    return 6;
  void *rc;
  if (pthread_join(t, &rc) != 0 || (intptr_t)rc != 0)
    return 7;
  return 0;
}

/* A normal exit keeps what the process took (api.md): its slot goes, and nobody is handed
 * the permit back as a killed holder's. held_add's skip of a listed semaphore runs outside
 * the semaphore's mutex, so it can skip for an entry that a release of another thread is
 * about to remove. */
START_TEST(test_bounded_semaphore_handed_between_threads_kept_at_exit) {
  job_t job = {0};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&job.sem, 1));
  mp_test_join_ok(mp_test_start(_i, child_hands_permit_to_thread, &job, sizeof job), 20);
  T_INT_EQ(mp_semaphore_value(job.sem), 0);
  int rc = mp_semaphore_acquire(job.sem, 0);
  if (rc == 0 || rc == MP_EOWNERDEAD)
    mp_semaphore_release(job.sem);
  mp_semaphore_close(job.sem);
  T_ASSERT(rc == MP_ETIMEDOUT,
           "the permit a child kept at its normal exit came back as a killed holder's: "
           "acquire returned %d (%s)",
           rc, rc < 0 ? mp_err_name(rc) : "");
}
END_TEST

/* ================================ Semaphore ================================ */

START_TEST(test_semaphore_basics) {
  mp_semaphore_t *sem;
  MP_ASSERT_OK(mp_semaphore_create(&sem, 2));
  MP_ASSERT_OK(mp_semaphore_acquire(sem, 0));
  MP_ASSERT_OK(mp_semaphore_acquire(sem, 0));
  T_INT_EQ(mp_semaphore_value(sem), 0);
  MP_ASSERT_ERR(mp_semaphore_acquire(sem, 0), MP_ETIMEDOUT);
  MP_ASSERT_ERR(mp_semaphore_acquire(sem, -5), MP_ETIMEDOUT);
  T_TAKES_AT_LEAST(mp_semaphore_acquire(sem, 0.2), MP_ETIMEDOUT, 0.2);
  for (int i = 0; i < 3; i++) /* unbounded: above the initial value is fine */
    MP_ASSERT_OK(mp_semaphore_release(sem));
  T_INT_EQ(mp_semaphore_value(sem), 3);
  MP_ASSERT_OK(mp_semaphore_close(sem));

  MP_ASSERT_OK(mp_bounded_semaphore_create(&sem, 1));
  MP_ASSERT_ERR(mp_semaphore_release(sem), MP_ETOOMANY);
  MP_ASSERT_OK(mp_semaphore_acquire(sem, 0));
  MP_ASSERT_OK(mp_semaphore_release(sem));
  MP_ASSERT_ERR(mp_semaphore_release(sem), MP_ETOOMANY);
  T_INT_EQ(mp_semaphore_value(sem), 1);
  MP_ASSERT_OK(mp_semaphore_close(sem));
  MP_ASSERT_ERR(mp_semaphore_create(&sem, -1), MP_EINVAL);
  MP_ASSERT_ERR(mp_semaphore_create(NULL, 1), MP_EINVAL);
}
END_TEST

/* The child takes n permits one by one as the parent gives them, then gives one back. */
static int child_counts_permits(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  for (int i = 0; i < job->n; i++)
    if (mp_semaphore_acquire(job->sem, 20) != 0)
      return 2;
  return mp_semaphore_release(job->sem) == 0 ? 0 : 3;
}

START_TEST(test_semaphore_across_processes) {
  job_t job = {.n = 50};
  MP_ASSERT_OK(mp_semaphore_create(&job.sem, 0));
  mp_process_t *p = mp_test_start(_i, child_counts_permits, &job, sizeof(job_t));
  for (int i = 0; i < job.n; i++)
    MP_ASSERT_OK(mp_semaphore_release(job.sem));
  mp_test_join_ok(p, 20);
  T_INT_EQ(mp_semaphore_value(job.sem), 1);
  mp_semaphore_close(job.sem);
}
END_TEST

/* Threads: never more holders than permits. */
typedef struct {
  mp_semaphore_t *sem;
  _Atomic int inside, violations;
} permits_t;

static void *thread_uses_permits(void *arg) {
  permits_t *pm = arg;
  for (int i = 0; i < 2000; i++) {
    if (mp_semaphore_acquire(pm->sem, 20) != 0) {
      atomic_fetch_add(&pm->violations, 1000000);
      break;
    }
    if (atomic_fetch_add(&pm->inside, 1) >= 2)
      atomic_fetch_add(&pm->violations, 1);
    if (i % 64 == 0)
      sched_yield();
    atomic_fetch_sub(&pm->inside, 1);
    mp_semaphore_release(pm->sem);
  }
  return NULL;
}

START_TEST(test_semaphore_threads) {
  permits_t pm = {0};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&pm.sem, 2));
  pthread_t t[4];
  for (int k = 0; k < 4; k++)
    T_INT_EQ(pthread_create(&t[k], NULL, thread_uses_permits, &pm), 0);
  for (int k = 0; k < 4; k++)
    T_INT_EQ(pthread_join(t[k], NULL), 0);
  T_INT_EQ(atomic_load(&pm.violations), 0);
  T_INT_EQ(mp_semaphore_value(pm.sem), 2);
  mp_semaphore_close(pm.sem);
}
END_TEST

/* mp_semaphore_value reads the value without the semaphore's lock while threads acquire and
 * release: always a value the semaphore had, and (under ThreadSanitizer) no data race. */
START_TEST(test_semaphore_value_while_used) {
  permits_t pm = {0};
  MP_ASSERT_OK(mp_bounded_semaphore_create(&pm.sem, 2));
  pthread_t t[2];
  for (int k = 0; k < 2; k++)
    T_INT_EQ(pthread_create(&t[k], NULL, thread_uses_permits, &pm), 0);
  int out_of_range = 0;
  for (int i = 0; i < 20000; i++) {
    int v = mp_semaphore_value(pm.sem);
    out_of_range += v < 0 || v > 2;
  }
  for (int k = 0; k < 2; k++)
    T_INT_EQ(pthread_join(t[k], NULL), 0);
  T_INT_EQ(out_of_range, 0);
  T_INT_EQ(atomic_load(&pm.violations), 0);
  mp_semaphore_close(pm.sem);
}
END_TEST

/* ================================ Event ================================ */

static int child_event_echo(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  for (int i = 0; i < job->n; i++) {
    if (mp_event_wait(job->go, 20) != 0)
      return 2;
    mp_event_clear(job->go);
    mp_event_set(job->ready);
  }
  return 0;
}

START_TEST(test_event_across_processes) {
  job_t job = {.n = 100};
  MP_ASSERT_OK(mp_event_create(&job.go));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *p = mp_test_start(_i, child_event_echo, &job, sizeof(job_t));
  for (int i = 0; i < job.n; i++) {
    MP_ASSERT_OK(mp_event_set(job.go));
    MP_ASSERT_OK(mp_event_wait(job.ready, 20));
    MP_ASSERT_OK(mp_event_clear(job.ready));
  }
  mp_test_join_ok(p, 20);
  mp_event_close(job.go);
  mp_event_close(job.ready);
}
END_TEST

START_TEST(test_event_basics) {
  mp_event_t *e;
  MP_ASSERT_OK(mp_event_create(&e));
  T_ASSERT(!mp_event_is_set(e), "a new event is set");
  MP_ASSERT_ERR(mp_event_wait(e, 0), MP_ETIMEDOUT);
  MP_ASSERT_ERR(mp_event_wait(e, -1), MP_ETIMEDOUT);
  T_TAKES_AT_LEAST(mp_event_wait(e, 0.2), MP_ETIMEDOUT, 0.2);
  MP_ASSERT_OK(mp_event_set(e));
  MP_ASSERT_OK(mp_event_set(e));
  T_ASSERT(mp_event_is_set(e), "not set after set");
  MP_ASSERT_OK(mp_event_wait(e, 0));
  MP_ASSERT_OK(mp_event_clear(e));
  T_ASSERT(!mp_event_is_set(e), "set after clear");
  MP_ASSERT_OK(mp_event_close(e));
  MP_ASSERT_ERR(mp_event_create(NULL), MP_EINVAL);
  T_ASSERT(!mp_event_is_set(NULL), "NULL is set");
}
END_TEST

/* A set followed at once by a clear still wakes a waiter: it was set while it waited. */
static void *set_then_clear(void *arg) {
  mp_test_sleep(0.1);
  mp_event_set(arg);
  mp_event_clear(arg);
  return NULL;
}

START_TEST(test_event_set_then_cleared) {
  mp_event_t *e;
  MP_ASSERT_OK(mp_event_create(&e));
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, set_then_clear, e), 0);
  MP_ASSERT_OK(mp_event_wait(e, 20));
  T_INT_EQ(pthread_join(t, NULL), 0);
  mp_event_close(e);
}
END_TEST

/* One set wakes every waiting thread. */
static void *thread_waits_for_event(void *arg) {
  return (void *)(intptr_t)mp_event_wait(arg, 20);
}

START_TEST(test_event_wakes_all_threads) {
  mp_event_t *e;
  MP_ASSERT_OK(mp_event_create(&e));
  pthread_t t[3];
  for (int k = 0; k < 3; k++)
    T_INT_EQ(pthread_create(&t[k], NULL, thread_waits_for_event, e), 0);
  mp_test_sleep(0.05);
  MP_ASSERT_OK(mp_event_set(e));
  for (int k = 0; k < 3; k++) {
    void *rc;
    T_INT_EQ(pthread_join(t[k], &rc), 0);
    MP_ASSERT_OK((int)(intptr_t)rc);
  }
  mp_event_close(e);
}
END_TEST

typedef struct {
  mp_event_t *event;
  int data; /* written before the set, read after the wait */
} setter_t;

static void *thread_writes_then_sets(void *arg) {
  setter_t *st = arg;
  st->data = 42;
  mp_event_set(st->event);
  return NULL;
}

/* A set on an event already set still orders the setter's writes before a later waiter's
 * return, as Python's set() does under its lock (ThreadSanitizer reports the read of data
 * otherwise: nothing but the sleep would order it). */
START_TEST(test_event_set_twice_orders) {
  mp_event_t *event;
  MP_ASSERT_OK(mp_event_create(&event));
  MP_ASSERT_OK(mp_event_set(event));
  setter_t st = {event, 0};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_writes_then_sets, &st), 0);
  mp_test_sleep(0.2 * mp_test_slowdown()); /* its set done, on the event already set */
  MP_ASSERT_OK(mp_event_wait(event, 5));
  T_INT_EQ(st.data, 42);
  T_INT_EQ(pthread_join(t, NULL), 0);
  mp_event_close(event);
}
END_TEST

/* ================================ Condition ================================ */

START_TEST(test_condition_misuse_and_timeout) {
  mp_condition_t *cond;
  MP_ASSERT_OK(mp_condition_create(&cond, NULL));
  MP_ASSERT_ERR(mp_condition_wait(cond, 0), MP_ENOTHELD);
  MP_ASSERT_ERR(mp_condition_notify(cond, 1), MP_ENOTHELD);
  MP_ASSERT_ERR(mp_condition_notify_all(cond), MP_ENOTHELD);
  MP_ASSERT_ERR(mp_condition_release(cond), MP_ENOTHELD);
  MP_ASSERT_OK(mp_condition_acquire(cond, 0));
  MP_ASSERT_OK(mp_condition_acquire(cond, 0)); /* its own lock is an RLock */
  MP_ASSERT_ERR(mp_condition_wait_for(cond, NULL, NULL, 0), MP_EINVAL);
  T_TAKES_AT_LEAST(mp_condition_wait(cond, 0.2), MP_ETIMEDOUT, 0.2);
  T_ASSERT(mp_lock_is_owned(mp_condition_lock(cond)), "the lock is not held after wait");
  MP_ASSERT_ERR(mp_condition_wait(cond, -1), MP_ETIMEDOUT);
  MP_ASSERT_OK(mp_condition_notify(cond, 1)); /* nobody waits: nothing to do */
  MP_ASSERT_OK(mp_condition_release(cond));
  MP_ASSERT_OK(mp_condition_release(cond)); /* both levels were restored */
  MP_ASSERT_ERR(mp_condition_release(cond), MP_ENOTHELD);
  MP_ASSERT_OK(mp_condition_close(cond));
  MP_ASSERT_ERR(mp_condition_create(NULL, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_condition_wait(NULL, 0), MP_EINVAL);
}
END_TEST

/* Takes the lock the waiter holds twice (so wait released both levels) and notifies. */
static void *thread_notifies(void *arg) {
  mp_condition_t *cond = arg;
  if (mp_condition_acquire(cond, 10) != 0)
    return (void *)1;
  int rc = mp_condition_notify(cond, 1);
  mp_condition_release(cond);
  return (void *)(intptr_t)(rc != 0);
}

START_TEST(test_condition_wait_releases_rlock) {
  mp_condition_t *cond;
  MP_ASSERT_OK(mp_condition_create(&cond, NULL));
  MP_ASSERT_OK(mp_condition_acquire(cond, 0));
  MP_ASSERT_OK(mp_condition_acquire(cond, 0));
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_notifies, cond), 0);
  MP_ASSERT_OK(mp_condition_wait(cond, 20));
  void *bad;
  T_INT_EQ(pthread_join(t, &bad), 0);
  T_INT_EQ((intptr_t)bad, 0);
  MP_ASSERT_OK(mp_condition_release(cond));
  MP_ASSERT_OK(mp_condition_release(cond));
  MP_ASSERT_ERR(mp_condition_release(cond), MP_ENOTHELD);
  mp_condition_close(cond);
}
END_TEST

static bool never(void *arg) {
  (void)arg;
  return false;
}

START_TEST(test_condition_wait_for_timeout) {
  mp_lock_t *lock;
  mp_condition_t *cond;
  MP_ASSERT_OK(mp_lock_create(&lock));
  MP_ASSERT_OK(mp_condition_create(&cond, lock));
  MP_ASSERT_OK(mp_lock_close(lock)); /* the condition holds its own reference */
  T_ASSERT(mp_condition_lock(cond) == lock, "not over the given lock");
  MP_ASSERT_OK(mp_condition_acquire(cond, 0));
  T_TAKES_AT_LEAST(mp_condition_wait_for(cond, never, NULL, 0.2), MP_ETIMEDOUT, 0.2);
  MP_ASSERT_OK(mp_condition_release(cond));
  MP_ASSERT_OK(mp_condition_close(cond));
}
END_TEST

/* Producer/consumer through a ring of 4 slots guarded by the condition:
 * shared[0] = produced, shared[1] = consumed, shared[2..5] = the ring. */
static bool has_item(void *arg) {
  long *w = arg;
  return w[0] > w[1];
}

static bool has_room(void *arg) {
  long *w = arg;
  return w[0] - w[1] < 4;
}

static int child_produces(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  long *w = job->shared;
  for (long i = 1; i <= job->n; i++) {
    mp_condition_acquire(job->cond, MP_FOREVER);
    if (mp_condition_wait_for(job->cond, has_room, w, 20) != 0)
      return 2;
    w[2 + w[0] % 4] = i * 7;
    w[0]++;
    mp_condition_notify(job->cond, 1);
    mp_condition_release(job->cond);
  }
  return 0;
}

static void *thread_produces(void *arg) {
  return (void *)(intptr_t)child_produces(arg, 0);
}

/* Takes job->n items from child_produces, in order. */
static void consume_items(job_t *job) {
  long *w = job->shared;
  for (long i = 1; i <= job->n; i++) {
    MP_ASSERT_OK(mp_condition_acquire(job->cond, 20));
    MP_ASSERT_OK(mp_condition_wait_for(job->cond, has_item, w, 20));
    T_INT_EQ(w[2 + w[1] % 4], i * 7);
    w[1]++;
    MP_ASSERT_OK(mp_condition_notify(job->cond, 1));
    MP_ASSERT_OK(mp_condition_release(job->cond));
  }
}

/* The same between two threads, over a plain Lock. */
START_TEST(test_condition_threads) {
  job_t job = {.n = 300};
  mp_array_t *words;
  MP_ASSERT_OK(mp_raw_array_create(&words, 'l', 6, NULL));
  job.shared = mp_array_ptr(words);
  mp_lock_t *lock;
  MP_ASSERT_OK(mp_lock_create(&lock));
  MP_ASSERT_OK(mp_condition_create(&job.cond, lock));
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_produces, &job), 0);
  consume_items(&job);
  void *trc;
  T_INT_EQ(pthread_join(t, &trc), 0);
  T_INT_EQ((intptr_t)trc, 0);
  mp_condition_close(job.cond);
  mp_lock_close(lock);
  mp_array_close(words);
}
END_TEST

START_TEST(test_condition_producer_consumer) {
  for (int own_lock = 0; own_lock < 2; own_lock++) {
    job_t job = {.n = 300};
    mp_array_t *words;
    MP_ASSERT_OK(mp_raw_array_create(&words, 'l', 6, NULL));
    job.shared = mp_array_ptr(words);
    mp_lock_t *lock = NULL;
    if (!own_lock)
      MP_ASSERT_OK(mp_lock_create(&lock));
    MP_ASSERT_OK(mp_condition_create(&job.cond, lock));
    mp_process_t *p = mp_test_start(_i, child_produces, &job, sizeof(job_t));
    consume_items(&job);
    mp_test_join_ok(p, 20);
    mp_condition_close(job.cond);
    if (lock)
      mp_lock_close(lock);
    mp_array_close(words);
  }
}
END_TEST

/* notify(1) wakes one of three waiting threads, never more; notify_all the rest. */
typedef struct {
  mp_condition_t *cond;
  _Atomic int waiting, woken;
  int rc[3];
  double timeout; /* of each wait; 0: 20 s */
} waiters_t;

static void *thread_waits(void *arg) {
  waiters_t *w = arg;
  mp_condition_acquire(w->cond, MP_FOREVER);
  int k = atomic_fetch_add(&w->waiting, 1);
  w->rc[k] = mp_condition_wait(w->cond, w->timeout > 0 ? w->timeout : 20);
  atomic_fetch_add(&w->woken, 1);
  mp_condition_release(w->cond);
  return NULL;
}

/* Starts n threads that wait on w->cond, and returns once all n wait (they counted
 * themselves under the lock, which wait releases), with the lock held. */
static void start_waiters(waiters_t *w, pthread_t *t, int n) {
  for (int k = 0; k < n; k++)
    T_INT_EQ(pthread_create(&t[k], NULL, thread_waits, w), 0);
  for (;;) {
    MP_ASSERT_OK(mp_condition_acquire(w->cond, 20));
    if (atomic_load(&w->waiting) == n)
      return;
    MP_ASSERT_OK(mp_condition_release(w->cond));
    mp_test_sleep(0.01);
  }
}

START_TEST(test_condition_notify_counts) {
  waiters_t w = {0};
  MP_ASSERT_OK(mp_condition_create(&w.cond, NULL));
  pthread_t t[3];
  start_waiters(&w, t, 3);
  MP_ASSERT_OK(mp_condition_notify(w.cond, 1));
  MP_ASSERT_OK(mp_condition_release(w.cond));
  for (int tries = 0; tries < 2000 && atomic_load(&w.woken) < 1; tries++)
    mp_test_sleep(0.005);
  mp_test_sleep(0.2);
  T_INT_EQ(atomic_load(&w.woken), 1);
  MP_ASSERT_OK(mp_condition_acquire(w.cond, 20));
  MP_ASSERT_OK(mp_condition_notify_all(w.cond));
  MP_ASSERT_OK(mp_condition_release(w.cond));
  for (int k = 0; k < 3; k++)
    T_INT_EQ(pthread_join(t[k], NULL), 0);
  for (int k = 0; k < 3; k++)
    MP_ASSERT_OK(w.rc[k]);
  mp_condition_close(w.cond);
}
END_TEST

/* The number of token batches, written wild by another process, bounds no move or write:
 * notify and every waiter say MP_ECORRUPT with a sentence, later calls too, and the
 * condition works again once the word is put back. */
START_TEST(test_condition_corrupt_batches) {
  waiters_t w = {0};
  MP_ASSERT_OK(mp_condition_create(&w.cond, NULL));
  pthread_t t[3];
  start_waiters(&w, t, 3);
  MP_ASSERT_OK(mp_condition_notify(w.cond, 1));
  MP_ASSERT_OK(mp_condition_notify(w.cond, 1));
  /* 3 waiting, 2 tokens, in 2 batches: the word after the first two is the batches. */
  const uint32_t counts[3] = {3, 2, 2};
  char *batches =
      (char *)w.cond + mp_test_find_bytes(w.cond, 256, 4, counts, sizeof counts) + 8;
  uint32_t wild = 1000;
  mp_test_forge(_i, batches, &wild, sizeof wild);
  for (int attempt = 0; attempt < 2; attempt++) {
    MP_ASSERT_ERR(mp_condition_notify(w.cond, 1), MP_ECORRUPT);
    T_ASSERT(strstr(mp_last_error(), "corrupt") && strstr(mp_last_error(), "1000"),
             "the sentence: %s", mp_last_error());
  }
  MP_ASSERT_OK(mp_condition_release(w.cond));
  for (int k = 0; k < 3; k++)
    T_INT_EQ(pthread_join(t[k], NULL), 0);
  for (int k = 0; k < 3; k++)
    MP_ASSERT_ERR(w.rc[k], MP_ECORRUPT);
  MP_ASSERT_OK(mp_condition_acquire(w.cond, 20));
  MP_ASSERT_ERR(mp_condition_wait(w.cond, MP_FOREVER), MP_ECORRUPT); /* at once */
  T_ASSERT(mp_condition_notify_all(w.cond) == MP_ECORRUPT, "notify_all");
  MP_ASSERT_OK(mp_condition_release(w.cond));

  uint32_t sane = 2;
  memcpy(batches, &sane, sizeof sane);
  w = (waiters_t){.cond = w.cond};
  start_waiters(&w, t, 1);
  MP_ASSERT_OK(mp_condition_notify(w.cond, 1));
  MP_ASSERT_OK(mp_condition_release(w.cond));
  T_INT_EQ(pthread_join(t[0], NULL), 0);
  MP_ASSERT_OK(w.rc[0]);

  /* A waiter asleep with no token coming, when the word goes wild: a notify wakes it to
   * find the same (it slept for ever before). */
  w = (waiters_t){.cond = w.cond, .timeout = 3600}; /* longer than the test may take */
  start_waiters(&w, t, 1);
  memcpy(batches, &wild, sizeof wild);
  MP_ASSERT_ERR(mp_condition_notify(w.cond, 1), MP_ECORRUPT);
  MP_ASSERT_OK(mp_condition_release(w.cond));
  T_INT_EQ(pthread_join(t[0], NULL), 0);
  MP_ASSERT_ERR(w.rc[0], MP_ECORRUPT);
  memcpy(batches, &sane, sizeof sane);
  mp_condition_close(w.cond);
}
END_TEST

/* A waiter killed inside wait: a notify may be spent on it, but never saved for later. */
static int child_waits_on_condition(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  if (mp_condition_acquire(job->cond, 10) != 0)
    return 2;
  mp_event_set(job->ready);
  mp_condition_wait(job->cond, 30);
  return 3;
}

START_TEST(test_condition_waiter_killed) {
  job_t job = {0};
  MP_ASSERT_OK(mp_condition_create(&job.cond, NULL));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *p = mp_test_start(_i, child_waits_on_condition, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  MP_ASSERT_OK(mp_condition_acquire(job.cond, 20)); /* free once the child waits */
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 20), -SIGKILL);
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp_condition_notify(job.cond, 1)); /* only the dead waiter was waiting */
  for (int k = 0; k < 2; k++)
    T_TAKES_AT_LEAST(mp_condition_wait(job.cond, 0.1), MP_ETIMEDOUT, 0.1);
  MP_ASSERT_OK(mp_condition_notify_all(job.cond));
  T_TAKES_AT_LEAST(mp_condition_wait(job.cond, 0.1), MP_ETIMEDOUT, 0.1);
  MP_ASSERT_OK(mp_condition_release(job.cond));
  /* Two live waiters with timeouts, one notify(1): one is notified and the other times out,
   * although the dead waiter's absorbed notify is still there. */
  waiters_t w = {.cond = job.cond, .timeout = 0.5};
  pthread_t t[2];
  start_waiters(&w, t, 2);
  MP_ASSERT_OK(mp_condition_notify(w.cond, 1));
  MP_ASSERT_OK(mp_condition_release(w.cond));
  for (int k = 0; k < 2; k++)
    T_INT_EQ(pthread_join(t[k], NULL), 0);
  T_ASSERT((w.rc[0] == 0 && w.rc[1] == MP_ETIMEDOUT) ||
               (w.rc[1] == 0 && w.rc[0] == MP_ETIMEDOUT),
           "notify(1) with two waiters: they returned %d and %d", w.rc[0], w.rc[1]);
  mp_event_close(job.ready);
  mp_condition_close(job.cond);
}
END_TEST

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
} timed_waiter_t;

static void *thread_waits_timed(void *arg) {
  timed_waiter_t *w = arg;
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
 * take it") it must get the notify, within a sleep's slice (the wake-up went to the dead
 * one: without the slice it slept to its deadline, for ever with MP_FOREVER).
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
  timed_waiter_t w = {.cond = job.cond};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_waits_timed, &w), 0);
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

/* A Condition's count of waiters and of tokens: the two 32-bit words after magic, seq and
 * gen (64-bit), tokens the second. */
#define COND_WAITING_AT 16

typedef struct {
  pid_t child;
  const mp_condition_t *cond;
} traced_cond_t;

/* Read in the traced child (PTRACE_PEEKDATA), the same shared page: a read here would race,
 * for TSan, with the waiter's later take of the token, which it cannot see follow the kill. */
static bool tokens_made(void *arg) {
  const traced_cond_t *tc = arg;
  errno = 0;
  long word = ptrace(PTRACE_PEEKDATA, tc->child, (const char *)tc->cond + COND_WAITING_AT, NULL);
  uint32_t waiting_tokens[2];
  memcpy(waiting_tokens, &word, sizeof waiting_tokens);
  return errno == 0 && waiting_tokens[1] != 0;
}

/*
 * A notifier killed inside notify, after it wrote its tokens: the next holder of the lock
 * gets it with MP_EOWNERDEAD, and the notify stands for the thread that was waiting. That
 * thread slept on to its deadline (for ever with MP_FOREVER) when the notify moved the futex
 * word only after its tokens: a sleeper looks only when that word moved.
 */
START_TEST(test_condition_notifier_killed_after_its_tokens) {
  timed_waiter_t w = {0};
  MP_ASSERT_OK(mp_condition_create(&w.cond, NULL));
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_waits_timed, &w), 0);
  while (!atomic_load(&w.waiting))
    mp_test_sleep(0.01);
  double began = mp_test_now();
  MP_ASSERT_OK(mp_condition_acquire(w.cond, 20)); /* free once the thread waits */
  MP_ASSERT_OK(mp_condition_release(w.cond));
  pid_t child = mp_test_fork_traced();
  if (child == 0) {
    if (mp_condition_acquire(w.cond, 5) == 0)
      mp_condition_notify(w.cond, 1);
    _exit(0);
  }
  traced_cond_t tc = {child, w.cond};
  bool killed = mp_test_step_until(child, tokens_made, &tc);
  mp_test_end_traced(child);
  double killed_at = mp_test_now();
  T_INT_EQ(pthread_join(t, NULL), 0);
  mp_condition_close(w.cond);
  T_ASSERT(killed, "the notifier ended before it made its tokens");
  T_ASSERT(w.rc == MP_EOWNERDEAD, "the waiter's wait returned %d (%s), not MP_EOWNERDEAD", w.rc,
           w.rc < 0 ? mp_err_name(w.rc) : "notified");
  double late = began + w.took - killed_at;
  T_ASSERT(late < 1.0 * mp_test_slowdown(),
           "the waiter took the dead notifier's notify %.2f s after its death (its deadline: "
           "%.2f s after its wait began)",
           late, w.took);
}
END_TEST

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
  timed_waiter_t w = {.cond = cond};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_waits_timed, &w), 0);
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

/* A child writes a Condition's lock word to name another live Lock of the parent (cases
 * 0..N_METHODS-1: a Condition over a caller's Lock; then one with its own RLock). The last
 * close drops only the reference the Condition took, kept by the process that made it, not
 * read from the word: the other Lock stays the parent's. In the maker the Condition's lock
 * is freed (the next lock of its kind is made in its block); a last close in a child leaves
 * it. Followed, the word made the close free the other Lock while in use (review rev2-mem). */
static int child_closes_condition(void *arg, size_t size) {
  (void)size;
  return mp_condition_close(*(mp_condition_t **)arg) == 0 ? 0 : 2;
}

START_TEST(test_condition_close_drops_only_its_lock) {
  int method = _i % N_METHODS;
  bool own = _i >= N_METHODS;
  mp_lock_t *other;
  MP_ASSERT_OK(mp_lock_create(&other)); /* the parent's, one reference */
  for (int in_child = 0; in_child < 2; in_child++) {
    mp_lock_t *mine = NULL;
    mp_condition_t *cond;
    if (!own)
      MP_ASSERT_OK(mp_lock_create(&mine));
    MP_ASSERT_OK(mp_condition_create(&cond, mine));
    if (own)
      mine = mp_condition_lock(cond);
    else
      MP_ASSERT_OK(mp_lock_close(mine)); /* the Condition holds the only reference now */
    size_t at = mp_test_find_bytes(cond, 256, 8, &mine, sizeof mine);
    mp_test_forge(method, (char *)cond + at, &other, sizeof other);
    if (in_child)
      mp_test_join_ok(mp_test_start(method, child_closes_condition, &cond, sizeof cond), 30);
    else
      MP_ASSERT_OK(mp_condition_close(cond));
    mp_lock_t *next;
    MP_ASSERT_OK(own ? mp_rlock_create(&next) : mp_lock_create(&next));
    MP_ASSERT_OK(mp_lock_close(next));
    T_ASSERT(next != other,
             "a child wrote a Condition's lock word to the parent's other Lock: the last "
             "close (%s) dropped that Lock's only reference, and the next lock made took "
             "its block (%p)",
             in_child ? "in a child" : "in the parent", (void *)next);
    T_ASSERT(in_child || next == mine,
             "the close in the process that made the Condition left its %s %p (next %p)",
             own ? "own RLock" : "caller's Lock", (void *)mine, (void *)next);
    MP_ASSERT_OK(mp_lock_acquire(other, 0));
    MP_ASSERT_OK(mp_lock_release(other));
  }
  MP_ASSERT_OK(mp_lock_close(other));
}
END_TEST

/* ================================ Barrier ================================ */

/* The action counts rounds in the shared word it is given. */
static int count_round(void *arg) {
  (*(long *)arg)++;
  return 0;
}

static int fail_action(void *arg) {
  (void)arg;
  return 1;
}

/* Each party records its arrival indices: shared[round * parties + index] += 1. */
static int barrier_rounds(job_t *job) {
  int parties = mp_barrier_parties(job->barrier);
  for (int round = 0; round < job->n; round++) {
    int index = mp_barrier_wait(job->barrier, 20);
    if (index < 0 || index >= parties)
      return 2;
    __atomic_fetch_add(&job->shared[1 + round * parties + index], 1, __ATOMIC_SEQ_CST);
  }
  return 0;
}

static int child_barrier_rounds(void *arg, size_t size) {
  (void)size;
  return barrier_rounds(arg);
}

static void *thread_barrier_rounds(void *arg) {
  return (void *)(intptr_t)barrier_rounds(arg);
}

START_TEST(test_barrier_rounds) {
  job_t job = {.n = 20};
  const int parties = 4; /* this thread, another thread, two processes */
  mp_array_t *words;
  MP_ASSERT_OK(mp_raw_array_create(&words, 'l', 1 + (size_t)job.n * parties, NULL));
  job.shared = mp_array_ptr(words);
  MP_ASSERT_OK(mp_barrier_create(&job.barrier, parties, count_round, job.shared));
  T_INT_EQ(mp_barrier_parties(job.barrier), parties);
  mp_process_t *p[2];
  for (int k = 0; k < 2; k++)
    p[k] = mp_test_start(_i, child_barrier_rounds, &job, sizeof(job_t));
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_barrier_rounds, &job), 0);
  T_INT_EQ(barrier_rounds(&job), 0);
  void *trc;
  T_INT_EQ(pthread_join(t, &trc), 0);
  T_INT_EQ((intptr_t)trc, 0);
  for (int k = 0; k < 2; k++)
    mp_test_join_ok(p[k], 20);
  T_INT_EQ(job.shared[0], job.n); /* the action ran once a round */
  for (int i = 0; i < job.n * parties; i++)
    T_INT_EQ(job.shared[1 + i], 1); /* each index once a round */
  T_ASSERT(!mp_barrier_broken(job.barrier), "broken after clean rounds");
  mp_barrier_close(job.barrier);
  mp_array_close(words);
}
END_TEST

static int child_waits_at_barrier(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  mp_event_set(job->ready);
  return mp_barrier_wait(job->barrier, 20) == MP_EBROKEN ? 0 : 2;
}

/* A waiter of another process learns of an abort, a reset and a timeout at once. */
START_TEST(test_barrier_abort_reset_timeout) {
  job_t job = {0};
  MP_ASSERT_OK(mp_event_create(&job.ready));
  MP_ASSERT_OK(mp_barrier_create(&job.barrier, 3, NULL, NULL));
  for (int how = 0; how < 3; how++) {
    mp_event_clear(job.ready);
    mp_process_t *p = mp_test_start(_i, child_waits_at_barrier, &job, sizeof(job_t));
    MP_ASSERT_OK(mp_event_wait(job.ready, 20));
    for (int tries = 0; tries < 2000 && mp_barrier_n_waiting(job.barrier) < 1; tries++)
      mp_test_sleep(0.005);
    T_INT_EQ(mp_barrier_n_waiting(job.barrier), 1);
    if (how == 0) {
      MP_ASSERT_OK(mp_barrier_abort(job.barrier));
      T_ASSERT(mp_barrier_broken(job.barrier), "not broken after abort");
      MP_ASSERT_ERR(mp_barrier_wait(job.barrier, 1), MP_EBROKEN);
      mp_test_join_ok(p, 20);
      MP_ASSERT_OK(mp_barrier_reset(job.barrier));
    } else if (how == 1) {
      MP_ASSERT_OK(mp_barrier_reset(job.barrier)); /* its waiter breaks out */
      mp_test_join_ok(p, 20);
      T_ASSERT(!mp_barrier_broken(job.barrier), "broken after reset");
    } else {
      /* Our timeout breaks the barrier for the child too, as in Python. */
      T_TAKES_AT_LEAST(mp_barrier_wait(job.barrier, 0.1), MP_EBROKEN, 0.1);
      mp_test_join_ok(p, 20);
      T_ASSERT(mp_barrier_broken(job.barrier), "a timeout did not break the barrier");
      MP_ASSERT_OK(mp_barrier_reset(job.barrier));
    }
    T_INT_EQ(mp_barrier_n_waiting(job.barrier), 0);
  }
  mp_barrier_close(job.barrier);
  mp_event_close(job.ready);
}
END_TEST

/* A party killed while it waits has arrived: the round completes without it. A party that
 * dies before it arrives never does: the others' timeout breaks the barrier for all. */
static int child_arrives_and_hangs(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  mp_event_set(job->ready);
  if (mp_barrier_wait(job->barrier, MP_FOREVER) < 0)
    return 2;
  return 3; /* the round cannot end before the parent arrives, after killing us */
}

START_TEST(test_barrier_party_killed) {
  job_t job = {0};
  MP_ASSERT_OK(mp_event_create(&job.ready));
  MP_ASSERT_OK(mp_barrier_create(&job.barrier, 2, NULL, NULL));
  mp_process_t *p = mp_test_start(_i, child_arrives_and_hangs, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  for (int tries = 0; tries < 2000 && mp_barrier_n_waiting(job.barrier) < 1; tries++)
    mp_test_sleep(0.005);
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 20), -SIGKILL);
  T_PROC_CLOSE(p);
  T_INT_EQ(mp_barrier_wait(job.barrier, 20), 1);
  mp_barrier_close(job.barrier);

  /* Three parties: one waits, the third never arrives, as one that died before it did. */
  MP_ASSERT_OK(mp_barrier_create(&job.barrier, 3, NULL, NULL));
  mp_event_clear(job.ready);
  mp_process_t *waiter = mp_test_start(_i, child_waits_at_barrier, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  T_TAKES_AT_LEAST(mp_barrier_wait(job.barrier, 0.3), MP_EBROKEN, 0.3);
  mp_test_join_ok(waiter, 20); /* it got MP_EBROKEN too */
  mp_barrier_close(job.barrier);
  mp_event_close(job.ready);
}
END_TEST

START_TEST(test_barrier_misc) {
  mp_barrier_t *b;
  MP_ASSERT_OK(mp_barrier_create(&b, 1, NULL, NULL));
  T_INT_EQ(mp_barrier_wait(b, 0), 0); /* one party: the last to arrive, at once */
  T_INT_EQ(mp_barrier_wait(b, 0), 0);
  MP_ASSERT_OK(mp_barrier_close(b));

  MP_ASSERT_OK(mp_barrier_create(&b, 2, NULL, NULL));
  T_TAKES_AT_LEAST(mp_barrier_wait(b, 0.2), MP_EBROKEN, 0.2);
  T_ASSERT(mp_barrier_broken(b), "not broken after a timeout");
  MP_ASSERT_ERR(mp_barrier_wait(b, 0.2), MP_EBROKEN);
  MP_ASSERT_OK(mp_barrier_reset(b));
  T_ASSERT(!mp_barrier_broken(b), "broken after reset");
  MP_ASSERT_OK(mp_barrier_close(b));

  /* A failing action breaks the barrier for every party. */
  MP_ASSERT_OK(mp_barrier_create(&b, 1, fail_action, NULL));
  MP_ASSERT_ERR(mp_barrier_wait(b, 1), MP_EBROKEN);
  T_ASSERT(mp_barrier_broken(b), "a failed action did not break it");
  MP_ASSERT_OK(mp_barrier_close(b));

  MP_ASSERT_ERR(mp_barrier_create(&b, 0, NULL, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_barrier_create(&b, -3, NULL, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_barrier_create(NULL, 2, NULL, NULL), MP_EINVAL);
  long on_stack = 0;
  MP_ASSERT_ERR(mp_barrier_create(&b, 2, (mp_barrier_action_t)(uintptr_t)&on_stack, NULL),
                MP_ECROSS);
  MP_ASSERT_ERR(mp_barrier_wait(NULL, 0), MP_EINVAL);
  T_INT_EQ(mp_barrier_parties(NULL), MP_EINVAL);
  T_ASSERT(!mp_barrier_broken(NULL), "NULL is broken");
}
END_TEST

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

static void *thread_resets(void *arg) {
  mp_test_sleep(0.2);
  mp_barrier_reset(arg);
  return NULL;
}

static void *thread_aborts(void *arg) {
  mp_test_sleep(0.2);
  mp_barrier_abort(arg);
  return NULL;
}

/* The same full round, reset (_i 0) or aborted (_i 1) while its action runs: the round
 * returns its indices, as in Python, whose reset and abort wait for the lock the action
 * holds (a reset then finds the round draining and changes nothing); the abort breaks the
 * barrier once the round has ended (in Python, if the waiters take the lock first). */
START_TEST(test_barrier_reset_during_action) {
  mp_barrier_t *b;
  MP_ASSERT_OK(mp_barrier_create(&b, 2, slow_action, NULL));
  arrival_t first = {b, 20, 99}, last = {b, 20, 99};
  pthread_t t1, t2, t3;
  T_INT_EQ(pthread_create(&t1, NULL, thread_arrives, &first), 0);
  while (mp_barrier_n_waiting(b) < 1)
    mp_test_sleep(0.005);
  T_INT_EQ(pthread_create(&t3, NULL, _i ? thread_aborts : thread_resets, b), 0);
  T_INT_EQ(pthread_create(&t2, NULL, thread_arrives, &last), 0); /* runs the action */
  T_INT_EQ(pthread_join(t1, NULL), 0);
  T_INT_EQ(pthread_join(t2, NULL), 0);
  T_INT_EQ(pthread_join(t3, NULL), 0);
  T_ASSERT(first.rc == 0 && last.rc == 1,
           "the full round, %s during its action, returned %d and %d", _i ? "aborted" : "reset",
           first.rc, last.rc);
  T_ASSERT(mp_barrier_broken(b) == (_i == 1), "broken after the round: %d",
           mp_barrier_broken(b));
  if (_i) {
    MP_ASSERT_ERR(mp_barrier_wait(b, 1), MP_EBROKEN);
    MP_ASSERT_OK(mp_barrier_reset(b));
  }
  MP_ASSERT_OK(mp_barrier_abort(b)); /* an empty round: broken at once */
  MP_ASSERT_ERR(mp_barrier_wait(b, 1), MP_EBROKEN);
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

/* The process running a full round's action is killed: the round ends broken for its
 * waiters within 50 ms (their timeouts no longer end a full round; Python's wait for good). */
static int hang_action(void *arg) {
  mp_event_set(arg);
  for (;;)
    pause();
  return 0;
}

static int child_arrives_last(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  return mp_barrier_wait(job->barrier, 20) == MP_EBROKEN ? 0 : 2;
}

START_TEST(test_barrier_runner_killed) {
  job_t job = {0};
  MP_ASSERT_OK(mp_event_create(&job.ready));
  MP_ASSERT_OK(mp_barrier_create(&job.barrier, 2, hang_action, job.ready));
  arrival_t first = {job.barrier, MP_FOREVER, 99};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_arrives, &first), 0);
  while (mp_barrier_n_waiting(job.barrier) < 1)
    mp_test_sleep(0.005);
  mp_process_t *p = mp_test_start(_i, child_arrives_last, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20)); /* the child runs the action */
  double t0 = mp_test_now();
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 20), -SIGKILL);
  T_PROC_CLOSE(p);
  T_INT_EQ(pthread_join(t, NULL), 0);
  double took = mp_test_now() - t0;
  MP_ASSERT_ERR(first.rc, MP_EBROKEN);
  T_ASSERT(took < 2, "the round of a killed action's runner ended after %.2f s", took);
  T_ASSERT(mp_barrier_broken(job.barrier), "not broken after its runner was killed");
  mp_barrier_close(job.barrier);
  mp_event_close(job.ready);
}
END_TEST

typedef struct {
  const mp_barrier_t *b;
  bool (*reached)(const mp_barrier_t *);
} barrier_goal_t;

static bool barrier_goal_met(void *arg) {
  const barrier_goal_t *goal = arg;
  return goal->reached(goal->b);
}

/*
 * Forks a child that runs call(b), single-stepped with ptrace, and kills it at the first
 * instruction after which reached(b) holds. 1 if so, 0 if the child ended first; the test
 * fails where ptrace is refused.
 */
static int kill_traced_when(mp_barrier_t *b, void (*call)(mp_barrier_t *),
                            bool (*reached)(const mp_barrier_t *)) {
  pid_t child = mp_test_fork_traced();
  if (child == 0) {
    call(b);
    _exit(0);
  }
  barrier_goal_t goal = {b, reached};
  int killed = mp_test_step_until(child, barrier_goal_met, &goal);
  mp_test_end_traced(child);
  return killed;
}

static void arrive(mp_barrier_t *b) {
  mp_barrier_wait(b, 5);
}

static bool round_full(const mp_barrier_t *b) {
  return mp_barrier_n_waiting(b) == mp_barrier_parties(b);
}

/*
 * A full round ignores its waiters' deadlines and ends only by its runner or at the runner's
 * death. The last arrival, single-stepped with ptrace, is killed at the first instruction
 * after which the round is full: a waiter of timeout 10 s (longer than the stepping takes on a
 * loaded machine, which would otherwise break the round first) still returns MP_EBROKEN (it hung
 * for ever when the runner recorded itself only after its arrival; docs/api.md: a killed
 * party breaks the barrier).
 */
START_TEST(test_barrier_runner_killed_before_record) {
  mp_barrier_t *b;
  MP_ASSERT_OK(mp_barrier_create(&b, 2, NULL, NULL));
  arrival_t first = {b, 10, 99};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_arrives, &first), 0);
  while (mp_barrier_n_waiting(b) < 1)
    mp_test_sleep(0.005);
  int killed = kill_traced_when(b, arrive, round_full);
  T_ASSERT(killed, "the child never filled the round");
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 15;
  int rc = pthread_timedjoin_np(t, NULL, &until);
  T_ASSERT(rc == 0,
           "a waiter of timeout 10 s still waits 15 s after the last arrival was "
           "killed as its arrival filled the round (n_waiting %d)",
           mp_barrier_n_waiting(b));
  MP_ASSERT_ERR(first.rc, MP_EBROKEN);
  mp_barrier_close(b);
}
END_TEST

/*
 * A waiter that slept through more than one generation reads its round's outcome from
 * broken_tag[gen % 64], a 32-bit tag: no initial or wrapped value may read as a broken
 * generation where none broke. Generation 0, and 2^32 - 1 (reached after 2^32 rounds; set
 * here in the word, after magic and parties; its gen + 1 wrapped to the initial 0 when tags
 * held gen + 1), end well while their waiter, a child, is stopped (SIGSTOP) for two rounds.
 */
START_TEST(test_barrier_gen_wrap_outcome) {
  mp_barrier_t *b;
  MP_ASSERT_OK(mp_barrier_create(&b, 2, NULL, NULL));
  _Atomic uint64_t *word = (_Atomic uint64_t *)((char *)b + 8);
  atomic_store(word, (uint64_t)(_i ? UINT32_MAX : 0) << 32);
  pid_t child = fork();
  if (child == 0) {
    int rc = mp_barrier_wait(b, 30);
    _exit(rc == 0 ? 0 : rc == MP_EBROKEN ? 3 : 4);
  }
  mp_test_track_pid(child); /* killed and reaped if the test fails while it is stopped */
  T_ASSERT(child > 0, "fork");
  while (mp_barrier_n_waiting(b) < 1)
    mp_test_sleep(0.005);
  mp_test_sleep(0.05); /* asleep on the futex */
  int status;
  kill(child, SIGSTOP);
  T_ASSERT(waitpid(child, &status, WUNTRACED) == child && WIFSTOPPED(status), "stopped");
  T_INT_EQ(mp_barrier_wait(b, 5), 1); /* ends the waiter's generation, well */
  arrival_t other = {b, 5, 99};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, thread_arrives, &other), 0);
  while (mp_barrier_n_waiting(b) < 1)
    mp_test_sleep(0.005);
  T_INT_EQ(mp_barrier_wait(b, 5), 1); /* ends the next one, well */
  T_INT_EQ(pthread_join(t, NULL), 0);
  T_INT_EQ(other.rc, 0);
  kill(child, SIGCONT);
  T_ASSERT(waitpid(child, &status, 0) == child && WIFEXITED(status), "the child exited");
  T_ASSERT(WEXITSTATUS(status) == 0, "the waiter of generation %u, which ended well, got %s",
           _i ? UINT32_MAX : 0, WEXITSTATUS(status) == 3 ? "MP_EBROKEN" : "another error");
  mp_barrier_close(b);
}
END_TEST

/*
 * A waiter's timeout passes just as the last party arrives. Python serializes the two under
 * the barrier's lock: either the round is released (the waiter, its timeout past, finds the
 * state draining and returns its index) or the waiter breaks it first (the last arrival
 * raises BrokenBarrierError); never MP_EBROKEN for the waiter while its own round, which
 * counted its arrival, ends well for the others (as when a timeout marked a round found full
 * to break at its end). The waiter, a child, is stopped (ptrace) at the exit of the futex
 * wait that timed out and single-stepped k instructions before the parent arrives, for
 * each k.
 */
#if defined(__x86_64__) /* the stopped syscall is read from x86-64 registers */
START_TEST(test_barrier_timeout_races_last_arrival) {
  int odd = 0, odd_k = -1, ran = 0;
  for (int k = 0; k < 400 && !odd; k++) {
    mp_barrier_t *b;
    MP_ASSERT_OK(mp_barrier_create(&b, 2, NULL, NULL));
    pid_t child = mp_test_fork_traced();
    if (child == 0) {
      int rc = mp_barrier_wait(b, 0.02);
      _exit(rc == 0 ? 0 : rc == MP_EBROKEN ? 3 : 4);
    }
    int status;
    bool at = false;
    for (int n = 0; n < 10000; n++) { /* to the exit of a futex call that timed out */
      if (ptrace(PTRACE_SYSCALL, child, NULL, NULL) != 0 ||
          waitpid(child, &status, 0) != child || !WIFSTOPPED(status))
        break;
      struct user_regs_struct regs;
      ptrace(PTRACE_GETREGS, child, NULL, &regs);
      if (regs.orig_rax == SYS_futex && (long)regs.rax == -ETIMEDOUT) {
        at = true;
        break;
      }
    }
    bool alive = at;
    for (int i = 0; alive && i < k; i++)
      alive = mp_test_step(child);
    int mine = alive ? mp_barrier_wait(b, 0) : -1000; /* the last arrival, or too late */
    bool ended = alive && ptrace(PTRACE_DETACH, child, NULL, NULL) == 0 &&
                 waitpid(child, &status, 0) == child;
    if (ended)
      mp_test_untrack_pid(child);
    else
      mp_test_end_traced(child); /* it may still be in a ptrace stop */
    if (ended && WIFEXITED(status)) {
      ran++;
      if (WEXITSTATUS(status) == 3 && mine == 1)
        odd = 1, odd_k = k;
    }
    mp_barrier_close(b);
  }
  T_ASSERT(ran > 0, "no run");
  T_ASSERT(!odd,
           "the waiter that timed out returned MP_EBROKEN while the last arrival of its own "
           "round returned its index 1 (k = %d steps past the futex's timeout)",
           odd_k);
}
END_TEST
#endif

static void abort_barrier(mp_barrier_t *b) {
  mp_barrier_abort(b);
}

/*
 * A waiter that sleeps through more than one generation reads its outcome from broken_tag.
 * The process that breaks a round (an abort, single-stepped with ptrace) is killed at the
 * first instruction after which the barrier is broken, and a reset ends the next
 * generation: the waiter of the aborted round, a child stopped (SIGSTOP) meanwhile as a
 * descheduled process may be, still returns MP_EBROKEN (Python: an abort makes every waiter
 * raise BrokenBarrierError; it returned its index when the tag was written after the word).
 */
START_TEST(test_barrier_breaker_killed_before_tag) {
  mp_barrier_t *b;
  MP_ASSERT_OK(mp_barrier_create(&b, 2, NULL, NULL));
  pid_t w = fork();
  if (w == 0) {
    int rc = mp_barrier_wait(b, 30);
    _exit(rc == 0 ? 0 : rc == MP_EBROKEN ? 3 : 4);
  }
  mp_test_track_pid(w); /* killed and reaped if the test fails while it is stopped */
  T_ASSERT(w > 0, "fork");
  while (mp_barrier_n_waiting(b) < 1)
    mp_test_sleep(0.005);
  mp_test_sleep(0.05);
  int status;
  kill(w, SIGSTOP);
  T_ASSERT(waitpid(w, &status, WUNTRACED) == w && WIFSTOPPED(status), "stopped");
  int killed = kill_traced_when(b, abort_barrier, mp_barrier_broken);
  T_ASSERT(killed, "the abort never broke the barrier"); /* w is killed with the test */
  MP_ASSERT_OK(mp_barrier_reset(b));
  kill(w, SIGCONT);
  T_ASSERT(waitpid(w, &status, 0) == w && WIFEXITED(status), "the waiter exited");
  T_ASSERT(WEXITSTATUS(status) == 3, "the waiter of an aborted round returned %s",
           WEXITSTATUS(status) == 0 ? "its index (released)" : "another error");
  mp_barrier_close(b);
}
END_TEST

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
 * The Barrier's action word and the Condition's lock are kept in the object's shared memory:
 * followed unchecked (an address each, then), one wild word made the next wait or acquire in
 * any process die of SIGSEGV. Now the lock is checked (mp__lock_placed) and the action's
 * size must be its block's: MP_ECORRUPT.
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

/*
 * A Barrier's last close releases its own block, whatever its words say. Its action was a
 * block of its own, named by an address in the barrier's shared memory: written wild to
 * name another live block of that size (an Array's, here), it made the close release that
 * block, and the next object of that size was made in it while the Array was in use. The
 * action now lies in the barrier's own block.
 */
START_TEST(test_barrier_close_frees_only_its_block) {
  mp_barrier_t *b;
  mp_array_t *live, *next;
  MP_ASSERT_OK(mp_barrier_create(&b, 1, count_action, NULL));
  MP_ASSERT_OK(
      mp_raw_array_create(&live, 'B', 5000, NULL)); /* an 8 KiB block, as the action's was */
  mp_test_forge(_i, (char *)b + 16, &live, sizeof live); /* magic, parties, word, then it */
  MP_ASSERT_OK(mp_barrier_close(b));
  MP_ASSERT_OK(mp_raw_array_create(&next, 'B', 5000, NULL));
  bool shared = next == live;
  MP_ASSERT_OK(mp_array_close(next));
  T_ASSERT(!shared,
           "a Barrier's close, its action word written to name a live Array's block, released "
           "that block: the next Array of its size was made in it");
  MP_ASSERT_OK(mp_array_close(live));
}
END_TEST

/* ================================ bad input ================================ */

/* The words of a Lock's mutex, at the offsets glibc's pthread_mutex_t has them. */
static uint32_t *lock_word(mp_lock_t *lock, size_t at) {
  return (uint32_t *)(void *)((char *)lock + 16 + at); /* magic, depth, owner, then it */
}

/* glibc's kind bits (its pthreadP.h) and the kernel's owner-died bit. */
enum { KIND_RECURSIVE = 1, KIND_PI = 32, KIND_PRIO_PROTECT = 64, KIND_PSHARED = 128 };
#define OWNER_DIED 0x40000000u

/* The kind word mp__mutex_init writes: robust and process-shared. */
static int own_mutex_kind(void) {
  pthread_mutexattr_t attr;
  pthread_mutex_t m;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&m, &attr);
  pthread_mutexattr_destroy(&attr);
  return m.__data.__kind;
}

/* 0 if told MP_ECORRUPT; 5 if a Lock let its holder in twice. */
static int child_acquires_wild_kind(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  int rc = mp_lock_acquire(job->lock, 2);
  if (rc == MP_ECORRUPT)
    return 0;
  if (rc < 0)
    return 4;
  return mp_lock_acquire(job->lock, 0.2) == 0 ? 5 : 6;
}

/*
 * glibc reads a robust mutex's kind word from shared memory at every lock and obeys it. A
 * child writes it wild: priority-protected (glibc's assertion aborts the acquirer),
 * priority-inheriting and not robust with the owner-died bit in the owner word (the same,
 * in trylock), or recursive (a Lock lets its holder in again). Now MP_ECORRUPT.
 */
START_TEST(test_lock_wild_mutex_kind) {
  int wild = _i / N_METHODS;
  _i %= N_METHODS;
  job_t job = {0};
  MP_ASSERT_OK(wild == 1 ? mp_rlock_create(&job.lock) : mp_lock_create(&job.lock));
  uint32_t *kind = lock_word(job.lock, offsetof(pthread_mutex_t, __data.__kind));
  uint32_t *owner = lock_word(job.lock, offsetof(pthread_mutex_t, __data.__lock));
  T_INT_EQ((int)*kind, own_mutex_kind()); /* the layout is lib/synchronize.c's */
  uint32_t wild_kinds[] = {KIND_PRIO_PROTECT | KIND_PSHARED, KIND_PI | KIND_PSHARED,
                           *kind | KIND_RECURSIVE};
  uint32_t saved_kind = *kind, dead_owner = OWNER_DIED;
  mp_test_forge(_i, kind, &wild_kinds[wild], sizeof *kind);
  if (wild == 1)
    mp_test_forge(_i, owner, &dead_owner, sizeof dead_owner);
  int code =
      mp_test_join_code(mp_test_start(_i, child_acquires_wild_kind, &job, sizeof job), 20);
  *kind = saved_kind;
  *owner = 0;
  mp_lock_close(job.lock);
  T_ASSERT(code == 0, "kind word %#x written: the acquire %s", wild_kinds[wild],
           code == -SIGABRT ? "aborted (SIGABRT)"
           : code == 5      ? "let the Lock's holder in twice"
                            : "failed otherwise");
}
END_TEST

/* Holds the lock until told, then releases it: 0 if told MP_ECORRUPT and still owns it. */
static int child_releases_on_go(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  if (mp_lock_acquire(job->lock, 10) != 0)
    return 2;
  mp_event_set(job->ready);
  if (mp_event_wait(job->go, 20) != 0)
    return 3;
  int rc = mp_lock_release(job->lock);
  return rc == MP_ECORRUPT && mp_lock_is_owned(job->lock) ? 0 : rc == 0 ? 4 : 5;
}

/* A child of METHODS[method] takes the lock; `at` is forged (size bytes) while it holds it;
 * then it releases it: its exit code (child_releases_on_go's). */
static int release_after_forge(int method, job_t *job, void *at, const void *bytes,
                               size_t size) {
  MP_ASSERT_OK(mp_event_create(&job->ready));
  MP_ASSERT_OK(mp_event_create(&job->go));
  mp_process_t *p = mp_test_start(method, child_releases_on_go, job, sizeof *job);
  MP_ASSERT_OK(mp_event_wait(job->ready, 20));
  mp_test_forge(method, at, bytes, size);
  MP_ASSERT_OK(mp_event_set(job->go));
  int code = mp_test_join_code(p, 20);
  T_PROC_CLOSE(p);
  mp_event_close(job->ready);
  mp_event_close(job->go);
  return code;
}

/* The same at the release: the kind word of a held Lock, written priority-protected by
 * another process, made glibc's unlock abort the holder. Now MP_ECORRUPT, still held; its
 * holder's death hands it on as any other's. */
START_TEST(test_lock_release_wild_mutex_kind) {
  job_t job = {0};
  MP_ASSERT_OK(mp_lock_create(&job.lock));
  uint32_t *kind = lock_word(job.lock, offsetof(pthread_mutex_t, __data.__kind));
  uint32_t saved_kind = *kind, wild = KIND_PRIO_PROTECT | KIND_PSHARED;
  int code = release_after_forge(_i, &job, kind, &wild, sizeof wild);
  *kind = saved_kind;
  int rc = mp_lock_acquire(job.lock, 5);
  if (rc >= 0 || rc == MP_EOWNERDEAD)
    mp_lock_release(job.lock);
  mp_lock_close(job.lock);
  T_ASSERT(code == 0, "kind word %#x written while held: the release %s", wild,
           code == -SIGABRT ? "aborted (SIGABRT)"
           : code == 4      ? "said 0"
                            : "failed otherwise");
  MP_ASSERT_ERR(rc, MP_EOWNERDEAD);
}
END_TEST

/*
 * While a thread holds a robust mutex, glibc links it into the thread's robust list, and
 * the unlock writes through its links: *(next - 8) = prev, *prev = next. A child writes the
 * links of a held Lock: to words of another Lock, the release wrote them and said 0; to
 * 0x1000, it died of SIGSEGV. Now MP_ECORRUPT, still held, nothing written.
 */
START_TEST(test_lock_release_wild_links) {
  int wild = _i / N_METHODS;
  _i %= N_METHODS;
  job_t job = {0};
  mp_lock_t *victim;
  MP_ASSERT_OK(mp_lock_create(&job.lock));
  MP_ASSERT_OK(mp_lock_create(&victim));
  void **links = (void **)(void *)lock_word(job.lock, offsetof(pthread_mutex_t, __data.__list));
  uint64_t *v = (uint64_t *)(void *)victim, saved[5];
  memcpy(saved, v, sizeof saved);
  void *forged[2] = {wild ? (void *)0x1000 : (void *)&v[0],
                     wild ? (void *)0x2008 : (void *)&v[4]};
  int code = release_after_forge(_i, &job, links, forged, sizeof forged);
  bool written = memcmp(saved, v, sizeof saved) != 0;
  memcpy(v, saved, sizeof saved);
  mp_lock_close(victim);
  mp_lock_close(job.lock);
  T_ASSERT(code == 0 && !written, "links written to %p, %p while held: the release %s%s",
           forged[0], forged[1],
           code == -SIGSEGV ? "died of SIGSEGV"
           : code == 4      ? "said 0"
                            : "failed otherwise",
           written ? ", and wrote another Lock's words" : "");
}
END_TEST

/* Released in any order, with more held than the thread's record keeps (8) and with a
 * robust mutex of the program's own among them: every link check passes. */
START_TEST(test_lock_release_any_order) {
  enum { N = 11 };
  mp_lock_t *locks[N];
  pthread_mutex_t own;
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  pthread_mutex_init(&own, &attr);
  pthread_mutexattr_destroy(&attr);
  for (int i = 0; i < N; i++) {
    MP_ASSERT_OK(i % 2 ? mp_rlock_create(&locks[i]) : mp_lock_create(&locks[i]));
    MP_ASSERT_OK(mp_lock_acquire(locks[i], 1));
    if (i == N / 2)
      T_INT_EQ(pthread_mutex_lock(&own), 0);
  }
  for (int i = 0; i < N; i++) { /* 0, 3, 6, 9, 1, 4, ...: neither first nor last held */
    int k = (i * 3) % N;
    MP_ASSERT_OK(mp_lock_release(locks[k]));
    if (i == N / 2)
      T_INT_EQ(pthread_mutex_unlock(&own), 0);
  }
  for (int i = 0; i < N; i++)
    mp_lock_close(locks[i]);
}
END_TEST

START_TEST(test_null_handles) {
  MP_ASSERT_ERR(mp_lock_create(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_rlock_create(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_lock_acquire(NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_lock_release(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_lock_close(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_semaphore_acquire(NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_semaphore_release(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_semaphore_value(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_event_set(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_event_wait(NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_condition_notify(NULL, 1), MP_EINVAL);
  /* A handle of another kind is refused, not misread. */
  mp_event_t *e;
  MP_ASSERT_OK(mp_event_create(&e));
  MP_ASSERT_ERR(mp_lock_acquire((mp_lock_t *)e, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_semaphore_release((mp_semaphore_t *)e), MP_EINVAL);
  MP_ASSERT_ERR(mp_condition_create(&(mp_condition_t *){NULL}, (mp_lock_t *)e), MP_EINVAL);
  mp_event_close(e);
}
END_TEST

static mp_lock_t *ns_lock;
static void ns_hold_lock(void) {
  (void)mp_lock_acquire(ns_lock, -1);
}

/* A Lock held by a live thread of another pid namespace makes a waiter wait to its timeout.
 * Its owner word is the holder's id there (glibc's, as the kernel's robust futexes want); the
 * waiter looked it up in its own /proc, found no such thread, and said MP_ECORRUPT ("another
 * process wrote it") after 51 ms (review rev2-mem). */
START_TEST(test_lock_holder_in_pid_namespace_not_corrupt) {
  MP_ASSERT_OK(mp_lock_create(&ns_lock));
  pid_t h;
  bool made = mp_test_ns_start(ns_hold_lock, &h);
  if (!made)
    mp_lock_close(ns_lock);
  T_ASSERT(made, "no pid namespace could be made: run it as root");
  int rc = mp_lock_acquire(ns_lock, 1.0);
  char said[256];
  snprintf(said, sizeof said, "%s", mp_last_error());
  mp_test_ns_kill();
  if (rc == 0 || rc == MP_EOWNERDEAD)
    mp_lock_release(ns_lock);
  T_ASSERT(rc == MP_ETIMEDOUT,
           "a live thread (pid %d in its pid namespace) held a Lock; mp_lock_acquire(1.0) "
           "returned %s: %s",
           (int)h, mp_err_name(rc), said);
  mp_lock_close(ns_lock);
}
END_TEST

static mp_semaphore_t *ns_sem;
static void ns_hold_permit(void) {
  (void)mp_semaphore_acquire(ns_sem, -1);
}

/* A BoundedSemaphore's permit held by a live process of another pid namespace is not
 * returned: its holder slot names it by its pid there, which names no process here, and an
 * acquirer judged it killed (ESRCH) and took its permit beside it (MP_EOWNERDEAD). */
START_TEST(test_bounded_semaphore_holder_in_pid_namespace_kept) {
  MP_ASSERT_OK(mp_bounded_semaphore_create(&ns_sem, 1));
  pid_t h;
  bool made = mp_test_ns_start(ns_hold_permit, &h);
  if (!made)
    mp_semaphore_close(ns_sem);
  T_ASSERT(made, "no pid namespace could be made: run it as root");
  int rc = mp_semaphore_acquire(ns_sem, 0.5);
  mp_test_ns_kill();
  T_ASSERT(rc == MP_ETIMEDOUT,
           "a live process (pid %d in its pid namespace) held a BoundedSemaphore's only "
           "permit; mp_semaphore_acquire(0.5) returned %s: its permit was taken beside it",
           (int)h, mp_err_name(rc));
  mp_semaphore_close(ns_sem);
}
END_TEST

static Suite *synchronize_suite(void) {
  Suite *s = suite_create("synchronize");
  TCase *tc = mp_test_tcase(s, "lock", 30);
  tcase_add_test(tc, test_lock_basics);
  tcase_add_test(tc, test_rlock_recursion);
  tcase_add_test(tc, test_lock_owned_by_thread);
  tcase_add_loop_test(tc, test_lock_across_processes, 0, N_METHODS);
  tcase_add_loop_test(tc, test_mutual_exclusion, 0, N_METHODS);
  tc = mp_test_tcase(s, "owner death", 30);
  tcase_add_loop_test(tc, test_lock_holder_killed, 0, N_METHODS);
  tcase_add_loop_test(tc, test_lock_waiter_told_of_death, 0, N_METHODS);
  tcase_add_test(tc, test_lock_holder_in_pid_namespace_not_corrupt);
  tcase_add_test(tc, test_bounded_semaphore_holder_in_pid_namespace_kept);
  tcase_add_loop_test(tc, test_semaphore_holder_killed, 0, N_METHODS);
  tcase_add_loop_test(tc, test_semaphore_consumed_by_exit, 0, N_METHODS);
  tcase_add_loop_test(tc, test_semaphore_item_taken_by_killed, 0, N_METHODS);
  tcase_add_loop_test(tc, test_semaphore_holder_alive_without_fds, 0, N_METHODS);
  tcase_add_loop_test(tc, test_condition_waiter_killed, 0, N_METHODS);
  tcase_add_loop_test(tc, test_condition_woken_waiter_killed, 0, N_METHODS);
  tcase_add_test(tc, test_condition_notifier_killed_after_its_tokens);
  tcase_add_loop_test(tc, test_lock_woken_waiter_killed, 0, N_METHODS);
  tcase_add_loop_test(tc, test_bounded_semaphore_two_holders, 0, N_METHODS);
  tcase_add_loop_test(tc, test_bounded_semaphore_released_by_another_freed_at_close, 0,
                      N_METHODS);
  tcase_add_loop_test(tc, test_bounded_semaphore_last_released_by_another_freed_at_close, 0,
                      N_METHODS);
  tcase_add_loop_test(tc, test_bounded_semaphore_handed_between_threads_kept_at_exit, 0,
                      N_METHODS);
  tcase_add_loop_test(tc, test_barrier_runner_killed, 0, N_METHODS);
  tc = mp_test_tcase(s, "semaphore", 30);
  tcase_add_test(tc, test_semaphore_basics);
  tcase_add_test(tc, test_semaphore_threads);
  tcase_add_test(tc, test_semaphore_value_while_used);
  tcase_add_loop_test(tc, test_semaphore_across_processes, 0, N_METHODS);
  tc = mp_test_tcase(s, "event", 30);
  tcase_add_test(tc, test_event_basics);
  tcase_add_test(tc, test_event_set_then_cleared);
  tcase_add_test(tc, test_event_wakes_all_threads);
  tcase_add_test(tc, test_event_set_twice_orders);
  tcase_add_loop_test(tc, test_event_across_processes, 0, N_METHODS);
  tc = mp_test_tcase(s, "condition", 30);
  tcase_add_test(tc, test_condition_misuse_and_timeout);
  tcase_add_test(tc, test_condition_wait_for_timeout);
  tcase_add_test(tc, test_condition_notify_counts);
  tcase_add_test(tc, test_condition_wait_releases_rlock);
  tcase_add_loop_test(tc, test_condition_producer_consumer, 0, N_METHODS);
  tcase_add_test(tc, test_condition_threads);
  tcase_add_loop_test(tc, test_condition_corrupt_batches, 0, N_METHODS);
  tcase_add_loop_test(tc, test_condition_wild_gen, 0, N_METHODS);
  tcase_add_loop_test(tc, test_condition_close_drops_only_its_lock, 0, 2 * N_METHODS);
  tc = mp_test_tcase(s, "barrier", 30);
  tcase_add_loop_test(tc, test_barrier_rounds, 0, N_METHODS);
  tcase_add_loop_test(tc, test_barrier_abort_reset_timeout, 0, N_METHODS);
  tcase_add_loop_test(tc, test_barrier_party_killed, 0, N_METHODS);
  tcase_add_test(tc, test_barrier_misc);
  tcase_add_test(tc, test_barrier_newcomer_timeout_breaks_full_round);
  tcase_add_loop_test(tc, test_barrier_reset_during_action, 0, 2);
  tcase_add_loop_test(tc, test_barrier_sleeper_outlived_64_rounds, 0, N_METHODS);
  tcase_add_test(tc, test_barrier_runner_killed_before_record);
  tcase_add_loop_test(tc, test_barrier_gen_wrap_outcome, 0, 2);
#if defined(__x86_64__)
  tcase_add_test(tc, test_barrier_timeout_races_last_arrival);
#endif
  tcase_add_test(tc, test_barrier_breaker_killed_before_tag);
  tc = mp_test_tcase(s, "bad input", 10);
  tcase_add_test(tc, test_null_handles);
  tcase_add_loop_test(tc, test_semaphore_wild_scanned, 0, 2 * N_METHODS);
  tcase_add_loop_test(tc, test_semaphore_wild_redo_slot, 0, N_METHODS);
  tcase_add_loop_test(tc, test_wild_object_pointers, 0, N_METHODS);
  tcase_add_loop_test(tc, test_barrier_close_frees_only_its_block, 0, N_METHODS);
  tcase_add_loop_test(tc, test_lock_wild_mutex_kind, 0, 3 * N_METHODS);
  tcase_add_loop_test(tc, test_lock_release_wild_mutex_kind, 0, N_METHODS);
  tcase_add_loop_test(tc, test_lock_release_wild_links, 0, 2 * N_METHODS);
  tcase_add_test(tc, test_lock_release_any_order);
  return s;
}

MP_TEST_MAIN(synchronize_suite)
