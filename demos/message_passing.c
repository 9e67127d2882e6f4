/* message_passing: one sum, by shared memory and by messages only. */
#include "chart.h"
#include "demo.h"

static const demo_info_t info = {
    "message_passing [fork|spawn|forkserver] [numbers]",
    "Shared memory against distributed memory (seed 004), on one sum of 1 .. `numbers`\n"
    "(default 10^6) split over 4 worker processes:\n"
    "  shared: the numbers are in a shared Array; each worker reads its slice where it is\n"
    "     and writes its partial sum into a shared Array of results: nothing is copied;\n"
    "  messages: the workers share nothing; the parent sends each its slice through a Pipe\n"
    "     (MPI_Scatter), each sends its partial sum back on a Queue (MPI_Reduce, or\n"
    "     MPI_Gather to rank 0): every number crosses as bytes.\n"
    "The time of each and the bytes copied are printed. On one machine shared memory is\n"
    "cheaper; across machines there is none, and messages are all there is, which is what\n"
    "MPI (mpi4py) does. Exits 1 if either sum is wrong.",
    true};

#define WORKERS 4
#define SLICE_MAX (1 << 16) /* numbers per message */

typedef struct {
  mp_array_t *numbers, *partial; /* shared: the data, and one result slot per worker */
  mp_conn_t *inbox;              /* messages: the slice arrives here */
  mp_queue_t *results;           /* messages: (id, partial sum) goes here */
  mp_barrier_t *go;              /* the workers and the parent: the timing starts */
  long first, count;
  int id;
} worker_args_t;

static int shared_worker(void *arg, size_t size) {
  (void)size;
  worker_args_t *a = arg;
  CHECK(mp_barrier_wait(a->go, 60));
  const long *numbers = mp_array_ptr(a->numbers); /* read where they lie: no copy, no lock */
  long sum = 0;
  for (long i = a->first; i < a->first + a->count; i++)
    sum += numbers[i];
  CHECK(mp_array_set_long(a->partial, (size_t)a->id, sum));
  return 0;
}

