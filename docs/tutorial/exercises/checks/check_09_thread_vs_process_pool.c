/* The check of exercise 09: one initializer and task, on a pool of threads and on pools of
 * processes. */
#include "check.h"

void ex09_pause(void) {
  usleep(2000);
}

static void part(mp_context_t *ctx) {
  enum { N = 40 };
  uint64_t rng = check_seed();
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  long items[N], results[N];
  o.processes = 4;
  o.context = ctx;
  o.initializer = ex09_init;
  int rc = mp_pool_create(&pool, &o);
  if (rc < 0) {
    check_fail("the pool could not start: its initializer ex09_init failed: %s", check_why(rc));
    return;
  }
  for (int i = 0; i < N; i++)
    items[i] = (long)(check_next(&rng) % 1000000);
  rc = mp_pool_map(pool, ex09_task, items, N, sizeof items[0], results, sizeof results[0], 1);
  if (rc < 0)
    check_fail("the map failed: %s", check_why(rc));
  else {
    int wrong = 0, first = 0;
    for (int i = 0; i < N; i++)
      if (results[i] != 3 * items[i] && wrong++ == 0)
        first = i;
    if (wrong)
      check_fail("%d of %d results are wrong; item %d: %ld gave %ld, expected %ld. Do "
                 "the workers of this pool share something they should each have their own?",
                 wrong, N, first, items[first], results[first], 3 * items[first]);
  }
  CHECK_SETUP(mp_pool_close(pool));
  CHECK_SETUP(mp_pool_join(pool, 30));
  mp_pool_destroy(pool);
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_pool_contexts, "ex09: 40 items on a pool of 4 workers", part);
  return check_done("ex_09_thread_vs_process_pool");
}
