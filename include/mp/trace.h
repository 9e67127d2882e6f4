/*
 * libmp: a timeline of what every process did (docs/trace.md).
 *
 * With tracing on, every process of the program records its start and end, lock waits and
 * holds, Condition, Event and Barrier waits, Queue puts and gets, Connection sends and
 * receives, pool chunks, lost workers and failed tasks, and shared memory creates, attaches
 * and unlinks; when the program ends, the process that started the trace writes them all
 * as one file of Chrome's trace-event JSON, which Perfetto (ui.perfetto.dev) and
 * chrome://tracing open, and which `demos/timeline FILE` prints as text lanes.
 *
 * Two ways to turn it on: the environment variable MP_TRACE=FILE (from the program's first
 * event, until its exit), or mp_trace_start() / mp_trace_stop() around the part to look at.
 * Children of every start method trace as long as their parent did when it started them.
 * Off (the default), an event site costs one predictable branch.
 *
 * Each process writes its events into files of its own in a directory of /dev/shm, through
 * a mapped ring: what a process recorded stays there when it is killed. Until the merge,
 * FILE is a valid JSON file without events that names that directory; a program killed
 * before the merge leaves both, and `demos/timeline --repair FILE` (mp_trace_merge()) then
 * writes FILE from the directory.
 *
 * Python has no counterpart (its multiprocessing has only log_to_stderr()).
 */
#ifndef MP_TRACE_H
#define MP_TRACE_H

#ifndef MP_H
#error "include <mp.h>, not <mp/trace.h>"
#endif

/* =================================== trace =================================== */

/* The longest name mp_set_name() and mp_trace_mark() take, in bytes, without the NUL. */
#define MP_TRACE_NAME_MAX 31

/*
 * Starts recording into path (a file name, overwritten now with a placeholder that names
 * the directory of /dev/shm where the per-process files wait; path + ".XXXXXX" where there
 * is no /dev/shm). This process writes path when it calls mp_trace_stop() or exits
 * normally; children it starts from now on record too (a fork server only if it was
 * started after this call).
 * An existing FILE is overwritten if it is a regular file of the caller's (effective uid)
 * with no other name (a hard link in a shared folder could name any file of the caller's).
 * Errors: MP_EINVAL (path NULL, empty or too long, tracing is already on in this process, or
 * path is a symbolic link, a hard link or not a regular file of the caller's), or the
 * system error of creating the directory, this process's event files in it (EMFILE,
 * ENOSPC, EFBIG) or the file; after an error recording is off, and the directory and
 * LIBMP_TRACE_DIR are undone.
 * Thread safety: it names the directory to children in the environment variable
 * LIBMP_TRACE_DIR (setenv()). The first call of a process adds that variable, which may move
 * environ: call it before other threads start spawn or forkserver children or read the
 * environment (getenv() included), or use MP_TRACE, which starts before main. Later calls,
 * and mp_trace_stop() (which empties the variable, a child ignores it empty), only replace
 * its value in place, safe while other threads read environ. A start and a stop may run in
 * two threads at once: a trace stopped while the next one starts is written to its own file.
 */
MP_EXTERN int mp_trace_start(const char *path);

/*
 * Stops recording in this process and writes the trace file from every process's events so
 * far (a child still running keeps recording into a file nobody reads). Only the process
 * that started the trace (mp_trace_start() or MP_TRACE) can stop it, once: of two stops at
 * once (two threads, or a thread and the exit), one writes the file and the other fails.
 * The process's normal exit waits for a stop that another thread is still writing, as long
 * as that merge makes progress: it gives up after 2 s in which the merge read, sorted and
 * wrote nothing (blocked in a read or a write), says so on stderr, and the file then stays
 * the placeholder (mp_trace_merge() repairs it). A child forked meanwhile never waits for
 * its parent's merge; nor does an exit from the merging thread itself (a signal handler's).
 * Errors: MP_EINVAL (not tracing, or tracing for a parent: only it writes the file), or the
 * error of mp_trace_merge().
 */
MP_EXTERN int mp_trace_stop(void);

/*
 * Writes path as trace-event JSON from the per-process files of the directory its
 * placeholder names, then removes them: the repair step for a program that was killed
 * before it wrote its trace (run it once the program's processes are gone). The file is
 * replaced whole (written aside, then renamed), so a reader never sees half of it.
 * The directory must be one libmp makes for path (/dev/shm/libmp-trace-XXXXXX or
 * path.XXXXXX), not a symbolic link, owned by the caller's effective uid, of mode 0700; only
 * its <pid>.<n>.bin and .ring files are removed, and it only if nothing else is left.
 * The files are read as untrusted (their processes may have been killed mid-write or have
 * scribbled on them): a record holding a word no process writes (a timestamp outside
 * [0, 2^62) ns, an exit code that is neither a status nor minus a signal) and a ring's
 * impossible count of dropped events are left out, counted in the trace's otherData
 * "corrupt", and the rest is written.
 * Errors: MP_EINVAL (path NULL or too long; the directory named is not one of those),
 * MP_ENOENT (no such file, the file is not an unfinished trace, or its directory is gone),
 * MP_ENOMEM, or a system error reading the directory or writing the file.
 */
MP_EXTERN int mp_trace_merge(const char *path);

/*
 * Names a shared object in traces: a Lock, RLock, Semaphore, Condition, Event, Barrier,
 * Queue, SimpleQueue, Connection end or the lock of a Value, any handle that lives in the
 * shared arena. Without a name an object is "<Kind> <n>", numbered in order of its first
 * event in the trace. The name belongs to the object's address: set it once, before the
 * object's first events, in any process (a name set while tracing is off is remembered
 * by this process and its forked children, 256 names at most). The name is copied.
 * Errors: MP_EINVAL (object not a shared handle, name NULL, empty or longer than
 * MP_TRACE_NAME_MAX), MP_ENOMEM (256 names are remembered already, while tracing is off).
 */
MP_EXTERN int mp_set_name(void *object, const char *name);

/*
 * Records an instant event labelled label on the calling thread's lane (a phase of the
 * program: "setup done"), if tracing is on; does nothing otherwise. The label is copied,
 * cut to MP_TRACE_NAME_MAX bytes. Errors: MP_EINVAL (label NULL).
 */
MP_EXTERN int mp_trace_mark(const char *label);

/* True while this process records events. */
MP_EXTERN bool mp_trace_enabled(void);

#endif /* MP_TRACE_H */
