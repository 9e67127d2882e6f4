/* Exercise 03, a solution: the read, the count and the write under one hold of the lock. */
#include "exercises.h"

int ex03_cook(void *arg, size_t size) {
  const ex03_cook_t *cook = arg;
  long *count = mp_value_ptr(cook->tomatoes);
  (void)size;
  for (int i = 0; i < cook->takes; i++) {
    if (mp_lock_acquire(cook->lock, 10) < 0)
      return 1;
    long seen = ex03_count_slowly(cook, *count);
    *count = seen - 1;
    if (mp_lock_release(cook->lock) < 0)
      return 1;
  }
  return 0;
}
