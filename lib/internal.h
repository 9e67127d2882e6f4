/* Internal interfaces shared by the files of lib/: names mp__*, never exported. */
#ifndef MP_INTERNAL_H
#define MP_INTERNAL_H

#include "mp.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define MP__PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define MP__NORETURN __attribute__((noreturn))
#define MP__STR(x) MP__STR_(x)
#define MP__STR_(x) #x

/* ------------------------------- errors.c ------------------------------- */

/* Records "fmt..." as the thread's last error and returns code, so a failure path reads
 * `return mp__error(MP_EINVAL, "mp_x: y is NULL");`. */
int mp__error(int code, const char *fmt, ...) MP__PRINTF(2, 3);

/* Records "fmt...: <the thread's last error>" and returns code: a failure passed up with
 * the caller's context in front. */
int mp__error_prefix(int code, const char *fmt, ...) MP__PRINTF(2, 3);

/* Same, with the errno of a failed system call appended; returns -errno. */
int mp__syserror(const char *fmt, ...) MP__PRINTF(1, 2);

/* ------------------------------- util.c -------------------------------- */

/* An absolute CLOCK_MONOTONIC deadline in nanoseconds; INT64_MAX means never. */
int64_t mp__deadline(double timeout);
int64_t mp__now_ns(void);
/* The state letter and start time (field 22, clock ticks after boot) of /proc/<pid>/stat,
 * which also answers for a thread's id: 0, or -errno (-EIO for what cannot be parsed). */
int mp__proc_stat(pid_t pid, char *state, uint64_t *start);
/* A map's chunksize: the one asked for, or Python's default for n items over workers (0
 * asked), and never more than n (one chunk holds it all), nor 0. */
size_t mp__chunksize(size_t n, size_t asked, size_t workers);

/* Waits until fd has events, or the deadline passes: 1 ready, 0 timed out, -errno. */
int mp__poll_fd(int fd, short events, int64_t deadline);

/* One record on a SOCK_SEQPACKET socket, optionally with one fd (SCM_RIGHTS); returns 0 or
 * -errno. Receiving (recvmsg flags such as MSG_DONTWAIT) returns the record's length (0 at
 * end of file) and the fd or -1; -EMSGSIZE for a record or fds cut off. Every other fd the
 * peer sent (all of them with fd NULL or on an error) is closed: *fd is -1 on any error. */
int mp__send_record(int sock, const void *buf, size_t len, int fd);
/* The same, waiting for room until deadline (mp__deadline's clock): MP_ETIMEDOUT then. */
int mp__send_record_by(int sock, const void *buf, size_t len, int fd, int64_t deadline);
ssize_t mp__recv_record(int sock, void *buf, size_t cap, int *fd, int flags);
/* The same, but a whole record whose fds were cut off (MSG_CTRUNC: no fd number was free
 * here) is returned as received, without its fds and with *cut true, for a caller that can
 * do without them; *cut is false otherwise. */
ssize_t mp__recv_record_cut(int sock, void *buf, size_t cap, int *fd, int flags, bool *cut);

/*
 * What a forked child runs before its target, and the atfork handlers every child of the
 * program runs: each code page a child runs faults once in it (fork() does not copy the
 * page tables of file-backed code; 14-18 us a page on a virtual machine), so this code is
 * gathered in one section, and calls no libc function a bare child does not call: system
 * calls are made inline (docs/architecture.md, "Where the time goes").
 */
#define MP__CHILD_TEXT __attribute__((section(".text.hot.mp_child")))

/* Under ThreadSanitizer (MP_TSAN): it sees no order that another process's atomics make,
 * as when a worker process stands between two threads of this one (a job's creator and the
 * supervisor that reclaims it once a worker marked it); these name such an edge, on an
 * address, and are nothing in other builds. */
#if defined(__SANITIZE_THREAD__)
#define MP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MP_TSAN 1
#endif
#endif
#ifdef MP_TSAN
#include <sanitizer/tsan_interface.h>
#define MP__TSAN_RELEASE(addr) __tsan_release((void *)(addr))
#define MP__TSAN_ACQUIRE(addr) __tsan_acquire((void *)(addr))
#else
#define MP__TSAN_RELEASE(addr) ((void)0)
#define MP__TSAN_ACQUIRE(addr) ((void)0)
#endif

/* The kernel's sigset_t, for raw rt_sigprocmask calls: 128 signals on MIPS, 64 elsewhere,
 * in unsigned longs as the kernel numbers its bits. */
#if defined(__mips__)
#define MP__KERNEL_NSIG 128
#else
#define MP__KERNEL_NSIG 64
#endif
typedef struct {
  unsigned long bits[MP__KERNEL_NSIG / 8 / sizeof(unsigned long)];
} mp__kernel_sigset_t;
#define MP__SIGSET_ADD(set, sig)                                                            \
  ((set)->bits[((sig) - 1) / (8 * sizeof(unsigned long))] |=                               \
   1ul << (((sig) - 1) % (8 * sizeof(unsigned long))))

/* syscall(), as -errno on failure: mp__raw_syscall where it has no inline form. */
long mp__libc_syscall(long nr, long a, long b, long c, long d);

/* A system call made inline: the result, or -errno (errno is not written: a write to the
 * thread's TLS page costs a forked child a fault). */