static int message_worker(void *arg, size_t size) {
  (void)size;
  worker_args_t *a = arg;
  CHECK(mp_barrier_wait(a->go, 60));
  static long buf[SLICE_MAX];
  long sum = 0, received = 0;
  while (received < a->count) {
    size_t len;
    CHECK(mp_conn_recv(a->inbox, buf, sizeof buf, &len, 60));
    for (size_t i = 0; i < len / sizeof buf[0]; i++)
      sum += buf[i];
    received += (long)(len / sizeof buf[0]);
  }
  long result[2] = {a->id, sum};
  CHECK(mp_queue_put(a->results, result, sizeof result, 60));
  return 0;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  long n = demo_count(argc, argv, 2, 1000000);
  long expected = n * (n + 1) / 2;
  long *numbers = malloc((size_t)n * sizeof *numbers);
  if (!numbers)
    return 1;
  for (long i = 0; i < n; i++)
    numbers[i] = i + 1;
  long per = (n + WORKERS - 1) / WORKERS;
  worker_args_t args[WORKERS];
  mp_process_t *procs[WORKERS];
  printf("The sum of 1 .. %ld on %d %s workers, two ways.\n\n", n, WORKERS,
         mp_context_start_method(ctx));

  /* Shared memory: the data is put in the Array once; the workers read it in place. Each
   * way is timed from the moment its workers run (the Barrier) to the sum: not the starts. */
  mp_barrier_t *go;
  CHECK(mp_barrier_create(&go, WORKERS + 1, NULL, NULL));
  mp_array_t *shared, *partial;
  CHECK(mp_raw_array_create(&shared, 'l', (size_t)n, numbers));
  CHECK(mp_array_create(&partial, 'l', WORKERS, NULL, NULL));
  for (int i = 0; i < WORKERS; i++) {
    long first = i * per, count = first + per > n ? n - first : per;
    args[i] = (worker_args_t){shared, partial, NULL, NULL, go, first, count > 0 ? count : 0, i};
  }
  demo_start(procs, WORKERS, ctx, shared_worker, args, sizeof args[0]);
  CHECK(mp_barrier_wait(go, 60));
  double start = demo_now();
  int failed = demo_join(procs, WORKERS, 60); /* they have written their sums */
  long shared_sum = 0, x;
  for (size_t i = 0; i < WORKERS; i++) {
    CHECK(mp_array_get_long(partial, i, &x));
    shared_sum += x;
  }
  double shared_s = demo_now() - start;
  CHECK(mp_array_close(shared));
  CHECK(mp_array_close(partial));

  /* Messages: each worker has a Pipe in and the Queue out, and nothing else in common. */
  mp_queue_t *results;
  mp_conn_t *in[WORKERS], *out[WORKERS];
  CHECK(mp_queue_create(&results, 0));
  for (int i = 0; i < WORKERS; i++) {
    CHECK(mp_pipe(false, &in[i], &out[i]));
    long first = i * per, count = first + per > n ? n - first : per;
    args[i] = (worker_args_t){NULL, NULL, in[i], results, go, first, count > 0 ? count : 0, i};
  }
  demo_start(procs, WORKERS, ctx, message_worker, args, sizeof args[0]);
  for (int i = 0; i < WORKERS; i++)
    CHECK(mp_conn_close(in[i])); /* the worker has its own */
  CHECK(mp_barrier_wait(go, 60));
  start = demo_now();
  long bytes = 0;
  for (int i = 0; i < WORKERS; i++) {
    for (long sent = 0; sent < args[i].count; sent += SLICE_MAX) {
      long k = args[i].count - sent < SLICE_MAX ? args[i].count - sent : SLICE_MAX;
      CHECK(mp_conn_send(out[i], numbers + args[i].first + sent, (size_t)k * sizeof(long)));
      bytes += k * (long)sizeof(long);
    }
  }
  long message_sum = 0;
  for (int i = 0; i < WORKERS; i++) {
    long result[2];
    size_t len;
    CHECK(mp_queue_get(results, result, sizeof result, &len, 60));
    message_sum += result[1];
    bytes += (long)len;
  }
  double message_s = demo_now() - start;
  failed += demo_join(procs, WORKERS, 60);
  CHECK(mp_barrier_close(go));
  for (int i = 0; i < WORKERS; i++)
    CHECK(mp_conn_close(out[i]));
  CHECK(mp_queue_close(results));
  free(numbers);

  printf("  %-10s %16s %10s %14s\n", "", "sum", "seconds", "bytes sent");
  printf("  %-10s %16ld %10.4f %14d\n", "shared", shared_sum, shared_s, 0);
  printf("  %-10s %16ld %10.4f %14ld\n", "messages", message_sum, message_s, bytes);
  printf("  %-10s %16ld\n\n", "expected", expected);
  printf("Each time runs from the moment all workers run to the sum (the workers' starts,\n"
         "and filling the shared Array beforehand, are not counted).\n"
         "With messages every number is written into a pipe and read out again: %ld bytes,\n"
         "about %.0f MB/s here. On a cluster there is no shared Array: the data must be\n"
         "sent, as here, over the network. A Pipe is MPI's send/recv between two ranks; a\n"
         "Queue many-to-one, as a gather to rank 0. libmp's shared handles (Value, Array,\n"
         "Lock) work only between processes of one machine.\n",
         bytes, (double)bytes / message_s / 1e6);
  demo_csv("way,seconds,bytes");
  demo_csv("shared,%.6f,0", shared_s);
  demo_csv("messages,%.6f,%ld", message_s, bytes);
  if (demo_opt.chart) {
    const char *labels[] = {"shared", "messages"};
    double secs[] = {shared_s, message_s};
    chart_bars(stdout, "Seconds for the same sum", "s", labels, secs, 2);
  }
  if (failed || shared_sum != expected || message_sum != expected) {
    printf("FAILED: a sum is wrong.\n");
    return 1;
  }
  printf("Both sums are right.\n");
  return 0;
}
