/*
 * A spawned child's start-up request (spawn.c, mp__request_read), which a fork server's spare
 * reads too: the input is the request's byte stream, sent as one record on a socket whose
 * other end is then shut, as a parent that hangs up would leave it. The request is read,
 * checked and its target resolved, never run.
 *
 * So that the fuzzer gets past the build-id check to the offset and path checks, a head
 * that names the executable with an all-zero build-id of 20 bytes is given this binary's own
 * build-id (the seeds do that; the build-id changes with every build).
 */
#include "../../lib/internal.h"

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t stream[MP__RECORD_MAX];

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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0 || size > sizeof stream)
    return -1; /* one record at most; an empty one reads as end of file */
  memcpy(stream, data, size);
  if (size >= MP__REQUEST_HEAD_SENT)
    use_own_build_id();
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return 0;
  if (send(sv[0], stream, size, MSG_NOSIGNAL) == (ssize_t)size) {
    shutdown(sv[0], SHUT_WR);
    mp__request_t *req = NULL;
    if (mp__request_read(sv[1], &req) == 0)
      mp__request_free(req);
  }
  close(sv[0]);
  close(sv[1]);
  return 0;
}
