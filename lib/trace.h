/*
 * The trace's event sites (trace.c; docs/trace.md). Each site in the other files of lib/ is
 * one line, MP__TRACE(what, ...), which costs one predictable branch on a global flag while
 * tracing is off; MP__TRACE_CLOCK(t0) at the start of a blocking call takes the time its
 * event's wait began (0, without a clock read, while off).
 */
#ifndef MP_TRACE_INTERNAL_H
#define MP_TRACE_INTERNAL_H

#include "internal.h"

#include <stdatomic.h>
#include <stdint.h>

/* True while this process records events. */
extern _Atomic int mp__trace_on __attribute__((visibility("hidden")));

/* The trace's start-up, from spawn.c's first constructor (role: see mp__role_t, or NULL). */
void mp__trace_startup(const char *role);
/* Tells the trace how to name the current process: process.c registers it from its
 * constructor, so that the trace, which every layer calls, calls no layer above it. */
void mp__trace_name_source(const char *(*current_name)(void));

#define MP__TRACING()                                                                          \
  __builtin_expect(atomic_load_explicit(&mp__trace_on, memory_order_relaxed), 0)

#define MP__TRACE(what, ...)                                                                   \
  do {                                                                                         \
    if (MP__TRACING())                                                                         \
      mp__trace_##what(__VA_ARGS__);                                                           \
  } while (0)

#define MP__TRACE_CLOCK(var) const int64_t var = MP__TRACING() ? mp__now_ns() : 0

/* The event functions run only while tracing: cold, so that an event site costs its caller
 * nothing but the branch (no inlining lost, no registers saved for them). */
#define MP__TRACE_FN __attribute__((cold))

/* What an event is about: the kinds of object, named "<Kind> <n>" unless given a name. */
enum {
  MP__TRK_LOCK = 1,
  MP__TRK_RLOCK,
  MP__TRK_SEMAPHORE,
  MP__TRK_BOUNDED_SEMAPHORE, /* MP__TRK_SEMAPHORE + 1, as RLock is Lock + 1 */
  MP__TRK_CONDITION,
  MP__TRK_EVENT,
  MP__TRK_BARRIER,
  MP__TRK_QUEUE,
  MP__TRK_CONNECTION,
  MP__TRK_KINDS
};

/* Shared memory operations. */
enum { MP__TRK_SHM_CREATE = 1, MP__TRK_SHM_ATTACH, MP__TRK_SHM_UNLINK };

/* synchronize.c: obj of kind was acquired (the wait began at t0; rc is 0 or MP_EOWNERDEAD,
 * else the acquire failed, with that error), or released. Only the outermost level of an
 * RLock is an event. */
MP__TRACE_FN void mp__trace_acquired(int kind, const void *obj, int64_t t0, int rc);
MP__TRACE_FN void mp__trace_released(int kind, const void *obj);
/* A Condition, Event or Barrier wait from t0 to now; ok is false for a timeout. */
MP__TRACE_FN void mp__trace_waited(int kind, const void *obj, int64_t t0, bool ok);

/* queues.c and connection.c: a message of len bytes put, taken, sent or received; the call
 * began at t0. rc is the call's result (a send or receive that failed is an event too). */
MP__TRACE_FN void mp__trace_queue_put(const void *queue, size_t len, int64_t t0);
MP__TRACE_FN void mp__trace_queue_get(const void *queue, size_t len, int64_t t0);
MP__TRACE_FN void mp__trace_conn_send(const void *conn, size_t len, int64_t t0, int rc);
MP__TRACE_FN void mp__trace_conn_recv(const void *conn, size_t len, int64_t t0, int rc);

/* shared_memory.c: op (MP__TRK_SHM_*) done on the segment name of size bytes. */
MP__TRACE_FN void mp__trace_shm(int op, const char *name, size_t size);

/* process.c: a child started (in the parent), this child's first moment (its name is
 * known now), this process's end by returning code, a child reaped (in its parent). */
MP__TRACE_FN void mp__trace_process_start(const mp_process_t *proc);
MP__TRACE_FN void mp__trace_process_child(const char *name);
MP__TRACE_FN void mp__trace_process_exit(int code);
MP__TRACE_FN void mp__trace_process_reaped(const mp_process_t *proc);

/* pool_worker.c: worker w of the pool whose shared block is pool ran chunk of job map,
 * items [first, first + count), from t0 until now; rc is 0, or the chunk failed at
 * failed_item saying msg. pool.c: the supervisor learned that worker w (pid) ended with
 * exitcode (why: msg), and replaces it if replaced. Plain values: the job table's structs
 * are its own (pool_jobs.h). */
MP__TRACE_FN void mp__trace_pool_chunk(const void *pool, uint64_t map, uint32_t chunk,
                                       uint32_t w, uint64_t first, uint64_t count, int64_t t0,
                                       int rc, uint64_t failed_item, const char *msg);
MP__TRACE_FN void mp__trace_pool_worker_end(const void *pool, uint32_t w, int pid, int exitcode,
                                            const char *msg, bool replaced);

#endif /* MP_TRACE_INTERNAL_H */
