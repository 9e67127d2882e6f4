/*
 * The job table's claim / complete / lose protocol on its own (lib/pool_jobs.c), with no
 * worker and no supervisor: this suite plays both, in one thread, through the table's API.
 * It links the static library, as the heap suite does.
 */
#include "../lib/pool_jobs.h"
#include "mp_test.h"

static int identity(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  *(int *)result = *(const int *)arg;
  return 0;
}

static mp__jobs_t *table;

static void free_table(void) {
  mp__jobs_free(table);
  table = NULL;
}

/* A table of two workers and a map of n ints in chunks of chunksize, submitted. */
static mp__job_t *submit_map(unsigned retries, const int *items, uint64_t n,
                             uint64_t chunksize) {
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, retries));
  mp_test_set_hook(free_table);
  mp__job_spec_t spec = {0, 0, items, n, sizeof(int), sizeof(int), chunksize, 0, 0, NULL};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__job_t *job;
  MP_ASSERT_OK(mp__jobs_submit(table, &spec, &job));
  return job;
}

static void end_table(mp__job_t *job) {
  mp__jobs_release(table, job);
  mp_test_set_hook(NULL);
  free_table();
}

/* Claims a chunk as worker w and runs it with the table's own run step. */
static void claim(uint32_t w, mp__task_t *task) {
  T_ASSERT(mp__pool_claim(mp__jobs_shared(table), w, task), "worker %u claimed nothing", w);
  task->call = (mp__fn_t)identity;
  MP_ASSERT_OK(mp__run_task(task, NULL));
}

static bool complete(uint32_t w, mp__task_t *task) {
  return mp__pool_complete(mp__jobs_shared(table), w, task, MP__CHUNK_DONE, -1, NULL);
}

START_TEST(test_claim_complete) {
  int in[4] = {1, 2, 3, 4}, out[4] = {0};
  mp__job_t *job = submit_map(0, in, 4, 2);
  mp__task_t a, b, none;
  claim(0, &a);
  claim(1, &b);
  T_INT_EQ(a.first, 0);
  T_INT_EQ(b.first, 2);
  T_INT_EQ(a.count, 2);
  T_ASSERT(!mp__pool_claim(mp__jobs_shared(table), 0, &none), "a third chunk was claimed");
  T_ASSERT(complete(0, &a) && !mp__job_complete(job), "one chunk of two completed the job");
  T_ASSERT(complete(1, &b) && mp__job_complete(job), "the job is not complete");
  MP_ASSERT_OK(mp__job_take(job, false, out, sizeof out, NULL));
  for (int k = 0; k < 4; k++)
    T_INT_EQ(out[k], in[k]);
  end_table(job);
}
END_TEST

/* A worker lost between claim and complete: its chunk fails, naming the item it ran, and
 * its late completion is refused. */
START_TEST(test_lost_between_claim_and_complete) {
  int in[4] = {1, 2, 3, 4}, out[4];
  mp__job_t *job = submit_map(0, in, 4, 2);
  mp__task_t a, b;
  claim(0, &a);
  atomic_store(a.running, 1); /* it was running the chunk's second item */
  mp__jobs_worker_lost(table, 0, "worker 1 was lost");
  mp__jobs_worker_gone(table, 0);
  T_ASSERT(!complete(0, &a), "a lost chunk's completion was taken");
  T_ASSERT(!mp__job_complete(job), "complete with a chunk never run");
  claim(1, &b);
  T_ASSERT(complete(1, &b), "the other chunk's completion was refused");
  T_ASSERT(mp__job_complete(job), "the job is not complete");
  MP_ASSERT_ERR(mp__job_take(job, false, out, sizeof out, NULL), MP_EWORKERDIED);
  T_STR_EQ(mp_last_error(), "item 1: worker 1 was lost");
  T_INT_EQ(out[0], 0); /* a failed chunk's results are zero */
  T_INT_EQ(out[3], 4);
  end_table(job);
}
END_TEST

/* With retries the lost chunk is queued again and another worker runs it. */
START_TEST(test_lost_and_retried) {
  int in[2] = {5, 6}, out[2];
  mp__job_t *job = submit_map(1, in, 2, 2);
  mp__task_t a, again;
  claim(0, &a);
  mp__jobs_worker_lost(table, 0, "worker 1 was lost");
  mp__jobs_worker_gone(table, 0);
  claim(1, &again);
  T_INT_EQ(again.first, 0);
  T_ASSERT(!complete(0, &a), "the lost worker's completion was taken");
  T_ASSERT(complete(1, &again) && mp__job_complete(job), "the retry did not complete the job");
  MP_ASSERT_OK(mp__job_take(job, false, out, sizeof out, NULL));
  T_INT_EQ(out[1], 6);
  end_table(job);
}
END_TEST

