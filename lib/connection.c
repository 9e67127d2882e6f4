/*
 * Pipes and connections, Python's connection.py: framed messages over pipes, and mp_wait()
 * over every kind of waitable handle.
 *
 * A pipe is one block of the shared arena holding its two ends, so a handle is a pointer
 * that is the same object in every process. The bytes travel through kernel pipes (a duplex
 * pipe is two of them): pipes, not a socket pair, because a round trip through a Unix socket
 * costs about twice a pipe's here. Each end's fds cross to children by key (reduction.c);
 * each process looks up its own fd at each call.
 *
 *   a message:   | length: 8 bytes, native order | payload: length bytes |
 *
 * A send is one writev() of header and payload under the end's send lock, so messages of any
 * size never interleave. A receive reads into the end's buffer in the arena as much as the
 * pipe holds (up to the buffer's size): a small message and its header arrive in one read(),
 * and a large one's payload is read straight into the caller's buffer once the buffered part
 * is copied. The buffer lives in the arena, not in the process, so the stream position is
 * the same for every process that holds the end: an end can be passed on after receiving.
 * A message too large for the caller's buffer stays there, header first, to be received
 * again: nothing is consumed before the length is known to fit.
 *
 * Deaths. The locks are robust. A holder that dies waiting for a message, or in a send of
 * at most PIPE_BUF bytes (which a pipe takes whole or not at all), leaves the stream whole.
 * One that dies in a larger send, or while reading a payload into its own buffer, may have
 * cut a message: that stream (this end's sends and the peer's receives, or this end's
 * receives) is then broken for good (MP_EEOF), as the next holder of the lock finds. A
 * receiver killed in the instant between the kernel's copy into the buffer and the update of
 * its bounds loses what that read took. A peer's death closes its fds: a receive
 * sees end of file after the messages already sent, a send fails with EPIPE (SIGPIPE ignored,
 * see ignore_sigpipe()).
 *
 * Untrusted words. The buffer's bounds live in the arena, where any process of the program
 * can write: each receive reads them once and checks them (start <= end <= BUFFER_SIZE)
 * before it copies a byte, and a wild pair is MP_ECORRUPT, left as it is, so that every
 * later receive on the end says so too rather than read past the buffer.
 *
 * Closing under a call. An fd number is this process's: a close from another thread frees
 * it, and the next open() may take it, so a call that had looked the number up would write
 * into (or read from) an unrelated file. So every call that uses an fd counts itself on a
 * list of this process's ends in use (see "in use here"), and a close of an end in use only
 * marks it closed: the last call out closes its fds and drops the reference.
 */
#include "internal.h"
#include "trace.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#define HEADER sizeof(uint64_t)
#define BUFFER_SIZE 7936 /* with the fields, two ends fill a 16 KiB arena block */
#define PAYLOAD_SLICE_MS 100
/* mp_conn_recv_alloc's first buffer, at least BUFFER_SIZE (all that can be buffered). */
#define ALLOC_START 65536

struct mp_conn_s {
  uint32_t kind;  /* MP__KIND_CONNECTION: mp_wait() and the argument scan read it */
  uint32_t index; /* which end of its pipe, 0 or 1 */
  uint64_t rkey;  /* the fds of this end, by key; 0 where it has none (a one-way end) */
  uint64_t wkey;
  pid_t creator;         /* the process that made the pipe: its close drops a reference */
  pthread_mutex_t rlock; /* one receiver at a time: guards the buffer and the read fd */
  pthread_mutex_t wlock; /* one sender at a time */
  bool reading, writing; /* a holder may have cut a message if it dies now */
  _Atomic bool rbroken, wbroken;
  _Atomic uint32_t start, end; /* buffered bytes: [start, end) of buf */
  char buf[BUFFER_SIZE] __attribute__((aligned(64)));
};

typedef struct {
  struct mp_conn_s ends[2];
} pipe_block_t;

_Static_assert(sizeof(pipe_block_t) <= 16384 - 64, "a pipe fills one 16 KiB arena block");

static void *pipe_of(mp_conn_t *conn) {
  return conn - conn->index;
}

/* Drops a reference to a pipe's block: by its size, never by its header's class. */
static void release_pipe(void *block) {
  mp__shared_release_sized(block, sizeof(pipe_block_t));
}

/* ------------------------------ checks ------------------------------ */

/* This process's fd for key (0: none), or -1. */
static int fd_here(uint64_t key) {
  return key ? mp__fd_lookup(key) : -1;
}

static int check_conn(const mp_conn_t *conn, const char *what) {
  if (!conn)
    return mp__error(MP_EINVAL, "%s: conn is NULL", what);
  if (!mp__shared_contains(conn) ||
      *(const uint32_t *)(const void *)conn != MP__KIND_CONNECTION) /* any alignment */
    return mp__error(MP_EINVAL, "%s: %p is not a connection end", what, (const void *)conn);
  return 0;
}

static int closed_error(const char *what) {
  return mp__error(MP_ECLOSED,
                   "%s: the connection end is closed in this process (or was never passed "
                   "to it)",
                   what);
}

/* ------------------------------ in use here ------------------------------ */

