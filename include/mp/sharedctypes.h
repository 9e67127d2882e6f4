/*
 * libmp shared values and arrays: Python's multiprocessing.sharedctypes.
 *
 * A Value holds one element, an Array a fixed number, of a type named by Python's typecodes
 * ('b', 'B', 'h', 'H', 'i', 'I', 'l', 'L', 'q', 'Q', 'f', 'd', 'c': signed and unsigned
 * char, short, int, long, long long, float, double, and one byte) or of raw elements of a
 * given size (MP_TYPE_BYTES(n), a struct for instance). Each lives in the shared arena: a
 * handle is valid in every process of the program, under every start method, and crosses in
 * a child's argument bytes for free. By default each has its own RLock, taken by every
 * accessor below (Python's synchronized wrapper); a caller may give a Lock or RLock to share
 * instead, or none at all (mp_raw_value_create, mp_raw_array_create: Python's RawValue,
 * RawArray and lock=False), and then the accessors take no lock.
 *
 * Accessors return 0, or MP_EOWNERDEAD: done, but the lock's previous holder died holding it
 * (the data is as it left it: every accessor changes it with plain stores under the lock, so
 * only a caller's own multi-step update can be half done). Values and arrays are reference
 * counted as the objects of <mp/synchronize.h>: retain adds a reference, close drops one.
 * A lock in a block of its own (a caller's, or the own RLock of MP_TYPE_BYTES elements) is
 * released by the close that frees the object in the process that made it (or a thread of
 * it); a last close in another process, a forked child included, leaves that lock allocated
 * until the program ends, since the lock's address in shared memory, which any process of
 * the program can write, is never trusted to release anything.
 */
#ifndef MP_SHAREDCTYPES_H
#define MP_SHAREDCTYPES_H

#ifndef MP_H
#error "include <mp.h>, not <mp/sharedctypes.h>"
#endif

/* The typecode of raw elements of n bytes (1 .. 2^31-1): only raw access applies. */
#define MP_TYPE_BYTES(n) (-(int)(n))

/* ================================ Value ================================ */

typedef struct mp_value_s mp_value_t;

/*
 * A Value of the given typecode, holding a copy of *init (one element; NULL: zero), guarded
 * by lock (a Lock or RLock, which it retains) or, for NULL, by an RLock of its own.
 * Errors: MP_EINVAL (value NULL, an unknown typecode, a closed lock), MP_ENOMEM.
 * Python: multiprocessing.Value(typecode, value, lock=True or a lock).
 */
MP_EXTERN int mp_value_create(mp_value_t **value, int typecode, const void *init,
                              mp_lock_t *lock);

/* The same without a lock. Python: RawValue(typecode, value), Value(..., lock=False). */
MP_EXTERN int mp_raw_value_create(mp_value_t **value, int typecode, const void *init);

/* Its lock (owned by the value), or NULL for a raw value or a NULL handle. A Value's own
 * lock lives inside the Value's block: retaining or closing it retains or closes the Value.
 * Python: Value.get_lock(). */
MP_EXTERN mp_lock_t *mp_value_get_lock(const mp_value_t *value);

/*
 * Typed access under the lock. long for the integer typecodes and 'c' (stored with C's
 * conversion, wrapping as ctypes does), double for 'f' and 'd'; add stores value + delta and
 * gives the new value in *result (may be NULL) in one hold of the lock: the "+= 1" that
 * Python needs `with v.get_lock(): v.value += 1` for. Integer addition wraps at the element's
 * width (never undefined: it is done in unsigned arithmetic). get_long gives an 'L' or 'Q'
 * value of 2^63 or more as a negative long: get_ulong gives it whole, set_ulong stores any
 * unsigned long (both convert as C does, for every integer typecode). Errors: MP_EINVAL
 * (NULL, closed, out NULL, or the other kind of typecode). Python: Value.value.
 */
