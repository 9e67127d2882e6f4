/*
 * Synchronization primitives, Python's synchronize.py: Lock, RLock, Semaphore,
 * BoundedSemaphore, Event, Condition, Barrier. Every object is a block of the shared arena,
 * so a handle means the same object in every process, and every wait is a futex wait on a
 * word of it with an absolute CLOCK_MONOTONIC deadline (never a process-shared condition
 * variable: glibc bug 21422).
 *
 * What a death does to each (docs/architecture.md tells the whole story):
 *  - Lock, RLock: a robust process-shared mutex. The kernel releases it when its holder
 *    thread ends, and the next acquirer gets MP_EOWNERDEAD at once. A holder word naming a
 *    thread that ended, which the kernel never leaves, is MP_ECORRUPT after a 50 ms sleep.
 *  - Semaphore: an acquired permit is consumed (an item counter's item is taken): a death
 *    changes nothing.
 *  - BoundedSemaphore (lock-like: permits are held and given back): each process's
 *    acquired-minus-released permits are recorded in a slot by (pid, start time). A process
 *    that ends normally keeps what it took (consumed, as in Python); one that is killed
 *    holding permits has them returned by the first waiter that notices (blocked ones
 *    within SLICE_NS, one about to time out at once), and their acquirers get
 *    MP_EOWNERDEAD. A holder counts as killed only when that is certain (see proc_alive).
 *  - Condition: a waiter killed inside wait may absorb one notify (one that no live waiter
 *    took); a notify never wakes a thread that began waiting after it.
 *  - Barrier: a party that never arrives breaks it when a waiter's timeout passes.
 */
#include "internal.h"
#include "trace.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define LOCK_MAGIC 0x4b434f4cu      /* "LOCK" */
#define RLOCK_MAGIC 0x4b434c52u     /* "RLCK" */
#define INNER_MAGIC 0x4e4e4952u     /* "RINN": a Value's own RLock, inside its block */
#define SEMAPHORE_MAGIC 0x414d4553u /* "SEMA" */
#define EVENT_MAGIC 0x544e5645u     /* "EVNT" */
#define CONDITION_MAGIC 0x444e4f43u /* "COND" */
#define BARRIER_MAGIC 0x52524142u   /* "BARR" */

/* How often a blocked semaphore waiter looks for killed holders, and a condition's waiter
 * for a token that a killed waiter was woken for. */
#define SLICE_NS 50000000

/* ============================ who is calling ============================ */

/*
 * A thread is named by a program-wide number from the arena, taken on its first lock: unlike
 * a TID it is never reused, so a lock whose holder died can never look held by a newcomer.
 * A forked child's thread is another thread: the atfork handler forgets the number.
 */
static __thread __attribute__((tls_model("initial-exec"))) uint64_t thread_token;

static uint64_t self_token(void) {
  uint64_t token = thread_token;
  if (__builtin_expect(token == 0, 0))
    token = thread_token = mp__shared_unique();
  return token;
}

/* A process is named by (pid, start time): a pid alone is reused. The pid is its own pid
 * namespace's, so its start word's top bits name that namespace (mp__pidns_tag). */
typedef struct {
  int32_t pid;
  uint32_t count; /* for a semaphore slot: permits acquired and not released (saturates) */
  uint64_t start; /* namespace << START_NS_SHIFT | clock ticks after boot, /proc/<pid>/stat
                     field 22; each 0 if unknown */
} proc_id_t;
#define START_NS_SHIFT 43 /* ticks: millennia at 100 Hz; the namespace's 21 bits above */
#define START_TICKS(start) ((start) & ((UINT64_C(1) << START_NS_SHIFT) - 1))

/* Reads pid's start time: 0, -errno of the open or read, or -ESRCH for a zombie. */
static int proc_start(int32_t pid, uint64_t *start) {
  char state;
  int rc = mp__proc_stat(pid, &state, start);
  return rc == 0 && (state == 'Z' || state == 'X') ? -ESRCH : rc;
}

/*
 * False only when the process h provably ended: no such pid, a zombie, a pid now held by a
 * process that started at another time, or (when /proc worked as h was recorded and the pid
 * can be signalled) no /proc entry. Anything else (out of fds, no /proc, hidepid, EPERM)
 * counts as alive: a wrong "dead" would hand its permits to a second holder. So does a
 * process of another pid namespace than the caller's (its pid means another process here,
 * or none); and where /proc is not the caller's namespace's, kill alone judges.
 */
static bool proc_alive(proc_id_t h) {
  bool own = true;
  uint32_t ns = (uint32_t)(h.start >> START_NS_SHIFT);
  if (ns != 0 && ns != mp__pidns_tag(&own))
    return true;
  h.start = START_TICKS(h.start);
  int killed = kill(h.pid, 0) == 0 ? 0 : errno;
  if (killed == ESRCH)
    return false;
  if (ns != 0 && !own)
    return true;
  uint64_t start = 0;
  int rc = proc_start(h.pid, &start);
  if (rc == -ESRCH || (rc == -ENOENT && h.start != 0 && killed == 0))
    return false;
  return rc < 0 || h.start == 0 || start == h.start;
}

/* This process's name, found at its first need by whichever thread comes first: under a
 * lock, so that every thread gets the same start time even if one reading of /proc fails.
 * pid is stored last (release) and read first (acquire): once it is set, start is too. */
static struct {
  pthread_mutex_t lock;
  _Atomic int32_t pid; /* 0 until known; a forked child forgets it */
  _Atomic uint64_t start;
} self_id = {PTHREAD_MUTEX_INITIALIZER, 0, 0};

static proc_id_t self_process(void) {
  proc_id_t id = {.pid = atomic_load_explicit(&self_id.pid, memory_order_acquire)};
  if (__builtin_expect(id.pid == 0, 0)) {
    pthread_mutex_lock(&self_id.lock);
    if (atomic_load_explicit(&self_id.pid, memory_order_relaxed) == 0) {
      uint64_t start = 0;
      bool own;
      uint64_t ns = mp__pidns_tag(&own);
      if (own)                        /* else /proc/<pid> is another process */
        proc_start(getpid(), &start); /* left 0 (unknown) if /proc cannot tell */
      start = ns << START_NS_SHIFT | START_TICKS(start);
      atomic_store_explicit(&self_id.start, start, memory_order_relaxed);
      atomic_store_explicit(&self_id.pid, getpid(), memory_order_release);
    }
    pthread_mutex_unlock(&self_id.lock);
    id.pid = atomic_load_explicit(&self_id.pid, memory_order_relaxed);
  }
  id.start = atomic_load_explicit(&self_id.start, memory_order_relaxed);
  return id;
}

/* ================================ objects ================================ */

/* Every handle starts with its magic word: a NULL, foreign or freed handle (the arena's
 * free list overwrites the first word) is refused. */
static bool valid(const void *obj, uint32_t magic) {
  return obj && *(const uint32_t *)obj == magic;
}

static int invalid(const char *fn) {
  return mp__error(MP_EINVAL, "%s: the handle is NULL, closed or not this kind of object", fn);
}

#define NO_MUTEX SIZE_MAX

/* A new zeroed object with its magic, and its robust mutex at mutex_at (or NO_MUTEX). */
static int new_object(void *out, size_t size, uint32_t magic, size_t mutex_at) {
  void *block;
  int rc = mp__shared_alloc(&block, size);
  if (rc < 0)
    return rc; /* said by the arena */
  uint32_t *obj = block;
  rc = mutex_at == NO_MUTEX ? 0 : mp__mutex_init((pthread_mutex_t *)((char *)obj + mutex_at));
  if (rc < 0) {
    mp__shared_release_sized(obj, size);
    return rc;
  }
  *obj = magic;
  memcpy(out, &obj, sizeof obj);
  return 0;
}

static int retain(void *obj, uint32_t magic, const char *fn) {
  if (!valid(obj, magic))
    return invalid(fn);
  mp__shared_retain(obj);
  return 0;
}

static int release(void *obj, size_t size, uint32_t magic, const char *fn) {
  if (!valid(obj, magic))
    return invalid(fn);
  mp__shared_release_sized(obj, size);
  return 0;
}

/* ============================== Lock, RLock ============================== */

/* 56 bytes, so that a Value's own lock and a small element share one cache line: the
 * line the other contending processes take is then the only one that moves. */
