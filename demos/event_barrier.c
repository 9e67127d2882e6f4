/* event_barrier: an Event as a start signal, a Barrier between phases. */
#include "demo.h"

static const demo_info_t info = {
    "event_barrier [fork|spawn|forkserver] [workers]",
    "Event and Barrier (seed 003):\n"
    "  1. An Event is a flag processes wait for: `workers` processes (default 4) wait on\n"
    "     one; the parent sets it 0.2 s later, and each records when it woke. None may\n"
    "     wake before the set; the delay after it is printed.\n"
    "  2. A Barrier holds every party until all have arrived: the workers go through 5\n"
    "     phases, each writing its phase number into its own slot, then waiting at the\n"
    "     Barrier; past it, each checks that no slot is behind. The Barrier's action (run\n"
    "     by the last to arrive) counts the phases.\n"
    "Exits 1 if a worker woke before the Event was set, or passed a Barrier before all\n"
    "had arrived.",
    false};

#define PHASES 5

typedef struct {
  mp_event_t *go;
  mp_barrier_t *barrier;
  mp_array_t *woke;   /* 'd': when each worker woke, on the monotonic clock */
  mp_array_t *phase;  /* 'l': each worker's phase */
  mp_value_t *behind; /* 'l': slots found behind after a Barrier */
  int id, workers;
} worker_args_t;

/* The Barrier's action: the last party to arrive counts the phase. */
static int count_phase(void *arg) {
  return mp_value_add_long(arg, 1, NULL) < 0;
}

static int worker(void *arg, size_t size) {
  (void)size;
  worker_args_t *a = arg;
  CHECK(mp_event_wait(a->go, 30));
  CHECK(mp_array_set_double(a->woke, (size_t)a->id, demo_now()));
  for (long p = 1; p <= PHASES; p++) {
    CHECK(mp_array_set_long(a->phase, (size_t)a->id, p));
    usleep((useconds_t)(1000 * (a->id + 1))); /* the workers are not equally fast */
    CHECK(mp_barrier_wait(a->barrier, 30));
    for (size_t i = 0; i < (size_t)a->workers; i++) {
      long other;
      CHECK(mp_array_get_long(a->phase, i, &other));
      if (other < p)
        CHECK(mp_value_add_long(a->behind, 1, NULL));
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  int workers = (int)demo_count_at_most(argc, argv, 2, 4, 32);
  worker_args_t args[32];
  mp_process_t *procs[32];
  mp_event_t *go;
  mp_barrier_t *barrier;
  mp_array_t *woke, *phase;
  mp_value_t *behind, *phases;
  CHECK(mp_event_create(&go));
  CHECK(mp_value_create(&phases, 'l', NULL, NULL));
  CHECK(mp_barrier_create(&barrier, workers, count_phase, phases));
  CHECK(mp_array_create(&woke, 'd', (size_t)workers, NULL, NULL));
  CHECK(mp_array_create(&phase, 'l', (size_t)workers, NULL, NULL));
  CHECK(mp_value_create(&behind, 'l', NULL, NULL));
  for (int i = 0; i < workers; i++)
    args[i] = (worker_args_t){go, barrier, woke, phase, behind, i, workers};

  printf("1. Event: %d %s workers wait for it; the parent sets it 0.2 s after starting them.\n",
         workers, mp_context_start_method(ctx));
  demo_start(procs, workers, ctx, worker, args, sizeof args[0]);
  usleep(200000);
  double set_at = demo_now();
  CHECK(mp_event_set(go));
  int failed = demo_join(procs, workers, 60);
  int early = 0;
  printf("   woke after the set (microseconds):");
  for (size_t i = 0; i < (size_t)workers; i++) {
    double t;
    CHECK(mp_array_get_double(woke, i, &t));
    printf(" %.0f", (t - set_at) * 1e6);
    early += t < set_at;
  }
  printf("\n   %d woke before the signal; each woke within a scheduler's delay of it.\n\n",
         early);

  long n_phases, n_behind;
  CHECK(mp_value_get_long(phases, &n_phases));
  CHECK(mp_value_get_long(behind, &n_behind));
  printf(
      "2. Barrier(%d): %d phases; the slowest worker takes %d ms a phase, the fastest 1 ms.\n"
      "   The action ran %ld times (once a phase); slots found behind after a Barrier: %ld.\n"
      "   Everyone waits for the slowest at each Barrier: no phase overlaps the next.\n\n",
      workers, PHASES, workers, n_phases, n_behind);

  CHECK(mp_event_close(go));
  CHECK(mp_barrier_close(barrier));
  CHECK(mp_array_close(woke));
  CHECK(mp_array_close(phase));
  CHECK(mp_value_close(behind));
  CHECK(mp_value_close(phases));
  if (failed || early || n_behind || n_phases != PHASES) {
    printf("FAILED: the Event or the Barrier did not hold the workers as explained.\n");
    return 1;
  }
  printf("The Event started everyone together; the Barrier kept the phases apart.\n");
  return 0;
}
