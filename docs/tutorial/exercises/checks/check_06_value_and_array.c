/* The check of exercise 06: an Array filled by slices in several processes. */
#include "check.h"

static long f(uint64_t seed, size_t i) {
  return (long)(((uint64_t)i * 2654435761u ^ seed) % 1000003);
}

long ex06_f(uint64_t seed, size_t i) {
  check_calls_here++;
  return f(seed, i);
}

static void part(mp_context_t *ctx) {
  uint64_t rng = check_seed(), seed = check_next(&rng);
  size_t length = 1000 + (size_t)(check_next(&rng) % 97);
  int workers = 3 + (int)(check_next(&rng) % 3);
  mp_array_t *out;
  mp_value_t *done;
  CHECK_SETUP(mp_array_create(&out, 'l', length, NULL, NULL));
  CHECK_SETUP(mp_value_create(&done, 'l', NULL, NULL));
  check_calls_here = 0;
  int rc = ex06_run(ctx, out, done, workers, seed);
  if (check_calls_here > 0)
    check_fail("ex06_f was called %d times in this process: the workers compute the elements",
               check_calls_here);
  if (rc < 0)
    check_fail("ex06_run returned %s", check_why(rc));
  long count, *got = calloc(length, sizeof *got);
  if (!got)
    exit(2);
  CHECK_SETUP(mp_value_get_long(done, &count));
  CHECK_SETUP(mp_array_read(out, 0, length, got));
  size_t wrong = 0, first = 0;
  for (size_t i = 0; i < length; i++)
    if (got[i] != f(seed, i) && wrong++ == 0)
      first = i;
  if (wrong)
    check_fail("%zu of %zu elements are wrong; the first, out[%zu], holds %ld, expected %ld "
               "(%d workers: does every element belong to a slice, and is it written to the "
               "shared Array?)",
               wrong, length, first, got[first], f(seed, first), workers);
  if (count != (long)length)
    check_fail("done counts %ld elements, expected %zu: each worker adds what it wrote "
               "(mp_value_add_long)",
               count, length);
  free(got);
  CHECK_SETUP(mp_array_close(out));
  CHECK_SETUP(mp_value_close(done));
}

int main(int argc, char **argv) {
  check_methods(argc, argv, check_all_methods, "ex06_run: an Array in slices, a Value count",
                part);
  return check_done("ex_06_value_and_array");
}
