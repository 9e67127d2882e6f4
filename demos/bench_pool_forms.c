/* bench rows of the pool's input forms against the array forms over the same bytes: a lazy
 * imap (items from a callback) against mp_pool_imap over an array, and a map of items of any
 * size (mp_pool_map_items) against the fixed-size mp_pool_map. */
#include "bench.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ITEM_BYTES 64

/* The item back as the result. */
static int echo(const void *arg, size_t size, void *result, size_t *result_size) {
  memcpy(result, arg, size);
  *result_size = size;
  return 0;
}

typedef struct {
  mp_pool_t *pool;
  size_t n, chunksize, next; /* next: the lazy source's position */
  char *in, *out;
  mp_item_t *items;
} forms_state_t;

static void forms_open(forms_state_t *fs, size_t n, size_t chunksize) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = 2;
  int rc = mp_get_context("fork", &o.context);
  if (rc == 0)
    rc = mp_pool_create(&fs->pool, &o);
  if (rc < 0)
    bench_die_mp("mp_pool_create", rc);
  fs->n = n;
  fs->chunksize = chunksize;
  fs->in = malloc(n * ITEM_BYTES);
  fs->out = malloc(n * ITEM_BYTES);
  fs->items = malloc(n * sizeof *fs->items);
  if (!fs->in || !fs->out || !fs->items)
    bench_die_sys("malloc", ENOMEM);
  for (size_t i = 0; i < n * ITEM_BYTES; i++)
    fs->in[i] = (char)('a' + i % 26);
  for (size_t i = 0; i < n; i++)
    fs->items[i] = (mp_item_t){fs->in + i * ITEM_BYTES, ITEM_BYTES};
}

static void forms_close(forms_state_t *fs) {
  mp_pool_destroy(fs->pool);
  free(fs->in);
  free(fs->out);
  free(fs->items);
}

static void check_echo(const char *result, size_t i, const forms_state_t *fs) {
  if (memcmp(result, fs->in + i * ITEM_BYTES, ITEM_BYTES) != 0) {
    fprintf(stderr, "bench: result %zu differs from its item\n", i);
    exit(1);
  }
}

/* ------------------------------ pool.imap_lazy ------------------------------ */

static int next_item(void *user_data, void *buf, size_t cap, size_t *len) {
  forms_state_t *fs = user_data;
  (void)cap;
  if (fs->next == fs->n)
    return MP_EEOF;
  memcpy(buf, fs->in + fs->next++ * ITEM_BYTES, ITEM_BYTES);
  *len = ITEM_BYTES;
  return 0;
}

static void lazy_imap(void *state) {
  forms_state_t *fs = state;
  mp_imap_t *it;
  fs->next = 0;
  int rc = mp_pool_imap_lazy(fs->pool, echo, next_item, fs, ITEM_BYTES, ITEM_BYTES,
                             fs->chunksize, &it);
  if (rc < 0)
    bench_die_mp("mp_pool_imap_lazy", rc);
  char result[ITEM_BYTES];
  size_t len, index;
  while ((rc = mp_imap_next_item(it, result, sizeof result, &len, &index, MP_FOREVER)) == 0)
    if (index == fs->n - 1)
      check_echo(result, index, fs);
  mp_imap_free(it);
  if (rc != MP_EEOF)
    bench_die_mp("mp_imap_next_item", rc);
}

static void array_imap(void *state) {
  forms_state_t *fs = state;
  mp_imap_t *it;
  int rc =
      mp_pool_imap(fs->pool, echo, fs->in, fs->n, ITEM_BYTES, ITEM_BYTES, fs->chunksize, &it);
  if (rc < 0)
    bench_die_mp("mp_pool_imap", rc);
  char result[ITEM_BYTES];
  size_t index;
  while ((rc = mp_imap_next(it, result, &index, MP_FOREVER)) == 0)
    if (index == fs->n - 1)
      check_echo(result, index, fs);
  mp_imap_free(it);
  if (rc != MP_EEOF)
    bench_die_mp("mp_imap_next", rc);
}

/* Times libmp_side against baseline over n items (chunksize 0: the pool's default), per item. */
static void forms_row(const bench_config_t *cfg, bench_result_t *result, size_t n,
                      size_t chunksize, void (*libmp_side)(void *), void (*baseline)(void *)) {
  forms_state_t fs = {0};
  double libmp_ns, baseline_ns;
  forms_open(&fs, n, chunksize);
  bench_pair(cfg, 3, libmp_side, baseline, &fs, &libmp_ns, &baseline_ns);
  forms_close(&fs);
  result->libmp = libmp_ns / (double)fs.n;
  result->baseline = baseline_ns / (double)fs.n;
}

static void row_imap_lazy(const bench_config_t *cfg, bench_result_t *result) {
  forms_row(cfg, result, 100000, 16, lazy_imap, array_imap);
}

/* ------------------------------ pool.map_varsize ------------------------------ */

static void map_items(void *state) {
  forms_state_t *fs = state;
  mp_item_t *out;
  int rc = mp_pool_map_items(fs->pool, echo, fs->items, fs->n, ITEM_BYTES, 0, &out);
  if (rc < 0)
    bench_die_mp("mp_pool_map_items", rc);
  if (out[fs->n - 1].size != ITEM_BYTES) {
    fprintf(stderr, "bench: a result of %zu bytes\n", out[fs->n - 1].size);
    exit(1);
  }
  check_echo(out[fs->n - 1].data, fs->n - 1, fs);
  free(out);
}

static void map_fixed(void *state) {
  forms_state_t *fs = state;
  int rc = mp_pool_map(fs->pool, echo, fs->in, fs->n, ITEM_BYTES, fs->out, ITEM_BYTES, 0);
  if (rc < 0)
    bench_die_mp("mp_pool_map", rc);
  check_echo(fs->out + (fs->n - 1) * ITEM_BYTES, fs->n - 1, fs);
}

static void row_map_varsize(const bench_config_t *cfg, bench_result_t *result) {
  forms_row(cfg, result, 200000, 0, map_items, map_fixed);
}

static const bench_row_t pool_forms_rows[] = {
    {"pool.imap_lazy", "ns/item", row_imap_lazy},
    {"pool.map_varsize", "ns/item", row_map_varsize},
};

const bench_group_t bench_pool_forms_group = BENCH_GROUP(pool_forms_rows);
