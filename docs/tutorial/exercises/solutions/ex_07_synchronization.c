/* Exercise 07, a solution: wait on the Event, hold a Semaphore slot around the
 * connection. */
#include "exercises.h"

int ex07_client(void *arg, size_t size) {
  const ex07_client_t *c = arg;
  (void)size;
  if (mp_event_wait(c->doors, 30) < 0)
    return 1;
  if (mp_semaphore_acquire(c->slots, 30) < 0)
    return 2;
  int rc = ex07_connect(c);
  if (rc == 0)
    ex07_disconnect(c);
  mp_semaphore_release(c->slots);
  return rc < 0 ? 3 : 0;
}

int ex07_open(mp_event_t *doors) {
  return mp_event_set(doors);
}
