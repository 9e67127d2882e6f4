/* pipe_pingpong: Pipe and Connection, between two processes. */
#include "chart.h"
#include "demo.h"

static const demo_info_t info = {
    "pipe_pingpong [fork|spawn|forkserver] [round trips]",
    "A Pipe is two connected ends (seeds 003, 004: Python's Pipe() and Connection):\n"
    "  1. A duplex pipe: the parent sends a number, the child sends it back plus one;\n"
    "     poll() says whether a message waits, without taking it.\n"
    "  2. Round-trip time: `round trips` (default 2000) ping-pongs of messages of 8 bytes\n"
    "     to 64 KiB: min and median microseconds, against the size.\n"
    "  3. End of file: the child's loop ends when the parent closes its end; a one-way\n"
    "     pipe (Pipe(duplex=False)) only sends from one end; messages sent before a close\n"
    "     are received, then the receive says end of file (Python's EOFError).\n"
    "Exits 1 if a message comes back wrong, or poll or end of file do not behave so.",
    true};

/* The child of parts 1 and 2: returns each message with its first 8 bytes plus one, until
 * end of file. Its exit code is 0 if the loop ended by end of file. */
static int echo(void *arg, size_t size) {
  (void)size;
  mp_conn_t *conn = *(mp_conn_t **)arg;
  static char buf[1 << 16];
  for (;;) {
    size_t len;
    int rc = mp_conn_recv(conn, buf, sizeof buf, &len, 30);
    if (rc == MP_EEOF)
      return 0;
    CHECK(rc);
    long x;
    memcpy(&x, buf, sizeof x);
    x++;
    memcpy(buf, &x, sizeof x);
    CHECK(mp_conn_send(conn, buf, len));
  }
}

/* The child of part 3: sends three messages on the writing end of a one-way pipe, then
 * closes it. */
static int send_three(void *arg, size_t size) {
  (void)size;
  mp_conn_t *w = *(mp_conn_t **)arg;
  for (long i = 1; i <= 3; i++)
    CHECK(mp_conn_send(w, &i, sizeof i));
  CHECK(mp_conn_close(w));
  return 0;
}

/* Sends x in a message of size bytes and returns what comes back, checking its size. */
static long ping(mp_conn_t *conn, char *buf, size_t size, long x) {
  size_t len;
  memcpy(buf, &x, sizeof x);
  CHECK(mp_conn_send(conn, buf, size));
  CHECK(mp_conn_recv(conn, buf, size, &len, 30));
  memcpy(&x, buf, sizeof x);
  return len == size ? x : -1;
}

static mp_process_t *start_child(mp_context_t *ctx, mp_target_t target, mp_conn_t *end) {
  mp_process_t *p;
  CHECK(mp_process_create(&p, ctx, target, &end, sizeof end, NULL));
  CHECK(mp_process_start(p));
  /* The child has its own copy of the end now: close ours, or the child's close would be
   * no end of file for the other end (we would still hold one). */
  CHECK(mp_conn_close(end));
  return p;
}

static int end_child(mp_process_t *p) {
  int code;
  CHECK(mp_process_join(p, 30));
  CHECK(mp_process_exitcode(p, &code));
  CHECK(mp_process_close(p));
  return code;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  int trips = (int)demo_count(argc, argv, 2, 2000);
  static char buf[1 << 16];
  int wrong = 0;

  mp_conn_t *mine, *theirs;
  CHECK(mp_pipe(true, &mine, &theirs));
  mp_process_t *child = start_child(ctx, echo, theirs);
  printf("1. A duplex Pipe to a %s child that sends back each number plus one.\n",
         mp_context_start_method(ctx));
  int before = mp_conn_poll(mine, 0);
  CHECK(before);
  long x = 41;
  CHECK(mp_conn_send(mine, &x, sizeof x));
  int after = mp_conn_poll(mine, 5);
  CHECK(after);
  size_t len;
  CHECK(mp_conn_recv(mine, buf, sizeof buf, &len, 5));
  memcpy(&x, buf, sizeof x);
  printf("   poll(0) before sending: %s; sent 41; poll(5) then: %s; received %ld.\n\n",
         before ? "True" : "False", after ? "True" : "False", x);
  wrong += before != 0 || after != 1 || x != 42;

  static const size_t sizes[] = {8, 64, 512, 4096, 32768, 65536};
  enum { SIZES = sizeof sizes / sizeof sizes[0] };
  double xs[SIZES], mins[SIZES], medians[SIZES];
  double *us = calloc((size_t)trips, sizeof *us);
  if (!us)
    return 1;
  printf("2. Round trips: send a message, wait for it to come back (%d times per size).\n",
         trips);
  printf("   %8s %10s %12s %12s\n", "bytes", "min (us)", "median (us)", "MB/s (min)");
  demo_csv("bytes,min_us,median_us");
  demo_progress("round trips", 0, (long)trips * SIZES);
  for (int s = 0; s < SIZES; s++) {
    for (int i = 0; i < trips; i++) {
      double start = demo_now();
      long back = ping(mine, buf, sizes[s], i);
      us[i] = (demo_now() - start) * 1e6;
      wrong += back != i + 1;
      demo_progress("round trips", (long)s * trips + i + 1, (long)trips * SIZES);
    }
    medians[s] = demo_median(us, (size_t)trips), mins[s] = us[0]; /* sorted */
    xs[s] = (double)sizes[s];
    printf("   %8zu %10.1f %12.1f %12.1f\n", sizes[s], mins[s], medians[s],
           2.0 * (double)sizes[s] / mins[s]);
    demo_csv("%zu,%.2f,%.2f", sizes[s], mins[s], medians[s]);
  }
  free(us);
  printf("   A round trip is two messages, each a write and a read of the pipe and a wake-up\n"
         "   of the other process: tens of microseconds, whatever the start method.\n\n");

  CHECK(mp_conn_close(mine));
  int code = end_child(child);
  printf("3. End of file. The parent closed its end: the child's receive said end of file\n"
         "   and its loop ended (exit code %d).\n",
         code);
  wrong += code != 0;

  mp_conn_t *r, *w;
  CHECK(mp_pipe(false, &r, &w));
  int refused = mp_conn_send(r, &x, sizeof x);
  printf("   A one-way pipe: sending on its reading end fails (%s).\n", mp_err_name(refused));
  wrong += refused != MP_EINVAL;
  child = start_child(ctx, send_three, w);
  printf("   A child sent 1, 2, 3 and closed its end; the parent receives:");
  long got = 0;
  int rc;
  while ((rc = mp_conn_recv(r, &x, sizeof x, &len, 10)) == 0) {
    printf(" %ld", x);
    got++;
  }
  printf(", then %s.\n", mp_err_name(rc));
  wrong += got != 3 || rc != MP_EEOF || end_child(child) != 0;
  CHECK(mp_conn_close(r));

  if (demo_opt.chart) {
    chart_series_t series[] = {{"median", '+', xs, medians, SIZES},
                               {"min", 'o', xs, mins, SIZES}};
    chart_plot(stdout,
               &(chart_t){"Round-trip time against message size", "bytes per message",
                          "microseconds", true, true, NAN},
               series, 2);
  }
  if (wrong) {
    printf("FAILED: the pipe did not behave as explained.\n");
    return 1;
  }
  printf("\nEvery message came back right; poll and end of file behaved as in Python.\n");
  return 0;
}
