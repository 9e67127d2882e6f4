/*
 * libmp: Python's multiprocessing, in C.
 *
 * One header, sectioned by object as in libuv: errors, timeouts, contexts and start methods,
 * processes. Every function returns 0 (or a documented non-negative value) on success and a
 * negative MP_E* code on failure; mp_strerror() names a code and mp_last_error() gives the
 * sentence that explains the calling thread's last failure.
 *
 * Ctrl-C: a blocking call returns MP_EINTR when SIGINT arrives and the program's handler
 * returns (Python's KeyboardInterrupt); the rule and the calls it covers are in docs/api.md,
 * "Ctrl-C and blocking calls".
 *
 * Fork safety: every handle stays valid in a child started with the "fork" method, but a
 * child must not join, signal or close its parent's process handles: they describe the
 * parent's children, not its own (mp_active_children() is empty in a new child).
 */
#ifndef MP_H
#define MP_H

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>

#include "mp/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MP_EXTERN __attribute__((visibility("default")))
#else
#define MP_EXTERN
#endif

/* ================================ errors ================================ */

/*
 * Codes that have an errno equivalent keep its value, negated (libuv's convention); codes
 * of libmp's own sit below -4000. Any other negative errno a system call reports is passed
 * through unchanged and mp_strerror() names it too.
 */
#define MP_ERRNO_MAP(XX)                                                                    \
  XX(EINVAL, -EINVAL, "invalid argument")                                                   \
  XX(ENOMEM, -ENOMEM, "out of memory")                                                      \
  XX(ETIMEDOUT, -ETIMEDOUT, "timed out")                                                    \
  XX(ENOSYS, -ENOSYS, "function not implemented by this kernel")                           \
  XX(EMETHOD, -4001, "unknown start method")                                                \
  XX(ECONTEXT, -4002, "the start method has already been set")                              \
  XX(ENOTSTARTED, -4003, "the process has not been started")                                \
  XX(ESTARTED, -4004, "the process has already been started")                               \
  XX(EALIVE, -4005, "the process is still running")                                         \
  XX(ENOTCHILD, -4006, "not a child of this process")                                       \
  XX(ECROSS, -4007, "the function cannot cross to another process")                         \
  XX(ESPAWN, -4008, "the child process failed to start")                                    \
  XX(ERESOLVE, -4009, "the function cannot be resolved in the child")                      \
  XX(EEXIST, -EEXIST, "the name already exists")                                            \
  XX(ENOENT, -ENOENT, "no such name")                                                       \
  XX(EMSGSIZE, -EMSGSIZE, "the message is too large")                                       \
  XX(EINTR, -EINTR, "interrupted by a signal")                                              \
  XX(ENOTPASSED, -4010, "the object was not passed to this process")                       \
  XX(ENOTHELD, -4011, "the lock is not held by the caller")                                 \
  XX(EEMPTY, -4012, "the queue is empty")                                                   \
  XX(EFULL, -4013, "the queue is full")                                                     \
  XX(ECLOSED, -4014, "the object has been closed")                                          \
  XX(EEOF, -4015, "end of file: the other end was closed or its process died")              \
  XX(ETOOSMALL, -4016, "the buffer is too small for the message, which was kept")           \
  XX(EOWNERDEAD, -4017, "acquired, but its previous owner died holding it")                  \
  XX(EBROKEN, -4018, "the barrier is broken")                                               \
  XX(ETOOMANY, -4019, "released or marked done more times than acquired")                   \
  XX(EWORKERDIED, -4020, "the worker running the task died")                                \
  XX(ETASK, -4021, "the task failed")                                                       \
  XX(ETERMINATED, -4022, "the pool was terminated")                                         \
  XX(ENOTREADY, -4023, "the result is not ready")                                          \
  XX(ELIMIT, -4024, "a fixed limit of the library was reached")                            \
  XX(ECORRUPT, -4025, "the object's shared memory is corrupt")

typedef enum {
#define MP__ERR_ENUM(name, value, text) MP_##name = (value),
  MP_ERRNO_MAP(MP__ERR_ENUM)
#undef MP__ERR_ENUM
} mp_errno_t;

