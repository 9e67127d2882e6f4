/*
 * Check suite of mp_pool_map_shared: maps over an Array or a named segment, read and written
 * in place, under fork, spawn, forkserver and the thread context; bad arguments; a failed
 * chunk; a worker that dies mid-map. Each test destroys its pool, which kills and reaps every
 * worker, also when an assertion fails (the cleanup hook).
 */
#include "mp_test.h"

static const char *const CONTEXTS[] = {"fork", "spawn", "forkserver", "thread"};
#define N_CONTEXTS 4
#define N_PROCESS_CONTEXTS 3
#define IS_THREAD(i) ((i) == 3)

static mp_pool_t *test_pool;
static mp_shared_memory_t *test_shm; /* unlinked and closed by the cleanup hook */

static void cleanup(void) {
  mp_pool_destroy(test_pool);
  test_pool = NULL;
  if (test_shm) {
    mp_shared_memory_unlink(test_shm);
    mp_shared_memory_close(test_shm);
    test_shm = NULL;
  }
}

static mp_pool_t *make_pool(int i, int processes) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = processes;
  MP_ASSERT_OK(mp_get_context(CONTEXTS[i], &o.context));
  MP_ASSERT_OK(mp_pool_create(&test_pool, &o));
  mp_test_set_hook(cleanup);
  return test_pool;
}

static mp_shared_memory_t *make_segment(size_t size) {
  MP_ASSERT_OK(mp_shared_memory_create(&test_shm, NULL, size, 0));
  return test_shm;
}

static void end_test(void) {
  mp_test_set_hook(NULL);
  cleanup();
}

/* ------------------------------- tasks ------------------------------- */

/* out[i] = 2 * in[i] + first index of the chunk's item i: checks both pointers and first. */
static int twice_plus_index(const void *in, void *out, size_t first, size_t count, void *user) {
  (void)user;
  const double *x = in;
  double *y = out;
  for (size_t i = 0; i < count; i++)
    y[i] = 2 * x[i] + (double)(first + i);
  return 0;
}

/* Fails unless in and out are the same address: what a copy could not give. */
static int same_bytes(const void *in, void *out, size_t first, size_t count, void *user) {
  (void)user;
  if (in != out)
    return mp_task_fail("chunk at %zu: in %p and out %p differ: a copy", first, in, out);
  for (size_t i = 0; i < count; i++)
    ((unsigned char *)out)[i] ^= 0xff;
  return 0;
}

/* Adds each chunk's count to the Value that user points at. */
static int count_into(const void *in, void *out, size_t first, size_t count, void *user) {
  (void)first;
  if (in || out)
    return mp_task_fail("in %p and out %p: NULL expected", in, out);
  long total;
  int rc = mp_value_add_long(user, (long)count, &total);
  return rc < 0 ? mp_task_fail("mp_value_add_long: %s", mp_strerror(rc)) : 0;
}

#define BAD_ITEM 70

/* Fails the chunk holding item BAD_ITEM, after writing its results. */
static int fail_at_bad(const void *in, void *out, size_t first, size_t count, void *user) {
  twice_plus_index(in, out, first, count, user);
  if (first <= BAD_ITEM && BAD_ITEM < first + count)
    return mp_task_fail("item %d is bad", BAD_ITEM);
  return 0;
}

/* Dies in the chunk holding item BAD_ITEM. */
static int die_at_bad(const void *in, void *out, size_t first, size_t count, void *user) {
  if (first <= BAD_ITEM && BAD_ITEM < first + count)
    raise(SIGKILL);
  return twice_plus_index(in, out, first, count, user);
}

/* ------------------------------ helpers ------------------------------ */

#define N 1000

static void fill(double *x, size_t n, double base) {
  for (size_t i = 0; i < n; i++)
    x[i] = base + (double)i;
}

