/*
 * The job table of a Pool: the one owner of the pool's shared block (job slots, worker
 * records, the task functions), of the job blocks, of the spare blocks kept for reuse, of
 * the parent's list of jobs and of their locks. Included by pool_jobs.c, the pool's own
 * files (through pool_private.h), pool_worker.c and pool_mpi.c (whose proxy workers claim
 * and complete chunks ahead); other launchers see the shared block as an opaque pointer
 * (pool_launcher.h).
 *
 * Two sides, one protocol (claim, complete, lose):
 * - the pool's process: submit a job, wait on it, take its result or its next chunk,
 *   release it; tell the table that a worker was lost (with why) or that everything is
 *   aborted; reclaim the blocks nobody uses;
 * - a worker: claim a chunk (a task view: the function, the input, the count, the output),
 *   run it, complete it (a status; a failure's message is recorded first).
 *
 * Ownership, at each call (nng's way of saying it):
 * - mp__jobs_submit copies the caller's items into the job block before it returns (an
 *   iterator's are copied a window at a time by mp__jobs_feed, from the caller's array,
 *   which the caller keeps valid); the job block is the table's; the caller gets one
 *   reference (the owner's) and the slot holds another until the job completes.
 * - A claimed chunk's input and output are the claiming worker's until it completes the
 *   chunk or the table loses it (mp__jobs_worker_lost): a completion that comes after the
 *   loss, or after an abort, is refused (returns false) and writes nothing the pool reads.
 * - Results are read by the owner only once the job (or, for an iterator, the chunk) is
 *   complete; mp__job_take copies them out; the block stays the table's.
 * - mp__jobs_release drops the owner's reference; the block is freed (or kept as a spare)
 *   by the pool's process once no reference is left, no worker has it pinned and none
 *   still runs a chunk an abort took from it (MP__CHUNK_ABANDONED).
 * - The shared block and every job block are freed by mp__jobs_free, once every worker
 *   has ended.
 * Fields of the structs below are the table's. Every word of the shared blocks is a
 * worker's to write (a task may write out of its bounds): the pool's process decides by
 * nothing it reads there but its own copies. Each job has a record of the pool's process
 * (mp__jobrec_t, in its private memory, from a free list of the table's): the header the
 * table made, which every bound it reads by comes from, the references that decide who frees
 * the block, the table's list of its jobs and the owners' records (pool.c's async results,
 * with their callbacks). pool.c reads the record's header (head: n, chunksize,
 * n_chunks, result_size) and keeps its async results in mp__job_owner; the worker reads the
 * block's header and the function table. A wild word of a block fails its job (MP_ECORRUPT,
 * MP_EWORKERDIED, a wrong result) or leaks its block, never more.
 */
#ifndef MP_POOL_JOBS_H
#define MP_POOL_JOBS_H

#include "internal.h"
#include "pool_launcher.h"

#include <string.h>

#define MP__POOL_SLOTS 256       /* jobs (maps, applies, iterators) in flight at once */
#define MP__POOL_MAX_WORKERS 1024
#define MP__POOL_MAX_FNS 256     /* distinct task functions per pool */

/* A chunk's state word: chunk number << 32 | attempts << 24 | owner (worker + 1) << 4 |
 * status. The owner field is the record of which worker runs the chunk; a QUEUED chunk's is
 * MP__CHUNK_REDRAWN when a worker drew it and ended before claiming it (requeue_drawn): a
 * retry that no run was lost for, so no attempt is counted. */
enum {
  MP__CHUNK_FREE = 0, /* iterator window slot not holding a fed chunk */
  MP__CHUNK_QUEUED,
  MP__CHUNK_RUNNING,
  MP__CHUNK_DONE,
  MP__CHUNK_FAILED,
  /* Failed by an abort while its owner ran it, and counted: the owner still reads and
   * writes the job's block, which is kept until it lets go (to FAILED). */
  MP__CHUNK_ABANDONED,
};
#define MP__CHUNK_STATE(chunk, attempts, owner, status)                                     \
  ((uint64_t)(chunk) << 32 | (uint64_t)(attempts) << 24 | (uint64_t)(owner) << 4 | (status))
#define MP__CHUNK_OF(v) ((uint32_t)((v) >> 32))
#define MP__CHUNK_ATTEMPTS(v) ((uint32_t)((v) >> 24) & 0xffu)
#define MP__CHUNK_OWNER(v) ((uint32_t)((v) >> 4) & 0xfffffu)
#define MP__CHUNK_STATUS(v) ((uint32_t)(v) & 0xfu)
#define MP__CHUNK_REDRAWN 0xfffffu /* above every worker + 1 */
_Static_assert(MP__POOL_MAX_WORKERS < MP__CHUNK_REDRAWN, "no worker's owner field is REDRAWN");