struct mp_lock_s {
  uint32_t magic;         /* also the kind: LOCK, RLOCK or INNER (an RLock) */
  uint32_t depth;         /* levels held: always 1 for a Lock */
  _Atomic uint64_t owner; /* the holding thread's token, 0 if free */
  pthread_mutex_t mutex;
};

_Static_assert(sizeof(mp_lock_t) <= MP__INNER_LOCK_SIZE, "a lock fits its place in a Value");

static bool is_lock(const mp_lock_t *lock) {
  return lock && (lock->magic == LOCK_MAGIC || lock->magic == RLOCK_MAGIC ||
                  lock->magic == INNER_MAGIC);
}

/* The block whose references are the lock's: a Value's for its own lock. */
static void *lock_block(mp_lock_t *lock) {
  return lock->magic == INNER_MAGIC ? (char *)lock - MP__INNER_LOCK_AT : (void *)lock;
}

/* How a Value's or Array's block is released: by its size, which only sharedctypes.c (a
 * layer above) can read. NULL while no such object can exist (it is not linked in). */
static bool (*inner_release)(void *block);

void mp__lock_inner_release_set(bool (*release)(void *block)) {
  inner_release = release;
}

static bool lock_release(mp_lock_t *lock) {
  if (lock->magic != INNER_MAGIC)
    return mp__shared_release_sized(lock, sizeof *lock);
  return inner_release && inner_release(lock_block(lock));
}

static int lock_new(mp_lock_t **out, uint32_t magic, const char *fn) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: lock is NULL", fn);
  return new_object(out, sizeof **out, magic, offsetof(mp_lock_t, mutex));
}

int mp__lock_init_inner(mp_lock_t *lock) {
  int rc = mp__mutex_init(&lock->mutex);
  if (rc == 0)
    lock->magic = INNER_MAGIC;
  return rc;
}

int mp_lock_create(mp_lock_t **lock) {
  return lock_new(lock, LOCK_MAGIC, "mp_lock_create");
}

int mp_rlock_create(mp_lock_t **lock) {
  return lock_new(lock, RLOCK_MAGIC, "mp_rlock_create");
}

static bool held_by(const mp_lock_t *lock, uint64_t me) {
  return atomic_load_explicit(&lock->owner, memory_order_relaxed) == me;
}

/* Takes the mutex and records the caller: 0, MP_EOWNERDEAD or an error; MP_EINTR (nothing
 * taken) if SIGINT comes while an interruptible caller waits. */
static int lock_take(mp_lock_t *lock, uint64_t me, uint32_t depth, int64_t deadline,
                     bool interruptible) {
  MP__TRACE_CLOCK(t0);
  int rc = interruptible ? mp__mutex_lock_sig(&lock->mutex, deadline)
                         : mp__mutex_lock(&lock->mutex, deadline);
  MP__TRACE(acquired, MP__TRK_LOCK + (lock->magic != LOCK_MAGIC), lock, t0, rc);
  if (rc == MP_ETIMEDOUT)
    return mp__error(rc, "acquiring a lock: timed out");
  if (rc == MP_EINTR)
    return mp__error(rc, "acquiring a lock: interrupted by SIGINT");
  if (rc < 0 && rc != MP_EOWNERDEAD)
    return mp__error_prefix(rc, "acquiring a lock"); /* MP_ECORRUPT: a wild owner word */
  atomic_store_explicit(&lock->owner, me, memory_order_relaxed);
  lock->depth = depth;
  return rc;
}

/* Gives the mutex up whatever its depth; returns the depth, for lock_take to restore. */
static uint32_t lock_drop(mp_lock_t *lock) {
  MP__TRACE(released, MP__TRK_LOCK + (lock->magic != LOCK_MAGIC), lock);
  uint32_t depth = lock->depth;
  lock->depth = 0;
  atomic_store_explicit(&lock->owner, 0, memory_order_relaxed);
  mp__mutex_unlock(&lock->mutex);
  return depth;
}

int mp_lock_acquire(mp_lock_t *lock, double timeout) {
  if (!is_lock(lock))
    return invalid("mp_lock_acquire");
  uint64_t me = self_token();
  if (lock->magic != LOCK_MAGIC && held_by(lock, me)) {
    if (lock->depth == UINT32_MAX)
      return mp__error(MP_ETOOMANY, "mp_lock_acquire: the RLock is held 2^32-1 times");
    lock->depth++;
    return 0;
  }
  return lock_take(lock, me, 1, mp__deadline(timeout), true);
}

int mp_lock_release(mp_lock_t *lock) {
  if (!is_lock(lock))
    return invalid("mp_lock_release");
  if (!held_by(lock, self_token()))
    return mp__error(MP_ENOTHELD, "mp_lock_release: the calling thread does not hold the %s",
                     lock->magic == LOCK_MAGIC ? "Lock" : "RLock");
  if (--lock->depth > 0)
    return 0;
  MP__TRACE(released, MP__TRK_LOCK + (lock->magic != LOCK_MAGIC), lock);
  atomic_store_explicit(&lock->owner, 0, memory_order_relaxed);
  int rc = mp__mutex_unlock(&lock->mutex);
  if (rc < 0) { /* still held: still the caller's */
    atomic_store_explicit(&lock->owner, self_token(), memory_order_relaxed);
    lock->depth = 1;
    return mp__error_prefix(rc, "mp_lock_release");
  }
  return 0;
}

bool mp_lock_is_owned(const mp_lock_t *lock) {
  return is_lock(lock) && held_by(lock, self_token());
}

int mp_lock_retain(mp_lock_t *lock) {
  if (!is_lock(lock))
    return invalid("mp_lock_retain");
  mp__shared_retain(lock_block(lock));
  return 0;
}

int mp_lock_close(mp_lock_t *lock) {
  if (!is_lock(lock))
    return invalid("mp_lock_close");
  lock_release(lock);
  return 0;
}

int mp__lock_check(const mp_lock_t *lock) {
  return is_lock(lock) ? 0 : MP_EINVAL;
}

bool mp__lock_placed(const mp_lock_t *lock) {
  void *value = (void *)((uintptr_t)lock - MP__INNER_LOCK_AT);
  return mp__shared_is_block(lock, sizeof *lock) ||
         mp__shared_is_block(value, MP__INNER_LOCK_AT + sizeof *lock);
}

/* ========================== the locks a process gave ========================== */

/*
 * A Condition's lock (a caller's, or its own RLock), and a Value's or Array's lock in a block
 * of its own (a caller's, or an MP_TYPE_BYTES typecode's own RLock), hold a reference that
 * the object took at creation, to be dropped when the object is freed. The object's lock
 * word cannot say which lock that is: any process of the program may write it, and pointed
 * at another live Lock, or at a Value's own lock (which an object may legitimately use), it
 * would make the last close drop a reference the object never took, and free a lock or a
 * Value still in use. So the process that took the reference keeps it here, by block, and
 * drops it when a close of its own frees the block (mp__given_release). Elsewhere (a spawned
 * child; a forked child, whose handler forgets its parent's entries) a last close leaves the
 * reference: the lock leaks until the program ends. An entry whose block another process
 * freed stays until a close here frees whatever is made there next, or a create here takes
 * the block again: the reference is still the old object's, which nobody else drops, so it
 * is dropped then.
 */
typedef struct {
  const void *block; /* NULL: a free slot */
  mp_lock_t *lock;
} given_t;

typedef struct {
  size_t cap; /* a power of two: slots, by linear probing from slot_of */
  size_t n;
  given_t slot[];
} given_table_t;

/* The table is one pointer, stored once its copy is filled: a child forked while another
 * thread grows it finds a whole table to clear. The lock is held around a close's release
 * too, so that no create here takes the block between its free and the entry's removal
 * (and drops the lock a second time, as the leftover of an object freed elsewhere). */
static struct {
  pthread_mutex_t lock;
  given_table_t *_Atomic table;
} given = {PTHREAD_MUTEX_INITIALIZER, NULL};

static size_t slot_of(const void *block, size_t cap) {
  return (size_t)(((uintptr_t)block >> 6) * 0x9e3779b97f4a7c15ull >> 32) & (cap - 1);
}

/* The slot of block, or of the free slot where it would go. */
static size_t find_slot(const given_table_t *t, const void *block) {
  size_t i = slot_of(block, t->cap);
  while (t->slot[i].block && t->slot[i].block != block)
    i = (i + 1) & (t->cap - 1);
  return i;
}

