/*
 * Named shared memory, Python's shared_memory.py: segments in /dev/shm that any process
 * attaches to by name, and the tracker that unlinks the program's segments when the
 * program has ended, killed or not.
 *
 * Creating. A segment is made nameless first (O_TMPFILE in /dev/shm), given its size,
 * registered with the tracker by inode, and only then linked under its name, which fails
 * if the name exists (the O_EXCL of shm_open). So a process that attaches never sees a
 * segment of 0 bytes, and a creator killed at any point leaves nothing behind: before the
 * link there is no name, after the registration the tracker knows it.
 *
 * The tracker. One process per program, spawned from the executable on the first create
 * (a fresh image: no other thread's state, none of the program's memory to copy on write)
 * with its own session (a signal to the program's process group does not reach it) and
 * SIGINT, SIGTERM and SIGHUP ignored. It listens on an abstract Unix socket whose name is
 * derived from the program's shared arena (its memfd's inode and address, and a random
 * nonce kept in it: ensure_tracker), which every process of the program maps under every
 * start method. So:
 *  - a forked child inherits its parent's connection, and the tracker sees end of file on
 *    it only when every process holding a copy has ended;
 *  - a spawned or forkserver child connects on its own first create, finding the tracker
 *    by its arena;
 *  - two processes that start a tracker at once race to bind the name: the loser's tracker
 *    exits and the loser connects to the winner.
 * A process sends one record per create (TRACK: name, with the nameless file's fd, which
 * proves the segment its own: see born_nameless()) and per keep (FORGET), with no reply;
 * an unlink sends nothing, the tracker drops entries whose name is gone as its table grows.
 * It reads records in batches: after a batch it stops asking for more for a millisecond,
 * so that a record sent meanwhile wakes nobody. When the last connection has closed (and
 * the starter's own libmp parent, if any, has ended too: a child started before its program
 * had an arena has a tracker of its own), the tracker stops
 * listening and unlinks each name it still holds whose file is still the same inode, so a
 * name that someone else has reused since is left alone. It cannot outlive the program by
 * more than that: it has no other reason to live.
 */
#include "internal.h"
#include "trace.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define SHM_DIR "/dev/shm"
#define TRACKER_ROLE "shm-tracker"
/* How long a tracker may take to start or to accept, and a record to be taken. */
#define TRACKER_TIMEOUT_SECONDS 30.0
/* How long a connect() may wait for a listener to accept: a tracker accepts at once. */
#define CONNECT_TIMEOUT_SECONDS 2.0
#define CONNECT_ATTEMPTS 8
#define GENERATED_ATTEMPTS 16

struct mp_shared_memory_s {
  uint32_t magic; /* HANDLE_OPEN, HANDLE_CLOSED once closed */
  void *buf;
  size_t size;
  bool tracked; /* created here, to be unlinked at the program's end */
  uint64_t dev, ino;
  char name[MP_SHARED_MEMORY_NAME_MAX + 1];
};

#define HANDLE_OPEN 0x4d485348u   /* "HSHM" */
#define HANDLE_CLOSED 0x44534c43u /* "CLSD" */
#define QUARANTINE 64

/* What crosses between the program's processes and the tracker. */
enum { REC_ADDRESS = 1, REC_TRACK, REC_FORGET };
enum { REPLY_OK = 'K', REPLY_LOST = 'L', REPLY_FAILED = 'E' };

typedef struct {
  uint32_t op;
  int32_t parent; /* ADDRESS: the starter's libmp parent, to be outlived, or 0 */
  uint64_t dev, ino;
  char text[MP_SHARED_MEMORY_NAME_MAX + 1]; /* the name, or the address to listen on */
} record_t;

_Static_assert(sizeof(((struct sockaddr_un *)0)->sun_path) <= MP_SHARED_MEMORY_NAME_MAX,
               "an address fits a record");

/* ------------------------------- names ---------------------------------- */

/* Why a name (its leading slash removed) names no file directly in /dev/shm, or NULL if it
 * does. The tracker applies it too: it unlinks what its peers name. */
