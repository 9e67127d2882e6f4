/*
 * mp_pool_map_shared: a map whose items and results stay where they are, in an Array or a
 * named segment, read and written in place by the workers.
 *
 * It is the pool's ordinary map over chunk descriptors, one per chunk of the caller's
 * items, each naming this call and a chunk number; the task is run_chunk() below, a
 * trampoline of libmp's that crosses to every worker by identity as any task does. The
 * call's description (the caller's function by identity, the two spans) is one block of
 * the shared arena, at the same address in every process, so a descriptor is 24 bytes
 * whatever the items weigh: the parent copies no item and no result.
 *
 * Where the bytes are, in a worker: an Array lives in the arena, so its address is valid in
 * every worker under every start method. A segment is mapped wherever each process mapped
 * it: a worker process attaches to it by name once and keeps the mapping for the calls that
 * follow (a few segments per worker), checking by device and inode that the name still
 * names the file the caller mapped; a thread worker uses the caller's mapping.
 *
 * The description block outlives its call: once the call returns it goes to a free list for
 * the next call and is never given back to the arena, so a worker that still looks at a
 * descriptor of a call that ended (a thread worker after mp_pool_terminate, say) reads a
 * block that exists; the call's id, checked after the worker has read what it needs, tells
 * it the call is over.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char what[] = "mp_pool_map_shared";

/* One span as a worker finds it. */
enum { SPAN_NONE, SPAN_ARENA, SPAN_SEGMENT };
typedef struct {
  uint32_t kind;
  char *base;      /* item 0: in the arena, or in the caller's mapping of the segment */
  uint64_t offset; /* of item 0 in the segment */
  uint64_t item_size;
  uint64_t end;      /* offset + n * item_size: the bytes the segment must hold */
  uint64_t dev, ino; /* the segment's file; ino 0: its name is gone (unlinked) */
  char name[MP_SHARED_MEMORY_NAME_MAX + 1];
} span_t;

/* A call, in the arena. Everything before ref is copied by a worker at each chunk. */
typedef struct call_s {
  _Atomic uint64_t id; /* the running call's unique number; 0 between calls */
  int32_t owner;       /* the caller's pid: thread workers share its memory */
  mp__fn_t local_fn;   /* the caller's pointer, valid in the caller's process */
  void *user;
  uint64_t n, chunksize;
  span_t in, out;
  mp__fnref_t ref; /* the function by identity, for worker processes */
} call_t;

/* What crosses per chunk. */
typedef struct {
  uint64_t call; /* call_t address, valid in every process */
  uint64_t id;
  uint64_t chunk;
} chunk_desc_t;

/* ------------------------------ a worker's side ------------------------------ */

/* A worker's function of its latest call, and the segments that call uses (its in and its
 * out), attached on first use. Per thread: thread workers resolve nothing and attach
 * nothing, but share the process. */
#define SEGMENTS 2
static __thread struct {
  uint64_t id;
  mp__fn_t fn;
} fn_cache;
static __thread struct {
  uint64_t dev, ino;
  mp_shared_memory_t *shm;
} segments[SEGMENTS];

static int segment_identity(const char *name, uint64_t *dev, uint64_t *ino) {
  char path[sizeof "/dev/shm/" + MP_SHARED_MEMORY_NAME_MAX];
  struct stat st;
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  if (stat(path, &st) < 0)
    return -errno;
  *dev = (uint64_t)st.st_dev;
  *ino = (uint64_t)st.st_ino;
  return 0;
}

/* The slot holding the span's segment, or SEGMENTS. */
static unsigned segment_slot(const span_t *s) {
  unsigned i = 0;
  while (i < SEGMENTS && !(s->kind == SPAN_SEGMENT && segments[i].shm &&
                           segments[i].dev == s->dev && segments[i].ino == s->ino))
    i++;
  return i;
}

/* A new call: the segments it does not use are closed, so that a worker keeps an unlinked
 * segment's memory alive only until it runs a chunk of another call. The segments the new
 * call shares with the last one stay mapped: no attach, no page faults again. */
static void segments_keep_only(const span_t *in, const span_t *out) {
  for (unsigned i = 0; i < SEGMENTS; i++) {
    if (segments[i].shm && segment_slot(in) != i && segment_slot(out) != i) {
      mp_shared_memory_close(segments[i].shm);
      segments[i].shm = NULL;
    }
  }
}

