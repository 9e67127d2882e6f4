/*
 * Check suite of named shared memory: mp_shared_memory_t under each start method, with a
 * program of its own (shm_peer, run with posix_spawn) on the other side, and the tracker
 * that unlinks a program's segments when it ends, killed or not.
 *
 * Every segment a test names starts with "mp_t<suite pid>_", so the last test can check
 * that the suite left none in /dev/shm. Children report through their exit code: 0 for
 * success, a distinct number for each check that failed.
 */
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>

#include "mp_test.h"

#ifndef SHM_PEER_PATH
#error "SHM_PEER_PATH must name the shm_peer program"
#endif

#define PAGE 4096
#define BOUND 10.0 /* seconds any tracker gets to clean up; generous on a loaded machine */

/* ===================================================================================== */
/* Helpers usable in the test process and in children (no Check calls).                 */

static pid_t suite_pid;

/* In the suite's first process; a spawned child sets its own, and never uses it. */
__attribute__((constructor)) static void remember_suite(void) {
  suite_pid = getpid();
}

/* "mp_t<suite pid>_<tag>_<method>": unique to this suite run, test and start method. */
static void seg_name(char *out, size_t cap, const char *tag, int method) {
  snprintf(out, cap, "mp_t%d_%s_%d", (int)suite_pid, tag, method);
}

static bool segment_exists(const char *name) {
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  return access(path, F_OK) == 0;
}

/* Waits until the segment has gone (or exists, if want_exists); false after timeout. */
static bool await_segment(const char *name, bool want_exists, double timeout) {
  double end = mp_test_now() + timeout;
  while (segment_exists(name) != want_exists) {
    if (mp_test_now() > end)
      return false;
    mp_test_sleep(0.005);
  }
  return true;
}

static unsigned char pattern(size_t i, unsigned seed) {
  return (unsigned char)(i * 31u + seed);
}

static bool has_pattern(const unsigned char *buf, size_t size, unsigned seed) {
  for (size_t i = 0; i < size; i++)
    if (buf[i] != pattern(i, seed))
      return false;
  return true;
}

static void fill_pattern(unsigned char *buf, size_t size, unsigned seed) {
  for (size_t i = 0; i < size; i++)
    buf[i] = pattern(i, seed);
}

/* What a child is asked to do with a segment. */
typedef struct {
  char name[128];
  size_t size;
  unsigned seed_in, seed_out;
} job_t;

/* Polls a shared word until it holds want; false after BOUND seconds. */
static bool await_word(_Atomic uint32_t *word, uint32_t want) {
  double end = mp_test_now() + BOUND;
  while (atomic_load(word) != want) {
    if (mp_test_now() > end)
      return false;
    mp_test_sleep(0.001);
  }
  return true;
}

/* ===================================================================================== */
/* Targets.                                                                              */

/* Attaches, checks size and seed_in's pattern, writes seed_out's. */
static int attach_and_answer(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  mp_shared_memory_t *shm;
  if (mp_shared_memory_attach(&shm, job->name) != 0)
    return 10;
  if (mp_shared_memory_size(shm) != job->size)
    return 11;
  if (strcmp(mp_shared_memory_name(shm), job->name) != 0)
    return 12;
  if (!has_pattern(mp_shared_memory_buf(shm), job->size, job->seed_in))
    return 13;
  fill_pattern(mp_shared_memory_buf(shm), job->size, job->seed_out);
  return mp_shared_memory_close(shm) == 0 ? 0 : 14;
}

/* Creates, fills with seed_out's pattern, closes without unlinking. */
static int create_and_leave(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  mp_shared_memory_t *shm;
  if (mp_shared_memory_create(&shm, job->name, job->size, 0) != 0)
    return 20;
  fill_pattern(mp_shared_memory_buf(shm), job->size, job->seed_out);
  return mp_shared_memory_close(shm) == 0 ? 0 : 21;
}

/* The name errors, seen from a child: job->name exists, job->name with "_missing" does not. */
static int check_name_errors(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  mp_shared_memory_t *shm;
  char missing[160];
  snprintf(missing, sizeof missing, "%s_missing", job->name);
  if (mp_shared_memory_create(&shm, job->name, PAGE, 0) != MP_EEXIST)
    return 40;
  if (mp_shared_memory_create(&shm, job->name, PAGE, MP_SHARED_MEMORY_KEEP) != MP_EEXIST)
    return 41;
  if (mp_shared_memory_attach(&shm, missing) != MP_ENOENT)
    return 42;
  return 0;
}

/* Attaches, says so in word 0, waits for the parent to unlink and write, then checks that
 * the name has gone and that the mapping still shares the parent's writes. */
static int watch_unlink(void *arg, size_t size) {
  (void)size;
  job_t *job = arg;
  mp_shared_memory_t *shm, *again;
  if (mp_shared_memory_attach(&shm, job->name) != 0)
    return 30;
  _Atomic uint32_t *word = mp_shared_memory_buf(shm);
  unsigned char *data = (unsigned char *)mp_shared_memory_buf(shm) + 64;
  atomic_store(word, 1);
  if (!await_word(word, 2))
    return 31;
  if (mp_shared_memory_attach(&again, job->name) != MP_ENOENT)
    return 32;
  if (!has_pattern(data, job->size - 64, job->seed_in))
    return 33;
  fill_pattern(data, job->size - 64, job->seed_out);
  atomic_store(word, 3);
  return mp_shared_memory_close(shm) == 0 ? 0 : 34;
}

/* ===================================================================================== */
/* The peer program.                                                                     */

/* Starts shm_peer with argv (NULL-terminated, without the program), its stdout a pipe
 * whose read end goes to *out (if out). Tracked for cleanup. */
static pid_t run_peer(const char *const *args, int *out) {
  char *argv[16];
  size_t n = 0;
  argv[n++] = (char *)SHM_PEER_PATH;
  while (*args && n < 15)
    argv[n++] = (char *)*args++;
  argv[n] = NULL;
  int pipefd[2] = {-1, -1};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (out) {
    T_ASSERT(pipe2(pipefd, O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));
    posix_spawn_file_actions_adddup2(&actions, pipefd[1], STDOUT_FILENO);
  }
  pid_t pid;
  extern char **environ;
  int err = posix_spawn(&pid, SHM_PEER_PATH, &actions, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&actions);
  T_ASSERT(err == 0, "posix_spawn of %s: %s", SHM_PEER_PATH, strerror(err));
  mp_test_track_pid(pid);
  if (out) {
    close(pipefd[1]);
    *out = pipefd[0];
  }
  return pid;
}