/* Bytes between a job's done counters: each worker's on a cache line of its own, so that two
 * workers completing chunks side by side do not take the line from each other at every
 * chunk. The worker's line also holds its retry_seen (claim_retried), after the counter. */
#define MP__DONE_STRIDE 64

typedef struct {
  uint64_t item; /* the failed item's index */
  int32_t code;
  char msg[MP__POOL_MSG];
} mp__task_error_t;

enum {
  MP__JOB_ITERATOR = 1u,  /* a window of chunks fed as results are taken; one error per slot */
  MP__JOB_WAKE_EACH = 2u, /* wake the waiter at every chunk, not only at the end */
  MP__JOB_NOTIFY = 4u,    /* tell the supervisor when it completes (callbacks) */
  /* Items and results of any size: each input slot and each result slot starts with its
   * length (a uint64_t), then the bytes (mp__run_task passes and records that length). */
  MP__JOB_VARSIZE = 8u,
  /* Applies in flight, one per chunk of one item (mp__jobs_apply): each chunk has its own
   * input, result, status, error record and owner's record, and is appended while the job
   * runs; with MP__JOB_NOTIFY the supervisor is told at every chunk. */
  MP__JOB_BATCH = 16u,
  /* An iterator whose items come from a source, a chunk at a time (mp__feed_t's fill): no
   * count is known, so its chunks' items are those fed so far (fed_items: the last chunk
   * may be short), and it is closed when the source ends or its chunks run out, the chunks
   * never fed then counted by the parent (as a batch's close counts them). */
  MP__JOB_OPEN = 32u,
};
#define MP__VARSIZE_HEAD sizeof(uint64_t)

/* A slot for an item or a result of at most max bytes: its length, then its bytes, rounded
 * up so that the next slot's bytes stay 8-aligned; 0 when that overflows. */
static inline size_t mp__var_slot(size_t max) {
  size_t slot;
  if (__builtin_add_overflow(max, MP__VARSIZE_HEAD + 7, &slot))
    return 0;
  return slot & ~(size_t)7;
}

/* The length a slot's head gives, at most max: the head is another process's word, so a
 * wild one reads and copies no further than the slot's room. */
static inline uint64_t mp__var_length(const void *slot, uint64_t max) {
  uint64_t len;
  memcpy(&len, slot, sizeof len);
  return len < max ? len : max;
}

/* Where a job's waiter sleeps: in the pool's shared block rather than the job's, so that
 * the worker that completes a job can wake the waiter after it let go of the job's block.
 * One per job slot, used by the slot's jobs in turn (a waiter woken for an earlier job's
 * sake looks again and sleeps again), and one for jobs never published (no chunks). */
typedef struct {
  _Atomic uint32_t wake; /* futex word, bumped when a waiter may proceed */
  _Atomic uint32_t waiters;
} mp__job_waker_t;

#define MP__JOB_OWNER_BYTES 96

/* Applies one batch holds (MP__JOB_BATCH): its opening and closing (a block, a slot, a
 * publication; the close's counts) are paid once for them all. 64 went to 128 in stop 29:
 * pool.apply_pipelined 0.134-0.143 -> 0.129-0.141 us/task, medians 0.140 -> 0.1325
 * (docs/architecture.md, "A batch holds 128 applies"). tests/test_pool.c's forged blocks
 * copy it (BATCH_APPLIES): that suite sees only the public header. */
#define MP__BATCH_APPLIES 128

/* A fed job's limit once no chunk is fed any more: above every count of chunks (at most
 * UINT32_MAX / 2, job_create), so a feed's compare-and-swap fails and a count stays. */
#define MP__LIMIT_CLOSED 0x80000000u

/* A job's header: its function, sizes, chunks and layout, as job_create made it, once, for
 * the parent's record (which the pool's process reads) and the block (which workers read). */
typedef struct {
  uint32_t fn; /* index in the pool's function table */
  uint32_t flags;
  uint64_t n, item_size, result_size, chunksize;
  uint64_t result_cap; /* MP__JOB_VARSIZE: a task's room; result_size is then its slot */
  uint32_t n_chunks, window;
  /* Window slot s's state word is at index (s & (2^spread - 1)) * 8 + (s >> spread): the
   * slots of consecutive chunks, which different workers claim and complete side by side,
   * are on different cache lines (8 words a line). 0: at index s (windows below 16). */
  uint32_t spread;
  uint32_t n_counters; /* done counters: one per worker, then the parent's */
  uint64_t states_off, input_off, output_off, out_stride, errs_off, n_errs;
  uint64_t done_off; /* chunks done or failed, a counter per worker, MP__DONE_STRIDE apart */
} mp__job_head_t;

