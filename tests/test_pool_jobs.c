/*
 * The job table's claim / complete / lose protocol on its own (lib/pool_jobs.c), with no
 * worker and no supervisor: this suite plays both, in one thread, through the table's API
 * (and races through its race hook). It links the static library, as the heap suite does,
 * which also lets its last case reach a real pool's shared block.
 */
#include "../lib/pool_private.h"
#include "mp_test.h"

#include <pthread.h>
#include <semaphore.h>
#include <time.h>

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
static mp__jobrec_t *submit_map(unsigned retries, const int *items, uint64_t n,
                             uint64_t chunksize) {
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, retries));
  mp_test_set_hook(free_table);
  mp__job_spec_t spec = {0, 0, items, n, sizeof(int), sizeof(int), chunksize, 0, 0, NULL};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__jobrec_t *job;
  MP_ASSERT_OK(mp__jobs_submit(table, &spec, &job));
  return job;
}

static void end_table(mp__jobrec_t *job) {
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
  mp__jobrec_t *job = submit_map(0, in, 4, 2);
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
  mp__jobrec_t *job = submit_map(0, in, 4, 2);
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
  mp__jobrec_t *job = submit_map(1, in, 2, 2);
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
  mp__jobrec_t *job = submit_map(0, in, 4, 2);
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
  mp__jobrec_t *job = submit_map(0, in, 2, 1);
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
  mp__jobrec_t *job = submit_map(0, in, 2, 1);
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

static int other_fn(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg, (void)size, (void)result, (void)result_size;
  return 0;
}

/* A worker rewrites the shared copy of the function table (as any process sharing the pool's
 * block could): the pool's process still finds its functions, adds new ones at its own next
 * index, and frees only the references it made. */
START_TEST(test_function_table_forged) {
  MP_ASSERT_OK(mp__jobs_create(&table, 1, 0, 0));
  mp_test_set_hook(free_table);
  uint32_t index;
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &index));
  T_INT_EQ(index, 0);
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  sh->local_fns[0] = (mp__fn_t)other_fn;
  sh->fns[0] = (mp__fnref_t *)(uintptr_t)0x1000; /* freed, it would crash */
  sh->fns[1] = (mp__fnref_t *)(uintptr_t)0x2000;
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &index));
  T_INT_EQ(index, 0);
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)other_fn, &index));
  T_INT_EQ(index, 1);
  T_ASSERT(sh->local_fns[1] == (mp__fn_t)other_fn && sh->fns[1] != sh->fns[0],
           "the workers' copy of the new entry");
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* Another map of n ints in the same table. */
static mp__jobrec_t *submit_more(const int *items, uint64_t n, uint64_t chunksize) {
  mp__job_spec_t spec = {0, 0, items, n, sizeof(int), sizeof(int), chunksize, 0, 0, NULL};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__jobrec_t *job;
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
  mp__jobrec_t *job = submit_map(0, in, 6, 2);
  mp__task_t a, b;
  claim(0, &a);
  complete_claim(0, &a, &b);
  T_ASSERT(b.job == job->blk && b.chunk == 1, "chunk 1 was not claimed next");
  complete_claim(0, &b, &a);
  T_ASSERT(a.job == job->blk && a.chunk == 2 && a.first == 4, "chunk 2 was not claimed next");
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
  mp__jobrec_t *older = submit_map(0, in, 1, 1), *newer = submit_more(in, 4, 2);
  mp__task_t a, b, next;
  claim(0, &a);
  T_ASSERT(a.job == older->blk, "the older job's chunk was not claimed first");
  claim(1, &b);
  T_ASSERT(b.job == newer->blk, "worker 2 did not claim in the newer job");
  complete_claim(1, &b, &next);
  T_ASSERT(next.job == NULL, "claimed in the newer job while the older one was incomplete");
  complete_claim(0, &a, &next);
  T_ASSERT(next.job == NULL, "claimed in another job than the completed chunk's");
  claim(0, &b);
  T_ASSERT(b.job == newer->blk && b.chunk == 1, "the newer job's second chunk was not claimed");
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
  mp__jobrec_t *job = submit_map(0, in, N, N / 2), *again;
  mp__task_t a, b;
  claim(0, &a);
  claim(1, &b);
  T_ASSERT(complete(0, &a) && complete(1, &b), "the completions were refused");
  _Atomic uint64_t *pin = &mp__jobs_shared(table)->workers[1].pin;
  atomic_store(pin, mp__jobrec_seq(job) + 1);
  mp__job_t *blk = job->blk;
  mp__jobs_release(table, job);
  atomic_store(pin, 0);
  again = submit_more(in, N, N / 2);
  T_ASSERT(again->blk == blk, "the next job of the same size did not reuse the block");
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
  mp__jobrec_t *job = submit_map(0, in, 1, 1), *again, *third;
  mp__task_t a;
  claim(0, &a);
  T_ASSERT(complete(0, &a), "the completion was refused");
  _Atomic uint64_t *pin = &mp__jobs_shared(table)->workers[1].pin;
  atomic_store(pin, mp__jobrec_seq(job) + 1);
  mp__job_t *blk = job->blk;
  mp__jobs_release(table, job); /* pinned: an orphan */
  atomic_store(pin, 0);
  mp__jobs_reclaim(table);
  again = submit_more(in, 1, 1);
  T_ASSERT(again->blk == blk, "the next job of the same size did not reuse the block");
  mp__jobs_reclaim(table);
  third = submit_more(in, 1, 1);
  T_ASSERT(third->blk != again->blk, "a reclaim freed a job in use, and the next job took its block");
  claim(0, &a);
  T_ASSERT(a.job == again->blk, "the reused job's chunk was not claimed first");
  T_ASSERT(complete(0, &a), "the completion was refused");
  MP_ASSERT_OK(mp__job_take(again, false, &out, sizeof out, NULL));
  T_INT_EQ(out, 7);
  claim(0, &a);
  T_ASSERT(complete(0, &a), "the completion was refused");
  mp__jobs_release(table, third);
  end_table(again);
}
END_TEST

/* A job aborted and released while worker w runs a chunk of it keeps its block until w
 * lets go of that chunk, by its late completion or, dead, by the supervisor: before that,
 * the next job of the same size would have w's results written over its own. */
static void abort_while_running(uint32_t w, bool dies) {
  int in[2] = {7, 8}, out = 0;
  mp__jobrec_t *job = submit_map(0, in, 2, 1), *next;
  mp__task_t a;
  mp__jobs_worker_starting(table, w);
  T_ASSERT(mp__pool_claim(mp__jobs_shared(table), w, &a), "worker %u claimed nothing", w);
  mp__jobs_abort(table, job, MP_ETERMINATED);
  T_ASSERT(mp__job_complete(job), "an aborted job is not complete");
  mp__job_t *blk = job->blk;
  mp__jobs_release(table, job);
  mp__jobs_reclaim(table);
  next = submit_more(in, 1, 1);
  T_ASSERT(next->blk != blk, "the block of a chunk still running was given to the next job");
  if (dies)
    mp__jobs_worker_gone(table, w);
  else
    T_ASSERT(!complete(w, &a), "a completion after the abort was taken");
  mp__jobs_reclaim(table);
  mp__jobrec_t *third = submit_more(in, 2, 1);
  T_ASSERT(third->blk == blk, "the block was not freed once the worker let go of it");
  for (int k = 0; k < 3; k++) {
    claim(0, &a);
    T_ASSERT(complete(0, &a), "the completion was refused");
  }
  MP_ASSERT_OK(mp__job_take(next, false, &out, sizeof out, NULL));
  T_INT_EQ(out, 7);
  mp__jobs_release(table, third);
  end_table(next);
}

START_TEST(test_abort_while_running) {
  abort_while_running(1, false);
}
END_TEST

START_TEST(test_abort_while_running_worker_dies) {
  abort_while_running(1, true);
}
END_TEST

/* An aborted iterator's chunk, its error delivered, given back to the window by its owner
 * while its worker still runs it: it stays the worker's (review, stop 17). */
START_TEST(test_abandoned_chunk_given_back) {
  int in[2] = {7, 8};
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  mp_test_set_hook(free_table);
  mp__job_spec_t spec = {0, MP__JOB_ITERATOR, in, 2, sizeof(int), sizeof(int), 1, 2, 0, NULL};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__jobrec_t *job;
  MP_ASSERT_OK(mp__jobs_submit(table, &spec, &job));
  while (mp__jobs_feed(table, job, &(mp__feed_t){in, NULL, NULL}))
    ;
  mp__task_t a;
  mp__jobs_worker_starting(table, 1);
  T_ASSERT(mp__pool_claim(mp__jobs_shared(table), 1, &a), "nothing claimed");
  mp__jobs_abort(table, job, MP_ETERMINATED);
  T_INT_EQ(mp__job_finished_chunk(job, true, 0), 0);
  mp__jobs_return_chunk(table, job, 0,
                        &(mp__feed_t){in, NULL, NULL}); /* as pool.c's take_chunk does */
  mp__job_t *blk = job->blk;
  mp__jobs_release(table, job);
  mp__jobs_reclaim(table);
  mp__jobrec_t *next = submit_more(in, 2, 1);
  T_ASSERT(next->blk != blk, "the block of a chunk still running was given to the next job");
  T_ASSERT(!complete(1, &a), "a completion after the abort was taken");
  end_table(next);
}
END_TEST

/* A worker gone before a terminate's abort (its end seen after the terminate flag, so its
 * chunk was not lost): the abort fails that chunk outright, and the block is freed (review,
 * stop 17: it was abandoned to a worker that would never let go). */
START_TEST(test_abort_after_the_worker_is_gone) {
  int in[2] = {7, 8};
  mp__jobrec_t *job = submit_map(0, in, 2, 1);
  mp__task_t a;
  mp__jobs_worker_starting(table, 1);
  T_ASSERT(mp__pool_claim(mp__jobs_shared(table), 1, &a), "nothing claimed");
  mp__jobs_worker_gone(table, 1);
  mp__jobs_abort_all(table, MP_ETERMINATED);
  mp__job_t *blk = job->blk;
  mp__jobs_release(table, job);
  mp__jobs_reclaim(table);
  mp__jobrec_t *next = submit_more(in, 2, 1);
  T_ASSERT(next->blk == blk, "the block of a gone worker's chunk was not freed");
  end_table(next);
}
END_TEST

static _Atomic bool stop_ending;

static void *end_worker_1(void *arg) {
  (void)arg;
  while (!atomic_load(&stop_ending))
    mp__jobs_worker_gone(table, 1);
  return NULL;
}

/* Workers end (their abandoned chunks let go of) while jobs are made, aborted and freed: a
 * record taken for a new job must not be read by that let-go with its last job's header
 * (ThreadSanitizer saw the race; review, stop 17). */
