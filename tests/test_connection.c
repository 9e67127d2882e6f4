/*
 * Check suite of the connection layer: mp_pipe, connection ends and mp_wait, under each
 * start method.
 *
 * Children report through their exit code: 0 for success, a distinct number for each check
 * that failed in the child.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "mp_test.h"

/* ===================================================================================== */
/* Helpers usable in the test process and in children (no Check calls).                 */

/* Byte i of message number n: a pattern that differs by message and by offset. */
static unsigned char pattern_byte(size_t n, size_t i) {
  return (unsigned char)(n * 31 + i * 7 + (i >> 12));
}

static void fill_pattern(unsigned char *buf, size_t size, size_t n) {
  for (size_t i = 0; i < size; i++)
    buf[i] = pattern_byte(n, i);
}

static bool has_pattern(const unsigned char *buf, size_t size, size_t n) {
  for (size_t i = 0; i < size; i++)
    if (buf[i] != pattern_byte(n, i))
      return false;
  return true;
}

/* The argument most children get: one connection end, found by the argument scan. */
typedef struct {
  mp_conn_t *conn;
  int count;
  size_t size;
  int id;
} conn_job_t;

/* Echoes every message until end of file. */
static int child_echo(void *arg, size_t size) {
  (void)size;
  conn_job_t *job = arg;
  void *msg;
  size_t got;
  int rc;
  while ((rc = mp_conn_recv_alloc(job->conn, &msg, &got, MP_FOREVER)) == 0) {
    rc = mp_conn_send(job->conn, msg, got);
    free(msg);
    if (rc < 0)
      return 2;
  }
  return rc == MP_EEOF ? 0 : 3;
}

/* Blocks in a receive that nothing answers, until killed. */
static int child_blocks_in_recv(void *arg, size_t size) {
  (void)size;
  conn_job_t *job = arg;
  char buf[16];
  size_t got;
  mp_conn_recv(job->conn, buf, sizeof buf, &got, MP_FOREVER);
  return 2;
}

/* Holds its end and never reads, until killed. */
static int child_sleeps(void *arg, size_t size) {
  (void)arg;
  (void)size;
  mp_test_sleep(30);
  return 2;
}

/* Sends job->count messages of job->size bytes with the pattern of (id, n), then returns
 * without closing. */
static int child_sends(void *arg, size_t size) {
  (void)size;
  conn_job_t *job = arg;
  unsigned char *buf = malloc(job->size ? job->size : 1);
  if (!buf)
    return 2;
  for (int n = 0; n < job->count; n++) {
    fill_pattern(buf, job->size, (size_t)(job->id * 1000 + n));
    if (mp_conn_send(job->conn, buf, job->size) < 0)
      return 3;
  }
  free(buf);
  return 0;
}

/* Kills a process after a delay, while the test blocks on its connection. */
typedef struct {
  mp_process_t *proc;
  double delay;
} killer_t;

static void *kill_later(void *arg) {
  killer_t *killer = arg;
  mp_test_sleep(killer->delay);
  mp_process_kill(killer->proc);
  return NULL;
}

/* Starts a child that holds its end of a new pipe, and closes the test's copy of that end. */
static mp_process_t *start_with_end(int i, mp_target_t target, conn_job_t *job,
                                    mp_conn_t **mine) {
  mp_conn_t *theirs;
  mp_process_t *p;
  MP_ASSERT_OK(mp_pipe(true, mine, &theirs));
  job->conn = theirs;
  T_PROC_NEW(&p, mp_test_ctx(i), target, job, sizeof *job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_OK(mp_conn_close(theirs));
  return p;
}

/* Joins the child, checks its exit code, closes it and then the test's end. */
static void end_child(mp_process_t *p, int code, mp_conn_t *mine) {
  T_INT_EQ(mp_test_join_code(p, 30 * mp_test_slowdown()), code);
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp_conn_close(mine));
}

/* ===================================================================================== */
/* Messages.                                                                               */

START_TEST(test_message_sizes_through_child) {
  /* Around the header, the pipe's atomic size, the end's buffer and the pipe's capacity, and
   * a message of 64 MiB. */
  static const size_t sizes[] = {0,    1,    7,     8,     4088,          4096,     4097,
                                 7927, 7936, 20000, 65536, (1 << 20) + 3, 64u << 20};
  conn_job_t job = {0};
  mp_conn_t *mine;
  mp_process_t *p = start_with_end(_i, child_echo, &job, &mine);
  for (size_t n = 0; n < sizeof sizes / sizeof sizes[0]; n++) {
    unsigned char *out = malloc(sizes[n] + 1);
    T_ASSERT(out != NULL, "malloc");
    fill_pattern(out, sizes[n], n);
    MP_ASSERT_OK(mp_conn_send(mine, out, sizes[n]));
    void *back;
    size_t got = 12345;
    MP_ASSERT_OK(mp_conn_recv_alloc(mine, &back, &got, 30 * mp_test_slowdown()));
    T_INT_EQ(got, sizes[n]);
    T_ASSERT(back != NULL && has_pattern(back, got, n), "message %zu of %zu bytes changed", n,
             sizes[n]);
    free(back);
    free(out);
  }
  MP_ASSERT_OK(mp_conn_close(mine));
  T_INT_EQ(mp_test_join_code(p, 30 * mp_test_slowdown()), 0);
  T_PROC_CLOSE(p);
}
END_TEST

START_TEST(test_offsets) {
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  unsigned char src[100], dst[100];
  fill_pattern(src, sizeof src, 1);
  /* Bytes [30, 70) of src, received at offset 10 of dst. */
  MP_ASSERT_OK(mp_conn_send_bytes(a, src, sizeof src, 30, 40));
  memset(dst, 0xee, sizeof dst);
  size_t got = 0;
  MP_ASSERT_OK(mp_conn_recv_bytes(b, dst, sizeof dst, 10, &got, 1));
  T_INT_EQ(got, 40);
  T_ASSERT(memcmp(dst + 10, src + 30, 40) == 0, "the bytes at the offset differ");
  for (size_t i = 0; i < sizeof dst; i++)
    if (i < 10 || i >= 50)
      T_ASSERT(dst[i] == 0xee, "byte %zu outside the message changed", i);
  /* The whole buffer up to its end, and an empty tail. */
  MP_ASSERT_OK(mp_conn_send_bytes(a, src, sizeof src, 0, sizeof src));
  MP_ASSERT_OK(mp_conn_send_bytes(a, src, sizeof src, sizeof src, 0));
  MP_ASSERT_OK(mp_conn_recv(b, dst, sizeof dst, &got, 1));
  T_ASSERT(got == sizeof src && memcmp(dst, src, sizeof src) == 0, "the whole buffer differs");
  MP_ASSERT_OK(mp_conn_recv_bytes(b, dst, sizeof dst, sizeof dst, &got, 1));
  T_INT_EQ(got, 0);
  MP_ASSERT_ERR(mp_conn_send_bytes(a, src, sizeof src, 101, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_send_bytes(a, src, sizeof src, 50, 51), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_send_bytes(a, src, sizeof src, 1, SIZE_MAX), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_recv_bytes(b, dst, sizeof dst, 101, &got, 0), MP_EINVAL);
  T_INT_EQ(mp_conn_poll(b, 0), 0); /* nothing was sent by the refused calls */
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_conn_close(b));
}
END_TEST

START_TEST(test_empty_messages) {
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  MP_ASSERT_OK(mp_conn_send(a, NULL, 0));
  MP_ASSERT_OK(mp_conn_send(a, "x", 1));
  MP_ASSERT_OK(mp_conn_send(a, "", 0));
  size_t got = 99;
  MP_ASSERT_OK(mp_conn_recv(b, NULL, 0, &got, 1));
  T_INT_EQ(got, 0);
  char c = 0;
  MP_ASSERT_ERR(mp_conn_recv(b, NULL, 0, &got, 1), MP_ETOOSMALL);
  T_INT_EQ(got, 1);
  MP_ASSERT_OK(mp_conn_recv(b, &c, 1, &got, 1));
  T_ASSERT(got == 1 && c == 'x', "got %zu bytes, '%c'", got, c);
  void *msg = NULL;
  MP_ASSERT_OK(mp_conn_recv_alloc(b, &msg, &got, 1));
  T_ASSERT(msg != NULL && got == 0, "an empty message gave %p and %zu bytes", msg, got);
  free(msg);
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_conn_close(b));
}
END_TEST