/* A double complete counts once. */
START_TEST(test_double_complete) {
  int in[4] = {1, 2, 3, 4};
  mp__job_t *job = submit_map(0, in, 4, 2);
  mp__task_t a, b;
  claim(0, &a);
  T_ASSERT(complete(0, &a), "the first completion was refused");
  T_ASSERT(!complete(0, &a), "the second completion was taken");
  T_ASSERT(!mp__job_complete(job), "one chunk completed twice completed the job");
  claim(1, &b);
  T_ASSERT(complete(1, &b) && mp__job_complete(job), "the job is not complete");
  end_table(job);
}
END_TEST

/* A worker lost after it completed its chunk loses nothing. */
START_TEST(test_lose_after_complete) {
  int in[2] = {7, 8}, out[2];
  mp__job_t *job = submit_map(0, in, 2, 1);
  mp__task_t a, b;
  claim(0, &a);
  T_ASSERT(complete(0, &a), "the completion was refused");
  mp__jobs_worker_lost(table, 0, "worker 1 was lost");
  mp__jobs_worker_gone(table, 0);
  claim(1, &b);
  T_ASSERT(complete(1, &b) && mp__job_complete(job), "the job is not complete");
  MP_ASSERT_OK(mp__job_take(job, false, out, sizeof out, NULL));
  T_INT_EQ(out[0], 7);
  T_INT_EQ(out[1], 8);
  end_table(job);
}
END_TEST

/* An abort fails what is not done; a completion after it is refused. */
START_TEST(test_abort_then_complete) {
  int in[2] = {7, 8};
  mp__job_t *job = submit_map(0, in, 2, 1);
  mp__task_t a;
  claim(0, &a);
  mp__jobs_abort_all(table, MP_ETERMINATED);
  T_ASSERT(mp__job_complete(job), "an aborted job is not complete");
  T_INT_EQ(mp__job_aborted(job), MP_ETERMINATED);
  T_ASSERT(!complete(0, &a), "a completion after the abort was taken");
  end_table(job);
}
END_TEST

/* More functions than the table holds: MP_ELIMIT, with a sentence. */
START_TEST(test_function_limit) {
  MP_ASSERT_OK(mp__jobs_create(&table, 1, 0, 0));
  mp_test_set_hook(free_table);
  uint32_t index;
  /* Addresses inside this program's code cross by identity, as functions would. */
  uintptr_t base = (uintptr_t)identity;
  for (uintptr_t k = 0; k < MP__POOL_MAX_FNS; k++)
    MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)(base + k), &index));
  MP_ASSERT_ERR(mp__jobs_function(table, (mp__fn_t)(base + MP__POOL_MAX_FNS), &index),
                MP_ELIMIT);
  T_ASSERT(strstr(mp_last_error(), "task functions"), "message: %s", mp_last_error());
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* Another map of n ints in the same table. */
static mp__job_t *submit_more(const int *items, uint64_t n, uint64_t chunksize) {
  mp__job_spec_t spec = {0, 0, items, n, sizeof(int), sizeof(int), chunksize, 0, 0, NULL};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__job_t *job;
  MP_ASSERT_OK(mp__jobs_submit(table, &spec, &job));
  return job;
}

/* Completes the chunk, claiming the job's next one into next; runs it if it was claimed. */
static void complete_claim(uint32_t w, mp__task_t *task, mp__task_t *next) {
  T_ASSERT(mp__pool_complete(mp__jobs_shared(table), w, task, MP__CHUNK_DONE, -1, next),
           "the completion was refused");
  if (next->job) {
    next->call = (mp__fn_t)identity;
    MP_ASSERT_OK(mp__run_task(next, NULL));
  }
}

/* A completion claims the same job's next chunk, in order, until there is none. */
START_TEST(test_completion_claims_next) {
  int in[6] = {1, 2, 3, 4, 5, 6}, out[6] = {0};
  mp__job_t *job = submit_map(0, in, 6, 2);
  mp__task_t a, b;
  claim(0, &a);
  complete_claim(0, &a, &b);
  T_ASSERT(b.job == job && b.chunk == 1, "chunk 1 was not claimed next");
  complete_claim(0, &b, &a);
  T_ASSERT(a.job == job && a.chunk == 2 && a.first == 4, "chunk 2 was not claimed next");
  complete_claim(0, &a, &b);
  T_ASSERT(b.job == NULL, "a chunk was claimed after the last one");
  T_ASSERT(mp__job_complete(job), "the job is not complete");
  MP_ASSERT_OK(mp__job_take(job, false, out, sizeof out, NULL));
  T_INT_EQ(out[5], 6);
  end_table(job);
}
END_TEST

