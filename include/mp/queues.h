/*
 * libmp queues: Queue, SimpleQueue and JoinableQueue (Python's multiprocessing.queues).
 *
 * A queue lives in the shared arena: its handle is a pointer that is the same queue in every
 * process of the program, under every start method, so a child gets it inside its argument
 * bytes, and a queue made after a child started reaches it inside a message of another
 * queue. Messages are bytes, copied once into a shared-memory ring by mp_queue_put() and once
 * out by mp_queue_get(); a message too large for the ring goes through a block of the arena
 * instead. Many processes and threads may put and get at once; the messages of one producer
 * arrive in the order it put them.
 *
 * There is no feeder thread: a put that returned 0 is in the queue. Python's two traps cannot
 * happen: data lost because a process exited before its feeder flushed, and a deadlock joining
 * a producer whose items nobody consumed.
 *
 * A put of a message larger than an eighth of the ring fills a block of the arena; the
 * queue keeps up to 4 such blocks of up to 2 MiB once their messages are taken, and the next
 * spills reuse them, oldest first.
 *
 * A process killed in the middle of a put or a get leaves the queue consistent, and the
 * guarantee is exact: every message whose put returned 0 is delivered exactly once, except
 * one whose get had committed (its last step) when its consumer died, before
 * mp_queue_get() returned: that message went with the consumer. A put killed before it
 * returned delivers its message once or not at all. No message is delivered twice or torn.
 *
 * Use after free: a call on a queue after this process's last mp_queue_free() of it (with
 * no retain by another process since), or on a queue freed for good, prints "libmp: <call>:
 * queue handle used after mp_queue_free" and aborts, until its block holds another queue.
 *
 * mp_queue_fileno()'s doorbell is another user's to neither block nor ring: its abstract
 * name is random, and the kernel drops any datagram without its secret key.
 *
 * Fork safety: a child made by fork() (libmp's or the program's own) uses its parent's
 * queues through the same handles; it does not inherit its parent's readiness fds (a call of
 * mp_queue_fileno() in the child makes its own).
 */
#ifndef MP_QUEUES_H
#define MP_QUEUES_H

#ifndef MP_H
#error "include <mp.h>, not <mp/queues.h>"
#endif

/* ================================= Queue ================================= */

typedef struct mp_queue_s mp_queue_t;

/*
 * Creates a queue holding at most maxsize messages (0: no limit on their number, as in
 * Python). Its ring starts at 1 MiB and grows as needed up to 64 MiB, so a put waits only
 * for maxsize, or once the ring holds 64 MiB of records (a message larger than 128 KiB takes
 * 16 bytes of them). The creator holds one reference (mp_queue_free()). Errors:
 * MP_EINVAL (queue NULL), MP_ENOMEM (the arena is full). Python: multiprocessing.Queue().
 */
MP_EXTERN int mp_queue_create(mp_queue_t **queue, size_t maxsize);

/*
 * The same with a ring of fixed size: ring_bytes, rounded up to a power of two, 4 KiB to
 * 64 MiB (0: mp_queue_create()'s growing ring). The ring's bytes then bound the messages
 * kept whole in it as well as maxsize does: a put waits while its message does not fit, also
 * in a queue without maxsize. A message larger than an eighth of the ring takes 24 bytes of
 * the ring and a block of the arena for its bytes, so maxsize is what bounds the memory of
 * large messages, as the count of items bounds a Python Queue. Errors: as mp_queue_create(),
 * and MP_EINVAL for a ring above 64 MiB.
 */
MP_EXTERN int mp_queue_create_sized(mp_queue_t **queue, size_t maxsize, size_t ring_bytes);

/*
 * Puts a copy of data[0 .. len) (len may be 0; data may be NULL then), waiting at most
 * timeout seconds (MP_FOREVER: as long as it takes; 0: not at all) for room. The caller keeps
 * data. Returns 0 once the message is in the queue. Errors: MP_EINVAL (NULL queue, NULL data
 * with len > 0, not a Queue), MP_EFULL (no room within the timeout: Python's queue.Full),
 * MP_ECLOSED (the queue was closed), MP_EMSGSIZE (len above 2^62), MP_ENOMEM (the arena is
 * full: no block for a large message, or for the larger ring the message needs; not waited
 * out), MP_ECORRUPT (the queue's ring word, in shared memory, names no ring of the arena:
 * nothing is written, and every later put says so too). The timeout bounds the wait for room
 * and the wait for the producers' lock (producers copy in turn): a producer that stays
 * inside its put past it (stopped, or a copy of many megabytes) makes this put MP_EFULL; a
 * holder is given 10 ms at least, so that a put of timeout 0 takes over the lock of one that
 * died. Python: Queue.put(obj, block, timeout).
 */
