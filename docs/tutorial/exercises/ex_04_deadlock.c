/*
 * Exercise 04: deadlock (docs/tutorial/04-deadlock.md).
 *
 * Tellers move money between accounts, each transfer under the locks of both accounts.
 * Check: meson test -C build --suite exercises ex_04_deadlock --print-errorlogs
 */
#include "exercises.h"

int ex04_transfer(const ex04_bank_t *bank, int from, int to, long amount) {
  /* TODO(student): a transfer from 0 to 1 takes lock 0 then lock 1; one from 1 to 0 takes
   * lock 1 then lock 0. Run at the same time, each holds the lock the other waits for.
   * Take the two locks in one global order, whatever the direction of the transfer. */
  int rc = ex04_lock_account(bank, from);
  if (rc < 0)
    return rc;
  rc = ex04_lock_account(bank, to);
  if (rc < 0) {
    ex04_unlock_account(bank, from);
    return rc;
  }
  ex04_move(bank, from, to, amount);
  ex04_unlock_account(bank, to);
  ex04_unlock_account(bank, from);
  return 0;
}
