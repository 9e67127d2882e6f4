/*
 * Queues, Python's queues.py: Queue, SimpleQueue and JoinableQueue over one shared ring.
 *
 * A queue is a block of the shared arena (so its handle is valid in every process) and a
 * ring of cap bytes, a power of two, in another block. The ring holds records, each an
 * 8-byte header (the message's length, and a bit saying it was spilled) and then the
 * message's bytes rounded up to 8, or, for a spilled message (larger than an eighth of the
 * first ring), the address of the arena block that holds them and that block's room. A
 * record may wrap around the ring's end. A ring made by default grows (grow_ring) when
 * maxsize allows a message its bytes do not.
 *
 *   head                                          tail
 *    | len | bytes... | len|S | block room | len | bytes ...  |      free      |
 *
 * Two 64-bit words describe the ring, each a message number (high half) and a byte position
 * (low half), both counting up for ever modulo 2^32: tail, written by producers only, and
 * head, written by consumers only. Each is the commit of its side, written by a single store
 * after the copy:
 *
 *  - a producer takes put_lock, checks the room (maxsize messages, cap bytes), copies its
 *    message to the ring at tail (or into a spare or new block, noted in `pending` first),
 *    writes the record, then stores the new tail, and unlocks;
 *  - a consumer takes get_lock, keeps as a spare (or frees) the block of the spilled message
 *    the get before it took (`retired`), reads the record at head, copies the message out,
 *    notes a spilled message's block in `retired`, stores the new head, and unlocks.
 *
 * The get's commit is its last step: what follows it (the unlock, the wake of producers
 * waiting for room) only shortens others' waits, and a death there is repaired by the next
 * holder of the lock (MP_EOWNERDEAD) or by the sleepers' 50 ms slices. A spilled message's
 * block is kept or freed lazily, by the next get, for that reason: `retired` is believed only
 * if head reached `retired_head`, i.e. the get that noted it committed.
 *
 * So a process killed inside either leaves the committed words as they were before its
 * call: the next process to take the lock is told (MP_EOWNERDEAD) and finds a consistent
 * ring. A dead producer's half-copied bytes lie beyond tail and are overwritten; its block,
 * if `pending` names one that tail has not reached, is freed. A dead consumer did not move
 * head, so its message goes to the next consumer: every message whose put returned is
 * delivered exactly once, unless a consumer dies after its commit and before its caller has
 * the message: the instant between the commit's store and the return. Producers never wait
 * for consumers inside a lock, nor consumers for producers: the locks only order one side's
 * copies, so the ring is FIFO and one producer's messages arrive in order.
 *
 * Waiting is on futexes, never on a condition variable: a consumer with nothing to take spins
 * for a few microseconds, yielding the CPU at each look at the clock if it may run on one CPU
 * only (mp__spin), then counts itself in get_waiters and sleeps on put_seq; a producer that
 * commits looks at get_waiters and makes the futex call only if someone sleeps. The same for
 * producers waiting for room (put_waiters, get_seq) and for joiners of a JoinableQueue
 * (join_waiters, join_seq). The counts and the committed words are accessed sequentially
 * consistent, so either the sleeper sees the commit or the committer sees the sleeper.
 *
 * Readiness for poll() and mp_wait(): a queue's handle reaches processes that were started
 * before it existed, which hold none of its fds. So each process that wants to poll a queue
 * makes its own doorbell, an AF_UNIX datagram socket bound to an abstract name, and registers
 * it in one of the queue's `bells`: the name, a key and its pid. A put that makes the queue
 * non-empty, and close, send the key to every registered doorbell; a doorbell whose process
 * is gone refuses it (ECONNREFUSED) and is dropped. Puts look at one counter first, so a
 * queue nobody polls pays nothing. A process clears its doorbell when it finds the queue
 * empty, then looks again, so a put that lands in between rings it anew.
 *
 * Another user shares the abstract namespace (and reads its names in /proc/net/unix), so
 * neither a name nor a datagram is trusted: the name is 64 random bits (getrandom), drawn
 * again if taken, so it cannot be bound first; and the socket carries a socket filter that
 * admits only a datagram holding the doorbell's key, 64 more random bits that live only in
 * the arena (a memfd no other user can open). The kernel drops any other datagram before it
 * is queued, so nobody outside the program can make the fd readable (see docs/architecture.md,
 * "Endpoints"). A filter rather than SO_PASSCRED: credentials are read after poll() has
 * already woken.
 */
#include "internal.h"
#include "trace.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define RING_DEFAULT (1u << 20)
#define RING_MIN (1u << 12)
#define RING_MAX (1u << 26)
#define HEADER 8u
#define SPILLED (1ull << 63)
#define LEN_MAX (1ull << 62)
#define SPIN_NS 20000
#define N_BELLS 64
#define SLEEP_SLICE_NS 50000000 /* 50 ms */
#define FREED_MAGIC 0x45455246u /* "FREE" */
#define N_MARKS 256
/* Spare blocks (see "spare blocks" below): a ring of this many, of which a put takes the
 * oldest only once SPARES_KEPT wait, and only blocks of up to SPARE_ROOM_MAX bytes. */
#define N_SPARES 4u
#define SPARES_KEPT 4u
#define SPARE_ROOM_MAX ((uint64_t)2 << 20)

/* ================================ the side locks ================================ */

/* Each side's lock (put_lock, get_lock) is a word lock (mp__wlock_t, internal.h): a waiter
 * judges a holder that keeps it for a slice, takes a dead one's over (MP_EOWNERDEAD), and
 * gives up at its call's deadline. */

/* Inlined: on the path of every put and get, and small once the waits are out of line. */
#define HOT static inline __attribute__((always_inline))

typedef enum { FLAVOR_QUEUE = 1, FLAVOR_JOINABLE, FLAVOR_SIMPLE } flavor_t;

#define LINE _Alignas(64)

struct mp_queue_s {
  uint32_t kind; /* MP__KIND_QUEUE, first: mp_wait() reads it */
  uint32_t flavor;
  uint32_t ring_max;   /* the ring grows up to this many bytes */
  uint32_t inline_max; /* larger messages spill */
  uint64_t maxsize;
  uint64_t uid; /* tells this queue from a later one at the same address */
  /* The ring's address (64-byte aligned, an arena block) | log2 of its bytes: one word, so
   * that growing it commits with one store. */
  _Atomic uint64_t ring_word;
  _Atomic uint32_t refs; /* the last release frees the ring, the blocks left, the queue */
  _Atomic uint32_t retains; /* references ever taken after the first, modulo 2^32 */
  _Atomic uint32_t freed;   /* FREED_MAGIC once the last reference is gone */

  /* Each side's lock and private state on a line of its own, apart from the word it commits:
   * the other side reads that word, and would otherwise pull the lock's line too. */
  LINE mp__wlock_t put_lock;
  void *pending;         /* a spilled message's block, being filled at... */
  uint64_t pending_tail; /* ...this tail: freed if a repair finds tail still there, ... */
  uint64_t pending_room; /* ...by this size, the block's room (not its header's class) */
  uint64_t pending_ring; /* a larger ring being filled, as its ring word: freed if it was
                            not installed */
  _Atomic uint64_t head_seen; /* head as producers read it last: never ahead of head */

  LINE _Atomic uint64_t tail;
  _Atomic uint32_t closed;

  LINE mp__wlock_t get_lock;
  void *retired;         /* the block of the spilled message taken last, freed... */
  uint64_t retired_head; /* ...by the next get if head reached this (its get committed) */
  uint64_t retired_room; /* ...or kept as a spare: its room */
  _Atomic uint64_t tail_seen; /* tail as consumers read it last: never ahead of tail */

  LINE _Atomic uint64_t head;

  /* Spare blocks: consumers add (spares_in, under get_lock), producers take the oldest
   * (spares_out, under put_lock). */
  LINE _Atomic uint32_t spares_in;
  _Atomic uint32_t spares_out;
  struct {
    void *block;
    uint64_t room;
  } spare[N_SPARES];

  LINE _Atomic uint32_t put_seq; /* bumped when a message comes, for sleeping consumers */
  _Atomic uint32_t get_waiters;
  LINE _Atomic uint32_t get_seq; /* bumped when room is made, for sleeping producers */
  _Atomic uint32_t put_waiters;
  LINE _Atomic uint32_t done; /* JoinableQueue: tasks done, modulo 2^32 */
  _Atomic uint32_t join_seq;  /* bumped when no task is left, for sleeping joiners */
  _Atomic uint32_t join_waiters;

  LINE _Atomic uint32_t n_bells;
  struct {
    _Atomic uint64_t name; /* random; 0: a free slot */
    _Atomic uint64_t key;  /* what its filter admits: written once the slot is taken */
    _Atomic int32_t pid;   /* its process, to drop it once that has gone */
  } bells[N_BELLS];
};

/* SimpleQueue is the same object, typed apart so that its smaller API is what users see. */
struct mp_simple_queue_s {
  struct mp_queue_s queue;
};

/* ================================ positions ================================ */

static uint32_t pos_msgs(uint64_t pos) {
  return (uint32_t)(pos >> 32);
}

static uint32_t pos_bytes(uint64_t pos) {
  return (uint32_t)pos;
}

