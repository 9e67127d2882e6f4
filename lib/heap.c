/*
 * The shared arena, Python's heap.py: every shared object of the program (queues, locks,
 * values, the pool's rings) lives in one memfd mapped at the same address in every process.
 *
 * The first allocation creates the memfd and maps it MAP_SHARED over a large reserved range
 * of address space (64 GiB by default) at a randomly chosen address in a region that the
 * kernel's own mmap placement and the executable do not use, and that every sanitizer
 * counts as application memory. Only the first `size` bytes of the file exist; growing is an
 * ftruncate, which every process sees at once because every process maps the whole range. A
 * forked child inherits the mapping; a spawned or forkserver child receives the memfd with
 * its start request and maps it with MAP_FIXED_NOREPLACE at the same address before its
 * target runs (mp__heap_attach), so a pointer into the arena is the same object in every
 * process, whatever the start method.
 *
 *   base                                                      base + size    base + reserve
 *   | header: lock, free lists, bump | blocks ...  | never used  |  (beyond the file)  |
 *
 * Blocks are powers of two from 128 bytes, each a 64-byte header (class, reference count)
 * then the payload; freed blocks go on their class's free list and large ones give their
 * pages back (fallocate PUNCH_HOLE). The allocator's lock is a word lock (mp__wlock_t): a
 * process that dies while allocating can at worst leak the block it was taking, and a wild
 * word makes a call wait no longer than its deadline. The memfd has no
 * name in any filesystem, so nothing of the arena outlives the program's last process.
 */
#include "internal.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef MP_HAVE_VALGRIND
#include <valgrind/valgrind.h>
#endif

#define ARENA_MAGIC 0x414e5241504d424cull /* "LBMPARNA" */
#define BLOCK_LIVE 0x4b4c424du            /* "MBLK" */
#define BLOCK_FREE 0x45455246u            /* "FREE": on its class's free list */
/* "TAKN": on no list and not live, one thread's: popped and not yet handed out, or released
 * and not yet pushed. Set and cleared so that a block is BLOCK_FREE only while on a list. */
#define BLOCK_TAKEN 0x4e4b4154u

#define RESERVE_DEFAULT (64ull << 30)
#define RESERVE_MIN (1ull << 30)
#define INITIAL_SIZE (1ull << 20)
#define GROW_GRANULE (1ull << 20)
#define HEADER_SPACE 4096ull
#define BLOCK_HEAD 64ull
#define MIN_CLASS 7  /* 128-byte blocks: a 64-byte header and 64 bytes of payload */
#define MAX_CLASS 40 /* 1 TiB: above any reserve */
#define PUNCH_CLASS 23 /* blocks of 8 MiB and more give their pages back when freed */

/* Where the arena is placed: [85 TiB, 85 TiB + 320 GiB), just below where the kernel loads a
 * position-independent executable (ELF_ET_DYN_BASE, 0x555555554000, plus a random offset;
 * its brk heap follows it) and far below the top-down mmap area under the stack: no other
 * mapping goes there, in any image of the program. It is application memory for every
 * sanitizer, so one address serves every build: ThreadSanitizer keeps 0x550000000000 to
 * 0x568000000000 for such executables and kills a process that maps outside its ranges,
 * AddressSanitizer's shadow ends below 16 TiB, MemorySanitizer's app range 2 spans
 * 0x510000000000 to 0x600000000000. The arena starts at a random GiB of the region. */
#define PLACEMENT_LOW 0x550000000000ull
#define PLACEMENT_HIGH 0x555000000000ull
#define PLACEMENT_ALIGN (1ull << 30)
/* The end of x86-64's (and arm64's 48-bit) user address space: no arena lies beyond. */
#define USER_SPACE_END (1ull << 47)

typedef struct {
  uint64_t magic;
  uint64_t reserve;
  _Atomic uint64_t size; /* bytes of the memfd; grows, never shrinks */
  _Atomic uint64_t unique;
  _Atomic uint64_t nonce; /* see mp__shared_nonce; 0: not drawn yet */
  mp__wlock_t lock;       /* guards bump and free_head */
  uint64_t bump;         /* offset of the first never-used byte */
  uint64_t free_head[MAX_CLASS + 1];
} arena_t;

