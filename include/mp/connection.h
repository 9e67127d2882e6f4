/*
 * Pipes and connections (Python's multiprocessing.connection): framed messages of any size
 * between processes, poll with a timeout, and mp_wait() on many connections, queues and
 * processes at once.
 *
 * A connection end is a handle to an object in the shared arena, so it crosses to a child
 * as a plain pointer in the argument bytes of mp_process_create(), under every start method:
 * mp_process_start() finds each connection end whose pointer lies, 8-byte aligned, in those
 * bytes and gives the child its file descriptors (Python's args=(conn,)). An end reached
 * indirectly is passed with mp_process_pass_conn(). A child gets only the ends passed to it.
 *
 * Lifetime. Each process that holds an end closes it on its own (mp_conn_close()); a child
 * that returns without closing loses its ends with its exit. The objects are freed once the
 * process that made the pipe has closed both ends and every child they were passed to has
 * been reaped (joined, or seen ended): from then on the handles must not be used, as after
 * free(). Until then a call on an end closed in this process answers MP_ECLOSED.
 *
 * End of file. A receive ends with MP_EEOF once no process holds the peer end any more: as
 * in Python, a parent that passed an end to a child should close its own copy after
 * mp_process_start(), or the child's death is no end of file for it (it holds that end).
 *
 * SIGPIPE. A send to a peer that is gone fails with MP_EEOF. For that, the first send of a
 * process sets SIGPIPE to be ignored if it had its default action, as Python does at start.
 *
 * Threads and processes may share an end: whole messages are sent and received one at a
 * time per end and direction (robust locks), never interleaved. A close while other threads
 * of the process send, receive or poll on the end returns at once: later calls answer
 * MP_ECLOSED, and the calls in progress end as they would have (a blocked one still waits
 * for its message or its room), the last of them closing the fds, so that none uses an fd
 * number the close freed for another file. Until then the end's fds are open, so its peer
 * sees no end of file yet. mp_wait() is not such a call, so that a close under a wait
 * forever still ends the peer: the fds close at once, and the wait may watch the freed
 * number until it wakes or times out (close the end once no thread waits on it). A
 * child forked (by fork() or the "fork" start method) while such a close is pending has the
 * end closed, as if the close had finished first.
 */
#ifndef MP_CONNECTION_H
#define MP_CONNECTION_H

#ifndef MP_H
#error "include <mp.h>, not <mp/connection.h>"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ================================ connections ================================ */

typedef struct mp_conn_s mp_conn_t;

/*
 * Makes a pipe of two connection ends. duplex true: both ends send and receive. duplex
 * false: *a only receives and *b only sends, as Python's Pipe(False) returns (reader,
 * writer). Errors: MP_EINVAL (a or b NULL), MP_ENOMEM, -EMFILE and other pipe2() errors.
 * Python: multiprocessing.Pipe(duplex).
 */
MP_EXTERN int mp_pipe(bool duplex, mp_conn_t **a, mp_conn_t **b);

/*
 * Sends size bytes of buf as one message (0 bytes is an empty message, as Python's b"").
 * Blocks while the pipe is full, until the peer reads or goes away, and returns 0 once the
 * whole message is in the pipe. The caller keeps buf. Errors: MP_EINVAL (conn NULL, buf NULL
 * with size > 0, a receive-only end), MP_ECLOSED (closed in this process, or never passed to
 * it), MP_EEOF (no process holds the peer end: nothing can receive; or a process died in the
 * middle of a message on this end), or the write's error (-EFAULT...): a send that fails
 * after part of the message went has cut it, and this end's sends and the peer's receives
 * fail with MP_EEOF from then on. Python: Connection.send_bytes(buf).
 */
MP_EXTERN int mp_conn_send(mp_conn_t *conn, const void *buf, size_t size);

/*
 * The same, for bytes [offset, offset + size) of the len-byte buffer buf. Errors as
 * mp_conn_send(), and MP_EINVAL if offset > len or size > len - offset.
 * Python: Connection.send_bytes(buf, offset, size).
 */
MP_EXTERN int mp_conn_send_bytes(mp_conn_t *conn, const void *buf, size_t len, size_t offset,
                                 size_t size);