static const char *name_fault(const char *name) {
  size_t len = strlen(name);
  if (len == 0 || strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
    return "is not a segment name";
  if (strchr(name, '/'))
    return "holds a '/' after the first: a segment name does not";
  if (len > MP_SHARED_MEMORY_NAME_MAX)
    return "is longer than " MP__STR(MP_SHARED_MEMORY_NAME_MAX) " bytes";
  return NULL;
}

/* Copies a valid name, without its leading slash, into out. */
static int check_name(const char *name, char *out, const char *what) {
  if (!name)
    return mp__error(MP_EINVAL, "%s: name is NULL", what);
  if (*name == '/')
    name++;
  const char *fault = name_fault(name);
  if (fault)
    return mp__error(MP_EINVAL, "%s: '%.64s%s' %s", what, name, strlen(name) > 64 ? "..." : "",
                     fault);
  memcpy(out, name, strlen(name) + 1);
  return 0;
}

/* A new random name, as Python's _make_filename (whose "psm_" prefix is Python's). */
static int generate_name(char *out) {
  uint64_t bits;
  if (getrandom(&bits, sizeof bits, 0) != (ssize_t)sizeof bits)
    return mp__syserror("getrandom for a segment name");
  snprintf(out, MP_SHARED_MEMORY_NAME_MAX + 1, "mp_%016llx", (unsigned long long)bits);
  return 0;
}

static void path_of(const char *name, char *path, size_t cap) {
  snprintf(path, cap, SHM_DIR "/%s", name);
}

/* Whether name, relative to dir, is still the file (dev, ino): 0, MP_ENOENT (no longer: gone,
 * or another file under the name since), or -errno of the look-up. */
static int still_linked(int dir, const char *name, uint64_t dev, uint64_t ino) {
  struct stat st;
  if (fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
    return errno == ENOENT ? MP_ENOENT : -errno;
  return (uint64_t)st.st_dev == dev && (uint64_t)st.st_ino == ino ? 0 : MP_ENOENT;
}

/* ----------------------------- the tracker ------------------------------- */

static MP__NORETURN void tracker_main(int first);

/* ------------------------------ its clients ------------------------------ */

/* This process's connection to the tracker. A forked child keeps its copy: that is what
 * keeps the tracker waiting for it. */
static struct {
  pthread_mutex_t lock; /* held across every use of sock: no send on a reused fd number */
  int sock;             /* -1: not connected */
  pid_t child;          /* the tracker, if this process spawned it: reaped if it dies */
} tracker = {PTHREAD_MUTEX_INITIALIZER, -1, 0};

/* The tracker's address, from the program's arena (made now if there is none) and its nonce.
 * Abstract (a leading NUL): nothing on disk, gone with the tracker. The arena tells programs
 * apart (a plain fork() of a program that then makes its own arena is another program); the
 * nonce, which no other user knows until a tracker listens there (/proc/net/unix lists
 * every abstract name to everyone), keeps it from being bound first. */
static int tracker_address(uint64_t nonce, struct sockaddr_un *addr, socklen_t *len) {
  mp__heap_map_t map;
  int fd;
  struct stat st;
  if (!mp__heap_describe(&map, &fd))
    return mp__error(MP_ENOMEM, "no shared arena to find the segment tracker by");
  if (fstat(fd, &st) < 0)
    return mp__syserror("fstat of the shared arena");
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  int n = snprintf(addr->sun_path + 1, sizeof addr->sun_path - 1,
                   "libmp-shm-tracker-%u-%llx-%llx-%llx-%016llx", (unsigned)getuid(),
                   (unsigned long long)st.st_dev, (unsigned long long)st.st_ino,
                   (unsigned long long)map.base, (unsigned long long)nonce);
  if (n < 0 || (size_t)n >= sizeof addr->sun_path - 1)
    return mp__error(MP_EINVAL, "the segment tracker's name does not fit a socket address");
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
  return 0;
}

/* Waits for the tracker's one-byte answer: 0 (ok), -EADDRINUSE (another tracker won),
 * -ECONNRESET (it is ending or died), MP_ETIMEDOUT or -errno. */
static int await_reply(int sock) {
  int ready = mp__poll_fd(sock, POLLIN, mp__deadline(TRACKER_TIMEOUT_SECONDS));
  if (ready <= 0)
    return mp__error(ready < 0 ? ready : MP_ETIMEDOUT, "no answer from the tracker in %g s",
                     TRACKER_TIMEOUT_SECONDS);
  char reply = 0;
  ssize_t n = mp__recv_record(sock, &reply, 1, NULL, MSG_DONTWAIT);
  if (n == 0 || n == -ECONNRESET)
    return mp__error(-ECONNRESET, "the tracker hung up");
  if (n < 0)
    return mp__error((int)n, "reading the tracker's answer: %s", mp_strerror((int)n));
  if (reply == REPLY_OK)
    return 0;
  return mp__error(reply == REPLY_LOST ? -EADDRINUSE : -EPROTO,
                   reply == REPLY_LOST ? "another tracker listens there"
                                       : "the tracker failed");
}

/* connect() waits for as long as the listener's backlog is full: a tracker accepts at once,
 * so a listener that does not is another user's at our name, or a stopped tracker. The wait
 * is bounded by SO_SNDTIMEO, so a signal ends it with EINTR even under SA_RESTART
 * (signal(7)): it is made again for what is left of the one bound, where a timer's signal
 * made the create fail at once. */
static int connect_within(int sock, const struct sockaddr_un *addr, socklen_t len,
                          int64_t deadline) {
  for (;;) {
    int64_t left = deadline - mp__now_ns();
    if (left <= 0)
      break;
    /* At least 1 us: a zero SO_SNDTIMEO is no bound at all. */
    struct timeval bound = {.tv_sec = (time_t)(left / 1000000000),
                            .tv_usec = (suseconds_t)(left % 1000000000 / 1000)};
    if (bound.tv_sec == 0 && bound.tv_usec == 0)
      bound.tv_usec = 1;
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &bound, sizeof bound);
    if (connect(sock, (const struct sockaddr *)addr, len) == 0)
      return 0;
    if (errno != EINTR && errno != EAGAIN)
      return mp__syserror("connecting to the segment tracker");
  }
  return mp__error(MP_ETIMEDOUT, "the segment tracker accepts no connection in %g s",
                   CONNECT_TIMEOUT_SECONDS);
}

/* A connection to a running tracker: the socket, or -ECONNREFUSED (none runs),
 * -ECONNRESET (it was ending), -EPERM (another user listens there) or MP_ETIMEDOUT (the
 * listener accepts or answers nothing). */
static int connect_tracker(const struct sockaddr_un *addr, socklen_t len) {
  int sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (sock < 0)
    return mp__syserror("socket for the segment tracker");
  int rc = connect_within(sock, addr, len, mp__deadline(CONNECT_TIMEOUT_SECONDS));
  /* Anyone can bind an abstract name: a listener of another user is not our tracker, and
   * learns no segment name (SO_PEERCRED is the listener's, fixed when it called listen). */
  if (rc == 0)
    rc = mp__check_peer(sock, 0, "the segment tracker");
  if (rc == 0)
    rc = await_reply(sock);
  if (rc < 0) {
    close(sock);
    return rc;
  }
  return sock;
}

static void reap_tracker(pid_t pid) {
  while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
    ;
}

/* Spawns a tracker that listens at addr: the socket to it, or -EADDRINUSE (another one
 * listens there now), or an error. */
static int start_tracker(const struct sockaddr_un *addr, socklen_t len) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    return mp__syserror("socketpair for the segment tracker");
  pid_t pid;
  int rc = mp__spawn_image(TRACKER_ROLE, sv[1], -1, &pid);
  close(sv[1]);
  if (rc < 0) {
    close(sv[0]);
    return rc;
  }
  record_t rec = {.op = REC_ADDRESS};
  mp_process_t *parent = mp_parent_process();
  rec.parent = parent ? mp_process_pid(parent) : 0;
  size_t addr_len = (size_t)len - offsetof(struct sockaddr_un, sun_path) - 1;
  memcpy(rec.text, addr->sun_path + 1, addr_len);
  rc = mp__send_record(sv[0], &rec, offsetof(record_t, text) + addr_len + 1, -1);
  if (rc == 0)
    rc = await_reply(sv[0]);
  if (rc == 0) {
    tracker.child = pid;
    return sv[0];
  }
  close(sv[0]); /* it exits on end of file, if it has not */
  if (rc == MP_ETIMEDOUT)
    kill(pid, SIGKILL);
  reap_tracker(pid);
  return rc;
}