typedef struct {
  uint32_t magic;
  uint32_t cls;
  _Atomic uint32_t refs;
} block_t;

_Static_assert(sizeof(arena_t) <= HEADER_SPACE, "the arena header fits its page");
_Static_assert(sizeof(block_t) <= BLOCK_HEAD, "the block header fits its space");

/* This process's view: inherited as is by a forked child. Every word of the arena's header is
 * any process's to write, so what bounds a block is kept here: the reserve this process
 * mapped, and the bytes of the file it has seen exist (raised, never lowered, by an fstat
 * when the arena's size word says another process grew the file). */
static struct {
  pthread_mutex_t create_lock;
  arena_t *arena;
  int fd;
  uint64_t reserve;
  _Atomic uint64_t mapped;
} heap = {PTHREAD_MUTEX_INITIALIZER, NULL, -1, 0, 0};

static int map_at(int fd, uint64_t base, uint64_t reserve, int fixed, void **out) {
  void *p = mmap((void *)(uintptr_t)base, reserve, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_NORESERVE | fixed, fd, 0);
  if (p == MAP_FAILED)
    return -errno;
  if (fixed && p != (void *)(uintptr_t)base) { /* a kernel before 4.17 took it as a hint */
    munmap(p, reserve);
    return -EEXIST;
  }
  *out = p;
  return 0;
}

/* Under valgrind the reserve is small and the file that size from the start. memcheck's
 * leak check, when a process ends (by a signal too), reads every word of every mapping; past
 * the end of a file each read is a SIGBUS it recovers from one word at a time, which over a
 * reserve of gigabytes does not end. A file as large as its mapping has no such part (its
 * pages are allocated as the check reads them, once per arena). */
#define VALGRIND_RESERVE (512ull << 20)

static bool on_valgrind(void) {
#ifdef MP_HAVE_VALGRIND
  return RUNNING_ON_VALGRIND;
#else
  return false;
#endif
}

/* Maps a new arena's memfd: at a random free slot of the placement region if possible, else
 * where the kernel likes (valgrind may refuse such addresses), with a smaller reserve if
 * address space is short. *reserve_out: the reserve to try first, then the one taken. */
static int place(int fd, void **out, uint64_t *reserve_out) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  unsigned seed = (unsigned)getpid() * 2654435761u ^ (unsigned)ts.tv_nsec;
  for (uint64_t reserve = *reserve_out;; reserve /= 4) {
    uint64_t slots = (PLACEMENT_HIGH - PLACEMENT_LOW - reserve) / PLACEMENT_ALIGN + 1;
    for (int attempt = 0; attempt < 8; attempt++) {
      uint64_t slot = (uint64_t)rand_r(&seed) % slots;
      if (map_at(fd, PLACEMENT_LOW + slot * PLACEMENT_ALIGN, reserve, MAP_FIXED_NOREPLACE,
                 out) == 0) {
        *reserve_out = reserve;
        return 0;
      }
    }
    if (map_at(fd, 0, reserve, 0, out) == 0) {
      *reserve_out = reserve;
      return 0;
    }
    if (reserve / 4 < RESERVE_MIN)
      break;
  }
  return mp__error(MP_ENOMEM, "no address space for the shared arena");
}

static int create_arena(void) {
  int fd = memfd_create("libmp-arena", MFD_CLOEXEC);
  if (fd < 0)
    return mp__syserror("memfd_create for the shared arena");
  void *base = NULL;
  bool valgrind = on_valgrind();
  uint64_t reserve = valgrind ? VALGRIND_RESERVE : RESERVE_DEFAULT;
  uint64_t initial = valgrind ? VALGRIND_RESERVE : INITIAL_SIZE;
  int rc = ftruncate(fd, (off_t)initial) < 0 ? mp__syserror("sizing the shared arena") : 0;
  if (rc == 0)
    rc = place(fd, &base, &reserve);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  arena_t *arena = base;
  arena->magic = ARENA_MAGIC;
  arena->reserve = reserve;
  arena->size = initial;
  arena->bump = HEADER_SPACE;
  heap.fd = fd;
  heap.reserve = reserve;
  atomic_store(&heap.mapped, initial);
  /* Published last: mp__shared_contains() reads it without the lock. */
  __atomic_store_n(&heap.arena, arena, __ATOMIC_RELEASE);
  return 0;
}

