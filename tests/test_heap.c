/*
 * The shared arena and fds that cross by key: lib/heap.c and lib/reduction.c. These are
 * internal layers that every shared object stands on, so this suite links the static
 * library and calls them directly, under every start method.
 */
#include "../lib/internal.h"
#include "mp_test.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#else
#define RUNNING_ON_VALGRIND 0
#endif

/* What a child is told: where the shared block is, and what to do. */
typedef struct {
  uint64_t *block;
  size_t words;
  uint64_t key;
  size_t grow_bytes;
} heap_job_t;

/* A zeroed block of size bytes, or NULL with mp_last_error() set. */
static void *shared_alloc(size_t size) {
  void *block;
  (void)mp__shared_alloc(&block, size);
  return block;
}

/* Checks the parent's pattern, then answers through the same block. */
static int child_reads_and_writes(void *arg, size_t size) {
  heap_job_t *job = arg;
  if (size != sizeof *job || !mp__shared_contains(job->block))
    return 2;
  for (size_t i = 1; i < job->words; i++)
    if (job->block[i] != i * 3)
      return 3;
  job->block[0] = 0xfeed;
  return 0;
}

START_TEST(test_block_shared_with_child) {
  mp_context_t *ctx = mp_test_ctx(_i);
  heap_job_t job = {.words = 100000}; /* 800 KB: most of the first megabyte */
  job.block = shared_alloc(job.words * sizeof(uint64_t));
  T_ASSERT(job.block != NULL, "alloc: %s", mp_last_error());
  T_ASSERT(((uintptr_t)job.block & 63) == 0, "block %p is not 64-byte aligned", (void *)job.block);
  for (size_t i = 1; i < job.words; i++)
    job.block[i] = i * 3;
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, child_reads_and_writes, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  T_INT_EQ(mp_test_join_code(p, 10), 0);
  T_ASSERT(job.block[0] == 0xfeed, "the child's write is not seen: %llx",
           (unsigned long long)job.block[0]);
  T_PROC_CLOSE(p);
  T_ASSERT(mp__shared_release_sized(job.block, job.words * sizeof(uint64_t)),
           "the only reference did not free the block");
}
END_TEST

/* Allocates past the arena's current size, fills it, and publishes it in block[0]. */
static int child_grows_arena(void *arg, size_t size) {
  (void)size;
  heap_job_t *job = arg;
  uint64_t *big = shared_alloc(job->grow_bytes);
  if (!big)
    return 2;
  big[job->grow_bytes / sizeof *big - 1] = 0xb16;
  big[0] = 0xb16;
  job->block[0] = (uint64_t)(uintptr_t)big;
  return 0;
}

START_TEST(test_growth_by_child_seen_by_parent) {
  mp_context_t *ctx = mp_test_ctx(_i);
  heap_job_t job = {.block = shared_alloc(64), .grow_bytes = 24u << 20};
  T_ASSERT(job.block != NULL, "alloc: %s", mp_last_error());
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, child_grows_arena, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  T_INT_EQ(mp_test_join_code(p, 10), 0);
  T_PROC_CLOSE(p);
  uint64_t *big = (uint64_t *)(uintptr_t)job.block[0];
  T_ASSERT(mp__shared_contains(big), "the child's block %p is outside our arena", (void *)big);
  T_ASSERT(big[0] == 0xb16 && big[job.grow_bytes / sizeof *big - 1] == 0xb16,
           "the child's block does not hold what it wrote");
  /* A block of the child's is ours to free, and the memory comes back zeroed. */
  T_ASSERT(mp__shared_release_sized(big, job.grow_bytes), "releasing the child's block");
  uint64_t *again = shared_alloc(job.grow_bytes);
  T_ASSERT(again == big, "the freed block was not reused (%p, %p)", (void *)again, (void *)big);
  T_ASSERT(again[0] == 0 && again[job.grow_bytes / sizeof *again - 1] == 0,
           "a reused block is not zeroed");
  mp__shared_release_sized(again, job.grow_bytes);
  mp__shared_release_sized(job.block, 64);
}
END_TEST

/* The arena lies in [0x550000000000, 0x555000000000), below where the kernel loads the
 * executable, which every sanitizer counts as application memory: ThreadSanitizer killed each
 * process whose arena lay elsewhere. Under valgrind, which refuses such addresses, it lies
 * where the kernel puts it, with valgrind's reserve. */
START_TEST(test_arena_placement) {
  void *block = shared_alloc(64);
  T_ASSERT(block != NULL, "alloc: %s", mp_last_error());
  mp__heap_map_t map;
  int fd;
  T_ASSERT(mp__heap_describe(&map, &fd), "no arena after an allocation");
  if (RUNNING_ON_VALGRIND)
    T_ASSERT(map.reserve == 512ull << 20, "reserve %#llx under valgrind",
             (unsigned long long)map.reserve);
  else
    T_ASSERT(map.base >= 0x550000000000ull && map.base + map.reserve <= 0x555000000000ull,
             "the arena [%#llx, %#llx) is outside the range every sanitizer allows",
             (unsigned long long)map.base, (unsigned long long)(map.base + map.reserve));
  mp__shared_release_sized(block, 64);
}
END_TEST

START_TEST(test_reference_counts_and_reuse) {
  char *a = shared_alloc(100);
  T_ASSERT(a != NULL, "alloc: %s", mp_last_error());
  memset(a, 'x', 100);
  mp__shared_retain(a);
  T_ASSERT(!mp__shared_release_sized(a, 100), "the first of two releases freed the block");
  T_ASSERT(mp__shared_release_sized(a, 100), "the last release did not free the block");
  char *b = shared_alloc(90); /* the same size class */
  T_ASSERT(b == a, "the freed block was not reused");
  for (int i = 0; i < 90; i++)
    T_ASSERT(b[i] == 0, "byte %d of a reused block is %d", i, b[i]);
  void *raw;
  T_INT_EQ(mp__shared_alloc_by(&raw, 5000, MP__NO_DEADLINE), 0);
  T_ASSERT(mp__shared_contains(raw), "raw alloc: %s", mp_last_error());
  T_ASSERT(!mp__shared_contains(&raw), "a stack address is in the arena");
  T_ASSERT(!mp__shared_contains(NULL), "NULL is in the arena");
  mp__shared_release_sized(raw, 5000);
  mp__shared_release_sized(b, 90);
}
END_TEST

