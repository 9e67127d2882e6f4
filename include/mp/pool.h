/*
 * libmp: the Pool (Python's multiprocessing.Pool and multiprocessing.dummy.Pool).
 *
 * What crosses to a worker: bytes, and libmp handles (a Value, Array, Lock, Queue ... placed
 * in an item works under every start method). Not the program's own pointers, file
 * descriptors or globals: an item holding a pointer works under "fork" and "thread" (the
 * worker shares or copies the parent's memory) but under "spawn" and "forkserver" it points
 * at nothing in the worker, which usually dies of SIGSEGV (MP_EWORKERDIED, whose message
 * then says so); a pointer that happens to be valid there reads the worker's own memory.
 * Such a pointer cannot be told from other bytes in general, so it is not refused. Pass
 * the bytes themselves: strings and buffers of any size with mp_pool_map_items.
 *
 * A pool is a handle: a set of workers (processes of a context, or threads of the "thread"
 * context) that run tasks, and a supervisor thread that replaces the workers that die. A
 * submitted map or apply is a request, an mp_async_result_t, whose result the caller
 * collects.
 *
 * Tasks. A task function gets its argument bytes and writes its result:
 *
 *   static int square(const void *arg, size_t size, void *result, size_t *result_size) {
 *     int x = *(const int *)arg;
 *     *(int *)result = x * x;
 *     return 0;
 *   }
 *
 * On entry *result_size is the room in result (a map's result_size, an apply's
 * result_max); an apply's task may lower it to return fewer bytes. The task returns 0, or
 * fails by returning non-zero, with a message if it calls mp_task_fail():
 *   return mp_task_fail("cannot take the root of %d", x);
 * The caller then gets MP_ETASK, and mp_last_error() holds the message (Python: the task's
 * exception re-raised by get()). A task function crosses to the workers by identity, like a
 * process target: one outside every loaded object is refused at submission (MP_ECROSS).
 *
 * A worker that dies (killed, a crash, exit() in a task) fails the task it was running with
 * MP_EWORKERDIED and a message naming that item and the signal or the status (or the task
 * runs again, up to options.retries times); the worker is replaced and every other task
 * completes. A worker that dies before it is ready is replaced too; five such starts in a
 * row, with no worker ready, end the pool (MP_ETERMINATED, saying why).
 *
 * Fork safety: a pool is used from the process that created it; a child sees its memory
 * but must not call it.
 *
 * Signals: the waits of the pool (map, starmap, apply, mp_async_result_get and _wait,
 * mp_imap_next) go on to their deadline through any signal handler, SA_RESTART or not,
 * except SIGINT: when SIGINT is caught by a handler (sigaction or signal(), any flags) during
 * a wait that blocks (timeout > 0), the wait returns MP_EINTR once the handler has run, and a
 * blocking map, starmap or apply terminates the pool first. To learn of it the library
 * chains a counting handler in front of the program's SIGINT handler, at each such wait that
 * finds a handler not yet chained (sigaction(SIGINT, NULL, &old) then shows the library's
 * function; the program's own still runs, with its flags). Under SIGINT's default action the
 * program dies, and its workers with it; an ignored SIGINT does nothing. A SIGINT that
 * arrives just as a wait is going to sleep may be missed by it.
 */
#ifndef MP_POOL_H
#define MP_POOL_H

#ifndef MP_H
#error "include <mp.h>, not <mp/pool.h>"
#endif

/* ================================ the pool ================================ */

typedef struct mp_pool_s mp_pool_t;
typedef struct mp_async_result_s mp_async_result_t;
typedef struct mp_imap_s mp_imap_t;

/* A task: see the top of this header. Runs in a worker. */
typedef int (*mp_task_fn_t)(const void *arg, size_t size, void *result, size_t *result_size);

/* A worker's initializer, run once in each worker before its first task with its own copy
 * of the initializer's argument bytes; non-zero (with mp_task_fail() for a message) fails
 * the pool's creation. Python: Pool(initializer=, initargs=). */
typedef int (*mp_initializer_t)(const void *arg, size_t size);

