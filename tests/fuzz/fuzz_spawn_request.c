/*
 * A spawned child's start-up request (spawn.c, mp__request_read), which a fork server's spare
 * reads too, on a socket whose other end is then shut, as a parent that hangs up would leave
 * it. The request is read, checked and its target resolved, never run. The input:
 *   byte 0      the stream's record size, 1 + byte * 257 (so that read_exact refills and
 *               read_alloc grows across records),
 *   bytes 1-2   the size, in 512-byte units (0 too), of the memfd attached to each of the
 *               fd records that follow the stream when its head announces an arena or fds
 *               (at most MAX_FD_RECORDS; the arena's record is the head's own arena field),
 *   the rest    the request's byte stream.
 *
 * So that the fuzzer gets past the build-id check to the offset and path checks, a head
 * that names the executable with an all-zero build-id of 20 bytes is given this binary's own
 * build-id (the seeds do that; the build-id changes with every build).
 */
#include "../../lib/internal.h"

#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t stream[4 * MP__RECORD_MAX]; /* several records */

static void use_own_build_id(void) {
  static mp__fnref_t self;
  static bool known;
  if (!known && mp__fnref_from_pointer((mp__fn_t)LLVMFuzzerTestOneInput, &self) == 0)
    known = true;
  mp__request_head_t head;
  memcpy(&head, stream, MP__REQUEST_HEAD_SENT);
  static const uint8_t zero[20];
  if (known && head.target_path_len == 0 && head.target.build_id_len == 20 &&
      memcmp(head.target.build_id, zero, 20) == 0) {
    memcpy(head.target.build_id, self.build_id, sizeof head.target.build_id);
    head.target.build_id_len = self.build_id_len;
    memcpy(stream, &head, MP__REQUEST_HEAD_SENT);
  }
}

/* The fd records the harness sends at most: enough to reach each path of receive_fds. */
#define MAX_FD_RECORDS 4
#define CONTROL 3

/* After the stream, the records with fds its head announces: each a memfd of file_size. */
static void send_fd_records(int sock, size_t size, off_t file_size) {
  if (size < MP__REQUEST_HEAD_SENT)
    return;
  mp__request_head_t head;
  memcpy(&head, stream, MP__REQUEST_HEAD_SENT);
  uint64_t n = (uint64_t)head.has_arena + head.n_fds;
  for (uint64_t i = 0; i < n && i < MAX_FD_RECORDS; i++) {
    int fd = memfd_create("fuzz", MFD_CLOEXEC);
    if (fd < 0)
      return;
    uint64_t key = i;
    int rc = ftruncate(fd, file_size) < 0 ? -1
             : i < head.has_arena ? mp__send_record(sock, &head.arena, sizeof head.arena, fd)
                                  : mp__send_record(sock, &key, sizeof key, fd);
    close(fd);
    if (rc < 0)
      return;
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size <= CONTROL || size - CONTROL > sizeof stream)
    return -1;
  size_t record = 1 + (size_t)data[0] * 257;
  off_t file_size = (off_t)(data[1] | data[2] << 8) * 512;
  size -= CONTROL;
  memcpy(stream, data + CONTROL, size);
  if (size >= MP__REQUEST_HEAD_SENT)
    use_own_build_id();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return 0;
  /* Not more than the socket holds (the fd records too): the reader runs only once all is
   * sent. */
  fcntl(sv[0], F_SETFL, O_NONBLOCK);
  bool whole = true;
  for (size_t sent = 0; whole && sent < size; sent += record) {
    size_t len = size - sent < record ? size - sent : record;
    whole = send(sv[0], stream + sent, len, MSG_NOSIGNAL) == (ssize_t)len;
  }
  if (whole)
    send_fd_records(sv[0], size, file_size);
  shutdown(sv[0], SHUT_WR);
  mp__request_t *req = NULL;
  if (mp__request_read(sv[1], &req) == 0)
    mp__request_free(req);
  mp__fd_keep_only(NULL, 0); /* the fds taken in: one run's are not the next's */
  close(sv[0]);
  close(sv[1]);
  return 0;
}
