/*
 * Check suite of the queues layer: Queue, SimpleQueue and JoinableQueue under each start
 * method, through the public header.
 *
 * Children get queue handles inside their argument bytes (the arena is at the same address
 * in every process) and report through their exit code: 0 for success, a distinct number
 * for each check that failed in the child.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "mp_test.h"

/* ===================================================================================== */
/* Helpers usable in the test process and in children (no Check calls).                 */

static uint64_t fnv1a(const unsigned char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

/* A message that names its producer and number and whose bytes can be checked: a header,
 * then a length and a pattern that follow from both. */
typedef struct {
  uint32_t producer;
  uint32_t seq;
} tag_t;

#define MSG_MAX 600

static size_t msg_len(tag_t tag) {
  return sizeof tag + (tag.seq * 7u + tag.producer * 13u) % (MSG_MAX - sizeof tag);
}

static size_t msg_make(tag_t tag, unsigned char *buf) {
  size_t len = msg_len(tag);
  memcpy(buf, &tag, sizeof tag);
  for (size_t i = sizeof tag; i < len; i++)
    buf[i] = (unsigned char)(tag.seq + tag.producer * 31u + i);
  return len;
}

static bool msg_valid(const unsigned char *buf, size_t len, tag_t *tag) {
  if (len < sizeof *tag)
    return false;
  memcpy(tag, buf, sizeof *tag);
  unsigned char want[MSG_MAX];
  return msg_len(*tag) == len && msg_make(*tag, want) == len && memcmp(want, buf, len) == 0;
}

static char *make_temp_file(void) {
  char *path = strdup("/tmp/libmp-queue-test-XXXXXX");
  int fd = mkstemp(path);
  if (fd >= 0)
    close(fd);
  return path;
}

static bool file_nonempty(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && st.st_size > 0;
}

static bool wait_file(const char *path, double timeout) {
  double end = mp_test_now() + timeout;
  while (!file_nonempty(path)) {
    if (mp_test_now() > end)
      return false;
    mp_test_sleep(0.002);
  }
  return true;
}

/* ===================================================================================== */
/* Targets.                                                                              */

typedef struct {
  mp_queue_t *q;
  mp_queue_t *out;
  uint32_t id;
  uint32_t count;
  char path[64];
} job_t;

/* Puts count tagged messages. */
static int t_producer(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  unsigned char buf[MSG_MAX];
  for (uint32_t i = 0; i < job->count; i++) {
    tag_t tag = {job->id, i};
    if (mp_queue_put(job->q, buf, msg_make(tag, buf), MP_FOREVER) != 0)
      return 2;
  }
  return 0;
}

/* Gets until the queue is closed and drained, checks each message, forwards its tag. */
static int t_consumer(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  unsigned char buf[MSG_MAX];
  for (;;) {
    size_t len = 0;
    int rc = mp_queue_get(job->q, buf, sizeof buf, &len, MP_FOREVER);
    if (rc == MP_ECLOSED)
      return 0;
    tag_t tag;
    if (rc != 0)
      return 2;
    if (!msg_valid(buf, len, &tag))
      return 3;
    if (mp_queue_put(job->out, &tag, sizeof tag, MP_FOREVER) != 0)
      return 4;
  }
}

/* Starts a process for a job, registered for cleanup. */
static mp_process_t *start_job(int method, mp_target_t target, const job_t *job) {
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(method), target, job, sizeof *job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  return p;
}

static void join_ok(mp_process_t *p) {
  T_INT_EQ(mp_test_join_code(p, 30), 0);
  T_PROC_CLOSE(p);
}

/* ===================================================================================== */
/* One process.                                                                          */

START_TEST(test_put_get_in_order) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  T_INT_EQ(mp_queue_empty(q), 1);
  T_INT_EQ(mp_queue_full(q), 0);
  unsigned char buf[MSG_MAX], got[MSG_MAX];
  for (uint32_t i = 0; i < 1000; i++)
    MP_ASSERT_OK(mp_queue_put_nowait(q, buf, msg_make((tag_t){1, i}, buf)));
  T_INT_EQ(mp_queue_qsize(q), 1000);
  T_INT_EQ(mp_queue_empty(q), 0);
  for (uint32_t i = 0; i < 1000; i++) {
    size_t len = 0;
    tag_t tag;
    MP_ASSERT_OK(mp_queue_get_nowait(q, got, sizeof got, &len));
    T_ASSERT(msg_valid(got, len, &tag) && tag.seq == i, "message %u is wrong", i);
  }
  size_t len = 0;
  MP_ASSERT_ERR(mp_queue_get_nowait(q, got, sizeof got, &len), MP_EEMPTY);
  T_INT_EQ(mp_queue_qsize(q), 0);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* Many laps around a small ring, so that records and messages wrap at its end. */
START_TEST(test_wrap_around) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create_sized(&q, 0, 4096));
  unsigned char buf[MSG_MAX], got[MSG_MAX];
  uint32_t put = 0, taken = 0;
  while (taken < 5000) {
    while (put < 5000 && mp_queue_put_nowait(q, buf, msg_make((tag_t){2, put}, buf)) == 0)
      put++;
    size_t len = 0;
    tag_t tag;
    MP_ASSERT_OK(mp_queue_get_nowait(q, got, sizeof got, &len));
    T_ASSERT(msg_valid(got, len, &tag) && tag.seq == taken, "message %u is wrong", taken);
    taken++;
  }
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

START_TEST(test_empty_and_small_buffer) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  MP_ASSERT_OK(mp_queue_put(q, NULL, 0, 0)); /* Python allows empty messages: so do we */
  MP_ASSERT_OK(mp_queue_put(q, "hello", 5, 0));
  size_t len = 99;
  MP_ASSERT_OK(mp_queue_get(q, NULL, 0, &len, 0));
  T_INT_EQ(len, 0);
  char small[3];
  MP_ASSERT_ERR(mp_queue_get(q, small, sizeof small, &len, 0), MP_ETOOSMALL);
  T_INT_EQ(len, 5);
  T_INT_EQ(mp_queue_qsize(q), 1); /* kept */
  void *whole = NULL;
  MP_ASSERT_OK(mp_queue_get_alloc(q, &whole, &len, 0));
  T_ASSERT(len == 5 && memcmp(whole, "hello", 5) == 0, "get_alloc gave %zu bytes", len);
  free(whole);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

START_TEST(test_maxsize_full_empty_timeouts) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 2));
  MP_ASSERT_OK(mp_queue_put(q, "a", 1, 0));
  MP_ASSERT_OK(mp_queue_put(q, "b", 1, 0));
  T_INT_EQ(mp_queue_full(q), 1);
  MP_ASSERT_ERR(mp_queue_put_nowait(q, "c", 1), MP_EFULL);
  double t0 = mp_test_now();
  MP_ASSERT_ERR(mp_queue_put(q, "c", 1, 0.1), MP_EFULL);
  double waited = mp_test_now() - t0;
  T_ASSERT(waited >= 0.099 && waited < 5, "put(0.1) on a full queue took %.3f s", waited);
  char c;
  size_t len;
  MP_ASSERT_OK(mp_queue_get(q, &c, 1, &len, 0));
  MP_ASSERT_OK(mp_queue_get(q, &c, 1, &len, 0));
  T_INT_EQ(c, 'b');
  t0 = mp_test_now();
  MP_ASSERT_ERR(mp_queue_get(q, &c, 1, &len, 0.1), MP_EEMPTY);
  waited = mp_test_now() - t0;
  T_ASSERT(waited >= 0.099 && waited < 5, "get(0.1) on an empty queue took %.3f s", waited);
  MP_ASSERT_ERR(mp_queue_get(q, &c, 1, &len, -1), MP_EEMPTY);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* A ring of 4 KiB holds no more than its bytes, also without maxsize. */
START_TEST(test_ring_bytes_bound) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create_sized(&q, 0, 4096));
  char block[500] = {0};
  int n = 0;
  while (mp_queue_put_nowait(q, block, sizeof block) == 0)
    n++;
  T_ASSERT(n >= 7 && n <= 8, "%d messages of 500 bytes in 4 KiB", n);
  T_INT_EQ(mp_queue_full(q), 0); /* full() counts messages, as in Python */
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* A queue without maxsize takes what its first ring cannot hold: the ring grows. */
START_TEST(test_ring_grows) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  unsigned char buf[MSG_MAX], got[MSG_MAX];
  for (uint32_t i = 0; i < 20000; i++) /* about 6 MB */
    MP_ASSERT_OK(mp_queue_put_nowait(q, buf, msg_make((tag_t){3, i}, buf)));
  T_INT_EQ(mp_queue_qsize(q), 20000);
  for (uint32_t i = 0; i < 20000; i++) {
    size_t len = 0;
    tag_t tag;
    MP_ASSERT_OK(mp_queue_get_nowait(q, got, sizeof got, &len));
    T_ASSERT(msg_valid(got, len, &tag) && tag.seq == i, "message %u is wrong", i);
  }
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

typedef struct {
  mp_queue_t *q, *out;
  uint32_t id;
} thread_job_t;

static void *thread_producer(void *arg) {
  thread_job_t *job = arg;
  unsigned char buf[MSG_MAX];
  for (uint32_t i = 0; i < 3000; i++)
    if (mp_queue_put(job->q, buf, msg_make((tag_t){job->id, i}, buf), MP_FOREVER) != 0)
      return (void *)1;
  return NULL;
}

static void *thread_consumer(void *arg) {
  job_t job = {.q = ((thread_job_t *)arg)->q, .out = ((thread_job_t *)arg)->out};
  return t_consumer(&job, sizeof job) == 0 ? NULL : (void *)2;
}

/* Every tag of producers x count must come from out exactly once, then nothing more; in
 * each producer's order if ordered (one consumer forwarded them). */
static void expect_tags(mp_queue_t *out, uint32_t producers, uint32_t count, bool ordered) {
  uint8_t *seen = calloc((size_t)producers * count, 1);
  uint32_t *next = calloc(producers, sizeof *next);
  tag_t tag;
  size_t len;
  for (uint32_t k = 0; k < producers * count; k++) {
    MP_ASSERT_OK(mp_queue_get(out, &tag, sizeof tag, &len, 30));
    T_ASSERT(len == sizeof tag && tag.producer < producers && tag.seq < count &&
                 !seen[(size_t)tag.producer * count + tag.seq]++,
             "tag %u/%u twice or bad", tag.producer, tag.seq);
    T_ASSERT(!ordered || tag.seq == next[tag.producer], "producer %u: %u where %u was due",
             tag.producer, tag.seq, next[tag.producer]);
    next[tag.producer] = tag.seq + 1;
  }
  MP_ASSERT_ERR(mp_queue_get(out, &tag, sizeof tag, &len, 0.05), MP_EEMPTY);
  free(seen);
  free(next);
}

START_TEST(test_threads) {
  mp_queue_t *q, *out;
  MP_ASSERT_OK(mp_queue_create_sized(&q, 0, 8192));
  MP_ASSERT_OK(mp_queue_create(&out, 0));
  pthread_t prod[2], cons[2];
  thread_job_t jobs[2] = {{q, out, 0}, {q, out, 1}};
  for (int i = 0; i < 2; i++) {
    T_INT_EQ(pthread_create(&prod[i], NULL, thread_producer, &jobs[i]), 0);
    T_INT_EQ(pthread_create(&cons[i], NULL, thread_consumer, &jobs[i]), 0);
  }
  void *result;
  for (int i = 0; i < 2; i++) {
    T_INT_EQ(pthread_join(prod[i], &result), 0);
    T_ASSERT(result == NULL, "a producer thread failed");
  }
  MP_ASSERT_OK(mp_queue_close(q));
  for (int i = 0; i < 2; i++) {
    T_INT_EQ(pthread_join(cons[i], &result), 0);
    T_ASSERT(result == NULL, "a consumer thread failed");
  }
  expect_tags(out, 2, 3000, false); /* two consumers interleave their forwarding */
  MP_ASSERT_OK(mp_queue_free(q));
  MP_ASSERT_OK(mp_queue_free(out));
}
END_TEST

/* ===================================================================================== */
/* Across processes.                                                                     */