static uint64_t pos_make(uint32_t msgs, uint32_t bytes) {
  return (uint64_t)msgs << 32 | bytes;
}

static uint32_t count_of(uint64_t head, uint64_t tail) {
  return pos_msgs(tail) - pos_msgs(head);
}

/* The record header of a message of len bytes. */
static uint64_t header_for(const mp_queue_t *q, size_t len) {
  return len > q->inline_max ? len | SPILLED : len;
}

static size_t header_len(uint64_t header) {
  return (size_t)(header & ~SPILLED);
}

/* A spilled message's record body: its block, and the block's room (the bytes it was
 * allocated for, at least the message's), so that the block can carry a later message. */
typedef struct {
  void *block;
  uint64_t room;
} spill_t;

static uint32_t record_size(uint64_t header) {
  size_t body = header & SPILLED ? sizeof(spill_t) : header_len(header);
  return HEADER + (uint32_t)((body + 7) & ~(size_t)7);
}

/* The ring as it is now: read once per locked operation (growing holds both locks). */
typedef struct {
  char *base;
  uint32_t cap;
} ring_t;

/* A wild log2 of 32 or more (the word is in the arena) makes a ring of 0 bytes, which no check
 * passes: the shift is a 64-bit one, defined for every log2 the word can hold. */
static ring_t ring_decode(uint64_t word) {
  return (ring_t){(char *)(uintptr_t)(word & ~(uint64_t)63), (uint32_t)(1ull << (word & 63))};
}

static ring_t ring_of(const mp_queue_t *q) {
  return ring_decode(atomic_load(&q->ring_word));
}

/* A wild ring of 0 bytes (ring_of) gets the log2 31, which no sane ring has. */
static uint64_t ring_word(const char *base, uint32_t cap) {
  return (uint64_t)(uintptr_t)base | (uint64_t)__builtin_ctz(cap | 1u << 31);
}

/* A record's bytes may wrap around the ring's end: the second copy is made only then. */
static void ring_write(ring_t r, uint32_t at, const void *src, size_t n) {
  uint32_t off = at & (r.cap - 1);
  size_t first = n < r.cap - off ? n : r.cap - off;
  memcpy(r.base + off, src, first);
  if (n > first)
    memcpy(r.base, (const char *)src + first, n - first);
}

static void ring_read(ring_t r, uint32_t at, void *dst, size_t n) {
  uint32_t off = at & (r.cap - 1);
  size_t first = n < r.cap - off ? n : r.cap - off;
  memcpy(dst, r.base + off, first);
  if (n > first)
    memcpy((char *)dst + first, r.base, n - first);
}

/* A header never wraps: records start at multiples of 8, and the ring's bytes are one. Its
 * copy is a fixed 8-byte move, which the compiler makes one load or store. */
static void header_write(ring_t r, uint32_t at, uint64_t header) {
  memcpy(r.base + (at & (r.cap - 1)), &header, HEADER);
}

static uint64_t header_read(ring_t r, uint32_t at) {
  uint64_t header;
  memcpy(&header, r.base + (at & (r.cap - 1)), HEADER);
  return header;
}

/* ================================ untrusted words ================================ */

/*
 * Everything a queue holds is in the arena, which every process of the program maps and may
 * write: a record's length, a spilled block's address, a spare's, head and tail. A get (and
 * the last free) believes them only once they fit: the ring inside the arena, the record
 * within the bytes committed, a block inside the arena and as large as its message. Anything
 * else is MP_ECORRUPT, and the bytes are left as they are, so every later get says so too.
 */

/* Whether block is a live block of the arena of room bytes, which hold len: only such a block
 * is read from, kept as a spare or freed (a wild address freed would corrupt the allocator). */
static bool spill_sane(spill_t s, uint64_t len) {
  return s.room >= len && s.room != 0 && mp__shared_is_block(s.block, s.room);
}

/* The last ring found to be a block of the arena, as its word: it stays inside (a process's
 * arena never moves or shrinks), so a get on the same ring looks at no bounds. */
static _Atomic uint64_t ring_known;

HOT bool ring_sane(ring_t r) {
  uint64_t word = ring_word(r.base, r.cap);
  if (word == atomic_load_explicit(&ring_known, memory_order_relaxed))
    return true;
  if (r.cap < RING_MIN || r.cap > RING_MAX || !mp__shared_is_block(r.base, r.cap))
    return false;
  atomic_store_explicit(&ring_known, word, memory_order_relaxed);
  return true;
}

/* What read_record found wrong, as MP_ECORRUPT and its sentence: out of every get's way. */
__attribute__((noinline, cold)) static int record_error(ring_t r, uint64_t head, uint64_t tail,
                                                        const char *fn) {
  uint32_t used = pos_bytes(tail) - pos_bytes(head), at = pos_bytes(head);
  const char *corrupt = "the queue's shared memory is corrupt";
  if (!ring_sane(r))
    return mp__error(MP_ECORRUPT,
                     "%s: %s: its ring of %u bytes at %p is not a block of the arena", fn,
                     corrupt, r.cap, (void *)r.base);
  if (used > r.cap || used < HEADER || at % 8 != 0)
    return mp__error(MP_ECORRUPT, "%s: %s: %u bytes at %u committed in a ring of %u", fn,
                     corrupt, used, at, r.cap);
  uint64_t header = header_read(r, at);
  spill_t spill;
  ring_read(r, at + HEADER, &spill, sizeof spill);
  if (header & SPILLED && header_len(header) < LEN_MAX && used - HEADER >= sizeof spill)
    return mp__error(MP_ECORRUPT,
                     "%s: %s: a message of %zu bytes spilled to %llu bytes at %p, not a block "
                     "of the arena",
                     fn, corrupt, header_len(header), (unsigned long long)spill.room,
                     spill.block);
  return mp__error(MP_ECORRUPT, "%s: %s: a record of %llu bytes where %u are committed", fn,
                   corrupt, (unsigned long long)(header & ~SPILLED), used);
}

/* Reads the record at head, of the bytes committed up to tail, and checks it (above): the
 * checks inline, since every get makes them, their sentence out of line. */
HOT int read_record(ring_t r, uint64_t head, uint64_t tail, uint64_t *header, spill_t *spill,
                    const char *fn) {
  uint32_t used = pos_bytes(tail) - pos_bytes(head), at = pos_bytes(head);
  bool sane = ring_sane(r) && used <= r.cap && used >= HEADER && at % 8 == 0;
  uint64_t len = 0;
  if (sane) {
    *header = header_read(r, at);
    len = *header & ~SPILLED;
    uint64_t body = *header & SPILLED ? sizeof *spill : len;
    sane = len < LEN_MAX && ((body + 7) & ~(uint64_t)7) <= used - HEADER;
  }
  if (sane && (*header & SPILLED)) {
    ring_read(r, at + HEADER, spill, sizeof *spill);
    sane = spill_sane(*spill, len);
  }
  return sane ? 0 : record_error(r, head, tail, fn);
}

/* Copies the ring's bytes [from, from + n) to the same positions of a larger ring. */
static void ring_move(ring_t to, ring_t from, uint32_t at, uint32_t n) {
  while (n) {
    uint32_t src = at & (from.cap - 1), dst = at & (to.cap - 1);
    uint32_t chunk = n;
    if (chunk > from.cap - src)
      chunk = from.cap - src;
    if (chunk > to.cap - dst)
      chunk = to.cap - dst;
    memcpy(to.base + dst, from.base + src, chunk);
    at += chunk;
    n -= chunk;
  }
}

/* ================================ misuse ================================ */

/*
 * Use after free. The handle is the same pointer in every process and other processes may
 * still hold the queue, so "freed" is per process: each process counts the references it
 * took (create, retain) and those its process objects hold for its children. A free that
 * leaves this process none, and leaves the queue no reference but those holds (so none is
 * on its way to this process from another), marks the queue in `marks`: its address, its
 * uid, and how many retains it had seen. A later call of this process on a marked queue
 * aborts with the call's name, unless a retain happened since (another process handing
 * this one a reference: how a handle comes back) or another queue lives at the address now.
 * A queue freed for good carries FREED_MAGIC until its block is reused: a call on it aborts
 * in any process. This detects misuse; it does not make it safe: a handle whose block holds
 * a new queue cannot be told from a live one.
 */
typedef struct {
  mp_queue_t *q;
  uint64_t uid;
  uint32_t count; /* references of this process */
  uint32_t holds; /* references its process objects hold for children */
} held_t;

static struct {
  pthread_mutex_t lock;
  held_t *held; /* the queues this process holds references to */
  size_t n, cap;
} mine = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};

/* Read without the lock on every call: q is stored last, after the fields it vouches for. */
static struct {
  _Atomic(mp_queue_t *) q;
  _Atomic uint64_t uid;
  _Atomic uint32_t retains;
} marks[N_MARKS];

static uint32_t unref(mp_queue_t *q);

static size_t mark_slot(const mp_queue_t *q) {
  return (size_t)(((uintptr_t)q >> 6) * 0x9e3779b97f4a7c15ull >> 56) % N_MARKS;
}