/* A job: one map, apply or iterator, one block of the arena, as workers see it (the pool's
 * process reads its header from its own record instead). Chunks [0, limit) have been fed;
 * chunk c lives in window slot c % window (window = n_chunks for a map). */
typedef struct {
  /* What only a worker's warm pages go by (mp__pool_map_large_output), first: the words
   * that a task overrunning the block before this one reaches first. */
  uint64_t block_size; /* bytes of its block */
  uint64_t block_id;   /* the block's, from the arena: kept when a later job reuses it */
  /* Its number in the pool, which names its slot. Written once as it is published; atomic
   * (relaxed) because another process's release of the job (a pin) is what orders its
   * readers, which ThreadSanitizer does not see. */
  _Atomic uint64_t seq;
  mp__job_head_t head;
  /* The slot's and the owner's: the worker that drops the last one tells the supervisor,
   * whose reclaim then frees the block. Only that hint: the pool's process decides by its
   * record (mp__jobrec_t). */
  _Atomic uint32_t refs;
  _Atomic uint64_t result_len; /* an apply's result length */
  /* Chunks below it are not queued, except retried ones. Drawn by a fetch-and-add at every
   * claim of a map's chunk, by every worker: alone on its cache line, so that the fields
   * each claim reads stay in every worker's cache. 64 bits: it passes n_chunks by one per
   * look at a drawn-out map, and a completion draws without looking first. */
  _Alignas(64) _Atomic uint64_t hint;
  /* Written as chunks are fed (each apply of a batch), and read by every claim of a fed
   * job: on a line of their own, so that feeding does not take the header's line, which
   * every claim reads, from the workers. MP__LIMIT_CLOSED once a close or an abort ended
   * the feeding (the low bits still count the chunks fed). */
  _Alignas(64) _Atomic uint32_t limit;
  /* Chunks queued again (their worker died, or a dead worker may have drawn them), ever:
   * counted by the pool's process alone. A worker scans the job for them when this moved
   * since its last scan of the job that found none (its retry_seen, on its done counter's
   * line). No worker uncounts one, so none can die half-way through uncounting one, which
   * left a count of pending retries too high for good, and every later claim of the job
   * scanning its whole window. */
  _Atomic uint32_t requeued;
  /* MP__JOB_OPEN: the items fed so far, which a worker's count of a chunk's items goes by
   * (written before the chunk is queued; a wild one makes a chunk's count wrong, at most
   * its chunksize). */
  _Atomic uint64_t fed_items;
  /* MP__JOB_BATCH: the chunks appended so far, when the pool's process holds the last ones
   * back from limit while its caller streams applies (mp__jobs_set_hold); a worker about to
   * sleep raises limit to it (mp__pool_take_held). On a line of its own: written at every
   * held append, read by a worker only when it has run out of work. */
  _Alignas(64) _Atomic uint32_t appended;
} mp__job_t;

/* The pool's process's record of a job, in its own memory, out of every worker's reach: the
 * header as the table made it (head, a copy of which the block holds for the workers), the
 * owner's references, the list, the owners' records. Taken
 * from the table's free list (no allocation per job, a batch's owner records kept with
 * it); given back when the block is freed. */
typedef struct mp__jobrec_s mp__jobrec_t;
struct mp__jobrec_s {
  mp__job_t *blk;
  mp__jobrec_t *next, *prev; /* the table's list of its jobs (its free list: next), under
                              * the table's lock */
  mp__job_head_t head;
  uint64_t block_size;
  /* Written as it is published (0 until then), read by the supervisor: atomic, relaxed
   * (mp__jobrec_seq; the slot's state orders the rest). */
  _Atomic uint64_t seq;
  _Atomic(mp__job_waker_t *) waker; /* in the pool's shared block */
  /* The owner's reference; a batch's: the table's and one for each apply it may take. */
  _Atomic uint32_t refs;
  _Atomic int32_t abort_code; /* MP_ETERMINATED once the pool was terminated */
  /* The block's limit as this process made it, which decides a feed against a close or an
   * abort (queue_chunk, close_limit): the block's, which the workers read, any worker can
   * write, and a worker that marked it closed made a close count no never-fed chunk, so the
   * job never completed and close+join waited (review, stop 17). */
  _Atomic uint32_t limit;
  uint32_t fed;   /* an iterator's chunks fed: the ones it may deliver (its owner's thread) */
  /* MP__JOB_OPEN: the items fed so far (read by the supervisor too: atomic), and whether the
   * feeding ended (the source did, or the chunks ran out; its owner's thread). */
  _Atomic uint64_t fed_items;
  bool input_ended;
  uint32_t claimed_below; /* a map's chunks below it were claimed, or requeued (requeue_drawn) */
  bool orphaned;  /* released while its slot or a worker still had it: reclaim frees it */
  _Atomic bool abandoned; /* an abort left chunks ABANDONED: look for them before a free */
  /* A map's (or a lone apply's) failures that the pool's process recorded (its chunks lost
   * with their workers), out of the workers' reach and off their error lock: the lowest
   * item's, or none (item UINT64_MAX). */
  mp__task_error_t lost;
  void *owners; /* a batch's owner records (MP__BATCH_APPLIES of them), kept with the record */
  /* A job of its own's owner record (pool.c's async result, which writes it whole). */
  _Alignas(64) uint64_t owner[MP__JOB_OWNER_BYTES / sizeof(uint64_t)];
};