/* Three producer processes, the test process consumes: each producer's order holds. */
START_TEST(test_order_per_producer) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create_sized(&q, 0, 16384));
  mp_process_t *p[3];
  for (uint32_t i = 0; i < 3; i++)
    p[i] = start_job(_i, t_producer, &(job_t){.q = q, .id = i, .count = 2000});
  uint32_t next[3] = {0};
  unsigned char buf[MSG_MAX];
  for (int k = 0; k < 6000; k++) {
    size_t len;
    tag_t tag;
    MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 30));
    T_ASSERT(msg_valid(buf, len, &tag) && tag.producer < 3, "a bad message");
    T_ASSERT(tag.seq == next[tag.producer], "producer %u: %u where %u was due", tag.producer,
             tag.seq, next[tag.producer]);
    next[tag.producer]++;
  }
  for (int i = 0; i < 3; i++)
    join_ok(p[i]);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* Three producers, three consumers: every message once, checked by content. */
/* A producer puts 6 MB that nobody takes yet, and ends: its puts never waited, and its
 * messages stay (no feeder thread to flush); the ring grew in its process, seen here. */
START_TEST(test_growth_across_processes) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  job_t job = {.q = q, .id = 0, .count = 20000};
  join_ok(start_job(_i, t_producer, &job));
  T_INT_EQ(mp_queue_qsize(q), 20000);
  /* Consumers in two processes, while the ring grows further under a second producer. */
  mp_queue_t *out;
  MP_ASSERT_OK(mp_queue_create(&out, 0));
  mp_process_t *cons = start_job(_i, t_consumer, &(job_t){.q = q, .out = out});
  mp_process_t *prod = start_job(_i, t_producer, &(job_t){.q = q, .id = 1, .count = 20000});
  join_ok(prod);
  MP_ASSERT_OK(mp_queue_close(q));
  join_ok(cons);
  expect_tags(out, 2, 20000, true);
  MP_ASSERT_OK(mp_queue_free(q));
  MP_ASSERT_OK(mp_queue_free(out));
}
END_TEST

START_TEST(test_many_to_many) {
  mp_queue_t *q, *out;
  MP_ASSERT_OK(mp_queue_create_sized(&q, 0, 16384));
  MP_ASSERT_OK(mp_queue_create(&out, 0));
  mp_process_t *prod[3], *cons[3];
  for (uint32_t i = 0; i < 3; i++) {
    cons[i] = start_job(_i, t_consumer, &(job_t){.q = q, .out = out});
    prod[i] = start_job(_i, t_producer, &(job_t){.q = q, .id = i, .count = 1500});
  }
  for (int i = 0; i < 3; i++)
    join_ok(prod[i]);
  MP_ASSERT_OK(mp_queue_close(q));
  for (int i = 0; i < 3; i++)
    join_ok(cons[i]);
  expect_tags(out, 3, 1500, false);
  MP_ASSERT_OK(mp_queue_free(q));
  MP_ASSERT_OK(mp_queue_free(out));
}
END_TEST

#define BIG ((size_t)64 << 20)

typedef struct {
  mp_queue_t *q, *back;
  uint64_t hash;
} big_job_t;

/* Takes the 64 MiB message, checks it, sends it back. */
static int t_big_echo(void *arg, size_t size) {
  big_job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  void *buf = NULL;
  size_t len = 0;
  if (mp_queue_get_alloc(job->q, &buf, &len, 30) != 0)
    return 2;
  int rc = len != BIG ? 3 : fnv1a(buf, len) != job->hash ? 4 : 0;
  if (rc == 0 && mp_queue_put(job->back, buf, len, 30) != 0)
    rc = 5;
  free(buf);
  return rc;
}

START_TEST(test_64mib_message) {
  big_job_t job;
  MP_ASSERT_OK(mp_queue_create_sized(&job.q, 0, 65536));
  MP_ASSERT_OK(mp_queue_create_sized(&job.back, 0, 4096));
  unsigned char *big = malloc(BIG);
  T_ASSERT(big != NULL, "malloc");
  for (size_t i = 0; i < BIG; i++)
    big[i] = (unsigned char)(i * 2654435761u >> 13);
  job.hash = fnv1a(big, BIG);
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_big_echo, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_OK(mp_queue_put(job.q, big, BIG, 30));
  memset(big, 0, BIG);
  size_t len = 0;
  MP_ASSERT_ERR(mp_queue_get(job.back, big, 100, &len, 30), MP_ETOOSMALL);
  T_INT_EQ(len, BIG);
  MP_ASSERT_OK(mp_queue_get(job.back, big, BIG, &len, 30));
  T_ASSERT(len == BIG && fnv1a(big, BIG) == job.hash, "the echo differs");
  join_ok(p);
  free(big);
  MP_ASSERT_OK(mp_queue_free(job.q));
  MP_ASSERT_OK(mp_queue_free(job.back));
}
END_TEST

/* The seed lecture's producer and consumer: squares until the poison pill -1. */
typedef struct {
  mp_queue_t *q, *results;
} pill_job_t;

static int t_creator(void *arg, size_t size) {
  pill_job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  const int data[] = {5, 10, 13, 4, 3, -1};
  for (size_t i = 0; i < 6; i++)
    if (mp_queue_put(job->q, &data[i], sizeof data[i], MP_FOREVER) != 0)
      return 2;
  return 0;
}

static int t_squarer(void *arg, size_t size) {
  pill_job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  for (;;) {
    int x;
    size_t len;
    if (mp_queue_get(job->q, &x, sizeof x, &len, MP_FOREVER) != 0 || len != sizeof x)
      return 2;
    if (x == -1) /* the poison pill */
      return 0;
    int square = x * x;
    if (mp_queue_put(job->results, &square, sizeof square, MP_FOREVER) != 0)
      return 3;
  }
}

START_TEST(test_poison_pill) {
  pill_job_t job;
  MP_ASSERT_OK(mp_queue_create(&job.q, 0));
  MP_ASSERT_OK(mp_queue_create(&job.results, 0));
  mp_process_t *creator, *consumer;
  T_PROC_NEW(&consumer, mp_test_ctx(_i), t_squarer, &job, sizeof job, "consumer");
  T_PROC_NEW(&creator, mp_test_ctx(_i), t_creator, &job, sizeof job, "creator");
  MP_ASSERT_OK(mp_process_start(consumer));
  MP_ASSERT_OK(mp_process_start(creator));
  /* Joining a producer whose items nobody took yet cannot hang: no feeder thread. */
  join_ok(creator);
  join_ok(consumer);
  const int want[] = {25, 100, 169, 16, 9};
  for (int i = 0; i < 5; i++) {
    int got;
    size_t len;
    MP_ASSERT_OK(mp_queue_get_nowait(job.results, &got, sizeof got, &len));
    T_INT_EQ(got, want[i]);
  }
  T_INT_EQ(mp_queue_empty(job.results), 1);
  MP_ASSERT_OK(mp_queue_free(job.q));
  MP_ASSERT_OK(mp_queue_free(job.results));
}
END_TEST

/* Blocks in a get or a put of the queue (full with maxsize 1) until it is closed. */
static int t_blocked_until_closed(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  char c;
  size_t len;
  int get = mp_queue_get(job->q, &c, 1, &len, MP_FOREVER);
  int put = mp_queue_put(job->out, "x", 1, MP_FOREVER);
  return get == MP_ECLOSED && put == MP_ECLOSED ? 0 : 2;
}

START_TEST(test_close) {
  mp_queue_t *q, *full;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  MP_ASSERT_OK(mp_queue_create(&full, 1));
  MP_ASSERT_OK(mp_queue_put(full, "f", 1, 0));
  mp_process_t *p = start_job(_i, t_blocked_until_closed, &(job_t){.q = q, .out = full});
  MP_ASSERT_ERR(mp_process_join(p, 0.2), MP_ETIMEDOUT);
  MP_ASSERT_OK(mp_queue_close(q));
  MP_ASSERT_OK(mp_queue_close(full));
  join_ok(p);
  /* Messages put before the close are still taken; then ECLOSED, at once, forever. */
  mp_queue_t *r;
  MP_ASSERT_OK(mp_queue_create(&r, 0));
  MP_ASSERT_OK(mp_queue_put(r, "1", 1, 0));
  MP_ASSERT_OK(mp_queue_close(r));
  MP_ASSERT_OK(mp_queue_close(r));
  MP_ASSERT_ERR(mp_queue_put(r, "2", 1, MP_FOREVER), MP_ECLOSED);
  char c;
  size_t len;
  MP_ASSERT_OK(mp_queue_get(r, &c, 1, &len, MP_FOREVER));
  T_INT_EQ(c, '1');
  MP_ASSERT_ERR(mp_queue_get(r, &c, 1, &len, MP_FOREVER), MP_ECLOSED);
  MP_ASSERT_ERR(mp_queue_get_nowait(r, &c, 1, &len), MP_ECLOSED);
  MP_ASSERT_OK(mp_queue_free(q));
  MP_ASSERT_OK(mp_queue_free(full));
  MP_ASSERT_OK(mp_queue_free(r));
}
END_TEST

/* ===================================================================================== */
/* Readiness fd.                                                                          */

static int poll_in(int fd, int timeout_ms) {
  struct pollfd pfd = {.fd = fd, .events = POLLIN};
  int n;
  do
    n = poll(&pfd, 1, timeout_ms);
  while (n < 0 && errno == EINTR);
  return n;
}

static int t_put_one(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  return mp_queue_put(job->q, "from child", 10, 10) == 0 ? 0 : 2;
}

START_TEST(test_fileno_in_parent) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  MP_ASSERT_OK(mp_queue_put(q, "early", 5, 0));
  int fd = mp_queue_fileno(q);
  T_ASSERT(fd >= 0, "fileno %d", fd);
  T_INT_EQ(mp_queue_fileno(q), fd);
  T_INT_EQ(poll_in(fd, 5000), 1); /* put before the fd existed: readable at once */
  char buf[16];
  size_t len;
  MP_ASSERT_OK(mp_queue_get_nowait(q, buf, sizeof buf, &len));
  MP_ASSERT_ERR(mp_queue_get_nowait(q, buf, sizeof buf, &len), MP_EEMPTY);
  T_INT_EQ(poll_in(fd, 50), 0); /* the empty get cleared it */
  mp_process_t *p = start_job(_i, t_put_one, &(job_t){.q = q});
  T_INT_EQ(poll_in(fd, 10000), 1);
  MP_ASSERT_OK(mp_queue_get_nowait(q, buf, sizeof buf, &len));
  T_ASSERT(len == 10 && memcmp(buf, "from child", 10) == 0, "the child's message");
  join_ok(p);
  MP_ASSERT_ERR(mp_queue_get_nowait(q, buf, sizeof buf, &len), MP_EEMPTY);
  T_INT_EQ(poll_in(fd, 50), 0);
  MP_ASSERT_OK(mp_queue_close(q));
  T_INT_EQ(poll_in(fd, 5000), 1);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* Gets a queue handle that did not exist when it started, polls its fd, takes a message. */
static int t_poll_later_queue(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  mp_queue_t *later;
  size_t len;
  if (mp_queue_get(job->q, &later, sizeof later, &len, 30) != 0 || len != sizeof later)
    return 2;
  int fd = mp_queue_fileno(later);
  if (fd < 0)
    return 3;
  if (mp_queue_put(job->out, "polling", 7, 10) != 0)
    return 4;
  if (poll_in(fd, 30000) != 1)
    return 5;
  char buf[16];
  if (mp_queue_get_nowait(later, buf, sizeof buf, &len) != 0 || len != 4 ||
      memcmp(buf, "ring", 4) != 0)
    return 6;
  if (mp_queue_get_nowait(later, buf, sizeof buf, &len) != MP_EEMPTY || poll_in(fd, 0) != 0)
    return 7;
  return mp_queue_free(later) == 0 ? 0 : 8;
}

/* A child that polls the queue it will be handed (t_poll_later_queue), with the control
 * queues to hand it over. */
typedef struct {
  mp_process_t *proc;
  mp_queue_t *ctl, *back;
} poller_t;

static poller_t start_poller(int method) {
  poller_t p;
  MP_ASSERT_OK(mp_queue_create(&p.ctl, 0));
  MP_ASSERT_OK(mp_queue_create(&p.back, 0));
  p.proc = start_job(method, t_poll_later_queue, &(job_t){.q = p.ctl, .out = p.back});
  return p;
}

