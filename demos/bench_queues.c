/* bench rows of the queues layer: messages from a producer process to a consumer process
 * through an mp_queue_t, against a bare single-producer single-consumer shared-memory ring
 * between two processes, with slots of the message's size (64 bytes, 1 MiB). */
#include "bench.h"

#include <errno.h>
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SMALL 64
#define BIG ((size_t)1 << 20)
#define SPIN_NS 20000.0

/* ============================ the bare ring ============================ */

/*
 * The baseline: the least a cross-process queue of fixed-size messages can do. One
 * producer, one consumer, slots of the message's size in memory both map, a head and a tail
 * on their own cache lines; the producer copies a message in, the consumer copies it out, as
 * libmp's put and get do, each on its own CPU. The consumer spins as long as libmp's does,
 * yielding the CPU where libmp's does (bench_spin), before it sleeps on a futex (an idle
 * consumer that spins for ever would take the CPU from the other side's turn), and the
 * producer wakes it only when it sleeps, once: the wake clears
 * the flag, as libmp's notify takes the sleeper off its count when the wake finds it gone
 * (a producer that made a futex call per message until the woken consumer ran would pay
 * a system call a message on a loaded machine, and flatter libmp).
 */
typedef struct {
  _Alignas(64) _Atomic uint64_t head;
  _Alignas(64) _Atomic uint64_t tail;
  _Alignas(64) _Atomic uint32_t seq;
  _Atomic uint32_t sleeping;
  _Atomic uint32_t stop;
  _Alignas(64) _Atomic uint64_t libmp_consumed; /* what libmp's consumer has taken */
  size_t slot_size, n_slots;
  _Alignas(64) unsigned char slots[]; /* n_slots of slot_size bytes */
} bare_ring_t;

static unsigned char *slot(bare_ring_t *r, uint64_t index) {
  return r->slots + (index % r->n_slots) * r->slot_size;
}