static inline long mp__raw_syscall(long nr, long a, long b, long c, long d) {
#if defined(__x86_64__)
  register long r10 __asm__("r10") = d;
  long ret;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10)
                   : "rcx", "r11", "memory");
  return ret;
#elif defined(__aarch64__)
  register long x8 __asm__("x8") = nr;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory");
  return x0;
#else
  return mp__libc_syscall(nr, a, b, c, d);
#endif
}

/* Reinitializes a lock in a fork child, if another thread held it (or it was ever
 * used): untouched, it is left alone, so the child does not copy its page. */
void mp__reset_lock(pthread_mutex_t *lock);

/* Flushes stdout and stderr if they hold output: before a fork, so the child does not write
 * it again, and at a forked child's end. */
void mp__flush_std_streams(void);

/* glibc 2.36 has no wrappers for these. */
int mp__pidfd_open(pid_t pid);
bool mp__have_pidfd(void);
int mp__pidfd_send_signal(int pidfd, int sig);

/* Futexes on a word in shared memory (never FUTEX_PRIVATE: the waiters are processes).
 * Waits while *word == expected, until woken or the deadline (INT64_MAX: never): 0 (woken,
 * the value differed, or a signal: callers re-check their condition) or MP_ETIMEDOUT. */
int mp__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline);
/* The same, but MP_EINTR when a signal handler ran (installed without SA_RESTART): for the
 * calls that end on Ctrl-C. */
int mp__futex_wait_sig(_Atomic uint32_t *word, uint32_t expected, int64_t deadline);
/* Wakes up to count waiters (INT32_MAX: all); returns how many were woken. */
int mp__futex_wake(_Atomic uint32_t *word, int count);

/* One step of a spin-wait: tells the CPU (and a sibling hyperthread) that we are spinning. */
static inline void mp__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

#if defined(__x86_64__)
#include <cpuid.h>
#endif

/* Whether mp__prefetch_for_write asks for anything here. On x86-64, whether the CPU says it
 * has PREFETCHW (CPUID 0x80000001: ECX bit 8, or 3DNow!), asked once in each source file
 * that calls it: Intel documents it only from Broadwell on, and a read prefetch instead
 * (what __builtin_prefetch(p, 1) compiles to there without -mprfchw) takes a shared copy,
 * which the store must then take again, and measured slower than none. */
static inline bool mp__can_prefetch_for_write(void) {
#if defined(__x86_64__)
  static _Atomic int known; /* 0: not asked yet, 1: it has it, 2: it does not */
  int k = atomic_load_explicit(&known, memory_order_relaxed);
  if (!k) {
    unsigned a, b, c, d;
    bool asked = __get_cpuid(0x80000001u, &a, &b, &c, &d);
    k = asked && ((c & bit_PRFCHW) || (d & bit_3DNOW)) ? 1 : 2;
    atomic_store_explicit(&known, k, memory_order_relaxed);
  }
  return k == 1;
#elif defined(__aarch64__)
  return true;
#else
  return false;
#endif
}

/* Asks for p's cache line, to be written soon, so that its transfer from the CPU that wrote
 * it last overlaps what this one does meanwhile. Only where mp__can_prefetch_for_write(). */
static inline void mp__prefetch_for_write(const void *p) {
#if defined(__x86_64__)
  __asm__ volatile("prefetchw %0" ::"m"(*(const char *)p));
#elif defined(__aarch64__)
  __builtin_prefetch(p, 1); /* PRFM PSTL1KEEP: a prefetch for a store */
#else
  (void)p;
#endif
}

/* Whether this process may run on one CPU only (its affinity, read at the first call: a child
 * inherits it, and a program that changes it later keeps the first answer). */
bool mp__one_cpu(void);

/* Step i (from 1) of a short spin before a sleep, which ends at spin_end: false once it is
 * over. Every 64 steps it reads the clock and, if yield, yields the CPU. A waiter yields
 * where the process it waits for must share its CPU (mp__one_cpu): there a spin that never
 * yields only delays it (a queue's consumer took one message per 20 us spin, then slept).
 * Where it may run elsewhere, a yield would hand the CPU to any other runnable task for its
 * whole slice, and the answer would wait for that (an unrelated CPU hog made queue.small
 * 2-4 times slower). */
static inline bool mp__spin(int i, int64_t spin_end, bool yield) {
  mp__cpu_relax();
  if (i % 64 != 0)
    return true;
  if (mp__now_ns() >= spin_end)
    return false;
  if (yield)
    sched_yield();
  return true;
}

/* A process-shared robust mutex for short critical sections in shared memory. Locking
 * returns 0, MP_EOWNERDEAD (locked, and made consistent again: its previous owner died in
 * the critical section, so the caller repairs what it guards), MP_ETIMEDOUT or MP_ECORRUPT
 * (its kind word or owner word written by another process: util.c). Never hold
 * one across a wait for another process: wait on a futex instead (glibc bug 21422). */
int mp__mutex_init(pthread_mutex_t *mutex);
int mp__mutex_lock(pthread_mutex_t *mutex, int64_t deadline);
/* The same, and MP_EINTR (nothing taken) when SIGINT arrives during the wait (signals.c's
 * rule): for the locks a program waits on, Lock and RLock, a connection end's. */
int mp__mutex_lock_sig(pthread_mutex_t *mutex, int64_t deadline);
/* 0, or MP_ECORRUPT (the mutex's kind word is not the one mp__mutex_init wrote: still held,
 * as a lock refuses such a mutex too; glibc obeys that word). */