/* Room for one more entry, at most 3/4 full; false out of memory. Under given.lock. */
static bool given_room(void) {
  given_table_t *t = atomic_load_explicit(&given.table, memory_order_relaxed);
  if (t && 4 * (t->n + 1) <= 3 * t->cap)
    return true;
  size_t cap = t ? 2 * t->cap : 64;
  given_table_t *grown = calloc(1, sizeof *grown + cap * sizeof grown->slot[0]);
  if (!grown)
    return false;
  grown->cap = cap;
  for (size_t i = 0; t && i < t->cap; i++)
    if (t->slot[i].block)
      grown->slot[find_slot(grown, t->slot[i].block)] = t->slot[i];
  grown->n = t ? t->n : 0;
  atomic_store_explicit(&given.table, grown, memory_order_release);
  free(t);
  return true;
}

int mp__given_add(const void *block, mp_lock_t *lock, const char *fn) {
  pthread_mutex_lock(&given.lock);
  mp_lock_t *old = NULL;
  bool room = given_room();
  if (room) {
    given_table_t *t = atomic_load_explicit(&given.table, memory_order_relaxed);
    given_t *e = &t->slot[find_slot(t, block)];
    if (e->block)
      old = e->lock; /* left by an object freed elsewhere: its reference, dropped now */
    else
      t->n++;
    *e = (given_t){block, lock};
  }
  pthread_mutex_unlock(&given.lock);
  if (old)
    mp_lock_close(old);
  return room ? 0 : mp__error(MP_ENOMEM, "%s: no memory to remember the lock", fn);
}

/* Removes block's entry: the lock it held a reference to, or NULL. Under given.lock. */
static mp_lock_t *given_take(const void *block) {
  given_table_t *t = atomic_load_explicit(&given.table, memory_order_relaxed);
  if (!t || t->n == 0)
    return NULL;
  size_t mask = t->cap - 1, i = find_slot(t, block);
  if (!t->slot[i].block)
    return NULL;
  mp_lock_t *lock = t->slot[i].lock;
  /* Backward shift: each later entry of the run that may sit at i moves there. */
  for (size_t j = (i + 1) & mask; t->slot[j].block; j = (j + 1) & mask) {
    size_t home = slot_of(t->slot[j].block, t->cap);
    if (((j - home) & mask) >= ((j - i) & mask)) {
      t->slot[i] = t->slot[j];
      i = j;
    }
  }
  t->slot[i] = (given_t){NULL, NULL};
  t->n--;
  return lock;
}

void mp__given_release(void *block, bool (*release)(void *block)) {
  pthread_mutex_lock(&given.lock);
  mp_lock_t *lock = release(block) ? given_take(block) : NULL;
  pthread_mutex_unlock(&given.lock);
  if (lock)
    mp_lock_close(lock);
}

/* In a forked child: the references are the parent's, to be dropped there. */
MP__CHILD_TEXT static void forget_given(void) {
  mp__reset_lock(&given.lock);
  given_table_t *t = atomic_load_explicit(&given.table, memory_order_relaxed);
  if (t && t->n) {
    memset(t->slot, 0, t->cap * sizeof t->slot[0]);
    t->n = 0;
  }
}

/* ======================= Semaphore, BoundedSemaphore ======================= */

#define HOLDER_SLOTS 32

struct mp_semaphore_s {
  uint32_t magic;
  uint32_t bounded;
  int32_t initial;
  _Atomic uint32_t seq;      /* futex word: bumped whenever permits are added */
  _Atomic uint32_t sleepers; /* waiters that may be in a futex wait on seq */
  pthread_mutex_t mutex;     /* guards what follows; held for a few stores only */
  int32_t value;
  uint32_t reclaimed;      /* permits returned from killed holders and not yet re-acquired */
  _Atomic int64_t scanned; /* when holders were last looked for (CLOCK_MONOTONIC ns) */
  /* The change under way, written before it is made: the process that locks the mutex
   * after its holder died makes it again, so value and slots always agree. */
  struct {
    _Atomic uint32_t valid;
    int32_t value;
    uint32_t slot;
    proc_id_t holder;
  } redo;
  proc_id_t holders[HOLDER_SLOTS];
};

/* The semaphores this process holds permits of, each with a reference: at a normal exit
 * the process gives up its slots (what it took is consumed, not lost), and the reference
 * keeps the semaphore there until then. An entry is added and removed under the semaphore's
 * mutex, with the change of the slot that calls for it, so that two threads handing a permit
 * between them leave the list as the slot is. A release by another process empties the slot
 * without a word to this one: the entry stays until a release here empties the slot, a close
 * here finds it empty, or the process ends (api.md). Lock order: a semaphore's mutex, then
 * held.lock. */
static struct {
  pthread_mutex_t lock;
  mp_semaphore_t **sems;
  size_t n, cap;
} held = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};

/* sem's place on the list, or held.n if it is not there. Under held.lock. */
static size_t held_find(const mp_semaphore_t *sem) {
  size_t i = 0;
  while (i < held.n && held.sems[i] != sem)
    i++;
  return i;
}

/* Listed once however often it is taken again: a release by another process empties this
 * process's slot, and the next acquire finds the slot empty again. Under sem's mutex. */
static void held_add(mp_semaphore_t *sem) {
  pthread_mutex_lock(&held.lock);
  if (held_find(sem) < held.n) {
    pthread_mutex_unlock(&held.lock);
    return;
  }
  if (held.n == held.cap) {
    /* Copied, then stored, then the old one freed: a child forked meanwhile by another
     * thread keeps an array that is whole and not freed (realloc frees it before the store). */
    size_t cap = held.cap ? held.cap * 2 : 8;
    mp_semaphore_t **grown = malloc(cap * sizeof *grown), **old = held.sems;
    if (!grown) { /* the slot is then cleared only by the process's death */
      pthread_mutex_unlock(&held.lock);
      return;
    }
    if (held.n)
      memcpy(grown, old, held.n * sizeof *grown);
    __atomic_store_n(&held.sems, grown, __ATOMIC_RELEASE);
    held.cap = cap;
    free(old);
  }
  mp__shared_retain(sem);
  held.sems[held.n] = sem;
  __atomic_store_n(&held.n, held.n + 1, __ATOMIC_RELAXED); /* read unlocked at exit */
  pthread_mutex_unlock(&held.lock);
}

/* Whether sem is on the list (it may leave it meanwhile: a look, not a decision). */
static bool held_lists(const mp_semaphore_t *sem) {
  pthread_mutex_lock(&held.lock);
  bool listed = held_find(sem) < held.n;
  pthread_mutex_unlock(&held.lock);
  return listed;
}

/* Takes sem off the list: true if it was there, and its reference is then the caller's to
 * drop, once it has unlocked sem's mutex (under which this runs). */
static bool held_unlist(mp_semaphore_t *sem) {
  pthread_mutex_lock(&held.lock);
  size_t i = held_find(sem);
  bool listed = i < held.n;
  if (listed) {
    held.sems[i] = held.sems[held.n - 1];
    __atomic_store_n(&held.n, held.n - 1, __ATOMIC_RELAXED);
  }
  pthread_mutex_unlock(&held.lock);
  return listed;
}

/* Written under the mutex but read without it (mp_semaphore_value): an atomic store, so
 * that the read races nothing. */
static void set_value(mp_semaphore_t *sem, int32_t value) {
  __atomic_store_n(&sem->value, value, __ATOMIC_RELAXED);
}

static int sem_lock(mp_semaphore_t *sem) {
  int rc = mp__mutex_lock(&sem->mutex, INT64_MAX);
  if (rc == MP_EOWNERDEAD && atomic_load(&sem->redo.valid)) {
    uint32_t slot = sem->redo.slot; /* read once: the bound checked is the bound used */
    atomic_store(&sem->redo.valid, 0);
    if (slot >= HOLDER_SLOTS) { /* libmp never wrote it: the record is dropped */
      mp__mutex_unlock(&sem->mutex);
      return mp__error(MP_ECORRUPT,
                       "the semaphore's shared memory is corrupt: its redo record names "
                       "slot %u of %u (dropped)",
                       slot, HOLDER_SLOTS);
    }
    set_value(sem, sem->redo.value);
    sem->holders[slot] = sem->redo.holder;
  }
  return rc == MP_EOWNERDEAD ? 0 : rc;
}

/* Sets the value and one slot as one change (see redo). */
static void sem_commit(mp_semaphore_t *sem, int32_t value, uint32_t slot, proc_id_t holder) {
  sem->redo.value = value;
  sem->redo.slot = slot;
  sem->redo.holder = holder;
  atomic_store(&sem->redo.valid, 1);
  set_value(sem, value);
  sem->holders[slot] = holder;
  atomic_store(&sem->redo.valid, 0);
}