START_TEST(test_too_small_keeps_message) {
  conn_job_t job = {.count = 1, .size = 100, .id = 1};
  mp_conn_t *mine;
  mp_process_t *p = start_with_end(_i, child_sends, &job, &mine);
  unsigned char buf[128];
  size_t got = 0;
  MP_ASSERT_ERR(mp_conn_recv(mine, buf, 10, &got, 10), MP_ETOOSMALL);
  T_INT_EQ(got, 100);
  MP_ASSERT_ERR(mp_conn_recv_bytes(mine, buf, 110, 20, &got, 10), MP_ETOOSMALL);
  T_INT_EQ(got, 100);
  T_INT_EQ(mp_conn_poll(mine, 0), 1);
  MP_ASSERT_OK(mp_conn_recv_bytes(mine, buf, 120, 20, &got, 10));
  T_ASSERT(got == 100 && has_pattern(buf + 20, 100, 1000), "the kept message changed");
  T_INT_EQ(mp_test_join_code(p, 10), 0);
  T_PROC_CLOSE(p);
  MP_ASSERT_ERR(mp_conn_recv(mine, buf, sizeof buf, &got, 10), MP_EEOF);
  MP_ASSERT_OK(mp_conn_close(mine));

  /* A message far larger than the end's buffer, most of it still in the pipe. */
  job = (conn_job_t){.count = 2, .size = 1 << 20, .id = 2};
  p = start_with_end(_i, child_sends, &job, &mine);
  MP_ASSERT_ERR(mp_conn_recv(mine, buf, sizeof buf, &got, 10), MP_ETOOSMALL);
  T_INT_EQ(got, 1 << 20);
  for (size_t n = 0; n < 2; n++) {
    void *msg;
    MP_ASSERT_OK(mp_conn_recv_alloc(mine, &msg, &got, 10));
    T_ASSERT(got == 1 << 20 && has_pattern(msg, got, 2000 + n), "message %zu changed", n);
    free(msg);
  }
  end_child(p, 0, mine);
}
END_TEST

/* ===================================================================================== */
/* Timeouts, closing, peers that end.                                                      */

START_TEST(test_poll_and_recv_timeouts) {
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  T_INT_EQ(mp_conn_poll(b, 0), 0);
  T_INT_EQ(mp_conn_poll(b, -1), 0);
  double start = mp_test_now();
  T_INT_EQ(mp_conn_poll(b, 0.2), 0);
  double waited = mp_test_now() - start;
  T_ASSERT(waited >= 0.2, "poll(0.2) returned after %.3f s", waited);
  char buf[16];
  size_t got;
  start = mp_test_now();
  MP_ASSERT_ERR(mp_conn_recv(b, buf, sizeof buf, &got, 0.2), MP_ETIMEDOUT);
  waited = mp_test_now() - start;
  T_ASSERT(waited >= 0.2, "recv(0.2) returned after %.3f s", waited);
  MP_ASSERT_ERR(mp_conn_recv(b, buf, sizeof buf, &got, 0), MP_ETIMEDOUT);
  MP_ASSERT_OK(mp_conn_send(a, "hi", 2));
  T_INT_EQ(mp_conn_poll(b, 0), 1);
  T_INT_EQ(mp_conn_poll(b, MP_FOREVER), 1);
  MP_ASSERT_OK(mp_conn_recv(b, buf, sizeof buf, &got, 0));
  T_ASSERT(got == 2 && memcmp(buf, "hi", 2) == 0, "got %zu bytes", got);
  T_INT_EQ(mp_conn_poll(b, 0), 0);
  T_INT_EQ(mp_conn_poll(a, 0), 0); /* the other direction is still empty */
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_conn_close(b));
}
END_TEST

START_TEST(test_close_semantics) {
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  T_ASSERT(!mp_conn_closed(a) && !mp_conn_closed(b), "a new pipe is closed");
  MP_ASSERT_OK(mp_conn_send(a, "one", 3));
  MP_ASSERT_OK(mp_conn_send(a, "two", 3));
  MP_ASSERT_OK(mp_conn_close(a));
  T_ASSERT(mp_conn_closed(a), "a closed end is not closed");
  char buf[16];
  size_t got;
  MP_ASSERT_ERR(mp_conn_send(a, "x", 1), MP_ECLOSED);
  MP_ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, &got, 0), MP_ECLOSED);
  MP_ASSERT_ERR(mp_conn_poll(a, 0), MP_ECLOSED);
  MP_ASSERT_ERR(mp_conn_close(a), MP_ECLOSED);
  /* What was sent before the close arrives, then end of file, which poll reports. */
  MP_ASSERT_OK(mp_conn_recv(b, buf, sizeof buf, &got, 1));
  T_ASSERT(got == 3 && memcmp(buf, "one", 3) == 0, "first message");
  MP_ASSERT_OK(mp_conn_recv(b, buf, sizeof buf, &got, 1));
  T_ASSERT(got == 3 && memcmp(buf, "two", 3) == 0, "second message");
  T_INT_EQ(mp_conn_poll(b, 0), 1);
  MP_ASSERT_ERR(mp_conn_recv(b, buf, sizeof buf, &got, 1), MP_EEOF);
  MP_ASSERT_ERR(mp_conn_recv(b, buf, sizeof buf, &got, MP_FOREVER), MP_EEOF);
  void *msg = &got;
  MP_ASSERT_ERR(mp_conn_recv_alloc(b, &msg, &got, 1), MP_EEOF);
  T_ASSERT(msg == NULL, "a failed recv_alloc left a buffer");
  /* No SIGPIPE: a send to a closed peer fails. */
  MP_ASSERT_ERR(mp_conn_send(b, "x", 1), MP_EEOF);
  MP_ASSERT_OK(mp_conn_close(b));
}
END_TEST

START_TEST(test_peer_killed) {
  /* A receive blocked when the peer's process is killed. */
  conn_job_t job = {0};
  mp_conn_t *mine;
  mp_process_t *p = start_with_end(_i, child_blocks_in_recv, &job, &mine);
  killer_t killer = {p, 0.3};
  pthread_t thread;
  T_INT_EQ(pthread_create(&thread, NULL, kill_later, &killer), 0);
  char buf[16];
  size_t got;
  double start = mp_test_now();
  int rc = mp_conn_recv(mine, buf, sizeof buf, &got, MP_FOREVER);
  double took = mp_test_now() - start;
  /* Joined before any assertion: a failing one would close p under the killer. */
  pthread_join(thread, NULL);
  MP_ASSERT_ERR(rc, MP_EEOF);
  T_ASSERT(took >= 0.25, "recv ended before the kill");
  /* Once it has ended its read end is closed too (its fds close one by one as it dies). */
  T_INT_EQ(mp_test_join_code(p, 10), -SIGKILL);
  MP_ASSERT_ERR(mp_conn_send(mine, "x", 1), MP_EEOF);
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp_conn_close(mine));

  /* A send blocked on a full pipe when the peer's process is killed. */
  p = start_with_end(_i, child_sleeps, &job, &mine);
  killer.proc = p;
  T_INT_EQ(pthread_create(&thread, NULL, kill_later, &killer), 0);
  size_t size = 4u << 20;
  char *big = calloc(1, size);
  T_ASSERT(big != NULL, "calloc");
  MP_ASSERT_ERR(mp_conn_send(mine, big, size), MP_EEOF);
  free(big);
  pthread_join(thread, NULL);
  end_child(p, -SIGKILL, mine);
}
END_TEST

/* Says it is about to send, then sends a message far larger than the pipe. */
typedef struct {
  mp_conn_t *conn;
  mp_conn_t *ready;
} big_send_job_t;

static int child_sends_big(void *arg, size_t size) {
  (void)size;
  big_send_job_t *job = arg;
  size_t big = 4u << 20;
  char *buf = calloc(1, big);
  if (!buf || mp_conn_send(job->ready, "go", 2) < 0)
    return 2;
  mp_conn_send(job->conn, buf, big);
  return 3;
}

static int child_send_fails(void *arg, size_t size) {
  (void)size;
  conn_job_t *job = arg;
  return mp_conn_send(job->conn, "x", 1) == MP_EEOF ? 0 : 2;
}

/* A sender killed inside a message, on an end another process shares: the stream is cut, and
 * both the next sender and the receiver are told, though the end is still open. */