START_TEST(test_bad_sizes) {
  void *block;
  T_INT_EQ(mp__shared_alloc(&block, 0), MP_EINVAL);
  T_ASSERT(block == NULL, "a 0-byte block was given");
  T_STR_EQ(mp_last_error(), "a shared object of 0 bytes");
  T_INT_EQ(mp__shared_alloc(&block, SIZE_MAX / 2), MP_ENOMEM);
  T_ASSERT(block == NULL, "an impossible block was given");
  T_ASSERT(strstr(mp_last_error(), "do not fit") != NULL, "%s", mp_last_error());
}
END_TEST

static int child_takes_unique(void *arg, size_t size) {
  (void)size;
  uint64_t **slot = arg;
  **slot = mp__shared_unique();
  return 0;
}

START_TEST(test_unique_across_processes) {
  mp_context_t *ctx = mp_test_ctx(_i);
  uint64_t *seen = shared_alloc(sizeof *seen);
  uint64_t before = mp__shared_unique();
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, child_takes_unique, &seen, sizeof seen, NULL);
  MP_ASSERT_OK(mp_process_start(p));
  T_INT_EQ(mp_test_join_code(p, 10), 0);
  T_PROC_CLOSE(p);
  uint64_t after = mp__shared_unique();
  T_ASSERT(before != 0 && before < *seen && *seen < after, "%llu %llu %llu",
           (unsigned long long)before, (unsigned long long)*seen, (unsigned long long)after);
  mp__shared_release_sized(seen, sizeof *seen);
}
END_TEST

/* Writes a byte to the passed fd, and checks the unpassed key is unknown here. */
typedef struct {
  uint64_t passed, not_passed;
} fd_job_t;

static int child_uses_passed_fd(void *arg, size_t size) {
  (void)size;
  fd_job_t *job = arg;
  if (mp__fd_lookup(job->not_passed) != MP_ENOTPASSED)
    return 2;
  int fd = mp__fd_lookup(job->passed);
  if (fd < 0)
    return 3;
  return write(fd, "k", 1) == 1 ? 0 : 4;
}

START_TEST(test_fd_passed_by_key) {
  mp_context_t *ctx = mp_test_ctx(_i);
  int passed[2], other[2];
  T_ASSERT(pipe2(passed, O_CLOEXEC) == 0 && pipe2(other, O_CLOEXEC) == 0, "pipe2");
  fd_job_t job;
  MP_ASSERT_OK(mp__fd_share(passed[1], &job.passed));
  MP_ASSERT_OK(mp__fd_share(other[1], &job.not_passed));
  T_INT_EQ(mp__fd_lookup(job.passed), passed[1]);
  mp_process_t *p;
  T_PROC_NEW(&p, ctx, child_uses_passed_fd, &job, sizeof job, NULL);
  MP_ASSERT_OK(mp__process_pass_fd(p, job.passed));
  MP_ASSERT_OK(mp__process_pass_fd(p, job.passed)); /* twice is once */
  MP_ASSERT_ERR(mp__process_pass_fd(p, 0), MP_ENOTPASSED);
  MP_ASSERT_OK(mp_process_start(p));
  MP_ASSERT_ERR(mp__process_pass_fd(p, job.passed), MP_ESTARTED);
  T_INT_EQ(mp_test_join_code(p, 10), 0);
  T_PROC_CLOSE(p);
  MP_ASSERT_OK(mp__fd_unshare(job.passed));
  MP_ASSERT_ERR(mp__fd_unshare(job.passed), MP_ENOTPASSED);
  MP_ASSERT_ERR(mp__fd_lookup(job.passed), MP_ENOTPASSED);
  char c = 0;
  T_INT_EQ(read(passed[0], &c, 1), 1);
  T_INT_EQ(c, 'k');
  /* With every write end closed (ours unshared, the child's gone), the pipe ends. */
  T_INT_EQ(read(passed[0], &c, 1), 0);
  MP_ASSERT_OK(mp__fd_unshare(job.not_passed));
  close(passed[0]);
  close(other[0]);
}
END_TEST

/* ------------------------------------------------------------------------------------- */
/* A fork that lands inside mp__fd_unshare, while a connection's close is pending.          */

/* Lives until the test closes hold[1] (its own copy closed first). */
typedef struct {
  int hold[2];
} hold_job_t;

static int child_holds(void *arg, size_t size) {
  (void)size;
  hold_job_t *job = arg;
  close(job->hold[1]);
  char byte;
  while (read(job->hold[0], &byte, 1) < 0 && errno == EINTR) {
  }
  return 0;
}

/* Another thread forks (a plain fork() of a child_holds, or a start of proc) when the
 * unshare's hook wakes it, and lives until the child is joined: a child started by a thread
 * dies when that thread ends where the death signal cannot be had (valgrind keeps
 * SIGRTMAX). */
static struct {
  sem_t go, forked, release;
  hold_job_t job;
  mp_process_t *proc;
  pid_t pid;
  int rc;
  pthread_t thread;
} forker;

static void *forker_main(void *arg) {
  (void)arg;
  while (sem_wait(&forker.go) < 0 && errno == EINTR) {
  }
  if (forker.proc) {
    forker.rc = mp_process_start(forker.proc);
  } else {
    forker.pid = fork();
    if (forker.pid == 0)
      _exit(child_holds(&forker.job, sizeof forker.job));
  }
  sem_post(&forker.forked); /* the hook's, if it still waits */
  sem_post(&forker.forked); /* join_forker's */
  while (sem_wait(&forker.release) < 0 && errno == EINTR) {
  }
  return NULL;
}

/* The hook, once: inside the unshare, the table half-updated, the forker forks. It waits
 * for the fork at most a second: a fork that waits for the table's lock, as it must, comes
 * after the unshare instead. */
static void fork_inside_unshare(void) {
  mp__fd_unshare_hook = NULL;
  sem_post(&forker.go);
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += (time_t)mp_test_slowdown();
  while (sem_timedwait(&forker.forked, &until) < 0 && errno == EINTR) {
  }
}

