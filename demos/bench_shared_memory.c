/* bench rows of named shared memory: a segment's whole life, and attaching to one, against
 * the bare shm_open() family they wrap. */
#include "bench.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* ============================ shared_memory rows ============================ */

#define SEGMENT_SIZE (64 * 1024)

typedef struct {
  char name[64];  /* the segment's name, as libmp takes it */
  char slash[66]; /* and as shm_open() does */
} shm_state_t;

/* Create, unlink, close: Python's SharedMemory(create=True), unlink(), close(). The
 * segment is tracked, as by default: one record to the tracker at create and at unlink. */
static void libmp_lifecycle_once(void *state) {
  shm_state_t *ss = state;
  mp_shared_memory_t *shm;
  int rc;

  if ((rc = mp_shared_memory_create(&shm, ss->name, SEGMENT_SIZE, 0)) < 0)
    bench_die_mp("mp_shared_memory_create", rc);
  if ((rc = mp_shared_memory_unlink(shm)) < 0)
    bench_die_mp("mp_shared_memory_unlink", rc);
  if ((rc = mp_shared_memory_close(shm)) < 0)
    bench_die_mp("mp_shared_memory_close", rc);
}

/* Opens and maps the whole segment, as attaching must (the size comes from the segment). */
static void *bare_map(const char *slash, int oflag, size_t create_size, size_t *size) {
  int fd = shm_open(slash, oflag, 0600);
  struct stat st;

  if (fd < 0)
    bench_die_sys("shm_open", errno);
  if (create_size && ftruncate(fd, (off_t)create_size) < 0)
    bench_die_sys("ftruncate", errno);
  if (!create_size && fstat(fd, &st) < 0)
    bench_die_sys("fstat", errno);
  *size = create_size ? create_size : (size_t)st.st_size;
  void *buf = mmap(NULL, *size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (buf == MAP_FAILED)
    bench_die_sys("mmap", errno);
  close(fd);
  return buf;
}

static void bare_lifecycle_once(void *state) {
  shm_state_t *ss = state;
  size_t size;
  void *buf = bare_map(ss->slash, O_RDWR | O_CREAT | O_EXCL, SEGMENT_SIZE, &size);

  if (shm_unlink(ss->slash) < 0)
    bench_die_sys("shm_unlink", errno);
  munmap(buf, size);
}

static void libmp_attach_once(void *state) {
  shm_state_t *ss = state;
  mp_shared_memory_t *shm;
  int rc;

  if ((rc = mp_shared_memory_attach(&shm, ss->name)) < 0)
    bench_die_mp("mp_shared_memory_attach", rc);
  if ((rc = mp_shared_memory_close(shm)) < 0)
    bench_die_mp("mp_shared_memory_close", rc);
}

static void bare_attach_once(void *state) {
  shm_state_t *ss = state;
  size_t size;
  void *buf = bare_map(ss->slash, O_RDWR, 0, &size);

  munmap(buf, size);
}

static void name_segment(shm_state_t *ss) {
  snprintf(ss->name, sizeof ss->name, "mp_bench_%d", (int)getpid());
  snprintf(ss->slash, sizeof ss->slash, "/%s", ss->name);
}

/* One untimed round of each side first: the first create starts the program's tracker,
 * which a program pays once, not per segment. */
static void row_lifecycle(const bench_config_t *cfg, bench_result_t *result) {
  shm_state_t state;
  double libmp_ns, baseline_ns;

  name_segment(&state);
  libmp_lifecycle_once(&state);
  bare_lifecycle_once(&state);
  bench_pair(cfg, 2000, libmp_lifecycle_once, bare_lifecycle_once, &state, &libmp_ns,
             &baseline_ns);
  result->libmp = libmp_ns / 1e3;
  result->baseline = baseline_ns / 1e3;
}

static void row_attach(const bench_config_t *cfg, bench_result_t *result) {
  shm_state_t state;
  mp_shared_memory_t *shm;
  double libmp_ns, baseline_ns;
  int rc;

  name_segment(&state);
  if ((rc = mp_shared_memory_create(&shm, state.name, SEGMENT_SIZE, 0)) < 0)
    bench_die_mp("mp_shared_memory_create", rc);
  bench_pair(cfg, 2000, libmp_attach_once, bare_attach_once, &state, &libmp_ns, &baseline_ns);
  if ((rc = mp_shared_memory_unlink(shm)) < 0)
    bench_die_mp("mp_shared_memory_unlink", rc);
  mp_shared_memory_close(shm);
  result->libmp = libmp_ns / 1e3;
  result->baseline = baseline_ns / 1e3;
}

static const bench_row_t shared_memory_rows[] = {
    {"shared_memory.lifecycle", "us/op", row_lifecycle},
    {"shared_memory.attach", "us/op", row_attach},
};

const bench_group_t bench_shared_memory_group = BENCH_GROUP(shared_memory_rows);