static inline uint64_t mp__job_seq(const mp__job_t *job) {
  return atomic_load_explicit(&((mp__job_t *)job)->seq, memory_order_relaxed);
}

static inline uint64_t mp__jobrec_seq(const mp__jobrec_t *job) {
  return atomic_load_explicit(&((mp__jobrec_t *)job)->seq, memory_order_relaxed);
}

/* A worker's record, written by the worker (and by the supervisor once it has died). */
enum {
  MP__WORKER_EMPTY = 0,
  MP__WORKER_STARTING,
  MP__WORKER_READY,
  MP__WORKER_INIT_FAILED, /* error holds the initializer's message */
  MP__WORKER_RETIRED,     /* exits after maxtasksperchild tasks: replace it, fail nothing */
  MP__WORKER_DONE,        /* exits: the pool was closed and its work is done */
};

typedef struct {
  _Atomic uint32_t state;
  _Atomic int32_t pid;
  _Atomic uint64_t pin;     /* seq + 1 of the job it is looking at: not to be freed */
  _Atomic uint64_t run_seq; /* seq + 1 of the job of the chunk it runs, 0 if none */
  _Atomic uint32_t run_chunk;
  _Atomic uint64_t run_item; /* the running task's index in its chunk */
  _Atomic uint64_t idle_ticket; /* when it went idle (0: busy): the latest is woken first */
  _Atomic uint32_t wake;        /* futex: its own, bumped to wake it */
  /* The waker (index + 1) of the job it settles, from before settle() (the slot's swap, the
   * wake-up of a batch's apply) to after its last wake-up: a sleeper there may be owed that
   * wake-up if it ends meanwhile (0: none). */
  _Atomic uint32_t waking;
  char error[MP__POOL_MSG];
} mp__worker_rec_t;

enum { MP__POOL_CLOSED = 1u, MP__POOL_TERMINATED = 2u };

/* What the pool's processes share. */
struct mp__pool_shared_s {
  _Atomic uint32_t work;  /* futex: bumped when new work may be claimable */
  _Atomic uint32_t idle;  /* workers about to sleep or asleep */
  _Atomic uint64_t idle_tickets;
  _Atomic uint32_t slot_free; /* futex: bumped when a job's slot frees */
  _Atomic uint32_t slot_waiters;
  _Atomic uint32_t status; /* futex: bumped when a worker is ready or failed to be */
  _Atomic uint32_t flags;
  /* Submissions between their look at the flags and their publication (a wait for a slot
   * included): a closed pool's workers do not end while one is pending. */
  _Atomic uint32_t submitting;
  /* Robust: workers record failures, in any job. One for the pool rather than one per job:
   * failures are rare, and a job then costs no mutex set-up. The pool's process never takes
   * it (a worker may hold it for ever): it records its losses without it
   * (mp__job_lose_chunk). */
  pthread_mutex_t err_lock;
  _Atomic uint64_t next_seq, oldest; /* jobs [oldest, next_seq) may be incomplete */
  uint32_t n_workers, maxtasks, retries;
  uint64_t event_key;   /* the eventfd that wakes the supervisor, passed by key */
  mp__fnref_t *fns[MP__POOL_MAX_FNS]; /* blocks of the arena */
  mp__fn_t local_fns[MP__POOL_MAX_FNS]; /* the same, as pointers of the pool's process */
  mp__fnref_t *init_ref;  /* NULL: no initializer */
  mp__fn_t init_local;
  void *initargs;
  uint64_t initargs_size;
  struct {
    _Atomic uint64_t state; /* seq << 1 | active */
    /* Read between two reads of state (pin), which may find the slot reused meanwhile and
     * drop what they read: atomic, as a seqlock's data is (pin reads it with acquire). */
    _Atomic(mp__job_t *) job;
  } slots[MP__POOL_SLOTS];
  mp__job_waker_t wakers[MP__POOL_SLOTS + 1]; /* by slot, then the unpublished jobs' */
  mp__worker_rec_t workers[]; /* n_workers, then one for the supervisor's pins */
};

