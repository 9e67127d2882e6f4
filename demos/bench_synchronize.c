/* bench rows of the synchronization layer and of Value: each against the bare robust mutex,
 * futex ping-pong or futex barrier that does the same job between the same processes. */
#include "bench.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* ================================ bare primitives ================================ */

static void bare_mutex_init(pthread_mutex_t *mutex) {
  pthread_mutexattr_t attr;
  pthread_mutexattr_init(&attr);
  pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  int err = pthread_mutex_init(mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  if (err)
    bench_die_sys("pthread_mutex_init", err);
}

static long futex_wait(_Atomic uint32_t *word, uint32_t expected) {
  return syscall(SYS_futex, word, FUTEX_WAIT, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word) {
  syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void futex_wake_all(_Atomic uint32_t *word) {
  syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

/*
 * What libmp's waits do between their last look at their word and their futex wait: they
 * read SIGINT's disposition (the Ctrl-C rule, signals.c), one system call. Across CPUs that
 * call decides most round trips on this VM: the partner's answer often lands during it, and
 * then the wait does not sleep. Bare waiters that slept at once paid an idle vCPU's wake-up
 * instead (round trips of 4-13 us against libmp's 1.4-1.7), which made the ratios of
 * event.wakeup and barrier.round 0.16-0.55.
 */
static void as_libmp_before_sleep(void) {
  struct sigaction old;
  sigaction(SIGINT, NULL, &old);
}

/* A flag one process raises and another waits for. The waiter counts itself while it
 * sleeps, so that the raiser makes a futex call only when someone sleeps, as mp_event_set
 * does. */
typedef struct {
  _Alignas(64) _Atomic uint32_t word;
  _Atomic uint32_t sleepers;
} bare_flag_t;

static void bare_raise(bare_flag_t *f) {
  atomic_store(&f->word, 1);
  if (atomic_load(&f->sleepers) > 0)
    futex_wake(&f->word);
}

/* Waits until f is raised, and lowers it; -1 if the futex call fails. */
static int bare_lower(bare_flag_t *f) {
  while (atomic_load(&f->word) == 0) {
    as_libmp_before_sleep();
    atomic_fetch_add(&f->sleepers, 1);
    long rc = atomic_load(&f->word) == 0 ? futex_wait(&f->word, 0) : 0;
    atomic_fetch_sub(&f->sleepers, 1);
    if (rc < 0 && errno != EAGAIN && errno != EINTR)
      return -1;
  }
  atomic_store(&f->word, 0);
  return 0;
}

enum { SIDE_LIBMP = 1, SIDE_BARE = 2 };

typedef struct shared_s shared_t;

/* What the rows share with their helper processes: it lives in the arena. */
struct shared_s {
  pthread_mutex_t mutex;
  long counter;
  /* value.incr: the batch the parent asked for and the one the helper finished, and which
   * side it is, on a line of their own */
  _Alignas(64) _Atomic uint32_t go;
  _Atomic uint32_t done;
  _Atomic int side;
  bare_flag_t ping, pong;
  _Alignas(64) _Atomic uint32_t bar_count, bar_gen; /* the bare barrier */
  mp_lock_t *lock;
  mp_value_t *value;
  mp_event_t *there, *back;
  mp_barrier_t *barrier;
  /* The wake-up rows: bench_pair's operations per round and side, and the helper's half of
   * each side's round trip (< 0 on failure), by side. */
  int iterations;
  int (*half_echo[3])(shared_t *s);
};

static shared_t *shared_new(mp_value_t **holder) {
  int rc = mp_raw_value_create(holder, MP_TYPE_BYTES(sizeof(shared_t)), NULL);
  if (rc < 0)
    bench_die_mp("mp_raw_value_create", rc);
  shared_t *s = mp_value_ptr(*holder);
  bare_mutex_init(&s->mutex);
  return s;
}

static mp_process_t *helper_start(mp_target_t target, shared_t *s) {
  mp_context_t *ctx;
  mp_process_t *proc;
  int rc;
  if ((rc = mp_get_context("fork", &ctx)) < 0)
    bench_die_mp("mp_get_context", rc);
  if ((rc = mp_process_create(&proc, ctx, target, &s, sizeof s, NULL)) < 0)
    bench_die_mp("mp_process_create", rc);
  if ((rc = mp_process_start(proc)) < 0)
    bench_die_mp("mp_process_start", rc);
  return proc;
}

/* The helpers loop until killed. */
static void helper_stop(mp_process_t *proc) {
  mp_process_kill(proc);
  mp_process_join(proc, MP_FOREVER);
  mp_process_close(proc);
}

static shared_t *helper_arg(void *arg) {
  return *(shared_t **)arg;
}

/* ================================ lock.uncontended ================================ */

static void libmp_lock_once(void *state) {
  shared_t *s = state;
  int rc = mp_lock_acquire(s->lock, MP_FOREVER);
  if (rc < 0)
    bench_die_mp("mp_lock_acquire", rc);
  if ((rc = mp_lock_release(s->lock)) < 0)
    bench_die_mp("mp_lock_release", rc);
}

static void bare_lock_once(void *state) {
  shared_t *s = state;
  int err = pthread_mutex_lock(&s->mutex);
  if (err)
    bench_die_sys("pthread_mutex_lock", err);
  pthread_mutex_unlock(&s->mutex);
}

static void row_lock_uncontended(const bench_config_t *cfg, bench_result_t *result) {
  mp_value_t *holder;
  shared_t *s = shared_new(&holder);
  int rc = mp_lock_create(&s->lock);
  if (rc < 0)
    bench_die_mp("mp_lock_create", rc);
  bench_pair(cfg, 1000000, libmp_lock_once, bare_lock_once, s, &result->libmp,
             &result->baseline);
  mp_lock_close(s->lock);
  mp_value_close(holder);
}

/* ================================ value.incr ================================ */

/* One operation is a batch: the parent and the helper each make BATCH increments at the
 * same time, so that both sides see the same contention whatever the scheduler does. */
#define BATCH 20000

static void increments(shared_t *s, int side) {
  for (int i = 0; i < BATCH; i++) {
    if (side == SIDE_BARE) {
      pthread_mutex_lock(&s->mutex);
      s->counter++;
      pthread_mutex_unlock(&s->mutex);
    } else {
      int rc = mp_value_add_long(s->value, 1, NULL);
      if (rc < 0)
        bench_die_mp("mp_value_add_long", rc);
    }
  }
}

/* Makes a batch each time the parent moves go, then reports it in done. */
static int helper_increments(void *arg, size_t size) {
  (void)size;
  shared_t *s = helper_arg(arg);
  for (uint32_t seen = 0;;) {
    while (atomic_load(&s->go) == seen)
      if (futex_wait(&s->go, seen) < 0 && errno != EAGAIN && errno != EINTR)
        return 1;
    seen = atomic_load(&s->go);
    increments(s, atomic_load(&s->side));
    atomic_store(&s->done, seen);
    futex_wake(&s->done);
  }
}

static void batch(shared_t *s, int side) {
  atomic_store(&s->side, side);
  uint32_t n = atomic_load(&s->go) + 1, d;
  atomic_store(&s->go, n);
  futex_wake(&s->go);
  increments(s, side);
  while ((d = atomic_load(&s->done)) != n)
    futex_wait(&s->done, d);
}

static void libmp_batch(void *state) {
  batch(state, SIDE_LIBMP);
}

static void bare_batch(void *state) {
  batch(state, SIDE_BARE);
}

static void row_value_incr(const bench_config_t *cfg, bench_result_t *result) {
  mp_value_t *holder;
  shared_t *s = shared_new(&holder);
  int rc = mp_value_create(&s->value, 'l', NULL, NULL);
  if (rc < 0)
    bench_die_mp("mp_value_create", rc);
  mp_process_t *helper = helper_start(helper_increments, s);
  double libmp_ns, baseline_ns;
  bench_pair(cfg, 10, libmp_batch, bare_batch, s, &libmp_ns, &baseline_ns);
  result->libmp = libmp_ns / (2 * BATCH);
  result->baseline = baseline_ns / (2 * BATCH);
  helper_stop(helper);
  long total;
  mp_value_get_long(s->value, &total);
  if (s->counter != total) { /* both sides made the same number of batches */
    fprintf(stderr, "bench: value.incr counted %ld under libmp, %ld bare\n", total, s->counter);
    exit(1);
  }
  mp_value_close(s->value);
  mp_value_close(holder);
}

/* ============================ the wake-up rows ============================ */

/*
 * event.wakeup and barrier.round time a round trip with one helper process, which echoes
 * whichever side bench_pair is timing, by following its schedule (bench_pair_side): both
 * sides then wake the same process, on whatever CPU the scheduler keeps it. (With a helper
 * per side, the ratio measured where each helper happened to run: 0.3-0.55 when spread over
 * two CPUs, 1.04-1.09 on one.)
 */
static int helper_echo(void *arg, size_t size) {
  (void)size;
  shared_t *s = helper_arg(arg);
  for (long long op = 0;; op++)
    if (s->half_echo[bench_pair_side(op, s->iterations) == 0 ? SIDE_LIBMP : SIDE_BARE](s) < 0)
      return 1;
}

static void run_wakeup_row(const bench_config_t *cfg, bench_result_t *result, shared_t *s,
                           bench_op_t libmp_ping, bench_op_t bare_ping) {
  const int default_iterations = 5000;
  s->iterations = bench_iterations(cfg, default_iterations);
  mp_process_t *helper = helper_start(helper_echo, s);
  double libmp_ns, baseline_ns;
  bench_pair(cfg, default_iterations, libmp_ping, bare_ping, s, &libmp_ns, &baseline_ns);
  result->libmp = libmp_ns / 1e3;
  result->baseline = baseline_ns / 1e3;
  helper_stop(helper);
}

/* ================================ event.wakeup ================================ */

static int libmp_event_echo(shared_t *s) {
  if (mp_event_wait(s->there, MP_FOREVER) < 0)
    return -1;
  mp_event_clear(s->there);
  return mp_event_set(s->back);
}

static int bare_pingpong_echo(shared_t *s) {
  if (bare_lower(&s->ping) < 0)
    return -1;
  bare_raise(&s->pong);
  return 0;
}

static void libmp_event_ping(void *state) {
  shared_t *s = state;
  int rc = mp_event_set(s->there);
  if (rc == 0)
    rc = mp_event_wait(s->back, MP_FOREVER);
  if (rc == 0)
    rc = mp_event_clear(s->back);
  if (rc < 0)
    bench_die_mp("mp_event_set/wait/clear", rc);
}

static void bare_pingpong_ping(void *state) {
  shared_t *s = state;
  bare_raise(&s->ping);
  if (bare_lower(&s->pong) < 0)
    bench_die_sys("futex", errno);
}

static void row_event_wakeup(const bench_config_t *cfg, bench_result_t *result) {
  mp_value_t *holder;
  shared_t *s = shared_new(&holder);
  int rc = mp_event_create(&s->there);
  if (rc == 0)
    rc = mp_event_create(&s->back);
  if (rc < 0)
    bench_die_mp("mp_event_create", rc);
  s->half_echo[SIDE_LIBMP] = libmp_event_echo;
  s->half_echo[SIDE_BARE] = bare_pingpong_echo;
  run_wakeup_row(cfg, result, s, libmp_event_ping, bare_pingpong_ping);
  mp_event_close(s->there);
  mp_event_close(s->back);
  mp_value_close(holder);
}

/* ================================ barrier.round ================================ */

/*
 * The baseline: a bare futex barrier of 2 processes. The first arrival sleeps on the
 * generation word; the second resets the count, starts the next generation and wakes all
 * sleepers (as libmp's last arrival does, unconditionally): one wake-up per round, as in
 * libmp's. With 2 parties nobody can arrive between the reset and the new generation: the
 * other party is asleep in this one.
 */
static int bare_barrier_wait(shared_t *s) {
  uint32_t gen = atomic_load(&s->bar_gen);
  if (atomic_fetch_add(&s->bar_count, 1) == 1) {
    atomic_store(&s->bar_count, 0);
    atomic_fetch_add(&s->bar_gen, 1);
    futex_wake_all(&s->bar_gen);
    return 0;
  }
  as_libmp_before_sleep();
  while (atomic_load(&s->bar_gen) == gen)
    if (futex_wait(&s->bar_gen, gen) < 0 && errno != EAGAIN && errno != EINTR)
      return -1;
  return 0;
}

static void bare_barrier_ping(void *state) {
  if (bare_barrier_wait(state) < 0)
    bench_die_sys("futex", errno);
}

static int libmp_barrier_echo(shared_t *s) {
  int rc = mp_barrier_wait(s->barrier, MP_FOREVER);
  return rc < 0 ? rc : 0;
}

static void libmp_barrier_ping(void *state) {
  shared_t *s = state;
  int rc = mp_barrier_wait(s->barrier, MP_FOREVER);
  if (rc < 0)
    bench_die_mp("mp_barrier_wait", rc);
}

static void row_barrier_round(const bench_config_t *cfg, bench_result_t *result) {
  mp_value_t *holder;
  shared_t *s = shared_new(&holder);
  int rc = mp_barrier_create(&s->barrier, 2, NULL, NULL);
  if (rc < 0)
    bench_die_mp("mp_barrier_create", rc);
  s->half_echo[SIDE_LIBMP] = libmp_barrier_echo;
  s->half_echo[SIDE_BARE] = bare_barrier_wait;
  run_wakeup_row(cfg, result, s, libmp_barrier_ping, bare_barrier_ping);
  mp_barrier_close(s->barrier);
  mp_value_close(holder);
}

static const bench_row_t synchronize_rows[] = {
    {"value.incr", "ns/op", row_value_incr},
    {"lock.uncontended", "ns/op", row_lock_uncontended},
    {"event.wakeup", "us/op", row_event_wakeup},
    {"barrier.round", "us/op", row_barrier_round},
};

const bench_group_t bench_synchronize_group = BENCH_GROUP(synchronize_rows);
