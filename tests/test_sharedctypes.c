/*
 * Value and Array (lib/sharedctypes.c) through the public header: every typecode, raw and
 * locked forms, a caller's lock, typed and raw access, bad input; the seed lectures' race
 * (a counter incremented by several processes or threads), and a Value's lock whose holder
 * is SIGKILLed.
 */
#include "mp_test.h"

#include <limits.h>
#include <pthread.h>
#include <sched.h>

typedef struct {
  mp_value_t *value;
  mp_array_t *array;
  mp_event_t *ready;
  int n;
} job_t;

/* ================================ typecodes ================================ */

START_TEST(test_integer_typecodes) {
  static const struct {
    char code;
    size_t size;
    long stored, read; /* what set_long stores, and what it reads back */
  } cases[] = {
      {'b', 1, 200, -56},
      {'B', 1, -1, 255},
      {'h', 2, 40000, 40000 - 65536},
      {'H', 2, -1, 65535},
      {'i', 4, -7, -7},
      {'I', 4, -1, 4294967295L},
      {'l', 8, -5, -5},
      {'L', 8, 123456789, 123456789},
      {'q', 8, -1099511627776L, -1099511627776L},
      {'Q', 8, 77, 77},
      {'c', 1, 'x', 'x'},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    for (int raw = 0; raw < 2; raw++) {
      mp_value_t *v;
      MP_ASSERT_OK(raw ? mp_raw_value_create(&v, cases[k].code, NULL)
                       : mp_value_create(&v, cases[k].code, NULL, NULL));
      T_INT_EQ(mp_value_size(v), cases[k].size);
      T_ASSERT((mp_value_get_lock(v) == NULL) == raw, "typecode %c: lock %p", cases[k].code,
               (void *)mp_value_get_lock(v));
      long x = 1;
      MP_ASSERT_OK(mp_value_get_long(v, &x));
      T_INT_EQ(x, 0);
      MP_ASSERT_OK(mp_value_set_long(v, cases[k].stored));
      MP_ASSERT_OK(mp_value_get_long(v, &x));
      T_INT_EQ(x, cases[k].read);
      MP_ASSERT_ERR(mp_value_get_double(v, &(double){0}), MP_EINVAL);
      MP_ASSERT_OK(mp_value_close(v));
    }
  }
  /* An initial value, as bytes of the element's type. */
  short init = -300;
  mp_value_t *v;
  MP_ASSERT_OK(mp_value_create(&v, 'h', &init, NULL));
  long x;
  MP_ASSERT_OK(mp_value_add_long(v, 1000, &x));
  T_INT_EQ(x, 700);
  T_INT_EQ(*(short *)mp_value_ptr(v), 700);
  MP_ASSERT_OK(mp_value_close(v));
}
END_TEST

START_TEST(test_float_typecodes) {
  float f = 1.5f;
  mp_value_t *v;
  MP_ASSERT_OK(mp_value_create(&v, 'f', &f, NULL));
  double d;
  MP_ASSERT_OK(mp_value_get_double(v, &d));
  T_ASSERT(d == 1.5, "%g", d);
  MP_ASSERT_OK(mp_value_add_double(v, 0.25, &d));
  T_ASSERT(d == 1.75, "%g", d);
  MP_ASSERT_ERR(mp_value_get_long(v, &(long){0}), MP_EINVAL);
  MP_ASSERT_ERR(mp_value_set_long(v, 1), MP_EINVAL);
  MP_ASSERT_OK(mp_value_close(v));

  MP_ASSERT_OK(mp_raw_value_create(&v, 'd', NULL));
  MP_ASSERT_OK(mp_value_set_double(v, 0.1));
  MP_ASSERT_OK(mp_value_get_double(v, &d));
  T_ASSERT(d == 0.1, "%g", d);
  T_INT_EQ(mp_value_size(v), sizeof(double));
  MP_ASSERT_OK(mp_value_close(v));
}
END_TEST

