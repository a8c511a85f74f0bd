/*
 * The event loop qrpc runs on: a thin owner of a libevent event_base.
 *
 * Threading: every qrpc object belongs to one loop and must be used only on
 * the thread that runs that loop, except qrpc_loop_post(), which any thread
 * may call.
 */
#ifndef QRPC_LOOP_H
#define QRPC_LOOP_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct event_base;
typedef struct qrpc_loop qrpc_loop;

/* A function handed to the loop thread by qrpc_loop_post(). */
typedef void (*qrpc_loop_fn)(qrpc_loop *loop, void *arg);

/* Creates a loop. With base == NULL the loop creates and owns its own
 * event_base, with precise (sub-millisecond) timers, which QUIC's packet
 * pacing needs; otherwise it uses the caller's, which must outlive the loop
 * and is not freed by it. qrpc_loop_post() needs libevent's thread support,
 * which qrpc turns on (evthread_use_pthreads()) the first time a loop is
 * created: a caller's base must be created after that call (or after the
 * caller's own evthread_use_pthreads()), and should have
 * EVENT_BASE_FLAG_PRECISE_TIMER, or paced packets wait for the next
 * millisecond. *out receives the loop on success.
 * Errors: QRPC_EINVAL, QRPC_ENOMEM, QRPC_ESYSTEM. */
int qrpc_loop_new(struct event_base *base, qrpc_loop **out);

/* Returns the event_base the loop runs on (borrowed). */
struct event_base *qrpc_loop_base(qrpc_loop *loop);

/* Runs the loop until qrpc_loop_stop() is called or nothing is left to wait
 * for (no endpoint, connection or timer). Loop thread only.
 * Errors: QRPC_ESYSTEM. */
int qrpc_loop_run(qrpc_loop *loop);

/* Runs the loop for at most timeout_ms milliseconds, returning early when
 * qrpc_loop_stop() is called or nothing is left to wait for.
 * Errors: QRPC_ESYSTEM, QRPC_ENOMEM. */
int qrpc_loop_run_for(qrpc_loop *loop, uint64_t timeout_ms);

/* Makes qrpc_loop_run() return after the current callback. Loop thread
 * only; from other threads, post a function that calls it. */
void qrpc_loop_stop(qrpc_loop *loop);

/* Queues fn(loop, arg) to run on the loop thread, in posting order. Any
 * thread may call this. arg stays owned by the caller; fn runs exactly once
 * unless the loop is freed first, in which case it never runs.
 * Errors: QRPC_EINVAL, QRPC_ENOMEM. */
int qrpc_loop_post(qrpc_loop *loop, qrpc_loop_fn fn, void *arg);

/* Returns the loop's monotonic clock in nanoseconds. */
uint64_t qrpc_loop_now_ns(qrpc_loop *loop);

/* Frees the loop. Connections still in their closing period are released
 * without further callbacks; servers, clients, endpoints and live
 * connections must have been freed or closed first (their on_closed
 * callbacks already fired). Loop thread only. NULL is ignored. */
void qrpc_loop_free(qrpc_loop *loop);

#ifdef __cplusplus
}
#endif
#endif
