/* fork_pitfalls: what goes wrong when a child starts, each shown and then avoided. */
#include "demo.h"

#include <errno.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

static const demo_info_t info = {
    "fork_pitfalls [fork|spawn|forkserver]",
    "The start methods' pitfalls (seeds 001, 003), each shown, then avoided:\n"
    "  1. Text printed but not yet written sits in the stdio buffer; a bare fork() copies\n"
    "     it, and parent and child both write it. libmp flushes stdout and stderr before\n"
    "     it starts a child: the text comes out once.\n"
    "  2. A lock another thread holds at the fork stays held in the child for ever (the\n"
    "     thread that would release it was not copied). A spawned child has its own,\n"
    "     free lock; a libmp Lock is one lock for every process, released for all.\n"
    "  3. The parent's own pointers, file descriptors and globals: a forked child has\n"
    "     copies, a spawned or forkserver child does not. Bytes in the target's argument\n"
    "     and libmp handles reach a child under every start method.\n"
    "  4. No `if __name__ == \"__main__\":` guard: a spawned child runs this program again,\n"
    "     yet libmp takes it over before main(), so main() never runs twice.\n"
    "The method argument (default: the default start method) is the one used where any\n"
    "method will do; parts 2 to 4 also run the other methods to compare. Exits 1 if a\n"
    "pitfall or its remedy did not behave as explained.",
    false};

static int g_global = 1; /* main() sets it to 42 */
static bool g_main_ran = false;
static pthread_mutex_t g_mutex = PTHREAD_MUTEX_INITIALIZER;

/* ---- 1. stdio buffers ---- */

static int do_nothing(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 0;
}

/* How many times `text`, printed with printf and no newline (so that it stays in the stdio
 * buffer), reaches stdout when a child is started right after: with a bare fork(), or with
 * mp_process_start() of ctx. stdout goes to a temporary file meanwhile, read back after. */
static int copies_written(const char *text, mp_context_t *ctx) {
  FILE *tmp = tmpfile();
  fflush(stdout);
  int saved = dup(STDOUT_FILENO);
  if (!tmp || saved < 0 || dup2(fileno(tmp), STDOUT_FILENO) < 0)
    exit(1);
  printf("%s", text);
  if (!ctx) {
    pid_t pid = fork();
    if (pid == 0) {
      fflush(stdout); /* what exit() would do: the child writes its copy of the buffer */
      _exit(0);
    }
    waitpid(pid, NULL, 0);
  } else {
    mp_process_t *p;
    CHECK(mp_process_create(&p, ctx, do_nothing, NULL, 0, NULL));
    CHECK(mp_process_start(p));
    CHECK(mp_process_join(p, 60));
    CHECK(mp_process_close(p));
  }
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  char buf[512] = "";
  rewind(tmp);
  size_t len = fread(buf, 1, sizeof buf - 1, tmp);
  buf[len] = '\0';
  fclose(tmp);
  int copies = 0;
  for (const char *p = buf; (p = strstr(p, text)); p += strlen(text))
    copies++;
  return copies;
}

static int part1(mp_context_t *fork_ctx) {
  printf("1. stdio buffers. \"<text>\" is printed without a newline, then a child starts;\n"
         "   how many times does it reach stdout?\n");
  int bare = copies_written("<text>", NULL), libmp = copies_written("<text>", fork_ctx);
  printf("   bare fork():                    %d times: the child wrote its copy of the buffer\n"
         "   mp_process_start() under fork:  %d time: libmp flushed before forking\n\n",
         bare, libmp);
  return bare == 2 && libmp == 1 ? 0 : 1;
}

/* ---- 2. a lock held by another thread at fork ---- */

enum { GOT_IT = 0, TIMED_OUT = 3 };

typedef struct {
  mp_lock_t *lock; /* NULL: try the program's own pthread mutex g_mutex */
} try_args_t;

static int try_lock(void *arg, size_t size) {
  (void)size;
  try_args_t *a = arg;
  if (a->lock) {
    if (mp_lock_acquire(a->lock, 10) != 0)
      return TIMED_OUT;
    CHECK(mp_lock_release(a->lock));
    return GOT_IT;
  }
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_nsec += 300000000;
  if (deadline.tv_nsec >= 1000000000)
    deadline.tv_sec++, deadline.tv_nsec -= 1000000000;
  if (pthread_mutex_timedlock(&g_mutex, &deadline) != 0)
    return TIMED_OUT;
  pthread_mutex_unlock(&g_mutex);
  return GOT_IT;
}

/* The holder thread: takes the lock, says so, holds it until told to let go. */
typedef struct {
  mp_lock_t *lock;
  pthread_mutex_t m;
  pthread_cond_t c;
  bool holding, release;
} holder_t;