START_TEST(test_sender_killed_mid_message) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_conn_t *a, *b, *ready_a, *ready_b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  MP_ASSERT_OK(mp_pipe(true, &ready_a, &ready_b));
  big_send_job_t big_job = {b, ready_b};
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, child_sends_big, &big_job, sizeof big_job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  char buf[16];
  size_t got;
  MP_ASSERT_OK(mp_conn_recv(ready_a, buf, sizeof buf, &got, 20));
  mp_test_sleep(0.2); /* into its send, blocked on the full pipe */
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 10), -SIGKILL);
  T_PROC_CLOSE(p);
  conn_job_t job = {.conn = b};
  T_PROC_NEW(&p, ctx, child_send_fails, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  T_INT_EQ(mp_test_join_code(p, 20), 0);
  T_PROC_CLOSE(p);
  /* b is still open here: only the broken stream can end this receive. */
  MP_ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, &got, 5), MP_EEOF);
  MP_ASSERT_ERR(mp_conn_send(b, "x", 1), MP_EEOF);
  MP_ASSERT_OK(mp_conn_send(a, "back", 4)); /* the other direction is whole */
  MP_ASSERT_OK(mp_conn_recv(b, buf, sizeof buf, &got, 5));
  T_INT_EQ(got, 4);
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_conn_close(b));
  MP_ASSERT_OK(mp_conn_close(ready_a));
  MP_ASSERT_OK(mp_conn_close(ready_b));
}
END_TEST

/* Starts child_sends_big on a (b stays open here too) and stops it once it is blocked in
 * its send, so that a receive on a stops in the middle of the message. */
static mp_process_t *start_stopped_sender(int method, big_send_job_t *job, mp_conn_t *ready) {
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(method), child_sends_big, job, sizeof *job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  char buf[16];
  size_t got;
  MP_ASSERT_OK(mp_conn_recv(ready, buf, sizeof buf, &got, 20));
  mp_test_sleep(0.2); /* into its send, blocked on the full pipe */
  T_INT_EQ(kill(mp_process_pid(p), SIGSTOP), 0);
  return p;
}

/* A receive in the middle of a message whose sender is stopped while this process holds the
 * send end too (no end of file). Stopped for good: the deadline ends it with MP_ETIMEDOUT
 * and the stream, cut there, is broken from then on. Killed at 0.3 s: MP_EEOF, long before
 * the timeout. */
static void receive_from_stopped_sender(int method, bool killed) {
  mp_conn_t *a, *b, *ready_a, *ready_b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  MP_ASSERT_OK(mp_pipe(true, &ready_a, &ready_b));
  big_send_job_t job = {b, ready_b};
  mp_process_t *p = start_stopped_sender(method, &job, ready_a);
  killer_t k = {p, 0.3};
  pthread_t killer;
  if (killed)
    T_INT_EQ(pthread_create(&killer, NULL, kill_later, &k), 0);
  size_t big = 4u << 20, got;
  char *buf = malloc(big);
  double t0 = mp_test_now();
  int rc = mp_conn_recv(a, buf, big, &got, killed ? 30 : 0.3);
  double took = mp_test_now() - t0;
  if (killed) /* before any assertion: a failing one would close p under the killer */
    pthread_join(killer, NULL);
  MP_ASSERT_ERR(rc, killed ? MP_EEOF : MP_ETIMEDOUT);
  T_ASSERT(killed ? took < 20 : took >= 0.29, "returned after %g s", took);
  MP_ASSERT_ERR(mp_conn_recv(a, buf, big, &got, 1), MP_EEOF);
  if (!killed)
    MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 10), -SIGKILL);
  T_PROC_CLOSE(p);
  free(buf);
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_conn_close(b));
  MP_ASSERT_OK(mp_conn_close(ready_a));
  MP_ASSERT_OK(mp_conn_close(ready_b));
}

START_TEST(test_recv_timeout_mid_message) {
  receive_from_stopped_sender(_i, false);
}
END_TEST

START_TEST(test_recv_sender_killed_in_message) {
  receive_from_stopped_sender(_i, true);
}
END_TEST

/* A send that fails part-way (the buffer faults in its middle) has cut its message: both
 * the sender's stream and the peer's receiving one say so, instead of the receiver waiting
 * for the rest. */
START_TEST(test_send_cut_part_way) {
  long page = sysconf(_SC_PAGESIZE);
  char *buf =
      mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  T_ASSERT(buf != MAP_FAILED, "mmap");
  memset(buf, 'x', (size_t)page);
  T_INT_EQ(mprotect(buf + page, (size_t)page, PROT_NONE), 0);
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  int rc = mp_conn_send(a, buf, (size_t)page * 2);
  T_ASSERT(rc < 0, "a send through a faulting buffer returned %d", rc);
  size_t got;
  char small[16];
  MP_ASSERT_ERR(mp_conn_recv(b, small, sizeof small, &got, 5), MP_EEOF);
  MP_ASSERT_ERR(mp_conn_send(a, "x", 1), MP_EEOF);
  MP_ASSERT_OK(mp_conn_send(b, "back", 4)); /* the other direction is whole */
  MP_ASSERT_OK(mp_conn_recv(a, small, sizeof small, &got, 5));
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_conn_close(b));
  munmap(buf, (size_t)page * 2);
}
END_TEST

/* The fd of this process that is new since `before` (a bitmap of open fds) and open for
 * writing only: a one-way pipe's write end. */
static int new_write_fd(const unsigned char *before, int max) {
  for (int fd = 0; fd < max; fd++)
    if (!before[fd] && fcntl(fd, F_GETFL) >= 0 && (fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY)
      return fd;
  return -1;
}

/* This process's address space in bytes (VmSize), 0 if unknown. */
static unsigned long long address_space(void) {
  FILE *f = fopen("/proc/self/status", "r");
  unsigned long long kib = 0;
  char line[256];
  while (f && fgets(line, sizeof line, f))
    if (sscanf(line, "VmSize: %llu kB", &kib) == 1)
      break;
  if (f)
    fclose(f);
  return kib * 1024;
}

/* A header that claims 1 TiB, then 10 bytes and the end: recv_alloc's memory follows the
 * bytes that came, not the claim. The receiver runs in a child whose address space may
 * grow by 1 GiB at most. */
START_TEST(test_recv_alloc_claim_not_allocated) {
  enum { MAX_FD = 1024 };
  unsigned char before[MAX_FD];
  for (int fd = 0; fd < MAX_FD; fd++)
    before[fd] = fcntl(fd, F_GETFD) >= 0;
  mp_conn_t *r, *w;
  MP_ASSERT_OK(mp_pipe(false, &r, &w));
  int wfd = new_write_fd(before, MAX_FD);
  T_ASSERT(wfd >= 0, "no write end found");
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork");
  if (pid == 0) {
    close(wfd); /* the parent's close must be the end of file */
    unsigned long long used = address_space();
    struct rlimit lim = {used + (1ull << 30), used + (1ull << 30)};
    if (used == 0 || setrlimit(RLIMIT_AS, &lim) != 0)
      _exit(2);
    void *msg = &lim;
    size_t got = 0;
    int rc = mp_conn_recv_alloc(r, &msg, &got, 20);
    if (rc != MP_EEOF)
      fprintf(stderr, "recv_alloc: %d (%s)\n", rc, mp_last_error());
    _exit(rc == MP_EEOF && msg == NULL ? 0 : rc == MP_ENOMEM ? 3 : 4);
  }
  mp_test_track_pid(pid);
  struct {
    uint64_t length;
    char bytes[10];
  } __attribute__((packed)) claim = {1ull << 40, "ten bytes"};
  T_INT_EQ(write(wfd, &claim, sizeof claim), (ssize_t)sizeof claim);
  MP_ASSERT_OK(mp_conn_close(w));
  int status = 0;
  T_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid");
  MP_ASSERT_OK(mp_conn_close(r)); /* only now: the end is shared with the child */
  T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "receiver status %#x (exit 3: MP_ENOMEM, the claim was allocated)", status);
}
END_TEST

/* A word that says "connection" outside the arena is not one. */
START_TEST(test_fake_conn_outside_arena) {
  uint32_t fake[512] = {0x4e4e4f43u}; /* the kind word's value */
  MP_ASSERT_ERR(mp_conn_close((mp_conn_t *)fake), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_send((mp_conn_t *)fake, "x", 1), MP_EINVAL);
}
END_TEST

