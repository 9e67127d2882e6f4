/*
 * What crosses between MPI ranks (pool_mpi.c, mpi_rank.c): a task message as a rank reads
 * it, and a reply as rank 0 reads it, each with the length MPI received. The input's first
 * byte picks the side and the tag, the next 8 the chunk's first item (and, for a reply, the
 * next 8 its count and results' bytes, the next 8 the number of the message it should
 * answer); the rest is the message, copied to a buffer of its
 * own size so that any read past it is a sanitizer report. Whatever a check accepts is then
 * read as its caller reads it.
 */
#include "../../lib/pool_mpi.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static volatile size_t sink; /* what was read, so that the reads are made */

#define WIRE_MAX 65536

static uint64_t word(const uint8_t *data, size_t size, size_t at) {
  uint64_t v = 0;
  if (size >= at + sizeof v)
    memcpy(&v, data + at, sizeof v);
  return v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 25 || size > WIRE_MAX)
    return -1;
  unsigned pick = data[0];
  uint64_t first = word(data, size, 1), shape = word(data, size, 9), seq = word(data, size, 17);
  size_t len = size - 25;
  char *msg = malloc(len ? len : 1);
  if (!msg)
    return 0;
  memcpy(msg, data + 25, len);
  if (pick & 1) {
    /* A reply to a chunk of up to 255 items with up to 64 KiB of results. */
    uint64_t count = shape & 0xff;
    size_t out_len = (size_t)(shape >> 8 & 0xffff), at, results_len;
    mp__mpi_reply_head_t r;
    if (mp__mpi_reply_check(msg, len, seq, first, count, out_len, 1, &r, &at, &results_len) ==
        0) {
      char text[MP__POOL_MSG], *out = malloc(results_len ? results_len : 1);
      memcpy(text, msg + sizeof r, r.msg_len);
      text[r.msg_len ? r.msg_len - 1 : 0] = '\0';
      if (out)
        memcpy(out, msg + at, results_len);
      sink = strlen(text);
      free(out);
    }
  } else {
    int tag = pick >> 1 & 1 ? MP__MPI_TAG_INIT : MP__MPI_TAG_TASK;
    mp__mpi_task_head_t h;
    size_t at, in_len, out_len;
    if (mp__mpi_task_check(msg, len, tag, &h, &at, &in_len, &out_len) == 0) {
      /* The path, and the payload, as the rank reads them. */
      size_t sum = strlen(msg + sizeof h);
      for (size_t i = 0; i < in_len; i++)
        sum += (unsigned char)msg[at + i];
      sink = sum;
    }
  }
  free(msg);
  return 0;
}