MP_EXTERN int mp_queue_put(mp_queue_t *queue, const void *data, size_t len, double timeout);

/* mp_queue_put() with a timeout of 0. Python: Queue.put_nowait(obj). */
MP_EXTERN int mp_queue_put_nowait(mp_queue_t *queue, const void *data, size_t len);

/*
 * Takes the oldest message, copying it into buf[0 .. cap) and its length into *len, waiting
 * at most timeout seconds for one. The caller owns buf. Errors: MP_EINVAL (NULL queue or
 * len, NULL buf with cap > 0), MP_EEMPTY (none within the timeout: Python's queue.Empty; also
 * when the consumers' lock, or on a closed queue a put in progress, stays held past it, as
 * for puts above),
 * MP_ETOOSMALL (the message is longer than cap: *len is its length, and it stays first in the
 * queue), MP_ECLOSED (the queue was closed and every message has been taken: no message can
 * come any more, so a get never waits in vain), MP_ECORRUPT (the queue's shared memory holds
 * a length that does not fit or a block address outside the arena, which the get does not
 * follow: another process of the program wrote into it; every later get says so too; such a
 * process can still garble messages inside the arena, not make a get reach outside it).
 * Python: Queue.get(block, timeout).
 */
MP_EXTERN int mp_queue_get(mp_queue_t *queue, void *buf, size_t cap, size_t *len,
                           double timeout);

/* mp_queue_get() with a timeout of 0. Python: Queue.get_nowait(). */
MP_EXTERN int mp_queue_get_nowait(mp_queue_t *queue, void *buf, size_t cap, size_t *len);

/*
 * mp_queue_get() into a buffer of the message's size, allocated with malloc() and owned by
 * the caller (free() it) on success; *buf is untouched on failure. Errors: as mp_queue_get()
 * but MP_ETOOSMALL, and MP_ENOMEM. Python: Queue.get(), which makes the object.
 */
MP_EXTERN int mp_queue_get_alloc(mp_queue_t *queue, void **buf, size_t *len, double timeout);

/*
 * The number of messages in the queue (>= 0), a moment's snapshot as in Python; MP_EINVAL.
 * Python: Queue.qsize().
 */
MP_EXTERN int mp_queue_qsize(mp_queue_t *queue);

/* 1 if the queue holds no message, 0 if it holds some; MP_EINVAL. Python: Queue.empty(). */
MP_EXTERN int mp_queue_empty(mp_queue_t *queue);

/* 1 if it holds maxsize messages (never for maxsize 0), else 0; MP_EINVAL. Python: full(). */
MP_EXTERN int mp_queue_full(mp_queue_t *queue);

/*
 * Closes the queue for puts, in every process: later puts fail with MP_ECLOSED, and gets take
 * the messages left, then fail with MP_ECLOSED instead of waiting. It waits for nothing: a
 * put in progress may still commit its message (and return 0), and gets wait for it before
 * they say MP_ECLOSED. Every put or get waiting on the queue wakes. Closing twice is harmless.
 * Python's close() only says that this process will put no more, which another process's
 * get cannot see (it waits for ever); this is Python 3.13's Queue.shutdown(immediate=False).
 * Errors: MP_EINVAL. Python: Queue.close().
 */
MP_EXTERN int mp_queue_close(mp_queue_t *queue);

/*
 * A file descriptor of this process that turns readable (POLLIN) when the queue may have
 * become non-empty or was closed, for poll(), an event loop or mp_wait(). It works in any
 * process of the program, also for a queue made after the process started. It is readable
 * at once if the queue holds messages; after it turns readable, take messages with
 * mp_queue_get_nowait() until MP_EEMPTY (or MP_ECLOSED): the get that finds the queue empty
 * clears it. Owned by the queue: do not close it; it stays valid until this process's
 * mp_queue_free(). Errors: MP_EINVAL, MP_ENOMEM (64 processes poll the queue already),
 * or a socket error. Python: Queue._reader, what connection.wait() waits on.
 */
