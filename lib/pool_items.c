/*
 * The Pool's item forms: map and imap over items of any size (mp_item_t), and the lazy
 * iterators, whose items come from a source called on the caller's side. Built on pool.c's
 * submissions and iterators (pool_private.h), which call in here only through an open job's
 * fill (a lazy iterator's source).
 */
#include "pool_private.h"

#include <string.h>

/* Checks items and finds the longest one's size. */
static int items_max(const char *what, const mp_item_t *items, size_t n, size_t *max) {
  if (!items && n)
    return mp__error(MP_EINVAL, "%s: items is NULL but n is %zu", what, n);
  *max = 0;
  for (size_t i = 0; i < n; i++) {
    if (!items[i].data && items[i].size)
      return mp__error(MP_EINVAL, "%s: item %zu has %zu bytes at NULL", what, i, items[i].size);
    *max = items[i].size > *max ? items[i].size : *max;
  }
  return 0;
}

/* Up to this many bytes, counting result_max for each result, a map's results are copied
 * into an allocation of that size in one pass and what they leave is given back; above it
 * they are sized first (every result read twice), so that a generous result_max does not
 * reserve memory the results never take. */
#define RESULTS_FIT_MAX ((size_t)64 << 20)

/* The results of the chunk that starts at item `first` of n: where its first result's slot is
 * (NULL if the chunk failed) and, in *count, how many it holds. They are consecutive slots of
 * job->head.result_size (mp__job_result): the chunk's state is looked at once, and no item
 * costs a division. */
static const char *chunk_results(const mp__jobrec_t *job, uint64_t first, uint64_t n,
                                 uint64_t *count) {
  uint64_t rest = n - first;
  *count = rest < job->head.chunksize ? rest : job->head.chunksize;
  return mp__job_result(job, first);
}

/* The length of the result in slot r as the task wrote it (0 for a failed chunk's), at most
 * result_max. */
static size_t length_at(const char *r, size_t result_max) {
  return r ? mp__var_length(r, result_max) : 0; /* a length the task wrote over is bounded */
}

static size_t round8(size_t len) {
  return (len + 7) & ~(size_t)7;
}

/* Gives back what the results left of their allocation (they take `used` bytes), moving their
 * pointers if realloc moved the block. */
static mp_item_t *shrink_results(mp_item_t *res, size_t n, size_t used) {
  uintptr_t old = (uintptr_t)res;
  mp_item_t *shrunk = realloc(res, used);
  if (!shrunk)
    return res;
  if ((uintptr_t)shrunk != old)
    for (size_t i = 0; i < n; i++)
      shrunk[i].data = (char *)shrunk + ((uintptr_t)shrunk[i].data - old);
  return shrunk;
}

/* A complete map's n results as one allocation: n mp_item_t, then their bytes, each
 * rounded up to 8. */
static int unpack_results(const char *what, const mp__jobrec_t *job, size_t n, size_t result_max,
                          mp_item_t **out) {
  /* var_slot(result_max) was checked by the submission: the room is result_max rounded up. */
  size_t each, bytes, room = var_slot(result_max) - MP__VARSIZE_HEAD;
  bool fit = !__builtin_add_overflow(room, sizeof(mp_item_t), &each) &&
             !__builtin_mul_overflow(n, each, &bytes) && bytes <= RESULTS_FIT_MAX;
  bool overflow = !fit && __builtin_mul_overflow(n, sizeof(mp_item_t), &bytes);
  uint64_t count, slot = job->head.result_size;
  for (uint64_t first = 0; first < n && !fit && !overflow; first += count) {
    const char *r = chunk_results(job, first, n, &count);
    for (uint64_t k = 0; k < count && !overflow; k++, r = r ? r + slot : NULL)
      overflow = __builtin_add_overflow(bytes, round8(length_at(r, result_max)), &bytes);
  }
  mp_item_t *res = overflow ? NULL : malloc(bytes ? bytes : 1);
  if (!res)
    return mp__error(MP_ENOMEM, "%s: no memory for the results of %zu items", what, n);
  char *at = (char *)(res + n), *end = (char *)res + bytes;
  for (uint64_t first = 0; first < n; first += count) {
    const char *r = chunk_results(job, first, n, &count);
    for (uint64_t k = 0; k < count; k++, r = r ? r + slot : NULL) {
      size_t len = length_at(r, result_max);
      /* Sized in the same way above; a length changed since (a wild write) gets no room. */
      if ((size_t)(end - at) < round8(len))
        len = 0;
      res[first + k] = (mp_item_t){at, len};
      if (len)
        memcpy(at, r + MP__VARSIZE_HEAD, len);
      at += round8(len);
    }
  }
  if (fit && at < end)
    res = shrink_results(res, n, (size_t)(at - (char *)res));
  *out = res;
  return 0;
}

