/* Exercise 04, a solution: every transfer takes the lower-numbered account's lock first. */
#include "exercises.h"

int ex04_transfer(const ex04_bank_t *bank, int from, int to, long amount) {
  int first = from < to ? from : to, second = from < to ? to : from;
  int rc = ex04_lock_account(bank, first);
  if (rc < 0)
    return rc;
  rc = ex04_lock_account(bank, second);
  if (rc < 0) {
    ex04_unlock_account(bank, first);
    return rc;
  }
  ex04_move(bank, from, to, amount);
  ex04_unlock_account(bank, second);
  ex04_unlock_account(bank, first);
  return 0;
}
