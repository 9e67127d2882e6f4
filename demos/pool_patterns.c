/* pool_patterns: data parallelism and task parallelism on a Pool. */
#include "demo.h"

static const demo_info_t info = {
    "pool_patterns [fork|spawn|forkserver] [items]",
    "Seed 003's two kinds of parallel work, on a Pool of 4 workers:\n"
    "  data parallelism, the same task on many data: map (x -> x * x over `items` numbers,\n"
    "     default 1000), starmap (a + b over pairs, Python's zip(A, B)), and a sum\n"
    "     reduced from chunks with imap(chunksize=1);\n"
    "  task parallelism, different tasks at once: three apply_async calls of three\n"
    "     functions, and imap against imap_unordered over tasks of unequal length (the\n"
    "     first is the longest): imap gives the results in order, imap_unordered as they\n"
    "     finish.\n"
    "Every result is checked against the same work done serially; exits 1 if one differs\n"
    "or imap's order is wrong.",
    false};

#define WORKERS 4

static int square(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size, (void)result_size;
  long x = *(const long *)arg;
  *(long *)result = x * x;
  return 0;
}

typedef struct {
  long a, b;
} pair_t;

static int add(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size, (void)result_size;
  const pair_t *p = arg;
  *(long *)result = p->a + p->b;
  return 0;
}

/* A chunk of the data to sum: [first, first + count) of the numbers 1 .. n. */
typedef struct {
  long first, count;
} chunk_t;

static int sum_chunk(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size, (void)result_size;
  const chunk_t *c = arg;
  long s = 0;
  for (long i = c->first; i < c->first + c->count; i++)
    s += i;
  *(long *)result = s;
  return 0;
}

/* Three different tasks for apply_async, each on a limit n. */
static long count_primes(long n) {
  long count = 0;
  for (long k = 2; k < n; k++) {
    bool prime = true;
    for (long d = 2; d * d <= k && prime; d++)
      prime = k % d != 0;
    count += prime;
  }
  return count;
}

static long longest_collatz(long n) {
  long best = 0;
  for (long k = 1; k < n; k++) {
    long steps = 0;
    for (unsigned long x = (unsigned long)k; x != 1; steps++)
      x = x % 2 ? 3 * x + 1 : x / 2;
    best = steps > best ? steps : best;
  }
  return best;
}

static long sum_of_squares(long n) {
  long s = 0;
  for (long k = 1; k <= n; k++)
    s += k * k;
  return s;
}

/* apply_async's task: which of the three functions, and its limit. */
typedef struct {
  int which;
  long n;
} job_t;

static long (*const jobs[3])(long) = {count_primes, longest_collatz, sum_of_squares};

static int run_job(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size, (void)result_size;
  const job_t *j = arg;
  *(long *)result = jobs[j->which](j->n);
  return 0;
}

/* A task that sleeps (items - i) milliseconds and returns i * 10: the first is longest. */
typedef struct {
  long i, items;
} nap_t;