/* Hands q to the poller (retained for it), waits until it polls, puts the message that
 * must wake it, and joins it. */
static void ring_poller(poller_t p, mp_queue_t *q) {
  MP_ASSERT_OK(mp_queue_retain(q)); /* the child's reference */
  MP_ASSERT_OK(mp_queue_put(p.ctl, &q, sizeof q, 0));
  char buf[16];
  size_t len;
  MP_ASSERT_OK(mp_queue_get(p.back, buf, sizeof buf, &len, 30));
  mp_test_sleep(0.05); /* let it reach poll() (either way it must see the ring) */
  MP_ASSERT_OK(mp_queue_put(q, "ring", 4, 0));
  join_ok(p.proc); /* it was woken and took the message */
  MP_ASSERT_OK(mp_queue_free(p.ctl));
  MP_ASSERT_OK(mp_queue_free(p.back));
}

START_TEST(test_fileno_in_child_for_later_queue) {
  poller_t p = start_poller(_i);
  mp_queue_t *later;
  MP_ASSERT_OK(mp_queue_create(&later, 0)); /* after the child started */
  ring_poller(p, later);
  MP_ASSERT_OK(mp_queue_free(later));
}
END_TEST

/* A child polls the queue beside the parent, with a doorbell of its own (a forked child
 * drops its copy of the parent's): a put rings both. */
START_TEST(test_fileno_in_two_processes) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  int fd = mp_queue_fileno(q);
  T_ASSERT(fd >= 0, "fileno %d", fd);
  ring_poller(start_poller(_i), q);
  T_INT_EQ(poll_in(fd, 5000), 1);
  char buf[16];
  size_t len;
  MP_ASSERT_ERR(mp_queue_get_nowait(q, buf, sizeof buf, &len), MP_EEMPTY);
  T_INT_EQ(poll_in(fd, 50), 0);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* Makes a doorbell for the queue and ends without releasing it. */
static int t_poll_and_leave(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  return mp_queue_fileno(job->q) >= 0 ? 0 : 2;
}

/* More processes than the queue has doorbell slots poll it and end: the slots of the dead
 * are found (their names refuse a ring) and reused. */
START_TEST(test_dead_pollers_dropped) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  for (int k = 0; k < 70; k++)
    join_ok(start_job(_i, t_poll_and_leave, &(job_t){.q = q}));
  int fd = mp_queue_fileno(q);
  T_ASSERT(fd >= 0, "fileno after 70 dead pollers: %d", fd);
  MP_ASSERT_OK(mp_queue_put(q, "x", 1, 0));
  T_INT_EQ(poll_in(fd, 5000), 1);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* ===================================================================================== */
/* Deaths.                                                                                */

START_TEST(test_consumer_killed_while_blocked) {
  mp_queue_t *q, *out;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  MP_ASSERT_OK(mp_queue_create(&out, 0));
  mp_process_t *victim = start_job(_i, t_consumer, &(job_t){.q = q, .out = out});
  MP_ASSERT_ERR(mp_process_join(victim, 0.2), MP_ETIMEDOUT); /* blocked in get */
  MP_ASSERT_OK(mp_process_kill(victim));
  T_INT_EQ(mp_test_join_code(victim, 10), -SIGKILL);
  T_PROC_CLOSE(victim);
  mp_process_t *cons = start_job(_i, t_consumer, &(job_t){.q = q, .out = out});
  mp_process_t *prod = start_job(_i, t_producer, &(job_t){.q = q, .id = 0, .count = 500});
  join_ok(prod);
  expect_tags(out, 1, 500, true);
  MP_ASSERT_OK(mp_queue_close(q));
  join_ok(cons);
  MP_ASSERT_OK(mp_queue_free(q));
  MP_ASSERT_OK(mp_queue_free(out));
}
END_TEST

/*
 * A put or get that dies in its copy, deterministically: the message (or the receiving
 * buffer) has a PROT_NONE page in its middle, so the copy faults there; the handler writes
 * the job's file (so the test knows the process is inside the call, holding the lock) and
 * waits for the SIGKILL.
 */
static char g_fault_path[64];

static void on_fault(int sig) {
  (void)sig;
  int fd = open(g_fault_path, O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd >= 0) {
    if (write(fd, "in copy\n", 8) != 8) {
    }
    close(fd);
  }
  for (;;)
    pause();
}

/* A buffer of len bytes whose page at len / 2 cannot be touched. */
static unsigned char *trap_buffer(size_t len) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE), span = (len + 2 * page) & ~(page - 1);
  unsigned char *buf =
      mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED)
    return NULL;
  memset(buf, 'm', span);
  if (mprotect(buf + ((len / 2) & ~(page - 1)), page, PROT_NONE) != 0)
    return NULL;
  return buf;
}

static int arm_fault(const char *path) {
  memcpy(g_fault_path, path, sizeof g_fault_path);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_fault;
  sigemptyset(&sa.sa_mask);
  return sigaction(SIGSEGV, &sa, NULL);
}

/* Puts a good message, then dies in the copy of a second one of count bytes. */
static int t_die_in_put(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job || arm_fault(job->path) != 0)
    return 90;
  if (mp_queue_put(job->q, "before", 6, 10) != 0)
    return 2;
  unsigned char *trap = trap_buffer(job->count);
  if (!trap)
    return 3;
  mp_queue_put(job->q, trap, job->count, 10);
  return 4; /* not reached: the copy faults */
}

/* A child of q (under start method `method`) running die_in (t_die_in_put, t_die_in_get)
 * with count bytes, once it is stuck in its copy (in its fault handler, alive), holding the
 * side's lock. */
static mp_process_t *stuck_in_copy(int method, mp_target_t die_in, mp_queue_t *q,
                                   uint32_t count) {
  job_t job = {.q = q, .count = count};
  char *path = make_temp_file();
  snprintf(job.path, sizeof job.path, "%s", path);
  mp_process_t *child = start_job(method, die_in, &job);
  bool stuck = wait_file(path, 20);
  unlink(path);
  free(path);
  T_ASSERT(stuck, "the child never reached its copy");
  return child;
}

/* The same, killed there and reaped. */
static void kill_in_copy(int method, mp_target_t die_in, mp_queue_t *q, uint32_t count) {
  mp_process_t *victim = stuck_in_copy(method, die_in, q, count);
  MP_ASSERT_OK(mp_process_kill(victim));
  T_INT_EQ(mp_test_join_code(victim, 10), -SIGKILL);
  T_PROC_CLOSE(victim);
}

START_TEST(test_producer_killed_mid_put) {
  /* Inline (a quarter of the ring's eighth) and spilled (2 MiB) messages. */
  const uint32_t sizes[] = {20000, 2u << 20};
  for (int k = 0; k < 2; k++) {
    mp_queue_t *q;
    MP_ASSERT_OK(mp_queue_create(&q, 0));
    kill_in_copy(_i, t_die_in_put, q, sizes[k]);
    /* The lock it held is recovered, its half message dropped, the others carry on. */
    MP_ASSERT_OK(mp_queue_put(q, "after", 5, 5));
    mp_process_t *prod = start_job(_i, t_put_one, &(job_t){.q = q});
    join_ok(prod);
    char buf[16];
    size_t len;
    MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 5));
    T_ASSERT(len == 6 && memcmp(buf, "before", 6) == 0, "the first message");
    MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 5));
    T_ASSERT(len == 5 && memcmp(buf, "after", 5) == 0, "the second message");
    MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 5));
    T_ASSERT(len == 10 && memcmp(buf, "from child", 10) == 0, "the third message");
    MP_ASSERT_ERR(mp_queue_get_nowait(q, buf, sizeof buf, &len), MP_EEMPTY);
    MP_ASSERT_OK(mp_queue_free(q));
  }
}
END_TEST

/* Whether process pid is a zombie: dead, not yet reaped. */
static bool is_zombie(int pid) {
  char state;
  int ppid;
  return mp_test_proc_state(pid, &state, &ppid) && state == 'Z';
}

/* The lock a producer held when it was killed is taken over while it is still a zombie (its
 * thread id is still taken then): the next put does not wait for the reaping. A child of
 * the fork server is the server's to reap, so there the put only has to be quick. */
START_TEST(test_producer_killed_not_reaped) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  mp_process_t *victim = stuck_in_copy(_i, t_die_in_put, q, 20000);
  MP_ASSERT_OK(mp_process_kill(victim));
  bool ours = strcmp(METHODS[_i], "forkserver") != 0;
  double end = mp_test_now() + 10;
  while (ours && !is_zombie(mp_process_pid(victim)) && mp_test_now() < end)
    mp_test_sleep(0.001);
  bool zombie = !ours || is_zombie(mp_process_pid(victim));
  double t0 = mp_test_now();
  int rc = mp_queue_put(q, "after", 5, 10);
  double took = mp_test_now() - t0;
  T_INT_EQ(mp_test_join_code(victim, 10), -SIGKILL);
  T_PROC_CLOSE(victim);
  T_ASSERT(zombie, "the killed producer never showed as a zombie");
  MP_ASSERT_OK(rc);
  T_ASSERT(took < 2 * mp_test_slowdown(), "the put waited %.3f s for a dead holder", took);
  char buf[16];
  size_t len;
  MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 5));
  T_ASSERT(len == 6 && memcmp(buf, "before", 6) == 0, "the first message");
  MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 5));
  T_ASSERT(len == 5 && memcmp(buf, "after", 5) == 0, "the second message");
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* Dies in the copy of a get into a buffer with a hole. */
static int t_die_in_get(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job || arm_fault(job->path) != 0)
    return 90;
  unsigned char *trap = trap_buffer(job->count);
  size_t len;
  if (!trap)
    return 3;
  mp_queue_get(job->q, trap, job->count, &len, 10);
  return 4;
}

START_TEST(test_consumer_killed_mid_get) {
  const uint32_t sizes[] = {20000, 2u << 20};
  for (int k = 0; k < 2; k++) {
    mp_queue_t *q;
    MP_ASSERT_OK(mp_queue_create(&q, 0));
    unsigned char *msg = malloc(sizes[k]), *got = malloc(sizes[k]);
    for (uint32_t i = 0; i < sizes[k]; i++)
      msg[i] = (unsigned char)(i * 7);
    MP_ASSERT_OK(mp_queue_put(q, msg, sizes[k], 0));
    MP_ASSERT_OK(mp_queue_put(q, "second", 6, 0));
    kill_in_copy(_i, t_die_in_get, q, sizes[k]);
    /* It never returned the message: it is still first, whole. */
    size_t len;
    MP_ASSERT_OK(mp_queue_get(q, got, sizes[k], &len, 5));
    T_ASSERT(len == sizes[k] && memcmp(got, msg, len) == 0, "the message was damaged");
    MP_ASSERT_OK(mp_queue_get(q, got, sizes[k], &len, 5));
    T_ASSERT(len == 6 && memcmp(got, "second", 6) == 0, "the second message");
    MP_ASSERT_OK(mp_queue_free(q));
    free(msg);
    free(got);
  }
}
END_TEST

/* ===================================================================================== */
/* JoinableQueue and SimpleQueue.                                                        */

static int t_worker_done(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  for (uint32_t i = 0; i < job->count; i++) {
    int x;
    size_t len;
    if (mp_queue_get(job->q, &x, sizeof x, &len, 30) != 0 || x != (int)i)
      return 2;
    mp_test_sleep(0.01);
    if (mp_queue_task_done(job->q) != 0)
      return 3;
  }
  return 0;
}

START_TEST(test_joinable) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_joinable_queue_create(&q, 0));
  MP_ASSERT_OK(mp_queue_join(q, 0)); /* nothing put: nothing to wait for */
  for (int i = 0; i < 5; i++)
    MP_ASSERT_OK(mp_queue_put(q, &i, sizeof i, 0));
  double t0 = mp_test_now();
  MP_ASSERT_ERR(mp_queue_join(q, 0.1), MP_ETIMEDOUT);
  T_ASSERT(mp_test_now() - t0 >= 0.099, "join(0.1) returned early");
  mp_process_t *p = start_job(_i, t_worker_done, &(job_t){.q = q, .count = 5});
  MP_ASSERT_OK(mp_queue_join(q, 30));
  T_INT_EQ(mp_queue_empty(q), 1);
  join_ok(p);
  MP_ASSERT_ERR(mp_queue_task_done(q), MP_ETOOMANY);
  mp_queue_t *plain;
  MP_ASSERT_OK(mp_queue_create(&plain, 0));
  MP_ASSERT_ERR(mp_queue_task_done(plain), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_join(plain, 0), MP_EINVAL);
  MP_ASSERT_OK(mp_queue_free(plain));
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

