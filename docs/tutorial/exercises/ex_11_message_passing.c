/*
 * Exercise 11: message passing, no shared memory (docs/tutorial/11-beyond-one-machine.md).
 *
 * Ranks in a ring: each may receive from its left neighbour and send to its right one, and
 * they share nothing else, as processes on different machines. Every rank must end with
 * the sum of all ranks' values (what MPI calls an all-reduce).
 * Check: meson test -C build --suite exercises ex_11_message_passing --print-errorlogs
 */
#include "exercises.h"

int ex11_allreduce(int rank, int size, long mine, mp_conn_t *left, mp_conn_t *right,
                   long *total) {
  (void)rank;
  (void)size;
  (void)left;
  (void)right;
  /* TODO(student): pass values around the ring (mp_conn_send to right, mp_conn_recv from
   * left, with a timeout) until every rank has seen every value. */
  *total = mine;
  return 0;
}
