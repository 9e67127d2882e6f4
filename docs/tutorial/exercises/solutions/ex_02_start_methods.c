/* Exercise 02, a solution: the configuration's bytes travel in the argument; stdout is
 * flushed before a bare fork(). */
#include "exercises.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* The configuration flattened into bytes: no pointer, so it means the same in any process. */
typedef struct {
  int seed;
  int count;
  char name[32];
  int numbers[]; /* count of them follow */
} flat_config_t;

static int child(void *arg, size_t size) {
  const flat_config_t *flat = arg;
  if (size < sizeof *flat || (size - sizeof *flat) / sizeof(int) < (size_t)flat->count)
    return 2;
  return ex02_verify(flat->seed, flat->name, flat->numbers, flat->count);
}

int ex02_send(mp_context_t *ctx, const ex02_config_t *cfg, int *exitcode) {
  size_t size = sizeof(flat_config_t) + sizeof(int) * (size_t)cfg->count;
  flat_config_t *flat = calloc(1, size);
  mp_process_t *proc;
  if (!flat)
    return MP_ENOMEM;
  flat->seed = cfg->seed;
  flat->count = cfg->count;
  snprintf(flat->name, sizeof flat->name, "%s", cfg->name);
  memcpy(flat->numbers, cfg->numbers, sizeof(int) * (size_t)cfg->count);
  /* mp_process_create copies the bytes: flat can go right after. */
  int rc = mp_process_create(&proc, ctx, child, flat, size, NULL);
  free(flat);
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
  /* The line may still be in this process's stdio buffer; the child would get a copy. */
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    printf("hello from the child\n");
    fflush(stdout);
    _exit(0); /* not exit(): the parent's atexit handlers are not the child's business */
  }
  if (pid > 0)
    waitpid(pid, NULL, 0);
}