/*
 * The ends of this process that a call is using (see "Closing under a call" above): only
 * those, so the list is as long as the calls in progress at once, most often 0 or 1 entry.
 * Its lock is held across each look-up of an fd and each close of one, never across a wait:
 * a futex word (0 free, 1 held, 2 held with waiters), since every call takes it twice and a
 * pthread mutex costs ten times the instructions of a compare-and-swap here.
 */
typedef struct {
  const mp_conn_t *conn;
  uint32_t calls;
  bool closed; /* mp_conn_close() came: the last call out closes the fds */
} in_use_t;

static struct {
  _Atomic uint32_t lock;
  _Atomic uint32_t closing; /* entries marked closed: read without the lock at a fork */
  in_use_t *ends;
  size_t count, capacity;
} in_use = {0, 0, NULL, 0, 0};

static void lock_in_use(void) {
  uint32_t was = 0;
  if (atomic_compare_exchange_strong_explicit(&in_use.lock, &was, 1, memory_order_acquire,
                                              memory_order_relaxed))
    return;
  if (was != 2)
    was = atomic_exchange_explicit(&in_use.lock, 2, memory_order_acquire);
  while (was != 0) {
    mp__futex_wait(&in_use.lock, 2, INT64_MAX);
    was = atomic_exchange_explicit(&in_use.lock, 2, memory_order_acquire);
  }
}

static void unlock_in_use(void) {
  if (atomic_exchange_explicit(&in_use.lock, 0, memory_order_release) == 2)
    mp__futex_wake(&in_use.lock, 1);
}

static in_use_t *find_in_use(const mp_conn_t *conn) {
  for (size_t i = 0; i < in_use.count; i++)
    if (in_use.ends[i].conn == conn)
      return &in_use.ends[i];
  return NULL;
}

/* Under the lock: whether conn is open here, that is, not marked closed and with an fd. */
static bool open_locked(const mp_conn_t *conn) {
  const in_use_t *use = find_in_use(conn);
  return !(use && use->closed) && (fd_here(conn->rkey) >= 0 || fd_here(conn->wkey) >= 0);
}

static bool open_here(const mp_conn_t *conn) {
  lock_in_use();
  bool open = open_locked(conn);
  unlock_in_use();
  return open;
}

/* Under the lock: this process's fd for one direction (use: conn's entry, or NULL), or the
 * error of using it that way. */
static int fd_locked(const mp_conn_t *conn, const in_use_t *use, bool sending,
                     const char *what) {
  int fd = use && use->closed ? -1 : fd_here(sending ? conn->wkey : conn->rkey);
  if (fd >= 0)
    return fd;
  if (!open_locked(conn))
    return closed_error(what);
  return mp__error(MP_EINVAL, "%s: the connection end is %s-only", what,
                   sending ? "receive" : "send");
}

/* Under the lock: a new entry for conn, which has none (no call, not closed); NULL if there
 * is no memory for it. */
static in_use_t *add_locked(const mp_conn_t *conn) {
  if (in_use.count == in_use.capacity) {
    size_t capacity = in_use.capacity ? 2 * in_use.capacity : 8;
    /* Not realloc: another thread's fork between its free of the old block and the store of
     * the new one would leave the child a freed list. The new block is stored first. */
    in_use_t *grown = malloc(capacity * sizeof *grown), *old = in_use.ends;
    if (!grown)
      return NULL;
    if (in_use.count)
      memcpy(grown, old, in_use.count * sizeof *grown);
    in_use.ends = grown;
    in_use.capacity = capacity;
    free(old);
  }
  in_use_t *use = &in_use.ends[in_use.count++];
  *use = (in_use_t){conn, 0, false};
  return use;
}

/* Starts a call on conn: its fd for one direction, which stays this process's until
 * call_end(), or the error. */
static int call_begin(const mp_conn_t *conn, bool sending, const char *what) {
  int rc = check_conn(conn, what);
  if (rc < 0)
    return rc;
  lock_in_use();
  in_use_t *use = find_in_use(conn);
  int fd = fd_locked(conn, use, sending, what);
  if (fd >= 0 && !use && !(use = add_locked(conn)))
    fd = mp__error(MP_ENOMEM, "%s: no memory to note the call", what);
  if (fd >= 0)
    use->calls++;
  unlock_in_use();
  return fd;
}

/* Closes this process's fds of conn; false if it had none. */
static bool close_fds(const mp_conn_t *conn) {
  bool had_read = conn->rkey && mp__fd_unshare(conn->rkey) == 0;
  bool had_write = conn->wkey && mp__fd_unshare(conn->wkey) == 0;
  return had_read || had_write;
}

/* Marks the fds of conn, whose close waits for its calls, closed in reduction.c's table: a
 * start that was to send them to a child refuses (MP_ECLOSED), as Python's pickling of a
 * closed Connection does. */
static void retire_fds(const mp_conn_t *conn) {
  if (conn->rkey)
    mp__fd_retire(conn->rkey);
  if (conn->wkey)
    mp__fd_retire(conn->wkey);
}

/* Children's references are their process objects', dropped when they are reaped. */
static void release_here(mp_conn_t *conn) {
  if (conn->creator == getpid())
    release_pipe(pipe_of(conn));
}

/* Closes an end whose entry says closed with no call left: outside the lock (close() may
 * block, and is a cancellation point), while the entry keeps every new call out; then drops
 * the entry and the reference. conn must not be used after. */
