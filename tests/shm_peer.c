/*
 * A program of its own that test_shared_memory runs with posix_spawn(), not through libmp:
 * the other side of "attach by name from an unrelated process", and a program to kill.
 *
 *   shm_peer attach NAME SIZE CHECK WRITE   attach, expect SIZE bytes all equal to CHECK,
 *                                           fill them with WRITE
 *   shm_peer create NAME SIZE FILL [keep|keep-call]
 *                                           create, fill, exit without unlinking
 *   shm_peer child-create METHOD NAME SIZE FILL track|keep|keep-call
 *                                           the same, in a child started by METHOD
 *   shm_peer killed METHOD PREFIX ORDER     create PREFIX_parent and, in a child started
 *                                           by METHOD, PREFIX_child (ORDER: parent-first or
 *                                           child-first), print "ready", wait to be killed
 *
 * Exit codes: 0 success, 2 usage, 10 and up a failed check (see each mode).
 */
#include <mp.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int fail(int code, const char *what, int rc) {
  fprintf(stderr, "shm_peer: %s: %s (%s)\n", what, mp_err_name(rc), mp_last_error());
  return code;
}

static int attach_mode(const char *name, size_t size, int check, int write) {
  mp_shared_memory_t *shm;
  int rc = mp_shared_memory_attach(&shm, name);
  if (rc < 0)
    return fail(10, "attach", rc);
  if (mp_shared_memory_size(shm) != size)
    return 11;
  unsigned char *buf = mp_shared_memory_buf(shm);
  for (size_t i = 0; i < size; i++)
    if (buf[i] != (unsigned char)check)
      return 12;
  memset(buf, write, size);
  return mp_shared_memory_close(shm) == 0 ? 0 : 13;
}

static int create_mode(const char *name, size_t size, int fill, const char *keep) {
  unsigned flags = keep && strcmp(keep, "keep") == 0 ? MP_SHARED_MEMORY_KEEP : 0;
  mp_shared_memory_t *shm;
  int rc = mp_shared_memory_create(&shm, name, size, flags);
  if (rc < 0)
    return fail(20, "create", rc);
  memset(mp_shared_memory_buf(shm), fill, size);
  if (keep && strcmp(keep, "keep-call") == 0 && (rc = mp_shared_memory_keep(shm)) < 0)
    return fail(21, "keep", rc);
  return mp_shared_memory_close(shm) == 0 ? 0 : 22;
}

/* What a child-create child does: argument "NAME\0SIZE\0FILL\0HOW\0". */
static int child_create_target(void *arg, size_t size) {
  (void)size;
  const char *name = arg;
  const char *size_text = name + strlen(name) + 1;
  const char *fill = size_text + strlen(size_text) + 1;
  const char *how = fill + strlen(fill) + 1;
  return create_mode(name, strtoul(size_text, NULL, 10), atoi(fill),
                     strcmp(how, "track") == 0 ? NULL : how);
}

static int child_create_mode(char **argv) {
  char arg[512];
  size_t len = 0;
  for (int i = 1; i <= 4; i++)
    len += (size_t)snprintf(arg + len, sizeof arg - len, "%s", argv[i]) + 1;
  mp_context_t *ctx;
  mp_process_t *proc;
  int rc, code;
  if ((rc = mp_get_context(argv[0], &ctx)) < 0 ||
      (rc = mp_process_create(&proc, ctx, child_create_target, arg, len, NULL)) < 0 ||
      (rc = mp_process_start(proc)) < 0 || (rc = mp_process_join(proc, MP_FOREVER)) < 0 ||
      (rc = mp_process_exitcode(proc, &code)) < 0)
    return fail(50, "child", rc);
  return code;
}

static int create_and_wait(const char *name) {
  mp_shared_memory_t *shm;
  int rc = mp_shared_memory_create(&shm, name, 4096, 0);
  if (rc < 0)
    return fail(30, "create", rc);
  for (;;)
    pause();
}

static int child_target(void *arg, size_t size) {
  (void)size;
  return create_and_wait(arg);
}

/* Waits until a segment called name exists. */
static bool await_segment(const char *name) {
  for (int i = 0; i < 2000; i++) {
    mp_shared_memory_t *shm;
    if (mp_shared_memory_attach(&shm, name) == 0) {
      mp_shared_memory_close(shm);
      return true;
    }
    usleep(5000);
  }
  return false;
}

static int killed_mode(const char *method, const char *prefix, const char *order) {
  char parent_name[128], child_name[128];
  snprintf(parent_name, sizeof parent_name, "%s_parent", prefix);
  snprintf(child_name, sizeof child_name, "%s_child", prefix);
  bool parent_first = strcmp(order, "parent-first") == 0;
  mp_shared_memory_t *shm;
  int rc;
  if (parent_first && (rc = mp_shared_memory_create(&shm, parent_name, 4096, 0)) < 0)
    return fail(40, "create", rc);
  mp_context_t *ctx;
  mp_process_t *proc;
  if ((rc = mp_get_context(method, &ctx)) < 0 ||
      (rc = mp_process_create(&proc, ctx, child_target, child_name, strlen(child_name) + 1,
                              NULL)) < 0 ||
      (rc = mp_process_start(proc)) < 0)
    return fail(41, "start", rc);
  if (!await_segment(child_name))
    return 42;
  if (!parent_first && (rc = mp_shared_memory_create(&shm, parent_name, 4096, 0)) < 0)
    return fail(43, "create", rc);
  printf("ready\n");
  fflush(stdout);
  for (;;)
    pause();
}

int main(int argc, char **argv) {
  if (argc == 6 && strcmp(argv[1], "attach") == 0)
    return attach_mode(argv[2], strtoul(argv[3], NULL, 10), atoi(argv[4]), atoi(argv[5]));
  if ((argc == 5 || argc == 6) && strcmp(argv[1], "create") == 0)
    return create_mode(argv[2], strtoul(argv[3], NULL, 10), atoi(argv[4]),
                       argc == 6 ? argv[5] : NULL);
  if (argc == 7 && strcmp(argv[1], "child-create") == 0)
    return child_create_mode(argv + 2);
  if (argc == 5 && strcmp(argv[1], "killed") == 0)
    return killed_mode(argv[2], argv[3], argv[4]);
  fprintf(stderr, "usage: shm_peer attach|create|killed ...\n");
  return 2;
}