/* Arms the hook and the forker: a start of the fork method, or a plain fork(); the caller
 * then unshares. */
static void arm_forker(bool start) {
  T_INT_EQ(sem_init(&forker.go, 0, 0), 0);
  T_INT_EQ(sem_init(&forker.forked, 0, 0), 0);
  T_INT_EQ(sem_init(&forker.release, 0, 0), 0);
  T_INT_EQ(pipe2(forker.job.hold, O_CLOEXEC), 0);
  forker.proc = NULL;
  if (start)
    T_PROC_NEW(&forker.proc, mp_test_ctx(0), child_holds, &forker.job, sizeof forker.job,
               NULL);
  forker.pid = -1;
  forker.rc = 0;
  T_INT_EQ(pthread_create(&forker.thread, NULL, forker_main, NULL), 0);
  mp__fd_unshare_hook = fork_inside_unshare;
}

/* Waits for the forker's fork: its child runs. */
static void join_forker(void) {
  while (sem_wait(&forker.forked) < 0 && errno == EINTR) {
  }
  if (forker.pid > 0)
    mp_test_track_pid(forker.pid);
  T_ASSERT(forker.proc || forker.pid > 0, "fork: %s", strerror(errno));
  MP_ASSERT_OK(forker.rc);
}

/* Lets the forker's child go, then judges the reader's receive, taken while it lived: it
 * must have seen end of file. */
static void release_forker(int rc) {
  close(forker.job.hold[0]);
  close(forker.job.hold[1]);
  if (forker.proc) {
    T_INT_EQ(mp_test_join_code(forker.proc, 10), 0);
    T_PROC_CLOSE(forker.proc);
  } else {
    T_INT_EQ(waitpid(forker.pid, NULL, 0), forker.pid);
    for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++)
      if (mp_test_pids[i] == forker.pid)
        mp_test_pids[i] = 0; /* reaped */
  }
  sem_post(&forker.release);
  T_INT_EQ(pthread_join(forker.thread, NULL), 0);
  sem_destroy(&forker.go);
  sem_destroy(&forker.forked);
  sem_destroy(&forker.release);
  T_ASSERT(rc == MP_EEOF, "the reader saw no end of file while the forked child lived: %s",
           mp_err_name(rc));
}

typedef struct {
  mp_conn_t *conn;
  int rc;
} recv_job_t;

static void *thread_receives(void *arg) {
  recv_job_t *job = arg;
  char buf[8];
  size_t len;
  job->rc = mp_conn_recv(job->conn, buf, sizeof buf, &len, MP_FOREVER);
  return NULL;
}

/* A plain fork() while a close waits for a receive on end x, landing while another thread
 * is inside the unshare of another pipe's fd, the table half-updated (x's last fd, the
 * table's last entry, outside it for a moment). The child must see the table whole: it
 * closes x's fds as after the close, so that x's peer sees end of file while it lives. */
START_TEST(test_plain_fork_inside_unshare_close_pending) {
  mp_conn_t *y0, *y1, *peer, *x;
  MP_ASSERT_OK(mp_pipe(true, &y0, &y1));
  MP_ASSERT_OK(mp_pipe(true, &peer, &x));
  recv_job_t receiver = {x, 1};
  pthread_t receiving;
  T_INT_EQ(pthread_create(&receiving, NULL, thread_receives, &receiver), 0);
  mp_test_sleep(0.2 * mp_test_slowdown()); /* in its read */
  MP_ASSERT_OK(mp_conn_close(x));          /* pending: the receive is in it */
  arm_forker(false);
  MP_ASSERT_OK(mp_conn_close(y0)); /* the fork lands in its first unshare */
  join_forker();
  MP_ASSERT_OK(mp_conn_send(peer, "wake", 4));
  T_INT_EQ(pthread_join(receiving, NULL), 0);
  MP_ASSERT_OK(receiver.rc);
  char buf[8];
  size_t len;
  release_forker(mp_conn_recv(peer, buf, sizeof buf, &len, 2 * mp_test_slowdown()));
  MP_ASSERT_OK(mp_conn_close(peer));
  MP_ASSERT_OK(mp_conn_close(y1));
}
END_TEST

/* A child of the fork start method forked while another thread is inside the unshare of a
 * pipe's write end (the table's last entry), closed with no call in it: the child has that
 * fd and its entry both or neither, never an fd it does not know of and cannot close, so
 * the reader sees end of file while the child lives. (Only a forked child inherits fds.) */
START_TEST(test_fork_start_inside_unshare) {
  mp_conn_t *r, *w;
  MP_ASSERT_OK(mp_pipe(false, &r, &w));
  arm_forker(true);
  MP_ASSERT_OK(mp_conn_close(w));
  join_forker();
  char buf[8];
  size_t len;
  release_forker(mp_conn_recv(r, buf, sizeof buf, &len, 2 * mp_test_slowdown()));
  MP_ASSERT_OK(mp_conn_close(r));
}
END_TEST

/* ================ wild words in the arena's header and blocks ================ */

/* lib/heap.c's arena_t, as a buggy or hostile process of the program would write it: magic,
 * reserve, size, unique, nonce (8 bytes each), the allocator's word lock, bump, then the
 * free lists by class. arena_base() checks the layout before a test relies on it. */
#define REV_OFF_RESERVE 8
#define REV_OFF_SIZE 16
#define REV_OFF_LOCK 40
#define REV_OFF_BUMP (REV_OFF_LOCK + 8)
#define REV_OFF_FREE(cls) (REV_OFF_BUMP + 8 + 8 * (size_t)(cls))

static uint64_t *rev_word(char *base, size_t off) {
  return (uint64_t *)(base + off);
}

/* The arena's base, made now if need be, its layout checked: a fresh block of 3000 bytes
 * (class 12, never used before in this test process) moves bump to its end. */