/*
 * A fork while another thread makes the arena: the child inherits create_lock held by a
 * thread it does not have, and its first allocation would wait for ever. The child handler
 * frees it (mp__reset_lock writes only a lock that differs from a fresh one, so a fork copies
 * no page for it: a prepare handler that took the lock, in a program without an arena yet,
 * cost every fork two page faults, process.fork's row). The child then has the arena if the
 * other thread had published it, else it makes one of its own at its first allocation
 * (what was half made, a memfd and its mapping, stays unused in the child).
 */
MP__CHILD_TEXT static void after_fork_in_child(void) {
  mp__reset_lock(&heap.create_lock);
}

/* Prioritized: a spawned child's take-over (spawn.c) never returns to later constructors. */
__attribute__((constructor(102))) static void heap_init(void) {
  pthread_atfork(NULL, NULL, after_fork_in_child);
  /* Read once here, so that its page is mapped before any fork: the handler reads it in
   * every forked child (as queues.c does for its lock). */
  (void)*(volatile const char *)&heap.create_lock;
}

static arena_t *get_arena(void) {
  arena_t *arena = __atomic_load_n(&heap.arena, __ATOMIC_ACQUIRE);
  if (arena)
    return arena;
  pthread_mutex_lock(&heap.create_lock);
  int rc = heap.arena ? 0 : create_arena();
  pthread_mutex_unlock(&heap.create_lock);
  return rc < 0 ? NULL : heap.arena;
}

static block_t *block_at(arena_t *arena, uint64_t offset) {
  return (block_t *)((char *)arena + offset);
}

/* The file's size now (0 if fstat fails), which heap.mapped is raised to. */
static uint64_t file_size(void) {
  struct stat st;
  if (fstat(heap.fd, &st) < 0)
    return 0;
  uint64_t size = (uint64_t)st.st_size, known = atomic_load(&heap.mapped);
  while (known < size && !atomic_compare_exchange_weak(&heap.mapped, &known, size))
    ;
  return size;
}

/* Whether the first `end` bytes of the arena are mapped and in its file. The size word only
 * says when to look (an fstat): believed, a block past the file's end would be touched
 * (SIGBUS), or one past the mapping (SIGSEGV). */
static bool file_holds(const arena_t *arena, uint64_t end) {
  return end <= atomic_load(&heap.mapped) ||
         (end <= heap.reserve && end <= atomic_load(&arena->size) && end <= file_size());
}

/* Makes the file at least `need` bytes long (at most the reserve), doubling so that growth
 * is rare. Under the arena's lock: the fstat sees every other grower's ftruncate, so the
 * file never shrinks, whatever the size word says. */
static int grow(arena_t *arena, uint64_t need) {
  if (need <= atomic_load(&heap.mapped))
    return 0;
  uint64_t size = file_size();
  if (size == 0)
    return mp__syserror("examining the shared arena's file");
  if (need <= size)
    return 0;
  uint64_t target = size * 2 > need ? size * 2 : need;
  target = (target + GROW_GRANULE - 1) / GROW_GRANULE * GROW_GRANULE;
  if (target > heap.reserve)
    target = heap.reserve;
  if (ftruncate(heap.fd, (off_t)target) < 0)
    return mp__syserror("growing the shared arena to %llu bytes", (unsigned long long)target);
  atomic_store(&heap.mapped, target);
  atomic_store(&arena->size, target);
  return 0;
}

/* The class of a block of size bytes (at most half the reserve, below 2^MAX_CLASS). */
static uint32_t class_of(uint64_t size) {
  uint32_t cls = MIN_CLASS;
  while (cls < MAX_CLASS && (1ull << cls) < size + BLOCK_HEAD)
    cls++;
  return cls;
}

/* Takes the arena's lock by *d: 0, MP_EOWNERDEAD (its holder died: the lists are still well
 * formed, each list changed by the single store of its head, the block's state set on the
 * side that leaves it on no list, so the worst left behind is one lost block), or MP_ETIMEDOUT,
 * said. */