/* Receives one message and sends it back. */
static int child_echoes_once(void *arg, size_t size) {
  (void)size;
  conn_job_t *job = arg;
  char buf[16];
  size_t got;
  if (mp_conn_recv(job->conn, buf, sizeof buf, &got, 20) < 0)
    return 2;
  return mp_conn_send(job->conn, buf, got) < 0 ? 3 : 0;
}

/* A receiver killed while it waits for a message (holding the end's receive lock) takes
 * nothing with it: the next receiver on the shared end carries on. So does the next sender
 * after a sender killed in a small send to a full pipe. */
START_TEST(test_killed_while_waiting_keeps_stream) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  conn_job_t job = {.conn = b};
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, child_blocks_in_recv, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  mp_test_sleep(0.3); /* into its receive */
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 10), -SIGKILL);
  T_PROC_CLOSE(p);
  T_PROC_NEW(&p, ctx, child_echoes_once, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_OK(mp_conn_send(a, "again", 5));
  char buf[16];
  size_t got;
  MP_ASSERT_OK(mp_conn_recv(a, buf, sizeof buf, &got, 20));
  T_ASSERT(got == 5 && memcmp(buf, "again", 5) == 0, "the echo after the kill");
  T_INT_EQ(mp_test_join_code(p, 20), 0);
  T_PROC_CLOSE(p);

  /* A sender blocked on the full pipe in a small send. */
  job = (conn_job_t){.conn = b, .count = 1000000, .size = 100, .id = 5};
  T_PROC_NEW(&p, ctx, child_sends, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  mp_test_sleep(0.3);
  MP_ASSERT_OK(mp_process_kill(p));
  T_INT_EQ(mp_test_join_code(p, 10), -SIGKILL);
  T_PROC_CLOSE(p);
  unsigned char msg[128];
  size_t n = 0;
  while (mp_conn_poll(a, 0) == 1) {
    MP_ASSERT_OK(mp_conn_recv(a, msg, sizeof msg, &got, 0));
    T_ASSERT(got == 100 && has_pattern(msg, 100, 5000 + n), "message %zu is cut", n);
    n++;
  }
  T_ASSERT(n > 0, "the sender sent nothing");
  MP_ASSERT_OK(mp_conn_send(b, "tail", 4));
  MP_ASSERT_OK(mp_conn_recv(a, buf, sizeof buf, &got, 5));
  T_ASSERT(got == 4 && memcmp(buf, "tail", 4) == 0, "the send after the kill");
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_conn_close(b));
}
END_TEST

/* Sends one message after a pause, closes its end, and lives on until killed. */
static int child_closes_and_lives(void *arg, size_t size) {
  (void)size;
  conn_job_t *job = arg;
  mp_test_sleep(0.1);
  if (mp_conn_send(job->conn, "bye", 3) < 0)
    return 2;
  if (mp_conn_close(job->conn) < 0)
    return 3;
  if (mp_conn_send(job->conn, "x", 1) != MP_ECLOSED || !mp_conn_closed(job->conn))
    return 4;
  mp_test_sleep(30);
  return 5;
}

START_TEST(test_peer_closes) {
  conn_job_t job = {0};
  mp_conn_t *mine;
  mp_process_t *p = start_with_end(_i, child_closes_and_lives, &job, &mine);
  char buf[16];
  size_t got;
  MP_ASSERT_OK(mp_conn_recv(mine, buf, sizeof buf, &got, 10));
  T_ASSERT(got == 3 && memcmp(buf, "bye", 3) == 0, "got %zu bytes", got);
  MP_ASSERT_ERR(mp_conn_recv(mine, buf, sizeof buf, &got, 10), MP_EEOF);
  T_INT_EQ(mp_process_is_alive(p), 1);
  MP_ASSERT_ERR(mp_conn_send(mine, "x", 1), MP_EEOF);
  MP_ASSERT_OK(mp_process_kill(p));
  end_child(p, -SIGKILL, mine);
}
END_TEST

/* ===================================================================================== */
/* Passing ends to children.                                                               */

/* The end at an odd offset, where the argument scan does not look. */
typedef struct __attribute__((packed)) {
  uint32_t pad;
  mp_conn_t *conn;
} hidden_end_t;

#define EXCHANGES 100

static int child_asks(void *arg, size_t size) {
  (void)size;
  mp_conn_t *conn = ((conn_job_t *)arg)->conn;
  for (int n = 0; n < EXCHANGES; n++) {
    int answer = -1;
    size_t got;
    if (mp_conn_send(conn, &n, sizeof n) < 0)
      return 2;
    if (mp_conn_recv(conn, &answer, sizeof answer, &got, 10) < 0)
      return 3;
    if (got != sizeof answer || answer != 2 * n)
      return 4;
  }
  return 0;
}

static int child_answers(void *arg, size_t size) {
  (void)size;
  hidden_end_t hidden;
  memcpy(&hidden, arg, sizeof hidden);
  int n;
  size_t got;
  while (mp_conn_recv(hidden.conn, &n, sizeof n, &got, 10) == 0) {
    n *= 2;
    if (mp_conn_send(hidden.conn, &n, sizeof n) < 0)
      return 2;
  }
  return 0;
}

/* A child the end was not passed to: it is closed there. */
static int child_without_end(void *arg, size_t size) {
  (void)size;
  hidden_end_t hidden;
  memcpy(&hidden, arg, sizeof hidden);
  if (mp_conn_send(hidden.conn, "x", 1) != MP_ECLOSED)
    return 2;
  return mp_conn_closed(hidden.conn) ? 0 : 3;
}

START_TEST(test_both_ends_to_children) {
  mp_context_t *ctx = mp_test_ctx(_i);
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  conn_job_t asker = {.conn = a};
  hidden_end_t answerer = {0, b};
  mp_process_t *p1, *p2, *p3;
  T_PROC_NEW(&p1, ctx, child_asks, &asker, sizeof asker, "asker");
  T_PROC_NEW(&p2, ctx, child_answers, &answerer, sizeof answerer, "answerer");
  T_PROC_NEW(&p3, ctx, child_without_end, &answerer, sizeof answerer, "without");
  MP_ASSERT_OK(mp_process_pass_conn(p2, b));
  MP_ASSERT_OK(mp_process_pass_conn(p2, b)); /* twice is once */
  MP_ASSERT_OK(mp_process_start(p1));
  MP_ASSERT_OK(mp_process_start(p2));
  MP_ASSERT_OK(mp_process_start(p3));
  MP_ASSERT_ERR(mp_process_pass_conn(p2, b), MP_ESTARTED);
  /* The children hold the only copies now: the asker's exit is the answerer's end of file. */
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_OK(mp_conn_close(b));
  T_INT_EQ(mp_test_join_code(p1, 20), 0);
  T_INT_EQ(mp_test_join_code(p2, 20), 0);
  T_INT_EQ(mp_test_join_code(p3, 20), 0);
  T_PROC_CLOSE(p1);
  T_PROC_CLOSE(p2);
  T_PROC_CLOSE(p3);
}
END_TEST

/* Three children share one end; each message must arrive whole and in its sender's order. */
START_TEST(test_shared_end_whole_messages) {
  mp_context_t *ctx = mp_test_ctx(_i);
  enum { SENDERS = 3, COUNT = 40, SIZE = 10000 };
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  mp_process_t *p[SENDERS];
  conn_job_t jobs[SENDERS];
  for (int s = 0; s < SENDERS; s++) {
    /* Padding too is set: the argument bytes are read whole (the scan, the spawn request). */
    memset(&jobs[s], 0, sizeof jobs[s]);
    jobs[s].conn = b;
    jobs[s].count = COUNT;
    jobs[s].size = SIZE;
    jobs[s].id = s;
    T_PROC_NEW(&p[s], ctx, child_sends, &jobs[s], sizeof jobs[s], NULL);
    MP_ASSERT_OK(mp_process_start(p[s]));
  }
  MP_ASSERT_OK(mp_conn_close(b));
  int next[SENDERS] = {0};
  static unsigned char buf[SIZE];
  for (int m = 0; m < SENDERS * COUNT; m++) {
    size_t got;
    MP_ASSERT_OK(mp_conn_recv(a, buf, sizeof buf, &got, 20));
    T_INT_EQ(got, SIZE);
    int s;
    for (s = 0; s < SENDERS; s++)
      if (next[s] < COUNT && has_pattern(buf, SIZE, (size_t)(s * 1000 + next[s])))
        break;
    T_ASSERT(s < SENDERS, "message %d is no sender's next message whole", m);
    next[s]++;
  }
  size_t got;
  MP_ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, &got, 20), MP_EEOF);
  for (int s = 0; s < SENDERS; s++) {
    T_INT_EQ(mp_test_join_code(p[s], 20), 0);
    T_PROC_CLOSE(p[s]);
  }
  MP_ASSERT_OK(mp_conn_close(a));
}
END_TEST

