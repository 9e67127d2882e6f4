/* Contexts: the three start methods, the program's default one, and the executable. */
#include "internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static mp_context_t contexts[] = {
    {&mp__popen_fork},
    {&mp__popen_spawn},
    {&mp__popen_forkserver},
};
static const char *const method_names[] = {"fork", "spawn", "forkserver", NULL};

static pthread_mutex_t context_lock = PTHREAD_MUTEX_INITIALIZER;
static mp_context_t *default_context; /* fixed by the first set or query, as in Python */
static char executable[PATH_MAX];     /* "" means the running executable */

static mp_context_t *find_context(const char *method) {
  for (size_t i = 0; i < sizeof contexts / sizeof contexts[0]; i++)
    if (strcmp(contexts[i].ops->name, method) == 0)
      return &contexts[i];
  return NULL;
}

static int unknown_method(const char *where, const char *method) {
  return mp__error(MP_EMETHOD, "%s: '%s' is not a start method (fork, spawn, forkserver)",
                   where, method);
}

/* The default context, fixing it on first use; NULL if MP_START_METHOD is wrong. */
static mp_context_t *resolve_default(void) {
  pthread_mutex_lock(&context_lock);
  if (!default_context) {
    /* Not in a setuid program: its caller's environment does not pick its start method. */
    const char *env = secure_getenv("MP_START_METHOD");
    if (env && *env) {
      default_context = find_context(env);
      if (!default_context)
        unknown_method("MP_START_METHOD", env);
    } else {
      default_context = find_context("fork");
    }
  }
  mp_context_t *ctx = default_context;
  pthread_mutex_unlock(&context_lock);
  return ctx;
}

/* "thread": not a start method (never the default, not in the list), the context of pools
 * whose workers are threads, as Python's multiprocessing.dummy. It makes no processes. */
static int thread_launch(mp_process_t *proc) {
  (void)proc;
  return mp__error(MP_EMETHOD, "the \"thread\" context starts no processes; it serves "
                               "pools of threads (mp_pool_create)");
}

static int thread_collect(mp_process_t *proc, int *wait_status) {
  (void)proc;
  (void)wait_status;
  return -ECHILD;
}

const mp__popen_ops_t mp__popen_thread = {"thread", thread_launch, thread_collect};
static mp_context_t thread_context = {&mp__popen_thread};

int mp_get_context(const char *method, mp_context_t **ctx) {
  if (!ctx)
    return mp__error(MP_EINVAL, "mp_get_context: ctx is NULL");
  if (method && strcmp(method, "thread") == 0) {
    *ctx = &thread_context;
    return 0;
  }
  if (method && strcmp(method, "mpi") == 0)
    return mp__mpi_get_context(ctx); /* pool_mpi.c (mpi_none.c without MPI) */
  mp_context_t *found = method ? find_context(method) : resolve_default();
  if (!found)
    return method ? unknown_method("mp_get_context", method) : MP_EMETHOD;
  *ctx = found;
  return 0;
}

const char *mp_context_start_method(const mp_context_t *ctx) {
  return ctx ? ctx->ops->name : NULL;
}

int mp_set_start_method(const char *method, bool force) {
  if (!method)
    return mp__error(MP_EINVAL, "mp_set_start_method: method is NULL");
  mp_context_t *ctx = find_context(method);
  if (!ctx)
    return unknown_method("mp_set_start_method", method);
  int rc = 0;
  pthread_mutex_lock(&context_lock);
  if (default_context && !force)
    rc = mp__error(MP_ECONTEXT, "mp_set_start_method: the start method is already '%s'",
                   default_context->ops->name);
  else
    default_context = ctx;
  pthread_mutex_unlock(&context_lock);
  return rc;
}

const char *mp_get_start_method(void) {
  mp_context_t *ctx = resolve_default();
  return ctx ? ctx->ops->name : NULL;
}

const char *const *mp_get_all_start_methods(void) {
  return method_names;
}

int mp_set_executable(const char *path) {
  if (path && (!*path || strlen(path) >= sizeof executable))
    return mp__error(MP_EINVAL, "mp_set_executable: the path is empty or longer than %zu",
                     sizeof executable - 1);
  pthread_mutex_lock(&context_lock);
  snprintf(executable, sizeof executable, "%s", path ? path : "");
  pthread_mutex_unlock(&context_lock);
  return 0;
}

int mp__executable(char *buf, size_t cap) {
  pthread_mutex_lock(&context_lock);
  size_t len = strlen(executable);
  if (len && len < cap)
    memcpy(buf, executable, len + 1);
  pthread_mutex_unlock(&context_lock);
  if (len)
    return len < cap ? 0 : mp__error(MP_EINVAL, "executable path too long");
  /* The path, not /proc/self/exe itself: under valgrind only the path names the program. */
  ssize_t n = readlink("/proc/self/exe", buf, cap - 1);
  if (n < 0)
    return mp__syserror("readlink /proc/self/exe");
  buf[n] = '\0';
  /* Rebuilt or removed while running: /proc/self/exe still runs the same build. */
  static const char deleted[] = " (deleted)";
  size_t tail = sizeof deleted - 1;
  if ((size_t)n > tail && strcmp(buf + n - tail, deleted) == 0)
    snprintf(buf, cap, "/proc/self/exe");
  return 0;
}

void mp__context_after_fork(void) {
  mp__reset_lock(&context_lock);
}
