/*
 * Shared values and arrays, Python's sharedctypes.py. A Value is an Array of one element:
 * both are one arena block holding a small header, their own lock if they have one, and the
 * elements; a lock given by the caller is a block of its own, reference counted, that may
 * guard several. The header is written once at creation; only the elements change after.
 */
#include "internal.h"

#include <string.h>

#define VALUE_MAGIC 0x554c4156u /* "VALU" */
#define ARRAY_MAGIC 0x59415241u /* "ARAY" */

typedef enum { SIGNED, UNSIGNED, FLOATING, BYTES } kind_t;

typedef struct {
  uint32_t magic;
  kind_t kind;
  uint32_t elem; /* bytes per element */
  int32_t typecode;
  size_t length;
  mp_lock_t *lock;  /* NULL: raw; its own RLock sits inside the block (MP__INNER_LOCK_AT) */
  uint32_t data_at; /* where the elements start */
} ctypes_t;

/*
 * The header has a cache line of its own: it is only read after creation, so it never moves
 * between the contending processes' caches. A Value or Array of a typecode with its own lock
 * keeps that RLock in the next line and the elements right after it (8-byte aligned, enough
 * for every typecode): an increment under the lock then writes a single line. Raw elements
 * (MP_TYPE_BYTES) start on a line of their own, 64-byte aligned for any struct, with their
 * own lock in a separate block.
 */
#define HEADER 64
#define INNER_DATA_AT (MP__INNER_LOCK_AT + MP__INNER_LOCK_SIZE)

_Static_assert(sizeof(ctypes_t) <= HEADER && HEADER <= MP__INNER_LOCK_AT,
               "the header fits its line");
_Static_assert(INNER_DATA_AT % 8 == 0, "elements after an inner lock are aligned");

static unsigned char *data_of(const ctypes_t *c) {
  return (unsigned char *)c + c->data_at;
}

/*
 * A use reads the header once, into a view, and follows it only once checked: the header is
 * written once at creation, but another process of the program may write the block wild.
 * The elements must lie within the block, and the lock be NULL, the block's own, or a live
 * Lock's block; else MP_ECORRUPT, the header left as it is.
 */
typedef struct {
  ctypes_t h;          /* the header as read: what the accessors use */
  unsigned char *data; /* the elements */
  bool inner;          /* h.lock is the block's own */
} view_t;

/* mp_value_t and mp_array_t stay incomplete: both point at a ctypes_t. 0, MP_EINVAL (not
 * such a handle) or MP_ECORRUPT, without setting the error. */
static int view_of(const void *handle, uint32_t magic, view_t *v) {
  const ctypes_t *c = handle;
  if (!c || c->magic != magic)
    return MP_EINVAL;
  memcpy(&v->h, c, sizeof v->h);
  const ctypes_t *h = &v->h;
  v->data = (unsigned char *)c + h->data_at;
  v->inner = h->lock && (char *)h->lock == (char *)c + MP__INNER_LOCK_AT;
  bool typed = h->kind == SIGNED || h->kind == UNSIGNED || h->kind == FLOATING;
  bool elem_ok = typed ? h->elem == 1 || h->elem == 2 || h->elem == 4 || h->elem == 8
                       : h->kind == BYTES && h->elem > 0;
  if (!elem_ok || (h->data_at != HEADER && h->data_at != INNER_DATA_AT) ||
      h->length > (SIZE_MAX - h->data_at) / h->elem ||
      !mp__shared_is_block(c, h->data_at + h->length * h->elem))
    return MP_ECORRUPT;
  /* A lock within reach: its own magic word is checked as it is taken. */
  if (v->inner)
    return h->data_at == INNER_DATA_AT ? 0 : MP_ECORRUPT;
  return !h->lock || mp__lock_placed(h->lock) ? 0 : MP_ECORRUPT;
}

static const struct {
  char code;
  kind_t kind;
  uint32_t size;
} TYPECODES[] = {
    {'b', SIGNED, sizeof(signed char)},
    {'B', UNSIGNED, sizeof(unsigned char)},
    {'h', SIGNED, sizeof(short)},
    {'H', UNSIGNED, sizeof(unsigned short)},
    {'i', SIGNED, sizeof(int)},
    {'I', UNSIGNED, sizeof(unsigned int)},
    {'l', SIGNED, sizeof(long)},
    {'L', UNSIGNED, sizeof(unsigned long)},
    {'q', SIGNED, sizeof(long long)},
    {'Q', UNSIGNED, sizeof(unsigned long long)},
    {'f', FLOATING, sizeof(float)},
    {'d', FLOATING, sizeof(double)},
    {'c', UNSIGNED, 1},
};

