/* bench rows of the pool: a pool's life, maps, applies and the seed lectures' calc_pi, against
 * a bare farm of forked workers that claim chunks from shared memory (the least a process
 * pool can do for the same work), against the same map on a warm pool (pool.map_cold), and
 * against a serial loop (calc_pi). */
#include "bench.h"

#include <errno.h>
#include <linux/futex.h>
#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define WORKERS 2
/* What libmp's waiter spins before it sleeps (mp__job_wait, lib/pool*.c). */
#define SPIN_NS 20000.0
/* What libmp's idle worker spins before it sleeps (mp__pool_idle, lib/pool_jobs.c). */
#define IDLE_SPIN_NS 20000.0

/* ================================ tasks ================================ */

/* x * x modulo 2^32: the squares of 10^6 items do not fit an int. */
static int square_of(int x) {
  return (int)((unsigned)x * (unsigned)x);
}

static int square(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  *(int *)result = square_of(*(const int *)arg);
  return 0;
}

/* The seed lectures' calc_pi: the samples of a unit square that fall in the quarter disc,
 * with a xorshift generator (Python's random.uniform is the slow part there, not this). */
typedef struct {
  uint64_t samples;
  uint64_t seed;
} pi_args_t;

static uint64_t count_inside(uint64_t samples, uint64_t seed) {
  uint64_t s = seed | 1, inside = 0;
  for (uint64_t i = 0; i < samples; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    double x = (double)(s >> 11) * 0x1p-53;
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    double y = (double)(s >> 11) * 0x1p-53;
    inside += x * x + y * y < 1.0;
  }
  return inside;
}

static int calc_pi(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  const pi_args_t *a = arg;
  *(uint64_t *)result = count_inside(a->samples, a->seed);
  return 0;
}

/* ============================ shared helpers ============================ */

static mp_pool_t *fork_pool(int processes) {
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  o.processes = processes;
  int rc = mp_get_context("fork", &o.context);
  mp_pool_t *pool = NULL;
  if (rc == 0)
    rc = mp_pool_create(&pool, &o);
  if (rc < 0)
    bench_die_mp("mp_pool_create", rc);
  return pool;
}

static void check_squares(const int *results, int n) {
  for (int i = 0; i < n; i++) {
    if (results[i] != square_of(i)) {
      fprintf(stderr, "bench: result %d is %d\n", i, results[i]);
      exit(1);
    }
  }
}

/* The chunksize libmp's map picks when given 0 (lib/pool.c), as Python's does. */
static size_t default_chunksize(size_t n) {
  size_t per = 4 * WORKERS;
  size_t chunksize = n / per + (n % per != 0);
  return chunksize ? chunksize : 1;
}

static void futex_wait_on(_Atomic uint32_t *word, uint32_t value) {
  syscall(SYS_futex, word, FUTEX_WAIT, value, NULL, NULL, 0);
}

static void futex_wake_n(_Atomic uint32_t *word, int n) {
  syscall(SYS_futex, word, FUTEX_WAKE, n, NULL, NULL, 0);
}

/* ============================== the bare farm ============================== */

/*
 * The baseline of every pool row: the least a pool of processes can do for a map. WORKERS
 * forked workers, as the pool has; the parent copies the items into shared memory, publishes
 * the job and wakes the sleeping workers (as many as there are chunks, at most), the workers
 * claim chunks of the pool's chunksize with an atomic fetch-add and call the same function
 * through a pointer, item by item, into shared memory, the last one wakes the parent, which
 * spins as long as libmp's waiter does before it sleeps, and copies the results out. Idle
 * workers spin as long as libmp's do (yielding the CPU as they look at the clock), then sleep,
 * each on its own word (until 2026-12-05 they slept at once, while libmp's spun 20 us: that
 * made pool.apply 0.74-0.83 and pool.map_chunk1 as low as 0.67); a job of one chunk wakes the
 * worker that went idle last, as libmp's does (waking the one asleep longest instead, as one
 * shared futex word would, made the bare apply a 20 us spin plus a wake-up). No lock, no job
 * block, no record of who runs what, no error reporting: what libmp adds is what its ratio
 * measures.
 */