static char *arena_base(void) {
  char *probe = shared_alloc(3000);
  T_ASSERT(probe != NULL, "alloc: %s", mp_last_error());
  mp__heap_map_t map;
  int fd;
  T_ASSERT(mp__heap_describe(&map, &fd), "no arena");
  char *base = (char *)(uintptr_t)map.base;
  T_ASSERT(*rev_word(base, 0) == 0x414e5241504d424cull, "the arena's magic");
  T_ASSERT(*rev_word(base, REV_OFF_RESERVE) == map.reserve, "the arena's reserve word");
  T_ASSERT(*rev_word(base, REV_OFF_BUMP) == (uint64_t)(probe - 64 - base) + 4096,
           "the arena's bump word: %llu, the probe block at %llu",
           (unsigned long long)*rev_word(base, REV_OFF_BUMP),
           (unsigned long long)(probe - 64 - base));
  return base;
}

/* What an allocation of `size` bytes did in a plain fork of the test process (which maps the
 * same arena): exit 0, NULL with an error; 1, a block inside the arena's file; 2, a block
 * outside it; -SIG, killed by a signal; -1000, no answer in `seconds` (killed then). */
static size_t rev_alloc_size;
static int rev_alloc(void) {
  char *p = shared_alloc(rev_alloc_size);
  if (!p)
    return 0;
  bool inside = mp__shared_contains(p) && mp__shared_contains(p + rev_alloc_size - 1);
  if (inside) {
    p[0] = 1;
    p[rev_alloc_size - 1] = 1;
  }
  return inside ? 1 : 2;
}

static int alloc_in_fork(size_t size, double seconds) {
  rev_alloc_size = size;
  return mp_test_run_in_fork(rev_alloc, seconds);
}

static const char *outcome(int code) {
  static char text[64];
  if (code == -1000)
    return "no answer (hung)";
  if (code < 0)
    snprintf(text, sizeof text, "killed by signal %d (%s)", -code, strsignal(-code));
  else
    snprintf(text, sizeof text, "%s",
             code == 0   ? "refused"
             : code == 1 ? "a block inside the arena"
                         : "a block outside the arena");
  return text;
}

/* A process of the program writes the arena's size word larger (any value up to the reserve
 * passes mp__heap_attach): grow() then believes the file already long enough, and the next
 * block past the real end of the memfd is written: SIGBUS in the allocating parent. */
START_TEST(test_wild_arena_size) {
  char *base = arena_base();
  uint64_t real = *rev_word(base, REV_OFF_SIZE), reserve = *rev_word(base, REV_OFF_RESERVE),
           bump = *rev_word(base, REV_OFF_BUMP);
  /* A block that ends past the file, where the arena allows one. */
  size_t size = (size_t)(real > bump ? real - bump : 0) + (4u << 20);
  if (size > reserve / 2) /* valgrind's arena: a file as large as half the reserve */
    size = (size_t)(reserve / 2);
  mp_test_forge(_i, rev_word(base, REV_OFF_SIZE), &reserve, sizeof reserve);
  int code = alloc_in_fork(size, 10);
  *rev_word(base, REV_OFF_SIZE) = real;
  T_ASSERT(code >= 0,
           "after a child wrote the arena's size word (%llu -> %llu), a %zu-byte allocation "
           "was %s",
           (unsigned long long)real, (unsigned long long)reserve, size, outcome(code));
}
END_TEST

/* bump written near 2^64: `bump + block_size > reserve` wraps and passes, so the block is
 * placed at base + bump, that is just below the arena: a write outside it (SIGSEGV). */
START_TEST(test_wild_arena_bump) {
  char *base = arena_base();
  uint64_t real = *rev_word(base, REV_OFF_BUMP), wild = 0 - 128ull;
  mp_test_forge(_i, rev_word(base, REV_OFF_BUMP), &wild, sizeof wild);
  int code = alloc_in_fork(20000, 10); /* class 15: no free block of it yet */
  *rev_word(base, REV_OFF_BUMP) = real;
  T_ASSERT(code == 0 || code == 1,
           "after a child wrote the arena's bump word to 2^64 - 128, an allocation was %s",
           outcome(code));
}
END_TEST

/* A free list's head written past the reserve is followed unchecked: the allocation reads
 * the link of a "block" outside the arena (SIGSEGV) and would hand it out. */
START_TEST(test_wild_free_head) {
  char *base = arena_base();
  uint64_t wild = 1ull << 44; /* 16 TiB: past any reserve */
  mp_test_forge(_i, rev_word(base, REV_OFF_FREE(15)), &wild, sizeof wild);
  int code = alloc_in_fork(20000, 10);
  *rev_word(base, REV_OFF_FREE(15)) = 0;
  T_ASSERT(code == 0 || code == 1,
           "after a child wrote the class-15 free list's head to 16 TiB, an allocation was %s",
           outcome(code));
}
END_TEST

/* A free list's head written to the offset of a live block: the next allocation of that class
 * hands the live block out again and zeroes it (the allocator checks neither that a listed
 * block is free, BLOCK_FREE, nor anything else of it). */
START_TEST(test_free_head_names_live_block) {
  char *base = arena_base();
  char *live = shared_alloc(20000);
  T_ASSERT(live != NULL, "alloc: %s", mp_last_error());
  memset(live, 0x5a, 20000);
  uint64_t offset = (uint64_t)(live - 64 - base);
  mp_test_forge(_i, rev_word(base, REV_OFF_FREE(15)), &offset, sizeof offset);
  char *again = shared_alloc(20000);
  size_t lost = 0;
  for (size_t k = 0; k < 20000; k++)
    lost += live[k] != 0x5a;
  T_ASSERT(again != live && lost == 0,
           "a free list's head written to a live block: the allocation gave %s (%p, the live "
           "block at %p) and %zu of its 20000 bytes were overwritten",
           again == live ? "the live block" : "another", (void *)again, (void *)live, lost);
}
END_TEST

/* A block's class word written larger, within the file: a release that believed it (an
 * Array's close did) put the small block on the larger class's free list, and the next block
 * of that class spanned the small block's live neighbour, which the allocation zeroed. The
 * release is by the Array's size now, and refuses the class. */