START_TEST(test_raw_elements) {
  typedef struct {
    int a;
    double b;
    char c[12];
  } point_t;
  point_t init[3] = {{1, 2.0, "one"}, {2, 4.0, "two"}, {3, 6.0, "three"}};
  mp_array_t *a;
  MP_ASSERT_OK(mp_array_create(&a, MP_TYPE_BYTES(sizeof(point_t)), 3, init, NULL));
  T_INT_EQ(mp_array_length(a), 3);
  T_INT_EQ(mp_array_size(a), 3 * sizeof(point_t));
  point_t out[2];
  MP_ASSERT_OK(mp_array_read(a, 1, 2, out));
  T_INT_EQ(out[0].a, 2);
  T_STR_EQ(out[1].c, "three");
  point_t p = {9, 9.5, "nine"};
  MP_ASSERT_OK(mp_array_write(a, 0, 1, &p));
  T_STR_EQ(((point_t *)mp_array_ptr(a))[0].c, "nine");
  MP_ASSERT_ERR(mp_array_get_long(a, 0, &(long){0}), MP_EINVAL);
  MP_ASSERT_ERR(mp_array_get_double(a, 0, &(double){0}), MP_EINVAL);
  MP_ASSERT_ERR(mp_array_read(a, 2, 2, out), MP_EINVAL);
  MP_ASSERT_ERR(mp_array_write(a, 4, 0, &p), MP_EINVAL);
  MP_ASSERT_OK(mp_array_read(a, 3, 0, out)); /* an empty slice at the end */
  MP_ASSERT_OK(mp_array_close(a));

  mp_value_t *v;
  MP_ASSERT_OK(mp_raw_value_create(&v, MP_TYPE_BYTES(sizeof(point_t)), &p));
  point_t q;
  MP_ASSERT_OK(mp_value_read(v, &q));
  T_INT_EQ(q.a, 9);
  q.a = 10;
  MP_ASSERT_OK(mp_value_write(v, &q));
  T_INT_EQ(((point_t *)mp_value_ptr(v))->a, 10);
  MP_ASSERT_OK(mp_value_close(v));
}
END_TEST