static void *holder(void *arg) {
  holder_t *h = arg;
  if (h->lock)
    CHECK(mp_lock_acquire(h->lock, MP_FOREVER));
  else
    pthread_mutex_lock(&g_mutex);
  pthread_mutex_lock(&h->m);
  h->holding = true;
  pthread_cond_broadcast(&h->c);
  while (!h->release)
    pthread_cond_wait(&h->c, &h->m);
  pthread_mutex_unlock(&h->m);
  if (h->lock)
    CHECK(mp_lock_release(h->lock));
  else
    pthread_mutex_unlock(&g_mutex);
  return NULL;
}

/* Starts a child of ctx that tries the lock while another thread of this process holds it,
 * lets the thread release it after release_after seconds, and returns the child's exit
 * code and how long it waited. */
static int child_tries(mp_context_t *ctx, mp_lock_t *lock, double release_after,
                       double *waited) {
  holder_t h = {lock, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};
  pthread_t t;
  if (pthread_create(&t, NULL, holder, &h) != 0)
    exit(1);
  pthread_mutex_lock(&h.m);
  while (!h.holding)
    pthread_cond_wait(&h.c, &h.m);
  pthread_mutex_unlock(&h.m);

  try_args_t a = {lock};
  mp_process_t *p;
  int code;
  CHECK(mp_process_create(&p, ctx, try_lock, &a, sizeof a, NULL));
  double start = demo_now();
  CHECK(mp_process_start(p));
  if (mp_process_join(p, release_after) == MP_ETIMEDOUT) {
    pthread_mutex_lock(&h.m);
    h.release = true;
    pthread_cond_broadcast(&h.c);
    pthread_mutex_unlock(&h.m);
  }
  CHECK(mp_process_join(p, 30));
  *waited = demo_now() - start;
  CHECK(mp_process_exitcode(p, &code));
  CHECK(mp_process_close(p));
  pthread_mutex_lock(&h.m);
  h.release = true;
  pthread_cond_broadcast(&h.c);
  pthread_mutex_unlock(&h.m);
  pthread_join(t, NULL);
  return code;
}

static int part2(mp_context_t *ctxs[3], mp_context_t *ctx) {
  printf("2. A lock held by another thread at the fork. A thread of this process holds a\n"
         "   pthread mutex; a child tries to take it, giving up after 0.3 s (for ever, had it\n"
         "   no timeout).\n");
  int wrong = 0;
  double waited;
  for (int i = 0; i < 3; i++) {
    const char *m = mp_context_start_method(ctxs[i]);
    int code = child_tries(ctxs[i], NULL, 2, &waited);
    bool is_fork = !strcmp(m, "fork");
    printf("   %-10s child: %s\n", m,
           code == TIMED_OUT ? "still held in the child, by a thread that is not there"
                             : "free: the child's mutex is its own, never taken");
    wrong += code != (is_fork ? TIMED_OUT : GOT_IT);
  }
  mp_lock_t *lock;
  CHECK(mp_lock_create(&lock));
  int code = child_tries(ctx, lock, 0.2, &waited);
  CHECK(mp_lock_close(lock));
  printf("   With a libmp Lock instead, held by the parent's thread for 0.2 s, a %s child\n"
         "   %s after %.2f s: one lock in shared memory, released for every process.\n"
         "   Remedies: start processes before threads, use spawn or forkserver, or share a\n"
         "   libmp Lock.\n\n",
         mp_context_start_method(ctx), code == GOT_IT ? "got it" : "did not get it", waited);
  wrong += code != GOT_IT || waited < 0.15;
  return wrong;
}

/* ---- 3 and 4. pointers, fds, globals, main() ---- */

enum { SEES_GLOBAL = 1, SEES_POINTER = 2, SEES_FD = 4, MAIN_RAN = 8, GOT_ARGS = 16 };

typedef struct {
  const uint64_t *pointer; /* the parent's heap: its value crosses, not what it points to */
  uint64_t magic;          /* what the pointer points at, in the parent */
  int fd;                  /* a file descriptor of the parent's, and its file's identity */
  dev_t dev;
  ino_t ino;
  int copy;           /* a value sent as bytes */
  mp_value_t *shared; /* a handle to shared memory */
} inherit_args_t;

