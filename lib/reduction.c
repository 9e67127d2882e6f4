/*
 * What crosses a process boundary. A function crosses by identity: the loaded object that
 * holds it (its path, "" for the executable) and its offset from that object's load base.
 * Offsets survive exec and ASLR, so the same binary resolves the same function with no
 * registration table. The object's ELF build-id travels along, so a child running another
 * build refuses instead of jumping into the wrong code.
 */
#include "internal.h"

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef struct {
  /* What to look for: an address, or an object by path ("" is the executable). */
  uintptr_t addr;
  const char *path;
  /* What was found. */
  bool visited_any;
  bool found;
  uintptr_t base;
  const ElfW(Phdr) *phdr; /* its program headers, to check an offset against */
  size_t phnum;
  const char *name;
  uint32_t build_id_len;
  uint8_t build_id[MP__BUILD_ID_MAX];
} object_search_t;

/* Finds the GNU build-id among the notes of one PT_NOTE segment (size bytes at p, which
 * may come from a file: every length is checked); true if found, with id and *len set. */
static bool find_build_id(const uint8_t *p, size_t size, size_t align, uint8_t *id,
                          uint32_t *len) {
  size_t at = 0;
  while (size - at >= sizeof(ElfW(Nhdr))) {
    ElfW(Nhdr) note;
    memcpy(&note, p + at, sizeof note);
    size_t name_size = ((size_t)note.n_namesz + align - 1) & ~(align - 1);
    size_t desc_size = ((size_t)note.n_descsz + align - 1) & ~(align - 1);
    at += sizeof note;
    if (name_size > size - at || desc_size > size - at - name_size)
      return false;
    if (note.n_type == NT_GNU_BUILD_ID && note.n_namesz == 4 && memcmp(p + at, "GNU", 4) == 0 &&
        note.n_descsz <= MP__BUILD_ID_MAX) {
      *len = note.n_descsz;
      memcpy(id, p + at + name_size, note.n_descsz);
      return true;
    }
    at += name_size + desc_size;
  }
  return false;
}

static size_t note_align(const ElfW(Phdr) *ph) {
  return ph->p_align == 8 ? 8 : 4;
}

static void read_build_id(const struct dl_phdr_info *info, object_search_t *s) {
  s->build_id_len = 0;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type == PT_NOTE &&
        find_build_id((const uint8_t *)(info->dlpi_addr + ph->p_vaddr), ph->p_memsz,
                      note_align(ph), s->build_id, &s->build_id_len))
      return;
  }
}

/* Whether offset lies in one of the object's executable segments. */
static bool in_code(const ElfW(Phdr) *phdr, size_t phnum, uint64_t offset) {
  for (size_t i = 0; i < phnum; i++)
    if (phdr[i].p_type == PT_LOAD && (phdr[i].p_flags & PF_X) && offset >= phdr[i].p_vaddr &&
        offset - phdr[i].p_vaddr < phdr[i].p_memsz)
      return true;
  return false;
}

static int visit_object(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  object_search_t *s = data;
  /* dl_iterate_phdr reports the executable first; its name is "" or argv[0]. */
  bool is_executable = !s->visited_any;
  s->visited_any = true;
  const char *name = is_executable ? "" : info->dlpi_name;
  bool holds_addr = false;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD)
      continue;
    uintptr_t start = info->dlpi_addr + ph->p_vaddr;
    if (s->addr >= start && s->addr < start + ph->p_memsz)
      holds_addr = true;
  }
  bool match = s->path ? strcmp(name, s->path) == 0 : holds_addr;
  if (!match)
    return 0;
  s->found = true;
  s->base = info->dlpi_addr;
  s->phdr = info->dlpi_phdr;
  s->phnum = info->dlpi_phnum;
  s->name = name;
  read_build_id(info, s);
  return 1;
}

static void search_objects(object_search_t *s) {
  s->visited_any = false;
  s->found = false;
  dl_iterate_phdr(visit_object, s);
}