/* This worker process's mapping of the span's segment, attached on first use. */
static int segment_base(const span_t *s, char **base) {
  if (s->ino == 0)
    return mp_task_fail("segment '%s' was unlinked before the map: worker processes attach "
                        "to a segment by name",
                        s->name);
  unsigned i = segment_slot(s);
  if (i == SEGMENTS) {
    mp_shared_memory_t *shm;
    uint64_t dev = 0, ino = 0;
    int rc = mp_shared_memory_attach(&shm, s->name);
    if (rc < 0)
      return mp_task_fail("attaching to segment '%s': %s", s->name, mp_last_error());
    if (segment_identity(s->name, &dev, &ino) < 0 || dev != s->dev || ino != s->ino) {
      mp_shared_memory_close(shm);
      return mp_task_fail("segment '%s' was replaced by another of the same name", s->name);
    }
    i = segments[0].shm ? 1 : 0; /* segments_keep_only left this call's at most */
    if (segments[i].shm)
      mp_shared_memory_close(segments[i].shm);
    segments[i].dev = dev;
    segments[i].ino = ino;
    segments[i].shm = shm;
  }
  if (mp_shared_memory_size(segments[i].shm) < s->end)
    return mp_task_fail("segment '%s' holds %zu bytes, the map needs %llu", s->name,
                        mp_shared_memory_size(segments[i].shm), (unsigned long long)s->end);
  *base = (char *)mp_shared_memory_buf(segments[i].shm) + s->offset;
  return 0;
}

/* Item first of the span, in this process; NULL for no span. */
static int span_at(const span_t *s, bool own_process, uint64_t first, char **at) {
  char *base = s->base;
  *at = NULL;
  if (s->kind == SPAN_NONE)
    return 0;
  if (s->kind == SPAN_SEGMENT && !own_process) {
    int rc = segment_base(s, &base);
    if (rc != 0)
      return rc;
  }
  *at = base + first * s->item_size; /* within the span: checked by the caller */
  return 0;
}

/* The task of every descriptor: the caller's function on the chunk's items, in place. */
static int run_chunk(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)result;
  (void)result_size;
  chunk_desc_t d;
  if (size != sizeof d)
    return mp_task_fail("a malformed chunk descriptor of %zu bytes", size);
  memcpy(&d, arg, sizeof d);
  const call_t *shared = (const call_t *)(uintptr_t)d.call;
  if (!mp__shared_contains(shared))
    return mp_task_fail("a chunk descriptor that names no call");
  call_t c;
  memcpy(&c, shared, offsetof(call_t, ref));
  bool own_process = c.owner == getpid();
  mp__fn_t fn = c.local_fn;
  if (!own_process) {
    if (fn_cache.id != d.id) {
      if (mp__fnref_resolve(&shared->ref, &fn_cache.fn) < 0)
        return mp_task_fail("%s", mp_last_error());
      fn_cache.id = d.id;
      segments_keep_only(&c.in, &c.out);
    }
    fn = fn_cache.fn;
  }
  /* Read before the check: a block that a later call reuses shows another id. */
  if (atomic_load(&shared->id) != d.id || c.chunksize == 0 || d.chunk > c.n / c.chunksize ||
      d.chunk * c.chunksize >= c.n)
    return mp_task_fail("a chunk of a map that is over");
  uint64_t first = d.chunk * c.chunksize;
  uint64_t count = c.n - first < c.chunksize ? c.n - first : c.chunksize;
  char *in, *out;
  int rc = span_at(&c.in, own_process, first, &in);
  if (rc == 0)
    rc = span_at(&c.out, own_process, first, &out);
  if (rc != 0)
    return rc;
  return ((mp_shared_task_fn_t)fn)(in, out, first, count, c.user);
}

/* ------------------------------ the caller's side ------------------------------ */

/* Description blocks between calls, listed in this process's memory: a link in the block,
 * which any worker can write, made a later call write its block where a wild link pointed
 * (test_forged_call_free_list). */
typedef struct free_call_s {
  call_t *call;
  struct free_call_s *next;
} free_call_t;
static pthread_mutex_t free_lock = PTHREAD_MUTEX_INITIALIZER;
static free_call_t *free_calls;

/* A call's block in *out: one given back, else a new one (0 or the arena's error, said). */
static int call_take(call_t **out) {
  pthread_mutex_lock(&free_lock);
  free_call_t *f = free_calls;
  if (f)
    free_calls = f->next;
  pthread_mutex_unlock(&free_lock);
  *out = f ? f->call : NULL;
  free(f);
  if (*out)
    return 0;
  void *block;
  int rc = mp__shared_alloc(&block, sizeof(call_t));
  *out = block;
  return rc;
}

static void call_give_back(call_t *c) {
  atomic_store(&c->id, 0);
  free_call_t *f = malloc(sizeof *f);
  if (!f)
    return; /* the block is kept from the arena, never reused: a worker may still read it */
  f->call = c;
  pthread_mutex_lock(&free_lock);
  f->next = free_calls;
  free_calls = f;
  pthread_mutex_unlock(&free_lock);
}