/* Connects this process to its program's tracker, starting one if none runs; the lock is
 * held. A listener of another user at the tracker's name (it read the name while a tracker
 * listened there, and bound it once that tracker ended: one started by a child ends with its
 * parent), or one that accepts or answers nothing (that user's with a full backlog, or a
 * stopped tracker), makes the program's processes move to a name made of a new nonce, which
 * no other user can know, and start a tracker there. */
static int ensure_tracker(void) {
  if (tracker.sock >= 0)
    return 0;
  uint64_t nonce = mp__shared_nonce(0);
  int rc = nonce ? 0
                 : mp__error(MP_ENOMEM, "no shared arena, or no randomness, for the "
                                        "segment tracker's name");
  for (int attempt = 0; rc == 0 && attempt < CONNECT_ATTEMPTS; attempt++) {
    struct sockaddr_un addr;
    socklen_t len = 0;
    if ((rc = tracker_address(nonce, &addr, &len)) < 0)
      break;
    int sock = connect_tracker(&addr, len);
    /* Only a listener met at the name is left for a new one: a tracker this process
     * started and that answers nothing fails the create (a retry would wait as long). */
    bool foreign = sock == -EPERM || sock == MP_ETIMEDOUT;
    if (sock == -ECONNREFUSED)
      sock = start_tracker(&addr, len);
    if (sock >= 0) {
      tracker.sock = sock;
      return 0;
    }
    if (foreign && !(nonce = mp__shared_nonce(nonce)))
      sock = mp__error(MP_ENOMEM, "no randomness for the segment tracker's name");
    /* Lost the race to start one, met one that was ending, or moved away from a listener
     * that is not the program's tracker (or no longer serves it): look again. */
    if (sock != -EADDRINUSE && sock != -ECONNRESET && !foreign)
      rc = sock;
  }
  if (rc == 0)
    rc = mp__error(-ECONNRESET, "every tracker met was ending, or was another user's");
  char detail[512];
  snprintf(detail, sizeof detail, "%s", mp_last_error());
  return mp__error(rc == MP_ETIMEDOUT || rc == -ECONNRESET || rc == -EPROTO ? MP_ESPAWN : rc,
                   "cannot reach the segment tracker: %s (%s)", mp_strerror(rc), detail);
}

static void drop_tracker(void) {
  close(tracker.sock);
  tracker.sock = -1;
  if (tracker.child > 0 && waitpid(tracker.child, NULL, WNOHANG) != 0)
    tracker.child = 0;
}