/*
 * The executable's code, found once: it is never unloaded, so whether a pointer lies in it
 * can be told without dl_iterate_phdr, whose lock is a write to the loader's data (a page a
 * parent copies after every fork: docs/architecture.md, "Where the time goes").
 */
#define EXE_CODE_RANGES 8

static struct {
  pthread_once_t once;
  bool ready; /* set last, with release: read first, so that a child calls no pthread_once */
  bool found;
  uintptr_t base;
  /* Its executable segments, as offsets from base: copies, not its program headers, whose
   * page a fork server's child would otherwise read in. */
  size_t n_code;
  struct {
    uint64_t start, size;
  } code[EXE_CODE_RANGES];
  uint32_t build_id_len;
  uint8_t build_id[MP__BUILD_ID_MAX];
} exe = {.once = PTHREAD_ONCE_INIT};

static void find_executable(void) {
  object_search_t s = {.path = ""};
  search_objects(&s);
  for (size_t i = 0; s.found && i < s.phnum; i++) {
    const ElfW(Phdr) *ph = &s.phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
      continue;
    if (exe.n_code == EXE_CODE_RANGES)
      return; /* an odd executable: looked up as any object, under the lock */
    exe.code[exe.n_code].start = ph->p_vaddr;
    exe.code[exe.n_code++].size = ph->p_memsz;
  }
  exe.found = s.found;
  exe.base = s.base;
  exe.build_id_len = s.build_id_len;
  memcpy(exe.build_id, s.build_id, s.build_id_len);
  __atomic_store_n(&exe.ready, true, __ATOMIC_RELEASE);
}

/* Whether offset lies in the executable's code (exe.found). */
static bool in_exe_code(uint64_t offset) {
  for (size_t i = 0; i < exe.n_code; i++)
    if (offset >= exe.code[i].start && offset - exe.code[i].start < exe.code[i].size)
      return true;
  return false;
}

void mp__fnref_prepare(void) {
  if (!__atomic_load_n(&exe.ready, __ATOMIC_ACQUIRE))
    pthread_once(&exe.once, find_executable);
}

/* Where fn lies: in the executable's code (from the cache), else the loaded objects'. */
static void search_pointer(mp__fn_t fn, object_search_t *s) {
  mp__fnref_prepare();
  uintptr_t addr = (uintptr_t)fn;
  if (exe.found && addr >= exe.base && in_exe_code(addr - exe.base)) {
    s->found = true;
    s->base = exe.base;
    s->name = "";
    s->build_id_len = exe.build_id_len;
    memcpy(s->build_id, exe.build_id, exe.build_id_len);
    return;
  }
  s->addr = addr;
  search_objects(s);
}

/* Finds the loaded object that holds fn: 0, or MP_ECROSS where another process could not. */
static int find_pointer(mp__fn_t fn, object_search_t *s) {
  search_pointer(fn, s);
  if (!s->found)
    return mp__error(MP_ECROSS, "function %p is in no loaded object (heap, stack or JIT "
                                "memory), so another process cannot find it", (void *)(uintptr_t)fn);
  if (strlen(s->name) >= sizeof((mp__fnref_t *)0)->path)
    return mp__error(MP_ECROSS, "the path of the object holding %p is too long",
                     (void *)(uintptr_t)fn);
  return 0;
}

int mp__fnref_check(mp__fn_t fn) {
  object_search_t s = {0};
  return find_pointer(fn, &s);
}

int mp__fnref_from_pointer(mp__fn_t fn, mp__fnref_t *ref) {
  object_search_t s = {0};
  int rc = find_pointer(fn, &s);
  if (rc < 0)
    return rc;
  memset(ref, 0, sizeof *ref); /* it is sent whole: no uninitialized bytes */
  ref->offset = (uintptr_t)fn - s.base;
  ref->build_id_len = s.build_id_len;
  memcpy(ref->build_id, s.build_id, s.build_id_len);
  strcpy(ref->path, s.name);
  return 0;
}