START_TEST(test_forged_class_frees_neighbour) {
  (void)arena_base();
  mp_array_t *array;
  MP_ASSERT_OK(mp_raw_array_create(&array, 'B', 6000, NULL)); /* class 13: 8 KiB */
  char *a = (char *)array, *b = shared_alloc(6000);
  T_ASSERT(b == a + 8192, "two adjacent fresh 8 KiB blocks: %p %p", (void *)a, (void *)b);
  memset(b, 0x5a, 6000);
  uint32_t wild_cls = 14;
  T_INT_EQ(*(uint32_t *)(a - 64 + 4), 13);
  mp_test_forge(_i, a - 64 + 4, &wild_cls, sizeof wild_cls);
  MP_ASSERT_OK(mp_array_close(array));
  char said[256];
  snprintf(said, sizeof said, "%s", mp_last_error());
  char *c = shared_alloc(16000); /* class 14 */
  size_t lost = 0;
  for (size_t k = 0; k < 6000; k++)
    lost += b[k] != 0x5a;
  T_ASSERT(c != a && lost == 0,
           "a block whose class a child wrote 13 -> 14 was released as a 16 KiB block: the "
           "next 16 KiB allocation %s it, and %zu of its live neighbour's 6000 bytes were "
           "overwritten",
           c == a ? "reused" : "did not reuse", lost);
  T_ASSERT(strstr(said, "is not a live block of class 13") != NULL, "the close said: %s", said);
}
END_TEST

/* A freed block's reference count written back to 1 (or a release by a process that holds no
 * reference): a release that listed the block again would hand it to two allocations. */
START_TEST(test_release_of_free_block) {
  (void)arena_base();
  char *a = shared_alloc(20000); /* class 15 */
  T_ASSERT(a && mp__shared_release_sized(a, 20000), "the only reference freed the block");
  uint32_t one = 1;
  mp_test_forge(_i, a - 64 + 8, &one, sizeof one);
  T_ASSERT(mp__shared_release_sized(a, 20000), "the forged last reference");
  char said[256];
  snprintf(said, sizeof said, "%s", mp_last_error());
  char *x = shared_alloc(20000), *y = shared_alloc(20000);
  T_ASSERT(x && y && x != y,
           "after a free block's second release, two allocations gave %p and %p (the same "
           "block twice, or a refusal: the free list held it twice)",
           (void *)x, (void *)y);
  T_ASSERT(strstr(said, "is not a live block") != NULL, "the release said: %s", said);
}
END_TEST

/* The arena's reserve word written larger: allocate() and grow() bound blocks by the word
 * rather than by what this process mapped, so a block larger than half the real reserve is
 * given whose block ends past the mapping, bump moves past it, and the next allocation is
 * placed there (SIGSEGV). */
START_TEST(test_wild_arena_reserve) {
  char *base = arena_base();
  uint64_t real = *rev_word(base, REV_OFF_RESERVE), wild = 1ull << 46;
  mp_test_forge(_i, rev_word(base, REV_OFF_RESERVE), &wild, sizeof wild);
  int code = alloc_in_fork((size_t)(real / 2 + 4096), 20);
  char first[64];
  snprintf(first, sizeof first, "%s", outcome(code));
  int next = alloc_in_fork(20000, 10); /* placed at bump, now past the mapping */
  uint64_t bump = *rev_word(base, REV_OFF_BUMP);
  *rev_word(base, REV_OFF_RESERVE) = real;
  T_ASSERT(code == 0 && next >= 0,
           "after a child wrote the arena's reserve word (%llu MiB -> 64 TiB), a block of "
           "half the real reserve and more was %s, not refused (bump is now %llu MiB, past "
           "the mapping), and the next 20000-byte allocation was %s",
           (unsigned long long)(real >> 20), first, (unsigned long long)(bump >> 20),
           outcome(next));
}
END_TEST

/* The allocator's lock with a wild owner word (a thread id no thread has): taken over after a
 * slice. As a glibc robust mutex, it was waited on for ever (the kernel wakes a robust waiter
 * only when a real owner dies): every allocation and release of the program hung. */
START_TEST(test_arena_lock_of_no_thread_taken_over) {
  char *base = arena_base();
  uint32_t wild = 0x3ffffff0u; /* a tid above any pid_max */
  mp_test_forge(_i, base + REV_OFF_LOCK, &wild, sizeof wild);
  int code = alloc_in_fork(100, 5);
  *(uint32_t *)(base + REV_OFF_LOCK) = 0;
  T_ASSERT(code == 0 || code == 1,
           "after a child wrote the arena lock's owner word, an allocation was %s",
           outcome(code));
}
END_TEST

/* No word of the arena is read as a mutex's kind: where glibc's robust mutex kept its kind
 * (16 bytes into the lock), a robust priority-inheritance kind with a wild owner made
 * pthread_mutex_lock meet ESRCH from the kernel, and glibc's assertion that a robust PI mutex
 * never sees it aborted the allocating process (the parent, if it allocated next). */
START_TEST(test_arena_lock_reads_no_mutex_kind) {
  char *base = arena_base();
  int kind_at = REV_OFF_LOCK + 16, kind, wild_kind = 128 | 32 | 16; /* pshared, PI, robust */
  uint32_t owner, wild_owner = 0x3ffffff0u;
  memcpy(&kind, base + kind_at, sizeof kind);
  memcpy(&owner, base + REV_OFF_LOCK, sizeof owner);
  mp_test_forge(_i, base + kind_at, &wild_kind, sizeof wild_kind);
  mp_test_forge(_i, base + REV_OFF_LOCK, &wild_owner, sizeof wild_owner);
  int code = alloc_in_fork(100, 5);
  memcpy(base + kind_at, &kind, sizeof kind);
  memcpy(base + REV_OFF_LOCK, &owner, sizeof owner);
  T_ASSERT(code == 0 || code == 1,
           "after a child wrote a robust PI mutex's kind and a wild owner at the arena's lock, "
           "an allocation was %s",
           outcome(code));
}
END_TEST

/* A queue's put with a timeout that spills its message (an allocation) waits for the arena's
 * lock no longer than its timeout, as README's Security promises for a lock a live process
 * holds (stopped, or a forged word): MP_EFULL; a get that frees the block of the message
 * taken before it, MP_EEMPTY. A word that names no thread is taken over. The lock was taken
 * with no deadline: the put waited for ever. */
static mp_queue_t *rev_queue;
static char rev_big[3 << 20]; /* more than the 2 MiB a queue keeps as a spare */
static int rev_put_big(void) {
  int rc = mp_queue_put(rev_queue, rev_big, 1 << 20, 1.0);
  return rc == 0 ? 0 : rc == MP_EFULL ? 3 : 4;
}