int mp__mutex_unlock(pthread_mutex_t *mutex);

/* A call's deadline, taken when it first has to wait (for a lock, for room, for a message),
 * from its timeout, once: a call that needs no wait reads no clock. */
#define MP__DEADLINE_UNSET INT64_MIN
typedef struct {
  double timeout;
  int64_t at; /* MP__DEADLINE_UNSET until taken */
} mp__deadline_t;

/* A deadline that never comes, for a call that waits as long as it takes. */
#define MP__NO_DEADLINE (&(mp__deadline_t){MP_FOREVER, MP__DEADLINE_UNSET})

static inline int64_t mp__deadline_of(mp__deadline_t *d) {
  if (d->at == MP__DEADLINE_UNSET)
    d->at = mp__deadline(d->timeout);
  return d->at;
}

/*
 * A lock of one word in shared memory, libmp's own (the queues' side locks, the arena's
 * lock): every value of the word is judged, where glibc's robust mutex follows several words
 * another process may write (its kind, its list links: util.c). The word names its holder:
 * the thread's id (low 22 bits; the low half is the futex) and a tag of the holder's pid
 * namespace and start time (util.c). A waiter that finds the same holder for a whole slice
 * asks whether that thread still runs, when the id means the same thread to it (the same
 * pid namespace), and takes the lock over from a holder that ended (MP_EOWNERDEAD).
 * MP_ETIMEDOUT past the deadline: a live holder (stopped, in another pid namespace, or a
 * word another process forged) holds nobody longer.
 */
typedef struct {
  _Atomic uint64_t word; /* 0: free; else tag bits 9.. << 32 | [WAITERS] | tag bits 0..8 << 22
                            | tid */
} mp__wlock_t;
#define MP__WLOCK_WAITERS 0x80000000u /* in the low half: someone sleeps on the futex */
#define MP__TID_MAX 0x3fffffu         /* PID_MAX_LIMIT - 1: no pid namespace has a larger id */
#define MP__WLOCK_TID MP__TID_MAX

/* The calling thread's word as a holder: read once per thread, forgotten in a fork child.
 * initial-exec: a plain load, not a call of __tls_get_addr on every lock. */
extern _Thread_local uint64_t mp__wlock_me __attribute__((tls_model("initial-exec")));
uint64_t mp__wlock_me_slow(void);
/* The contended path of mp__wlock_lock (util.c). */
int mp__wlock_wait(mp__wlock_t *l, uint64_t me, mp__deadline_t *d);
/* The caller's pid namespace as a tag of 21 bits, 1 to 0x1fffff (0: /proc cannot say); in
 * *own, whether /proc is that namespace's (/proc/self names the caller by its pid), so that
 * /proc/<id> means the process of that id in it. A process's id means it only there. */
uint32_t mp__pidns_tag(bool *own);

/* 0, or MP_EOWNERDEAD: the lock is the caller's, and its holder died holding it (repair); or
 * MP_ETIMEDOUT: a live holder kept it past *d. Inlined: on the path of every put and get. */
static inline __attribute__((always_inline)) int mp__wlock_lock(mp__wlock_t *l,
                                                                mp__deadline_t *d) {
  uint64_t me = mp__wlock_me ? mp__wlock_me : mp__wlock_me_slow(), w = 0;
  if (atomic_compare_exchange_strong(&l->word, &w, me))
    return 0;
  return mp__wlock_wait(l, me, d);
}

static inline __attribute__((always_inline)) void mp__wlock_unlock(mp__wlock_t *l) {
  if (atomic_exchange(&l->word, 0) & MP__WLOCK_WAITERS)
    mp__futex_wake((_Atomic uint32_t *)(void *)&l->word, 1);
}

/* Objects that mp_wait() (connection.c) waits on: a connection end, a queue, a process.
 * Each such handle begins with a uint32_t kind word (MP__KIND_*); the layer that owns a kind
 * registers its operations, from a constructor, so mp_wait() needs no upward dependency.
 * The constructor must be prioritized (constructor(102)): spawn.c's take-over of a spawned
 * child runs with the unprioritized ones and never returns.
 * mp_wait() asks every object for its fd first, then for readiness (so a wake-up between the
 * two is not lost), and polls the fds only if none is ready; after a wake-up it asks
 * readiness again, and ready() may drain its fd then. */
enum {
  MP__KIND_CONNECTION = 0x4e4e4f43u, /* "CONN" */
  MP__KIND_QUEUE = 0x45555551u,      /* "QUEU" */
  MP__KIND_PROCESS = 0x434f5250u,    /* "PROC" */
};

typedef struct {
  /* 1 if a call on obj would not block now (a message, end of file, an ended process, a
   * closed object), 0 if it would, or a negative error. */
  int (*ready)(void *obj);
  /* An fd of this process that turns readable (POLLIN) when obj may have become ready;
   * owned by obj. May register this process as a waiter. Negative error if none. */
  int (*poll_fd)(void *obj);
} mp__waitable_ops_t;

void mp__waitable_register(uint32_t kind, const mp__waitable_ops_t *ops);
/* The operations for obj's kind word, or NULL (not a waitable handle). */
const mp__waitable_ops_t *mp__waitable_find(const void *obj);

/* ----------------------------- connection.c ----------------------------- */

/* Writes size raw bytes where conn's frames go (no header, no send lock), inside a call as a
 * send is, so that a close meanwhile cannot free the fd: 0 or an error. For the frame
 * fuzzer, which writes what a peer could. */
