/*
 * How tasks reach a pool's workers and results come back: jobs in the shared arena, claimed
 * and completed with atomic operations, waited on with futexes. No thread of the parent sits
 * between a submitter and the workers: a submitter publishes a job and wakes a sleeping
 * worker, a worker claims chunks by compare-and-swap on their state words and wakes the
 * waiter when it is done.
 *
 *   slots[seq % MP__POOL_SLOTS] = {seq << 1 | active, job}    published in seq order
 *   job: header | state word per window slot | input | output | error records
 *
 * A chunk's state word holds its chunk number, its owner (the worker that runs it) and its
 * status, so it is also the record of which worker runs which task: when a worker dies, the
 * supervisor finds the chunk whose owner it was, with no window in which a claimed chunk is
 * recorded nowhere (the claim and the record are one compare-and-swap).
 *
 * A job block is freed only by the pool's process, once its last reference is gone and no
 * worker has it pinned: a worker pins a job's sequence number (in its record) before it reads
 * the slot, so a job that completes under a worker's eyes is not freed while the worker
 * still looks at it (the pin and the slot's state are each stored, then the other side's
 * read, sequentially consistent).
 */
#include "internal.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ------------------------------- the job ------------------------------- */

/* x rounded up to 64, false if that overflows. */
static bool align64(uint64_t x, uint64_t *out) {
  if (__builtin_add_overflow(x, 63, out))
    return false;
  *out &= ~63ull;
  return true;
}

/* *at = align64(at) + count * size, and *off the aligned start: false on overflow. */
static bool place(uint64_t *at, uint64_t count, uint64_t size, uint64_t *off) {
  uint64_t bytes;
  return align64(*at, off) && !__builtin_mul_overflow(count, size, &bytes) &&
         !__builtin_add_overflow(*off, bytes, at);
}

/*
 * The block: header | state words | error records | done counters | input | output. The
 * output comes last, each window slot followed by a canary (MP__JOB_CANARY), so that a task
 * that writes past its result's room is caught (pool_worker.c) and cannot reach the
 * records the pool reads back.
 */
int mp__job_create(mp__job_spare_t take, void *ctx, uint32_t n_workers, uint32_t fn,
                   uint32_t flags, uint64_t n, uint64_t item_size, uint64_t result_size,
                   uint64_t chunksize, uint32_t window, mp__job_t **out) {
  uint64_t n_chunks = n / chunksize + (n % chunksize != 0); /* n + chunksize - 1 overflows */
  if (n_chunks > UINT32_MAX / 2)
    return mp__error(MP_EINVAL, "%llu chunks: use a larger chunksize",
                     (unsigned long long)n_chunks);
  if (window == 0 || window > n_chunks)
    window = (uint32_t)(n_chunks ? n_chunks : 1);
  uint64_t per_slot_in, per_slot_out, out_stride, n_errs = flags & MP__JOB_ITERATOR ? window : 1;
  uint64_t at = sizeof(mp__job_t), states_off, errs_off, done_off, input_off, output_off;
  if (__builtin_mul_overflow(chunksize, item_size, &per_slot_in) ||
      __builtin_mul_overflow(chunksize, result_size, &per_slot_out) ||
      __builtin_add_overflow(per_slot_out, MP__JOB_CANARY, &out_stride) ||
      !place(&at, window, sizeof(uint64_t), &states_off) ||
      !place(&at, n_errs, sizeof(mp__task_error_t), &errs_off) ||
      !place(&at, (uint64_t)n_workers + 1, sizeof(uint64_t), &done_off) ||
      !place(&at, window, per_slot_in, &input_off) ||
      !place(&at, window, out_stride, &output_off))
    return mp__error(MP_EINVAL,
                     "%llu items of %llu bytes with results of %llu bytes, in chunks of %llu: "
                     "the job's size overflows",
                     (unsigned long long)n, (unsigned long long)item_size,
                     (unsigned long long)result_size, (unsigned long long)chunksize);
  uint64_t total = at;
  if (total > SIZE_MAX)
    return mp__error(MP_ENOMEM, "a job of %llu bytes does not fit the address space",
                     (unsigned long long)total);
  /* Not zeroed: the input and output are overwritten whole; the rest is set here. */
  mp__job_t *spare = take(ctx, total);
  mp__job_t *job = spare ? spare : mp__shared_alloc_raw(total);
  if (!job)
    return mp__error_prefix(MP_ENOMEM, "no room for a job of %llu bytes",
                            (unsigned long long)total);
  uint64_t block_size = spare ? spare->block_size : total;
  memset(job, 0, input_off);
  job->block_size = block_size;
  int rc = mp__mutex_init(&job->err_lock);
  if (rc < 0) {
    mp__shared_release(job);
    return rc;
  }
  job->fn = fn;
  job->flags = flags;
  job->n = n;
  job->item_size = item_size;
  job->result_size = result_size;
  job->chunksize = chunksize;
  job->n_chunks = (uint32_t)n_chunks;
  job->window = window;
  job->states_off = states_off;
  job->input_off = input_off;
  job->output_off = output_off;
  job->out_stride = out_stride;
  job->errs_off = errs_off;
  job->n_errs = n_errs;
  job->done_off = done_off;
  job->n_counters = n_workers + 1;
  for (uint64_t i = 0; i < n_errs; i++)
    mp__job_error(job, (uint32_t)i)->item = UINT64_MAX;
  if (!(flags & MP__JOB_ITERATOR)) {
    for (uint32_t c = 0; c < job->n_chunks; c++)
      atomic_init(mp__job_state(job, c), MP__CHUNK_STATE(c, 0, 0, MP__CHUNK_QUEUED));
    atomic_init(&job->limit, job->n_chunks);
  }
  atomic_init(&job->refs, 1);
  *out = job;
  return 0;
}