static void format_build_id(const uint8_t *id, uint32_t len, char *out, size_t cap) {
  if (len == 0) {
    snprintf(out, cap, "none");
    return;
  }
  for (uint32_t i = 0; i < len && 2 * i + 2 < cap; i++)
    snprintf(out + 2 * i, cap - 2 * i, "%02x", id[i]);
}

/* The most program headers and note bytes read from a file: far above any real object. */
#define FILE_MAX_PHDRS 256
#define FILE_MAX_NOTES 65536

/* Reads the build-id of the ELF file open at fd, and whether offset lies in one of its
 * executable segments, without loading it. The file is input: every size is bounded and
 * every read checked. 0, or MP_ERESOLVE with a sentence. */
static int file_identity(int fd, const char *path, uint64_t offset, uint8_t *id,
                         uint32_t *id_len) {
  ElfW(Ehdr) eh;
  ElfW(Phdr) ph[FILE_MAX_PHDRS];
  *id_len = 0;
  if (pread(fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh ||
      memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
      eh.e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32) ||
      eh.e_phentsize != sizeof ph[0] || eh.e_phnum == 0 || eh.e_phnum > FILE_MAX_PHDRS)
    return mp__error(MP_ERESOLVE, "%s is not an ELF object of this machine", path);
  size_t bytes = (size_t)eh.e_phnum * sizeof ph[0];
  if (pread(fd, ph, bytes, (off_t)eh.e_phoff) != (ssize_t)bytes)
    return mp__error(MP_ERESOLVE, "%s: its program headers cannot be read", path);
  if (!in_code(ph, eh.e_phnum, offset))
    return mp__error(MP_ERESOLVE, "offset %#llx lies in no executable segment of %s",
                     (unsigned long long)offset, path);
  uint8_t *notes = malloc(FILE_MAX_NOTES);
  if (!notes)
    return mp__error(MP_ENOMEM, "reading the build-id of %s", path);
  for (size_t i = 0; i < eh.e_phnum && *id_len == 0; i++) {
    if (ph[i].p_type != PT_NOTE || ph[i].p_filesz > FILE_MAX_NOTES)
      continue;
    ssize_t n = pread(fd, notes, (size_t)ph[i].p_filesz, (off_t)ph[i].p_offset);
    if (n == (ssize_t)ph[i].p_filesz)
      find_build_id(notes, (size_t)n, note_align(&ph[i]), id, id_len);
  }
  free(notes);
  return 0;
}

static int mismatch(const char *what, const uint8_t *mine_id, uint32_t mine_len,
                    const mp__fnref_t *ref) {
  char mine[2 * MP__BUILD_ID_MAX + 1], theirs[2 * MP__BUILD_ID_MAX + 1];
  format_build_id(mine_id, mine_len, mine, sizeof mine);
  format_build_id(ref->build_id, ref->build_id_len, theirs, sizeof theirs);
  return mp__error(MP_ERESOLVE,
                   "%s is another build in the child (build-id %s) than in the parent "
                   "(build-id %s)",
                   what, mine, theirs);
}

/* Loads the object the parent had loaded with dlopen(), as unpickling imports, once its
 * file is known to be the parent's build: nothing of another file runs, not even its
 * constructors. (The in-memory check after the load covers a file replaced meanwhile.) */