/* q's entry, added if missing (NULL if there is no memory: a miss, never a false alarm);
 * the caller holds mine.lock. */
static held_t *held_entry(mp_queue_t *q, bool add) {
  for (size_t i = 0; i < mine.n; i++)
    if (mine.held[i].q == q && mine.held[i].uid == q->uid)
      return &mine.held[i];
  if (!add)
    return NULL;
  if (mine.n == mine.cap) {
    size_t cap = mine.cap ? 2 * mine.cap : 16;
    held_t *grown = realloc(mine.held, cap * sizeof *grown);
    if (!grown)
      return NULL;
    mine.held = grown;
    mine.cap = cap;
  }
  mine.held[mine.n] = (held_t){q, q->uid, 0, 0};
  return &mine.held[mine.n++];
}

static void held_forget(held_t *h) {
  if (h->count == 0 && h->holds == 0)
    *h = mine.held[--mine.n];
}

/* This process took a reference (create, retain; hold: for a child): counted, and for its
 * own, any mark of q cleared. */
static void took_reference(mp_queue_t *q, bool hold) {
  pthread_mutex_lock(&mine.lock);
  held_t *h = held_entry(q, true);
  if (h && hold)
    h->holds++;
  else if (h)
    h->count++;
  if (!hold) {
    mp_queue_t *expected = q;
    atomic_compare_exchange_strong(&marks[mark_slot(q)].q, &expected, NULL);
  }
  pthread_mutex_unlock(&mine.lock);
}

/* Drops a reference of this process (or, hold, of a child's), marking q as above. */
static void drop_counted(mp_queue_t *q, bool hold) {
  pthread_mutex_lock(&mine.lock);
  uint64_t uid = q->uid;
  uint32_t retains = atomic_load(&q->retains);
  held_t *h = held_entry(q, false);
  uint32_t holds = h ? h->holds : 0;
  bool last = !hold && (!h || h->count <= 1);
  if (h && hold && h->holds)
    h->holds--;
  else if (h && !hold && h->count)
    h->count--;
  if (h)
    held_forget(h);
  uint32_t left = unref(q);
  if (last && left == holds) {
    size_t slot = mark_slot(q);
    atomic_store(&marks[slot].q, NULL);
    atomic_store(&marks[slot].uid, uid);
    atomic_store(&marks[slot].retains, retains);
    atomic_store(&marks[slot].q, q);
  }
  pthread_mutex_unlock(&mine.lock);
}

/* Aborts, naming fn, if this process uses q after it freed it (see above). freer: the free
 * function of fn's family. */
static void check_not_freed(const mp_queue_t *q, const char *fn, const char *freer) {
  if (!q || !mp__shared_contains(q) || !mp__shared_contains((const char *)q + sizeof *q - 1))
    return;
  bool freed = q->kind != MP__KIND_QUEUE && atomic_load(&q->freed) == FREED_MAGIC;
  size_t slot = mark_slot(q);
  if (!freed && atomic_load(&marks[slot].q) == q)
    freed = q->kind != MP__KIND_QUEUE ||
            (q->uid == atomic_load(&marks[slot].uid) &&
             atomic_load(&q->retains) == atomic_load(&marks[slot].retains));
  if (!freed)
    return;
  fprintf(stderr, "libmp: %s: queue handle used after %s\n", fn, freer);
  abort();
}

/* ================================ doorbells ================================ */

/* This process's doorbells, one per queue it polls. A forked child closes its copies: the
 * names belong to the parent. */
typedef struct bell_s {
  mp_queue_t *queue;
  uint64_t uid;
  uint64_t name;
  int fd;
  struct bell_s *next;
} bell_t;

static struct {
  pthread_mutex_t lock;
  bell_t *list;
  int sender; /* an unbound datagram socket that rings other processes' doorbells */
} local = {PTHREAD_MUTEX_INITIALIZER, NULL, -1};

#define BELL_NAME_ATTEMPTS 8

static socklen_t bell_address(uint64_t name, struct sockaddr_un *addr) {
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  /* Abstract namespace (sun_path[0] == 0): no file, gone with the last fd. */
  int n = snprintf(addr->sun_path + 1, sizeof addr->sun_path - 1, "libmp-bell-%016llx",
                   (unsigned long long)name);
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
}

/* The datagram that rings a doorbell: its key, big-endian as the filter loads words. */
static void bell_message(uint64_t key, unsigned char msg[8]) {
  for (int i = 0; i < 8; i++)
    msg[i] = (unsigned char)(key >> (56 - 8 * i));
}

/* Makes fd admit only datagrams of 8 bytes that are the key: the kernel drops the others
 * before they are queued, so they never make the fd readable. */
static int admit_only(int fd, uint64_t key) {
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 8, 0, 5),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 0),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)(key >> 32), 0, 3),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, 4),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (uint32_t)key, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, 8), /* keep the datagram */
      BPF_STMT(BPF_RET | BPF_K, 0), /* drop it */
  };
  struct sock_fprog prog = {sizeof code / sizeof code[0], code};
  return setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
}

/* 64 random bits, never 0. */
static int random_word(uint64_t *out) {
  do {
    if (getrandom(out, sizeof *out, 0) != (ssize_t)sizeof *out)
      return -1;
  } while (*out == 0);
  return 0;
}

static int sender_socket(void) {
  int fd = __atomic_load_n(&local.sender, __ATOMIC_ACQUIRE);
  if (fd >= 0)
    return fd;
  fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0)
    return -1;
  int expected = -1;
  if (!__atomic_compare_exchange_n(&local.sender, &expected, fd, false, __ATOMIC_ACQ_REL,
                                   __ATOMIC_ACQUIRE)) {
    close(fd); /* another thread made one first */
    return expected;
  }
  return fd;
}

static void unregister_bell(mp_queue_t *q, size_t slot, uint64_t name) {
  uint64_t expected = name;
  if (atomic_compare_exchange_strong(&q->bells[slot].name, &expected, 0))
    atomic_fetch_sub(&q->n_bells, 1);
}

/* Rings every registered doorbell, dropping those whose process is gone. */
static void ring_bells(mp_queue_t *q) {
  if (atomic_load(&q->n_bells) == 0)
    return;
  int sender = sender_socket();
  if (sender < 0)
    return; /* no socket to ring with: pollers time out or look again, as with a lost wake */
  for (size_t i = 0; i < N_BELLS; i++) {
    uint64_t name = atomic_load(&q->bells[i].name);
    if (name == 0)
      continue;
    /* A key read before its slot's new owner wrote it is dropped by the filter: that owner
     * looks at the queue after writing it (fileno_of()), so nothing is lost. */
    unsigned char msg[8];
    bell_message(atomic_load(&q->bells[i].key), msg);
    struct sockaddr_un addr;
    socklen_t len = bell_address(name, &addr);
    /* EAGAIN: its buffer is full of rings already, so it is readable: nothing lost. */
    if (sendto(sender, msg, sizeof msg, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&addr,
               len) < 0 &&
        (errno == ECONNREFUSED || errno == ENOENT))
      unregister_bell(q, i, name);
  }
}

/* Drops the doorbells of processes that have ended: where every slot is taken, including
 * those whose name another user may have bound since, which therefore never refuse a ring. */
static void drop_dead_bells(mp_queue_t *q) {
  for (size_t i = 0; i < N_BELLS; i++) {
    uint64_t name = atomic_load(&q->bells[i].name);
    pid_t pid = atomic_load(&q->bells[i].pid);
    if (name != 0 && pid > 0 && kill(pid, 0) < 0 && errno == ESRCH)
      unregister_bell(q, i, name);
  }
}

/* This process's doorbell for q, or NULL; the caller holds local.lock. Doorbells of freed
 * queues (another process released the last reference) are closed on the way. */
static bell_t *find_bell_locked(mp_queue_t *q) {
  for (bell_t **link = &local.list; *link;) {
    bell_t *b = *link;
    if (b->queue == q && b->uid == q->uid)
      return b;
    if (b->queue == q) { /* the same address, another queue */
      *link = b->next;
      close(b->fd);
      free(b);
      continue;
    }
    link = &b->next;
  }
  return NULL;
}

static void drain(int fd) {
  char buf[64];
  while (recv(fd, buf, sizeof buf, MSG_DONTWAIT) > 0) {
  }
}

/* Clears this process's doorbell of q, if it has one: before it looks at an empty queue
 * again, so that a put after that look rings it anew. */
static void clear_bell(mp_queue_t *q) {
  if (__atomic_load_n(&local.list, __ATOMIC_ACQUIRE) == NULL)
    return;
  pthread_mutex_lock(&local.lock);
  bell_t *b = find_bell_locked(q);
  if (b)
    drain(b->fd);
  pthread_mutex_unlock(&local.lock);
}

/* A socket bound to a random name that admits only key: the fd, or -errno. */
static int bind_bell(uint64_t key, uint64_t *name) {
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0 || admit_only(fd, key) < 0) {
    int err = -errno;
    if (fd >= 0)
      close(fd);
    return err;
  }
  /* A name that is taken (by chance, or bound first by someone who guessed it) is drawn
   * again. */
  for (int attempt = 0; attempt < BELL_NAME_ATTEMPTS; attempt++) {
    struct sockaddr_un addr;
    if (random_word(name) < 0)
      break;
    socklen_t len = bell_address(*name, &addr);
    if (bind(fd, (struct sockaddr *)&addr, len) == 0)
      return fd;
    if (errno != EADDRINUSE)
      break;
  }
  int err = -errno;
  close(fd);
  return err;
}