static void check_twice(const double *in, const double *out, size_t from, size_t to) {
  for (size_t i = from; i < to; i++)
    if (out[i] != 2 * in[i] + (double)i)
      T_FAIL("result %zu is %g, expected %g", i, out[i], 2 * in[i] + (double)i);
}

/* A segment of 2 * N doubles, the first N filled from base: in spans them, out the rest. */
static double *make_halves(double base, mp_shared_span_t *in, mp_shared_span_t *out) {
  mp_shared_memory_t *shm = make_segment(2 * N * sizeof(double));
  double *x = mp_shared_memory_buf(shm);
  fill(x, N, base);
  *in = (mp_shared_span_t){NULL, shm, 0, sizeof(double)};
  *out = (mp_shared_span_t){NULL, shm, N * sizeof(double), sizeof(double)};
  return x;
}

/* ------------------------------- tests ------------------------------- */

/* An Array in, another out, filled after the pool started; every chunksize shape. */
START_TEST(test_array) {
  mp_pool_t *pool = make_pool(_i, 2);
  mp_array_t *a, *b;
  MP_ASSERT_OK(mp_raw_array_create(&a, 'd', N, NULL));
  MP_ASSERT_OK(mp_raw_array_create(&b, 'd', N, NULL));
  fill(mp_array_ptr(a), N, 0.5);
  mp_shared_span_t in = {a, NULL, 0, sizeof(double)}, out = {b, NULL, 0, sizeof(double)};
  const size_t sizes[] = {0, 1, 7, N, SIZE_MAX};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    memset(mp_array_ptr(b), 0, N * sizeof(double));
    MP_ASSERT_OK(mp_pool_map_shared(pool, twice_plus_index, &in, &out, N, sizes[k], NULL));
    check_twice(mp_array_ptr(a), mp_array_ptr(b), 0, N);
  }
  /* An offset: items 10.. of a as items 0.. of the map. */
  in.offset = 10 * sizeof(double);
  MP_ASSERT_OK(mp_pool_map_shared(pool, twice_plus_index, &in, &out, N - 10, 0, NULL));
  for (size_t i = 0; i < N - 10; i++)
    T_ASSERT(((double *)mp_array_ptr(b))[i] == 2 * (0.5 + (double)(i + 10)) + (double)i,
             "offset result %zu", i);
  MP_ASSERT_OK(mp_pool_map_shared(pool, twice_plus_index, &in, &out, 0, 0, NULL));
  MP_ASSERT_OK(mp_array_close(a));
  MP_ASSERT_OK(mp_array_close(b));
  end_test();
}
END_TEST

/* A segment created after the pool and written then: the workers read it where it is, and
 * in and out naming the same bytes reach fn as one address (no copy). Twice on each of
 * three segments: a worker keeps a segment mapped from call to call, and closes it for a
 * call on another. */
START_TEST(test_segment_in_place) {
  mp_pool_t *pool = make_pool(_i, 2);
  for (int round = 0; round < 3; round++) {
    mp_shared_span_t in, out;
    double *x = make_halves(round, &in, &out);
    mp_shared_memory_t *shm = in.shm;
    for (int again = 0; again < 2; again++) {
      MP_ASSERT_OK(mp_pool_map_shared(pool, twice_plus_index, &in, &out, N, 0, NULL));
      check_twice(x, x + N, 0, N);
    }
    unsigned char *bytes = mp_shared_memory_buf(shm), before[N];
    memcpy(before, bytes, N);
    mp_shared_span_t both = {NULL, shm, 0, 1};
    MP_ASSERT_OK(mp_pool_map_shared(pool, same_bytes, &both, &both, N, 13, NULL));
    for (size_t i = 0; i < N; i++)
      T_ASSERT(bytes[i] == (unsigned char)~before[i], "byte %zu not flipped in place", i);
    MP_ASSERT_OK(mp_shared_memory_unlink(shm));
    MP_ASSERT_OK(mp_shared_memory_close(shm));
    test_shm = NULL;
  }
  end_test();
}
END_TEST

