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

/* Busy polling, for latency at the cost of a core: after the last packet
 * the loop read, sent or was handed (qrpc_loop_post()), qrpc_loop_run()
 * and qrpc_loop_run_for() keep polling without blocking for usec
 * microseconds before they go to sleep in the kernel again. A request
 * that comes in meanwhile is picked up without the wake-up of a sleeping
 * thread (an interrupt to its CPU and a context switch, tens of
 * microseconds on some virtual machines). The loop's thread then uses its
 * whole CPU while traffic flows and for usec after it stops. 0, the
 * default, turns it off. Timers keep their times either way. Loop thread
 * only; takes effect at the next qrpc_loop_run() or qrpc_loop_run_for().
 * Errors: QRPC_EINVAL (NULL loop, or more than 1,000,000 usec). */
int qrpc_loop_set_busy_poll(qrpc_loop *loop, uint32_t usec);

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

/* ---- Timers and signals ------------------------------------------------
 *
 * A game server's 60 Hz tick, a periodic stats line, SIGTERM: what a
 * program needs from its loop besides connections, without reaching for
 * libevent. Timers run on the loop's precise clock (timerfd when the loop
 * made its own base), so a 60 Hz tick stays at 60 Hz. A started timer or
 * a signal watch keeps qrpc_loop_run() running, as a pending connection
 * does; stop or free it to let the loop end. */

typedef struct qrpc_timer qrpc_timer;

/* Called on the loop thread when a timer expires. The callback may stop,
 * restart or free its own timer. */
typedef void (*qrpc_timer_fn)(qrpc_timer *timer, void *user_data);

/* Creates a stopped timer on loop. fn and user_data (borrowed; must stay
 * valid while the timer exists) are what it calls. *out receives the
 * timer, owned by the caller until qrpc_timer_free(). Loop thread only.
 * Errors: QRPC_EINVAL, QRPC_ENOMEM. */
int qrpc_timer_new(qrpc_loop *loop, qrpc_timer_fn fn, void *user_data,
                   qrpc_timer **out);

/* Starts (or restarts) the timer: it fires delay_ns from now, then, with
 * period_ns > 0, every period_ns after that, on a fixed schedule: tick k
 * is due at start + delay_ns + k * period_ns, however long the callbacks
 * take, so a periodic timer does not drift. When the loop falls behind by
 * whole periods, the missed ticks are skipped, not fired in a burst, and
 * counted (qrpc_timer_skipped()). period_ns == 0 makes a one-shot timer.
 * A timer never fires before its due time. Loop thread only.
 * Errors: QRPC_EINVAL. */
int qrpc_timer_start(qrpc_timer *timer, uint64_t delay_ns, uint64_t period_ns);

/* Stops the timer; its callback does not run again until it is started.
 * Stopping a stopped timer does nothing. Loop thread only. */
void qrpc_timer_stop(qrpc_timer *timer);

/* 1 while the timer is started (a one-shot timer stops as it fires). */
int qrpc_timer_active(const qrpc_timer *timer);

/* The time, on qrpc_loop_now_ns()'s clock, that the tick now running (or
 * the next one, outside the callback) was due. A game uses it as the
 * tick's timestamp instead of the time the callback happened to run. */
uint64_t qrpc_timer_due_ns(const qrpc_timer *timer);

/* The number of periodic ticks skipped because the loop was late by whole
 * periods, since the timer was created. */
uint64_t qrpc_timer_skipped(const qrpc_timer *timer);

/* Stops and frees the timer; allowed inside its own callback. Timers
 * still alive when their loop is freed are freed with it, and the pointer
 * must not be used after that. Loop thread only. NULL is ignored. */
void qrpc_timer_free(qrpc_timer *timer);

typedef struct qrpc_signal qrpc_signal;

/* Called on the loop thread, outside the signal handler, once per delivery
 * of the signal (deliveries close together may be merged into one call). */
typedef void (*qrpc_signal_fn)(qrpc_loop *loop, int signum, void *user_data);

/* Watches signal signum (SIGTERM, SIGINT, SIGHUP, ...) on loop: fn runs on
 * the loop thread, where it may call anything qrpc offers, such as
 * qrpc_server_shutdown() or qrpc_loop_stop(). The watch replaces the
 * process's handler for signum until it is freed, so one signal has one
 * watch in the process at a time (a second gets QRPC_ESTATE); watches on
 * other signals may be on other loops. user_data is borrowed. *out
 * receives the watch, owned by the caller until qrpc_signal_free();
 * watches still alive when their loop is freed are freed with it. Loop
 * thread only. Errors: QRPC_EINVAL (SIGKILL, SIGSTOP or no such signal),
 * QRPC_ENOMEM, QRPC_ESTATE, QRPC_ESYSTEM. */
int qrpc_loop_on_signal(qrpc_loop *loop, int signum, qrpc_signal_fn fn,
                        void *user_data, qrpc_signal **out);

/* Stops watching and restores the signal's previous handler. Allowed
 * inside its own callback. Loop thread only. NULL is ignored. */
void qrpc_signal_free(qrpc_signal *sig);

#ifdef __cplusplus
}
#endif
#endif