static int make_bell(mp_queue_t *q, bell_t **out) {
  bell_t *b = calloc(1, sizeof *b);
  if (!b)
    return mp__error(MP_ENOMEM, "mp_queue_fileno: out of memory");
  b->queue = q;
  b->uid = q->uid;
  uint64_t key = 0;
  b->fd = random_word(&key) < 0 ? -errno : bind_bell(key, &b->name);
  int rc = 0;
  if (b->fd < 0)
    rc = mp__error(b->fd, "mp_queue_fileno: making this process's doorbell: %s",
                   strerror(-b->fd));
  size_t slot = N_BELLS;
  for (size_t i = 0; rc == 0 && i < N_BELLS && slot == N_BELLS; i++) {
    uint64_t expected = 0;
    if (atomic_compare_exchange_strong(&q->bells[i].name, &expected, b->name))
      slot = i;
  }
  if (rc == 0 && slot == N_BELLS)
    rc = mp__error(MP_ENOMEM, "mp_queue_fileno: %d processes poll this queue already", N_BELLS);
  if (rc < 0) {
    if (b->fd >= 0)
      close(b->fd);
    free(b);
    return rc;
  }
  atomic_store(&q->bells[slot].key, key);
  atomic_store(&q->bells[slot].pid, (int32_t)getpid());
  atomic_fetch_add(&q->n_bells, 1);
  *out = b;
  return 0;
}

MP__CHILD_TEXT static void after_fork_child(void) {
  /* Always: fileno_of() holds the lock while the list is still empty. */
  mp__reset_lock(&local.lock);
  mp__reset_lock(&mine.lock);
  /* Only if there is something to forget: an untouched list costs the child no page copy. */
  if (local.list == NULL)
    return;
  for (bell_t *b = local.list, *next; b; b = next) {
    next = b->next;
    close(b->fd);
    free(b);
  }
  local.list = NULL;
}

/* Forgets this process's doorbell of q: unregistered and closed. */
static void drop_bell(mp_queue_t *q) {
  if (__atomic_load_n(&local.list, __ATOMIC_ACQUIRE) == NULL)
    return;
  pthread_mutex_lock(&local.lock);
  for (bell_t **link = &local.list; *link; link = &(*link)->next) {
    bell_t *b = *link;
    if (b->queue == q && b->uid == q->uid) {
      for (size_t i = 0; i < N_BELLS; i++)
        if (atomic_load(&q->bells[i].name) == b->name)
          unregister_bell(q, i, b->name);
      *link = b->next;
      close(b->fd);
      free(b);
      break;
    }
  }
  pthread_mutex_unlock(&local.lock);
}

/* ================================ handles ================================ */

static bool is_queue(const mp_queue_t *q) {
  return q && mp__shared_contains(q) && q->kind == MP__KIND_QUEUE;
}

/* The last queue address found wholly inside the arena: it stays inside, since a process's
 * arena never moves or shrinks, so its next check needs no look at the arena's bounds. */
static _Atomic(const mp_queue_t *) known_inside;

/* The common case of the checks below, on every put and get: a live queue of the flavor
 * wanted (simple or not), in the arena from its first byte to its last, not marked freed by
 * this process. Anything else takes the full path, which says what is wrong. */
HOT bool plainly_live(const mp_queue_t *q, bool simple) {
  if (!q)
    return false;
  if (q != atomic_load_explicit(&known_inside, memory_order_relaxed)) {
    if (!mp__shared_contains(q) || !mp__shared_contains((const char *)q + sizeof *q - 1))
      return false;
    atomic_store_explicit(&known_inside, q, memory_order_relaxed);
  }
  return q->kind == MP__KIND_QUEUE && (q->flavor == FLAVOR_SIMPLE) == simple &&
         atomic_load_explicit(&marks[mark_slot(q)].q, memory_order_relaxed) != q;
}

/* The full checks, which say what is wrong: the flavor wanted (simple or not). */
__attribute__((noinline)) static int check_handle(const mp_queue_t *q, bool simple,
                                                  const char *fn) {
  check_not_freed(q, fn, simple ? "mp_simple_queue_free" : "mp_queue_free");
  if (!is_queue(q) || (q->flavor == FLAVOR_SIMPLE) != simple)
    return mp__error(MP_EINVAL, "%s: not a %s", fn, simple ? "SimpleQueue" : "Queue");
  return 0;
}

HOT int check_queue(const mp_queue_t *q, const char *fn) {
  return plainly_live(q, false) ? 0 : check_handle(q, false, fn);
}

HOT int check_simple(const mp_simple_queue_t *sq, const char *fn) {
  const mp_queue_t *q = (const mp_queue_t *)sq; /* NULL stays NULL */
  return plainly_live(q, true) ? 0 : check_handle(q, true, fn);
}

/* ring_bytes 0: the default ring, which grows; else a ring of fixed size. */
static int create(mp_queue_t **out, flavor_t flavor, size_t maxsize, size_t ring_bytes) {
  if (!out)
    return mp__error(MP_EINVAL, "creating a queue: the handle pointer is NULL");
  bool grows = ring_bytes == 0;
  if (grows)
    ring_bytes = RING_DEFAULT;
  if (ring_bytes > RING_MAX)
    return mp__error(MP_EINVAL, "a queue's ring of %zu bytes is above %u", ring_bytes,
                     RING_MAX);
  uint32_t cap = RING_MIN;
  while (cap < ring_bytes)
    cap *= 2;
  void *head, *ring;
  int rc = mp__shared_alloc(&head, sizeof(mp_queue_t));
  if (rc == 0 && (rc = mp__shared_alloc_by(&ring, cap, MP__NO_DEADLINE)) < 0)
    mp__shared_release_sized(head, sizeof(mp_queue_t));
  if (rc < 0)
    return rc; /* the arena said why */
  mp_queue_t *q = head;
  q->flavor = flavor;
  q->ring_max = grows ? RING_MAX : cap;
  q->inline_max = cap / 8;
  q->maxsize = maxsize;
  q->uid = mp__shared_unique();
  q->ring_word = ring_word(ring, cap);
  q->refs = 1;
  q->kind = MP__KIND_QUEUE;
  took_reference(q, false);
  *out = q;
  return 0;
}

int mp_queue_create(mp_queue_t **queue, size_t maxsize) {
  return create(queue, FLAVOR_QUEUE, maxsize, 0);
}

int mp_queue_create_sized(mp_queue_t **queue, size_t maxsize, size_t ring_bytes) {
  return create(queue, FLAVOR_QUEUE, maxsize, ring_bytes);
}

int mp_joinable_queue_create(mp_queue_t **queue, size_t maxsize) {
  return create(queue, FLAVOR_JOINABLE, maxsize, 0);
}

int mp_simple_queue_create(mp_simple_queue_t **queue) {
  mp_queue_t *q = NULL;
  int rc = create(queue ? &q : NULL, FLAVOR_SIMPLE, 0, 0);
  if (rc == 0)
    *queue = (mp_simple_queue_t *)q;
  return rc;
}

/* ================================ locks and waits ================================ */

static void notify(_Atomic uint32_t *seq, _Atomic uint32_t *waiters, int count);
static void ring_bells(mp_queue_t *q);

/* After a death in a lock: the dead process may have committed and died before its wake-up,
 * so every sleeper and poller is woken to look again. */
static void wake_everyone(mp_queue_t *q) {
  notify(&q->put_seq, &q->get_waiters, INT32_MAX);
  notify(&q->get_seq, &q->put_waiters, INT32_MAX);
  notify(&q->join_seq, &q->join_waiters, INT32_MAX);
  ring_bells(q);
}

/* Takes put_lock (0, or MP_ETIMEDOUT past *d); after a producer died holding it, frees its
 * uncommitted block or ring. */
static int lock_put(mp_queue_t *q, mp__deadline_t *d) {
  int rc = mp__wlock_lock(&q->put_lock, d);
  if (rc != MP_EOWNERDEAD)
    return rc;
  /* Words of the arena too: one that names no block of it is dropped, not freed; a block is
   * freed by the size noted beside it, as every block of the queue (its header's class is
   * any process's to write). */
  spill_t pending = {q->pending, q->pending_room};
  if (spill_sane(pending, 0) && atomic_load(&q->tail) == q->pending_tail)
    mp__shared_release_sized_by(pending.block, pending.room, d);
  q->pending = NULL;
  uint64_t word = q->pending_ring;
  ring_t grown = ring_decode(word);
  if (grown.cap >= RING_MIN && mp__shared_is_block(grown.base, grown.cap) &&
      word != atomic_load(&q->ring_word))
    mp__shared_release_sized_by(grown.base, grown.cap, d);
  q->pending_ring = 0;
  wake_everyone(q);
  return 0;
}

/* Takes get_lock (0, or MP_ETIMEDOUT past *d). A consumer that died holding it never moved
 * head, or moved it and died before waking producers: nothing to repair but the wake. */