/* Sends one record about shm, with fd (-1: none). start: connect (or start the tracker) if
 * not connected; else a process without a connection has nothing to tell. */
static int tell_tracker(uint32_t op, const mp_shared_memory_t *shm, int fd, bool start) {
  record_t rec = {.op = op, .dev = shm->dev, .ino = shm->ino};
  size_t name_len = strlen(shm->name);
  memcpy(rec.text, shm->name, name_len + 1);
  pthread_mutex_lock(&tracker.lock);
  int rc = 0;
  for (int attempt = 0; attempt < 2 && (start || tracker.sock >= 0); attempt++) {
    if ((rc = ensure_tracker()) < 0)
      break; /* its message says why */
    /* A record is taken at once unless the tracker is stopped: then fail, do not hang. */
    rc = mp__send_record_by(tracker.sock, &rec, offsetof(record_t, text) + name_len + 1, fd,
                            mp__deadline(TRACKER_TIMEOUT_SECONDS));
    bool gone = rc == -EPIPE || rc == -ECONNRESET || rc == -ENOTCONN || rc == -ECONNREFUSED;
    if (gone)
      drop_tracker(); /* it was killed: start another, once */
    if (gone && !start) {
      rc = 0; /* and nothing tracks what it held any more */
      break;
    }
    if (rc == MP_ETIMEDOUT)
      rc = mp__error(MP_ETIMEDOUT, "the segment tracker takes no records in %g s (stopped?)",
                     TRACKER_TIMEOUT_SECONDS);
    else if (rc < 0 && (!gone || attempt == 1))
      rc = mp__error(rc, "telling the segment tracker about '%s': %s", shm->name,
                     mp_strerror(rc));
    if (!gone)
      break;
  }
  pthread_mutex_unlock(&tracker.lock);
  return rc;
}

MP__CHILD_TEXT static void after_fork_in_child(void) {
  mp__reset_lock(&tracker.lock);
  if (tracker.child) /* written only if set: no page copied in every forked child */
    tracker.child = 0;
}

/* A registration of spawn.c's start-up order (step 2): see mp__role_t. */
__attribute__((constructor(102))) static void shared_memory_init(void) {
  pthread_atfork(NULL, NULL, after_fork_in_child);
}

MP__ROLE(shm_tracker, TRACKER_ROLE, "segment tracker", false) {
  (void)sentinel_fd;
  tracker_main(fd);
}

/* ------------------------------ the tracker ------------------------------ */

typedef struct {
  uint64_t dev, ino;
  char *name;
} entry_t;

typedef struct {
  int listener;
  int dir;    /* /dev/shm: every name is looked up and unlinked in it, never by path */
  uint64_t dir_dev; /* its file system's device */
  int parent; /* pidfd of the process to outlive, or -1 */
  pid_t parent_pid;
  struct pollfd *fds; /* [0] the listener, [1] the parent, then the connections */
  size_t nfds, cap_fds;
  entry_t *entries;
  size_t count, cap;
  size_t prune_at; /* the count at which to drop unlinked entries */
} tracker_t;

#define PRUNE_MIN 64

static void *grow(void *array, size_t *cap, size_t size) {
  size_t n = *cap ? 2 * *cap : 16;
  void *grown = realloc(array, n * size);
  if (grown)
    *cap = n;
  return grown;
}

/* Drops the entries whose segment was unlinked (unlinking sends no record), each time the
 * table has doubled since the last look: a constant cost per create, in the tracker. */
static void prune(tracker_t *t) {
  size_t kept = 0;
  for (size_t i = 0; i < t->count; i++) {
    if (still_linked(t->dir, t->entries[i].name, t->entries[i].dev, t->entries[i].ino) == 0)
      t->entries[kept++] = t->entries[i];
    else
      free(t->entries[i].name);
  }
  t->count = kept;
  t->prune_at = 2 * kept > PRUNE_MIN ? 2 * kept : PRUNE_MIN;
}

/*
 * Whether fd proves the segment its sender's own, and its device and inode: a file of
 * /dev/shm opened with O_TMPFILE (open() keeps the flag in the file's status flags), that
 * is, born nameless of that very open, as mp_shared_memory_create() makes a segment and
 * registers it before it links it. Any name it has was then given to it by a holder of an
 * fd of it: never a file that someone else made and named. A record's own device and
 * inode prove nothing: any process of the user may send them, of any file it can stat.
 */
static bool born_nameless(const tracker_t *t, int fd, struct stat *st) {
  int flags = fd >= 0 ? fcntl(fd, F_GETFL) : -1;
  return flags >= 0 && (flags & O_TMPFILE) == O_TMPFILE && fstat(fd, st) == 0 &&
         S_ISREG(st->st_mode) && (uint64_t)st->st_dev == t->dir_dev;
}