MP_EXTERN int mp_value_get_long(mp_value_t *value, long *out);
MP_EXTERN int mp_value_set_long(mp_value_t *value, long x);
MP_EXTERN int mp_value_add_long(mp_value_t *value, long delta, long *result);
MP_EXTERN int mp_value_get_ulong(mp_value_t *value, unsigned long *out);
MP_EXTERN int mp_value_set_ulong(mp_value_t *value, unsigned long x);
MP_EXTERN int mp_value_get_double(mp_value_t *value, double *out);
MP_EXTERN int mp_value_set_double(mp_value_t *value, double x);
MP_EXTERN int mp_value_add_double(mp_value_t *value, double delta, double *result);

/* Copies the element out of or into buf (mp_value_size() bytes), under the lock, for any
 * typecode. Errors: MP_EINVAL. */
MP_EXTERN int mp_value_read(mp_value_t *value, void *buf);
MP_EXTERN int mp_value_write(mp_value_t *value, const void *buf);

/* The element itself, for access without the lock (hold it yourself), and its size; NULL
 * and 0 for a NULL or closed handle. Python: the ctypes object of a RawValue. */
MP_EXTERN void *mp_value_ptr(mp_value_t *value);
MP_EXTERN size_t mp_value_size(const mp_value_t *value);

MP_EXTERN int mp_value_retain(mp_value_t *value);
MP_EXTERN int mp_value_close(mp_value_t *value);

/* ================================ Array ================================ */

typedef struct mp_array_s mp_array_t;

/*
 * An Array of length (0 is allowed, as in Python) elements of the typecode, holding a copy of
 * init (length elements; NULL: zeros), guarded by lock or, for NULL, by an RLock of its own.
 * Errors: MP_EINVAL (array NULL, an unknown typecode, a closed lock), MP_ENOMEM
 * (too large for the arena). Python: multiprocessing.Array(typecode, init, lock=...).
 */
MP_EXTERN int mp_array_create(mp_array_t **array, int typecode, size_t length, const void *init,
                              mp_lock_t *lock);

/* The same without a lock. Python: RawArray(typecode, init), Array(..., lock=False). */
MP_EXTERN int mp_raw_array_create(mp_array_t **array, int typecode, size_t length,
                                  const void *init);

/* Its lock (owned by the array), or NULL. Python: Array.get_lock(). */
MP_EXTERN mp_lock_t *mp_array_get_lock(const mp_array_t *array);

/* The number of elements; 0 for NULL. Python: len(a). */
MP_EXTERN size_t mp_array_length(const mp_array_t *array);

/* Element i, typed as for Value, under the lock. Errors: MP_EINVAL (as Value, and i out of
 * range: Python's IndexError). Python: a[i], a[i] = x. */
MP_EXTERN int mp_array_get_long(mp_array_t *array, size_t i, long *out);
MP_EXTERN int mp_array_set_long(mp_array_t *array, size_t i, long x);
MP_EXTERN int mp_array_add_long(mp_array_t *array, size_t i, long delta, long *result);
MP_EXTERN int mp_array_get_ulong(mp_array_t *array, size_t i, unsigned long *out);
MP_EXTERN int mp_array_set_ulong(mp_array_t *array, size_t i, unsigned long x);
MP_EXTERN int mp_array_get_double(mp_array_t *array, size_t i, double *out);
MP_EXTERN int mp_array_set_double(mp_array_t *array, size_t i, double x);
MP_EXTERN int mp_array_add_double(mp_array_t *array, size_t i, double delta, double *result);

/* Copies count elements from start out of or into buf, in one hold of the lock.
 * Errors: MP_EINVAL (NULL, or the range past the end). Python: a[start:start+count]. */
MP_EXTERN int mp_array_read(mp_array_t *array, size_t start, size_t count, void *buf);
MP_EXTERN int mp_array_write(mp_array_t *array, size_t start, size_t count, const void *buf);

/* The elements themselves and their size in bytes (length * element size); NULL and 0 for
 * a NULL or closed handle. */
MP_EXTERN void *mp_array_ptr(mp_array_t *array);
MP_EXTERN size_t mp_array_size(const mp_array_t *array);

MP_EXTERN int mp_array_retain(mp_array_t *array);
MP_EXTERN int mp_array_close(mp_array_t *array);

#endif /* MP_SHAREDCTYPES_H */