MP_EXTERN int mp_queue_fileno(mp_queue_t *queue);

/*
 * Takes one more reference. A child given the handle in its argument bytes needs none: its
 * process object holds one until the child is reaped, so the parent may free its own right
 * after the start. Retain for a process that gets the handle another way (inside a message,
 * or a shared block), and let that process free it. Errors: MP_EINVAL.
 */
MP_EXTERN int mp_queue_retain(mp_queue_t *queue);

/*
 * Drops a reference, and this process's readiness fd; the last one frees the queue and the
 * messages still in it. The handle must not be used by this process afterwards (nor by any,
 * after the last): such a use (a second free included) aborts, see the top of this header.
 * Errors: MP_EINVAL. Python: the queue's garbage collection.
 */
MP_EXTERN int mp_queue_free(mp_queue_t *queue);

/* ============================= JoinableQueue ============================= */

/*
 * A Queue that also counts unfinished tasks: each put adds one, each mp_queue_task_done()
 * takes one away, and mp_queue_join() waits for none to be left. Every mp_queue_* function
 * works on it. Errors: as mp_queue_create(). Python: multiprocessing.JoinableQueue(maxsize).
 */
MP_EXTERN int mp_joinable_queue_create(mp_queue_t **queue, size_t maxsize);

/*
 * Says that a task taken from the queue is finished. Errors: MP_EINVAL (not a JoinableQueue),
 * MP_ETOOMANY (called more times than messages were put: Python's ValueError).
 * Python: JoinableQueue.task_done().
 */
MP_EXTERN int mp_queue_task_done(mp_queue_t *queue);

/*
 * Waits at most timeout seconds until every message put has been marked done. A consumer
 * that died between its get and its task_done leaves a task unfinished for ever, as in
 * Python: give a timeout. Errors: MP_EINVAL (not a JoinableQueue), MP_ETIMEDOUT.
 * Python: JoinableQueue.join() (which has no timeout).
 */
MP_EXTERN int mp_queue_join(mp_queue_t *queue, double timeout);

/* ============================== SimpleQueue ============================== */

/*
 * A queue without maxsize or timeouts: put waits only while the ring is full (64 MiB of
 * records), get until a message comes or the queue is closed. The same shared ring as a Queue,
 * and the same guarantees when a process dies. Python: multiprocessing.SimpleQueue.
 */
typedef struct mp_simple_queue_s mp_simple_queue_t;

/* Errors: MP_EINVAL, MP_ENOMEM. Python: SimpleQueue(). */
MP_EXTERN int mp_simple_queue_create(mp_simple_queue_t **queue);

/* As mp_queue_put() without a timeout: MP_EINVAL, MP_ECLOSED, MP_EMSGSIZE, MP_ENOMEM.
 * Python: SimpleQueue.put(obj). */
MP_EXTERN int mp_simple_queue_put(mp_simple_queue_t *queue, const void *data, size_t len);

/* As mp_queue_get() without a timeout: MP_EINVAL, MP_ETOOSMALL, MP_ECLOSED (closed and
 * drained), MP_ECORRUPT. Python: SimpleQueue.get(). */
MP_EXTERN int mp_simple_queue_get(mp_simple_queue_t *queue, void *buf, size_t cap, size_t *len);

/* As mp_queue_get_alloc() without a timeout. */
MP_EXTERN int mp_simple_queue_get_alloc(mp_simple_queue_t *queue, void **buf, size_t *len);

/* 1 if empty, 0 if not; MP_EINVAL. Python: SimpleQueue.empty(). */
MP_EXTERN int mp_simple_queue_empty(mp_simple_queue_t *queue);

/* As mp_queue_close(): puts fail and drained gets end with MP_ECLOSED in every process.
 * Python: SimpleQueue.close(). */
MP_EXTERN int mp_simple_queue_close(mp_simple_queue_t *queue);

/* As mp_queue_fileno(). Python: SimpleQueue._reader. */
MP_EXTERN int mp_simple_queue_fileno(mp_simple_queue_t *queue);

/* As mp_queue_retain() and mp_queue_free(). */
MP_EXTERN int mp_simple_queue_retain(mp_simple_queue_t *queue);
MP_EXTERN int mp_simple_queue_free(mp_simple_queue_t *queue);

#endif /* MP_QUEUES_H */
