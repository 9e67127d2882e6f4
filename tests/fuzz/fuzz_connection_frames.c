/*
 * A Connection's frames (connection.c): what a peer writes into a pipe is read back as
 * messages, an 8-byte length then the payload. The input is written raw where the peer's
 * frames go, the sending end is closed (end of file after it), and the receiving end reads
 * messages until an error: end of file, a message larger than the buffer, a cut payload.
 */
#include "../../lib/internal.h"

#include <string.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A pipe holds 64 KiB: the input goes in whole, without a reader. */
#define MAX_INPUT 60000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static char buf[65536];
  if (size > MAX_INPUT)
    return -1;
  mp_conn_t *r, *w;
  if (mp_pipe(false, &r, &w) < 0)
    return 0;
  bool written = mp__conn_write_raw(w, data, size) == 0;
  mp_conn_close(w);
  for (int i = 0; written && i < 1000; i++) {
    size_t got = 0;
    if (mp_conn_poll(r, 0) < 0 || mp_conn_recv(r, buf, sizeof buf, &got, 0) < 0)
      break;
  }
  mp_conn_close(r);
  return 0;
}