_Atomic uint64_t *mp__job_state(const mp__job_t *job, uint32_t chunk) {
  return (_Atomic uint64_t *)((char *)job + job->states_off) + chunk % job->window;
}

void *mp__job_input(const mp__job_t *job, uint32_t chunk) {
  return (char *)job + job->input_off + (chunk % job->window) * job->chunksize * job->item_size;
}

void *mp__job_output(const mp__job_t *job, uint32_t chunk) {
  return (char *)job + job->output_off + (chunk % job->window) * job->out_stride;
}

mp__task_error_t *mp__job_error(const mp__job_t *job, uint32_t chunk) {
  return (mp__task_error_t *)((char *)job + job->errs_off) + chunk % job->n_errs;
}

uint64_t mp__job_chunk_items(const mp__job_t *job, uint32_t chunk) {
  uint64_t first = (uint64_t)chunk * job->chunksize;
  return job->n - first < job->chunksize ? job->n - first : job->chunksize;
}

bool mp__job_unref(mp__job_t *job) {
  return atomic_fetch_sub(&job->refs, 1) == 1;
}

void mp__job_record_error(mp__job_t *job, uint32_t chunk, uint64_t item, int code,
                          const char *msg) {
  mp__task_error_t *e = mp__job_error(job, chunk);
  /* A holder that died could only leave a half-written message: still a message. */
  int rc = mp__mutex_lock(&job->err_lock, INT64_MAX);
  if (rc < 0 && rc != MP_EOWNERDEAD)
    return;
  if ((job->flags & MP__JOB_ITERATOR) || item < e->item) {
    e->item = item;
    e->code = code;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
  }
  mp__mutex_unlock(&job->err_lock);
}

/* ------------------------------ waking up ------------------------------ */

void mp__pool_notify(int fd) {
  uint64_t one = 1;
  if (fd >= 0 && write(fd, &one, sizeof one) < 0) {
    /* EAGAIN: the counter is full, so the supervisor is woken anyway. */
  }
}

/* The idle worker that went idle last, taken (its ticket cleared), or -1. */
static int64_t take_idle_worker(mp__pool_shared_t *sh) {
  for (;;) {
    int64_t best = -1;
    uint64_t best_ticket = 0;
    for (uint32_t w = 0; w < sh->n_workers; w++) {
      uint64_t t = atomic_load(&sh->workers[w].idle_ticket);
      if (t > best_ticket)
        best = w, best_ticket = t;
    }
    if (best < 0 ||
        atomic_compare_exchange_strong(&sh->workers[best].idle_ticket, &best_ticket, 0))
      return best;
  }
}

void mp__pool_wake_workers(mp__pool_shared_t *sh, int n) {
  atomic_fetch_add(&sh->work, 1);
  for (int i = 0; i < n && atomic_load(&sh->idle) > 0; i++) {
    int64_t w = take_idle_worker(sh);
    if (w < 0)
      return;
    atomic_fetch_add(&sh->workers[w].wake, 1);
    mp__futex_wake(&sh->workers[w].wake, 1);
  }
}

