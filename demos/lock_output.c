/*
 * Ten processes print a line each (seed 002), a word at a time with one write() per word,
 * as a longer message written in pieces would be. Without a lock the words of different
 * processes interleave; with a Lock held around the whole line, each line comes out whole
 * (which process goes first still changes from run to run). The output is what the lesson
 * shows; interleaving is a matter of timing, so only the failure of a call makes it exit
 * non-zero.
 *
 * Usage: lock_output [fork|spawn|forkserver] [processes]
 */
#include "demo.h"

#include <unistd.h>

typedef struct {
  mp_lock_t *lock; /* NULL: print without one */
  int id;
} printer_args_t;

static void say(const char *word) {
  size_t len = strlen(word);
  if (write(STDOUT_FILENO, word, len) != (ssize_t)len)
    exit(1);
  usleep(1000); /* let the others run between the pieces */
}

static int printer(void *arg, size_t size) {
  (void)size;
  printer_args_t *a = arg;
  char number[16];
  snprintf(number, sizeof number, "(%d) ", a->id);
  if (a->lock)
    CHECK(mp_lock_acquire(a->lock, 30));
  say("    process ");
  say(number);
  say(a->lock ? "holds the lock " : "has no lock ");
  say("and says hello\n");
  if (a->lock)
    CHECK(mp_lock_release(a->lock));
  return 0;
}

static void run(mp_context_t *ctx, mp_lock_t *lock, int n) {
  mp_process_t *procs[64];
  printer_args_t args[64];
  for (int i = 0; i < n; i++)
    args[i] = (printer_args_t){lock, i};
  demo_start(procs, n, ctx, printer, args, sizeof args[0]);
  if (demo_join(procs, n, 60) != 0) {
    fprintf(stderr, "lock_output: a printer failed\n");
    exit(1);
  }
}

int main(int argc, char **argv) {
  mp_context_t *ctx =
      demo_context(argc, argv, "lock_output [fork|spawn|forkserver] [processes]");
  int n = (int)demo_count(argc, argv, 2, 10);
  if (n > 64)
    n = 64;
  mp_lock_t *lock;
  CHECK(mp_lock_create(&lock));
  printf("%d processes (%s) print one line each, in four pieces.\n\n"
         "Without a lock the pieces of different lines mix:\n",
         n, mp_context_start_method(ctx));
  run(ctx, NULL, n);
  printf("\nWith a Lock held for the whole line, every line is whole:\n");
  run(ctx, lock, n);
  CHECK(mp_lock_close(lock));
  return 0;
}
