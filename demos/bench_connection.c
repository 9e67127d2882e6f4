/* bench rows of the connection layer: a message there and back between two processes,
 * against the same ping-pong over bare pipes. */
#include "bench.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define MESSAGE_SIZE 8

typedef struct {
  mp_conn_t *conn; /* libmp: the parent's end */
  int to_child;    /* bare: the parent's pipe ends */
  int from_child;
} roundtrip_state_t;

/* The libmp child: echoes every message until end of file. */
static int echo_messages(void *arg, size_t size) {
  (void)size;
  mp_conn_t *conn = *(mp_conn_t **)arg;
  char buf[64];
  size_t got;
  while (mp_conn_recv(conn, buf, sizeof buf, &got, MP_FOREVER) == 0)
    if (mp_conn_send(conn, buf, got) < 0)
      return 1;
  return 0;
}

static void libmp_roundtrip(void *state) {
  roundtrip_state_t *rs = state;
  char buf[64] = "12345678";
  size_t got;
  int rc;

  if ((rc = mp_conn_send(rs->conn, buf, MESSAGE_SIZE)) < 0)
    bench_die_mp("mp_conn_send", rc);
  if ((rc = mp_conn_recv(rs->conn, buf, sizeof buf, &got, MP_FOREVER)) < 0)
    bench_die_mp("mp_conn_recv", rc);
  if (got != MESSAGE_SIZE) {
    fprintf(stderr, "bench: %zu bytes came back instead of %d\n", got, MESSAGE_SIZE);
    exit(1);
  }
}

/* The bare side reads and writes the 8 bytes whole, as a pipe of one writer delivers them. */
static void bare_exchange(int to, int from, char *buf) {
  if (write(to, buf, MESSAGE_SIZE) != MESSAGE_SIZE)
    bench_die_sys("write", errno);
  if (read(from, buf, MESSAGE_SIZE) != MESSAGE_SIZE)
    bench_die_sys("read", errno);
}

static void bare_roundtrip(void *state) {
  roundtrip_state_t *rs = state;
  char buf[MESSAGE_SIZE] = "12345678";
  bare_exchange(rs->to_child, rs->from_child, buf);
}

/* The bare child: two pipes, an echo loop, _exit at end of file. */
static pid_t start_bare_echo(roundtrip_state_t *rs) {
  int down[2], up[2];
  if (pipe(down) < 0 || pipe(up) < 0)
    bench_die_sys("pipe", errno);
  pid_t pid = fork();
  if (pid < 0)
    bench_die_sys("fork", errno);
  if (pid == 0) {
    char buf[MESSAGE_SIZE];
    close(down[1]);
    close(up[0]);
    while (read(down[0], buf, MESSAGE_SIZE) == MESSAGE_SIZE)
      if (write(up[1], buf, MESSAGE_SIZE) != MESSAGE_SIZE)
        _exit(1);
    _exit(0);
  }
  close(down[0]);
  close(up[1]);
  rs->to_child = down[1];
  rs->from_child = up[0];
  return pid;
}

static void row_pipe_roundtrip(const bench_config_t *cfg, bench_result_t *result) {
  roundtrip_state_t state;
  mp_conn_t *child_end;
  mp_process_t *proc;
  mp_context_t *ctx;
  int rc;

  if ((rc = mp_get_context("fork", &ctx)) < 0 ||
      (rc = mp_pipe(true, &state.conn, &child_end)) < 0 ||
      (rc = mp_process_create(&proc, ctx, echo_messages, &child_end, sizeof child_end, NULL)) <
          0 ||
      (rc = mp_process_start(proc)) < 0 || (rc = mp_conn_close(child_end)) < 0)
    bench_die_mp("starting the libmp echo child", rc);
  pid_t bare = start_bare_echo(&state);

  libmp_roundtrip(&state);
  bare_roundtrip(&state);
  double libmp_ns, baseline_ns;
  bench_pair(cfg, 20000, libmp_roundtrip, bare_roundtrip, &state, &libmp_ns, &baseline_ns);
  result->libmp = libmp_ns / 1e3;
  result->baseline = baseline_ns / 1e3;

  /* End of file ends both children. */
  close(state.to_child);
  close(state.from_child);
  if ((rc = mp_conn_close(state.conn)) < 0 || (rc = mp_process_join(proc, MP_FOREVER)) < 0 ||
      (rc = mp_process_close(proc)) < 0)
    bench_die_mp("ending the libmp echo child", rc);
  while (waitpid(bare, NULL, 0) < 0 && errno == EINTR)
    ;
}

static const bench_row_t connection_rows[] = {
    {"pipe.roundtrip", "us/op", row_pipe_roundtrip},
};

const bench_group_t bench_connection_group = BENCH_GROUP(connection_rows);