/*
 * Lost wake-ups: the worker announces itself (ticket, idle count) and then reads the work
 * word; a submitter bumps the work word and then reads the idle count, all sequentially
 * consistent, so either the worker sees the new work or the submitter sees the worker. The
 * worker's own wake word, read before it announces itself, catches a wake-up that comes
 * between its last look and its sleep.
 */
void mp__pool_idle(mp__pool_shared_t *sh, uint32_t w, uint32_t seen) {
  mp__worker_rec_t *rec = &sh->workers[w];
  uint32_t wake = atomic_load(&rec->wake);
  atomic_store(&rec->idle_ticket, atomic_fetch_add(&sh->idle_tickets, 1) + 1);
  atomic_fetch_add(&sh->idle, 1);
  if (atomic_load(&sh->work) == seen)
    mp__futex_wait(&rec->wake, wake, INT64_MAX);
  atomic_store(&rec->idle_ticket, 0);
  atomic_fetch_sub(&sh->idle, 1);
}

static void wake_waiter(mp__job_t *job) {
  atomic_fetch_add(&job->wake, 1);
  if (atomic_load(&job->waiters) > 0)
    mp__futex_wake(&job->wake, INT32_MAX);
}

int mp__job_wait(mp__job_t *job, bool (*done)(const mp__job_t *job, void *arg), void *arg,
                 const _Atomic uint32_t *interrupts, int64_t deadline) {
  uint32_t base = interrupts ? atomic_load(interrupts) : 0;
  /* Without a timeout the kernel restarts the wait after an SA_RESTART handler, unseen;
   * with one, any handler ends it with EINTR. */
  if (interrupts && deadline == INT64_MAX)
    deadline = INT64_MAX - 1;
  /* A short spin first: a task that takes microseconds is done before a sleep and its
   * wake-up would be (on an idle machine, waking a sleeping CPU costs tens of them). */
  int64_t spin_end = mp__now_ns() + 20000;
  for (int i = 1; !done(job, arg); i++) {
    mp__cpu_relax();
    if (i % 64 == 0 && mp__now_ns() >= spin_end)
      break;
  }
  for (;;) {
    uint32_t seen = atomic_load(&job->wake);
    if (done(job, arg))
      return 0;
    if (interrupts && atomic_load(interrupts) != base)
      return MP_EINTR;
    atomic_fetch_add(&job->waiters, 1);
    /* A signal's EINTR only sends us round the loop, to look at the counter again. */
    int rc = done(job, arg) ? 0 : mp__futex_wait_sig(&job->wake, seen, deadline);
    atomic_fetch_sub(&job->waiters, 1);
    if (rc == MP_ETIMEDOUT)
      return done(job, arg) ? 0 : MP_ETIMEDOUT;
  }
}

/* ------------------------------ publishing ------------------------------ */

static uint64_t slot_state(mp__pool_shared_t *sh, uint64_t seq) {
  return atomic_load(&sh->slots[seq % MP__POOL_SLOTS].state);
}

/* The slot of seq is free once the job of seq - MP__POOL_SLOTS is complete (sequence numbers
 * start at MP__POOL_SLOTS, so a never-used slot reads as the completed job 0..SLOTS-1). */
static bool slot_free_for(mp__pool_shared_t *sh, uint64_t seq) {
  uint64_t s = slot_state(sh, seq);
  return !(s & 1) && (s >> 1) + MP__POOL_SLOTS <= seq;
}

int mp__job_publish(mp__pool_shared_t *sh, mp__job_t *job, uint64_t seq, int64_t deadline) {
  for (;;) {
    uint32_t seen = atomic_load(&sh->slot_free);
    if (slot_free_for(sh, seq))
      break;
    if (atomic_load(&sh->flags) & MP__POOL_TERMINATED)
      return mp__error(MP_ETERMINATED, "the pool was terminated");
    atomic_fetch_add(&sh->slot_waiters, 1);
    int rc = slot_free_for(sh, seq) ? 0 : mp__futex_wait(&sh->slot_free, seen, deadline);
    atomic_fetch_sub(&sh->slot_waiters, 1);
    if (rc == MP_ETIMEDOUT)
      return mp__error(MP_ETIMEDOUT, "%d jobs are in flight", MP__POOL_SLOTS);
  }
  job->seq = seq;
  atomic_fetch_add(&job->refs, 1); /* the slot's */
  sh->slots[seq % MP__POOL_SLOTS].job = job;
  atomic_store(&sh->slots[seq % MP__POOL_SLOTS].state, seq << 1 | 1);
  atomic_store(&sh->next_seq, seq + 1);
  return 0;
}

