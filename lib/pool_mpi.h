/*
 * The MPI launcher's two sides (pool_mpi.c on rank 0, mpi_rank.c on the other ranks) and
 * what crosses between them. Rank 0 runs main and the pool; each of its worker threads owns
 * one other rank and, in place of running a claimed chunk, sends it there as one message
 * and waits for one reply (mpi4py.futures' static mode). Functions cross by identity
 * (reduction.c), so every rank runs the same executable; each rank checks the build-id.
 *
 * The pool speaks on a communicator of its own, mp__mpi_comm, so that the program's own
 * messages on MPI_COMM_WORLD (any tag) never mix with its tasks and replies. MPI is used
 * from several threads of rank 0 one call at a time (MPI_THREAD_SERIALIZED, behind
 * mp__mpi_lock). Waits test and sleep, with a sleep that grows, because Open MPI's
 * blocking calls busy-poll a core.
 */
#ifndef MP_POOL_MPI_H
#define MP_POOL_MPI_H

#include "pool_launcher.h"

#include <mpi.h>
#include <stdlib.h>

enum {
  MP__MPI_TAG_TASK = 1, /* rank 0 -> rank: a task head, then its items */
  MP__MPI_TAG_INIT,  /* rank 0 -> rank: a task head (count 0), then the initializer's bytes */
  MP__MPI_TAG_REPLY, /* rank -> rank 0: a reply head, then the results */
  MP__MPI_TAG_STOP,  /* rank 0 -> rank: the program ends */
};

/* A task message: this head, the function's object path (path_len bytes with its NUL: one
 * for the executable), then the items (or the initializer's bytes) at
 * MP__MPI_ROOM(sizeof head + path_len). Small, so that a chunk of one small item goes in
 * one eager message. */
typedef struct {
  uint64_t offset; /* the function's reference (mp__fnref_t) */
  uint32_t build_id_len;
  uint32_t path_len;
  uint8_t build_id[MP__BUILD_ID_MAX];
  uint64_t item_size; /* an initializer's: its argument's size */
  uint64_t result_size;
  uint64_t result_cap; /* as mp__task_t's */
  uint64_t first;
  uint64_t count;
  uint32_t varsize;
  uint64_t seq; /* the message's number (from 1), which its reply echoes */
} mp__mpi_task_head_t;

/* A reply: this head, a failure's message (msg_len bytes with its NUL, 0 on success), then
 * the results at MP__MPI_ROOM(sizeof head + msg_len). */
typedef struct {
  int32_t code; /* 0, or the task's (or initializer's) negative code */
  uint32_t msg_len;
  uint64_t failed_item;
  uint64_t result_len;
  uint64_t seq; /* the task head's: the message it answers (0: one it could not read) */
} mp__mpi_reply_head_t;

/* Where the bytes after a head start: 64-byte aligned, as a task's items may need. */
#define MP__MPI_ROOM(n) (((size_t)(n) + 63) & ~(size_t)63)

/* Makes *buf (64-byte aligned, its old bytes dropped) hold at least need bytes; false when
 * there is no memory (*buf is then unchanged). */
static inline bool mp__mpi_grow(char **buf, size_t *cap, size_t need) {
  if (need <= *cap)
    return true;
  void *p = NULL;
  if (posix_memalign(&p, 64, need) != 0)
    return false;
  free(*buf);
  *buf = p;
  *cap = need;
  return true;
}

/*
 * What arrives from another rank is checked before it is believed: each side reads a
 * message only through these, with the length MPI received (MPI_Get_count). Both are pure,
 * so that a unit test (tests/test_mpi.c) gives them forged bytes.
 */

/* A rank: checks a message of len bytes with this tag from rank 0. 0 with its head in *h,
 * where its payload starts in *at, the payload's bytes in *in_len, the results' bytes in
 * *out_len; MP_EINVAL with a sentence if it is no task or initializer this rank can run:
 * an unknown tag, a short message, a malformed path or build-id, sizes that overflow or do
 * not fit their slots, a payload longer or shorter than announced, results that no reply
 * can carry. */
int mp__mpi_task_check(const char *msg, size_t len, int tag, mp__mpi_task_head_t *h, size_t *at,
                       size_t *in_len, size_t *out_len);

/* Rank 0: checks a reply of len bytes from rank to message seq, of count items from first
 * whose results take out_len bytes (0, 0, 0 for an initializer). 0 with its head in *r,
 * where its results start in *at and their bytes in *results_len: out_len, or 0 for a
 * failure the rank found before running anything. 1 if it answers an earlier message,
 * already done (the rank's own reply to a message whose first reply was malformed comes
 * after it): the caller drops it. MP_EWORKERDIED with a sentence naming the rank if the
 * rank cannot have sent it: shorter than a head, the answer to another message (0: one the
 * rank could not read; one not sent, or yet to come), a message longer than MP__POOL_MSG
 * or present on success, a failed item outside the chunk, a length other than the head's
 * and the results' together. */
int mp__mpi_reply_check(const char *reply, size_t len, uint64_t seq, uint64_t first,
                        uint64_t count, size_t out_len, int rank, mp__mpi_reply_head_t *r,
                        size_t *at, size_t *results_len);

/* Serialises MPI calls between rank 0's threads. */
extern pthread_mutex_t mp__mpi_lock;

/* The pool's messages' communicator: MPI_COMM_WORLD duplicated by every rank as MPI starts,
 * with MPI_ERRORS_RETURN (a failed call is an error code, not the job's end). */
extern MPI_Comm mp__mpi_comm;

/* Completes the n requests, testing under mp__mpi_lock and sleeping between tests with a
 * delay that grows from none to a millisecond; their statuses in statuses[n] (NULL: not
 * kept). Errors with a sentence. */
int mp__mpi_wait(int n, MPI_Request *reqs, MPI_Status *statuses);

/* Waits as mp__mpi_wait does for the next message from source with tag on mp__mpi_comm and
 * takes it whole into *buf, grown as mp__mpi_grow does: 0 with its length in *len. Errors
 * with a sentence. */
int mp__mpi_recv(int source, int tag, char **buf, size_t *cap, size_t *len);

/* Rank 0: starts MPI on first use; the job's number of ranks in *size. Errors with a
 * sentence: not under mpirun (MP_EMETHOD), MPI failed to start (MP_ESPAWN). */
int mp__mpi_start(int *size);

#endif /* MP_POOL_MPI_H */