/* A TRACK: false if it is no libmp process's (no proof: hang up). */
static bool track(tracker_t *t, const record_t *rec, int fd) {
  struct stat st;
  if (!born_nameless(t, fd, &st))
    return false;
  if (t->count >= t->prune_at)
    prune(t);
  if (t->count == t->cap) {
    entry_t *grown = grow(t->entries, &t->cap, sizeof *grown);
    if (!grown)
      return true;
    t->entries = grown;
  }
  char *name = strdup(rec->text);
  if (name)
    t->entries[t->count++] = (entry_t){(uint64_t)st.st_dev, (uint64_t)st.st_ino, name};
  return true;
}

static void forget(tracker_t *t, const record_t *rec) {
  for (size_t i = t->count; i-- > 0;) {
    entry_t *e = &t->entries[i];
    if (e->dev == rec->dev && e->ino == rec->ino && strcmp(e->name, rec->text) == 0) {
      free(e->name);
      *e = t->entries[--t->count];
      return;
    }
  }
}

/* Unlinks each name that still is the segment that was registered, so a name someone
 * has reused since is left alone. */
static void unlink_leftovers(const tracker_t *t) {
  for (size_t i = 0; i < t->count; i++)
    if (still_linked(t->dir, t->entries[i].name, t->entries[i].dev, t->entries[i].ino) == 0)
      unlinkat(t->dir, t->entries[i].name, 0);
}

static void add_connection(tracker_t *t, int sock) {
  struct ucred cred;
  socklen_t len = sizeof cred;
  /* Only the program's user may register: the tracker unlinks with its rights. */
  if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != getuid()) {
    close(sock);
    return;
  }
  if (t->nfds == t->cap_fds) {
    struct pollfd *grown = grow(t->fds, &t->cap_fds, sizeof *grown);
    if (!grown) {
      close(sock);
      return;
    }
    t->fds = grown;
  }
  char ok = REPLY_OK;
  if (mp__send_record(sock, &ok, 1, -1) < 0) {
    close(sock);
    return;
  }
  t->fds[t->nfds++] = (struct pollfd){.fd = sock, .events = POLLIN};
}

/* At most ACCEPT_BATCH per wake-up: another user who connects as fast as the tracker
 * accepts must not keep it from the records of the connections it has. */
#define ACCEPT_BATCH 16

static void accept_pending(tracker_t *t) {
  int sock;
  for (int n = 0; n < ACCEPT_BATCH &&
                  (sock = accept4(t->listener, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK)) >= 0;
       n++)
    add_connection(t, sock);
}

/* Reads what a connection has sent; false once it has closed. */
static bool serve(tracker_t *t, int sock) {
  for (;;) {
    record_t rec;
    int fd = -1;
    /* Whole: a record of the longest name, its NUL included, fills it. */
    ssize_t n = mp__recv_record(sock, &rec, sizeof rec, &fd, MSG_DONTWAIT);
    bool good = n > (ssize_t)offsetof(record_t, text) && ((char *)&rec)[n - 1] == '\0';
    if (good) {
      /* Any process of the user may connect, one that cannot reach /dev/shm too (chrooted,
       * sandboxed): a name is checked as the library checks it, so that no record makes the
       * tracker unlink outside /dev/shm. Its sender is no libmp process: hang up. */
      good = !name_fault(rec.text);
    }
    if (good && rec.op == REC_TRACK)
      good = track(t, &rec, fd);
    else if (good && rec.op == REC_FORGET)
      forget(t, &rec);
    if (fd >= 0)
      close(fd);
    if (n == -EAGAIN)
      return true;
    if (!good)
      return false; /* end of file, an error, or a malformed record: hang up */
  }
}

/* Whether the process to outlive has ended (0: none to outlive). Without a pidfd, by pid. */
static bool parent_gone(tracker_t *t) {
  if (t->parent_pid == 0)
    return true;
  bool gone = t->parent >= 0 ? mp__poll_fd(t->parent, POLLIN, 0) > 0
                             : kill(t->parent_pid, 0) < 0 && errno == ESRCH;
  if (gone) {
    if (t->parent >= 0)
      close(t->parent);
    t->parent = -1;
    t->parent_pid = 0;
    t->fds[1].fd = -1;
  }
  return gone;
}

/* Listens at the address the starter sends; answers it and returns the listener, or
 * exits. */
static int listen_at(int first, tracker_t *t) {
  record_t rec;
  ssize_t n = mp__recv_record(first, &rec, sizeof rec - 1, NULL, 0);
  if (n <= (ssize_t)offsetof(record_t, text) || rec.op != REC_ADDRESS)
    _exit(1);
  ((char *)&rec)[n] = '\0';
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  size_t len = strlen(rec.text);
  if (len + 1 >= sizeof addr.sun_path)
    _exit(1);
  memcpy(addr.sun_path + 1, rec.text, len);
  t->dir = open(SHM_DIR, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  struct stat dir_st;
  int rc = t->dir < 0 || fstat(t->dir, &dir_st) < 0 ? -errno : 0;
  t->dir_dev = rc == 0 ? (uint64_t)dir_st.st_dev : 0;
  int listener =
      rc == 0 ? socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0) : -1;
  if (rc == 0 && listener < 0)
    rc = -errno;
  if (rc == 0 && bind(listener, (struct sockaddr *)&addr,
                      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len)) < 0)
    rc = -errno;
  if (rc == 0 && listen(listener, SOMAXCONN) < 0)
    rc = -errno;
  char reply = rc == 0 ? REPLY_OK : rc == -EADDRINUSE ? REPLY_LOST : REPLY_FAILED;
  if (rc < 0) {
    mp__send_record(first, &reply, 1, -1);
    _exit(rc == -EADDRINUSE ? 0 : 1);
  }
  t->parent_pid = rec.parent;
  t->parent = -1;
  /* errno is looked at only after the call that sets it: a stale ESRCH would make the
   * tracker forget a live parent. */
  if (rec.parent > 0 && mp__have_pidfd() && (t->parent = mp__pidfd_open(rec.parent)) < 0 &&
      errno == ESRCH)
    t->parent_pid = 0; /* it has ended already */
  mp__send_record(first, &reply, 1, -1);
  return listener;
}