bool mp__job_feed(mp__pool_shared_t *sh, mp__job_t *job, const void *items) {
  uint32_t next = atomic_load(&job->limit);
  if (next >= job->n_chunks || atomic_load(&job->abort_code))
    return false;
  _Atomic uint64_t *state = mp__job_state(job, next);
  if (next >= job->window && MP__CHUNK_STATUS(atomic_load(state)) != MP__CHUNK_FREE)
    return false; /* the chunk a window earlier has not been taken yet */
  uint64_t first = (uint64_t)next * job->chunksize;
  if (job->item_size)
    memcpy(mp__job_input(job, next), (const char *)items + first * job->item_size,
           mp__job_chunk_items(job, next) * job->item_size);
  atomic_store(state, MP__CHUNK_STATE(next, 0, 0, MP__CHUNK_QUEUED));
  /* Fails only if the job was aborted meanwhile: then the chunk counts as aborted. */
  if (!atomic_compare_exchange_strong(&job->limit, &next, next + 1))
    return false;
  mp__pool_wake_workers(sh, 1);
  return true;
}

/* ------------------------------- pinning ------------------------------- */

mp__job_t *mp__pool_pin(mp__pool_shared_t *sh, uint32_t pinner, uint64_t seq) {
  atomic_store(&sh->workers[pinner].pin, seq + 1);
  if (slot_state(sh, seq) != (seq << 1 | 1))
    return NULL;
  mp__job_t *job = sh->slots[seq % MP__POOL_SLOTS].job;
  /* Still seq's: the pointer read between the two is seq's job. */
  return slot_state(sh, seq) == (seq << 1 | 1) ? job : NULL;
}

void mp__pool_unpin(mp__pool_shared_t *sh, uint32_t pinner) {
  atomic_store(&sh->workers[pinner].pin, 0);
}

bool mp__job_unpinned(const mp__pool_shared_t *sh, const mp__job_t *job) {
  for (uint32_t i = 0; i <= sh->n_workers; i++)
    if (atomic_load(&sh->workers[i].pin) == job->seq + 1)
      return false;
  return true;
}

/* ------------------------------- claiming ------------------------------- */

static bool claim_at(mp__job_t *job, uint32_t chunk, uint32_t w, uint64_t expected) {
  uint64_t running =
      MP__CHUNK_STATE(chunk, MP__CHUNK_ATTEMPTS(expected), w + 1, MP__CHUNK_RUNNING);
  return atomic_compare_exchange_strong(mp__job_state(job, chunk), &expected, running);
}

/* Chunks queued again after a death: rare, so a scan of the window. */
static bool claim_retried(mp__job_t *job, uint32_t w, uint32_t *chunk) {
  uint32_t limit = atomic_load(&job->limit);
  for (uint32_t i = 0; i < job->window; i++) {
    uint64_t v = atomic_load((_Atomic uint64_t *)((char *)job + job->states_off) + i);
    if (MP__CHUNK_STATUS(v) == MP__CHUNK_QUEUED && MP__CHUNK_ATTEMPTS(v) > 0 &&
        MP__CHUNK_OF(v) < limit && claim_at(job, MP__CHUNK_OF(v), w, v)) {
      atomic_fetch_sub(&job->retries_queued, 1);
      *chunk = MP__CHUNK_OF(v);
      return true;
    }
  }
  return false;
}

static bool claim_in(mp__job_t *job, uint32_t w, uint32_t *chunk) {
  if (atomic_load(&job->retries_queued) > 0 && claim_retried(job, w, chunk))
    return true;
  uint32_t limit = atomic_load(&job->limit);
  uint32_t start = atomic_load(&job->hint), h = start;
  for (; h < limit && h < job->n_chunks; h++) {
    uint64_t v = atomic_load(mp__job_state(job, h));
    if (MP__CHUNK_OF(v) == h && MP__CHUNK_STATUS(v) == MP__CHUNK_QUEUED &&
        MP__CHUNK_ATTEMPTS(v) == 0 && claim_at(job, h, w, v)) {
      /* The hint only grows: chunks below it are taken (retries are found apart). */
      while (start <= h && !atomic_compare_exchange_weak(&job->hint, &start, h + 1))
        ;
      *chunk = h;
      return true;
    }
  }
  while (start < h && !atomic_compare_exchange_weak(&job->hint, &start, h))
    ;
  return false;
}