static int lock_arena(arena_t *arena, mp__deadline_t *d) {
  int rc = mp__wlock_lock(&arena->lock, d);
  if (rc == MP_ETIMEDOUT)
    rc = mp__error(rc,
                   "the shared arena's lock was held past the deadline by a live thread "
                   "(%u): stopped, or its word written by another process",
                   (unsigned)(atomic_load(&arena->lock.word) & MP__WLOCK_TID));
  return rc;
}

/* MP_ECORRUPT, saying which word of the arena's header was found wild. */
__attribute__((noinline, cold, format(printf, 1, 2))) static int corrupt(const char *fmt, ...) {
  char what[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return mp__error(MP_ECORRUPT, "allocating in the shared arena: its header is corrupt: %s",
                   what);
}

/* Blocks are placed from the header's page up, each a multiple of the smallest class in
 * size: bump, past the last, lies in the file (and so in this process's mapping). */
static bool bump_fits(const arena_t *arena, uint64_t bump) {
  return bump >= HEADER_SPACE && bump % (1ull << MIN_CLASS) == 0 && file_holds(arena, bump);
}

/* A free list's entry names a block below bump, on a list of its class: BLOCK_FREE, never
 * one popped by another allocation (BLOCK_TAKEN under the lock), so that a wild link, to the
 * block itself or to one taken already, cannot hand a block out twice. */
static bool free_block_fits(arena_t *arena, uint64_t offset, uint32_t cls, uint64_t bump) {
  if (offset < HEADER_SPACE || offset % (1ull << MIN_CLASS) != 0 || offset > bump ||
      bump - offset < (1ull << cls))
    return false;
  const block_t *block = block_at(arena, offset);
  return __atomic_load_n(&block->magic, __ATOMIC_RELAXED) == BLOCK_FREE &&
         __atomic_load_n(&block->cls, __ATOMIC_RELAXED) == cls;
}

/* A block of size bytes in *out (NULL on failure), or the error: MP_EINVAL, MP_ENOMEM,
 * MP_ECORRUPT (a wild word of the arena's header), MP_ETIMEDOUT (its lock not had by *d). */
static int allocate(void **out, size_t size, bool zeroed, mp__deadline_t *d) {
  *out = NULL;
  if (size == 0)
    return mp__error(MP_EINVAL, "a shared object of 0 bytes");
  arena_t *arena = get_arena();
  if (!arena)
    return MP_ENOMEM; /* said by its creation */
  if (size > heap.reserve / 2)
    return mp__error(MP_ENOMEM, "%zu bytes do not fit the shared arena (%llu reserved)", size,
                     (unsigned long long)heap.reserve);
  uint32_t cls = class_of(size);
  uint64_t block_size = 1ull << cls;

  int rc = lock_arena(arena, d);
  if (rc == MP_ETIMEDOUT)
    return rc;
  uint64_t bump = arena->bump, offset = arena->free_head[cls];
  bool reused = offset != 0;
  if (!bump_fits(arena, bump)) {
    rc = corrupt("its bump word is %llu", (unsigned long long)bump);
  } else if (reused) {
    if (!free_block_fits(arena, offset, cls, bump)) {
      arena->free_head[cls] = 0; /* its blocks leak: none can be told from a live one */
      rc = corrupt("its list of free %llu-byte blocks starts at %llu, no free block of that "
                   "class (the list is dropped)",
                   (unsigned long long)block_size, (unsigned long long)offset);
    } else {
      /* The head first: killed between the two stores, the block is lost, FREE on no list
       * (a wild link may hand it out: it is no one's); the other way round the list would
       * start at a block not FREE, and be dropped. */
      block_t *popped = block_at(arena, offset);
      arena->free_head[cls] = *(uint64_t *)((char *)popped + BLOCK_HEAD);
      __atomic_store_n(&popped->magic, BLOCK_TAKEN, __ATOMIC_RELAXED);
    }
  } else if (block_size > heap.reserve - bump) {
    rc = mp__error(MP_ENOMEM, "the shared arena is full (%llu bytes reserved)",
                   (unsigned long long)heap.reserve);
  } else if ((rc = grow(arena, bump + block_size)) == 0) {
    offset = bump;
    arena->bump = bump + block_size;
  }
  mp__wlock_unlock(&arena->lock);
  if (rc < 0 && rc != MP_EOWNERDEAD)
    return rc;

  block_t *block = block_at(arena, offset);
  char *payload = (char *)block + BLOCK_HEAD;
  /* Never-used blocks are zero already (fresh file pages); a reused one held data. */
  if (reused && zeroed)
    memset(payload, 0, size);
  block->cls = cls;
  atomic_store(&block->refs, 1);
  __atomic_store_n(&block->magic, BLOCK_LIVE, __ATOMIC_RELEASE);
  *out = payload;
  return 0;
}

int mp__shared_alloc(void **out, size_t size) {
  return allocate(out, size, true, MP__NO_DEADLINE);
}

int mp__shared_alloc_by(void **out, size_t size, mp__deadline_t *d) {
  return allocate(out, size, false, d);
}

static block_t *block_of(void *payload) {
  return (block_t *)((char *)payload - BLOCK_HEAD);
}

void mp__shared_retain(void *payload) {
  atomic_fetch_add(&block_of(payload)->refs, 1);
}

/* Drops a reference to payload's block, of class cls by its owner's size; the last one frees
 * it. The header is any process's to write (a task that writes before its block): a class
 * other than cls would put the block on another class's list, whose next block would span
 * its live neighbours, and punch their pages (test_forged_class_frees_neighbour); a block
 * not live is on a list already, and would be handed out twice. Either is refused, the block
 * left out of use. The block is TAKEN (the CAS from LIVE: one release wins) until it is
 * pushed, and FREE only under the lock, as it goes on the list: a wild link naming it before
 * then finds no free block. Killed on the way, the block is lost, never on a list twice. */
static bool release_as(void *payload, uint32_t cls, mp__deadline_t *d) {
  block_t *block = block_of(payload);
  if (atomic_fetch_sub(&block->refs, 1) != 1)
    return false;
  arena_t *arena = heap.arena;
  uint64_t offset = (uint64_t)((char *)block - (char *)arena), block_size = 1ull << cls;
  uint32_t header_cls = __atomic_load_n(&block->cls, __ATOMIC_RELAXED), magic = BLOCK_LIVE;
  if (header_cls != cls || !file_holds(arena, offset + block_size) ||
      !__atomic_compare_exchange_n(&block->magic, &magic, BLOCK_TAKEN, false, __ATOMIC_RELAXED,
                                   __ATOMIC_RELAXED)) {
    mp__error(MP_ECORRUPT,
              "releasing a shared block of %llu bytes at %p: its header (class %u, magic "
              "%#x) is not a live block of class %u; the block is left out of use",
              (unsigned long long)block_size, payload, header_cls,
              __atomic_load_n(&block->magic, __ATOMIC_RELAXED), cls);
    return true;
  }
  if (cls >= PUNCH_CLASS) {
    /* Give the pages back, keeping the one that holds the header and the list link. */
    uint64_t from = (offset + BLOCK_HEAD + sizeof(uint64_t) + 4095) & ~4095ull;
    fallocate(heap.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)from,
              (off_t)(offset + block_size - from));
  }
  if (lock_arena(arena, d) == MP_ETIMEDOUT)
    return true; /* the block is lost rather than the caller's deadline */
  *(uint64_t *)((char *)payload) = arena->free_head[cls];
  /* FREE before the head: killed between the two, the block is lost, not a list's head */
  __atomic_store_n(&block->magic, BLOCK_FREE, __ATOMIC_RELAXED);
  arena->free_head[cls] = offset;
  mp__wlock_unlock(&arena->lock);
  return true;
}

