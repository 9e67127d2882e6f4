/* The "forkserver" start method: a spare the fork server (forkserver.c) forked in advance
 * becomes the child and takes over exactly as a spawned child does. The child is the
 * server's, not ours: we watch and signal it through the pidfd it sends, and its exit
 * status arrives on its socket, from the child (EXITED) or from the server (STATUS). */
#include "internal.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

/* How long an ended child's status may take to arrive before the server is taken for dead. */
#define STATUS_WAIT_SECONDS 5.0

static int forkserver_launch(mp_process_t *proc) {
  pid_t self = getpid(); /* once per start: the server's owner, the request's parent */
  for (int attempt = 0;; attempt++) {
    mp__fnref_t ref;
    int sv[2];
    int rc = mp__bootstrap_open(proc, &ref, sv);
    if (rc < 0)
      return rc;
    rc = mp__forkserver_request(sv[1], self);
    close(sv[1]);
    if (rc == 0)
      rc = mp__bootstrap_send(sv[0], proc, &ref, self, true);
    if (rc == 0)
      rc = mp__bootstrap_await(sv[0], proc, true);
    if (rc == 0) {
      proc->status_fd = sv[0];
      return 0;
    }
    /* No READY: no child runs (it refused and exits, or never was), nothing to drop but
     * our socket; the server reaps whatever it forked. */
    close(sv[0]);
    if (rc != MP__ENOTAKEOVER)
      return rc;
    if (attempt > 0)
      return MP_ESPAWN;
    /* The spare that took the request died with it, never having run the target: killed,
     * or dying of its server's death. Ask again, once, a new server if that one is gone. */
    mp__forkserver_check(self);
  }
}

/*
 * The child's end: EXITED from the child, else STATUS from the server once it reaped it.
 * Once the pidfd says the child ended, its status is at most one reaping away, so wait for
 * it (a bounded while: a server that cannot answer is taken for dead) rather than report
 * an ended child as running. Without a pidfd the socket itself tells. The record is only
 * peeked at: it stays queued, so the socket stays readable, as a sentinel must.
 */
static int forkserver_collect(mp_process_t *proc, int *wait_status) {
  bool has_pidfd = proc->pidfd >= 0;
  /* The same fd as the sentinel a join waits on: after its wait, no second look. */
  if (!__atomic_load_n(&proc->end_seen, __ATOMIC_RELAXED) &&
      mp__poll_fd(has_pidfd ? proc->pidfd : proc->status_fd, POLLIN, 0) == 0)
    return -EAGAIN;
  mp__reply_t rec;
  /* The child sends EXITED before it ends: it is there already, unless the child was
   * killed, and the server's STATUS is still to come. */
  ssize_t n = recv(proc->status_fd, &rec, sizeof rec, MSG_PEEK | MSG_DONTWAIT);
  int64_t deadline = has_pidfd ? mp__deadline(STATUS_WAIT_SECONDS) : mp__now_ns();
  if (n < 0 && errno == EAGAIN && mp__poll_fd(proc->status_fd, POLLIN, deadline) > 0)
    n = recv(proc->status_fd, &rec, sizeof rec, MSG_PEEK | MSG_DONTWAIT);
  if (n != (ssize_t)sizeof rec)
    *wait_status = SIGKILL; /* the server died, and its children with it */
  else if (rec.type == MP__REC_EXITED)
    *wait_status = (rec.value & 0xff) << 8; /* as waitpid() reports an exit(value) */
  else
    *wait_status = rec.value;
  return 0;
}

const mp__popen_ops_t mp__popen_forkserver = {"forkserver", forkserver_launch,
                                              forkserver_collect};
