/*
 * Exercise 06: Value and Array (docs/tutorial/06-value-and-array.md).
 *
 * Several workers fill one Array, each its own slice, and count what they wrote.
 * Check: meson test -C build --suite exercises ex_06_value_and_array --print-errorlogs
 */
#include "exercises.h"

#include <stdlib.h>

#define MAX_WORKERS 64

typedef struct {
  mp_array_t *out;
  mp_value_t *done;
  uint64_t seed;
  size_t start, count;
} slice_t;

int ex06_worker(void *arg, size_t size) {
  const slice_t *s = arg;
  (void)size;
  /* TODO(student): this fills an array of the worker's own, which nobody else sees.
   * Write each element into the shared Array s->out instead (mp_array_set_long), and add
   * the number written to s->done (mp_value_add_long). */
  long *mine = calloc(s->count + 1, sizeof *mine);
  if (!mine)
    return 1;
  for (size_t i = 0; i < s->count; i++)
    mine[i] = ex06_f(s->seed, s->start + i);
  free(mine);
  return 0;
}

int ex06_run(mp_context_t *ctx, mp_array_t *out, mp_value_t *done, int workers, uint64_t seed) {
  mp_process_t *procs[MAX_WORKERS];
  size_t length = mp_array_length(out);
  int rc = 0, started;
  if (workers < 1 || workers > MAX_WORKERS)
    return MP_EINVAL;
  for (started = 0; started < workers; started++) {
    /* TODO(student): when workers does not divide length, some elements are in no slice. */
    size_t per = length / (size_t)workers;
    slice_t s = {out, done, seed, per * (size_t)started, per};
    if ((rc = mp_process_create(&procs[started], ctx, ex06_worker, &s, sizeof s, NULL)) < 0)
      break;
    if ((rc = mp_process_start(procs[started])) < 0) {
      mp_process_close(procs[started]);
      break;
    }
  }
  for (int i = 0; i < started; i++) {
    int code, jrc = mp_process_join(procs[i], MP_FOREVER);
    if (jrc == 0 && (jrc = mp_process_exitcode(procs[i], &code)) == 0 && code != 0)
      jrc = MP_ETASK;
    if (jrc < 0 && rc == 0)
      rc = jrc;
    mp_process_close(procs[i]);
  }
  return rc;
}