static void finish_close(mp_conn_t *conn) {
  close_fds(conn);
  lock_in_use();
  in_use_t *use = find_in_use(conn);
  *use = in_use.ends[--in_use.count];
  atomic_fetch_sub_explicit(&in_use.closing, 1, memory_order_relaxed);
  unlock_in_use();
  release_here(conn);
}

/* Ends a call that call_begin() started; the last one out of an end closed meanwhile closes
 * it, and conn must not be used after. */
static void call_end(mp_conn_t *conn) {
  lock_in_use();
  in_use_t *use = find_in_use(conn);
  bool closing = --use->calls == 0 && use->closed;
  if (use->calls == 0 && !closing)
    *use = in_use.ends[--in_use.count];
  unlock_in_use();
  if (closing)
    finish_close(conn);
}

/*
 * A forked child has none of the calls of its parent's other threads, but the closes they
 * deferred are the child's too: it closes those ends' fds, as if the close had finished
 * before the fork (a peer then sees end of file once the parent's last call is out). For
 * that the child must see the list whole, so a fork while closes are pending holds the
 * lock across fork(); a close that comes meanwhile is one after the fork. With none
 * pending, which is the rule, neither side writes a thing: an untouched page costs the
 * child (and the parent) no copy.
 */
static _Thread_local bool fork_locked; /* this thread's fork holds the lock */

static void in_use_before_fork(void) {
  if (atomic_load(&in_use.closing)) {
    lock_in_use();
    /* And reduction.c's table, which the child walks: another thread's unshare (a pending
     * close finishing) is then never half done in the child. Taken second, as every path
     * that holds both takes it (a look-up under the list's lock). */
    mp__fd_lock();
    fork_locked = true;
  }
}

/* The lock held, closing cannot have changed: it tells whether to look at fork_locked. */
static void in_use_after_fork_in_parent(void) {
  if (atomic_load_explicit(&in_use.closing, memory_order_relaxed) && fork_locked) {
    fork_locked = false;
    mp__fd_unlock();
    unlock_in_use();
  }
}

/* In a forked child, the ends whose close the parent deferred (or was finishing) lose their
 * fds, if the list was whole at the fork. Not child text: only a child forked while a close
 * was pending runs it. reduction.c's lock, held by the fork, is reset first, as its own
 * handler does. */
__attribute__((noinline, cold)) static void forget_closed_in_child(void) {
  if (fork_locked) {
    fork_locked = false;
    mp__fd_after_fork();
    for (size_t i = 0; i < in_use.count; i++)
      if (in_use.ends[i].closed)
        close_fds(in_use.ends[i].conn);
  }
  atomic_store_explicit(&in_use.closing, 0, memory_order_relaxed);
}

MP__CHILD_TEXT static void in_use_after_fork(void) {
  if (atomic_load_explicit(&in_use.closing, memory_order_relaxed))
    forget_closed_in_child();
  if (atomic_load_explicit(&in_use.lock, memory_order_relaxed))
    atomic_store_explicit(&in_use.lock, 0, memory_order_relaxed);
  if (in_use.count)
    in_use.count = 0;
}

/* Takes an end's lock for one direction; see "Deaths" above. A cut stream breaks broken and,
 * for a send, also_broken: its receiving end's flag. A caller's wait for the lock ends with
 * MP_EINTR on SIGINT (nothing sent or taken yet); payload_cut's look does not wait. */
static int lock_end(pthread_mutex_t *lock, bool *inside, _Atomic bool *broken,
                    _Atomic bool *also_broken, int64_t deadline, const char *what) {
  int rc = mp__mutex_lock_sig(lock, deadline);
  if (rc == MP_EOWNERDEAD) {
    if (*inside)
      atomic_store(broken, true);
    if (*inside && also_broken)
      atomic_store(also_broken, true);
    *inside = false;
    rc = 0;
  }
  if (rc == MP_ETIMEDOUT)
    return mp__error(rc, "%s: timed out waiting for another thread or process on this end",
                     what);
  if (rc == MP_EINTR)
    return mp__error(rc, "%s: interrupted by SIGINT waiting for another user of this end",
                     what);
  if (rc == 0 && atomic_load(broken)) {
    mp__mutex_unlock(lock);
    rc = mp__error(MP_EEOF, "%s: a process died in the middle of a message on this end", what);
  }
  return rc;
}

/* ------------------------------ pipes ------------------------------ */

static int share_fd(int fd, uint64_t *key) {
  int rc = mp__fd_share(fd, key);
  if (rc < 0)
    close(fd);
  return rc;
}

/* Sets up an end that takes rfd and wfd (-1: none); they are closed if it fails. */
static int init_end(mp_conn_t *conn, uint32_t index, int rfd, int wfd) {
  conn->kind = MP__KIND_CONNECTION;
  conn->index = index;
  conn->creator = getpid();
  int rc = mp__mutex_init(&conn->rlock);
  if (rc == 0)
    rc = mp__mutex_init(&conn->wlock);
  if (rfd >= 0)
    rc = rc < 0 ? (close(rfd), rc) : share_fd(rfd, &conn->rkey);
  if (wfd >= 0)
    rc = rc < 0 ? (close(wfd), rc) : share_fd(wfd, &conn->wkey);
  return rc;
}