int mp_pool_map_items(mp_pool_t *pool, mp_task_fn_t fn, const mp_item_t *items, size_t n,
                      size_t result_max, size_t chunksize, mp_item_t **results) {
  const char *what = "mp_pool_map_items";
  check_pool(pool, what);
  if (!results)
    return mp__error(MP_EINVAL, "%s: results is NULL", what);
  *results = NULL;
  size_t max = 0, slot = 0; /* set by the check below (gcc -O3 cannot see it) */
  int rc = items_max(what, items, n, &max);
  if (rc < 0)
    return rc;
  if (!(slot = var_slot(max)))
    return mp__error(MP_EINVAL, "%s: an item of %zu bytes overflows", what, max);
  /* The items are packed into the job, the results read from it in place. */
  spec_t s = {what, fn, items, n, slot, result_max, chunksize, MP__JOB_VARSIZE, 0};
  mp_async_result_t *ar;
  if ((rc = mp__pool_make_result(pool, &s, NULL, false, &ar)) < 0)
    return rc;
  rc = mp_async_result_get(ar, NULL, 0, NULL, MP_FOREVER);
  /* A failed map still gives the results of the chunks that succeeded. */
  if (rc == 0 || rc == MP_ETASK || rc == MP_EWORKERDIED) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", mp_last_error());
    int unpacked = unpack_results(what, ar->job, n, result_max, results);
    rc = unpacked < 0 ? unpacked : rc < 0 ? mp__error(rc, "%s", msg) : 0;
  }
  mp_async_result_free(ar);
  return mp__pool_end_sync(pool, s.what, rc);
}

/*
 * A lazy iterator takes its items from a source, on the caller's side: one iterator over an
 * open job (MP__JOB_OPEN), whose window the source fills a chunk at a time, straight into
 * the job's input slots, as the array form's window is fed from the array. A job has at
 * most 2^31 - 1 chunks (UINT32_MAX / 2, job_create's limit): an input that outlasts them
 * goes on in a next job, from the item where the last one stopped.
 */
struct lazy_s {
  mp_item_source_t source;
  void *user_data;
  spec_t spec; /* of each job */
  size_t item_max;
  uint64_t base; /* the first item of the iterator's job */
  uint64_t fed;  /* items taken from the source */
  int end;       /* 0 while the source has items; then MP_EEOF, or its error */
  bool end_told; /* its error was returned */
  /* mp_pool_imap_items: the source is this array. */
  const mp_item_t *items;
  size_t n_items, next_item;
};

/* The most chunks of a lazy iterator's job (job_create takes up to UINT32_MAX / 2); the job
 * tests lower it to see the input go on in a next job. */
static uint32_t lazy_job_chunks = UINT32_MAX / 2;

void mp__pool_set_lazy_job_chunks(uint32_t chunks) {
  lazy_job_chunks = chunks ? chunks : UINT32_MAX / 2;
}

/* The open job's fill: up to max items from the source, each in its slot after its length.
 * The source's end or error ends the input, which the iterator reports after the items
 * before it; an abort (a terminate, from another thread) ends the fill, so that the source
 * is not called after it (the feed looked before the first item). */
static uint64_t lazy_fill(void *arg, void *slots, uint64_t max, const mp__jobrec_t *job) {
  lazy_t *lz = arg;
  uint64_t count = 0;
  while (!lz->end && count < max && (count == 0 || !mp__job_aborted(job))) {
    char *slot = (char *)slots + count * lz->spec.item_size;
    size_t len = 0;
    int rc = lz->source(lz->user_data, slot + MP__VARSIZE_HEAD, lz->item_max, &len);
    if (rc == 0 && len > lz->item_max)
      rc = mp__error(MP_EINVAL, "the item source gave %zu bytes for %zu of room", len,
                     lz->item_max);
    else if (rc > 0)
      rc = mp__error(MP_EINVAL, "the item source returned %d", rc);
    else if (rc < 0 && rc != MP_EEOF)
      rc = mp__error(rc, "the item source failed (%s)", mp_err_name(rc));
    if (rc != 0) {
      lz->end = rc;
      break;
    }
    uint64_t l = len;
    memcpy(slot, &l, sizeof l);
    count++;
  }
  lz->fed += count;
  return count;
}