/* Moves oldest past completed jobs, so that workers stop looking at them. */
static void advance_oldest(mp__pool_shared_t *sh, uint64_t seq) {
  uint64_t s = slot_state(sh, seq);
  if (s == (seq << 1 | 1) || (s >> 1) < seq)
    return;
  atomic_compare_exchange_strong(&sh->oldest, &seq, seq + 1);
}

bool mp__pool_claim(mp__pool_shared_t *sh, uint32_t w, mp__job_t **job, uint32_t *chunk) {
  mp__worker_rec_t *rec = &sh->workers[w];
  uint64_t next = atomic_load(&sh->next_seq);
  for (uint64_t seq = atomic_load(&sh->oldest); seq < next; seq++) {
    mp__job_t *j = mp__pool_pin(sh, w, seq);
    if (!j) {
      advance_oldest(sh, seq);
      continue;
    }
    if (claim_in(j, w, chunk)) {
      atomic_store_explicit(&rec->run_item, 0, memory_order_relaxed);
      atomic_store(&rec->run_seq, seq + 1);
      atomic_store(&rec->run_chunk, *chunk);
      mp__pool_unpin(sh, w); /* the running chunk keeps the job alive */
      *job = j;
      return true;
    }
  }
  mp__pool_unpin(sh, w);
  return false;
}

/* ------------------------------ completing ------------------------------ */

/* The chunks counted as done: each worker's counter (written by that worker alone, and by
 * the supervisor once it has died), and the parent's. */
uint64_t mp__job_done(const mp__job_t *job) {
  const _Atomic uint64_t *by = (const _Atomic uint64_t *)((const char *)job + job->done_off);
  uint64_t done = 0;
  for (uint32_t i = 0; i < job->n_counters; i++)
    done += atomic_load(&by[i]) >> 1;
  return done;
}

static _Atomic uint64_t *done_by(const mp__job_t *job, uint32_t w) {
  return (_Atomic uint64_t *)((char *)job + job->done_off) + w;
}

bool mp__job_complete(const mp__job_t *job) {
  return mp__job_done(job) >= job->n_chunks;
}

/* After chunks were counted: wakes the waiter, and if the job is complete, frees its slot.
 * Whoever wins the slot's compare-and-swap does that once, so the supervisor can call this
 * for a worker that died in the middle of it. The caller has the job pinned (or holds a
 * reference): the slot's reference is dropped before the waiter is woken, so that the
 * waiter's own release is the last one and it frees the block itself. */
void mp__job_settle(mp__pool_shared_t *sh, mp__job_t *job, int notify_fd) {
  bool last = mp__job_complete(job);
  uint64_t seq = job->seq, active = seq << 1 | 1;
  if (!last || !atomic_compare_exchange_strong(&sh->slots[seq % MP__POOL_SLOTS].state, &active,
                                               seq << 1)) {
    if (last || (job->flags & MP__JOB_WAKE_EACH))
      wake_waiter(job);
    return;
  }
  bool notify = job->flags & MP__JOB_NOTIFY;
  advance_oldest(sh, seq);
  atomic_fetch_add(&sh->slot_free, 1);
  if (atomic_load(&sh->slot_waiters) > 0)
    mp__futex_wake(&sh->slot_free, INT32_MAX);
  if (atomic_load(&sh->flags) & MP__POOL_CLOSED)
    mp__pool_wake_workers(sh, INT32_MAX); /* idle workers may exit now */
  /* The parent frees blocks: tell it when the slot's reference was the last. */
  if (mp__job_unref(job))
    notify = true;
  wake_waiter(job);
  if (notify)
    mp__pool_notify(notify_fd);
}

/* Chunks the parent counts: lost, or aborted. */
static void count_by_parent(mp__pool_shared_t *sh, mp__job_t *job, uint32_t chunks) {
  atomic_fetch_add(done_by(job, job->n_counters - 1), (uint64_t)chunks << 1);
  mp__job_settle(sh, job, -1);
}

/*
 * A worker counts its chunk in its own counter, with bit 0 set while it is between the two:
 * a worker killed there leaves the bit set, and the supervisor then knows from the chunk's
 * state whether the chunk became DONE (count it) or not (it is still RUNNING, lost).
 */