/*
 * Records the failure message of the running task (or initializer), printf-style, and
 * returns MP_ETASK, so that a task fails with `return mp_task_fail(...)`. Outside a task it
 * only returns MP_ETASK. Python: raising an exception in the task.
 */
MP_EXTERN int mp_task_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The default number of workers: mp_cpu_count(). */
#define MP_POOL_CPU_COUNT (-1)

typedef struct {
  /* Workers: MP_POOL_CPU_COUNT or 1 .. 1024 (0 is refused, as Python refuses it). */
  int processes;
  /* Where workers come from: a process context, or mp_get_context("thread"); NULL is the
   * default context. */
  mp_context_t *context;
  mp_initializer_t initializer; /* NULL: none */
  const void *initargs;         /* copied at creation */
  size_t initargs_size;
  /* A worker that has run this many tasks (chunks of a map) is replaced; 0: never. */
  unsigned maxtasksperchild;
  /* A task lost to a dead worker is run again up to this many times before it fails with
   * MP_EWORKERDIED; 0: never (no Python counterpart: Python's Pool hangs there). */
  unsigned retries;
} mp_pool_options_t;

/* The defaults: MP_POOL_CPU_COUNT workers of the default context, no initializer, no
 * maxtasksperchild, no retries. C++ before C++20 has no designated initializers: there the
 * macro names every field in order (or call mp_pool_options_init). */
#ifdef __cplusplus
#define MP_POOL_OPTIONS_INIT                                                                   \
  { MP_POOL_CPU_COUNT, NULL, NULL, NULL, 0, 0, 0 }
#else
#define MP_POOL_OPTIONS_INIT                                                                   \
  { .processes = MP_POOL_CPU_COUNT }
#endif

/* Sets *options to MP_POOL_OPTIONS_INIT, from any language (NULL is ignored). */
MP_EXTERN void mp_pool_options_init(mp_pool_options_t *options);

/*
 * Starts a pool; with an initializer, waits until every worker has run it. Without one it
 * returns once the workers are started, not ready (as Python's Pool): a job submitted then
 * is taken by each worker as it starts. options NULL means MP_POOL_OPTIONS_INIT. Under
 * "fork", the first workers and the pool's zygote (a small single-threaded process that
 * forks the replacement workers) are forked here, from the calling thread, before this
 * pool's supervisor thread starts: every worker starts from the program as it was at this
 * call, and none from a process running this pool's supervisor. If
 * the caller's process has other threads then (the program's own, or the supervisors and
 * thread workers of pools created earlier), a lock another thread held at that instant
 * stays held in the workers and the zygote (glibc's malloc and stdio, and libmp's own
 * locks, are made safe across fork). Create fork pools before starting threads, or use
 * "forkserver" (docs/architecture.md).
 * Errors: MP_EINVAL (pool NULL, processes 0, negative or above 1024, initargs NULL with a
 * size), MP_ECROSS (the initializer cannot cross), MP_ETASK (an initializer failed:
 * mp_last_error() has its message), MP_EWORKERDIED (with an initializer, five starts in a
 * row died before their worker was ready, in the initializer or killed: a single such death
 * is only replaced; without one, such a pool is terminated instead, and its calls fail with
 * MP_ETERMINATED and that reason),
 * MP_ENOMEM, MP_EMETHOD, or a start error of mp_process_start().
 * Python: multiprocessing.Pool(processes, initializer, initargs, maxtasksperchild, context).
 */
MP_EXTERN int mp_pool_create(mp_pool_t **pool, const mp_pool_options_t *options);

/* The number of workers. Python: Pool._processes. */
MP_EXTERN int mp_pool_processes(const mp_pool_t *pool);

