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
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
  /* What to look for: an address, or an object by path ("" is the executable). */
  uintptr_t addr;
  const char *path;
  /* What was found. */
  bool visited_any;
  bool found;
  uintptr_t base;
  uintptr_t offset_valid_end; /* one past the highest loaded byte, relative to base */
  const char *name;
  uint32_t build_id_len;
  uint8_t build_id[MP__BUILD_ID_MAX];
} object_search_t;

static void read_build_id(const struct dl_phdr_info *info, object_search_t *s) {
  s->build_id_len = 0;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_NOTE)
      continue;
    size_t align = ph->p_align == 8 ? 8 : 4;
    const uint8_t *p = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
    const uint8_t *end = p + ph->p_memsz;
    while (p + sizeof(ElfW(Nhdr)) <= end) {
      const ElfW(Nhdr) *note = (const ElfW(Nhdr) *)p;
      size_t name_size = (note->n_namesz + align - 1) & ~(align - 1);
      size_t desc_size = (note->n_descsz + align - 1) & ~(align - 1);
      const uint8_t *name = p + sizeof *note;
      const uint8_t *desc = name + name_size;
      if (desc + desc_size > end)
        break;
      if (note->n_type == NT_GNU_BUILD_ID && note->n_namesz == 4 &&
          memcmp(name, "GNU", 4) == 0 && note->n_descsz <= MP__BUILD_ID_MAX) {
        s->build_id_len = note->n_descsz;
        memcpy(s->build_id, desc, note->n_descsz);
        return;
      }
      p = desc + desc_size;
    }
  }
}

static int visit_object(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  object_search_t *s = data;
  /* dl_iterate_phdr reports the executable first; its name is "" or argv[0]. */
  bool is_executable = !s->visited_any;
  s->visited_any = true;
  const char *name = is_executable ? "" : info->dlpi_name;
  uintptr_t end = 0;
  bool holds_addr = false;
  for (int i = 0; i < info->dlpi_phnum; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD)
      continue;
    uintptr_t start = info->dlpi_addr + ph->p_vaddr;
    if (s->addr >= start && s->addr < start + ph->p_memsz)
      holds_addr = true;
    if (ph->p_vaddr + ph->p_memsz > end)
      end = ph->p_vaddr + ph->p_memsz;
  }
  bool match = s->path ? strcmp(name, s->path) == 0 : holds_addr;
  if (!match)
    return 0;
  s->found = true;
  s->base = info->dlpi_addr;
  s->offset_valid_end = end;
  s->name = name;
  read_build_id(info, s);
  return 1;
}

static void search_objects(object_search_t *s) {
  s->visited_any = false;
  s->found = false;
  dl_iterate_phdr(visit_object, s);
}

int mp__fnref_from_pointer(mp__fn_t fn, mp__fnref_t *ref) {
  object_search_t s = {.addr = (uintptr_t)fn};
  search_objects(&s);
  if (!s.found)
    return mp__error(MP_ECROSS, "function %p is in no loaded object (heap, stack or JIT "
                                "memory), so another process cannot find it", (void *)(uintptr_t)fn);
  if (strlen(s.name) >= sizeof ref->path)
    return mp__error(MP_ECROSS, "the path of the object holding %p is too long",
                     (void *)(uintptr_t)fn);
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

int mp__fnref_resolve(const mp__fnref_t *ref, mp__fn_t *fn) {
  const char *what = *ref->path ? ref->path : "the executable";
  object_search_t s = {.path = ref->path};
  search_objects(&s);
  if (!s.found) {
    /* The parent loaded it with dlopen(): load it here too, as unpickling imports. */
    if (!dlopen(ref->path, RTLD_NOW))
      return mp__error(MP_ERESOLVE, "cannot load %s in the child: %s", what, dlerror());
    search_objects(&s);
    if (!s.found)
      return mp__error(MP_ERESOLVE, "%s is loaded but not found in the child", what);
  }
  if (s.build_id_len != ref->build_id_len ||
      memcmp(s.build_id, ref->build_id, ref->build_id_len) != 0) {
    char mine[2 * MP__BUILD_ID_MAX + 1], theirs[2 * MP__BUILD_ID_MAX + 1];
    format_build_id(s.build_id, s.build_id_len, mine, sizeof mine);
    format_build_id(ref->build_id, ref->build_id_len, theirs, sizeof theirs);
    return mp__error(MP_ERESOLVE,
                     "%s is another build in the child (build-id %s) than in the parent "
                     "(build-id %s)",
                     what, mine, theirs);
  }
  if (ref->offset >= s.offset_valid_end)
    return mp__error(MP_ERESOLVE, "offset %#llx lies outside %s in the child",
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
  if (fds.count == fds.capacity) {
    size_t capacity = fds.capacity ? fds.capacity * 2 : 16;
    shared_fd_t *grown = realloc(fds.entries, capacity * sizeof *grown);
    if (grown) {
      fds.entries = grown;
      fds.capacity = capacity;
    } else {
      rc = mp__error(MP_ENOMEM, "registering a shared fd");
    }
  }
  if (rc == 0)
    fds.entries[fds.count++] = (shared_fd_t){key, fd};
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
  int fd = entry ? entry->fd : -1;
  pthread_mutex_unlock(&fds.lock);
  return fd >= 0 ? fd
                 : mp__error(MP_ENOTPASSED, "this object's file descriptor was not passed to "
                                            "this process (mp_process_pass_*)");
}

int mp__fd_unshare(uint64_t key) {
  pthread_mutex_lock(&fds.lock);
  shared_fd_t *entry = find_fd(key);
  int fd = -1;
  if (entry) {
    fd = entry->fd;
    *entry = fds.entries[--fds.count];
  }
  pthread_mutex_unlock(&fds.lock);
  if (fd < 0)
    return MP_ENOTPASSED;
  close(fd);
  return 0;
}

void mp__fd_after_fork(void) {
  mp__reset_lock(&fds.lock);
}

void mp__fd_keep_only(const uint64_t *keys, size_t n) {
  /* A fresh child: no other thread, and the lock was reset by the atfork handler. */
  size_t kept = 0;
  for (size_t i = 0; i < fds.count; i++) {
    bool passed = false;
    for (size_t j = 0; j < n && !passed; j++)
      passed = keys[j] == fds.entries[i].key;
    if (passed)
      fds.entries[kept++] = fds.entries[i];
    else
      close(fds.entries[i].fd);
  }
  fds.count = kept;
}