static int rev_get(void) {
  size_t len = 0;
  int rc = mp_queue_get(rev_queue, rev_big, sizeof rev_big, &len, 1.0);
  return rc == 0 ? 0 : rc == MP_EEMPTY ? 3 : 4;
}

START_TEST(test_queue_timeouts_honoured_behind_arena_lock) {
  char *base = arena_base();
  MP_ASSERT_OK(mp_queue_create(&rev_queue, 0));
  uint32_t wild = 0x3ffffff0u;
  mp_test_forge(_i, base + REV_OFF_LOCK, &wild, sizeof wild);
  double start = mp_test_now();
  int code = mp_test_run_in_fork(rev_put_big, 8);
  *(uint32_t *)(base + REV_OFF_LOCK) = 0;
  T_ASSERT(code == 0,
           "mp_queue_put of a 1 MiB message with a 1 s timeout, the arena's lock "
           "held by a word naming no thread: %s after %.1f s",
           code == -1000 ? "still waiting"
           : code < 0    ? "killed"
                         : "failed",
           mp_test_now() - start);
  /* This thread, alive, named as the holder: the put's timeout ends the wait. */
  uint64_t live = mp__wlock_me_slow();
  mp_test_forge(_i, base + REV_OFF_LOCK, &live, sizeof live);
  start = mp_test_now();
  code = mp_test_run_in_fork(rev_put_big, 8);
  double took = mp_test_now() - start;
  *(uint64_t *)(base + REV_OFF_LOCK) = 0;
  T_ASSERT(code == 3 && took < 4 * mp_test_slowdown(),
           "mp_queue_put of a 1 MiB message with a 1 s timeout, the arena's lock held by a "
           "live thread: %s after %.1f s, not MP_EFULL",
           code == -1000 ? "still waiting"
           : code < 0    ? "killed"
           : code == 0   ? "put"
                         : "failed",
           took);
  size_t len = 0;
  MP_ASSERT_OK(mp_queue_get(rev_queue, rev_big, sizeof rev_big, &len, 5)); /* the 1 MiB */
  MP_ASSERT_OK(mp_queue_put(rev_queue, rev_big, sizeof rev_big, 5));
  MP_ASSERT_OK(mp_queue_get(rev_queue, rev_big, sizeof rev_big, &len, 5)); /* 3 MiB, retired */
  mp_test_forge(_i, base + REV_OFF_LOCK, &live, sizeof live);
  start = mp_test_now();
  code = mp_test_run_in_fork(rev_get, 8);
  took = mp_test_now() - start;
  *(uint64_t *)(base + REV_OFF_LOCK) = 0;
  T_ASSERT(code == 3 && took < 4 * mp_test_slowdown(),
           "mp_queue_get with a 1 s timeout, which frees the 3 MiB block of the message taken "
           "before it, the arena's lock held by a live thread: %s after %.1f s, not MP_EEMPTY",
           code == -1000 ? "still waiting"
           : code < 0    ? "killed"
           : code == 0   ? "got"
                         : "failed",
           took);
  mp_queue_free(rev_queue);
}
END_TEST

/*
 * A child forked (a plain fork(), which libmp supports) while another thread makes the arena
 * allocates: the fork waits for the arena, which the child shares. heap.create_lock, the
 * process-local mutex held while the first allocation makes the arena, had no fork handler
 * (review, stop 24): the child inherited it locked and no arena, and its first allocation
 * waited for ever. Each trial is a fresh process without an arena (a fork of the test
 * process, made before any allocation here).
 */
static _Atomic int rev_go;
static void *rev_thread_alloc(void *arg) {
  (void)arg;
  rev_go = 1;
  shared_alloc(100);
  return NULL;
}

static int rev_fork_during_creation(int spin) {
  pthread_t th;
  rev_go = 0;
  if (pthread_create(&th, NULL, rev_thread_alloc, NULL) != 0)
    return 9;
  while (!rev_go)
    ;
  for (volatile int k = 0; k < spin; k++)
    ;
  pid_t c = fork();
  if (c == 0) {
    alarm(2);
    /* Not _exit(): ThreadSanitizer's would report the parent's thread, copied into its
     * records by the fork but never joined here, as leaked. */
    syscall(SYS_exit_group, shared_alloc(100) ? 0 : 1);
  }
  pthread_join(th, NULL);
  int st = 0;
  if (c < 0 || waitpid(c, &st, 0) != c)
    return 9;
  return WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM ? 7 : 0;
}

START_TEST(test_child_forked_while_arena_is_made_allocates) {
  mp__heap_map_t map;
  int fd;
  T_ASSERT(!mp__heap_describe(&map, &fd), "the test process has an arena already");
  int hung = 0, trials = 0;
  double until = mp_test_now() + 15;
  for (; trials < 600 && !hung && mp_test_now() < until; trials++) {
    pid_t fresh = fork();
    T_ASSERT(fresh >= 0, "fork");
    if (fresh == 0) {
      alarm(0);
      _exit(rev_fork_during_creation((trials % 50) * 20));
    }
    mp_test_track_pid(fresh);
    int st = 0;
    T_ASSERT(waitpid(fresh, &st, 0) == fresh, "waitpid");
    mp_test_untrack_pid(fresh);
    T_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) != 9, "a trial failed to run: %#x", st);
    hung = WEXITSTATUS(st) == 7;
  }
  T_ASSERT(!hung,
           "trial %d: a child forked while another thread made the arena hung on its "
           "first allocation for 2 s (heap.create_lock inherited locked)",
           trials);
}
END_TEST

static char *ns_arena;
static void ns_hold_arena(void) {
  (void)mp__wlock_lock((mp__wlock_t *)(void *)(ns_arena + REV_OFF_LOCK), MP__NO_DEADLINE);
}

/* A live holder of the arena's lock in another pid namespace, whose id names no thread in
 * this one's /proc, is waited for to the deadline (MP_ETIMEDOUT). It was judged by that id
 * here and its lock taken over after a slice while it still ran (review rev2-mem). */