bool mp__shared_release_sized(void *payload, uint64_t size) {
  return release_as(payload, class_of(size), MP__NO_DEADLINE);
}

bool mp__shared_release_sized_by(void *payload, uint64_t size, mp__deadline_t *d) {
  return release_as(payload, class_of(size), d);
}

bool mp__shared_is_block(const void *payload, uint64_t room) {
  arena_t *arena = __atomic_load_n(&heap.arena, __ATOMIC_ACQUIRE);
  uintptr_t at = (uintptr_t)payload, base = (uintptr_t)arena;
  if (!arena || at < base + HEADER_SPACE + BLOCK_HEAD || (at - base) % 64 != 0 ||
      !file_holds(arena, at - base))
    return false;
  /* Each word of the header is read once: another process may be writing it. */
  block_t *block = block_of((void *)at);
  uint32_t magic = __atomic_load_n(&block->magic, __ATOMIC_RELAXED),
           cls = __atomic_load_n(&block->cls, __ATOMIC_RELAXED);
  uint64_t offset = at - base - BLOCK_HEAD;
  return magic == BLOCK_LIVE && cls >= MIN_CLASS && cls <= MAX_CLASS &&
         (1ull << cls) - BLOCK_HEAD >= room && file_holds(arena, offset + (1ull << cls));
}