static void futex_wait(_Atomic uint32_t *word, uint32_t expected) {
  syscall(SYS_futex, word, FUTEX_WAIT, expected, NULL, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *word) {
  syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

/* Consumer side: waits until the ring holds a message (or stop), spinning, then sleeping. */
static bool bare_wait(bare_ring_t *r, uint64_t head) {
  double spin_end = bench_now_ns() + SPIN_NS;
  for (int i = 1; atomic_load(&r->tail) == head && !atomic_load(&r->stop) &&
                  bench_spin(i, spin_end, bench_one_cpu());
       i++)
    ;
  while (atomic_load(&r->tail) == head) {
    if (atomic_load(&r->stop))
      return false;
    uint32_t seen = atomic_load(&r->seq);
    atomic_store(&r->sleeping, 1);
    if (atomic_load(&r->tail) == head && !atomic_load(&r->stop))
      futex_wait(&r->seq, seen);
    atomic_store(&r->sleeping, 0);
  }
  return true;
}

static void bare_put(bare_ring_t *r, const unsigned char *msg) {
  uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
  while (tail - atomic_load(&r->head) == r->n_slots)
    bench_relax();
  memcpy(slot(r, tail), msg, r->slot_size);
  atomic_store(&r->tail, tail + 1);
  /* Read first: an exchange on every message would take the line from the spinning consumer. */
  if (atomic_load(&r->sleeping) && atomic_exchange(&r->sleeping, 0)) {
    atomic_fetch_add(&r->seq, 1);
    futex_wake(&r->seq);
  }
}

static void bare_stop(bare_ring_t *r) {
  atomic_store(&r->stop, 1);
  atomic_fetch_add(&r->seq, 1);
  futex_wake(&r->seq);
}

/* ============================ the rows ============================ */

typedef struct {
  mp_queue_t *q;
  bare_ring_t *ring;
  size_t size;   /* of a message */
  int batch;     /* messages per timed operation */
  uint64_t sent; /* by the libmp side, so far */
  unsigned char *msg;
} queue_state_t;

typedef struct {
  mp_queue_t *q;
  bare_ring_t *ring;
  size_t size;
  int batch;
  int iterations; /* bench_pair's batches per round and side */
} consumer_arg_t;

/* Takes one message from the queue, counting it; false once the queue is closed. */
static bool libmp_take(consumer_arg_t *a, unsigned char *buf, uint64_t *taken) {
  size_t len;
  if (mp_queue_get(a->q, buf, a->size, &len, MP_FOREVER) < 0)
    return false;
  atomic_store(&a->ring->libmp_consumed, ++*taken);
  return true;
}

/* Takes one message from the bare ring; false once stopped. */
static bool bare_take(bare_ring_t *r, unsigned char *buf, uint64_t *head) {
  if (!bare_wait(r, *head))
    return false;
  memcpy(buf, slot(r, *head), r->slot_size);
  __asm__ __volatile__("" : : "r"(buf) : "memory"); /* the copy is used */
  atomic_store(&r->head, ++*head);
  return true;
}

/*
 * The one consumer of both sides: it takes each batch from the side being timed, following
 * bench_pair's schedule after the two untimed batches that fault everything in (libmp's,
 * then the ring's). Both sides thus hand their messages to the same process, wherever the
 * scheduler keeps it. (With a consumer per side, the ratio on one CPU was 0.62-0.64: there
 * the bare ring's consumer fell asleep far more often than libmp's.)
 */
static int consumer(void *arg, size_t size) {
  (void)size;
  consumer_arg_t *a = arg;
  unsigned char *buf = malloc(a->size);
  uint64_t taken = 0, head = 0;
  for (long long op = 0; buf; op++) {
    bool libmp = op < 2 ? op == 0 : bench_pair_side(op - 2, a->iterations) == 0;
    for (int i = 0; i < a->batch; i++)
      if (libmp ? !libmp_take(a, buf, &taken) : !bare_take(a->ring, buf, &head))
        goto closed;
  }
closed:
  free(buf);
  return 0;
}

/* The producer's wait for its consumer at the end of a batch: it yields the CPU, which the
 * consumer may need on a loaded machine (both sides wait so). */
static void await_count(_Atomic uint64_t *counter, uint64_t value) {
  while (atomic_load(counter) != value)
    sched_yield();
}

/* One operation: a batch of messages, and the wait until the consumer has taken them all,
 * so that no round is credited with messages still in the ring. */
static void libmp_batch(void *state) {
  queue_state_t *s = state;
  int rc;
  for (int i = 0; i < s->batch; i++)
    if ((rc = mp_queue_put(s->q, s->msg, s->size, MP_FOREVER)) < 0)
      bench_die_mp("mp_queue_put", rc);
  s->sent += (uint64_t)s->batch;
  await_count(&s->ring->libmp_consumed, s->sent);
}

static void bare_batch(void *state) {
  queue_state_t *s = state;
  for (int i = 0; i < s->batch; i++)
    bare_put(s->ring, s->msg);
  await_count(&s->ring->head, atomic_load_explicit(&s->ring->tail, memory_order_relaxed));
}

static mp_process_t *start_consumer(mp_target_t target, const void *arg, size_t size) {
  mp_context_t *ctx;
  mp_process_t *proc;
  int rc;
  if ((rc = mp_get_context("fork", &ctx)) < 0)
    bench_die_mp("mp_get_context", rc);
  if ((rc = mp_process_create(&proc, ctx, target, arg, size, NULL)) < 0)
    bench_die_mp("mp_process_create", rc);
  if ((rc = mp_process_start(proc)) < 0)
    bench_die_mp("mp_process_start", rc);
  return proc;
}

static void finish(mp_process_t *proc) {
  int rc;
  if ((rc = mp_process_join(proc, MP_FOREVER)) < 0)
    bench_die_mp("mp_process_join", rc);
  mp_process_close(proc);
}

/*
 * Both rows: one consumer process for the queue and the bare ring (of n_slots slots of the
 * message's size), forked, an untimed batch of each side to fault everything in, then the
 * timed rounds. Per message.
 */
static void run_queue_row(const bench_config_t *cfg, size_t size, int batch, size_t n_slots,
                          int default_iterations, double unit_ns, bench_result_t *result) {
  queue_state_t s = {.size = size, .batch = batch};
  size_t ring_bytes = sizeof *s.ring + n_slots * size;
  int rc;
  s.ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (s.ring == MAP_FAILED)
    bench_die_sys("mmap", errno);
  s.ring->slot_size = size;
  s.ring->n_slots = n_slots;
  if ((rc = mp_queue_create(&s.q, 0)) < 0)
    bench_die_mp("mp_queue_create", rc);
  if (!(s.msg = malloc(size)))
    bench_die_sys("malloc", ENOMEM);
  memset(s.msg, 'q', size);

  consumer_arg_t arg = {s.q, s.ring, size, batch, bench_iterations(cfg, default_iterations)};
  mp_process_t *consumer_proc = start_consumer(consumer, &arg, sizeof arg);
  libmp_batch(&s);
  bare_batch(&s);
  double libmp_ns, baseline_ns;
  bench_pair(cfg, default_iterations, libmp_batch, bare_batch, &s, &libmp_ns, &baseline_ns);
  result->libmp = libmp_ns / batch / unit_ns;
  result->baseline = baseline_ns / batch / unit_ns;

  mp_queue_close(s.q);
  bare_stop(s.ring);
  finish(consumer_proc);
  mp_queue_free(s.q);
  munmap(s.ring, ring_bytes);
  free(s.msg);
}

/* 64-byte messages in batches of 1000, through a ring of 4096 slots. */
static void row_queue_small(const bench_config_t *cfg, bench_result_t *result) {
  run_queue_row(cfg, SMALL, 1000, 4096, 40, 1.0, result);
}

/* 1 MiB messages in batches of 8, through a ring of 8 slots of 1 MiB: the producer never
 * waits for room, as libmp's (which spills large messages) does not in a batch. */
static void row_queue_1mib(const bench_config_t *cfg, bench_result_t *result) {
  run_queue_row(cfg, BIG, 8, 8, 10, 1e3, result);
}

static const bench_row_t queue_rows[] = {
    {"queue.small", "ns/msg", row_queue_small},
    {"queue.1mib", "us/msg", row_queue_1mib},
};

const bench_group_t bench_queues_group = BENCH_GROUP(queue_rows);
