/*
 * libmp: named shared memory, Python's multiprocessing.shared_memory.SharedMemory.
 *
 * A segment is a file of /dev/shm (where glibc's shm_open() puts them), so any process of
 * the machine can attach to it by name: a libmp child, another libmp program, or a program
 * that calls shm_open() itself. Its name is what shm_open() takes, without the leading
 * slash (Python's SharedMemory.name).
 *
 * Unlike the objects of the shared arena, a segment has a name that outlives processes, so
 * something must remove it. libmp does: a segment the program creates is unlinked when the
 * program's last process has ended, whether it returned, exited or was killed, unless it
 * was created with MP_SHARED_MEMORY_KEEP or given to mp_shared_memory_keep(). A small
 * tracker process does it, started on the program's first create (docs/architecture.md,
 * "Named shared memory"). Python's resource tracker warns about such segments and, if the
 * program was killed, leaks them.
 *
 * A handle belongs to the process that opened it (a forked child may use its copy); to
 * share a segment with another process, pass its name and attach there.
 */
#ifndef MP_SHARED_MEMORY_H
#define MP_SHARED_MEMORY_H

#ifndef MP_H
#error "include <mp.h>, not <mp/shared_memory.h>"
#endif

/* ============================ named shared memory ============================ */

typedef struct mp_shared_memory_s mp_shared_memory_t;

/* The longest name (bytes, without the optional leading slash): a file name's limit. */
#define MP_SHARED_MEMORY_NAME_MAX 255

/* Flags of mp_shared_memory_create(). */
enum {
  /* Not unlinked when the program ends: the segment stays until someone unlinks it
   * (Python 3.13's track=False). */
  MP_SHARED_MEMORY_KEEP = 1u << 0,
};

/*
 * Creates a segment of size bytes (zero-filled) and maps it. The file is mode 0600, whatever
 * the umask: only this user (and root) can attach, and this user always can. name NULL picks
 * a new unique name ("mp_" and 16 hex digits), as Python does for name=None; a given name may
 * start with one '/'. The segment appears under its name only once it has its full size, so
 * a process that attaches never sees it empty. flags: 0 or MP_SHARED_MEMORY_KEEP. The handle
 * is the caller's, freed by mp_shared_memory_close(). The program's first create without KEEP
 * starts its tracker (a spawn of the executable, once).
 * Errors: MP_EINVAL (shm NULL, size 0 or too large, a name that is empty, "." or "..",
 * holds another '/' or is longer than MP_SHARED_MEMORY_NAME_MAX, unknown flags), MP_EEXIST
 * (the name exists), MP_ENOMEM, MP_ESPAWN (the tracker could not start), MP_ETIMEDOUT (the
 * tracker is stopped and took no record in 30 s), or -errno (-EACCES, -EMFILE, -ENOSPC...).
 * Python: SharedMemory(name, create=True, size=size).
 */
MP_EXTERN int mp_shared_memory_create(mp_shared_memory_t **shm, const char *name, size_t size,
                                      unsigned flags);

/*
 * Attaches to the segment called name, whoever created it, and maps all of it: the size is
 * the segment's. The handle is the caller's, freed by mp_shared_memory_close(). Attaching
 * does not make this program responsible for the segment, but a process of a program whose
 * tracker runs keeps it alive while it lives. Only a segment of this user (its owner the
 * caller's effective uid) and of no group or other permission (as create makes them) is
 * attached: another user could pre-create a well-known name to read or change what the
 * caller writes.
 * Errors: MP_EINVAL (shm or name NULL, a bad name as for create, a segment of 0 bytes),
 * MP_ENOENT (no segment has that name), -EACCES (the segment belongs to another user or has
 * group or other permission bits; or the file cannot be opened), MP_ENOMEM, or -errno.
 * Python: SharedMemory(name).
 */
MP_EXTERN int mp_shared_memory_attach(mp_shared_memory_t **shm, const char *name);

/* The mapped bytes, valid until mp_shared_memory_close(); NULL for NULL. Python: shm.buf.
 * This and every function below abort (SIGABRT, with "libmp: <function>: shared memory
 * handle used after mp_shared_memory_close" on stderr) when given a handle that was closed,
 * as long as libmp can still tell (the last 64 closed handles of the process). */
MP_EXTERN void *mp_shared_memory_buf(const mp_shared_memory_t *shm);

/* The size in bytes; 0 for NULL. Python: shm.size. */
MP_EXTERN size_t mp_shared_memory_size(const mp_shared_memory_t *shm);

/* The name, without a leading slash, owned by the handle; NULL for NULL. Python: shm.name. */
MP_EXTERN const char *mp_shared_memory_name(const mp_shared_memory_t *shm);

/*
 * Removes the name: no process can attach any more, and the memory is freed once the last
 * process has closed it; mappings stay valid. The handle stays open (close it after). Only
 * this segment's name is removed: a name that another program unlinked and used for a
 * segment of its own is left alone (a segment made under it between this call's look-up and
 * its unlink would still be removed: no system call unlinks a name only if it is a given
 * file). Errors: MP_EINVAL (NULL), MP_ENOENT (already unlinked, by anyone, or the name is
 * another segment's since), or -errno.
 * Python: shm.unlink().
 */
MP_EXTERN int mp_shared_memory_unlink(mp_shared_memory_t *shm);

/*
 * The segment will not be unlinked when the program ends (for a segment this program
 * created without MP_SHARED_MEMORY_KEEP; for others there is nothing to change).
 * Errors: MP_EINVAL (NULL). Python: resource_tracker.unregister(shm._name, "shared_memory").
 */
MP_EXTERN int mp_shared_memory_keep(mp_shared_memory_t *shm);

/*
 * Unmaps the segment from this process and frees the handle; the segment and its name
 * stay (unlink it first to remove it). Closing twice aborts (see mp_shared_memory_buf()).
 * Python's `shm.close(); shm.unlink()` is mp_shared_memory_unlink() then
 * mp_shared_memory_close() here. Errors: MP_EINVAL (NULL). Python: shm.close().
 */
MP_EXTERN int mp_shared_memory_close(mp_shared_memory_t *shm);

#endif /* MP_SHARED_MEMORY_H */
