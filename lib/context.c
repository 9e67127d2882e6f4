/* Contexts: the three start methods, the program's default one, and the processes created
 * by them (mp_process_create, with process.c's mp__process_create). */
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

/* Python's multiprocessing.Process(): the default context's, unless one is given. */
int mp_process_create(mp_process_t **out, mp_context_t *ctx, mp_target_t target,
                      const void *arg, size_t size, const char *name) {
  /* Resolved (and so fixed) only for a call that can succeed, as before the split. */
  if (!ctx && out && target && (arg || size == 0)) {
    int rc = mp_get_context(NULL, &ctx);
    if (rc < 0)
      return rc;
  }
  return mp__process_create(out, ctx ? ctx->ops : NULL, target, arg, size, name);
}

/* In a child of any fork(): a lock another thread held at the fork is free. */
MP__CHILD_TEXT static void after_fork_in_child(void) {
  mp__reset_lock(&context_lock);
}

__attribute__((constructor(102))) static void install_handler(void) {
  pthread_atfork(NULL, NULL, after_fork_in_child);
}
