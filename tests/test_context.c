/* Check suite of the context layer: contexts, the default start method, set_executable. */
#include <limits.h>

#include "mp_test.h"

/* Each Check test runs in a fresh fork of the runner, so the default start method is
 * still unfixed when a test begins; the runner itself never asks for it. Tests that depend
 * on the environment set or clear MP_START_METHOD before the first query. */

START_TEST(test_get_context_each_method) {
  unsetenv("MP_START_METHOD");
  mp_context_t *seen[N_METHODS];
  for (int i = 0; i < N_METHODS; i++) {
    mp_context_t *ctx = NULL;
    MP_ASSERT_OK(mp_get_context(METHODS[i], &ctx));
    T_ASSERT(ctx != NULL, "no context for %s", METHODS[i]);
    T_STR_EQ(mp_context_start_method(ctx), METHODS[i]);
    seen[i] = ctx;
    /* Contexts are static objects: asking again gives the same one. */
    mp_context_t *again = NULL;
    MP_ASSERT_OK(mp_get_context(METHODS[i], &again));
    T_ASSERT(again == ctx, "second mp_get_context(%s) gave another object", METHODS[i]);
  }
  T_ASSERT(seen[0] != seen[1] && seen[1] != seen[2] && seen[0] != seen[2],
           "two start methods share a context");
}
END_TEST

START_TEST(test_get_context_errors) {
  unsetenv("MP_START_METHOD");
  MP_ASSERT_ERR(mp_get_context("fork", NULL), MP_EINVAL);
  MP_ASSERT_ERR(mp_get_context(NULL, NULL), MP_EINVAL);
  mp_context_t *ctx = NULL;
  MP_ASSERT_ERR(mp_get_context("nope", &ctx), MP_EMETHOD);
  MP_ASSERT_ERR(mp_get_context("", &ctx), MP_EMETHOD);
  MP_ASSERT_ERR(mp_get_context("Fork", &ctx), MP_EMETHOD);
  MP_ASSERT_ERR(mp_get_context("spawn ", &ctx), MP_EMETHOD);
  T_ASSERT(strstr(mp_last_error(), "spawn ") != NULL, "last error \"%s\"", mp_last_error());
  T_ASSERT(mp_context_start_method(NULL) == NULL, "start method of NULL is not NULL");
}
END_TEST

START_TEST(test_all_start_methods) {
  const char *const *all = mp_get_all_start_methods();
  T_ASSERT(all != NULL, "mp_get_all_start_methods() is NULL");
  for (int i = 0; i < N_METHODS; i++) T_STR_EQ(all[i], METHODS[i]);
  T_ASSERT(all[N_METHODS] == NULL, "the list is not NULL-terminated after 3 entries");
}
END_TEST

START_TEST(test_default_is_fork) {
  unsetenv("MP_START_METHOD");
  T_STR_EQ(mp_get_start_method(), "fork");
  mp_context_t *ctx = NULL, *fork_ctx = NULL;
  MP_ASSERT_OK(mp_get_context(NULL, &ctx));
  MP_ASSERT_OK(mp_get_context("fork", &fork_ctx));
  T_ASSERT(ctx == fork_ctx, "the default context is not the fork context");
  T_STR_EQ(mp_context_start_method(ctx), "fork");
}
END_TEST

START_TEST(test_set_start_method_once) {
  unsetenv("MP_START_METHOD");
  MP_ASSERT_OK(mp_set_start_method("spawn", false));
  T_STR_EQ(mp_get_start_method(), "spawn");
  mp_context_t *ctx = NULL;
  MP_ASSERT_OK(mp_get_context(NULL, &ctx));
  T_STR_EQ(mp_context_start_method(ctx), "spawn");

  /* Once set, it stays set... */
  MP_ASSERT_ERR(mp_set_start_method("forkserver", false), MP_ECONTEXT);
  MP_ASSERT_ERR(mp_set_start_method("spawn", false), MP_ECONTEXT);
  T_STR_EQ(mp_get_start_method(), "spawn");

  /* ...unless forced. */
  MP_ASSERT_OK(mp_set_start_method("forkserver", true));
  T_STR_EQ(mp_get_start_method(), "forkserver");
  MP_ASSERT_OK(mp_get_context(NULL, &ctx));
  T_STR_EQ(mp_context_start_method(ctx), "forkserver");
  MP_ASSERT_OK(mp_set_start_method("fork", true));
  T_STR_EQ(mp_get_start_method(), "fork");
}
END_TEST