/*
 * Maps fn over n items of item_size bytes each and stores each result (result_size bytes)
 * at results[i]: out[i] = fn(in[i]), in order, as a for loop would. chunksize 0 takes
 * Python's default (n / (4 * processes), rounded up); workers take chunks of that many items;
 * a chunksize above n (up to SIZE_MAX) is n: the whole input is one chunk.
 * The caller keeps ownership of items and results; they are read and written only during
 * the call. Blocks until every item is accounted for; a failed item fails the map with the
 * error of the first failed item (the lowest index) once the others are done; the results
 * of the chunks that succeeded are written, those of a failed chunk are zero. Failed chunks:
 * a failed item ends its chunk (its later items are not run); map returns the first error,
 * and a failed chunk's results are zero, as Python's map raises and returns none; imap
 * loses less (see mp_imap_next).
 * Errors: MP_EINVAL (NULL, items NULL with n and item_size > 0, results NULL with n and
 * result_size > 0, more than 2^31 - 1 chunks),
 * MP_ECROSS, MP_ELIMIT (a 257th distinct task function in this pool), MP_ECLOSED (after
 * close), MP_ETERMINATED (also when no worker is ready and replacements keep failing to
 * start: mp_last_error() says why), MP_ETASK, MP_EWORKERDIED,
 * MP_EINTR (SIGINT was caught, Ctrl-C: the pool is terminated; see "Signals" above; other
 * signals do not end it), MP_EINVAL or MP_ENOMEM at once for sizes whose products overflow
 * or that the shared arena cannot hold. A task that writes past its result's room fails
 * with MP_ETASK ("overran"), caught by a canary after each result.
 * Python: Pool.map(func, iterable, chunksize).
 */
MP_EXTERN int mp_pool_map(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n,
                          size_t item_size, void *results, size_t result_size,
                          size_t chunksize);

/*
 * A callback of an async result, run in the parent by the pool's supervisor thread once the
 * result is ready: `callback` when it succeeded, `error_callback` when it failed. It may call
 * mp_async_result_get(ar, ..., 0) to read the result or the error. It must not block long:
 * it holds up the other callbacks; it may submit work or terminate the pool, but not wait for
 * the pool or destroy it. A non-zero return is counted (mp_pool_callback_errors) and
 * harms nothing else. Python: apply_async(callback=, error_callback=).
 */
typedef int (*mp_result_cb_t)(mp_async_result_t *ar, void *user_data);

typedef struct {
  mp_result_cb_t callback;
  mp_result_cb_t error_callback;
  void *user_data;
} mp_async_callbacks_t;

/*
 * As mp_pool_map, without waiting: *ar is the request; the items are copied before the call
 * returns; the results wait in the pool until mp_async_result_get() copies them out.
 * callbacks may be NULL. Free *ar with mp_async_result_free(). With 256 jobs running (maps,
 * iterators, and applies, of which those submitted while others are in flight share a job,
 * 64 to one) a submission waits until one of them completes (the pool has 256 job slots);
 * completed ones hold no slot while they wait to be collected. Errors: as
 * mp_pool_map's submission errors. Python: Pool.map_async(func, iterable, chunksize, callback,
 * error_callback).
 */
MP_EXTERN int mp_pool_map_async(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n,
                                size_t item_size, size_t result_size, size_t chunksize,
                                const mp_async_callbacks_t *callbacks, mp_async_result_t **ar);

/*
 * Python's starmap calls func(*args) for each tuple of args. A C tuple is a struct: pass an
 * array of argument structs and a task that reads the fields,
 *   typedef struct { int n; unsigned seed; } pi_args_t;
 *   mp_pool_starmap(pool, calc_pi, args, 4, sizeof(pi_args_t), results, sizeof(double), 0);
 * It is mp_pool_map over those structs, with the same errors. Python: Pool.starmap(),
 * starmap_async().
 */
MP_EXTERN int mp_pool_starmap(mp_pool_t *pool, mp_task_fn_t fn, const void *tuples, size_t n,
                              size_t tuple_size, void *results, size_t result_size,
                              size_t chunksize);
MP_EXTERN int mp_pool_starmap_async(mp_pool_t *pool, mp_task_fn_t fn, const void *tuples,
                                    size_t n, size_t tuple_size, size_t result_size,
                                    size_t chunksize, const mp_async_callbacks_t *callbacks,
                                    mp_async_result_t **ar);

/*
 * Runs fn once on a copy of arg (size bytes, any size), with result_cap bytes of room for
 * its result (any size too), and waits. On success the result is in result and
 * *result_len (if not NULL) is its length, which the task may have made shorter than
 * result_cap. Errors: those of mp_pool_map. Python: Pool.apply(func, args).
 */