int mp_pipe(bool duplex, mp_conn_t **a, mp_conn_t **b) {
  if (!a || !b)
    return mp__error(MP_EINVAL, "mp_pipe: %s is NULL", a ? "b" : "a");
  int forward[2] = {-1, -1}, backward[2] = {-1, -1}; /* a to b, b to a */
  if (pipe2(forward, O_CLOEXEC) < 0 || (duplex && pipe2(backward, O_CLOEXEC) < 0)) {
    int rc = mp__syserror("mp_pipe: pipe2");
    if (forward[0] >= 0)
      close(forward[0]), close(forward[1]);
    return rc;
  }
  /* Each end's (read fd, write fd). Python's Pipe(False) gives (reader, writer). */
  int fds[2][2] = {{duplex ? backward[0] : forward[0], duplex ? forward[1] : -1},
                   {duplex ? forward[0] : -1, duplex ? backward[1] : forward[1]}};
  void *mem;
  int rc = mp__shared_alloc(&mem, sizeof(pipe_block_t));
  if (rc < 0) {
    for (int i = 0; i < 4; i++)
      if (fds[i / 2][i % 2] >= 0)
        close(fds[i / 2][i % 2]);
    return mp__error_prefix(rc, "mp_pipe");
  }
  pipe_block_t *block = mem;
  for (uint32_t i = 0; i < 2; i++) {
    int end_rc = init_end(&block->ends[i], i, fds[i][0], fds[i][1]);
    rc = rc < 0 ? rc : end_rc;
  }
  if (rc < 0) {
    close_fds(&block->ends[0]);
    close_fds(&block->ends[1]);
    release_pipe(block);
    return rc;
  }
  mp__shared_retain(block); /* a reference for each end */
  *a = &block->ends[0];
  *b = &block->ends[1];
  return 0;
}

/* ------------------------------ sending ------------------------------ */

/*
 * A send to a peer that has gone must fail, not kill: a pipe has no MSG_NOSIGNAL, and
 * blocking the signal around each write costs two system calls per message. So the first
 * send of each process ignores SIGPIPE, as Python does at start, unless the program chose
 * its own disposition. A forked child inherits both the disposition and the flag.
 */
static void ignore_sigpipe(void) {
  static _Atomic bool done;
  if (atomic_load_explicit(&done, memory_order_relaxed))
    return;
  struct sigaction old, ignore = {.sa_handler = SIG_IGN};
  if (sigaction(SIGPIPE, NULL, &old) == 0 && !(old.sa_flags & SA_SIGINFO) &&
      old.sa_handler == SIG_DFL)
    sigaction(SIGPIPE, &ignore, NULL);
  atomic_store(&done, true);
}

/* Writes all of iov, whatever the pipe takes at a time; *wrote tells whether any of it went.
 * Inlined in the send, as it was before mp__conn_write_raw() called it too. */
static inline __attribute__((always_inline)) int write_all(int fd, struct iovec *iov, int count,
                                                           bool *wrote) {
  while (count > 0) {
    ssize_t n = writev(fd, iov, count);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    *wrote = true;
    for (; count > 0 && (size_t)n >= iov->iov_len; count--, iov++)
      n -= (ssize_t)iov->iov_len;
    if (count > 0) {
      iov->iov_base = (char *)iov->iov_base + n;
      iov->iov_len -= (size_t)n;
    }
  }
  return 0;
}

int mp_conn_send_bytes(mp_conn_t *conn, const void *buf, size_t len, size_t offset,
                       size_t size) {
  MP__TRACE_CLOCK(t0);
  int fd = call_begin(conn, true, "mp_conn_send");
  if (fd < 0)
    return fd;
  if ((!buf && len > 0) || offset > len || size > len - offset) {
    call_end(conn);
    return mp__error(MP_EINVAL, "mp_conn_send: bytes [%zu, %zu + %zu) of a %zu-byte buffer%s",
                     offset, offset, size, len, buf ? "" : " at NULL");
  }
  ignore_sigpipe();
  mp_conn_t *peer = conn->index ? conn - 1 : conn + 1;
  int rc = lock_end(&conn->wlock, &conn->writing, &conn->wbroken, &peer->rbroken, INT64_MAX,
                    "mp_conn_send");
  if (rc < 0) {
    call_end(conn);
    return rc;
  }
  uint64_t header = size;
  struct iovec iov[2] = {{&header, HEADER}, {(char *)buf + offset, size}};
  /* Up to PIPE_BUF bytes a pipe takes whole or not at all. */
  conn->writing = HEADER + size > PIPE_BUF;
  bool wrote = false;
  rc = write_all(fd, iov, size ? 2 : 1, &wrote);
  if (rc < 0 && wrote) { /* a message cut (EFAULT part-way, say): the stream is broken */
    atomic_store(&conn->wbroken, true);
    atomic_store(&peer->rbroken, true);
  }
  conn->writing = false;
  mp__mutex_unlock(&conn->wlock);
  MP__TRACE(conn_send, conn, size, t0, rc);
  call_end(conn);
  if (rc == -EPIPE)
    return mp__error(MP_EEOF, "mp_conn_send: the peer end is closed in every process");
  return rc < 0 ? mp__error(rc, "mp_conn_send: %s", mp_strerror(rc)) : 0;
}