/* A lazy iterator's next job, from the item after the last one fed. */
static int lazy_start(mp_imap_t *it) {
  lazy_t *lz = it->lazy;
  spec_t s = lz->spec;
  lz->base = lz->fed;
  int rc = mp__pool_start_iterator(it, &s, &(mp__feed_t){NULL, lazy_fill, lz});
  if (rc < 0 && !lz->end)
    lz->end = MP_EEOF; /* the input is lost with the pool: nothing follows the error */
  return rc;
}

/* mp_pool_imap_items' source: the caller's array, one item after the other. */
static int array_source(void *user_data, void *buf, size_t cap, size_t *len) {
  lazy_t *lz = user_data;
  (void)cap; /* the longest item's size */
  if (lz->next_item == lz->n_items)
    return MP_EEOF;
  const mp_item_t *item = &lz->items[lz->next_item++];
  if (item->size)
    memcpy(buf, item->data, item->size);
  *len = item->size;
  return 0;
}

/* Where a lazy iterator's items come from: a source, or an array. */
typedef struct {
  mp_item_source_t source;
  void *user_data;
  const mp_item_t *items;
  size_t n_items;
} lazy_input_t;

static int make_lazy(mp_pool_t *pool, spec_t *s, lazy_input_t in, size_t item_max,
                     size_t result_max, bool ordered, mp_imap_t **out) {
  if (!out)
    return mp__error(MP_EINVAL, "%s: it is NULL", s->what);
  *out = NULL;
  check_pool(pool, s->what);
  if (!pool || !s->fn || !in.source)
    return mp__error(MP_EINVAL, "%s: %s is NULL", s->what,
                     !pool    ? "pool"
                     : !s->fn ? "the function"
                              : "the item source");
  int rc = mp__pool_check_open(pool, s->what);
  if (rc < 0)
    return rc;
  s->item_size = var_slot(item_max);
  s->result_size = result_max;
  s->chunksize = s->chunksize ? s->chunksize : 1; /* Python's default for imap */
  s->flags = MP__JOB_VARSIZE;
  /* As many items as a job can count, and as the submission's sizes can: n items of either
   * slot's size must fit a size_t. */
  size_t result_slot = var_slot(result_max),
         slot = s->item_size > result_slot ? s->item_size : result_slot,
         chunks = slot && result_slot ? SIZE_MAX / slot / s->chunksize : 0;
  if (chunks > lazy_job_chunks)
    chunks = lazy_job_chunks;
  if (!chunks || !s->item_size)
    return mp__error(MP_EINVAL,
                     "%s: items of up to %zu bytes and results of up to %zu bytes, in chunks "
                     "of %zu, overflow",
                     s->what, item_max, result_max, s->chunksize);
  s->n = chunks * s->chunksize;
  mp_imap_t *it = calloc(1, sizeof *it);
  lazy_t *lz = calloc(1, sizeof *lz);
  if (!it || !lz) {
    free(lz);
    free(it);
    return mp__error(MP_ENOMEM, "%s: no memory", s->what);
  }
  it->magic = IMAP_MAGIC;
  it->lazy = lz;
  it->pool = pool;
  it->ordered = ordered;
  lz->source = in.source;
  lz->user_data = in.source == array_source ? lz : in.user_data;
  lz->items = in.items;
  lz->n_items = in.n_items;
  lz->spec = *s;
  lz->item_max = item_max;
  if ((rc = lazy_start(it)) < 0) {
    mp_imap_free(it);
    return rc;
  }
  *out = it;
  return 0;
}

int mp_pool_imap_lazy(mp_pool_t *pool, mp_task_fn_t fn, mp_item_source_t next_item,
                      void *user_data, size_t item_max, size_t result_max, size_t chunksize,
                      mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_lazy", fn, NULL, 0, 0, 0, chunksize, 0, 0};
  return make_lazy(pool, &s, (lazy_input_t){next_item, user_data, NULL, 0}, item_max,
                   result_max, true, it);
}

int mp_pool_imap_lazy_unordered(mp_pool_t *pool, mp_task_fn_t fn, mp_item_source_t next_item,
                                void *user_data, size_t item_max, size_t result_max,
                                size_t chunksize, mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_lazy_unordered", fn, NULL, 0, 0, 0, chunksize, 0, 0};
  return make_lazy(pool, &s, (lazy_input_t){next_item, user_data, NULL, 0}, item_max,
                   result_max, false, it);
}