START_TEST(test_worker_ends_while_jobs_are_made) {
  int in[2] = {7, 8};
  mp__jobrec_t *job = submit_map(0, in, 2, 1);
  mp__jobs_release(table, job);
  atomic_store(&stop_ending, false);
  pthread_t ender;
  T_INT_EQ(pthread_create(&ender, NULL, end_worker_1, NULL), 0);
  for (int k = 0; k < 3000; k++) {
    job = submit_more(in, 2, 1);
    mp__task_t a;
    mp__jobs_worker_starting(table, 1);
    bool claimed = mp__pool_claim(mp__jobs_shared(table), 1, &a);
    mp__jobs_abort(table, job, MP_ETERMINATED);
    mp__jobs_release(table, job);
    if (claimed)
      complete(1, &a);
    mp__jobs_reclaim(table);
  }
  atomic_store(&stop_ending, true);
  pthread_join(ender, NULL);
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* ------------------- a worker that ends as it goes idle ------------------- */

/* Worker 0 asleep, worker 1 stopped by the hook between its two announcements of going idle
 * (the idle count and its ticket), as a worker killed there is. */
static struct {
  sem_t at_point, resume;
  pthread_t sleeper, ender;
  bool sleeper_started, ender_started, sleeper_joined;
} idle_race;

static void idle_hook(int point, mp__job_t *job) {
  (void)job;
  if (point != MP__RACE_IDLE || !pthread_equal(pthread_self(), idle_race.ender))
    return;
  sem_post(&idle_race.at_point);
  while (sem_wait(&idle_race.resume) < 0)
    ;
}

static void *go_idle(void *arg) {
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  mp__pool_idle(sh, (uint32_t)(uintptr_t)arg, atomic_load(&sh->work));
  return NULL;
}

/* Whether thread ended within seconds (joined if so). */
static bool joined_within(pthread_t thread, int seconds) {
  struct timespec limit;
  clock_gettime(CLOCK_REALTIME, &limit);
  limit.tv_sec += seconds;
  return pthread_timedjoin_np(thread, NULL, &limit) == 0;
}

/* Lets both threads run on and end: the stopped one, and the sleeper if it was not woken. */
static void end_idle_race(void) {
  mp__pool_race_hook = NULL;
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  atomic_fetch_add(&sh->work, 1);
  if (idle_race.ender_started) {
    sem_post(&idle_race.resume);
    pthread_join(idle_race.ender, NULL);
  }
  if (idle_race.sleeper_started && !idle_race.sleeper_joined) {
    atomic_fetch_add(&sh->workers[0].wake, 1);
    mp__futex_wake(&sh->workers[0].wake, 1);
    pthread_join(idle_race.sleeper, NULL);
  }
  sem_destroy(&idle_race.at_point);
  sem_destroy(&idle_race.resume);
  free_table();
}

/* A worker that ends between counting itself idle and taking its ticket must not make the
 * count too low: the supervisor's end of it uncounted it (it had a ticket), and the next job
 * skipped the worker that slept (the count said none did). */
START_TEST(test_worker_ends_going_idle) {
  memset(&idle_race, 0, sizeof idle_race);
  sem_init(&idle_race.at_point, 0, 0);
  sem_init(&idle_race.resume, 0, 0);
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  mp_test_set_hook(end_idle_race);
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  T_INT_EQ(pthread_create(&idle_race.sleeper, NULL, go_idle, (void *)0), 0);
  idle_race.sleeper_started = true;
  double end = mp_test_now() + 10;
  while (atomic_load(&sh->workers[0].idle_ticket) == 0 && mp_test_now() < end)
    mp_test_sleep(0.001);
  T_ASSERT(atomic_load(&sh->workers[0].idle_ticket) != 0, "worker 0 did not go idle");
  mp__pool_race_hook = idle_hook;
  T_INT_EQ(pthread_create(&idle_race.ender, NULL, go_idle, (void *)1), 0);
  idle_race.ender_started = true;
  struct timespec limit;
  clock_gettime(CLOCK_REALTIME, &limit);
  limit.tv_sec += 10;
  T_INT_EQ(sem_timedwait(&idle_race.at_point, &limit), 0);
  mp__jobs_worker_gone(table, 1); /* what the supervisor does once it sees worker 1 end */
  int in[1] = {5};
  mp__jobrec_t *job = submit_more(in, 1, 1);
  idle_race.sleeper_joined = joined_within(idle_race.sleeper, 2);
  T_ASSERT(idle_race.sleeper_joined,
           "the sleeping worker 0 was not woken for the job (idle count %u)",
           atomic_load(&sh->idle));
  mp__jobs_release(table, job);
  mp_test_set_hook(NULL);
  end_idle_race();
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
  mp__jobrec_t *job = submit_map(0, in, N, N / 2), *again;
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE), id = job->blk->block_id;
  uintptr_t at = (uintptr_t)job->blk;
  uint64_t words = (((at + job->block_size - 1) / page - at / page + 1) + 63) / 64;
  mp__task_t a, b;
  claim(0, &a);
  mp__pool_map_output(&warm, &a);
  T_ASSERT(warm.blocks[0].block == job->blk && warm.next == 1, "the block was not recorded");
  uint64_t after_a = warm_pages(&warm, 0, words);
  T_ASSERT(after_a >= N / 2 * sizeof(int) / page, "%llu pages recorded",
           (unsigned long long)after_a);
  mp__pool_map_output(&warm, &a);
  T_INT_EQ(warm_pages(&warm, 0, words), after_a);
  claim(1, &b);
  mp__pool_map_output(&warm, &b);
  T_ASSERT(warm_pages(&warm, 0, words) > after_a, "the second chunk's pages were not recorded");
  T_ASSERT(complete(0, &a) && complete(1, &b), "the completions were refused");
  mp__job_t *blk = job->blk;
  mp__jobs_release(table, job);
  again = submit_more(in, N, N / 2);
  T_ASSERT(again->blk == blk && again->blk->block_id == id, "the block was not reused with its id");
  claim(0, &a);
  mp__pool_map_output(&warm, &a);
  T_ASSERT(warm.next == 1, "a reused block was given a new entry");
  mp__jobrec_t *fresh = submit_more(in, N, N / 2);
  T_ASSERT(fresh->blk->block_id != id, "a fresh block has the reused one's id");
  claim(1, &b);
  T_ASSERT(b.job == again->blk, "the older job's chunk was not claimed first");
  T_ASSERT(complete(0, &a) && complete(1, &b), "the completions were refused");
  claim(0, &a);
  mp__pool_map_output(&warm, &a);
  T_ASSERT(warm.next == 2 && warm.blocks[1].block == fresh->blk, "the fresh block has no entry");
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
  mp__jobrec_t *job = submit_map(0, in, N, N);
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

/* ------------------------------ batches of applies ------------------------------ */

/* An apply of identity on x, by the table's own path. */
static mp__jobrec_t *apply(int *x, uint32_t *chunk) {
  mp__apply_spec_t spec = {0, false, x, sizeof *x, sizeof *x};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__jobrec_t *job;
  MP_ASSERT_OK(mp__jobs_apply(table, &spec, &job, chunk));
  return job;
}

/* Worker w claims, runs and completes the oldest queued chunk: its job and chunk. */
static void run_one(uint32_t w, mp__jobrec_t *job, uint32_t chunk) {
  mp__task_t task;
  claim(w, &task);
  T_ASSERT(task.job == job->blk && task.chunk == chunk, "claimed chunk %u of %p, not %u of %p",
           task.chunk, task.job, chunk, (void *)job);
  T_ASSERT(complete(w, &task), "the completion was refused");
}

static int take_int(mp__jobrec_t *job, uint32_t chunk) {
  int r = -1;
  size_t len = 0;
  MP_ASSERT_OK(mp__job_take_chunk(job, chunk, &r, sizeof r, &len));
  T_INT_EQ(len, sizeof r);
  return r;
}

/* A table whose first apply (x[0]) ran as a job of its own and whose second (x[1]) is the
 * first chunk of a batch: jobs[0..1], chunks[0..1]. */
static void batch_after_a_lone_apply(int *x, mp__jobrec_t **jobs, uint32_t *chunks) {
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  mp_test_set_hook(free_table);
  jobs[0] = apply(&x[0], &chunks[0]);
  run_one(0, jobs[0], 0);
  jobs[1] = apply(&x[1], &chunks[1]); /* after an apply: the first chunk of a batch */
  T_ASSERT((jobs[1]->head.flags & MP__JOB_BATCH) && chunks[1] == 0,
           "the second apply was not batched");
}

/* The third apply (x[2]), which must be the batch's second chunk. */
static void append_third(int *x, mp__jobrec_t **jobs, uint32_t *chunks) {
  jobs[2] = apply(&x[2], &chunks[2]);
  T_ASSERT(jobs[2] == jobs[1] && chunks[2] == 1, "the third apply was not appended");
}

/* The batch jobs[1] is complete and no work is left; the n applies' references go, and the
 * table. */
static void end_batch_test(mp__jobrec_t **jobs, int n) {
  T_ASSERT(mp__job_complete(jobs[1]), "the batch is never complete: %llu of %u counted",
           (unsigned long long)mp__job_counted(jobs[1]), jobs[1]->head.n_chunks);
  T_ASSERT(!mp__jobs_work_left(table), "work is left");
  for (int i = 0; i < n; i++)
    mp__jobs_release(table, jobs[i]);
  mp_test_set_hook(NULL);
  free_table();
}

/* A worker marks an open batch's limit closed in the block (a wild write). The pool's process
 * decides by its record's limit, out of the workers' reach: the next apply is still taken
 * (before, its feed failed, MP_ETERMINATED), and the close counts the chunks never
 * appended, so the batch completes (before, the close counted none, the batch never
 * completed, and a closed pool's join waited for ever). */
START_TEST(test_forged_limit_closed) {
  int x[3] = {1, 2, 3};
  mp__jobrec_t *jobs[3];
  uint32_t chunks[3];
  batch_after_a_lone_apply(x, jobs, chunks);
  atomic_fetch_or(&jobs[1]->blk->limit, MP__LIMIT_CLOSED);
  append_third(x, jobs, chunks);
  run_one(0, jobs[1], 0);
  run_one(1, jobs[1], 1);
  T_INT_EQ(take_int(jobs[1], 1), 3);
  mp__jobs_close_batch(table);
  end_batch_test(jobs, 3);
}
END_TEST

/* Nothing is claimable: worker w's claim finds no chunk. */
static void claim_none(uint32_t w, const char *why) {
  mp__task_t task;
  T_ASSERT(!mp__pool_claim(mp__jobs_shared(table), w, &task), "chunk %u was claimed: %s",
           task.chunk, why);
}

/* With holding on, applies that follow another in a stream are held back: no claim finds
 * them until a worker out of work takes them (mp__pool_take_held) or the caller's wait
 * shows them (mp__jobs_flush). Before, with no holding, each was claimable at once. */
START_TEST(test_held_applies_shown) {
  int x[5] = {1, 2, 3, 4, 5};
  mp__jobrec_t *jobs[5];
  uint32_t chunks[5];
  batch_after_a_lone_apply(x, jobs, chunks);
  mp__jobs_set_hold(table, 8);
  append_third(x, jobs, chunks);
  jobs[3] = apply(&x[3], &chunks[3]);
  run_one(0, jobs[1], 0);
  claim_none(0, "held back");
  T_ASSERT(mp__pool_take_held(mp__jobs_shared(table), 1), "no held chunk was taken");
  T_ASSERT(!mp__pool_take_held(mp__jobs_shared(table), 1), "a second take found more");
  run_one(1, jobs[1], 1);
  run_one(1, jobs[1], 2);
  jobs[4] = apply(&x[4], &chunks[4]);
  claim_none(0, "held back");
  mp__jobs_flush(table);
  run_one(0, jobs[1], 3);
  for (uint32_t c = 0; c < 4; c++)
    T_INT_EQ(take_int(jobs[1], c), x[c + 1]);
  mp__jobs_close_batch(table);
  end_batch_test(jobs, 5);
}
END_TEST

/* A held chunk is shown by the close of its batch at once, with no worker's take, and a
 * forged appended count shows no chunk past the batch's: the worker's rise stops at its
 * chunks, and a claim finds only the fed one. */
START_TEST(test_held_applies_closed) {
  int x[3] = {1, 2, 3};
  mp__jobrec_t *jobs[3];
  uint32_t chunks[3];
  batch_after_a_lone_apply(x, jobs, chunks);
  mp__jobs_set_hold(table, 8);
  append_third(x, jobs, chunks);
  run_one(0, jobs[1], 0);
  claim_none(0, "held back");
  mp__jobs_close_batch(table);
  run_one(0, jobs[1], 1);
  T_INT_EQ(take_int(jobs[1], 1), 3);
  end_batch_test(jobs, 3);

  batch_after_a_lone_apply(x, jobs, chunks);
  mp__jobs_set_hold(table, 8);
  append_third(x, jobs, chunks);
  run_one(0, jobs[1], 0);
  atomic_store(&jobs[1]->blk->appended, UINT32_MAX);
  T_ASSERT(mp__pool_take_held(mp__jobs_shared(table), 0), "the held chunk was not taken");
  T_INT_EQ(atomic_load(&jobs[1]->blk->limit) & ~MP__LIMIT_CLOSED, jobs[1]->head.n_chunks);
  run_one(0, jobs[1], 1);
  claim_none(1, "past the chunks fed");
  T_INT_EQ(take_int(jobs[1], 1), 3);
  mp__jobs_close_batch(table);
  end_batch_test(jobs, 3);
}
END_TEST

/* Worker w going idle (mp__pool_idle) in a thread of its own, with the work count it read
 * before its last claim, as serve reads it. */
typedef struct {
  uint32_t w, seen;
} going_idle_t;

static void *idle_from(void *arg) {
  const going_idle_t *g = arg;
  mp__pool_idle(mp__jobs_shared(table), g->w, g->seen);
  return NULL;
}

/* Whether worker w, going idle with the work count seen, looks for work again within 2 s
 * rather than sleep (one that slept is woken, and joined, before this returns). */
static bool idle_returns(uint32_t w, uint32_t seen) {
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  going_idle_t g = {w, seen};
  pthread_t th;
  T_INT_EQ(pthread_create(&th, NULL, idle_from, &g), 0);
  bool returned = joined_within(th, 2);
  if (!returned) {
    atomic_fetch_add(&sh->work, 1);
    atomic_fetch_add(&sh->workers[w].wake, 1);
    mp__futex_wake(&sh->workers[w].wake, 1);
    pthread_join(th, NULL);
  }
  return returned;
}

/* Two applies held back while both workers run. Worker 1 runs out of work first and finds
 * nothing (both are held); worker 0, whose spin ends first, takes both and runs the first
 * (a slow apply). Worker 1's spin ends next: the second is claimable now, and worker 1 must
 * look again (or be woken) rather than sleep. On 887aa4f the take moved no work count and
 * woke no one: worker 1 slept with the second apply claimable, which waited for worker 0 to
 * finish the first (held applies ran one after another on one worker while the others
 * slept, and applies that wait on each other never ended unless the caller waited on one
 * or closed the pool). */
START_TEST(test_held_applies_taken_leave_none_asleep) {
  int x[4] = {1, 2, 3, 4};
  mp__jobrec_t *jobs[4];
  uint32_t chunks[4];
  batch_after_a_lone_apply(x, jobs, chunks);
  mp__jobs_set_hold(table, 8);
  append_third(x, jobs, chunks);
  jobs[3] = apply(&x[3], &chunks[3]);
  T_ASSERT(jobs[3] == jobs[1] && chunks[3] == 2, "the fourth apply was not appended");
  run_one(0, jobs[1], 0);
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  uint32_t seen = atomic_load(&sh->work); /* worker 1's, before its claim */
  claim_none(1, "held back");
  T_ASSERT(mp__pool_take_held(sh, 0), "worker 0 took no held chunk");
  mp__task_t a;
  claim(0, &a);
  T_INT_EQ(a.chunk, 1);
  T_ASSERT(idle_returns(1, seen),
           "worker 1 went to sleep with chunk 2 claimable (worker 0 took it with chunk 1, "
           "which it still runs)");
  run_one(1, jobs[1], 2);
  T_ASSERT(complete(0, &a), "the completion was refused");
  for (uint32_t c = 0; c < 3; c++)
    T_INT_EQ(take_int(jobs[1], c), x[c + 1]);
  mp__jobs_close_batch(table);
  end_batch_test(jobs, 4);
}
END_TEST

/* An iterator submitted before a stream of applies, whose consumer takes each result and
 * feeds the next chunk while the worker that ran out of work spins (a lazy imap consumed
 * in a loop): the second apply, held back, must still run before the iterator ends. On
 * 887aa4f a worker took held applies only after a whole spin with no new work, which each
 * feed cut short: the apply ran only once the iterator's N chunks had all run (never,
 * behind an endless iterator), where before it ran at the worker's first look that found
 * the iterator's window empty. */
START_TEST(test_held_apply_behind_a_fed_iterator) {
  enum { N = 6 };
  int in[N] = {10, 11, 12, 13, 14, 15}, x[2] = {1, 2};
  MP_ASSERT_OK(mp__jobs_create(&table, 1, 0, 0));
  mp_test_set_hook(free_table);
  mp__jobs_set_hold(table, 8);
  mp__job_spec_t spec = {0, MP__JOB_ITERATOR, in, N, sizeof(int), sizeof(int), 1, 1, 0, NULL};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__jobrec_t *it, *applies[2];
  uint32_t chunks[2];
  MP_ASSERT_OK(mp__jobs_submit(table, &spec, &it));
  mp__feed_t feed = {in, NULL, NULL};
  while (mp__jobs_feed(table, it, &feed))
    ;
  applies[0] = apply(&x[0], &chunks[0]); /* work in flight: the first of a batch */
  applies[1] = apply(&x[1], &chunks[1]); /* held back: no worker is idle */
  T_ASSERT((applies[0]->head.flags & MP__JOB_BATCH) && applies[1] == applies[0] &&
               chunks[1] == 1,
           "the applies were not batched");
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  int its_run = 0, pending = -1; /* the iterator's chunk run and not taken back yet */
  bool held_ran = false;
  for (int round = 0; round < 4 * N && !held_ran; round++) {
    uint32_t seen = atomic_load(&sh->work);
    mp__task_t t;
    if (mp__pool_claim(sh, 0, &t)) {
      t.call = (mp__fn_t)identity;
      MP_ASSERT_OK(mp__run_task(&t, NULL));
      T_ASSERT(complete(0, &t), "the completion was refused");
      if (t.job == it->blk)
        its_run++, pending = (int)t.chunk;
      held_ran = t.job == applies[1]->blk && t.chunk == 1;
      continue;
    }
    /* Out of work: its consumer takes the result meanwhile and feeds the next chunk. */
    if (pending >= 0)
      mp__jobs_return_chunk(table, it, (uint32_t)pending, &feed);
    pending = -1;
    T_ASSERT(idle_returns(0, seen), "the worker slept with work left");
  }
  T_ASSERT(held_ran, "the held apply never ran");
  T_ASSERT(its_run < N,
           "the held apply ran only after all %d chunks of the iterator fed before and "
           "after it (the worker ran out of work after each)",
           its_run);
  mp__jobs_abort(table, it, MP_ETERMINATED);
  mp__jobs_close_batch(table);
  mp__jobs_release(table, it);
  mp__jobs_release(table, applies[0]);
  mp__jobs_release(table, applies[1]);
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* A worker marks the open batch's block limit closed (a wild write, as in
 * test_forged_limit_closed) and the next apply is held back: the pool's process decides by
 * its record, whose batch is open, so a worker that runs out of work still takes it. On
 * 887aa4f the take refused the forged bit: the held apply reached no worker until the
 * caller's next wait, the eighth append or the close (a caller waiting on its callback
 * alone waited for ever), where before the forged bit cost nothing. */
