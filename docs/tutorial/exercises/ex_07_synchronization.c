/*
 * Exercise 07: Event and Semaphore (docs/tutorial/07-synchronization.md).
 *
 * Eight clients want a server that opens late and takes three connections at a time.
 * Check: meson test -C build --suite exercises ex_07_synchronization --print-errorlogs
 */
#include "exercises.h"

int ex07_client(void *arg, size_t size) {
  const ex07_client_t *c = arg;
  (void)size;
  /* TODO(student): wait until the doors open (the Event c->doors, with a timeout), and
   * hold one of the slots (the Semaphore c->slots) from before the connect to after the
   * disconnect. Return non-zero if a wait fails. */
  int rc = ex07_connect(c);
  if (rc == 0)
    ex07_disconnect(c);
  return rc < 0 ? 3 : 0;
}

int ex07_open(mp_event_t *doors) {
  (void)doors;
  /* TODO(student): let every waiting client in. */
  return 0;
}