static int lock_get(mp_queue_t *q, mp__deadline_t *d) {
  int rc = mp__wlock_lock(&q->get_lock, d);
  if (rc != MP_EOWNERDEAD)
    return rc;
  wake_everyone(q);
  return 0;
}

typedef bool (*ready_fn)(mp_queue_t *q, size_t need);

static bool has_message(mp_queue_t *q, size_t need) {
  (void)need;
  return count_of(atomic_load(&q->head), atomic_load(&q->tail)) != 0 || atomic_load(&q->closed);
}

static bool at_maxsize(mp_queue_t *q) {
  return q->maxsize && count_of(atomic_load(&q->head), atomic_load(&q->tail)) >= q->maxsize;
}

/* Whether need bytes and one more message fit between head and tail in a ring of cap
 * bytes. Wild words (more bytes committed than the ring holds) make no room: a put that
 * holds the lock tells them apart (room_locked). */
static bool fits(const mp_queue_t *q, uint64_t head, uint64_t tail, size_t need, uint32_t cap) {
  if (q->maxsize && count_of(head, tail) >= q->maxsize)
    return false;
  uint32_t used = pos_bytes(tail) - pos_bytes(head);
  return used <= cap && cap - used >= need;
}

static bool has_room(mp_queue_t *q, size_t need) {
  uint64_t head = atomic_load(&q->head), tail = atomic_load(&q->tail);
  return atomic_load(&q->closed) || fits(q, head, tail, need, ring_of(q).cap);
}

/* has_room() for the holder of put_lock, with tail read: judged first by head_seen, which
 * is older than head and so never shows more room than there is, and by head itself only if
 * that says no. head is the consumers' line: reading it on every put would move it. */
__attribute__((noinline, cold)) static int committed_error(uint32_t used, uint32_t cap,
                                                           const char *fn) {
  return mp__error(MP_ECORRUPT,
                   "%s: the queue's shared memory is corrupt: %u bytes committed in a ring of %u",
                   fn, used, cap);
}

HOT int room_locked(mp_queue_t *q, ring_t r, uint64_t tail, size_t need, const char *fn) {
  if (fits(q, atomic_load_explicit(&q->head_seen, memory_order_relaxed), tail, need, r.cap))
    return 1;
  uint64_t head = atomic_load(&q->head);
  atomic_store_explicit(&q->head_seen, head, memory_order_relaxed);
  uint32_t used = pos_bytes(tail) - pos_bytes(head);
  if (used > r.cap) /* no room would ever come: say so rather than wait */
    return committed_error(used, r.cap, fn);
  return fits(q, head, tail, need, r.cap);
}

/* The ring a put writes to (put_lock held), believed as a get believes it (read_record): in
 * the arena, and able to hold the record at all (an inline message is at most an eighth of
 * the first ring, unless the queue's own words are wild). */
static int put_ring(mp_queue_t *q, uint64_t header, ring_t *r, const char *fn) {
  uint64_t word = atomic_load(&q->ring_word);
  *r = ring_decode(word);
  const char *corrupt = "the queue's shared memory is corrupt";
  /* The ring known sane is told by its word, with no bounds to look at (ring_sane). */
  if (word != atomic_load_explicit(&ring_known, memory_order_relaxed) && !ring_sane(*r))
    return mp__error(MP_ECORRUPT,
                     "%s: %s: its ring of %u bytes at %p is not a block of the arena", fn,
                     corrupt, r->cap, (void *)r->base);
  if (!(header & SPILLED) && header_len(header) > r->cap)
    return mp__error(MP_ECORRUPT, "%s: %s: a message of %zu bytes kept whole in a ring of %u",
                     fn, corrupt, header_len(header), r->cap);
  return 0;
}

static bool tasks_done(mp_queue_t *q, size_t need) {
  (void)need;
  return pos_msgs(atomic_load(&q->tail)) == atomic_load(&q->done);
}

/* Takes one off a waiter count, never below 0 (notify() may have taken it already). */
static void leave(_Atomic uint32_t *waiters) {
  uint32_t n = atomic_load(waiters);
  while (n != 0 && !atomic_compare_exchange_weak(waiters, &n, n - 1)) {
  }
}

/*
 * Waits until ready(q, need) or the deadline: spins a few microseconds (the other side is
 * often about to commit), then sleeps on *seq, counted in *waiters so that the other side
 * makes a futex call only when someone sleeps. The sleep lasts SLEEP_SLICE_NS at most: a
 * process killed between its commit and its wake-up leaves the sleeper to find the commit
 * by itself. 0 (look again), MP_ETIMEDOUT, or MP_EINTR once SIGINT arrived (signals.c;
 * *sigint is begun at the first sleep, so a call that does not block makes no system call).
 */
static int wait_until(mp_queue_t *q, ready_fn ready, size_t need, _Atomic uint32_t *seq,
                      _Atomic uint32_t *waiters, int64_t deadline, mp__sigint_t *sigint) {
  int64_t spin_end = mp__now_ns() + SPIN_NS;
  for (int i = 1;; i++) {
    if (ready(q, need))
      return 0;
    if (!mp__spin(i, spin_end, mp__one_cpu()))
      break;
  }
  if (!sigint->counter)
    mp__sigint_begin(sigint);
  uint32_t seen = atomic_load(seq);
  atomic_fetch_add(waiters, 1);
  int64_t slice = mp__now_ns() + SLEEP_SLICE_NS;
  int rc = ready(q, need) ? 0 : mp__futex_wait_sig(seq, seen, slice < deadline ? slice : deadline);
  leave(waiters);
  if (rc == MP_EINTR)
    return mp__sigint_arrived(sigint) ? MP_EINTR : 0;
  return rc == MP_ETIMEDOUT && slice < deadline ? 0 : rc;
}

/* Wakes sleepers on seq, if any. A count left by a sleeper killed in its sleep would make
 * every commit pay a futex call for ever: a wake that finds nobody takes one off. */
static void notify(_Atomic uint32_t *seq, _Atomic uint32_t *waiters, int count) {
  if (atomic_load(waiters) == 0)
    return;
  atomic_fetch_add(seq, 1);
  if (mp__futex_wake(seq, count) == 0)
    leave(waiters);
}

static bool passed(int64_t deadline) {
  return deadline != INT64_MAX && mp__now_ns() >= deadline;
}

/* A put or get that waited for a side's lock past its timeout: its holder is alive, and
 * stopped (SIGSTOP, a debugger), slow (a copy of many megabytes), or a word another process
 * forged. The call's timeout error, as Python's queue.Full and queue.Empty for its own lock
 * waits. */
__attribute__((noinline, cold)) static int lock_timed_out(int code, const char *side,
                                                          const char *fn) {
  return mp__error(code, "%s: a live process held the queue's %s lock past the timeout", fn,
                   side);
}

/* ================================ put ================================ */

/*
 * Makes room for need more bytes, where maxsize allows a message the ring's bytes do not
 * hold, by moving the records to a ring of twice the size or more (up to ring_max), so that a
 * queue is bounded by maxsize, as in Python, not by its first ring. The caller holds
 * put_lock; get_lock keeps consumers out while the records move. The new ring is noted in
 * pending_ring first and installed by one store, so a producer dying here leaves either
 * ring whole (and at worst the old one unfreed). 0 (grown, or room was made meanwhile),
 * MP_ENOMEM (the arena is full: it said why), MP_EFULL (the arena's lock held past *d: said)
 * or MP_ETIMEDOUT (get_lock held past *d).
 */
static int put_block(size_t len, mp__deadline_t *d, const char *fn, void **out);

static int grow_ring(mp_queue_t *q, ring_t *ring, uint32_t need, mp__deadline_t *d,
                     const char *fn) {
  int rc = lock_get(q, d);
  if (rc < 0)
    return rc;
  ring_t old = *ring; /* checked by put_ring: the word is not read again */
  uint64_t head = atomic_load(&q->head), tail = atomic_load(&q->tail);
  uint32_t used = pos_bytes(tail) - pos_bytes(head), cap = old.cap;
  while (used <= cap && cap - used < need && cap < q->ring_max)
    cap *= 2;
  /* Else room was made meanwhile, or the largest ring has too little: the put waits. */
  bool larger = cap != old.cap && cap - used >= need;
  void *base = NULL;
  int made = larger ? put_block(cap, d, fn, &base) : 0;
  if (base) {
    uint64_t word = ring_word(base, cap);
    q->pending_ring = word;
    ring_move((ring_t){base, cap}, old, pos_bytes(head), used);
    atomic_store(&q->ring_word, word);
    q->pending_ring = 0;
    mp__shared_release_sized_by(old.base, old.cap, d);
    *ring = (ring_t){base, cap};
  }
  mp__wlock_unlock(&q->get_lock);
  return made;
}

