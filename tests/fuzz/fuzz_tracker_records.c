/*
 * The records the segment tracker reads from its clients (shared_memory.c, serve): any
 * process of the program's user may connect and send it anything. The input is a sequence
 * of records, each a little-endian 16-bit length (its top bit set: the record carries the fd
 * of a fresh nameless file of /dev/shm, as a TRACK's proof does) and that many bytes (the
 * last one takes what is left); they are queued on a socket whose other end is then shut,
 * and the tracker serves them as it serves a connection. Its table is then pruned: the files
 * were never linked, so the tracker's end would unlink nothing.
 *
 * The tracker's functions are static: this file includes shared_memory.c, whose object the
 * fuzzed library archive then does not contribute (every symbol it defines is defined here).
 */
#include "../../lib/shared_memory.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static tracker_t t = {.dir = -1, .prune_at = PRUNE_MIN};
  if (t.dir < 0) {
    struct stat st;
    t.dir = open(SHM_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (t.dir < 0 || fstat(t.dir, &st) < 0)
      abort();
    t.dir_dev = (uint64_t)st.st_dev;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return 0;
  for (int queued = 0; size > 0 && queued < 16; queued++) {
    size_t len = size;
    bool with_fd = false;
    if (size >= 2) {
      len = (size_t)data[0] | (size_t)(data[1] & 0x7f) << 8;
      with_fd = data[1] & 0x80;
      data += 2, size -= 2;
      if (len > size)
        len = size;
    }
    int fd = with_fd ? open(SHM_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600) : -1;
    if (len > 0)
      (void)mp__send_record(sv[0], data, len, fd);
    if (fd >= 0)
      close(fd);
    data += len, size -= len;
  }
  shutdown(sv[0], SHUT_WR);
  while (serve(&t, sv[1]))
    ;
  close(sv[0]);
  close(sv[1]);
  prune(&t);
  return 0;
}