/* No span: a loop over the indexes, user a Value in the arena. */
START_TEST(test_no_spans_user_handle) {
  mp_pool_t *pool = make_pool(_i, 2);
  mp_value_t *total;
  MP_ASSERT_OK(mp_value_create(&total, 'l', NULL, NULL));
  MP_ASSERT_OK(mp_pool_map_shared(pool, count_into, NULL, NULL, 12345, 100, total));
  long sum = 0;
  MP_ASSERT_OK(mp_value_get_long(total, &sum));
  T_INT_EQ(sum, 12345);
  MP_ASSERT_OK(mp_value_close(total));
  end_test();
}
END_TEST

/* A failed chunk: MP_ETASK naming its items and the task's message; the other chunks done. */
START_TEST(test_task_fails) {
  mp_pool_t *pool = make_pool(_i, 2);
  mp_shared_span_t in, out;
  double *x = make_halves(1, &in, &out);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, fail_at_bad, &in, &out, N, 50, NULL), MP_ETASK);
  T_ASSERT(strstr(mp_last_error(), "mp_pool_map_shared: items [50, 100): item 70 is bad"),
           "message");
  check_twice(x, x + N, 0, N); /* every chunk wrote, the failed one included */
  end_test();
}
END_TEST

/* A worker killed mid-map: MP_EWORKERDIED naming the chunk, no hang; the pool goes on. */
START_TEST(test_worker_dies) {
  mp_pool_t *pool = make_pool(_i, 2);
  mp_shared_span_t in, out;
  double *x = make_halves(1, &in, &out);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, die_at_bad, &in, &out, N, 50, NULL), MP_EWORKERDIED);
  T_ASSERT(strstr(mp_last_error(), "items [50, 100): ") && strstr(mp_last_error(), "signal 9"),
           "message");
  check_twice(x, x + N, 0, 50);
  check_twice(x, x + N, 100, N);
  MP_ASSERT_OK(mp_pool_map_shared(pool, twice_plus_index, &in, &out, N, 0, NULL));
  check_twice(x, x + N, 0, N);
  end_test();
}
END_TEST

/* A segment unlinked before the map: worker processes cannot attach to it (a failed chunk
 * saying so); thread workers use the caller's mapping. */
START_TEST(test_unlinked_segment) {
  mp_pool_t *pool = make_pool(_i, 1);
  mp_shared_span_t in, out;
  double *x = make_halves(1, &in, &out);
  mp_shared_memory_t *shm = in.shm;
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  int rc = mp_pool_map_shared(pool, twice_plus_index, &in, &out, N, 0, NULL);
  if (IS_THREAD(_i)) {
    MP_ASSERT_OK(rc);
    check_twice(x, x + N, 0, N);
  } else {
    MP_ASSERT_ERR(rc, MP_ETASK);
    T_ASSERT(strstr(mp_last_error(), "unlinked"), "message");
  }
  MP_ASSERT_OK(mp_shared_memory_close(shm));
  test_shm = NULL;
  end_test();
}
END_TEST

/* A segment unlinked after a map and another made under the same name: the workers tell
 * them apart (by inode) and map the new one, not the one they kept. */
START_TEST(test_same_name_new_segment) {
  mp_pool_t *pool = make_pool(_i, 2);
  char name[64];
  snprintf(name, sizeof name, "mp_test_pool_shared_%d", (int)getpid());
  for (int round = 0; round < 2; round++) {
    MP_ASSERT_OK(mp_shared_memory_create(&test_shm, name, 2 * N * sizeof(double), 0));
    double *x = mp_shared_memory_buf(test_shm);
    fill(x, N, 100 * round);
    mp_shared_span_t in = {NULL, test_shm, 0, sizeof(double)};
    mp_shared_span_t out = {NULL, test_shm, N * sizeof(double), sizeof(double)};
    MP_ASSERT_OK(mp_pool_map_shared(pool, twice_plus_index, &in, &out, N, 0, NULL));
    check_twice(x, x + N, 0, N);
    MP_ASSERT_OK(mp_shared_memory_unlink(test_shm));
    MP_ASSERT_OK(mp_shared_memory_close(test_shm));
    test_shm = NULL;
  }
  end_test();
}
END_TEST