static int load_checked(const mp__fnref_t *ref) {
  if (*ref->path != '/') /* "": the executable, which is always loaded */
    return mp__error(MP_ERESOLVE, "the object path '%s' is not absolute", ref->path);
  /* O_NONBLOCK: a FIFO named by the request must not block the child in open(). */
  int fd = open(ref->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0)
    return mp__error(MP_ERESOLVE, "cannot open %s in the child: %s", ref->path,
                     strerror(errno));
  struct stat st;
  uint8_t id[MP__BUILD_ID_MAX];
  uint32_t id_len = 0;
  int rc = fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)
               ? mp__error(MP_ERESOLVE, "%s is not a regular file", ref->path)
               : file_identity(fd, ref->path, ref->offset, id, &id_len);
  close(fd);
  if (rc == 0 && (id_len != ref->build_id_len || memcmp(id, ref->build_id, id_len) != 0))
    rc = mismatch(ref->path, id, id_len, ref);
  if (rc == 0 && !dlopen(ref->path, RTLD_NOW))
    rc = mp__error(MP_ERESOLVE, "cannot load %s in the child: %s", ref->path, dlerror());
  return rc;
}

/* memcmp's equality, inline: a fork server's child would fault in memcmp's code page. */
static bool same_bytes(const uint8_t *a, const uint8_t *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (a[i] != b[i])
      return false;
  return true;
}

int mp__fnref_resolve(const mp__fnref_t *ref, mp__fn_t *fn) {
  /* A request is input: its lengths and its path are checked before any use. */
  if (ref->build_id_len > MP__BUILD_ID_MAX ||
      (*ref->path && !memchr(ref->path, '\0', sizeof ref->path)))
    return mp__error(MP_ERESOLVE, "a malformed function reference");
  const char *what = *ref->path ? ref->path : "the executable";
  mp__fnref_prepare();
  if (!*ref->path && exe.found) {
    /* The executable, from the cache: no lock and no walk of the loaded objects, in a fork
     * server's child (docs/architecture.md, "Where the time goes"). */
    if (exe.build_id_len != ref->build_id_len ||
        !same_bytes(exe.build_id, ref->build_id, ref->build_id_len))
      return mismatch(what, exe.build_id, exe.build_id_len, ref);
    if (!in_exe_code(ref->offset))
      return mp__error(MP_ERESOLVE, "offset %#llx lies in no executable segment of %s",
                       (unsigned long long)ref->offset, what);
    *fn = (mp__fn_t)(exe.base + ref->offset);
    return 0;
  }
  object_search_t s = {.path = ref->path};
  search_objects(&s);
  if (!s.found) {
    int rc = load_checked(ref);
    if (rc < 0)
      return rc;
    search_objects(&s);
    if (!s.found)
      return mp__error(MP_ERESOLVE, "%s is loaded but not found in the child", what);
  }
  if (s.build_id_len != ref->build_id_len ||
      !same_bytes(s.build_id, ref->build_id, ref->build_id_len))
    return mismatch(what, s.build_id, s.build_id_len, ref);
  if (!in_code(s.phdr, s.phnum, ref->offset))
    return mp__error(MP_ERESOLVE, "offset %#llx lies in no executable segment of %s",
                     (unsigned long long)ref->offset, what);
  *fn = (mp__fn_t)(s.base + ref->offset);
  return 0;
}

/* ------------------------- fds that cross by key ------------------------- */

/* This process's shared fds. Few and rarely changed: a locked array. */
typedef struct {
  uint64_t key;
  int fd;
} shared_fd_t;

/* A retired entry's key (mp__fd_retire) has this bit too, which no key from the arena's
 * counter has: a look-up, on the path of every call, misses such an entry at no cost, and
 * a forked child closes it as not passed. (A wild key with the bit only turns an
 * MP_ENOTPASSED into MP_ECLOSED.) */
#define RETIRED (UINT64_C(1) << 63)

static struct {
  pthread_mutex_t lock;
  shared_fd_t *entries;
  size_t count, capacity;
} fds = {PTHREAD_MUTEX_INITIALIZER, NULL, 0, 0};

static shared_fd_t *find_fd(uint64_t key) {
  for (size_t i = 0; i < fds.count; i++)
    if (fds.entries[i].key == key)
      return &fds.entries[i];
  return NULL;
}

