/*
 * The records a fork server and its children send back to the program (spawn.c,
 * mp__bootstrap_await): READY with a pid, ERROR with a code and a sentence, STATUS, EXITED,
 * anything else. The input is a sequence of records, each a little-endian 16-bit length and
 * that many bytes (the last one takes what is left); they are queued on a socket whose other
 * end is then shut, and the program reads its answer from them as it does after a start.
 */
#include "../../lib/internal.h"

#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int target(void *arg, size_t size) {
  (void)arg;
  return (int)size;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static mp_process_t *proc;
  static mp_context_t *ctx;
  if (!proc && (mp_get_context("forkserver", &ctx) < 0 ||
                mp_process_create(&proc, ctx, target, NULL, 0, NULL) < 0))
    return 0;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return 0;
  int queued = 0;
  while (size > 0 && queued < 16) {
    size_t len = size;
    if (size >= 2) {
      len = (size_t)data[0] | (size_t)data[1] << 8;
      data += 2, size -= 2;
      if (len > size)
        len = size;
    }
    if (len > 0 && send(sv[0], data, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len)
      queued++;
    data += len, size -= len;
  }
  shutdown(sv[0], SHUT_WR);
  proc->pid = 0;
  proc->pidfd = -1;
  mp__bootstrap_await(sv[1], proc, true);
  if (proc->pidfd >= 0) /* no fd is sent here, but a READY would hand one over */
    close(proc->pidfd);
  proc->pid = 0;
  proc->pidfd = -1;
  close(sv[0]);
  close(sv[1]);
  return 0;
}