bool mp__pool_complete(mp__pool_shared_t *sh, mp__job_t *job, uint32_t chunk, uint32_t w,
                       uint32_t status, int notify_fd) {
  _Atomic uint64_t *state = mp__job_state(job, chunk), *mine = done_by(job, w);
  uint64_t v = atomic_load(state), count = atomic_load(mine) >> 1;
  atomic_store(&sh->workers[w].pin, job->seq + 1); /* for settling after the last reference */
  atomic_store(mine, count << 1 | 1);
  bool ours = MP__CHUNK_STATUS(v) == MP__CHUNK_RUNNING && MP__CHUNK_OWNER(v) == w + 1 &&
              atomic_compare_exchange_strong(
                  state, &v, MP__CHUNK_STATE(chunk, MP__CHUNK_ATTEMPTS(v), w + 1, status));
  /* Not ours: aborted, or given up for lost, and counted by whoever did that. */
  atomic_store(mine, (count + ours) << 1);
  atomic_store(&sh->workers[w].run_seq, 0);
  if (ours)
    mp__job_settle(sh, job, notify_fd);
  mp__pool_unpin(sh, w);
  return ours;
}

void mp__job_repair_count(mp__job_t *job, uint32_t w, uint32_t chunk) {
  _Atomic uint64_t *theirs = done_by(job, w);
  uint64_t v = atomic_load(theirs);
  if (!(v & 1))
    return;
  uint64_t st = atomic_load(mp__job_state(job, chunk));
  bool became_final = MP__CHUNK_OF(st) == chunk && MP__CHUNK_OWNER(st) == w + 1 &&
                      MP__CHUNK_STATUS(st) != MP__CHUNK_RUNNING;
  atomic_store(theirs, ((v >> 1) + became_final) << 1);
}

bool mp__job_lose_chunk(mp__pool_shared_t *sh, mp__job_t *job, uint32_t chunk, uint64_t item,
                        int code, const char *msg) {
  _Atomic uint64_t *state = mp__job_state(job, chunk);
  uint64_t v = atomic_load(state);
  if (MP__CHUNK_STATUS(v) != MP__CHUNK_RUNNING)
    return false;
  uint32_t attempts = MP__CHUNK_ATTEMPTS(v);
  if (attempts < sh->retries && attempts < 0xff) {
    if (atomic_compare_exchange_strong(
            state, &v, MP__CHUNK_STATE(chunk, attempts + 1, 0, MP__CHUNK_QUEUED))) {
      atomic_fetch_add(&job->retries_queued, 1);
      mp__pool_wake_workers(sh, 1);
      return true;
    }
    return false;
  }
  mp__job_record_error(job, chunk, item, code, msg);
  if (atomic_compare_exchange_strong(
          state, &v, MP__CHUNK_STATE(chunk, attempts, MP__CHUNK_OWNER(v), MP__CHUNK_FAILED)))
    count_by_parent(sh, job, 1);
  return false;
}

void mp__job_abort(mp__pool_shared_t *sh, mp__job_t *job, int code) {
  int32_t none = 0;
  if (!atomic_compare_exchange_strong(&job->abort_code, &none, code))
    return;
  /* No chunk is fed after this: the ones never fed count as aborted. */
  uint32_t fed = atomic_exchange(&job->limit, job->n_chunks);
  uint32_t aborted = job->n_chunks - fed;
  _Atomic uint64_t *states = (_Atomic uint64_t *)((char *)job + job->states_off);
  for (uint32_t i = 0; i < job->window; i++) {
    uint64_t v = atomic_load(&states[i]);
    for (;;) {
      uint32_t status = MP__CHUNK_STATUS(v);
      if (MP__CHUNK_OF(v) >= fed || (status != MP__CHUNK_QUEUED && status != MP__CHUNK_RUNNING))
        break;
      uint64_t failed = MP__CHUNK_STATE(MP__CHUNK_OF(v), MP__CHUNK_ATTEMPTS(v),
                                        MP__CHUNK_OWNER(v), MP__CHUNK_FAILED);
      if (atomic_compare_exchange_strong(&states[i], &v, failed)) {
        aborted++;
        break;
      }
    }
  }
  if (aborted)
    count_by_parent(sh, job, aborted);
  else
    wake_waiter(job);
}
