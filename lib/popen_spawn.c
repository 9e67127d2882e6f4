/* The "spawn" start method: a posix_spawn() of the executable, taken over before main()
 * (spawn.c), which receives the target by identity and its argument over a socket. */
#include "internal.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int spawn_launch(mp_process_t *proc) {
  mp__fnref_t ref;
  int sv[2];
  int rc = mp__bootstrap_open(proc, &ref, sv);
  if (rc < 0)
    return rc;
  int sentinel[2];
  rc = mp__sentinel_open(sentinel);
  if (rc < 0) {
    close(sv[0]), close(sv[1]);
    return rc;
  }
  pid_t pid;
  rc = mp__spawn_image("spawn", sv[1], sentinel[1], &pid);
  close(sv[1]);
  if (rc == 0)
    rc = mp__popen_watch(proc, pid, sentinel);
  else if (sentinel[0] >= 0)
    close(sentinel[0]), close(sentinel[1]);
  if (rc == 0 && proc->status_lost) {
    /* Ended before it could take over, and reaped by the program: nothing left to stop. */
    proc->status_lost = false;
    rc = mp__error(MP_ESPAWN, "the child ended before it took over");
  } else if (rc == 0) {
    rc = mp__bootstrap_send(sv[0], proc, &ref, getpid(), false);
    if (rc == 0)
      rc = mp__bootstrap_await(sv[0], proc, false);
    if (rc < 0)
      mp__popen_discard(proc);
  }
  close(sv[0]);
  return rc;
}

const mp__popen_ops_t mp__popen_spawn = {"spawn", spawn_launch, mp__popen_collect_child};