/* The text of an error code ("timed out"); never NULL, also for unknown codes. */
MP_EXTERN const char *mp_strerror(int code);

/* The name of an error code ("MP_ETIMEDOUT", or "EMFILE" for a passed-through errno). */
MP_EXTERN const char *mp_err_name(int code);

/*
 * The sentence that explains the calling thread's most recent failure, naming what failed
 * and why ("mp_process_start: posix_spawn of /nonexistent: No such file or directory").
 * Empty if no libmp call of this thread has failed. The text stays valid until the thread's
 * next failing libmp call.
 */
MP_EXTERN const char *mp_last_error(void);

/* ================================ version ================================ */

/*
 * The version of the libmp the program runs with ("0.1.0"), which may be newer than the
 * MP_VERSION_STRING it was compiled against (<mp/version.h>: MP_VERSION_MAJOR, _MINOR,
 * _PATCH). Never NULL; a static string. No Python counterpart (multiprocessing is versioned
 * with the interpreter, sys.version).
 */
MP_EXTERN const char *mp_version(void);

/* ================================ timeouts ================================ */

/*
 * Timeouts are seconds as a double, as in Python, measured on the monotonic clock.
 * MP_FOREVER blocks until the event happens; 0 does not block; a negative timeout is 0.
 */
#define MP_FOREVER HUGE_VAL

/* ======================= contexts and start methods ======================= */

/*
 * A context selects how children are made (Python's multiprocessing.get_context()):
 *  "fork"       fork() of the calling process; the child shares the parent's memory image
 *               as it was at the fork, globals included. Fastest.
 *  "spawn"      posix_spawn() of the running executable. libmp takes the new program over
 *               before its main() runs and calls the target: globals are fresh, and main()
 *               never runs again in a child (no "if __name__ == '__main__'" to forget).
 *  "forkserver" a server spawned from the executable on first use forks each child, so
 *               children start from a clean single-threaded image, cheaper than a spawn.
 * Contexts are static objects: they are never freed.
 */
typedef struct mp_context_s mp_context_t;

/*
 * Finds the context of a start method; NULL means the default (mp_get_start_method()).
 * Errors: MP_EINVAL (ctx is NULL), MP_EMETHOD (unknown name, or MP_START_METHOD holds one).
 * Python: multiprocessing.get_context(method).
 */
MP_EXTERN int mp_get_context(const char *method, mp_context_t **ctx);

/* The start method a context uses ("fork", "spawn" or "forkserver"); NULL for NULL. */
MP_EXTERN const char *mp_context_start_method(const mp_context_t *ctx);

/*
 * Sets the program's default start method, once, as Python's set_start_method(): a second
 * call fails with MP_ECONTEXT unless force is true. Before the first call, the default is
 * the environment variable MP_START_METHOD if set (so demos can be rerun under each method),
 * else "fork". Errors: MP_EINVAL (NULL), MP_EMETHOD, MP_ECONTEXT.
 */
MP_EXTERN int mp_set_start_method(const char *method, bool force);

/*
 * The default start method's name, fixing it as Python's get_start_method() does.
 * NULL if MP_START_METHOD names no start method (mp_last_error() says so).
 */
MP_EXTERN const char *mp_get_start_method(void);

/* "fork", "spawn", "forkserver", then NULL. Python: get_all_start_methods(). */
MP_EXTERN const char *const *mp_get_all_start_methods(void);

/*
 * The program that "spawn" and "forkserver" start, instead of the running executable
 * (Python's set_executable()); NULL restores the running executable. It must be a build of
 * the same program: a child whose functions differ from the parent's (another build-id)
 * refuses to run them and the start fails with MP_ERESOLVE. A running fork server keeps
 * the executable it was started from. Errors: MP_EINVAL (empty or too long a path).
 */
MP_EXTERN int mp_set_executable(const char *path);

/* ================================ processes ================================ */

typedef struct mp_process_s mp_process_t;