/* The caller's slot, or a free one (count 0), or HOLDER_SLOTS if none. */
static uint32_t sem_slot(const mp_semaphore_t *sem, proc_id_t me) {
  uint32_t free_slot = HOLDER_SLOTS;
  for (uint32_t i = 0; i < HOLDER_SLOTS; i++) {
    if (sem->holders[i].pid == me.pid && sem->holders[i].start == me.start &&
        sem->holders[i].count > 0)
      return i;
    if (sem->holders[i].count == 0 && free_slot == HOLDER_SLOTS)
      free_slot = i;
  }
  return free_slot;
}

/*
 * A BoundedSemaphore's permits held by killed processes go back to it (never above its
 * initial value). The /proc reads run outside the mutex, on a copy of the slots, and the
 * blocked waiters of all processes share one look per SLICE_NS (force: look now). True if
 * permits came back. A plain Semaphore's acquired permits are consumed: nothing to return.
 */
static bool sem_reclaim(mp_semaphore_t *sem, bool force) {
  int64_t now = mp__now_ns(), last = atomic_load(&sem->scanned);
  /* Unsigned, and a look "in the future" counts as none: a wild word neither overflows nor
   * stops the looks. */
  bool recent = last <= now && (uint64_t)now - (uint64_t)last < SLICE_NS;
  if (!sem->bounded ||
      (!force && (recent || !atomic_compare_exchange_strong(&sem->scanned, &last, now))))
    return false;
  proc_id_t seen[HOLDER_SLOTS];
  if (sem_lock(sem) < 0)
    return false;
  memcpy(seen, sem->holders, sizeof seen);
  mp__mutex_unlock(&sem->mutex);
  bool dead[HOLDER_SLOTS], any = false;
  for (uint32_t i = 0; i < HOLDER_SLOTS; i++)
    any |= dead[i] = seen[i].count > 0 && !proc_alive(seen[i]);
  if (!any || sem_lock(sem) < 0)
    return false;
  uint32_t returned = 0;
  for (uint32_t i = 0; i < HOLDER_SLOTS; i++) {
    proc_id_t h = sem->holders[i];
    if (!dead[i] || h.count == 0 || h.pid != seen[i].pid || h.start != seen[i].start)
      continue; /* the slot changed hands meanwhile: its new holder is alive */
    uint32_t room = (uint32_t)(sem->initial - sem->value);
    uint32_t n = h.count < room ? h.count : room;
    sem_commit(sem, sem->value + (int32_t)n, i, (proc_id_t){0, 0, 0});
    returned += n;
  }
  if (returned) {
    sem->reclaimed += returned;
    atomic_fetch_add(&sem->seq, 1);
    mp__futex_wake(&sem->seq, INT32_MAX);
  }
  mp__mutex_unlock(&sem->mutex);
  return returned > 0;
}

static int sem_new(mp_semaphore_t **out, int value, bool bounded, const char *fn) {
  if (!out || value < 0)
    return mp__error(MP_EINVAL, out ? "%s: value %d is negative" : "%s: sem is NULL", fn,
                     value);
  mp_semaphore_t *sem;
  int rc = new_object(&sem, sizeof *sem, SEMAPHORE_MAGIC, offsetof(mp_semaphore_t, mutex));
  if (rc < 0)
    return rc;
  sem->bounded = bounded;
  sem->initial = value;
  sem->value = value;
  *out = sem;
  return 0;
}

int mp_semaphore_create(mp_semaphore_t **sem, int value) {
  return sem_new(sem, value, false, "mp_semaphore_create");
}

int mp_bounded_semaphore_create(mp_semaphore_t **sem, int value) {
  return sem_new(sem, value, true, "mp_bounded_semaphore_create");
}

int mp_semaphore_acquire(mp_semaphore_t *sem, double timeout) {
  if (!valid(sem, SEMAPHORE_MAGIC))
    return invalid("mp_semaphore_acquire");
  int64_t deadline = mp__deadline(timeout);
  MP__TRACE_CLOCK(t0);
  proc_id_t me = self_process();
  bool looked = false;
  mp__sigint_t sigint = {NULL, 0};
  for (;;) {
    int rc = sem_lock(sem);
    if (rc < 0)
      return rc;
    if (sem->value > 0) {
      /* Only a BoundedSemaphore's permits are held (and given back if the holder is
       * killed); a full table leaves the permit untracked. */
      uint32_t slot = sem->bounded ? sem_slot(sem, me) : HOLDER_SLOTS;
      bool first = false;
      if (slot < HOLDER_SLOTS) {
        proc_id_t h = sem->holders[slot];
        first = h.count == 0;
        h = first ? me : h;
        h.count += h.count < UINT32_MAX; /* saturates: reclaim caps at the initial value */
        sem_commit(sem, sem->value - 1, slot, h);
      } else {
        set_value(sem, sem->value - 1);
      }
      bool dead = sem->reclaimed > 0;
      if (dead)
        sem->reclaimed--;
      if (first)
        held_add(sem);
      mp__mutex_unlock(&sem->mutex);
      MP__TRACE(acquired, MP__TRK_SEMAPHORE + sem->bounded, sem, t0, 0);
      return dead ? mp__error(MP_EOWNERDEAD, "mp_semaphore_acquire: the permit was held by "
                                             "a process that was killed")
                  : 0;
    }
    uint32_t seen = atomic_load(&sem->seq);
    int64_t now = mp__now_ns();
    if (now >= deadline) {
      mp__mutex_unlock(&sem->mutex);
      /* Before giving up (at once, for a timeout of 0), look for killed holders once. */
      if (!looked && (looked = true, sem_reclaim(sem, true)))
        continue;
      MP__TRACE(acquired, MP__TRK_SEMAPHORE + sem->bounded, sem, t0, MP_ETIMEDOUT);
      return mp__error(MP_ETIMEDOUT, "mp_semaphore_acquire: timed out");
    }
    if (!sigint.counter) /* taken at the first sleep: no system call when not blocking */
      mp__sigint_begin(&sigint);
    atomic_fetch_add(&sem->sleepers, 1);
    mp__mutex_unlock(&sem->mutex);
    int64_t until = deadline - now > SLICE_NS ? now + SLICE_NS : deadline;
    rc = mp__futex_wait_sig(&sem->seq, seen, until);
    atomic_fetch_sub(&sem->sleepers, 1);
    if (rc == MP_EINTR && mp__sigint_arrived(&sigint)) {
      MP__TRACE(acquired, MP__TRK_SEMAPHORE + sem->bounded, sem, t0, MP_EINTR);
      return mp__error(MP_EINTR, "mp_semaphore_acquire: interrupted by SIGINT");
    }
    if (rc == MP_ETIMEDOUT && until < deadline)
      sem_reclaim(sem, false);
  }
}

int mp_semaphore_release(mp_semaphore_t *sem) {
  if (!valid(sem, SEMAPHORE_MAGIC))
    return invalid("mp_semaphore_release");
  int rc = sem_lock(sem);
  if (rc < 0)
    return rc;
  if ((sem->bounded && sem->value >= sem->initial) || sem->value == INT32_MAX) {
    mp__mutex_unlock(&sem->mutex);
    return mp__error(MP_ETOOMANY, "mp_semaphore_release: %s",
                     sem->bounded ? "released more times than acquired"
                                  : "the value is at INT32_MAX");
  }
  uint32_t slot = sem->bounded ? sem_slot(sem, self_process()) : HOLDER_SLOTS;
  proc_id_t h = slot < HOLDER_SLOTS ? sem->holders[slot] : (proc_id_t){0, 0, 0};
  bool mine = h.count > 0;
  /* Released for another process: off a holder's record (the holder's, when there is only
   * one), else that record would return the permit again at its holder's death. */
  for (uint32_t i = 0; sem->bounded && h.count == 0 && i < HOLDER_SLOTS; i++)
    h = sem->holders[slot = i];
  if (h.count > 0) {
    h.count--;
    sem_commit(sem, sem->value + 1, slot, h);
  } else {
    set_value(sem, sem->value + 1);
  }
  atomic_fetch_add(&sem->seq, 1);
  if (atomic_load(&sem->sleepers) > 0)
    mp__futex_wake(&sem->seq, 1);
  bool unlisted = mine && h.count == 0 && held_unlist(sem);
  mp__mutex_unlock(&sem->mutex);
  if (unlisted)
    mp__shared_release_sized(sem, sizeof *sem);
  MP__TRACE(released, MP__TRK_SEMAPHORE + sem->bounded, sem);
  return 0;
}

