/* Error codes, their names, and the per-thread sentence that explains the last failure. */
#include "internal.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *mp_strerror(int code) {
  switch (code) {
#define MP__ERR_TEXT(name, value, text)                                                     \
  case MP_##name:                                                                           \
    return text;
    MP_ERRNO_MAP(MP__ERR_TEXT)
#undef MP__ERR_TEXT
  case 0:
    return "success";
  default:
    break;
  }
  const char *text = code < 0 && code != INT_MIN ? strerrordesc_np(-code) : NULL;
  return text ? text : "unknown error";
}

const char *mp_err_name(int code) {
  switch (code) {
#define MP__ERR_NAME(name, value, text)                                                     \
  case MP_##name:                                                                           \
    return "MP_" #name;
    MP_ERRNO_MAP(MP__ERR_NAME)
#undef MP__ERR_NAME
  case 0:
    return "OK";
  default:
    break;
  }
  const char *name = code < 0 && code != INT_MIN ? strerrorname_np(-code) : NULL;
  return name ? name : "UNKNOWN";
}

const char *mp_last_error(void) {
  return last_error;
}

int mp__error(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return code;
}

int mp__error_prefix(int code, const char *fmt, ...) {
  /* The last error is copied out first: formatting into the buffer it is read from is
   * undefined. */
  char saved[sizeof last_error];
  memcpy(saved, last_error, sizeof saved);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  /* The cause follows, cut to the room left (a precision tells the compiler so). */
  if (n >= 0 && (size_t)n < sizeof last_error) {
    size_t room = sizeof last_error - (size_t)n;
    snprintf(last_error + n, room, ": %.*s", (int)room, saved);
  }
  return code;
}

int mp__syserror(const char *fmt, ...) {
  int saved = errno;
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  if (n >= 0 && (size_t)n < sizeof last_error)
    snprintf(last_error + n, sizeof last_error - (size_t)n, ": %s", mp_strerror(-saved));
  errno = saved;
  return -saved;
}
