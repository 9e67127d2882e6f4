/*
 * Ctrl-C and blocking calls: the one rule (docs/api.md, "Ctrl-C and blocking calls").
 *
 * Python raises KeyboardInterrupt in the main thread during any blocking wait. The C
 * analogue: when SIGINT arrives while a libmp call blocks, and the program's handler
 * returns, the call returns MP_EINTR with a sentence. Under SIGINT's default disposition
 * the process dies as any process does; under SIG_IGN nothing happens.
 *
 * A futex wait or a poll fails with EINTR after any handler, SA_RESTART or not, and cannot
 * tell which signal it was; so a waiter ends early only for SIGINT, which it learns of from
 * a counter bumped by a handler chained in front of the program's own. The handler is
 * chained at the first blocking wait after the program installed its own (it may do so at
 * any time): there is nothing to chain before that.
 */
#include "internal.h"

#include <signal.h>

static _Atomic uint32_t sigints;
static struct sigaction program_sigint; /* the handler chained to */
static pthread_mutex_t sigint_lock = PTHREAD_MUTEX_INITIALIZER;

static void count_sigint(int sig, siginfo_t *info, void *context) {
  atomic_fetch_add(&sigints, 1);
  if (program_sigint.sa_flags & SA_SIGINFO)
    program_sigint.sa_sigaction(sig, info, context);
  else if (program_sigint.sa_handler != SIG_DFL && program_sigint.sa_handler != SIG_IGN)
    program_sigint.sa_handler(sig);
}

static bool sigint_chainable(const struct sigaction *sa) {
  if (sa->sa_flags & SA_SIGINFO)
    return sa->sa_sigaction != count_sigint;
  return sa->sa_handler != SIG_DFL && sa->sa_handler != SIG_IGN;
}

static bool counted(const struct sigaction *sa) {
  return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == count_sigint;
}

/* Chains the counter if needed; true if SIGINT is now caught by it. When nothing changed,
 * one sigaction read and no lock: the lock's page would be one more to copy after a fork
 * (every join asks). */
static bool watch(void) {
  struct sigaction now;
  if (sigaction(SIGINT, NULL, &now) != 0)
    return false;
  if (!sigint_chainable(&now))
    return counted(&now);
  bool caught = false;
  pthread_mutex_lock(&sigint_lock);
  if (sigaction(SIGINT, NULL, &now) == 0) {
    caught = counted(&now);
    if (sigint_chainable(&now)) {
      program_sigint = now;
      struct sigaction mine = now;
      mine.sa_sigaction = count_sigint;
      mine.sa_flags |= SA_SIGINFO;
      caught = sigaction(SIGINT, &mine, NULL) == 0;
    }
  }
  pthread_mutex_unlock(&sigint_lock);
  return caught;
}

const _Atomic uint32_t *mp__sigint_watch(void) {
  watch();
  return &sigints;
}

uint32_t mp__sigint_count(void) {
  return atomic_load(&sigints);
}

bool mp__sigint_begin(mp__sigint_t *s) {
  bool caught = watch();
  s->counter = &sigints;
  s->base = atomic_load(&sigints);
  return caught;
}

bool mp__sigint_arrived(const mp__sigint_t *s) {
  return s->counter && atomic_load(s->counter) != s->base;
}
