/* The check of exercise 03: cooks taking tomatoes from one shared count. */
#include "check.h"

#define COOKS 4
#define TAKES 40

long ex03_count_slowly(const ex03_cook_t *cook, long seen) {
  /* tally[0]: calls, tally[1]: calls without the lock held. */
  long *tally = mp_value_ptr(cook->tally);
  mp_lock_t *guard = mp_value_get_lock(cook->tally);
  int unlocked = !mp_lock_is_owned(cook->lock);
  if (mp_lock_acquire(guard, 10) >= 0) {
    tally[0]++;
    tally[1] += unlocked;
    mp_lock_release(guard);
  }
  usleep(300); /* counting takes a while: another cook can read the same count meanwhile */
  return seen;
}

static void part(mp_context_t *ctx) {
  uint64_t rng = check_seed();
  long start = 1000 + (long)(check_next(&rng) % 1000), tally[2];
  ex03_cook_t cooks[COOKS];
  mp_process_t *procs[COOKS];
  mp_value_t *tomatoes, *tally_value;
  mp_lock_t *lock;
  CHECK_SETUP(mp_raw_value_create(&tomatoes, 'l', &start));
  CHECK_SETUP(mp_value_create(&tally_value, MP_TYPE_BYTES(sizeof tally), NULL, NULL));
  CHECK_SETUP(mp_lock_create(&lock));
  for (int i = 0; i < COOKS; i++) {
    cooks[i] = (ex03_cook_t){tomatoes, lock, tally_value, TAKES};
    CHECK_SETUP(mp_process_create(&procs[i], ctx, ex03_cook, &cooks[i], sizeof cooks[i], NULL));
    CHECK_SETUP(mp_process_start(procs[i]));
  }
  for (int i = 0; i < COOKS; i++) {
    int timed_out, code = check_join(procs[i], 30, &timed_out);
    if (timed_out)
      check_fail("cook %d did not finish within 30 s: does it release the lock after each "
                 "tomato?",
                 i);
    else if (code != 0)
      check_fail("cook %d exited with %d, expected 0", i, code);
  }
  long left = *(long *)mp_value_ptr(tomatoes);
  CHECK_SETUP(mp_value_read(tally_value, tally));
  if (tally[0] != COOKS * TAKES)
    check_fail("ex03_count_slowly was called %ld times, expected %d (once per tomato, between "
               "the read and the write)",
               tally[0], COOKS * TAKES);
  if (tally[1] > 0)
    check_fail("%ld of the %ld counts ran without the lock held: hold it from the read to the "
               "write",
               tally[1], tally[0]);
  if (left != start - COOKS * TAKES)
    check_fail("%d cooks took %d tomatoes each from %ld: %ld should be left, the count says "
               "%ld (%ld updates lost)",
               COOKS, TAKES, start, start - COOKS * TAKES, left,
               left - (start - COOKS * TAKES));
  CHECK_SETUP(mp_lock_close(lock));
  CHECK_SETUP(mp_value_close(tomatoes));
  CHECK_SETUP(mp_value_close(tally_value));
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_all_methods, "ex03_cook: 4 cooks, one count of tomatoes",
                part);
  return check_done("ex_03_race_conditions");
}