/*
 * A process's work. It gets its own copy of the argument bytes given to mp_process_create()
 * and returns the exit status (0 for success; only the low 8 bits reach the parent, as with
 * exit()). Under "spawn" and "forkserver" the function crosses by identity: it must belong
 * to the executable or a shared library (one the parent loaded with dlopen() is loaded in
 * the child as well); anything else is refused by mp_process_start() with MP_ECROSS.
 */
typedef int (*mp_target_t)(void *arg, size_t size);

/*
 * Creates a process object (not yet running) that will call target(copy of arg, size).
 * ctx NULL uses the default context; arg may be NULL when size is 0; name NULL gives
 * Python's "Process-N" ("Process-1:2" for the second child of the first child). The argument
 * bytes are copied: the caller keeps ownership of arg.
 * Errors: MP_EINVAL (proc or target NULL, arg NULL with size > 0), MP_ENOMEM, MP_EMETHOD
 * (ctx NULL and MP_START_METHOD names no start method).
 * Python: multiprocessing.Process(target=..., args=..., name=...).
 */
MP_EXTERN int mp_process_create(mp_process_t **proc, mp_context_t *ctx, mp_target_t target,
                                const void *arg, size_t size, const char *name);

/*
 * Daemon children are terminated (SIGTERM, then joined) when their parent exits normally;
 * the others are joined then, as Python does at interpreter exit. Unlike Python, a daemon
 * may start children of its own. Errors: MP_EINVAL, MP_ESTARTED, MP_ENOTCHILD (the current
 * or the parent process). Python: Process.daemon.
 */
MP_EXTERN int mp_process_set_daemon(mp_process_t *proc, bool daemon);
MP_EXTERN bool mp_process_daemon(const mp_process_t *proc);

/*
 * By default a child dies (SIGKILL) when its parent process dies without exiting normally,
 * for example when it is killed: no child outlives its parent by accident. Pass false
 * before start to let this child outlive a parent that dies. Errors: MP_EINVAL,
 * MP_ESTARTED, MP_ENOTCHILD. No Python counterpart (Python's children are orphaned).
 */
MP_EXTERN int mp_process_set_die_with_parent(mp_process_t *proc, bool die_with_parent);

/* Renames a process (also after start; the child keeps the name it started with).
 * Errors: MP_EINVAL, MP_ENOMEM. Python: Process.name. */
MP_EXTERN int mp_process_set_name(mp_process_t *proc, const char *name);

/* The name; NULL for NULL. The text is valid until the next rename or close. */
MP_EXTERN const char *mp_process_name(const mp_process_t *proc);

/*
 * Starts the child. When it returns 0 the child runs the target; for "spawn" and
 * "forkserver" it has already resolved the target and received its argument, so a failure
 * to get there is reported here, not as an exit code.
 * Errors: MP_EINVAL, MP_ESTARTED (started before), MP_ENOTCHILD (the current or the parent
 * process), MP_ECROSS (the target is not in a loaded
 * object), MP_ESPAWN (exec failed, or the child died before taking over: mp_last_error() has
 * the cause), MP_ERESOLVE (the child runs another build of the target's object), MP_ECLOSED
 * ("spawn", "forkserver": an end given with mp_process_pass_conn was closed since, also
 * while another thread's call was in it; a retry fails so too), or a system error such as
 * -EAGAIN, -EMFILE ("forkserver": also the server's own fd limit, one fd per running child)
 * or -ETOOMANYREFS ("forkserver": the request, the server's spare's report or the child's
 * READY could not carry its fd, as this user's processes hold too many fds in flight;
 * -ENOBUFS or -ENOMEM likewise). After a failure the process can be started again.
 * Python: Process.start().
 */
MP_EXTERN int mp_process_start(mp_process_t *proc);

/*
 * Waits for the child to end, at most timeout seconds, and reaps it. Waiting uses a process
 * file descriptor: no polling loop. Errors: MP_EINVAL, MP_ENOTSTARTED, MP_ETIMEDOUT (still
 * running), MP_ENOTCHILD (the current process, or a copy of the object in a process forked
 * since the start, whose sibling the child is). Joining the parent process
 * (mp_parent_process()) waits for it to exit. Python: Process.join(timeout).
 */
MP_EXTERN int mp_process_join(mp_process_t *proc, double timeout);

