/* bench rows of the trace (docs/trace.md): what one event costs its caller while tracing is
 * on. Off, an event site is one predictable branch: the other rows show that cost, by
 * staying where they were before the trace existed. */
#include "bench.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LABEL "bench"

/* ================================ trace.event ================================ */

/* The baseline is the least any timestamped event costs: a CLOCK_MONOTONIC read and a
 * 64-byte record (time, thread, object, a 32-byte label) appended to a buffer of this
 * thread. libmp's side is a whole event through the public API, mp_trace_mark(): the call,
 * the on-flag, a slot taken with an atomic add on the process's counter, the record written
 * into the process's mapped ring and published by its type word, and its share of the
 * write() that appends each half ring to the log. */
typedef struct {
  int64_t ts;
  uint64_t tid, obj;
  char label[32];
  uint64_t type;
} bare_record_t;

#define BARE_RECORDS 16384 /* 1 MiB, as the trace file's step */

static bare_record_t bare_records[BARE_RECORDS];
static uint64_t bare_next;

static void bare_event(void *state) {
  (void)state;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  bare_record_t *r = &bare_records[bare_next++ % BARE_RECORDS];
  r->ts = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  r->tid = 1;
  r->obj = 0;
  strncpy(r->label, LABEL, sizeof r->label);
  __atomic_store_n(&r->type, 1, __ATOMIC_RELEASE);
}

static void libmp_event(void *state) {
  (void)state;
  int rc = mp_trace_mark(LABEL);
  if (rc < 0)
    bench_die_mp("mp_trace_mark", rc);
}

/* A trace of its own, written and removed after the row. If the bench runs under MP_TRACE
 * already, its events go there. */
static void row_trace_event(const bench_config_t *cfg, bench_result_t *result) {
  char path[64];
  snprintf(path, sizeof path, "/tmp/libmp-bench-trace-%d.json", (int)getpid());
  bool own = !mp_trace_enabled();
  int rc = own ? mp_trace_start(path) : 0;
  if (rc < 0)
    bench_die_mp("mp_trace_start", rc);
  bench_pair(cfg, 20000, libmp_event, bare_event, NULL, &result->libmp, &result->baseline);
  if (own && (rc = mp_trace_stop()) < 0)
    bench_die_mp("mp_trace_stop", rc);
  if (own)
    unlink(path);
}

static const bench_row_t trace_rows[] = {
    {"trace.event", "ns/op", row_trace_event},
};

const bench_group_t bench_trace_group = BENCH_GROUP(trace_rows);