/* Waits on its end, passes it on to a grandchild of the same start method (job->id),
 * closes its own copy, and returns the grandchild's exit code. */
static int child_passes_on(void *arg, size_t size) {
  (void)size;
  conn_job_t *job = arg;
  mp_context_t *ctx;
  mp_process_t *p;
  int code = -1;
  void *objects[] = {job->conn};
  if (mp_wait(objects, 1, 0, NULL) != 0) /* waitable kinds are known in every child */
    return 19;
  if (mp_get_context(METHODS[job->id], &ctx) < 0 ||
      mp_process_create(&p, ctx, child_sends, job, sizeof *job, NULL) < 0 ||
      mp_process_start(p) < 0)
    return 20;
  if (mp_conn_close(job->conn) < 0)
    return 21;
  if (mp_process_join(p, 20) < 0 || mp_process_exitcode(p, &code) < 0)
    return 22;
  mp_process_close(p);
  return code;
}

START_TEST(test_end_passed_on_to_grandchild) {
  conn_job_t job = {.count = 2, .size = 10, .id = _i};
  mp_conn_t *mine;
  mp_process_t *p = start_with_end(_i, child_passes_on, &job, &mine);
  char buf[16];
  size_t got;
  for (int n = 0; n < 2; n++) {
    MP_ASSERT_OK(mp_conn_recv(mine, buf, sizeof buf, &got, 20));
    T_ASSERT(got == 10 && has_pattern((unsigned char *)buf, 10, (size_t)(_i * 1000 + n)),
             "message %d from the grandchild", n);
  }
  MP_ASSERT_ERR(mp_conn_recv(mine, buf, sizeof buf, &got, 20), MP_EEOF);
  end_child(p, 0, mine);
}
END_TEST

START_TEST(test_one_way_pipe) {
  mp_conn_t *r, *w;
  MP_ASSERT_OK(mp_pipe(false, &r, &w));
  T_ASSERT(mp_conn_readable(r) && !mp_conn_writable(r), "the first end must only receive");
  T_ASSERT(!mp_conn_readable(w) && mp_conn_writable(w), "the second end must only send");
  char buf[16];
  size_t got;
  MP_ASSERT_ERR(mp_conn_send(r, "x", 1), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_recv(w, buf, sizeof buf, &got, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_poll(w, 0), MP_EINVAL);
  /* A child writes and returns without closing: its exit is the end of file. */
  conn_job_t job = {.conn = w, .count = 3, .size = 5, .id = 4};
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), child_sends, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_OK(mp_conn_close(w));
  for (size_t n = 0; n < 3; n++) {
    MP_ASSERT_OK(mp_conn_recv(r, buf, sizeof buf, &got, 10));
    T_ASSERT(got == 5 && has_pattern((unsigned char *)buf, 5, 4000 + n), "message %zu", n);
  }
  MP_ASSERT_ERR(mp_conn_recv(r, buf, sizeof buf, &got, 10), MP_EEOF);
  end_child(p, 0, r);
}
END_TEST

/* ===================================================================================== */
/* mp_wait.                                                                                */

/* Sends after a pause, then waits for "exit" and returns. */
static int child_sends_late(void *arg, size_t size) {
  (void)size;
  conn_job_t *job = arg;
  char buf[8];
  size_t got;
  mp_test_sleep(0.6); /* well after the test's first wait has timed out */
  if (mp_conn_send(job->conn, "late", 4) < 0)
    return 2;
  if (mp_conn_recv(job->conn, buf, sizeof buf, &got, 20) < 0)
    return 3;
  return got == 4 && memcmp(buf, "exit", 4) == 0 ? 0 : 4;
}

START_TEST(test_wait_pipes_and_processes) {
  conn_job_t job = {0};
  mp_conn_t *a1, *a2, *b2;
  mp_process_t *p = start_with_end(_i, child_sends_late, &job, &a1);
  MP_ASSERT_OK(mp_pipe(true, &a2, &b2));
  void *objects[] = {a1, a2, p};
  bool ready[3] = {true, true, true};
  double start = mp_test_now();
  T_INT_EQ(mp_wait(objects, 3, 0.1, ready), 0);
  T_ASSERT(mp_test_now() - start >= 0.1, "the wait ended before its timeout");
  T_ASSERT(!ready[0] && !ready[1] && !ready[2], "a timed-out wait marked something ready");
  /* The child's message. */
  T_INT_EQ(mp_wait(objects, 3, 20, ready), 1);
  T_ASSERT(ready[0] && !ready[1] && !ready[2], "not the child's pipe alone");
  char buf[8];
  size_t got;
  MP_ASSERT_OK(mp_conn_recv(a1, buf, sizeof buf, &got, 0));
  /* A message of our own, seen without waiting. */
  MP_ASSERT_OK(mp_conn_send(b2, "own", 3));
  T_INT_EQ(mp_wait(objects, 3, 0, ready), 1);
  T_ASSERT(!ready[0] && ready[1] && !ready[2], "not our pipe alone");
  MP_ASSERT_OK(mp_conn_recv(a2, buf, sizeof buf, &got, 0));
  /* The child's end: its process and its pipe's end of file. */
  MP_ASSERT_OK(mp_conn_send(a1, "exit", 4));
  void *just_process[] = {p};
  T_INT_EQ(mp_wait(just_process, 1, 20, NULL), 1);
  /* A forkserver child may report its end before its fds are closed: wait for them too. */
  void *child_pipe[] = {a1};
  T_INT_EQ(mp_wait(child_pipe, 1, 20, NULL), 1);
  T_INT_EQ(mp_wait(objects, 3, 0, ready), 2);
  T_ASSERT(ready[0] && !ready[1] && ready[2], "not the ended child and its pipe");
  T_INT_EQ(mp_test_join_code(p, 10), 0);
  T_INT_EQ(mp_wait(objects, 3, 0, ready), 2); /* a joined process stays ready */
  /* An end closed here is ready: a call on it fails at once. */
  MP_ASSERT_OK(mp_conn_close(a2));
  T_INT_EQ(mp_wait(objects, 3, 0, ready), 3);
  MP_ASSERT_OK(mp_conn_close(b2));
  MP_ASSERT_OK(mp_conn_close(a1));
  T_PROC_CLOSE(p);
}
END_TEST

/* A queue whose doorbell cannot be made (out of fds) could never wake the wait: mp_wait
 * says so instead of sleeping. */
START_TEST(test_wait_queue_without_doorbell) {
  mp_queue_t *q;
  MP_ASSERT_OK(mp_queue_create(&q, 0));
  struct rlimit old, low;
  T_INT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  int lowest = dup(0); /* the lowest free fd: a limit there leaves none */
  T_ASSERT(lowest >= 0, "dup");
  close(lowest);
  low = old;
  low.rlim_cur = (rlim_t)lowest;
  T_INT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  void *objects[] = {q};
  int rc = mp_wait(objects, 1, 0.2, NULL);
  T_INT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  T_INT_EQ(rc, -EMFILE);
  void *again[] = {q};
  T_INT_EQ(mp_wait(again, 1, 0, NULL), 0); /* with fds again, the doorbell is made */
  MP_ASSERT_OK(mp_queue_free(q));
}
END_TEST

