/*
 * The baseline of the mpi.map_chunk1 row (demos/bench_mpi.sh): a bare MPI task farm, with
 * no libmp. Rank 0 hands items one at a time to ranks 1..N-1, keeping IN_FLIGHT items in
 * flight per rank (3, as the pool keeps chunks: lib/pool_mpi.c's DEPTH), and takes each
 * result with a blocking MPI_Recv from any rank, sending that rank its next item; the others
 * answer with blocking calls.
 * Usage: mpirun -np N mpi_farm ITEMS ROUNDS [IN_FLIGHT]; prints the best round's time per
 * item in ns.
 */
#include <mpi.h>

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

enum { TAG_ITEM = 1, TAG_STOP };

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  long n = argc > 1 ? atol(argv[1]) : 20000;
  int rounds = argc > 2 ? atoi(argv[2]) : 3;
  int in_flight = argc > 3 ? atoi(argv[3]) : 3;
  if (rank > 0) {
    for (;;) {
      long msg[2]; /* index, item */
      MPI_Status st;
      MPI_Recv(msg, 2, MPI_LONG, 0, MPI_ANY_TAG, MPI_COMM_WORLD, &st);
      if (st.MPI_TAG == TAG_STOP)
        break;
      msg[1] *= msg[1];
      MPI_Send(msg, 2, MPI_LONG, 0, TAG_ITEM, MPI_COMM_WORLD);
    }
    MPI_Finalize();
    return 0;
  }
  long *results = calloc((size_t)n, sizeof *results);
  double best = 1e30;
  for (int r = 0; r < rounds; r++) {
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long next = 0, done = 0;
    for (int k = 0; k < in_flight; k++)
      for (int w = 1; w < size && next < n; w++, next++) {
        long msg[2] = {next, next};
        MPI_Send(msg, 2, MPI_LONG, w, TAG_ITEM, MPI_COMM_WORLD);
      }
    while (done < n) {
      long msg[2];
      MPI_Status st;
      MPI_Recv(msg, 2, MPI_LONG, MPI_ANY_SOURCE, TAG_ITEM, MPI_COMM_WORLD, &st);
      results[msg[0]] = msg[1];
      done++;
      if (next < n) {
        long item[2] = {next, next};
        MPI_Send(item, 2, MPI_LONG, st.MPI_SOURCE, TAG_ITEM, MPI_COMM_WORLD);
        next++;
      }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double per =
        ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / (double)n;
    best = per < best ? per : best;
  }
  for (int w = 1; w < size; w++)
    MPI_Send(NULL, 0, MPI_LONG, w, TAG_STOP, MPI_COMM_WORLD);
  for (long i = 0; i < n; i++)
    if (results[i] != i * i) {
      fprintf(stderr, "mpi_farm: a wrong result\n");
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
  printf("mpi.map_chunk1 bare farm %d ranks, %d in flight each: %.0f ns/item\n", size - 1,
         in_flight, best);
  free(results);
  MPI_Finalize();
  return 0;
}