int mp_semaphore_value(mp_semaphore_t *sem) {
  if (!valid(sem, SEMAPHORE_MAGIC))
    return invalid("mp_semaphore_value");
  return __atomic_load_n(&sem->value, __ATOMIC_RELAXED);
}

int mp_semaphore_retain(mp_semaphore_t *sem) {
  return retain(sem, SEMAPHORE_MAGIC, "mp_semaphore_retain");
}

/* A producer and a consumer end with the consumer's release, which empties the producer's
 * slot: the producer's close drops its entry then, or the semaphore would outlive its last
 * close for as long as the producer runs. Only a process that lists it takes its mutex. */
int mp_semaphore_close(mp_semaphore_t *sem) {
  if (!valid(sem, SEMAPHORE_MAGIC))
    return invalid("mp_semaphore_close");
  if (sem->bounded && held_lists(sem) && sem_lock(sem) == 0) {
    uint32_t slot = sem_slot(sem, self_process());
    bool unlisted = (slot == HOLDER_SLOTS || sem->holders[slot].count == 0) && held_unlist(sem);
    mp__mutex_unlock(&sem->mutex);
    if (unlisted)
      mp__shared_release_sized(sem, sizeof *sem);
  }
  return release(sem, sizeof *sem, SEMAPHORE_MAGIC, "mp_semaphore_close");
}

/* A normal end: permits this process took and kept are consumed, so its slots go. Child
 * text (MP__CHILD_TEXT): every child libmp starts runs it at its end. */
MP__CHILD_TEXT static void semaphores_at_exit(void) {
  /* The common case, with no /proc read: a process that holds none. */
  if (__atomic_load_n(&held.n, __ATOMIC_RELAXED) == 0)
    return;
  proc_id_t me = self_process();
  /* Taken out of the list first: a semaphore's mutex is not locked under held.lock. */
  pthread_mutex_lock(&held.lock);
  mp_semaphore_t **sems = held.sems;
  size_t n = held.n;
  held.sems = NULL;
  held.cap = 0;
  __atomic_store_n(&held.n, 0, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&held.lock);
  for (size_t i = 0; i < n; i++) {
    mp_semaphore_t *sem = sems[i];
    if (sem_lock(sem) == 0) {
      uint32_t slot = sem_slot(sem, me);
      if (slot < HOLDER_SLOTS && sem->holders[slot].pid == me.pid)
        sem_commit(sem, sem->value, slot, (proc_id_t){0, 0, 0});
      mp__mutex_unlock(&sem->mutex);
    }
    mp__shared_release_sized(sem, sizeof *sem);
  }
  free(sems);
}

/* ================================ Event ================================ */

struct mp_event_s {
  uint32_t magic;
  /* Futex word: bit 0 is the flag, the rest counts sets, so that a waiter sees that a set
   * happened even if a clear followed before it woke. */
  _Atomic uint32_t state;
  _Atomic uint32_t sleepers;
};

int mp_event_create(mp_event_t **event) {
  if (!event)
    return mp__error(MP_EINVAL, "mp_event_create: event is NULL");
  return new_object(event, sizeof **event, EVENT_MAGIC, NO_MUTEX);
}

int mp_event_set(mp_event_t *event) {
  if (!valid(event, EVENT_MAGIC))
    return invalid("mp_event_set");
  uint32_t s = atomic_load(&event->state);
  while (!(s & 1) && !atomic_compare_exchange_weak(&event->state, &s, (s + 2) | 1)) {
  }
  /* Already set: a write all the same, so that what this setter wrote before is ordered
   * before a waiter's return, as Python's set() (under its lock) orders it. */
  if (s & 1)
    atomic_fetch_add(&event->state, 0);
  /* The sleeper counts itself before it reads the state, we after we change it: one of
   * the two sees the other. */
  if (atomic_load(&event->sleepers) > 0)
    mp__futex_wake(&event->state, INT32_MAX);
  return 0;
}

int mp_event_clear(mp_event_t *event) {
  if (!valid(event, EVENT_MAGIC))
    return invalid("mp_event_clear");
  atomic_fetch_and(&event->state, ~1u);
  return 0;
}

bool mp_event_is_set(const mp_event_t *event) {
  return valid(event, EVENT_MAGIC) && (atomic_load(&((mp_event_t *)event)->state) & 1);
}

int mp_event_wait(mp_event_t *event, double timeout) {
  if (!valid(event, EVENT_MAGIC))
    return invalid("mp_event_wait");
  uint32_t s = atomic_load(&event->state);
  if (s & 1)
    return 0;
  int64_t deadline = mp__deadline(timeout);
  MP__TRACE_CLOCK(t0);
  int rc = 0;
  bool was_set = false, interrupted = false;
  mp__sigint_t sigint;
  mp__sigint_begin(&sigint);
  if (deadline == INT64_MAX)
    deadline = INT64_MAX - 1; /* so that a handler ends the wait (signals.c) */
  atomic_fetch_add(&event->sleepers, 1);
  for (;;) {
    /* s is a clear state: any change from it is a set. */
    if ((was_set = atomic_load(&event->state) != s) || rc == MP_ETIMEDOUT || interrupted)
      break;
    rc = mp__futex_wait_sig(&event->state, s, deadline);
    interrupted = rc == MP_EINTR && mp__sigint_arrived(&sigint);
  }
  atomic_fetch_sub(&event->sleepers, 1);
  MP__TRACE(waited, MP__TRK_EVENT, event, t0, was_set);
  if (was_set)
    return 0;
  return interrupted ? mp__error(MP_EINTR, "mp_event_wait: interrupted by SIGINT")
                     : mp__error(MP_ETIMEDOUT, "mp_event_wait: timed out");
}

int mp_event_retain(mp_event_t *event) {
  return retain(event, EVENT_MAGIC, "mp_event_retain");
}

int mp_event_close(mp_event_t *event) {
  return release(event, sizeof *event, EVENT_MAGIC, "mp_event_close");
}

/* ================================ Condition ================================ */

/*
 * Waiters are counted, not listed, and every count changes under the condition's lock. A
 * waiter notes the generation (gen) when it starts. notify(n) starts generation g + 1 with a
 * batch of min(n, waiters without a token) tokens, bumps seq (the futex word) and wakes that
 * many. A token of generation g may only be taken by a waiter that started before g, and a
 * waiter takes the oldest it may (that never strands a newer waiter): a later waiter never
 * takes a wake-up meant for an earlier one, a timed wait that no notify followed times out,
 * and a batch nobody alive may take (its waiters were killed) is never taken by anyone
 * else: a killed waiter absorbs at most one notify, and only one no live waiter took. Past
 * TOKEN_GENS batches the two oldest merge (the merged tokens then go to a wider set of
 * waiters: an extra wake-up, never a lost one).
 */
#define TOKEN_GENS 8

struct mp_condition_s {
  uint32_t magic;
  _Atomic uint32_t seq;
  uint64_t gen;     /* notifies that made tokens */
  uint32_t waiting; /* threads in wait, killed ones included */
  uint32_t tokens;  /* the sum of the batches */
  uint32_t batches; /* in use, oldest first */
  struct {
    uint64_t gen; /* takeable by waiters that began before it */
    uint32_t n;
  } batch[TOKEN_GENS];
  mp_lock_t *lock;
};

int mp_condition_create(mp_condition_t **out, mp_lock_t *lock) {
  if (!out)
    return mp__error(MP_EINVAL, "mp_condition_create: cond is NULL");
  if (lock && !is_lock(lock))
    return invalid("mp_condition_create");
  int rc = lock ? mp_lock_retain(lock) : mp_rlock_create(&lock);
  if (rc < 0)
    return rc;
  mp_condition_t *cond = NULL;
  rc = new_object(&cond, sizeof *cond, CONDITION_MAGIC, NO_MUTEX);
  if (rc == 0 && (rc = mp__given_add(cond, lock, "mp_condition_create")) < 0)
    mp__shared_release_sized(cond, sizeof *cond);
  if (rc < 0) {
    mp_lock_close(lock);
    return rc;
  }
  cond->lock = lock;
  *out = cond;
  return 0;
}

/* The condition's lock, an address in shared memory: followed only if it is placed as libmp
 * places a lock (else NULL). */