bool mp__shared_contains(const void *p) {
  arena_t *arena = __atomic_load_n(&heap.arena, __ATOMIC_ACQUIRE);
  if (!arena || !p)
    return false;
  uintptr_t at = (uintptr_t)p, base = (uintptr_t)arena;
  return at >= base + HEADER_SPACE && file_holds(arena, at - base + 1);
}

uint64_t mp__shared_unique(void) {
  arena_t *arena = get_arena();
  if (!arena) /* no arena: unique within this process is the best there is */
    return ((uint64_t)getpid() << 32) | (uint64_t)mp__now_ns();
  return atomic_fetch_add(&arena->unique, 1) + 1;
}

uint64_t mp__shared_nonce(uint64_t stale) {
  arena_t *arena = get_arena();
  if (!arena)
    return 0;
  uint64_t seen = atomic_load(&arena->nonce), fresh = 0;
  if (seen != 0 && seen != stale)
    return seen;
  while (fresh == 0)
    if (getrandom(&fresh, sizeof fresh, 0) != (ssize_t)sizeof fresh)
      return 0;
  /* One draw per stale nonce: whoever loses the swap takes the winner's. */
  return atomic_compare_exchange_strong(&arena->nonce, &seen, fresh) ? fresh : seen;
}

bool mp__heap_describe(mp__heap_map_t *map, int *fd) {
  arena_t *arena = __atomic_load_n(&heap.arena, __ATOMIC_ACQUIRE);
  if (!arena)
    return false;
  map->base = (uint64_t)(uintptr_t)arena;
  map->reserve = heap.reserve;
  *fd = heap.fd;
  return true;
}

int mp__heap_attach(int fd, const mp__heap_map_t *map) {
  if (heap.arena && (uint64_t)(uintptr_t)heap.arena == map->base) {
    close(fd); /* a fork server that read an earlier request already maps it */
    return 0;
  }
  /* The request comes from a socket: an arena such as create_arena makes, or nothing (a
   * file shorter than its header would fault on first use, a wild range is no arena). */
  struct stat st;
  const char *bad = fstat(fd, &st) < 0 ? "fd cannot be examined"
                    : map->reserve < VALGRIND_RESERVE || map->reserve > RESERVE_DEFAULT
                        ? "reserve is out of range"
                    : map->base % 4096 != 0 ? "base is not page-aligned"
                    : map->base == 0 || map->base >= USER_SPACE_END ||
                            map->reserve > USER_SPACE_END - map->base
                        ? "range is outside user space"
                    : st.st_size < (off_t)HEADER_SPACE || (uint64_t)st.st_size > map->reserve
                        ? "file size does not fit the reserve"
                        : NULL;
  if (bad) {
    close(fd);
    return mp__error(MP_ESPAWN, "the child refused the shared arena: its %s", bad);
  }
  void *base = NULL;
  int rc = map_at(fd, map->base, map->reserve, MAP_FIXED_NOREPLACE, &base);
  if (rc < 0) {
    close(fd);
    return mp__error(MP_ESPAWN,
                     "the child cannot map the shared arena at %#llx: %s (the address is "
                     "taken in the new image)",
                     (unsigned long long)map->base, strerror(-rc));
  }
  const arena_t *arena = base;
  if (arena->magic != ARENA_MAGIC || arena->reserve != map->reserve) {
    munmap(base, map->reserve);
    close(fd);
    return mp__error(MP_ESPAWN, "the child refused the shared arena: its header is not one");
  }
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  heap.fd = fd;
  heap.reserve = map->reserve;
  atomic_store(&heap.mapped, (uint64_t)st.st_size);
  __atomic_store_n(&heap.arena, (arena_t *)base, __ATOMIC_RELEASE);
  return 0;
}