/* How long the tracker stops asking for records after reading some. */
#define QUIET_MS 1

/* How long to sleep between looks at a parent watched by pid (no pidfds). */
#define PARENT_LOOK_MS 200

static void tracker_main(int first) {
  /* Ctrl-C, a terminal's hang-up or a kill of the process group are for the program: the
   * tracker must stay to clean up after it. */
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  signal(SIGHUP, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  setsid();
  prctl(PR_SET_NAME, "mp-shm-tracker"); /* what ps and top show */
  /* Keep no copy of the program's stdio: a reader of its output sees end of file when the
   * program ends. */
  int null = open("/dev/null", O_RDWR | O_CLOEXEC);
  for (int fd = 0; null >= 0 && fd < 3; fd++)
    dup2(null, fd);
  if (null > 2)
    close(null);

  tracker_t t = {.prune_at = PRUNE_MIN};
  t.listener = listen_at(first, &t);
  t.fds = grow(NULL, &t.cap_fds, sizeof *t.fds);
  if (!t.fds)
    _exit(1);
  t.fds[0] = (struct pollfd){.fd = t.listener, .events = POLLIN};
  t.fds[1] = (struct pollfd){.fd = t.parent, .events = POLLIN};
  t.fds[2] = (struct pollfd){.fd = first, .events = POLLIN};
  t.nfds = 3;
  bool quiet = false;
  for (;;) {
    /* After reading a batch, stop asking for records for a moment (a hang-up still wakes
     * it): a record sent meanwhile wakes nobody, so a program creating many segments does
     * not pay a wake-up of the tracker for each. */
    for (size_t i = 2; i < t.nfds; i++)
      t.fds[i].events = quiet ? 0 : POLLIN;
    int timeout = quiet ? QUIET_MS : t.parent_pid > 0 && t.parent < 0 ? PARENT_LOOK_MS : -1;
    if (poll(t.fds, t.nfds, timeout) < 0 && errno != EINTR)
      break;
    quiet = false;
    if (t.fds[0].revents)
      accept_pending(&t);
    if (t.fds[1].revents)
      parent_gone(&t); /* and stop watching it */
    for (size_t i = t.nfds; i-- > 2;) {
      if (!t.fds[i].revents)
        continue;
      quiet = true;
      if (!serve(&t, t.fds[i].fd)) {
        close(t.fds[i].fd);
        t.fds[i] = t.fds[--t.nfds];
      }
    }
    if (t.nfds > 2 || !parent_gone(&t))
      continue;
    accept_pending(&t); /* one that connected just now keeps it alive */
    if (t.nfds == 2)
      break;
  }
  /* Stop listening first: a process connecting now is refused and starts a new tracker. */
  close(t.listener);
  unlink_leftovers(&t);
  _exit(0);
}

/* ---------------------------- the public API ---------------------------- */

/* Gives the nameless file fd its name; -1 and errno (EEXIST: the name is taken). Linking
 * the fd itself (AT_EMPTY_PATH) is refused (ENOENT) before Linux 6.10 unless the process
 * has CAP_DAC_READ_SEARCH; then through its /proc path, a slower lookup. */
static int link_segment(int fd, const char *path) {
  static _Atomic bool by_proc;
  if (!atomic_load(&by_proc)) {
    int rc = linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH);
    if (rc == 0 || errno != ENOENT)
      return rc;
    atomic_store(&by_proc, true);
  }
  char proc_path[64];
  snprintf(proc_path, sizeof proc_path, "/proc/self/fd/%d", fd);
  return linkat(AT_FDCWD, proc_path, AT_FDCWD, path, AT_SYMLINK_FOLLOW);
}

/* Makes the segment nameless with its size, registers it, then links it under name:
 * 0, MP_EEXIST or an error; *fd is the open segment on success. */