static mp_lock_t *cond_lock(const mp_condition_t *cond) {
  mp_lock_t *lock = cond->lock;
  return mp__lock_placed(lock) && is_lock(lock) ? lock : NULL;
}

/* Checks the handle and its lock: 0 and *lock, or an error. */
static int cond_open(const mp_condition_t *cond, mp_lock_t **lock, const char *fn) {
  if (!valid(cond, CONDITION_MAGIC))
    return invalid(fn);
  if (!(*lock = cond_lock(cond)))
    return mp__error(MP_ECORRUPT,
                     "%s: the condition's shared memory is corrupt: its lock's address %p is "
                     "not a lock (left as it is)",
                     fn, (void *)cond->lock);
  return 0;
}

mp_lock_t *mp_condition_lock(const mp_condition_t *cond) {
  return valid(cond, CONDITION_MAGIC) ? cond_lock(cond) : NULL;
}

int mp_condition_acquire(mp_condition_t *cond, double timeout) {
  mp_lock_t *lock;
  int rc = cond_open(cond, &lock, "mp_condition_acquire");
  return rc < 0 ? rc : mp_lock_acquire(lock, timeout);
}

int mp_condition_release(mp_condition_t *cond) {
  mp_lock_t *lock;
  int rc = cond_open(cond, &lock, "mp_condition_release");
  return rc < 0 ? rc : mp_lock_release(lock);
}

/* Checks the handle and its lock, and that the caller holds the lock. */
static int cond_check(mp_condition_t *cond, mp_lock_t **lock, const char *fn) {
  int rc = cond_open(cond, lock, fn);
  if (rc == 0 && !held_by(*lock, self_token()))
    return mp__error(MP_ENOTHELD, "%s: the calling thread does not hold the condition's lock",
                     fn);
  return rc;
}

/* Words only a buggy process writing into the arena makes: a batches word past TOKEN_GENS,
 * or a generation at its last value (the next notify's tokens would be older than every
 * waiter, and taken by none). MP_ECORRUPT, the words left as they are, so that every later
 * wait and notify says so too rather than move or write past the array, or sleep through
 * every notify. */
static bool cond_corrupt(uint32_t batches, uint64_t gen) {
  return batches > TOKEN_GENS || gen == UINT64_MAX;
}

__attribute__((noinline, cold)) static int corrupt_error(uint32_t batches, uint64_t gen,
                                                         const char *fn) {
  if (batches > TOKEN_GENS)
    return mp__error(MP_ECORRUPT,
                     "%s: the condition's shared memory is corrupt: %u batches of tokens in "
                     "an array of %u (left as they are)",
                     fn, batches, TOKEN_GENS);
  return mp__error(MP_ECORRUPT,
                   "%s: the condition's shared memory is corrupt: generation %llu, the last "
                   "one (left as it is)",
                   fn, (unsigned long long)gen);
}

/* Takes the oldest token a waiter that began at generation began may take: 1, or 0 if none,
 * or MP_ECORRUPT. */
static int take_token(mp_condition_t *cond, uint64_t began) {
  uint32_t batches = cond->batches; /* read once: the bound checked is the bound used */
  uint64_t gen = cond->gen;
  if (cond_corrupt(batches, gen))
    return corrupt_error(batches, gen, "mp_condition_wait");
  for (uint32_t i = 0; i < batches; i++) {
    if (cond->batch[i].gen <= began)
      continue;
    cond->tokens--;
    if (--cond->batch[i].n == 0) {
      cond->batches = --batches;
      memmove(&cond->batch[i], &cond->batch[i + 1], (batches - i) * sizeof cond->batch[0]);
    }
    return 1;
  }
  return 0;
}

static int cond_wait(mp_condition_t *cond, mp_lock_t *lock, int64_t deadline) {
  MP__TRACE_CLOCK(t0);
  /* A wait that begins on a corrupt condition says so at once: no notify would end it. */
  uint32_t batches = cond->batches;
  uint64_t began = cond->gen;
  if (cond_corrupt(batches, began))
    return corrupt_error(batches, began, "mp_condition_wait");
  uint64_t me = self_token();
  uint32_t seen = atomic_load_explicit(&cond->seq, memory_order_relaxed);
  cond->waiting++;
  int dead = 0;
  mp__sigint_t sigint;
  mp__sigint_begin(&sigint);
  int64_t until = deadline == INT64_MAX ? INT64_MAX - 1 : deadline; /* see signals.c */
  /* A notify wakes as many as it made tokens; one of them killed before it took its token
   * leaves it to the others. They were not woken, but the notify moved seq, which each
   * sleeper looks at every slice: it then looks for a token under the lock. After such a
   * look there is none it may take until the next notify, which moves seq again: a token
   * only older waiters may take (a killed one's) does not make this one look. */
  for (;;) {
    uint32_t depth = lock_drop(lock);
    int rc = 0;
    bool interrupted = false;
    while (atomic_load(&cond->seq) == seen && rc != MP_ETIMEDOUT && !interrupted) {
      int64_t slice_end = mp__now_ns() + SLICE_NS;
      rc = mp__futex_wait_sig(&cond->seq, seen, slice_end < until ? slice_end : until);
      interrupted = rc == MP_EINTR && mp__sigint_arrived(&sigint);
      if (rc == MP_ETIMEDOUT && slice_end < until)
        rc = 0;
    }
    rc = lock_take(lock, me, depth, INT64_MAX, false); /* held again, as in Python */
    if (rc == MP_EOWNERDEAD)
      dead = rc;
    else if (rc < 0)
      return rc; /* MP_ECORRUPT (a wild owner word): not held; the counts stay as they were */
    seen = atomic_load_explicit(&cond->seq, memory_order_relaxed);
    int taken = take_token(cond, began);
    if (taken < 0) { /* the lock held again, as for any error here */
      cond->waiting--;
      MP__TRACE(waited, MP__TRK_CONDITION, cond, t0, false);
      return taken;
    }
    bool notified = taken > 0;
    if (interrupted && !notified) { /* the lock is held again, as Python's with-block has it */
      cond->waiting--;
      MP__TRACE(waited, MP__TRK_CONDITION, cond, t0, false);
      return mp__error(MP_EINTR, "mp_condition_wait: interrupted by SIGINT");
    }
    if (notified || mp__now_ns() >= deadline) {
      cond->waiting--;
      MP__TRACE(waited, MP__TRK_CONDITION, cond, t0, notified);
      return notified || dead ? dead : mp__error(MP_ETIMEDOUT, "mp_condition_wait: timed out");
    }
  }
}

int mp_condition_wait(mp_condition_t *cond, double timeout) {
  mp_lock_t *lock;
  int rc = cond_check(cond, &lock, "mp_condition_wait");
  return rc < 0 ? rc : cond_wait(cond, lock, mp__deadline(timeout));
}

int mp_condition_wait_for(mp_condition_t *cond, mp_predicate_t predicate, void *arg,
                          double timeout) {
  mp_lock_t *lock;
  int rc = cond_check(cond, &lock, "mp_condition_wait_for");
  if (rc < 0)
    return rc;
  if (!predicate)
    return mp__error(MP_EINVAL, "mp_condition_wait_for: predicate is NULL");
  int64_t deadline = mp__deadline(timeout);
  bool dead = false;
  while (!predicate(arg)) {
    if (mp__now_ns() >= deadline)
      return mp__error(MP_ETIMEDOUT,
                       "mp_condition_wait_for: timed out, the predicate is false");
    rc = cond_wait(cond, lock, deadline);
    if (rc == MP_EOWNERDEAD)
      dead = true;
    else if (rc < 0 && rc != MP_ETIMEDOUT)
      return rc;
  }
  return dead ? MP_EOWNERDEAD : 0;
}

