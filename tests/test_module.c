/*
 * A shared module whose function is a process target, built twice (MODULE_VARIANT 1 and 2)
 * so that the two files differ in content and in ELF build-id.
 */
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

#ifndef MODULE_VARIANT
#error "MODULE_VARIANT must be defined"
#endif

#define MODULE_STR2(x) #x
#define MODULE_STR(x) MODULE_STR2(x)

__attribute__((visibility("default"))) int module_target(void *arg, size_t size);
__attribute__((visibility("default"))) const char *module_variant(void);

const char *module_variant(void) { return "libmp test module, variant " MODULE_STR(MODULE_VARIANT); }

/* Loading the module runs code: where TEST_MODULE_MARKER names a file, its constructor
 * creates it, so a test can tell whether a process loaded the file at all. */
__attribute__((constructor)) static void mark_loaded(void) {
  const char *marker = getenv("TEST_MODULE_MARKER");
  int fd = marker ? open(marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0600) : -1;
  if (fd >= 0)
    close(fd);
}

/* Variant 1 returns 41, variant 2 returns 42. */
int module_target(void *arg, size_t size) {
  (void)arg;
  (void)size;
  return 40 + MODULE_VARIANT;
}