int mp__conn_write_raw(mp_conn_t *conn, const void *data, size_t size);

/* ------------------------------- queues.c ------------------------------- */

/* The words of a queue that any process of the program can write and that a get, and the
 * last free, read: for the fuzzer of the ring (tests/fuzz/fuzz_queue_ring.c), which lays
 * its bytes over them. */
typedef struct {
  uint64_t ring_word; /* the ring's address | log2 of its bytes */
  uint64_t head, tail, tail_seen;
  void *retired; /* the block of the spilled message taken last, until the next get */
  uint64_t retired_head, retired_room;
  uint32_t spares_in, spares_out, closed;
  struct {
    void *block;
    uint64_t room;
  } spare[4];
} mp__queue_words_t;
/* Copies q's words to *read (if not NULL), then *write's (if not NULL) over them. */
void mp__queue_words(mp_queue_t *q, mp__queue_words_t *read, const mp__queue_words_t *write);

/* ------------------------------ reduction.c ----------------------------- */

#define MP__BUILD_ID_MAX 64

/* A function by identity: the loaded object holding it and its offset there, valid across
 * exec and ASLR. path is "" for the main executable. */
typedef struct {
  uint64_t offset;
  uint32_t build_id_len;
  uint8_t build_id[MP__BUILD_ID_MAX];
  char path[4096];
} mp__fnref_t;

/* Any function pointer, for code that handles functions of every type. */
typedef void (*mp__fn_t)(void);

int mp__fnref_from_pointer(mp__fn_t fn, mp__fnref_t *ref);
/* Whether mp__fnref_from_pointer would take fn (0 or MP_ECROSS), without making the
 * reference: a function of the executable is told without the loader's lock. */
int mp__fnref_check(mp__fn_t fn);
/* Finds the executable's code once, so that later lookups and resolutions of its functions
 * need neither the loader's lock nor a walk: for the fork server, before its spares. */
void mp__fnref_prepare(void);
int mp__fnref_resolve(const mp__fnref_t *ref, mp__fn_t *fn);

/* File descriptors that cross to children by key (a connection's socket, say). An object in
 * the arena holds the key; each process looks up its own fd for it. A child started from a
 * process object gets exactly the fds passed to it before start, under every start method
 * (a forked child closes the others), at whatever numbers: the keys stay the same. */
/* Registers fd (taking ownership) under a new program-wide key. */
int mp__fd_share(int fd, uint64_t *key);
/* This process's fd for key, or MP_ENOTPASSED (never passed here, or closed), or
 * MP_ECLOSED (retired). */
int mp__fd_lookup(uint64_t key);
/* Marks key's fd closed here while a call still uses it, until mp__fd_unshare: look-ups
 * (a start sending it to a child) answer MP_ECLOSED, and a forked child closes it. */
void mp__fd_retire(uint64_t key);
/* Closes this process's fd for key, and drops it from the table under the table's lock;
 * 0, or MP_ENOTPASSED. */
int mp__fd_unshare(uint64_t key);
/* Tests only (NULL otherwise): called inside mp__fd_unshare, the table half-updated under
 * its lock, where a fork must not land. */
extern void (*mp__fd_unshare_hook)(void);
/* The table's lock, held across a fork while a connection's close is pending
 * (connection.c: taken after its list's lock). */
void mp__fd_lock(void);
void mp__fd_unlock(void);
/* The child that proc starts will have key's fd (MP_ENOTPASSED if this process has none,
 * MP_ESTARTED after start). */
int mp__process_pass_fd(mp_process_t *proc, uint64_t key);
/* Takes fd as this process's fd for key: a child installing what its parent passed. */
int mp__fd_adopt(uint64_t key, int fd);
/* In a child forked by the fork start method: closes every shared fd not passed to it. */
void mp__fd_keep_only(const uint64_t *keys, size_t n);
/* In the child of any fork(): frees the table's lock. */
void mp__fd_after_fork(void);

/* -------------------------------- heap.c -------------------------------- */

/* The shared arena (Python's heap.py): one memfd mapped at the same address in every
 * process of the program, inherited by a forked child and mapped by a spawned or
 * forkserver child before its target runs, so a pointer into it is valid everywhere.
 * Blocks are zeroed, 64-byte aligned and reference counted: allocating gives one reference,
 * the last release frees the block. Allocation and release are safe from any thread of any
 * process of the program. */
/* A zeroed block of size bytes: 0 and the block in *out; NULL in *out and the error, said:
 * MP_EINVAL (size 0), MP_ECORRUPT (a wild word of the arena's header) or MP_ENOMEM (too
 * large, arena exhausted, or no arena). A create returns that code as it is. */
int mp__shared_alloc(void **out, size_t size);
/* The same, not zeroed (for buffers about to be overwritten whole), waiting for the arena's
 * lock no later than *d (a queue's put), or as long as a live holder keeps it with
 * MP__NO_DEADLINE (a holder that ended is taken over after a slice): MP_ETIMEDOUT too (a live
 * process held the lock: said). */
int mp__shared_alloc_by(void **out, size_t size, mp__deadline_t *d);
void mp__shared_retain(void *block);
/* Drops one reference to a block allocated with size bytes; true if that was the last: the
 * block is then free, or left out of use with MP_ECORRUPT set if its header (any process's
 * to write) is not a live block of that size. The size is the caller's, never the header's:
 * a block's class written wild would free its live neighbours with it. */