static int lookup(int typecode, kind_t *kind, uint32_t *size, const char *fn) {
  if (typecode < 0) {
    *kind = BYTES;
    *size = (uint32_t) - (int64_t)typecode;
    return 0;
  }
  for (size_t i = 0; i < sizeof TYPECODES / sizeof TYPECODES[0]; i++) {
    if (TYPECODES[i].code == typecode) {
      *kind = TYPECODES[i].kind;
      *size = TYPECODES[i].size;
      return 0;
    }
  }
  return mp__error(MP_EINVAL, "%s: unknown typecode %d ('%c'): not one of bBhHiIlLqQfdc", fn,
                   typecode, typecode > 32 && typecode < 127 ? typecode : '?');
}

static int create(ctypes_t **out, uint32_t magic, int typecode, size_t length, const void *init,
                  mp_lock_t *lock, bool raw, const char *fn) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: the handle pointer is NULL", fn);
  if (typecode == 0)
    return mp__error(MP_EINVAL, "%s: typecode 0", fn);
  kind_t kind = BYTES;
  uint32_t elem = 1;
  int rc = lookup(typecode, &kind, &elem, fn);
  if (rc < 0)
    return rc;
  if (lock && mp__lock_check(lock) < 0)
    return mp__error(MP_EINVAL, "%s: the lock is not a live Lock or RLock", fn);
  bool inner = !raw && !lock && kind != BYTES;
  uint32_t data_at = inner ? INNER_DATA_AT : HEADER;
  if (length > (SIZE_MAX - data_at) / elem)
    return mp__error(MP_ENOMEM, "%s: %zu elements of %u bytes overflow", fn, length, elem);
  void *block;
  if ((rc = mp__shared_alloc(&block, data_at + length * elem)) < 0)
    return rc; /* said by the arena */
  ctypes_t *c = block;
  if (inner) {
    lock = (mp_lock_t *)((char *)c + MP__INNER_LOCK_AT);
    rc = mp__lock_init_inner(lock);
  } else if (!raw) {
    rc = lock ? mp_lock_retain(lock) : mp_rlock_create(&lock);
    if (rc == 0 && (rc = mp__given_add(c, lock, fn)) < 0)
      mp_lock_close(lock);
  }
  if (rc < 0) {
    mp__shared_release_sized(c, data_at + length * elem);
    return rc;
  }
  c->magic = magic;
  c->kind = kind;
  c->elem = elem;
  c->typecode = typecode;
  c->length = length;
  c->lock = raw ? NULL : lock;
  c->data_at = data_at;
  if (init)
    memcpy(data_of(c), init, length * elem);
  *out = c;
  return 0;
}

/* The checked object's view: 0, or an error (set). */
static int checked(const void *obj, uint32_t magic, view_t *v, const char *fn) {
  int rc = view_of(obj, magic, v);
  if (rc == MP_EINVAL)
    return mp__error(rc, "%s: the handle is NULL or closed", fn);
  if (rc == MP_ECORRUPT)
    return mp__error(rc,
                     "%s: the object's shared memory is corrupt: its header places the "
                     "elements or the lock where libmp did not (left as it is)",
                     fn);
  return 0;
}

/* ---------------------------- the accessors ---------------------------- */

/* One access: which object, which elements, and what to do with them under the lock. */
typedef enum { GET_LONG, SET_LONG, ADD_LONG, GET_DOUBLE, SET_DOUBLE, ADD_DOUBLE } op_t;

typedef struct {
  op_t op;
  long l; /* the operand */
  double d;
  long *l_out; /* where the result goes, if not NULL */
  unsigned long *u_out;
  double *d_out;
} access_t;