/*
 * Spare blocks. The arena hands out the block freed last, so a spill used to copy into the
 * very block the consumer had just read: on two CPUs every line written was still in the
 * consumer's cache and was pulled back across (1 MiB messages took 1.4 times a bare ring of
 * slots, which writes a slot read a ring earlier). So a consumer keeps the blocks it is done
 * with in the queue's ring of N_SPARES, and a producer takes the oldest once SPARES_KEPT
 * wait: the block it writes was read SPARES_KEPT messages earlier, and a spill takes the
 * arena's lock neither to allocate nor to free. Blocks above SPARE_ROOM_MAX are not kept
 * (from 8 MiB a freed block gives its pages back), so a queue holds 16 MiB of spares at
 * most. A block changes hands by one store of spares_in or spares_out after its slot is
 * written or read: a process killed around it leaks the block at worst, never frees it
 * twice.
 *
 * A producer empties the slot it takes before its store of spares_out. The slot is its own
 * until that store (a consumer fills slot spares_in only while fewer than N_SPARES wait, so
 * never the one at spares_out), so emptying it races with nobody; emptying it after the
 * store raced with the consumer refilling it. A slot left full named a block that was
 * already a message's, or freed and handed to another object: spares_out written back by
 * one (its word is any process's to write) made the next spilled put copy its message there,
 * and the last free release it (test_forged_spare_counter). An empty slot is passed over: a
 * producer killed between the two stores leaves one, and leaks the block it took.
 */

/* A raw block of len bytes for a put, the arena's lock waited for until the put's deadline:
 * 0, MP_ENOMEM or MP_ECORRUPT (the arena said why) or MP_EFULL (a live process held the
 * arena's lock). */
static int put_block(size_t len, mp__deadline_t *d, const char *fn, void **out) {
  int rc = mp__shared_alloc_by(out, len, d);
  return rc == MP_ETIMEDOUT ? mp__error_prefix(MP_EFULL, "%s", fn) : rc;
}

static int new_block(size_t len, mp__deadline_t *d, const char *fn, spill_t *out) {
  *out = (spill_t){NULL, len};
  return put_block(len, d, fn, &out->block);
}

/* A block for a spilled message of len bytes, and its room: the oldest spare once
 * SPARES_KEPT wait (given back if it is too small), else a new one. The caller holds
 * put_lock. */
static int spill_block(mp_queue_t *q, size_t len, mp__deadline_t *d, const char *fn,
                       spill_t *out) {
  uint32_t taken = atomic_load_explicit(&q->spares_out, memory_order_relaxed);
  if (atomic_load(&q->spares_in) - taken >= SPARES_KEPT) {
    spill_t spare = {q->spare[taken % N_SPARES].block, q->spare[taken % N_SPARES].room};
    q->spare[taken % N_SPARES].block = NULL;
    /* Ours from this store on (a wild slot is dropped, not freed: it is no block). */
    atomic_store(&q->spares_out, taken + 1);
    if (!spare.block) /* emptied by a producer that died before this store */
      return new_block(len, d, fn, out);
    if (!spill_sane(spare, 0))
      return mp__error(MP_ECORRUPT,
                       "%s: the queue's shared memory is corrupt: a spare block of %llu bytes "
                       "at %p is not a block of the arena",
                       fn, (unsigned long long)spare.room, spare.block);
    if (spare.room >= len) {
      *out = spare;
      return 0;
    }
    mp__shared_release_sized_by(spare.block, spare.room, d);
  }
  return new_block(len, d, fn, out);
}

/* Writes the message at tail and commits it; the caller holds put_lock and has checked the
 * room. */
static int commit_put(mp_queue_t *q, ring_t r, uint64_t tail, uint64_t header, const void *data,
                      mp__deadline_t *d, const char *fn) {
  uint32_t at = pos_bytes(tail);
  size_t len = header_len(header);
  if (header & SPILLED) {
    spill_t spill;
    int rc = spill_block(q, len, d, fn, &spill);
    if (rc < 0)
      return rc;
    q->pending_tail = tail;
    q->pending_room = spill.room;
    atomic_signal_fence(memory_order_seq_cst); /* the block last: the repair believes it */
    q->pending = spill.block;
    memcpy(spill.block, data, len);
    ring_write(r, at + HEADER, &spill, sizeof spill);
  } else if (len) {
    ring_write(r, at + HEADER, data, len);
  }
  header_write(r, at, header);
  /* The commit: one store, after every byte is in place. */
  atomic_store(&q->tail, pos_make(pos_msgs(tail) + 1, at + record_size(header)));
  q->pending = NULL;
  return 0;
}

static int put(mp_queue_t *q, const void *data, size_t len, double timeout, const char *fn) {
  if (!data && len)
    return mp__error(MP_EINVAL, "%s: data is NULL", fn);
  if (len >= LEN_MAX)
    return mp__error(MP_EMSGSIZE, "%s: a message of %zu bytes", fn, len);
  /* Decided once: the record sized for the room is the record written. */
  uint64_t header = header_for(q, len);
  uint32_t need = record_size(header);
  MP__TRACE_CLOCK(t0);
  mp__sigint_t sigint = {NULL, 0};
  mp__deadline_t deadline = {timeout, MP__DEADLINE_UNSET};
  for (;;) {
    int rc = lock_put(q, &deadline);
    if (rc < 0)
      return lock_timed_out(MP_EFULL, "put", fn);
    if (atomic_load(&q->closed)) {
      mp__wlock_unlock(&q->put_lock);
      return mp__error(MP_ECLOSED, "%s: the queue is closed", fn);
    }
    uint64_t tail = atomic_load(&q->tail);
    ring_t r;
    rc = put_ring(q, header, &r, fn);
    int room = rc < 0 ? rc : room_locked(q, r, tail, need, fn);
    if (room == 0 && !at_maxsize(q) && r.cap < q->ring_max) {
      int grown = grow_ring(q, &r, need, &deadline, fn);
      room = grown < 0 ? grown : room_locked(q, r, tail, need, fn);
    }
    rc = room < 0 ? room : 1;
    if (room > 0)
      rc = commit_put(q, r, tail, header, data, &deadline, fn);
    mp__wlock_unlock(&q->put_lock);
    if (rc == MP_ETIMEDOUT)
      return lock_timed_out(MP_EFULL, "get", fn);
    if (rc < 0)
      return rc;
    if (rc == 0) {
      MP__TRACE(queue_put, q, len, t0);
      notify(&q->put_seq, &q->get_waiters, 1);
      /* Loaded after the commit: a consumer that saw the queue empty, then cleared its
       * doorbell, looked before this put, so this put sees what it saw. A head past the old
       * tail (a consumer took this message already) counts as empty too. */
      if (atomic_load(&q->n_bells) != 0 &&
          (int32_t)(pos_msgs(tail) - pos_msgs(atomic_load(&q->head))) <= 0)
        ring_bells(q);
      return 0;
    }
    int64_t end = mp__deadline_of(&deadline);
    int waited =
        passed(end) ? MP_ETIMEDOUT
                    : wait_until(q, has_room, need, &q->get_seq, &q->put_waiters, end, &sigint);
    if (waited == MP_EINTR && !has_room(q, need))
      return mp__error(MP_EINTR, "%s: interrupted by SIGINT", fn);
    if (waited == MP_ETIMEDOUT && !has_room(q, need))
      return mp__error(MP_EFULL, "%s: the queue is full", fn);
  }
}

int mp_queue_put(mp_queue_t *queue, const void *data, size_t len, double timeout) {
  int rc = check_queue(queue, "mp_queue_put");
  return rc < 0 ? rc : put(queue, data, len, timeout, "mp_queue_put");
}

int mp_queue_put_nowait(mp_queue_t *queue, const void *data, size_t len) {
  return mp_queue_put(queue, data, len, 0);
}

int mp_simple_queue_put(mp_simple_queue_t *queue, const void *data, size_t len) {
  int rc = check_simple(queue, "mp_simple_queue_put");
  return rc < 0 ? rc : put(&queue->queue, data, len, MP_FOREVER, "mp_simple_queue_put");
}

/* ================================ get ================================ */

/* Where get puts the message: the caller's buffer, or one it allocates. */
typedef struct {
  void *buf;
  size_t cap;
  size_t *len;
  void **alloc;
} sink_t;

/* Keeps the block of the spilled message the last get took as a spare, or frees it, if that
 * get committed; the caller holds get_lock (or the last reference). Cleared before: a death
 * in between leaks the block rather than freeing it twice. */
__attribute__((noinline)) static void reclaim_block(mp_queue_t *q, mp__deadline_t *d) {
  spill_t spill = {q->retired, q->retired_room};
  bool committed = atomic_load(&q->head) == q->retired_head;
  q->retired = NULL;
  if (!committed || !spill_sane(spill, 0)) /* a wild word is no block to free */
    return;
  uint32_t kept = atomic_load_explicit(&q->spares_in, memory_order_relaxed);
  if (spill.room > SPARE_ROOM_MAX || kept - atomic_load(&q->spares_out) >= N_SPARES) {
    mp__shared_release_sized_by(spill.block, spill.room, d);
    return;
  }
  q->spare[kept % N_SPARES].block = spill.block;
  q->spare[kept % N_SPARES].room = spill.room;
  atomic_store(&q->spares_in, kept + 1); /* the producers' from this store on */
}

HOT void reclaim(mp_queue_t *q, mp__deadline_t *d) {
  if (q->retired)
    reclaim_block(q, d);
}

