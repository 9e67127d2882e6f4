/* The check of exercise 11: ranks in a ring of pipes, sharing no memory, agree on a sum. */
#include "check.h"

#define RANKS 5

/* What a rank gets: only pipe ends and numbers, as a process on another machine would. */
typedef struct {
  mp_conn_t *left, *right, *report;
  int rank;
  long mine;
} rank_t;

static int rank_main(void *arg, size_t size) {
  const rank_t *r = arg;
  long total = 0;
  (void)size;
  int rc = ex11_allreduce(r->rank, RANKS, r->mine, r->left, r->right, &total);
  if (rc < 0)
    total = rc; /* the parent reports it */
  return mp_conn_send(r->report, &total, sizeof total) < 0 || rc < 0;
}

static void part(mp_context_t *ctx) {
  uint64_t rng = check_seed();
  mp_conn_t *in[RANKS], *out[RANKS], *rep_in[RANKS], *rep_out[RANKS];
  mp_process_t *procs[RANKS];
  long expected = 0, mine[RANKS];
  /* Pipe i carries rank i's messages to rank i + 1. */
  for (int i = 0; i < RANKS; i++) {
    CHECK_SETUP(mp_pipe(false, &in[i], &out[i]));
    CHECK_SETUP(mp_pipe(false, &rep_in[i], &rep_out[i]));
    mine[i] = (long)(check_next(&rng) % 100000);
    expected += mine[i];
  }
  for (int i = 0; i < RANKS; i++) {
    rank_t r = {in[(i + RANKS - 1) % RANKS], out[i], rep_out[i], i, mine[i]};
    CHECK_SETUP(mp_process_create(&procs[i], ctx, rank_main, &r, sizeof r, NULL));
    CHECK_SETUP(mp_process_start(procs[i]));
  }
  for (int i = 0; i < RANKS; i++) {
    CHECK_SETUP(mp_conn_close(in[i]));
    CHECK_SETUP(mp_conn_close(out[i]));
    CHECK_SETUP(mp_conn_close(rep_out[i]));
  }
  double deadline = check_now() + 10;
  for (int i = 0; i < RANKS; i++) {
    long total;
    size_t len;
    int rc = mp_conn_recv(rep_in[i], &total, sizeof total, &len, check_left(deadline));
    if (rc == MP_ETIMEDOUT)
      check_fail("rank %d gave no total within 10 s: does every rank send as many messages "
                 "as its neighbour receives?",
                 i);
    else if (rc < 0)
      check_fail("rank %d gave no total (%s): did ex11_allreduce fail?", i, mp_err_name(rc));
    else if (total < 0)
      check_fail("rank %d: ex11_allreduce returned %s", i, check_why((int)total));
    else if (total != expected)
      check_fail("rank %d got a total of %ld, expected %ld (the sum of the %d ranks' values; "
                 "its own is %ld)",
                 i, total, expected, RANKS, mine[i]);
  }
  for (int i = 0; i < RANKS; i++) {
    int timed_out;
    check_join(procs[i], check_left(deadline + 2), &timed_out);
    if (timed_out)
      check_fail("rank %d still ran (killed): is it waiting for a message nobody sends?", i);
    CHECK_SETUP(mp_conn_close(rep_in[i]));
  }
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_all_methods, "ex11_allreduce: 5 ranks in a ring of pipes",
                part);
  return check_done("ex_11_message_passing");
}
