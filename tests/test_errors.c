/* Check suite of the errors layer: mp_strerror, mp_err_name, mp_last_error. */
#include <limits.h>
#include <pthread.h>

#include "mp_test.h"

struct code_info {
  int code;
  const char *name;
  const char *text;
};

static const struct code_info CODES[] = {
#define XX(name, value, text) {MP_##name, "MP_" #name, text},
    MP_ERRNO_MAP(XX)
#undef XX
};
#define N_CODES (sizeof CODES / sizeof CODES[0])

START_TEST(test_every_code_named) {
  T_ASSERT(N_CODES >= 13, "the map lists %zu codes", N_CODES);
  for (size_t i = 0; i < N_CODES; i++) {
    const char *name = mp_err_name(CODES[i].code);
    const char *text = mp_strerror(CODES[i].code);
    T_ASSERT(CODES[i].code < 0, "%s has the non-negative value %d", CODES[i].name,
             CODES[i].code);
    T_ASSERT(name != NULL && name[0] != '\0', "mp_err_name(%d) is empty", CODES[i].code);
    T_ASSERT(text != NULL && text[0] != '\0', "mp_strerror(%d) is empty", CODES[i].code);
    T_STR_EQ(name, CODES[i].name);
    T_STR_EQ(text, CODES[i].text);
  }
  /* Distinct names and texts. */
  for (size_t i = 0; i < N_CODES; i++) {
    for (size_t j = i + 1; j < N_CODES; j++) {
      T_ASSERT(strcmp(mp_err_name(CODES[i].code), mp_err_name(CODES[j].code)) != 0,
               "%s and %s have the same name", CODES[i].name, CODES[j].name);
      T_ASSERT(strcmp(mp_strerror(CODES[i].code), mp_strerror(CODES[j].code)) != 0,
               "%s and %s have the same text", CODES[i].name, CODES[j].name);
    }
  }
}
END_TEST

START_TEST(test_errno_codes_keep_errno_value) {
  T_INT_EQ(MP_EINVAL, -EINVAL);
  T_INT_EQ(MP_ENOMEM, -ENOMEM);
  T_INT_EQ(MP_ETIMEDOUT, -ETIMEDOUT);
  T_INT_EQ(MP_ENOSYS, -ENOSYS);
  /* libmp's own codes sit below -4000. */
  int own[] = {MP_EMETHOD,    MP_ECONTEXT, MP_ENOTSTARTED, MP_ESTARTED,  MP_EALIVE,
               MP_ENOTCHILD,  MP_ECROSS,   MP_ESPAWN,      MP_ERESOLVE,  MP_ENOTPASSED,
               MP_ENOTHELD,   MP_EEMPTY,   MP_EFULL,       MP_ECLOSED,   MP_EEOF,
               MP_ETOOSMALL,  MP_EOWNERDEAD, MP_EBROKEN,   MP_ETOOMANY,  MP_EWORKERDIED,
               MP_ETASK,      MP_ETERMINATED, MP_ENOTREADY};
  for (size_t i = 0; i < sizeof own / sizeof own[0]; i++)
    T_ASSERT(own[i] < -4000, "own code %d is not below -4000", own[i]);
}
END_TEST

START_TEST(test_passed_through_errno) {
  static const struct {
    int err;
    const char *name;
  } errs[] = {{EMFILE, "EMFILE"}, {EAGAIN, "EAGAIN"}, {ENOTDIR, "ENOTDIR"},
              {EPERM, "EPERM"},   {EBADF, "EBADF"},   {ECHILD, "ECHILD"}};
  for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++) {
    T_STR_EQ(mp_err_name(-errs[i].err), errs[i].name);
    const char *text = mp_strerror(-errs[i].err);
    T_ASSERT(text != NULL && text[0] != '\0', "mp_strerror(-%s) is empty", errs[i].name);
    T_ASSERT(strcmp(text, strerror(errs[i].err)) == 0 || strstr(text, errs[i].name) != NULL,
             "mp_strerror(-%s) is \"%s\", neither strerror's \"%s\" nor naming it",
             errs[i].name, text, strerror(errs[i].err));
  }
  /* The errno codes of the map keep their MP_ names. */
  T_STR_EQ(mp_err_name(-EINVAL), "MP_EINVAL");
  T_STR_EQ(mp_err_name(-ETIMEDOUT), "MP_ETIMEDOUT");
}
END_TEST

