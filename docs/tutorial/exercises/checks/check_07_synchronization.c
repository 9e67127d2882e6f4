/* The check of exercise 07: clients that wait for the doors to open (Event) and share
 * EX07_SLOTS connections (Semaphore). */
#include "check.h"

#define CLIENTS 8

/* The server's record, in a shared Array under its lock. */
enum { OPEN, ACTIVE, MOST, EARLY, CONNECTS, SERVER_FIELDS };

static void server_add(const ex07_client_t *c, int field, long delta) {
  mp_array_add_long(c->server, field, delta, NULL);
}

int ex07_connect(const ex07_client_t *c) {
  mp_lock_t *lock = mp_array_get_lock(c->server);
  long *s = mp_array_ptr(c->server);
  if (mp_lock_acquire(lock, 10) < 0)
    return MP_ETIMEDOUT;
  s[CONNECTS]++;
  s[EARLY] += s[OPEN] == 0;
  if (++s[ACTIVE] > s[MOST])
    s[MOST] = s[ACTIVE];
  mp_lock_release(lock);
  usleep(30000); /* the connection is used a while */
  return 0;
}

void ex07_disconnect(const ex07_client_t *c) {
  server_add(c, ACTIVE, -1);
}

static void part(mp_context_t *ctx) {
  mp_semaphore_t *slots;
  mp_event_t *doors;
  mp_array_t *server;
  mp_process_t *procs[CLIENTS];
  CHECK_SETUP(mp_semaphore_create(&slots, EX07_SLOTS));
  CHECK_SETUP(mp_event_create(&doors));
  CHECK_SETUP(mp_array_create(&server, 'l', SERVER_FIELDS, NULL, NULL));
  for (int i = 0; i < CLIENTS; i++) {
    ex07_client_t c = {slots, doors, server, i};
    CHECK_SETUP(mp_process_create(&procs[i], ctx, ex07_client, &c, sizeof c, NULL));
    CHECK_SETUP(mp_process_start(procs[i]));
  }
  usleep(200000); /* every client is running, and waits at the doors if it should */
  CHECK_SETUP(mp_array_set_long(server, OPEN, 1));
  int rc = ex07_open(doors);
  if (rc < 0)
    check_fail("ex07_open returned %s", check_why(rc));
  double deadline = check_now() + 10;
  for (int i = 0; i < CLIENTS; i++) {
    int timed_out, code = check_join(procs[i], check_left(deadline), &timed_out);
    if (timed_out)
      check_fail("client %d still waited 10 s after ex07_open (killed): did ex07_open set the "
                 "Event, and does every client give its slot back?",
                 i);
    else if (code != 0)
      check_fail("client %d exited with %d, expected 0", i, code);
  }
  long s[SERVER_FIELDS];
  CHECK_SETUP(mp_array_read(server, 0, SERVER_FIELDS, s));
  if (s[EARLY])
    check_fail("%ld of %ld connections came before the doors opened: wait for the Event",
               s[EARLY], s[CONNECTS]);
  if (s[MOST] > EX07_SLOTS)
    check_fail("%ld clients were connected at once, at most %d may be: take a slot of the "
               "Semaphore around the connection",
               s[MOST], EX07_SLOTS);
  if (s[CONNECTS] != CLIENTS)
    check_fail("%ld connections, expected %d (one per client)", s[CONNECTS], CLIENTS);
  if (s[ACTIVE] != 0)
    check_fail("%ld connections were never closed: call ex07_disconnect", s[ACTIVE]);
  int free_slots = mp_semaphore_value(slots);
  if (free_slots != EX07_SLOTS)
    check_fail("the Semaphore has %d free slots at the end, expected %d: release each slot "
               "taken",
               free_slots, EX07_SLOTS);
  CHECK_SETUP(mp_semaphore_close(slots));
  CHECK_SETUP(mp_event_close(doors));
  CHECK_SETUP(mp_array_close(server));
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_all_methods,
                "ex07_client, ex07_open: 8 clients, 3 slots, doors that open", part);
  return check_done("ex_07_synchronization");
}