static int nap(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size, (void)result_size;
  const nap_t *n = arg;
  usleep((useconds_t)(2000 * (n->items - n->i)));
  *(long *)result = n->i * 10;
  return 0;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  long n = demo_count(argc, argv, 2, 1000);
  int wrong = 0;
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  o.processes = WORKERS;
  o.context = ctx;
  CHECK(mp_pool_create(&pool, &o));
  printf("A Pool of %d %s workers.\n\n", WORKERS, mp_context_start_method(ctx));

  long *xs = calloc((size_t)n, sizeof *xs), *out = calloc((size_t)n, sizeof *out);
  pair_t *pairs = calloc((size_t)n, sizeof *pairs);
  if (!xs || !out || !pairs)
    return 1;
  printf("Data parallelism: the same task on different data.\n");
  for (long i = 0; i < n; i++)
    xs[i] = i, pairs[i] = (pair_t){i, 2 * i};
  CHECK(mp_pool_map(pool, square, xs, (size_t)n, sizeof xs[0], out, sizeof out[0], 0));
  int bad = 0;
  for (long i = 0; i < n; i++)
    bad += out[i] != i * i;
  printf("  map(square, range(%ld)):          out[%ld] = %ld, %d wrong\n", n, n - 1, out[n - 1],
         bad);
  wrong += bad;
  CHECK(mp_pool_starmap(pool, add, pairs, (size_t)n, sizeof pairs[0], out, sizeof out[0], 0));
  bad = 0;
  for (long i = 0; i < n; i++)
    bad += out[i] != 3 * i;
  printf("  starmap(add, zip(A, B)):           out[%ld] = %ld, %d wrong\n", n - 1, out[n - 1],
         bad);
  wrong += bad;

  chunk_t chunks[WORKERS];
  long per = (n + WORKERS - 1) / WORKERS, total = 0;
  for (int c = 0; c < WORKERS; c++) {
    long first = 1 + c * per, last = first + per > n + 1 ? n + 1 : first + per;
    chunks[c] = (chunk_t){first, last > first ? last - first : 0};
  }
  mp_imap_t *it;
  CHECK(mp_pool_imap(pool, sum_chunk, chunks, WORKERS, sizeof chunks[0], sizeof(long), 1, &it));
  long part;
  int rc;
  while ((rc = mp_imap_next(it, &part, NULL, 30)) == 0)
    total += part;
  mp_imap_free(it);
  if (rc != MP_EEOF)
    CHECK(rc);
  printf("  sum(imap(sum, %d chunks)):          %ld (n(n+1)/2 = %ld)\n\n", WORKERS, total,
         n * (n + 1) / 2);
  wrong += total != n * (n + 1) / 2;

  printf("Task parallelism: different tasks at the same time (apply_async).\n");
  long limit = n * 20;
  mp_async_result_t *ar[3];
  const char *names[3] = {"count_primes", "longest_collatz", "sum_of_squares"};
  for (int t = 0; t < 3; t++) {
    job_t job = {t, limit};
    CHECK(mp_pool_apply_async(pool, run_job, &job, sizeof job, sizeof(long), NULL, &ar[t]));
  }
  for (int t = 0; t < 3; t++) {
    long got, want = jobs[t](limit);
    CHECK(mp_async_result_get(ar[t], &got, sizeof got, NULL, 60));
    mp_async_result_free(ar[t]);
    printf("  %-16s(%ld) = %-10ld (serially: %ld)\n", names[t], limit, got, want);
    wrong += got != want;
  }

  enum { NAPS = 8 };
  nap_t naps[NAPS];
  for (long i = 0; i < NAPS; i++)
    naps[i] = (nap_t){i, NAPS};
  printf("\n  %d tasks, the first the longest; the order in which the results come:\n", NAPS);
  for (int unordered = 0; unordered < 2; unordered++) {
    if (unordered)
      CHECK(
          mp_pool_imap_unordered(pool, nap, naps, NAPS, sizeof naps[0], sizeof(long), 1, &it));
    else
      CHECK(mp_pool_imap(pool, nap, naps, NAPS, sizeof naps[0], sizeof(long), 1, &it));
    int seen[NAPS] = {0}, k = 0, in_order = 1;
    size_t index;
    printf("  %-16s", unordered ? "imap_unordered:" : "imap:");
    while ((rc = mp_imap_next(it, &part, &index, 30)) == 0) {
      printf(" %zu", index);
      wrong += index >= NAPS || part != (long)index * 10;
      if (index < NAPS)
        seen[index]++;
      in_order &= index == (size_t)k++;
    }
    mp_imap_free(it);
    if (rc != MP_EEOF)
      CHECK(rc);
    for (int i = 0; i < NAPS; i++)
      wrong += seen[i] != 1;
    printf("%s\n", unordered ? (in_order ? "  (in order this time)" : "  (as they finished)")
                             : "  (always in order)");
    if (!unordered)
      wrong += !in_order;
  }
  printf(
      "\n  imap waits for item 0 before it hands out item 1; imap_unordered hands out each\n"
      "  result as soon as it is ready. Use map for data, apply_async for separate tasks.\n");

  CHECK(mp_pool_close(pool));
  CHECK(mp_pool_join(pool, 60));
  mp_pool_destroy(pool);
  free(xs);
  free(out);
  free(pairs);
  if (wrong) {
    printf("FAILED: %d results differ from the serial ones.\n", wrong);
    return 1;
  }
  printf("\nEvery result matches the serial computation.\n");
  return 0;
}