START_TEST(test_unknown_code) {
  int unknown[] = {-123456, -4999, -4000, 123456, 1, 0, -2147483647, INT_MIN};
  for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
    const char *text = mp_strerror(unknown[i]);
    const char *name = mp_err_name(unknown[i]);
    T_ASSERT(text != NULL, "mp_strerror(%d) is NULL", unknown[i]);
    T_ASSERT(name != NULL, "mp_err_name(%d) is NULL", unknown[i]);
    /* Touch the strings: they must be readable. */
    T_ASSERT(strlen(text) < 4096 && strlen(name) < 4096, "unreasonable text for %d",
             unknown[i]);
  }
  /* An unknown code is not named like a known one. */
  for (size_t j = 0; j < N_CODES; j++)
    T_ASSERT(strcmp(mp_err_name(-123456), CODES[j].name) != 0,
             "mp_err_name(-123456) claims to be %s", CODES[j].name);
}
END_TEST

START_TEST(test_last_error_set_by_failure) {
  const char *before = mp_last_error();
  T_ASSERT(before != NULL, "mp_last_error() is NULL");
  T_STR_EQ(before, "");

  mp_context_t *ctx = NULL;
  MP_ASSERT_ERR(mp_get_context("nope-method", &ctx), MP_EMETHOD);
  const char *msg = mp_last_error();
  T_ASSERT(msg != NULL && msg[0] != '\0', "mp_last_error() empty after a failure");
  T_ASSERT(strstr(msg, "nope-method") != NULL, "\"%s\" does not name the bad method", msg);

  MP_ASSERT_ERR(mp_set_start_method("other-bad-name", false), MP_EMETHOD);
  msg = mp_last_error();
  T_ASSERT(strstr(msg, "other-bad-name") != NULL, "\"%s\" does not name the bad method",
           msg);
}
END_TEST

struct thread_result {
  char initial[256];
  char after[512];
  int rc;
};

static void *other_thread(void *arg) {
  struct thread_result *r = arg;
  snprintf(r->initial, sizeof r->initial, "%s", mp_last_error());
  mp_context_t *ctx = NULL;
  r->rc = mp_get_context("thread-bad-name", &ctx);
  snprintf(r->after, sizeof r->after, "%s", mp_last_error());
  return NULL;
}

START_TEST(test_last_error_per_thread) {
  mp_context_t *ctx = NULL;
  MP_ASSERT_ERR(mp_get_context("main-bad-name", &ctx), MP_EMETHOD);
  char mine[512];
  snprintf(mine, sizeof mine, "%s", mp_last_error());
  T_ASSERT(strstr(mine, "main-bad-name") != NULL, "\"%s\" does not name the bad method",
           mine);

  struct thread_result r;
  memset(&r, 0, sizeof r);
  pthread_t t;
  T_INT_EQ(pthread_create(&t, NULL, other_thread, &r), 0);
  T_INT_EQ(pthread_join(t, NULL), 0);

  /* The other thread started with no message and saw its own failure only. */
  T_STR_EQ(r.initial, "");
  T_INT_EQ(r.rc, MP_EMETHOD);
  T_ASSERT(strstr(r.after, "thread-bad-name") != NULL, "thread's message \"%s\"", r.after);
  T_ASSERT(strstr(r.after, "main-bad-name") == NULL, "thread's message \"%s\"", r.after);

  /* This thread's message did not change. */
  T_STR_EQ(mp_last_error(), mine);
  T_ASSERT(strstr(mp_last_error(), "thread-bad-name") == NULL, "main's message \"%s\"",
           mp_last_error());
}
END_TEST

/* The macros come from meson's project version; mp_version() is the library's own. */
START_TEST(test_version) {
  char joined[64];
  snprintf(joined, sizeof joined, "%d.%d.%d", MP_VERSION_MAJOR, MP_VERSION_MINOR,
           MP_VERSION_PATCH);
  T_STR_EQ(joined, PROJECT_VERSION);
  T_STR_EQ(MP_VERSION_STRING, PROJECT_VERSION);
  T_STR_EQ(mp_version(), PROJECT_VERSION);
}
END_TEST

static Suite *errors_suite(void) {
  Suite *s = suite_create("errors");
  TCase *tc = mp_test_tcase(s, "errors", 10);
  tcase_add_test(tc, test_every_code_named);
  tcase_add_test(tc, test_errno_codes_keep_errno_value);
  tcase_add_test(tc, test_passed_through_errno);
  tcase_add_test(tc, test_unknown_code);
  tcase_add_test(tc, test_last_error_set_by_failure);
  tcase_add_test(tc, test_last_error_per_thread);
  tcase_add_test(tc, test_version);
  return s;
}

MP_TEST_MAIN(errors_suite)