int mp_conn_send(mp_conn_t *conn, const void *buf, size_t size) {
  return mp_conn_send_bytes(conn, buf, size, 0, size);
}

int mp__conn_write_raw(mp_conn_t *conn, const void *data, size_t size) {
  int fd = call_begin(conn, true, "mp__conn_write_raw");
  if (fd < 0)
    return fd;
  struct iovec iov = {(void *)data, size};
  bool wrote = false;
  int rc = size ? write_all(fd, &iov, 1, &wrote) : 0;
  call_end(conn);
  return rc < 0 ? mp__error(rc, "mp__conn_write_raw: %s", mp_strerror(rc)) : 0;
}

/* ------------------------------ receiving ------------------------------ */

/* The buffered bytes [start, end) of buf, as read once from the arena (see "Untrusted
 * words"): a receive copies by these, not by what another process may write meanwhile. */
typedef struct {
  uint32_t start, end;
} span_t;

static span_t buffered(const mp_conn_t *conn) {
  return (span_t){atomic_load_explicit(&conn->start, memory_order_relaxed),
                  atomic_load_explicit(&conn->end, memory_order_relaxed)};
}

/* Under the receive lock, which orders them: relaxed is enough. */
static void set_buffered(mp_conn_t *conn, uint32_t start, uint32_t end) {
  atomic_store_explicit(&conn->start, start, memory_order_relaxed);
  atomic_store_explicit(&conn->end, end, memory_order_relaxed);
}

/* Wild bounds, as MP_ECORRUPT and its sentence: out of every receive's way. */
__attribute__((noinline, cold)) static int bounds_error(span_t have) {
  return mp__error(MP_ECORRUPT,
                   "mp_conn_recv: the connection's shared memory is corrupt: bytes [%u, %u) "
                   "buffered in a buffer of %u (left as they are)",
                   have.start, have.end, (unsigned)BUFFER_SIZE);
}

/* Under the receive lock: waits for the next message's header in the buffer and returns the
 * buffered span, header first, in *have; MP_EINTR on SIGINT, with nothing taken (a header's
 * start stays in the buffer, which is the stream's). */
static int read_header(mp_conn_t *conn, int fd, int64_t deadline, uint64_t *length,
                       span_t *have) {
  mp__sigint_t sigint = {NULL, 0};
  bool caught = false;
  for (;;) {
    span_t span = buffered(conn);
    if (span.start > span.end || span.end > BUFFER_SIZE)
      return bounds_error(span);
    uint32_t part = span.end - span.start;
    if (part >= HEADER) {
      memcpy(length, conn->buf + span.start, HEADER);
      *have = span;
      return 0;
    }
    memmove(conn->buf, conn->buf + span.start, part); /* a header's start, if any */
    set_buffered(conn, 0, part);
    if (!sigint.counter) /* about to wait: no system call for a message already here */
      caught = mp__sigint_begin(&sigint);
    /* Without a deadline, the read itself waits: one system call per small message. But
     * SA_RESTART restarts a read after the handler, a poll never: so a caught SIGINT costs
     * a poll first. */
    if (deadline != INT64_MAX || caught) {
      int ready = mp__poll_fd_sig(fd, POLLIN, deadline, &sigint);
      if (ready <= 0)
        return ready < 0 ? ready : MP_ETIMEDOUT;
    }
    /* Not flagged: a receiver killed while it waits here has taken nothing. */
    ssize_t n = read(fd, conn->buf + part, BUFFER_SIZE - part);
    if (n > 0)
      set_buffered(conn, 0, part + (uint32_t)n);
    if (n == 0)
      return MP_EEOF;
    if (n < 0 && errno != EINTR)
      return -errno;
    if (n < 0 && mp__sigint_arrived(&sigint))
      return MP_EINTR; /* a handler without SA_RESTART, before the poll saw it */
  }
}

/* Mid-payload, with nothing to read: 1 if the message can never be completed, because its
 * sender died holding the peer end's send lock (or a send cut it), else 0. */
static int payload_cut(mp_conn_t *conn) {
  mp_conn_t *sender = conn->index ? conn - 1 : conn + 1;
  if (lock_end(&sender->wlock, &sender->writing, &sender->wbroken, &conn->rbroken, mp__now_ns(),
               "mp_conn_recv") == 0)
    mp__mutex_unlock(&sender->wlock); /* nobody in a send: the rest is in the pipe */
  return atomic_load(&conn->rbroken);
}

/* Under the receive lock, the header read: moves the payload to dest, polling in slices of
 * PAYLOAD_SLICE_MS so that a sender killed mid-message while another process holds the
 * send end (no end of file) ends the wait, and so does the deadline. */