/* While an older job is incomplete, a completion claims nothing in a newer one: the oldest
 * queued chunk goes first. */
START_TEST(test_no_claim_past_an_older_job) {
  int in[4] = {1, 2, 3, 4};
  mp__job_t *older = submit_map(0, in, 1, 1), *newer = submit_more(in, 4, 2);
  mp__task_t a, b, next;
  claim(0, &a);
  T_ASSERT(a.job == older, "the older job's chunk was not claimed first");
  claim(1, &b);
  T_ASSERT(b.job == newer, "worker 2 did not claim in the newer job");
  complete_claim(1, &b, &next);
  T_ASSERT(next.job == NULL, "claimed in the newer job while the older one was incomplete");
  complete_claim(0, &a, &next);
  T_ASSERT(next.job == NULL, "claimed in another job than the completed chunk's");
  claim(0, &b);
  T_ASSERT(b.job == newer && b.chunk == 1, "the newer job's second chunk was not claimed");
  complete_claim(0, &b, &next);
  T_ASSERT(mp__job_complete(older) && mp__job_complete(newer), "the jobs are not complete");
  mp__jobs_release(table, newer);
  end_table(older);
}
END_TEST

/* A job released while a worker still had it pinned (the worker that completed it, not yet
 * done settling) gives its block to the next job of its size once the worker let go, rather
 * than leaving that job to fault in a fresh one. */
START_TEST(test_pinned_job_block_reused) {
  enum { N = 70000 }; /* 280 KB of input: a block worth keeping warm */
  int *in = calloc(N, sizeof *in);
  T_ASSERT(in != NULL, "no memory");
  mp__job_t *job = submit_map(0, in, N, N / 2), *again;
  mp__task_t a, b;
  claim(0, &a);
  claim(1, &b);
  T_ASSERT(complete(0, &a) && complete(1, &b), "the completions were refused");
  _Atomic uint64_t *pin = &mp__jobs_shared(table)->workers[1].pin;
  atomic_store(pin, job->seq + 1);
  mp__jobs_release(table, job);
  atomic_store(pin, 0);
  again = submit_more(in, N, N / 2);
  T_ASSERT(again == job, "the next job of the same size did not reuse the block");
  claim(0, &a);
  claim(1, &b);
  T_ASSERT(complete(0, &a) && complete(1, &b), "the completions were refused");
  free(in);
  end_table(again);
}
END_TEST

/* A small job's block, freed by a reclaim after its last worker let go of it (an orphan),
 * is reused by the next job of its size, which takes it linked in the job list: a reclaim
 * then must not free it again while it is in use (its orphan mark is cleared as it is
 * taken, not later). */
START_TEST(test_orphan_block_reused_not_reclaimed) {
  int in[1] = {7}, out = 0;
  mp__job_t *job = submit_map(0, in, 1, 1), *again, *third;
  mp__task_t a;
  claim(0, &a);
  T_ASSERT(complete(0, &a), "the completion was refused");
  _Atomic uint64_t *pin = &mp__jobs_shared(table)->workers[1].pin;
  atomic_store(pin, job->seq + 1);
  mp__jobs_release(table, job); /* pinned: an orphan */
  atomic_store(pin, 0);
  mp__jobs_reclaim(table);
  again = submit_more(in, 1, 1);
  T_ASSERT(again == job, "the next job of the same size did not reuse the block");
  mp__jobs_reclaim(table);
  third = submit_more(in, 1, 1);
  T_ASSERT(third != again, "a reclaim freed a job in use, and the next job took its block");
  claim(0, &a);
  T_ASSERT(a.job == again, "the reused job's chunk was not claimed first");
  T_ASSERT(complete(0, &a), "the completion was refused");
  MP_ASSERT_OK(mp__job_take(again, false, &out, sizeof out, NULL));
  T_INT_EQ(out, 7);
  claim(0, &a);
  T_ASSERT(complete(0, &a), "the completion was refused");
  mp__jobs_release(table, third);
  end_table(again);
}
END_TEST

/* Bits set in the warm record's entry e. */
static uint64_t warm_pages(const mp__warm_t *warm, size_t e, uint64_t words) {
  uint64_t n = 0;
  for (uint64_t i = 0; i < words; i++)
    n += (uint64_t)__builtin_popcountll(warm->blocks[e].bits[i]);
  return n;
}

/* A worker records the output pages it mapped in, per block: a chunk's pages once, the same
 * block reused by the next job (same id) found again, a fresh block given an entry of its
 * own. */