MP_EXTERN int mp_pool_apply(mp_pool_t *pool, mp_task_fn_t fn, const void *arg, size_t size,
                            void *result, size_t result_cap, size_t *result_len);

/* As mp_pool_apply without waiting; arg is copied before the call returns; the task has
 * result_max bytes of room. One made while the caller streams applies (it made one since its
 * last get, wait or ready) may be held back, up to 8, and handed to the workers together: it
 * starts at the caller's next get, wait or ready, at the eighth, at close, or once a worker
 * runs out of work (within about 20 us). Python: Pool.apply_async(func, args, callback=,
 * error_callback=). */
MP_EXTERN int mp_pool_apply_async(mp_pool_t *pool, mp_task_fn_t fn, const void *arg,
                                  size_t size, size_t result_max,
                                  const mp_async_callbacks_t *callbacks,
                                  mp_async_result_t **ar);

/*
 * Ordered (imap) and unordered (imap_unordered) iterators over fn applied to n items.
 * items stays owned by the caller and must stay valid and unchanged until
 * mp_imap_free(): the iterator copies a bounded window of items at a time (about four
 * chunks per worker), and feeds the next ones as results are taken, instead of consuming
 * the whole input at once. chunksize 0 is Python's default for imap, 1; above n it is n.
 * Errors: as mp_pool_map's submission errors. Python: Pool.imap(), Pool.imap_unordered().
 */
MP_EXTERN int mp_pool_imap(mp_pool_t *pool, mp_task_fn_t fn, const void *items, size_t n,
                           size_t item_size, size_t result_size, size_t chunksize,
                           mp_imap_t **it);
MP_EXTERN int mp_pool_imap_unordered(mp_pool_t *pool, mp_task_fn_t fn, const void *items,
                                     size_t n, size_t item_size, size_t result_size,
                                     size_t chunksize, mp_imap_t **it);

/*
 * The next result, copied to result (result_size bytes, the iterator's), waiting at most
 * timeout seconds; *index (if not NULL) is the item's index, which imap_unordered needs.
 * Returns 0; MP_EEOF after the last result (Python's StopIteration); MP_ETIMEDOUT (try
 * again); MP_ETASK or MP_EWORKERDIED for a failed item (*index set); MP_ETERMINATED; MP_EINTR
 * (SIGINT was caught: see "Signals" above; the iterator can be used again); MP_EINVAL (also
 * for an iterator of mp_pool_imap_items or _lazy: use mp_imap_next_item).
 * Failed chunks: a failed item ends its chunk (its later items are not run). The iteration
 * gives the chunk's items before the failed one as results, then the failure at the failed
 * item's index, skips the chunk's items that never ran (their indexes are never returned)
 * and goes on with the next chunk. With chunksize 1 that is Python's behaviour (next()
 * raises and the iterator goes on); with chunksize > 1 Python raises at the chunk's first
 * item and ends the iteration: libmp loses less. Every imap form (array, items, lazy;
 * ordered or not) behaves so.
 * Python: next(it) and it.next(timeout).
 */
MP_EXTERN int mp_imap_next(mp_imap_t *it, void *result, size_t *index, double timeout);

/* =========================== items of any size, lazy input =========================== */

/* An item or a result of any size: its bytes and their number. */
typedef struct {
  const void *data;
  size_t size;
} mp_item_t;

/*
 * Maps fn over n items of any size, in order: fn gets each item's bytes and size, and has
 * result_max bytes of room for its result, which it may make shorter (*result_size, as an
 * apply's task does). On return *results is one allocation, the caller's, freed with a
 * single free(*results): n mp_item_t, the i-th holding item i's result (data, 8-aligned,
 * points inside the same allocation), then their bytes. The caller keeps items, read only
 * during the call. Each item is sent in a slot of the longest item's size and each result
 * in one of result_max: a few long items among many short ones cost that room for all.
 * A failed item fails the call as mp_pool_map's does (MP_ETASK, MP_EWORKERDIED, the first
 * failed item's message) and *results is still given: a failed chunk's results have size
 * 0. On any other error *results is NULL (free(*results) is always right).
 * Errors: those of mp_pool_map; MP_EINVAL (results NULL, items NULL with n > 0, an item with
 * a size and NULL data, sizes that overflow); MP_ENOMEM. A map of strings:
 *   mp_item_t in[3] = {{"a", 1}, {"bcd", 3}, {"", 0}}, *out;
 *   int rc = mp_pool_map_items(pool, upper, in, 3, 16, 0, &out);
 *   ... out[1].data, out[1].size ... free(out);
 * Python: Pool.map(func, iterable, chunksize) over bytes or str.
 */