/* Takes the message at head, if there is one; the caller holds get_lock. 1: none. */
static int take(mp_queue_t *q, const sink_t *out, mp__deadline_t *d, const char *fn) {
  reclaim(q, d);
  /* tail_seen first, as head_seen in a put: tail is the producers' line. */
  uint64_t head = atomic_load(&q->head);
  uint64_t tail = atomic_load_explicit(&q->tail_seen, memory_order_relaxed);
  if ((int32_t)(pos_msgs(tail) - pos_msgs(head)) <= 0) {
    tail = atomic_load(&q->tail);
    atomic_store_explicit(&q->tail_seen, tail, memory_order_relaxed);
    if (count_of(head, tail) == 0)
      return 1;
  }
  ring_t r = ring_of(q);
  uint32_t at = pos_bytes(head);
  uint64_t header = 0; /* set by read_record (gcc cannot see it) */
  spill_t spill;
  int rc = read_record(r, head, tail, &header, &spill, fn);
  if (rc < 0)
    return rc;
  size_t len = header_len(header);
  void *dst = out->buf;
  if (out->alloc) {
    dst = malloc(len ? len : 1);
    if (!dst)
      return mp__error(MP_ENOMEM, "%s: no memory for a message of %zu bytes", fn, len);
  } else if (len > out->cap) {
    *out->len = len;
    return mp__error(MP_ETOOSMALL, "%s: the message has %zu bytes, the buffer %zu", fn, len,
                     out->cap);
  }
  uint64_t next = pos_make(pos_msgs(head) + 1, at + record_size(header));
  if (header & SPILLED) {
    memcpy(dst, spill.block, len);
    q->retired_head = next;
    q->retired_room = spill.room;
    atomic_signal_fence(memory_order_seq_cst); /* the block last: the next get believes it */
    q->retired = spill.block;
  } else if (len) {
    ring_read(r, at + HEADER, dst, len);
  }
  *out->len = len;
  if (out->alloc)
    *out->alloc = dst;
  /* The commit: one store, after the copy, and the last step of the get (see the top). */
  atomic_store(&q->head, next);
  return 0;
}

static int get(mp_queue_t *q, const sink_t *out, double timeout, const char *fn) {
  if (!out->len || (!out->alloc && !out->buf && out->cap))
    return mp__error(MP_EINVAL, "%s: NULL buffer or length", fn);
  MP__TRACE_CLOCK(t0);
  mp__sigint_t sigint = {NULL, 0};
  mp__deadline_t deadline = {timeout, MP__DEADLINE_UNSET};
  for (bool cleared = false;;) {
    int rc = lock_get(q, &deadline);
    if (rc < 0)
      return lock_timed_out(MP_EEMPTY, "get", fn);
    rc = take(q, out, &deadline, fn);
    mp__wlock_unlock(&q->get_lock);
    if (rc == 0) {
      MP__TRACE(queue_get, q, *out->len, t0);
      notify(&q->get_seq, &q->put_waiters, INT32_MAX);
      return 0;
    }
    if (rc == MP_ETOOSMALL || rc == MP_ENOMEM) /* the wake this message brought is passed on */
      notify(&q->put_seq, &q->get_waiters, 1);
    if (rc < 0)
      return rc;
    /* Closed: final once put_lock is seen free after closed was (a put that takes it later
     * finds closed and refuses), and then the queue empty. In that order: a put that found
     * the queue open and committed between a look at the count and one at the lock would be
     * lost. Held, a put that found the queue open may still commit: waited for within the
     * get's deadline, a dead one taken over. */
    if (atomic_load(&q->closed)) {
      if (atomic_load(&q->put_lock.word) != 0) {
        if (lock_put(q, &deadline) < 0)
          return lock_timed_out(MP_EEMPTY, "put", fn);
        mp__wlock_unlock(&q->put_lock);
        continue;
      }
      if (count_of(atomic_load(&q->head), atomic_load(&q->tail)) != 0)
        continue;
      return mp__error(MP_ECLOSED, "%s: the queue is closed and empty", fn);
    }
    if (!cleared) {
      clear_bell(q);
      cleared = true;
      continue;
    }
    int64_t end = mp__deadline_of(&deadline);
    int waited =
        passed(end) ? MP_ETIMEDOUT
                    : wait_until(q, has_message, 0, &q->put_seq, &q->get_waiters, end, &sigint);
    if (waited == MP_EINTR && !has_message(q, 0))
      return mp__error(MP_EINTR, "%s: interrupted by SIGINT", fn);
    if (waited == MP_ETIMEDOUT && !has_message(q, 0))
      return mp__error(MP_EEMPTY, "%s: the queue is empty", fn);
  }
}

int mp_queue_get(mp_queue_t *queue, void *buf, size_t cap, size_t *len, double timeout) {
  int rc = check_queue(queue, "mp_queue_get");
  sink_t out = {buf, cap, len, NULL};
  return rc < 0 ? rc : get(queue, &out, timeout, "mp_queue_get");
}

int mp_queue_get_nowait(mp_queue_t *queue, void *buf, size_t cap, size_t *len) {
  return mp_queue_get(queue, buf, cap, len, 0);
}

int mp_queue_get_alloc(mp_queue_t *queue, void **buf, size_t *len, double timeout) {
  int rc = check_queue(queue, "mp_queue_get_alloc");
  if (rc == 0 && !buf)
    rc = mp__error(MP_EINVAL, "mp_queue_get_alloc: buf is NULL");
  sink_t out = {NULL, 0, len, buf};
  return rc < 0 ? rc : get(queue, &out, timeout, "mp_queue_get_alloc");
}

int mp_simple_queue_get(mp_simple_queue_t *queue, void *buf, size_t cap, size_t *len) {
  int rc = check_simple(queue, "mp_simple_queue_get");
  sink_t out = {buf, cap, len, NULL};
  return rc < 0 ? rc : get(&queue->queue, &out, MP_FOREVER, "mp_simple_queue_get");
}

int mp_simple_queue_get_alloc(mp_simple_queue_t *queue, void **buf, size_t *len) {
  int rc = check_simple(queue, "mp_simple_queue_get_alloc");
  if (rc == 0 && !buf)
    rc = mp__error(MP_EINVAL, "mp_simple_queue_get_alloc: buf is NULL");
  sink_t out = {NULL, 0, len, buf};
  return rc < 0 ? rc : get(&queue->queue, &out, MP_FOREVER, "mp_simple_queue_get_alloc");
}

/* ================================ state ================================ */

static uint32_t count(mp_queue_t *q) {
  return count_of(atomic_load(&q->head), atomic_load(&q->tail));
}

int mp_queue_qsize(mp_queue_t *queue) {
  int rc = check_queue(queue, "mp_queue_qsize");
  if (rc < 0)
    return rc;
  uint32_t n = count(queue);
  return n > INT32_MAX ? INT32_MAX : (int)n;
}

int mp_queue_empty(mp_queue_t *queue) {
  int rc = check_queue(queue, "mp_queue_empty");
  return rc < 0 ? rc : count(queue) == 0;
}

int mp_simple_queue_empty(mp_simple_queue_t *queue) {
  int rc = check_simple(queue, "mp_simple_queue_empty");
  return rc < 0 ? rc : count(&queue->queue) == 0;
}

int mp_queue_full(mp_queue_t *queue) {
  int rc = check_queue(queue, "mp_queue_full");
  return rc < 0 ? rc : queue->maxsize != 0 && count(queue) >= queue->maxsize;
}

/* Waits for nothing: a put in progress, which found the queue open, may commit after this;
 * the gets of the drained queue wait for it before they say closed (get). */
static int close_queue(mp_queue_t *q) {
  atomic_store(&q->closed, 1);
  notify(&q->put_seq, &q->get_waiters, INT32_MAX);
  notify(&q->get_seq, &q->put_waiters, INT32_MAX);
  ring_bells(q);
  return 0;
}

int mp_queue_close(mp_queue_t *queue) {
  int rc = check_queue(queue, "mp_queue_close");
  return rc < 0 ? rc : close_queue(queue);
}

int mp_simple_queue_close(mp_simple_queue_t *queue) {
  int rc = check_simple(queue, "mp_simple_queue_close");
  return rc < 0 ? rc : close_queue(&queue->queue);
}

/* ================================ JoinableQueue ================================ */

static int check_joinable(mp_queue_t *q, const char *fn) {
  check_not_freed(q, fn, "mp_queue_free");
  if (!is_queue(q) || q->flavor != FLAVOR_JOINABLE)
    return mp__error(MP_EINVAL, "%s: not a JoinableQueue", fn);
  return 0;
}

int mp_queue_task_done(mp_queue_t *queue) {
  int rc = check_joinable(queue, "mp_queue_task_done");
  if (rc < 0)
    return rc;
  /* Unfinished tasks are the messages ever put (tail's count) less those done: one source
   * of truth, so a producer dying between its commit and a second counter cannot skew it. */
  uint32_t done = atomic_load(&queue->done), put_count;
  do {
    put_count = pos_msgs(atomic_load(&queue->tail));
    if (put_count == done)
      return mp__error(MP_ETOOMANY, "mp_queue_task_done: called more times than items put");
  } while (!atomic_compare_exchange_weak(&queue->done, &done, done + 1));
  if (done + 1 == put_count)
    notify(&queue->join_seq, &queue->join_waiters, INT32_MAX);
  return 0;
}

