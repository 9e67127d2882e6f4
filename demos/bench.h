/*
 * bench: libmp's benchmark program, the part every group of rows shares.
 *
 * Each row times one libmp operation and the bare system calls (or the bare primitive) that
 * do the same job, in the same run, and prints both per-op costs and their ratio (libmp /
 * baseline, lower is better). The machine this runs on is shared and noisy: absolute times
 * drift from run to run, the ratio of two measurements taken side by side drifts much less.
 * So a row runs several rounds, alternates which side goes first from round to round, and
 * keeps each side's best round: noise only ever adds time, so the minimum is the closest
 * estimate of the cost.
 *
 * Rows come in groups, one file per layer (bench_process.c, ...), each exporting a
 * bench_group_t; bench.c lists the groups. A new row is one function that fills a
 * bench_result_t, plus one line in its group's table.
 */
#ifndef BENCH_H
#define BENCH_H

#include <mp.h>

#include <stdbool.h>
#include <stddef.h>

/* The argument that makes this program return at once: the posix_spawn baseline's child. */
#define BARE_CHILD_ARG "--bare-child"

typedef struct {
  int iterations; /* operations per round and side; 0 keeps each row's own default */
  int rounds;
} bench_config_t;

/* Per-op costs, in the row's unit; and, for the rows that count them (faults set), the minor
 * page faults per op of each side, its children included. */
typedef struct {
  double libmp;
  double baseline;
  bool faults;
  double libmp_faults;
  double baseline_faults;
} bench_result_t;

typedef struct {
  const char *name;
  const char *unit;
  void (*run)(const bench_config_t *cfg, bench_result_t *result);
} bench_row_t;

typedef struct {
  const bench_row_t *rows;
  size_t count;
} bench_group_t;

#define BENCH_GROUP(table) {(table), sizeof(table) / sizeof((table)[0])}

/* One operation of one side of a row. It exits the program when it fails: a number measured
 * over failed operations would be meaningless. */
typedef void (*bench_op_t)(void *state);

/* Print what failed and exit(1). */
__attribute__((noreturn)) void bench_die_mp(const char *call, int rc);
__attribute__((noreturn)) void bench_die_sys(const char *call, int err);

double bench_now_ns(void);

/* One step of a spin-wait: tells the CPU (and a sibling hyperthread) that we are spinning. */
static inline void bench_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* Step i (from 1) of a baseline's short spin before a sleep, ending at spin_end (ns): false
 * once it is over. It spins as libmp's waiters do (lib/internal.h, mp__spin): the clock read
 * every 64 steps, and the CPU yielded then if yield, which a waiter asks for when the
 * process may run on one CPU only (bench_one_cpu), an idle worker always. */
bool bench_spin(int i, double spin_end, bool yield);
/* Whether this process may run on one CPU only (its affinity, read once). */
bool bench_one_cpu(void);

/*
 * Runs `iterations` calls of each side per round (cfg->iterations if set, else
 * default_iterations), for cfg->rounds rounds, and stores each side's best per-op time in
 * nanoseconds. The side that goes first alternates, so neither always inherits the caches,
 * the CPU frequency or the pending reaping the other left behind.
 */
void bench_pair(const bench_config_t *cfg, int default_iterations, bench_op_t libmp_op,
                bench_op_t baseline_op, void *state, double *libmp_ns, double *baseline_ns);

/* The operations per round and side that bench_pair runs. */
int bench_iterations(const bench_config_t *cfg, int default_iterations);

/* Which side bench_pair runs as its op-th operation (from 0; 0: libmp, 1: the baseline),
 * for `iterations` operations per round and side: a helper process that must serve the side
 * being timed follows the same schedule. */
int bench_pair_side(long long op, int iterations);

/*
 * bench_pair, and also each side's minor page faults per op (bench_faults) averaged over all
 * its rounds: a fault count does not drift with the load as a time does.
 */
void bench_pair_faults(const bench_config_t *cfg, int default_iterations, bench_op_t libmp_op,
                       bench_op_t baseline_op, void *state, double ns[2], double faults[2]);

/*
 * The minor page faults so far of this process and of its children: those reaped
 * (RUSAGE_CHILDREN) and those alive, with what they reaped (/proc/PID/stat), so that a
 * forkserver's children count too. The difference of two calls is what happened between.
 */
double bench_faults(void);

/* The groups, one per layer. */
extern const bench_group_t bench_process_group;
extern const bench_group_t bench_synchronize_group;
extern const bench_group_t bench_shared_memory_group;
extern const bench_group_t bench_pool_group;
extern const bench_group_t bench_queues_group;
extern const bench_group_t bench_connection_group;
extern const bench_group_t bench_trace_group;
extern const bench_group_t bench_pool_forms_group;

#endif /* BENCH_H */