START_TEST(test_wait_one_way_and_errors) {
  mp_conn_t *r, *w;
  MP_ASSERT_OK(mp_pipe(false, &r, &w));
  void *sender[] = {w};
  T_INT_EQ(mp_wait(sender, 1, 0, NULL), 0);
  MP_ASSERT_OK(mp_conn_close(r)); /* a sender is ready once nothing can receive */
  bool ready = false;
  T_INT_EQ(mp_wait(sender, 1, 5, &ready), 1);
  T_ASSERT(ready, "the sender without reader is not ready");
  MP_ASSERT_OK(mp_conn_close(w));

  double start = mp_test_now();
  T_INT_EQ(mp_wait(NULL, 0, 0.05, NULL), 0);
  T_ASSERT(mp_test_now() - start >= 0.05, "an empty wait did not sleep");
  MP_ASSERT_ERR(mp_wait(NULL, 0, MP_FOREVER, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_wait(NULL, 1, 0, NULL), MP_EINVAL);
  uint64_t not_waitable = 0;
  void *bad[] = {&not_waitable};
  MP_ASSERT_ERR(mp_wait(bad, 1, 0, NULL), MP_EINVAL);
  void *null_object[] = {NULL};
  MP_ASSERT_ERR(mp_wait(null_object, 1, 0, NULL), MP_EINVAL);
  mp_process_t *p;
  T_PROC_NEW(&p, NULL, child_echo, NULL, 0, NULL);
  void *unstarted[] = {p};
  MP_ASSERT_ERR(mp_wait(unstarted, 1, 0, NULL), MP_ENOTSTARTED);
  T_PROC_CLOSE(p);
  /* The current process never ends: the wait times out. */
  void *self[] = {mp_current_process()};
  T_INT_EQ(mp_wait(self, 1, 0.05, NULL), 0);
}
END_TEST

/* ===================================================================================== */
/* Bad input.                                                                              */

START_TEST(test_bad_input) {
  mp_conn_t *a, *b;
  MP_ASSERT_ERR(mp_pipe(true, NULL, &b), MP_EINVAL);
  MP_ASSERT_ERR(mp_pipe(true, &a, NULL), MP_EINVAL);
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  char buf[8];
  size_t got;
  void *msg;
  MP_ASSERT_ERR(mp_conn_send(NULL, "x", 1), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_send(a, NULL, 1), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_recv(NULL, buf, sizeof buf, &got, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_recv(b, buf, sizeof buf, NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_recv(b, NULL, 5, &got, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_recv_alloc(b, NULL, &got, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_recv_alloc(b, &msg, NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_recv_alloc(NULL, &msg, &got, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_poll(NULL, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_close(NULL), MP_EINVAL);
  uint64_t not_a_conn[8] = {0};
  MP_ASSERT_ERR(mp_conn_send((mp_conn_t *)not_a_conn, "x", 1), MP_EINVAL);
  MP_ASSERT_ERR(mp_conn_close((mp_conn_t *)not_a_conn), MP_EINVAL);
  T_ASSERT(!mp_conn_readable(NULL) && !mp_conn_writable(NULL) && mp_conn_closed(NULL),
           "NULL has properties");
  mp_process_t *p;
  T_PROC_NEW(&p, NULL, child_echo, NULL, 0, NULL);
  MP_ASSERT_ERR(mp_process_pass_conn(NULL, a), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_pass_conn(p, NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_pass_conn(p, (mp_conn_t *)not_a_conn), MP_EINVAL);
  MP_ASSERT_ERR(mp_process_pass_conn(mp_current_process(), a), MP_ENOTCHILD);
  MP_ASSERT_OK(mp_conn_close(a));
  MP_ASSERT_ERR(mp_process_pass_conn(p, a), MP_ECLOSED);
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp_conn_close(b));
}
END_TEST

/* ===================================================================================== */
/* Untrusted words and closes under a call.                                              */

/* The offset of the receiving end's buffer bounds, found by what they hold: [36, 54) after
 * the first two of three 10-byte messages are received. */
static size_t find_bounds(mp_conn_t *r) {
  const uint32_t after[2] = {36, 54};
  char buf[16];
  size_t got;
  for (int i = 0; i < 2; i++)
    MP_ASSERT_OK(mp_conn_recv(r, buf, sizeof buf, &got, 5));
  return mp_test_find_bytes(r, 256, 4, after, sizeof after);
}

/* Bounds that another process wrote wild (past the buffer, start after end) are
 * MP_ECORRUPT with a sentence at each receive, copy nothing from outside the buffer, and
 * lose nothing: put back, the stream goes on where it was. */
START_TEST(test_corrupt_bounds) {
  mp_conn_t *r, *w;
  MP_ASSERT_OK(mp_pipe(false, &r, &w));
  for (int i = 0; i < 3; i++)
    MP_ASSERT_OK(mp_conn_send(w, "xxxxxxxxxx", 10));
  T_ASSERT(mp_conn_poll(r, 5) == 1, "the messages came");
  size_t at = find_bounds(r);
  const uint32_t wild[2][2] = {{0, 2u << 20}, {40, 36}};
  for (int c = 0; c < 2; c++) {
    mp_test_forge(_i, (char *)r + at, wild[c], sizeof wild[c]);
    for (int attempt = 0; attempt < 2; attempt++) {
      char buf[64];
      size_t got = 0;
      MP_ASSERT_ERR(mp_conn_recv(r, buf, sizeof buf, &got, 1), MP_ECORRUPT);
      T_ASSERT(strstr(mp_last_error(), "corrupt") && got == 0, "the sentence: %s",
               mp_last_error());
      void *alloc = NULL;
      MP_ASSERT_ERR(mp_conn_recv_alloc(r, &alloc, &got, 1), MP_ECORRUPT);
      T_ASSERT(alloc == NULL, "no buffer for a corrupt receive");
      T_INT_EQ(mp_conn_poll(r, 0), 1); /* a receive would not block: it says why */
    }
  }
  const uint32_t sane[2] = {36, 54};
  memcpy((char *)r + at, sane, sizeof sane);
  MP_ASSERT_OK(mp_conn_send(w, "last", 4));
  char buf[16];
  size_t got;
  MP_ASSERT_OK(mp_conn_recv(r, buf, sizeof buf, &got, 5));
  T_ASSERT(got == 10 && memcmp(buf, "xxxxxxxxxx", 10) == 0, "the third message, kept");
  MP_ASSERT_OK(mp_conn_recv(r, buf, sizeof buf, &got, 5));
  T_ASSERT(got == 4 && memcmp(buf, "last", 4) == 0, "the message after");
  MP_ASSERT_OK(mp_conn_close(r));
  MP_ASSERT_OK(mp_conn_close(w));
}
END_TEST

typedef struct {
  mp_conn_t *conn;
  const void *buf;
  size_t size;
  int rc;
  char got[32];
} call_job_t;

static void *thread_sends(void *arg) {
  call_job_t *job = arg;
  job->rc = mp_conn_send(job->conn, job->buf, job->size);
  return NULL;
}

static void *thread_receives(void *arg) {
  call_job_t *job = arg;
  job->rc = mp_conn_recv(job->conn, job->got, sizeof job->got, &job->size, MP_FOREVER);
  return NULL;
}

#define OTHER_NUMBERS 32

/* An unrelated file, under the lowest free fd numbers (the number a close just freed among
 * them); other[0] is the file, the rest its duplicates. */
static void open_other_file(int other[OTHER_NUMBERS], const char *content) {
  other[0] = memfd_create("hardconn-other", MFD_CLOEXEC);
  T_ASSERT(other[0] >= 0, "memfd_create: %s", strerror(errno));
  size_t n = strlen(content);
  T_ASSERT(pwrite(other[0], content, n, 0) == (ssize_t)n, "pwrite: %s", strerror(errno));
  for (int i = 1; i < OTHER_NUMBERS; i++)
    T_ASSERT((other[i] = dup(other[0])) >= 0, "dup: %s", strerror(errno));
}

static off_t close_other_file(int other[OTHER_NUMBERS]) {
  struct stat st;
  T_ASSERT(fstat(other[0], &st) == 0, "fstat: %s", strerror(errno));
  for (int i = 0; i < OTHER_NUMBERS; i++)
    close(other[i]);
  return st.st_size;
}

/* A close while a send has the fd and waits for the end's lock (another send blocked on the
 * full pipe holds it): the close returns, a later call is MP_ECLOSED, and the waiting send
 * goes into the pipe, not into a file opened meanwhile under the freed number. */
START_TEST(test_close_under_send) {
  mp_conn_t *r, *w;
  MP_ASSERT_OK(mp_pipe(false, &r, &w));
  size_t big_size = 1 << 20;
  unsigned char *big = malloc(big_size);
  T_ASSERT(big != NULL, "malloc");
  fill_pattern(big, big_size, 1);
  call_job_t big_job = {w, big, big_size, 1, ""}, small_job = {w, "SECRET", 6, 1, ""};
  pthread_t big_thread, small_thread;
  T_INT_EQ(pthread_create(&big_thread, NULL, thread_sends, &big_job), 0);
  T_INT_EQ(mp_conn_poll(r, 10), 1);
  mp_test_sleep(0.1 * mp_test_slowdown()); /* the pipe full, the big send blocked */
  T_INT_EQ(pthread_create(&small_thread, NULL, thread_sends, &small_job), 0);
  mp_test_sleep(0.2 * mp_test_slowdown()); /* the small send waits for the lock */
  MP_ASSERT_OK(mp_conn_close(w));
  MP_ASSERT_ERR(mp_conn_send(w, "x", 1), MP_ECLOSED);
  MP_ASSERT_ERR(mp_conn_close(w), MP_ECLOSED);
  T_ASSERT(mp_conn_closed(w), "closed here");
  int other[OTHER_NUMBERS];
  open_other_file(other, "");
  void *got = NULL;
  size_t len = 0;
  MP_ASSERT_OK(mp_conn_recv_alloc(r, &got, &len, 10));
  T_ASSERT(len == big_size && has_pattern(got, len, 1), "the big message");
  free(got);
  T_INT_EQ(pthread_join(big_thread, NULL), 0);
  T_INT_EQ(pthread_join(small_thread, NULL), 0);
  free(big); /* only after the join: the send's writev may still be returning */
  MP_ASSERT_OK(big_job.rc);
  MP_ASSERT_OK(small_job.rc);
  off_t misdirected = close_other_file(other);
  T_ASSERT(misdirected == 0, "%lld bytes of the pipe went into an unrelated file",
           (long long)misdirected);
  char buf[16];
  MP_ASSERT_OK(mp_conn_recv(r, buf, sizeof buf, &len, 10));
  T_ASSERT(len == 6 && memcmp(buf, "SECRET", 6) == 0, "the small message in the pipe");
  /* The last call out closed the send end: end of file. */
  MP_ASSERT_ERR(mp_conn_recv(r, buf, sizeof buf, &len, 10), MP_EEOF);
  MP_ASSERT_OK(mp_conn_close(r));
}
END_TEST

/* The same for a receive that waits for the lock while another waits for a message: it
 * reads the pipe, never a file opened under the freed number. */
START_TEST(test_close_under_recv) {
  mp_conn_t *r, *w;
  MP_ASSERT_OK(mp_pipe(false, &r, &w));
  call_job_t first = {r, NULL, 0, 1, ""}, second = {r, NULL, 0, 1, ""};
  pthread_t first_thread, second_thread;
  T_INT_EQ(pthread_create(&first_thread, NULL, thread_receives, &first), 0);
  mp_test_sleep(0.1 * mp_test_slowdown()); /* in its read */
  T_INT_EQ(pthread_create(&second_thread, NULL, thread_receives, &second), 0);
  mp_test_sleep(0.2 * mp_test_slowdown()); /* waiting for the lock */
  MP_ASSERT_OK(mp_conn_close(r));
  MP_ASSERT_ERR(mp_conn_poll(r, 0), MP_ECLOSED);
  int other[OTHER_NUMBERS];
  /* A header of 16 and 16 bytes: a message, if read. */
  open_other_file(other, "\x10\x00\x00\x00\x00\x00\x00\x00UNRELATED-FILE!!");
  MP_ASSERT_OK(mp_conn_send(w, "first", 5));
  T_INT_EQ(pthread_join(first_thread, NULL), 0);
  MP_ASSERT_OK(first.rc);
  T_ASSERT(first.size == 5 && memcmp(first.got, "first", 5) == 0, "the first message");
  mp_test_sleep(0.1 * mp_test_slowdown());
  MP_ASSERT_OK(mp_conn_send(w, "second", 6));
  T_INT_EQ(pthread_join(second_thread, NULL), 0);
  MP_ASSERT_OK(second.rc);
  T_ASSERT(second.size == 6 && memcmp(second.got, "second", 6) == 0,
           "the second receive read %zu bytes \"%.*s\", not the pipe's message", second.size,
           (int)second.size, second.got);
  close_other_file(other);
  /* The last call out closed the receive end: no reader is left. */
  MP_ASSERT_ERR(mp_conn_send(w, "x", 1), MP_EEOF);
  MP_ASSERT_OK(mp_conn_close(w));
}
END_TEST

#define RACE_SENDERS 3
#define RACE_SENDS 500

static void *thread_sends_until_closed(void *arg) {
  call_job_t *job = arg;
  job->rc = 0;
  for (int i = 0; i < RACE_SENDS && job->rc == 0; i++)
    job->rc = mp_conn_send(job->conn, "SECRET", 6);
  return NULL;
}

/* Senders race a close for many rounds: each send succeeds or says MP_ECLOSED, and no
 * byte lands in a file opened right after the close. */
START_TEST(test_close_races_sends) {
  double until = mp_test_now() + 2 * mp_test_slowdown();
  int rounds = 0;
  for (; rounds < 20000 && mp_test_now() < until; rounds++) {
    mp_conn_t *r, *w;
    MP_ASSERT_OK(mp_pipe(false, &r, &w));
    call_job_t jobs[RACE_SENDERS];
    pthread_t threads[RACE_SENDERS];
    for (int i = 0; i < RACE_SENDERS; i++) {
      jobs[i] = (call_job_t){w, NULL, 0, 1, ""};
      T_INT_EQ(pthread_create(&threads[i], NULL, thread_sends_until_closed, &jobs[i]), 0);
    }
    for (volatile int k = 0; k < (rounds % 200) * 20; k++) {
    }
    MP_ASSERT_OK(mp_conn_close(w));
    int other = memfd_create("hardconn-other", MFD_CLOEXEC);
    T_ASSERT(other >= 0, "memfd_create: %s", strerror(errno));
    char buf[16];
    size_t len;
    int rc;
    while ((rc = mp_conn_recv(r, buf, sizeof buf, &len, 10)) == 0) /* frees blocked sends */
      T_ASSERT(len == 6 && memcmp(buf, "SECRET", 6) == 0, "a message of the senders");
    MP_ASSERT_ERR(rc, MP_EEOF);
    for (int i = 0; i < RACE_SENDERS; i++) {
      T_INT_EQ(pthread_join(threads[i], NULL), 0);
      T_ASSERT(jobs[i].rc == 0 || jobs[i].rc == MP_ECLOSED, "a send gave %s",
               mp_err_name(jobs[i].rc));
    }
    struct stat st;
    T_ASSERT(fstat(other, &st) == 0, "fstat: %s", strerror(errno));
    close(other);
    T_ASSERT(st.st_size == 0, "round %d: %lld bytes of the pipe went into an unrelated file",
             rounds, (long long)st.st_size);
    MP_ASSERT_OK(mp_conn_close(r));
  }
  T_ASSERT(rounds >= 50, "only %d rounds", rounds);
}
END_TEST

/* A plain fork() while a close waits for another thread's receive: the child is as after
 * the close (the end closed there, none of its fds kept), so the peer sees end of file
 * while the child lives, once the receive in the parent has ended. */
START_TEST(test_deferred_close_in_forked_child) {
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  call_job_t job = {b, NULL, 0, 1, ""};
  pthread_t thread;
  T_INT_EQ(pthread_create(&thread, NULL, thread_receives, &job), 0);
  mp_test_sleep(0.2 * mp_test_slowdown()); /* in its read */
  MP_ASSERT_OK(mp_conn_close(b));          /* deferred: the receive is still in it */
  int hold[2];                             /* the child lives until hold[1] is closed */
  T_INT_EQ(pipe2(hold, O_CLOEXEC), 0);
  pid_t child = fork();
  if (child == 0) {
    close(hold[1]);
    int code = !mp_conn_closed(b) ? 70 : mp_conn_send(b, "x", 1) != MP_ECLOSED ? 71 : 0;
    char byte;
    while (read(hold[0], &byte, 1) < 0 && errno == EINTR) {
    }
    _exit(code);
  }
  T_ASSERT(child > 0, "fork: %s", strerror(errno));
  mp_test_track_pid(child);
  close(hold[0]);
  MP_ASSERT_OK(mp_conn_send(a, "wake", 4));
  T_INT_EQ(pthread_join(thread, NULL), 0);
  MP_ASSERT_OK(job.rc);
  char buf[16];
  size_t len = 0;
  int rc = mp_conn_recv(a, buf, sizeof buf, &len, 2 * mp_test_slowdown());
  close(hold[1]);
  int status = 0;
  T_INT_EQ(waitpid(child, &status, 0), child);
  for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++)
    if (mp_test_pids[i] == child)
      mp_test_pids[i] = 0; /* reaped */
  T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "in the child, the end closed in the parent: status %#x", status);
  T_ASSERT(rc == MP_EEOF, "no end of file while the forked child lives: %s (%zu bytes)",
           mp_err_name(rc), len);
  MP_ASSERT_OK(mp_conn_close(a));
}
END_TEST

/* The end given by mp_process_pass_conn, hidden from the argument scan (one past it). */
static int child_has_end_closed(void *arg, size_t size) {
  (void)size;
  mp_conn_t *end = (mp_conn_t *)(*(uintptr_t *)arg - 1);
  return mp_conn_closed(end) ? 0 : 70;
}

/* An end passed to a child, then closed while another thread receives on it (the close
 * waits for the receive): a spawn or forkserver start refuses it (MP_ECLOSED, as Python's
 * pickling of a closed Connection), with no child and nothing of the end lost; a forked
 * child has it closed, as after Python's fork. Either way no child holds its fds: the peer
 * sees end of file once the receive is out. */
START_TEST(test_start_with_end_closed_under_call) {
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  uintptr_t hidden = (uintptr_t)b + 1;
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), child_has_end_closed, &hidden, sizeof hidden, NULL);
  MP_ASSERT_OK(mp_process_pass_conn(p, b));
  call_job_t job = {b, NULL, 0, 1, ""};
  pthread_t thread;
  T_INT_EQ(pthread_create(&thread, NULL, thread_receives, &job), 0);
  mp_test_sleep(0.2 * mp_test_slowdown()); /* in its read */
  MP_ASSERT_OK(mp_conn_close(b));          /* pending */
  if (_i == 0) {
    MP_ASSERT_OK(mp_process_start(p));
    T_INT_EQ(mp_test_join_code(p, 30 * mp_test_slowdown()), 0);
  } else {
    MP_ASSERT_ERR(mp_process_start(p), MP_ECLOSED);
  }
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp_conn_send(a, "wake", 4));
  T_INT_EQ(pthread_join(thread, NULL), 0);
  MP_ASSERT_OK(job.rc);
  T_INT_EQ(job.size, 4);
  char buf[8];
  size_t len;
  MP_ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, &len, 5 * mp_test_slowdown()), MP_EEOF);
  MP_ASSERT_OK(mp_conn_close(a));
}
END_TEST

static int child_returns_0(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

/* An end passed to a child, then closed (no call in it): a spawn or forkserver start
 * refuses it with MP_ECLOSED, as Python's pickling of a closed Connection raises (it said
 * MP_ENOTPASSED, "not passed to this process", after starting a child for nothing); a
 * forked child runs. No child holds the end's fds: the peer sees end of file. */
START_TEST(test_start_with_end_closed) {
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  mp_process_t *p;
  T_PROC_NEW(&p, mp_test_ctx(_i), child_returns_0, NULL, 0, NULL);
  MP_ASSERT_OK(mp_process_pass_conn(p, b));
  MP_ASSERT_OK(mp_conn_close(b));
  if (_i == 0) {
    MP_ASSERT_OK(mp_process_start(p));
    T_INT_EQ(mp_test_join_code(p, 30 * mp_test_slowdown()), 0);
  } else {
    for (int attempt = 0; attempt < 2; attempt++) {
      MP_ASSERT_ERR(mp_process_start(p), MP_ECLOSED);
      T_ASSERT(strstr(mp_last_error(), "closed since"), "message: %s", mp_last_error());
    }
  }
  T_PROC_CLOSE(p);
  char buf[8];
  size_t len;
  MP_ASSERT_ERR(mp_conn_recv(a, buf, sizeof buf, &len, 5 * mp_test_slowdown()), MP_EEOF);
  MP_ASSERT_OK(mp_conn_close(a));
}
END_TEST

typedef struct {
  mp_conn_t *end;
  int rc;
} waiter_job_t;

static void *thread_waits(void *arg) {
  waiter_job_t *job = arg;
  void *objects[] = {job->end};
  job->rc = mp_wait(objects, 1, 3 * mp_test_slowdown(), NULL);
  return NULL;
}

/* A close while another thread waits on the end (mp_wait is not a call that defers it): the
 * peer sees end of file at once, while the wait still sleeps, as the common "close my end so
 * that the peer ends" needs. */
START_TEST(test_close_under_wait) {
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(true, &a, &b));
  waiter_job_t job = {a, 1};
  pthread_t thread;
  T_INT_EQ(pthread_create(&thread, NULL, thread_waits, &job), 0);
  mp_test_sleep(0.1 * mp_test_slowdown()); /* in its poll */
  MP_ASSERT_OK(mp_conn_close(a));
  char buf[8];
  size_t len;
  double start = mp_test_now();
  int rc = mp_conn_recv(b, buf, sizeof buf, &len, 10);
  double took = mp_test_now() - start;
  T_INT_EQ(pthread_join(thread, NULL), 0);
  T_ASSERT(rc == MP_EEOF, "the peer's receive gave %s", mp_err_name(rc));
  T_ASSERT(took < 1, "the peer saw end of file after %g s", took);
  T_ASSERT(job.rc >= 0, "the wait gave %s", mp_err_name(job.rc));
  MP_ASSERT_OK(mp_conn_close(b));
}
END_TEST

static Suite *connection_suite(void) {
  Suite *s = suite_create("connection");
  TCase *tc = mp_test_tcase(s, "messages", 60);
  tcase_add_loop_test(tc, test_message_sizes_through_child, 0, N_METHODS);
  tcase_add_test(tc, test_offsets);
  tcase_add_test(tc, test_empty_messages);
  tcase_add_loop_test(tc, test_too_small_keeps_message, 0, N_METHODS);
  tc = mp_test_tcase(s, "ends", 20);
  tcase_add_test(tc, test_poll_and_recv_timeouts);
  tcase_add_test(tc, test_close_semantics);
  tcase_add_loop_test(tc, test_peer_killed, 0, N_METHODS);
  tcase_add_loop_test(tc, test_peer_closes, 0, N_METHODS);
  tcase_add_loop_test(tc, test_sender_killed_mid_message, 0, N_METHODS);
  tcase_add_loop_test(tc, test_killed_while_waiting_keeps_stream, 0, N_METHODS);
  tcase_add_loop_test(tc, test_recv_timeout_mid_message, 0, N_METHODS);
  tcase_add_loop_test(tc, test_recv_sender_killed_in_message, 0, N_METHODS);
  tc = mp_test_tcase(s, "passing", 30);
  tcase_add_loop_test(tc, test_both_ends_to_children, 0, N_METHODS);
  tcase_add_loop_test(tc, test_shared_end_whole_messages, 0, N_METHODS);
  tcase_add_loop_test(tc, test_one_way_pipe, 0, N_METHODS);
  tcase_add_loop_test(tc, test_end_passed_on_to_grandchild, 0, N_METHODS);
  tc = mp_test_tcase(s, "wait", 20);
  tcase_add_loop_test(tc, test_wait_pipes_and_processes, 0, N_METHODS);
  tcase_add_test(tc, test_wait_one_way_and_errors);
  tcase_add_test(tc, test_wait_queue_without_doorbell);
  tc = mp_test_tcase(s, "input", 20);
  tcase_add_test(tc, test_bad_input);
  tcase_add_test(tc, test_send_cut_part_way);
  tcase_add_test(tc, test_fake_conn_outside_arena);
  tcase_add_test(tc, test_recv_alloc_claim_not_allocated);
  tcase_add_loop_test(tc, test_corrupt_bounds, 0, N_METHODS);
  tc = mp_test_tcase(s, "close under a call", 30);
  tcase_add_test(tc, test_close_under_send);
  tcase_add_test(tc, test_close_under_recv);
  tcase_add_test(tc, test_close_races_sends);
  tcase_add_test(tc, test_deferred_close_in_forked_child);
  tcase_add_loop_test(tc, test_start_with_end_closed_under_call, 0, N_METHODS);
  tcase_add_loop_test(tc, test_start_with_end_closed, 0, N_METHODS);
  tcase_add_test(tc, test_close_under_wait);
  return s;
}

MP_TEST_MAIN(connection_suite)