bool mp__shared_release_sized(void *block, uint64_t size);
/* The same, waiting for the arena's lock no later than *d (a queue's put or get): past it,
 * the block is lost. */
bool mp__shared_release_sized_by(void *block, uint64_t size, mp__deadline_t *d);
/* True if p lies inside this process's arena mapping: a cheap check for handles. */
bool mp__shared_contains(const void *p);
/* True if payload is a live block's, of room bytes at least, wholly inside the arena: what
 * an address read from the arena (another process may have written it) must be
 * before it is released or read as a block. */
bool mp__shared_is_block(const void *payload, uint64_t room);
/* A program-wide unique number (never 0), for keys that name things across processes. */
uint64_t mp__shared_unique(void);
/* A program-wide random number, secret from other users until a name made of it is listed
 * (an abstract socket's, in /proc/net/unix): drawn once, and drawn again by a process that
 * finds the name made of stale (0: none) taken by another user, so that nobody can take
 * the next name first. 0 if there is no arena or no randomness. */
uint64_t mp__shared_nonce(uint64_t stale);

/* For the start methods: what a child needs to map the arena (false if there is none). */
typedef struct {
  uint64_t base;
  uint64_t reserve;
} mp__heap_map_t;
bool mp__heap_describe(mp__heap_map_t *map, int *fd);
/* In a new child: maps the parent's arena from fd (taking it) at the same address. */
int mp__heap_attach(int fd, const mp__heap_map_t *map);

/* Bytes read or sent on purpose whatever they hold (a caller's argument bytes, a struct's
 * padding included): defined, for memcheck. */
#ifdef MP_HAVE_VALGRIND
#include <valgrind/memcheck.h>
#define MP__SCANNED(p, n) VALGRIND_MAKE_MEM_DEFINED(p, n)
#else
#define MP__SCANNED(p, n) ((void)(p), (void)(n))
#endif

/* ------------------------------- process.c ------------------------------ */

typedef enum { MP__PROC_CHILD, MP__PROC_SELF, MP__PROC_PARENT } mp__proc_kind_t;
typedef enum { MP__CREATED, MP__STARTED, MP__ENDED } mp__proc_state_t;

typedef struct mp__popen_ops_s mp__popen_ops_t;

/* A reference a process object holds for its child: dropped by release(obj) at the reap. */
typedef struct {
  void *obj;
  void (*release)(void *obj);
} mp__held_t;

struct mp_process_s {
  uint32_t object_kind; /* MP__KIND_PROCESS, first: mp_wait() takes process handles */
  mp__proc_kind_t kind;
  mp__proc_state_t state;
  const mp__popen_ops_t *ops;
  mp_target_t target;
  void *arg;
  size_t size;
  char *name;
  bool name_owned; /* false for the static names of the current and parent process */
  char *identity; /* Python's _identity, "1:2": the default name and the child's prefix */
  bool daemon;
  bool die_with_parent;
  pid_t pid;
  pid_t owner;   /* the process that started it, the only one that can wait for it */
  int pidfd;     /* signals; for fork and spawn children also the exit sentinel */
  int status_fd; /* forkserver: the child's socket, where its exit status arrives; without
                    pidfds: the sentinel socket; else -1 */
  int exitcode;
  bool status_lost; /* ended, but a waitpid() elsewhere in the program took the status */
  bool end_seen;    /* a wait saw the sentinel ready, which it stays: the child has ended */
  pthread_mutex_t reap_lock;
  struct mp_process_s *prev, *next; /* the registry of started, unclosed children */
  uint64_t *passed; /* keys of the fds the child gets (mp__process_pass_fd) */
  size_t n_passed;
  mp__held_t *held; /* shared objects kept alive for the child until it is reaped */
  size_t n_held;
};

/* Shared objects that carry fds of their own (a connection end) reach a child when a pointer
 * to one lies, 8-byte aligned, in its argument bytes: mp_process_start() reads each such
 * word that points into the arena at a kind word registered here (from a prioritized
 * constructor, as for mp__waitable_register) and
 * calls pass(obj, proc), which passes the fds and holds the object for the child. pass()
 * must check that obj is live in this process (a word may only look like a pointer); the
 * start ignores its errors but MP_ENOMEM. */
typedef int (*mp__pass_fn)(void *obj, mp_process_t *proc);
void mp__passable_register(uint32_t kind, mp__pass_fn pass);
/* Keeps obj alive for proc's child: retain(obj) now (once per proc, however often obj is
 * passed), release(obj) when the child is reaped, or the process object closed unstarted.
 * MP_ESTARTED after start. */
int mp__process_hold_ref(mp_process_t *proc, void *obj, void (*retain)(void *obj),
                         void (*release)(void *obj));

/* What a child is told about itself and its parent. */
typedef struct {
  const char *name;
  const char *identity;
  pid_t parent_pid;  /* the process that started it */
  pid_t real_parent; /* the process that forked it: the fork server, or parent_pid */
  const char *parent_name;
  bool die_with_parent;
  int sentinel; /* without pidfds: the socket end whose closing tells the parent we ended */
  int report_sock; /* forkserver: the socket to send EXITED on, else -1 */
  /* Whether name and parent_name were malloc'ed for the child (spawn's long names), which a
   * rename frees, rather than copies of the parent's or in a request's static storage. */
  bool name_owned, parent_name_owned;
  /* 1 or -1: whether pidfds work, as the forking parent found (mp__have_pidfd); 0: ask */
  signed char pidfds;
  /* > 0: a pidfd of parent_pid already open (a fork server's spare opened it before its
   * request came), which the child keeps as its parent's; 0: open one if pidfds work. */
  int parent_pidfd;
} mp__child_info_t;