static int report(void *arg, size_t size) {
  (void)size;
  inherit_args_t *a = arg;
  int seen = 0;
  uint64_t word = 0;
  /* Read through the pointer without risking a crash: process_vm_readv on this process
   * fails with EFAULT where nothing is mapped. */
  struct iovec local = {&word, sizeof word}, remote = {(void *)a->pointer, sizeof word};
  if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) == (ssize_t)sizeof word &&
      word == a->magic)
    seen |= SEES_POINTER;
  struct stat st;
  if (fstat(a->fd, &st) == 0 && st.st_dev == a->dev && st.st_ino == a->ino)
    seen |= SEES_FD;
  if (g_global == 42)
    seen |= SEES_GLOBAL;
  if (g_main_ran)
    seen |= MAIN_RAN;
  long shared;
  CHECK(mp_value_get_long(a->shared, &shared));
  if (a->copy == 42 && shared == 42)
    seen |= GOT_ARGS;
  return seen;
}

static const char *yes(int seen, int bit) {
  return seen & bit ? "yes" : "no";
}

static int part3(mp_context_t *ctxs[3]) {
  printf("3. The parent's own things. main() set g_global (1 in the source) to 42; the parent\n"
         "   has a heap block holding a random number and an open file. Each child is given\n"
         "   the block's address and the descriptor's number as bytes, and 42 twice: as bytes\n"
         "   and in a shared Value.\n\n");
  printf("   %-10s %9s %15s %12s %14s %15s\n", "method", "g_global", "pointer valid",
         "fd valid", "main() ran", "bytes + Value");
  FILE *file = tmpfile();
  uint64_t *block = malloc(sizeof *block);
  struct stat st;
  if (!file || !block || fstat(fileno(file), &st) < 0)
    exit(1);
  *block = ((uint64_t)getpid() << 32) ^ (uint64_t)(demo_now() * 1e9) ^ 0x5eedULL;
  inherit_args_t a = {block, *block, fileno(file), st.st_dev, st.st_ino, 42, NULL};
  CHECK(mp_raw_value_create(&a.shared, 'l', &(long){42}));
  int wrong = 0;
  for (int i = 0; i < 3; i++) {
    const char *m = mp_context_start_method(ctxs[i]);
    mp_process_t *p;
    int seen;
    CHECK(mp_process_create(&p, ctxs[i], report, &a, sizeof a, NULL));
    CHECK(mp_process_start(p));
    CHECK(mp_process_join(p, 60));
    CHECK(mp_process_exitcode(p, &seen));
    CHECK(mp_process_close(p));
    printf("   %-10s %9s %15s %12s %14s %15s\n", m, seen & SEES_GLOBAL ? "42" : "1",
           yes(seen, SEES_POINTER), yes(seen, SEES_FD), seen & MAIN_RAN ? "(copied)" : "no",
           yes(seen, GOT_ARGS));
    int copied = SEES_GLOBAL | SEES_POINTER | SEES_FD | MAIN_RAN;
    wrong += seen != (GOT_ARGS | (!strcmp(m, "fork") ? copied : 0));
  }
  CHECK(mp_value_close(a.shared));
  free(block);
  fclose(file);
  printf("\n   A forked child has a copy of everything the parent had at the fork. A spawned\n"
         "   child is this program run afresh, and a forkserver child a fork of such a fresh\n"
         "   run: the parent's pointers lead nowhere (or to something else), its descriptors\n"
         "   are closed, its globals hold the source's values. Give a child what it needs as\n"
         "   bytes in its argument, or as libmp objects (Value, Array, Queue, Pipe): both\n"
         "   work under every method.\n\n");
  printf(
      "4. No `if __name__ == \"__main__\":` guard. The line \"main() starts\" at the top was\n"
      "   printed once, and the column \"main() ran\" says no for spawn and forkserver,\n"
      "   although their children run this very program: libmp recognises a child before\n"
      "   main() and runs its target instead. Python runs the main module's top level in\n"
      "   each spawned child, hence its guard; in C with libmp there is nothing to guard.\n"
      "   (A forked child has main()'s flag because it has a copy of the parent's memory:\n"
      "   it did not run main() either.)\n\n");
  return wrong;
}

int main(int argc, char **argv) {
  g_main_ran = true;
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  mp_context_t *ctxs[3];
  CHECK(mp_get_context("fork", &ctxs[0]));
  CHECK(mp_get_context("spawn", &ctxs[1]));
  CHECK(mp_get_context("forkserver", &ctxs[2]));
  printf("fork_pitfalls: main() starts in process %d (chosen method: %s).\n\n", (int)getpid(),
         mp_context_start_method(ctx));
  g_global = 42;

  int wrong = part1(ctxs[0]);
  wrong += part2(ctxs, ctx);
  wrong += part3(ctxs);
  if (wrong) {
    printf("FAILED: %d of the pitfalls or remedies did not behave as explained.\n", wrong);
    return 1;
  }
  printf("Every pitfall showed, and every remedy held.\n");
  return 0;
}