/* Bytes after each window slot's results, checked by the worker after each task. */
#define MP__JOB_CANARY 8
#define MP__JOB_CANARY_WORD 0x5d6d702d6a6f625bull /* "[boj-pm]" */

/* ------------------------------ the pool's side ------------------------------ */

typedef struct mp__jobs_s mp__jobs_t;

/* A table for n_workers, with its shared block. Errors: MP_ENOMEM. */
int mp__jobs_create(mp__jobs_t **out, uint32_t n_workers, unsigned maxtasks, unsigned retries);
/* Frees every block, the function table and the shared block: after every worker ended. */
void mp__jobs_free(mp__jobs_t *t);
/* The shared block, to hand to the launcher (opaque there). */
mp__pool_shared_t *mp__jobs_shared(const mp__jobs_t *t);
/* The eventfd that wakes the supervisor, passed to workers by key (the table keeps the key;
 * the caller keeps the fd). */
void mp__jobs_set_event_key(mp__jobs_t *t, uint64_t key);
/* The initializer, by identity, and a copy of its argument bytes. Errors: MP_ECROSS,
 * MP_ENOMEM. */
int mp__jobs_set_initializer(mp__jobs_t *t, mp__fn_t fn, const void *args, size_t size);
/* fn's index in the table, added on first use. Errors: MP_ELIMIT (more than
 * MP__POOL_MAX_FNS functions), MP_ECROSS, MP_ENOMEM. */
int mp__jobs_function(mp__jobs_t *t, mp__fn_t fn, uint32_t *index);

typedef struct {
  uint32_t fn; /* from mp__jobs_function */
  uint32_t flags;
  const void *items;
  uint64_t n, item_size, result_size, chunksize;
  uint32_t window;     /* 0: the whole map */
  uint64_t result_cap; /* MP__JOB_VARSIZE: a task's room, below result_size */
  /* A map's input written by this instead of copied from items (NULL: copied): n slots of
   * item_size bytes at dst, from the caller's items, during mp__jobs_submit. */
  void (*pack)(void *dst, const void *items, uint64_t n, uint64_t item_size);
} mp__job_spec_t;
/* Creates, fills and publishes a job (waiting for a free slot), and wakes workers. *job has
 * the owner's reference. Errors: MP_EINVAL (sizes that overflow), MP_ENOMEM, MP_ETERMINATED. */
int mp__jobs_submit(mp__jobs_t *t, const mp__job_spec_t *spec, mp__jobrec_t **job);
/* A map's result buffer of len bytes, which mp__job_take is to write: its pages are mapped
 * writable now, in one system call, where the copy would fault on each (a buffer still
 * shared copy-on-write with the workers forked after it was written, or never touched);
 * nothing for the buffer this thread prepared last with no fork since, whose pages are this
 * process's already. A blocking map calls it right after its submission, so that this runs
 * while the workers work. */
void mp__jobs_prepare_results(void *result, uint64_t len);
/* Drops the owner's reference. */
void mp__jobs_release(mp__jobs_t *t, mp__jobrec_t *job);

typedef struct {
  uint32_t fn; /* from mp__jobs_function */
  bool notify; /* MP__JOB_NOTIFY: it has callbacks */
  const void *arg;
  uint64_t size, result_max;
} mp__apply_spec_t;
/*
 * An apply. While no work is in flight it is a job of its own (chunk 0; its owner's record
 * is job->owner), as mp__jobs_submit makes one. Else it is appended, as the next chunk, to
 * the open batch (MP__JOB_BATCH) of the same function, result room and callbacks, if the
 * batch has room for it: no job block, slot or publication of its own, and a worker is
 * woken only if one is idle. A batch that cannot take it is closed (it completes once its
 * chunks are done) and a new one opened. The argument is copied before it returns. *job
 * has a reference (the caller's, for this apply alone: mp__jobs_release), *chunk its chunk.
 * Errors: MP_EINVAL (sizes that overflow), MP_ENOMEM, MP_ECLOSED, MP_ETERMINATED.
 */
int mp__jobs_apply(mp__jobs_t *t, const mp__apply_spec_t *spec, mp__jobrec_t **job,
                   uint32_t *chunk);
