/* Exercise 06, a solution: each worker writes its slice into the shared Array and adds its
 * count to the shared Value; the slices cover the remainder too. */
#include "exercises.h"

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
  for (size_t i = s->start; i < s->start + s->count; i++)
    if (mp_array_set_long(s->out, i, ex06_f(s->seed, i)) < 0)
      return 1;
  return mp_value_add_long(s->done, (long)s->count, NULL) < 0;
}

int ex06_run(mp_context_t *ctx, mp_array_t *out, mp_value_t *done, int workers, uint64_t seed) {
  mp_process_t *procs[MAX_WORKERS];
  size_t length = mp_array_length(out);
  int rc = 0, started;
  if (workers < 1 || workers > MAX_WORKERS)
    return MP_EINVAL;
  for (started = 0; started < workers; started++) {
    /* Slice i runs from length * i / workers to length * (i + 1) / workers: the slices
     * differ by one element at most and end at length exactly. */
    size_t from = length * (size_t)started / (size_t)workers;
    size_t to = length * (size_t)(started + 1) / (size_t)workers;
    slice_t s = {out, done, seed, from, to - from};
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
