/*
 * Processes print a line each (seed 002), a word at a time with one write() per word, as a
 * longer message written in pieces would be. They start printing together (an Event set
 * once all of them run), so that without a lock their pieces interleave; with a Lock held
 * around the whole line, each line comes out whole (which process goes first still changes
 * from run to run). The lines go to a file that every printer opens for appending, as a
 * shared log or terminal would be, so that the demo can count the mixed ones before it shows
 * them. (Not the parent's stdout redirected: a forkserver child has the server's stdout.)
 */
#include "demo.h"

#include <fcntl.h>

static const demo_info_t info = {
    "lock_output [fork|spawn|forkserver] [processes]",
    "`processes` processes (default 10) print one line each, in four pieces, all starting\n"
    "at once: without a lock the pieces of different lines mix; with a Lock held for the\n"
    "whole line, every line is whole. Mixing is a matter of timing: a run without the lock\n"
    "may happen not to mix (it says so). Exits 1 if a line printed under the Lock is not\n"
    "whole.",
    false};

typedef struct {
  mp_lock_t *lock;       /* NULL: print without one */
  mp_event_t *go;        /* set once every printer is running */
  mp_semaphore_t *ready; /* one release per printer that waits for go */
  int id;
  char path[64]; /* the shared output file: its name crosses as bytes */
} printer_args_t;

static void say(int fd, const char *word) {
  size_t len = strlen(word);
  if (write(fd, word, len) != (ssize_t)len)
    exit(1);
  usleep(1000); /* let the others run between the pieces */
}

static int printer(void *arg, size_t size) {
  (void)size;
  printer_args_t *a = arg;
  char number[16];
  snprintf(number, sizeof number, "(%d) ", a->id);
  int fd = open(a->path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0)
    return 1;
  CHECK(mp_semaphore_release(a->ready));
  CHECK(mp_event_wait(a->go, 30));
  if (a->lock)
    CHECK(mp_lock_acquire(a->lock, 30));
  say(fd, "    process ");
  say(fd, number);
  say(fd, a->lock ? "holds the lock " : "has no lock ");
  say(fd, "and says hello\n");
  if (a->lock)
    CHECK(mp_lock_release(a->lock));
  close(fd);
  return 0;
}

/* Runs n printers, shows what they wrote, and returns how many of the n lines are not
 * whole. */
static int run(mp_context_t *ctx, mp_lock_t *lock, int n) {
  mp_process_t *procs[64];
  printer_args_t args[64];
  mp_event_t *go;
  mp_semaphore_t *ready;
  CHECK(mp_event_create(&go));
  CHECK(mp_semaphore_create(&ready, 0));
  char path[64] = "/tmp/lock_output-XXXXXX";
  int fd = mkstemp(path);
  FILE *out = fd < 0 ? NULL : fdopen(fd, "r");
  if (!out) {
    perror("lock_output: a temporary file");
    exit(1);
  }
  for (int i = 0; i < n; i++) {
    args[i] = (printer_args_t){lock, go, ready, i, ""};
    memcpy(args[i].path, path, sizeof path);
  }
  demo_start(procs, n, ctx, printer, args, sizeof args[0]);
  for (int i = 0; i < n; i++)
    CHECK(mp_semaphore_acquire(ready, 30));
  CHECK(mp_event_set(go));
  int failed = demo_join(procs, n, 60);
  unlink(path);
  CHECK(mp_event_close(go));
  CHECK(mp_semaphore_close(ready));
  if (failed) {
    fprintf(stderr, "lock_output: a printer failed\n");
    exit(1);
  }

  rewind(out);
  char line[512];
  int whole = 0;
  while (fgets(line, sizeof line, out)) {
    int id;
    char expected[128];
    fputs(line, stdout);
    if (sscanf(line, "    process (%d)", &id) != 1)
      continue;
    snprintf(expected, sizeof expected, "    process (%d) %sand says hello\n", id,
             lock ? "holds the lock " : "has no lock ");
    whole += !strcmp(line, expected);
  }
  fclose(out);
  return n - whole;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  int n = (int)demo_count_at_most(argc, argv, 2, 10, 64);
  mp_lock_t *lock;
  CHECK(mp_lock_create(&lock));
  printf("%d processes (%s) print one line each, in four pieces, starting together.\n\n"
         "Without a lock:\n",
         n, mp_context_start_method(ctx));
  int mixed = run(ctx, NULL, n);
  if (mixed)
    printf("-> %d of %d lines came out mixed: their pieces interleaved.\n", mixed, n);
  else
    printf("-> No line mixed this time: the processes happened not to overlap (one free\n"
           "   core, or a slow start). Run it again, or with more processes.\n");
  printf("\nWith a Lock held for the whole line:\n");
  int mixed_locked = run(ctx, lock, n);
  CHECK(mp_lock_close(lock));
  if (mixed_locked) {
    printf("FAILED: %d lines printed under the Lock are not whole.\n", mixed_locked);
    return 1;
  }
  printf("-> Every line is whole: one process at a time prints.\n");
  return 0;
}
