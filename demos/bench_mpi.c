/*
 * The "mpi" context's bench rows, run under mpirun by demos/bench_mpi.sh (which runs the
 * bare MPI task farm, demos/mpi_farm.c, beside it and prints the ratio):
 *   bench_mpi map N ROUNDS   mpi.map_chunk1: a map of N items with chunksize 1 on every
 *                            rank, the best round's time per item in ns
 *   bench_mpi idle SECONDS   the CPU time rank 0 and each worker rank use while a pool
 *                            waits with nothing to do, in % of a core
 */
#include <mp.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* The bare farm's task, too: an item's square. */
static int square(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)size;
  (void)result_size;
  long x;
  memcpy(&x, arg, sizeof x);
  x *= x;
  memcpy(result, &x, sizeof x);
  return 0;
}

static int whose(const void *arg, size_t size, void *result, size_t *result_size) {
  (void)arg;
  (void)size;
  (void)result_size;
  usleep(20000); /* long enough for every rank to take an item */
  int pid = getpid();
  memcpy(result, &pid, sizeof pid);
  return 0;
}

/* utime + stime of a process, in seconds. */
static double cpu_seconds(int pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f || !fgets(buf, sizeof buf, f)) {
    fprintf(stderr, "bench_mpi: cannot read %s\n", path);
    exit(1);
  }
  fclose(f);
  unsigned long utime, stime;
  const char *p = strrchr(buf, ')'); /* the name may hold spaces */
  if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
                   &stime) != 2) {
    fprintf(stderr, "bench_mpi: cannot parse %s\n", path);
    exit(1);
  }
  return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static int die(const char *what) {
  fprintf(stderr, "bench_mpi: %s: %s\n", what, mp_last_error());
  return 1;
}

int main(int argc, char **argv) {
  if (argc != 4 && !(argc == 3 && strcmp(argv[1], "idle") == 0)) {
    fprintf(stderr, "usage: bench_mpi map N ROUNDS | bench_mpi idle SECONDS (under mpirun)\n");
    return 2;
  }
  mp_pool_options_t o = MP_POOL_OPTIONS_INIT;
  mp_pool_t *pool;
  if (mp_get_context("mpi", &o.context) < 0 || mp_pool_create(&pool, &o) < 0)
    return die("creating the pool");
  int workers = mp_pool_processes(pool);
  if (strcmp(argv[1], "map") == 0) {
    size_t n = strtoul(argv[2], NULL, 10);
    int rounds = atoi(argv[3]);
    long *items = calloc(n, sizeof *items), *results = calloc(n, sizeof *results);
    if (!items || !results)
      return die("no memory");
    for (size_t i = 0; i < n; i++)
      items[i] = (long)i;
    double best = 1e30;
    for (int r = 0; r < rounds; r++) {
      double start = now_ns();
      if (mp_pool_map(pool, square, items, n, sizeof(long), results, sizeof(long), 1) < 0)
        return die("mp_pool_map");
      double per = (now_ns() - start) / (double)n;
      best = per < best ? per : best;
    }
    for (size_t i = 0; i < n; i++)
      if (results[i] != (long)(i * i))
        return die("a wrong result");
    printf("mpi.map_chunk1 libmp %d ranks: %.0f ns/item\n", workers, best);
    free(items);
    free(results);
  } else {
    int pids[64];
    int n = workers * 4 < 64 ? workers * 4 : 64;
    if (mp_pool_map(pool, whose, pids, (size_t)n, sizeof pids[0], pids, sizeof pids[0], 1) < 0)
      return die("mp_pool_map");
    double seconds = atof(argv[2]);
    double before[64], mine = cpu_seconds(getpid());
    for (int i = 0; i < n; i++)
      before[i] = cpu_seconds(pids[i]);
    usleep((useconds_t)(seconds * 1e6));
    printf("mpi.idle rank 0: %.1f%% of a core\n",
           100 * (cpu_seconds(getpid()) - mine) / seconds);
    for (int i = 0; i < n; i++) {
      bool seen = false;
      for (int j = 0; j < i; j++)
        seen |= pids[j] == pids[i];
      if (!seen)
        printf("mpi.idle worker rank (pid %d): %.1f%% of a core\n", pids[i],
               100 * (cpu_seconds(pids[i]) - before[i]) / seconds);
    }
  }
  mp_pool_destroy(pool);
  return 0;
}