typedef struct {
  _Alignas(64) _Atomic uint32_t work; /* bumped per job */
  _Atomic uint32_t stop;
  _Atomic uint32_t last_idle;       /* the worker that went idle last */
  _Atomic uint32_t asleep[WORKERS]; /* each worker asleep, or about to be */
  _Atomic uint32_t wake[WORKERS];   /* each worker's futex word */
  /* Fixed for the farm's life (set before the fork): a worker still claiming from the last
   * job draws a number past the last chunk, however late, and so claims nothing. */
  uint64_t n, chunksize;
  _Alignas(64) _Atomic uint64_t next;     /* the next chunk to claim */
  _Alignas(64) _Atomic uint64_t done;     /* items finished */
  _Alignas(64) _Atomic uint32_t finished; /* bumped when done reaches n; the parent waits */
  _Atomic uint32_t waiting;
  _Alignas(64) int items[]; /* the input, then the output, n each */
} farm_shared_t;

typedef struct {
  farm_shared_t *sh;
  size_t bytes;
  pid_t pids[WORKERS];
} farm_t;

/* The task both sides run, called through a pointer the compiler cannot see through. */
static int (*volatile task_fn)(const void *, size_t, void *, size_t *) = square;

/* An idle worker spins before it sleeps, as long as libmp's does (mp__pool_idle), and
 * yields the CPU at each look at the clock, as libmp's does: work published within the spin
 * is taken with no wake-up. */
static void farm_idle_spin(farm_shared_t *sh, uint32_t seen) {
  double spin_end = bench_now_ns() + IDLE_SPIN_NS;
  for (int i = 1; atomic_load(&sh->work) == seen && !atomic_load(&sh->stop) &&
                  bench_spin(i, spin_end, true);
       i++)
    ;
}

/* The parent's wait until *finished moves past seen: a spin as long as libmp's waiter's
 * (mp__job_wait), yielding where it does, then sleeps counted in *waiting, which the last
 * worker reads before it makes a futex call. */
static void farm_wait_finished(_Atomic uint32_t *finished, _Atomic uint32_t *waiting,
                               uint32_t seen) {
  double spin_end = bench_now_ns() + SPIN_NS;
  for (int i = 1; atomic_load(finished) == seen && bench_spin(i, spin_end, bench_one_cpu());
       i++)
    ;
  while (atomic_load(finished) == seen) {
    atomic_fetch_add(waiting, 1);
    if (atomic_load(finished) == seen)
      futex_wait_on(finished, seen);
    atomic_fetch_sub(waiting, 1);
  }
}

static void farm_worker(farm_shared_t *sh, uint32_t w) {
  const int *in = sh->items;
  int *out = sh->items + sh->n;
  uint64_t n = sh->n, chunksize = sh->chunksize;
  uint32_t seen = 0;
  for (;;) {
    uint32_t work;
    farm_idle_spin(sh, seen);
    while ((work = atomic_load(&sh->work)) == seen && !atomic_load(&sh->stop)) {
      uint32_t wake = atomic_load(&sh->wake[w]);
      atomic_store(&sh->asleep[w], 1);
      atomic_store(&sh->last_idle, w);
      if (atomic_load(&sh->work) == seen && !atomic_load(&sh->stop))
        futex_wait_on(&sh->wake[w], wake);
      atomic_store(&sh->asleep[w], 0);
    }
    if (atomic_load(&sh->stop))
      _exit(0);
    seen = work;
    for (;;) {
      uint64_t chunk = atomic_fetch_add(&sh->next, 1);
      uint64_t first = chunk * chunksize;
      if (first >= n)
        break;
      uint64_t end = n - first < chunksize ? n : first + chunksize;
      for (uint64_t i = first; i < end; i++) {
        size_t len = sizeof(int);
        task_fn(&in[i], sizeof(int), &out[i], &len);
      }
      if (atomic_fetch_add(&sh->done, end - first) + (end - first) == n) {
        atomic_fetch_add(&sh->finished, 1);
        if (atomic_load(&sh->waiting))
          futex_wake_n(&sh->finished, 1);
      }
    }
  }
}