/* A fork server's spare, before its request comes: writes the one page of process.c's that
 * mp__child_init() writes, so that the start does not wait for its page fault. */
void mp__child_prepare(void);

/* The first code of any new child, whatever the start method: sets the current and the
 * parent process objects, forgets the parent's children, arranges to die with the parent. */
void mp__child_init(const mp__child_info_t *info);
/* The current process's name, as mp_current_process() has it, without asking its pid. */
const char *mp__current_name(void);

/* Ends a child after its target: joins or terminates its own children as Python's
 * _exit_function does, flushes stdio, and exits with code. exec_image is true for a spawned
 * child, whose atexit handlers are its own and run; a forked child _exits. */
MP__NORETURN void mp__child_exit(int code, bool exec_image);

/* Runs fn at every normal end of a process of the program: the main program's exit, a
 * spawned child's exit and a forked child's end (which skips atexit). Not on a death by a
 * signal: that is what fn may tell apart. MP__EXIT_FIRST hooks run before the process joins
 * or terminates its children, MP__EXIT_LAST ones after (the fork server, which serves them).
 * For constructors; a few functions at most. */
enum { MP__EXIT_FIRST, MP__EXIT_LAST };
void mp__on_exit(void (*fn)(void), int when);

/* ------------------------------- signals.c ------------------------------ */

/* Ctrl-C and blocking calls, the one rule (docs/api.md): a blocking call that sees SIGINT
 * arrive, the program's handler having returned, returns MP_EINTR with a sentence.
 * mp__sigint_watch chains a counter in front of the program's SIGINT handler, if it has one
 * not chained yet, and returns the counter. A blocking call takes a snapshot first
 * (mp__sigint_begin) and, each time its wait ends with EINTR, asks whether SIGINT came since
 * (mp__sigint_arrived); a futex or poll wait with a finite deadline ends with EINTR after any
 * handler, so an infinite one is given a finite one (INT64_MAX - 1). */
const _Atomic uint32_t *mp__sigint_watch(void);
/* The count of SIGINTs seen so far (by a counter already chained): one load. */
uint32_t mp__sigint_count(void);
typedef struct {
  const _Atomic uint32_t *counter;
  uint32_t base;
} mp__sigint_t;
/* True if SIGINT is caught (by the counter, in front of the program's handler): only then
 * can the wait end by it, and a wait the kernel would restart must be made one it does not
 * (a poll before a read). */
bool mp__sigint_begin(mp__sigint_t *s);
bool mp__sigint_arrived(const mp__sigint_t *s);
/* mp__poll_fd that also returns MP_EINTR once SIGINT arrived since sigint's snapshot (poll
 * is never restarted after a handler). */
int mp__poll_fd_sig(int fd, short events, int64_t deadline, const mp__sigint_t *sigint);

/* ------------------------------- context.c ------------------------------ */

struct mp__popen_ops_s {
  const char *name;
  /* Makes the child: sets pid, pidfd and status_fd, or returns an error. */
  int (*launch)(mp_process_t *proc);
  /* Without blocking: 0 and the wait status, -EAGAIN if not yet ended, or -ECHILD if it
   * ended and its status is lost. */
  int (*collect)(mp_process_t *proc, int *wait_status);
};

/* Shared by the fork and spawn methods, whose children are ours (process.c): */
/* makes the socket pair that tells of a child's end where the kernel (or valgrind) has no
 * pidfds, or sets both ends to -1 where it has them, */
int mp__sentinel_open(int sentinel[2]);
/* takes pid as the started child, watched by its sentinel or by a pidfd opened now
 * (the child is killed if that fails), */
int mp__popen_watch(mp_process_t *proc, pid_t pid, const int sentinel[2]);
/* kills and reaps a child whose start failed half-way, */
void mp__popen_discard(mp_process_t *proc);
/* and reaps an ended child without blocking. */
int mp__popen_collect_child(mp_process_t *proc, int *wait_status);

extern const mp__popen_ops_t mp__popen_fork;
extern const mp__popen_ops_t mp__popen_spawn;
extern const mp__popen_ops_t mp__popen_forkserver;

/* The "mpi" context (pool_mpi.c): refused with a sentence outside an MPI job's rank 0, or
 * in a build without MPI (mpi_none.c). */
int mp__mpi_get_context(mp_context_t **ctx);

struct mp_context_s {
  const mp__popen_ops_t *ops;
};

/* The executable spawn and the fork server run: mp_set_executable()'s or the running one
 * (process.c, below spawn.c). */
int mp__executable(char *buf, size_t cap);
/* mp_process_create's work once context.c resolved the context (process.c): contexts sit
 * above the start methods, which sit above process.c. */
int mp__process_create(mp_process_t **out, const mp__popen_ops_t *ops, mp_target_t target,
                       const void *arg, size_t size, const char *name);

/* ------------------------------- spawn.c -------------------------------- */

/* The environment variable that marks a fresh image as libmp's child:
 * "<role> <bootstrap fd> <sentinel fd or -1>". */
