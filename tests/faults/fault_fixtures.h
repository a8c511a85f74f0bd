/*
 * Fixtures shared by the fault, hostile-peer and soak tests: server
 * methods whose answers can be checked byte for byte, a driver that keeps a
 * window of unary calls in flight and accounts for every call's
 * completion, and a checker for server-streamed items.
 *
 * Like the harness, nothing here asserts: the tests assert on the counts.
 * Everything runs on the loop thread.
 */
#ifndef QT_FAULT_FIXTURES_H
#define QT_FAULT_FIXTURES_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/qrpc.h"

/* Unary: answers with the request's payload. */
#define QF_M_ECHO 1
/* Server streaming: the request is 4 bytes, big-endian count n; the
 * answer is n items (qf_item_fill(i), i = 0..n-1) honouring flow control,
 * then END. */
#define QF_M_ITEMS 2
/* Unary: the request is 4 bytes, big-endian size; the reply is that many
 * pattern bytes (at most QF_BIG_MAX). */
#define QF_M_BIG 3
#define QF_BIG_MAX (1u << 20)

#define QF_ITEM_LEN 64

/* Registers the methods above on srv. Returns 0 or the error. */
int qf_register_methods(qrpc_server *srv);

/* Items still being streamed by QF_M_ITEMS handlers (0 once all ended or
 * were cancelled): lets a test see that the server released them. */
int qf_items_streams_open(void);

/* The i-th item of a QF_M_ITEMS answer. */
void qf_item_fill(uint32_t i, uint8_t out[QF_ITEM_LEN]);

/* Heap bytes in use: the allocator's arena and its separately mapped large
 * blocks (a 1 MiB buffer is one of those, and qt_heap_in_use() counts the
 * arena only). Meaningless under AddressSanitizer, like qt_heap_in_use(). */
size_t qf_heap_in_use(void);

void qf_put_be32(uint8_t *p, uint32_t v);
uint32_t qf_get_be32(const uint8_t *p);

/* ---- A window of unary calls ------------------------------------------ */

#define QF_PAYLOAD 32

/* Keeps up to window QF_M_ECHO calls in flight on cli until total calls
 * have been started (total 0: until qf_pump_stop()). Call i carries a
 * payload derived from i, so a reply is checked against the call it
 * answers. done[] counts each call's completions; it must end at exactly
 * one per call. Caller-owned; keep it in place until in_flight is 0. */
typedef struct qf_pump {
  qrpc_client *cli;
  uint32_t total; /* 0: unbounded */
  int window;
  uint64_t timeout_ms; /* per call, 0 for none */
  int paced;           /* set by the caller: completions do not start new calls,
                          qf_pump_fill() does, so the caller sets the pace */
  int stopped;

  uint32_t started;
  int in_flight;
  uint64_t completed;
  uint64_t ok;
  uint64_t wrong_payload; /* OK but not the payload of this call */
  uint64_t failed;
  int first_failure; /* status of the first failure */
  uint64_t by_status[17];
  uint64_t start_errors;
  int last_start_error;
  uint8_t *done;       /* total entries, or NULL when unbounded */
  uint64_t done_twice; /* a call completed more than once */
  uint64_t last_ok_ms; /* qt_now_ms() of the latest OK */
} qf_pump;

/* Prepares p (zeroed; done[] allocated when total > 0) and fills the
 * window. Returns 0 or -1 (out of memory). */
int qf_pump_start(qf_pump *p, qrpc_client *cli, uint32_t total, int window,
                  uint64_t timeout_ms);

/* Starts calls until the window is full again (after a pause, or when
 * the driver wants to push harder). */
void qf_pump_fill(qf_pump *p);

/* Starts no more calls; those in flight still complete. */
void qf_pump_stop(qf_pump *p);

/* 1 once every call of a bounded run has completed. */
int qf_pump_finished(const qf_pump *p);

/* Calls whose done[] is not exactly 1 (bounded runs). */
uint32_t qf_pump_not_once(const qf_pump *p);

/* Frees done[]. Only once in_flight is 0. */
void qf_pump_free(qf_pump *p);

/* ---- Server-streamed items --------------------------------------------- */

/* Starts a QF_M_ITEMS call for n items and checks what arrives: every
 * item in order, each once, byte for byte. */
typedef struct qf_items {
  uint32_t n;
  uint32_t next; /* index expected next */
  uint64_t bad;  /* an item out of order or corrupted */
  int done;      /* on_done calls */
  int status;
  int after_done; /* items after on_done */
} qf_items;

/* Starts the call; *out (may be NULL) is its handle, valid until
 * it->done. Returns the error of qrpc_client_stream(). */
int qf_items_start(qf_items *it, qrpc_client *cli, uint32_t n, qrpc_call **out);

#endif