typedef struct {
  mp_simple_queue_t *q;
} simple_job_t;

/* Echoes messages until the queue is closed. */
static int t_simple_echo(void *arg, size_t size) {
  simple_job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  int got = 0;
  for (;;) {
    char buf[32];
    size_t len;
    int rc = mp_simple_queue_get(job->q, buf, sizeof buf, &len);
    if (rc == MP_ECLOSED)
      return got == 3 ? 0 : 2;
    if (rc != 0 || len != 5 || memcmp(buf, "simpl", 5) != 0)
      return 3;
    got++;
  }
}

START_TEST(test_simple_queue) {
  simple_job_t job;
  MP_ASSERT_OK(mp_simple_queue_create(&job.q));
  T_INT_EQ(mp_simple_queue_empty(job.q), 1);
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_simple_echo, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  int fd = mp_simple_queue_fileno(job.q);
  T_ASSERT(fd >= 0, "fileno %d", fd);
  for (int i = 0; i < 3; i++)
    MP_ASSERT_OK(mp_simple_queue_put(job.q, "simpl", 5));
  MP_ASSERT_ERR(mp_process_join(p, 0.1), MP_ETIMEDOUT); /* blocked, waiting for more */
  MP_ASSERT_OK(mp_simple_queue_close(job.q));
  join_ok(p);
  MP_ASSERT_ERR(mp_simple_queue_put(job.q, "x", 1), MP_ECLOSED);
  void *buf = NULL;
  size_t len;
  MP_ASSERT_ERR(mp_simple_queue_get_alloc(job.q, &buf, &len), MP_ECLOSED);
  MP_ASSERT_OK(mp_simple_queue_retain(job.q));
  MP_ASSERT_OK(mp_simple_queue_free(job.q));
  MP_ASSERT_OK(mp_simple_queue_free(job.q));
}
END_TEST

/* A parent frees its handles right after the start: the child's process object holds a
 * reference for it until it is reaped, so the queues live on, and new queues get other
 * blocks meanwhile. */
typedef struct {
  mp_queue_t *q;
  mp_simple_queue_t *sq;
  mp_queue_t *ctl;
} freed_job_t;

static int t_use_freed(void *arg, size_t size) {
  freed_job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  char buf[16];
  size_t len;
  if (mp_queue_get(job->ctl, buf, sizeof buf, &len, 30) != 0) /* the parent has freed */
    return 2;
  if (mp_queue_put(job->q, "child", 5, 5) != 0 ||
      mp_simple_queue_put(job->sq, "simple", 6) != 0)
    return 3;
  if (mp_queue_get(job->q, buf, sizeof buf, &len, 5) != 0 || len != 5 ||
      memcmp(buf, "child", 5) != 0)
    return 4;
  if (mp_simple_queue_get(job->sq, buf, sizeof buf, &len) != 0 || len != 6 ||
      memcmp(buf, "simple", 6) != 0)
    return 5;
  return 0;
}

START_TEST(test_freed_after_start) {
  freed_job_t job;
  MP_ASSERT_OK(mp_queue_create(&job.q, 0));
  MP_ASSERT_OK(mp_simple_queue_create(&job.sq));
  MP_ASSERT_OK(mp_queue_create(&job.ctl, 0));
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_use_freed, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_OK(mp_queue_free(job.q));
  MP_ASSERT_OK(mp_simple_queue_free(job.sq));
  mp_queue_t *other;
  mp_simple_queue_t *other_sq;
  MP_ASSERT_OK(mp_queue_create(&other, 0));
  MP_ASSERT_OK(mp_simple_queue_create(&other_sq));
  T_ASSERT(other != job.q && (void *)other != (void *)job.sq, "a queue's block was reused");
  T_ASSERT((void *)other_sq != (void *)job.q && other_sq != job.sq, "a block was reused");
  MP_ASSERT_OK(mp_queue_put(job.ctl, "go", 2, 0));
  join_ok(p);
  char buf[16];
  size_t len;
  MP_ASSERT_ERR(mp_queue_get_nowait(other, buf, sizeof buf, &len), MP_EEMPTY);
  T_INT_EQ(mp_simple_queue_empty(other_sq), 1);
  MP_ASSERT_OK(mp_queue_free(other));
  MP_ASSERT_OK(mp_simple_queue_free(other_sq));
  MP_ASSERT_OK(mp_queue_free(job.ctl));
}
END_TEST

/* ===================================================================================== */
/* Bad input.                                                                             */

/* mp_wait over a queue and a connection end, in a child of each start method: the queue's
 * kind must be known there (registered before a spawned child's take-over). */
typedef struct {
  mp_queue_t *q;
  mp_conn_t *conn;
} wait_job_t;

static int t_wait_queue_then_pipe(void *arg, size_t size) {
  wait_job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  void *objects[] = {job->q, job->conn};
  bool ready[2];
  if (mp_wait(objects, 2, 30, ready) != 1 || !ready[0] || ready[1])
    return 2;
  char buf[16];
  size_t len;
  if (mp_queue_get_nowait(job->q, buf, sizeof buf, &len) != 0 || len != 5)
    return 3;
  if (mp_conn_send(job->conn, "got q", 5) != 0)
    return 4;
  if (mp_wait(objects, 2, 30, ready) != 1 || ready[0] || !ready[1])
    return 5;
  if (mp_conn_recv(job->conn, buf, sizeof buf, &len, 0) != 0 || len != 4)
    return 6;
  return 0;
}

START_TEST(test_wait_mixed) {
  mp_queue_t *q, *full;
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  MP_ASSERT_OK(mp_queue_create(&full, 0));
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  wait_job_t job = {.q = q, .conn = b};
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_wait_queue_then_pipe, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_OK(mp_conn_close(b)); /* the child's end: its death is then end of file here */

  void *objects[] = {q, a, p, full};
  bool ready[4];
  double start = mp_test_now();
  T_INT_EQ(mp_wait(objects, 3, 0.1, ready), 0);
  T_ASSERT(mp_test_now() - start >= 0.09, "mp_wait returned early");
  MP_ASSERT_OK(mp_queue_put(full, "x", 1, 0));
  T_INT_EQ(mp_wait(objects, 4, 30, ready), 1);
  T_ASSERT(ready[3] && !ready[0] && !ready[1] && !ready[2], "only the non-empty queue");

  MP_ASSERT_OK(mp_queue_put(q, "queue", 5, 0));
  void *from_child[] = {a, p};
  T_INT_EQ(mp_wait(from_child, 2, 30, ready), 1);
  T_ASSERT(ready[0] && !ready[1], "the child's answer, while it runs");
  char buf[16];
  size_t len;
  MP_ASSERT_OK(mp_conn_recv(a, buf, sizeof buf, &len, 0));
  T_ASSERT(len == 5 && memcmp(buf, "got q", 5) == 0, "the child saw the queue first");
  MP_ASSERT_OK(mp_conn_send(a, "pipe", 4));
  void *child[] = {p};
  T_INT_EQ(mp_wait(child, 1, 30, ready), 1);
  T_INT_EQ(mp_test_join_code(p, 30), 0);
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_queue_free(q));
  MP_ASSERT_OK(mp_queue_free(full));
}
END_TEST

