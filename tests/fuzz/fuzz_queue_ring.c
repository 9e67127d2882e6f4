/*
 * A queue's shared words and ring (queues.c): every process of the program maps the arena
 * and can write them, so a get (and the last free) must believe a length, a position, the
 * ring's address or a spilled block's only once it fits. The input is laid over a fresh
 * queue's words (mp__queue_words) and its ring; then a few gets, of either kind, and the
 * queue's free, which walks the records left and frees their blocks. A read or write outside
 * the arena is a crash or a sanitizer report; the arena is put back as it was before each
 * input, so that one input's frees do not leak into the next.
 *
 * Input: a head of words (below; each address word is a kind byte and 8 bytes, see address),
 * then the ring's bytes; tests/fuzz/queue_ring_seeds.py writes the seeds.
 */
#include "../../lib/internal.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RING 4096      /* the smallest ring: its inline messages are up to 512 bytes */
#define N_BLOCKS 3     /* blocks of the arena a spilled record or a spare may name */
#define SLACK 65536    /* arena bytes past the last block, put back too */
#define MAX_INPUT 8192 /* the head and a ring's bytes */
#define N_PATCHES 2    /* addresses written into the ring */

static struct {
  char *base;  /* the arena */
  size_t span; /* its bytes put back before each input */
  char *saved; /* ...as they were */
  char *blocks[N_BLOCKS];
  uint64_t ring_word; /* the fresh queue's ring */
} g;

/* The input, read front to back; zeros once it is used up. */
typedef struct {
  const uint8_t *p;
  size_t n;
} input_t;

static uint64_t take(input_t *in, size_t bytes) {
  uint64_t v = 0;
  for (size_t i = 0; i < bytes && in->n; i++, in->p++, in->n--)
    v |= (uint64_t)*in->p << (8 * i);
  return v;
}

/* An address word: raw, in or past the arena, near one of its blocks, near the ring. */
static uint64_t address(input_t *in) {
  unsigned kind = (unsigned)take(in, 1) % 4;
  uint64_t v = take(in, 8);
  switch (kind) {
  case 0:
    return v;
  case 1:
    return (uint64_t)(uintptr_t)g.base + v % (g.span + SLACK);
  case 2:
    return (uint64_t)(uintptr_t)g.blocks[(v >> 32) % N_BLOCKS] + (uint64_t)(int64_t)(int16_t)v;
  default:
    return (g.ring_word & ~(uint64_t)63) + (uint64_t)(int64_t)(int16_t)v;
  }
}

/* The arena with a queue made and freed (so that each input's queue is the same one, made
 * from the same free lists) and a few blocks of other sizes, kept. */
static int set_up(void) {
  mp_queue_t *q;
  if (mp_queue_create_sized(&q, 0, RING) < 0)
    return -1;
  mp__queue_words_t w;
  mp__queue_words(q, &w, NULL);
  g.ring_word = w.ring_word;
  mp_queue_free(q);
  static const size_t sizes[N_BLOCKS] = {600, 5000, 40000};
  char *end = NULL;
  for (int i = 0; i < N_BLOCKS; i++) {
    void *block;
    if (mp__shared_alloc_by(&block, sizes[i], MP__NO_DEADLINE) < 0)
      return -1;
    g.blocks[i] = block;
    if (g.blocks[i] + sizes[i] > end)
      end = g.blocks[i] + sizes[i];
  }
  mp__heap_map_t map;
  int fd;
  if (!mp__heap_describe(&map, &fd))
    return -1;
  g.base = (char *)(uintptr_t)map.base;
  g.span = (size_t)(end - g.base) + SLACK;
  g.saved = malloc(g.span);
  if (!g.saved)
    return -1;
  memcpy(g.saved, g.base, g.span);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char buf[1 << 16];
  if (size > MAX_INPUT)
    return -1;
  if (!g.base && set_up() < 0)
    abort();
  memcpy(g.base, g.saved, g.span);
  mp_queue_t *q;
  if (mp_queue_create_sized(&q, 0, RING) < 0)
    abort();
  input_t in = {data, size};
  mp__queue_words_t w;
  mp__queue_words(q, &w, NULL);
  char *ring = (char *)(uintptr_t)(w.ring_word & ~(uint64_t)63);
  /* The ring's word: another ring, and any log2 of its bytes. */
  if (take(&in, 1) & 1)
    w.ring_word = address(&in) | (take(&in, 1) & 63);
  w.head = take(&in, 8);
  /* tail: raw, or a few messages and bytes past head, as a producer leaves it. */
  if (take(&in, 1) & 1) {
    w.tail = take(&in, 8);
  } else {
    uint64_t msgs = (w.head >> 32) + take(&in, 1);
    w.tail = msgs << 32 | (uint32_t)(w.head + take(&in, 2));
  }
  w.tail_seen = take(&in, 1) & 1 ? take(&in, 8) : w.tail;
  w.retired = (void *)(uintptr_t)address(&in);
  w.retired_head = take(&in, 1) & 1 ? take(&in, 8) : w.head;
  w.retired_room = take(&in, 4);
  w.spares_in = (uint32_t)take(&in, 1);
  w.spares_out = (uint32_t)take(&in, 1);
  w.closed = (uint32_t)take(&in, 1) & 1;
  for (int i = 0; i < 4; i++) {
    w.spare[i].block = (void *)(uintptr_t)address(&in);
    w.spare[i].room = take(&in, 4);
  }
  unsigned gets = (unsigned)take(&in, 1) % 5, how = (unsigned)take(&in, 1);
  size_t cap = (size_t)take(&in, 2);
  /* Addresses to write in the ring (a spilled record's block), the arena being elsewhere in
   * each run. */
  struct {
    uint32_t at;
    uint64_t word;
  } patch[N_PATCHES];
  for (int i = 0; i < N_PATCHES; i++) {
    patch[i].at = (uint32_t)take(&in, 2) % (RING - 7);
    patch[i].word = address(&in);
  }
  mp__queue_words(q, NULL, &w);
  /* The rest is the ring's bytes. */
  memcpy(ring, in.p, in.n < RING ? in.n : RING);
  for (int i = 0; i < N_PATCHES; i++)
    memcpy(ring + patch[i].at, &patch[i].word, sizeof patch[i].word);

  for (unsigned i = 0; i < gets; i++, how >>= 1) {
    size_t len = 0;
    if (how & 1) {
      void *got = NULL;
      if (mp_queue_get_alloc(q, &got, &len, 0) == 0)
        free(got);
    } else {
      (void)mp_queue_get_nowait(q, buf, cap, &len);
    }
  }
  mp_queue_free(q);
  return 0;
}
