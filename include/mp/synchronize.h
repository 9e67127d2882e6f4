/*
 * libmp synchronization primitives: Python's multiprocessing.synchronize.
 *
 * Lock, RLock, Semaphore, BoundedSemaphore, Event, Condition and Barrier. Each object lives
 * in the shared arena, so a handle is a pointer that is valid in every process of the
 * program, under every start method: pass it to a child inside its argument bytes. Each is
 * usable from any thread of any of those processes. Objects are reference counted: the
 * creator holds one reference, mp_<thing>_retain() adds one (for another holder), and
 * mp_<thing>_close() drops one; the last close frees the object. Closing while another
 * process still uses the object without its own reference is undefined (a use after free).
 *
 * Every wait takes a timeout (seconds on the monotonic clock; MP_FOREVER blocks, 0 or a
 * negative timeout does not block) and returns MP_ETIMEDOUT when it passes.
 *
 * Owner death: a process killed while holding a Lock, an RLock or permits of a
 * BoundedSemaphore does not leave the others waiting forever: the next acquirer gets
 * MP_EOWNERDEAD, which means "acquired" (the object is usable again) and "what it guarded may
 * be half updated". docs/api.md says what each object promises.
 */
#ifndef MP_SYNCHRONIZE_H
#define MP_SYNCHRONIZE_H

#ifndef MP_H
#error "include <mp.h>, not <mp/synchronize.h>"
#endif

/* ================================ Lock, RLock ================================ */

/*
 * One handle type for Lock and RLock: mp_lock_create() makes a Lock, mp_rlock_create() an
 * RLock, and every mp_lock_* function works on both (as Condition and Value accept either).
 * A lock is held by a thread: the thread that acquired it releases it. A thread (or its
 * process) that ends holding it makes the next acquirer get MP_EOWNERDEAD.
 */
typedef struct mp_lock_s mp_lock_t;

/* A new unlocked Lock. Errors: MP_EINVAL (NULL), MP_ENOMEM. Python: multiprocessing.Lock(). */
MP_EXTERN int mp_lock_create(mp_lock_t **lock);

/* A new unlocked RLock: the holding thread may acquire it again, and must release it as many
 * times. Errors: MP_EINVAL, MP_ENOMEM. Python: multiprocessing.RLock(). */
MP_EXTERN int mp_rlock_create(mp_lock_t **lock);

/*
 * Acquires the lock, waiting at most timeout seconds. Returns 0, or MP_EOWNERDEAD: acquired,
 * but its previous holder died holding it. A Lock acquired again by its holder waits (and
 * times out), as in Python; an RLock counts one level more.
 * Errors: MP_ETIMEDOUT, MP_EINVAL (NULL or closed), MP_ETOOMANY (RLock depth past 2^32-1).
 * Python: Lock.acquire(block, timeout), RLock.acquire().
 */
MP_EXTERN int mp_lock_acquire(mp_lock_t *lock, double timeout);

/*
 * Releases one level of the lock. Errors: MP_ENOTHELD (the calling thread does not hold it:
 * unlocked, or held by another thread or process; Python's Lock lets anyone release it, but
 * the kernel watches a robust mutex's holder only, so owner death needs the holder to
 * release: hand over with a Semaphore instead), MP_EINVAL.
 * Python: Lock.release() (ValueError when unlocked), RLock.release() (AssertionError).
 */
MP_EXTERN int mp_lock_release(mp_lock_t *lock);

/* True if the calling thread holds the lock. No Python counterpart (RLock._is_owned()). */
MP_EXTERN bool mp_lock_is_owned(const mp_lock_t *lock);

/* Reference counting (see the top of this header). Errors: MP_EINVAL. */
MP_EXTERN int mp_lock_retain(mp_lock_t *lock);
MP_EXTERN int mp_lock_close(mp_lock_t *lock);

/* ====================== Semaphore, BoundedSemaphore ====================== */

typedef struct mp_semaphore_s mp_semaphore_t;

/*
 * A Semaphore with the given initial value (0 .. INT32_MAX): a counter (of items, of free
 * places). An acquired permit is consumed, as in Python: a process that dies after taking
 * one, even killed, does not give it back. Errors: MP_EINVAL (NULL, value out of range),
 * MP_ENOMEM. Python: multiprocessing.Semaphore(value).
 */
MP_EXTERN int mp_semaphore_create(mp_semaphore_t **sem, int value);

