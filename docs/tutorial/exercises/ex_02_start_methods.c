/*
 * Exercise 02: what may cross to a child (docs/tutorial/02-start-methods.md).
 *
 * Both functions below work in one case and not in another. Make them work always, then
 * check: meson test -C build --suite exercises ex_02_start_methods --print-errorlogs
 */
#include "exercises.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int child(void *arg, size_t size) {
  const ex02_config_t *cfg = arg;
  (void)size;
  return ex02_verify(cfg->seed, cfg->name, cfg->numbers, cfg->count);
}

int ex02_send(mp_context_t *ctx, const ex02_config_t *cfg, int *exitcode) {
  mp_process_t *proc;
  /* TODO(student): this sends the struct, and with it two pointers into this process's
   * memory. It works under fork; make it work under spawn and forkserver too: send the
   * bytes of the name and of the numbers in the argument (a struct with a char array and a
   * flexible array member of ints, for instance), and change child() to read them. */
  int rc = mp_process_create(&proc, ctx, child, cfg, sizeof *cfg, NULL);
  if (rc < 0)
    return rc;
  if ((rc = mp_process_start(proc)) < 0 || (rc = mp_process_join(proc, MP_FOREVER)) < 0 ||
      (rc = mp_process_exitcode(proc, exitcode)) < 0) {
    mp_process_close(proc);
    return rc;
  }
  return mp_process_close(proc);
}

void ex02_bare_fork(void) {
  printf("hello from the parent\n");
  /* TODO(student): on a terminal each line comes out once; into a file or a pipe the
   * parent's line comes out twice. Find why, and fix it. */
  pid_t pid = fork();
  if (pid == 0) {
    printf("hello from the child\n");
    exit(0);
  }
  if (pid > 0)
    waitpid(pid, NULL, 0);
}