int mp__fd_adopt(uint64_t key, int fd) {
  pthread_mutex_lock(&fds.lock);
  int rc = 0;
  /* Every step leaves a table a child forked in between can use (a fork by another thread
   * does not wait for this lock unless a close is pending): the grown copy is whole before
   * it is published and the old one freed after (realloc could free it first), and an
   * entry is whole before the count takes it in. */
  if (fds.count == fds.capacity) {
    size_t capacity = fds.capacity ? fds.capacity * 2 : 16;
    shared_fd_t *grown = malloc(capacity * sizeof *grown), *old = fds.entries;
    if (grown) {
      if (fds.count)
        memcpy(grown, old, fds.count * sizeof *grown);
      fds.entries = grown;
      fds.capacity = capacity;
      atomic_thread_fence(memory_order_release); /* the fork is another thread's */
      free(old);
    } else {
      rc = mp__error(MP_ENOMEM, "registering a shared fd");
    }
  }
  if (rc == 0) {
    fds.entries[fds.count] = (shared_fd_t){key, fd};
    atomic_thread_fence(memory_order_release);
    fds.count++;
  }
  pthread_mutex_unlock(&fds.lock);
  return rc;
}

int mp__fd_share(int fd, uint64_t *key) {
  *key = mp__shared_unique();
  return mp__fd_adopt(*key, fd);
}

int mp__fd_lookup(uint64_t key) {
  pthread_mutex_lock(&fds.lock);
  shared_fd_t *entry = find_fd(key);
  int fd = entry ? entry->fd : find_fd(key | RETIRED) ? MP_ECLOSED : MP_ENOTPASSED;
  pthread_mutex_unlock(&fds.lock);
  if (fd >= 0)
    return fd;
  return fd == MP_ECLOSED
             ? mp__error(fd, "this object is closed in this process (the close waits for a "
                             "call still in it)")
             : mp__error(fd, "this object's file descriptor was not passed to this process "
                             "(mp_process_pass_*)");
}

void mp__fd_retire(uint64_t key) {
  pthread_mutex_lock(&fds.lock);
  shared_fd_t *entry = find_fd(key);
  if (entry)
    entry->key |= RETIRED;
  pthread_mutex_unlock(&fds.lock);
}

void (*mp__fd_unshare_hook)(void);

int mp__fd_unshare(uint64_t key) {
  pthread_mutex_lock(&fds.lock);
  shared_fd_t *entry = find_fd(key);
  if (!entry)
    entry = find_fd(key | RETIRED);
  int fd = entry ? entry->fd : -1;
  if (entry) {
    fds.count--;
    if (mp__fd_unshare_hook) /* tests: the table is half-updated here */
      mp__fd_unshare_hook();
    *entry = fds.entries[fds.count];
    /* Under the lock, which a fork holds while a connection's close is pending: a child
     * forked then has both the entry and the fd, or neither. A raw close: no cancellation
     * point with the lock held. */
    mp__raw_syscall(SYS_close, fd, 0, 0, 0);
  }
  pthread_mutex_unlock(&fds.lock);
  return fd < 0 ? MP_ENOTPASSED : 0;
}

void mp__fd_lock(void) {
  pthread_mutex_lock(&fds.lock);
}

void mp__fd_unlock(void) {
  pthread_mutex_unlock(&fds.lock);
}

MP__CHILD_TEXT void mp__fd_after_fork(void) {
  mp__reset_lock(&fds.lock);
}

MP__CHILD_TEXT void mp__fd_keep_only(const uint64_t *keys, size_t n) {
  /* A fresh child: no other thread, and the lock was reset by the atfork handler. */
  size_t kept = 0;
  for (size_t i = 0; i < fds.count; i++) {
    bool passed = false;
    for (size_t j = 0; j < n && !passed; j++)
      passed = keys[j] == fds.entries[i].key;
    if (passed)
      fds.entries[kept++] = fds.entries[i];
    else
      mp__raw_syscall(SYS_close, fds.entries[i].fd, 0, 0, 0);
  }
  if (fds.count != kept) /* an unchanged table is not written: its page is not copied */
    fds.count = kept;
}