START_TEST(test_forged_limit_closed_held) {
  int x[3] = {1, 2, 3};
  mp__jobrec_t *jobs[3];
  uint32_t chunks[3];
  batch_after_a_lone_apply(x, jobs, chunks);
  mp__jobs_set_hold(table, 8);
  atomic_fetch_or(&jobs[1]->blk->limit, MP__LIMIT_CLOSED);
  append_third(x, jobs, chunks);
  run_one(0, jobs[1], 0);
  claim_none(1, "held back");
  T_ASSERT(mp__pool_take_held(mp__jobs_shared(table), 1),
           "the held apply was not taken: a worker's write of the limit's closed bit hid it "
           "from every worker");
  run_one(1, jobs[1], 1);
  T_INT_EQ(take_int(jobs[1], 1), 3);
  mp__jobs_close_batch(table);
  end_batch_test(jobs, 3);
}
END_TEST

/* A batch chunk's cell (its state word's line) holds a copy of a small result after a length
 * word that a worker's task could write: a length past the cell's room sends the parent to
 * the chunk's own result slot, and one within it is read no further than the cell; so for
 * a get that finds the chunk done (mp__job_take_done_chunk) as for one that waited. */
START_TEST(test_forged_cell_lengths) {
  static int x[3] = {7, 8, 9};
  mp__jobrec_t *jobs[3];
  uint32_t chunks[3];
  batch_after_a_lone_apply(x, jobs, chunks);
  append_third(x, jobs, chunks);
  run_one(0, jobs[1], chunks[1]);
  run_one(1, jobs[2], chunks[2]);
  /* Every word of the cells after their state words. */
  _Atomic uint64_t *cells[2] = {mp__job_state(jobs[1]->blk, chunks[1]),
                                mp__job_state(jobs[2]->blk, chunks[2])};
  for (int w = 1; w < 8; w++) {
    atomic_store(&cells[0][w], UINT64_MAX);
    atomic_store(&cells[1][w], 3);
  }
  T_INT_EQ(take_int(jobs[1], chunks[1]), 8); /* from its result slot, which the task wrote */
  char r[sizeof(int)];
  size_t len = 0;
  MP_ASSERT_OK(mp__job_take_chunk(jobs[2], chunks[2], r, sizeof r, &len));
  T_INT_EQ(len, 3);
  int slot = -1;
  len = 0;
  T_INT_EQ(mp__job_take_done_chunk(jobs[1], chunks[1], &slot, sizeof slot, &len), 0);
  T_INT_EQ(slot, 8);
  T_INT_EQ(len, sizeof slot);
  len = 0;
  T_INT_EQ(mp__job_take_done_chunk(jobs[2], chunks[2], r, sizeof r, &len), 0);
  T_INT_EQ(len, 3);
  mp__jobs_close_batch(table);
  end_batch_test(jobs, 3);
}
END_TEST

/* A worker sets an open batch's block limit back to 0 (a wild write): the next apply's feed
 * finds the count moved and fails the batch with MP_ECORRUPT, its own chunk included, rather
 * than leave the chunks past the forged count to no claim (each apply's get waiting for
 * ever); the apply after it opens another batch. */
START_TEST(test_forged_limit_count) {
  int x[4] = {1, 2, 3, 4};
  mp__jobrec_t *jobs[4];
  uint32_t chunks[4];
  batch_after_a_lone_apply(x, jobs, chunks);
  atomic_store(&jobs[1]->blk->limit, 0);
  append_third(x, jobs, chunks);
  T_INT_EQ(mp__job_chunk_aborted(jobs[2], 1), MP_ECORRUPT);
  mp__chunk_view_t view;
  mp__job_view_chunk(jobs[2], 1, &view);
  T_INT_EQ(view.fails_at, 0);
  uint64_t failed;
  T_INT_EQ(mp__job_item_failure(jobs[2], 1, 1, &failed), MP_ECORRUPT);
  T_ASSERT(strstr(mp_last_error(), "shared memory") != NULL, "the error says: %s",
           mp_last_error());
  jobs[3] = apply(&x[3], &chunks[3]);
  T_ASSERT(jobs[3] != jobs[1], "the failed batch took the fourth apply");
  mp__jobs_close_batch(table);
  run_one(0, jobs[3], chunks[3]);
  T_INT_EQ(take_int(jobs[3], chunks[3]), 4);
  end_batch_test(jobs, 4);
}
END_TEST

/* A lone apply is a job of its own; the applies after it, while it is in flight, are the
 * chunks of one batch, each finished, taken and released on its own; a full batch closes,
 * and the next apply opens another; a batch closed before it is full completes once its
 * applies are done. */