START_TEST(test_output_pages_mapped_once) {
  enum { N = 64 * 1024 }; /* 256 KB of output per chunk of N / 2 */
  int *in = calloc(N, sizeof *in);
  T_ASSERT(in != NULL, "no memory");
  mp__warm_t warm = {0};
  mp__job_t *job = submit_map(0, in, N, N / 2), *again;
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), id = job->block_id;
  uintptr_t at = (uintptr_t)job;
  uint64_t words = (((at + job->block_size - 1) / page - at / page + 1) + 63) / 64;
  mp__task_t a, b;
  claim(0, &a);
  mp__pool_map_output(&warm, &a);
  T_ASSERT(warm.blocks[0].block == job && warm.next == 1, "the block was not recorded");
  uint64_t after_a = warm_pages(&warm, 0, words);
  T_ASSERT(after_a >= N / 2 * sizeof(int) / page, "%llu pages recorded",
           (unsigned long long)after_a);
  mp__pool_map_output(&warm, &a);
  T_INT_EQ(warm_pages(&warm, 0, words), after_a);
  claim(1, &b);
  mp__pool_map_output(&warm, &b);
  T_ASSERT(warm_pages(&warm, 0, words) > after_a, "the second chunk's pages were not recorded");
  T_ASSERT(complete(0, &a) && complete(1, &b), "the completions were refused");
  mp__jobs_release(table, job);
  again = submit_more(in, N, N / 2);
  T_ASSERT(again == job && again->block_id == id, "the block was not reused with its id");
  claim(0, &a);
  mp__pool_map_output(&warm, &a);
  T_ASSERT(warm.next == 1, "a reused block was given a new entry");
  mp__job_t *fresh = submit_more(in, N, N / 2);
  T_ASSERT(fresh->block_id != id, "a fresh block has the reused one's id");
  claim(1, &b);
  T_ASSERT(b.job == again, "the older job's chunk was not claimed first");
  T_ASSERT(complete(0, &a) && complete(1, &b), "the completions were refused");
  claim(0, &a);
  mp__pool_map_output(&warm, &a);
  T_ASSERT(warm.next == 2 && warm.blocks[1].block == fresh, "the fresh block has no entry");
  claim(1, &b);
  T_ASSERT(complete(0, &a) && complete(1, &b), "the completions were refused");
  mp__warm_free(&warm);
  free(in);
  mp__jobs_release(table, fresh);
  end_table(again);
}
END_TEST

/* A destroyed table's largest block serves the process's next table, its pages still in
 * memory: the output of the last map is still there (a block freed to the arena, or fresh,
 * would read zeros: the arena punches blocks of 8 MiB and more out of its file). */
START_TEST(test_block_kept_for_next_table) {
  enum { N = 1500000 }; /* 6 MB of input and 6 of output */
  int *in = malloc(N * sizeof *in);
  T_ASSERT(in != NULL, "no memory");
  for (int i = 0; i < N; i++)
    in[i] = i + 1;
  mp__job_t *job = submit_map(0, in, N, N);
  mp__task_t a;
  claim(0, &a);
  T_ASSERT(complete(0, &a), "the completion was refused");
  end_table(job);
  memset(in, 0, N * sizeof *in);
  job = submit_map(0, in, N, N);
  T_ASSERT(mp__pool_claim(mp__jobs_shared(table), 0, &a), "nothing to claim");
  T_INT_EQ(((const int *)a.output)[N - 1], N);
  a.call = (mp__fn_t)identity;
  MP_ASSERT_OK(mp__run_task(&a, NULL));
  T_ASSERT(complete(0, &a), "the completion was refused");
  free(in);
  end_table(job);
}
END_TEST

static Suite *pool_jobs_suite(void) {
  Suite *s = suite_create("pool_jobs");
  TCase *tc = mp_test_tcase(s, "protocol", 30);
  tcase_add_test(tc, test_claim_complete);
  tcase_add_test(tc, test_lost_between_claim_and_complete);
  tcase_add_test(tc, test_lost_and_retried);
  tcase_add_test(tc, test_double_complete);
  tcase_add_test(tc, test_lose_after_complete);
  tcase_add_test(tc, test_abort_then_complete);
  tcase_add_test(tc, test_function_limit);
  tcase_add_test(tc, test_completion_claims_next);
  tcase_add_test(tc, test_no_claim_past_an_older_job);
  tcase_add_test(tc, test_pinned_job_block_reused);
  tcase_add_test(tc, test_orphan_block_reused_not_reclaimed);
  tcase_add_test(tc, test_block_kept_for_next_table);
  tcase_add_test(tc, test_output_pages_mapped_once);
  return s;
}

MP_TEST_MAIN(pool_jobs_suite)