/* Closes the open batch, if any: it takes no more applies. */
void mp__jobs_close_batch(mp__jobs_t *t);
/*
 * Applies appended while the caller streams them (it appended since its last wait) may be
 * held back, up to hold of them, and shown to the workers together: each shown alone moved
 * the lines every claim reads from the workers, which took them back at once. A held apply
 * is shown by the next wait on any result (mp__jobs_flush), a close of its batch, the
 * hold-th append, or a worker that runs out of work (mp__pool_take_held); at once if a
 * worker sleeps. hold 0 or 1 (a new table's): none is held.
 */
void mp__jobs_set_hold(mp__jobs_t *t, unsigned hold);
/* Shows the workers the applies held back, before a wait on a result. */
void mp__jobs_flush(mp__jobs_t *t);
/* Worker w, about to sleep: shows itself the chunks held back in the batches in flight.
 * True if it raised a limit, so that a claim finds work. */
bool mp__pool_take_held(mp__pool_shared_t *sh, uint32_t w);
/* Where the owner of chunk keeps its record (MP__JOB_OWNER_BYTES, which the owner writes
 * whole; job->owner for a job of its own): in the job's record, out of the workers'
 * reach. */
void *mp__job_owner(mp__jobrec_t *job, uint32_t chunk);
/* A batch's chunk is done or failed. */
bool mp__job_chunk_finished(const mp__jobrec_t *job, uint32_t chunk);
/* The abort code of a finished chunk that a terminate failed, or 0. */
int mp__job_chunk_aborted(const mp__jobrec_t *job, uint32_t chunk);
/* mp__job_take for a batch's finished chunk, an apply's result: 0, the task's failure, or
 * MP_ETOOSMALL (nothing copied). */
int mp__job_take_chunk(const mp__jobrec_t *job, uint32_t chunk, void *result, size_t cap,
                       size_t *len);
/* mp__job_take_chunk for a chunk already done, with one look at its state word (no wait,
 * no look at failures): 1, nothing taken, if it is not done (failed included). */
int mp__job_take_done_chunk(const mp__jobrec_t *job, uint32_t chunk, void *result, size_t cap,
                            size_t *len);
/* Frees the blocks of jobs nobody refers to and no worker has pinned. */
void mp__jobs_reclaim(mp__jobs_t *t);
/* Worker w ended outside the protocol: the chunk it ran (its record says which, else the
 * owner fields do) is queued again or failed with MP_EWORKERDIED and `why`, naming the item
 * it ran; a count it left half-done is finished. */
void mp__jobs_worker_lost(mp__jobs_t *t, uint32_t w, const char *why);
/* Every chunk not done fails with code; every worker and slot waiter is woken. */
void mp__jobs_abort_all(mp__jobs_t *t, int code);
/* Jobs submitted and not complete. */
bool mp__jobs_work_left(const mp__jobs_t *t);
/* MP__POOL_CLOSED or MP__POOL_TERMINATED, set (and workers woken, and the open batch closed,
 * for close), or read. */
void mp__jobs_set_flag(mp__jobs_t *t, uint32_t flag);
uint32_t mp__jobs_flags(const mp__jobs_t *t);
/* Sets back in the shared block what a worker may have written wild (the supervisor's
 * timer): the flags this process set, a closed pool's count of submissions in flight if this
 * process counts none, next_seq and an oldest out of reach; and wakes the workers if it set
 * anything back. */
void mp__jobs_restore_flags(mp__jobs_t *t);

/* Worker records, written by the supervisor around a worker's life. */
void mp__jobs_worker_starting(mp__jobs_t *t, uint32_t w);
void mp__jobs_worker_started(mp__jobs_t *t, uint32_t w, int pid);
/* After its end: its pins and idle ticket dropped, its record empty. */
void mp__jobs_worker_gone(mp__jobs_t *t, uint32_t w);
uint32_t mp__jobs_worker_state(const mp__jobs_t *t, uint32_t w);
int mp__jobs_worker_pid(const mp__jobs_t *t, uint32_t w);
/* Why a worker's initializer failed (MP__WORKER_INIT_FAILED), or why it exited: a copy,
 * terminated, valid in the calling thread until its next call. */
const char *mp__jobs_worker_error(const mp__jobs_t *t, uint32_t w);
/* Workers in state READY. */
uint32_t mp__jobs_ready(const mp__jobs_t *t);
/* A futex word bumped when a worker changes state (and by mp__jobs_wake_status). */
_Atomic uint32_t *mp__jobs_status_word(mp__jobs_t *t);
void mp__jobs_wake_status(mp__jobs_t *t);