/* A farm whose every map is of n items in chunks of chunksize. */
static void farm_open(farm_t *farm, size_t n, size_t chunksize) {
  farm->bytes = sizeof(farm_shared_t) + 2 * n * sizeof(int);
  farm->sh = mmap(NULL, farm->bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (farm->sh == MAP_FAILED)
    bench_die_sys("mmap", errno);
  farm->sh->n = n;
  farm->sh->chunksize = chunksize;
  for (uint32_t w = 0; w < WORKERS; w++) {
    farm->pids[w] = fork();
    if (farm->pids[w] < 0)
      bench_die_sys("fork", errno);
    if (farm->pids[w] == 0)
      farm_worker(farm->sh, w);
  }
}

/* Wakes worker w if it sleeps. A worker that is awake sees the new job by itself: it says it
 * sleeps before it looks at the work word, the parent bumps that word before it looks. */
static void farm_wake(farm_shared_t *sh, uint32_t w, bool always) {
  if (always || atomic_load(&sh->asleep[w])) {
    atomic_fetch_add(&sh->wake[w], 1);
    futex_wake_n(&sh->wake[w], 1);
  }
}

/* One map: the farm's n items from in, their results to out. */
static void farm_map(farm_t *farm, const int *in, int *out) {
  farm_shared_t *sh = farm->sh;
  size_t n = sh->n, chunksize = sh->chunksize;
  memcpy(sh->items, in, n * sizeof(int));
  atomic_store(&sh->done, 0);
  uint32_t finished = atomic_load(&sh->finished);
  atomic_store(&sh->next, 0);
  atomic_fetch_add(&sh->work, 1);
  if (n <= chunksize)
    farm_wake(sh, atomic_load(&sh->last_idle), false);
  else
    for (uint32_t w = 0; w < WORKERS; w++)
      farm_wake(sh, w, false);

  farm_wait_finished(&sh->finished, &sh->waiting, finished);
  memcpy(out, sh->items + n, n * sizeof(int));
}

static void farm_close(farm_t *farm) {
  atomic_store(&farm->sh->stop, 1);
  atomic_fetch_add(&farm->sh->work, 1);
  for (uint32_t w = 0; w < WORKERS; w++)
    farm_wake(farm->sh, w, true);
  for (int w = 0; w < WORKERS; w++)
    while (waitpid(farm->pids[w], NULL, 0) < 0)
      if (errno != EINTR)
        bench_die_sys("waitpid", errno);
  munmap(farm->sh, farm->bytes);
}

/* ============================== pool.lifecycle ============================== */

/*
 * A pool's whole life for a little work: create a pool of 2 workers, map 4 items, destroy it.
 * The baseline is the same life of the bare farm: fork 2 workers, hand them the 4 items
 * through shared memory in chunks of the same size, collect the results, reap the workers.
 */
static const int four[4] = {0, 1, 2, 3};

static void libmp_lifecycle(void *state) {
  (void)state;
  int out[4];
  mp_pool_t *pool = fork_pool(WORKERS);
  int rc = mp_pool_map(pool, square, four, 4, sizeof(int), out, sizeof(int), 0);
  if (rc < 0)
    bench_die_mp("mp_pool_map", rc);
  check_squares(out, 4);
  mp_pool_destroy(pool);
}

static void bare_lifecycle(void *state) {
  (void)state;
  int out[4];
  farm_t farm;
  farm_open(&farm, 4, default_chunksize(4));
  farm_map(&farm, four, out);
  check_squares(out, 4);
  farm_close(&farm);
}

static void row_lifecycle(const bench_config_t *cfg, bench_result_t *result) {
  double ns[2], faults[2];
  libmp_lifecycle(NULL);
  bare_lifecycle(NULL);
  bench_pair_faults(cfg, 20, libmp_lifecycle, bare_lifecycle, NULL, ns, faults);
  result->libmp = ns[0] / 1e3;
  result->baseline = ns[1] / 1e3;
  result->faults = true;
  result->libmp_faults = faults[0];
  result->baseline_faults = faults[1];
}

/* ================================ maps ================================ */

/* A pool and a bare farm, both of WORKERS processes, and the items both map. */
typedef struct {
  mp_pool_t *pool;
  farm_t farm;
  int *in, *out;
  int n;
  size_t chunksize; /* what both sides use; never 0 */
} map_state_t;

static void libmp_map(void *state) {
  map_state_t *ms = state;
  int rc = mp_pool_map(ms->pool, square, ms->in, (size_t)ms->n, sizeof(int), ms->out,
                       sizeof(int), ms->chunksize);
  if (rc < 0)
    bench_die_mp("mp_pool_map", rc);
}

static void bare_map(void *state) {
  map_state_t *ms = state;
  farm_map(&ms->farm, ms->in, ms->out);
}

/* n items and a chunksize (0: the pool's default); each side maps once and is checked. */
static void map_state_open(map_state_t *ms, int n, size_t chunksize) {
  ms->n = n;
  ms->chunksize = chunksize ? chunksize : default_chunksize((size_t)n);
  ms->in = malloc((size_t)n * sizeof(int));
  ms->out = malloc((size_t)n * sizeof(int));
  if (!ms->in || !ms->out)
    bench_die_sys("malloc", ENOMEM);
  for (int i = 0; i < n; i++)
    ms->in[i] = i;
  ms->pool = fork_pool(WORKERS);
  farm_open(&ms->farm, (size_t)n, ms->chunksize);
  libmp_map(ms);
  check_squares(ms->out, n);
  memset(ms->out, 0, (size_t)n * sizeof(int));
  bare_map(ms);
  check_squares(ms->out, n);
}

static void map_state_close(map_state_t *ms) {
  farm_close(&ms->farm);
  mp_pool_destroy(ms->pool);
  free(ms->in);
  free(ms->out);
}

/* Both sides of a map row, per item; the results of the last map are checked. */
static void run_map_row(const bench_config_t *cfg, int n, size_t chunksize, int iterations,
                        int max_rounds, bench_result_t *result) {
  map_state_t ms = {0};
  double libmp_ns, baseline_ns;
  bench_config_t short_cfg = *cfg;
  if (short_cfg.rounds > max_rounds)
    short_cfg.rounds = max_rounds;
  map_state_open(&ms, n, chunksize);
  bench_pair(&short_cfg, iterations, libmp_map, bare_map, &ms, &libmp_ns, &baseline_ns);
  check_squares(ms.out, n);
  map_state_close(&ms);
  result->libmp = libmp_ns / n;
  result->baseline = baseline_ns / n;
}

/* 10^6 ints at the default chunksize (125,000: 8 chunks) against the bare farm with the same
 * chunks: what libmp adds to a map whose work is small but not tiny. libmp's workers call
 * the task from the shared library, the farm's from this program: on some CPUs that crossing
 * costs about 1 ns a call (docs/architecture.md, "A task called from a shared library"),
 * which this ratio includes, as a program linked with the shared library pays it. */
static void row_map(const bench_config_t *cfg, bench_result_t *result) {
  run_map_row(cfg, 1000000, 0, 3, cfg->rounds, result);
}

/* 10^5 ints one by one: the per-chunk cost of claiming, running and completing a task, on
 * both sides. */
static void row_map_chunk1(const bench_config_t *cfg, bench_result_t *result) {
  run_map_row(cfg, 100000, 1, 1, 5, result);
}

/*
 * The first 10^6 map on a fresh pool against the same map on the same pool once warm: what
 * the first use pays (job blocks faulted in, the workers' first touches). Both sides are
 * libmp; each round creates a pool (untimed), times its first map, then WARM_MAPS more, and
 * destroys it. Faults per map: the first one's, and the mean of the warm ones.
 */
#define COLD_N 1000000
#define WARM_MAPS 3

static double time_map(map_state_t *ms, double *faults) {
  double f = bench_faults(), start = bench_now_ns();
  libmp_map(ms);
  double ns = bench_now_ns() - start;
  *faults += bench_faults() - f;
  return ns;
}

static void row_map_cold(const bench_config_t *cfg, bench_result_t *result) {
  map_state_t ms = {.n = COLD_N, .chunksize = default_chunksize(COLD_N)};
  int rounds = cfg->rounds > 5 ? 5 : cfg->rounds;
  double best_cold = HUGE_VAL, best_warm = HUGE_VAL, cold_faults = 0, warm_faults = 0;
  ms.in = malloc(COLD_N * sizeof(int));
  ms.out = malloc(COLD_N * sizeof(int));
  if (!ms.in || !ms.out)
    bench_die_sys("malloc", ENOMEM);
  for (int i = 0; i < COLD_N; i++)
    ms.in[i] = i;
  for (int round = 0; round < rounds; round++) {
    ms.pool = fork_pool(WORKERS);
    double ns = time_map(&ms, &cold_faults);
    best_cold = ns < best_cold ? ns : best_cold;
    for (int i = 0; i < WARM_MAPS; i++) {
      ns = time_map(&ms, &warm_faults);
      best_warm = ns < best_warm ? ns : best_warm;
    }
    check_squares(ms.out, COLD_N);
    mp_pool_destroy(ms.pool);
  }
  free(ms.in);
  free(ms.out);
  result->libmp = best_cold / COLD_N;
  result->baseline = best_warm / COLD_N;
  result->faults = true;
  result->libmp_faults = cold_faults / rounds;
  result->baseline_faults = warm_faults / (rounds * WARM_MAPS);
}

/* ================================ apply ================================ */

static void apply_one(mp_pool_t *pool, mp_async_result_t **ar, int *x) {
  int rc = mp_pool_apply_async(pool, square, x, sizeof *x, sizeof(int), NULL, ar);
  if (rc < 0)
    bench_die_mp("mp_pool_apply_async", rc);
}

static void get_one(mp_async_result_t *ar, int x) {
  int r = 0;
  int rc = mp_async_result_get(ar, &r, sizeof r, NULL, MP_FOREVER);
  if (rc < 0)
    bench_die_mp("mp_async_result_get", rc);
  if (r != square_of(x)) {
    fprintf(stderr, "bench: apply of %d gave %d\n", x, r);
    exit(1);
  }
  mp_async_result_free(ar);
}

static void libmp_apply(void *state) {
  map_state_t *ms = state;
  mp_async_result_t *ar;
  int x = 12;
  apply_one(ms->pool, &ar, &x);
  get_one(ar, x);
}

/* 64 applies in flight, then every result (ms->n of them). */
static void libmp_apply_pipelined(void *state) {
  map_state_t *ms = state;
  mp_async_result_t *ars[64];
  for (int i = 0; i < ms->n; i++)
    apply_one(ms->pool, &ars[i], &ms->in[i]);
  for (int i = 0; i < ms->n; i++)
    get_one(ars[i], ms->in[i]);
}

/*
 * apply_async + get of one task, against a bare farm's map of one item: the parent copies the
 * item in and wakes one sleeping worker, which runs it and wakes the parent if it sleeps; the
 * parent spins 20 us first, as libmp's get does. A futex ping-pong, with libmp's spin.
 */
static void row_apply(const bench_config_t *cfg, bench_result_t *result) {
  map_state_t ms = {0};
  double libmp_ns, baseline_ns;
  map_state_open(&ms, 1, 1);
  for (int i = 0; i < 100; i++)
    libmp_apply(&ms);
  bench_pair(cfg, 2000, libmp_apply, bare_map, &ms, &libmp_ns, &baseline_ns);
  check_squares(ms.out, 1);
  map_state_close(&ms);
  result->libmp = libmp_ns / 1e3;
  result->baseline = baseline_ns / 1e3;
}

/*
 * 64 apply_async in flight, then every get, per task, against the bare farm's map of 64
 * items in chunks of 1: the same 64 tasks, each claimed and completed alone, with one
 * wake-up of the workers and one of the parent at most, which is what a queue of applies
 * needs at the least.
 */
static void row_apply_pipelined(const bench_config_t *cfg, bench_result_t *result) {
  map_state_t ms = {0};
  double libmp_ns, baseline_ns;
  map_state_open(&ms, 64, 1);
  libmp_apply_pipelined(&ms);
  bench_pair(cfg, 50, libmp_apply_pipelined, bare_map, &ms, &libmp_ns, &baseline_ns);
  check_squares(ms.out, 64);
  map_state_close(&ms);
  result->libmp = libmp_ns / 1e3 / ms.n;
  result->baseline = baseline_ns / 1e3 / ms.n;
}

/* ================================ calc_pi ================================ */

#define PI_SAMPLES 100000000ull

typedef struct {
  mp_pool_t *pool;
  volatile uint64_t inside;
} pi_state_t;

static void libmp_pi(void *state) {
  pi_state_t *ps = state;
  pi_args_t args[2] = {{PI_SAMPLES / 2, 1}, {PI_SAMPLES / 2, 2}};
  uint64_t counts[2];
  int rc =
      mp_pool_starmap(ps->pool, calc_pi, args, 2, sizeof args[0], counts, sizeof counts[0], 1);
  if (rc < 0)
    bench_die_mp("mp_pool_starmap", rc);
  ps->inside = counts[0] + counts[1];
}

static void serial_pi(void *state) {
  pi_state_t *ps = state;
  ps->inside = count_inside(PI_SAMPLES / 2, 1) + count_inside(PI_SAMPLES / 2, 2);
}

static void row_calc_pi(const bench_config_t *cfg, bench_result_t *result) {
  pi_state_t ps = {fork_pool(WORKERS), 0};
  double libmp_ns, baseline_ns;
  bench_config_t short_cfg = *cfg;
  if (short_cfg.rounds > 3)
    short_cfg.rounds = 3;
  bench_pair(&short_cfg, 1, libmp_pi, serial_pi, &ps, &libmp_ns, &baseline_ns);
  double pi = 4.0 * (double)ps.inside / (double)PI_SAMPLES;
  if (pi < 3.14 || pi > 3.143) {
    fprintf(stderr, "bench: calc_pi gave %f\n", pi);
    exit(1);
  }
  mp_pool_destroy(ps.pool);
  result->libmp = libmp_ns / 1e6;
  result->baseline = baseline_ns / 1e6;
}

/* ============================== pool.map_shared ============================== */

/*
 * A map whose items and results already live in shared memory, read and written in place:
 * 8 Mi doubles in a named segment, out[i] = 2 * in[i] + 1 into 8 Mi more of the same segment
 * (128 MiB in all: more than the last-level caches hold), by mp_pool_map_shared in the pool's
 * default chunks (8 of 1 Mi items), per MiB moved (read and written). The baseline is a bare
 * farm reading and writing the same segment in place: the same WORKERS forked processes, the
 * same chunks, claimed with an atomic fetch-add and run by the same chunk function through a
 * pointer; the parent wakes the workers and waits for the last chunk, spinning as libmp's
 * waiter does before it sleeps. Neither side copies an item or a result, so both move the same
 * bytes with the same processes and the ratio is what libmp's map machinery adds where a map's
 * time is memory bandwidth. Page faults per map are counted on both sides: a worker's first
 * touch of a chunk's pages is paid once, in the untimed first maps.
 */
#define SHARED_ITEMS (8u << 20)
#define SHARED_MIB (2.0 * SHARED_ITEMS * sizeof(double) / (1 << 20))

static int twice_plus_one(const void *in, void *out, size_t first, size_t count, void *user) {
  (void)first;
  (void)user;
  const double *x = in;
  double *y = out;
  for (size_t i = 0; i < count; i++)
    y[i] = 2 * x[i] + 1;
  return 0;
}

static int (*volatile chunk_fn)(const void *, void *, size_t, size_t, void *) = twice_plus_one;

/* The bare farm's control words, in a shared mapping of their own. */
typedef struct {
  _Alignas(64) _Atomic uint32_t work; /* futex: bumped per map, and to stop */
  _Atomic uint32_t stop;
  _Alignas(64) _Atomic uint64_t next; /* the next chunk to claim */
  _Alignas(64) _Atomic uint64_t done; /* items finished */
  _Alignas(64) _Atomic uint32_t finished;
  _Atomic uint32_t waiting;
} inplace_ctl_t;

typedef struct {
  mp_pool_t *pool;
  mp_shared_memory_t *shm;
  double *in, *out; /* the segment's halves, as this process maps them */
  size_t chunksize;
  inplace_ctl_t *ctl;
  pid_t pids[WORKERS];
} shared_state_t;

static void inplace_worker(const shared_state_t *ss) {
  inplace_ctl_t *ctl = ss->ctl;
  uint32_t seen = 0;
  for (;;) {
    uint32_t work;
    while ((work = atomic_load(&ctl->work)) == seen)
      futex_wait_on(&ctl->work, seen);
    seen = work;
    if (atomic_load(&ctl->stop))
      _exit(0);
    uint64_t first;
    while ((first = atomic_fetch_add(&ctl->next, 1) * ss->chunksize) < SHARED_ITEMS) {
      uint64_t count =
          SHARED_ITEMS - first < ss->chunksize ? SHARED_ITEMS - first : ss->chunksize;
      chunk_fn(ss->in + first, ss->out + first, first, count, NULL);
      if (atomic_fetch_add(&ctl->done, count) + count == SHARED_ITEMS) {
        atomic_fetch_add(&ctl->finished, 1);
        if (atomic_load(&ctl->waiting))
          futex_wake_n(&ctl->finished, 1);
      }
    }
  }
}

static void bare_map_inplace(void *state) {
  inplace_ctl_t *ctl = ((shared_state_t *)state)->ctl;
  atomic_store(&ctl->done, 0);
  uint32_t finished = atomic_load(&ctl->finished);
  atomic_store(&ctl->next, 0);
  atomic_fetch_add(&ctl->work, 1);
  futex_wake_n(&ctl->work, WORKERS);
  farm_wait_finished(&ctl->finished, &ctl->waiting, finished);
}

static void libmp_map_shared(void *state) {
  shared_state_t *ss = state;
  mp_shared_span_t in = {NULL, ss->shm, 0, sizeof(double)};
  mp_shared_span_t out = {NULL, ss->shm, SHARED_ITEMS * sizeof(double), sizeof(double)};
  int rc = mp_pool_map_shared(ss->pool, twice_plus_one, &in, &out, SHARED_ITEMS, ss->chunksize,
                              NULL);
  if (rc < 0)
    bench_die_mp("mp_pool_map_shared", rc);
}

static void check_twice_plus_one(shared_state_t *ss) {
  for (size_t i = 0; i < SHARED_ITEMS; i++) {
    if (ss->out[i] != 2 * ss->in[i] + 1) {
      fprintf(stderr, "bench: map_shared result %zu is %g\n", i, ss->out[i]);
      exit(1);
    }
  }
  memset(ss->out, 0, SHARED_ITEMS * sizeof(double));
}

static void row_map_shared(const bench_config_t *cfg, bench_result_t *result) {
  shared_state_t ss = {.pool = fork_pool(WORKERS),
                       .chunksize = default_chunksize(SHARED_ITEMS)};
  int rc = mp_shared_memory_create(&ss.shm, NULL, 2 * SHARED_ITEMS * sizeof(double), 0);
  if (rc < 0)
    bench_die_mp("mp_shared_memory_create", rc);
  ss.in = mp_shared_memory_buf(ss.shm);
  ss.out = ss.in + SHARED_ITEMS;
  for (size_t i = 0; i < SHARED_ITEMS; i++)
    ss.in[i] = (double)i;
  ss.ctl =
      mmap(NULL, sizeof *ss.ctl, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (ss.ctl == MAP_FAILED)
    bench_die_sys("mmap", errno);
  for (int w = 0; w < WORKERS; w++) {
    ss.pids[w] = fork();
    if (ss.pids[w] < 0)
      bench_die_sys("fork", errno);
    if (ss.pids[w] == 0)
      inplace_worker(&ss);
  }
  /* Each side's first maps fault the segment's pages into its workers (each worker those of
   * the chunks it claims): not timed. */
  for (int i = 0; i < 8; i++) {
    libmp_map_shared(&ss);
    check_twice_plus_one(&ss);
    bare_map_inplace(&ss);
    check_twice_plus_one(&ss);
  }
  /* One map per round, three times the rounds: a 5 ms map is the unit a busy machine's
   * preemptions spare most often. */
  double ns[2], faults[2];
  bench_config_t many = *cfg;
  many.rounds = 3 * cfg->rounds;
  bench_pair_faults(&many, 1, libmp_map_shared, bare_map_inplace, &ss, ns, faults);
  check_twice_plus_one(&ss);
  atomic_store(&ss.ctl->stop, 1);
  atomic_fetch_add(&ss.ctl->work, 1);
  futex_wake_n(&ss.ctl->work, WORKERS);
  for (int w = 0; w < WORKERS; w++)
    while (waitpid(ss.pids[w], NULL, 0) < 0)
      if (errno != EINTR)
        bench_die_sys("waitpid", errno);
  munmap(ss.ctl, sizeof *ss.ctl);
  mp_pool_destroy(ss.pool);
  mp_shared_memory_unlink(ss.shm);
  mp_shared_memory_close(ss.shm);
  result->libmp = ns[0] / 1e3 / SHARED_MIB;
  result->baseline = ns[1] / 1e3 / SHARED_MIB;
  result->faults = true;
  result->libmp_faults = faults[0];
  result->baseline_faults = faults[1];
}

static const bench_row_t pool_rows[] = {
    {"pool.lifecycle", "us/op", row_lifecycle},
    {"pool.map", "ns/item", row_map},
    {"pool.map_chunk1", "ns/item", row_map_chunk1},
    {"pool.map_cold", "ns/item", row_map_cold},
    {"pool.apply", "us/op", row_apply},
    {"pool.apply_pipelined", "us/task", row_apply_pipelined},
    {"pool.calc_pi", "ms/op", row_calc_pi},
    {"pool.map_shared", "us/MiB", row_map_shared},
};

const bench_group_t bench_pool_group = BENCH_GROUP(pool_rows);