/*
 * An element is read and written by one relaxed atomic load or store of its width (a plain
 * move on x86, so nothing is lost under a lock): the get and the set of a raw element are
 * then indivisible, as under Python's GIL, and no data race whatever other threads do with
 * it. An add without a lock is still a load and a store, and loses updates as Python's does.
 * Elements of a typed Value or Array are aligned to their width (data_at is 8-aligned).
 */
static uint64_t load_bits(const ctypes_t *c, const unsigned char *p) {
  switch (c->elem) {
  case 1:
    return __atomic_load_n(p, __ATOMIC_RELAXED);
  case 2:
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
  case 4:
    return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED);
  default:
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED);
  }
}

static void store_bits(const ctypes_t *c, unsigned char *p, uint64_t v) {
  switch (c->elem) {
  case 1:
    __atomic_store_n(p, (uint8_t)v, __ATOMIC_RELAXED);
    break;
  case 2:
    __atomic_store_n((uint16_t *)p, (uint16_t)v, __ATOMIC_RELAXED);
    break;
  case 4:
    __atomic_store_n((uint32_t *)p, (uint32_t)v, __ATOMIC_RELAXED);
    break;
  default:
    __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELAXED);
  }
}

static long load_long(const ctypes_t *c, const unsigned char *p) {
  uint64_t v = load_bits(c, p);
  if (c->kind != SIGNED)
    return (long)v;
  switch (c->elem) {
  case 1:
    return (int8_t)v;
  case 2:
    return (int16_t)v;
  case 4:
    return (int32_t)v;
  default:
    return (long)v;
  }
}

/* Truncation to the element's low bytes: C's (and ctypes') conversion on two's complement. */
static void store_long(const ctypes_t *c, unsigned char *p, long x) {
  store_bits(c, p, (uint64_t)x);
}

static double load_double(const ctypes_t *c, const unsigned char *p) {
  uint64_t v = load_bits(c, p);
  if (c->elem == sizeof(float)) {
    uint32_t low = (uint32_t)v;
    float f;
    memcpy(&f, &low, sizeof f);
    return f;
  }
  double d;
  memcpy(&d, &v, sizeof d);
  return d;
}

static void store_double(const ctypes_t *c, unsigned char *p, double x) {
  uint64_t v;
  if (c->elem == sizeof(float)) {
    float f = (float)x;
    uint32_t low;
    memcpy(&low, &f, sizeof low);
    v = low;
  } else {
    memcpy(&v, &x, sizeof v);
  }
  store_bits(c, p, v);
}

static int lock_c(ctypes_t *c) {
  return c->lock ? mp_lock_acquire(c->lock, MP_FOREVER) : 0;
}

static void unlock_c(ctypes_t *c) {
  if (c->lock)
    mp_lock_release(c->lock);
}

/* Element i of the view's object, typed: the op's result goes to a->l_out or a->d_out. */
static int access(const view_t *v, size_t i, access_t *a, const char *fn) {
  ctypes_t *c = (ctypes_t *)&v->h;
  bool wants_double = a->op >= GET_DOUBLE;
  if ((a->op == GET_LONG && !a->l_out && !a->u_out) || (a->op == GET_DOUBLE && !a->d_out))
    return mp__error(MP_EINVAL, "%s: out is NULL", fn);
  if ((wants_double && c->kind != FLOATING) ||
      (!wants_double && (c->kind == FLOATING || c->kind == BYTES)))
    return mp__error(MP_EINVAL, "%s: typecode %d holds no %s", fn, c->typecode,
                     wants_double ? "floating point number" : "integer");
  if (i >= c->length)
    return mp__error(MP_EINVAL, "%s: index %zu is past the end (%zu elements)", fn, i,
                     c->length);
  unsigned char *p = v->data + i * c->elem;
  int rc = lock_c(c);
  if (rc < 0 && rc != MP_EOWNERDEAD)
    return rc;
  switch (a->op) {
  case ADD_LONG: /* in unsigned arithmetic: it wraps at the element's width, as in ctypes */
    a->l = (long)((unsigned long)a->l + (unsigned long)load_long(c, p));
    /* fall through */
  case SET_LONG:
    store_long(c, p, a->l);
    /* fall through */
  case GET_LONG:
    if (a->l_out)
      *a->l_out = load_long(c, p);
    if (a->u_out)
      *a->u_out = (unsigned long)load_long(c, p);
    break;
  case ADD_DOUBLE:
    a->d += load_double(c, p);
    /* fall through */
  case SET_DOUBLE:
    store_double(c, p, a->d);
    /* fall through */
  case GET_DOUBLE:
    if (a->d_out)
      *a->d_out = load_double(c, p);
    break;
  }
  unlock_c(c);
  return rc;
}