START_TEST(test_applies_share_a_batch) {
  enum { FULL = MP__BATCH_APPLIES, NEXT = FULL + 1 }; /* applies 1..FULL fill a batch */
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  mp_test_set_hook(free_table);
  static int x[NEXT + 1];
  static mp__jobrec_t *jobs[NEXT + 1];
  uint32_t chunks[NEXT + 1];
  for (int k = 0; k <= NEXT; k++)
    x[k] = 1000 + k;
  jobs[0] = apply(&x[0], &chunks[0]);
  T_ASSERT(!(jobs[0]->head.flags & MP__JOB_BATCH) && chunks[0] == 0,
           "the lone apply was batched");
  for (int k = 1; k <= NEXT; k++)
    jobs[k] = apply(&x[k], &chunks[k]);
  for (int k = 1; k <= FULL; k++)
    T_ASSERT(jobs[k] == jobs[1] && chunks[k] == (uint32_t)(k - 1),
             "apply %d: chunk %u of %p, not %d of the batch %p", k, chunks[k], (void *)jobs[k],
             k - 1, (void *)jobs[1]);
  T_ASSERT((jobs[1]->head.flags & MP__JOB_BATCH), "the applies in flight were not batched");
  T_ASSERT(jobs[NEXT] != jobs[1] && chunks[NEXT] == 0, "the full batch took apply %d", NEXT);
  run_one(0, jobs[0], 0);
  T_ASSERT(mp__job_complete(jobs[0]), "the lone apply is not complete");
  run_one(1, jobs[1], 0);
  T_ASSERT(mp__job_chunk_finished(jobs[1], 0) && !mp__job_chunk_finished(jobs[1], 1),
           "chunks finish one by one");
  T_INT_EQ(take_int(jobs[1], 0), 1001);
  for (int k = 2; k <= FULL; k++)
    run_one(k % 2, jobs[k], chunks[k]);
  T_ASSERT(mp__job_complete(jobs[1]), "the full batch is not complete");
  /* In any order. */
  for (int k = FULL; k >= 1; k--)
    T_INT_EQ(take_int(jobs[k], chunks[k]), 1000 + k);
  /* The open batch, closed with one apply queued, completes once it is done. */
  T_ASSERT(!mp__job_complete(jobs[NEXT]), "the open batch is complete");
  mp__jobs_close_batch(table);
  T_ASSERT(!mp__job_complete(jobs[NEXT]), "the closed batch completed before its apply");
  run_one(0, jobs[NEXT], 0);
  T_ASSERT(mp__job_complete(jobs[NEXT]), "the closed batch is not complete");
  T_INT_EQ(take_int(jobs[NEXT], 0), 1000 + NEXT);
  T_ASSERT(!mp__jobs_work_left(table), "work is left");
  for (int k = 0; k <= NEXT; k++)
    mp__jobs_release(table, jobs[k]);
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* In a batch, a lost apply fails alone, with MP_EWORKERDIED, and an abort fails the queued
 * ones, not those done. */
START_TEST(test_batch_lost_and_aborted) {
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  mp_test_set_hook(free_table);
  int x[5] = {1, 2, 3, 4, 5};
  mp__jobrec_t *jobs[5];
  uint32_t chunks[5];
  for (int k = 0; k < 5; k++)
    jobs[k] = apply(&x[k], &chunks[k]);
  mp__jobrec_t *batch = jobs[1];
  run_one(0, jobs[0], 0);
  mp__task_t lost;
  claim(1, &lost);
  T_ASSERT(lost.job == batch->blk && lost.chunk == 0, "the batch's first apply was not claimed");
  mp__jobs_worker_lost(table, 1, "worker 2 was lost");
  mp__jobs_worker_gone(table, 1);
  T_ASSERT(mp__job_chunk_finished(batch, 0), "the lost apply did not fail");
  T_INT_EQ(mp__job_chunk_aborted(batch, 0), 0);
  MP_ASSERT_ERR(mp__job_take_chunk(batch, 0, NULL, 0, NULL), MP_EWORKERDIED);
  T_STR_EQ(mp_last_error(), "worker 2 was lost");
  T_ASSERT(!mp__job_chunk_finished(batch, 1), "the next apply failed with the lost one");
  run_one(0, batch, 1);
  T_INT_EQ(take_int(batch, 1), 3);
  mp__jobs_abort_all(table, MP_ETERMINATED);
  for (uint32_t c = 2; c < 4; c++) {
    T_ASSERT(mp__job_chunk_finished(batch, c), "queued apply %u was not aborted", c);
    T_INT_EQ(mp__job_chunk_aborted(batch, c), MP_ETERMINATED);
  }
  T_INT_EQ(mp__job_chunk_aborted(batch, 1), 0);
  T_INT_EQ(take_int(batch, 1), 3);
  T_ASSERT(mp__job_complete(batch), "the aborted batch is not complete");
  for (int k = 0; k < 5; k++)
    mp__jobs_release(table, jobs[k]);
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* A map of many chunks of one: the state words of consecutive chunks, which two workers
 * claim and complete side by side, lie on different cache lines, each chunk's its own; a
 * lost chunk is queued again and run, and an abort fails the rest. */
START_TEST(test_spread_states_lost_and_aborted) {
  enum { N = 40 };
  int in[N], out[N];
  for (int k = 0; k < N; k++)
    in[k] = 100 + k;
  mp__jobrec_t *job = submit_map(1, in, N, 1);
  for (uint32_t c = 0; c < N; c++) {
    uintptr_t at = (uintptr_t)mp__job_state(job->blk, c);
    T_INT_EQ(MP__CHUNK_OF(atomic_load(mp__job_state(job->blk, c))), c);
    if (c > 0)
      T_ASSERT(at / 64 != (uintptr_t)mp__job_state(job->blk, c - 1) / 64,
               "chunks %u and %u share a line", c - 1, c);
    for (uint32_t d = 0; d < c; d++)
      T_ASSERT(mp__job_state(job->blk, d) != mp__job_state(job->blk, c), "chunks %u and %u share a word",
               d, c);
  }
  mp__task_t a, b;
  for (int k = 0; k < N / 2; k++) { /* chunks 0..19, by turns */
    claim(k % 2, &a);
    T_INT_EQ(a.first, (uint64_t)k);
    T_ASSERT(complete(k % 2, &a), "chunk %d's completion was refused", k);
  }
  claim(0, &a); /* chunk 20, lost: queued again */
  mp__jobs_worker_lost(table, 0, "worker 1 was lost");
  mp__jobs_worker_gone(table, 0);
  claim(1, &b);
  T_INT_EQ(b.first, 20);
  T_ASSERT(complete(1, &b), "the retried chunk's completion was refused");
  claim(1, &b); /* chunk 21, running when the abort comes */
  T_INT_EQ(b.first, 21);
  mp__jobs_abort_all(table, MP_ETERMINATED);
  T_ASSERT(!complete(1, &b), "a completion after the abort was taken");
  T_ASSERT(mp__job_complete(job), "the aborted map is not complete");
  T_INT_EQ(mp__job_aborted(job), MP_ETERMINATED);
  for (int k = 0; k < N; k++) {
    const char *r = mp__job_result(job, (uint64_t)k);
    T_ASSERT((r != NULL) == (k <= 20), "item %d's chunk: %s", k, r ? "done" : "failed");
    if (r) {
      memcpy(&out[k], r, sizeof out[k]);
      T_INT_EQ(out[k], 100 + k);
    }
  }
  end_table(job);
}
END_TEST

/* A batch closed before it is full gives up the references of the applies it did not
 * take: once its one apply is released, its block is free, and the next jobs reuse it. */
START_TEST(test_closed_batch_block_freed) {
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  mp_test_set_hook(free_table);
  int x[4] = {1, 2, 3, 4};
  mp__jobrec_t *jobs[4];
  uint32_t chunks[4];
  jobs[0] = apply(&x[0], &chunks[0]);
  jobs[1] = apply(&x[1], &chunks[1]);
  T_ASSERT(jobs[1]->head.flags & MP__JOB_BATCH, "the apply in flight was not batched");
  mp__jobs_close_batch(table);
  run_one(0, jobs[0], 0);
  run_one(1, jobs[1], 0);
  T_INT_EQ(take_int(jobs[1], 0), 2);
  mp__jobs_release(table, jobs[0]);
  mp__jobs_release(table, jobs[1]);
  mp__jobs_reclaim(table);
  jobs[2] = apply(&x[2], &chunks[2]);
  jobs[3] = apply(&x[3], &chunks[3]);
  T_ASSERT(jobs[2] == jobs[1] || jobs[3] == jobs[1],
           "the closed batch's block was not freed for the next jobs");
  mp__jobs_close_batch(table);
  run_one(0, jobs[2], chunks[2]); /* a batch of both, or two jobs: chunks[] tells */
  run_one(1, jobs[3], chunks[3]);
  T_INT_EQ(take_int(jobs[3], chunks[3]), 4);
  mp__jobs_release(table, jobs[2]);
  mp__jobs_release(table, jobs[3]);
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* A stream of applies one at a time is batched: an apply that follows an apply opens a
 * batch even with nothing in flight (it was a job of its own whenever the workers had
 * settled the last apply before it came), and so does one after a full batch; an apply
 * after other work is a job of its own again. */
START_TEST(test_apply_stream_stays_batched) {
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  mp_test_set_hook(free_table);
  enum { FULL = MP__BATCH_APPLIES, NEXT = FULL + 1 }; /* applies 1..FULL fill a batch */
  static int x[NEXT + 2];
  static mp__jobrec_t *jobs[NEXT + 2];
  uint32_t chunks[NEXT + 2];
  for (int k = 0; k < NEXT + 2; k++)
    x[k] = 2000 + k;
  jobs[0] = apply(&x[0], &chunks[0]);
  T_ASSERT(!(jobs[0]->head.flags & MP__JOB_BATCH), "the first apply was batched");
  run_one(0, jobs[0], 0);
  T_ASSERT(!mp__jobs_work_left(table), "work is left");
  for (int k = 1; k <= FULL; k++) {
    jobs[k] = apply(&x[k], &chunks[k]);
    run_one(k % 2, jobs[k], chunks[k]);
  }
  T_ASSERT((jobs[1]->head.flags & MP__JOB_BATCH) && jobs[FULL] == jobs[1] &&
               chunks[FULL] == FULL - 1,
           "the applies after the first one were not one batch");
  T_ASSERT(mp__job_complete(jobs[1]) && !mp__jobs_work_left(table), "the batch is not done");
  jobs[NEXT] = apply(&x[NEXT], &chunks[NEXT]);
  T_ASSERT((jobs[NEXT]->head.flags & MP__JOB_BATCH) && jobs[NEXT] != jobs[1] &&
               chunks[NEXT] == 0,
           "the apply after a full batch was not the first of a new batch");
  run_one(0, jobs[NEXT], 0);
  T_INT_EQ(take_int(jobs[NEXT], 0), 2000 + NEXT);
  /* An apply the open batch cannot take (another result size), with nothing in flight, is
   * alone: no whole batch for one. */
  mp__apply_spec_t other = {0, false, &x[0], sizeof x[0], 2 * sizeof x[0]};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &other.fn));
  mp__jobrec_t *alone;
  uint32_t alone_chunk;
  MP_ASSERT_OK(mp__jobs_apply(table, &other, &alone, &alone_chunk));
  T_ASSERT(!(alone->head.flags & MP__JOB_BATCH),
           "an apply the open batch could not take was batched");
  run_one(1, alone, 0);
  mp__jobs_release(table, alone);
  /* Other work closes the batch; the next apply, with nothing in flight, is alone. */
  int item = 7;
  mp__job_spec_t map = {jobs[0]->head.fn, 0, &item, 1, sizeof item, sizeof item, 1, 0, 0, NULL};
  mp__jobrec_t *mapped;
  MP_ASSERT_OK(mp__jobs_submit(table, &map, &mapped));
  run_one(1, mapped, 0);
  jobs[NEXT + 1] = apply(&x[NEXT + 1], &chunks[NEXT + 1]);
  T_ASSERT(!(jobs[NEXT + 1]->head.flags & MP__JOB_BATCH), "the apply after a map was batched");
  run_one(0, jobs[NEXT + 1], 0);
  mp__jobs_release(table, mapped);
  for (int k = 0; k < NEXT + 2; k++)
    mp__jobs_release(table, jobs[k]);
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* ------------------------- an abort racing a feed ------------------------- */

/* The race the hook plays (mp__pool_race_hook), in one thread: a feed has stored its chunk
 * QUEUED and not yet swapped the limit; worker 0 then pins the job being fed, and the pool
 * is terminated (the abort counts the chunk as never fed) before the worker claims in it. */
static struct {
  int stage; /* 1: armed; 2: the feed's chunk is QUEUED; 3: aborted */
  mp__job_t *fed;
  bool claimed;
  mp__task_t task;
} race;

static void race_hook(int point, mp__job_t *job) {
  if (point == MP__RACE_QUEUED && race.stage == 1) {
    race.stage = 2;
    race.fed = job;
    race.claimed = mp__pool_claim(mp__jobs_shared(table), 0, &race.task);
  } else if (point == MP__RACE_PINNED && race.stage == 2 && job == race.fed) {
    race.stage = 3;
    mp__jobs_abort_all(table, MP_ETERMINATED);
  }
}

static void unhook(void) {
  mp__pool_race_hook = NULL;
  free_table();
}

static void arm_race(void) {
  memset(&race, 0, sizeof race);
  race.stage = 1;
  mp__pool_race_hook = race_hook;
  mp_test_set_hook(unhook);
}

/* The race played out; job counted each of its chunks once, and no worker claimed the chunk
 * the abort counted (before the fix it did, and its completion was counted again). */
static void check_race(mp__jobrec_t *job) {
  mp__pool_race_hook = NULL;
  T_INT_EQ(race.stage, 3);
  if (race.claimed) { /* run and completed as a worker would */
    race.task.call = (mp__fn_t)identity;
    MP_ASSERT_OK(mp__run_task(&race.task, NULL));
    complete(0, &race.task);
  }
  T_ASSERT(mp__job_counted(job) == job->head.n_chunks, "%llu chunks counted of %u",
           (unsigned long long)mp__job_counted(job), job->head.n_chunks);
  T_ASSERT(!race.claimed, "worker 1 claimed chunk %u, which the abort counted as never fed",
           race.task.chunk);
  T_INT_EQ(mp__job_aborted(job), MP_ETERMINATED);
}

/* An open job's chunk counts, with the block's fed_items written wild (as a worker could):
 * a worker's count goes wrong, by a chunksize at most; the parent's views and the job's
 * completion go by the record. */
static int six_left;

static uint64_t six_ints(void *arg, void *slot, uint64_t max, const mp__jobrec_t *job) {
  (void)arg;
  (void)job;
  uint64_t k = 0;
  for (; k < max && six_left > 0; k++, six_left--)
    ((int *)slot)[k] = 100 + six_left;
  return k;
}

START_TEST(test_open_job_wild_fed_items) {
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  mp_test_set_hook(free_table);
  mp__job_spec_t spec = {
      0, MP__JOB_ITERATOR | MP__JOB_OPEN, NULL, 12, sizeof(int), sizeof(int), 4, 2, 0, NULL};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__jobrec_t *job;
  MP_ASSERT_OK(mp__jobs_submit(table, &spec, &job));
  six_left = 6;
  mp__feed_t feed = {NULL, six_ints, NULL};
  while (mp__jobs_feed(table, job, &feed))
    ;
  T_INT_EQ(mp__job_chunks(job), 2);
  T_INT_EQ(mp__job_counted(job), 1); /* the chunk never fed */
  mp__jobs_worker_starting(table, 0);
  mp__task_t a, b;
  atomic_store(&job->blk->fed_items, 0);
  T_ASSERT(mp__pool_claim(mp__jobs_shared(table), 0, &a), "nothing claimed");
  atomic_store(&job->blk->fed_items, UINT64_MAX);
  T_ASSERT(mp__pool_claim(mp__jobs_shared(table), 0, &b), "nothing claimed");
  T_ASSERT(a.count <= 4 && b.count <= 4, "counts %llu %llu", (unsigned long long)a.count,
           (unsigned long long)b.count);
  a.call = b.call = (mp__fn_t)identity;
  MP_ASSERT_OK(mp__run_task(&a, NULL));
  MP_ASSERT_OK(mp__run_task(&b, NULL));
  complete(0, &a);
  complete(0, &b);
  T_ASSERT(mp__job_complete(job), "not complete");
  mp__chunk_view_t v;
  mp__job_view_chunk(job, 0, &v);
  T_INT_EQ(v.items, 4);
  mp__job_view_chunk(job, 1, &v);
  T_INT_EQ(v.items, 2);
  mp__jobs_release(table, job);
  mp_test_set_hook(NULL);
  free_table();
}
END_TEST

/* An iterator's feed loses its limit's swap to an abort. */
START_TEST(test_abort_racing_a_feed) {
  int in[4] = {1, 2, 3, 4};
  MP_ASSERT_OK(mp__jobs_create(&table, 2, 0, 0));
  arm_race();
  mp__job_spec_t spec = {0, MP__JOB_ITERATOR, in, 4, sizeof(int), sizeof(int), 1, 2, 0, NULL};
  MP_ASSERT_OK(mp__jobs_function(table, (mp__fn_t)identity, &spec.fn));
  mp__jobrec_t *job;
  MP_ASSERT_OK(mp__jobs_submit(table, &spec, &job));
  T_ASSERT(!mp__jobs_feed(table, job, &(mp__feed_t){in, NULL, NULL}),
           "a chunk was fed after the abort");
  check_race(job);
  T_ASSERT(mp__job_complete(job), "the aborted iterator is not complete");
  T_ASSERT(!mp__jobs_work_left(table), "work is left");
  mp__jobs_release(table, job);
  mp_test_set_hook(NULL);
  unhook();
}
END_TEST

/* The second apply of a batch loses its limit's swap to an abort. */
START_TEST(test_abort_racing_an_apply) {
  int x[3] = {1, 2, 3};
  mp__jobrec_t *jobs[2];
  uint32_t chunks[2];
  batch_after_a_lone_apply(x, jobs, chunks);
  arm_race();
  mp__apply_spec_t spec = {jobs[1]->head.fn, false, &x[2], sizeof x[2], sizeof x[2]};
  mp__jobrec_t *job;
  uint32_t chunk;
  MP_ASSERT_ERR(mp__jobs_apply(table, &spec, &job, &chunk), MP_ETERMINATED);
  T_ASSERT(race.fed == jobs[1]->blk, "the race was not played on the batch");
  check_race(jobs[1]);
  T_INT_EQ(mp__job_chunk_aborted(jobs[1], 0), MP_ETERMINATED);
  T_ASSERT(!mp__jobs_work_left(table), "work is left");
  mp__jobs_release(table, jobs[0]);
  mp__jobs_release(table, jobs[1]);
  mp_test_set_hook(NULL);
  unhook();
}
END_TEST

/* ------------------ a loss while another process holds the error lock ------------------ */

/* A pool of this library (linked statically, so that the test reaches its shared block),
 * destroyed by the cleanup hook if an assertion fails. */
static mp_pool_t *lock_pool;

static void destroy_lock_pool(void) {
  mp_pool_destroy(lock_pool);
  lock_pool = NULL;
}

/* Takes the pool's error lock, as a worker recording a failure does, and stops there. */
static int hold_and_stop(void *arg, size_t size) {
  pthread_mutex_t *lock;
  if (size != sizeof lock)
    return 90;
  memcpy(&lock, arg, sizeof lock);
  if (pthread_mutex_lock(lock) != 0)
    return 91;
  raise(SIGSTOP);
  return 0;
}

static int die_at_7(const void *arg, size_t size, void *result, size_t *result_size) {
  if (*(const int *)arg == 7)
    raise(SIGKILL);
  return identity(arg, size, result, result_size);
}

static int fail_at_3(const void *arg, size_t size, void *result, size_t *result_size) {
  if (*(const int *)arg == 3)
    return mp_task_fail("three fails");
  return identity(arg, size, result, result_size);
}

/* The supervisor records a worker's loss with no wait on a lock a worker can hold: while a
 * process of the pool's kind holds the error lock, stopped, a worker killed in a map fails
 * the map with MP_EWORKERDIED at once, and one killed in an imap fails that item (before,
 * the supervisor waited on the lock for ever: no result, no replacement); a task's failure
 * fails its map after the workers' bounded wait for the lock. */
START_TEST(test_loss_while_the_error_lock_is_held) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = 2;
  o.context = mp_test_ctx(_i);
  MP_ASSERT_OK(mp_pool_create(&lock_pool, &o));
  mp_test_set_hook(destroy_lock_pool);
  pthread_mutex_t *lock = &mp__jobs_shared(lock_pool->jobs)->err_lock;
  mp_process_t *holder = mp_test_start(_i, hold_and_stop, &lock, sizeof lock);
  double until = mp_test_now() + 30;
  int rc;
  while ((rc = pthread_mutex_trylock(lock)) == 0 && mp_test_now() < until) {
    pthread_mutex_unlock(lock); /* not taken yet */
    mp_test_sleep(0.005);
  }
  T_INT_EQ(rc, EBUSY);
  int in[10], out[10];
  for (int k = 0; k < 10; k++)
    in[k] = k;
  mp_async_result_t *ar;
  MP_ASSERT_OK(
      mp_pool_map_async(lock_pool, die_at_7, in, 10, sizeof(int), sizeof(int), 1, NULL, &ar));
  /* Freed after the checks: its release takes the table's lock, which a supervisor waiting
   * on the error lock holds. */
  MP_ASSERT_ERR(mp_async_result_get(ar, out, sizeof out, NULL, 10), MP_EWORKERDIED);
  T_ASSERT(strstr(mp_last_error(), "item 7: worker"), "message: %s", mp_last_error());
  mp_async_result_free(ar);
  T_INT_EQ(out[9], 9);
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap(lock_pool, die_at_7, in, 10, sizeof(int), sizeof(int), 1, &it));
  for (int k = 0; k < 10; k++) {
    int r = -1;
    size_t index;
    rc = mp_imap_next(it, &r, &index, 10);
    if (k == 7)
      MP_ASSERT_ERR(rc, MP_EWORKERDIED);
    else
      MP_ASSERT_OK(rc);
    T_INT_EQ(index, (size_t)k);
  }
  mp_imap_free(it);
  /* A worker's own failure waits a bounded time for the lock, then is written without it
   * (before, the worker waited for ever, and the map with it). */
  MP_ASSERT_ERR(mp_pool_map(lock_pool, fail_at_3, in, 10, sizeof(int), out, sizeof(int), 1),
                MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "three fails"), "message: %s", mp_last_error());
  T_ASSERT(pthread_mutex_trylock(lock) == EBUSY, "the holder let go of the lock");
  MP_ASSERT_OK(mp_process_kill(holder));
  MP_ASSERT_OK(mp_process_join(holder, 10));
  T_PROC_CLOSE(holder);
  mp_test_set_hook(NULL);
  destroy_lock_pool();
}
END_TEST