/* Checks a span of n items and describes it in *s. */
static int span_describe(const mp_shared_span_t *span, const char *which, size_t n, span_t *s) {
  memset(s, 0, sizeof *s);
  if (!span)
    return 0;
  if (!span->array == !span->shm)
    return mp__error(MP_EINVAL, "%s: %s names %s: set one of array and shm", what, which,
                     span->array ? "both an Array and a segment" : "no storage");
  if (span->item_size == 0)
    return mp__error(MP_EINVAL, "%s: %s has items of 0 bytes", what, which);
  char *buf = span->array ? mp_array_ptr(span->array) : mp_shared_memory_buf(span->shm);
  size_t size = span->array ? mp_array_size(span->array) : mp_shared_memory_size(span->shm);
  size_t bytes, end;
  if (!buf)
    return mp__error(MP_EINVAL, "%s: %s names a closed Array", what, which);
  if (__builtin_mul_overflow(n, span->item_size, &bytes) ||
      __builtin_add_overflow(span->offset, bytes, &end))
    return mp__error(MP_EINVAL, "%s: %s: %zu items of %zu bytes at offset %zu overflow", what,
                     which, n, span->item_size, span->offset);
  if (end > size || span->offset > size)
    return mp__error(MP_EINVAL,
                     "%s: %s: %zu items of %zu bytes at offset %zu end at byte %zu, past the "
                     "%zu bytes of its %s",
                     what, which, n, span->item_size, span->offset, end, size,
                     span->array ? "Array" : "segment");
  s->kind = span->array ? SPAN_ARENA : SPAN_SEGMENT;
  s->base = buf + span->offset;
  s->offset = span->offset;
  s->item_size = span->item_size;
  s->end = end;
  if (span->shm) {
    snprintf(s->name, sizeof s->name, "%s", mp_shared_memory_name(span->shm));
    if (segment_identity(s->name, &s->dev, &s->ino) < 0)
      s->ino = 0; /* no name any more: thread workers can still use it */
  }
  return 0;
}

/* A failed chunk's "item K: why", naming the descriptor K, becomes "mp_pool_map_shared:
 * items [a, b): why"; another failure is only prefixed. */
static int name_the_items(int rc, const call_t *c) {
  unsigned long long chunk;
  int used = 0;
  const char *msg = mp_last_error();
  if (sscanf(msg, "item %llu: %n", &chunk, &used) != 1 || used == 0)
    return mp__error_prefix(rc, "%s", what);
  unsigned long long first = chunk * c->chunksize;
  unsigned long long end = c->n - first < c->chunksize ? c->n : first + c->chunksize;
  char rest[1024];
  snprintf(rest, sizeof rest, "%s", msg + used);
  return mp__error(rc, "%s: items [%llu, %llu): %s", what, first, end, rest);
}

int mp_pool_map_shared(mp_pool_t *pool, mp_shared_task_fn_t fn, const mp_shared_span_t *in,
                       const mp_shared_span_t *out, size_t n, size_t chunksize, void *user) {
  int processes = mp_pool_processes(pool);
  if (processes < 0 || !fn)
    return mp__error(MP_EINVAL, "%s: %s is NULL", what, fn ? "pool" : "the function");
  span_t in_span, out_span;
  int rc = span_describe(in, "in", n, &in_span);
  if (rc == 0)
    rc = span_describe(out, "out", n, &out_span);
  if (rc < 0)
    return rc;
  chunksize = mp__chunksize(n, chunksize, (size_t)processes);
  size_t n_chunks = n / chunksize + (n % chunksize != 0), bytes;
  if (__builtin_mul_overflow(n_chunks, sizeof(chunk_desc_t), &bytes))
    return mp__error(MP_EINVAL, "%s: %zu chunks of %zu items overflow", what, n_chunks,
                     chunksize);
  chunk_desc_t *descs = malloc(bytes ? bytes : 1);
  if (!descs)
    return mp__error(MP_ENOMEM, "%s: no memory for %zu chunk descriptors", what, n_chunks);
  call_t *c;
  if ((rc = call_take(&c)) < 0) {
    free(descs);
    return mp__error_prefix(rc, "%s", what);
  }
  if ((rc = mp__fnref_from_pointer((mp__fn_t)fn, &c->ref)) < 0) {
    call_give_back(c);
    free(descs);
    return mp__error_prefix(rc, "%s", what);
  }
  c->owner = getpid();
  c->local_fn = (mp__fn_t)fn;
  c->user = user;
  c->n = n;
  c->chunksize = chunksize;
  c->in = in_span;
  c->out = out_span;
  uint64_t id = mp__shared_unique();
  for (size_t k = 0; k < n_chunks; k++)
    descs[k] = (chunk_desc_t){(uint64_t)(uintptr_t)c, id, k};
  atomic_store(&c->id, id);
  /* The Arrays stay alive for the workers even if another thread closes them meanwhile. */
  if (in && in->array)
    mp_array_retain(in->array);
  if (out && out->array)
    mp_array_retain(out->array);
  rc = mp_pool_map(pool, run_chunk, descs, n_chunks, sizeof *descs, NULL, 0, 1);
  if (rc < 0)
    rc = name_the_items(rc, c);
  if (in && in->array)
    mp_array_close(in->array);
  if (out && out->array)
    mp_array_close(out->array);
  call_give_back(c);
  free(descs);
  return rc;
}