START_TEST(test_bad_input) {
  MP_ASSERT_ERR(mp_queue_create(NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_simple_queue_create(NULL), MP_EINVAL);
  mp_queue_t *q;
  MP_ASSERT_ERR(mp_queue_create_sized(&q, 0, (size_t)1 << 30), MP_EINVAL);
  char buf[8];
  size_t len;
  int not_a_queue[64] = {0};
  mp_queue_t *fake = (mp_queue_t *)not_a_queue;
  MP_ASSERT_ERR(mp_queue_put(NULL, "x", 1, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_put(fake, "x", 1, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_get(NULL, buf, sizeof buf, &len, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_get_alloc(NULL, NULL, &len, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_qsize(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_empty(fake), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_full(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_close(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_fileno(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_retain(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_free(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_task_done(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_join(NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_simple_queue_put(NULL, "x", 1), MP_EINVAL);
  MP_ASSERT_ERR(mp_simple_queue_get(NULL, buf, 1, &len), MP_EINVAL);
  MP_ASSERT_ERR(mp_simple_queue_empty(NULL), MP_EINVAL);

  MP_ASSERT_OK(mp_queue_create(&q, 0));
  MP_ASSERT_ERR(mp_queue_put(q, NULL, 1, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_put(q, "x", (size_t)1 << 62, 0), MP_EMSGSIZE);
  MP_ASSERT_OK(mp_queue_put(q, "x", 1, 0));
  MP_ASSERT_ERR(mp_queue_get(q, buf, sizeof buf, NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_get(q, NULL, 1, &len, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_queue_get_alloc(q, NULL, &len, 0), MP_EINVAL);
  T_INT_EQ(mp_queue_qsize(q), 1); /* the bad calls took nothing */
  /* A SimpleQueue is not a Queue, and the other way round. */
  mp_simple_queue_t *sq;
  MP_ASSERT_OK(mp_simple_queue_create(&sq));
  MP_ASSERT_ERR(mp_queue_put((mp_queue_t *)sq, "x", 1, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_simple_queue_put((mp_simple_queue_t *)q, "x", 1), MP_EINVAL);
  MP_ASSERT_OK(mp_simple_queue_free(sq));
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* ===================================================================================== */
/* Use after free: the call aborts, naming itself.                                       */

static void put_after_last_free(void) {
  mp_queue_t *q;
  if (mp_queue_create(&q, 0) == 0 && mp_queue_free(q) == 0)
    mp_queue_put(q, "x", 1, 0);
}

static void simple_free_twice(void) {
  mp_simple_queue_t *q;
  if (mp_simple_queue_create(&q) == 0 && mp_simple_queue_free(q) == 0)
    mp_simple_queue_free(q);
}

static void task_done_after_free(void) {
  mp_queue_t *q;
  if (mp_joinable_queue_create(&q, 0) == 0 && mp_queue_put(q, "x", 1, 0) == 0 &&
      mp_queue_free(q) == 0)
    mp_queue_task_done(q);
}

static int t_return(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

/* The queue lives on (the child's process object holds it until the child is reaped), but
 * this process has given its own reference up. */
static void get_after_free_while_child_holds(void) {
  mp_queue_t *q;
  mp_context_t *ctx;
  mp_process_t *p;
  if (mp_queue_create(&q, 0) < 0 || mp_get_context("fork", &ctx) < 0 ||
      mp_process_create(&p, ctx, t_return, &q, sizeof q, NULL) < 0 || mp_process_start(p) < 0 ||
      mp_queue_free(q) < 0)
    return;
  char buf[8];
  size_t len;
  mp_queue_get(q, buf, sizeof buf, &len, 0);
}

START_TEST(test_use_after_free_aborts) {
  mp_test_expect_abort(put_after_last_free,
                       "libmp: mp_queue_put: queue handle used after mp_queue_free");
  mp_test_expect_abort(simple_free_twice, "libmp: mp_simple_queue_free: queue handle used "
                                          "after mp_simple_queue_free");
  mp_test_expect_abort(task_done_after_free,
                       "libmp: mp_queue_task_done: queue handle used after mp_queue_free");
  mp_test_expect_abort(get_after_free_while_child_holds,
                       "libmp: mp_queue_get: queue handle used after mp_queue_free");
}
END_TEST

/* No false alarm: a process that holds two references frees one and goes on; a handle
 * handed back by a child that retained it for this process is this process's again. */
static int t_hand_back(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  if (mp_queue_retain(job->q) != 0) /* this process's reference, handed over below */
    return 2;
  return mp_queue_put(job->out, &job->q, sizeof job->q, 5) == 0 ? 0 : 3;
}

START_TEST(test_use_after_free_no_false_alarm) {
  mp_queue_t *q, *out;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  MP_ASSERT_OK(mp_queue_create(&out, 0));
  MP_ASSERT_OK(mp_queue_retain(q));
  MP_ASSERT_OK(mp_queue_free(q));
  MP_ASSERT_OK(mp_queue_put(q, "still mine", 10, 0));
  mp_process_t *p = start_job(_i, t_hand_back, &(job_t){.q = q, .out = out});
  MP_ASSERT_OK(mp_queue_free(q)); /* the child's process object holds one */
  mp_queue_t *back = NULL;
  size_t len;
  MP_ASSERT_OK(mp_queue_get(out, &back, sizeof back, &len, 30));
  T_ASSERT(back == q, "the child sent %p back, not %p", (void *)back, (void *)q);
  join_ok(p);
  char buf[16];
  MP_ASSERT_OK(mp_queue_get(back, buf, sizeof buf, &len, 0));
  T_ASSERT(len == 10 && memcmp(buf, "still mine", 10) == 0, "the message put before");
  MP_ASSERT_OK(mp_queue_free(back));
  MP_ASSERT_OK(mp_queue_free(out));
}
END_TEST

/* ===================================================================================== */
/* Another local user (the suite runs as root and becomes nobody in a forked child).     */

#define NOBODY 65534
#define SQUATTED 256

/* Forks a child that becomes another user and runs fn(arg); its pid, tracked. */
static pid_t fork_as_nobody(void (*fn)(void *), void *arg) {
  T_ASSERT(geteuid() == 0, "these tests become another user: run them as root");
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    if (setgid(NOBODY) != 0 || setuid(NOBODY) != 0)
      _exit(91);
    fn(arg);
    _exit(0);
  }
  mp_test_track_pid(pid);
  return pid;
}

static int reap_code(pid_t pid) {
  int status = 0;
  T_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

typedef struct {
  pid_t victim;
  int ready;
} squat_t;

/* Binds the names doorbells had before they were random (libmp-queue-<pid>-<n>, n a small
 * program-wide counter), says how many, and stays. */
static void squat_old_names(void *arg) {
  squat_t *sq = arg;
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < SQUATTED + 64) {
    lim.rlim_cur = lim.rlim_max < SQUATTED + 64 ? lim.rlim_max : SQUATTED + 64;
    setrlimit(RLIMIT_NOFILE, &lim);
  }
  int bound = 0;
  for (unsigned n = 1; n <= SQUATTED; n++) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int len = snprintf(addr.sun_path + 1, sizeof addr.sun_path - 1, "libmp-queue-%u-%u",
                       (unsigned)sq->victim, n);
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (fd >= 0 &&
        bind(fd, (struct sockaddr *)&addr,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)len)) == 0)
      bound++;
  }
  if (write(sq->ready, &bound, sizeof bound) != (ssize_t)sizeof bound)
    _exit(92);
  pause();
}

START_TEST(test_bell_names_not_squattable) {
  int ready[2];
  T_ASSERT(pipe(ready) == 0, "pipe");
  squat_t sq = {getpid(), ready[1]};
  pid_t squatter = fork_as_nobody(squat_old_names, &sq);
  int bound = 0;
  T_ASSERT(read(ready[0], &bound, sizeof bound) == (ssize_t)sizeof bound, "squatter's count");
  T_INT_EQ(bound, SQUATTED);
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  int fd = mp_queue_fileno(q);
  T_ASSERT(fd >= 0, "mp_queue_fileno: %s (%s)", mp_strerror(fd), mp_last_error());
  MP_ASSERT_OK(mp_queue_put(q, "x", 1, 0));
  T_INT_EQ(poll_in(fd, 5000), 1);
  void *objects[] = {q};
  T_INT_EQ(mp_wait(objects, 1, 5, NULL), 1);
  kill(squatter, SIGKILL);
  reap_code(squatter);
  close(ready[0]);
  close(ready[1]);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* The abstract name fd is bound to, from /proc/net/unix (where every user reads it). */
static bool bound_name(int fd, struct sockaddr_un *addr, socklen_t *len) {
  struct stat st;
  FILE *f = fopen("/proc/net/unix", "r");
  if (fstat(fd, &st) != 0 || !f)
    return false;
  char line[512];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    unsigned long inode;
    char path[256];
    if (sscanf(line, "%*s %*s %*s %*s %*s %*s %lu %255s", &inode, path) == 2 &&
        inode == (unsigned long)st.st_ino && path[0] == '@') {
      memset(addr, 0, sizeof *addr);
      addr->sun_family = AF_UNIX;
      size_t n = strlen(path + 1);
      memcpy(addr->sun_path + 1, path + 1, n);
      *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
      found = true;
    }
  }
  fclose(f);
  return found;
}

typedef struct {
  struct sockaddr_un addr;
  socklen_t len;
} target_t;

/* Sends what an attacker might: nothing, a byte, 8 bytes of zeros, of ones, random bytes. */
static void ring_from_outside(void *arg) {
  target_t *t = arg;
  int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
  unsigned char msgs[5][16] = {
      {0}, {'x'}, {0}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}};
  size_t lens[5] = {0, 1, 8, 8, 8};
  for (int i = 0; i < 8; i++)
    msgs[4][i] = (unsigned char)rand();
  for (int i = 0; i < 5; i++)
    if (sendto(fd, msgs[i], lens[i], 0, (struct sockaddr *)&t->addr, t->len) < 0)
      _exit(10 + i); /* every one must reach the socket, to be dropped there */
}

START_TEST(test_bell_ignores_other_users) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  int fd = mp_queue_fileno(q);
  T_ASSERT(fd >= 0, "mp_queue_fileno: %s", mp_last_error());
  target_t t;
  T_ASSERT(bound_name(fd, &t.addr, &t.len), "the doorbell's name in /proc/net/unix");
  T_INT_EQ(reap_code(fork_as_nobody(ring_from_outside, &t)), 0);
  T_INT_EQ(poll_in(fd, 300), 0);
  void *objects[] = {q};
  T_INT_EQ(mp_wait(objects, 1, 0.2, NULL), 0);
  MP_ASSERT_OK(mp_queue_put(q, "x", 1, 0)); /* the program's own ring still works */
  T_INT_EQ(poll_in(fd, 5000), 1);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* ===================================================================================== */
/* Spilled messages and a ring another process wrote into.                              */

/* A spilled message (over an eighth of a 4 KiB ring) whose bytes follow from its number:
 * sizes that grow and shrink, so that a spare block is reused, or found too small. */
#define SPILL_MAX 6000

static size_t spill_make(uint32_t seq, unsigned char *buf) {
  size_t len = 600 + (seq * 997u) % (SPILL_MAX - 600);
  memcpy(buf, &seq, sizeof seq);
  for (size_t i = sizeof seq; i < len; i++)
    buf[i] = (unsigned char)(seq * 31u + i);
  return len;
}

#define N_SPILLED 400

/* Takes N_SPILLED spilled messages and checks each. */
static int t_spill_consumer(void *arg, size_t size) {
  job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  unsigned char buf[SPILL_MAX], want[SPILL_MAX];
  for (uint32_t i = 0; i < N_SPILLED; i++) {
    size_t len = 0;
    if (mp_queue_get(job->q, buf, sizeof buf, &len, 30) != 0)
      return 2;
    if (len != spill_make(i, want) || memcmp(buf, want, len) != 0)
      return 3;
  }
  return 0;
}

/* Spilled messages go to another process through blocks that the queue reuses (spares); the
 * last free gives back the spares and the blocks of messages never taken. */
START_TEST(test_spilled_blocks_reused) {
  job_t job = {0};
  MP_ASSERT_OK(mp_queue_create_sized(&job.q, 0, 4096));
  mp_process_t *p = start_job(_i, t_spill_consumer, &job);
  unsigned char buf[SPILL_MAX];
  for (uint32_t i = 0; i < N_SPILLED; i++)
    MP_ASSERT_OK(mp_queue_put(job.q, buf, spill_make(i, buf), 30));
  join_ok(p);
  for (uint32_t i = 0; i < 3; i++) /* left in the queue for its free */
    MP_ASSERT_OK(mp_queue_put(job.q, buf, spill_make(i, buf), 30));
  MP_ASSERT_OK(mp_queue_free(job.q));
}
END_TEST

/* The arena as this process maps it: from its mapping in /proc/self/maps, its size from the
 * memfd's fd. */
static bool arena_span(unsigned char **lo, size_t *size) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  unsigned long start = 0;
  while (f && !start && fgets(line, sizeof line, f))
    if (strstr(line, "libmp-arena"))
      start = strtoul(line, NULL, 16);
  if (f)
    fclose(f);
  for (int fd = 0; start && fd < 1024; fd++) {
    char path[64], target[128];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, target, sizeof target - 1);
    struct stat st;
    if (n <= 0)
      continue;
    target[n] = '\0';
    if (strstr(target, "libmp-arena") && fstat(fd, &st) == 0) {
      *lo = (unsigned char *)start;
      *size = (size_t)st.st_size;
      return true;
    }
  }
  return false;
}

/* The first place in the arena where the 8-byte word is followed by the n bytes of next, or
 * NULL. */
static unsigned char *arena_find(uint64_t word, const void *next, size_t n) {
  unsigned char *lo;
  size_t size;
  if (!arena_span(&lo, &size))
    return NULL;
  for (size_t at = 0; at + 8 + n <= size; at += 8)
    if (memcmp(lo + at, &word, 8) == 0 && memcmp(lo + at + 8, next, n) == 0)
      return lo + at;
  return NULL;
}

#define MARK_LEN 40
#define SPILLED_LEN 3333

typedef struct {
  mp_queue_t *inline_q, *spilled_q;
  unsigned char mark[MARK_LEN];
  void *block; /* where the spilled message's bytes are */
} corrupt_job_t;

/* Another process of the program writes into both rings: a length far past the ring's
 * bytes, and a spilled block's address that is no block. */
static int t_corrupt_rings(void *arg, size_t size) {
  corrupt_job_t *job = arg;
  if (size != sizeof *job)
    return 90;
  unsigned char *record = arena_find(MARK_LEN, job->mark, MARK_LEN);
  if (!record)
    return 2;
  uint64_t huge = (uint64_t)1 << 30;
  memcpy(record, &huge, sizeof huge);
  record = arena_find(SPILLED_LEN | (uint64_t)1 << 63, &job->block, sizeof job->block);
  if (!record)
    return 3;
  void *wild = (void *)(uintptr_t)64;
  memcpy(record + 8, &wild, sizeof wild);
  return 0;
}

/* Lengths and spilled blocks read from a ring are untrusted: written wild by another process,
 * each get says MP_ECORRUPT with a sentence (again at the next one) rather than reading
 * past the ring or from the wild address, and the free gives back what it can. */
START_TEST(test_corrupt_ring) {
  corrupt_job_t job;
  MP_ASSERT_OK(mp_queue_create_sized(&job.inline_q, 0, 4096));
  MP_ASSERT_OK(mp_queue_create_sized(&job.spilled_q, 0, 4096));
  for (size_t i = 0; i < MARK_LEN; i++)
    job.mark[i] = (unsigned char)(0xa5 ^ (i * 37) ^ getpid());
  MP_ASSERT_OK(mp_queue_put(job.inline_q, job.mark, MARK_LEN, 10));
  unsigned char *big = calloc(1, SPILLED_LEN);
  T_ASSERT(big != NULL, "calloc");
  MP_ASSERT_OK(mp_queue_put(job.spilled_q, big, SPILLED_LEN, 10));
  free(big);
  /* The block is found the way the child would see it: the record's next word. */
  unsigned char *lo;
  size_t arena_size;
  T_ASSERT(arena_span(&lo, &arena_size), "the arena in /proc/self/maps and /proc/self/fd");
  job.block = NULL;
  for (size_t at = 0; at + 16 <= arena_size && !job.block; at += 8) {
    uint64_t word = SPILLED_LEN | (uint64_t)1 << 63;
    if (memcmp(lo + at, &word, 8) == 0)
      memcpy(&job.block, lo + at + 8, sizeof job.block);
  }
  T_ASSERT(job.block != NULL, "the spilled record in the arena");

  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), t_corrupt_rings, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  join_ok(p);

  for (int attempt = 0; attempt < 2; attempt++) {
    void *got = NULL;
    size_t len = 0;
    MP_ASSERT_ERR(mp_queue_get_alloc(job.inline_q, &got, &len, 1), MP_ECORRUPT);
    T_ASSERT(strstr(mp_last_error(), "corrupt") && strstr(mp_last_error(), "1073741824"),
             "the sentence: %s", mp_last_error());
    unsigned char buf[SPILLED_LEN];
    MP_ASSERT_ERR(mp_queue_get(job.spilled_q, buf, sizeof buf, &len, 1), MP_ECORRUPT);
    T_ASSERT(strstr(mp_last_error(), "corrupt") && strstr(mp_last_error(), "0x40"),
             "the sentence: %s", mp_last_error());
  }
  MP_ASSERT_OK(mp_queue_free(job.inline_q));
  MP_ASSERT_OK(mp_queue_free(job.spilled_q));
}
END_TEST

/* A page of this process's own memory, outside the arena, that a wild ring word names. */
static _Alignas(4096) unsigned char victim[8192];

/* A queue with a 4 KiB ring whose first record is a mark of this process's own, and its
 * ring word: that record's address (found in the arena) | 12, log2 of the ring's bytes; the
 * word's place in the queue's first 512 bytes, and *word. */
static unsigned char *marked_queue(mp_queue_t **q, unsigned char mark[MARK_LEN],
                                   uint64_t *word) {
  MP_ASSERT_OK(mp_queue_create_sized(q, 0, 4096));
  for (size_t i = 0; i < MARK_LEN; i++)
    mark[i] = (unsigned char)(0x3c ^ (i * 41) ^ getpid());
  MP_ASSERT_OK(mp_queue_put(*q, mark, MARK_LEN, 10));
  unsigned char *ring = arena_find(MARK_LEN, mark, MARK_LEN);
  T_ASSERT(ring != NULL, "the record in the arena");
  *word = (uint64_t)(uintptr_t)ring | 12;
  return (unsigned char *)*q + mp_test_find_bytes(*q, 512, 8, word, sizeof *word);
}

/* The ring's word is as untrusted for a put as for a get: one naming memory outside the
 * arena (this process's own page), or a ring of 2^40 bytes, makes the put MP_ECORRUPT with
 * nothing written; the word put back, the queue works again. */
START_TEST(test_corrupt_ring_word_put) {
  mp_queue_t *q;
  unsigned char mark[MARK_LEN];
  uint64_t good;
  unsigned char *word = marked_queue(&q, mark, &good);
  memset(victim, 0, sizeof victim);
  const uint64_t forged[] = {(uint64_t)(uintptr_t)victim | 12, (good & ~(uint64_t)63) | 40};
  for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
    mp_test_forge(_i, word, &forged[i], sizeof forged[i]);
    MP_ASSERT_ERR(mp_queue_put(q, "WRITTEN-OUTSIDE-THE-ARENA", 26, 1), MP_ECORRUPT);
    T_ASSERT(strstr(mp_last_error(), "corrupt") &&
                 strstr(mp_last_error(), "not a block of the arena"),
             "the sentence: %s", mp_last_error());
    MP_ASSERT_ERR(mp_queue_put_nowait(q, "again", 6), MP_ECORRUPT);
    for (size_t b = 0; b < sizeof victim; b++)
      T_ASSERT(victim[b] == 0, "byte %zu outside the arena was written", b);
  }
  memcpy(word, &good, sizeof good);
  MP_ASSERT_OK(mp_queue_put(q, "second", 7, 10));
  unsigned char buf[MARK_LEN];
  size_t len = 0;
  MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 10));
  T_ASSERT(len == MARK_LEN && memcmp(buf, mark, MARK_LEN) == 0, "the first message kept");
  MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 10));
  T_ASSERT(len == 7 && strcmp((char *)buf, "second") == 0, "the second message: %zu", len);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* The ring's word (its address | log2 of its bytes) is untrusted too: a log2 of 32 or more
 * (a shift past the word's width: the processor took 44 as 12) or an address inside the
 * arena that is no ring is MP_ECORRUPT, and nothing is lost once the word is put back. */
START_TEST(test_corrupt_ring_word) {
  mp_queue_t *q;
  unsigned char mark[MARK_LEN];
  uint64_t word;
  unsigned char *at = marked_queue(&q, mark, &word);
  unsigned char *ring = (unsigned char *)(uintptr_t)(word & ~(uint64_t)63);
  const uint64_t wild[] = {(uint64_t)(uintptr_t)ring | 44,
                           (uint64_t)(uintptr_t)(ring + 64) | 12};
  unsigned char got[MARK_LEN];
  size_t len = 0;
  for (size_t i = 0; i < sizeof wild / sizeof wild[0]; i++) {
    memcpy(at, &wild[i], sizeof wild[i]);
    MP_ASSERT_ERR(mp_queue_get(q, got, sizeof got, &len, 1), MP_ECORRUPT);
    T_ASSERT(strstr(mp_last_error(), "not a block of the arena"), "the sentence: %s",
             mp_last_error());
  }
  memcpy(at, &word, sizeof word);
  MP_ASSERT_OK(mp_queue_get(q, got, sizeof got, &len, 1));
  T_ASSERT(len == MARK_LEN && memcmp(got, mark, MARK_LEN) == 0, "the message, whole");
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* A queue of a 4 KiB ring that holds one spilled message: its record in the ring, and
 * (*block) the block that holds the message. */
static unsigned char *spilled_queue(mp_queue_t **q, unsigned char **block) {
  MP_ASSERT_OK(mp_queue_create_sized(q, 0, 4096));
  unsigned char *big = calloc(1, SPILLED_LEN);
  T_ASSERT(big != NULL, "calloc");
  MP_ASSERT_OK(mp_queue_put(*q, big, SPILLED_LEN, 10));
  free(big);
  unsigned char *record = arena_find(SPILLED_LEN | (uint64_t)1 << 63, "", 0);
  T_ASSERT(record != NULL, "the spilled record in the arena");
  memcpy(block, record + 8, sizeof *block);
  return record;
}

/* A spilled record's block must be a block of the arena, not only lie inside it: a get
 * neither reads from another address nor frees it (the arena's allocator would take its
 * bytes for a block's header). */
START_TEST(test_corrupt_spilled_block) {
  mp_queue_t *q;
  unsigned char *block;
  unsigned char *record = spilled_queue(&q, &block);
  /* 64-byte aligned, inside the arena, room for the message: but inside the block. */
  unsigned char *inside = block + 1024;
  memcpy(record + 8, &inside, sizeof inside);
  unsigned char buf[SPILLED_LEN];
  size_t len = 0;
  MP_ASSERT_ERR(mp_queue_get(q, buf, sizeof buf, &len, 1), MP_ECORRUPT);
  T_ASSERT(strstr(mp_last_error(), "not a block of the arena"), "the sentence: %s",
           mp_last_error());
  memcpy(record + 8, &block, sizeof block);
  MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 1));
  T_INT_EQ(len, SPILLED_LEN);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* ===================================================================================== */
/* Review, stop 23: forged lock words.                                                   */

/* A call in a thread of the test process, its result and how long it took. */
typedef struct {
  mp_queue_t *q;
  bool put;   /* else a get... */
  bool close; /* ...or, this set, a close */
  _Atomic int done;
  int rc;
  double took;
} timed_call_t;

static void *timed_call(void *arg) {
  timed_call_t *c = arg;
  char buf[64];
  size_t len = 0;
  double t0 = mp_test_now();
  c->rc = c->close ? mp_queue_close(c->q)
          : c->put ? mp_queue_put(c->q, "x", 1, 0.2)
                   : mp_queue_get(c->q, buf, sizeof buf, &len, 0.2);
  c->took = mp_test_now() - t0;
  atomic_store(&c->done, 1);
  return NULL;
}

/* Starts c in thread *t: whether it ended within 3 s (the caller joins *t). */
static bool start_timed_call(timed_call_t *c, pthread_t *t) {
  T_INT_EQ(pthread_create(t, NULL, timed_call, c), 0);
  double end = mp_test_now() + 3;
  while (!atomic_load(&c->done) && mp_test_now() < end)
    mp_test_sleep(0.01);
  return atomic_load(&c->done);
}

/* A queue of maxsize that holds one message, "12345678": where its tail is (put_lock is a
 * cache line before it, get_lock a line after it, by the layout of queues.c). */
static unsigned char *queue_of_one(mp_queue_t **q, size_t maxsize) {
  MP_ASSERT_OK(mp_queue_create(q, maxsize));
  MP_ASSERT_OK(mp_queue_put(*q, "12345678", 8, 1));
  uint64_t tail = (uint64_t)1 << 32 | 16;
  return (unsigned char *)*q + mp_test_find_bytes(*q, 192, 8, &tail, 8);
}

/* A process of the program writes a side's lock word (a word of the arena, as untrusted as
 * head, tail and the ring's) naming a live process: the test process itself (a tid of 0 start
 * time, which holder_died never compares). A put or a get with a timeout of 0.2 s must end by
 * its timeout (MP_EFULL, MP_EEMPTY, or MP_ECORRUPT), never wait for ever. The words are
 * found by the layout of queues.c: tail, the only word holding one message's position, and
 * put_lock a cache line before it, get_lock a line after it. */
START_TEST(test_forged_lock_word_timeout) {
  mp_queue_t *q;
  unsigned char *at_tail = queue_of_one(&q, 1); /* full: maxsize 1 */
  const uint64_t forged = (uint64_t)getpid(), zero = 0;
  int hung = 0;
  for (int side = 0; side < 2; side++) {
    bool put = side == 0;
    unsigned char *lock = put ? at_tail - 64 : at_tail + 64;
    T_ASSERT(memcmp(lock, &zero, 8) == 0, "the lock word is free");
    if (!put) { /* empty, for the get to time out on */
      char buf[16];
      size_t len;
      MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 1));
    }
    mp_test_forge(_i, lock, &forged, sizeof forged);
    timed_call_t c = {.q = q, .put = put};
    pthread_t t;
    bool ended = start_timed_call(&c, &t);
    memcpy(lock, &zero, 8); /* let it go, so that the thread can be joined */
    T_INT_EQ(pthread_join(t, NULL), 0);
    if (!ended)
      fprintf(stderr,
              "mp_queue_%s with a timeout of 0.2 s still waited after 3 s on a lock "
              "word a process of the program forged (it ended %.1f s later, rc %d)\n",
              put ? "put" : "get", c.took, c.rc);
    hung += !ended;
    T_ASSERT(c.rc == (put ? MP_EFULL : MP_EEMPTY) || c.rc == MP_ECORRUPT, "rc %d", c.rc);
  }
  T_ASSERT(hung == 0, "%d of put and get waited past their timeout on a forged lock word",
           hung);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* A put or get of timeout 0 that finds its side's lock held by a thread that is gone takes it
 * over and goes on: every holder is given one slice, at whose end it is judged, before a
 * call's timeout can end the wait (a live holder makes it MP_EFULL or MP_EEMPTY, above). */
START_TEST(test_nowait_takes_over_dead_lock) {
  mp_queue_t *q;
  unsigned char *at_tail = queue_of_one(&q, 0);
  pid_t gone = fork(); /* a thread id nobody holds any more */
  if (gone == 0)
    _exit(0);
  T_ASSERT(gone > 0 && waitpid(gone, NULL, 0) == gone, "fork and reap");
  const uint64_t forged = (uint64_t)gone;
  mp_test_forge(_i, at_tail - 64, &forged, sizeof forged); /* put_lock */
  MP_ASSERT_OK(mp_queue_put_nowait(q, "x", 1));
  mp_test_forge(_i, at_tail + 64, &forged, sizeof forged); /* get_lock */
  char buf[16];
  size_t len;
  MP_ASSERT_OK(mp_queue_get_nowait(q, buf, sizeof buf, &len));
  T_ASSERT(len == 8 && memcmp(buf, "12345678", 8) == 0, "the first message");
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* close waits for no put in progress: a live producer stopped inside its put (here in a
 * fault handler, holding put_lock) held close for as long as it stayed stopped (review, stop
 * 23). The gets of the drained queue wait for that put, within their timeout, and say closed
 * once its producer is gone. */
START_TEST(test_close_with_stuck_producer) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  mp_process_t *stuck = stuck_in_copy(_i, t_die_in_put, q, 20000);
  timed_call_t c = {.q = q, .close = true};
  pthread_t t;
  bool ended = start_timed_call(&c, &t);
  char buf[16];
  size_t len = 0;
  bool first = ended && mp_queue_get(q, buf, sizeof buf, &len, 1) == 0 && len == 6 &&
               memcmp(buf, "before", 6) == 0;
  int waiting = ended ? mp_queue_get(q, buf, sizeof buf, &len, 0.2) : MP_EEMPTY;
  MP_ASSERT_OK(mp_process_kill(stuck)); /* its lock is taken over: close ends */
  T_INT_EQ(mp_test_join_code(stuck, 10), -SIGKILL);
  T_PROC_CLOSE(stuck);
  T_INT_EQ(pthread_join(t, NULL), 0);
  T_ASSERT(ended,
           "mp_queue_close still waited after 3 s for a live producer stuck in its put (it "
           "ended %.1f s later, once that one was killed)",
           c.took);
  MP_ASSERT_OK(c.rc);
  T_ASSERT(first, "the message put before the stuck one");
  MP_ASSERT_ERR(waiting, MP_EEMPTY); /* not closed yet: a put is in progress */
  MP_ASSERT_ERR(mp_queue_get(q, buf, sizeof buf, &len, 5), MP_ECLOSED);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* A block's header (its magic, then its class, 64 bytes before the payload) is a word of the
 * arena that any process of the program may write, as a task that writes before its block.
 * The queue frees its blocks by that class: a class written wild within the arena's reach
 * (4 MiB: the 16 MiB Array after them) put the block on the 4 MiB list, and the next 4 MiB
 * object was allocated over it and the live blocks after it (review, stop 23; the pool's
 * were fixed in 01ac5b8, test_forged_fnref_class). Here: a spilled message's block, released
 * by the last free's walk, and the queue's own block. */
static const uint32_t wild_class = 22;

/* Writes wild_class into the header of block, a block of q (under start method `method`),
 * frees q, and checks that the 4 MiB object allocated next is not laid over the block, nor
 * over a live queue made after it. */
static void free_with_wild_class(int method, mp_queue_t *q, unsigned char *block,
                                 const char *what) {
  mp_queue_t *later;
  mp_array_t *room, *after;
  MP_ASSERT_OK(mp_queue_create_sized(&later, 0, 4096)); /* a live queue after the block */
  MP_ASSERT_OK(mp_queue_put(later, "still here", 11, 1));
  MP_ASSERT_OK(mp_raw_array_create(&room, 'b', 16 << 20, NULL));
  mp_test_forge(method, block - 64 + sizeof(uint32_t), &wild_class, sizeof wild_class);
  MP_ASSERT_OK(mp_queue_free(q)); /* the last reference releases the block */
  MP_ASSERT_OK(mp_raw_array_create(&after, 'b', 3 << 20, NULL)); /* a 4 MiB block */
  bool over = (unsigned char *)after <= block && block < (unsigned char *)after + (3 << 20);
  int rc = mp_queue_put(later, "x", 1, 0);
  T_ASSERT(!over,
           "a 3 MiB Array was allocated over %s (and over the live queue after it: its put "
           "now says %d)",
           what, rc);
  MP_ASSERT_OK(rc);
  MP_ASSERT_OK(mp_array_close(after));
  MP_ASSERT_OK(mp_array_close(room));
  MP_ASSERT_OK(mp_queue_free(later));
}

START_TEST(test_forged_spilled_block_class) {
  mp_queue_t *q;
  unsigned char *block;
  (void)spilled_queue(&q, &block);
  free_with_wild_class(_i, q, block, "a spilled message's 4 KiB block");
}
END_TEST

START_TEST(test_forged_queue_block_class) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create_sized(&q, 0, 4096));
  free_with_wild_class(_i, q, (unsigned char *)q, "a queue's block");
}
END_TEST

/* A put that needs the ring to grow when the arena is full (review, stop 23): docs/api.md
 * gives MP_ENOMEM for it (mp_simple_queue_put: "Waits only if 64 MiB of records are
 * queued"), as a spilled message's put gives at once. A message kept whole instead waited:
 * mp_queue_put for its whole timeout, then MP_EFULL ("the queue is full", of an unbounded
 * queue holding 1 MiB), and mp_simple_queue_put for ever. */
typedef struct {
  mp_simple_queue_t *sq;
  const void *msg;
  size_t len;
  _Atomic int done;
  int rc;
} simple_put_t;

static void *simple_put(void *arg) {
  simple_put_t *c = arg;
  c->rc = mp_simple_queue_put(c->sq, c->msg, c->len);
  atomic_store(&c->done, 1);
  return NULL;
}

START_TEST(test_full_arena_put) {
  mp_queue_t *q;
  mp_simple_queue_t *sq;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  MP_ASSERT_OK(mp_simple_queue_create(&sq));
  mp_array_t *arrays[64];
  size_t n_arrays = 0;
  /* Sparse: the arena's memfd grows by ftruncate, no page is touched. */
  for (size_t size = (size_t)32 << 30; size >= (1u << 20) && n_arrays < 64; size /= 2)
    while (n_arrays < 64 && mp_raw_array_create(&arrays[n_arrays], 'b', size - 4096, NULL) == 0)
      n_arrays++;
  size_t len = 100 << 10; /* kept whole: under an eighth of the first ring */
  char *msg = calloc(1, len);
  T_ASSERT(msg != NULL, "calloc");
  int n = 0, rc;
  double t0 = mp_test_now();
  while ((rc = mp_queue_put(q, msg, len, 0.5)) == 0)
    n++;
  double took = mp_test_now() - t0;
  char sentence[256];
  snprintf(sentence, sizeof sentence, "%s", mp_last_error());

  simple_put_t c = {.sq = sq, .msg = msg, .len = len};
  pthread_t t;
  int simple_puts = 0;
  for (;;) {
    atomic_store(&c.done, 0);
    T_INT_EQ(pthread_create(&t, NULL, simple_put, &c), 0);
    double end = mp_test_now() + 3;
    while (!atomic_load(&c.done) && mp_test_now() < end)
      mp_test_sleep(0.01);
    if (!atomic_load(&c.done)) { /* let it go: a get makes room */
      char *got = NULL;
      size_t got_len;
      MP_ASSERT_OK(mp_simple_queue_get_alloc(sq, (void **)&got, &got_len));
      free(got);
      T_INT_EQ(pthread_join(t, NULL), 0);
      break;
    }
    T_INT_EQ(pthread_join(t, NULL), 0);
    if (c.rc != 0)
      break;
    simple_puts++;
  }
  bool simple_hung = !atomic_load(&c.done) || c.rc == 0;
  for (size_t i = 0; i < n_arrays; i++)
    MP_ASSERT_OK(mp_array_close(arrays[i]));
  free(msg);
  MP_ASSERT_OK(mp_queue_free(q));
  MP_ASSERT_OK(mp_simple_queue_free(sq));
  T_ASSERT(rc == MP_ENOMEM && !simple_hung,
           "on a full arena: mp_queue_put after %d messages of 100 KiB: rc %d after %.2f s "
           "(\"%s\"), not MP_ENOMEM; mp_simple_queue_put %s after %d messages",
           n, rc, took, sentence, simple_hung ? "still waited after 3 s" : "failed",
           simple_puts);
}
END_TEST

/* A spare slot keeps the address of the block a producer took from it (review, stop 23):
 * spares_in and spares_out, counters of the arena, written back by one (no address forged)
 * made the next spilled put take that stale slot. Its block had been released (too small for
 * a larger message) and handed to a new queue's handle: the put copied its message over that
 * live queue, which then said "not a Queue". The last free's walk of the spares released it
 * the same way, and the next queue was made over it. A slot taken should be emptied. */
START_TEST(test_forged_spare_counter) {
  enum { SMALL = 2100, LARGE = 5000 }; /* blocks of 4 KiB, of 8 KiB */
  unsigned char *msg = malloc(LARGE), *got = malloc(LARGE);
  T_ASSERT(msg && got, "malloc");
  memset(msg, 0xab, LARGE);
  for (int then_free = 0; then_free < 2; then_free++) {
    mp_queue_t *q, *victim_q, *next = NULL;
    MP_ASSERT_OK(mp_queue_create_sized(&q, 0, 4096)); /* messages above 512 bytes spill */
    size_t len;
    for (int i = 0; i < 6; i++) { /* four spares wait, the producer takes the oldest */
      MP_ASSERT_OK(mp_queue_put(q, msg, SMALL, 1));
      MP_ASSERT_OK(mp_queue_get(q, got, LARGE, &len, 1));
    }
    const uint32_t counters[2] = {5, 1}; /* spares_in, spares_out */
    unsigned char *at = (unsigned char *)q + mp_test_find_bytes(q, 512, 8, counters, 8);
    /* The oldest spare (4 KiB) is too small: released, and the slot keeps its address. */
    MP_ASSERT_OK(mp_queue_put(q, msg, LARGE, 1)); /* not taken: a get would refill the slot */
    MP_ASSERT_OK(mp_queue_create_sized(&victim_q, 0, 4096)); /* a 4 KiB block: that one */
    MP_ASSERT_OK(mp_queue_put(victim_q, "still here", 11, 1));
    uint32_t now[2];
    memcpy(now, at, sizeof now);
    const uint32_t back = now[1] - 1;
    mp_test_forge(_i, at + sizeof(uint32_t), &back, sizeof back);
    int rc = 0;
    if (then_free) {
      MP_ASSERT_OK(mp_queue_free(q));
      MP_ASSERT_OK(mp_queue_create_sized(&next, 0, 4096)); /* a 4 KiB block again */
    } else {
      rc = mp_queue_put(q, msg, SMALL, 1);
    }
    int victim_rc = mp_queue_get(victim_q, got, LARGE, &len, 1);
    T_ASSERT(victim_rc == 0 && len == 11 && memcmp(got, "still here", 11) == 0,
             "%s (rc %d) through a stale spare slot: a live queue's get says %d (\"%s\")",
             then_free ? "the last free of another queue released a live queue's block, and a "
                         "new queue was made over it"
                       : "a put into another queue wrote over a live queue's block",
             rc, victim_rc, mp_last_error());
    MP_ASSERT_OK(mp_queue_free(victim_q));
    MP_ASSERT_OK(then_free ? mp_queue_free(next) : mp_queue_free(q));
  }
  free(msg);
  free(got);
}
END_TEST

/* The owner-dead repair of put_lock frees the block of a producer killed in its spilled put
 * (`pending`). It freed it by its header's class, which any process may write: a class
 * written wild (16 MiB, over a block of 4 MiB) put the block on the 16 MiB list, and the
 * next 12 MiB Array was allocated over it and what follows it. Now by the room the queue
 * noted beside `pending`. The word is found by the layout of queues.c: put_lock a line
 * before tail, then pending. */
START_TEST(test_forged_pending_block_class) {
  mp_queue_t *q;
  mp_array_t *room, *after;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  kill_in_copy(_i, t_die_in_put, q, 2u << 20); /* spilled, into a 4 MiB block */
  /* tail after "before", also in pending_tail, right after pending: tail is the later one. */
  uint64_t tail = (uint64_t)1 << 32 | 16;
  unsigned char *line = (unsigned char *)q + 96;
  unsigned char *at_tail = line + mp_test_find_bytes(line, 96, 8, &tail, 8);
  unsigned char *pending;
  memcpy(&pending, at_tail - 64 + 8, sizeof pending);
  T_ASSERT(pending != NULL, "the dead producer's block is noted");
  MP_ASSERT_OK(mp_raw_array_create(&room, 'b', 32 << 20, NULL)); /* the arena's reach */
  const uint32_t wild = 24;
  mp_test_forge(_i, pending - 64 + sizeof(uint32_t), &wild, sizeof wild);
  MP_ASSERT_OK(mp_queue_put(q, "after", 5, 5));                   /* repairs: frees the block */
  MP_ASSERT_OK(mp_raw_array_create(&after, 'b', 12 << 20, NULL)); /* a 16 MiB block */
  bool over =
      (unsigned char *)after <= pending && pending < (unsigned char *)after + (12 << 20);
  T_ASSERT(!over, "a 12 MiB Array was allocated over the 4 MiB block of a producer killed in "
                  "its put, freed by a class written wild");
  MP_ASSERT_OK(mp_array_close(after));
  MP_ASSERT_OK(mp_array_close(room));
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* The same wait without any forged word: a consumer stuck inside its get (here in a fault
 * handler, as a SIGSTOP or a debugger leaves it), alive and holding get_lock. Another
 * process's get with a timeout of 0.2 s waits as long as it stays stuck (review, stop 23). */
START_TEST(test_stuck_consumer_get_timeout) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  enum { SIZE = 20000 };
  unsigned char *msg = calloc(1, SIZE);
  T_ASSERT(msg != NULL, "calloc");
  MP_ASSERT_OK(mp_queue_put(q, msg, SIZE, 0));
  mp_process_t *stuck = stuck_in_copy(_i, t_die_in_get, q, SIZE);
  timed_call_t c = {.q = q, .put = false};
  pthread_t t;
  bool ended = start_timed_call(&c, &t);
  MP_ASSERT_OK(mp_process_kill(stuck)); /* its lock is taken over: the get ends */
  T_INT_EQ(mp_test_join_code(stuck, 10), -SIGKILL);
  T_PROC_CLOSE(stuck);
  T_INT_EQ(pthread_join(t, NULL), 0);
  free(msg);
  MP_ASSERT_OK(mp_queue_free(q));
  T_ASSERT(ended,
           "mp_queue_get with a timeout of 0.2 s still waited after 3 s for a live "
           "consumer stuck in its get (it ended %.1f s later, once that one was killed, rc %d)",
           c.took, c.rc);
}
END_TEST

/* A consumer killed between the stores of `retired` and `retired_head` in its get of a
 * spilled message (review of stop 23, rev-queue2). take() notes the block, then the head its
 * get will commit: the next get believes the block only if head reached retired_head. The
 * three are plain stores, and gcc -O2 emits `retired` first (one mov), then retired_head and
 * retired_room together (one movaps): a death between them leaves the new block with the
 * head of the previous spilled get, which is the head now, so the next get takes the block
 * of the message still first as a spent one, keeps it as a spare (or frees it), takes that
 * message again, and keeps the block a second time: two later spilled puts share it. The
 * kill lands between the two stores deterministically: the child is single-stepped
 * (ptrace) until `retired` changes. The words are found by the layout of queues.c: get_lock a
 * line after tail, then retired, retired_head. */
enum { RS_LEN = 1000, RS_KEEP = 6 }; /* spilled in a 4 KiB ring: one 1 KiB+ block class */

static void rs_make(uint32_t seq, unsigned char *buf) {
  for (size_t i = 0; i < RS_LEN; i++)
    buf[i] = (unsigned char)(seq * 131u + i);
  memcpy(buf, &seq, sizeof seq);
}

typedef struct {
  void *volatile *retired;
  void *before;
} retired_watch_t;

/* The child's take noted another block in retired. */
static bool retired_moved(void *arg) {
  const retired_watch_t *watch = arg;
  void *now = *watch->retired;
  return now != NULL && now != watch->before;
}

START_TEST(test_consumer_killed_between_retired_stores) {
  mp_queue_t *probe, *q;
  size_t off = (size_t)(queue_of_one(&probe, 0) - (unsigned char *)probe);
  MP_ASSERT_OK(mp_queue_free(probe));
  MP_ASSERT_OK(mp_queue_create_sized(&q, 0, 4096));
  unsigned char *base = (unsigned char *)q;
  void *volatile *retired = (void *volatile *)(base + off + 64 + 8);
  volatile uint64_t *retired_head = (volatile uint64_t *)(base + off + 64 + 16);
  unsigned char buf[RS_LEN], want[RS_LEN];
  uint32_t put_seq = 0, get_seq = 0;
  size_t len;
  for (; put_seq < 2 + RS_KEEP; put_seq++) {
    rs_make(put_seq, buf);
    MP_ASSERT_OK(mp_queue_put(q, buf, RS_LEN, 1));
  }
  MP_ASSERT_OK(mp_queue_get(q, buf, sizeof buf, &len, 1)); /* message 0: retired, head 1 */
  get_seq++;
  void *before = *retired;
  uint64_t head_before = *retired_head;
  T_ASSERT(before != NULL, "the spilled get noted its block in retired");
  pid_t child = mp_test_fork_traced();
  if (child == 0) {
    unsigned char mine[RS_LEN];
    size_t got;
    mp_queue_get(q, mine, sizeof mine, &got, 5); /* message 1 */
    _exit(0);
  }
  retired_watch_t watch = {retired, before};
  bool killed = mp_test_step_until(child, retired_moved, &watch);
  /* Stopped where the child's take noted message 1's block: the window is open if the head
   * is not written yet. */
  bool window = killed && *retired_head == head_before;
  mp_test_end_traced(child);
  T_ASSERT(killed, "the child never noted a retired block");
  /* Per docs/api.md (a get killed before it returned leaves its message first, whole): every
   * message comes out once, in order, with its bytes, while puts reuse the spare blocks. */
  int bad = 0;
  uint32_t bad_seq = 0, bad_got = 0;
  for (int round = 0; round < 24; round++) {
    int rc = mp_queue_get(q, buf, sizeof buf, &len, 2);
    rs_make(get_seq, want);
    if (rc != 0 || len != RS_LEN || memcmp(buf, want, RS_LEN) != 0) {
      if (!bad++) {
        bad_seq = get_seq;
        memcpy(&bad_got, buf, sizeof bad_got);
      }
    }
    get_seq++;
    rs_make(put_seq++, buf);
    MP_ASSERT_OK(mp_queue_put(q, buf, RS_LEN, 1));
  }
  T_ASSERT(bad == 0,
           "a consumer killed between its stores of retired and retired_head (%s): %d of 24 "
           "gets returned a wrong message, the first where message %u was due (it held %u)",
           window ? "retired set, retired_head still the previous get's" : "in order", bad,
           bad_seq, bad_got);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

/* A put of timeout 0 whose put_lock passes, within its slice, from a live holder to one that
 * dies (review of stop 23, rev-queue2): docs/api.md says such a call "takes over the lock of
 * one that died in it", and "a dead holder's lock is taken over within 10 ms, whatever the
 * timeout". qlock_wait times each holder word from when it first sees it and gives up at
 * the call's deadline (one slice after its first sleep), so the second holder is never
 * judged: the put says MP_EFULL, "a live process held the queue's put lock past the
 * timeout", of an empty queue whose lock holder is dead. Forged words, by the layout of
 * queues.c (put_lock a line before tail). */
typedef struct {
  mp_queue_t *q;
  _Atomic int started;
  int rc;
  char sentence[160];
} nowait_put_t;

static void *nowait_put(void *arg) {
  nowait_put_t *c = arg;
  atomic_store(&c->started, 1);
  c->rc = mp_queue_put_nowait(c->q, "x", 1);
  snprintf(c->sentence, sizeof c->sentence, "%s", mp_last_error());
  return NULL;
}

START_TEST(test_nowait_holder_dies_during_wait) {
  mp_queue_t *q;
  unsigned char *at_tail = queue_of_one(&q, 0);
  pid_t gone = fork();
  if (gone == 0)
    _exit(0);
  T_ASSERT(gone > 0 && waitpid(gone, NULL, 0) == gone, "fork and reap");
  _Atomic uint64_t *lock = (_Atomic uint64_t *)(void *)(at_tail - 64);
  atomic_store(lock, (uint64_t)getpid()); /* a live holder (this process) */
  nowait_put_t c = {.q = q};
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, nowait_put, &c), 0);
  while (!atomic_load(&c.started))
    mp_test_sleep(0.0005);
  mp_test_sleep(0.004);
  atomic_store(lock, (uint64_t)gone); /* it passed the lock on, to one that died in it */
  T_INT_EQ(pthread_join(t, NULL), 0);
  uint64_t left = atomic_load(lock);
  if ((uint32_t)left == ((uint32_t)gone | 0x80000000u)) /* not taken over: free it */
    atomic_store(lock, 0);
  T_ASSERT(c.rc == 0,
           "mp_queue_put_nowait on an empty queue whose put_lock holder died during its wait: "
           "rc %d (\"%s\"), not taken over",
           c.rc, c.sentence);
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

static Suite *queues_suite(void) {
  Suite *s = suite_create("queues");
  TCase *tc = mp_test_tcase(s, "local", 20);
  tcase_add_test(tc, test_put_get_in_order);
  tcase_add_test(tc, test_wrap_around);
  tcase_add_test(tc, test_empty_and_small_buffer);
  tcase_add_test(tc, test_maxsize_full_empty_timeouts);
  tcase_add_test(tc, test_ring_bytes_bound);
  tcase_add_test(tc, test_ring_grows);
  tcase_add_test(tc, test_threads);
  tcase_add_test(tc, test_bad_input);
  tcase_add_test(tc, test_use_after_free_aborts);
  tcase_add_test(tc, test_bell_names_not_squattable);
  tcase_add_test(tc, test_bell_ignores_other_users);
  tcase_add_test(tc, test_corrupt_ring_word);
  tcase_add_test(tc, test_corrupt_spilled_block);
  tcase_add_test(tc, test_full_arena_put);
  tcase_add_test(tc, test_consumer_killed_between_retired_stores);
  tcase_add_test(tc, test_nowait_holder_dies_during_wait);

  tc = mp_test_tcase(s, "processes", 60);
  tcase_add_loop_test(tc, test_order_per_producer, 0, N_METHODS);
  tcase_add_loop_test(tc, test_growth_across_processes, 0, N_METHODS);
  tcase_add_loop_test(tc, test_many_to_many, 0, N_METHODS);
  tcase_add_loop_test(tc, test_64mib_message, 0, N_METHODS);
  tcase_add_loop_test(tc, test_poison_pill, 0, N_METHODS);
  tcase_add_loop_test(tc, test_close, 0, N_METHODS);
  tcase_add_loop_test(tc, test_spilled_blocks_reused, 0, N_METHODS);
  tcase_add_loop_test(tc, test_corrupt_ring, 0, N_METHODS);
  tcase_add_loop_test(tc, test_corrupt_ring_word_put, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_lock_word_timeout, 0, N_METHODS);
  tcase_add_loop_test(tc, test_nowait_takes_over_dead_lock, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_spilled_block_class, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_queue_block_class, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_spare_counter, 0, N_METHODS);

  tc = mp_test_tcase(s, "readiness", 30);
  tcase_add_loop_test(tc, test_fileno_in_parent, 0, N_METHODS);
  tcase_add_loop_test(tc, test_fileno_in_child_for_later_queue, 0, N_METHODS);
  tcase_add_loop_test(tc, test_fileno_in_two_processes, 0, N_METHODS);
  tcase_add_loop_test(tc, test_dead_pollers_dropped, 0, N_METHODS);
  tcase_add_loop_test(tc, test_wait_mixed, 0, N_METHODS);

  tc = mp_test_tcase(s, "deaths", 60);
  tcase_add_loop_test(tc, test_consumer_killed_while_blocked, 0, N_METHODS);
  tcase_add_loop_test(tc, test_producer_killed_mid_put, 0, N_METHODS);
  tcase_add_loop_test(tc, test_producer_killed_not_reaped, 0, N_METHODS);
  tcase_add_loop_test(tc, test_consumer_killed_mid_get, 0, N_METHODS);
  tcase_add_loop_test(tc, test_stuck_consumer_get_timeout, 0, N_METHODS);
  tcase_add_loop_test(tc, test_close_with_stuck_producer, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_pending_block_class, 0, N_METHODS);

  tc = mp_test_tcase(s, "flavors", 30);
  tcase_add_loop_test(tc, test_joinable, 0, N_METHODS);
  tcase_add_loop_test(tc, test_simple_queue, 0, N_METHODS);
  tcase_add_loop_test(tc, test_freed_after_start, 0, N_METHODS);
  tcase_add_loop_test(tc, test_use_after_free_no_false_alarm, 0, N_METHODS);
  return s;
}

MP_TEST_MAIN(queues_suite)
