// The public header from C++ before C++20 (no designated initializers): the pool's options
// with MP_POOL_OPTIONS_INIT and mp_pool_options_init, and a map on a thread pool.
#include <cstdio>

#include "mp.h"

static int square(const void *arg, size_t, void *result, size_t *) {
  int x = *static_cast<const int *>(arg);
  *static_cast<int *>(result) = x * x;
  return 0;
}

int main() {
  mp_pool_options_t a = MP_POOL_OPTIONS_INIT, b;
  mp_pool_options_init(&b);
  // Field by field: memcmp would compare the padding after processes, which an aggregate
  // initializer leaves as the stack had it.
  if (a.processes != b.processes || a.context != b.context || a.initializer != b.initializer ||
      a.initargs != b.initargs || a.initargs_size != b.initargs_size ||
      a.maxtasksperchild != b.maxtasksperchild || a.retries != b.retries ||
      a.processes != MP_POOL_CPU_COUNT) {
    std::fprintf(stderr, "the two initializers differ\n");
    return 1;
  }
  b.processes = 2;
  if (mp_get_context("thread", &b.context) < 0)
    return 1;
  mp_pool_t *pool;
  int rc = mp_pool_create(&pool, &b);
  if (rc < 0) {
    std::fprintf(stderr, "mp_pool_create: %s\n", mp_last_error());
    return 1;
  }
  int in[4] = {1, 2, 3, 4}, out[4] = {0, 0, 0, 0};
  rc = mp_pool_map(pool, square, in, 4, sizeof in[0], out, sizeof out[0], 0);
  mp_pool_destroy(pool);
  if (rc < 0 || out[3] != 16) {
    std::fprintf(stderr, "map: %d, %s\n", rc, mp_last_error());
    return 1;
  }
  return 0;
}
