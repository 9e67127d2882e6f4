/*
 * The job table (pool_jobs.h): how tasks reach a pool's workers and results come back, and
 * who owns what on the way. Jobs live in the shared arena, claimed
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
 * A job block is freed only by the pool's process, once its last reference is gone, no
 * worker runs a chunk that an abort took from it (ABANDONED) and no worker has it pinned:
 * a worker pins a job's sequence number (in its record) before it reads
 * the slot, so a job that completes under a worker's eyes is not freed while the worker
 * still looks at it (the pin and the slot's state are each stored, then the other side's
 * read, sequentially consistent).
 */
#include "pool_jobs.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Freed job blocks kept for the next jobs, the largest SPARES; and blocks below SMALL_SPARE
 * bytes on a stack of their own, enough for lone applies in flight (a stream of same-size
 * jobs takes the top one). A batch's block (85 KiB at the least) is one of the SPARES, the
 * smallest that fits going to the next batch. */
#define SPARES 8
#define SMALL_SPARES 64
#define SMALL_SPARE ((uint64_t)1 << 16)
/* What a worker spins, looking for new work, before it sleeps (mp__pool_idle). */
#define IDLE_SPIN_NS 20000
/* A batch's argument room at the least (smaller arguments share a batch), and the largest
 * argument or result room a batch takes (larger applies are jobs of their own: their copies
 * cost more than a job does). */
#define BATCH_ARG_MIN 56
#define BATCH_MAX_BYTES 1024
/*
 * A batch chunk's state word starts a line of its own, its cell: the state word, then the
 * argument when it fits (its length word, then CELL_ROOM bytes), then a copy of the result
 * when it fits (the same). A claim then reads its argument in the line it has just taken,
 * and a get reads the result in the line whose state word it has just seen change, one line
 * each way where three moved (pool.apply, medians 0.91 -> 0.69 us/op; docs/architecture.md,
 * "A batch chunk's cell"). The task still writes its result into the output region, whose
 * canaries an overrun meets; the worker copies it into the cell after the canary's check.
 * Larger arguments and results keep their region slots, which the cell's length words point
 * to by being past CELL_ROOM. Spread 7 lays the 128 state words 8 words (a line) apart.
 */
#define BATCH_SPREAD 7
#define CELL_ROOM 16
#define CELL_WORDS ((MP__VARSIZE_HEAD + CELL_ROOM) / sizeof(uint64_t)) /* length, bytes */
#define CELL_INPUT 8                                             /* the argument's words */
#define CELL_RESULT (CELL_INPUT + CELL_WORDS * sizeof(uint64_t)) /* the result copy's */
_Static_assert(
    (1u << BATCH_SPREAD) == MP__BATCH_APPLIES,
    "each of a batch's state words starts a line of its own, in order (batch_state)");
_Static_assert(CELL_ROOM <= 16, "copy_small moves a cell's bytes");
_Static_assert(CELL_RESULT + CELL_WORDS * sizeof(uint64_t) <= 64, "a cell fits its line");
_Static_assert(CELL_WORDS * sizeof(uint64_t) <= MP__TASK_ARG_COPY,
               "a cell's argument fits a task's copy");

/* The pool's side of the table, in the pool's process. */
struct mp__jobs_s {
  mp__pool_shared_t *sh;
  pthread_mutex_t submit_lock; /* publication in seq order: taken before lock */
  pthread_mutex_t lock;        /* the job list, the spares, the function table, aborts */
  pthread_mutex_t apply_lock;  /* the open batch: taken before submit_lock and lock */
  _Atomic(mp__jobrec_t *) batch; /* the open batch of applies, with a reference, or NULL */
  /* The open batch's header as appending reads it, here rather than in the block, whose
   * lines the workers' claims read. */
  uint32_t batch_fn, batch_next;
  bool batch_notify;
  /* The last submission was an apply: the next one opens a batch if none is open. Relaxed:
   * a guess, which a map submitted by another thread meanwhile may make wrong. */
  _Atomic bool applying;
  uint64_t batch_room, batch_result_max;
  char *batch_input; /* chunk c's input at batch_input + c * (batch_room + its length) */
  /* The open batch's chunks that its block's limit shows (the rest are held back), the most
   * that may be held (mp__jobs_set_hold), whether some are, and whether the caller appended
   * since its last wait (both read by a wait without apply_lock: relaxed). */
  uint32_t batch_shown, hold;
  _Atomic bool holding, streaming;
  uint64_t next_seq;
  uint32_t n_workers, retries; /* the shared block's, which a worker may rewrite */
  /* MP__POOL_CLOSED and MP__POOL_TERMINATED as this process set them: the shared block's
   * flags are the workers' copy, which a worker may clear (a closed pool's join then waited
   * for ever: test_forged_flags_reopen), set back by mp__jobs_restore_flags. */
  _Atomic uint32_t flags;
  /* Submissions between their look at the flags and their publication, as this process
   * counts them: the shared block's count is the workers' copy (mp__jobs_restore_flags). */
  _Atomic uint32_t submitting;
  /* The function table and the initializer as this process made them: the shared block's
   * copies are for the workers, which may rewrite them, so the look-ups, the bounds and the
   * frees here read only these. n_fns is read without the lock (find_function). */
  _Atomic uint32_t n_fns;
  mp__fn_t fns[MP__POOL_MAX_FNS];
  mp__fnref_t *fn_refs[MP__POOL_MAX_FNS];
  mp__fnref_t *init_ref;
  void *initargs;
  size_t initargs_size;
  mp__jobrec_t *jobs;          /* the records of every job not freed */
  mp__jobrec_t *free_recs;     /* records for the next jobs (linked by next) */
  mp__job_t *spares[SPARES];   /* freed jobs' blocks, for the next jobs */
  uint64_t spare_size[SPARES]; /* their sizes: a search reads no block */
  mp__job_t *small[SMALL_SPARES];
  uint64_t small_size[SMALL_SPARES];
  size_t n_small;
};

static mp__jobrec_t *take_spare(mp__jobs_t *t, uint64_t bytes, bool batch);
static mp__jobrec_t *take_record(mp__jobs_t *t, mp__job_t *blk, bool batch);
static void job_abort(mp__jobs_t *t, mp__jobrec_t *job, int code);
static void show_held_if_free(mp__jobs_t *t);
static void keep_for_later(mp__job_t *job, uint64_t size);
static void close_feeding(mp__jobs_t *t, mp__jobrec_t *job);
static mp__task_error_t *error_at(const mp__job_t *job, uint32_t chunk);
static mp__task_error_t *rec_error(const mp__jobrec_t *r, uint32_t chunk);
static _Atomic uint64_t *rec_state(const mp__jobrec_t *r, uint32_t chunk);

/* ------------------------------- the job ------------------------------- */

/* Maps the pages of [p, p + len) in this process at once, writable: one system call where
 * the first touches would fault once per page (page tables are per process, so every
 * process faults on every page of a shared block it has not touched yet). Only for large
 * ranges; a kernel without MADV_POPULATE_WRITE (before 5.14) leaves the pages to fault. */
static long page_size(void) {
  static _Atomic long page;
  if (!atomic_load_explicit(&page, memory_order_relaxed))
    atomic_store_explicit(&page, sysconf(_SC_PAGESIZE), memory_order_relaxed);
  return atomic_load_explicit(&page, memory_order_relaxed);
}

static void prefault(void *p, uint64_t len) {
  if (len < MP__PREFAULT_BYTES)
    return;
  uintptr_t size = (uintptr_t)page_size();
  uintptr_t from = (uintptr_t)p & ~(size - 1),
            to = ((uintptr_t)p + len + size - 1) & ~(size - 1);
  (void)madvise((void *)from, to - from, MADV_POPULATE_WRITE);
}

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

/* The spread of a window's state words (mp__job_t): the least s with 8 << s >= window, for
 * windows of 16 slots and more (a smaller one is a single apply, or a few chunks). */
static uint32_t state_spread(uint64_t window) {
  uint32_t s = 0;
  if (window < 16)
    return 0;
  while (((uint64_t)8 << s) < window)
    s++;
  return s;
}

static void queue_all(mp__jobrec_t *r);

/*
 * The block: header | state words | error records | done counters | input | output. The
 * output comes last, each window slot followed by a canary (MP__JOB_CANARY), so that a task
 * that writes past its result's room is caught (pool_worker.c) and cannot reach the
 * records the pool reads back.
 */
