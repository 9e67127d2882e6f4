/*
 * The thread launcher: workers that are threads of the pool's process, for the "thread"
 * context (Python's multiprocessing.dummy.Pool). A thread cannot be stopped: terminate
 * waits for its task to end. A worker thread that returns wakes the supervisor through a
 * uv_async of the launcher's, which joins it and reports its end.
 */
#include "pool_launcher.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

typedef struct thread_launcher_s thread_launcher_t;

typedef struct {
  thread_launcher_t *launcher;
  uint32_t w;
  bool running;
  pthread_t thread;
  _Atomic bool ended;
  int code;
} worker_thread_t;

struct thread_launcher_s {
  mp__launcher_config_t config;
  uv_async_t ended; /* a worker thread returned */
  worker_thread_t *workers;
};

int mp__start_quiet_thread(pthread_t *thread, void *(*fn)(void *), void *arg) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(thread, NULL, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc ? mp__error(-rc, "starting a pool thread: %s", strerror(rc)) : 0;
}

static const mp__worker_how_t local_how = {true, mp__run_task, NULL};

static void *thread_main(void *arg) {
  worker_thread_t *wt = arg;
  wt->code = mp__pool_worker_main(wt->launcher->config.sh, wt->w, &local_how);
  atomic_store(&wt->ended, true);
  uv_async_send(&wt->launcher->ended);
  return NULL;
}

/* Joins the worker threads that returned and reports their ends. */
static void on_ended(uv_async_t *handle) {
  thread_launcher_t *l = handle->data;
  for (uint32_t w = 0; w < l->config.n_workers; w++) {
    worker_thread_t *wt = &l->workers[w];
    if (wt->running && atomic_load(&wt->ended)) {
      pthread_join(wt->thread, NULL);
      wt->running = false;
      l->config.events.ended(l->config.events.pool, w, wt->code);
    }
  }
}

static int thread_open(const mp__launcher_config_t *config, void **state) {
  thread_launcher_t *l = calloc(1, sizeof *l);
  if (l)
    l->workers = calloc(config->n_workers, sizeof *l->workers);
  if (!l || !l->workers) {
    free(l);
    return mp__error(MP_ENOMEM, "no memory for %u worker threads", config->n_workers);
  }
  l->config = *config;
  int rc = uv_async_init(config->loop, &l->ended, on_ended);
  if (rc < 0) {
    free(l->workers);
    free(l);
    return mp__error(rc, "watching the pool's threads: %s", uv_strerror(rc));
  }
  l->ended.data = l;
  for (uint32_t w = 0; w < config->n_workers; w++)
    l->workers[w] = (worker_thread_t){.launcher = l, .w = w};
  *state = l;
  return 0;
}

static int thread_start(void *state, uint32_t w, int *pid) {
  thread_launcher_t *l = state;
  worker_thread_t *wt = &l->workers[w];
  atomic_store(&wt->ended, false);
  *pid = 0;
  int rc = mp__start_quiet_thread(&wt->thread, thread_main, wt);
  wt->running = rc == 0;
  return rc;
}

static int nothing_to_watch(void *state) {
  (void)state;
  return 0;
}

static void nothing_to_do(void *state) {
  (void)state;
}

/* The loop is closed (the async with it): threads still running finish their task. */
static void thread_free(void *state) {
  thread_launcher_t *l = state;
  for (uint32_t w = 0; w < l->config.n_workers; w++)
    if (l->workers[w].running)
      pthread_join(l->workers[w].thread, NULL);
  free(l->workers);
  free(l);
}

const mp__launcher_ops_t mp__thread_launcher = {
    thread_open, thread_start, nothing_to_watch, nothing_to_do, nothing_to_do, thread_free,
};