/* 1 while the process runs, 0 before start or after it ended, or a negative error
 * (MP_EINVAL; MP_ENOTCHILD in a copy forked since the start, as for mp_process_join).
 * Python: Process.is_alive(). */
MP_EXTERN int mp_process_is_alive(mp_process_t *proc);

/*
 * The exit code once the child has ended: the target's return value or the status passed
 * to exit(), or minus the signal number that killed it (-9 for SIGKILL), as Python reports.
 * Errors: MP_EINVAL, MP_ENOTSTARTED, MP_EALIVE (still running: Python's None),
 * MP_ENOTCHILD (the current or the parent process, or a copy forked since the start, as
 * for mp_process_join), -ECHILD (it ended, but the program's
 * own waitpid(-1) or an ignored SIGCHLD took its status). Python: Process.exitcode.
 */
MP_EXTERN int mp_process_exitcode(mp_process_t *proc, int *exitcode);

/* Sends SIGTERM / SIGKILL; a child that has already ended is left alone (returns 0).
 * Errors: MP_EINVAL, MP_ENOTSTARTED, MP_ENOTCHILD. A copy of the object forked since the
 * start may signal the child, as in Python. Python: terminate(), kill(). */
MP_EXTERN int mp_process_terminate(mp_process_t *proc);
MP_EXTERN int mp_process_kill(mp_process_t *proc);

/* The process id (> 0), or MP_EINVAL / MP_ENOTSTARTED. Python: Process.pid. */
MP_EXTERN int mp_process_pid(const mp_process_t *proc);

/*
 * A file descriptor that becomes readable when the child ends, for poll() or an event loop
 * beside other events; owned by the process object (do not close it; it stays valid, and
 * readable once the child ended, until mp_process_close()). Errors: MP_EINVAL,
 * MP_ENOTSTARTED, MP_ENOTCHILD, -ECHILD (it ended and was reaped by the program before
 * libmp could watch it: nothing to wait for). Python: Process.sentinel.
 */
MP_EXTERN int mp_process_sentinel(const mp_process_t *proc);

/*
 * Frees a process object and its fds; a child that has ended is reaped. An ended child
 * that is never joined, closed or listed by mp_active_children() stays a zombie, and its
 * object keeps two fds at most, until then or the program's exit. Errors: MP_EINVAL (NULL, or the
 * current or parent process, which are never freed) and MP_EALIVE (still running: join,
 * terminate or kill it first; the object stays valid), MP_ENOTCHILD (a copy forked since the
 * start, as for mp_process_join). Python: Process.close().
 */
MP_EXTERN int mp_process_close(mp_process_t *proc);

/* This process as a process object (name "MainProcess" in a program's first process).
 * Never NULL, never freed. Python: current_process(). */
MP_EXTERN mp_process_t *mp_current_process(void);

/* The process that started this one (pid and name, is_alive and join work), or NULL in a
 * process libmp did not start. Python: parent_process(). */
MP_EXTERN mp_process_t *mp_parent_process(void);

/*
 * Fills children[0 .. capacity) with this process's started children that still run,
 * reaping those that ended, and returns how many run (which may exceed capacity; children
 * may be NULL when capacity is 0). Errors: MP_EINVAL. Python: active_children().
 */
MP_EXTERN int mp_active_children(mp_process_t **children, size_t capacity);

/*
 * The number of CPUs this process may use: those of its affinity mask, further limited by
 * a cgroup CPU quota (v1 or v2), rounded up; at least 1. Python 3.13's
 * os.process_cpu_count(), plus the cgroup limit Python does not read.
 */
MP_EXTERN int mp_cpu_count(void);

/* ============================ per-area headers ============================ */

/* Each area past processes has its own header under include/mp/, included here only (each
 * refuses to be included on its own): the user includes <mp.h>. */
#include "mp/connection.h"
#include "mp/queues.h"
#include "mp/synchronize.h"
#include "mp/sharedctypes.h"
#include "mp/shared_memory.h"
#include "mp/pool.h"
#include "mp/trace.h"

#ifdef __cplusplus
}
#endif
#endif /* MP_H */