static int imap_items(mp_pool_t *pool, spec_t *s, const mp_item_t *items, size_t n,
                      size_t result_max, bool ordered, mp_imap_t **it) {
  size_t max = 0; /* set by the check below (gcc -O3 cannot see it) */
  if (s->chunksize > n) /* above n it is n, as for every form: the window is sized by it */
    s->chunksize = n;
  int rc = items_max(s->what, items, n, &max);
  if (rc == 0)
    rc = make_lazy(pool, s, (lazy_input_t){array_source, NULL, items, n}, max, result_max,
                   ordered, it);
  return rc;
}

int mp_pool_imap_items(mp_pool_t *pool, mp_task_fn_t fn, const mp_item_t *items, size_t n,
                       size_t result_max, size_t chunksize, mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_items", fn, NULL, 0, 0, 0, chunksize, 0, 0};
  return imap_items(pool, &s, items, n, result_max, true, it);
}

int mp_pool_imap_items_unordered(mp_pool_t *pool, mp_task_fn_t fn, const mp_item_t *items,
                                 size_t n, size_t result_max, size_t chunksize,
                                 mp_imap_t **it) {
  spec_t s = {"mp_pool_imap_items_unordered", fn, NULL, 0, 0, 0, chunksize, 0, 0};
  return imap_items(pool, &s, items, n, result_max, false, it);
}

/* The next result of a plain iterator into result (cap bytes of room). Inline in both of
 * its callers: a frame less per item. */
__attribute__((always_inline)) static inline int plain_next_item(mp_imap_t *it, void *result,
                                                                 size_t cap, size_t *len,
                                                                 size_t *index,
                                                                 double timeout) {
  bool varsize = it->job->head.flags & MP__JOB_VARSIZE;
  size_t need = varsize ? it->job->head.result_cap : it->job->head.result_size;
  if (cap < need) { /* checked first: the result is not taken */
    if (len)
      *len = need;
    return mp__error(MP_ETOOSMALL,
                     "mp_imap_next_item: a result may have %zu bytes, the buffer "
                     "%zu",
                     need, cap);
  }
  /* A variable-size result is copied from the job's slot straight into result, its
   * length bounded there by the room the caller has (need). */
  size_t got = need;
  int rc = mp__pool_next_raw(it, result, &got, index, timeout);
  if (len && (rc == 0 || !varsize))
    *len = got;
  return rc;
}

/* A failure of item `at` of the input, which a later job of it (the first one's chunks ran
 * out) named by its index there ("item <i>: why"): the same failure, named by `at`. Apart
 * from lazy_next, whose every call would pay for this buffer's frame. */
__attribute__((noinline, cold)) static int renamed_failure(int rc, uint64_t at) {
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", mp_last_error());
  const char *rest = strstr(msg, ": ");
  return !strncmp(msg, "item ", 5) && rest
             ? mp__error(rc, "item %llu%s", (unsigned long long)at, rest)
             : rc;
}

/* The next result of a lazy iterator: from its job, then (its chunks ran out) the next one;
 * then the source's error, if it failed. */
static int lazy_next(mp_imap_t *it, void *result, size_t cap, size_t *len, size_t *index,
                     double timeout) {
  lazy_t *lz = it->lazy;
  for (;;) {
    if (!it->job) { /* delivered whole */
      if (lz->end == MP_EEOF || lz->end_told)
        return MP_EEOF;
      lz->end_told = true; /* its error at its place, as Python raises a generator's */
      if (index)
        *index = lz->fed;
      return mp__error(lz->end, "mp_imap_next_item: item %llu: the item source failed (%s)",
                       (unsigned long long)lz->fed, mp_err_name(lz->end));
    }
    size_t i = 0;
    int rc = plain_next_item(it, result, cap, len, &i, timeout);
    if (rc != MP_EEOF) {
      uint64_t at = lz->base + i;
      bool failed = rc == MP_ETASK || rc == MP_EWORKERDIED;
      if (index && (rc == 0 || failed))
        *index = at;
      return failed && lz->base ? renamed_failure(rc, at) : rc;
    }
    mp__pool_end_iterator(it);
    if (!lz->end && (rc = lazy_start(it)) < 0) { /* the job's chunks ran out, not the input */
      if (index)
        *index = lz->fed; /* where the input stopped: a closed pool takes no next job */
      return rc;
    }
  }
}

int mp_imap_next_item(mp_imap_t *it, void *result, size_t cap, size_t *len, size_t *index,
                      double timeout) {
  check_iterator(it, "mp_imap_next_item");
  if (!it || (!result && cap))
    return mp__error(MP_EINVAL, "mp_imap_next_item: %s is NULL", it ? "result" : "it");
  return it->lazy ? lazy_next(it, result, cap, len, index, timeout)
                  : plain_next_item(it, result, cap, len, index, timeout);
}
