/* Small system helpers: deadlines, waiting on one fd, records with fds over Unix sockets,
 * futexes and robust mutexes in shared memory. */
#include "internal.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ThreadSanitizer intercepts pthread_mutex_lock but not pthread_mutex_clocklock (neither
 * gcc 12's runtime nor clang 14's): a mutex taken so is told to it by hand, else it would
 * report the unlock that follows and miss the ordering the mutex gives (MP_TSAN:
 * internal.h). */

int64_t mp__now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

bool mp__one_cpu(void) {
  static _Atomic int cpus; /* 0: not read yet */
  int n = atomic_load_explicit(&cpus, memory_order_relaxed);
  if (n == 0) {
    cpu_set_t set;
    /* More CPUs than a cpu_set_t holds (EINVAL): many. */
    n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 2;
    atomic_store_explicit(&cpus, n > 0 ? n : 2, memory_order_relaxed);
  }
  return n == 1;
}

int64_t mp__deadline(double timeout) {
  if (!(timeout > 0)) /* negative, zero and NaN do not block, as in Python */
    return mp__now_ns();
  if (timeout >= 1e9) /* 31 years: treat as MP_FOREVER */
    return INT64_MAX;
  return mp__now_ns() + (int64_t)(timeout * 1e9);
}

int mp__poll_fd(int fd, short events, int64_t deadline) {
  return mp__poll_fd_sig(fd, events, deadline, NULL);
}

int mp__poll_fd_sig(int fd, short events, int64_t deadline, const mp__sigint_t *sigint) {
  struct pollfd pfd = {.fd = fd, .events = events};
  for (;;) {
    int timeout_ms = -1;
    if (deadline != INT64_MAX) {
      int64_t left = deadline - mp__now_ns();
      if (left < 0)
        left = 0;
      /* Round up so that a wait never ends before its deadline. */
      int64_t ms = (left + 999999) / 1000000;
      timeout_ms = ms > INT32_MAX ? INT32_MAX : (int)ms;
    }
    int n = poll(&pfd, 1, timeout_ms);
    if (n > 0)
      return 1;
    if (n == 0) {
      if (deadline != INT64_MAX && mp__now_ns() >= deadline)
        return 0;
      continue;
    }
    if (errno != EINTR)
      return -errno;
    if (sigint && mp__sigint_arrived(sigint))
      return MP_EINTR;
  }
}

int mp__send_record(int sock, const void *buf, size_t len, int fd) {
  return mp__send_record_by(sock, buf, len, fd, INT64_MAX);
}

int mp__send_record_by(int sock, const void *buf, size_t len, int fd, int64_t deadline) {
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  union {
    char space[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.space;
    msg.msg_controllen = sizeof control.space;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    /* Values the compiler cannot see: it would load the pair as a constant from .rodata,
     * a page a fork server's spare faults on before its READY (docs/architecture.md). */
    int level = SOL_SOCKET, type = SCM_RIGHTS;
    __asm__("" : "+r"(level), "+r"(type));
    cmsg->cmsg_level = level;
    cmsg->cmsg_type = type;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
  }
  /* With a deadline, never a blocking send: a signal ends a send that SO_SNDTIMEO bounds
   * (EINTR, even under SA_RESTART), and sending again would start the whole bound anew. */
  int flags = MSG_NOSIGNAL | (deadline == INT64_MAX ? 0 : MSG_DONTWAIT);
  for (;;) {
    if (sendmsg(sock, &msg, flags) >= 0)
      return 0;
    if (errno == EINTR)
      continue;
    if (errno != EAGAIN || deadline == INT64_MAX)
      return -errno;
    int ready = mp__poll_fd(sock, POLLOUT, deadline);
    if (ready <= 0)
      return ready < 0 ? ready : MP_ETIMEDOUT;
  }
}

/* Closes every fd that the control messages hold but the caller does not take (all of them
 * when keep is NULL); *keep gets the first, or -1. A peer chooses how many fds it sends, and
 * the kernel installs as many as fit in the buffer (two fit in CMSG_SPACE(sizeof(int)):
 * the padding holds the second), so each one is counted from the header's length. */
static void take_fds(struct msghdr *msg, int *keep) {
  if (keep)
    *keep = -1;
  const char *end = (const char *)msg->msg_control + msg->msg_controllen;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
      continue;
    const unsigned char *data = CMSG_DATA(c);
    size_t len = c->cmsg_len < CMSG_LEN(0) ? 0 : c->cmsg_len - CMSG_LEN(0);
    if (len > (size_t)(end - (const char *)data))
      len = (size_t)(end - (const char *)data);
    for (size_t i = 0; i + sizeof(int) <= len; i += sizeof(int)) {
      int fd;
      memcpy(&fd, data + i, sizeof fd);
      if (keep && *keep < 0)
        *keep = fd;
      else
        close(fd);
    }
  }
}

