/*
 * Exercise 05: producer, consumers and a poison pill (docs/tutorial/05-pipes-and-queues.md).
 *
 * The check is the producer: it starts the consumers, puts the items, then calls
 * ex05_finish(). Each consumer sends its result back over its own pipe.
 * Check: meson test -C build --suite exercises ex_05_pipes_and_queues --print-errorlogs
 */
#include "exercises.h"

int ex05_consumer(void *arg, size_t size) {
  const ex05_consumer_t *c = arg;
  long sum = 0;
  (void)size;
  for (;;) {
    int x;
    size_t len;
    int rc = mp_queue_get(c->work, &x, sizeof x, &len, MP_FOREVER);
    if (rc < 0)
      return 1;
    /* TODO(student): stop at the poison pill, EX05_PILL (it is no item: do not count it). */
    sum += (long)x * x;
  }
  /* TODO(student): send sum to the parent over c->result (mp_conn_send, sizeof sum bytes),
   * then close your end (mp_conn_close). */
  (void)sum;
  return 0;
}

int ex05_finish(mp_queue_t *work, int consumers) {
  (void)work;
  (void)consumers;
  /* TODO(student): every consumer must stop once the items are done. */
  return 0;
}