/* A lazy iterator's input goes on in a next job once a job's chunks run out (2^31 - 1,
 * lowered here to 3): every item once, each failure named by its index in the input, the
 * source's error after the last item. */
typedef struct {
  int next, limit;
  int end;          /* what the source returns at limit: MP_EEOF if 0 */
  int calls_at_end; /* its calls at limit */
} ints_t;

/* The ints from next up to limit, then end. */
static int ints_source(void *user_data, void *buf, size_t cap, size_t *len) {
  ints_t *src = user_data;
  if (src->next >= src->limit) {
    src->calls_at_end++;
    return src->end ? src->end : MP_EEOF;
  }
  if (cap < sizeof(int))
    return MP_EINVAL;
  memcpy(buf, &src->next, sizeof(int));
  src->next++;
  *len = sizeof(int);
  return 0;
}

static int square_but_8(const void *arg, size_t size, void *result, size_t *result_size) {
  int x;
  if (size != sizeof x)
    return mp_task_fail("an item of %zu bytes", size);
  memcpy(&x, arg, sizeof x);
  if (x == 8)
    return mp_task_fail("eight fails");
  x *= x;
  memcpy(result, &x, sizeof x);
  *result_size = sizeof x;
  return 0;
}

static void end_lazy_pool(void) {
  mp__pool_set_lazy_job_chunks(0);
  destroy_lock_pool();
}

static const char *const LAZY_CONTEXTS[] = {"fork", "spawn", "forkserver", "thread"};

/* lock_pool: processes workers under LAZY_CONTEXTS[i], with retries, whose lazy jobs take
 * job_chunks chunks each (0: the default); ended by the hook if a check fails. */
static void open_lazy_pool(int i, int processes, unsigned retries, uint32_t job_chunks) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = processes;
  o.retries = retries;
  MP_ASSERT_OK(mp_get_context(LAZY_CONTEXTS[i], &o.context));
  MP_ASSERT_OK(mp_pool_create(&lock_pool, &o));
  mp_test_set_hook(end_lazy_pool);
  mp__pool_set_lazy_job_chunks(job_chunks);
}

START_TEST(test_lazy_input_over_jobs) {
  open_lazy_pool(_i, 2, 0, 3); /* 6 items a job, in chunks of 2 */
  for (int ordered = 1; ordered >= 0; ordered--) {
    ints_t src = {0, 21, MP_ECLOSED, 0};
    mp_imap_t *it;
    MP_ASSERT_OK(ordered ? mp_pool_imap_lazy(lock_pool, square_but_8, ints_source, &src,
                                             sizeof(int), sizeof(int), 2, &it)
                         : mp_pool_imap_lazy_unordered(lock_pool, square_but_8, ints_source,
                                                       &src, sizeof(int), sizeof(int), 2, &it));
    bool seen[21] = {false};
    for (int k = 0; k < 20; k++) { /* 9 never runs: its chunk failed at 8 */
      int r = -1;
      size_t len = 0, index = SIZE_MAX;
      int rc = mp_imap_next_item(it, &r, sizeof r, &len, &index, 10);
      T_ASSERT(index < 21 && !seen[index], "index %zu (call %d)", index, k);
      seen[index] = true;
      if (ordered)
        T_INT_EQ(index, k < 9 ? (size_t)k : (size_t)k + 1);
      if (index == 8) {
        MP_ASSERT_ERR(rc, MP_ETASK);
        T_ASSERT(strstr(mp_last_error(), "item 8: eight fails"), "message: %s",
                 mp_last_error());
        continue;
      }
      MP_ASSERT_OK(rc);
      T_INT_EQ(len, sizeof(int));
      T_INT_EQ(r, (int)(index * index));
    }
    T_ASSERT(!seen[9], "item 9 ran after its chunk failed at 8");
    int r;
    size_t len, index = 0;
    MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_ECLOSED);
    T_INT_EQ(index, 21);
    MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EEOF);
    mp_imap_free(it);
  }
  mp_test_set_hook(NULL);
  end_lazy_pool();
}
END_TEST

/* A task's failure, delivered as its chunk's last item, keeps its message when the refill
 * made right then makes the source fail: lazy_fill's own error came after the failure's
 * (review, stop 22). */
START_TEST(test_lazy_failure_message_survives_refill) {
  open_lazy_pool(_i, 1, 0, 0);         /* a window of 4 chunks: taking chunk 8 feeds chunk 12 */
  ints_t src = {0, 12, MP_ECLOSED, 0}; /* the 13th call fails */
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap_lazy(lock_pool, square_but_8, ints_source, &src, sizeof(int),
                                 sizeof(int), 1, &it));
  for (int k = 0; k < 12; k++) {
    int r = -1;
    size_t len = 0, index = SIZE_MAX;
    int rc = mp_imap_next_item(it, &r, sizeof r, &len, &index, 10);
    T_INT_EQ(index, (size_t)k);
    if (k == 8) {
      MP_ASSERT_ERR(rc, MP_ETASK);
      T_ASSERT(strstr(mp_last_error(), "item 8: eight fails"), "item 8's message: %s",
               mp_last_error());
      continue;
    }
    MP_ASSERT_OK(rc);
  }
  int r;
  size_t len, index = 0;
  MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_ECLOSED);
  T_INT_EQ(index, 12);
  mp_imap_free(it);
  mp_test_set_hook(NULL);
  end_lazy_pool();
}
END_TEST

/* A lazy input goes on after mp_pool_close within its job; a next job (past 2^31 - 1 chunks,
 * lowered here to 3) is refused, MP_ECLOSED at the item where it would start, and the
 * workers then leave (api.md). */
START_TEST(test_lazy_input_kept_after_close) {
  open_lazy_pool(_i, 2, 0, 3); /* 6 items a job, in chunks of 2 */
  ints_t src = {0, 20, 0, 0};
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap_lazy(lock_pool, square_but_8, ints_source, &src, sizeof(int),
                                 sizeof(int), 2, &it));
  MP_ASSERT_OK(mp_pool_close(lock_pool));
  for (int k = 0; k < 6; k++) {
    int r = -1;
    size_t len = 0, index = SIZE_MAX;
    int rc = mp_imap_next_item(it, &r, sizeof r, &len, &index, 10);
    T_ASSERT(rc == 0, "item %d: %s (%s)", k, mp_err_name(rc), mp_last_error());
    T_INT_EQ(index, (size_t)k);
    T_INT_EQ(r, k * k);
  }
  int r;
  size_t len, index = 0;
  MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_ECLOSED);
  T_INT_EQ(index, 6);
  T_INT_EQ(src.next, 6); /* not called for the next job */
  MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EEOF);
  mp_imap_free(it);
  MP_ASSERT_OK(mp_pool_join(lock_pool, 10));
  mp_test_set_hook(NULL);
  end_lazy_pool();
}
END_TEST

/* No call of a lazy source after an abort: the pool is terminated (from another thread, as
 * a supervisor's abort comes) while the source fills a chunk of 10, and the fill stops there
 * (review, stop 22). */
typedef struct {
  int next, calls_after;
  bool terminated;
} term_src_t;

static void *terminate_thread(void *arg) {
  (void)arg;
  mp_pool_terminate(lock_pool);
  return NULL;
}

static int terminating_source(void *user_data, void *buf, size_t cap, size_t *len) {
  term_src_t *src = user_data;
  if (src->terminated)
    src->calls_after++;
  if (src->next == 25 && !src->terminated) { /* mid-chunk (the third, items 20-29) */
    pthread_t th;
    pthread_create(&th, NULL, terminate_thread, NULL);
    pthread_join(th, NULL);
    src->terminated = true;
  }
  (void)cap;
  memcpy(buf, &src->next, sizeof(int));
  src->next++;
  *len = sizeof(int);
  return 0;
}

START_TEST(test_lazy_source_not_called_after_abort) {
  open_lazy_pool(_i, 1, 0, 0); /* a window of 4 chunks */
  term_src_t src = {0, 0, false};
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap_lazy(lock_pool, square_but_8, terminating_source, &src, sizeof(int),
                                 sizeof(int), 10, &it));
  T_ASSERT(src.terminated, "the source did not reach item 25 (%d)", src.next);
  T_INT_EQ(src.calls_after, 0);
  mp_imap_free(it);
  mp_test_set_hook(NULL);
  end_lazy_pool();
}
END_TEST

/* A lazy source that ends at once, at a chunk's end, in a chunk's middle, or fails there,
 * in one job or over several, ordered or not, on an open or a closed pool: every item, the
 * end once, and the source not called after it. */
START_TEST(test_lazy_sweep) {
  const int ns[] = {0, 6, 12, 7, 5, 1, 13};
  for (int knob = 0; knob < 2; knob++)
    for (int close = 0; close < 2; close++)
      for (int ordered = 0; ordered < 2; ordered++)
        for (unsigned c = 0; c < sizeof ns / sizeof *ns; c++)
          for (int fail = 0; fail < 2; fail++) {
            open_lazy_pool(_i, 2, 0, knob ? 3 : 0);
            ints_t src = {0, ns[c], fail ? MP_ECLOSED : 0, 0};
            mp_imap_t *it;
            MP_ASSERT_OK(ordered ? mp_pool_imap_lazy(lock_pool, square_but_8, ints_source, &src,
                                                     sizeof(int), sizeof(int), 2, &it)
                                 : mp_pool_imap_lazy_unordered(lock_pool, square_but_8,
                                                               ints_source, &src, sizeof(int),
                                                               sizeof(int), 2, &it));
            if (close && !knob)
              MP_ASSERT_OK(mp_pool_close(lock_pool));
            int got = 0, r, rc;
            size_t len, index;
            while ((rc = mp_imap_next_item(it, &r, sizeof r, &len, &index, 10)) == 0 ||
                   rc == MP_ETASK)
              got++;
            int expect = ns[c] > 9 ? ns[c] - 1 : ns[c]; /* 9 never runs */
            T_ASSERT(got == expect, "n %d fail %d ordered %d knob %d close %d: %d results",
                     ns[c], fail, ordered, knob, close, got);
            MP_ASSERT_ERR(rc, fail ? MP_ECLOSED : MP_EEOF);
            if (fail)
              MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EEOF);
            T_INT_EQ(src.next, ns[c]);
            mp_imap_free(it);
            T_INT_EQ(src.calls_at_end, 1);
            if (close) {
              MP_ASSERT_OK(mp_pool_close(lock_pool));
              MP_ASSERT_OK(mp_pool_join(lock_pool, 10));
            }
            mp_test_set_hook(NULL);
            end_lazy_pool();
          }
}
END_TEST

/* A worker dies in the last, short chunk of a lazy input, in a next job: the item is failed
 * and named by its index in the input (no retries), or run again (one retry); the iterator
 * ends either way. The marker file tells a spawned worker too that one died. */
static const char die_marker[] = "/tmp/libmp-test-lazy-die-marker";