START_TEST(test_array_elements) {
  int init[5] = {5, 4, 3, 2, 1};
  mp_array_t *a;
  MP_ASSERT_OK(mp_array_create(&a, 'i', 5, init, NULL));
  long x;
  for (size_t i = 0; i < 5; i++) {
    MP_ASSERT_OK(mp_array_get_long(a, i, &x));
    T_INT_EQ(x, 5 - (long)i);
  }
  MP_ASSERT_OK(mp_array_set_long(a, 4, -9));
  MP_ASSERT_OK(mp_array_add_long(a, 4, 10, &x));
  T_INT_EQ(x, 1);
  MP_ASSERT_ERR(mp_array_get_long(a, 5, &x), MP_EINVAL);
  MP_ASSERT_ERR(mp_array_set_long(a, (size_t)-1, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_array_get_long(a, 0, NULL), MP_EINVAL);
  MP_ASSERT_OK(mp_array_close(a));

  MP_ASSERT_OK(mp_raw_array_create(&a, 'd', 4, NULL));
  T_ASSERT(mp_array_get_lock(a) == NULL, "a raw array has a lock");
  MP_ASSERT_OK(mp_array_set_double(a, 3, 2.5));
  double d;
  MP_ASSERT_OK(mp_array_get_double(a, 3, &d));
  T_ASSERT(d == 2.5, "%g", d);
  MP_ASSERT_ERR(mp_array_set_double(a, 4, 1), MP_EINVAL);
  MP_ASSERT_OK(mp_array_close(a));
}
END_TEST

/* Integer addition wraps at the element's width (done unsigned: no undefined overflow, which
 * the sanitizer build would stop on), and 'L'/'Q' read back whole as unsigned long. */
START_TEST(test_add_wraps) {
  static const struct {
    char code;
    long max, min;
  } cases[] = {
      {'b', 127, -128},
      {'B', 255, 0},
      {'h', 32767, -32768},
      {'H', 65535, 0},
      {'i', 2147483647, -2147483647 - 1},
      {'I', 4294967295L, 0},
      {'l', LONG_MAX, LONG_MIN},
      {'q', LONG_MAX, LONG_MIN},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    mp_value_t *v;
    mp_array_t *a;
    long x = 0;
    MP_ASSERT_OK(mp_value_create(&v, cases[k].code, NULL, NULL));
    MP_ASSERT_OK(mp_array_create(&a, cases[k].code, 2, NULL, NULL));
    MP_ASSERT_OK(mp_value_set_long(v, cases[k].max));
    MP_ASSERT_OK(mp_value_add_long(v, 1, &x));
    T_INT_EQ(x, cases[k].min);
    MP_ASSERT_OK(mp_value_add_long(v, -1, &x));
    T_INT_EQ(x, cases[k].max);
    MP_ASSERT_OK(mp_array_set_long(a, 1, cases[k].min));
    MP_ASSERT_OK(mp_array_add_long(a, 1, -1, &x));
    T_INT_EQ(x, cases[k].max);
    MP_ASSERT_OK(mp_value_close(v));
    MP_ASSERT_OK(mp_array_close(a));
  }
  for (const char *code = "LQ"; *code; code++) {
    mp_value_t *v;
    mp_array_t *a;
    unsigned long u = 0;
    long x = 0;
    MP_ASSERT_OK(mp_value_create(&v, *code, NULL, NULL));
    MP_ASSERT_OK(mp_raw_array_create(&a, *code, 3, NULL));
    MP_ASSERT_OK(mp_value_set_long(v, LONG_MAX));
    MP_ASSERT_OK(mp_value_add_long(v, 1, &x));
    MP_ASSERT_OK(mp_value_get_ulong(v, &u));
    T_ASSERT(u == 1ul << 63, "%c: %lu", *code, u);
    MP_ASSERT_OK(mp_value_set_ulong(v, ULONG_MAX));
    MP_ASSERT_OK(mp_value_add_long(v, 1, &x));
    T_INT_EQ(x, 0); /* wrapped */
    MP_ASSERT_OK(mp_array_set_ulong(a, 2, ULONG_MAX - 1));
    MP_ASSERT_OK(mp_array_get_ulong(a, 2, &u));
    T_ASSERT(u == ULONG_MAX - 1, "%c: %lu", *code, u);
    MP_ASSERT_ERR(mp_array_get_ulong(a, 3, &u), MP_EINVAL);
    MP_ASSERT_ERR(mp_value_get_ulong(v, NULL), MP_EINVAL);
    MP_ASSERT_OK(mp_value_close(v));
    MP_ASSERT_OK(mp_array_close(a));
  }
  mp_value_t *d;
  MP_ASSERT_OK(mp_value_create(&d, 'd', NULL, NULL));
  MP_ASSERT_ERR(mp_value_get_ulong(d, &(unsigned long){0}), MP_EINVAL); /* not an integer */
  MP_ASSERT_OK(mp_value_close(d));
}
END_TEST

/* Python accepts Array('i', 0); every accessor, Value's and Array's, has its twin. */
START_TEST(test_array_empty_and_double_add) {
  for (int raw = 0; raw < 2; raw++) {
    mp_array_t *a;
    MP_ASSERT_OK(raw ? mp_raw_array_create(&a, 'i', 0, NULL)
                     : mp_array_create(&a, 'i', 0, NULL, NULL));
    T_INT_EQ(mp_array_length(a), 0);
    T_INT_EQ(mp_array_size(a), 0);
    T_ASSERT((mp_array_get_lock(a) == NULL) == raw, "the lock of an empty array");
    long x;
    MP_ASSERT_ERR(mp_array_get_long(a, 0, &x), MP_EINVAL);
    MP_ASSERT_OK(mp_array_read(a, 0, 0, &x));
    MP_ASSERT_ERR(mp_array_write(a, 0, 1, &x), MP_EINVAL);
    MP_ASSERT_OK(mp_array_close(a));
  }
  mp_array_t *a;
  double d = 0;
  MP_ASSERT_OK(mp_array_create(&a, 'f', 2, NULL, NULL));
  MP_ASSERT_OK(mp_array_set_double(a, 1, 1.5));
  MP_ASSERT_OK(mp_array_add_double(a, 1, 0.25, &d));
  T_ASSERT(d == 1.75, "%g", d);
  MP_ASSERT_OK(mp_array_add_double(a, 0, -2, NULL));
  MP_ASSERT_OK(mp_array_get_double(a, 0, &d));
  T_ASSERT(d == -2, "%g", d);
  MP_ASSERT_ERR(mp_array_add_double(a, 2, 1, &d), MP_EINVAL);
  MP_ASSERT_ERR(mp_array_add_long(a, 0, 1, NULL), MP_EINVAL); /* not an integer */
  MP_ASSERT_OK(mp_array_close(a));
}
END_TEST

START_TEST(test_bad_input) {
  mp_value_t *v;
  mp_array_t *a;
  MP_ASSERT_ERR(mp_value_create(&v, 'z', NULL, NULL), MP_EINVAL);
  T_ASSERT(strstr(mp_last_error(), "unknown typecode") != NULL, "%s", mp_last_error());
  MP_ASSERT_ERR(mp_value_create(&v, 0, NULL, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_raw_value_create(&v, 'u', NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_value_create(NULL, 'i', NULL, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_raw_array_create(&a, 'x', 3, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_array_create(&a, 'q', SIZE_MAX / 4, NULL, NULL), MP_ENOMEM);
  MP_ASSERT_ERR(mp_value_get_long(NULL, &(long){0}), MP_EINVAL);
  MP_ASSERT_ERR(mp_value_set_double(NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_value_close(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_array_close(NULL), MP_EINVAL);
  T_ASSERT(mp_value_ptr(NULL) == NULL && mp_array_ptr(NULL) == NULL, "a pointer for NULL");
  T_INT_EQ(mp_array_length(NULL), 0);
  /* A Value is not an Array, and a closed lock is no lock. */
  MP_ASSERT_OK(mp_value_create(&v, 'i', NULL, NULL));
  MP_ASSERT_ERR(mp_array_get_long((mp_array_t *)v, 0, &(long){0}), MP_EINVAL);
  MP_ASSERT_ERR(mp_value_create(&v, 'i', NULL, (mp_lock_t *)v), MP_EINVAL);
  MP_ASSERT_OK(mp_value_close(v));
  MP_ASSERT_ERR(mp_value_get_long(v, &(long){0}), MP_EINVAL); /* closed */
}
END_TEST

START_TEST(test_given_lock) {
  mp_lock_t *lock;
  MP_ASSERT_OK(mp_lock_create(&lock));
  mp_value_t *v;
  mp_array_t *a;
  MP_ASSERT_OK(mp_value_create(&v, 'l', NULL, lock));
  MP_ASSERT_OK(mp_array_create(&a, 'l', 2, NULL, lock));
  MP_ASSERT_OK(mp_lock_close(lock)); /* both hold references */
  T_ASSERT(mp_value_get_lock(v) == lock && mp_array_get_lock(a) == lock, "not the given lock");
  MP_ASSERT_OK(mp_value_set_long(v, 4));
  MP_ASSERT_OK(mp_lock_acquire(lock, 0)); /* the accessor released it */
  MP_ASSERT_OK(mp_lock_release(lock));
  MP_ASSERT_OK(mp_value_close(v));
  MP_ASSERT_OK(mp_lock_acquire(lock, 0)); /* the array keeps it alive */
  MP_ASSERT_OK(mp_lock_release(lock));
  MP_ASSERT_OK(mp_array_close(a));
  /* The default lock is an RLock, so accessors work while the caller holds it. */
  MP_ASSERT_OK(mp_value_create(&v, 'l', NULL, NULL));
  MP_ASSERT_OK(mp_lock_acquire(mp_value_get_lock(v), 0));
  MP_ASSERT_OK(mp_value_add_long(v, 2, NULL));
  MP_ASSERT_OK(mp_lock_release(mp_value_get_lock(v)));
  MP_ASSERT_OK(mp_value_retain(v));
  MP_ASSERT_OK(mp_value_close(v));
  /* Its own lock serves a Condition, and a reference to it keeps the Value. */
  mp_lock_t *own = mp_value_get_lock(v);
  mp_condition_t *cond;
  MP_ASSERT_OK(mp_condition_create(&cond, own));
  MP_ASSERT_OK(mp_condition_acquire(cond, 0));
  MP_ASSERT_ERR(mp_condition_wait(cond, 0.01), MP_ETIMEDOUT);
  MP_ASSERT_OK(mp_condition_release(cond));
  MP_ASSERT_OK(mp_value_close(v));
  MP_ASSERT_OK(mp_lock_acquire(own, 0));
  T_INT_EQ(*(long *)mp_value_ptr(v), 2); /* still there */
  MP_ASSERT_OK(mp_lock_release(own));
  MP_ASSERT_OK(mp_condition_close(cond)); /* the last reference */
}
END_TEST

/* ============================ across processes ============================ */

static int child_fills_array(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  for (size_t i = 0; i < mp_array_length(job->array); i++)
    if (mp_array_set_double(job->array, i, (double)i / 2) != 0)
      return 2;
  return mp_value_set_long(job->value, 42) == 0 ? 0 : 3;
}

START_TEST(test_shared_with_child) {
  job_t job = {0};
  MP_ASSERT_OK(mp_array_create(&job.array, 'd', 1000, NULL, NULL));
  MP_ASSERT_OK(mp_value_create(&job.value, 'q', NULL, NULL));
  mp_test_join_ok(mp_test_start(_i, child_fills_array, &job, sizeof(job_t)), 30);
  double d;
  MP_ASSERT_OK(mp_array_get_double(job.array, 999, &d));
  T_ASSERT(d == 499.5, "%g", d);
  long x;
  MP_ASSERT_OK(mp_value_get_long(job.value, &x));
  T_INT_EQ(x, 42);
  mp_array_close(job.array);
  mp_value_close(job.value);
}
END_TEST

/*
 * The seed lectures' race: several workers add 1 to a counter n times each. Unlocked, each
 * increment is a load, a yield of the core and a store, so another worker's increments land
 * in between and are overwritten: updates are lost (asserted, over a few rounds in case one
 * schedule was lucky). Under the Value's lock the count is exact every round.
 */
#define WORKERS 4
#define ROUNDS 5

static void increment(job_t *job) {
  /* Relaxed atomic loads and stores, as the library's own: whole, and no data race for
   * ThreadSanitizer between the threads; a load and a store apart still lose updates. */
  long *raw = mp_array_ptr(job->array);
  /* the gate: all start together, or a spawned worker may run alone */
  while (__atomic_load_n(&raw[1], __ATOMIC_RELAXED) == 0)
    sched_yield();
  for (int i = 0; i < job->n; i++) {
    long seen = __atomic_load_n(&raw[0], __ATOMIC_RELAXED);
    sched_yield(); /* another worker runs here, and its increments are lost */
    __atomic_store_n(&raw[0], seen + 1, __ATOMIC_RELAXED);
    mp_value_add_long(job->value, 1, NULL);
  }
}

static int child_increments(void *arg, size_t size) {
  (void)size;
  increment(arg);
  return 0;
}

static void *thread_increments(void *arg) {
  increment(arg);
  return NULL;
}

/* Rounds of WORKERS processes of the method, or threads (method < 0). */
static void race(int method) {
  job_t job = {.n = 3000};
  MP_ASSERT_OK(mp_raw_array_create(&job.array, 'l', 2, NULL)); /* the counter, the gate */
  MP_ASSERT_OK(mp_value_create(&job.value, 'l', NULL, NULL));
  long lost = 0;
  for (int round = 0; round < ROUNDS && lost == 0; round++) {
    MP_ASSERT_OK(mp_array_set_long(job.array, 0, 0));
    MP_ASSERT_OK(mp_array_set_long(job.array, 1, 0));
    MP_ASSERT_OK(mp_value_set_long(job.value, 0));
    mp_process_t *p[WORKERS];
    pthread_t t[WORKERS];
    for (int k = 0; k < WORKERS; k++) {
      if (method < 0)
        T_INT_EQ(pthread_create(&t[k], NULL, thread_increments, &job), 0);
      else
        p[k] = mp_test_start(method, child_increments, &job, sizeof(job_t));
    }
    MP_ASSERT_OK(mp_array_set_long(job.array, 1, 1));
    for (int k = 0; k < WORKERS; k++) {
      if (method < 0)
        T_INT_EQ(pthread_join(t[k], NULL), 0);
      else
        mp_test_join_ok(p[k], 30);
    }
    long locked, unlocked;
    MP_ASSERT_OK(mp_value_get_long(job.value, &locked));
    MP_ASSERT_OK(mp_array_get_long(job.array, 0, &unlocked));
    T_INT_EQ(locked, (long)WORKERS * job.n);
    T_ASSERT(unlocked <= locked, "the unlocked counter %ld passed the exact %ld", unlocked,
             locked);
    lost = locked - unlocked;
  }
  T_ASSERT(lost > 0, "the unlocked counter lost no update in %d rounds", ROUNDS);
  mp_array_close(job.array);
  mp_value_close(job.value);
}

START_TEST(test_race_processes) {
  race(_i);
}
END_TEST

START_TEST(test_race_threads) {
  race(-1);
}
END_TEST

/* ============================ a holder is killed ============================ */

static int child_holds_value_lock(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  if (mp_lock_acquire(mp_value_get_lock(job->value), 10) != 0)
    return 2;
  *(long *)mp_value_ptr(job->value) = 5; /* the update it made before it died */
  mp_event_set(job->ready);
  for (;;)
    pause();
}

START_TEST(test_value_lock_holder_killed) {
  job_t job = {0};
  MP_ASSERT_OK(mp_value_create(&job.value, 'l', NULL, NULL));
  MP_ASSERT_OK(mp_event_create(&job.ready));
  mp_process_t *p = mp_test_start(_i, child_holds_value_lock, &job, sizeof(job_t));
  MP_ASSERT_OK(mp_event_wait(job.ready, 20));
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 20), -SIGKILL);
  T_PROC_CLOSE(p);
  long x = 0;
  MP_ASSERT_ERR(mp_value_add_long(job.value, 1, &x), MP_EOWNERDEAD);
  T_INT_EQ(x, 6); /* done, on what the dead holder left */
  MP_ASSERT_OK(mp_value_get_long(job.value, &x));
  T_INT_EQ(x, 6);
  mp_value_close(job.value);
  mp_event_close(job.ready);
}
END_TEST

/* lib/sharedctypes.c's header, to forge it as a buggy process of the program would. */
typedef struct {
  uint32_t magic, kind, elem;
  int32_t typecode;
  size_t length;
  mp_lock_t *lock;
  uint32_t data_at;
} header_t;

typedef struct {
  mp_value_t *value;
  mp_array_t *array;
} wild_job_t;

static int child_uses_wild(void *arg, size_t size) {
  (void)size;
  wild_job_t *job = arg;
  long x = 0;
  int rc_value = mp_value_set_long(job->value, 7);
  int rc_array = mp_array_set_long(job->array, 1000000, 7);
  int rc_read = mp_array_read(job->array, 0, 1000000, &x); /* would copy 8 MB into x */
  return rc_value == MP_ECORRUPT && rc_array == MP_ECORRUPT && rc_read == MP_ECORRUPT &&
                 mp_value_ptr(job->value) == NULL && mp_array_ptr(job->array) == NULL
             ? 0
             : 4;
}

/* A header's lock address or length written wild is refused (MP_ECORRUPT) rather than
 * followed: SIGSEGV, or a write past the block into another object. */
START_TEST(test_wild_header) {
  wild_job_t job;
  MP_ASSERT_OK(mp_value_create(&job.value, 'l', NULL, NULL));
  MP_ASSERT_OK(mp_array_create(&job.array, 'l', 4, NULL, NULL));
  header_t *v = (header_t *)job.value, *a = (header_t *)job.array;
  T_ASSERT(v->lock == mp_value_get_lock(job.value) && a->length == 4, "the header's layout");
  mp_lock_t *wild_lock = (mp_lock_t *)(uintptr_t)0x1000, *saved_lock = v->lock;
  size_t wild_length = 1000001;
  mp_test_forge(_i, &v->lock, &wild_lock, sizeof wild_lock);
  mp_test_forge(_i, &a->length, &wild_length, sizeof wild_length);
  int code = mp_test_join_code(mp_test_start(_i, child_uses_wild, &job, sizeof job), 20);
  v->lock = saved_lock;
  a->length = 4;
  mp_value_close(job.value);
  mp_array_close(job.array);
  T_ASSERT(code == 0, "the child's calls on the wild headers: exit %d (-11: SIGSEGV)", code);
}
END_TEST

/*
 * A Value made with another Value's lock (Python: Value('l', 0, lock=v1.get_lock()); docs/
 * api.md: get_lock's inner lock may be retained, a Value takes any live Lock or RLock): the
 * header's lock is then the other Value's inner lock, MP__INNER_LOCK_AT into its block, not a
 * block of its own, which view_of (sharedctypes.c) called corrupt at every use (review, stop
 * 23).
 */
START_TEST(test_value_with_another_values_lock) {
  mp_value_t *v1, *v2;
  long zero = 0, got = -1;
  MP_ASSERT_OK(mp_value_create(&v1, 'l', &zero, NULL));
  mp_lock_t *lk = mp_value_get_lock(v1);
  T_ASSERT(lk != NULL, "v1 has a lock");
  MP_ASSERT_OK(mp_value_create(&v2, 'l', &zero, lk));
  MP_ASSERT_OK(mp_value_add_long(v2, 5, NULL));
  MP_ASSERT_OK(mp_value_get_long(v2, &got));
  T_INT_EQ(got, 5);
  T_ASSERT(mp_value_get_lock(v2) == lk, "v2's lock is v1's");
  mp_array_t *a;
  long init[3] = {1, 2, 3}, read[3] = {0};
  MP_ASSERT_OK(mp_array_create(&a, 'l', 3, init, lk));
  MP_ASSERT_OK(mp_array_read(a, 0, 3, read));
  T_INT_EQ(read[2], 3);
  MP_ASSERT_OK(mp_array_close(a));
  MP_ASSERT_OK(mp_value_close(v2));
  MP_ASSERT_OK(mp_value_close(v1));
}
END_TEST

/*
 * Review rev-heap: a Value's lock word redirected to another live Lock. view_of accepts any
 * lock that is a live block (mp__lock_placed), so the close of the Value drops a reference
 * to the other Lock, which the parent still holds and uses: its block is freed and the next
 * Lock is made in it (two open Locks at one address), while the Value's own Lock leaks.
 */
START_TEST(test_redirected_lock_freed_by_close) {
  mp_lock_t *given, *other;
  MP_ASSERT_OK(mp_lock_create(&given));
  MP_ASSERT_OK(mp_lock_create(&other)); /* the parent's, one reference */
  mp_value_t *v;
  MP_ASSERT_OK(mp_value_create(&v, 'l', NULL, given));
  MP_ASSERT_OK(mp_lock_close(given)); /* the Value holds the only reference now */
  header_t *h = (header_t *)v;
  T_ASSERT(h->lock == given, "the header's layout");
  mp_test_forge(_i, &h->lock, &other, sizeof other);
  int rc = mp_value_close(v);
  mp_lock_t *next;
  MP_ASSERT_OK(mp_lock_create(&next));
  T_ASSERT(next != other,
           "a child wrote a Value's lock word to the parent's other Lock: mp_value_close "
           "returned %s and freed that Lock, whose block the next mp_lock_create took (%p)",
           mp_err_name(rc), (void *)next);
  MP_ASSERT_OK(mp_lock_acquire(other, 0));
  MP_ASSERT_OK(mp_lock_release(other));
  mp_lock_close(next);
  mp_lock_close(other);
}
END_TEST

/*
 * Review rev-heap: the mutex of a Value's own RLock sits in the Value's block, and its owner
 * word is any process's to write. Written to a thread id that no thread has (above any
 * pid_max: no robust-list death will ever release it), the parent's next accessor waits for
 * ever (MP_FOREVER), where view_of's checks promise MP_ECORRUPT for a wild Value and the
 * rules that a wild word never hangs the parent. (The allocator's lock does the same:
 * test_heap's test_wild_arena_lock_word.)
 */
static mp_value_t *rev_value;
static int rev_set(void) {
  int rc = mp_value_set_long(rev_value, 1);
  return rc == 0 ? 0 : rc == MP_ECORRUPT ? 1 : 2;
}

START_TEST(test_wild_inner_lock_owner) {
  MP_ASSERT_OK(mp_value_create(&rev_value, 'l', NULL, NULL));
  char *lock = (char *)mp_value_get_lock(rev_value);
  int kind = 128 | 16; /* glibc: PTHREAD_MUTEX_PSHARED_BIT | PTHREAD_MUTEX_ROBUST_NORMAL_NP */
  size_t at = mp_test_find_bytes(lock, 56, 4, &kind, sizeof kind);
  T_ASSERT(at == 16 + 16, "the mutex's kind word at %zu of the lock (glibc's layout)", at);
  uint32_t wild_owner = 0x3ffffff0u;
  mp_test_forge(_i, lock + at - 16, &wild_owner, sizeof wild_owner);
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork");
  if (pid == 0) {
    alarm(0);
    _exit(rev_set());
  }
  mp_test_track_pid(pid);
  int status = 0;
  double until = mp_test_now() + 5 * mp_test_slowdown();
  pid_t got;
  while ((got = waitpid(pid, &status, WNOHANG)) == 0 && mp_test_now() < until)
    mp_test_sleep(0.01);
  if (got == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++)
    if (mp_test_pids[i] == pid)
      mp_test_pids[i] = 0;
  memset(lock + at - 16, 0, 4);
  mp_value_close(rev_value);
  T_ASSERT(got != 0 && WIFEXITED(status),
           "mp_value_set_long, the owner word of the Value's lock written by a child: %s %d",
           got == 0 ? "hung for 5 s," : WIFSIGNALED(status) ? "killed by signal" : "exit",
           got == 0 ? 0 : WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}
END_TEST

static Suite *sharedctypes_suite(void) {
  Suite *s = suite_create("sharedctypes");
  TCase *tc = mp_test_tcase(s, "types", 20);
  tcase_add_test(tc, test_integer_typecodes);
  tcase_add_test(tc, test_float_typecodes);
  tcase_add_test(tc, test_raw_elements);
  tcase_add_test(tc, test_array_elements);
  tcase_add_test(tc, test_bad_input);
  tcase_add_test(tc, test_add_wraps);
  tcase_add_test(tc, test_array_empty_and_double_add);
  tcase_add_test(tc, test_given_lock);
  tcase_add_test(tc, test_value_with_another_values_lock);
  tc = mp_test_tcase(s, "processes", 60);
  tcase_add_loop_test(tc, test_shared_with_child, 0, N_METHODS);
  tcase_add_loop_test(tc, test_race_processes, 0, N_METHODS);
  tcase_add_test(tc, test_race_threads);
  tcase_add_loop_test(tc, test_value_lock_holder_killed, 0, N_METHODS);
  tcase_add_loop_test(tc, test_wild_header, 0, N_METHODS);
  tcase_add_loop_test(tc, test_redirected_lock_freed_by_close, 0, N_METHODS);
  tcase_add_loop_test(tc, test_wild_inner_lock_owner, 0, N_METHODS);
  return s;
}

MP_TEST_MAIN(sharedctypes_suite)
