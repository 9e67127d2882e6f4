/* A program of a project that has libmp as a subproject: it runs with the libmp it was
 * compiled against, and a child started by "spawn" (the executable run again, taken over
 * by the library before main) runs its target, linked statically or not. */
#include <mp.h>
#include <stdio.h>
#include <string.h>

static int answer(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 42;
}

int main(void) {
  if (strcmp(mp_version(), MP_VERSION_STRING) != 0) {
    fprintf(stderr, "consumer: compiled against libmp %s, runs with %s\n", MP_VERSION_STRING,
            mp_version());
    return 1;
  }
  mp_context_t *ctx;
  mp_process_t *proc;
  int exitcode;
  if (mp_get_context("spawn", &ctx) < 0 ||
      mp_process_create(&proc, ctx, answer, NULL, 0, NULL) < 0 || mp_process_start(proc) < 0 ||
      mp_process_join(proc, MP_FOREVER) < 0 || mp_process_exitcode(proc, &exitcode) < 0) {
    fprintf(stderr, "consumer: %s\n", mp_last_error());
    return 1;
  }
  mp_process_close(proc);
  printf("consumer: libmp %s, a spawned child exited with %d\n", mp_version(), exitcode);
  return exitcode == 42 ? 0 : 1;
}