/* Copies elements [start, start+count) out (to_obj false) or in, under the lock. */
static int copy(const view_t *v, size_t start, size_t count, void *buf, bool to_obj,
                const char *fn) {
  ctypes_t *c = (ctypes_t *)&v->h;
  if (!buf)
    return mp__error(MP_EINVAL, "%s: buf is NULL", fn);
  if (start > c->length || count > c->length - start)
    return mp__error(MP_EINVAL, "%s: %zu elements from %zu are past the end (%zu elements)", fn,
                     count, start, c->length);
  unsigned char *p = v->data + start * c->elem;
  int rc = lock_c(c);
  if (rc < 0 && rc != MP_EOWNERDEAD)
    return rc;
  if (to_obj)
    memcpy(p, buf, count * c->elem);
  else
    memcpy(buf, p, count * c->elem);
  unlock_c(c);
  return rc;
}

/*
 * The typed accessors, one set for Value and Array (which adds the index): name, the
 * parameters, and the access they make. The unsigned ones carry the same bits through a long
 * (C's modular conversion), so 'L' and 'Q' read back whole.
 */
#define UNPAREN(...) __VA_ARGS__
#define TYPED_ACCESSORS(X)                                                                     \
  X(get_long, (long *out), (.op = GET_LONG, .l_out = out))                                     \
  X(set_long, (long x), (.op = SET_LONG, .l = x))                                              \
  X(add_long, (long delta, long *result), (.op = ADD_LONG, .l = delta, .l_out = result))       \
  X(get_ulong, (unsigned long *out), (.op = GET_LONG, .u_out = out))                           \
  X(set_ulong, (unsigned long x), (.op = SET_LONG, .l = (long)x))                              \
  X(get_double, (double *out), (.op = GET_DOUBLE, .d_out = out))                               \
  X(set_double, (double x), (.op = SET_DOUBLE, .d = x))                                        \
  X(add_double, (double delta, double *result), (.op = ADD_DOUBLE, .d = delta, .d_out = result))

/* Drops a reference to a Value's or Array's block by the size its header gives, checked by
 * view_of against the block: no process has another record of it (a child is given only
 * the handle). A header that does not fit leaves the block out of use. */
static bool release_block(void *block) {
  uint32_t magic = ((const ctypes_t *)block)->magic;
  view_t v;
  return (magic == VALUE_MAGIC || magic == ARRAY_MAGIC) && view_of(block, magic, &v) == 0 &&
         mp__shared_release_sized(block, v.h.data_at + v.h.length * v.h.elem);
}

/* Prioritized: a spawned child's take-over (spawn.c) never returns to later constructors. */
__attribute__((constructor(102))) static void register_release(void) {
  mp__lock_inner_release_set(release_block);
}

/* The header's lock word is not followed: the close that frees the block drops the
 * reference this process gave it, if any (mp__given_release). */
static int close_c(void *handle, uint32_t magic, const char *fn) {
  view_t v;
  if (view_of(handle, magic, &v) == MP_EINVAL)
    return checked(handle, magic, &v, fn);
  mp__given_release(handle, release_block);
  return 0;
}

/* ================================ Value ================================ */

#define VALUE(v, fn)                                                                           \
  view_t view;                                                                                 \
  int checked_rc = checked((v), VALUE_MAGIC, &view, (fn));                                     \
  if (checked_rc < 0)                                                                          \
  return checked_rc

int mp_value_create(mp_value_t **value, int typecode, const void *init, mp_lock_t *lock) {
  return create((ctypes_t **)value, VALUE_MAGIC, typecode, 1, init, lock, false,
                "mp_value_create");
}

int mp_raw_value_create(mp_value_t **value, int typecode, const void *init) {
  return create((ctypes_t **)value, VALUE_MAGIC, typecode, 1, init, NULL, true,
                "mp_raw_value_create");
}

mp_lock_t *mp_value_get_lock(const mp_value_t *value) {
  view_t v;
  return view_of(value, VALUE_MAGIC, &v) == 0 ? v.h.lock : NULL;
}