static int job_create(mp__jobs_t *t, uint32_t fn, uint32_t flags, uint64_t n,
                      uint64_t item_size, uint64_t result_size, uint64_t chunksize,
                      uint64_t result_cap, uint32_t window, mp__jobrec_t **out) {
  *out = NULL;
  uint32_t n_workers = t->n_workers;
  uint64_t n_chunks = n / chunksize + (n % chunksize != 0); /* n + chunksize - 1 overflows */
  if (n_chunks > UINT32_MAX / 2)
    return mp__error(MP_EINVAL, "%llu chunks: use a larger chunksize",
                     (unsigned long long)n_chunks);
  if (window == 0 || window > n_chunks)
    window = (uint32_t)(n_chunks ? n_chunks : 1);
  uint64_t per_slot_in, per_slot_out, out_stride, n_errs = flags & MP__JOB_ITERATOR ? window : 1;
  uint32_t spread = flags & MP__JOB_BATCH ? BATCH_SPREAD : state_spread(window);
  uint64_t n_states = spread ? (uint64_t)8 << spread : window;
  uint64_t at = sizeof(mp__job_t), states_off, errs_off, done_off, input_off, output_off;
  if (__builtin_mul_overflow(chunksize, item_size, &per_slot_in) ||
      __builtin_mul_overflow(chunksize, result_size, &per_slot_out) ||
      __builtin_add_overflow(per_slot_out, MP__JOB_CANARY, &out_stride) ||
      !place(&at, n_states, sizeof(uint64_t), &states_off) ||
      !place(&at, n_errs, sizeof(mp__task_error_t), &errs_off) ||
      !place(&at, (uint64_t)n_workers + 1, MP__DONE_STRIDE, &done_off) ||
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
  /* Not zeroed: the input and output are overwritten whole; the rest is set here. A spare
   * comes with its record, linked in the job list already (one hold of the lock). */
  bool batch = flags & MP__JOB_BATCH;
  mp__jobrec_t *r = take_spare(t, total, batch);
  bool fresh = !r;
  if (fresh) {
    void *blk;
    int rc = mp__shared_alloc_by(&blk, total, MP__NO_DEADLINE);
    if (rc < 0)
      return mp__error_prefix(rc, "a job of %llu bytes", (unsigned long long)total);
    prefault(blk, total); /* the submitter writes its input, then reads its output */
    pthread_mutex_lock(&t->lock);
    r = take_record(t, blk, batch);
    if (r)
      r->block_size = total;
    pthread_mutex_unlock(&t->lock);
    if (!r) {
      mp__shared_release_sized(blk, total);
      return mp__error_prefix(MP_ENOMEM, "no room for a job of %llu bytes",
                              (unsigned long long)total);
    }
  }
  mp__job_t *job = r->blk;
  static _Atomic uint64_t block_ids;
  /* A reused block keeps its id (a worker's warm pages are by id); a wild one only costs
   * that worker faults. */
  uint64_t block_id = fresh ? atomic_fetch_add(&block_ids, 1) + 1 : job->block_id;
  /* The error records are left out (a batch's or an iterator's are tens of KiB): only their
   * item is read before a failure writes them whole, and it is set below. A map's state
   * words are all written below, and a batch's (FREE): only an iterator's are zeroed here. A
   * batch's cells are not (8 KiB, 68 instructions an apply): a length word is used only after
   * the state word that the same process stored after it, and is bounded by its own slot's
   * room whatever it holds. */
  memset(job, 0, flags & MP__JOB_ITERATOR && !batch ? errs_off : states_off);
  memset((char *)job + done_off, 0, input_off - done_off);
  uint32_t chunks = (uint32_t)n_chunks; /* at most UINT32_MAX / 2: checked above */
  mp__job_head_t head = {
      fn,         flags,      n,          item_size, result_size,   chunksize,
      result_cap, chunks,     window,     spread,    n_workers + 1, states_off,
      input_off,  output_off, out_stride, errs_off,  n_errs,        done_off};
  /* Two assignments: the record's is not read back from the block, a worker's to write. */
  r->head = head;
  job->head = head;
  job->block_size = r->block_size;
  job->block_id = block_id;
  /* Until it is published, if ever. */
  atomic_store_explicit(&r->waker, &t->sh->wakers[MP__POOL_SLOTS], memory_order_relaxed);
  atomic_init(&r->refs, 1);
  atomic_init(&r->abort_code, 0);
  r->fed = 0;
  atomic_init(&r->fed_items, 0);
  r->input_ended = false;
  r->claimed_below = 0;
  for (uint64_t i = 0; i < n_errs; i++)
    rec_error(r, (uint32_t)i)->item = UINT64_MAX;
  r->lost.item = UINT64_MAX;
  atomic_init(&r->limit, flags & MP__JOB_ITERATOR ? 0 : r->head.n_chunks);
  if (batch)
    for (uint32_t c = 0; c < window; c++)
      atomic_init(rec_state(r, c), MP__CHUNK_STATE(0, 0, 0, MP__CHUNK_FREE));
  if (!(flags & MP__JOB_ITERATOR)) {
    queue_all(r);
    atomic_init(&job->limit, r->head.n_chunks);
  }
  atomic_init(&job->refs, 1);
  *out = r;
  return 0;
}

/* Chunk's slot in a ring of n: a map's window holds every chunk, so the division (tens of
 * cycles, several times per chunk) is left to iterators. */
static inline uint64_t ring_slot(uint32_t chunk, uint64_t n) {
  return chunk < n ? chunk : chunk % n;
}

/* Chunk's state word among those at states, of a window laid out by spread. */
static inline _Atomic uint64_t *state_in(const void *states, uint64_t window, uint64_t spread,
                                         uint32_t chunk) {
  uint64_t slot = ring_slot(chunk, window);
  spread &= 63; /* a worker's wild word makes a wrong slot, not a shift past 64 bits */
  if (spread)
    slot = (slot & ((1ull << spread) - 1)) * 8 + (slot >> spread);
  return (_Atomic uint64_t *)states + slot;
}

/* Chunk c's state word in a batch (c < MP__BATCH_APPLIES): what rec_state finds, by the
 * batch's own layout (one line a chunk, in order). An apply looks it up four times, and
 * rec_state's general arithmetic took about 20 instructions each. */
static _Atomic uint64_t *batch_state(const mp__jobrec_t *r, uint32_t c) {
  return (_Atomic uint64_t *)((char *)r->blk + r->head.states_off) + (uint64_t)c * 8;
}

/* A batch chunk's cell: its state word's line. */
static char *cell_of(_Atomic uint64_t *state) {
  return (char *)state;
}

/* memcpy of at most CELL_ROOM bytes, inline: the library's memcpy, called for the 4 bytes of
 * an int, was a tenth of an append's instructions. Two moves of 8 or 4 bytes, which may
 * overlap, cover any length up to twice theirs; three of one byte, any length up to 3. */
static inline void copy_small(void *dst, const void *src, size_t len) {
  char *d = dst;
  const char *s = src;
  if (len >= 8) {
    memcpy(d, s, 8);
    memcpy(d + len - 8, s + len - 8, 8);
  } else if (len >= 4) {
    memcpy(d, s, 4);
    memcpy(d + len - 4, s + len - 4, 4);
  } else if (len) {
    d[0] = s[0];
    d[len / 2] = s[len / 2];
    d[len - 1] = s[len - 1];
  }
}

/* A cell's words are written and read whole, as atomics: a task may read its block as it
 * likes (test_forged_*), and a plain copy made by another thread would race with it. Puts
 * len at `at`, and its bytes after it when they fit CELL_ROOM: true; else the length alone,
 * which sends the reader to the region slot. */
static bool cell_put(char *cell, size_t at, uint64_t len, const void *bytes) {
  _Atomic uint64_t *to = (_Atomic uint64_t *)(cell + at);
  atomic_store_explicit(to, len, memory_order_relaxed);
  if (len > CELL_ROOM)
    return false;
  uint64_t words[CELL_WORDS - 1] = {0};
  copy_small(words, bytes, len);
  /* Unrolled (a loop's count and jumps were as many instructions as the stores). */
#pragma GCC unroll 4
  for (size_t i = 0; i < CELL_WORDS - 1; i++)
    atomic_store_explicit(to + 1 + i, words[i], memory_order_relaxed);
  return true;
}

static void cell_load(char *cell, size_t at, uint64_t *words) {
#pragma GCC unroll 4
  for (size_t i = 0; i < CELL_WORDS; i++)
    words[i] = atomic_load_explicit((_Atomic uint64_t *)(cell + at) + i, memory_order_relaxed);
}

_Atomic uint64_t *mp__job_state(const mp__job_t *job, uint32_t chunk) {
  return state_in((const char *)job + job->head.states_off, job->head.window, job->head.spread,
                  chunk);
}

/* The pool's process's accessors: the same layout, by the header of the job's record. */
static _Atomic uint64_t *rec_state(const mp__jobrec_t *r, uint32_t chunk) {
  return state_in((const char *)r->blk + r->head.states_off, r->head.window, r->head.spread,
                  chunk);
}

static void *rec_input(const mp__jobrec_t *r, uint32_t chunk) {
  return (char *)r->blk + r->head.input_off +
         ring_slot(chunk, r->head.window) * r->head.chunksize * r->head.item_size;
}

static void *rec_output(const mp__jobrec_t *r, uint32_t chunk) {
  return (char *)r->blk + r->head.output_off +
         ring_slot(chunk, r->head.window) * r->head.out_stride;
}

static mp__task_error_t *rec_error(const mp__jobrec_t *r, uint32_t chunk) {
  return (mp__task_error_t *)((char *)r->blk + r->head.errs_off) +
         ring_slot(chunk, r->head.n_errs);
}

/* Every chunk of a map queued, its state words written in the order they lie (a spread
 * map's line l holds chunks l, l + 2^spread, ...; a slot past the last chunk holds none). */
static void queue_all(mp__jobrec_t *r) {
  _Atomic uint64_t *states = (_Atomic uint64_t *)((char *)r->blk + r->head.states_off);
  uint64_t n = r->head.n_chunks, lines = r->head.spread ? (uint64_t)1 << r->head.spread : n,
           per_line = r->head.spread ? 8 : 1;
  for (uint64_t l = 0; l < lines; l++, states += per_line)
    for (uint64_t i = 0, c = l; i < per_line; i++, c += lines)
      atomic_init(&states[i], c < n ? MP__CHUNK_STATE(c, 0, 0, MP__CHUNK_QUEUED)
                                    : MP__CHUNK_STATE(0, 0, 0, MP__CHUNK_FREE));
}

static void *job_input(const mp__job_t *job, uint32_t chunk) {
  return (char *)job + job->head.input_off +
         ring_slot(chunk, job->head.window) * job->head.chunksize * job->head.item_size;
}

static void *job_output(const mp__job_t *job, uint32_t chunk) {
  return (char *)job + job->head.output_off +
         ring_slot(chunk, job->head.window) * job->head.out_stride;
}

static mp__task_error_t *error_at(const mp__job_t *job, uint32_t chunk) {
  return (mp__task_error_t *)((char *)job + job->head.errs_off) +
         ring_slot(chunk, job->head.n_errs);
}

/* The items of chunk, of a job of n items in chunks of chunksize (none past the last). */
static inline uint64_t items_of(uint64_t n, uint64_t chunksize, uint32_t chunk) {
  uint64_t first = (uint64_t)chunk * chunksize;
  if (first >= n)
    return 0;
  return n - first < chunksize ? n - first : chunksize;
}

/* The items of chunk of a job with header head: of its n, or an open job's fed so far. */
static inline uint64_t head_items(const mp__job_head_t *head, const _Atomic uint64_t *fed_items,
                                  uint32_t chunk) {
  uint64_t n = head->flags & MP__JOB_OPEN
                   ? atomic_load_explicit((_Atomic uint64_t *)fed_items, memory_order_relaxed)
                   : head->n;
  return items_of(n, head->chunksize, chunk);
}

uint64_t mp__job_chunk_items(const mp__job_t *job, uint32_t chunk) {
  return head_items(&job->head, &job->fed_items, chunk);
}

static uint64_t rec_items(const mp__jobrec_t *job, uint32_t chunk) {
  return head_items(&job->head, &job->fed_items, chunk);
}

static bool job_unref(mp__job_t *job) {
  return atomic_fetch_sub(&job->refs, 1) == 1;
}

/* A failure in record e of a job (an iterator's keeps each; a map's its lowest item). */
static void write_error(mp__task_error_t *e, bool iterator, uint64_t item, int code,
                        const char *msg) {
  if (iterator || item < e->item) {
    e->item = item;
    e->code = code;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
  }
}

/* How long a worker waits for the error lock: a holder keeps it for one short write, so one
 * still there after this is stopped or hostile, and the failure is written without it. */
#define ERR_LOCK_WAIT_NS 1000000000

/* A worker's failure, under the pool's error lock: the workers failing chunks of one map at
 * once write its one record. Written even when the lock cannot be had (a torn message is
 * still bounded), so that a failure is never reported as a success, nor waits for ever. */
static void record_error(mp__pool_shared_t *sh, mp__job_t *job, uint32_t chunk, uint64_t item,
                         int code, const char *msg) {
  /* A holder that died could only leave a half-written message: still a message. */
  int rc = mp__mutex_lock(&sh->err_lock, mp__now_ns() + ERR_LOCK_WAIT_NS);
  write_error(error_at(job, chunk), job->head.flags & MP__JOB_ITERATOR, item, code, msg);
  if (rc == 0 || rc == MP_EOWNERDEAD)
    mp__mutex_unlock(&sh->err_lock);
}

/* ------------------------------ waking up ------------------------------ */

void mp__pool_notify(int fd) {
  uint64_t one = 1;
  if (fd >= 0 && write(fd, &one, sizeof one) < 0) {
    /* EAGAIN: the counter is full, so the supervisor is woken anyway. */
  }
}

/* The idle worker that went idle last, taken (its ticket cleared), or -1. */
static int64_t take_idle_worker(mp__pool_shared_t *sh, uint32_t n_workers) {
  for (;;) {
    int64_t best = -1;
    uint64_t best_ticket = 0;
    for (uint32_t w = 0; w < n_workers; w++) {
      uint64_t t = atomic_load(&sh->workers[w].idle_ticket);
      if (t > best_ticket)
        best = w, best_ticket = t;
    }
    if (best < 0 ||
        atomic_compare_exchange_strong(&sh->workers[best].idle_ticket, &best_ticket, 0))
      return best;
  }
}

/* n_workers: the table's, in the pool's process (the shared block's may be wild). */
static void wake_workers(mp__pool_shared_t *sh, uint32_t n_workers, int n) {
  atomic_fetch_add(&sh->work, 1);
  for (int i = 0; i < n && atomic_load(&sh->idle) > 0; i++) {
    int64_t w = take_idle_worker(sh, n_workers);
    if (w < 0)
      return;
    atomic_fetch_add(&sh->workers[w].wake, 1);
    mp__futex_wake(&sh->workers[w].wake, 1);
  }
}

/*
 * Lost wake-ups: the worker announces itself (idle count, ticket) and then reads the work
 * word; a submitter bumps the work word and then reads the idle count, all sequentially
 * consistent, so either the worker sees the new work or the submitter sees the worker. The
 * worker's own wake word, read before it announces itself, catches a wake-up that comes
 * between its last look and its sleep.
 */
void mp__pool_idle(mp__pool_shared_t *sh, uint32_t w, uint32_t seen) {
  mp__worker_rec_t *rec = &sh->workers[w];
  /* A short spin first, before the worker counts as idle: work submitted within it (the next
   * apply of a stream, the next map) is taken with no wake-up, and the submitter, seeing no
   * idle worker, makes no futex call. As short as the waiter's, for the same reason. */
  int64_t spin_end = mp__now_ns() + IDLE_SPIN_NS;
  for (int i = 1; atomic_load(&sh->work) == seen && mp__spin(i, spin_end, true); i++)
    ;
  if (atomic_load(&sh->work) != seen)
    return;
  uint32_t wake = atomic_load(&rec->wake);
  /* Counted before the ticket, uncounted after it: a worker that ends between the two
   * (mp__jobs_worker_gone uncounts it if it has a ticket) leaves the count one too high,
   * which costs a submitter a look at the tickets, never one too low, which would let a
   * submitter skip a sleeping worker (review, stop 18). */
  atomic_fetch_add(&sh->idle, 1);
  MP__RACE_POINT(MP__RACE_IDLE, NULL);
  atomic_store(&rec->idle_ticket, atomic_fetch_add(&sh->idle_tickets, 1) + 1);
  if (atomic_load(&sh->work) == seen && !mp__pool_take_held(sh, w))
    mp__futex_wait(&rec->wake, wake, INT64_MAX);
  atomic_store(&rec->idle_ticket, 0);
  atomic_fetch_sub(&sh->idle, 1);
}

/*
 * Only a waiter about to sleep needs the word bumped: it counts itself in waiters and then
 * looks at its condition again, and whoever wakes has made the condition true before it
 * reads waiters (both sequentially consistent), so one of the two sees the other. A chunk
 * of a batch completed with nobody asleep then writes no line that the other workers do.
 * The waker takes the count (to 0) and wakes every sleeper, which counts itself again if it
 * sleeps again; waiters never uncount themselves (one that leaves costs at most one futex
 * call later). So the completions that follow while a woken waiter is not running yet make
 * no futex call each, as they did when every completion found it still counted. A waiter
 * that counts itself after the take read the word before it: either the bump comes after
 * that read (its futex wait returns at once) or its count stands for the next wake.
 */
static void wake(mp__job_waker_t *waker) {
  if (atomic_load(&waker->waiters) > 0 && atomic_exchange(&waker->waiters, 0) > 0) {
    MP__RACE_POINT(MP__RACE_WAKING, NULL);
    atomic_fetch_add(&waker->wake, 1);
    mp__futex_wake(&waker->wake, INT32_MAX);
  }
}

/* The index of the waker of the job of seq (0: never published) in the pool's shared block. */
static uint32_t waker_index(uint64_t seq) {
  return seq ? (uint32_t)(seq % MP__POOL_SLOTS) : MP__POOL_SLOTS;
}

static mp__job_waker_t *waker_of(mp__pool_shared_t *sh, uint64_t seq) {
  return &sh->wakers[waker_index(seq)];
}

/* Wakes whoever sleeps on waker, counted or not: a worker killed inside wake(), between the
 * take of the count and the bump, left a sleeper that no count names. */
static void wake_uncounted(mp__job_waker_t *waker) {
  atomic_fetch_add(&waker->wake, 1);
  mp__futex_wake(&waker->wake, INT32_MAX);
}

int mp__job_wait(mp__jobrec_t *job, bool (*done)(const mp__jobrec_t *job, void *arg), void *arg,
                 bool interruptible, int64_t deadline) {
  /* The count is read before the spin (one load), so a SIGINT during it is seen too. */
  uint32_t base = interruptible ? mp__sigint_count() : 0;
  if (done(job, arg)) /* a result already there costs no clock reading */
    return 0;
  /* A short spin first: a task that takes microseconds is done before a sleep and its
   * wake-up would be (on an idle machine, waking a sleeping CPU costs tens of them). */
  int64_t spin_end = mp__now_ns() + 20000;
  for (int i = 1; !done(job, arg) && mp__spin(i, spin_end, mp__one_cpu()); i++)
    ;
  if (done(job, arg))
    return 0;
  /* Only a wait that will sleep chains the counter in front of the program's handler (a
   * system call or two, which a result ready within the spin does without). */
  const _Atomic uint32_t *interrupts = interruptible ? mp__sigint_watch() : NULL;
  /* Without a timeout the kernel restarts the wait after an SA_RESTART handler, unseen;
   * with one, any handler ends it with EINTR. */
  if (interrupts && deadline == INT64_MAX)
    deadline = INT64_MAX - 1;
  mp__job_waker_t *waker = atomic_load_explicit(&job->waker, memory_order_relaxed);
  for (;;) {
    uint32_t seen = atomic_load(&waker->wake);
    if (done(job, arg))
      return 0;
    if (interrupts && atomic_load(interrupts) != base)
      return MP_EINTR;
    atomic_fetch_add(&waker->waiters, 1);
    /* A signal's EINTR only sends us round the loop, to look at the counter again. */
    int rc = done(job, arg) ? 0 : mp__futex_wait_sig(&waker->wake, seen, deadline);
    if (rc == MP_ETIMEDOUT)
      return done(job, arg) ? 0 : MP_ETIMEDOUT;
  }
}

void (*mp__pool_race_hook)(int point, mp__job_t *job);

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

/* The slot's last job (seq - MP__POOL_SLOTS) is one of the table's records still: only then
 * can the slot be in use. A state that says so of a job the table freed is a worker's wild
 * write, which no worker would ever clear: every later submission waited for the slot for
 * ever (test_forged_slot_state). */
static bool slot_may_be_held(mp__jobs_t *t, uint64_t seq) {
  bool held = false;
  pthread_mutex_lock(&t->lock);
  for (mp__jobrec_t *r = t->jobs; r && !held; r = r->next)
    held = mp__jobrec_seq(r) + MP__POOL_SLOTS == seq;
  pthread_mutex_unlock(&t->lock);
  return held;
}

/* A wait for a slot looks at the table's records again this often (a wild state wakes no one).
 */
#define SLOT_LOOK_NS 100000000

static int job_publish(mp__jobs_t *t, mp__jobrec_t *r, uint64_t seq, int64_t deadline) {
  mp__pool_shared_t *sh = t->sh;
  mp__job_t *job = r->blk;
  for (;;) {
    uint32_t seen = atomic_load(&sh->slot_free);
    if (slot_free_for(sh, seq) || !slot_may_be_held(t, seq))
      break;
    if (mp__jobs_flags(t) & MP__POOL_TERMINATED)
      return mp__error(MP_ETERMINATED, "the pool was terminated");
    atomic_fetch_add(&sh->slot_waiters, 1);
    int64_t look = mp__now_ns() + SLOT_LOOK_NS;
    int rc = slot_free_for(sh, seq)
                 ? 0
                 : mp__futex_wait(&sh->slot_free, seen, look < deadline ? look : deadline);
    if (rc == MP_ETIMEDOUT && look < deadline)
      rc = 0;
    atomic_fetch_sub(&sh->slot_waiters, 1);
    if (rc == MP_ETIMEDOUT)
      return mp__error(MP_ETIMEDOUT, "%d jobs are in flight", MP__POOL_SLOTS);
  }
  atomic_store_explicit(&job->seq, seq, memory_order_relaxed);
  atomic_store_explicit(&r->seq, seq, memory_order_relaxed);
  atomic_store_explicit(&r->waker, waker_of(sh, seq), memory_order_relaxed);
  atomic_fetch_add(&job->refs, 1); /* the slot's */
  atomic_store_explicit(&sh->slots[seq % MP__POOL_SLOTS].job, job, memory_order_relaxed);
  atomic_store(&sh->slots[seq % MP__POOL_SLOTS].state, seq << 1 | 1);
  atomic_store(&sh->next_seq, seq + 1);
  /* A terminate whose abort scanned the slots before this one was filled does not see this
   * job: it set the flag first, so the job is aborted here (both sides are sequentially
   * consistent: one of them sees the other). */
  if (mp__jobs_flags(t) & MP__POOL_TERMINATED)
    job_abort(t, r, MP_ETERMINATED);
  return 0;
}

/* Chunk next of a fed job (an iterator's, a batch's), its input written, is queued and
 * counted as fed: false if the job was aborted or closed meanwhile, and then the chunk was
 * counted as such. No worker claims it before show_chunks. */
static bool feed_chunk(mp__jobrec_t *job, _Atomic uint64_t *state, uint32_t next) {
  /* Released by the block limit's rise, which a claimer reads first. A swap of the record's
   * limit that fails (a close or an abort marked it first, counting this chunk as never
   * fed) leaves the chunk QUEUED, past the block's limit, where no claim looks (claim_in). */
  atomic_store_explicit(state, MP__CHUNK_STATE(next, 0, 0, MP__CHUNK_QUEUED),
                        memory_order_release);
  MP__RACE_POINT(MP__RACE_QUEUED, job->blk);
  return atomic_compare_exchange_strong(&job->limit, &next, next + 1);
}

/*
 * The block's limit raised from shown to fed, the chunks fed before it (the record counts
 * them), and as many idle workers woken. The rise keeps a close's mark. Only this process
 * and the workers' mp__pool_take_held (up to the appended count, at most fed) raise it: a
 * count below shown or above fed is a worker's wild write, and the job fails rather than
 * leave chunks that no claim would look at.
 */
static void show_chunks(mp__jobs_t *t, mp__jobrec_t *job, uint32_t shown, uint32_t fed) {
  _Atomic uint32_t *limit = &job->blk->limit;
  /* Expected as this process left it: one locked instruction, no read of the line first. */
  uint32_t v = shown;
  while (!atomic_compare_exchange_weak(limit, &v, (v & MP__LIMIT_CLOSED) | fed)) {
    uint32_t count = v & ~MP__LIMIT_CLOSED;
    if (count < shown || count > fed) {
      job_abort(t, job, MP_ECORRUPT);
      break;
    }
    if (count == fed)
      break;
  }
  wake_workers(t->sh, t->n_workers, (int)(fed - shown));
}

/* feed_chunk, then shown to the workers at once. */
static bool queue_chunk(mp__jobs_t *t, mp__jobrec_t *job, _Atomic uint64_t *state,
                        uint32_t next) {
  if (!feed_chunk(job, state, next))
    return false;
  show_chunks(t, job, next, next + 1);
  return true;
}

/* An open job's next chunk, from its source, into its window slot: its items (0: none, and
 * the input ended). The count is the workers' to read, so it is stored before the chunk is
 * queued. */
static uint64_t fill_chunk(mp__jobrec_t *job, uint32_t next, const mp__feed_t *feed) {
  uint64_t max = job->head.chunksize,
           count = feed->fill(feed->arg, rec_input(job, next), max, job);
  count = count < max ? count : max;
  uint64_t fed_items = (uint64_t)next * max + count;
  atomic_store_explicit(&job->fed_items, fed_items, memory_order_relaxed);
  atomic_store_explicit(&job->blk->fed_items, fed_items, memory_order_relaxed);
  return count;
}

/* Chunks are fed by the iterator's owner, one thread: its record counts them (the block's
 * limit, a worker's to write, only tells the workers). An open job's feeding ends with its
 * source, or with its chunks. */
static bool job_feed(mp__jobs_t *t, mp__jobrec_t *job, const mp__feed_t *feed) {
  uint32_t next = job->fed;
  bool open = job->head.flags & MP__JOB_OPEN;
  if (job->input_ended || atomic_load(&job->abort_code))
    return false;
  if (next >= job->head.n_chunks) {
    if (open) {
      job->input_ended = true;
      close_feeding(t, job);
    }
    return false;
  }
  _Atomic uint64_t *state = rec_state(job, next);
  if (next >= job->head.window && MP__CHUNK_STATUS(atomic_load(state)) != MP__CHUNK_FREE)
    return false; /* the chunk a window earlier has not been taken yet */
  uint64_t first = (uint64_t)next * job->head.chunksize, count;
  if (open) {
    count = fill_chunk(job, next, feed);
    job->input_ended = count < job->head.chunksize;
  } else {
    count = rec_items(job, next);
    if (job->head.item_size)
      memcpy(rec_input(job, next), (const char *)feed->items + first * job->head.item_size,
             count * job->head.item_size);
  }
  /* Sent whole, a slot's unused tail and padding too: memcheck does not see worker processes
   * write, so bytes left undefined here would stay so when this block later holds another
   * job's results. */
  MP__SCANNED(rec_input(job, next), count * job->head.item_size);
  /* The slot may still hold the failure of an earlier chunk that used it: a chunk fed here
   * and then failed by an abort (which records nothing) would report it as its own. */
  rec_error(job, next)->item = UINT64_MAX;
  bool queued = count > 0 && queue_chunk(t, job, state, next);
  if (queued)
    job->fed = next + 1;
  /* A chunk fed within a worker's spin ends it before the worker looks for held applies,
   * which an iterator fed all along would then hide for ever: its feeds show them. */
  if (queued)
    show_held_if_free(t);
  if (open && job->input_ended)
    close_feeding(t, job);
  return queued && !job->input_ended;
}

/* ------------------------------- pinning ------------------------------- */

static mp__job_t *pin(mp__pool_shared_t *sh, uint32_t pinner, uint64_t seq) {
  atomic_store(&sh->workers[pinner].pin, seq + 1);
  if (slot_state(sh, seq) != (seq << 1 | 1))
    return NULL;
  /* Acquire: the second look at the state cannot be made before this read (on a weakly
   * ordered CPU a relaxed read could see the next job's pointer after that look). */
  mp__job_t *job =
      atomic_load_explicit(&sh->slots[seq % MP__POOL_SLOTS].job, memory_order_acquire);
  /* Still seq's: the pointer read between the two is seq's job. */
  return slot_state(sh, seq) == (seq << 1 | 1) ? job : NULL;
}

/* A release: what the pinner did with the job comes before a freer's look at the pin. */
static void unpin(mp__pool_shared_t *sh, uint32_t pinner) {
  atomic_store_explicit(&sh->workers[pinner].pin, 0, memory_order_release);
}

/* A chunk that an abort took from the worker running it, which that worker has not let go
 * of yet. Once there is none, the job's flag is cleared: no later look scans its window
 * (t->lock held, as aborts hold it, so no abort marks one meanwhile). */
static bool holds_abandoned(mp__jobrec_t *r) {
  if (!atomic_load(&r->abandoned))
    return false;
  for (uint32_t i = 0; i < r->head.window; i++)
    if (MP__CHUNK_STATUS(atomic_load(rec_state(r, i))) == MP__CHUNK_ABANDONED)
      return true;
  atomic_store(&r->abandoned, false);
  return false;
}

/* No worker (nor the supervisor) has the job pinned or runs a chunk of it, and its slot let
 * go of it: its block is the pool's process's alone. By the record's seq and the table's
 * count of workers: a wild pin, slot or chunk state keeps a block (a leak) or frees one that
 * a worker still writes (a job's results lost, which a wild worker could spoil anyway),
 * never one that the pool's process still reads. */
static bool unused(const mp__jobs_t *t, mp__jobrec_t *r) {
  uint64_t seq = mp__jobrec_seq(r);
  if (seq && slot_state(t->sh, seq) == (seq << 1 | 1))
    return false;
  if (holds_abandoned(r))
    return false;
  for (uint32_t i = 0; seq && i <= t->n_workers; i++)
    if (atomic_load(&t->sh->workers[i].pin) == seq + 1)
      return false;
  return true;
}

/* ------------------------------- claiming ------------------------------- */

/* The chunks counted as done: each worker's counter (written by that worker alone, and by
 * the supervisor once it has died), and the parent's. */
static _Atomic uint64_t *counter_at(const void *counters, uint32_t w) {
  return (_Atomic uint64_t *)((const char *)counters + (uint64_t)w * MP__DONE_STRIDE);
}

static _Atomic uint64_t *done_by(const mp__job_t *job, uint32_t w) {
  return counter_at((const char *)job + job->head.done_off, w);
}

/* Worker w's count of job's requeues before its last scan of the job that found none: its
 * own, next to its done counter (zeroed with it for each job). */
static _Atomic uint32_t *retry_seen_by(const mp__job_t *job, uint32_t w) {
  return (_Atomic uint32_t *)(done_by(job, w) + 1);
}
_Static_assert(MP__DONE_STRIDE >= sizeof(uint64_t) + sizeof(uint32_t),
               "a worker's done counter and its retry_seen share its line");

static bool claim_at(mp__job_t *job, uint32_t chunk, uint32_t w, uint64_t expected) {
  uint64_t running =
      MP__CHUNK_STATE(chunk, MP__CHUNK_ATTEMPTS(expected), w + 1, MP__CHUNK_RUNNING);
  return atomic_compare_exchange_strong(mp__job_state(job, chunk), &expected, running);
}

/* Chunks queued again after a death: rare, so a scan of the window, made again by worker w
 * until one finds none after the last requeue it saw. A chunk is queued again before it is
 * counted (both sequentially consistent): a scan after the count's read sees it, unless
 * another worker took it; one counted after that read moves the count again. What a scan
 * that found none saw holds for any worker: a replacement takes its predecessor's. */
static bool claim_retried(mp__job_t *job, uint32_t w, uint32_t *chunk) {
  uint32_t requeued = atomic_load(&job->requeued);
  if (requeued == 0) /* as seen is then: the claims of a job with no death look no further */
    return false;
  _Atomic uint32_t *seen = retry_seen_by(job, w);
  if (requeued == atomic_load_explicit(seen, memory_order_relaxed))
    return false;
  MP__RACE_POINT(MP__RACE_RETRY_SCAN, job);
  uint32_t limit = atomic_load(&job->limit) & ~MP__LIMIT_CLOSED;
  for (uint32_t i = 0; i < job->head.window; i++) {
    uint64_t v = atomic_load(mp__job_state(job, i));
    bool retry = MP__CHUNK_ATTEMPTS(v) > 0 || MP__CHUNK_OWNER(v) == MP__CHUNK_REDRAWN;
    if (MP__CHUNK_STATUS(v) == MP__CHUNK_QUEUED && retry && MP__CHUNK_OF(v) < limit &&
        claim_at(job, MP__CHUNK_OF(v), w, v)) {
      *chunk = MP__CHUNK_OF(v);
      return true;
    }
  }
  atomic_store_explicit(seen, requeued, memory_order_relaxed);
  return false;
}

/* A chunk of job for worker w: a retried one first, else the next never claimed. look: read
 * the hint before a map's draw (a worker looking through the jobs); a worker that has just
 * completed one of the map's chunks draws at once, one read-modify-write of the line. */
static bool claim_in(mp__job_t *job, uint32_t w, uint32_t *chunk, bool look) {
  if (claim_retried(job, w, chunk))
    return true;
  if (!(job->head.flags & MP__JOB_ITERATOR)) {
    /* A map's chunks are all queued from the start: each is drawn once, in order, by a
     * fetch-and-add on the hint, as a bare farm draws them (one read-modify-write, no scan).
     * A chunk never drawn is QUEUED with no attempt and no owner, or it was aborted: one
     * compare-and-swap claims it, with no read of its state first. The hint passes
     * n_chunks by at most one per look and per completion. */
    for (; !look || atomic_load_explicit(&job->hint, memory_order_relaxed) < job->head.n_chunks;
         look = true) {
      uint64_t h = atomic_fetch_add(&job->hint, 1);
      if (h >= job->head.n_chunks)
        break;
      if (claim_at(job, (uint32_t)h, w, MP__CHUNK_STATE(h, 0, 0, MP__CHUNK_QUEUED))) {
        *chunk = (uint32_t)h;
        return true;
      }
    }
    return false;
  }
  /* The chunks fed, also once the limit is closed: a chunk left QUEUED past them by a feed
   * that lost to a close or an abort was counted by that, and is nobody's to run. */
  uint32_t limit = atomic_load(&job->limit) & ~MP__LIMIT_CLOSED;
  uint64_t start = atomic_load(&job->hint), h = start;
  for (; h < limit && h < job->head.n_chunks; h++) {
    uint64_t v = atomic_load(mp__job_state(job, (uint32_t)h));
    if (MP__CHUNK_OF(v) == h && MP__CHUNK_STATUS(v) == MP__CHUNK_QUEUED &&
        MP__CHUNK_ATTEMPTS(v) == 0 && claim_at(job, (uint32_t)h, w, v)) {
      /* The hint only grows: chunks below it are taken (retries are found apart). */
      while (start <= h && !atomic_compare_exchange_weak(&job->hint, &start, h + 1))
        ;
      *chunk = (uint32_t)h;
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

/* Field by field: the message buffer is written only on failure (a compound literal
 * would zero it at every claim). */
static void task_view(mp__job_t *job, uint32_t chunk, _Atomic uint64_t *running,
                      mp__task_t *task) {
  task->job = job;
  task->chunk = chunk;
  task->fn = job->head.fn;
  task->input = job_input(job, chunk);
  task->item_size = job->head.item_size;
  if (job->head.flags & MP__JOB_BATCH) {
    /* Written before the state word's release, which the claim read. A wild length only
     * picks which slot, each read no further than its own room. */
    uint64_t words[CELL_WORDS];
    cell_load(cell_of(mp__job_state(job, chunk)), CELL_INPUT, words);
    if (words[0] <= CELL_ROOM) {
      memcpy(task->arg_copy, words, sizeof words);
      task->input = task->arg_copy;
      task->item_size = sizeof words;
    }
  }
  task->output = job_output(job, chunk);
  task->result_size = job->head.result_size;
  task->varsize = job->head.flags & MP__JOB_VARSIZE;
  task->result_cap = task->varsize ? job->head.result_cap : job->head.result_size;
  task->first = (uint64_t)chunk * job->head.chunksize;
  task->count = mp__job_chunk_items(job, chunk);
  task->running = running;
  task->result_len = 0;
}

/* Its pages are mapped in this process after the first chunks that wrote them: mapping them
 * again at every chunk (MADV_POPULATE_WRITE walks every page, present or not) cost as much
 * as the chunk's items on a map of ints. */
void mp__pool_map_large_output(mp__warm_t *warm, const mp__task_t *task) {
  uint64_t len = task->count * task->result_size; /* fits: job_create checked */
  const mp__job_t *job = task->job;
  uintptr_t page = (uintptr_t)page_size(), base = (uintptr_t)job / page;
  size_t e = 0;
  while (e < MP__WARM_BLOCKS &&
         !(warm->blocks[e].block == job && warm->blocks[e].id == job->block_id))
    e++;
  if (e == MP__WARM_BLOCKS) { /* a block not seen yet replaces the oldest one seen */
    e = warm->next++ % MP__WARM_BLOCKS;
    uint64_t pages = ((uintptr_t)job + job->block_size - 1) / page - base + 1;
    free(warm->blocks[e].bits);
    warm->blocks[e].bits = calloc((pages + 63) / 64, sizeof(uint64_t));
    warm->blocks[e].block = warm->blocks[e].bits ? job : NULL;
    warm->blocks[e].id = job->block_id;
    if (!warm->blocks[e].bits) {
      prefault(task->output, len);
      return;
    }
  }
  uint64_t *bits = warm->blocks[e].bits, lo = UINT64_MAX, hi = 0;
  for (uintptr_t p = (uintptr_t)task->output / page - base,
                 end = ((uintptr_t)task->output + len - 1) / page - base + 1;
       p < end; p++) {
    if (bits[p / 64] >> (p % 64) & 1)
      continue;
    bits[p / 64] |= 1ull << (p % 64);
    lo = lo < p ? lo : p;
    hi = p + 1;
  }
  if (lo < hi)
    (void)madvise((void *)((base + lo) * page), (hi - lo) * page, MADV_POPULATE_WRITE);
}

void mp__warm_free(mp__warm_t *warm) {
  for (size_t e = 0; e < MP__WARM_BLOCKS; e++)
    free(warm->blocks[e].bits);
}

/* Worker w claimed chunk of job (pinned): its record names it, task is its view. */
static void take_chunk(mp__pool_shared_t *sh, uint32_t w, mp__job_t *job, uint32_t chunk,
                       mp__task_t *task) {
  mp__worker_rec_t *rec = &sh->workers[w];
  /* Read by the supervisor once this worker has ended (and by no one before): relaxed. */
  atomic_store_explicit(&rec->run_item, 0, memory_order_relaxed);
  atomic_store_explicit(&rec->run_seq, mp__job_seq(job) + 1, memory_order_relaxed);
  atomic_store_explicit(&rec->run_chunk, chunk, memory_order_relaxed);
  task_view(job, chunk, &rec->run_item, task);
}

bool mp__pool_claim(mp__pool_shared_t *sh, uint32_t w, mp__task_t *task) {
  uint64_t next = atomic_load(&sh->next_seq), oldest = atomic_load(&sh->oldest);
  /* Both are any worker's to write. No job more than MP__POOL_SLOTS before next is in
   * flight (a publication waits for its slot's last job to complete), so no scan starts
   * further back: a wild next_seq made a scan of 2^62 jobs that never ended, and a wild
   * oldest past next_seq one of none, for good (test_forged_next_seq, test_forged_oldest). */
  if (oldest > next || next - oldest > MP__POOL_SLOTS) {
    uint64_t from = next > MP__POOL_SLOTS ? next - MP__POOL_SLOTS : 0;
    if (oldest > next)
      atomic_compare_exchange_strong(&sh->oldest, &oldest, from);
    oldest = from;
  }
  for (uint64_t seq = oldest; seq < next; seq++) {
    mp__job_t *j = pin(sh, w, seq);
    uint32_t chunk;
    if (!j) {
      advance_oldest(sh, seq);
      continue;
    }
    MP__RACE_POINT(MP__RACE_PINNED, j);
    if (claim_in(j, w, &chunk, true)) {
      take_chunk(sh, w, j, chunk, task);
      unpin(sh, w); /* the running chunk keeps the job alive */
      return true;
    }
  }
  unpin(sh, w);
  return false;
}

/* Raises a batch's limit to the chunks appended, keeping a close's mark: the pool's process
 * shows the held chunks before it closes a batch, an abort failed every chunk fed, and no
 * count appended passes the chunks fed, so a closed limit raised here shows no chunk to
 * run, and a worker's wild mark hides none. The count is bounded by the job's chunks, a
 * wild one by nothing more: it can only show chunks that a wild write could queue anyway.
 * Returns the chunks it showed. */
static uint32_t take_held_in(mp__job_t *job) {
  uint32_t appended = atomic_load(&job->appended), limit = atomic_load(&job->limit);
  if (appended > job->head.n_chunks)
    appended = job->head.n_chunks;
  while ((limit & ~MP__LIMIT_CLOSED) < appended)
    if (atomic_compare_exchange_weak(&job->limit, &limit,
                                     (limit & MP__LIMIT_CLOSED) | appended))
      return appended - (limit & ~MP__LIMIT_CLOSED);
  return 0;
}

/* A worker that shows more than one chunk wakes the others for the rest, as the pool's
 * process would have: left asleep, they left held slow applies to run one after another. */
bool mp__pool_take_held(mp__pool_shared_t *sh, uint32_t w) {
  uint64_t next = atomic_load(&sh->next_seq), oldest = atomic_load(&sh->oldest);
  uint32_t took = 0;
  /* The bounds of mp__pool_claim: no scan of a wild range. */
  if (oldest > next || next - oldest > MP__POOL_SLOTS)
    oldest = next > MP__POOL_SLOTS ? next - MP__POOL_SLOTS : 0;
  for (uint64_t seq = oldest; seq < next; seq++) {
    mp__job_t *j = pin(sh, w, seq);
    if (j && (j->head.flags & MP__JOB_BATCH))
      took += take_held_in(j);
  }
  unpin(sh, w);
  if (took > 1)
    wake_workers(sh, sh->n_workers, (int)(took - 1));
  return took > 0;
}

/* ------------------------------ completing ------------------------------ */

static _Atomic uint64_t *rec_done_by(const mp__jobrec_t *r, uint32_t w) {
  return counter_at((const char *)r->blk + r->head.done_off, w);
}

/* The chunks counted in n counters at counters. A wild count makes a job look complete or
 * not, which its results then say. */
static uint64_t count_done(const void *counters, uint32_t n) {
  uint64_t done = 0;
  for (uint32_t i = 0; i < n; i++)
    done += atomic_load(counter_at(counters, i)) >> 1;
  return done;
}

static uint64_t job_done(const mp__job_t *job) {
  return count_done((const char *)job + job->head.done_off, job->head.n_counters);
}

uint64_t mp__job_counted(const mp__jobrec_t *job) {
  return count_done((const char *)job->blk + job->head.done_off, job->head.n_counters);
}

bool mp__job_complete(const mp__jobrec_t *job) {
  return mp__job_counted(job) >= job->head.n_chunks;
}

/* After chunks were counted: wakes the waiter, and if the job is complete, frees its slot.
 * Whoever wins the slot's compare-and-swap does that once, so the supervisor can call this
 * for a worker that died in the middle of it. The caller has the job pinned (or holds a
 * reference). The slot's reference is dropped before the waiter is woken, so that the
 * waiter's own release is the last one and it frees the block itself; a worker (later not
 * NULL) gets the last wake-up to make once it has unpinned the job: woken first, the waiter
 * could run on the worker's CPU and submit the next job while the worker, preempted, still
 * pinned this one, whose block the next job could not then reuse. Returns whether the
 * supervisor is to be told (callbacks, or a block whose last reference this dropped), which
 * the caller also does once it has unpinned the job. */
static bool settle_as(mp__pool_shared_t *sh, uint32_t n_workers, mp__job_t *job, uint64_t seq,
                      uint32_t flags, bool last, mp__job_waker_t **later) {
  uint64_t active = seq << 1 | 1;
  if (!last || !atomic_compare_exchange_strong(&sh->slots[seq % MP__POOL_SLOTS].state, &active,
                                               seq << 1)) {
    if (last || (flags & MP__JOB_WAKE_EACH))
      wake(waker_of(sh, seq));
    /* A batch's applies each have their callbacks, run as each completes. */
    return (flags & (MP__JOB_BATCH | MP__JOB_NOTIFY)) == (MP__JOB_BATCH | MP__JOB_NOTIFY);
  }
  MP__RACE_POINT(MP__RACE_SETTLED, job);
  bool notify = flags & MP__JOB_NOTIFY;
  advance_oldest(sh, seq);
  atomic_fetch_add(&sh->slot_free, 1);
  if (atomic_load(&sh->slot_waiters) > 0)
    mp__futex_wake(&sh->slot_free, INT32_MAX);
  if (atomic_load(&sh->flags) & MP__POOL_CLOSED)
    wake_workers(sh, n_workers, INT32_MAX); /* idle workers may exit now */
  /* The parent frees blocks: tell it when the slot's reference was the last (the job still
   * pinned: the block is not freed under us). */
  mp__job_waker_t *waker = waker_of(sh, seq);
  if (job_unref(job))
    notify = true;
  if (later)
    *later = waker;
  else
    wake(waker);
  return notify;
}

/* settle_as for a worker, by the block's header. An open batch (chunks never appended yet,
 * and not counted) cannot be complete: its workers' counters are not read at every apply. */
static bool settle(mp__pool_shared_t *sh, mp__job_t *job, uint64_t seq,
                   mp__job_waker_t **later) {
  bool last =
      (!(job->head.flags & MP__JOB_BATCH) || atomic_load(&job->limit) >= job->head.n_chunks) &&
      job_done(job) >= job->head.n_chunks;
  return settle_as(sh, sh->n_workers, job, seq, job->head.flags, last, later);
}

/* settle_as for the pool's process, by the job's record. */
static void settle_rec(mp__jobs_t *t, mp__jobrec_t *r) {
  bool last = (!(r->head.flags & MP__JOB_BATCH) || atomic_load(&r->limit) >= r->head.n_chunks) &&
      mp__job_complete(r);
  settle_as(t->sh, t->n_workers, r->blk, mp__jobrec_seq(r), r->head.flags, last, NULL);
}

/* Chunks the parent counts: lost, or aborted. */
static void count_by_parent(mp__jobs_t *t, mp__jobrec_t *r, uint32_t chunks) {
  atomic_fetch_add(rec_done_by(r, r->head.n_counters - 1), (uint64_t)chunks << 1);
  settle_rec(t, r);
}

/*
 * No chunk of a fed job is fed after this (a close of a batch, an abort): its limit is
 * marked closed, keeping the count of chunks fed, which *fed gets. Returns the chunks never
 * fed, for the caller to count, if this call closed it (0 if a close or an abort did
 * first): the record's limit decides, which no worker can write. A feed's swap then fails,
 * and a chunk it had stored QUEUED stays past the chunks fed, where no claim looks: set to
 * n_chunks instead, the limit let a worker that had pinned the job before an abort claim
 * and count that chunk, which the abort had counted as never fed (review, stop 16). The
 * block's limit is marked too, for the workers (settle: a closed batch can be complete).
 */
static uint32_t close_limit(mp__jobrec_t *job, uint32_t *fed) {
  uint32_t old = atomic_fetch_or(&job->limit, MP__LIMIT_CLOSED);
  atomic_fetch_or(&job->blk->limit, MP__LIMIT_CLOSED); /* the workers' copy */
  *fed = old & ~MP__LIMIT_CLOSED;
  return old & MP__LIMIT_CLOSED ? 0 : job->head.n_chunks - *fed;
}

/* No chunk of a fed job is fed after this (a batch's close, an open job's end of input):
 * the chunks never fed are counted, unless an abort counted them first. */
static void close_feeding(mp__jobs_t *t, mp__jobrec_t *job) {
  uint32_t fed, never_fed = close_limit(job, &fed);
  if (never_fed)
    count_by_parent(t, job, never_fed);
}

/* Lets go of chunk if an abort took it from worker w while w ran it: the last that w touches
 * of the job's block, which was kept for it until then. True if it did. */
static bool let_go(_Atomic uint64_t *state, uint32_t chunk, uint32_t w) {
  uint64_t v = atomic_load(state);
  return MP__CHUNK_OF(v) == chunk && MP__CHUNK_OWNER(v) == w + 1 &&
         MP__CHUNK_STATUS(v) == MP__CHUNK_ABANDONED &&
         atomic_compare_exchange_strong(
             state, &v, MP__CHUNK_STATE(chunk, MP__CHUNK_ATTEMPTS(v), w + 1, MP__CHUNK_FAILED));
}

/* A batch chunk's result, copied into its cell before the state word says DONE, its length
 * at most the task's room, whoever wrote it (a rank's reply, a wild task). */
static void copy_to_cell(const mp__task_t *task, _Atomic uint64_t *state) {
  (void)cell_put(cell_of(state), CELL_RESULT, mp__var_length(task->output, task->result_cap),
                 task->output + MP__VARSIZE_HEAD);
}

/*
 * A worker counts its chunk in its own counter, with bit 0 set while it is between the two:
 * a worker killed there leaves the bit set, and the supervisor then knows from the chunk's
 * state whether the chunk became DONE (count it) or not (it is still RUNNING, lost).
 */
bool mp__pool_complete(mp__pool_shared_t *sh, uint32_t w, mp__task_t *task, uint32_t status,
                       int notify_fd, mp__task_t *next) {
  mp__job_t *job = task->job;
  uint32_t chunk = task->chunk;
  _Atomic uint64_t *state = mp__job_state(job, chunk), *mine = done_by(job, w);
  uint64_t v = atomic_load(state), count = atomic_load(mine) >> 1;
  bool running = MP__CHUNK_STATUS(v) == MP__CHUNK_RUNNING && MP__CHUNK_OWNER(v) == w + 1;
  /* Recorded while the chunk is still ours: a loss or an abort after this point records
   * nothing the owner would take instead (the lowest item wins, an abort is told apart). */
  if (running && status == MP__CHUNK_FAILED)
    record_error(sh, job, chunk, task->failed_item, task->code, task->msg);
  if (running && job->head.n == 1)
    atomic_store(&job->result_len, task->result_len);
  if (running && status == MP__CHUNK_DONE && (job->head.flags & MP__JOB_BATCH))
    copy_to_cell(task, state);
  /* Pinned for settling after the last reference. Relaxed, as is the mark: whoever frees
   * the block has first seen this chunk counted (the store of the count below, or a
   * completion that read it), and the supervisor reads the mark only once this process has
   * ended. */
  atomic_store_explicit(&sh->workers[w].pin, mp__job_seq(job) + 1, memory_order_relaxed);
  atomic_store_explicit(mine, count << 1 | 1, memory_order_relaxed);
  bool ours = running && atomic_compare_exchange_strong(
                             state, &v,
                             MP__CHUNK_STATE(chunk, MP__CHUNK_ATTEMPTS(v), w + 1, status));
  /* Not ours: aborted, or given up for lost, and counted by whoever did that. */
  atomic_store_explicit(mine, (count + ours) << 1, memory_order_release);
  atomic_store_explicit(&sh->workers[w].run_seq, 0, memory_order_relaxed);
  if (next)
    next->job = NULL;
  if (!ours) {
    bool released = let_go(state, chunk, w);
    unpin(sh, w);
    if (released)
      mp__pool_notify(notify_fd); /* the block may be the pool's process's to free now */
    return false;
  }
  /* The job is still pinned: its next chunk is claimed without a look at the job list, as
   * long as no older job is incomplete (the oldest queued chunk goes first). */
  uint32_t c;
  bool again =
      next && atomic_load(&sh->oldest) == mp__job_seq(job) && claim_in(job, w, &c, false);
  if (again)
    take_chunk(sh, w, job, c, next);
  /* A map of which this worker holds a chunk now is not complete: no need to read every
   * worker's counter, nor to wake anyone. Whoever settles it later sees this count: this
   * worker's own later completion (the counter is cumulative), or whoever changes the held
   * chunk's state (an abort, a loss: their compare-and-swap reads this claim's, after the
   * store above). Otherwise the count is stored again, sequentially consistent as the reads
   * below (a fence, which ThreadSanitizer does not model): two workers completing a job's
   * last chunks at once each store their count, then read the others' and the hint, so one
   * at least sees the job complete. A map with chunks never drawn is not complete either
   * (were it aborted, this chunk would not be ours). */
  bool map = !(job->head.flags & (MP__JOB_ITERATOR | MP__JOB_WAKE_EACH)),
       undrawn = map && again;
  if (!undrawn) {
    atomic_store(mine, (count + 1) << 1);
    undrawn = map && atomic_load(&job->hint) < job->head.n_chunks;
  }
  mp__job_waker_t *waker = NULL;
  bool notify = false;
  _Atomic uint32_t *waking = &sh->workers[w].waking;
  if (!undrawn) {
    /* Read by the supervisor once this process has ended: relaxed, as the pin mark. The
     * same seq for both, so that the waker named is the one woken. */
    uint64_t seq = mp__job_seq(job);
    atomic_store_explicit(waking, waker_index(seq) + 1, memory_order_relaxed);
    notify = settle(sh, job, seq, &waker);
  }
  unpin(sh, w);
  if (waker)
    wake(waker);
  if (!undrawn)
    atomic_store_explicit(waking, 0, memory_order_relaxed);
  if (notify)
    mp__pool_notify(notify_fd);
  return true;
}

static void repair_count(mp__jobrec_t *job, uint32_t w, uint32_t chunk) {
  _Atomic uint64_t *theirs = rec_done_by(job, w);
  uint64_t v = atomic_load(theirs);
  if (!(v & 1))
    return;
  uint64_t st = atomic_load(rec_state(job, chunk));
  /* Not one an abort took from it: that counted it. */
  bool became_final = MP__CHUNK_OF(st) == chunk && MP__CHUNK_OWNER(st) == w + 1 &&
                      MP__CHUNK_STATUS(st) != MP__CHUNK_RUNNING &&
                      MP__CHUNK_STATUS(st) != MP__CHUNK_ABANDONED;
  atomic_store(theirs, ((v >> 1) + became_final) << 1);
}

bool mp__job_lose_chunk(mp__jobs_t *t, mp__jobrec_t *job, uint32_t chunk, uint64_t item,
                        int code, const char *msg) {
  _Atomic uint64_t *state = rec_state(job, chunk);
  uint64_t v = atomic_load(state);
  if (MP__CHUNK_STATUS(v) != MP__CHUNK_RUNNING)
    return false;
  uint32_t attempts = MP__CHUNK_ATTEMPTS(v);
  if (attempts < t->retries && attempts < 0xff) {
    if (atomic_compare_exchange_strong(
            state, &v, MP__CHUNK_STATE(chunk, attempts + 1, 0, MP__CHUNK_QUEUED))) {
      atomic_fetch_add(&job->blk->requeued, 1);
      wake_workers(t->sh, t->n_workers, 1);
      return true;
    }
    return false;
  }
  /* Not under the error lock, which a worker stopped or hostile may hold for ever (the
   * supervisor waited there, replacing no worker and failing no job). A chunk's own record
   * (an iterator's, a batch's) has no other writer while its runner is dead: written before
   * the chunk fails, as a worker does. A map's one record is the live workers': the parent
   * keeps its own (job->lost), written once the chunk is failed and before it is counted,
   * which mp__job_take reads with the block's. */
  bool own_record = job->head.flags & MP__JOB_ITERATOR;
  if (own_record)
    write_error(rec_error(job, chunk), true, item, code, msg);
  if (!atomic_compare_exchange_strong(
          state, &v, MP__CHUNK_STATE(chunk, attempts, MP__CHUNK_OWNER(v), MP__CHUNK_FAILED)))
    return false;
  if (!own_record)
    write_error(&job->lost, false, item, code, msg);
  count_by_parent(t, job, 1);
  return false;
}

/* The owner of a chunk's state word may still run it: a worker of the table not gone (its
 * chunks let go of, mp__jobs_worker_gone). */
static bool owner_may_run(const mp__jobs_t *t, uint64_t v) {
  uint32_t owner = MP__CHUNK_OWNER(v);
  return owner >= 1 && owner <= t->n_workers &&
         atomic_load(&t->sh->workers[owner - 1].state) != MP__WORKER_EMPTY;
}

/* With t->lock held, so that no look for abandoned chunks runs between the mark and the
 * chunk's swap (holds_abandoned), and a worker gone is seen gone or let go of after. */
static void abort_locked(mp__jobs_t *t, mp__jobrec_t *job, int code) {
  int32_t none = 0;
  if (!atomic_compare_exchange_strong(&job->abort_code, &none, code))
    return;
  /* No chunk is fed after this: the ones never fed count as aborted, unless a close counted
   * them already. */
  uint32_t fed;
  uint32_t aborted = close_limit(job, &fed);
  for (uint32_t i = 0; i < job->head.window; i++) {
    _Atomic uint64_t *state = rec_state(job, i);
    uint64_t v = atomic_load(state);
    for (;;) {
      uint32_t status = MP__CHUNK_STATUS(v);
      if (MP__CHUNK_OF(v) >= fed || (status != MP__CHUNK_QUEUED && status != MP__CHUNK_RUNNING))
        break;
      /* A running chunk's worker still uses the block: it is kept for it (unused). */
      bool running = status == MP__CHUNK_RUNNING && owner_may_run(t, v);
      if (running)
        atomic_store(&job->abandoned, true);
      uint64_t failed =
          MP__CHUNK_STATE(MP__CHUNK_OF(v), MP__CHUNK_ATTEMPTS(v), MP__CHUNK_OWNER(v),
                          running ? MP__CHUNK_ABANDONED : MP__CHUNK_FAILED);
      if (atomic_compare_exchange_strong(state, &v, failed)) {
        aborted++;
        break;
      }
    }
  }
  if (aborted)
    count_by_parent(t, job, aborted);
  else
    wake(atomic_load_explicit(&job->waker, memory_order_relaxed));
}

static void job_abort(mp__jobs_t *t, mp__jobrec_t *job, int code) {
  pthread_mutex_lock(&t->lock);
  abort_locked(t, job, code);
  pthread_mutex_unlock(&t->lock);
}

/* ------------------------------ the table ------------------------------ */

/* The pool's shared block for n_workers: its records, and one for the supervisor's pins. */
static size_t shared_block_size(uint32_t n_workers) {
  return sizeof(mp__pool_shared_t) + ((size_t)n_workers + 1) * sizeof(mp__worker_rec_t);
}

int mp__jobs_create(mp__jobs_t **out, uint32_t n_workers, unsigned maxtasks, unsigned retries) {
  mp__jobs_t *t = calloc(1, sizeof *t);
  if (!t)
    return mp__error(MP_ENOMEM, "no memory for the job table of %u workers", n_workers);
  void *block;
  int rc = mp__shared_alloc(&block, shared_block_size(n_workers));
  if (rc < 0) {
    free(t);
    return mp__error_prefix(rc, "the job table of %u workers", n_workers);
  }
  mp__pool_shared_t *sh = block;
  rc = mp__mutex_init(&sh->err_lock);
  if (rc < 0) {
    free(t);
    mp__shared_release_sized(sh, shared_block_size(n_workers));
    return rc;
  }
  pthread_mutex_init(&t->lock, NULL);
  pthread_mutex_init(&t->submit_lock, NULL);
  pthread_mutex_init(&t->apply_lock, NULL);
  sh->n_workers = n_workers;
  sh->maxtasks = maxtasks;
  sh->retries = retries;
  t->n_workers = n_workers;
  t->retries = retries;
  /* Sequence numbers start at MP__POOL_SLOTS: a never-used slot reads as complete. */
  atomic_store(&sh->next_seq, MP__POOL_SLOTS);
  atomic_store(&sh->oldest, MP__POOL_SLOTS);
  t->next_seq = MP__POOL_SLOTS;
  t->sh = sh;
  *out = t;
  return 0;
}

void mp__jobs_free(mp__jobs_t *t) {
  if (!t)
    return;
  mp__pool_shared_t *sh = t->sh;
  for (mp__jobrec_t *r = t->jobs, *next; r; r = next) {
    next = r->next;
    mp__shared_release_sized(r->blk, r->block_size);
    free(r->owners);
    free(r);
  }
  for (mp__jobrec_t *r = t->free_recs, *next; r; r = next) {
    next = r->next;
    free(r->owners);
    free(r);
  }
  for (size_t i = 0; i < SPARES; i++)
    if (t->spares[i])
      keep_for_later(t->spares[i], t->spare_size[i]);
  for (size_t i = 0; i < t->n_small; i++)
    mp__shared_release_sized(t->small[i], t->small_size[i]);
  /* By their sizes, as the job blocks: their arena headers are any worker's to write. */
  for (uint32_t i = 0; i < atomic_load(&t->n_fns); i++)
    mp__shared_release_sized(t->fn_refs[i], sizeof(mp__fnref_t));
  if (t->init_ref)
    mp__shared_release_sized(t->init_ref, sizeof(mp__fnref_t));
  if (t->initargs)
    mp__shared_release_sized(t->initargs, t->initargs_size);
  pthread_mutex_destroy(&sh->err_lock);
  mp__shared_release_sized(sh, shared_block_size(t->n_workers));
  pthread_mutex_destroy(&t->lock);
  pthread_mutex_destroy(&t->submit_lock);
  pthread_mutex_destroy(&t->apply_lock);
  free(t);
}

mp__pool_shared_t *mp__jobs_shared(const mp__jobs_t *t) {
  return t->sh;
}

void mp__jobs_set_event_key(mp__jobs_t *t, uint64_t key) {
  t->sh->event_key = key;
}

/* A function by identity, in a block of the arena. */
static int share_fnref(mp__fn_t fn, mp__fnref_t **out) {
  mp__fnref_t ref;
  int rc = mp__fnref_from_pointer(fn, &ref);
  if (rc < 0)
    return rc;
  void *block;
  if ((rc = mp__shared_alloc(&block, sizeof ref)) < 0)
    return mp__error_prefix(rc, "a function reference");
  *out = block;
  memcpy(*out, &ref, sizeof ref);
  return 0;
}

int mp__jobs_set_initializer(mp__jobs_t *t, mp__fn_t fn, const void *args, size_t size) {
  mp__pool_shared_t *sh = t->sh;
  int rc = share_fnref(fn, &t->init_ref);
  if (rc < 0)
    return rc;
  sh->init_ref = t->init_ref;
  void *block = NULL;
  if (size && (rc = mp__shared_alloc(&block, size)) < 0)
    return mp__error_prefix(rc, "the initializer's %zu bytes of arguments", size);
  t->initargs = block;
  t->initargs_size = size;
  sh->initargs = t->initargs;
  sh->init_local = fn;
  if (size)
    memcpy(sh->initargs, args, size);
  sh->initargs_size = size;
  return 0;
}

/* A function already in the table is found without the lock (every submission looks its
 * function up): entries below n_fns are written before n_fns is raised past them, and never
 * again. */
static bool find_function(mp__jobs_t *t, mp__fn_t fn, uint32_t *index) {
  uint32_t n = atomic_load(&t->n_fns);
  for (uint32_t i = 0; i < n; i++)
    if (t->fns[i] == fn) {
      *index = i;
      return true;
    }
  return false;
}

int mp__jobs_function(mp__jobs_t *t, mp__fn_t fn, uint32_t *index) {
  mp__pool_shared_t *sh = t->sh;
  if (find_function(t, fn, index))
    return 0;
  pthread_mutex_lock(&t->lock);
  int rc = 0;
  if (!find_function(t, fn, index)) { /* added meanwhile by another thread? */
    uint32_t n = atomic_load(&t->n_fns);
    if (n == MP__POOL_MAX_FNS)
      rc = mp__error(MP_ELIMIT, "more than %d task functions in one pool", MP__POOL_MAX_FNS);
    else if ((rc = share_fnref(fn, &t->fn_refs[n])) == 0) {
      t->fns[n] = fn;
      sh->fns[n] = t->fn_refs[n];
      sh->local_fns[n] = fn;
      atomic_store(&t->n_fns, n + 1);
      *index = n;
    }
  }
  pthread_mutex_unlock(&t->lock);
  return rc;
}

/*
 * Blocks of this process's destroyed pools, kept for its next pools: a program that makes a
 * pool per batch of work then maps on warm pages (a fresh block faults every page in, and
 * the arena gives blocks of 8 MiB and more back to the kernel when they are freed). The
 * KEPT largest, each of at most KEPT_MAX bytes. A forked child forgets them (they are its
 * parent's), before it can take one.
 */
#define KEPT 2
#define KEPT_MAX ((uint64_t)64 << 20)
static pthread_mutex_t kept_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(mp__job_t *) kept[KEPT]; /* written under kept_lock */
static uint64_t kept_size[KEPT];        /* their sizes (a block's word is a worker's) */

/* Only what is set is written: a child of a process that never kept a block does not copy
 * this page. */
MP__CHILD_TEXT static void forget_kept(void) {
  mp__reset_lock(&kept_lock);
  for (size_t i = 0; i < KEPT; i++)
    if (atomic_load_explicit(&kept[i], memory_order_relaxed))
      atomic_store_explicit(&kept[i], NULL, memory_order_relaxed);
}

static void watch_forks(void) {
  pthread_atfork(NULL, NULL, forget_kept);
}

static void keep_for_later(mp__job_t *job, uint64_t size) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  if (size > KEPT_MAX) {
    mp__shared_release_sized(job, size);
    return;
  }
  pthread_once(&once, watch_forks);
  pthread_mutex_lock(&kept_lock);
  for (size_t i = 0; job && i < KEPT; i++) {
    mp__job_t *old = atomic_load(&kept[i]);
    uint64_t old_size = kept_size[i];
    if (old && old_size >= size)
      continue;
    atomic_store(&kept[i], job);
    kept_size[i] = size;
    job = old; /* a larger one displaced it: it may displace a smaller one further on */
    size = old_size;
  }
  pthread_mutex_unlock(&kept_lock);
  if (job)
    mp__shared_release_sized(job, size);
}

static mp__job_t *take_kept(uint64_t bytes, uint64_t *size) {
  mp__job_t *job = NULL;
  if (!atomic_load(&kept[0]) && !atomic_load(&kept[KEPT - 1]))
    return NULL; /* and a process that never kept one writes nothing here */
  pthread_mutex_lock(&kept_lock);
  for (size_t i = 0; !job && i < KEPT; i++) {
    job = atomic_load(&kept[i]);
    *size = kept_size[i];
    if (job && *size >= bytes)
      atomic_store(&kept[i], NULL);
    else
      job = NULL;
  }
  pthread_mutex_unlock(&kept_lock);
  return job;
}

/* Freed blocks are kept for the next jobs: their pages stay in memory, where a fresh block
 * would fault each of them in again (in the parent for the input, in a worker for the
 * output), and taking one costs no allocation. Called with t->lock held. */
static void keep_or_release(mp__jobs_t *t, mp__job_t *job, uint64_t size) {
  if (size < SMALL_SPARE && t->n_small < SMALL_SPARES) {
    t->small_size[t->n_small] = size;
    t->small[t->n_small++] = job;
    return;
  }
  size_t at = 0;
  for (size_t i = 0; i < SPARES && t->spares[at]; i++)
    if (!t->spares[i] || t->spare_size[i] < t->spare_size[at])
      at = i;
  if (!t->spares[at] || t->spare_size[at] < size) {
    mp__job_t *old = t->spares[at];
    uint64_t old_size = t->spare_size[at];
    t->spares[at] = job;
    t->spare_size[at] = size;
    job = old;
    size = old_size;
  }
  if (job)
    mp__shared_release_sized(job, size);
}

/* A record for blk, from the free list or new, linked in the job list (NULL: no memory).
 * A batch's comes with room for its owners' records, which it keeps when it is freed.
 * Called with t->lock held (as are the three below). */
static mp__jobrec_t *take_record(mp__jobs_t *t, mp__job_t *blk, bool batch) {
  mp__jobrec_t *r = t->free_recs;
  if (r)
    t->free_recs = r->next;
  else if (posix_memalign((void **)&r, 64, sizeof *r) == 0)
    r->owners = NULL;
  else
    return NULL;
  if (batch && !r->owners &&
      !(r->owners = malloc((size_t)MP__BATCH_APPLIES * MP__JOB_OWNER_BYTES))) {
    r->next = t->free_recs;
    t->free_recs = r;
    return NULL;
  }
  r->blk = blk;
  /* Before it is linked: no reclaim frees it while it is made, and no dead worker's let-go
   * reads the header of its last job. */
  r->orphaned = false;
  atomic_store_explicit(&r->abandoned, false, memory_order_relaxed);
  atomic_store_explicit(&r->seq, 0, memory_order_relaxed);
  r->prev = NULL;
  r->next = t->jobs;
  if (t->jobs)
    t->jobs->prev = r;
  t->jobs = r;
  return r;
}

/* Unlinks a job nobody refers to and no worker has pinned, frees its block (or keeps it as a
 * spare) and gives its record back. */
static void free_job(mp__jobs_t *t, mp__jobrec_t *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    t->jobs = r->next;
  if (r->next)
    r->next->prev = r->prev;
  keep_or_release(t, r->blk, r->block_size);
  r->next = t->free_recs;
  t->free_recs = r;
}

/* Frees the orphans that nothing uses any more. */
static void reclaim(mp__jobs_t *t) {
  for (mp__jobrec_t *r = t->jobs, *next; r; r = next) {
    next = r->next;
    if (r->orphaned && unused(t, r))
      free_job(t, r);
  }
}

/* The smallest spare block of at least bytes, taken (NULL if none). */
static mp__job_t **best_spare(mp__jobs_t *t, uint64_t bytes) {
  mp__job_t **best = NULL;
  for (size_t i = 0; i < SPARES; i++)
    if (t->spares[i] && t->spare_size[i] >= bytes &&
        (!best || t->spare_size[i] < t->spare_size[best - t->spares]))
      best = &t->spares[i];
  return best;
}

/* A spare block taken for a new job, with a record linked in the job list under the same
 * hold of the lock (NULL, and the block kept, if there is no record). */
static mp__jobrec_t *link_spare(mp__jobs_t *t, mp__job_t *spare, uint64_t size, bool batch) {
  mp__jobrec_t *r = take_record(t, spare, batch);
  if (!r) {
    keep_or_release(t, spare, size);
    return NULL;
  }
  r->block_size = size;
  return r;
}

/* The smallest kept block of at least bytes, taken with its record (NULL if none). A job
 * released while its last worker still had it pinned is reclaimed here, if that worker is
 * done with it now, rather than when the supervisor gets to it: then a stream of same-size
 * maps reuses one block instead of faulting in a fresh one. */
static mp__jobrec_t *take_spare(mp__jobs_t *t, uint64_t bytes, bool batch) {
  pthread_mutex_lock(&t->lock);
  for (size_t i = t->n_small; bytes < SMALL_SPARE && i-- > 0;) {
    if (t->small_size[i] < bytes)
      continue;
    mp__job_t *spare = t->small[i];
    uint64_t size = t->small_size[i];
    t->n_small--;
    t->small[i] = t->small[t->n_small];
    t->small_size[i] = t->small_size[t->n_small];
    mp__jobrec_t *r = link_spare(t, spare, size, batch);
    pthread_mutex_unlock(&t->lock);
    return r;
  }
  mp__job_t **best = best_spare(t, bytes);
  if (!best && bytes >= MP__PREFAULT_BYTES) {
    reclaim(t);
    best = best_spare(t, bytes);
  }
  mp__jobrec_t *r = NULL;
  if (best) {
    mp__job_t *spare = *best;
    *best = NULL;
    r = link_spare(t, spare, t->spare_size[best - t->spares], batch);
  } else {
    uint64_t size;
    mp__job_t *spare = take_kept(bytes, &size);
    if (spare)
      r = link_spare(t, spare, size, batch);
  }
  pthread_mutex_unlock(&t->lock);
  return r;
}

void mp__jobs_reclaim(mp__jobs_t *t) {
  pthread_mutex_lock(&t->lock);
  reclaim(t);
  pthread_mutex_unlock(&t->lock);
}

/* Whoever drops a job's last reference in the pool's process frees it if nothing uses it
 * (its slot, a worker's pin or abandoned chunk); else it is an orphan, freed by a later
 * reclaim (the worker that lets go of it last tells the supervisor). The owner's references
 * are counted in the record: the block's count only tells that worker. */
void mp__jobs_release(mp__jobs_t *t, mp__jobrec_t *job) {
  if ((job->head.flags & MP__JOB_BATCH) && atomic_fetch_sub(&job->refs, 1) != 1)
    return;
  job_unref(job->blk);
  pthread_mutex_lock(&t->lock);
  if (unused(t, job))
    free_job(t, job);
  else
    job->orphaned = true;
  pthread_mutex_unlock(&t->lock);
}

/* The shared count of submissions less one, never below none: mp__jobs_restore_flags may
 * have set it to none under a submission that it did not see. */
static void uncount_submission(_Atomic uint32_t *count) {
  uint32_t v = atomic_load(count);
  while (v && !atomic_compare_exchange_weak(count, &v, v - 1))
    ;
}

/* Publishes job in seq order, waiting for its slot. A close that comes meanwhile does not
 * end the workers before it (the submission is counted from before its look at the flags
 * until it is published, and workers read that count after the flags and before the
 * sequence numbers, all sequentially consistent); one that came before refuses it. */
static int publish(mp__jobs_t *t, mp__jobrec_t *job) {
  mp__pool_shared_t *sh = t->sh;
  atomic_fetch_add(&t->submitting, 1); /* before the shared count: mp__jobs_restore_flags */
  atomic_fetch_add(&sh->submitting, 1);
  int rc = 0;
  /* This process's flags, set before the shared ones (mp__jobs_set_flag), which a worker
   * could clear. */
  if (atomic_load(&t->flags) & MP__POOL_CLOSED)
    rc = mp__error(MP_ECLOSED, "the pool is closed");
  if (rc == 0) {
    pthread_mutex_lock(&t->submit_lock);
    rc = job_publish(t, job, t->next_seq, INT64_MAX);
    if (rc == 0)
      t->next_seq++;
    pthread_mutex_unlock(&t->submit_lock);
  }
  uncount_submission(&sh->submitting);
  atomic_fetch_sub(&t->submitting, 1); /* after the shared count */
  if (atomic_load(&t->flags) & MP__POOL_CLOSED)
    wake_workers(sh, t->n_workers, INT32_MAX); /* idle workers that waited for this may end now */
  if (rc < 0)
    mp__jobs_release(t, job);
  return rc;
}

/* ------------------------------ applies ------------------------------ */

/*
 * Applies in flight share a batch: one job of MP__BATCH_APPLIES chunks of one item each, fed as
 * an iterator's window is (limit counts the chunks appended), each chunk with its own input,
 * result, status, error record and owner's record. Appending costs a copy, a state word and
 * the wake-up check of any fed chunk; the job block, its slot and its publication are paid
 * once per batch. The table holds a reference on the open batch (t->batch), under
 * apply_lock; closing it counts the chunks never appended as done by the parent (as an
 * abort counts those never fed), so that it completes once its applies are done. Whichever
 * of a close and an abort marks the record's limit closed first counts those chunks
 * (close_limit).
 */

/* The open batch takes s (apply_lock held); one that was aborted refuses it later. */
static bool batch_takes(const mp__jobs_t *t, const mp__apply_spec_t *s) {
  return t->batch_fn == s->fn && t->batch_result_max == s->result_max &&
         t->batch_notify == s->notify && s->size <= t->batch_room &&
         t->batch_next < MP__BATCH_APPLIES;
}

/* Shows the workers the open batch's chunks held back (apply_lock held). */
static void show_held(mp__jobs_t *t) {
  mp__jobrec_t *job = atomic_load_explicit(&t->batch, memory_order_relaxed);
  if (job && t->batch_shown < t->batch_next) {
    show_chunks(t, job, t->batch_shown, t->batch_next);
    t->batch_shown = t->batch_next;
  }
  atomic_store_explicit(&t->holding, false, memory_order_relaxed);
}

void mp__jobs_set_hold(mp__jobs_t *t, unsigned hold) {
  t->hold = hold;
}

/* Without waiting for apply_lock: a callback's get runs on the supervisor's thread, which
 * an apply waiting for a slot (its lock held) may be waiting for. The workers take what a
 * flush that found the lock taken leaves held (mp__pool_take_held). */
static void show_held_if_free(mp__jobs_t *t) {
  if (!atomic_load_explicit(&t->holding, memory_order_relaxed) ||
      pthread_mutex_trylock(&t->apply_lock) != 0)
    return;
  show_held(t);
  pthread_mutex_unlock(&t->apply_lock);
}

void mp__jobs_flush(mp__jobs_t *t) {
  atomic_store_explicit(&t->streaming, false, memory_order_relaxed);
  show_held_if_free(t);
}

/* Whether chunk c of the open batch, fed, is held back (apply_lock held): while the caller
 * streams, fewer than hold are, and no worker sleeps. The count appended is stored before
 * the look at the idle workers, and a worker counts itself idle before it reads that count
 * (mp__pool_take_held), all sequentially consistent: either this append sees the worker
 * and shows the chunks, or the worker sees them. */
static bool hold_back(mp__jobs_t *t, mp__jobrec_t *job, uint32_t c) {
  if (c + 1 - t->batch_shown >= t->hold ||
      !atomic_load_explicit(&t->streaming, memory_order_relaxed))
    return false;
  atomic_store(&job->blk->appended, c + 1);
  return atomic_load(&t->sh->idle) == 0;
}

/* Closes the open batch (apply_lock held), its held chunks shown first: at once, where the
 * workers' take would wait for one of them to run out of work. */
static void close_batch(mp__jobs_t *t) {
  mp__jobrec_t *job = atomic_load_explicit(&t->batch, memory_order_relaxed);
  if (!job)
    return;
  show_held(t);
  atomic_store(&t->batch, NULL);
  /* The references of the applies it did not take (the table's is still held). */
  atomic_fetch_sub(&job->refs, MP__BATCH_APPLIES - t->batch_next);
  close_feeding(t, job);
  mp__jobs_release(t, job); /* the table's */
}

void mp__jobs_close_batch(mp__jobs_t *t) {
  if (!atomic_load(&t->batch))
    return;
  pthread_mutex_lock(&t->apply_lock);
  close_batch(t);
  pthread_mutex_unlock(&t->apply_lock);
}

/* A new batch for applies like s, published and open (apply_lock held). */
static int open_batch(mp__jobs_t *t, const mp__apply_spec_t *s) {
  /* Both at most BATCH_MAX_BYTES (mp__jobs_apply): neither overflows. */
  uint64_t item_slot = mp__var_slot(s->size > BATCH_ARG_MIN ? s->size : BATCH_ARG_MIN),
           result_slot = mp__var_slot(s->result_max);
  uint32_t flags = MP__JOB_BATCH | MP__JOB_ITERATOR | MP__JOB_WAKE_EACH | MP__JOB_VARSIZE |
                   (s->notify ? MP__JOB_NOTIFY : 0);
  mp__jobrec_t *job;
  int rc = job_create(t, s->fn, flags, MP__BATCH_APPLIES, item_slot, result_slot, 1,
                      s->result_max, MP__BATCH_APPLIES, &job);
  if (rc < 0)
    return rc;
  /* job->refs: the table's, until the batch closes */
  if ((rc = publish(t, job)) < 0)
    return rc;
  /* And one for each apply it may take, given up at the close for those it did not take:
   * an append then makes no read-modify-write of its own (a locked one waits for the
   * stores before it to leave, the input's among them, which a worker may be reading). */
  atomic_store_explicit(&job->refs, 1 + MP__BATCH_APPLIES, memory_order_relaxed);
  t->batch_fn = s->fn;
  t->batch_next = 0;
  t->batch_shown = 0;
  t->batch_notify = s->notify;
  t->batch_room = item_slot - MP__VARSIZE_HEAD;
  t->batch_result_max = s->result_max;
  t->batch_input = rec_input(job, 0);
  atomic_store(&t->batch, job); /* with the creator's reference */
  return 0;
}

/* Chunk c's input slot in the open batch (apply_lock held). */
static char *batch_slot(const mp__jobs_t *t, uint32_t c) {
  return t->batch_input + c * (t->batch_room + MP__VARSIZE_HEAD);
}

/* The line the next append writes (its cell: its state word, and its argument when that
 * fits), still in the cache of the worker that ran the same slot's chunk in the batch this
 * block held before: its transfer overlaps the caller's return and its next call, where the
 * first locked instruction after the append's writes waited for it (docs/architecture.md,
 * "An append asks for the next append's lines"). Only the next: 2 or 4 ahead measured no
 * better. */
static void prefetch_next(mp__jobrec_t *job, uint32_t c) {
  if (mp__can_prefetch_for_write()) /* one look, and no address worked out for nothing */
    mp__prefetch_for_write(batch_state(job, c));
}

/* Appends s to the open batch (apply_lock held), closed once full. */
static int append_apply(mp__jobs_t *t, const mp__apply_spec_t *s, mp__jobrec_t **out,
                        uint32_t *chunk) {
  mp__jobrec_t *job = atomic_load_explicit(&t->batch, memory_order_relaxed);
  uint32_t c = t->batch_next++;
  _Atomic uint64_t *state = batch_state(job, c);
  uint64_t len = s->size;
  if (!cell_put(cell_of(state), CELL_INPUT, len, s->arg)) {
    char *in = batch_slot(t, c);
    memcpy(in, &len, sizeof len);
    memcpy(in + MP__VARSIZE_HEAD, s->arg, len);
    MP__SCANNED(in, t->batch_room + MP__VARSIZE_HEAD); /* sent whole (see job_feed) */
  }
  if (!feed_chunk(job, state, c)) {  /* aborted: it counted c */
    atomic_fetch_sub(&job->refs, 1); /* c's, which the close does not give up */
    t->batch_shown = t->batch_next;  /* the abort failed the held ones: none to show */
    close_batch(t);
    return mp__error(MP_ETERMINATED, "the pool was terminated");
  }
  if (hold_back(t, job, c))
    atomic_store_explicit(&t->holding, true, memory_order_relaxed);
  else
    show_held(t); /* c with them */
  atomic_store_explicit(&t->streaming, true, memory_order_relaxed);
  if (c + 1 == MP__BATCH_APPLIES || atomic_load(&job->abort_code)) /* the next opens another */
    close_batch(t);
  else
    prefetch_next(job, c + 1);
  *out = job;
  *chunk = c;
  return 0;
}

int mp__jobs_apply(mp__jobs_t *t, const mp__apply_spec_t *s, mp__jobrec_t **out,
                   uint32_t *chunk) {
  bool batchable = s->size <= BATCH_MAX_BYTES && s->result_max <= BATCH_MAX_BYTES;
  int rc = 0;
  pthread_mutex_lock(&t->apply_lock);
  mp__jobrec_t *open = atomic_load_explicit(&t->batch, memory_order_relaxed);
  /* Applies that cannot share the open batch (another function, size or notify) are no
   * stream: a lone one is a job of its own rather than a whole batch for one. */
  bool takes = open && batch_takes(t, s);
  bool stream = takes || (!open && atomic_load_explicit(&t->applying, memory_order_relaxed));
  uint32_t flags = mp__jobs_flags(t);
  if (flags & MP__POOL_TERMINATED)
    rc = mp__error(MP_ETERMINATED, "the pool was terminated");
  else if (flags & MP__POOL_CLOSED)
    rc = mp__error(MP_ECLOSED, "the pool is closed");
  else if (!batchable || !takes) {
    close_batch(t);
    /* A lone apply, with no work in flight, is a job of its own: it is claimed at once, and
     * a batch would only cost it a larger block. One that follows an apply opens a batch:
     * a stream of applies is batched, even one at a time, where a lone job costs three
     * times the instructions of an appended apply (its block, slot and publication).
     * Decided by the work in flight alone, an apply of such a stream was a lone job
     * whenever the worker had settled the last one in time, a batch otherwise (3 to 84%
     * lone in a stream of apply+get here), and the lone job's block, still referenced by
     * its worker when the waiter released it, was an orphan that the worker had to tell
     * the supervisor about (a system call and a wake-up of the supervisor's thread). */
    if (!batchable || (!stream && !mp__jobs_work_left(t)))
      rc = 1;
    else
      rc = open_batch(t, s);
  }
  if (rc == 0)
    rc = append_apply(t, s, out, chunk);
  /* A close that came while this apply waited for a slot to open its batch looked for an
   * open batch before there was one (mp__jobs_close_batch does not take the lock when it
   * sees none): this apply is taken, and the batch closed for it. The flag is set before
   * that look, the batch stored before this one, both sequentially consistent. */
  if (rc == 0 && (mp__jobs_flags(t) & MP__POOL_CLOSED))
    close_batch(t);
  pthread_mutex_unlock(&t->apply_lock);
  if (rc <= 0) {
    if (rc == 0)
      atomic_store_explicit(&t->applying, true, memory_order_relaxed);
    return rc;
  }
  mp__job_spec_t spec = {
      s->fn, s->notify ? MP__JOB_NOTIFY : 0, s->arg, 1, s->size, s->result_max, 1, 0, 0, NULL};
  *chunk = 0;
  rc = mp__jobs_submit(t, &spec, out);
  if (rc == 0)
    atomic_store_explicit(&t->applying, true, memory_order_relaxed);
  return rc;
}

void *mp__job_owner(mp__jobrec_t *job, uint32_t chunk) {
  if (!(job->head.flags & MP__JOB_BATCH))
    return job->owner;
  return (char *)job->owners + (uint64_t)(chunk % MP__BATCH_APPLIES) * MP__JOB_OWNER_BYTES;
}

int mp__jobs_submit(mp__jobs_t *t, const mp__job_spec_t *s, mp__jobrec_t **out) {
  mp__jobrec_t *job;
  /* Other work after a batch of applies closes it: left open, the batch would stay the
   * oldest job, and a worker would look at it before every chunk of the jobs after it. */
  mp__jobs_close_batch(t);
  atomic_store_explicit(&t->applying, false, memory_order_relaxed);
  int rc = job_create(t, s->fn, s->flags, s->n, s->item_size, s->result_size, s->chunksize,
                      s->result_cap, s->window, &job);
  if (rc < 0)
    return rc;
  if (!(s->flags & MP__JOB_ITERATOR) && s->n && s->item_size && s->pack)
    s->pack(rec_input(job, 0), s->items, s->n, s->item_size);
  else if (!(s->flags & MP__JOB_ITERATOR) && s->n && s->item_size)
    memcpy(rec_input(job, 0), s->items, s->n * s->item_size); /* checked by job_create */
  if (!(s->flags & MP__JOB_ITERATOR) && s->n && s->item_size)
    MP__SCANNED(rec_input(job, 0), s->n * s->item_size); /* as in job_feed */
  if (job->head.n_chunks > 0) {
    if ((rc = publish(t, job)) < 0)
      return rc;
    uint32_t n = t->n_workers, wake = job->head.n_chunks < n ? job->head.n_chunks : n;
    if (!(s->flags & MP__JOB_ITERATOR))
      wake_workers(t->sh, t->n_workers, (int)wake);
  }
  *out = job;
  return 0;
}

/* Calls fn on every job still in a slot, by the table's records and under its lock, so that
 * none is freed meanwhile: the slots' words (and the sequence numbers) are the workers' to
 * write, and no pointer in them is followed. */
static void for_each_running_job(mp__jobs_t *t,
                                 void (*fn)(mp__jobs_t *, mp__jobrec_t *, void *), void *arg) {
  pthread_mutex_lock(&t->lock);
  for (mp__jobrec_t *r = t->jobs; r; r = r->next) {
    uint64_t seq = mp__jobrec_seq(r);
    if (seq && slot_state(t->sh, seq) == (seq << 1 | 1))
      fn(t, r, arg);
  }
  pthread_mutex_unlock(&t->lock);
}

typedef struct {
  uint32_t w;
  const char *msg;
  bool found;
  uint64_t run_seq, run_item; /* the worker's record, as it was when it was found dead */
  uint32_t run_chunk;
} lost_t;

/* Loses the chunk if worker w ran it; the failure names the item at `offset` in it. */
static void lose_if_owned(mp__jobs_t *t, mp__jobrec_t *job, uint32_t chunk, uint64_t offset,
                          lost_t *lost) {
  uint64_t v = atomic_load(rec_state(job, chunk));
  if (MP__CHUNK_OF(v) != chunk || MP__CHUNK_STATUS(v) != MP__CHUNK_RUNNING ||
      MP__CHUNK_OWNER(v) != lost->w + 1)
    return;
  if (offset >= rec_items(job, chunk))
    offset = 0;
  mp__job_lose_chunk(t, job, chunk, (uint64_t)chunk * job->head.chunksize + offset,
                     MP_EWORKERDIED, lost->msg);
  lost->found = true;
}

/* The chunk the worker's record names, if that is its job's. */
static void lose_recorded_chunk(mp__jobs_t *t, mp__jobrec_t *job, void *arg) {
  lost_t *lost = arg;
  if (!lost->found && mp__jobrec_seq(job) + 1 == lost->run_seq)
    lose_if_owned(t, job, lost->run_chunk, lost->run_item, lost);
}

static void find_lost_chunk(mp__jobs_t *t, mp__jobrec_t *job, void *arg) {
  lost_t *lost = arg;
  for (uint32_t i = 0; i < job->head.window && !lost->found; i++)
    lose_if_owned(t, job, MP__CHUNK_OF(atomic_load(rec_state(job, i))), 0, lost);
}

/* What a worker that died half-way through completing its chunk left undone. */
static void finish_counting(mp__jobs_t *t, mp__jobrec_t *job, void *arg) {
  const lost_t *lost = arg;
  repair_count(job, lost->w, lost->run_chunk);
  settle_rec(t, job);
}

/*
 * A map's chunk that a worker drew from the hint and ended before claiming (its
 * compare-and-swap) is QUEUED below the hint, where no claim looks again, and names no
 * owner, so no loss finds it: the map never completed (review, stop 18). It is queued again
 * as a retry (MP__CHUNK_REDRAWN: no attempt counted), which claim_retried finds. A live
 * worker that drew it and is about to claim it loses its compare-and-swap and draws on: none
 * runs twice. No chunk below the hint becomes never-claimed again, so each is looked at by
 * one loss at most (claimed_below, under the table's lock): a plain load first, so that the
 * look takes no line from the workers.
 */
static void requeue_drawn(mp__jobs_t *t, mp__jobrec_t *job, void *arg) {
  (void)t;
  uint32_t *requeued = arg;
  if (job->head.flags & MP__JOB_ITERATOR)
    return; /* claimed by a look at each chunk's state, never drawn */
  /* The block's hint, which a worker may have written wild: bounded by the record's count. */
  uint64_t drawn = atomic_load(&job->blk->hint);
  if (drawn > job->head.n_chunks)
    drawn = job->head.n_chunks;
  for (uint64_t c = job->claimed_below; c < drawn; c++) {
    _Atomic uint64_t *state = rec_state(job, (uint32_t)c);
    uint64_t never_claimed = MP__CHUNK_STATE(c, 0, 0, MP__CHUNK_QUEUED);
    if (atomic_load(state) == never_claimed &&
        atomic_compare_exchange_strong(
            state, &never_claimed, MP__CHUNK_STATE(c, 0, MP__CHUNK_REDRAWN, MP__CHUNK_QUEUED))) {
      atomic_fetch_add(&job->blk->requeued, 1);
      (*requeued)++;
    }
  }
  if (drawn > job->claimed_below)
    job->claimed_below = (uint32_t)drawn;
}

/* A job whose block's header a worker rewrote: every worker that looks at it to claim a
 * chunk reads the wild header and may die of it before it runs one (so no loss fails any),
 * and the job, still the oldest, took every replacement with it, the jobs after it never
 * claimed (test_forged_header_queued_chunks). Failed with MP_ECORRUPT: its slot frees, and
 * no claim looks at it again. */
static void fail_if_forged(mp__jobs_t *t, mp__jobrec_t *job, void *arg) {
  (void)arg;
  /* The same for the slot's pointer to the block, which every claim follows: set back (a
   * swap from the wild value, which a publication of the slot's next job overwrites anyway),
   * test_forged_slot_pointer. */
  _Atomic(mp__job_t *) *slot = &t->sh->slots[mp__jobrec_seq(job) % MP__POOL_SLOTS].job;
  mp__job_t *named = atomic_load(slot);
  if (named != job->blk)
    atomic_compare_exchange_strong(slot, &named, job->blk);
  mp__job_head_t seen;
  memcpy(&seen, (const void *)&job->blk->head, sizeof seen);
  if (memcmp(&seen, &job->head, sizeof seen) != 0)
    abort_locked(t, job, MP_ECORRUPT);
}

void mp__jobs_worker_lost(mp__jobs_t *t, uint32_t w, const char *why) {
  mp__worker_rec_t *rec = &t->sh->workers[w];
  lost_t lost = {w,
                 why,
                 false,
                 atomic_load(&rec->run_seq),
                 atomic_load(&rec->run_item),
                 atomic_load(&rec->run_chunk)};
  /* First: a count repaired after the chunk's loss would count a chunk the loss failed. */
  for_each_running_job(t, finish_counting, &lost);
  if (lost.run_seq)
    for_each_running_job(t, lose_recorded_chunk, &lost);
  if (!lost.found)
    for_each_running_job(t, find_lost_chunk, &lost);
  uint32_t requeued = 0;
  for_each_running_job(t, requeue_drawn, &requeued);
  if (requeued)
    wake_workers(t->sh, t->n_workers, (int)(requeued < t->n_workers ? requeued : t->n_workers));
  for_each_running_job(t, fail_if_forged, NULL);
}

static void abort_job(mp__jobs_t *t, mp__jobrec_t *job, void *arg) {
  abort_locked(t, job, *(const int *)arg);
}

void mp__jobs_abort_all(mp__jobs_t *t, int code) {
  for_each_running_job(t, abort_job, &code);
  wake_workers(t->sh, t->n_workers, INT32_MAX);
  atomic_fetch_add(&t->sh->slot_free, 1);
  mp__futex_wake(&t->sh->slot_free, INT32_MAX);
  mp__jobs_reclaim(t);
}

void mp__jobs_abort(mp__jobs_t *t, mp__jobrec_t *job, int code) {
  job_abort(t, job, code);
}

bool mp__jobs_work_left(const mp__jobs_t *t) {
  return atomic_load(&t->submitting) > 0 ||
         atomic_load(&t->sh->oldest) < atomic_load(&t->sh->next_seq);
}

bool mp__pool_closed_and_done(mp__pool_shared_t *sh) {
  return (atomic_load(&sh->flags) & MP__POOL_CLOSED) && atomic_load(&sh->submitting) == 0 &&
         atomic_load(&sh->oldest) >= atomic_load(&sh->next_seq);
}

void mp__jobs_set_flag(mp__jobs_t *t, uint32_t flag) {
  atomic_fetch_or(&t->flags, flag);
  atomic_fetch_or(&t->sh->flags, flag);
  if (flag & MP__POOL_CLOSED) {
    mp__jobs_close_batch(t); /* else its job never completes, and the workers never exit */
    wake_workers(t->sh, t->n_workers, INT32_MAX); /* idle workers may exit now */
  }
}

uint32_t mp__jobs_flags(const mp__jobs_t *t) {
  return atomic_load(&t->flags);
}

void mp__jobs_restore_flags(mp__jobs_t *t) {
  uint32_t mine = atomic_load(&t->flags);
  bool wrong = (atomic_load(&t->sh->flags) & mine) != mine;
  if (wrong)
    atomic_fetch_or(&t->sh->flags, mine);
  /* A closed pool's workers end once no submission is counted there: a count a worker left
   * (test_forged_submitting) is set back to none if this process counts none. The shared
   * count is read first and swapped from what was read: a submission counts itself here
   * before there and uncounts itself there first, so one that runs meanwhile either shows
   * in this process's count or changed the shared one (the swap fails). */
  uint32_t shared = atomic_load(&t->sh->submitting);
  if ((mine & MP__POOL_CLOSED) && shared && !atomic_load(&t->submitting) &&
      atomic_compare_exchange_strong(&t->sh->submitting, &shared, 0))
    wrong = true;
  /* next_seq and oldest, by this process's count of publications (under the lock that
   * publications hold, if no publication holds it now: a wait for a slot holds it, and this
   * thread must not wait): a wild next_seq left work for ever, and a closed pool's join with
   * it (test_forged_next_seq_at_close); an oldest out of the slots' reach is set to the
   * oldest job that can be in flight, from which the claims move it on. */
  if (pthread_mutex_trylock(&t->submit_lock) == 0) {
    uint64_t next = t->next_seq, from = next - MP__POOL_SLOTS,
             oldest = atomic_load(&t->sh->oldest);
    if (atomic_load(&t->sh->next_seq) != next) {
      atomic_store(&t->sh->next_seq, next);
      wrong = true;
    }
    if ((oldest > next || oldest < from) &&
        atomic_compare_exchange_strong(&t->sh->oldest, &oldest, from))
      wrong = true;
    pthread_mutex_unlock(&t->submit_lock);
  }
  if (wrong)
    wake_workers(t->sh, t->n_workers, INT32_MAX); /* those that slept through it may end now */
}

/* ------------------------------ worker records ------------------------------ */

void mp__jobs_worker_starting(mp__jobs_t *t, uint32_t w) {
  mp__worker_rec_t *rec = &t->sh->workers[w];
  atomic_store(&rec->pid, 0);
  rec->error[0] = '\0';
  atomic_store(&rec->state, MP__WORKER_STARTING);
}

void mp__jobs_worker_started(mp__jobs_t *t, uint32_t w, int pid) {
  atomic_store(&t->sh->workers[w].pid, pid);
}

/* The chunks an abort took from worker w, which ended before it let go of them. */
static void let_go_for(mp__jobs_t *t, uint32_t w) {
  pthread_mutex_lock(&t->lock);
  for (mp__jobrec_t *r = t->jobs; r; r = r->next)
    for (uint32_t i = 0; atomic_load(&r->abandoned) && i < r->head.window; i++) {
      _Atomic uint64_t *state = rec_state(r, i);
      let_go(state, MP__CHUNK_OF(atomic_load(state)), w);
    }
  pthread_mutex_unlock(&t->lock);
}

/* Whoever worker w, which ended while it served, may have owed a wake-up: it ended in a
 * settle, after it won a job's slot (which its waiter, a submission waiting for a slot and,
 * in a closed pool, the idle workers, which exit once all is done, were to be woken for), or
 * in the middle of a wake-up (a waiter's count or an idle worker's ticket taken). Each of
 * them looks again. Of the jobs' waiters, only those on the waker its record names
 * (waking), the one of the job it was settling: waking every slot's cost a futex call each,
 * 257 for every worker that a terminate or mp_pool_destroy ended, 0.1 ms of the 0.7 ms
 * destroy of a 2-worker pool here. */
static void wake_those_owed(mp__jobs_t *t, uint32_t w) {
  mp__pool_shared_t *sh = t->sh;
  uint32_t waking = atomic_load(&sh->workers[w].waking);
  if (waking > 0 && waking <= MP__POOL_SLOTS + 1) /* a wild one names none */
    wake_uncounted(&sh->wakers[waking - 1]);
  atomic_fetch_add(&sh->slot_free, 1);
  mp__futex_wake(&sh->slot_free, INT32_MAX);
  if (!(mp__jobs_flags(t) & (MP__POOL_CLOSED | MP__POOL_TERMINATED)))
    return; /* an open pool's workers are woken by the submissions, not by a settle */
  atomic_fetch_add(&sh->work, 1);
  for (uint32_t i = 0; i < t->n_workers; i++) {
    atomic_fetch_add(&sh->workers[i].wake, 1);
    mp__futex_wake(&sh->workers[i].wake, 1);
  }
}

void mp__jobs_worker_gone(mp__jobs_t *t, uint32_t w) {
  mp__worker_rec_t *rec = &t->sh->workers[w];
  /* A worker that served (READY, or a wild word: any but the ends that owe nothing) may have
   * ended half-way through a completion. Its count is repaired here too, for an end that
   * worker_lost did not see (a terminate's kill: the abort counts no chunk already DONE);
   * after a worker_lost, which repaired it first, this finds it done. */
  uint32_t state = atomic_load(&rec->state);
  bool served = state != MP__WORKER_EMPTY && state != MP__WORKER_STARTING &&
                state != MP__WORKER_INIT_FAILED && state != MP__WORKER_RETIRED &&
                state != MP__WORKER_DONE;
  if (served) {
    lost_t lost = {.w = w, .run_chunk = atomic_load(&rec->run_chunk)};
    for_each_running_job(t, finish_counting, &lost);
  }
  atomic_store(&rec->pin, 0);
  atomic_store(&rec->run_seq, 0);
  /* Died idle: not to be woken again. A ticket is only held while counted (mp__pool_idle). */
  if (atomic_exchange(&rec->idle_ticket, 0))
    atomic_fetch_sub(&t->sh->idle, 1);
  /* Then an abort fails its running chunks outright (a terminate after this end, whose
   * worker_lost it skipped), or it marked them before: they are let go of here. */
  atomic_store(&rec->state, MP__WORKER_EMPTY);
  let_go_for(t, w);
  if (served)
    wake_those_owed(t, w);
  atomic_store(&rec->waking, 0);
}

uint32_t mp__jobs_worker_state(const mp__jobs_t *t, uint32_t w) {
  return atomic_load(&t->sh->workers[w].state);
}

int mp__jobs_worker_pid(const mp__jobs_t *t, uint32_t w) {
  return atomic_load(&t->sh->workers[w].pid);
}

/* A copy, terminated: the worker's record is its to write, and may end without a NUL. */
const char *mp__jobs_worker_error(const mp__jobs_t *t, uint32_t w) {
  static __thread char copy[MP__POOL_MSG];
  memcpy(copy, t->sh->workers[w].error, sizeof copy);
  copy[sizeof copy - 1] = '\0';
  return copy;
}

uint32_t mp__jobs_ready(const mp__jobs_t *t) {
  uint32_t ready = 0;
  for (uint32_t w = 0; w < t->n_workers; w++)
    ready += atomic_load(&t->sh->workers[w].state) == MP__WORKER_READY;
  return ready;
}

_Atomic uint32_t *mp__jobs_status_word(mp__jobs_t *t) {
  return &t->sh->status;
}

void mp__jobs_wake_status(mp__jobs_t *t) {
  atomic_fetch_add(&t->sh->status, 1);
  mp__futex_wake(&t->sh->status, INT32_MAX);
}

/* ------------------------------ results ------------------------------ */

int mp__job_aborted(const mp__jobrec_t *job) {
  return atomic_load(&job->abort_code);
}

const char *mp__job_abort_reason(int code) {
  return code == MP_ECORRUPT ? "a worker wrote into the job's shared memory what libmp never "
                               "wrote there (its feed limit), so the job was failed"
                             : "the pool was terminated";
}

void mp__job_wake_waiter(mp__jobrec_t *job) {
  wake(atomic_load_explicit(&job->waker, memory_order_relaxed));
}

/* A recorded failure's code, one a failure can record (a task's, a function that did not
 * resolve or that the job names wildly, a worker's death), whatever a wild write in a task
 * left there: another would
 * mean something else to the caller (MP_EINTR ends a blocking map's pool, MP_ETIMEDOUT looks
 * like a wait to repeat). */
static int task_code(const mp__task_error_t *e) {
  switch (e->code) {
  case MP_ERESOLVE:
  case MP_ECROSS:
  case MP_ENOMEM:
  case MP_EWORKERDIED:
  case MP_ECORRUPT:
  case MP_ELIMIT:  /* an MPI rank's: a chunk's size overflows */
  case MP_ECLOSED: /* an MPI rank's: MPI has ended */
    return e->code;
  default:
    return MP_ETASK;
  }
}

/* A failure's message, which a worker killed while writing it may have left unterminated. */
#define MSG_OF(e) (int)sizeof(e)->msg, (e)->msg

/* Every chunk but the last of a map that did not fail, each slot followed by its canary:
 * results of a few bytes (chunks of one item) are copied by a loop of fixed-size copies,
 * where a call per chunk would cost more than the bytes. */
static void copy_whole_chunks(char *to, const char *from, uint64_t per_chunk, uint64_t stride,
                              uint32_t chunks) {
  switch (per_chunk) {
  case 4:
    for (uint32_t c = 0; c < chunks; c++)
      memcpy(to + (uint64_t)c * 4, from + c * stride, 4);
    return;
  case 8:
    for (uint32_t c = 0; c < chunks; c++)
      memcpy(to + (uint64_t)c * 8, from + c * stride, 8);
    return;
  case 16:
    for (uint32_t c = 0; c < chunks; c++)
      memcpy(to + (uint64_t)c * 16, from + c * stride, 16);
    return;
  default:
    for (uint32_t c = 0; c < chunks; c++)
      memcpy(to + c * per_chunk, from + c * stride, per_chunk);
  }
}

/* Forks by this process since the first map's results were taken: a fork shares every page
 * of the caller's buffers copy-on-write again. */
static _Atomic uint64_t forks;

static void count_fork(void) {
  atomic_fetch_add_explicit(&forks, 1, memory_order_relaxed);
}

static void watch_result_buffers(void) {
  pthread_atfork(NULL, count_fork, NULL);
}

/* The caller's buffer may still be shared copy-on-write with the workers forked after it
 * was written: one system call copies its pages where the copy would fault on each. A
 * buffer this thread prepared last, with no fork since, is not mapped again (that call
 * walks every page, present or not: on a warm buffer it cost as much as the copy). At
 * worst, a buffer unmapped and mapped again at the same place faults page by page. */
void mp__jobs_prepare_results(void *result, uint64_t need) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  static __thread struct {
    uintptr_t at;
    uint64_t len, forks;
  } warm;
  pthread_once(&once, watch_result_buffers);
  uint64_t now = atomic_load_explicit(&forks, memory_order_relaxed);
  uintptr_t at = (uintptr_t)result;
  if (warm.at && warm.forks == now && at >= warm.at && need <= warm.len &&
      at - warm.at <= warm.len - need)
    return;
  prefault(result, need);
  if (need >= MP__PREFAULT_BYTES) {
    warm.at = at;
    warm.len = need;
    warm.forks = now;
  }
}

/* A map's need bytes of results into to, chunk by chunk (each window slot is followed by its
 * canary); those of failed chunks, which hold whatever the block held, are zeroed. */
static void copy_results(const mp__jobrec_t *job, char *to, uint64_t need, bool failed) {
  uint64_t per_chunk = job->head.chunksize * job->head.result_size;
  const char *from = (const char *)job->blk + job->head.output_off;
  if (!failed) {
    uint32_t last = job->head.n_chunks - 1;
    copy_whole_chunks(to, from, per_chunk, job->head.out_stride, last);
    memcpy(to + last * per_chunk, from + last * job->head.out_stride, need - last * per_chunk);
    return;
  }
  for (uint32_t c = 0; c < job->head.n_chunks; c++) {
    uint64_t bytes = c + 1 < job->head.n_chunks ? per_chunk : need - c * per_chunk;
    if (MP__CHUNK_STATUS(atomic_load(rec_state(job, c))) == MP__CHUNK_DONE)
      memcpy(to + c * per_chunk, from + c * job->head.out_stride, bytes);
    else
      memset(to + c * per_chunk, 0, bytes);
  }
}

int mp__job_take(const mp__jobrec_t *job, bool is_apply, void *result, size_t cap, size_t *len) {
  /* The lowest item's failure: the workers' record, or the parent's of its losses. */
  const mp__task_error_t *e = rec_error(job, 0);
  if (job->lost.item < e->item)
    e = &job->lost;
  bool failed = e->item != UINT64_MAX;
  uint64_t need =
      is_apply ? atomic_load(&job->blk->result_len) : job->head.n * job->head.result_size;
  if (is_apply && need > job->head.result_size) /* a worker's word: no read past the slot */
    need = job->head.result_size;
  if (len)
    *len = need;
  if (result && !failed && cap < need)
    return mp__error(MP_ETOOSMALL, "the result has %llu bytes, the buffer %zu",
                     (unsigned long long)need, cap);
  if (result && need && cap >= need && is_apply && !failed)
    memcpy(result, rec_output(job, 0), need);
  /* The caller's buffer was prepared (mp__jobs_prepare_results). */
  if (result && need && cap >= need && !is_apply)
    copy_results(job, result, need, failed);
  if (!failed)
    return 0;
  if (is_apply)
    return mp__error(task_code(e), "%.*s", MSG_OF(e));
  return mp__error(task_code(e), "item %llu: %.*s", (unsigned long long)e->item, MSG_OF(e));
}

/* Item i's result slot in its chunk's window slot. */
static const char *item_result(const mp__jobrec_t *job, uint32_t chunk, uint64_t i) {
  return (const char *)rec_output(job, chunk) +
         (i - (uint64_t)chunk * job->head.chunksize) * job->head.result_size;
}

const char *mp__job_result(const mp__jobrec_t *job, uint64_t i) {
  uint32_t c = (uint32_t)(i / job->head.chunksize);
  if (MP__CHUNK_STATUS(atomic_load(rec_state(job, c))) != MP__CHUNK_DONE)
    return NULL;
  return item_result(job, c, i);
}

static bool chunk_failed(uint64_t v) {
  uint32_t status = MP__CHUNK_STATUS(v);
  return status == MP__CHUNK_FAILED || status == MP__CHUNK_ABANDONED;
}

static bool chunk_finished(uint64_t v) {
  return MP__CHUNK_STATUS(v) == MP__CHUNK_DONE || chunk_failed(v);
}

bool mp__job_chunk_finished(const mp__jobrec_t *job, uint32_t chunk) {
  return chunk_finished(atomic_load(rec_state(job, chunk)));
}

/* A failed chunk with no failure recorded was failed by an abort. */
int mp__job_chunk_aborted(const mp__jobrec_t *job, uint32_t chunk) {
  if (!chunk_failed(atomic_load(rec_state(job, chunk))) ||
      rec_error(job, chunk)->item != UINT64_MAX)
    return 0;
  int code = atomic_load(&job->abort_code);
  return code ? code : MP_ETERMINATED;
}

/* The result of done chunk, whose state word is at state; *len (if len) its length, also
 * when the buffer is too small. */
static int take_result(const mp__jobrec_t *job, uint32_t chunk, _Atomic uint64_t *state,
                       void *result, size_t cap, size_t *len) {
  /* The copy in the cell when the result fits it, else the output region's slot; each
   * length word read once, and bounded by its own slot's room. */
  uint64_t words[CELL_WORDS];
  cell_load(cell_of(state), CELL_RESULT, words);
  const char *out = (const char *)words;
  if (words[0] > CELL_ROOM)
    out = rec_output(job, chunk);
  uint64_t need;
  memcpy(&need, out, sizeof need);
  if (need > job->head.result_cap) /* whatever a wild task left there */
    need = job->head.result_cap;
  if (len)
    *len = need;
  if (result && cap < need)
    return mp__error(MP_ETOOSMALL, "the result has %llu bytes, the buffer %zu",
                     (unsigned long long)need, cap);
  if (result && need <= CELL_ROOM)
    copy_small(result, out + MP__VARSIZE_HEAD, need);
  else if (result)
    memcpy(result, out + MP__VARSIZE_HEAD, need);
  return 0;
}

int mp__job_take_chunk(const mp__jobrec_t *job, uint32_t chunk, void *result, size_t cap,
                       size_t *len) {
  if (len)
    *len = 0;
  _Atomic uint64_t *state = rec_state(job, chunk);
  if (chunk_failed(atomic_load(state)))
    return mp__error(task_code(rec_error(job, chunk)), "%.*s", MSG_OF(rec_error(job, chunk)));
  return take_result(job, chunk, state, result, cap, len);
}

int mp__job_take_done_chunk(const mp__jobrec_t *job, uint32_t chunk, void *result, size_t cap,
                            size_t *len) {
  _Atomic uint64_t *state = batch_state(job, chunk);
  if (MP__CHUNK_STATUS(atomic_load(state)) != MP__CHUNK_DONE)
    return 1;
  /* Results are mostly asked for in order: the next cell, written by a worker, moves to this
   * CPU during this copy and the caller's return, instead of during the next get. */
  if (chunk + 1 < MP__BATCH_APPLIES)
    __builtin_prefetch(batch_state(job, chunk + 1));
  return take_result(job, chunk, state, result, cap, len);
}

int64_t mp__job_finished_chunk(const mp__jobrec_t *job, bool ordered, uint32_t next) {
  if (ordered) {
    uint64_t v = atomic_load(rec_state(job, next));
    return MP__CHUNK_OF(v) == next && chunk_finished(v) ? (int64_t)next : -1;
  }
  uint32_t limit = job->fed;
  for (uint32_t i = 0; i < job->head.window; i++) {
    uint64_t v = atomic_load(rec_state(job, i));
    /* The chunk must be the one slot i holds: a wild word would deliver another's. */
    if (MP__CHUNK_OF(v) < limit && chunk_finished(v) &&
        ring_slot(MP__CHUNK_OF(v), job->head.window) == i)
      return MP__CHUNK_OF(v);
  }
  return -1;
}

void mp__job_view_chunk(const mp__jobrec_t *job, uint32_t chunk, mp__chunk_view_t *view) {
  uint64_t first = (uint64_t)chunk * job->head.chunksize, failed = rec_error(job, chunk)->item;
  view->results = rec_output(job, chunk);
  view->stride = job->head.result_size;
  view->varsize = job->head.flags & MP__JOB_VARSIZE;
  view->cap = job->head.result_cap;
  view->items = rec_items(job, chunk);
  /* As mp__job_item_failure decides: from the failed item on, from the first if none was
   * recorded (an abort) or the record names an item before the chunk (a wild one). */
  if (!chunk_failed(atomic_load(rec_state(job, chunk))))
    view->fails_at = view->items;
  else if (failed == UINT64_MAX || failed <= first)
    view->fails_at = 0;
  else
    view->fails_at = failed - first < view->items ? failed - first : view->items;
}

int mp__job_item_failure(const mp__jobrec_t *job, uint32_t chunk, uint64_t i,
                         uint64_t *failed_item) {
  uint64_t v = atomic_load(rec_state(job, chunk));
  const mp__task_error_t *e = rec_error(job, chunk);
  if (!chunk_failed(v) || (e->item != UINT64_MAX && i < e->item))
    return 0;
  /* No item recorded: the chunk was aborted with the job. */
  int abort_code = atomic_load(&job->abort_code);
  *failed_item = e->item == UINT64_MAX ? i : e->item;
  if (!abort_code)
    abort_code = MP_ETERMINATED;
  if (e->item == UINT64_MAX)
    return mp__error(abort_code, "item %llu: %s", (unsigned long long)*failed_item,
                     mp__job_abort_reason(abort_code));
  return mp__error(task_code(e), "item %llu: %.*s", (unsigned long long)e->item, MSG_OF(e));
}

bool mp__jobs_feed(mp__jobs_t *t, mp__jobrec_t *job, const mp__feed_t *feed) {
  return job_feed(t, job, feed);
}

uint32_t mp__job_chunks(const mp__jobrec_t *job) {
  if (!(job->head.flags & MP__JOB_OPEN))
    return job->head.n_chunks;
  return job->input_ended ? job->fed : UINT32_MAX;
}

void mp__jobs_return_chunk(mp__jobs_t *t, mp__jobrec_t *job, uint32_t chunk,
                           const mp__feed_t *feed) {
  _Atomic uint64_t *state = rec_state(job, chunk);
  /* Its worker still has the block (and no chunk is fed after an abort). */
  if (MP__CHUNK_STATUS(atomic_load(state)) == MP__CHUNK_ABANDONED)
    return;
  atomic_store(state, MP__CHUNK_STATE(chunk, 0, 0, MP__CHUNK_FREE));
  while (job_feed(t, job, feed))
    ;
}
