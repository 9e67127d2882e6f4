/* The check of exercise 04: transfers in every direction between three accounts. */
#include "check.h"

#define TELLERS 4
#define TRANSFERS 15

int ex04_lock_account(const ex04_bank_t *bank, int account) {
  if (account < 0 || account >= EX04_ACCOUNTS)
    return MP_EINVAL;
  int rc = mp_lock_acquire(bank->locks[account], 3);
  if (rc < 0)
    return rc;
  usleep(3000); /* a slow bank: the others take their first lock meanwhile */
  return 0;
}

void ex04_unlock_account(const ex04_bank_t *bank, int account) {
  if (account >= 0 && account < EX04_ACCOUNTS)
    mp_lock_release(bank->locks[account]);
}

void ex04_move(const ex04_bank_t *bank, int from, int to, long amount) {
  if (!mp_lock_is_owned(bank->locks[from]) || !mp_lock_is_owned(bank->locks[to]))
    mp_value_add_long(bank->violations, 1, NULL);
  long a, b;
  mp_array_get_long(bank->balances, (size_t)from, &a);
  mp_array_get_long(bank->balances, (size_t)to, &b);
  mp_array_set_long(bank->balances, (size_t)from, a - amount);
  mp_array_set_long(bank->balances, (size_t)to, b + amount);
}

typedef struct {
  ex04_bank_t bank;
  mp_barrier_t *start;
  int from, to;
  long amount;
} teller_t;

/* Exit codes of a teller: 0 done, 3 a lock timed out (a deadlock), 4 another error. */
static int teller(void *arg, size_t size) {
  const teller_t *t = arg;
  (void)size;
  if (mp_barrier_wait(t->start, 10) < 0)
    return 4;
  for (int i = 0; i < TRANSFERS; i++) {
    int rc = ex04_transfer(&t->bank, t->from, t->to, t->amount);
    if (rc == MP_ETIMEDOUT)
      return 3;
    if (rc < 0)
      return 4;
  }
  return 0;
}

static void part(mp_context_t *ctx) {
  /* Around the triangle and back: 0->1 against 1->0, and 0->1->2->0. */
  static const int route[TELLERS][2] = {{0, 1}, {1, 0}, {1, 2}, {2, 0}};
  uint64_t rng = check_seed();
  long initial[EX04_ACCOUNTS], expected[EX04_ACCOUNTS];
  teller_t tellers[TELLERS];
  mp_process_t *procs[TELLERS];
  ex04_bank_t bank;
  mp_barrier_t *start;
  for (int i = 0; i < EX04_ACCOUNTS; i++) {
    initial[i] = expected[i] = 10000 + (long)(check_next(&rng) % 1000);
    CHECK_SETUP(mp_lock_create(&bank.locks[i]));
  }
  CHECK_SETUP(mp_array_create(&bank.balances, 'l', EX04_ACCOUNTS, initial, NULL));
  CHECK_SETUP(mp_value_create(&bank.violations, 'l', NULL, NULL));
  CHECK_SETUP(mp_barrier_create(&start, TELLERS, NULL, NULL));
  for (int i = 0; i < TELLERS; i++) {
    long amount = 1 + (long)(check_next(&rng) % 50);
    tellers[i] = (teller_t){bank, start, route[i][0], route[i][1], amount};
    expected[route[i][0]] -= amount * TRANSFERS;
    expected[route[i][1]] += amount * TRANSFERS;
    CHECK_SETUP(
        mp_process_create(&procs[i], ctx, teller, &tellers[i], sizeof tellers[i], NULL));
    CHECK_SETUP(mp_process_start(procs[i]));
  }
  int deadlocked = 0;
  for (int i = 0; i < TELLERS; i++) {
    int timed_out, code = check_join(procs[i], 60, &timed_out);
    if (timed_out)
      check_fail("the teller moving %d -> %d still waited after 60 s: a deadlock", route[i][0],
                 route[i][1]);
    else if (code == 3)
      deadlocked++;
    else if (code != 0)
      check_fail("the teller moving %d -> %d exited with %d (an error of ex04_transfer)",
                 route[i][0], route[i][1], code);
  }
  if (deadlocked)
    check_fail("%d of %d tellers waited 3 s for an account's lock while holding another: a "
               "deadlock. Take the locks in one global order",
               deadlocked, TELLERS);
  long violations, balances[EX04_ACCOUNTS];
  CHECK_SETUP(mp_value_get_long(bank.violations, &violations));
  if (violations)
    check_fail("ex04_move ran %ld times without both accounts locked", violations);
  CHECK_SETUP(mp_array_read(bank.balances, 0, EX04_ACCOUNTS, balances));
  if (!deadlocked)
    for (int i = 0; i < EX04_ACCOUNTS; i++)
      if (balances[i] != expected[i])
        check_fail("account %d holds %ld, expected %ld", i, balances[i], expected[i]);
  for (int i = 0; i < EX04_ACCOUNTS; i++)
    CHECK_SETUP(mp_lock_close(bank.locks[i]));
  CHECK_SETUP(mp_array_close(bank.balances));
  CHECK_SETUP(mp_value_close(bank.violations));
  CHECK_SETUP(mp_barrier_close(start));
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_all_methods, "ex04_transfer: 4 tellers, 3 accounts", part);
  return check_done("ex_04_deadlock");
}