MP_EXTERN int mp_pool_map_items(mp_pool_t *pool, mp_task_fn_t fn, const mp_item_t *items,
                                size_t n, size_t result_max, size_t chunksize,
                                mp_item_t **results);

/*
 * Iterators over n items of any size (the caller's array of mp_item_t, kept valid and
 * unchanged, with the bytes it points at, until mp_imap_free()), each result of at most
 * result_max bytes, read with mp_imap_next_item(). The same bounded window as
 * mp_pool_imap's: items are copied a chunk at a time as results are taken. chunksize 0 is
 * 1. Errors: as mp_pool_map_items'. Python: Pool.imap(), Pool.imap_unordered().
 */
MP_EXTERN int mp_pool_imap_items(mp_pool_t *pool, mp_task_fn_t fn, const mp_item_t *items,
                                 size_t n, size_t result_max, size_t chunksize, mp_imap_t **it);
MP_EXTERN int mp_pool_imap_items_unordered(mp_pool_t *pool, mp_task_fn_t fn,
                                           const mp_item_t *items, size_t n, size_t result_max,
                                           size_t chunksize, mp_imap_t **it);

/*
 * A lazy input: called in the caller's thread (by mp_pool_imap_lazy and by
 * mp_imap_next_item, as results are taken) to write the next item into buf (cap bytes,
 * the iterator's item_max) and its length into *len. Returns 0 for an item, MP_EEOF when
 * there are no more (Python's StopIteration), or another negative MP_E* code for a failure,
 * which mp_imap_next_item returns at its place, after every earlier item's result, and then
 * MP_EEOF. A positive return, or *len above cap, is a failure too (MP_EINVAL). It is not
 * called again after it returned non-zero, nor after mp_imap_free().
 */
typedef int (*mp_item_source_t)(void *user_data, void *buf, size_t cap, size_t *len);

/*
 * Iterators over items taken from next_item(user_data, ...) as the results are consumed:
 * the input may be endless, or too large to hold (the lines of a file, a computed stream).
 * Items have at most item_max bytes, results at most result_max; chunksize 0 is 1. At most
 * the array form's window is in flight, four chunks per worker: the source fills a chunk
 * each time one has been taken (imap_unordered gives the window's results in any order).
 * The consumer may stop at any time with mp_imap_free(): the source is not called again and
 * the chunks in flight are dropped. user_data is the caller's, used until mp_imap_free().
 * The first window is filled during this call. Errors: MP_EINVAL (NULL
 * pool, fn, next_item or it; sizes that overflow), MP_ENOMEM, the submission errors of
 * mp_pool_imap. Python: Pool.imap(func, generator), Pool.imap_unordered(func, generator).
 */
MP_EXTERN int mp_pool_imap_lazy(mp_pool_t *pool, mp_task_fn_t fn, mp_item_source_t next_item,
                                void *user_data, size_t item_max, size_t result_max,
                                size_t chunksize, mp_imap_t **it);
MP_EXTERN int mp_pool_imap_lazy_unordered(mp_pool_t *pool, mp_task_fn_t fn,
                                          mp_item_source_t next_item, void *user_data,
                                          size_t item_max, size_t result_max, size_t chunksize,
                                          mp_imap_t **it);

/*
 * The next result of any iterator, copied to result (cap bytes of room, at least the
 * iterator's result size or result_max), its length in *len and its item's index in *index
 * (each if not NULL), waiting at most timeout seconds. Returns as mp_imap_next() (and the
 * same rule for failed chunks); also MP_ETOOSMALL (cap below the largest result: *len says
 * how much room is needed, nothing is taken), and for a lazy iterator the failure of its
 * source at its place (then MP_EEOF). Python: next(it) and it.next(timeout).
 */
