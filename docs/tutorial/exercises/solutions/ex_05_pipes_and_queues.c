/* Exercise 05, a solution: consume until the pill, send the sum once; one pill per
 * consumer. */
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
    if (x == EX05_PILL)
      break;
    sum += (long)x * x;
  }
  if (mp_conn_send(c->result, &sum, sizeof sum) < 0)
    return 1;
  return mp_conn_close(c->result) < 0;
}

int ex05_finish(mp_queue_t *work, int consumers) {
  /* The queue is first in, first out: each pill comes after every item. */
  int pill = EX05_PILL;
  for (int i = 0; i < consumers; i++) {
    int rc = mp_queue_put(work, &pill, sizeof pill, 10);
    if (rc < 0)
      return rc;
  }
  return 0;
}