/*
 * The same, refusing a release above value, and lock-like: its permits are held. Those of a
 * process killed holding them (provably dead, not merely unreadable in /proc) go back to it,
 * up to value, and their acquirers get MP_EOWNERDEAD; a normal exit keeps them, as Python.
 * Python: multiprocessing.BoundedSemaphore(value).
 */
MP_EXTERN int mp_bounded_semaphore_create(mp_semaphore_t **sem, int value);

/*
 * Takes one permit, waiting at most timeout seconds. Returns 0, or MP_EOWNERDEAD (bounded
 * only): acquired one of the permits of a process that was killed holding them. Errors:
 * MP_ETIMEDOUT, MP_EINVAL. Python: Semaphore.acquire(block, timeout).
 */
MP_EXTERN int mp_semaphore_acquire(mp_semaphore_t *sem, double timeout);

/*
 * Gives one permit back (any thread or process may). Errors: MP_ETOOMANY (a bounded
 * semaphore at its initial value, or a value at INT32_MAX), MP_EINVAL.
 * Python: Semaphore.release() (ValueError when bounded).
 */
MP_EXTERN int mp_semaphore_release(mp_semaphore_t *sem);

/* The number of free permits, or MP_EINVAL. Python: Semaphore.get_value(). */
MP_EXTERN int mp_semaphore_value(mp_semaphore_t *sem);

MP_EXTERN int mp_semaphore_retain(mp_semaphore_t *sem);
MP_EXTERN int mp_semaphore_close(mp_semaphore_t *sem);

/* ================================ Event ================================ */

typedef struct mp_event_s mp_event_t;

/* A new, clear Event. Errors: MP_EINVAL, MP_ENOMEM. Python: multiprocessing.Event(). */
MP_EXTERN int mp_event_create(mp_event_t **event);

/* Sets the flag and wakes every waiter. Errors: MP_EINVAL. Python: Event.set(). */
MP_EXTERN int mp_event_set(mp_event_t *event);

/* Clears the flag. Errors: MP_EINVAL. Python: Event.clear(). */
MP_EXTERN int mp_event_clear(mp_event_t *event);

/* True if the flag is set (false for NULL). Python: Event.is_set(). */
MP_EXTERN bool mp_event_is_set(const mp_event_t *event);

/*
 * Waits until the flag is set, at most timeout seconds: 0 if it is set, or was set while
 * waiting (even if cleared again since). Errors: MP_ETIMEDOUT (Python returns False),
 * MP_EINVAL. Python: Event.wait(timeout).
 */
MP_EXTERN int mp_event_wait(mp_event_t *event, double timeout);

MP_EXTERN int mp_event_retain(mp_event_t *event);
MP_EXTERN int mp_event_close(mp_event_t *event);

/* ================================ Condition ================================ */

typedef struct mp_condition_s mp_condition_t;

/*
 * A Condition over lock (a Lock or an RLock, which it retains), or over a new RLock of its
 * own when lock is NULL, as in Python. Errors: MP_EINVAL (NULL out, a closed lock),
 * MP_ENOMEM. Python: multiprocessing.Condition(lock=None).
 * The close that frees the Condition drops that reference in the process that made it; a
 * last close in another process (a forked child too) leaves the lock allocated until the
 * program ends: the lock's address in shared memory is not trusted to release anything.
 */
MP_EXTERN int mp_condition_create(mp_condition_t **cond, mp_lock_t *lock);

/* Its lock (owned by the condition: retain it to keep it past the condition's close); NULL
 * for NULL. */
MP_EXTERN mp_lock_t *mp_condition_lock(const mp_condition_t *cond);

/* mp_lock_acquire() and mp_lock_release() of its lock. Python: Condition.acquire/release. */
MP_EXTERN int mp_condition_acquire(mp_condition_t *cond, double timeout);
MP_EXTERN int mp_condition_release(mp_condition_t *cond);

/*
 * Releases the lock (every level of an RLock), waits for a notify at most timeout seconds,
 * and reacquires the lock (without a timeout, as Python) before it returns, also on error.
 * Returns 0 when notified, or MP_EOWNERDEAD: notified or not, the lock was reacquired from a
 * holder that died. Errors: MP_ETIMEDOUT (Python returns False), MP_ENOTHELD (the caller
 * does not hold the lock; nothing waited), MP_EINVAL, MP_ECORRUPT (the condition's shared
 * memory was written wild by a process of the program; the lock is held again). A wait that no notify followed times
 * out, whatever waiters were killed before. Python: Condition.wait(timeout).
 */