MP_EXTERN int mp_imap_next_item(mp_imap_t *it, void *result, size_t cap, size_t *len,
                                size_t *index, double timeout);

/* Frees an iterator (of any form); tasks it fed and that still run finish in the pool, the
 * iterator's results are dropped. NULL is ignored. */
MP_EXTERN void mp_imap_free(mp_imap_t *it);

/*
 * Waits at most timeout seconds for the result and copies it out: a map's n * result_size
 * bytes or an apply's result (result_cap bytes of room; *result_len, if not NULL, gets the
 * length). result may be NULL with result_cap 0 to learn only the outcome. Can be called
 * again. Returns 0; MP_ETIMEDOUT (not ready); MP_ETOOSMALL (result_cap is less than the
 * result: *result_len says how much is needed; the result is kept); MP_ETASK,
 * MP_EWORKERDIED (mp_last_error() has the first failed item's message); MP_ETERMINATED;
 * MP_EINTR (SIGINT was caught: see "Signals" above; the pool goes on); MP_EINVAL. A failed map
 * still copies the results of the items that succeeded. Python: AsyncResult.get(timeout).
 */
MP_EXTERN int mp_async_result_get(mp_async_result_t *ar, void *result, size_t result_cap,
                                  size_t *result_len, double timeout);

/* Waits at most timeout seconds: 0 when ready, MP_ETIMEDOUT, MP_EINTR (SIGINT) or MP_EINVAL.
 * Python: AsyncResult.wait(timeout). */
MP_EXTERN int mp_async_result_wait(mp_async_result_t *ar, double timeout);

/* 1 if ready (its callback has run), 0 if not, or MP_EINVAL. Python: AsyncResult.ready(). */
MP_EXTERN int mp_async_result_ready(mp_async_result_t *ar);

/* 1 if it succeeded, 0 if it failed, MP_ENOTREADY before it is ready (Python's ValueError),
 * or MP_EINVAL. Python: AsyncResult.successful(). */
MP_EXTERN int mp_async_result_successful(mp_async_result_t *ar);

/* Frees a request; if it is still running its tasks finish in the pool and their result
 * is dropped, and its callbacks still run. NULL is ignored. */
MP_EXTERN void mp_async_result_free(mp_async_result_t *ar);

/* How many callbacks returned non-zero so far. Errors: MP_EINVAL. */
MP_EXTERN int mp_pool_callback_errors(const mp_pool_t *pool);

/* No more tasks: submissions fail with MP_ECLOSED; workers exit once the submitted work is
 * done. A submission another thread makes meanwhile (one waiting for a job slot, say) is
 * either refused with MP_ECLOSED or run before the workers exit. Errors: MP_EINVAL. Python:
 * Pool.close(). */
MP_EXTERN int mp_pool_close(mp_pool_t *pool);

/*
 * Stops every worker at once (SIGKILL) and fails the work not done with MP_ETERMINATED; waits
 * until every worker process is reaped (within 100 ms). A thread worker (the "thread"
 * context) cannot be stopped: it ends after its running task, and terminate waits for that,
 * as long as the task runs (at most 5 s). Errors: MP_EINVAL; MP_ETIMEDOUT (workers still run
 * after 5 s, a thread's long task say: the pool is terminated all the same, and join or
 * destroy waits for them). Python: Pool.terminate().
 */
MP_EXTERN int mp_pool_terminate(mp_pool_t *pool);

/* Waits at most timeout seconds for the workers to exit, after close or terminate.
 * Errors: MP_EINVAL (pool NULL, or still running: Python's ValueError), MP_ETIMEDOUT.
 * Python: Pool.join(). */
MP_EXTERN int mp_pool_join(mp_pool_t *pool, double timeout);

/* Terminates the pool unless it was closed and joined, then frees it, as leaving Python's
 * `with Pool() as pool:` does. Async results and iterators must be freed first (a later
 * call on them is undefined). NULL is ignored. Destroying a pool twice, or calling any pool
 * function on a destroyed pool, prints the call's name to stderr and aborts. */
MP_EXTERN void mp_pool_destroy(mp_pool_t *pool);

/* ======================= maps over shared memory, in place ======================= */