static int read_payload(mp_conn_t *conn, int fd, span_t have, char *dest, uint64_t length,
                        int64_t deadline, char **grow, size_t room) {
  uint32_t body = have.end - have.start - (uint32_t)HEADER; /* checked by read_header */
  size_t part = body < length ? body : (size_t)length;
  if (part > 0) /* dest may be NULL for an empty message */
    memcpy(dest, conn->buf + have.start + HEADER, part);
  if (part == length) {
    set_buffered(conn, have.start + (uint32_t)(HEADER + length), have.end);
    return 0;
  }
  conn->reading = true;
  set_buffered(conn, 0, 0);
  int rc = 0;
  for (size_t got = part; rc == 0 && got < length;) {
    int64_t now = mp__now_ns(), slice = now + PAYLOAD_SLICE_MS * 1000000ll;
    int ready = mp__poll_fd(fd, POLLIN, slice < deadline ? slice : deadline);
    if (ready < 0) {
      rc = ready;
      break;
    }
    if (ready == 0) {
      if (payload_cut(conn))
        rc = MP_EEOF;
      else if (mp__now_ns() >= deadline)
        rc = MP_ETIMEDOUT; /* the rest may come later: the stream is cut here for good */
      continue;
    }
    /* Into a buffer that grows as bytes come (from `room` bytes), so that a length claimed
     * by the header, but never sent, takes no memory. */
    if (grow && got == room) {
      size_t grown = room > length / 2 ? (size_t)length : 2 * room;
      char *bigger = realloc(dest, grown);
      if (!bigger) {
        rc = mp__error(MP_ENOMEM,
                       "mp_conn_recv_alloc: no memory for a message of %llu bytes, after %zu: "
                       "the end's receiving stream is broken from now on",
                       (unsigned long long)length, got);
        break;
      }
      *grow = dest = bigger;
      room = grown;
    }
    ssize_t n = read(fd, dest + got, (grow ? room : length) - got);
    if (n > 0)
      got += (size_t)n;
    else if (n == 0)
      rc = MP_EEOF; /* the writer died in the middle of it */
    else if (errno != EINTR)
      rc = -errno;
  }
  if (rc < 0) /* the rest of the message is still in the pipe, or lost */
    atomic_store(&conn->rbroken, true);
  conn->reading = false;
  return rc;
}

/* A receive on fd into dest (cap bytes), or into a new buffer if alloc is not NULL. */
static int receive_on(mp_conn_t *conn, int fd, char *dest, size_t cap, void **alloc,
                      size_t *size, double timeout) {
  int64_t deadline = mp__deadline(timeout);
  MP__TRACE_CLOCK(t0);
  int rc =
      lock_end(&conn->rlock, &conn->reading, &conn->rbroken, NULL, deadline, "mp_conn_recv");
  if (rc < 0)
    return rc; /* with its own sentence */
  uint64_t length = 0;
  span_t have = {0, 0}; /* set by read_header (gcc cannot see it) */
  rc = read_header(conn, fd, deadline, &length, &have);
  size_t room = 0;
  if (rc == 0 && alloc) {
    /* What is buffered, and at least ALLOC_START; more as the rest arrives (read_payload). */
    room = length < ALLOC_START ? (size_t)length : ALLOC_START;
    *alloc = length <= SIZE_MAX ? malloc(room ? room : 1) : NULL;
    dest = *alloc;
    cap = (size_t)length;
    if (!dest)
      rc = mp__error(MP_ENOMEM,
                     "mp_conn_recv_alloc: no memory for a message of %llu bytes "
                     "(it was kept)",
                     (unsigned long long)length);
  }
  if (rc == 0 && length > cap)
    rc = mp__error(MP_ETOOSMALL,
                   "mp_conn_recv: the message has %llu bytes, the buffer %zu "
                   "(the message was kept)",
                   (unsigned long long)length, cap);
  if (rc == 0 || rc == MP_ETOOSMALL)
    *size = (size_t)length;
  if (rc == 0)
    rc = read_payload(conn, fd, have, dest, length, deadline, alloc ? &dest : NULL, room);
  mp__mutex_unlock(&conn->rlock);
  MP__TRACE(conn_recv, conn, (size_t)length, t0, rc);
  if (alloc)
    *alloc = rc < 0 ? NULL : dest;
  if (rc < 0 && alloc && dest)
    free(dest);
  if (rc == MP_EEOF)
    return mp__error(rc, "mp_conn_recv: the peer end is closed in every process");
  if (rc == MP_ETIMEDOUT && atomic_load(&conn->rbroken))
    return mp__error(rc,
                     "mp_conn_recv: timed out in the middle of a message, after %g s: "
                     "the end's receiving stream is broken from now on",
                     timeout);
  if (rc == MP_ETIMEDOUT)
    return mp__error(rc, "mp_conn_recv: no message within %g s", timeout);
  if (rc == MP_EINTR) /* from read_header: a payload is always finished */
    return mp__error(rc, "mp_conn_recv: interrupted by SIGINT before a message came");
  return rc < 0 && rc != MP_ETOOSMALL && rc != MP_ENOMEM && rc != MP_ECORRUPT
             ? mp__error(rc, "mp_conn_recv: %s", mp_strerror(rc))
             : rc;
}

static int receive(mp_conn_t *conn, char *dest, size_t cap, void **alloc, size_t *size,
                   double timeout) {
  int fd = call_begin(conn, false, "mp_conn_recv");
  if (fd < 0)
    return fd;
  int rc = receive_on(conn, fd, dest, cap, alloc, size, timeout);
  call_end(conn);
  return rc;
}