int mp_queue_join(mp_queue_t *queue, double timeout) {
  int rc = check_joinable(queue, "mp_queue_join");
  if (rc < 0)
    return rc;
  int64_t deadline = mp__deadline(timeout);
  mp__sigint_t sigint = {NULL, 0};
  while (!tasks_done(queue, 0)) {
    int waited = passed(deadline) ? MP_ETIMEDOUT
                                  : wait_until(queue, tasks_done, 0, &queue->join_seq,
                                               &queue->join_waiters, deadline, &sigint);
    if (waited == MP_EINTR && !tasks_done(queue, 0))
      return mp__error(MP_EINTR, "mp_queue_join: interrupted by SIGINT");
    if (waited == MP_ETIMEDOUT && !tasks_done(queue, 0))
      return mp__error(MP_ETIMEDOUT, "mp_queue_join: tasks are still unfinished");
  }
  return 0;
}

/* ================================ readiness ================================ */

static int fileno_of(mp_queue_t *q) {
  pthread_mutex_lock(&local.lock);
  bell_t *b = find_bell_locked(q);
  int rc = 0;
  if (!b) {
    rc = make_bell(q, &b);
    if (rc == MP_ENOMEM && atomic_load(&q->n_bells) >= N_BELLS) {
      ring_bells(q); /* the doorbells of dead processes refuse it, and make room */
      drop_dead_bells(q);
      rc = make_bell(q, &b);
    }
    if (rc == 0) {
      b->next = local.list;
      __atomic_store_n(&local.list, b, __ATOMIC_RELEASE);
      /* Messages put before the doorbell existed rang nothing: ring it ourselves. */
      if (has_message(q, 0))
        ring_bells(q);
    }
  }
  pthread_mutex_unlock(&local.lock);
  return rc < 0 ? rc : b->fd;
}

int mp_queue_fileno(mp_queue_t *queue) {
  int rc = check_queue(queue, "mp_queue_fileno");
  return rc < 0 ? rc : fileno_of(queue);
}

int mp_simple_queue_fileno(mp_simple_queue_t *queue) {
  int rc = check_simple(queue, "mp_simple_queue_fileno");
  return rc < 0 ? rc : fileno_of(&queue->queue);
}

/* mp_wait(): ready when a get would not wait (a message, or closed). The doorbell is
 * cleared before the look, so a put after it rings again. */
static int waitable_ready(void *obj) {
  mp_queue_t *q = obj;
  check_not_freed(q, "mp_wait", "mp_queue_free");
  if (!is_queue(q))
    return mp__error(MP_EINVAL, "mp_wait: not a queue");
  clear_bell(q);
  return has_message(q, 0);
}

static int waitable_poll_fd(void *obj) {
  mp_queue_t *q = obj;
  check_not_freed(q, "mp_wait", "mp_queue_free");
  if (!is_queue(q))
    return mp__error(MP_EINVAL, "mp_wait: not a queue");
  return fileno_of(q);
}

static const mp__waitable_ops_t queue_waitable = {waitable_ready, waitable_poll_fd};

/* ================================ lifetime ================================ */

static void retain(mp_queue_t *q) {
  atomic_fetch_add(&q->refs, 1);
  atomic_fetch_add(&q->retains, 1);
}

/* This process's retain: counted as its own reference. */
static int retain_here(mp_queue_t *q) {
  retain(q);
  took_reference(q, false);
  return 0;
}

/* Drops a reference; the number left. This process's doorbell is the caller's business. */
static uint32_t unref(mp_queue_t *q) {
  uint32_t left = atomic_fetch_sub(&q->refs, 1) - 1;
  if (left != 0)
    return left;
  /* The last reference: nobody else may touch it. Free the block of a producer that died
   * in a put (the repair of lock_put), then those of the spilled messages left. A live
   * holder uses a handle it holds no reference to: it is judged for one slice, not waited
   * for (its block, if it spilled, is left to it). */
  mp__deadline_t now = {0, MP__DEADLINE_UNSET};
  if (lock_put(q, &now) == 0)
    mp__wlock_unlock(&q->put_lock);
  reclaim(q, MP__NO_DEADLINE);
  ring_t r = ring_of(q);
  uint64_t head = atomic_load(&q->head), tail = atomic_load(&q->tail);
  uint64_t header = 0;
  spill_t spill;
  /* A corrupt record ends the walk: the blocks it hides are lost, rather than freed wild. */
  while (count_of(head, tail) != 0 &&
         read_record(r, head, tail, &header, &spill, "mp_queue_free") == 0) {
    if (header & SPILLED)
      mp__shared_release_sized(spill.block, spill.room);
    head = pos_make(pos_msgs(head) + 1, pos_bytes(head) + record_size(header));
  }
  uint32_t out = atomic_load(&q->spares_out), in = atomic_load(&q->spares_in);
  for (; in - out <= N_SPARES && out != in; out++) {
    spill_t spare = {q->spare[out % N_SPARES].block, q->spare[out % N_SPARES].room};
    if (spill_sane(spare, 0))
      mp__shared_release_sized(spare.block, spare.room);
  }
  if (ring_sane(r))
    mp__shared_release_sized(r.base, r.cap);
  q->kind = 0;
  atomic_store(&q->freed, FREED_MAGIC); /* a later use aborts until the block is reused */
  mp__shared_release_sized(q, sizeof *q);
  return 0;
}

static int drop_reference(mp_queue_t *q) {
  drop_bell(q);
  drop_counted(q, false);
  return 0;
}

static void hold_retain(void *obj) {
  retain(obj);
  took_reference(obj, true);
}

static void hold_release(void *obj) {
  drop_counted(obj, true);
}

/* The argument scan's pass(): a child given the handle holds a reference through its
 * process object until it is reaped, so the parent may free its own at once, as in Python.
 * A word that only looks like a queue is refused here. */
static int pass_queue(void *obj, mp_process_t *proc) {
  mp_queue_t *q = obj;
  if (!is_queue(q) || !mp__shared_contains((char *)q + sizeof *q - 1) ||
      atomic_load(&q->refs) == 0)
    return mp__error(MP_EINVAL, "passing a queue to a child: %p is not a queue", obj);
  return mp__process_hold_ref(proc, q, hold_retain, hold_release);
}

_Static_assert(sizeof((mp__queue_words_t *)0)->spare == sizeof((mp_queue_t *)0)->spare,
               "the fuzzer's words hold every spare");

void mp__queue_words(mp_queue_t *q, mp__queue_words_t *read, const mp__queue_words_t *write) {
  if (read) {
    read->ring_word = atomic_load(&q->ring_word);
    read->head = atomic_load(&q->head);
    read->tail = atomic_load(&q->tail);
    read->tail_seen = atomic_load(&q->tail_seen);
    read->retired = q->retired;
    read->retired_head = q->retired_head;
    read->retired_room = q->retired_room;
    read->spares_in = atomic_load(&q->spares_in);
    read->spares_out = atomic_load(&q->spares_out);
    read->closed = atomic_load(&q->closed);
    memcpy(read->spare, q->spare, sizeof q->spare);
  }
  if (write) {
    atomic_store(&q->ring_word, write->ring_word);
    atomic_store(&q->head, write->head);
    atomic_store(&q->tail, write->tail);
    atomic_store(&q->tail_seen, write->tail_seen);
    q->retired = write->retired;
    q->retired_head = write->retired_head;
    q->retired_room = write->retired_room;
    atomic_store(&q->spares_in, write->spares_in);
    atomic_store(&q->spares_out, write->spares_out);
    atomic_store(&q->closed, write->closed);
    memcpy(q->spare, write->spare, sizeof q->spare);
  }
}

/* Prioritized: a spawned child's take-over (spawn.c) never returns to later constructors. */
__attribute__((constructor(102))) static void queues_init(void) {
  mp__waitable_register(MP__KIND_QUEUE, &queue_waitable);
  mp__passable_register(MP__KIND_QUEUE, pass_queue);
  pthread_atfork(NULL, NULL, after_fork_child);
  /* Read once here, so that its page is mapped before any fork: after_fork_child reads the
   * lock in every forked child, and on a page this process never touched that read was a
   * page fault in each (docs/architecture.md, "Where the time goes"). */
  (void)*(volatile const char *)&mine.lock;
}

int mp_queue_retain(mp_queue_t *queue) {
  int rc = check_queue(queue, "mp_queue_retain");
  return rc < 0 ? rc : retain_here(queue);
}

int mp_queue_free(mp_queue_t *queue) {
  int rc = check_queue(queue, "mp_queue_free");
  return rc < 0 ? rc : drop_reference(queue);
}

int mp_simple_queue_retain(mp_simple_queue_t *queue) {
  int rc = check_simple(queue, "mp_simple_queue_retain");
  return rc < 0 ? rc : retain_here(&queue->queue);
}

int mp_simple_queue_free(mp_simple_queue_t *queue) {
  int rc = check_simple(queue, "mp_simple_queue_free");
  return rc < 0 ? rc : drop_reference(&queue->queue);
}