int mp_condition_notify(mp_condition_t *cond, int n) {
  mp_lock_t *lock;
  int rc = cond_check(cond, &lock, "mp_condition_notify");
  if (rc < 0)
    return rc;
  uint32_t batches = cond->batches; /* read once, as in take_token() */
  uint64_t gen = cond->gen;
  if (cond_corrupt(batches, gen)) {
    /* Every sleeper wakes to find the same, rather than sleep through notifies that never
     * come. */
    atomic_fetch_add(&cond->seq, 1);
    mp__futex_wake(&cond->seq, INT32_MAX);
    return corrupt_error(batches, gen, "mp_condition_notify");
  }
  uint32_t free = cond->waiting - cond->tokens;
  uint32_t k = n < 0 ? 0 : (uint32_t)n < free ? (uint32_t)n : free;
  if (k == 0)
    return 0;
  /* seq moves first: a notifier killed after it wrote tokens has moved it, so sleepers look
   * (and take the lock from the dead holder) at the end of their slice. Killed before it
   * wrote them, the notify did not happen, and a look finds nothing. */
  atomic_fetch_add(&cond->seq, 1);
  if (batches == TOKEN_GENS) {
    cond->batch[1].n += cond->batch[0].n;
    batches--;
    memmove(&cond->batch[0], &cond->batch[1], batches * sizeof cond->batch[0]);
  }
  cond->gen = ++gen;
  cond->batch[batches].gen = gen;
  cond->batch[batches++].n = k;
  cond->batches = batches;
  cond->tokens += k;
  /* k sleepers for a lone batch: all may take it. With older tokens left (in transit, or
   * of killed waiters), a waiter woken for this batch may take an older one and leave this
   * one to a sleeper: all wake, and each takes what it may. */
  mp__futex_wake(&cond->seq, batches > 1 ? INT32_MAX : (int)k);
  return 0;
}

int mp_condition_notify_all(mp_condition_t *cond) {
  return mp_condition_notify(cond, INT32_MAX);
}

int mp_condition_retain(mp_condition_t *cond) {
  return retain(cond, CONDITION_MAGIC, "mp_condition_retain");
}

static bool cond_release(void *cond) {
  return mp__shared_release_sized(cond, sizeof(mp_condition_t));
}

/* The lock word is not followed: the close that frees the block drops the reference this
 * process gave it, if any (given_t). */
int mp_condition_close(mp_condition_t *cond) {
  if (!valid(cond, CONDITION_MAGIC))
    return invalid("mp_condition_close");
  mp__given_release(cond, cond_release);
  return 0;
}

/* ================================ Barrier ================================ */

/*
 * The whole state is one 64-bit word changed by compare-and-swap: the generation in the high
 * half (the futex word: every end of a round, break or reset bumps it) and in the low half
 * the arrivals, a sticky "broken" bit and how the previous generation ended. A waiter of
 * generation g that wakes to g+1 reads its outcome from the same word; one that slept
 * through more generations reads it from broken_tag[g % 64], which holds g if g ended broken
 * (slot i starts at i + 1, no generation of it). Whoever ends g+1 writes that tag first, from
 * the word it ends, so no word of a later generation is ever seen before the tag: a round
 * that ended well is never read as broken (a broken one is read as ended well only if 64
 * rounds later another broke before its waiter woke).
 *
 * A full round belongs to its last arrival, which runs the action and alone ends it, as
 * Python's Barrier holds its lock during the action: a timeout, a SIGINT, an abort or a reset
 * then changes nothing of that round (a break sets the broken bit for the next generation, a
 * reset clears it again), and a newcomer waits for the round to end before it arrives, its
 * timeout not counting meanwhile. Only the runner's death ends the round otherwise: the
 * arrival that fills the round puts its pid in the count's place (BAR_FULL), so that the
 * round is never full with its runner unknown, and the waiters look for it every SLICE_NS.
 * Its start time, written before, is in runner if runner names that pid.
 */
#define BAR_COUNT 0xffffffu /* the arrivals, or in a full round its runner's pid (< 2^22) */
#define BAR_BROKEN (1u << 24)
#define BAR_ENDED_BROKEN (1u << 25)
#define BAR_FULL (1u << 26)
#define BAR_MAX_PARTIES BAR_COUNT
#define RUNNER_START_BITS 42 /* clock ticks: centuries at 100 Hz */

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the generation is the high half");

struct mp_barrier_s {
  uint32_t magic;
  uint32_t parties;
  _Atomic uint64_t word;
  /* sizeof(mp__fnref_t) when the action follows in the same block, else 0. Inline, not a
   * block of its own: an address in shared memory, written wild, made the last close release
   * whatever live block of that size it named. */
  uint64_t action_size;
  void *arg;
  _Atomic uint64_t runner; /* pid << RUNNER_START_BITS | start of the last would-be runner */
  _Atomic uint32_t broken_tag[64]; /* the last generation of each residue to end broken */
  mp__fnref_t action[];
};

/* The barrier's block: its size by its action word, which any process can write (a size
 * that is not the block's own is refused by the release, and by bar_release's check). */
static uint64_t barrier_size(uint64_t action_size) {
  return sizeof(mp_barrier_t) + (action_size ? sizeof(mp__fnref_t) : 0);
}

static _Atomic uint32_t *gen_word(mp_barrier_t *b) {
  return (_Atomic uint32_t *)((char *)&b->word + 4);
}

static uint32_t gen_of(uint64_t w) {
  return (uint32_t)(w >> 32);
}

/* Ends generation gen of the word w with the given low bits; false if w changed first. The
 * previous generation's outcome is tagged before: a reader that sees the word after the
 * next one finds it, whoever is killed where. */
static bool bar_end(mp_barrier_t *b, uint64_t w, uint32_t low) {
  uint32_t gen = gen_of(w);
  if ((uint32_t)w & BAR_ENDED_BROKEN)
    atomic_store(&b->broken_tag[(gen - 1) % 64], gen - 1);
  uint64_t next = ((uint64_t)(gen + 1) << 32) | low;
  if (!atomic_compare_exchange_strong(&b->word, &w, next))
    return false;
  mp__futex_wake(gen_word(b), INT32_MAX);
  return true;
}

static bool bar_full(uint64_t w) {
  return (uint32_t)w & BAR_FULL;
}

/* Ends generation gen with the given low bits; false if another ended it first. */
static bool bar_end_round(mp_barrier_t *b, uint32_t gen, uint32_t low) {
  for (;;) {
    uint64_t w = atomic_load(&b->word);
    if (gen_of(w) != gen)
      return false;
    if (bar_end(b, w, low | ((uint32_t)w & BAR_BROKEN)))
      return true;
  }
}

/* Breaks the barrier (abort, SIGINT): at once, or after a full round. */
static void bar_break(mp_barrier_t *b) {
  uint64_t w = atomic_load(&b->word);
  while (!((uint32_t)w & BAR_BROKEN) &&
         !(bar_full(w) ? atomic_compare_exchange_weak(&b->word, &w, w | BAR_BROKEN)
                       : bar_end(b, w, BAR_BROKEN | BAR_ENDED_BROKEN)))
    w = atomic_load(&b->word);
}

/* True if the process that runs the full round w's action provably ended. */
static bool bar_runner_dead(mp_barrier_t *b, uint64_t w) {
  proc_id_t runner = {.pid = (int32_t)((uint32_t)w & BAR_COUNT)};
  uint64_t r = atomic_load(&b->runner);
  if (r >> RUNNER_START_BITS == (uint64_t)runner.pid)
    runner.start = r & ((UINT64_C(1) << RUNNER_START_BITS) - 1); /* else unknown: by pid */
  return !proc_alive(runner);
}

static int broken_error(void) {
  return mp__error(MP_EBROKEN, "mp_barrier_wait: the barrier is broken");
}

int mp_barrier_create(mp_barrier_t **out, int parties, mp_barrier_action_t action, void *arg) {
  if (!out || parties < 1 || parties > (int)BAR_MAX_PARTIES)
    return mp__error(MP_EINVAL,
                     out ? "mp_barrier_create: %d parties (1 .. 2^24-1)"
                         : "mp_barrier_create: barrier is NULL",
                     parties);
  mp__fnref_t ref;
  uint64_t action_size = action ? sizeof ref : 0;
  if (action) {
    int rc = mp__fnref_from_pointer((mp__fn_t)action, &ref);
    if (rc < 0)
      return rc;
  }
  mp_barrier_t *b;
  int rc = new_object(&b, barrier_size(action_size), BARRIER_MAGIC, NO_MUTEX);
  if (rc < 0)
    return rc;
  b->parties = (uint32_t)parties;
  for (uint32_t i = 0; i < 64; i++)
    atomic_init(&b->broken_tag[i], i + 1); /* no generation of slot i */
  if (action)
    b->action[0] = ref;
  b->action_size = action_size;
  b->arg = arg;
  *out = b;
  return 0;
}