#define MP__CHILD_ENV "LIBMP_CHILD"

/*
 * The roles a fresh image of the program can take, one entry each, wherever the role's code
 * lives: MP__ROLE(name) { ... } in that file defines its main and adds it to one table (an
 * ELF section that the linker gathers, so a role is present exactly when its file is linked
 * and spawn.c, below every role, names none of them). spawn.c alone reads LIBMP_CHILD: in
 * its first constructor it removes the variable, ignores it in a secure-execution process
 * (AT_SECURE), and otherwise acts on it only if its fd is a Unix socket whose peer is this
 * process's parent with this process's uid and gid; otherwise the image writes one line to
 * stderr and exits 127, before main(). After libmp's prioritized constructors it runs the
 * role's main, which never returns: fd is the bootstrap socket, sentinel the spawned child's
 * sentinel or -1 (only the "spawn" role takes one).
 */
typedef struct {
  const char *name; /* LIBMP_CHILD's first word, at most 15 bytes */
  const char *what; /* for sentences: "spawned child" */
  bool takes_sentinel;
  void (*main)(int fd, int sentinel); /* never returns */
} mp__role_t;
#define MP__ROLE(id, role_name, description, sentinel)                                      \
  static MP__NORETURN void id##_main(int fd, int sentinel_fd);                              \
  static const mp__role_t id##_role = {role_name, description, sentinel, id##_main};        \
  __attribute__((section("mp__roles"), used)) static const mp__role_t *const id##_entry =   \
      &id##_role;                                                                           \
  static MP__NORETURN void id##_main(int fd, int sentinel_fd)

/* A take-over: what an image given no role may be instead of main's program. MP__TAKE_OVER(
 * name) { ... } defines a function that spawn.c's last constructor calls (after libmp's
 * prioritized ones, before main) when LIBMP_CHILD gave no role; it returns unless the process
 * is something else (under mpirun, a rank other than 0 serves pools and exits: mpi_rank.c).
 * One table, as the roles' (section mp__take_overs), so spawn.c names none of them. */
typedef void (*mp__take_over_t)(void);
#define MP__TAKE_OVER(id)                                                                      \
  static void id(void);                                                                        \
  __attribute__((section("mp__take_overs"), used)) static const mp__take_over_t id##_entry =   \
      id;                                                                                      \
  static void id(void)

/* 0 if the Unix socket sock's peer is the process pid (0: any) with this process's real and
 * effective uid and gid, else a negative code with a sentence. */
int mp__check_peer(int sock, pid_t pid, const char *what);
/* The same with this process's ids given: uid and gid as mp__peer_ids() found them. */
int mp__check_peer_as(int sock, pid_t pid, uid_t uid, gid_t gid, const char *what);
/* This process's uid and gid where real and effective ones agree, else (uid_t)-1 and
 * (gid_t)-1, which no peer matches. */
void mp__peer_ids(uid_t *uid, gid_t *gid);
/* The fd numbers a spawned image finds its bootstrap socket and its sentinel at. */
#define MP__BOOTSTRAP_FD 3
#define MP__SENTINEL_FD 4

/* Records from child (or fork server) to parent, each sent whole (SOCK_SEQPACKET); the parent's request is a plain stream
 * of records of at most MP__RECORD_MAX bytes. */
enum {
  MP__REC_READY = 1,   /* child: target resolved, argument received; value = pid; from a
                          forkserver child with its own pidfd attached */
  MP__REC_ERROR,       /* child or fork server: could not start; value = code, then text */
  MP__REC_EXITED,      /* forkserver child: its target returned; value = the exit code */
  MP__REC_STATUS,      /* fork server: value = the reaped child's wait status */
};

#define MP__RECORD_MAX 65536

/* The head of the parent's request, sent first (up to target.path, of which only
 * target_path_len bytes follow). */
#define MP__REQUEST_MAGIC 0x504d424cu /* "LBMP" */
#define MP__REQUEST_VERSION 4u
enum { MP__REQUEST_DIE_WITH_PARENT = 1u << 0 };
typedef struct {
  uint32_t magic;
  uint32_t version;
  int32_t parent_pid;
  uint32_t flags;
  uint64_t arg_size;
  uint32_t name_len;
  uint32_t identity_len;
  uint32_t parent_name_len;
  uint32_t target_path_len;
  uint32_t n_fds;       /* records that follow the stream, each with one fd: */
  uint32_t has_arena;   /* first the shared arena's memfd, if there is an arena, */
  mp__heap_map_t arena; /* to be mapped here; then the passed fds, each with its key */
  mp__fnref_t target;   /* last: only target_path_len bytes of its path are sent */
} mp__request_head_t;
#define MP__REQUEST_HEAD_SENT offsetof(mp__request_head_t, target.path)

typedef struct {
  uint32_t type;
  int32_t value;
} mp__reply_t;

/* Parent side: takes the target by identity (MP_ECROSS if it has none) and makes the
 * socket pair to the child; sv[1] is the child's end. */
int mp__bootstrap_open(const mp_process_t *proc, mp__fnref_t *ref, int sv[2]);

/* Parent side: streams the child's request over sock (self: this process's pid, read by
 * the caller), then waits for READY (or the child's end), which from a forkserver child
 * brings its pid and pidfd. */
int mp__bootstrap_send(int sock, mp_process_t *proc, const mp__fnref_t *ref, pid_t self,
                       bool from_forkserver);