/*
 * Receives the next message into buf (cap bytes), waiting at most timeout seconds for it,
 * and stores its length in *size. A timeout that passes in the middle of a message (its
 * sender stopped) fails with MP_ETIMEDOUT and cuts the stream: this end's receives fail
 * with MP_EEOF from then on. A message longer than cap is not received: the
 * call fails with MP_ETOOSMALL, *size is the length needed, and the message is still the
 * next one to receive. Messages the peer sent before it closed are received before end of
 * file. buf stays the caller's; it may be NULL when cap is 0.
 * Errors: MP_EINVAL (conn or size NULL, buf NULL with cap > 0, a send-only end), MP_ECLOSED,
 * MP_ETIMEDOUT, MP_ETOOSMALL, MP_EEOF (no process holds the peer end and every message has
 * been received, or a sender died in the middle of a message, even while another process
 * still holds the peer end), MP_ECORRUPT (the end's buffer bounds in shared memory were
 * written wild by a process of the program: nothing is read, and every later receive says
 * so too).
 * Python: Connection.recv_bytes_into(buf), with a timeout.
 */
MP_EXTERN int mp_conn_recv(mp_conn_t *conn, void *buf, size_t cap, size_t *size,
                           double timeout);

/*
 * The same, writing the message at buf + offset of the len-byte buffer buf (it must fit in
 * len - offset bytes, else MP_ETOOSMALL with *size the message's length). Errors as
 * mp_conn_recv(), and MP_EINVAL if offset > len. Python: Connection.recv_bytes_into(buf,
 * offset).
 */
MP_EXTERN int mp_conn_recv_bytes(mp_conn_t *conn, void *buf, size_t len, size_t offset,
                                 size_t *size, double timeout);

/*
 * Receives the next message into a buffer allocated with malloc(), which the caller frees
 * with free(); *buf is never NULL on success, also for an empty message. Errors as
 * mp_conn_recv() except MP_ETOOSMALL; MP_ENOMEM (no memory for its start: the message is
 * kept; or for its rest: the receiving stream is broken). The buffer grows as the bytes
 * arrive, so a length the header claims but the sender never sends takes no memory.
 * Python: Connection.recv_bytes().
 */
MP_EXTERN int mp_conn_recv_alloc(mp_conn_t *conn, void **buf, size_t *size, double timeout);

/*
 * Waits at most timeout seconds (0: just looks) until a receive would not block: 1 if a
 * message or end of file is there, 0 if not. Errors: MP_EINVAL (NULL, a send-only end),
 * MP_ECLOSED. Python: Connection.poll(timeout).
 */
MP_EXTERN int mp_conn_poll(mp_conn_t *conn, double timeout);

/*
 * Closes this process's end: its file descriptors here, and (in the process that made the
 * pipe) its reference on the object (see Lifetime above). Other processes keep theirs. With
 * calls of other threads in progress on the end, the last of them does it (see Threads).
 * Errors: MP_EINVAL (NULL, not a connection end), MP_ECLOSED (already closed in this
 * process, or never passed to it). Python: Connection.close().
 */
MP_EXTERN int mp_conn_close(mp_conn_t *conn);

/* Whether the end receives / sends (false for NULL); whether it is closed in this process
 * (or was never passed to it; true for NULL). Python: readable, writable, closed. */
MP_EXTERN bool mp_conn_readable(const mp_conn_t *conn);
MP_EXTERN bool mp_conn_writable(const mp_conn_t *conn);
MP_EXTERN bool mp_conn_closed(const mp_conn_t *conn);

/*
 * Gives the child that proc will start the connection end conn, for an end the argument
 * bytes do not hold directly (behind a pointer, in a table, at an odd offset). The process
 * object keeps the connection's object alive until the child is reaped.
 * Errors: MP_EINVAL (NULL, not a connection end), MP_ENOTCHILD, MP_ESTARTED (already
 * started), MP_ECLOSED (closed in this process), MP_ENOMEM.
 * Python: passing the connection in Process(args=...).
 */
MP_EXTERN int mp_process_pass_conn(mp_process_t *proc, mp_conn_t *conn);

/* ================================ waiting ================================ */

/*
 * Waits at most timeout seconds until at least one of objects[0 .. n) is ready, and returns
 * how many are (0: the timeout passed), setting ready[i] (if ready is not NULL) for each. An
 * object is a connection end (ready: a message or end of file to receive; for a send-only
 * end, its peer has gone; an end closed here is ready), a queue (an item to get, or closed)
 * or a process handle (ready once ended). With n 0 it sleeps for timeout.
 * Errors: MP_EINVAL (objects NULL with n > 0, an object that is none of those, n 0 with
 * MP_FOREVER), MP_ENOTSTARTED (a process not started), MP_ENOMEM, or the error of making a
 * queue's readiness fd (-EMFILE...), without which the wait could not wake.
 * Python: multiprocessing.connection.wait(object_list, timeout).
 */
MP_EXTERN int mp_wait(void *const *objects, size_t n, double timeout, bool *ready);

#ifdef __cplusplus
}
#endif
#endif /* MP_CONNECTION_H */