/* The last arrival: runs the action and ends the generation, a full round only it ends. */
static int bar_release(mp_barrier_t *b, uint32_t gen, int index) {
  MP__TRACE(waited, MP__TRK_BARRIER, b, 0, true); /* the last arrival: no wait */
  uint64_t action_size = b->action_size; /* read once: the size checked is the one used */
  if (action_size && (action_size != sizeof(mp__fnref_t) ||
                      !mp__shared_is_block(b, barrier_size(action_size)))) {
    bar_end_round(b, gen, BAR_BROKEN | BAR_ENDED_BROKEN);
    return mp__error(MP_ECORRUPT,
                     "mp_barrier_wait: the barrier's shared memory is corrupt: its action's "
                     "size %llu is not its block's (left as it is); the barrier is broken",
                     (unsigned long long)action_size);
  }
  if (action_size) {
    mp__fn_t fn;
    int rc = mp__fnref_resolve(b->action, &fn);
    if (rc < 0) {
      bar_end_round(b, gen, BAR_BROKEN | BAR_ENDED_BROKEN);
      return rc;
    }
    if (((mp_barrier_action_t)fn)(b->arg) != 0) {
      bar_end_round(b, gen, BAR_BROKEN | BAR_ENDED_BROKEN);
      return mp__error(MP_EBROKEN, "mp_barrier_wait: the action failed; the barrier is broken");
    }
  }
  return bar_end_round(b, gen, 0) ? index : broken_error();
}

int mp_barrier_wait(mp_barrier_t *b, double timeout) {
  if (!valid(b, BARRIER_MAGIC))
    return invalid("mp_barrier_wait");
  /* Computed at the first wait in a round that is not full: the last arrival never needs
   * it, and a newcomer's wait for a full round's action does not count, as in Python. */
  int64_t deadline = INT64_MIN;
  MP__TRACE_CLOCK(t0);
  uint64_t w = atomic_load(&b->word);
  int index = -1;
  for (;;) {
    uint32_t low = (uint32_t)w, gen = gen_of(w);
    if (low & BAR_BROKEN)
      return broken_error();
    if (!bar_full(w)) {
      uint32_t arrived = low & BAR_COUNT;
      uint64_t next = w + 1;
      if (arrived + 1 == b->parties) { /* fills the round: runs it, named in the word */
        proc_id_t me = self_process();
        uint64_t start = START_TICKS(me.start) >> RUNNER_START_BITS ? 0 : START_TICKS(me.start);
        atomic_store(&b->runner, (uint64_t)me.pid << RUNNER_START_BITS | start);
        next = (w & ~(uint64_t)BAR_COUNT) | BAR_FULL | (uint32_t)me.pid;
      }
      if (!atomic_compare_exchange_weak(&b->word, &w, next))
        continue;
      index = (int)arrived;
      if (bar_full(next))
        return bar_release(b, gen, index);
      w = next;
    }
    /* Wait for this generation to end: ours, or (index < 0) the full one whose action runs. */
    mp__sigint_t sigint;
    mp__sigint_begin(&sigint);
    while (gen_of(w = atomic_load(&b->word)) == gen) {
      bool full = bar_full(w);
      if (!full && deadline == INT64_MIN) {
        deadline = mp__deadline(timeout);
        if (deadline == INT64_MAX)
          deadline = INT64_MAX - 1; /* see signals.c */
      }
      /* In slices: the arrival that fills a round wakes nobody, and its runner's death is
       * looked for at each slice's end. */
      int64_t slice_end = mp__now_ns() + SLICE_NS;
      int64_t until = full || slice_end < deadline ? slice_end : deadline;
      int rc = mp__futex_wait_sig(gen_word(b), gen, until);
      bool interrupted = rc == MP_EINTR && mp__sigint_arrived(&sigint);
      if (gen_of(w = atomic_load(&b->word)) != gen)
        break;
      if (bar_full(w) && !interrupted) {
        if (bar_runner_dead(b, w))
          bar_end_round(b, gen, BAR_BROKEN | BAR_ENDED_BROKEN);
        continue; /* a full round ends as its runner decides, whatever our deadline */
      }
      /* As Python's Barrier, a wait that ends by an exception breaks the barrier. A timeout
       * breaks only the round it saw unfilled: one that the last party filled meanwhile
       * counted this arrival, and ends as its runner decides. */
      if (interrupted) {
        bar_break(b);
        MP__TRACE(waited, MP__TRK_BARRIER, b, t0, false);
        return mp__error(MP_EINTR, "mp_barrier_wait: interrupted by SIGINT; the barrier is "
                                   "broken");
      }
      if (rc == MP_ETIMEDOUT && until == deadline &&
          bar_end(b, w, BAR_BROKEN | BAR_ENDED_BROKEN)) {
        MP__TRACE(waited, MP__TRK_BARRIER, b, t0, false);
        return mp__error(MP_EBROKEN, "mp_barrier_wait: timed out; the barrier is broken");
      }
    }
    if (index < 0)
      continue; /* the action's round ended: now arrive */
    MP__TRACE(waited, MP__TRK_BARRIER, b, t0, true);
    bool ended_broken = gen_of(w) == gen + 1 ? ((uint32_t)w & BAR_ENDED_BROKEN) != 0
                                             : atomic_load(&b->broken_tag[gen % 64]) == gen;
    return ended_broken ? broken_error() : index;
  }
}

int mp_barrier_abort(mp_barrier_t *b) {
  if (!valid(b, BARRIER_MAGIC))
    return invalid("mp_barrier_abort");
  bar_break(b);
  return 0;
}

int mp_barrier_reset(mp_barrier_t *b) {
  if (!valid(b, BARRIER_MAGIC))
    return invalid("mp_barrier_reset");
  uint64_t w = atomic_load(&b->word);
  /* Nothing to do for an empty, unbroken barrier. A full round (its action runs) ends as it
   * would, and a break waiting for its end is undone: Python's reset waits for the lock the
   * action holds, and then finds the round draining. */
  for (;;) {
    uint32_t low = (uint32_t)w;
    if (bar_full(w) ? !(low & BAR_BROKEN) ||
                          atomic_compare_exchange_weak(&b->word, &w, w & ~(uint64_t)BAR_BROKEN)
                    : (low & (BAR_BROKEN | BAR_COUNT)) == 0 || bar_end(b, w, BAR_ENDED_BROKEN))
      return 0;
    w = atomic_load(&b->word);
  }
}

int mp_barrier_parties(const mp_barrier_t *b) {
  return valid(b, BARRIER_MAGIC) ? (int)b->parties : invalid("mp_barrier_parties");
}

int mp_barrier_n_waiting(const mp_barrier_t *b) {
  if (!valid(b, BARRIER_MAGIC))
    return invalid("mp_barrier_n_waiting");
  uint32_t low = (uint32_t)atomic_load(&((mp_barrier_t *)b)->word);
  return low & BAR_BROKEN ? 0 : low & BAR_FULL ? (int)b->parties : (int)(low & BAR_COUNT);
}

bool mp_barrier_broken(const mp_barrier_t *b) {
  return valid(b, BARRIER_MAGIC) &&
         ((uint32_t)atomic_load(&((mp_barrier_t *)b)->word) & BAR_BROKEN);
}

int mp_barrier_retain(mp_barrier_t *b) {
  return retain(b, BARRIER_MAGIC, "mp_barrier_retain");
}

int mp_barrier_close(mp_barrier_t *b) {
  if (!valid(b, BARRIER_MAGIC))
    return invalid("mp_barrier_close");
  mp__shared_release_sized(b, barrier_size(b->action_size));
  return 0;
}

/* ============================== the process ============================== */

/* A forked child is another process, its thread another thread. */
MP__CHILD_TEXT static void after_fork_in_child(void) {
  /* Each write only if needed: a first write to a page in a child is a copy-on-write fault
   * (the thread's TLS page, the page of held), at every fork of the program. */
  if (thread_token)
    thread_token = 0;
  if (atomic_load_explicit(&self_id.pid, memory_order_relaxed) != 0)
    atomic_store_explicit(&self_id.pid, 0, memory_order_relaxed);
  mp__reset_lock(&self_id.lock);
  mp__reset_lock(&held.lock);
  if (held.n)
    held.n = 0; /* the slots (and references) are the parent's */
  forget_given();
}

/* Prioritized, so that it runs before spawn.c's take-over of a spawned child. */
__attribute__((constructor(102))) static void install_handlers(void) {
  pthread_atfork(NULL, NULL, after_fork_in_child);
  mp__on_exit(semaphores_at_exit, MP__EXIT_FIRST);
  /* Read once here, so that its page is mapped before any fork: the child handler reads
   * self_id in every forked child, a fault on a page this process never touched. */
  (void)*(volatile const char *)&self_id;
}