START_TEST(test_arena_lock_holder_in_pid_namespace_not_taken_over) {
  ns_arena = arena_base();
  pid_t h;
  T_ASSERT(mp_test_ns_start(ns_hold_arena, &h),
           "no pid namespace could be made: run it as root");
  uint64_t held = atomic_load((_Atomic uint64_t *)(void *)(ns_arena + REV_OFF_LOCK));
  void *block = NULL;
  mp__deadline_t d = {0.5, MP__DEADLINE_UNSET};
  int rc = mp__shared_alloc_by(&block, 100, &d);
  mp_test_ns_kill();
  *rev_word(ns_arena, REV_OFF_LOCK) = 0;
  if (block)
    mp__shared_release_sized(block, 100);
  T_ASSERT(rc == MP_ETIMEDOUT,
           "a live thread (pid %d in its pid namespace, word %#llx) held the arena's lock; "
           "an allocation with a 0.5 s deadline returned %s: the lock was taken over beside "
           "its live holder",
           (int)h, (unsigned long long)held, rc == 0 ? "a block" : mp_err_name(rc));
}
END_TEST

/* docs/api.md's MP_ECORRUPT row promises it for "the shared arena's header or free lists:
 * then any call that allocates a shared object, such as a create": a create returns the
 * allocator's code, where it returned MP_ENOMEM for any failure (the sentence said
 * "corrupt"). */
START_TEST(test_create_says_corrupt_arena) {
  char *base = arena_base();
  uint64_t real = *rev_word(base, REV_OFF_BUMP), wild = 0 - 128ull;
  mp_test_forge(_i, rev_word(base, REV_OFF_BUMP), &wild, sizeof wild);
  mp_lock_t *lock = NULL;
  int rc_lock = mp_lock_create(&lock);
  mp_value_t *v = NULL;
  int rc_value = mp_value_create(&v, 'i', NULL, NULL);
  mp_event_t *ev = NULL;
  int rc_event = mp_event_create(&ev);
  *rev_word(base, REV_OFF_BUMP) = real;
  T_ASSERT(rc_lock == MP_ECORRUPT && rc_value == MP_ECORRUPT && rc_event == MP_ECORRUPT,
           "after a child wrote the arena's bump word wild: mp_lock_create %s, "
           "mp_value_create %s, mp_event_create %s (MP_ECORRUPT promised)",
           mp_err_name(rc_lock), mp_err_name(rc_value), mp_err_name(rc_event));
}
END_TEST

/* In a plain fork: /proc remounted hidepid=2 in a mount namespace of its own (as a hardened
 * host mounts it), the uid dropped to nobody (a worker that gives up its privileges), then an
 * allocation with a 0.5 s deadline while the test process's thread holds the arena's lock:
 * 0 timed out, 1 got a block (the lock taken over), 2 another error, 10+ the set-up failed. */
static int rev_alloc_hidden_holder(void) {
  /* Named "none": the kernel ignores both for a change of propagation (valgrind reads them). */
  if (unshare(CLONE_NEWNS) < 0 || mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0)
    return 10;
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2") < 0)
    return 11;
  if (setgid(65534) < 0 || setuid(65534) < 0)
    return 12;
  void *block = NULL;
  mp__deadline_t d = {0.5, MP__DEADLINE_UNSET};
  int rc = mp__shared_alloc_by(&block, 100, &d);
  return rc == MP_ETIMEDOUT ? 0 : rc == 0 ? 1 : 2;
}

/* A live holder whose /proc entry the waiter may not see (hidepid, another uid) is waited
 * for to the deadline. It was judged ended, by ENOENT, and its lock taken over beside it
 * (review rev2-mem). */
START_TEST(test_arena_lock_holder_hidden_by_hidepid_not_taken_over) {
  char *base = arena_base();
  T_ASSERT(geteuid() == 0, "this test mounts /proc and becomes another user: run it as root");
  mp__wlock_t *lock = (mp__wlock_t *)(void *)(base + REV_OFF_LOCK);
  T_INT_EQ(mp__wlock_lock(lock, MP__NO_DEADLINE), 0); /* this live thread holds it */
  int code = mp_test_run_in_fork(rev_alloc_hidden_holder, 10);
  mp__wlock_unlock(lock);
  T_ASSERT(code != 1,
           "this live thread held the arena's lock; a child that dropped to uid 65534 under "
           "a /proc mounted hidepid=2 allocated with a 0.5 s deadline and got a block: the "
           "lock was taken over beside its live holder");
  T_ASSERT(code == 0, "the child's outcome: %d", code);
}
END_TEST

#define REV_RACE_SIZE ((4u << 20) - 64) /* class 22: a 4 MiB block, zeroed at each hand-out */
static char *rev_pair[2];
static pthread_barrier_t rev_bar;
static void *rev_racer(void *arg) {
  int k = (int)(intptr_t)arg;
  pthread_barrier_wait(&rev_bar);
  rev_pair[k] = shared_alloc(REV_RACE_SIZE);
  return NULL;
}

/* A free block's link written to the block itself (a cycle): the block, popped by one
 * allocation, is marked taken under the lock, so a second allocation racing the first's
 * zeroing finds no free block at the list's head (MP_ECORRUPT, the list dropped) instead of
 * the same block handed out again. Two threads allocate at once, up to 20 rounds. */
START_TEST(test_free_list_cycle_hands_block_out_once) {
  char *base = arena_base();
  int doubled = -1;
  void *same = NULL;
  for (int round = 0; round < 20 && doubled < 0; round++) {
    char *a = shared_alloc(REV_RACE_SIZE);
    T_ASSERT(a != NULL, "alloc: %s", mp_last_error());
    uint64_t off = (uint64_t)(a - 64 - base);
    T_ASSERT(mp__shared_release_sized(a, REV_RACE_SIZE), "the last reference");
    T_ASSERT(*rev_word(base, REV_OFF_FREE(22)) == off, "the block heads its free list");
    mp_test_forge(_i, a, &off, sizeof off); /* its link names itself */
    T_INT_EQ(pthread_barrier_init(&rev_bar, NULL, 2), 0);
    pthread_t t[2];
    for (int k = 0; k < 2; k++)
      T_INT_EQ(pthread_create(&t[k], NULL, rev_racer, (void *)(intptr_t)k), 0);
    for (int k = 0; k < 2; k++)
      pthread_join(t[k], NULL);
    pthread_barrier_destroy(&rev_bar);
    *rev_word(base, REV_OFF_FREE(22)) = 0;
    if (rev_pair[0] && rev_pair[0] == rev_pair[1]) {
      doubled = round;
      same = rev_pair[0];
    }
    for (int k = 0; k < 2; k++)
      if (rev_pair[k] && (k == 0 || rev_pair[1] != rev_pair[0]))
        mp__shared_release_sized(rev_pair[k], REV_RACE_SIZE);
    *rev_word(base, REV_OFF_FREE(22)) = 0; /* the released blocks leak: a fresh one next */
  }
  T_ASSERT(doubled < 0,
           "a child wrote a free 4 MiB block's link to the block itself; in round %d two "
           "threads' allocations were both given that block (%p), still in use by the first",
           doubled, same);
}
END_TEST