int mp_conn_recv_bytes(mp_conn_t *conn, void *buf, size_t len, size_t offset, size_t *size,
                       double timeout) {
  if (!size || (!buf && len > 0) || offset > len)
    return mp__error(MP_EINVAL, "mp_conn_recv: %s",
                     !size          ? "size is NULL"
                     : offset > len ? "offset past the buffer"
                                    : "buf is NULL");
  return receive(conn, (char *)buf + offset, len - offset, NULL, size, timeout);
}

int mp_conn_recv(mp_conn_t *conn, void *buf, size_t cap, size_t *size, double timeout) {
  return mp_conn_recv_bytes(conn, buf, cap, 0, size, timeout);
}

int mp_conn_recv_alloc(mp_conn_t *conn, void **buf, size_t *size, double timeout) {
  if (!buf || !size)
    return mp__error(MP_EINVAL, "mp_conn_recv_alloc: %s is NULL", buf ? "size" : "buf");
  *buf = NULL;
  return receive(conn, NULL, 0, buf, size, timeout);
}

/* 1 if a receive would not block: a whole header buffered, or the fd has news. */
static int receive_ready(mp_conn_t *conn, int fd, int64_t deadline, const mp__sigint_t *sigint) {
  span_t have = buffered(conn); /* wild bounds are ready too: the receive says so */
  if (atomic_load(&conn->rbroken) || have.end - have.start >= HEADER)
    return 1;
  return mp__poll_fd_sig(fd, POLLIN, deadline, sigint);
}

int mp_conn_poll(mp_conn_t *conn, double timeout) {
  int64_t deadline = mp__deadline(timeout);
  int fd = call_begin(conn, false, "mp_conn_poll");
  if (fd < 0)
    return fd;
  /* A poll that cannot block looks at no SIGINT handler (a system call). */
  mp__sigint_t sigint = {NULL, 0};
  if (timeout != 0)
    mp__sigint_begin(&sigint);
  int ready = receive_ready(conn, fd, deadline, &sigint);
  call_end(conn);
  if (ready == MP_EINTR)
    return mp__error(ready, "mp_conn_poll: interrupted by SIGINT");
  return ready < 0 ? mp__error(ready, "mp_conn_poll: %s", mp_strerror(ready)) : ready;
}

/* ------------------------------ closing ------------------------------ */

int mp_conn_close(mp_conn_t *conn) {
  int rc = check_conn(conn, "mp_conn_close");
  if (rc < 0)
    return rc;
  lock_in_use();
  in_use_t *use = find_in_use(conn);
  bool open = use ? !use->closed : open_locked(conn);
  /* Closed from here on: an entry so marked keeps new calls out. With calls in progress, the
   * last one out closes the fds (call_end), so that none holds a freed number; else this
   * close does, after the unlock. */
  if (open && !use)
    use = add_locked(conn);
  if (open && use) {
    use->closed = true;
    atomic_fetch_add_explicit(&in_use.closing, 1, memory_order_relaxed);
  }
  bool now = open && use && use->calls == 0;
  if (open && use && !now)
    retire_fds(conn);
  if (open && !use)
    close_fds(conn); /* no memory to mark it: closed under the lock, as nothing else can */
  unlock_in_use();
  if (!open)
    return closed_error("mp_conn_close");
  if (now)
    finish_close(conn);
  else if (!use)
    release_here(conn);
  return 0;
}

bool mp_conn_readable(const mp_conn_t *conn) {
  return conn && conn->rkey;
}

bool mp_conn_writable(const mp_conn_t *conn) {
  return conn && conn->wkey;
}

bool mp_conn_closed(const mp_conn_t *conn) {
  return !conn || !open_here(conn);
}

/* ------------------------------ passing ------------------------------ */

/* The argument scan's pass(): a word that only looks like an end is refused here. */
static int pass_conn(void *obj, mp_process_t *proc) {
  mp_conn_t *conn = obj;
  if ((uintptr_t)obj % _Alignof(mp_conn_t) != 0 ||
      !mp__shared_contains((char *)conn + sizeof *conn - 1) || conn->index > 1)
    return mp__error(MP_EINVAL, "mp_process_pass_conn: %p is not a connection end", obj);
  if (!open_here(conn))
    return closed_error("mp_process_pass_conn");
  int rc = mp__process_hold_ref(proc, pipe_of(conn), mp__shared_retain, release_pipe);
  if (rc == 0 && conn->rkey)
    rc = mp__process_pass_fd(proc, conn->rkey);
  if (rc == 0 && conn->wkey)
    rc = mp__process_pass_fd(proc, conn->wkey);
  return rc;
}

int mp_process_pass_conn(mp_process_t *proc, mp_conn_t *conn) {
  if (!proc)
    return mp__error(MP_EINVAL, "mp_process_pass_conn: proc is NULL");
  int rc = check_conn(conn, "mp_process_pass_conn");
  return rc < 0 ? rc : pass_conn(conn, proc);
}

/* ------------------------------ waiting ------------------------------ */

/* The fd a wait on conn polls: the read fd, or a one-way sender's write fd, which polls
 * POLLERR once the reader has gone. */
static int conn_poll_fd(void *obj) {
  mp_conn_t *conn = obj;
  lock_in_use();
  const in_use_t *use = find_in_use(conn);
  int fd = use && use->closed ? -1 : fd_here(conn->rkey ? conn->rkey : conn->wkey);
  unlock_in_use();
  return fd;
}