int mp__bootstrap_await(int sock, mp_process_t *proc, bool from_forkserver);

/* What both return when a fork server's child ended before it took over, with nothing said
 * (its sentence set): it never ran the target, so the caller may ask again. */
#define MP__ENOTAKEOVER (-EPIPE)

/* Sends the thread's last error as an ERROR record. */
void mp__send_error(int sock, int code);
/* Refuses a start on sock for good: its ERROR (unless -EPIPE: the parent is gone), then the
 * close, after what the start sent is read and dropped, so that the close does not reset
 * the start's end, which would read the reset before the ERROR. */
void mp__refuse_start(int sock, int code);
/* A child that cannot become what its request asks: refuses the start (mp__refuse_start)
 * and _exit(1)s before any target runs, so that the start fails with its error. */
MP__NORETURN void mp__request_refuse(int sock, int code);

/* The child's side, in a spawned image or in the fork server before it forks: reads the
 * whole request from sock and resolves its target (-EPIPE: the parent has gone; other
 * errors are to be sent back with mp__send_error). One call at a time in a process: its
 * reader is static. */
typedef struct mp__request_s mp__request_t;
int mp__request_read(int sock, mp__request_t **req);
void mp__request_free(mp__request_t *req);

/* What a fork server's spare made ready before its request came, off the start's path. */
typedef struct {
  pid_t self;
  pid_t server;     /* its parent */
  pid_t program;    /* the program the server serves */
  int self_pidfd;   /* its own pidfd, sent with READY; -1 without pidfds */
  int program_fd;   /* the program's pidfd, -1 without: the child's parent's if the request
                       names the program as its parent, else closed */
  int server_fds[2]; /* the server's sockets it still holds, closed once READY is sent (set
                        when it takes a request) */
} mp__spare_t;

/* A spare, before its request comes: writes the pages a request of a few hundred bytes
 * writes and runs memcpy once, so that the start waits for none of their page faults. */
void mp__request_prepare(void);

/* Becomes the child the request describes, answers READY on sock, runs the target and
 * exits (refuses, as above, where READY cannot be sent). spare is what a fork server's
 * spare prepared (the server is its real parent), or NULL when the requesting parent made
 * this image; sentinel is the end kept for the parent where there are no pidfds, or -1. */
MP__NORETURN void mp__request_run(mp__request_t *req, int sock, bool exec_image,
                                  const mp__spare_t *spare, int sentinel);

/* posix_spawn()s exe as a libmp child of the given role ("spawn", "forkserver" or
 * "shm-tracker") that finds sock at MP__BOOTSTRAP_FD and sentinel (if >= 0) at
 * MP__SENTINEL_FD, with no other inherited fd and default signals. MP_ESPAWN in a
 * secure-execution process, whose fresh images would take no role. */
int mp__spawn_image(const char *role, int sock, int sentinel, pid_t *pid);

/* ------------------------------ forkserver.c ---------------------------- */

/* Hands sock to this process's fork server (started on first use: self, this process's
 * pid, tells whether the server is its own), whose spare becomes the child that reads its
 * request from sock. */
int mp__forkserver_request(int sock, pid_t self);

/* After a start that no child took over: a server that is gone too is reaped, so that the
 * next request starts another. */
void mp__forkserver_check(pid_t self);

/* ----------------------------- synchronize.c ---------------------------- */

/* 0 if lock is a live Lock or RLock, else MP_EINVAL (no message): for sharedctypes.c. */
int mp__lock_check(const mp_lock_t *lock);
/* Whether lock, an address read from shared memory, is where libmp places a lock: a Lock's
 * block, or a Value's or Array's own lock inside that object's block (another object may be
 * made with it, as Python's Value(lock=v.get_lock())). Its magic word is checked apart. */
bool mp__lock_placed(const mp_lock_t *lock);

/* A Value's or Array's own RLock lives inside its block, MP__INNER_LOCK_AT bytes in, so that
 * the lock and a small element share a cache line; its references are the block's (retaining
 * or closing the lock retains or closes the Value). Initializes one there. */
#define MP__INNER_LOCK_AT 64
#define MP__INNER_LOCK_SIZE 56
int mp__lock_init_inner(mp_lock_t *lock);
/* How closing a Value's own lock releases the Value's block (by its size, which only
 * sharedctypes.c reads): set by sharedctypes.c as it is loaded. */
void mp__lock_inner_release_set(bool (*release)(void *block));

/* The lock whose reference an object of block (a Condition, a Value, an Array) took at its
 * creation, kept by the process that made it rather than read from the object's lock word,
 * which any process can write (given_t in synchronize.c). mp__given_add records it: 0 or
 * MP_ENOMEM (set). mp__given_release releases block by release() and, if that freed it,
 * drops the reference recorded here, if any: in another process the lock is left allocated. */
int mp__given_add(const void *block, mp_lock_t *lock, const char *fn);
void mp__given_release(void *block, bool (*release)(void *block));

/* --------------------------------- pool ---------------------------------- */

/* The Pool's own headers: pool_jobs.h (the job table: pool_jobs.c, pool.c, pool_worker.c)
 * and pool_launcher.h (where workers come from). docs/architecture.md, "The Pool". */

/* context.c: the "thread" context, which makes no processes; pools run threads for it. */
extern const mp__popen_ops_t mp__popen_thread;

#endif /* MP_INTERNAL_H */