ssize_t mp__recv_record(int sock, void *buf, size_t cap, int *fd, int flags) {
  return mp__recv_record_cut(sock, buf, cap, fd, flags, NULL);
}

ssize_t mp__recv_record_cut(int sock, void *buf, size_t cap, int *fd, int flags, bool *cut) {
  struct iovec iov = {.iov_base = buf, .iov_len = cap};
  union {
    char space[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } control;
  struct msghdr msg = {.msg_iov = &iov,
                       .msg_iovlen = 1,
                       .msg_control = control.space,
                       .msg_controllen = sizeof control.space};
  if (fd)
    *fd = -1;
  if (cut)
    *cut = false;
  ssize_t n;
  do
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
  while (n < 0 && errno == EINTR);
  if (n < 0)
    return -errno;
  /* A truncated record (or fds cut off, unless the caller takes it so) is refused whole:
   * nothing it carried stays open. */
  bool fds_cut = msg.msg_flags & MSG_CTRUNC;
  bool refused = (msg.msg_flags & MSG_TRUNC) || (fds_cut && !cut);
  take_fds(&msg, refused || fds_cut ? NULL : fd);
  if (cut)
    *cut = fds_cut && !refused;
  return refused ? -EMSGSIZE : n;
}

long mp__libc_syscall(long nr, long a, long b, long c, long d) {
  long r = syscall(nr, a, b, c, d);
  return r < 0 ? -errno : r;
}

/* Inline: a forked child opens its parent's pidfd (MP__CHILD_TEXT). */
MP__CHILD_TEXT int mp__pidfd_open(pid_t pid) {
  long fd = mp__raw_syscall(SYS_pidfd_open, pid, 0, 0, 0);
  if (fd >= 0)
    return (int)fd;
  errno = (int)-fd;
  return -1;
}

MP__CHILD_TEXT bool mp__have_pidfd(void) {
  static int support = -1; /* benign race: every thread computes the same answer */
  if (support < 0) {
    /* LIBMP_NO_PIDFD=1 takes the path of kernels without pidfds, so tests cover it; not
     * in a secure-execution process, whose environment is its caller's. */
    const char *forced = secure_getenv("LIBMP_NO_PIDFD");
    if (forced && strcmp(forced, "1") == 0)
      return (support = 0);
    int fd = mp__pidfd_open(getpid());
    /* ENOSYS: an old kernel or valgrind; EPERM: a seccomp filter that refuses it. */
    support = fd >= 0 || (errno != ENOSYS && errno != EPERM);
    if (fd >= 0)
      close(fd);
  }
  return support;
}

int mp__pidfd_send_signal(int pidfd, int sig) {
  return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

MP__CHILD_TEXT void mp__reset_lock(pthread_mutex_t *lock) {
  /* Compared byte by byte with an initializer on the stack: memcmp with a constant is, under
   * clang, a call of libc's bcmp and a read of .rodata, two pages every forked child faults
   * in. */
  const pthread_mutex_t unused = PTHREAD_MUTEX_INITIALIZER;
  const unsigned char *now = (const unsigned char *)lock, *fresh = (const unsigned char *)&unused;
  unsigned char differ = 0;
  for (size_t i = 0; i < sizeof unused; i++)
    differ |= now[i] ^ fresh[i];
  if (differ)
    memcpy(lock, &unused, sizeof unused);
}

/* Bytes waiting in a stream's buffer, read without locking, so that an empty stream costs
 * no write and no page copy. glibc's FILE fields are public: reading them spares a forked
 * child the fault on __fpending's code page (docs/architecture.md, "Where the time goes"). */
static bool pending(FILE *stream) {
#ifdef __GLIBC__
  if (stream->_mode > 0) /* wide-oriented: its bytes wait in the wide buffer */
    return __fpending(stream) > 0;
  return stream->_IO_write_ptr > stream->_IO_write_base;
#else
  return __fpending(stream) > 0;
#endif
}

MP__CHILD_TEXT void mp__flush_std_streams(void) {
  if (pending(stdout))
    fflush(stdout);
  if (pending(stderr))
    fflush(stderr);
}

int mp__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline) {
  int rc = mp__futex_wait_sig(word, expected, deadline);
  return rc == MP_EINTR ? 0 : rc;
}

int mp__futex_wait_sig(_Atomic uint32_t *word, uint32_t expected, int64_t deadline) {
  struct timespec abs, *at = NULL;
  if (deadline != INT64_MAX) {
    abs.tv_sec = deadline / 1000000000;
    abs.tv_nsec = deadline % 1000000000;
    at = &abs;
  }
  /* FUTEX_WAIT_BITSET takes an absolute deadline, on CLOCK_MONOTONIC unless told otherwise:
   * no drift over spurious wake-ups. */
  long rc = syscall(SYS_futex, word, FUTEX_WAIT_BITSET, expected, at, NULL,
                    FUTEX_BITSET_MATCH_ANY);
  if (rc < 0 && errno == ETIMEDOUT)
    return MP_ETIMEDOUT;
  if (rc < 0 && errno == EINTR)
    return MP_EINTR;
  return 0; /* woken, or EAGAIN (the value changed): the caller looks again */
}

int mp__futex_wake(_Atomic uint32_t *word, int count) {
  long rc = syscall(SYS_futex, word, FUTEX_WAKE, count, NULL, NULL, 0);
  return rc < 0 ? 0 : (int)rc;
}

/* A robust, process-shared mutex: 0 or pthread's error number. */
static int mutex_init(pthread_mutex_t *mutex) {
  pthread_mutexattr_t attr;
  int rc = pthread_mutexattr_init(&attr);
  if (rc == 0)
    rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
  if (rc == 0)
    rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
  if (rc == 0)
    rc = pthread_mutex_init(mutex, &attr);
  pthread_mutexattr_destroy(&attr);
  return rc;
}

int mp__mutex_init(pthread_mutex_t *mutex) {
  int rc = mutex_init(mutex);
  return rc ? mp__error(-rc, "initializing a process-shared mutex: %s", strerror(rc)) : 0;
}

#ifdef __GLIBC__
/* The kind word mutex_init makes glibc write (robust, process-shared), read once per process
 * from a mutex in its own memory: 0 until then (a robust kind is never 0). */
static _Atomic int own_kind;

__attribute__((noinline, cold)) static int own_kind_read(void) {
  pthread_mutex_t mine;
  int kind = mutex_init(&mine) == 0 ? mine.__data.__kind : 0;
  atomic_store_explicit(&own_kind, kind, memory_order_relaxed);
  return kind;
}

static int kind_of(pthread_mutex_t *mutex) {
  return atomic_load_explicit((_Atomic int *)(void *)&mutex->__data.__kind,
                              memory_order_relaxed);
}

/* kind_checked's other outcomes: the process's first check, or a wild kind. */
__attribute__((noinline, cold)) static int kind_refused(pthread_mutex_t *mutex,
                                                        const char *doing) {
  int kind = kind_of(mutex), own = atomic_load_explicit(&own_kind, memory_order_relaxed);
  if (kind == (own ? own : own_kind_read()))
    return 0;
  return mp__error(MP_ECORRUPT,
                   "%s a process-shared mutex: its kind word is %#x, not the %#x libmp wrote: "
                   "another process wrote it",
                   doing, (unsigned)kind, (unsigned)atomic_load(&own_kind));
}

/* glibc reads the mutex's kind word from shared memory at every lock and unlock and obeys
 * it: a wild kind aborts the caller in glibc's own assertions (priority-protected, or
 * priority-inheriting with a dead owner's bit), fails (EINVAL) or makes the mutex another
 * type (a recursive one lets its holder in again). So it is checked first: 0, or
 * MP_ECORRUPT and a sentence, the word left as it is. Two loads and a compare. */
static inline int kind_checked(pthread_mutex_t *mutex, const char *doing) {
  if (__builtin_expect(kind_of(mutex) == atomic_load_explicit(&own_kind, memory_order_relaxed),
                       1))
    return 0;
  return kind_refused(mutex, doing);
}
#endif

/* 0, MP_EOWNERDEAD, MP_ETIMEDOUT or an error, from pthread_mutex_*lock's result. */
static int mutex_outcome(pthread_mutex_t *mutex, int rc) {
  if (rc == EOWNERDEAD) {
    /* The kernel's robust list told us the holder died: the mutex is ours and usable
     * again; what it guards is for the caller to repair. */
    pthread_mutex_consistent(mutex);
    return MP_EOWNERDEAD;
  }
  if (rc == ETIMEDOUT)
    return MP_ETIMEDOUT;
  return rc ? mp__error(-rc, "locking a process-shared mutex: %s", strerror(rc)) : 0;
}

#ifndef __GLIBC__
int mp__mutex_lock(pthread_mutex_t *mutex, int64_t deadline) {
  int rc;
  if (deadline == INT64_MAX) {
    rc = pthread_mutex_lock(mutex);
  } else {
    struct timespec abs = {deadline / 1000000000, deadline % 1000000000};
#ifdef MP_TSAN
    __tsan_mutex_pre_lock(mutex, __tsan_mutex_try_lock);
#endif
    rc = pthread_mutex_clocklock(mutex, CLOCK_MONOTONIC, &abs);
#ifdef MP_TSAN
    __tsan_mutex_post_lock(mutex,
                           rc == 0 || rc == EOWNERDEAD
                               ? __tsan_mutex_try_lock
                               : __tsan_mutex_try_lock | __tsan_mutex_try_lock_failed,
                           0);
#endif
  }
  return mutex_outcome(mutex, rc);
}

int mp__mutex_lock_sig(pthread_mutex_t *mutex, int64_t deadline) {
  return mp__mutex_lock(mutex, deadline); /* another C library: not interruptible */
}
#else
/* The first sleep of a wait, before the SIGINT chain is checked. */
#define FIRST_SLEEP_NS 1000000
/* The longest sleep: a wake-up lost where the robust list cannot pass it on (below) costs a
 * waiter this much at most. */
#define LOST_WAKE_SLICE_NS 50000000

/* The calling thread's robust-list head, which glibc registered with the kernel, or NULL
 * (none, or a layout other than glibc's mutexes use). Read once per thread: a forked child's
 * thread has its head at the same address. */
static inline struct robust_list_head *robust_head(pthread_mutex_t *mutex) {
  static __thread __attribute__((tls_model("initial-exec"))) uintptr_t cached; /* 1: none */
  if (__builtin_expect(cached == 0, 0)) {
    struct robust_list_head *head = NULL;
    size_t len = 0;
    bool usable = syscall(SYS_get_robust_list, 0, &head, &len) == 0 && head &&
                  len == sizeof *head &&
                  head->futex_offset ==
                      (char *)&mutex->__data.__lock - (char *)&mutex->__data.__list.__next;
    cached = usable ? (uintptr_t)head : 1;
  }
  return cached == 1 ? NULL : (struct robust_list_head *)cached;
}

/* Whether the mutex's word, the same after a whole sleep, names an id no thread can have (past
 * the kernel's limit on ids). The kernel marks a robust mutex whose holder ended
 * (FUTEX_OWNER_DIED, the id cleared) before that thread's id is freed, so such a word was
 * written by another process (the owner's, or its robust list's links): taking the mutex
 * over could let a second holder in beside a live one whose word was overwritten, so the
 * wait is refused instead. An id that this process's /proc or kill() does not find is no
 * proof: it is the holder's id in its own pid namespace (a worker that entered another one
 * holds it there), and the word records no namespace, so such a holder is waited for, to
 * the caller's deadline. */
static bool owner_vanished(_Atomic uint32_t *word, uint32_t seen) {
  return (seen & FUTEX_TID_MASK) > MP__TID_MAX && atomic_load(word) == seen;
}

/* Mutexes this thread took through mutex_wait and holds: nodes of its robust list known to
 * be mapped, whose words links_checked reads directly. Past HELD_KNOWN, it asks the kernel. */
#define HELD_KNOWN 8
static __thread __attribute__((tls_model("initial-exec"))) struct {
  unsigned n;
  pthread_mutex_t *mutex[HELD_KNOWN];
} held;

/* A forked child's thread holds none of them (entries would only mark mapped memory, but
 * they would fill the set). Written only if set, as forget_wlock_me. */
MP__CHILD_TEXT static void forget_held(void) {
  if (held.n)
    held.n = 0;
}

/* The word `at` bytes from a node of this thread's robust list (the head, or a mutex's
 * __list.__next): 0 and *word, or -1 where the node is not mapped. A node the thread does
 * not know (a link another process wrote, or a robust mutex taken outside libmp) is read by
 * process_vm_readv, which fails on a wild address rather than faulting. */
static int node_word(uintptr_t node, uintptr_t head, ptrdiff_t at, uintptr_t *word) {
  bool known = node == head;
  for (unsigned i = 0; i < held.n && !known; i++)
    known = node == (uintptr_t)&held.mutex[i]->__data.__list.__next;
  if (known) {
    *word = __atomic_load_n((uintptr_t *)(node + at), __ATOMIC_RELAXED);
    return 0;
  }
  struct iovec mine = {word, sizeof *word}, theirs = {(void *)(node + at), sizeof *word};
  return process_vm_readv(getpid(), &mine, 1, &theirs, 1, 0) == (ssize_t)sizeof *word ? 0 : -1;
}

/* Takes the mutex out of the thread's record (the last one taken, mostly). */
static inline void held_forget(pthread_mutex_t *mutex) {
  unsigned n = held.n;
  if (__builtin_expect(n && held.mutex[n - 1] == mutex, 1)) {
    held.n = n - 1;
    return;
  }
  for (unsigned i = n; i-- > 0;)
    if (held.mutex[i] == mutex) {
      held.mutex[i] = held.mutex[--held.n];
      return;
    }
}

/* links_checked where the mutex is not the only one held, or its links are wild. */
__attribute__((noinline)) static int links_checked_slow(pthread_mutex_t *mutex, uintptr_t h,
                                                        uintptr_t prev, uintptr_t next) {
  uintptr_t me = (uintptr_t)&mutex->__data.__list.__next, to_me = 0, back_to_me = 0;
  if (node_word(prev & ~(uintptr_t)1, h, 0, &to_me) == 0 && to_me == me &&
      node_word(next & ~(uintptr_t)1, h, -(ptrdiff_t)sizeof(void *), &back_to_me) == 0 &&
      back_to_me == me)
    return 0;
  return mp__error(MP_ECORRUPT,
                   "unlocking a process-shared mutex: its robust-list links (%#lx, %#lx) are "
                   "not this thread's list's: another process wrote them",
                   (unsigned long)prev, (unsigned long)next);
}

/*
 * glibc's unlock takes the mutex out of the thread's robust list through its links, which
 * lie in shared memory (DEQUEUE_MUTEX): *(next - 8) = prev and *prev = next. Links another
 * process wrote while it was held made the release write those two words anywhere in the
 * caller. So both must be the list's: the list is circular through the thread's head (its
 * `list` word names the first node, the word before it, glibc's robust_prev, the last), and
 * a neighbour's link back names this mutex: *prev == me and *(next - 8) == me. The writes then
 * land only on words that name this mutex. The only mutex held, the common case, costs two
 * loads of the thread's own memory. 0, or MP_ECORRUPT and a sentence (the links left as
 * they are).
 */
static inline int links_checked(pthread_mutex_t *mutex) {
  struct robust_list_head *head = robust_head(mutex);
  if (!head)
    return 0; /* a layout other than glibc's: nothing to check against */
  uintptr_t h = (uintptr_t)head, me = (uintptr_t)&mutex->__data.__list.__next;
  uintptr_t prev = (uintptr_t)__atomic_load_n(&mutex->__data.__list.__prev, __ATOMIC_RELAXED),
            next = (uintptr_t)__atomic_load_n(&mutex->__data.__list.__next, __ATOMIC_RELAXED);
  int rc = 0;
  if (!__builtin_expect(prev == h && next == h && (uintptr_t)head->list.next == me &&
                            ((uintptr_t *)head)[-1] == me,
                        1))
    rc = links_checked_slow(mutex, h, prev, next);
  if (rc == 0)
    held_forget(mutex);
  return rc;
}

/* The wait of mp__mutex_lock and mp__mutex_lock_sig (interruptible). */
static int mutex_wait(pthread_mutex_t *mutex, int64_t deadline, bool interruptible) {
  /*
   * glibc's wait for a robust mutex restarts after every signal handler, so the wait is
   * ours: pthread_mutex_trylock takes it (glibc keeps the robust list), and in between we
   * sleep on its futex word as glibc's own waiters do (the word holds the owner's TID; a
   * sleeper sets FUTEX_WAITERS so that the unlock, or the kernel at the owner's death,
   * wakes one). A waiter that slept may share that flag with other sleepers: once it holds
   * the mutex it sets the flag again (glibc's trylock clears it), so that its unlock wakes
   * the next one, as glibc's lock does after a wait.
   *
   * An unlock wakes one sleeper. If that one is killed before it takes the mutex, the wake-up
   * must pass to the next: the kernel does that at the thread's death when its robust list
   * names the mutex as an operation under way (list_op_pending) and the mutex is free, as
   * glibc's own wait has it. We name it there for each sleep. What that cannot cover (the
   * death between the sleep and the next trylock, or a mutex taken meanwhile by a trylock,
   * which clears FUTEX_WAITERS) costs the next sleeper LOST_WAKE_SLICE_NS at most.
   *
   * A holder named for a whole sleep is judged (owner_vanished): a word that names an id no
   * thread can have, which the kernel never leaves, is MP_ECORRUPT rather than a wait for
   * ever (the kernel wakes a robust waiter only at a real holder's death).
   */
  _Atomic uint32_t *word = (_Atomic uint32_t *)(void *)&mutex->__data.__lock;
  struct robust_list_head *head = NULL;
  /* SIGINTs are counted from the first failed try by a counter chained at an earlier wait
   * (one load). The chain itself is checked, a system call, only at a second sleep: a
   * holder that lets go within the first, short, sleep costs no more than glibc's wait. */
  uint32_t base = 0;
  unsigned tries = 0, sleeps = 0;
  for (;;) {
    int rc = kind_checked(mutex, "locking");
    if (rc < 0)
      return rc;
    rc = pthread_mutex_trylock(mutex);
    if (rc != EBUSY) {
      if (sleeps && (rc == 0 || rc == EOWNERDEAD))
        atomic_fetch_or(word, FUTEX_WAITERS);
      unsigned n = held.n;
      if ((rc == 0 || rc == EOWNERDEAD) && n < HELD_KNOWN) {
        held.mutex[n] = mutex;
        held.n = n + 1;
      }
      return mutex_outcome(mutex, rc);
    }
    if (interruptible && tries++ == 0)
      base = mp__sigint_count();
    else if (interruptible && mp__sigint_count() != base)
      return MP_EINTR;
    if (deadline != INT64_MAX && mp__now_ns() >= deadline)
      return MP_ETIMEDOUT;
    uint32_t v = atomic_load(word);
    if (v == 0 || (v & FUTEX_OWNER_DIED))
      continue; /* released or orphaned meanwhile: trylock again */
    if (!(v & FUTEX_WAITERS) && !atomic_compare_exchange_strong(word, &v, v | FUTEX_WAITERS))
      continue;
    /* A finite deadline: a futex wait with none is restarted after a handler (signals.c). */
    int64_t until = deadline == INT64_MAX ? INT64_MAX - 1 : deadline;
    int64_t slice_end = mp__now_ns() + (sleeps == 0 ? FIRST_SLEEP_NS : LOST_WAKE_SLICE_NS);
    until = slice_end < until ? slice_end : until;
    if (sleeps++ == 0)
      head = robust_head(mutex);
    else if (sleeps == 2 && interruptible)
      (void)mp__sigint_watch();
    if (head)
      __atomic_store_n(&head->list_op_pending,
                       (struct robust_list *)&mutex->__data.__list.__next, __ATOMIC_RELAXED);
    int slept = mp__futex_wait_sig(word, v | FUTEX_WAITERS, until); /* the loop looks again */
    if (head)
      __atomic_store_n(&head->list_op_pending, NULL, __ATOMIC_RELAXED);
    if (slept == MP_ETIMEDOUT && until == slice_end && sleeps > 1 &&
        owner_vanished(word, v | FUTEX_WAITERS))
      return mp__error(MP_ECORRUPT,
                       "the mutex's owner word names thread %u, an id no thread can have: "
                       "another process wrote it",
                       (unsigned)(v & FUTEX_TID_MASK));
  }
}

int mp__mutex_lock(pthread_mutex_t *mutex, int64_t deadline) {
  return mutex_wait(mutex, deadline, false);
}

int mp__mutex_lock_sig(pthread_mutex_t *mutex, int64_t deadline) {
  return mutex_wait(mutex, deadline, true);
}
#endif

int mp__mutex_unlock(pthread_mutex_t *mutex) {
#ifdef __GLIBC__
  int rc = kind_checked(mutex, "unlocking");
  if (rc == 0)
    rc = links_checked(mutex);
  if (rc < 0)
    return rc;
#endif
  pthread_mutex_unlock(mutex);
  return 0;
}

/*
 * The word lock (internal.h). Not a robust pthread mutex: glibc's costs about 150
 * instructions a lock and unlock (it links itself into the thread's robust list and out
 * again), this one a compare-and-swap and an exchange; and glibc reads its kind word from
 * shared memory (a wild one aborts the caller in glibc's own assertion) and, at the unlock,
 * writes through its list links (wild ones write anywhere in the caller). It keeps the robust
 * mutex's guarantee another way: a waiter that finds the same holder word for a whole slice
 * asks whether that thread still runs. Gone, a zombie, or another thread with its id (ids
 * are reused: pid_max may be 32768) means its holder died: the waiter takes the lock over
 * with one compare-and-swap (so only one does) and is told MP_EOWNERDEAD, as the robust
 * mutex would tell it. A holder's death costs the others a slice (WLOCK_SLICE_NS) at most,
 * instead of the kernel's immediate wake: they are rare, and a holder is quick.
 *
 * The id is the holder's in its own pid namespace, and a waiter can look it up only in its
 * own: a worker may enter another namespace (unshare, a sandbox), where its id names no
 * thread, or another one, here. So the word carries a tag of the holder's namespace (its
 * inode, 21 bits) and the waiter judges only a holder of its own; another's is alive to it,
 * and it waits to its deadline. Within one namespace, /proc answers only where it is that
 * namespace's (/proc/self is the caller's pid): under a /proc of the parent namespace
 * (unshare -p without a /proc of its own) the id names another process there, so the holder
 * records no start time and the waiter asks kill(tid, 0), as it does when /proc hides the
 * holder (hidepid, another uid: no entry, but kill says EPERM, not ESRCH) or is absent (a
 * chroot). kill counts a zombie as alive until it is reaped.
 */
#define WLOCK_SPIN 200
#define WLOCK_SLICE_NS 10000000 /* 10 ms */
/* The tag: the namespace's bits above the start time's, 41 bits: the 9 bits of the low half
 * between the id and the waiters bit, and the high half. */
#define TAG_START_BITS 20
#define TAG_START_MASK ((1u << TAG_START_BITS) - 1)
#define TAG_NS_MOD 0x1fffffu /* the 21 bits of a namespace's tag: 1 to this */
#define TAG_LOW_BITS 9

static uint64_t wlock_word(uint32_t tid, uint64_t tag) {
  return (tag >> TAG_LOW_BITS) << 32 | (tag & ((1u << TAG_LOW_BITS) - 1)) << 22 | tid;
}

static uint64_t wlock_tag(uint64_t w) {
  return (w >> 32) << TAG_LOW_BITS | (w >> 22 & ((1u << TAG_LOW_BITS) - 1));
}

uint32_t mp__pidns_tag(bool *own) {
  struct stat st;
  char link[16];
  ssize_t n = readlink("/proc/self", link, sizeof link - 1);
  link[n > 0 ? n : 0] = 0;
  *own = n > 0 && strtol(link, NULL, 10) == (long)getpid();
  if (stat("/proc/self/ns/pid", &st) < 0)
    return 0;
  return (uint32_t)(st.st_ino % TAG_NS_MOD) + 1;
}

_Thread_local uint64_t mp__wlock_me __attribute__((tls_model("initial-exec")));

__attribute__((noinline, cold)) uint64_t mp__wlock_me_slow(void) {
  pid_t tid = (pid_t)syscall(SYS_gettid);
  bool own;
  uint64_t ns = mp__pidns_tag(&own), start = 0;
  char state;
  if (!own || mp__proc_stat(tid, &state, &start) < 0)
    start = 0; /* unknown: the judgement asks kill() */
  mp__wlock_me = wlock_word((uint32_t)tid & MP__WLOCK_TID,
                            ns << TAG_START_BITS | (start & TAG_START_MASK));
  return mp__wlock_me;
}

/* Whether the holder the word w names has ended, for certain: a holder this process cannot
 * judge (another pid namespace's) is alive. A tag of no namespace (a holder without /proc, or
 * a word another process wrote) is judged as this one's. */
static bool holder_ended(uint64_t w) {
  pid_t tid = (pid_t)(w & MP__WLOCK_TID);
  uint64_t tag = wlock_tag(w);
  uint32_t ns = (uint32_t)(tag >> TAG_START_BITS), start = (uint32_t)tag & TAG_START_MASK;
  if (tid == 0)
    return true; /* no thread has id 0 (and kill would ask the process group) */
  bool own;
  uint32_t mine = mp__pidns_tag(&own);
  if (ns != 0 && ns != mine)
    return false;
  char state;
  uint64_t now;
  if (own && mp__proc_stat(tid, &state, &now) == 0)
    return state == 'Z' || state == 'X' || (start != 0 && (now & TAG_START_MASK) != start);
  return kill(tid, 0) < 0 && errno == ESRCH;
}

/* Spins, then sleeps in slices, taking over from a dead holder, until the call's deadline. A
 * holder is given one slice at least, at whose end it is judged: so a call of timeout 0 still
 * takes a dead holder's lock over, and one that finds the lock passed among live holders
 * waits a slice for it, as for any copy in progress. MP_ETIMEDOUT once both have passed. */
__attribute__((noinline)) int mp__wlock_wait(mp__wlock_t *l, uint64_t me, mp__deadline_t *d) {
  _Atomic uint32_t *futex = (_Atomic uint32_t *)(void *)&l->word; /* the low half */
  uint64_t w = atomic_load(&l->word);
  for (int i = 0; i < WLOCK_SPIN; i++) {
    if (w == 0 && atomic_compare_exchange_weak(&l->word, &w, me))
      return 0;
    mp__cpu_relax();
    w = atomic_load(&l->word);
  }
  uint64_t judged = 0; /* the holder word being timed, since when */
  int64_t since = 0, give_up = MP__DEADLINE_UNSET;
  for (;;) {
    /* Taken with the waiters bit set: others may sleep still (the woken one cannot know). */
    if (w == 0) {
      if (atomic_compare_exchange_weak(&l->word, &w, me | MP__WLOCK_WAITERS))
        return 0;
      continue;
    }
    if (!(w & MP__WLOCK_WAITERS) &&
        !atomic_compare_exchange_weak(&l->word, &w, w | MP__WLOCK_WAITERS))
      continue;
    w |= MP__WLOCK_WAITERS;
    /* A holder is judged once it held the lock for a whole slice, by the clock: a waiter
     * that signals keep waking early must judge it too. */
    int64_t t = mp__now_ns();
    if (give_up == MP__DEADLINE_UNSET) {
      int64_t end = mp__deadline_of(d);
      give_up = end - t > WLOCK_SLICE_NS ? end : t + WLOCK_SLICE_NS;
    }
    if (w != judged) {
      judged = w;
      since = t;
    }
    if (t - since >= WLOCK_SLICE_NS || t >= give_up) { /* the last look judges any holder */
      uint64_t held = w;
      if (holder_ended(w) &&
          atomic_compare_exchange_strong(&l->word, &held, me | MP__WLOCK_WAITERS))
        return MP_EOWNERDEAD;
      since = t; /* alive: judged again a slice from now */
    }
    if (t >= give_up)
      return MP_ETIMEDOUT; /* the waiters bit stays: the holder's unlock wakes nobody, once */
    int64_t slice_end = since + WLOCK_SLICE_NS;
    (void)mp__futex_wait(futex, (uint32_t)w, slice_end < give_up ? slice_end : give_up);
    w = atomic_load(&l->word);
  }
}

/* A forked child's thread has another id and start time. Written only if set: the write
 * would copy the thread's TLS page in every forked child. */
MP__CHILD_TEXT static void forget_wlock_me(void) {
  if (mp__wlock_me)
    mp__wlock_me = 0;
}

/* Prioritized: a spawned child's take-over (spawn.c) never returns to later constructors. */
__attribute__((constructor(102))) static void util_init(void) {
  pthread_atfork(NULL, NULL, forget_wlock_me);
#ifdef __GLIBC__
  pthread_atfork(NULL, NULL, forget_held);
#endif
}

#define WAITABLE_KINDS 8

static struct {
  uint32_t kind;
  const mp__waitable_ops_t *ops;
} waitables[WAITABLE_KINDS];

/* Called from constructors, before any thread of the program runs. */
void mp__waitable_register(uint32_t kind, const mp__waitable_ops_t *ops) {
  for (size_t i = 0; i < WAITABLE_KINDS; i++) {
    if (waitables[i].ops == NULL || waitables[i].kind == kind) {
      waitables[i].kind = kind;
      waitables[i].ops = ops;
      return;
    }
  }
}

const mp__waitable_ops_t *mp__waitable_find(const void *obj) {
  if (obj == NULL)
    return NULL;
  uint32_t kind = *(const uint32_t *)obj;
  for (size_t i = 0; i < WAITABLE_KINDS && waitables[i].ops; i++)
    if (waitables[i].kind == kind)
      return waitables[i].ops;
  return NULL;
}

int mp__proc_stat(pid_t pid, char *state, uint64_t *start) {
  char path[48], buf[512];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  int err = n < 0 ? -errno : 0;
  close(fd);
  if (n <= 0)
    return n < 0 ? err : -EIO;
  buf[n] = 0;
  /* The command name, field 2, may hold spaces and parentheses: count from the last ')'. */
  const char *p = strrchr(buf, ')');
  if (!p || p[1] != ' ')
    return -EIO;
  *state = p[2];
  for (int field = 3; field <= 22; field++) { /* to the space before field 22 */
    p = strchr(p + 1, ' ');
    if (!p)
      return -EIO;
  }
  *start = strtoull(p + 1, NULL, 10);
  return 0;
}

size_t mp__chunksize(size_t n, size_t asked, size_t workers) {
  size_t per = 4 * (workers ? workers : 1);
  size_t chunksize = asked ? asked : n / per + (n % per != 0);
  return chunksize == 0 || chunksize > n ? (n ? n : 1) : chunksize;
}