static int die_at_20(const void *arg, size_t size, void *result, size_t *result_size) {
  int x;
  memcpy(&x, arg, sizeof x);
  (void)size;
  if (x == 20) {
    FILE *f = fopen(die_marker, "r");
    if (!f) {
      f = fopen(die_marker, "w");
      if (f)
        fclose(f);
      _exit(3);
    }
    fclose(f);
  }
  x *= x;
  memcpy(result, &x, sizeof x);
  *result_size = sizeof x;
  return 0;
}

START_TEST(test_lazy_death_in_short_chunk) {
  for (unsigned retries = 0; retries < 2; retries++) {
    unlink(die_marker);
    open_lazy_pool(_i, 2, retries, 3);
    ints_t src = {0, 21, 0, 0};
    mp_imap_t *it;
    MP_ASSERT_OK(mp_pool_imap_lazy(lock_pool, die_at_20, ints_source, &src, sizeof(int),
                                   sizeof(int), 2, &it));
    for (int k = 0; k < 21; k++) {
      int r = -1;
      size_t len = 0, index = SIZE_MAX;
      int rc = mp_imap_next_item(it, &r, sizeof r, &len, &index, 10);
      T_INT_EQ(index, (size_t)k);
      if (k == 20 && !retries) {
        MP_ASSERT_ERR(rc, MP_EWORKERDIED);
        T_ASSERT(strstr(mp_last_error(), "item 20: worker"), "message %s", mp_last_error());
        continue;
      }
      MP_ASSERT_OK(rc);
      T_INT_EQ(r, k * k);
    }
    int r;
    size_t len, index;
    MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EEOF);
    mp_imap_free(it);
    MP_ASSERT_OK(mp_pool_close(lock_pool));
    MP_ASSERT_OK(mp_pool_join(lock_pool, 10));
    mp_test_set_hook(NULL);
    end_lazy_pool();
  }
  unlink(die_marker);
}
END_TEST

/* Chunksizes whose chunk is past any memory: an error, *it NULL and the source not called;
 * or, where the chunk fits, the items. */
START_TEST(test_lazy_huge_chunksize) {
  open_lazy_pool(0, 2, 0, 0);
  const size_t cs[] = {SIZE_MAX,        SIZE_MAX / 16,   SIZE_MAX / 17,   SIZE_MAX / 64,
                       (size_t)1 << 40, (size_t)1 << 31, (size_t)1 << 33, 1000};
  for (unsigned k = 0; k < sizeof cs / sizeof *cs; k++) {
    ints_t src = {0, 100, 0, 0};
    mp_imap_t *it = (mp_imap_t *)1;
    int rc = mp_pool_imap_lazy(lock_pool, square_but_8, ints_source, &src, sizeof(int),
                               sizeof(int), cs[k], &it);
    if (rc == 0) { /* one chunk of the 100 items: items 0 to 7, then its failure at 8 */
      int r;
      size_t len, index;
      for (int j = 0; j < 8; j++) {
        MP_ASSERT_OK(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10));
        T_INT_EQ(r, j * j);
      }
      MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_ETASK);
      T_INT_EQ(index, 8);
      MP_ASSERT_ERR(mp_imap_next_item(it, &r, sizeof r, &len, &index, 10), MP_EEOF);
      mp_imap_free(it);
    } else {
      T_ASSERT(cs[k] != 1000, "a chunk of 1000 items fits: %s", mp_err_name(rc));
      T_ASSERT(rc == MP_EINVAL || rc == MP_ENOMEM, "chunksize %zu: %s", cs[k], mp_err_name(rc));
      T_ASSERT(it == NULL, "it not NULL");
      T_INT_EQ(src.next, 0);
    }
  }
  mp_test_set_hook(NULL);
  end_lazy_pool();
}
END_TEST

/* ------------------- the pool's shared words, written wild ------------------- */

/* A task that writes its pool's shared block, as a wild write may: next_seq (arg: the
 * block's address), far past every job published. */
static int forge_next_seq(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  mp__pool_shared_t *sh;
  memcpy(&sh, arg, sizeof sh);
  atomic_store(&sh->next_seq, (uint64_t)1 << 62);
  *(int *)result = 1;
  return 0;
}

/* A map of 4 items on lock_pool is done within 10 s; then the pool is destroyed. */
static void map_runs_then_destroy(void) {
  int in[4] = {1, 2, 3, 4}, out[4] = {0};
  mp_async_result_t *ar;
  MP_ASSERT_OK(
      mp_pool_map_async(lock_pool, identity, in, 4, sizeof(int), sizeof(int), 1, NULL, &ar));
  int rc = mp_async_result_get(ar, out, sizeof out, NULL, 10);
  mp_async_result_free(ar);
  MP_ASSERT_OK(rc);
  T_INT_EQ(out[3], 4);
  mp_test_set_hook(NULL);
  destroy_lock_pool();
}

static mp_pool_t *one_worker_pool(int i) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = 1;
  o.context = mp_test_ctx(i);
  MP_ASSERT_OK(mp_pool_create(&lock_pool, &o));
  mp_test_set_hook(destroy_lock_pool);
  return lock_pool;
}

/* A map after a task that wrote next_seq wild (review, stop 22). The worker, done with
 * that task's job, looks for work from oldest to the wild next_seq: 2^62 sequence numbers,
 * one pin and one look at a slot each, a loop that never ends, so the next map, whose
 * publication sets next_seq right again, is never claimed. A wild next_seq may cost a job,
 * not the pool: its scan is bounded by the slots (no more than MP__POOL_SLOTS jobs are in
 * flight). */
START_TEST(test_forged_next_seq) {
  mp_pool_t *pool = one_worker_pool(_i);
  mp__pool_shared_t *sh = mp__jobs_shared(pool->jobs);
  int r = 0;
  MP_ASSERT_OK(mp_pool_map(pool, forge_next_seq, &sh, 1, sizeof sh, &r, sizeof r, 1));
  T_INT_EQ(r, 1);
  mp_test_sleep(0.05);
  map_runs_then_destroy();
}
END_TEST

/* oldest written far past every job (as a worker may: the parent writes it here, the same
 * word): no claim looks at any job below it, and a claim only ever moves it up, so no job
 * of the pool ever runs again (review, stop 22). */
START_TEST(test_forged_oldest) {
  mp_pool_t *pool = one_worker_pool(_i);
  mp__pool_shared_t *sh = mp__jobs_shared(pool->jobs);
  int in[4] = {1, 2, 3, 4}, out[4] = {0};
  MP_ASSERT_OK(mp_pool_map(pool, identity, in, 4, sizeof(int), out, sizeof(int), 1));
  atomic_store(&sh->oldest, UINT64_MAX - 1);
  map_runs_then_destroy();
}
END_TEST

/* The shared block a forging task's argument names, once (10 s at most) its pool is closed. */
static mp__pool_shared_t *closed_pool_block(const void *arg) {
  mp__pool_shared_t *sh;
  memcpy(&sh, arg, sizeof sh);
  for (double end = mp_test_now() + 10;
       !(atomic_load(&sh->flags) & MP__POOL_CLOSED) && mp_test_now() < end;)
    mp_test_sleep(0.001);
  return sh;
}

/* A task that, once its pool is closed, clears the closed bit of the shared flags (arg: the
 * block's address), as a wild write may. */
static int forge_reopen(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  mp__pool_shared_t *sh = closed_pool_block(arg);
  mp_test_sleep(0.05);
  atomic_fetch_and(&sh->flags, ~(uint32_t)MP__POOL_CLOSED);
  *(int *)result = 1;
  return 0;
}

/* A closed pool's join, while a task clears the closed bit in the shared block (review,
 * stop 22): the pool's process decides by that word (join, the supervisor's look for all
 * ended, the replacements), and so do the workers, which then never end: the join waited for
 * ever, as test_forged_limit_closed's did. Python's join returns once the work is done. */
/* A pool of 2 workers under method i closed and joined while a task runs forge (its
 * argument: the shared block's address): the join returns. */
static void join_while_forged(int i, mp_task_fn_t forge) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = 2;
  o.context = mp_test_ctx(i);
  MP_ASSERT_OK(mp_pool_create(&lock_pool, &o));
  mp_test_set_hook(destroy_lock_pool);
  mp__pool_shared_t *sh = mp__jobs_shared(lock_pool->jobs);
  mp_async_result_t *ar;
  MP_ASSERT_OK(
      mp_pool_map_async(lock_pool, forge, &sh, 1, sizeof sh, sizeof(int), 1, NULL, &ar));
  mp_test_sleep(0.05);
  MP_ASSERT_OK(mp_pool_close(lock_pool));
  int rc = mp_pool_join(lock_pool, 10);
  int r = 0;
  MP_ASSERT_OK(mp_async_result_get(ar, &r, sizeof r, NULL, 10));
  mp_async_result_free(ar);
  T_INT_EQ(r, 1);
  MP_ASSERT_OK(rc);
  mp_test_set_hook(NULL);
  destroy_lock_pool();
}

START_TEST(test_forged_flags_reopen) {
  join_while_forged(_i, forge_reopen);
}
END_TEST

/* mp_pool_map_shared's description blocks (pool_shared.c's call_t), as they were laid out
 * before stop 22: a call's block is in the arena, and between calls its next_free linked the
 * parent's free list of them, a word any worker can write (the word now lies past call_t's
 * fields, in its block's slack, and links nothing). */
typedef struct {
  uint32_t kind;
  char *base;
  uint64_t offset, item_size, end, dev, ino;
  char name[MP_SHARED_MEMORY_NAME_MAX + 1];
} span_mirror_t;
typedef struct {
  _Atomic uint64_t id;
  int32_t owner;
  void *local_fn, *user;
  uint64_t n, chunksize;
  span_mirror_t in, out;
  void *next_free;
} call_mirror_t;

#define CALL_MAGIC ((void *)(uintptr_t)0x6d702d63616c6c21ull)

static int shared_nap(const void *in, void *out, size_t first, size_t count, void *user) {
  (void)in, (void)out, (void)first, (void)count;
  if (user == CALL_MAGIC)
    return 0;
  mp_test_sleep(0.5);
  return 0;
}

static void *map_shared_slowly(void *arg) {
  mp_pool_t *pool = arg;
  intptr_t rc = mp_pool_map_shared(pool, shared_nap, NULL, NULL, 1, 1, NULL);
  return (void *)rc;
}

/* The call block a finished mp_pool_map_shared gave back, found in the arena near the
 * pool's shared block by the words it was given (user, n, chunksize). */
static call_mirror_t *find_call(const void *near) {
  const uint64_t *at = (const uint64_t *)((uintptr_t)near & ~(uintptr_t)7);
  for (size_t d = 0; d < ((size_t)64 << 20) / 8; d++)
    for (int side = -1; side <= 1; side += 2) {
      const uint64_t *p = at + side * (ptrdiff_t)d;
      if (mp__shared_contains(p) && mp__shared_contains(p + 2) &&
          p[0] == (uint64_t)(uintptr_t)CALL_MAGIC && p[1] == 777 && p[2] == 7)
        return (call_mirror_t *)((char *)p - offsetof(call_mirror_t, user));
    }
  return NULL;
}

/* A worker writes the free list's link of a given-back call block (here the test writes it,
 * the same word): the next two calls at once take that block and then whatever the link
 * names, and the parent writes a whole description block there (review, stop 22): here a
 * buffer of the caller's, which a wild link makes any address of the parent's. */
START_TEST(test_forged_call_free_list) {
  static char decoy[4096];
  memset(decoy, 0, sizeof decoy);
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = 2;
  o.context = mp_test_ctx(_i);
  MP_ASSERT_OK(mp_pool_create(&lock_pool, &o));
  mp_test_set_hook(destroy_lock_pool);
  MP_ASSERT_OK(mp_pool_map_shared(lock_pool, shared_nap, NULL, NULL, 777, 7, CALL_MAGIC));
  call_mirror_t *c = find_call(mp__jobs_shared(lock_pool->jobs));
  T_ASSERT(c != NULL, "the call block was not found");
  c->next_free = decoy;
  pthread_t th;
  T_INT_EQ(pthread_create(&th, NULL, map_shared_slowly, lock_pool), 0);
  mp_test_sleep(0.1); /* it took the block */
  int rc = mp_pool_map_shared(lock_pool, shared_nap, NULL, NULL, 1, 1, CALL_MAGIC);
  void *other;
  pthread_join(th, &other);
  size_t written = 0;
  for (size_t b = 0; b < sizeof decoy; b++)
    written += decoy[b] != 0;
  T_ASSERT(written == 0,
           "the parent wrote %zu bytes of its own memory at the address a "
           "worker left in the free list (the call: %s)",
           written, mp_err_name(rc));
  mp_test_set_hook(NULL);
  destroy_lock_pool();
}
END_TEST

/* An iterator's slot in the pool's shared block names its block by a pointer, which a worker
 * rewrites (here the test writes it, the same word) once the worker has run the chunks fed
 * (review, stop 22): each chunk fed after that is claimed by a scan of the slots, and the
 * worker that follows the wild pointer dies in its claim, running no chunk, so no loss fails
 * one; its replacement dies the same way, and the iterator waited for ever. */