static int make_segment(mp_shared_memory_t *shm, int *fd_out) {
  int fd = open(SHM_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0)
    return mp__syserror("mp_shared_memory_create: a nameless file in " SHM_DIR);
  struct stat st;
  int rc = 0;
  /* open() took the umask's bits away: a segment its own user cannot open read-write
   * (0400 under umask 0277) could not be attached. */
  if (fchmod(fd, 0600) < 0)
    rc = mp__syserror("mp_shared_memory_create: making '%s' mode 0600", shm->name);
  else if (ftruncate(fd, (off_t)shm->size) < 0)
    rc =
        mp__syserror("mp_shared_memory_create: sizing '%s' to %zu bytes", shm->name, shm->size);
  else if (fstat(fd, &st) < 0)
    rc = mp__syserror("mp_shared_memory_create: fstat");
  if (rc == 0) {
    shm->dev = (uint64_t)st.st_dev;
    shm->ino = (uint64_t)st.st_ino;
    if (shm->tracked)
      rc = tell_tracker(REC_TRACK, shm, fd, true); /* the nameless file: its proof */
  }
  if (rc == 0) {
    char path[sizeof SHM_DIR + MP_SHARED_MEMORY_NAME_MAX + 1];
    path_of(shm->name, path, sizeof path);
    if (link_segment(fd, path) < 0)
      rc = errno == EEXIST ? MP_EEXIST
                           : mp__syserror("mp_shared_memory_create: linking '%s'", path);
    if (rc < 0 && shm->tracked)
      tell_tracker(REC_FORGET, shm, -1, false);
  }
  if (rc < 0) {
    close(fd);
    return rc;
  }
  *fd_out = fd;
  return 0;
}

/* Maps all of fd into shm (closing fd either way). */
static int map_segment(mp_shared_memory_t *shm, int fd, const char *what) {
  void *buf = mmap(NULL, shm->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  int rc = buf == MAP_FAILED
               ? mp__syserror("%s: mapping %zu bytes of '%s'", what, shm->size, shm->name)
               : 0;
  close(fd);
  if (rc == -ENOMEM)
    rc = MP_ENOMEM;
  shm->buf = rc == 0 ? buf : NULL;
  return rc;
}

int mp_shared_memory_create(mp_shared_memory_t **out, const char *name, size_t size,
                            unsigned flags) {
  static const char what[] = "mp_shared_memory_create";
  if (!out)
    return mp__error(MP_EINVAL, "%s: shm is NULL", what);
  if (size == 0 || size > (size_t)PTRDIFF_MAX)
    return mp__error(MP_EINVAL, "%s: a segment of %zu bytes", what, size);
  if (flags & ~(unsigned)MP_SHARED_MEMORY_KEEP)
    return mp__error(MP_EINVAL, "%s: unknown flags %#x", what, flags);
  mp_shared_memory_t *shm = calloc(1, sizeof *shm);
  if (!shm)
    return mp__error(MP_ENOMEM, "%s: no memory for the handle", what);
  shm->size = size;
  shm->tracked = !(flags & MP_SHARED_MEMORY_KEEP);
  int rc = name ? check_name(name, shm->name, what) : 0;
  int fd = -1;
  for (int attempt = 0; rc == 0; attempt++) {
    if (!name && (rc = generate_name(shm->name)) < 0)
      break;
    rc = make_segment(shm, &fd);
    if (rc != MP_EEXIST || name || attempt == GENERATED_ATTEMPTS)
      break;
    rc = 0; /* a generated name that exists: draw another */
  }
  if (rc == MP_EEXIST)
    rc = mp__error(MP_EEXIST, "%s: a segment named '%s' exists", what, shm->name);
  if (rc == 0 && (rc = map_segment(shm, fd, what)) < 0) {
    char path[sizeof SHM_DIR + MP_SHARED_MEMORY_NAME_MAX + 1];
    path_of(shm->name, path, sizeof path);
    unlink(path);
    if (shm->tracked)
      tell_tracker(REC_FORGET, shm, -1, false);
  }
  if (rc < 0) {
    free(shm);
    return rc;
  }
  MP__TRACE(shm, MP__TRK_SHM_CREATE, shm->name, shm->size);
  shm->magic = HANDLE_OPEN;
  *out = shm;
  return 0;
}

int mp_shared_memory_attach(mp_shared_memory_t **out, const char *name) {
  static const char what[] = "mp_shared_memory_attach";
  if (!out)
    return mp__error(MP_EINVAL, "%s: shm is NULL", what);
  mp_shared_memory_t *shm = calloc(1, sizeof *shm);
  if (!shm)
    return mp__error(MP_ENOMEM, "%s: no memory for the handle", what);
  int rc = check_name(name, shm->name, what);
  int fd = -1;
  if (rc == 0) {
    char path[sizeof SHM_DIR + MP_SHARED_MEMORY_NAME_MAX + 1];
    path_of(shm->name, path, sizeof path);
    fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
      rc = errno == ENOENT
               ? mp__error(MP_ENOENT, "%s: no segment is named '%s'", what, shm->name)
               : mp__syserror("%s: opening '%s'", what, path);
  }
  struct stat st;
  if (rc == 0 && fstat(fd, &st) < 0)
    rc = mp__syserror("%s: fstat of '%s'", what, shm->name);
  /* A segment another user made (or may also open) under a name we expect is a trap:
   * they could read, or change under us, all that we write into it. */
  if (rc == 0 && (st.st_uid != geteuid() || (st.st_mode & 077)))
    rc = mp__error(-EACCES,
                   "%s: '%s' is not this user's own (owner uid %u, mode %04o; uid %u and "
                   "no group or other permission expected): refused",
                   what, shm->name, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777),
                   (unsigned)geteuid());
  if (rc == 0 && (!S_ISREG(st.st_mode) || st.st_size <= 0))
    rc = mp__error(MP_EINVAL, "%s: '%s' is %s", what, shm->name,
                   S_ISREG(st.st_mode) ? "empty (0 bytes): nothing to map" : "not a segment");
  if (rc == 0) {
    shm->size = (size_t)st.st_size;
    shm->dev = (uint64_t)st.st_dev;
    shm->ino = (uint64_t)st.st_ino;
    rc = map_segment(shm, fd, what);
    fd = -1;
  }
  if (fd >= 0)
    close(fd);
  if (rc < 0) {
    free(shm);
    return rc;
  }
  MP__TRACE(shm, MP__TRK_SHM_ATTACH, shm->name, shm->size);
  shm->magic = HANDLE_OPEN;
  *out = shm;
  return 0;
}