static int value_access(mp_value_t *value, access_t a, const char *fn) {
  VALUE(value, fn);
  return access(&view, 0, &a, fn);
}

#define VALUE_ACCESSOR(name, params, fields)                                                   \
  int mp_value_##name(mp_value_t *value, UNPAREN params) {                                     \
    return value_access(value, (access_t){UNPAREN fields}, "mp_value_" #name);                 \
  }
TYPED_ACCESSORS(VALUE_ACCESSOR)

int mp_value_read(mp_value_t *value, void *buf) {
  VALUE(value, "mp_value_read");
  return copy(&view, 0, 1, buf, false, "mp_value_read");
}

int mp_value_write(mp_value_t *value, const void *buf) {
  VALUE(value, "mp_value_write");
  return copy(&view, 0, 1, (void *)buf, true, "mp_value_write");
}

void *mp_value_ptr(mp_value_t *value) {
  view_t v;
  return view_of(value, VALUE_MAGIC, &v) == 0 ? v.data : NULL;
}

size_t mp_value_size(const mp_value_t *value) {
  view_t v;
  return view_of(value, VALUE_MAGIC, &v) == 0 ? v.h.elem : 0;
}

int mp_value_retain(mp_value_t *value) {
  VALUE(value, "mp_value_retain");
  mp__shared_retain(value);
  return 0;
}

int mp_value_close(mp_value_t *value) {
  return close_c(value, VALUE_MAGIC, "mp_value_close");
}

/* ================================ Array ================================ */

#define ARRAY(a, fn)                                                                           \
  view_t view;                                                                                 \
  int checked_rc = checked((a), ARRAY_MAGIC, &view, (fn));                                     \
  if (checked_rc < 0)                                                                          \
  return checked_rc

int mp_array_create(mp_array_t **array, int typecode, size_t length, const void *init,
                    mp_lock_t *lock) {
  return create((ctypes_t **)array, ARRAY_MAGIC, typecode, length, init, lock, false,
                "mp_array_create");
}

int mp_raw_array_create(mp_array_t **array, int typecode, size_t length, const void *init) {
  return create((ctypes_t **)array, ARRAY_MAGIC, typecode, length, init, NULL, true,
                "mp_raw_array_create");
}

mp_lock_t *mp_array_get_lock(const mp_array_t *array) {
  view_t v;
  return view_of(array, ARRAY_MAGIC, &v) == 0 ? v.h.lock : NULL;
}

size_t mp_array_length(const mp_array_t *array) {
  view_t v;
  return view_of(array, ARRAY_MAGIC, &v) == 0 ? v.h.length : 0;
}

static int array_access(mp_array_t *array, size_t i, access_t a, const char *fn) {
  ARRAY(array, fn);
  return access(&view, i, &a, fn);
}

#define ARRAY_ACCESSOR(name, params, fields)                                                   \
  int mp_array_##name(mp_array_t *array, size_t i, UNPAREN params) {                           \
    return array_access(array, i, (access_t){UNPAREN fields}, "mp_array_" #name);              \
  }
TYPED_ACCESSORS(ARRAY_ACCESSOR)

int mp_array_read(mp_array_t *array, size_t start, size_t count, void *buf) {
  ARRAY(array, "mp_array_read");
  return copy(&view, start, count, buf, false, "mp_array_read");
}

int mp_array_write(mp_array_t *array, size_t start, size_t count, const void *buf) {
  ARRAY(array, "mp_array_write");
  return copy(&view, start, count, (void *)buf, true, "mp_array_write");
}

void *mp_array_ptr(mp_array_t *array) {
  view_t v;
  return view_of(array, ARRAY_MAGIC, &v) == 0 ? v.data : NULL;
}

size_t mp_array_size(const mp_array_t *array) {
  view_t v;
  return view_of(array, ARRAY_MAGIC, &v) == 0 ? v.h.length * v.h.elem : 0;
}

int mp_array_retain(mp_array_t *array) {
  ARRAY(array, "mp_array_retain");
  mp__shared_retain(array);
  return 0;
}

int mp_array_close(mp_array_t *array) {
  return close_c(array, ARRAY_MAGIC, "mp_array_close");
}