static int conn_ready(void *obj) {
  mp_conn_t *conn = obj;
  int fd = call_begin(conn, !conn->rkey, "mp_wait");
  if (fd < 0)
    return 1; /* closed here: a call fails at once */
  int ready = conn->rkey ? receive_ready(conn, fd, mp__now_ns(), NULL)
                         : mp__poll_fd(fd, POLLIN, mp__now_ns());
  call_end(conn);
  return ready;
}

static const mp__waitable_ops_t conn_waitable = {conn_ready, conn_poll_fd};

/* Prioritized: a spawned child's take-over (spawn.c) never returns to later constructors. */
__attribute__((constructor(102))) static void register_connections(void) {
  mp__waitable_register(MP__KIND_CONNECTION, &conn_waitable);
  mp__passable_register(MP__KIND_CONNECTION, pass_conn);
  pthread_atfork(in_use_before_fork, in_use_after_fork_in_parent, in_use_after_fork);
  /* Read once here, so that its page is mapped before any fork: the handler reads it in
   * every forked child (as queues.c does for its lock). */
  (void)*(volatile const char *)&in_use.lock;
}

#define WAIT_ON_STACK 16

/* Asks every object whether it is ready; the number that are, or an error. */
static int count_ready(void *const *objects, const mp__waitable_ops_t **ops, size_t n,
                       bool *ready) {
  int count = 0;
  for (size_t i = 0; i < n; i++) {
    int r = ops[i]->ready(objects[i]);
    if (r < 0)
      return r;
    if (ready)
      ready[i] = r > 0;
    count += r > 0;
  }
  return count;
}

static int wait_on(void *const *objects, const mp__waitable_ops_t **ops, struct pollfd *pfds,
                   size_t n, int64_t deadline, bool *ready) {
  bool queues = false;
  for (size_t i = 0; i < n; i++) {
    ops[i] = mp__waitable_find(objects[i]);
    if (!ops[i])
      return mp__error(MP_EINVAL,
                       "mp_wait: objects[%zu] is not a connection end, a queue or "
                       "a process",
                       i);
    /* Each fd first, then readiness: what happens between the two wakes the poll. */
    int fd = ops[i]->poll_fd(objects[i]);
    bool queue = *(const uint32_t *)objects[i] == MP__KIND_QUEUE;
    /* A connection or process without an fd is closed or never ends, which ready() tells;
     * a queue without a doorbell (out of fds) could never wake the poll. */
    if (fd < 0 && queue)
      return fd;
    queues |= queue;
    pfds[i] = (struct pollfd){.fd = fd >= 0 ? fd : -1, .events = POLLIN};
  }
  mp__sigint_t sigint = {NULL, 0};
  for (;;) {
    int count = count_ready(objects, ops, n, ready);
    if (count != 0 || mp__now_ns() >= deadline)
      return count;
    if (!sigint.counter) /* at the first sleep: no system call when not blocking */
      mp__sigint_begin(&sigint);
    int64_t left = deadline == INT64_MAX ? -1 : (deadline - mp__now_ns() + 999999) / 1000000;
    /* Without pidfds a process's sentinel is a socket another fork() may have copied, so
     * that it never ends (process.c): ask again every 50 ms there, as joining does. The
     * same for a queue: a producer killed between its commit and its ring rings nothing. */
    if ((queues || !mp__have_pidfd()) && (left < 0 || left > 50))
      left = 50;
    int polled = poll(pfds, n, left > INT32_MAX ? INT32_MAX : (int)left);
    if (polled < 0 && errno != EINTR)
      return mp__syserror("mp_wait: poll");
    if (polled < 0 && mp__sigint_arrived(&sigint))
      return mp__error(MP_EINTR, "mp_wait: interrupted by SIGINT");
    for (size_t i = 0; i < n && polled > 0; i++)
      if (pfds[i].revents & POLLNVAL) /* closed meanwhile: its ready() says so from now */
        pfds[i].fd = -1;
  }
}

int mp_wait(void *const *objects, size_t n, double timeout, bool *ready) {
  int64_t deadline = mp__deadline(timeout);
  if (!objects && n > 0)
    return mp__error(MP_EINVAL, "mp_wait: objects is NULL");
  if (n == 0 && deadline == INT64_MAX)
    return mp__error(MP_EINVAL, "mp_wait: nothing to wait for, forever");
  if (n == 0) {
    mp__poll_fd(-1, 0, deadline); /* poll() ignores a negative fd: a sleep */
    return 0;
  }
  const mp__waitable_ops_t *ops_space[WAIT_ON_STACK], **ops = ops_space;
  struct pollfd pfd_space[WAIT_ON_STACK], *pfds = pfd_space;
  if (n > WAIT_ON_STACK) {
    bool fits = n <= PTRDIFF_MAX / sizeof *pfds; /* the larger of the two */
    ops = fits ? malloc(n * sizeof *ops) : NULL;
    pfds = fits ? malloc(n * sizeof *pfds) : NULL;
  }
  int rc = ops && pfds ? wait_on(objects, ops, pfds, n, deadline, ready)
                       : mp__error(MP_ENOMEM, "mp_wait: no memory for %zu objects", n);
  if (n > WAIT_ON_STACK) {
    free(ops);
    free(pfds);
  }
  return rc;
}