/* In a plain fork C: a new pid namespace, /proc left as it was (unshare -p -f without
 * --mount-proc). Its init G forks H (pid 2 there, or a little more; the outer /proc names
 * another process by that id), which takes the arena's lock and exits holding it; G then
 * allocates with a 1 s deadline: 0 the dead holder's lock taken over, 1 timed out, 2 another
 * error, 20+ the set-up failed. */
static int rev_ns_dead_holder(void) {
  if (unshare(CLONE_NEWPID) < 0)
    return 20;
  pid_t g = fork();
  if (g < 0)
    return 21;
  if (g == 0) {
    pid_t h = fork();
    if (h == 0) {
      (void)mp__wlock_lock((mp__wlock_t *)(void *)(ns_arena + REV_OFF_LOCK), MP__NO_DEADLINE);
      _exit(0); /* ends holding it */
    }
    /* h's id there names another process in the outer /proc: with a sanitizer's thread in
     * G, h is not always 2. */
    int st;
    char outer[64];
    snprintf(outer, sizeof outer, "/proc/%d/stat", (int)h);
    if (h < 2 || waitpid(h, &st, 0) != h || access(outer, F_OK) != 0)
      _exit(22);
    void *block = NULL;
    mp__deadline_t d = {1.0, MP__DEADLINE_UNSET};
    int rc = mp__shared_alloc_by(&block, 100, &d);
    _exit(rc == 0 ? 0 : rc == MP_ETIMEDOUT ? 1 : 2);
  }
  int st = 0;
  if (waitpid(g, &st, 0) != g || !WIFEXITED(st))
    return 23;
  return WEXITSTATUS(st);
}

/* Where /proc is not the pid namespace's (a program run under unshare -p -f without a /proc
 * of its own), a holder that ended is taken over. Its id names another process in that /proc,
 * whose start time the holder recorded as its own: it was judged alive for ever, and every
 * allocation without a deadline (every create) hung after its death (review rev2-mem). */
START_TEST(test_arena_lock_dead_holder_under_foreign_proc_taken_over) {
  ns_arena = arena_base();
  T_ASSERT(geteuid() == 0, "this test makes a pid namespace: run it as root");
  int code = mp_test_run_in_fork(rev_ns_dead_holder, 10);
  *rev_word(ns_arena, REV_OFF_LOCK) = 0;
  T_ASSERT(code != 1,
           "in a pid namespace whose /proc is the outer one, a thread ended holding the "
           "arena's lock; an allocation with a 1 s deadline timed out: the dead holder was "
           "judged alive (without a deadline it waits for ever)");
  T_ASSERT(code == 0, "the namespace's outcome: %d", code);
}
END_TEST

static Suite *heap_suite(void) {
  Suite *s = suite_create("heap");
  TCase *tc = mp_test_tcase(s, "arena", 20);
  tcase_add_loop_test(tc, test_block_shared_with_child, 0, N_METHODS);
  tcase_add_loop_test(tc, test_growth_by_child_seen_by_parent, 0, N_METHODS);
  tcase_add_test(tc, test_arena_placement);
  tcase_add_test(tc, test_reference_counts_and_reuse);
  tcase_add_test(tc, test_bad_sizes);
  tcase_add_loop_test(tc, test_unique_across_processes, 0, N_METHODS);
  tc = mp_test_tcase(s, "wild_words", 40);
  tcase_add_loop_test(tc, test_wild_arena_size, 0, N_METHODS);
  tcase_add_loop_test(tc, test_wild_arena_bump, 0, N_METHODS);
  tcase_add_loop_test(tc, test_wild_free_head, 0, N_METHODS);
  tcase_add_loop_test(tc, test_free_head_names_live_block, 0, N_METHODS);
  tcase_add_loop_test(tc, test_free_list_cycle_hands_block_out_once, 0, N_METHODS);
  tcase_add_loop_test(tc, test_release_of_free_block, 0, N_METHODS);
  tcase_add_loop_test(tc, test_forged_class_frees_neighbour, 0, N_METHODS);
  tcase_add_loop_test(tc, test_wild_arena_reserve, 0, N_METHODS);
  tc = mp_test_tcase(s, "arena_lock", 40);
  tcase_add_loop_test(tc, test_arena_lock_of_no_thread_taken_over, 0, N_METHODS);
  tcase_add_loop_test(tc, test_arena_lock_reads_no_mutex_kind, 0, N_METHODS);
  tcase_add_loop_test(tc, test_queue_timeouts_honoured_behind_arena_lock, 0, N_METHODS);
  tcase_add_test(tc, test_arena_lock_holder_in_pid_namespace_not_taken_over);
  tcase_add_loop_test(tc, test_create_says_corrupt_arena, 0, N_METHODS);
  tcase_add_test(tc, test_arena_lock_holder_hidden_by_hidepid_not_taken_over);
  tcase_add_test(tc, test_arena_lock_dead_holder_under_foreign_proc_taken_over);
  tc = mp_test_tcase(s, "fork", 40);
  tcase_add_test(tc, test_child_forked_while_arena_is_made_allocates);
  tc = mp_test_tcase(s, "fds", 20);
  tcase_add_loop_test(tc, test_fd_passed_by_key, 0, N_METHODS);
  tcase_add_test(tc, test_plain_fork_inside_unshare_close_pending);
  tcase_add_test(tc, test_fork_start_inside_unshare);
  return s;
}

MP_TEST_MAIN(heap_suite)