MP_EXTERN int mp_condition_wait(mp_condition_t *cond, double timeout);

/* A predicate for mp_condition_wait_for(): evaluated with the lock held. */
typedef bool (*mp_predicate_t)(void *arg);

/*
 * Waits until predicate(arg) is true, at most timeout seconds in all, calling it first and
 * after each wake-up with the lock held. Returns 0 (true), or MP_ETIMEDOUT (still false at
 * the deadline). Errors: as mp_condition_wait(), and MP_EINVAL (predicate NULL).
 * Python: Condition.wait_for(predicate, timeout).
 */
MP_EXTERN int mp_condition_wait_for(mp_condition_t *cond, mp_predicate_t predicate, void *arg,
                                    double timeout);

/*
 * Wakes at most n of the threads waiting now (none that start waiting later); the caller
 * holds the lock. A waiter killed inside wait counts as waiting: a notify is spent on it only
 * when no live waiter takes it, and never passes to a later waiter (docs/api.md). Errors:
 * MP_ENOTHELD, MP_EINVAL, MP_ECORRUPT (as for a wait: nothing notified).
 * Python: Condition.notify(n).
 */
MP_EXTERN int mp_condition_notify(mp_condition_t *cond, int n);

/* Wakes every thread waiting now. Errors: MP_ENOTHELD, MP_EINVAL, MP_ECORRUPT.
 * Python: notify_all(). */
MP_EXTERN int mp_condition_notify_all(mp_condition_t *cond);

MP_EXTERN int mp_condition_retain(mp_condition_t *cond);
MP_EXTERN int mp_condition_close(mp_condition_t *cond);

/* ================================ Barrier ================================ */

typedef struct mp_barrier_s mp_barrier_t;

/*
 * The action the last party to arrive runs before the others are released. It crosses to
 * other processes by identity, as a process target does: it must belong to the executable
 * or a shared library. arg is passed as is: a pointer valid in every process (a shared
 * object) or NULL. A nonzero return breaks the barrier (every party gets MP_EBROKEN), as an
 * exception in Python's action does.
 */
typedef int (*mp_barrier_action_t)(void *arg);

/*
 * A Barrier for parties (1 .. 2^24-1) parties, with an optional action (NULL for none).
 * Errors: MP_EINVAL, MP_ECROSS (the action has no identity), MP_ENOMEM.
 * Python: multiprocessing.Barrier(parties, action).
 */
MP_EXTERN int mp_barrier_create(mp_barrier_t **barrier, int parties, mp_barrier_action_t action,
                                void *arg);

/*
 * Waits until parties threads have called it, at most timeout seconds. Returns the arrival
 * index (0 .. parties-1; parties-1 is the last to arrive, which ran the action). Errors:
 * MP_EBROKEN (broken or aborted, reset while waiting, the action failed, or the timeout
 * passed: as in Python, a timeout breaks the barrier for every waiter, so there is no
 * MP_ETIMEDOUT), MP_ERESOLVE (the action cannot be found in this process: broken too),
 * MP_EINVAL. Python: Barrier.wait(timeout).
 */
MP_EXTERN int mp_barrier_wait(mp_barrier_t *barrier, double timeout);

/* Breaks the barrier: current and future waiters get MP_EBROKEN until a reset.
 * Errors: MP_EINVAL. Python: Barrier.abort(). */
MP_EXTERN int mp_barrier_abort(mp_barrier_t *barrier);

/* Returns the barrier to its empty state; threads waiting now get MP_EBROKEN.
 * Errors: MP_EINVAL. Python: Barrier.reset(). */
MP_EXTERN int mp_barrier_reset(mp_barrier_t *barrier);

/* The number of parties, or MP_EINVAL. Python: Barrier.parties. */
MP_EXTERN int mp_barrier_parties(const mp_barrier_t *barrier);

/* The number of threads waiting now, or MP_EINVAL. Python: Barrier.n_waiting. */
MP_EXTERN int mp_barrier_n_waiting(const mp_barrier_t *barrier);

/* True if broken (false for NULL). Python: Barrier.broken. */
MP_EXTERN bool mp_barrier_broken(const mp_barrier_t *barrier);

MP_EXTERN int mp_barrier_retain(mp_barrier_t *barrier);
MP_EXTERN int mp_barrier_close(mp_barrier_t *barrier);

#endif /* MP_SYNCHRONIZE_H */