/*
 * Where mp_pool_map_shared finds its items or puts its results: item i is the item_size bytes
 * at offset + i * item_size of an Array (or RawArray) or of a named segment. Exactly one of
 * array and shm is set. No alignment is imposed: the task sees what offset and item_size give.
 */
typedef struct {
  mp_array_t *array;       /* an Array or RawArray, or NULL */
  mp_shared_memory_t *shm; /* a segment (created or attached here), or NULL */
  size_t offset;           /* bytes from the start of the storage to item 0 */
  size_t item_size;        /* bytes per item: the stride, 1 or more */
} mp_shared_span_t;

/*
 * A chunk's task: count items from index first, in and out pointing at item first of the
 * in and out spans, in place in the shared storage (NULL for a span not given), so that it
 * loops over the chunk as over a C array:
 *   static int twice(const void *in, void *out, size_t first, size_t count, void *user) {
 *     for (size_t i = 0; i < count; i++)
 *       ((double *)out)[i] = 2 * ((const double *)in)[i];
 *     return 0;
 *   }
 * It returns 0, or fails the chunk by returning non-zero, with mp_task_fail() for a message.
 * user is the caller's pointer, passed as it is: valid in every worker when it points into
 * the shared arena (a Value, an Array, any libmp handle), or under "thread"; a pointer to the
 * program's own memory is the parent's only under "fork" (a copy as it was at the pool's
 * creation) and points at nothing under "spawn" and "forkserver" (see the top of this header).
 */
typedef int (*mp_shared_task_fn_t)(const void *in, void *out, size_t first, size_t count,
                                   void *user);

/*
 * Maps fn over n items that already live in shared memory, in place: the workers read the
 * items from in and write the results into out where they are, and only chunk descriptors
 * (a chunk number) travel through the pool, so neither the parent nor the pool copies an
 * item or a result: the bandwidth is the workers' own. fn runs once per chunk of chunksize
 * items (0: Python's default, n / (4 * processes) rounded up; above n it is n). in and out
 * may be NULL (fn gets NULL: a map that only writes, or only reads, or a parallel loop over
 * the indexes with both NULL) and may name the same bytes (a transform in place).
 * Ownership: the caller keeps the Arrays and segments and must keep them open during the
 * call (an Array is retained for its duration); workers see what the storage holds when
 * they run (bytes written after the pool was created included), and their writes are in the
 * storage when the call returns. A segment reaches a worker process by its name: the worker
 * attaches to it on its first chunk, so the name must still name that segment (not
 * unlinked, not replaced), and keeps it mapped as long as the calls it runs use it (the
 * memory of a segment unlinked since stays in use until each worker has run a chunk of a
 * call on other storage, or ended); thread workers use the caller's mapping. Chunks run in any order and at the same time: chunks
 * must not write where other chunks read.
 * Blocks until every chunk is accounted for. A failed chunk (fn returned non-zero, or its
 * worker died) fails the call with the first failed chunk's error once the others are done,
 * and mp_last_error() names its items: "mp_pool_map_shared: items [a, b): <why>"; what a
 * failed chunk wrote stays written, and what the other chunks wrote too.
 * Errors: MP_EINVAL (pool or fn NULL; a span with both or neither of array and shm, with
 * item_size 0, on a closed Array, or whose n items, offset included, overflow or pass the
 * end of its storage); MP_ECROSS (fn cannot cross to a worker, as mp_pool_map's); MP_ETASK
 * (fn failed; also when a worker could not reach a segment: unlinked, replaced, or its
 * attach failed, with the reason); MP_EWORKERDIED; MP_ENOMEM; and mp_pool_map's MP_ECLOSED,
 * MP_ETERMINATED, MP_ELIMIT and MP_EINTR. An "mpi" pool fails every chunk with MP_ECROSS: shared
 * memory does not reach another machine.
 * Python: none; the closest is Pool.map over the indexes of a shared array, each task reading
 * and writing it through its memoryview.
 */
MP_EXTERN int mp_pool_map_shared(mp_pool_t *pool, mp_shared_task_fn_t fn,
                                 const mp_shared_span_t *in, const mp_shared_span_t *out,
                                 size_t n, size_t chunksize, void *user);

#endif /* MP_POOL_H */
