/*
 * Producers and consumers over a Queue (seed 002). Producers put numbered items; consumers
 * take them until they get a "poison pill", a message that means "no more work": the main
 * process puts one pill per consumer once every producer has finished, so each consumer
 * takes exactly one and stops. Then the same with a JoinableQueue: consumers mark each item
 * done (task_done), and the main process waits for all of them (join) without knowing who
 * did what; closing the queue then tells the consumers to stop, with no pill at all.
 * Every item is counted in a shared Array as it is consumed: each must arrive exactly once.
 *
 * Usage: producer_consumer [fork|spawn|forkserver] [items per producer]
 */
#include "demo.h"

#define PRODUCERS 3
#define CONSUMERS 2
#define PILL (-1)

typedef struct {
  int producer; /* PILL for the poison pill */
  int seq;
} item_t;

typedef struct {
  mp_queue_t *queue;
  mp_array_t *seen;     /* seen[producer * items + seq]: how many times it was consumed */
  mp_array_t *produced; /* per producer */
  mp_array_t *consumed; /* per consumer */
  int id;
  int items;
  int joinable;
} role_args_t;

static int producer(void *arg, size_t size) {
  (void)size;
  role_args_t *a = arg;
  for (int seq = 0; seq < a->items; seq++) {
    item_t item = {a->id, seq};
    CHECK(mp_queue_put(a->queue, &item, sizeof item, 30));
    CHECK(mp_array_add_long(a->produced, (size_t)a->id, 1, NULL));
  }
  CHECK(mp_queue_free(a->queue));
  return 0;
}

static int consumer(void *arg, size_t size) {
  (void)size;
  role_args_t *a = arg;
  for (;;) {
    item_t item;
    size_t len;
    int rc = mp_queue_get(a->queue, &item, sizeof item, &len, 30);
    if (rc == MP_ECLOSED) /* the JoinableQueue's end: closed and empty */
      break;
    CHECK(rc);
    if (item.producer == PILL)
      break;
    CHECK(mp_array_add_long(a->seen, (size_t)(item.producer * a->items + item.seq), 1, NULL));
    CHECK(mp_array_add_long(a->consumed, (size_t)a->id, 1, NULL));
    if (a->joinable)
      CHECK(mp_queue_task_done(a->queue));
  }
  CHECK(mp_queue_free(a->queue));
  return 0;
}

/* Starts one process per role; each gets a reference to the queue, which it frees. */
static void start_role(mp_process_t **procs, int n, mp_context_t *ctx, mp_target_t target,
                       role_args_t base) {
  role_args_t args[PRODUCERS + CONSUMERS];
  for (int i = 0; i < n; i++) {
    args[i] = base;
    args[i].id = i;
    CHECK(mp_queue_retain(base.queue));
  }
  demo_start(procs, n, ctx, target, args, sizeof args[0]);
}

static void print_counts(const char *who, mp_array_t *counts, int n) {
  printf("    %-9s", who);
  for (int i = 0; i < n; i++) {
    long c;
    CHECK(mp_array_get_long(counts, (size_t)i, &c));
    printf("  #%d: %-6ld", i, c);
  }
  printf("\n");
}

/* One round: returns the number of items not consumed exactly once. */
static int run(mp_context_t *ctx, int items, int joinable) {
  role_args_t base = {.items = items, .joinable = joinable};
  long total = (long)PRODUCERS * items;
  if (joinable)
    CHECK(mp_joinable_queue_create(&base.queue, 64));
  else
    CHECK(mp_queue_create(&base.queue, 64)); /* bounded: producers wait for consumers */
  CHECK(mp_array_create(&base.seen, 'l', (size_t)total, NULL, NULL));
  CHECK(mp_array_create(&base.produced, 'l', PRODUCERS, NULL, NULL));
  CHECK(mp_array_create(&base.consumed, 'l', CONSUMERS, NULL, NULL));

  mp_process_t *producers[PRODUCERS], *consumers[CONSUMERS];
  double start = demo_now();
  start_role(consumers, CONSUMERS, ctx, consumer, base);
  start_role(producers, PRODUCERS, ctx, producer, base);
  int failed = demo_join(producers, PRODUCERS, 60);
  if (joinable) {
    /* Wait until every item put has been marked done, then close: consumers waiting in a
     * get wake with MP_ECLOSED and stop. */
    CHECK(mp_queue_join(base.queue, 60));
    CHECK(mp_queue_close(base.queue));
  } else {
    /* One pill per consumer, after every real item (the queue is first in, first out). */
    item_t pill = {PILL, 0};
    for (int i = 0; i < CONSUMERS; i++)
      CHECK(mp_queue_put(base.queue, &pill, sizeof pill, 30));
  }
  failed += demo_join(consumers, CONSUMERS, 60);
  double seconds = demo_now() - start;

  int wrong = 0;
  long once = 0;
  for (long i = 0; i < total; i++) {
    long c;
    CHECK(mp_array_get_long(base.seen, (size_t)i, &c));
    once += c == 1;
    if (c != 1 && wrong++ < 5)
      printf("    item %ld of producer %ld was consumed %ld times\n", i % items, i / items, c);
  }
  printf("  %s: %d producers, %d consumers, %.3f s\n",
         joinable ? "JoinableQueue, task_done + join + close" : "Queue with a poison pill each",
         PRODUCERS, CONSUMERS, seconds);
  print_counts("produced", base.produced, PRODUCERS);
  print_counts("consumed", base.consumed, CONSUMERS);
  printf("    %ld of %ld items arrived exactly once\n\n", once, total);

  CHECK(mp_array_close(base.seen));
  CHECK(mp_array_close(base.produced));
  CHECK(mp_array_close(base.consumed));
  CHECK(mp_queue_free(base.queue));
  return wrong + failed;
}

static const demo_info_t info = {
    "producer_consumer [fork|spawn|forkserver] [items]",
    "Producers put numbered items on a Queue and consumers take them until a poison pill\n"
    "(seed 002); then the same with a JoinableQueue (task_done, join) and no pill. `items`\n"
    "per producer (default 2000). Exits 1 unless every item was consumed exactly once.",
    false};

int main(int argc, char **argv) {
  demo_parse(&argc, argv, &info);
  mp_context_t *ctx = demo_context(argc, argv, &info);
  int items = (int)demo_count(argc, argv, 2, 2000);
  printf("Producer/consumer with processes started by %s, %d items per producer.\n"
         "How the items split between consumers depends on who is free first: it changes\n"
         "from run to run. That each item arrives exactly once does not.\n\n",
         mp_context_start_method(ctx), items);
  int wrong = run(ctx, items, 0) + run(ctx, items, 1);
  if (wrong) {
    printf("FAILED: items lost or duplicated, or a process failed.\n");
    return 1;
  }
  printf("Every item arrived exactly once, in both variants.\n");
  return 0;
}
