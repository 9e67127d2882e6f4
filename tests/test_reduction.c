/*
 * Functions by identity (lib/reduction.c), inside: a child that must load the object named
 * by a reference loads the file it checked, even if another file takes the path between the
 * check and the load. This suite links the static library and stands in for dlopen (below),
 * so that the other file takes the path at the worst moment, every time.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/stat.h>

#include "../lib/internal.h"
#include "mp_test.h"

#ifndef MODULE_A_PATH
#error "MODULE_A_PATH and MODULE_B_PATH must name the two variants of the test module"
#endif

/* When set, the next dlopen() first renames swap_from over swap_to. */
static const char *swap_from, *swap_to;

/* libmp's calls of dlopen() come here (the static library binds to this definition). */
void *dlopen(const char *file, int mode) {
  static void *(*real)(const char *, int);
  if (!real) {
    void *sym = dlsym(RTLD_NEXT, "dlopen");
    memcpy(&real, &sym, sizeof real); /* an object pointer to a function's: by bytes */
  }
  if (swap_from && rename(swap_from, swap_to) == 0)
    swap_from = NULL;
  return real(file, mode);
}

/* Copies the file from into to, executable. */
static bool copy_to(const char *from, const char *to) {
  int in = open(from, O_RDONLY | O_CLOEXEC);
  int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
  struct stat st;
  bool ok = in >= 0 && out >= 0 && fstat(in, &st) == 0;
  for (off_t left = ok ? st.st_size : 0; ok && left > 0;) {
    ssize_t n = copy_file_range(in, NULL, out, NULL, (size_t)left, 0);
    ok = n > 0;
    left -= n;
  }
  if (in >= 0)
    close(in);
  if (out >= 0 && close(out) != 0)
    ok = false;
  return ok;
}

/* A reference to variant A's function, made while A was loaded from a path; the path then
 * taken by variant B between the child's check and its load: the function resolved is A's
 * (the load goes through the descriptor checked), where it was B's file that got loaded
 * (and refused only after its constructors ran). */
START_TEST(test_load_is_the_file_checked) {
  char dir[] = "/tmp/libmp-reduction-XXXXXX";
  T_ASSERT(mkdtemp(dir) != NULL, "mkdtemp");
  char path[128], other[128];
  snprintf(path, sizeof path, "%s/module.so", dir);
  snprintf(other, sizeof other, "%s/other.so", dir);
  T_ASSERT(copy_to(MODULE_A_PATH, path) && copy_to(MODULE_B_PATH, other), "copies");
  void *h = dlopen(path, RTLD_NOW);
  T_ASSERT(h != NULL, "dlopen: %s", dlerror());
  void *sym = dlsym(h, "module_target");
  mp__fn_t target;
  memcpy(&target, &sym, sizeof target);
  mp__fnref_t ref;
  MP_ASSERT_OK(mp__fnref_from_pointer(target, &ref));
  T_STR_EQ(ref.path, path);
  dlclose(h);
  T_ASSERT(dlopen(path, RTLD_NOW | RTLD_NOLOAD) == NULL, "the module is unloaded");

  swap_from = other;
  swap_to = path;
  mp__fn_t fn = NULL;
  int rc = mp__fnref_resolve(&ref, &fn);
  bool swapped = swap_from == NULL;
  swap_from = NULL;
  unlink(path);
  unlink(other);
  rmdir(dir);
  T_ASSERT(swapped, "the other file took the path during the load");
  MP_ASSERT_OK(rc);
  T_INT_EQ(((mp_target_t)fn)(NULL, 0), 41); /* variant A's */
  /* Found again under the path it was asked by (a reference made from it names it so). */
  mp__fnref_t again;
  MP_ASSERT_OK(mp__fnref_from_pointer(fn, &again));
  T_STR_EQ(again.path, path);
}
END_TEST

static Suite *reduction_suite(void) {
  Suite *s = suite_create("reduction");
  TCase *tc = mp_test_tcase(s, "load", 30);
  tcase_add_test(tc, test_load_is_the_file_checked);
  return s;
}

MP_TEST_MAIN(reduction_suite)
