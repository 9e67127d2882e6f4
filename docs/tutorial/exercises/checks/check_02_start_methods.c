/* The check of exercise 02: what crosses to a child under each start method, and stdio
 * buffers across a bare fork(). */
#include "check.h"

#include <fcntl.h>

#define EX02_COUNT_MAX 64

/* The configuration of a seed, the same in every process that computes it. */
static void make_config(int seed, char *name, size_t cap, int *numbers, int count) {
  snprintf(name, cap, "config-%d", seed);
  for (int i = 0; i < count; i++)
    numbers[i] = seed * 31 + i * i;
}

int ex02_verify(int seed, const char *name, const int *numbers, int count) {
  char want[32];
  int want_numbers[EX02_COUNT_MAX];
  check_calls_here++;
  if (count < 1 || count > EX02_COUNT_MAX) {
    printf("  child: count is %d, expected 1 .. %d\n", count, EX02_COUNT_MAX);
    return 1;
  }
  make_config(seed, want, sizeof want, want_numbers, count);
  if (strcmp(name, want) != 0) {
    printf("  child: name is \"%.40s\", expected \"%s\"\n", name, want);
    return 1;
  }
  for (int i = 0; i < count; i++)
    if (numbers[i] != want_numbers[i]) {
      printf("  child: numbers[%d] is %d, expected %d\n", i, numbers[i], want_numbers[i]);
      return 1;
    }
  return 0;
}

static void part_send(mp_context_t *ctx) {
  uint64_t rng = check_seed();
  int seed = (int)(check_next(&rng) % 100000), count = 8 + (int)(check_next(&rng) % 40);
  /* On the heap, as a program's own data would be: its address means nothing in a fresh
   * program. */
  char *name = malloc(32);
  int *numbers = malloc(sizeof *numbers * (size_t)count);
  if (!name || !numbers)
    exit(2);
  make_config(seed, name, 32, numbers, count);
  ex02_config_t cfg = {seed, count, name, numbers};
  int exitcode = -1000;
  check_calls_here = 0;
  int rc = ex02_send(ctx, &cfg, &exitcode);
  if (check_calls_here > 0)
    check_fail("ex02_verify ran in this process: start a child, and call it there");
  else if (rc < 0)
    check_fail("ex02_send returned %s", check_why(rc));
  else if (exitcode < 0)
    check_fail("the child died of signal %d: it followed a pointer of the parent's, which "
               "means nothing in a %s child; send the bytes themselves",
               -exitcode, check_method);
  else if (exitcode != 0)
    check_fail("the child saw another configuration (exit code %d, see its line above): "
               "under %s it does not share the parent's memory; send the bytes themselves",
               exitcode, check_method);
  free(name);
  free(numbers);
}

/* Counts the lines of text equal to line in the file. */
static int count_lines(FILE *f, const char *line) {
  char buf[256];
  int n = 0;
  rewind(f);
  while (fgets(buf, sizeof buf, f))
    n += strcmp(buf, line) == 0;
  return n;
}

static void part_bare_fork(mp_context_t *ctx) {
  (void)ctx;
  /* stdout into a file, as `./program > out.txt` or a pipe would have it: fully buffered
   * (main made it so), so a line printed stays in the buffer until a flush. */
  FILE *capture = tmpfile();
  if (!capture)
    exit(2);
  fflush(stdout);
  int saved = dup(STDOUT_FILENO);
  dup2(fileno(capture), STDOUT_FILENO);
  ex02_bare_fork();
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  int parent = count_lines(capture, "hello from the parent\n");
  int child = count_lines(capture, "hello from the child\n");
  fclose(capture);
  if (parent != 1)
    check_fail("\"hello from the parent\" came out %d times, expected once: a bare fork() "
               "copies the stdio buffer with the text not yet written, and the child writes "
               "it again; flush before fork()",
               parent);
  if (child != 1)
    check_fail("\"hello from the child\" came out %d times, expected once%s", child,
               child == 0 ? ": did the child flush before _exit()?" : "");
}

int main(int argc, char **argv) {
  /* As when the output goes to a file or a pipe, also on a terminal: see part_bare_fork. */
  setvbuf(stdout, NULL, _IOFBF, BUFSIZ);
  check_methods(argc, argv, check_all_methods, "ex02_send: a configuration to a child",
                part_send);
  check_part("bare fork", "ex02_bare_fork: one line each", part_bare_fork, NULL);
  return check_done("ex_02_start_methods");
}