static int not_a_function(const void *in, void *out, size_t first, size_t count, void *user) {
  (void)in, (void)out, (void)first, (void)count, (void)user;
  return 0;
}

/* Every argument checked before anything runs. */
START_TEST(test_bad_arguments) {
  mp_pool_t *pool = make_pool(_i, 1);
  mp_array_t *a;
  MP_ASSERT_OK(mp_raw_array_create(&a, 'd', N, NULL));
  mp_shared_memory_t *shm = make_segment(4096);
  mp_shared_span_t ok = {a, NULL, 0, sizeof(double)};
  mp_shared_span_t both = {a, shm, 0, 1}, neither = {NULL, NULL, 0, 1};
  mp_shared_span_t zero = {a, NULL, 0, 0}, past = {a, NULL, 8, sizeof(double)};
  mp_shared_span_t far = {NULL, shm, SIZE_MAX, 1}, huge = {NULL, shm, 0, SIZE_MAX / 2};
  mp_shared_task_fn_t f = twice_plus_index;
  MP_ASSERT_ERR(mp_pool_map_shared(NULL, f, &ok, &ok, N, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, NULL, &ok, &ok, N, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, f, &both, &ok, N, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, f, &ok, &neither, N, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, f, &zero, &ok, N, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, f, &ok, &past, N, 0, NULL), MP_EINVAL);
  T_ASSERT(strstr(mp_last_error(), "past the"), "message: %s", mp_last_error());
  MP_ASSERT_ERR(mp_pool_map_shared(pool, f, &ok, &ok, N + 1, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, f, &far, NULL, 1, 0, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, f, &huge, NULL, 3, 0, NULL), MP_EINVAL);
  T_ASSERT(strstr(mp_last_error(), "overflow"), "message: %s", mp_last_error());
  /* No span bounds n, but the chunk descriptors do. */
  MP_ASSERT_ERR(mp_pool_map_shared(pool, count_into, NULL, NULL, SIZE_MAX, 1, NULL), MP_EINVAL);
  /* A function on the heap crosses to no worker. */
  void *heap = malloc(64);
  T_ASSERT(heap != NULL, "malloc");
  mp_shared_task_fn_t wild;
  memcpy(&wild, &heap, sizeof wild);
  MP_ASSERT_ERR(mp_pool_map_shared(pool, wild, &ok, &ok, N, 0, NULL), MP_ECROSS);
  free(heap);
  MP_ASSERT_OK(mp_pool_map_shared(pool, not_a_function, &ok, &ok, N, 0, NULL));
  MP_ASSERT_OK(mp_pool_close(pool));
  MP_ASSERT_ERR(mp_pool_map_shared(pool, f, &ok, &ok, N, 0, NULL), MP_ECLOSED);
  MP_ASSERT_OK(mp_array_close(a));
  end_test();
}
END_TEST

static Suite *pool_shared_suite(void) {
  Suite *s = suite_create("pool_shared");
  TCase *tc = mp_test_tcase(s, "in place", 60);
  tcase_add_loop_test(tc, test_array, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_segment_in_place, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_no_spans_user_handle, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_unlinked_segment, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_same_name_new_segment, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "errors", 60);
  tcase_add_loop_test(tc, test_bad_arguments, 0, N_CONTEXTS);
  tcase_add_loop_test(tc, test_task_fails, 0, N_CONTEXTS);
  tc = mp_test_tcase(s, "dead", 60);
  tcase_add_loop_test(tc, test_worker_dies, 0, N_PROCESS_CONTEXTS);
  return s;
}

MP_TEST_MAIN(pool_shared_suite)