/* Reaps the peer (at most BOUND seconds) and returns its exit code, or -signal. */
static int reap_peer(pid_t pid) {
  double end = mp_test_now() + BOUND;
  int status;
  pid_t r;
  while ((r = waitpid(pid, &status, WNOHANG)) == 0 && mp_test_now() < end)
    mp_test_sleep(0.005);
  T_ASSERT(r == pid, "shm_peer %d did not end within %g s", (int)pid, BOUND);
  for (size_t i = 0; i < sizeof mp_test_pids / sizeof mp_test_pids[0]; i++)
    if (mp_test_pids[i] == pid)
      mp_test_pids[i] = 0;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

static int peer(const char *const *args) {
  return reap_peer(run_peer(args, NULL));
}

/* ===================================================================================== */
/* Tests.                                                                                */

START_TEST(test_create_attach_close) {
  char name[128], slashed[130];
  seg_name(name, sizeof name, "basic", 0);
  snprintf(slashed, sizeof slashed, "/%s", name);
  mp_shared_memory_t *shm, *other;
  /* A leading slash, as shm_open() takes, is allowed and not part of the name. */
  MP_ASSERT_OK(mp_shared_memory_create(&shm, slashed, 3 * PAGE + 5, 0));
  T_STR_EQ(mp_shared_memory_name(shm), name);
  T_INT_EQ(mp_shared_memory_size(shm), 3 * PAGE + 5);
  unsigned char *buf = mp_shared_memory_buf(shm);
  for (size_t i = 0; i < 3 * PAGE + 5; i++)
    T_ASSERT(buf[i] == 0, "byte %zu of a new segment is %d", i, buf[i]);
  T_ASSERT(segment_exists(name), "no /dev/shm/%s", name);
  fill_pattern(buf, 3 * PAGE + 5, 7);

  MP_ASSERT_OK(mp_shared_memory_attach(&other, name));
  T_INT_EQ(mp_shared_memory_size(other), 3 * PAGE + 5);
  T_ASSERT(mp_shared_memory_buf(other) != buf, "a second mapping");
  T_ASSERT(has_pattern(mp_shared_memory_buf(other), 3 * PAGE + 5, 7), "the same bytes");
  buf[100] = 0xab;
  T_INT_EQ(((unsigned char *)mp_shared_memory_buf(other))[100], 0xab);
  MP_ASSERT_OK(mp_shared_memory_close(other));

  /* Closing keeps the segment; unlinking removes the name. */
  MP_ASSERT_OK(mp_shared_memory_attach(&other, slashed));
  MP_ASSERT_OK(mp_shared_memory_unlink(other));
  T_ASSERT(!segment_exists(name), "/dev/shm/%s after unlink", name);
  MP_ASSERT_OK(mp_shared_memory_close(other));
  T_INT_EQ(buf[100], 0xab);
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

START_TEST(test_generated_names) {
  mp_shared_memory_t *a, *b;
  MP_ASSERT_OK(mp_shared_memory_create(&a, NULL, 10, 0));
  MP_ASSERT_OK(mp_shared_memory_create(&b, NULL, 10, MP_SHARED_MEMORY_KEEP));
  const char *name = mp_shared_memory_name(a);
  T_INT_EQ(strlen(name), 19);
  T_ASSERT(strncmp(name, "mp_", 3) == 0, "generated name '%s'", name);
  T_INT_EQ(strspn(name + 3, "0123456789abcdef"), 16);
  T_ASSERT(strcmp(name, mp_shared_memory_name(b)) != 0, "two creates, one name %s", name);
  T_ASSERT(segment_exists(name) && segment_exists(mp_shared_memory_name(b)), "both exist");
  MP_ASSERT_OK(mp_shared_memory_unlink(a));
  MP_ASSERT_OK(mp_shared_memory_unlink(b));
  MP_ASSERT_OK(mp_shared_memory_close(a));
  MP_ASSERT_OK(mp_shared_memory_close(b));
}
END_TEST

START_TEST(test_exists_and_missing) {
  char name[128], slashed[130];
  seg_name(name, sizeof name, "exists", 0);
  snprintf(slashed, sizeof slashed, "/%s", name);
  mp_shared_memory_t *shm, *other = NULL;
  MP_ASSERT_OK(mp_shared_memory_create(&shm, name, PAGE, 0));
  MP_ASSERT_ERR(mp_shared_memory_create(&other, name, PAGE, 0), MP_EEXIST);
  T_ASSERT(strstr(mp_last_error(), name) != NULL, "the message names it: %s", mp_last_error());
  MP_ASSERT_ERR(mp_shared_memory_create(&other, slashed, 2 * PAGE, MP_SHARED_MEMORY_KEEP),
                MP_EEXIST);
  T_ASSERT(other == NULL, "no handle on failure");
  /* The failed creates left the first segment as it was. */
  T_INT_EQ(mp_shared_memory_size(shm), PAGE);
  MP_ASSERT_OK(mp_shared_memory_attach(&other, name));
  T_INT_EQ(mp_shared_memory_size(other), PAGE);
  MP_ASSERT_OK(mp_shared_memory_close(other));
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_ERR(mp_shared_memory_unlink(shm), MP_ENOENT);
  other = NULL;
  MP_ASSERT_ERR(mp_shared_memory_attach(&other, name), MP_ENOENT);
  T_ASSERT(other == NULL, "no handle on failure");
  T_ASSERT(strstr(mp_last_error(), name) != NULL, "the message names it: %s", mp_last_error());
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

START_TEST(test_exists_and_missing_in_child) {
  job_t job = {.size = PAGE};
  seg_name(job.name, sizeof job.name, "exists_child", _i);
  mp_shared_memory_t *shm;
  MP_ASSERT_OK(mp_shared_memory_create(&shm, job.name, PAGE, 0));
  mp_test_join_ok(mp_test_start(_i, check_name_errors, &job, sizeof job), BOUND);
  T_INT_EQ(mp_shared_memory_size(shm), PAGE);
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

/* Created in the parent, attached in a child of each start method; the child's writes are
 * seen by the parent. */
START_TEST(test_parent_creates_child_attaches) {
  job_t job = {.size = 2 * PAGE + 3, .seed_in = 3, .seed_out = 90};
  seg_name(job.name, sizeof job.name, "p2c", _i);
  mp_shared_memory_t *shm;
  MP_ASSERT_OK(mp_shared_memory_create(&shm, job.name, job.size, 0));
  fill_pattern(mp_shared_memory_buf(shm), job.size, job.seed_in);
  mp_test_join_ok(mp_test_start(_i, attach_and_answer, &job, sizeof job), BOUND);
  T_ASSERT(has_pattern(mp_shared_memory_buf(shm), job.size, job.seed_out), "child's writes");
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

/* A child creates and ends; its segment outlives it, for the parent to attach. With
 * `first` the parent had a segment (and a tracker) before the child started. */
static void child_creates(int method, bool parent_first) {
  job_t job = {.size = PAGE + 1, .seed_out = 44};
  seg_name(job.name, sizeof job.name, parent_first ? "c2p_shared" : "c2p", method);
  mp_shared_memory_t *mine = NULL, *shm;
  char mine_name[128];
  seg_name(mine_name, sizeof mine_name, "c2p_mine", method);
  if (parent_first)
    MP_ASSERT_OK(mp_shared_memory_create(&mine, mine_name, PAGE, 0));
  mp_test_join_ok(mp_test_start(method, create_and_leave, &job, sizeof job), BOUND);
  MP_ASSERT_OK(mp_shared_memory_attach(&shm, job.name));
  T_INT_EQ(mp_shared_memory_size(shm), job.size);
  T_ASSERT(has_pattern(mp_shared_memory_buf(shm), job.size, job.seed_out), "child's bytes");
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_OK(mp_shared_memory_close(shm));
  if (mine)
    MP_ASSERT_OK(mp_shared_memory_close(mine)); /* left to the tracker */
}

START_TEST(test_child_creates_parent_attaches) {
  child_creates(_i, false);
}
END_TEST

START_TEST(test_child_creates_after_parent) {
  child_creates(_i, true);
}
END_TEST

/* Unlinking removes the name at once, everywhere; mappings stay, and stay shared. */
START_TEST(test_unlink_semantics) {
  job_t job = {.size = 64 + 3 * PAGE, .seed_in = 5, .seed_out = 6};
  seg_name(job.name, sizeof job.name, "unlink", _i);
  mp_shared_memory_t *shm, *fresh;
  MP_ASSERT_OK(mp_shared_memory_create(&shm, job.name, job.size, 0));
  _Atomic uint32_t *word = mp_shared_memory_buf(shm);
  unsigned char *data = (unsigned char *)mp_shared_memory_buf(shm) + 64;
  mp_process_t *proc = mp_test_start(_i, watch_unlink, &job, sizeof job);
  T_ASSERT(await_word(word, 1), "the child attached");
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  fill_pattern(data, job.size - 64, job.seed_in);
  atomic_store(word, 2);
  T_ASSERT(await_word(word, 3), "the child saw the writes after the unlink");
  mp_test_join_ok(proc, BOUND);
  T_ASSERT(has_pattern(data, job.size - 64, job.seed_out), "the child's writes");

  /* The name is free again: a new, different segment. */
  MP_ASSERT_OK(mp_shared_memory_create(&fresh, job.name, PAGE, 0));
  T_INT_EQ(((unsigned char *)mp_shared_memory_buf(fresh))[70], 0);
  T_ASSERT(has_pattern(data, job.size - 64, job.seed_out), "the old mapping is unchanged");
  MP_ASSERT_OK(mp_shared_memory_unlink(fresh));
  MP_ASSERT_OK(mp_shared_memory_close(fresh));
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

/* A program that libmp did not start attaches by name to a segment that a child of each
 * start method created, and writes to it. */
START_TEST(test_unrelated_program_attaches) {
  job_t job = {.size = 3 * PAGE, .seed_out = 0};
  seg_name(job.name, sizeof job.name, "peer", _i);
  mp_test_join_ok(mp_test_start(_i, create_and_leave, &job, sizeof job), BOUND);
  mp_shared_memory_t *shm;
  MP_ASSERT_OK(mp_shared_memory_attach(&shm, job.name));
  memset(mp_shared_memory_buf(shm), 17, job.size);
  const char *args[] = {"attach", job.name, "12288", "17", "99", NULL};
  T_INT_EQ(peer(args), 0);
  unsigned char *buf = mp_shared_memory_buf(shm);
  for (size_t i = 0; i < job.size; i++)
    T_ASSERT(buf[i] == 99, "byte %zu is %d after the peer wrote 99", i, buf[i]);
  /* And the peer sees a missing name as missing. */
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  T_INT_EQ(peer(args), 10);
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

/* A program's segments go when it ends, whether its first process or a child of each
 * start method created them; kept ones stay. */
START_TEST(test_program_end_unlinks) {
  char name[128], child_made[128], kept[128], kept_call[128];
  seg_name(name, sizeof name, "ended", _i);
  seg_name(child_made, sizeof child_made, "ended_child", _i);
  seg_name(kept, sizeof kept, "kept", _i);
  seg_name(kept_call, sizeof kept_call, "kept_call", _i);
  const char *plain[] = {"create", name, "5000", "8", NULL};
  const char *by_child[] = {"child-create", METHODS[_i], child_made, "5000", "8",
                            "track",        NULL};
  const char *keep_flag[] = {"child-create", METHODS[_i], kept, "5000", "9", "keep", NULL};
  const char *keep_call[] = {"child-create", METHODS[_i], kept_call, "5000",
                             "10",           "keep-call", NULL};
  T_INT_EQ(peer(plain), 0);
  T_INT_EQ(peer(by_child), 0);
  T_INT_EQ(peer(keep_flag), 0);
  T_INT_EQ(peer(keep_call), 0);
  T_ASSERT(await_segment(name, false, BOUND), "%s is left after its program ended", name);
  T_ASSERT(await_segment(child_made, false, BOUND), "%s is left after its program ended",
           child_made);
  /* The kept ones stay after the tracker has cleaned up the first (their programs ended
   * before the check above). */
  const char *names[] = {kept, kept_call};
  for (int i = 0; i < 2; i++) {
    mp_shared_memory_t *shm;
    MP_ASSERT_OK(mp_shared_memory_attach(&shm, names[i]));
    T_INT_EQ(mp_shared_memory_size(shm), 5000);
    T_INT_EQ(((unsigned char *)mp_shared_memory_buf(shm))[4999], 9 + i);
    MP_ASSERT_OK(mp_shared_memory_unlink(shm));
    MP_ASSERT_OK(mp_shared_memory_close(shm));
  }
}
END_TEST

/* keep, repeated, and on an attached handle (where there is nothing to change), leaves
 * every handle working. Its effect at the program's end is test_program_end_unlinks'. */
START_TEST(test_keep_in_process) {
  char name[128];
  seg_name(name, sizeof name, "keep_here", 0);
  mp_shared_memory_t *shm, *other;
  MP_ASSERT_OK(mp_shared_memory_create(&shm, name, PAGE, 0));
  MP_ASSERT_OK(mp_shared_memory_keep(shm));
  MP_ASSERT_OK(mp_shared_memory_keep(shm));
  MP_ASSERT_OK(mp_shared_memory_attach(&other, name));
  MP_ASSERT_OK(mp_shared_memory_keep(other));
  MP_ASSERT_OK(mp_shared_memory_close(other));
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

/* SIGKILL a program whose root and whose child (of each start method) created segments:
 * both are gone soon after, whichever created first. */
static void killed_program(int method, const char *order) {
  char prefix[128], parent_name[160], child_name[160];
  seg_name(prefix, sizeof prefix, order, method);
  snprintf(parent_name, sizeof parent_name, "%s_parent", prefix);
  snprintf(child_name, sizeof child_name, "%s_child", prefix);
  const char *args[] = {"killed", METHODS[method], prefix, order, NULL};
  int out;
  pid_t pid = run_peer(args, &out);
  struct pollfd pfd = {.fd = out, .events = POLLIN};
  T_ASSERT(poll(&pfd, 1, (int)(BOUND * 1000)) == 1, "shm_peer said nothing in %g s", BOUND);
  char line[16] = {0};
  T_ASSERT(read(out, line, sizeof line - 1) > 0 && strcmp(line, "ready\n") == 0,
           "shm_peer said '%s'", line);
  close(out);
  T_ASSERT(segment_exists(parent_name) && segment_exists(child_name), "both created");
  T_INT_EQ(kill(pid, SIGKILL), 0);
  T_INT_EQ(reap_peer(pid), -SIGKILL);
  T_ASSERT(await_segment(parent_name, false, BOUND), "%s left after SIGKILL", parent_name);
  T_ASSERT(await_segment(child_name, false, BOUND), "%s left after SIGKILL", child_name);
}

START_TEST(test_killed_program_parent_first) {
  killed_program(_i, "parent-first");
}
END_TEST

START_TEST(test_killed_program_child_first) {
  killed_program(_i, "child-first");
}
END_TEST

/* Threads of one process create at once: one tracker starts, every segment is tracked. */
static void *create_many(void *arg) {
  int *failures = arg;
  for (int i = 0; i < 20; i++) {
    mp_shared_memory_t *shm;
    if (mp_shared_memory_create(&shm, NULL, 100, 0) != 0 || mp_shared_memory_unlink(shm) != 0 ||
        mp_shared_memory_close(shm) != 0)
      (*failures)++;
  }
  return NULL;
}

START_TEST(test_threads) {
  pthread_t threads[4];
  int failures[4] = {0};
  for (int i = 0; i < 4; i++)
    T_INT_EQ(pthread_create(&threads[i], NULL, create_many, &failures[i]), 0);
  for (int i = 0; i < 4; i++) {
    pthread_join(threads[i], NULL);
    T_INT_EQ(failures[i], 0);
  }
}
END_TEST

/* The tracker this process spawned: its child, leader of a session of its own; 0 if none
 * (yet). */
static pid_t find_tracker(void) {
  DIR *dir = opendir("/proc");
  struct dirent *d;
  pid_t found = 0;
  while (dir && !found && (d = readdir(dir)) != NULL) {
    char path[300], stat_line[1024];
    snprintf(path, sizeof path, "/proc/%s/stat", d->d_name);
    FILE *f = fopen(path, "re");
    if (!f)
      continue;
    size_t n = fread(stat_line, 1, sizeof stat_line - 1, f);
    fclose(f);
    stat_line[n] = '\0';
    char *after = strrchr(stat_line, ')');
    int ppid, pgrp, session;
    if (after && sscanf(after + 1, " %*c %d %d %d", &ppid, &pgrp, &session) == 3 &&
        ppid == getpid() && session == atoi(d->d_name))
      found = session;
  }
  if (dir)
    closedir(dir);
  return found;
}

/* What a racing child is told: the Event to wait on, and its segment's name. */
typedef struct {
  mp_event_t *go;
  char name[128];
} race_t;

static int create_at_signal(void *arg, size_t size) {
  (void)size;
  race_t *race = arg;
  mp_shared_memory_t *shm;
  if (mp_event_wait(race->go, BOUND) != 0)
    return 50;
  if (mp_shared_memory_create(&shm, race->name, PAGE, 0) != 0)
    return 51;
  return mp_shared_memory_close(shm) == 0 ? 0 : 52;
}

static int count_trackers(void) {
  int n = 0;
  DIR *dir = opendir("/proc");
  struct dirent *d;
  while (dir && (d = readdir(dir)) != NULL) {
    char path[300], line[512];
    snprintf(path, sizeof path, "/proc/%s/stat", d->d_name);
    FILE *f = fopen(path, "re");
    if (!f)
      continue;
    size_t len = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[len] = '\0';
    char *after = strrchr(line, ')');
    int ppid;
    if (after && strstr(line, "(mp-shm-tracker)") && sscanf(after + 1, " %*c %d", &ppid) == 1 &&
        ppid == getpid())
      n++;
  }
  if (dir)
    closedir(dir);
  return n;
}

/* Children of one program (this test process, which has an arena from the Event but no
 * tracker) create at once: they race to start the tracker, one wins, all are tracked by
 * it. As a subreaper, this process adopts the orphaned tracker, so it can count it. */
START_TEST(test_tracker_race) {
  T_INT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  race_t races[4];
  mp_process_t *procs[4];
  mp_event_t *go;
  MP_ASSERT_OK(mp_event_create(&go));
  for (int k = 0; k < 4; k++) {
    char tag[32];
    snprintf(tag, sizeof tag, "race%d", k);
    races[k].go = go;
    seg_name(races[k].name, sizeof races[k].name, tag, _i);
    procs[k] = mp_test_start(_i, create_at_signal, &races[k], sizeof races[k]);
  }
  MP_ASSERT_OK(mp_event_set(go));
  for (int k = 0; k < 4; k++)
    mp_test_join_ok(procs[k], BOUND);
  for (int k = 0; k < 4; k++)
    T_ASSERT(segment_exists(races[k].name), "%s outlives its creator", races[k].name);
  T_INT_EQ(count_trackers(), 1);
  MP_ASSERT_OK(mp_event_close(go));
  /* Left to the tracker, which ends with this process: test_no_leftovers checks. */
}
END_TEST

/* A killed tracker is replaced at the next create; what it held is no longer tracked. */
START_TEST(test_tracker_killed) {
  char lost[128], next[128];
  seg_name(lost, sizeof lost, "lost", 0);
  seg_name(next, sizeof next, "after_kill", 0);
  mp_shared_memory_t *a, *b;
  MP_ASSERT_OK(mp_shared_memory_create(&a, lost, PAGE, 0));
  pid_t tracker = find_tracker();
  T_ASSERT(tracker > 0, "no tracker among this process's children");
  mp_test_track_pid(tracker);
  T_INT_EQ(kill(tracker, SIGKILL), 0);
  T_INT_EQ(waitpid(tracker, NULL, 0), tracker);
  MP_ASSERT_OK(mp_shared_memory_create(&b, next, PAGE, 0));
  pid_t second = find_tracker();
  T_ASSERT(second > 0 && second != tracker, "a new tracker (%d, was %d)", second, tracker);
  mp_test_track_pid(second); /* killed only if the test fails */
  MP_ASSERT_OK(mp_shared_memory_unlink(a));
  MP_ASSERT_OK(mp_shared_memory_close(a));
  MP_ASSERT_OK(mp_shared_memory_close(b)); /* the new tracker's, for test_no_leftovers */
}
END_TEST

/* ===================================================================================== */
/* What any process of the user may send the tracker.                                  */

/* The tracker's record, as lib/shared_memory.c lays it out (internal: a forged record is
 * what these tests send). */
typedef struct {
  uint32_t op;
  int32_t parent;
  uint64_t dev, ino;
  char text[MP_SHARED_MEMORY_NAME_MAX + 1];
} forged_t;
enum { FORGED_TRACK = 2, FORGED_FORGET = 3 };

/* The address the tracker `pid` listens at (found by its sockets' inodes in
 * /proc/net/unix, as any process of the user can); false if none. */
static bool tracker_address(pid_t pid, struct sockaddr_un *addr, socklen_t *len) {
  char dir_path[64], line[512], name[256] = "";
  snprintf(dir_path, sizeof dir_path, "/proc/%d/fd", (int)pid);
  FILE *unix_table = fopen("/proc/net/unix", "re");
  while (unix_table && !name[0] && fgets(line, sizeof line, unix_table)) {
    unsigned long inode;
    char path[256];
    if (sscanf(line, "%*s %*s %*s %*s %*s %*s %lu %255s", &inode, path) != 2 ||
        strncmp(path, "@libmp-shm-tracker-", 19) != 0)
      continue;
    char want[64];
    snprintf(want, sizeof want, "socket:[%lu]", inode);
    DIR *fds = opendir(dir_path);
    struct dirent *d;
    while (fds && (d = readdir(fds)) != NULL) {
      char link_path[128], target[64] = "";
      snprintf(link_path, sizeof link_path, "%s/%s", dir_path, d->d_name);
      if (readlink(link_path, target, sizeof target - 1) > 0 && strcmp(target, want) == 0)
        snprintf(name, sizeof name, "%s", path + 1);
    }
    if (fds)
      closedir(fds);
  }
  if (unix_table)
    fclose(unix_table);
  if (!name[0])
    return false;
  *addr = (struct sockaddr_un){.sun_family = AF_UNIX};
  memcpy(addr->sun_path + 1, name, strlen(name));
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
  return true;
}

/* A connection to the listener of the tracker `pid`, past its greeting; -1 if none. */
static int connect_to_tracker(pid_t pid) {
  struct sockaddr_un addr;
  socklen_t len;
  if (!tracker_address(pid, &addr, &len))
    return -1;
  int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  char greeting = 0;
  if (sock < 0 || connect(sock, (struct sockaddr *)&addr, len) < 0 ||
      recv(sock, &greeting, 1, 0) != 1) {
    if (sock >= 0)
      close(sock);
    return -1;
  }
  return sock;
}

/* Fds passed to the tracker, which takes none, are all closed: two in a record (both fit
 * the room for one), three (cut off), and with a record too long. Each record carries the
 * write end of a pipe, so the read end sees end of file only once the tracker holds no
 * copy. */
START_TEST(test_tracker_closes_passed_fds) {
  char name[128];
  seg_name(name, sizeof name, "fds", 0);
  mp_shared_memory_t *shm;
  MP_ASSERT_OK(mp_shared_memory_create(&shm, name, PAGE, 0));
  pid_t tracker = find_tracker();
  T_ASSERT(tracker > 0, "no tracker among this process's children");
  int pipefd[2];
  T_INT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
  forged_t rec = {.op = FORGED_FORGET};
  snprintf(rec.text, sizeof rec.text, "%s_none", name);
  size_t len = offsetof(forged_t, text) + strlen(rec.text) + 1;
  int two[] = {pipefd[0], pipefd[1]}, three[] = {pipefd[0], pipefd[1], pipefd[1]};
  char oversized[sizeof rec + 64] = {0};
  memcpy(oversized, &rec, sizeof rec);
  /* One connection takes many two-fd records, then a three-fd one (and is hung up on);
   * another an oversized record. */
  int sock = connect_to_tracker(tracker), other = connect_to_tracker(tracker);
  T_ASSERT(sock >= 0 && other >= 0, "cannot reach the tracker %d", (int)tracker);
  for (int i = 0; i < 100; i++)
    T_ASSERT(mp_test_send_fds(sock, &rec, len, two, 2), "sendmsg: %s", strerror(errno));
  T_ASSERT(mp_test_send_fds(sock, &rec, len, three, 3), "sendmsg: %s", strerror(errno));
  T_ASSERT(mp_test_send_fds(other, oversized, sizeof oversized, two, 2), "sendmsg: %s",
           strerror(errno));
  close(pipefd[1]);
  struct pollfd pfd = {.fd = pipefd[0], .events = POLLIN};
  char byte;
  T_ASSERT(poll(&pfd, 1, (int)(BOUND * 1000)) == 1 && read(pipefd[0], &byte, 1) == 0,
           "the tracker still holds a passed fd after %g s", BOUND);
  close(pipefd[0]);
  close(sock);
  close(other);
  /* The tracker still serves its program. */
  mp_shared_memory_t *again;
  char next[128];
  seg_name(next, sizeof next, "fds_after", 0);
  MP_ASSERT_OK(mp_shared_memory_create(&again, next, PAGE, 0));
  T_INT_EQ(find_tracker(), tracker);
  MP_ASSERT_OK(mp_shared_memory_unlink(again));
  MP_ASSERT_OK(mp_shared_memory_close(again));
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

/* ../ from /dev/shm to the root, as many as its real path is deep. */
static void to_root_from_shm(char *out, size_t cap) {
  char real[PATH_MAX];
  out[0] = '\0';
  if (!realpath("/dev/shm", real))
    return;
  for (const char *p = real; *p; p++)
    if (*p == '/' && strlen(out) + 3 < cap)
      strcat(out, "../");
}

/* A plain fork of the test: a program of its own, which creates a segment (starting its
 * tracker), tells the tracker to track the file `victim`, with its device and inode, under
 * the name `sent`: once bare and once with an fd of the victim; then writes the tracker's
 * pid to `report` and ends. */
static int forge_track(int report, const char *victim, const char *sent, const char *segment) {
  mp_shared_memory_t *shm;
  if (mp_shared_memory_create(&shm, segment, PAGE, 0) != 0)
    return 60;
  pid_t tracker = find_tracker();
  int sock = connect_to_tracker(tracker), other = connect_to_tracker(tracker);
  if (sock < 0 || other < 0)
    return 61;
  struct stat st;
  int fd = open(victim, O_RDONLY | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) != 0)
    return 62;
  forged_t rec = {.op = FORGED_TRACK, .dev = (uint64_t)st.st_dev, .ino = (uint64_t)st.st_ino};
  snprintf(rec.text, sizeof rec.text, "%s", sent);
  size_t len = offsetof(forged_t, text) + strlen(rec.text) + 1;
  if (send(sock, &rec, len, MSG_NOSIGNAL) < 0 || !mp_test_send_fds(other, &rec, len, &fd, 1))
    return 63;
  close(fd);
  close(sock);
  close(other);
  if (write(report, &tracker, sizeof tracker) != (ssize_t)sizeof tracker)
    return 64;
  return mp_shared_memory_close(shm) == 0 ? 0 : 65;
}

/* Runs forge_track in a program of its own and waits for its tracker to end: the victim
 * must be left, the program's own segment gone. The victim is unlinked after. */
static void forged_track_leaves(const char *victim, const char *sent, const char *segment) {
  T_INT_EQ(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  int report[2];
  T_INT_EQ(pipe2(report, O_CLOEXEC), 0);
  pid_t child = fork();
  if (child == 0) {
    close(report[0]);
    _exit(forge_track(report[1], victim, sent, segment));
  }
  T_ASSERT(child > 0, "fork: %s", strerror(errno));
  mp_test_track_pid(child);
  close(report[1]);
  pid_t tracker = 0;
  bool told = read(report[0], &tracker, sizeof tracker) == (ssize_t)sizeof tracker;
  close(report[0]);
  if (told)
    mp_test_track_pid(tracker);
  int status = 0;
  T_INT_EQ(waitpid(child, &status, 0), child);
  T_ASSERT(told && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the forging child: %#x",
           status);
  /* The program has ended: its tracker (adopted, as this process is a subreaper) ends. */
  double end = mp_test_now() + BOUND;
  pid_t r;
  while ((r = waitpid(tracker, NULL, WNOHANG)) == 0 && mp_test_now() < end)
    mp_test_sleep(0.005);
  T_INT_EQ(r, tracker);
  bool kept = access(victim, F_OK) == 0;
  unlink(victim);
  T_ASSERT(kept, "the tracker unlinked %s", victim);
  T_ASSERT(!segment_exists(segment), "the program's own %s was left", segment);
}

/* A file made by hand, for a forged record to name. */
static void make_victim(const char *path) {
  int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
  T_ASSERT(fd >= 0, "creating %s: %s", path, strerror(errno));
  T_INT_EQ(write(fd, "victim", 6), 6);
  close(fd);
}

/* A name the tracker is sent is checked there: TRACK of "../../tmp/x" with that file's
 * device and inode leaves the file alone when the program ends, while the program's own
 * segment goes. */
START_TEST(test_tracker_refuses_paths) {
  char victim[128], segment[128], up[128], sent[512];
  snprintf(victim, sizeof victim, "/tmp/mp_t%d_victim", (int)getpid());
  seg_name(segment, sizeof segment, "escape", 0);
  make_victim(victim);
  to_root_from_shm(up, sizeof up);
  snprintf(sent, sizeof sent, "%s%s", up, victim + 1);
  forged_track_leaves(victim, sent, segment);
}
END_TEST

/* The tracker unlinks only what its clients made: a file of /dev/shm that another program
 * made (here by hand), named by a same-user peer with its device and inode, with or without
 * an fd of it, is left when the program ends. */
START_TEST(test_tracker_leaves_other_files) {
  char name[128], victim[256], segment[128];
  seg_name(name, sizeof name, "not_ours", 0);
  snprintf(victim, sizeof victim, "/dev/shm/%s", name);
  seg_name(segment, sizeof segment, "forger", 0);
  make_victim(victim);
  forged_track_leaves(victim, name, segment);
}
END_TEST

START_TEST(test_bad_input) {
  mp_shared_memory_t *shm = NULL;
  char name[128], too_long[300], longest[300];
  seg_name(name, sizeof name, "bad", 0);
  MP_ASSERT_ERR(mp_shared_memory_create(NULL, name, PAGE, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_shared_memory_create(&shm, name, 0, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_shared_memory_create(&shm, NULL, 0, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_shared_memory_create(&shm, name, SIZE_MAX, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_shared_memory_create(&shm, name, PAGE, 1u << 7), MP_EINVAL);
  const char *bad[] = {"", "/", ".", "..", "/..", "a/b", "//a", "a/"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    MP_ASSERT_ERR(mp_shared_memory_create(&shm, bad[i], PAGE, 0), MP_EINVAL);
    MP_ASSERT_ERR(mp_shared_memory_attach(&shm, bad[i]), MP_EINVAL);
  }
  memset(too_long, 'x', 256);
  too_long[256] = '\0';
  MP_ASSERT_ERR(mp_shared_memory_create(&shm, too_long, PAGE, 0), MP_EINVAL);
  MP_ASSERT_ERR(mp_shared_memory_attach(&shm, too_long), MP_EINVAL);
  T_ASSERT(shm == NULL, "no handle from failed calls");
  /* The longest name works. */
  snprintf(longest, sizeof longest, "%s_%0*d", name, (int)(255 - strlen(name) - 1), 0);
  T_INT_EQ(strlen(longest), 255);
  MP_ASSERT_OK(mp_shared_memory_create(&shm, longest, PAGE, 0));
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_OK(mp_shared_memory_close(shm));

  MP_ASSERT_ERR(mp_shared_memory_attach(NULL, name), MP_EINVAL);
  MP_ASSERT_ERR(mp_shared_memory_attach(&shm, NULL), MP_EINVAL);
  /* A segment of 0 bytes, as a bare shm_open() leaves it, cannot be mapped. */
  char path[512];
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  int fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  T_ASSERT(fd >= 0, "creating %s: %s", path, strerror(errno));
  close(fd);
  MP_ASSERT_ERR(mp_shared_memory_attach(&shm, name), MP_EINVAL);
  unlink(path);

  MP_ASSERT_ERR(mp_shared_memory_unlink(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_shared_memory_keep(NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_shared_memory_close(NULL), MP_EINVAL);
  T_ASSERT(mp_shared_memory_buf(NULL) == NULL, "buf of NULL");
  T_INT_EQ(mp_shared_memory_size(NULL), 0);
  T_ASSERT(mp_shared_memory_name(NULL) == NULL, "name of NULL");
}
END_TEST

/* ===================================================================================== */
/* Modes and misuse.                                                                     */

/* The wait status of a forked child that becomes nobody (uid and gid 65534; exit 91 if it
 * cannot) and exits with fn(arg). The suite runs as root. */
static int as_nobody(int (*fn)(const char *), const char *arg) {
  T_ASSERT(geteuid() == 0, "this test becomes another user: run it as root");
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork");
  if (pid == 0)
    _exit(setgid(65534) == 0 && setuid(65534) == 0 ? fn(arg) : 91);
  mp_test_track_pid(pid);
  int status = 0;
  T_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid");
  mp_test_untrack_pid(pid);
  return status;
}

static int cannot_open(const char *path) {
  return open(path, O_RDONLY) < 0 && errno == EACCES ? 0 : 1;
}

/* Whatever the umask, a segment is its owner's only (0600): another user can neither read
 * it nor write it. The suite runs as root and tries as nobody. */
START_TEST(test_segments_are_0600) {
  char name[128], path[512];
  seg_name(name, sizeof name, "mode", 0);
  mode_t old = umask(0);
  mp_shared_memory_t *named, *generated;
  MP_ASSERT_OK(mp_shared_memory_create(&named, name, PAGE, 0));
  MP_ASSERT_OK(mp_shared_memory_create(&generated, NULL, PAGE, 0));
  umask(old);
  const char *names[] = {name, mp_shared_memory_name(generated)};
  for (int i = 0; i < 2; i++) {
    struct stat st;
    snprintf(path, sizeof path, "/dev/shm/%s", names[i]);
    T_ASSERT(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
    T_ASSERT((st.st_mode & 07777) == 0600, "%s has mode %04o", path, st.st_mode & 07777);
    T_ASSERT(st.st_uid == geteuid(), "%s belongs to uid %d", path, (int)st.st_uid);
    int status = as_nobody(cannot_open, path);
    T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "nobody opened %s (status %#x)",
             path, status);
  }
  MP_ASSERT_OK(mp_shared_memory_unlink(named));
  MP_ASSERT_OK(mp_shared_memory_unlink(generated));
  MP_ASSERT_OK(mp_shared_memory_close(named));
  MP_ASSERT_OK(mp_shared_memory_close(generated));
}
END_TEST

static int make_open_file(const char *path) {
  umask(0);
  int fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0666);
  return fd >= 0 && ftruncate(fd, PAGE) == 0 ? 0 : 1;
}

/* A segment made by another user, or open to group or others, under a name this program
 * expects is refused: its maker could read or change all that is written into it. */
START_TEST(test_foreign_segment_refused) {
  char name[128], path[512];
  seg_name(name, sizeof name, "foreign", 0);
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  int status = as_nobody(make_open_file, path);
  T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "nobody made %s (status %#x)", path,
           status);
  mp_shared_memory_t *shm = NULL;
  int rc = mp_shared_memory_attach(&shm, name);
  unlink(path);
  MP_ASSERT_ERR(rc, -EACCES);
  T_ASSERT(strstr(mp_last_error(), "not this user's own") != NULL, "message '%s'",
           mp_last_error());
  T_ASSERT(shm == NULL, "a handle from a refused attach");
  /* Our own, but open to the group: refused as well. */
  int fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  T_ASSERT(fd >= 0 && ftruncate(fd, PAGE) == 0 && fchmod(fd, 0660) == 0, "making %s: %s", path,
           strerror(errno));
  close(fd);
  rc = mp_shared_memory_attach(&shm, name);
  unlink(path);
  MP_ASSERT_ERR(rc, -EACCES);
}
END_TEST

static mp_shared_memory_t *closed_handle(void) {
  mp_shared_memory_t *shm;
  if (mp_shared_memory_create(&shm, NULL, PAGE, 0) < 0 || mp_shared_memory_unlink(shm) < 0 ||
      mp_shared_memory_close(shm) < 0)
    _exit(1);
  return shm;
}

static void close_twice(void) {
  mp_shared_memory_close(closed_handle());
}

static void buf_after_close(void) {
  mp_shared_memory_buf(closed_handle());
}

START_TEST(test_use_after_close_aborts) {
  mp_test_expect_abort(close_twice, "libmp: mp_shared_memory_close: shared memory handle "
                                    "used after mp_shared_memory_close");
  mp_test_expect_abort(buf_after_close, "libmp: mp_shared_memory_buf: shared memory handle "
                                        "used after mp_shared_memory_close");
}
END_TEST

/* Last: every segment any test named is gone, once the trackers of the ended test
 * processes have done their work. */
START_TEST(test_no_leftovers) {
  char prefix[64];
  snprintf(prefix, sizeof prefix, "mp_t%d_", (int)suite_pid);
  double end = mp_test_now() + BOUND;
  char left[256] = "";
  for (;;) {
    left[0] = '\0';
    DIR *dir = opendir("/dev/shm");
    T_ASSERT(dir != NULL, "opendir /dev/shm: %s", strerror(errno));
    struct dirent *d;
    while ((d = readdir(dir)) != NULL)
      if (strncmp(d->d_name, prefix, strlen(prefix)) == 0)
        snprintf(left, sizeof left, "%s", d->d_name);
    closedir(dir);
    if (!left[0] || mp_test_now() > end)
      break;
    mp_test_sleep(0.01);
  }
  T_ASSERT(left[0] == '\0', "/dev/shm/%s was left behind", left);
}
END_TEST

/* Review stop 23: a TRACK of the longest name (255 bytes) is a record of sizeof(record_t)
 * bytes, one more than the tracker received (sizeof rec - 1): it was cut (MSG_TRUNC), the
 * tracker hung up on the creator as on a malformed record and, that being its last
 * connection, unlinked every segment of the running program and ended. */
START_TEST(test_longest_name_keeps_others) {
  mp_shared_memory_t *first = NULL, *longest = NULL;
  char name[128], long_name[300];
  seg_name(name, sizeof name, "keep", 0);
  snprintf(long_name, sizeof long_name, "%s_long_%0*d", name, (int)(255 - strlen(name) - 6), 0);
  T_INT_EQ(strlen(long_name), 255);
  MP_ASSERT_OK(mp_shared_memory_create(&first, name, PAGE, 0));
  MP_ASSERT_OK(mp_shared_memory_create(&longest, long_name, PAGE, 0));
  bool gone = await_segment(name, false, 1.0);
  T_ASSERT(!gone,
           "/dev/shm/%s was unlinked while its creator runs, after a create of a "
           "255-byte name",
           name);
  T_ASSERT(segment_exists(long_name), "the segment of the 255-byte name is gone");
  mp_shared_memory_unlink(first);
  mp_shared_memory_unlink(longest);
  MP_ASSERT_OK(mp_shared_memory_close(first));
  MP_ASSERT_OK(mp_shared_memory_close(longest));
}
END_TEST

/* Review stop 23: the tracker's name is listed in /proc/net/unix for every user while it
 * runs, key and all. A tracker started by a grandchild outlives only its libmp parent, so it
 * ends while the program runs; another user who read its name binds it then, and every
 * tracked create of the program fails from then on (-EPERM), which the key was to prevent
 * (docs/architecture.md, "Endpoints": "cannot bind it first"). */
static int squat_grandchild(void *arg, size_t size) {
  (void)size;
  const char *name = arg;
  mp_shared_memory_t *shm;
  if (mp_shared_memory_create(&shm, name, PAGE, 0) != 0)
    return 20;
  usleep(300 * 1000); /* its tracker runs meanwhile, listed in /proc/net/unix */
  mp_shared_memory_unlink(shm);
  return mp_shared_memory_close(shm) == 0 ? 0 : 21;
}

static int squat_child(void *arg, size_t size) {
  mp_context_t *ctx;
  mp_process_t *p;
  int code = -1;
  if (mp_get_context("spawn", &ctx) != 0 ||
      mp_process_create(&p, ctx, squat_grandchild, arg, size, "grandchild") != 0 ||
      mp_process_start(p) != 0 || mp_process_join(p, BOUND) != 0 ||
      mp_process_exitcode(p, &code) != 0)
    return 22;
  mp_process_close(p);
  return code;
}

/* "-<inode>-<address>-" of this process's arena, as the tracker's name holds them. */
static void arena_mark(char *out, size_t cap) {
  FILE *f = fopen("/proc/self/maps", "r");
  char line[512];
  *out = '\0';
  while (f && fgets(line, sizeof line, f)) {
    unsigned long start, ino;
    if (strstr(line, "libmp-arena") &&
        sscanf(line, "%lx-%*x %*s %*s %*s %lu", &start, &ino) == 2) {
      snprintf(out, cap, "-%lx-%lx-", ino, start);
      break;
    }
  }
  if (f)
    fclose(f);
}

/* As another user: binds the tracker name of this program's arena (mark) once it is listed
 * and free. */
static __attribute__((noreturn)) void squat_listed_name(int report, const char *mark) {
  if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
    _exit(2);
  char seen[108] = "";
  for (double end = mp_test_now() + 2 * BOUND; mp_test_now() < end; mp_test_sleep(0.002)) {
    FILE *f = fopen("/proc/net/unix", "r");
    char line[512];
    while (!*seen && f && fgets(line, sizeof line, f)) {
      char *at = strstr(line, "@libmp-shm-tracker-");
      if (at && strstr(at, mark)) {
        at[strcspn(at, "\n")] = '\0';
        snprintf(seen, sizeof seen, "%s", at + 1);
      }
    }
    if (f)
      fclose(f);
    if (!*seen)
      continue;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(seen);
    memcpy(addr.sun_path + 1, seen, len);
    int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (bind(l, (struct sockaddr *)&addr,
             (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) == 0 &&
        listen(l, 8) == 0) {
      char bound = 'b';
      if (write(report, &bound, 1) != 1)
        _exit(3);
      pause();
    }
    close(l);
  }
  _exit(0);
}

START_TEST(test_tracker_name_not_squatted_after_end) {
  T_ASSERT(geteuid() == 0, "this test becomes another user: run it as root");
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(false, &a, &b)); /* the arena, before the child: one for all */
  char mark[64];
  arena_mark(mark, sizeof mark);
  T_ASSERT(*mark, "no arena in /proc/self/maps");
  int report[2];
  T_ASSERT(pipe(report) == 0, "pipe");
  pid_t squatter = fork();
  T_ASSERT(squatter >= 0, "fork");
  if (squatter == 0)
    squat_listed_name(report[1], mark);
  mp_test_track_pid(squatter);
  close(report[1]);
  char name[128];
  seg_name(name, sizeof name, "squat", 0);
  mp_test_join_ok(mp_test_start(1, squat_child, name, strlen(name) + 1), 30);
  struct pollfd p = {.fd = report[0], .events = POLLIN};
  bool bound = poll(&p, 1, 2000) == 1;
  seg_name(name, sizeof name, "squat_after", 0);
  mp_shared_memory_t *shm = NULL;
  int rc = mp_shared_memory_create(&shm, name, PAGE, 0);
  char detail[512];
  snprintf(detail, sizeof detail, "%s", mp_last_error());
  if (rc == 0) {
    mp_shared_memory_unlink(shm);
    mp_shared_memory_close(shm);
  }
  kill(squatter, SIGKILL);
  waitpid(squatter, NULL, 0);
  close(report[0]);
  mp_conn_close(a);
  mp_conn_close(b);
  T_ASSERT(rc == 0, "a tracked create failed (%d: %s)%s", rc, detail,
           bound ? " after another user bound the name of the grandchild's ended tracker" : "");
  T_ASSERT(bound, "the other user never bound the ended tracker's name: the case was not made");
}
END_TEST

/* The pid of this process's tracker, found among its children by name. */
static pid_t own_tracker(void) {
  DIR *d = opendir("/proc");
  struct dirent *e;
  pid_t found = 0;
  while (d && !found && (e = readdir(d))) {
    char path[300], line[512];
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    FILE *f = fopen(path, "r");
    int pid, ppid;
    if (f && fgets(line, sizeof line, f) && strstr(line, "(mp-shm-tracker)") &&
        sscanf(strrchr(line, ')') + 2, "%*c %d", &ppid) == 1 && ppid == getpid() &&
        sscanf(line, "%d", &pid) == 1)
      found = pid;
    if (f)
      fclose(f);
  }
  if (d)
    closedir(d);
  return found;
}

#define TRACKER_BOUND 30.0 /* lib/shared_memory.c's TRACKER_TIMEOUT_SECONDS */

/* What a child that creates until refused says: how its last create ended, and how long
 * that create took. */
typedef struct {
  int rc;
  int creates;
  double took;
} refusal_t;

typedef struct {
  mp_conn_t *told;
  bool ticking; /* a 2 ms interval timer interrupts every system call of the child */
} refused_job_t;

static void tick(int sig) {
  (void)sig;
}

/* Creates segments (each unlinked at once) until a create fails or, never refused, for
 * longer than the parent waits; it says on its connection when its first create has
 * connected it ('c'), then how the last one ended (a refusal_t). */
static int create_until_refused(void *arg, size_t size) {
  (void)size;
  const refused_job_t *job = arg;
  if (job->ticking) {
    struct sigaction sa = {.sa_handler = tick, .sa_flags = SA_RESTART};
    struct itimerval every = {{0, 2000}, {0, 2000}};
    if (sigaction(SIGALRM, &sa, NULL) != 0 || setitimer(ITIMER_REAL, &every, NULL) != 0)
      return 13;
  }
  refusal_t said = {0};
  double end = mp_test_now() + TRACKER_BOUND + 10 * mp_test_slowdown();
  for (int i = 0; said.rc == 0 && mp_test_now() < end; i++) {
    char name[64];
    snprintf(name, sizeof name, "mp_t%d_stopped_%d", (int)getpid(), i);
    mp_shared_memory_t *shm;
    double start = mp_test_now();
    said.rc = mp_shared_memory_create(&shm, name, PAGE, 0);
    said.took = mp_test_now() - start;
    said.creates = i;
    if (said.rc != 0)
      break;
    mp_shared_memory_unlink(shm);
    mp_shared_memory_close(shm);
    if (i == 0 && mp_conn_send(job->told, "c", 1) != 0)
      return 11;
  }
  return mp_conn_send(job->told, &said, sizeof said) == 0 ? 0 : 12;
}

/* Whether the tracker stopped within a second ('T'); its state letter in *state. */
static bool tracker_stopped(pid_t tracker, char *state) {
  int ppid;
  for (double end = mp_test_now() + 1; mp_test_now() < end; mp_test_sleep(0.001))
    if (!mp_test_proc_state(tracker, state, &ppid) || *state == 'T' || *state == 'Z')
      break;
  return *state == 'T';
}

/* A segment created, so that this process starts the tracker, and unlinked: the tracker's
 * pid. */
static pid_t start_own_tracker(const char *what, mp_shared_memory_t **shm) {
  char name[128];
  seg_name(name, sizeof name, what, 0);
  MP_ASSERT_OK(mp_shared_memory_create(shm, name, PAGE, 0));
  MP_ASSERT_OK(mp_shared_memory_unlink(*shm));
  pid_t tracker = own_tracker();
  T_ASSERT(tracker > 0, "no tracker among this process's children");
  return tracker;
}

/* A process that connected to a running tracker, rather than starting it (a spawned
 * child), gets MP_ETIMEDOUT from a create within the tracker's bound once the tracker is
 * stopped and its socket full, as the tracker's starter does (api.md), not a wait for ever
 * (review, stop 23); ticking, with a timer's signal interrupting that wait every 2 ms, which
 * made each send wait the whole bound anew (SO_SNDTIMEO): for ever. */
static void stopped_tracker_bounds_create(bool ticking) {
  mp_shared_memory_t *shm;
  pid_t tracker = start_own_tracker("stopper", &shm);
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(false, &a, &b));
  refused_job_t job = {b, ticking};
  mp_process_t *p = mp_test_start(1, create_until_refused, &job, sizeof job);
  char c;
  size_t len;
  MP_ASSERT_OK(mp_conn_recv(a, &c, 1, &len, 30 * mp_test_slowdown()));
  T_ASSERT(kill(tracker, SIGSTOP) == 0, "SIGSTOP the tracker");
  char state = '?';
  bool stopped = tracker_stopped(tracker, &state);
  refusal_t said = {0};
  int rc = mp_conn_recv(a, &said, sizeof said, &len, TRACKER_BOUND + 20 * mp_test_slowdown());
  kill(tracker, SIGCONT);
  T_ASSERT(stopped, "the tracker is in state '%c', not stopped", state);
  MP_ASSERT_OK(rc);
  T_ASSERT(len == sizeof said, "the child said %zu bytes", len);
  T_ASSERT(said.rc == MP_ETIMEDOUT, "after %d creates, the last one gave %d (%s) in %.1f s",
           said.creates, said.rc, mp_strerror(said.rc), said.took);
  T_ASSERT(said.took < TRACKER_BOUND + 5 * mp_test_slowdown(),
           "the refused create took %.1f s (the bound is %g s)", said.took, TRACKER_BOUND);
  T_INT_EQ(mp_test_join_code(p, 10 * mp_test_slowdown()), 0);
  T_PROC_CLOSE(p);
  mp_conn_close(a);
  mp_conn_close(b);
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}

START_TEST(test_stopped_tracker_bounds_a_connected_create) {
  stopped_tracker_bounds_create(false);
}
END_TEST

START_TEST(test_stopped_tracker_bounds_a_signalled_create) {
  stopped_tracker_bounds_create(true);
}
END_TEST

/* A child's first create, so its first connection to the tracker, while a 2 ms timer's
 * signal interrupts every system call; says how the create ended and how long it took. */
static int connect_while_ticking(void *arg, size_t size) {
  (void)size;
  const refused_job_t *job = arg;
  struct sigaction sa = {.sa_handler = tick, .sa_flags = SA_RESTART};
  struct itimerval every = {{0, 2000}, {0, 2000}}, off = {{0, 0}, {0, 0}};
  if (sigaction(SIGALRM, &sa, NULL) != 0 || setitimer(ITIMER_REAL, &every, NULL) != 0)
    return 13;
  char name[64];
  snprintf(name, sizeof name, "mp_t%d_backlog", (int)getpid());
  mp_shared_memory_t *shm;
  refusal_t said = {0};
  double start = mp_test_now();
  said.rc = mp_shared_memory_create(&shm, name, PAGE, 0);
  said.took = mp_test_now() - start;
  setitimer(ITIMER_REAL, &off, NULL);
  if (said.rc == 0) {
    mp_shared_memory_unlink(shm);
    mp_shared_memory_close(shm);
  }
  return mp_conn_send(job->told, &said, sizeof said) == 0 ? 0 : 12;
}

/* Nonblocking connections to addr until its listener's backlog refuses one (true) or up to
 * most (false: the case is not made); their count in *n. */
static bool fill_backlog(const struct sockaddr_un *addr, socklen_t len, int *socks, int most,
                         int *n) {
  for (*n = 0; *n < most; (*n)++) {
    int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0)
      return false;
    if (connect(s, (const struct sockaddr *)addr, len) < 0) {
      bool full = errno == EAGAIN;
      close(s);
      return full;
    }
    socks[*n] = s;
  }
  return false;
}

/* A stopped tracker whose backlog is full makes a first connection wait its bound (2 s),
 * after which the create moves to a tracker of its own; a timer's signal every 2 ms in that
 * wait ended the connect with EINTR (SO_SNDTIMEO: even under SA_RESTART), and the create
 * failed at once: "connecting to the segment tracker: Interrupted system call". */
START_TEST(test_stopped_tracker_bounds_a_signalled_connect) {
  enum { MOST = 10000 };
  mp_shared_memory_t *shm;
  pid_t tracker = start_own_tracker("backlog", &shm);
  struct sockaddr_un addr;
  socklen_t len;
  T_ASSERT(tracker_address(tracker, &addr, &len), "the tracker's address was not found");
  struct rlimit was, room;
  T_INT_EQ(getrlimit(RLIMIT_NOFILE, &was), 0);
  room = was;
  room.rlim_cur = room.rlim_max;
  T_INT_EQ(setrlimit(RLIMIT_NOFILE, &room), 0);
  int *socks = malloc(MOST * sizeof *socks), n = 0;
  T_ASSERT(socks != NULL, "no memory");
  T_ASSERT(kill(tracker, SIGSTOP) == 0, "SIGSTOP the tracker");
  char state = '?';
  bool stopped = tracker_stopped(tracker, &state);
  bool full = stopped && fill_backlog(&addr, len, socks, MOST, &n);
  mp_conn_t *a, *b;
  MP_ASSERT_OK(mp_pipe(false, &a, &b));
  refused_job_t job = {b, true};
  refusal_t said = {0};
  size_t got = 0;
  int rc = MP_EINVAL;
  mp_process_t *p = NULL;
  if (full) {
    p = mp_test_start(1, connect_while_ticking, &job, sizeof job);
    rc = mp_conn_recv(a, &said, sizeof said, &got, 30 * mp_test_slowdown());
  }
  kill(tracker, SIGCONT);
  for (int i = 0; i < n; i++)
    close(socks[i]);
  free(socks);
  setrlimit(RLIMIT_NOFILE, &was);
  T_ASSERT(stopped, "the tracker is in state '%c', not stopped", state);
  T_ASSERT(full, "the backlog took %d connections and was not full: the case was not made", n);
  MP_ASSERT_OK(rc);
  T_ASSERT(got == sizeof said, "the child said %zu bytes", got);
  T_ASSERT(said.rc == 0, "the create gave %d (%s) after %.2f s", said.rc, mp_strerror(said.rc),
           said.took);
  T_ASSERT(said.took > 1.5, "the create took %.2f s: its connect did not wait", said.took);
  T_INT_EQ(mp_test_join_code(p, 10 * mp_test_slowdown()), 0);
  T_PROC_CLOSE(p);
  mp_conn_close(a);
  mp_conn_close(b);
  MP_ASSERT_OK(mp_shared_memory_close(shm));
}
END_TEST

/* Review stop 23 (rev-tracker2): a tracker image that never answers its starter (here an
 * executable that ignores LIBMP_CHILD and keeps fd 3 open, as a setuid-like image that runs
 * main() does) fails the create after the tracker's 30 s, as before c5d3761: ensure_tracker
 * took start_tracker's MP_ETIMEDOUT for a foreign listener and started a new tracker under a
 * new nonce, CONNECT_ATTEMPTS (8) times, so the create waited 8 x 30 s and ran 8 images. */
START_TEST(test_silent_tracker_image_fails_once) {
  char script[64];
  snprintf(script, sizeof script, "/tmp/mp_t%d_silent.sh", (int)getpid());
  FILE *f = fopen(script, "w");
  T_ASSERT(f != NULL, "fopen %s", script);
  fprintf(f, "#!/bin/sh\nexec sleep 600\n");
  fclose(f);
  T_ASSERT(chmod(script, 0700) == 0, "chmod");
  int report[2];
  T_ASSERT(pipe(report) == 0, "pipe");
  pid_t child = fork();
  T_ASSERT(child >= 0, "fork");
  if (child == 0) {
    close(report[0]);
    char name[128];
    seg_name(name, sizeof name, "silent", 0);
    mp_shared_memory_t *shm;
    if (mp_set_executable(script) != 0)
      _exit(1);
    double start = mp_test_now();
    int rc = mp_shared_memory_create(&shm, name, PAGE, 0);
    double took = mp_test_now() - start;
    if (rc == 0)
      mp_shared_memory_unlink(shm);
    if (write(report[1], &took, sizeof took) != sizeof took)
      _exit(2);
    _exit(rc == 0 ? 3 : 0);
  }
  mp_test_track_pid(child);
  close(report[1]);
  struct pollfd p = {.fd = report[0], .events = POLLIN};
  double took = -1;
  bool answered =
      poll(&p, 1, 45 * 1000) == 1 && read(report[0], &took, sizeof took) == sizeof took;
  if (!answered)
    kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  close(report[0]);
  unlink(script);
  T_ASSERT(answered, "the create still waited after 45 s (a tracker image that never answers "
                     "is retried under new nonces, 30 s each)");
  T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the create did not fail (status %d)",
           status);
  T_ASSERT(took < 40, "the create failed after %.1f s", took);
}
END_TEST

/*
 * Another program of the user unlinked the segment (shm_unlink) and made its own under the
 * same name, as Python's SharedMemory(create=True) does: an unlink through the old handle
 * says MP_ENOENT and leaves that program's segment, as the tracker leaves a name that is no
 * longer its segment (still_linked). It used to remove whatever the name was.
 */
START_TEST(test_unlink_leaves_a_reused_name) {
  char name[128], path[512];
  seg_name(name, sizeof name, "reused", 0);
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  mp_shared_memory_t *shm;
  MP_ASSERT_OK(mp_shared_memory_create(&shm, name, PAGE, 0));
  T_ASSERT(unlink(path) == 0, "the other program's shm_unlink: %s", strerror(errno));
  int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  T_ASSERT(fd >= 0, "the other program's shm_open: %s", strerror(errno));
  T_ASSERT(ftruncate(fd, PAGE) == 0, "ftruncate");
  close(fd);
  int rc = mp_shared_memory_unlink(shm);
  bool theirs_left = segment_exists(name);
  unlink(path);
  MP_ASSERT_OK(mp_shared_memory_close(shm));
  T_ASSERT(theirs_left,
           "mp_shared_memory_unlink (%s: %s) removed another program's segment "
           "made under the name after this one was unlinked",
           mp_err_name(rc), rc < 0 ? mp_last_error() : "no error");
  T_INT_EQ(rc, MP_ENOENT);
}
END_TEST

/* As nobody under umask 0277: attaches the segment it makes under name (0), or 93 for
 * EACCES. */
static int attach_own_under_umask(const char *name) {
  umask(0277);
  mp_shared_memory_t *mine, *again;
  if (mp_shared_memory_create(&mine, name, PAGE, MP_SHARED_MEMORY_KEEP) != 0)
    return 92;
  int attach = mp_shared_memory_attach(&again, name);
  mp_shared_memory_unlink(mine);
  return attach == 0 ? 0 : attach == -EACCES ? 93 : 94;
}

/*
 * A segment is mode 0600 whatever the umask (test_segments_are_0600 tries umask 0): the
 * nameless file's mode at open, which the umask narrows, is set again. Under umask 0277 it
 * was 0400, and a process of the same (non-root) user could not attach it (O_RDWR: EACCES).
 * Root passes over modes, so the mode itself is checked too.
 */
START_TEST(test_segment_is_0600_under_strict_umask) {
  char name[128], path[512];
  seg_name(name, sizeof name, "umask", 0);
  snprintf(path, sizeof path, "/dev/shm/%s", name);
  mode_t old = umask(0277);
  mp_shared_memory_t *shm;
  int rc = mp_shared_memory_create(&shm, name, PAGE, 0);
  umask(old);
  MP_ASSERT_OK(rc);
  struct stat st;
  int got = stat(path, &st);
  MP_ASSERT_OK(mp_shared_memory_unlink(shm));
  MP_ASSERT_OK(mp_shared_memory_close(shm));
  T_ASSERT(got == 0, "stat %s", path);
  /* The same as nobody, the segment kept (no tracker): its own attach failed. */
  int status = as_nobody(attach_own_under_umask, name);
  T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
           "as nobody under umask 0277, attaching the segment just made: exit %d (93: EACCES) "
           "[mode as root: %04o]",
           WIFEXITED(status) ? WEXITSTATUS(status) : -1, (unsigned)(st.st_mode & 07777));
  T_ASSERT((st.st_mode & 07777) == 0600,
           "a segment made under umask 0277 has mode %04o, not 0600: its user's other "
           "processes cannot open it read-write to attach",
           (unsigned)(st.st_mode & 07777));
}
END_TEST

static Suite *shared_memory_suite(void) {
  Suite *s = suite_create("shared_memory");
  TCase *tc = mp_test_tcase(s, "basics", 20);
  tcase_add_test(tc, test_create_attach_close);
  tcase_add_test(tc, test_generated_names);
  tcase_add_test(tc, test_exists_and_missing);
  tcase_add_test(tc, test_keep_in_process);
  tcase_add_test(tc, test_threads);
  tcase_add_test(tc, test_tracker_killed);
  tcase_add_test(tc, test_segments_are_0600);
  tcase_add_test(tc, test_foreign_segment_refused);
  tcase_add_test(tc, test_use_after_close_aborts);
  tcase_add_test(tc, test_bad_input);
  tcase_add_test(tc, test_tracker_closes_passed_fds);
  tcase_add_test(tc, test_tracker_refuses_paths);
  tcase_add_test(tc, test_tracker_leaves_other_files);
  tcase_add_test(tc, test_longest_name_keeps_others);
  tcase_add_test(tc, test_unlink_leaves_a_reused_name);
  tcase_add_test(tc, test_segment_is_0600_under_strict_umask);

  tc = mp_test_tcase(s, "processes", 30);
  tcase_add_loop_test(tc, test_parent_creates_child_attaches, 0, N_METHODS);
  tcase_add_loop_test(tc, test_child_creates_parent_attaches, 0, N_METHODS);
  tcase_add_loop_test(tc, test_child_creates_after_parent, 0, N_METHODS);
  tcase_add_loop_test(tc, test_exists_and_missing_in_child, 0, N_METHODS);
  tcase_add_loop_test(tc, test_unlink_semantics, 0, N_METHODS);
  tcase_add_loop_test(tc, test_unrelated_program_attaches, 0, N_METHODS);

  tc = mp_test_tcase(s, "stopped", 90);
  tcase_add_test(tc, test_stopped_tracker_bounds_a_connected_create);
  tcase_add_test(tc, test_stopped_tracker_bounds_a_signalled_create);
  tcase_add_test(tc, test_silent_tracker_image_fails_once);
  tc = mp_test_tcase(s, "backlog", 60);
  tcase_add_test(tc, test_stopped_tracker_bounds_a_signalled_connect);

  tc = mp_test_tcase(s, "cleanup", 40);
  tcase_add_loop_test(tc, test_program_end_unlinks, 0, N_METHODS);
  tcase_add_loop_test(tc, test_killed_program_parent_first, 0, N_METHODS);
  tcase_add_loop_test(tc, test_killed_program_child_first, 0, N_METHODS);
  tcase_add_loop_test(tc, test_tracker_race, 0, N_METHODS);
  tcase_add_test(tc, test_tracker_name_not_squatted_after_end);

  tc = mp_test_tcase(s, "leftovers", 20);
  tcase_add_test(tc, test_no_leftovers);
  return s;
}

MP_TEST_MAIN(shared_memory_suite)
