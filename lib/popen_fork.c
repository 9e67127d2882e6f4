/* The "fork" start method: the child is a fork() of the caller and calls the target. */
#include "internal.h"

#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* The child returns from fork() here: its code is the child's (MP__CHILD_TEXT). */
MP__CHILD_TEXT static int fork_launch(mp_process_t *proc) {
  /* The child can call the pointer as it is, but refuse what spawn would refuse, so that a
   * program does not change behaviour with its start method. */
  int rc = mp__fnref_check((mp__fn_t)proc->target);
  if (rc < 0)
    return rc;
  pid_t self = getpid();
  mp__child_info_t info = {
      .name = proc->name,
      .identity = proc->identity,
      .parent_pid = self,
      .real_parent = self,
      .parent_name = mp__current_name(),
      .die_with_parent = proc->die_with_parent,
      .report_sock = -1,
      .pidfds = mp__have_pidfd() ? 1 : -1,
  };
  int sentinel[2];
  rc = mp__sentinel_open(sentinel);
  if (rc < 0)
    return rc;
  mp__flush_std_streams();
  pid_t pid = fork();
  if (pid < 0) {
    rc = mp__syserror("fork");
    if (sentinel[0] >= 0)
      close(sentinel[0]), close(sentinel[1]);
    return rc;
  }
  if (pid == 0) {
    if (sentinel[0] >= 0)
      mp__raw_syscall(SYS_close, sentinel[0], 0, 0, 0);
    info.sentinel = sentinel[1];
    mp__child_init(&info);
    mp__fd_keep_only(proc->passed, proc->n_passed);
    mp__child_exit(proc->target(proc->arg, proc->size), false);
  }
  return mp__popen_watch(proc, pid, sentinel);
}

const mp__popen_ops_t mp__popen_fork = {"fork", fork_launch, mp__popen_collect_child};