START_TEST(test_forged_slot_pointer) {
  mp_pool_t *pool = one_worker_pool(_i);
  mp__pool_shared_t *sh = mp__jobs_shared(pool->jobs);
  int in[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  mp_imap_t *it;
  MP_ASSERT_OK(mp_pool_imap(pool, identity, in, 8, sizeof(int), sizeof(int), 1, &it));
  uint64_t seq = mp__jobrec_seq(it->job);
  for (double end = mp_test_now() + 10;
       !mp__job_chunk_finished(it->job, 3) && mp_test_now() < end;)
    mp_test_sleep(0.001);
  mp_test_sleep(0.05); /* the worker, out of chunks, is asleep */
  atomic_store(&sh->slots[seq % MP__POOL_SLOTS].job, (mp__job_t *)(uintptr_t)0x1000);
  int got = 0, rc = 0;
  for (int k = 0; k < 8 && rc == 0; k++) {
    int r = -1;
    rc = mp_imap_next(it, &r, NULL, 10);
    got += rc == 0 && r == k;
  }
  mp_imap_free(it);
  T_ASSERT(rc == 0 || rc == MP_ECORRUPT || rc == MP_EWORKERDIED, "after %d results: %s", got,
           mp_err_name(rc));
  mp_test_set_hook(NULL);
  destroy_lock_pool();
}
END_TEST

/* A task that, once its pool is closed, counts a submission in flight in the shared block
 * (arg: the block's address), as a wild write may. */
static int forge_submitting(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  atomic_fetch_add(&closed_pool_block(arg)->submitting, 1);
  *(int *)result = 1;
  return 0;
}

/* The same join while a task leaves `submitting` counted (review, stop 22): the workers and
 * the supervisor take it for a submission still to come, and the join waits for ever. */
START_TEST(test_forged_submitting) {
  join_while_forged(_i, forge_submitting);
}
END_TEST

/* A task that, once its pool is closed, writes next_seq far past every job published (arg:
 * the block's address), as a wild write may. */
static int forge_next_seq_at_close(const void *arg, size_t size, void *result,
                                   size_t *result_size) {
  (void)size;
  (void)result_size;
  atomic_store(&closed_pool_block(arg)->next_seq, (uint64_t)1 << 62);
  *(int *)result = 1;
  return 0;
}

/* The same join while a task leaves next_seq wild (the final read of stop 22): the workers
 * and the supervisor took the jobs up to it for work still to do, and the join waited for
 * ever. */
START_TEST(test_forged_next_seq_at_close) {
  join_while_forged(_i, forge_next_seq_at_close);
}
END_TEST

/* A task that writes the size class in the arena header of its pool's first function
 * reference (arg: the shared block's address) to a 4 MiB block's (heap.c's header: a
 * 64-byte space before the payload, the class its second word), as a wild write may. */
static int forge_fnref_class(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  mp__pool_shared_t *sh;
  memcpy(&sh, arg, sizeof sh);
  uint32_t cls = 22;
  memcpy((char *)sh->fns[0] - 64 + sizeof(uint32_t), &cls, sizeof cls);
  *(int *)result = 1;
  return 0;
}

/* The pool's destruction released its function references by their headers' classes: a
 * class written wild within the arena's reach put the 128-byte block on the 4 MiB list,
 * and the next 4 MiB object was allocated over it and the blocks after it (review of stop
 * 22's fixes: they were released by size for job blocks only). */
START_TEST(test_forged_fnref_class) {
  mp_array_t *room, *after;
  mp_pool_t *pool = one_worker_pool(_i);
  mp__pool_shared_t *sh = mp__jobs_shared(pool->jobs);
  int r = 0;
  MP_ASSERT_OK(mp_pool_map(pool, forge_fnref_class, &sh, 1, sizeof sh, &r, sizeof r, 1));
  T_INT_EQ(r, 1);
  void *ref = sh->fns[0];
  /* The arena grows past the reference's block by more than 4 MiB: a class of 4 MiB there
   * is within its reach. */
  MP_ASSERT_OK(mp_raw_array_create(&room, 'b', 16 << 20, NULL));
  mp_test_set_hook(NULL);
  destroy_lock_pool();
  MP_ASSERT_OK(mp_raw_array_create(&after, 'b', 3 << 20, NULL)); /* a 4 MiB block */
  T_ASSERT((void *)after != ref, "a 3 MiB Array was allocated over a function reference's "
                                 "128-byte block");
  MP_ASSERT_OK(mp_array_close(after));
  MP_ASSERT_OK(mp_array_close(room));
}
END_TEST

static void *map_in_thread(void *arg) {
  int in[4] = {1, 2, 3, 4}, out[4];
  intptr_t rc = mp_pool_map(arg, identity, in, 4, sizeof(int), out, sizeof(int), 1);
  return (void *)rc;
}

/* The state of the slot the next job is to take, written back to "in use by the job 256
 * before it" (a worker may write it; the test does here), long after that job completed
 * (review, stop 22): the next submission waits for that slot to free, with no deadline and
 * the submission lock held, and no worker ever frees it: every later submission of the
 * pool blocks until a terminate. The parent knows that job complete (no record of it is in a
 * slot): the slot is free. */
START_TEST(test_forged_slot_state) {
  mp_pool_t *pool = one_worker_pool(_i);
  mp__pool_shared_t *sh = mp__jobs_shared(pool->jobs);
  int in[4] = {1, 2, 3, 4}, out[4];
  MP_ASSERT_OK(mp_pool_map(pool, identity, in, 4, sizeof(int), out, sizeof(int), 1));
  uint64_t next = atomic_load(&sh->next_seq);
  atomic_store(&sh->slots[next % MP__POOL_SLOTS].state, (next - MP__POOL_SLOTS) << 1 | 1);
  pthread_t th;
  T_INT_EQ(pthread_create(&th, NULL, map_in_thread, pool), 0);
  bool done = joined_within(th, 10);
  if (!done) { /* a terminate ends the wait */
    mp_pool_terminate(pool);
    pthread_join(th, NULL);
  }
  T_ASSERT(done, "a map still waits for a slot after 10 s");
  mp_test_set_hook(NULL);
  destroy_lock_pool();
}
END_TEST

/* ------------------- a worker that ends between two of its writes ------------------- */

/* Worker w started and ready, as its set_state makes it: an end of it then is a death. */
static void start_serving(uint32_t w) {
  mp__jobs_worker_starting(table, w);
  atomic_store(&mp__jobs_shared(table)->workers[w].state, MP__WORKER_READY);
}

/* What the supervisor does once it sees worker w killed (worker_ended)... */
static void end_by_death(uint32_t w) {
  mp__jobs_worker_lost(table, w, "the worker was lost");
  mp__jobs_worker_gone(table, w);
  mp__jobs_reclaim(table);
}

/* ...and once it sees it killed by a terminate (mp__pool_do_terminate, then worker_ended,
 * which skips worker_lost). */
static void end_by_terminate(uint32_t w) {
  mp__jobs_set_flag(table, MP__POOL_TERMINATED);
  mp__jobs_abort_all(table, MP_ETERMINATED);
  mp__jobs_worker_gone(table, w);
  mp__jobs_reclaim(table);
}

/* Worker w's done counter in job. */
static _Atomic uint64_t *worker_counter(mp__job_t *job, uint32_t w) {
  return (_Atomic uint64_t *)((char *)job + job->head.done_off + (uint64_t)w * MP__DONE_STRIDE);
}

/* Worker w claims, runs and completes chunks, up to `most`: how many it claimed. */
static int run_claims(uint32_t w, int most) {
  mp__task_t a;
  int claims = 0;
  for (; claims < most && mp__pool_claim(mp__jobs_shared(table), w, &a); claims++) {
    a.call = (mp__fn_t)identity;
    MP_ASSERT_OK(mp__run_task(&a, NULL));
    complete(w, &a);
  }
  return claims;
}

/* job, a map of n (at most 64) identity items whose first is 1, is complete. */
static void check_complete(mp__jobrec_t *job, uint64_t n) {
  T_ASSERT(mp__job_complete(job), "%llu of %llu chunks counted",
           (unsigned long long)mp__job_counted(job), (unsigned long long)n);
  int out[64];
  MP_ASSERT_OK(mp__job_take(job, false, out, n * sizeof out[0], NULL));
  T_INT_EQ(out[0], 1);
}

/* Worker w runs up to `most` chunks of job (n items, as above), which must then be complete;
 * the table ends. The chunks it claimed. */
static int finish_as(uint32_t w, mp__jobrec_t *job, uint64_t n, int most) {
  int claims = run_claims(w, most);
  check_complete(job, n);
  end_table(job);
  return claims;
}

static int retry_scans;

static void count_retry_scans(int point, mp__job_t *job) {
  (void)job;
  retry_scans += point == MP__RACE_RETRY_SCAN;
}

/* Worker 0 claims and runs 64 chunks, scanning for retries twice at most: once finding the
 * one queued again, once finding none. */
static void scan_little_in_64_claims(void) {
  retry_scans = 0;
  mp__pool_race_hook = count_retry_scans;
  T_INT_EQ(run_claims(0, 65), 64);
  mp__pool_race_hook = NULL;
  T_ASSERT(retry_scans <= 2, "worker 0 scanned for retries %d times in its 64 claims",
           retry_scans);
}

/* 64 items from 1. */
static void count_from_one(int *in) {
  for (int i = 0; i < 64; i++)
    in[i] = i + 1;
}

/* Worker 1 claimed chunk 0 of a 64-chunk map queued again (its compare-and-swap, played
 * here: all the claim of a retry writes now) and was killed just after it. Before, that
 * claim then uncounted the job's pending retries, a worker killed in between left the count
 * too high for good, and every later claim of the job scanned its whole window: worker 0
 * scanned at each of its 64 claims. Now a worker scans only when the job's count of requeues
 * moved since its last scan of the job found none: once finding the retry, once finding
 * none. */
START_TEST(test_killed_after_claiming_a_retry) {
  int in[64];
  count_from_one(in);
  mp__jobrec_t *job = submit_map(2, in, 64, 1);
  mp__task_t a;
  start_serving(1);
  claim(1, &a);
  T_INT_EQ(a.chunk, 0);
  end_by_death(1); /* chunk 0 queued again, attempts 1 */
  start_serving(1);
  _Atomic uint64_t *state = mp__job_state(job->blk, 0);
  uint64_t queued = atomic_load(state);
  T_INT_EQ(MP__CHUNK_STATUS(queued), MP__CHUNK_QUEUED);
  T_ASSERT(atomic_compare_exchange_strong(
               state, &queued,
               MP__CHUNK_STATE(0, MP__CHUNK_ATTEMPTS(queued), 2, MP__CHUNK_RUNNING)),
           "the retry was taken");
  end_by_death(1); /* killed after its claim's swap: queued again, attempts 2 */
  start_serving(0);
  scan_little_in_64_claims();
  check_complete(job, 64);
  end_table(job);
}
END_TEST

/* Two jobs with a chunk queued again each, the older one incomplete (its retry running), so
 * that every claim looks at it before the newer: a worker's memory of its last scan is per
 * job (a single one for the worker, as first written, made each claim scan both jobs, as
 * the other's memory: the review's 2,000 scans for 1,000 claims). */
START_TEST(test_retries_in_two_jobs) {
  int in[64];
  count_from_one(in);
  mp__jobrec_t *older = submit_map(2, in, 2, 1), *newer = submit_more(in, 64, 1);
  mp__task_t held, a;
  start_serving(1);
  claim(1, &held);
  end_by_death(1); /* the older job's chunk 0 queued again */
  start_serving(1);
  claim(1, &held); /* that retry, held running */
  T_ASSERT(held.job == older->blk && held.chunk == 0, "worker 1 claimed chunk %u",
           held.chunk);
  start_serving(0);
  T_INT_EQ(run_claims(0, 1), 1); /* the older job's chunk 1 */
  claim(0, &a);
  T_ASSERT(a.job == newer->blk, "worker 0 did not claim the newer job");
  end_by_death(0); /* the newer job's chunk 0 queued again */
  start_serving(0);
  scan_little_in_64_claims();
  complete(1, &held);
  check_complete(newer, 64);
  check_complete(older, 2);
  mp__jobs_release(table, newer);
  end_table(older);
}
END_TEST

/* mp__pool_complete's writes for a DONE chunk, as worker w makes them, up to `upto`:
 * 1: the chunk's CAS to DONE (count marked, not stored); 2: the slot's CAS won in settle_as
 * (nothing after it: no advance_oldest, slot_free, wake_workers, unref, wake); 3: then, in
 * the wake-up, the waiters' count taken (not the bump of the word, nor the futex call). */
static void complete_upto(uint32_t w, mp__task_t *task, int upto) {
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  mp__job_t *job = task->job;
  uint64_t seq = mp__job_seq(job);
  _Atomic uint64_t *mine = worker_counter(job, w), *state = mp__job_state(job, task->chunk);
  atomic_store(&sh->workers[w].pin, seq + 1);
  uint64_t count = atomic_load(mine) >> 1;
  atomic_store(mine, count << 1 | 1);
  uint64_t v = atomic_load(state);
  T_ASSERT(atomic_compare_exchange_strong(
               state, &v,
               MP__CHUNK_STATE(task->chunk, MP__CHUNK_ATTEMPTS(v), w + 1, MP__CHUNK_DONE)),
           "the chunk was not ours");
  if (upto == 1)
    return;
  atomic_store(mine, (count + 1) << 1);
  atomic_store(&sh->workers[w].run_seq, 0);
  atomic_store(&sh->workers[w].waking, seq % MP__POOL_SLOTS + 1);
  uint64_t active = seq << 1 | 1;
  T_ASSERT(atomic_compare_exchange_strong(&sh->slots[seq % MP__POOL_SLOTS].state, &active,
                                          seq << 1),
           "the slot was not won");
  if (upto == 3)
    T_ASSERT(atomic_exchange(&sh->wakers[seq % MP__POOL_SLOTS].waiters, 0) > 0,
             "no waiter was counted");
}

/* claim_in: a map's chunk drawn from the hint (fetch-and-add), the worker killed before its
 * compare-and-swap on the chunk's state: the chunk is QUEUED below the hint, which no claim
 * looks at again, and names no owner. The loss must queue it again (before, the map never
 * completed). */
START_TEST(test_ends_between_draw_and_claim) {
  int in[2] = {1, 2};
  mp__jobrec_t *job = submit_map(0, in, 2, 1);
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  start_serving(1);
  atomic_store(&sh->workers[1].pin, mp__jobrec_seq(job) + 1); /* pin() */
  atomic_fetch_add(&job->blk->hint, 1);                        /* the draw of chunk 0 */
  end_by_death(1);
  mp__task_t a;
  for (int k = 0; k < 3 && mp__pool_claim(sh, 0, &a); k++) {
    a.call = (mp__fn_t)identity;
    MP_ASSERT_OK(mp__run_task(&a, NULL));
    complete(0, &a);
  }
  T_ASSERT(mp__job_complete(job),
           "the map never completes: %llu of 2 chunks counted, chunk 0's state %#llx",
           (unsigned long long)mp__job_counted(job),
           (unsigned long long)atomic_load(mp__job_state(job->blk, 0)));
  end_table(job);
}
END_TEST

/* A chunk that a live worker drew, and had not claimed yet when another worker ended, is
 * queued again by that end (it cannot tell whose draw it was): it keeps its retries, since no
 * run of it was lost. Marked as an attempt (review, stop 18), it had none left with retries 1,
 * and the first loss of a run of it failed the map. */
START_TEST(test_redrawn_chunk_keeps_its_retries) {
  int in[2] = {1, 2};
  mp__jobrec_t *job = submit_map(1, in, 2, 1);
  start_serving(0);
  start_serving(1);
  atomic_fetch_add(&job->blk->hint, 1); /* worker 0 drew chunk 0 and claims it next */
  end_by_death(1);
  mp__task_t a;
  claim(0, &a);
  T_INT_EQ(a.chunk, 0);
  end_by_death(0); /* its run of chunk 0 lost: retried once */
  start_serving(0);
  finish_as(0, job, 2, 3);
}
END_TEST

/* mp__pool_complete killed (by terminate's SIGKILL, or just before a terminate) between the
 * chunk's CAS to DONE and the store of its count: the abort does not count a DONE chunk, and
 * worker_lost, whose repair of the count would, does not run after a terminate. The end
 * must repair it (before, the job was never complete, and its waiter waited for ever). */
START_TEST(test_terminate_ends_between_done_and_count) {
  int in[2] = {1, 2};
  mp__jobrec_t *job = submit_map(0, in, 2, 1);
  start_serving(1);
  mp__task_t a;
  claim(1, &a);
  complete_upto(1, &a, 1);
  end_by_terminate(1);
  T_ASSERT(mp__job_complete(job), "the terminated map is never complete: %llu of 2 counted",
           (unsigned long long)mp__job_counted(job));
  end_table(job);
}
END_TEST

static bool job_is_complete(const mp__jobrec_t *job, void *arg) {
  (void)arg;
  return mp__job_complete(job);
}

static double wait_took;

static void *waiter_thread(void *arg) {
  double t0 = mp_test_now();
  mp__job_wait(arg, job_is_complete, NULL, false, mp__now_ns() + 3000000000ll);
  wait_took = mp_test_now() - t0;
  return NULL;
}

/* A waiter asleep on job's waker. */
static pthread_t start_waiter(mp__jobrec_t *job) {
  pthread_t th;
  T_INT_EQ(pthread_create(&th, NULL, waiter_thread, job), 0);
  mp__job_waker_t *waker = atomic_load(&job->waker);
  double end = mp_test_now() + 5;
  while (atomic_load(&waker->waiters) == 0 && mp_test_now() < end)
    mp_test_sleep(0.001);
  mp_test_sleep(0.05);
  return th;
}

/* settle_as killed after it won the slot's CAS, before its wake-up (_i 0, 1), or in the
 * wake-up, once it took the waiters' count (_i 2, 3): by a death (_i even), or while the
 * pool is being terminated (_i odd), when abort_all skips the job (its slot is inactive) and
 * worker_lost does not run. The end must wake the waiter (before, after a terminate, it
 * slept to its deadline; and it does so by the worker's record: no futex call on every
 * other slot's waker). */
/* A map of one item, its waiter asleep, its chunk run by worker 1 (a, in): the job. */
static mp__jobrec_t *one_item_run(pthread_t *waiter, mp__task_t *a, int *in) {
  mp__jobrec_t *job = submit_map(0, in, 1, 1);
  start_serving(1);
  *waiter = start_waiter(job);
  claim(1, a);
  return job;
}

START_TEST(test_ends_after_slot_swap) {
  int in[1] = {1};
  pthread_t th;
  mp__task_t a;
  mp__jobrec_t *job = one_item_run(&th, &a, in);
  complete_upto(1, &a, 2 + _i / 2);
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  _Atomic uint32_t *other = &sh->wakers[(mp__jobrec_seq(job) + 1) % MP__POOL_SLOTS].wake;
  uint32_t other_before = atomic_load(other);
  if (_i % 2)
    end_by_terminate(1);
  else
    end_by_death(1);
  pthread_join(th, NULL);
  T_ASSERT(wait_took < 1, "the complete job's waiter slept %.2f s (to its deadline)",
           wait_took);
  T_INT_EQ(atomic_load(other), other_before); /* woken by name: not the next slot's waiter */
  end_table(job);
}
END_TEST

/* mp__pool_complete itself names the waker of the job it settles in its record (waking)
 * from before it wins the slot (MP__RACE_SETTLED) through its wake-up of the waiter
 * (MP__RACE_WAKING, the waiters' count taken), and none once it returns: the name that an
 * end at either point is woken by (test_ends_after_slot_swap plays those ends). */
static struct {
  uint32_t at_settled, at_waking;
  int settled, waking;
} named;

static void naming_hook(int point, mp__job_t *job) {
  (void)job;
  uint32_t waking = atomic_load(&mp__jobs_shared(table)->workers[1].waking);
  if (point == MP__RACE_SETTLED)
    named.at_settled = waking, named.settled++;
  else if (point == MP__RACE_WAKING)
    named.at_waking = waking, named.waking++;
}

START_TEST(test_completion_names_its_waker) {
  int in[1] = {1};
  pthread_t th;
  mp__task_t a;
  mp__jobrec_t *job = one_item_run(&th, &a, in);
  memset(&named, 0, sizeof named);
  mp__pool_race_hook = naming_hook;
  bool ours = complete(1, &a);
  mp__pool_race_hook = NULL;
  pthread_join(th, NULL);
  T_ASSERT(ours, "the completion was not the worker's");
  T_ASSERT(wait_took < 1, "the waiter slept %.2f s (to its deadline)", wait_took);
  uint32_t want = (uint32_t)(mp__jobrec_seq(job) % MP__POOL_SLOTS) + 1;
  T_INT_EQ(named.settled, 1);
  T_INT_EQ(named.waking, 1);
  T_INT_EQ(named.at_settled, want);
  T_INT_EQ(named.at_waking, want);
  T_INT_EQ(atomic_load(&mp__jobs_shared(table)->workers[1].waking), 0);
  end_table(job);
}
END_TEST

/* A closed pool's last job settled by a worker killed after the slot's CAS, before
 * settle_as's wake_workers: the idle workers, which would now see the pool closed and done
 * and exit, must be woken by the end (before, they slept on, and join waited for ever). */
START_TEST(test_closed_pool_ends_after_slot_swap) {
  int in[1] = {1};
  mp__jobrec_t *job = submit_map(0, in, 1, 1);
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  start_serving(1);
  mp__task_t a;
  claim(1, &a);
  mp__jobs_set_flag(table, MP__POOL_CLOSED);
  pthread_t sleeper;
  T_INT_EQ(pthread_create(&sleeper, NULL, go_idle, (void *)0), 0);
  double end = mp_test_now() + 5;
  while (atomic_load(&sh->workers[0].idle_ticket) == 0 && mp_test_now() < end)
    mp_test_sleep(0.001);
  complete_upto(1, &a, 2);
  end_by_death(1);
  /* The replacement (work_left: oldest was not advanced) claims nothing, advancing oldest,
   * sees the pool closed and done, and exits, waking nobody. */
  start_serving(1);
  T_ASSERT(!mp__pool_claim(sh, 1, &a), "the replacement claimed a chunk");
  bool woken = joined_within(sleeper, 2);
  bool done = mp__pool_closed_and_done(sh);
  if (!woken) {
    atomic_fetch_add(&sh->work, 1);
    atomic_fetch_add(&sh->workers[0].wake, 1);
    mp__futex_wake(&sh->workers[0].wake, 1);
    pthread_join(sleeper, NULL);
  }
  T_ASSERT(woken, "the idle worker was never woken (closed and done: %d): join hangs", done);
  end_table(job);
}
END_TEST

static void *submit_thread(void *arg) {
  int in[1] = {1};
  *(mp__jobrec_t **)arg = submit_more(in, 1, 1);
  return NULL;
}

/* All MP__POOL_SLOTS slots taken, a submission waits for the oldest job's slot; that job's
 * worker is killed after the slot's CAS, before settle_as bumps slot_free. The end must wake
 * the submission (before, it waited, holding the submit lock, until some other job
 * completed: for ever if none was in flight). */
START_TEST(test_slot_waiter_ends_after_slot_swap) {
  int in[1] = {1};
  mp__jobrec_t *first = submit_map(0, in, 1, 1), *others[MP__POOL_SLOTS - 1], *late = NULL;
  mp__pool_shared_t *sh = mp__jobs_shared(table);
  start_serving(1);
  mp__task_t a, b;
  claim(1, &a);
  for (int k = 0; k < MP__POOL_SLOTS - 1; k++) {
    others[k] = submit_more(in, 1, 1);
    claim(0, &b);
    T_ASSERT(complete(0, &b), "refused");
  }
  pthread_t th;
  T_INT_EQ(pthread_create(&th, NULL, submit_thread, &late), 0);
  double end = mp_test_now() + 5;
  while (atomic_load(&sh->slot_waiters) == 0 && mp_test_now() < end)
    mp_test_sleep(0.001);
  mp_test_sleep(0.05);
  complete_upto(1, &a, 2);
  end_by_death(1);
  bool published = joined_within(th, 2);
  if (!published) {
    atomic_fetch_add(&sh->slot_free, 1);
    mp__futex_wake(&sh->slot_free, INT32_MAX);
    pthread_join(th, NULL);
  }
  T_ASSERT(published, "the submission waited on for a slot that is free");
  for (int k = 0; k < MP__POOL_SLOTS - 1; k++)
    mp__jobs_release(table, others[k]);
  if (late)
    mp__jobs_release(table, late);
  end_table(first);
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
  tcase_add_test(tc, test_function_table_forged);
  tcase_add_test(tc, test_completion_claims_next);
  tcase_add_test(tc, test_no_claim_past_an_older_job);
  tcase_add_test(tc, test_pinned_job_block_reused);
  tcase_add_test(tc, test_orphan_block_reused_not_reclaimed);
  tcase_add_test(tc, test_abort_while_running);
  tcase_add_test(tc, test_abort_while_running_worker_dies);
  tcase_add_test(tc, test_abandoned_chunk_given_back);
  tcase_add_test(tc, test_abort_after_the_worker_is_gone);
  tcase_add_test(tc, test_worker_ends_while_jobs_are_made);
  tcase_add_test(tc, test_worker_ends_going_idle);
  tcase_add_test(tc, test_block_kept_for_next_table);
  tcase_add_test(tc, test_output_pages_mapped_once);
  tcase_add_test(tc, test_applies_share_a_batch);
  tcase_add_test(tc, test_batch_lost_and_aborted);
  tcase_add_test(tc, test_spread_states_lost_and_aborted);
  tcase_add_test(tc, test_closed_batch_block_freed);
  tcase_add_test(tc, test_apply_stream_stays_batched);
  tcase_add_test(tc, test_abort_racing_a_feed);
  tcase_add_test(tc, test_abort_racing_an_apply);
  tcase_add_test(tc, test_forged_limit_closed);
  tcase_add_test(tc, test_forged_limit_count);
  tcase_add_test(tc, test_forged_cell_lengths);
  tcase_add_test(tc, test_held_applies_shown);
  tcase_add_test(tc, test_held_applies_closed);
  tcase_add_test(tc, test_held_applies_taken_leave_none_asleep);
  tcase_add_test(tc, test_held_apply_behind_a_fed_iterator);
  tcase_add_test(tc, test_forged_limit_closed_held);
  tc = mp_test_tcase(s, "ends", 30);
  tcase_add_test(tc, test_ends_between_draw_and_claim);
  tcase_add_test(tc, test_redrawn_chunk_keeps_its_retries);
  tcase_add_test(tc, test_terminate_ends_between_done_and_count);
  tcase_add_loop_test(tc, test_ends_after_slot_swap, 0, 4);
  tcase_add_test(tc, test_completion_names_its_waker);
  tcase_add_test(tc, test_killed_after_claiming_a_retry);
  tcase_add_test(tc, test_retries_in_two_jobs);
  tcase_add_test(tc, test_closed_pool_ends_after_slot_swap);
  tcase_add_test(tc, test_slot_waiter_ends_after_slot_swap);
  tc = mp_test_tcase(s, "pool", 60);
  tcase_add_loop_test(tc, test_loss_while_the_error_lock_is_held, 0, N_METHODS);
  tcase_add_loop_test(tc, test_lazy_input_over_jobs, 0, 4);
  tcase_add_loop_test(tc, test_lazy_failure_message_survives_refill, 0, 4);
  tcase_add_loop_test(tc, test_lazy_input_kept_after_close, 0, 4);
  tcase_add_loop_test(tc, test_lazy_source_not_called_after_abort, 0, 4);
  tcase_add_loop_test(tc, test_lazy_sweep, 0, 4);
  tcase_add_loop_test(tc, test_lazy_death_in_short_chunk, 0, N_METHODS);
  tcase_add_test(tc, test_open_job_wild_fed_items);
  tcase_add_test(tc, test_lazy_huge_chunksize);
  tcase_add_loop_test(tc, test_forged_next_seq, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_oldest, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_flags_reopen, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_call_free_list, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_slot_pointer, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_submitting, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_next_seq_at_close, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_slot_state, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_fnref_class, 0, N_METHODS);
  return s;
}

MP_TEST_MAIN(pool_jobs_suite)