/* A job's outcome, once complete. */
bool mp__job_complete(const mp__jobrec_t *job);
int mp__job_aborted(const mp__jobrec_t *job); /* its abort code, or 0 */
/* Why a job with abort code `code` failed, for the sentence of its error. */
const char *mp__job_abort_reason(int code);
/* Waits until done(job, arg) or the deadline: 0 or MP_ETIMEDOUT. It spins 20 us first;
 * then it sleeps. Signals do not end the wait, except that an interruptible one returns
 * MP_EINTR once SIGINT arrived after it began (the one rule of signals.c). */
int mp__job_wait(mp__jobrec_t *job, bool (*done)(const mp__jobrec_t *job, void *arg), void *arg,
                 bool interruptible, int64_t deadline);
/* Copies a complete job's results out (a map's chunk by chunk, a failed chunk's zeroed; an
 * apply's result if it succeeded) and returns 0, or its first failure's code with its
 * sentence. cap below the length: MP_ETOOSMALL, nothing copied. *len (if not NULL): the
 * length. */
int mp__job_take(const mp__jobrec_t *job, bool is_apply, void *result, size_t cap, size_t *len);
/* A complete map's result i, in place (the block is the table's; read it before the
 * release), or NULL if its chunk failed. */
const char *mp__job_result(const mp__jobrec_t *job, uint64_t i);
/* Wakes the job's waiters, to look again (callbacks ran). */
void mp__job_wake_waiter(mp__jobrec_t *job);
/* Iterators: the chunk to deliver next (the ordered one, or any finished), or -1. */
int64_t mp__job_finished_chunk(const mp__jobrec_t *job, bool ordered, uint32_t next);
/* A finished chunk as an iterator delivers it, read once when it becomes the one delivered:
 * its state stays failed or done until it is returned (mp__jobs_return_chunk), and items
 * from fails_at on look at its failure record again (one written late, by a worker whose
 * chunk an abort took, is still seen), so items before fails_at are taken without reading
 * either. */
typedef struct {
  const char *results; /* its first item's result slot */
  uint64_t stride;     /* from one slot to the next (fixed-size: also the bytes copied) */
  uint64_t cap;        /* a variable-size result's room */
  uint64_t items;      /* its items */
  uint64_t fails_at;   /* the first of them that fails (items: none) */
  bool varsize;
} mp__chunk_view_t;
void mp__job_view_chunk(const mp__jobrec_t *job, uint32_t chunk, mp__chunk_view_t *view);
/* Item i (an index in the job) of chunk, at or past the view's fails_at: its failure (code,
 * sentence, *failed_item), or 0 if a worker rewrote the record since (the item is then
 * delivered as any other). */
int mp__job_item_failure(const mp__jobrec_t *job, uint32_t chunk, uint64_t i,
                         uint64_t *failed_item);
/* Item k of a viewed chunk, below its fails_at (or past it, once mp__job_item_failure found
 * no failure), copied into result (a variable-size result's bytes alone, at most cap of
 * them: result needs that much room); its length. */
static inline uint64_t mp__chunk_item(const mp__chunk_view_t *view, uint64_t k, void *result) {
  const char *slot = view->results + k * view->stride;
  uint64_t len = view->varsize ? mp__var_length(slot, view->cap) : view->stride;
  if (len)
    memcpy(result, view->varsize ? slot + MP__VARSIZE_HEAD : slot, len);
  return len;
}
/* Where an iterator's chunks come from: the caller's array (items), or for an MP__JOB_OPEN
 * job fill, which writes up to max item slots (of the job's item size) at slot and returns
 * how many it wrote: fewer than max ends the input. Called in the owner's thread; job is
 * for its look at an abort between two items (mp__job_aborted). */
typedef struct {
  const void *items;
  uint64_t (*fill)(void *arg, void *slot, uint64_t max, const mp__jobrec_t *job);
  void *arg;
} mp__feed_t;
/* A delivered chunk's window slot is free: feed the next chunks. */
void mp__jobs_return_chunk(mp__jobs_t *t, mp__jobrec_t *job, uint32_t chunk,
                           const mp__feed_t *feed);
/* Feeds the next chunk of an iterator if its window slot is free (true if it did). */
bool mp__jobs_feed(mp__jobs_t *t, mp__jobrec_t *job, const mp__feed_t *feed);
/* An iterator's chunks: all of them, or an open job's fed ones once its input ended
 * (UINT32_MAX before: more may come). */
uint32_t mp__job_chunks(const mp__jobrec_t *job);
/* Fails every chunk of the job not done with code; the job then completes. */
void mp__jobs_abort(mp__jobs_t *t, mp__jobrec_t *job, int code);
/* The number of items of a chunk, by the block (a worker's). */
uint64_t mp__job_chunk_items(const mp__job_t *job, uint32_t chunk);

