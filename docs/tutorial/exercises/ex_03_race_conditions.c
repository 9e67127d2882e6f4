/*
 * Exercise 03: the tomato counter (docs/tutorial/03-race-conditions.md).
 *
 * Four cooks run this at once on one shared count. Run the check first and see what it
 * says, then fix the cook:
 *   meson test -C build --suite exercises ex_03_race_conditions --print-errorlogs
 */
#include "exercises.h"

int ex03_cook(void *arg, size_t size) {
  const ex03_cook_t *cook = arg;
  long *count = mp_value_ptr(cook->tomatoes); /* a RawValue: nothing guards it */
  (void)size;
  for (int i = 0; i < cook->takes; i++) {
    /* TODO(student): another cook may read the count between this read and the write
     * below, and one of the two takes is lost. Hold cook->lock (mp_lock_acquire with a
     * timeout, mp_lock_release) from the read to the write. */
    long seen = ex03_count_slowly(cook, *count);
    *count = seen - 1;
  }
  return 0;
}