START_TEST(test_set_start_method_errors) {
  unsetenv("MP_START_METHOD");
  MP_ASSERT_ERR(mp_set_start_method(NULL, false), MP_EINVAL);
  MP_ASSERT_ERR(mp_set_start_method(NULL, true), MP_EINVAL);
  MP_ASSERT_ERR(mp_set_start_method("bogus", false), MP_EMETHOD);
  MP_ASSERT_ERR(mp_set_start_method("bogus", true), MP_EMETHOD);
  /* The failures above did not fix the method. */
  MP_ASSERT_OK(mp_set_start_method("spawn", false));
  T_STR_EQ(mp_get_start_method(), "spawn");
  /* A forced invalid method keeps the current one. */
  MP_ASSERT_ERR(mp_set_start_method("bogus", true), MP_EMETHOD);
  T_STR_EQ(mp_get_start_method(), "spawn");
}
END_TEST

START_TEST(test_get_start_method_fixes_it) {
  /* As in Python: asking for the start method fixes the default. */
  unsetenv("MP_START_METHOD");
  T_STR_EQ(mp_get_start_method(), "fork");
  MP_ASSERT_ERR(mp_set_start_method("spawn", false), MP_ECONTEXT);
  T_STR_EQ(mp_get_start_method(), "fork");
  MP_ASSERT_OK(mp_set_start_method("spawn", true));
  T_STR_EQ(mp_get_start_method(), "spawn");
}
END_TEST

START_TEST(test_env_chooses_default) {
  const char *m = METHODS[_i];
  T_INT_EQ(setenv("MP_START_METHOD", m, 1), 0);
  T_STR_EQ(mp_get_start_method(), m);
  mp_context_t *ctx = NULL, *named = NULL;
  MP_ASSERT_OK(mp_get_context(NULL, &ctx));
  MP_ASSERT_OK(mp_get_context(m, &named));
  T_ASSERT(ctx == named, "default context is not the %s context", m);
  T_STR_EQ(mp_context_start_method(ctx), m);
}
END_TEST

START_TEST(test_env_invalid) {
  T_INT_EQ(setenv("MP_START_METHOD", "bogus-env-method", 1), 0);
  mp_context_t *ctx = NULL;
  MP_ASSERT_ERR(mp_get_context(NULL, &ctx), MP_EMETHOD);
  T_ASSERT(mp_get_start_method() == NULL, "mp_get_start_method() is \"%s\", expected NULL",
           mp_get_start_method());
  const char *msg = mp_last_error();
  T_ASSERT(msg != NULL && msg[0] != '\0', "no explanation of the invalid MP_START_METHOD");
  T_ASSERT(strstr(msg, "bogus-env-method") != NULL || strstr(msg, "MP_START_METHOD") != NULL,
           "\"%s\" names neither the variable nor its value", msg);
  /* Named contexts still work. */
  MP_ASSERT_OK(mp_get_context("spawn", &ctx));
  T_STR_EQ(mp_context_start_method(ctx), "spawn");
}
END_TEST

START_TEST(test_set_executable) {
  MP_ASSERT_OK(mp_set_executable(NULL));
  MP_ASSERT_ERR(mp_set_executable(""), MP_EINVAL);

  size_t n = PATH_MAX + 64;
  char *longpath = malloc(n + 1);
  T_ASSERT(longpath != NULL, "malloc");
  longpath[0] = '/';
  memset(longpath + 1, 'a', n - 1);
  longpath[n] = '\0';
  int rc = mp_set_executable(longpath);
  free(longpath);
  MP_ASSERT_ERR(rc, MP_EINVAL);

  /* Setting a path starts nothing and is accepted; NULL restores the executable. */
  MP_ASSERT_OK(mp_set_executable("/bin/true"));
  MP_ASSERT_OK(mp_set_executable(NULL));
}
END_TEST

static Suite *context_suite(void) {
  Suite *s = suite_create("context");
  TCase *tc = mp_test_tcase(s, "context", 10);
  tcase_add_test(tc, test_get_context_each_method);
  tcase_add_test(tc, test_get_context_errors);
  tcase_add_test(tc, test_all_start_methods);
  tcase_add_test(tc, test_default_is_fork);
  tcase_add_test(tc, test_set_start_method_once);
  tcase_add_test(tc, test_set_start_method_errors);
  tcase_add_test(tc, test_get_start_method_fixes_it);
  tcase_add_loop_test(tc, test_env_chooses_default, 0, N_METHODS);
  tcase_add_test(tc, test_env_invalid);
  tcase_add_test(tc, test_set_executable);
  return s;
}

MP_TEST_MAIN(context_suite)