/* Wakes the supervisor (an eventfd write); fd is this process's eventfd. */
void mp__pool_notify(int fd);

/* ------------------------------- a worker's side ------------------------------- */

/* The pages of job blocks a worker process has mapped in (its page tables are its own):
 * the last few blocks, by address and block_id, with a bit per page. */
#define MP__WARM_BLOCKS 4
typedef struct {
  struct {
    const void *block;
    uint64_t id;
    uint64_t *bits;
  } blocks[MP__WARM_BLOCKS];
  uint32_t next; /* the entry a new block replaces */
} mp__warm_t;
/* From this many bytes on, the pages a job or a chunk writes are mapped in advance. */
#define MP__PREFAULT_BYTES (64 * 1024)
/* Maps in, writable, the pages of task's output that this process has not mapped yet (one
 * system call where the task's first writes would fault once per page), and records them
 * in warm. For a worker of its own process, and an output of MP__PREFAULT_BYTES or more:
 * called through mp__pool_map_output. */
void mp__pool_map_large_output(mp__warm_t *warm, const mp__task_t *task);
/* The same for a large output only: the test inline, where a call at every chunk cost about
 * 1.5 of a map's 30 ns per chunk of one int. */
static inline void mp__pool_map_output(mp__warm_t *warm, const mp__task_t *task) {
  if (task->count * task->result_size >= MP__PREFAULT_BYTES) /* fits: job_create checked */
    mp__pool_map_large_output(warm, task);
}
void mp__warm_free(mp__warm_t *warm);

/* The pool is closed and every job submitted to it is done (none is pending): workers end. */
bool mp__pool_closed_and_done(mp__pool_shared_t *sh);
/* Sleeps until woken by new work, unless the work word moved past seen. */
void mp__pool_idle(mp__pool_shared_t *sh, uint32_t w, uint32_t seen);
/* Claims the oldest queued chunk of any job for worker w: true with its task view. */
bool mp__pool_claim(mp__pool_shared_t *sh, uint32_t w, mp__task_t *task);
/* The task's chunk is done (MP__CHUNK_DONE) or failed (MP__CHUNK_FAILED, with task->code,
 * task->failed_item and task->msg recorded): counted, its waiter woken, and if it was the
 * job's last, the job's slot freed. false if the chunk was lost or aborted first: then
 * nothing is recorded. With next (not NULL), the same job's next queued chunk is claimed
 * for w at once if that job is the oldest incomplete one (next->job is NULL if none was):
 * a stream of chunks costs no look at the job list and no pin per chunk. */
bool mp__pool_complete(mp__pool_shared_t *sh, uint32_t w, mp__task_t *task, uint32_t status,
                       int notify_fd, mp__task_t *next);

/* ----------------------- inside the table, for its unit test ----------------------- */

/* Points of races that a unit test plays out: hook, when not NULL (a test sets it; the
 * library never does), runs there with the job's block. A load and a branch not taken
 * otherwise, and only where a job is looked at, fed or settled, a worker goes idle or a
 * sleeper is woken, not per chunk of a run. */
enum {
  MP__RACE_QUEUED, /* a feed stored its chunk QUEUED, before its swap of the limit */
  MP__RACE_PINNED, /* a claim pinned a job, before it claims in it */
  MP__RACE_IDLE,   /* an idle worker counted itself, before its ticket (job: NULL) */
  MP__RACE_SETTLED, /* a settle won the job's slot, before it wakes anyone */
  MP__RACE_WAKING,  /* a wake-up took the waiters' count, before its bump (job: NULL) */
  MP__RACE_RETRY_SCAN, /* a claim scans the job for chunks queued again */
};
extern void (*mp__pool_race_hook)(int point, mp__job_t *job);
#define MP__RACE_POINT(point, job)                                                             \
  do {                                                                                         \
    if (__builtin_expect(mp__pool_race_hook != NULL, 0))                                       \
      mp__pool_race_hook(point, job);                                                          \
  } while (0)
/* The chunks counted done or failed. */
uint64_t mp__job_counted(const mp__jobrec_t *job);

/* Loses chunk of job, run by worker w, at item (see mp__jobs_worker_lost): true if queued
 * again, false if failed (or not w's). */
bool mp__job_lose_chunk(mp__jobs_t *t, mp__jobrec_t *job, uint32_t chunk, uint64_t item,
                        int code, const char *msg);
_Atomic uint64_t *mp__job_state(const mp__job_t *job, uint32_t chunk);

#endif /* MP_POOL_JOBS_H */
