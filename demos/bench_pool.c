/* bench rows of the pool: a pool's life, maps, an apply's round trip and the seed lectures'
 * calc_pi, against fork()+waitpid(), a serial loop, and a bare futex ping-pong between two
 * processes. */
#include "bench.h"

#include <errno.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* ================================ tasks ================================ */

static int square(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  int x = *(const int *)arg;
  *(int *)result = x * x;
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
    if (results[i] != i * i) {
      fprintf(stderr, "bench: result %d is %d\n", i, results[i]);
      exit(1);
    }
  }
}

/* A bare futex ping-pong: the parent sets the word to 1 and wakes the child, which sets it to
 * 2 and wakes the parent; both sleep in between. One operation is one round trip. */
typedef struct {
  _Atomic uint32_t *word;
  pid_t child;
} pingpong_t;

static void futex_wait_on(_Atomic uint32_t *word, uint32_t value) {
  syscall(SYS_futex, word, FUTEX_WAIT, value, NULL, NULL, 0);
}

static void futex_wake_one(_Atomic uint32_t *word) {
  syscall(SYS_futex, word, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static void pingpong_open(pingpong_t *pp) {
  pp->word = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (pp->word == MAP_FAILED)
    bench_die_sys("mmap", errno);
  *pp->word = 0;
  pp->child = fork();
  if (pp->child < 0)
    bench_die_sys("fork", errno);
  if (pp->child == 0) {
    for (;;) {
      uint32_t v = atomic_load(pp->word);
      if (v == 3)
        _exit(0);
      if (v == 1) {
        atomic_store(pp->word, 2);
        futex_wake_one(pp->word);
      } else {
        futex_wait_on(pp->word, v);
      }
    }
  }
}

static void pingpong_once(_Atomic uint32_t *word) {
  atomic_store(word, 1);
  futex_wake_one(word);
  uint32_t v;
  while ((v = atomic_load(word)) != 2)
    futex_wait_on(word, v);
}

static void pingpong_close(pingpong_t *pp) {
  atomic_store(pp->word, 3);
  futex_wake_one(pp->word);
  waitpid(pp->child, NULL, 0);
  munmap((void *)pp->word, 4096);
}

/* ============================== pool.lifecycle ============================== */

static void libmp_lifecycle(void *state) {
  (void)state;
  int in[4] = {0, 1, 2, 3}, out[4];
  mp_pool_t *pool = fork_pool(2);
  int rc = mp_pool_map(pool, square, in, 4, sizeof(int), out, sizeof(int), 0);
  if (rc < 0)
    bench_die_mp("mp_pool_map", rc);
  check_squares(out, 4);
  mp_pool_destroy(pool);
}

static void bare_two_forks(void *state) {
  (void)state;
  pid_t pids[2];
  for (int i = 0; i < 2; i++) {
    pids[i] = fork();
    if (pids[i] < 0)
      bench_die_sys("fork", errno);
    if (pids[i] == 0)
      _exit(0);
  }
  for (int i = 0; i < 2; i++)
    while (waitpid(pids[i], NULL, 0) < 0)
      if (errno != EINTR)
        bench_die_sys("waitpid", errno);
}

static void row_lifecycle(const bench_config_t *cfg, bench_result_t *result) {
  double libmp_ns, baseline_ns;
  libmp_lifecycle(NULL);
  bench_pair(cfg, 20, libmp_lifecycle, bare_two_forks, NULL, &libmp_ns, &baseline_ns);
  result->libmp = libmp_ns / 1e3;
  result->baseline = baseline_ns / 1e3;
}

/* ================================ maps ================================ */

typedef struct {
  mp_pool_t *pool;
  int *in, *out;
  int n;
  size_t chunksize;
  pingpong_t pp;
} map_state_t;

static void libmp_map(void *state) {
  map_state_t *ms = state;
  int rc = mp_pool_map(ms->pool, square, ms->in, (size_t)ms->n, sizeof(int), ms->out,
                       sizeof(int), ms->chunksize);
  if (rc < 0)
    bench_die_mp("mp_pool_map", rc);
}

/* What a for loop does with the same function: called through a pointer, item by item. */
static int (*volatile serial_fn)(const void *, size_t, void *, size_t *) = square;

static void serial_map(void *state) {
  map_state_t *ms = state;
  for (int i = 0; i < ms->n; i++) {
    size_t len = sizeof(int);
    serial_fn(&ms->in[i], sizeof(int), &ms->out[i], &len);
  }
}

static void map_state_open(map_state_t *ms, int n, size_t chunksize) {
  ms->n = n;
  ms->chunksize = chunksize;
  ms->in = malloc((size_t)n * sizeof(int));
  ms->out = malloc((size_t)n * sizeof(int));
  if (!ms->in || !ms->out)
    bench_die_sys("malloc", ENOMEM);
  for (int i = 0; i < n; i++)
    ms->in[i] = i;
  ms->pool = fork_pool(2);
  libmp_map(ms);
  check_squares(ms->out, n);
}

static void map_state_close(map_state_t *ms) {
  mp_pool_destroy(ms->pool);
  free(ms->in);
  free(ms->out);
}

static void row_map(const bench_config_t *cfg, bench_result_t *result) {
  map_state_t ms = {0};
  double libmp_ns, baseline_ns;
  map_state_open(&ms, 1000000, 0);
  bench_pair(cfg, 3, libmp_map, serial_map, &ms, &libmp_ns, &baseline_ns);
  map_state_close(&ms);
  result->libmp = libmp_ns / ms.n;
  result->baseline = baseline_ns / ms.n;
}

static void pingpong_op(void *state) {
  pingpong_once(((map_state_t *)state)->pp.word);
}

/* The baseline side runs n round trips, so that both sides time the same number of items. */
static void pingpong_items(void *state) {
  map_state_t *ms = state;
  for (int i = 0; i < ms->n; i++)
    pingpong_once(ms->pp.word);
}

static void row_map_chunk1(const bench_config_t *cfg, bench_result_t *result) {
  map_state_t ms = {0};
  double libmp_ns, baseline_ns;
  map_state_open(&ms, 100000, 1);
  pingpong_open(&ms.pp);
  bench_config_t short_cfg = *cfg;
  if (short_cfg.rounds > 5)
    short_cfg.rounds = 5;
  bench_pair(&short_cfg, 1, libmp_map, pingpong_items, &ms, &libmp_ns, &baseline_ns);
  pingpong_close(&ms.pp);
  map_state_close(&ms);
  result->libmp = libmp_ns / 1e3 / ms.n;
  result->baseline = baseline_ns / 1e3 / ms.n;
}

/* ================================ apply ================================ */

static void libmp_apply(void *state) {
  map_state_t *ms = state;
  mp_async_result_t *ar;
  int x = 12, r = 0;
  int rc = mp_pool_apply_async(ms->pool, square, &x, sizeof x, sizeof r, NULL, &ar);
  if (rc == 0)
    rc = mp_async_result_get(ar, &r, sizeof r, NULL, MP_FOREVER);
  if (rc < 0)
    bench_die_mp("mp_pool_apply_async / mp_async_result_get", rc);
  if (r != 144) {
    fprintf(stderr, "bench: apply gave %d\n", r);
    exit(1);
  }
  mp_async_result_free(ar);
}

static void row_apply(const bench_config_t *cfg, bench_result_t *result) {
  map_state_t ms = {0};
  double libmp_ns, baseline_ns;
  map_state_open(&ms, 4, 0);
  pingpong_open(&ms.pp);
  for (int i = 0; i < 100; i++)
    libmp_apply(&ms);
  bench_pair(cfg, 2000, libmp_apply, pingpong_op, &ms, &libmp_ns, &baseline_ns);
  pingpong_close(&ms.pp);
  map_state_close(&ms);
  result->libmp = libmp_ns / 1e3;
  result->baseline = baseline_ns / 1e3;
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
  pi_state_t ps = {fork_pool(2), 0};
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

static const bench_row_t pool_rows[] = {
    {"pool.lifecycle", "us/op", row_lifecycle},     {"pool.map", "ns/item", row_map},
    {"pool.map_chunk1", "us/item", row_map_chunk1}, {"pool.apply", "us/op", row_apply},
    {"pool.calc_pi", "ms/op", row_calc_pi},
};

const bench_group_t bench_pool_group = BENCH_GROUP(pool_rows);
