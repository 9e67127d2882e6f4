/*
 * The thread launcher: workers that are threads of the pool's process, for the "thread"
 * context (Python's multiprocessing.dummy.Pool). A thread cannot be stopped: terminate
 * waits for its task to end. A worker thread that returns writes the launcher's eventfd,
 * watched from the supervisor's loop, which joins it and reports its end. (An eventfd, not a
 * uv_async: a thread that returns after the loop was closed must still have somewhere safe
 * to write; the eventfd lives until the threads are joined.)
 */
#include "pool_launcher.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

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
  int ended_fd;     /* eventfd: a worker thread returned */
  uv_poll_t ended;
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

static const mp__worker_how_t local_how = {true, mp__run_task, NULL, NULL};

static void *thread_main(void *arg) {
  worker_thread_t *wt = arg;
  const mp__worker_how_t *hows = wt->launcher->config.hows;
  wt->code =
      mp__pool_worker_main(wt->launcher->config.sh, wt->w, hows ? &hows[wt->w] : &local_how);
  atomic_store(&wt->ended, true);
  uint64_t one = 1;
  if (write(wt->launcher->ended_fd, &one, sizeof one) < 0) {
    /* EAGAIN: the counter is full, so the supervisor is woken anyway. */
  }
  return NULL;
}

/* Joins the worker threads that returned and reports their ends. */
static void on_ended(uv_poll_t *handle, int status, int events) {
  (void)status;
  (void)events;
  thread_launcher_t *l = handle->data;
  uint64_t count;
  while (read(l->ended_fd, &count, sizeof count) > 0)
    ;
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
  l->ended_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int rc = l->ended_fd < 0 ? mp__syserror("eventfd for the pool's threads")
                           : uv_poll_init(config->loop, &l->ended, l->ended_fd);
  if (rc < 0) {
    if (l->ended_fd >= 0) {
      close(l->ended_fd);
      rc = mp__error(rc, "watching the pool's threads: %s", uv_strerror(rc));
    }
    free(l->workers);
    free(l);
    return rc;
  }
  l->ended.data = l;
  uv_poll_start(&l->ended, UV_READABLE, on_ended);
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

/* The loop is closed (the poll with it): threads still running finish their task. */
static void thread_free(void *state) {
  thread_launcher_t *l = state;
  for (uint32_t w = 0; w < l->config.n_workers; w++)
    if (l->workers[w].running)
      pthread_join(l->workers[w].thread, NULL);
  close(l->ended_fd);
  free(l->workers);
  free(l);
}

const mp__launcher_ops_t mp__thread_launcher = {
    thread_open, thread_start, nothing_to_watch, nothing_to_do, nothing_to_do, thread_free,
};