/*
 * Use after close. A closed handle is not freed at once: it is marked HANDLE_CLOSED and
 * waits in a quarantine of the last QUARANTINE closed handles, so a call on it meanwhile
 * finds the mark (not memory that malloc has reused, nor, under ASan, poisoned) and aborts
 * naming the call. Lock-free: a fork may come at any moment.
 */
static _Atomic(mp_shared_memory_t *) quarantine[QUARANTINE];
static _Atomic uint32_t quarantine_next;

static void retire_handle(mp_shared_memory_t *shm) {
  shm->magic = HANDLE_CLOSED;
  uint32_t slot = atomic_fetch_add(&quarantine_next, 1) % QUARANTINE;
  free(atomic_exchange(&quarantine[slot], shm));
}

/* 0 for an open handle; MP_EINVAL for NULL or what is not a handle; aborts for a closed one. */
static int check_handle(const mp_shared_memory_t *shm, const char *fn) {
  if (!shm)
    return mp__error(MP_EINVAL, "%s: shm is NULL", fn);
  if (shm->magic == HANDLE_CLOSED) {
    fprintf(stderr, "libmp: %s: shared memory handle used after mp_shared_memory_close\n", fn);
    abort();
  }
  if (shm->magic != HANDLE_OPEN)
    return mp__error(MP_EINVAL, "%s: %p is not a shared memory handle", fn, (const void *)shm);
  return 0;
}

void *mp_shared_memory_buf(const mp_shared_memory_t *shm) {
  return check_handle(shm, "mp_shared_memory_buf") == 0 ? shm->buf : NULL;
}

size_t mp_shared_memory_size(const mp_shared_memory_t *shm) {
  return check_handle(shm, "mp_shared_memory_size") == 0 ? shm->size : 0;
}

const char *mp_shared_memory_name(const mp_shared_memory_t *shm) {
  return check_handle(shm, "mp_shared_memory_name") == 0 ? shm->name : NULL;
}

int mp_shared_memory_unlink(mp_shared_memory_t *shm) {
  int rc = check_handle(shm, "mp_shared_memory_unlink");
  if (rc < 0)
    return rc;
  char path[sizeof SHM_DIR + MP_SHARED_MEMORY_NAME_MAX + 1];
  path_of(shm->name, path, sizeof path);
  /* Only this segment: another program may have unlinked it and made its own under the name
   * (as the tracker checks before it unlinks). The name may still change between the look
   * and the unlink: no system call unlinks a name only if it is a given inode. */
  rc = still_linked(AT_FDCWD, path, shm->dev, shm->ino);
  if (rc == 0 && unlink(path) < 0)
    rc = errno == ENOENT ? MP_ENOENT : -errno;
  if (rc == MP_ENOENT)
    return mp__error(MP_ENOENT,
                     "mp_shared_memory_unlink: '%s' is already unlinked (or names another "
                     "segment since: left alone)",
                     shm->name);
  if (rc < 0)
    return mp__error(rc, "mp_shared_memory_unlink: '%s': %s", path, mp_strerror(rc));
  /* Nothing to tell the tracker: it drops names that are no longer its segments as it
   * goes (prune()), and unlinks only those that still are. */
  MP__TRACE(shm, MP__TRK_SHM_UNLINK, shm->name, shm->size);
  shm->tracked = false;
  return 0;
}

int mp_shared_memory_keep(mp_shared_memory_t *shm) {
  int rc = check_handle(shm, "mp_shared_memory_keep");
  if (rc < 0 || !shm->tracked)
    return rc;
  rc = tell_tracker(REC_FORGET, shm, -1, false);
  if (rc == 0)
    shm->tracked = false;
  return rc;
}

int mp_shared_memory_close(mp_shared_memory_t *shm) {
  int rc = check_handle(shm, "mp_shared_memory_close");
  if (rc < 0)
    return rc;
  munmap(shm->buf, shm->size);
  retire_handle(shm);
  return 0;
}
