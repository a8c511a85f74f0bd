/*
 * The RPC engine: calls by method id over qrpc connections (docs/protocol.md
 * sections 2, 3 and 6). It works on raw payload bytes; the code generator
 * wraps it with typed stubs.
 *
 * Objects:
 * - qrpc_server: an endpoint that serves registered methods.
 * - qrpc_client: a connection to one server address, or one to each of
 *   several (a list, or a DNS name's addresses) with calls spread over
 *   them, that survives connection loss (it reconnects with backoff) and
 *   can itself serve methods the server calls.
 * - qrpc_peer: the RPC session on one live connection, on either side. A
 *   server calls its client through the peer, and handlers learn the peer of
 *   each request.
 * - qrpc_call: an outgoing call, owned by the engine until its on_done
 *   callback has returned.
 * - qrpc_req: an incoming call being served.
 *
 * Threading: everything runs on the loop thread; use qrpc_loop_post() to
 * hand work from other threads.
 *
 * Completion: a function that starts a call returns 0 and later fires the
 * call's on_done callback exactly once (reply, error, deadline, cancel or
 * connection loss), or returns a negative QRPC_E* code and fires nothing.
 * on_done never runs inside the function that started the call.
 *
 * Reentrancy: inside any callback the application may start, cancel and
 * answer calls, send items and datagrams, and close connections. It must
 * not free the qrpc_server or qrpc_client whose callback is running.
 */
#ifndef QRPC_RPC_H
#define QRPC_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/loop.h"
#include "qrpc/quic.h"
#include "qrpc/tls.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes: the gRPC canonical codes; applications use 1000 and up. */
enum {
  QRPC_STATUS_OK = 0,
  QRPC_STATUS_CANCELLED = 1,
  QRPC_STATUS_UNKNOWN = 2,
  QRPC_STATUS_INVALID_ARGUMENT = 3,
  QRPC_STATUS_DEADLINE_EXCEEDED = 4,
  QRPC_STATUS_NOT_FOUND = 5,
  QRPC_STATUS_ALREADY_EXISTS = 6,
  QRPC_STATUS_PERMISSION_DENIED = 7,
  QRPC_STATUS_RESOURCE_EXHAUSTED = 8,
  QRPC_STATUS_FAILED_PRECONDITION = 9,
  QRPC_STATUS_ABORTED = 10,
  QRPC_STATUS_OUT_OF_RANGE = 11,
  QRPC_STATUS_UNIMPLEMENTED = 12,
  QRPC_STATUS_INTERNAL = 13,
  QRPC_STATUS_UNAVAILABLE = 14,
  QRPC_STATUS_DATA_LOSS = 15,
  QRPC_STATUS_UNAUTHENTICATED = 16,
  /* qrpc's own (docs/protocol.md, "Calls in 0-RTT"): the call arrived in
   * 0-RTT for a method the server does not treat as idempotent; it did
   * not run, and may be sent again now that the handshake is done. */
  QRPC_STATUS_TOO_EARLY = 425,
  QRPC_STATUS_APP_MIN = 1000,
};

/* Returns the canonical name of a status ("OK", "DEADLINE_EXCEEDED",
 * "TOO_EARLY", ...), or "APPLICATION" for 1000 and up, "UNKNOWN_STATUS"
 * otherwise. */
const char *qrpc_status_name(int status);

typedef struct qrpc_server qrpc_server;
typedef struct qrpc_client qrpc_client;
typedef struct qrpc_peer qrpc_peer;
typedef struct qrpc_call qrpc_call;
typedef struct qrpc_req qrpc_req;

/* The shape of a method, known to both sides from the IDL. */
typedef enum qrpc_shape {
  QRPC_SHAPE_UNARY = 0,
  QRPC_SHAPE_SERVER_STREAM = 1,
  QRPC_SHAPE_CLIENT_STREAM = 2,
  QRPC_SHAPE_BIDI_STREAM = 3,
} qrpc_shape;

/* One key/value pair of call metadata (docs/api.md, "Metadata"). Keys are
 * 1 to 255 bytes of lowercase ASCII letters, digits, '-', '_' and '.';
 * values are any bytes. In metadata the application passes in, key_len 0
 * means key is NUL-terminated; in metadata qrpc hands out, key_len is
 * always set and neither key nor value is NUL-terminated. */
typedef struct qrpc_md {
  const char *key;
  size_t key_len;
  const uint8_t *value;
  size_t value_len;
} qrpc_md;

/* Returns the first pair of md[0..n) whose key equals key (a
 * NUL-terminated string), or NULL. md is borrowed; any thread. */
const qrpc_md *qrpc_md_find(const qrpc_md *md, size_t n, const char *key);

/* How a call ended. Everything is borrowed for the duration of on_done. */
typedef struct qrpc_result {
  int status;             /* QRPC_STATUS_*; 0 means success */
  const char *detail;     /* UTF-8, detail_len bytes, not NUL-terminated */
  size_t detail_len;
  const uint8_t *payload; /* the REPLY of unary and client-streaming calls */
  size_t len;
  int local;              /* 1: decided here (deadline, cancel, connection
                             loss, refusal), not answered by the peer */
  const qrpc_md *trailers; /* the callee's trailing metadata, if it sent
                              any (only to a caller that sent metadata or
                              asked for headers); ntrailers pairs */
  size_t ntrailers;
} qrpc_result;

/* A message for the _msg twin that every function taking payload bytes
 * has. Two forms (docs/api.md, "Messages without copies"):
 *
 * Packed: pack(msg, out) writes exactly size bytes to out and returns
 * size; the message is serialised straight into the send buffer. msg is
 * borrowed for the duration of the call that takes the qrpc_msg. Generated
 * stubs fill it from protobuf-c's get_packed_size and pack. release and
 * owner are not read.
 *
 * Bytes given away (pack NULL): msg points to size bytes that are already
 * the payload. When the function returns 0, qrpc owns them: a stream send
 * (qrpc_call_send_msg(), qrpc_req_send_msg(), qrpc_req_reply_msg(), and
 * calls and notifications that go out at once) of 16 KiB or more links
 * them into the stream's send buffer without copying and keeps them until the peer has acknowledged
 * them; anything else is copied and given back before the function
 * returns. Either way release(owner) is called exactly once, on the loop
 * thread of the connection (or the caller's thread, before returning),
 * when qrpc no longer reads them; it must only free or recycle memory,
 * not call qrpc. release NULL: the bytes are copied and stay the caller's.
 * On an error return release is not called and the bytes stay the
 * caller's. qrpc_req_take() and qrpc_call_take() make one from a received
 * payload. Zero-initialise the struct (designated initialisers) so that
 * fields added later keep their defaults. */
typedef struct qrpc_msg {
  const void *msg;
  size_t size;
  size_t (*pack)(const void *msg, uint8_t *out);
  void (*release)(void *owner);
  void *owner;
} qrpc_msg;

/* ---- Calling ---------------------------------------------------------- */

typedef struct qrpc_call_callbacks {
  /* The call is over. Exactly once; the last callback; the call handle is
   * invalid after it returns. */
  void (*on_done)(qrpc_call *call, const qrpc_result *res, void *user_data);
  /* An ITEM from the callee (server and bidi streaming). */
  void (*on_item)(qrpc_call *call, const uint8_t *data, size_t len,
                  void *user_data);
  /* Room again after qrpc_call_send() returned QRPC_EAGAIN. */
  void (*on_writable)(qrpc_call *call, void *user_data);
} qrpc_call_callbacks;

/* Options of one call. Fields are only ever added at the end; a caller
 * built against an older qrpc passes its own, smaller size, and the fields
 * it does not know keep their defaults. Initialise with
 * qrpc_call_opts_default(), which also clears the padding. */
typedef struct qrpc_call_opts {
  size_t size;         /* sizeof(qrpc_call_opts), set by the default */
  uint64_t timeout_ms; /* 0: the client's default (none unless set) */
  int fail_fast;       /* -1: the client's default; 1: fail with
                          QRPC_ECLOSED when not connected; 0: wait */
  int idempotent;      /* 1: the method may safely run twice, so the call
                          may travel in 0-RTT on a resumed connection
                          (docs/api.md, "0-RTT"); default 0: the call
                          waits for the handshake */
  /* Request metadata: metadata_count pairs, copied when the call starts
   * (docs/api.md, "Metadata"). Their key and value sizes together may not
   * exceed the rpc option max_metadata. Default none: the REQUEST goes out
   * exactly as it would without metadata support. */
  const qrpc_md *metadata;
  size_t metadata_count;
  /* Fires at most once, before the first item or the final answer, when
   * the callee has accepted a streaming call, with its response headers
   * (md borrowed for the callback; n may be 0). Setting it asks the callee
   * for them, which sends a HEADERS frame even without metadata. A callee
   * that does not know metadata never answers it. The callbacks the
   * application may call from here are those of on_item. user_data is
   * on_headers_user_data, not the call's (stubs keep that one). */
  void (*on_headers)(qrpc_call *call, const qrpc_md *md, size_t n,
                     void *user_data);
  void *on_headers_user_data;
} qrpc_call_opts;

void qrpc_call_opts_default(qrpc_call_opts *o);

/* Copies the options src points to, from a caller built against this or
 * an older qrpc, into *dst, this version's struct; fields src's size does
 * not cover get their defaults, and src NULL gives the defaults. Every
 * function taking a qrpc_call_opts reads it this way; code that passes a
 * caller's options on with a change (generated stubs) uses it too. Any
 * thread. Errors: QRPC_EINVAL (dst NULL, or src->size below that of the
 * first qrpc_call_opts or above this version's). */
int qrpc_call_opts_copy(qrpc_call_opts *dst, const qrpc_call_opts *src);

/* Starts a unary call of method with payload (copied). opts may be NULL.
 * On success *out (may be NULL) is the handle, valid until on_done returns.
 * While the client's connection is in its 0-RTT phase, a call marked
 * idempotent goes out at once and the others wait for the handshake (or,
 * with fail-fast, return QRPC_ECLOSED).
 * Errors: QRPC_EINVAL (also opts->size below that of the first
 * qrpc_call_opts or above this version's), QRPC_ECLOSED (not connected and
 * fail-fast, or the peer is gone or going away), QRPC_ENOBUFS (the client's
 * queue of waiting calls is full), QRPC_EMSGSIZE (payload over this side's
 * max_frame; a peer configured with a smaller limit closes the connection with
 * FRAME_TOO_LARGE, so both sides should agree on it), QRPC_ENOMEM. */
int qrpc_client_call(qrpc_client *cli, uint32_t method, const void *payload,
                     size_t len, const qrpc_call_opts *opts,
                     const qrpc_call_callbacks *cbs, void *user_data,
                     qrpc_call **out);
int qrpc_peer_call(qrpc_peer *peer, uint32_t method, const void *payload,
                   size_t len, const qrpc_call_opts *opts,
                   const qrpc_call_callbacks *cbs, void *user_data,
                   qrpc_call **out);
int qrpc_client_call_msg(qrpc_client *cli, uint32_t method, const qrpc_msg *m,
                         const qrpc_call_opts *opts,
                         const qrpc_call_callbacks *cbs, void *user_data,
                         qrpc_call **out);
int qrpc_peer_call_msg(qrpc_peer *peer, uint32_t method, const qrpc_msg *m,
                       const qrpc_call_opts *opts,
                       const qrpc_call_callbacks *cbs, void *user_data,
                       qrpc_call **out);

/* Starts a streaming call of the given shape on a stream of its own. For
 * server streaming payload is the request; for client and bidi streaming it
 * must be empty (send items with qrpc_call_send()). Errors as for
 * qrpc_client_call(), plus QRPC_ELIMIT (the peer's stream limit is
 * reached). */
int qrpc_client_stream(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                       const void *payload, size_t len,
                       const qrpc_call_opts *opts,
                       const qrpc_call_callbacks *cbs, void *user_data,
                       qrpc_call **out);
int qrpc_peer_stream(qrpc_peer *peer, uint32_t method, qrpc_shape shape,
                     const void *payload, size_t len,
                     const qrpc_call_opts *opts,
                     const qrpc_call_callbacks *cbs, void *user_data,
                     qrpc_call **out);
int qrpc_client_stream_msg(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                           const qrpc_msg *m, const qrpc_call_opts *opts,
                           const qrpc_call_callbacks *cbs, void *user_data,
                           qrpc_call **out);
int qrpc_peer_stream_msg(qrpc_peer *peer, uint32_t method, qrpc_shape shape,
                         const qrpc_msg *m, const qrpc_call_opts *opts,
                         const qrpc_call_callbacks *cbs, void *user_data,
                         qrpc_call **out);

/* Sends a one-way NOTIFY (payload copied). Nothing answers it.
 * Errors: QRPC_EINVAL, QRPC_ECLOSED (not connected), QRPC_EMSGSIZE,
 * QRPC_ENOMEM. */
int qrpc_client_notify(qrpc_client *cli, uint32_t method, const void *payload,
                       size_t len);
int qrpc_peer_notify(qrpc_peer *peer, uint32_t method, const void *payload,
                     size_t len);
int qrpc_client_notify_msg(qrpc_client *cli, uint32_t method,
                           const qrpc_msg *m);
int qrpc_peer_notify_msg(qrpc_peer *peer, uint32_t method, const qrpc_msg *m);

/* Sends one ITEM of a client or bidi streaming call (copied). Accepted
 * while the stream's unacknowledged bytes are under the connection's
 * stream_send_buffer, else QRPC_EAGAIN and on_writable follows.
 * Errors: QRPC_EINVAL (wrong shape), QRPC_EAGAIN, QRPC_ESTATE (already
 * ended), QRPC_ECLOSED (the call is over), QRPC_EMSGSIZE, QRPC_ENOMEM. */
int qrpc_call_send(qrpc_call *call, const void *data, size_t len);
int qrpc_call_send_msg(qrpc_call *call, const qrpc_msg *m);

/* Ends the caller's side of a client or bidi streaming call (END, status
 * 0). Errors: QRPC_EINVAL, QRPC_ESTATE, QRPC_ECLOSED. */
int qrpc_call_end(qrpc_call *call);

/* Inside on_item of call (loop thread): the ITEM's payload being
 * delivered becomes *out, a message owning its bytes (pack NULL, release
 * and owner set; see qrpc_msg). A large payload that was reassembled from
 * many packets changes hands without a copy; one that lay whole in a
 * packet is copied. out->msg is then the data pointer on_item was given
 * (reassembled) or the copy, valid until out is released: pass out to a _msg send (qrpc owns it from
 * a return of 0) or call out->release(out->owner) yourself.
 * Errors: QRPC_EINVAL (NULL), QRPC_ESTATE (not inside on_item of call, or
 * already taken), QRPC_ENOMEM. */
int qrpc_call_take(qrpc_call *call, qrpc_msg *out);

/* Cancels the call: a CANCEL goes to the callee, and on_done fires with
 * QRPC_STATUS_CANCELLED (local) from the loop, after this returns.
 * Cancelling again before on_done has run returns QRPC_ECLOSED; after
 * on_done has returned the handle is gone and must not be used. */
int qrpc_call_cancel(qrpc_call *call);

void *qrpc_call_user_data(qrpc_call *call);

/* ---- Serving ---------------------------------------------------------- */

/* Serves one incoming call. payload is borrowed for the duration of the
 * call. The handler answers now or later (from the loop thread) with
 * qrpc_req_reply(), qrpc_req_error(), or for streaming shapes
 * qrpc_req_send() and qrpc_req_end(). A handler that keeps req past its
 * return must set on_cancel with qrpc_req_set_callbacks(): req is freed
 * when the caller cancels, its deadline passes or the connection closes,
 * and on_cancel is the notice. NOTIFYs run the same handler with
 * qrpc_req_is_notify() true; for them req lives only until the handler
 * returns, and answers are discarded. */
typedef void (*qrpc_handler_fn)(qrpc_req *req, const uint8_t *payload,
                                size_t len, void *user_data);

typedef struct qrpc_req_callbacks {
  /* An ITEM from the caller (client and bidi streaming). */
  void (*on_item)(qrpc_req *req, const uint8_t *data, size_t len,
                  void *user_data);
  /* The caller finished sending (END with status 0). */
  void (*on_end)(qrpc_req *req, void *user_data);
  /* The request is gone before it was fully answered: status is
   * QRPC_STATUS_CANCELLED (CANCEL), DEADLINE_EXCEEDED or UNAVAILABLE
   * (connection lost). A qrpc caller sends CANCEL when its own deadline
   * passes, so a deadline may arrive as either CANCELLED or
   * DEADLINE_EXCEEDED, whichever comes first. req is invalid after this
   * returns. */
  void (*on_cancel)(qrpc_req *req, int status, void *user_data);
  /* Room again after qrpc_req_send() returned QRPC_EAGAIN. */
  void (*on_writable)(qrpc_req *req, void *user_data);
} qrpc_req_callbacks;

void qrpc_req_set_callbacks(qrpc_req *req, const qrpc_req_callbacks *cbs,
                            void *user_data);
void *qrpc_req_user_data(qrpc_req *req);
qrpc_peer *qrpc_req_peer(qrpc_req *req);
uint32_t qrpc_req_method(qrpc_req *req);
qrpc_shape qrpc_req_shape(qrpc_req *req);
int qrpc_req_is_notify(qrpc_req *req);
/* 1 if the request arrived in 0-RTT (early data, which an attacker may
 * have replayed): only methods registered with QRPC_METHOD_IDEMPOTENT see
 * such requests. 0 once the handshake was done when it arrived. */
int qrpc_req_is_early(qrpc_req *req);
/* Milliseconds left of the caller's budget: UINT64_MAX if none. */
uint64_t qrpc_req_remaining_ms(qrpc_req *req);

/* The request metadata the caller sent: sets *md (borrowed; valid while
 * req is) and returns the number of pairs, 0 if none. Loop thread. */
size_t qrpc_req_metadata(qrpc_req *req, const qrpc_md **md);

/* Prepares opts for a call made on behalf of req (propagation, docs/api.md
 * "Propagation"): opts->timeout_ms becomes what is left of req's deadline
 * (at least 1 ms) unless opts already has a smaller one, and opts'
 * metadata becomes its own pairs followed by those of req's request
 * metadata whose key is in keys (a NULL-terminated list; NULL means
 * {"traceparent", NULL}). The pairs are written to buf (cap entries) and
 * borrow keys and values from req and from opts' own pairs, so start the
 * call while req is valid (qrpc copies them then). opts must come from
 * qrpc_call_opts_default() of this version. Loop thread.
 * Errors: QRPC_EINVAL (NULL, or opts of another size), QRPC_ENOBUFS (more
 * pairs than cap; opts is unchanged). */
int qrpc_req_propagate(qrpc_req *req, const char *const *keys,
                       qrpc_call_opts *opts, qrpc_md *buf, size_t cap);

/* Adds one trailing pair (key NUL-terminated, value copied) that goes out
 * just before the call's REPLY, ERROR or END. A caller that sent no
 * metadata (it may not know the extension) is sent none; the call returns
 * 0 all the same. Loop thread, until the call is answered.
 * Errors: QRPC_EINVAL (a key that is not lowercase ASCII, or value NULL
 * with len > 0), QRPC_ECLOSED (already answered), QRPC_EMSGSIZE (the
 * request's metadata and its trailers together would exceed the rpc option
 * max_metadata), QRPC_ENOMEM. */
int qrpc_req_set_trailer(qrpc_req *req, const char *key, const void *value,
                         size_t len);

/* Adds one pair to the response headers of a streaming call, which go out
 * when the handler returns without having failed the call, or with its
 * first item or END if earlier, and only to a caller that asked for them
 * (qrpc_call_opts.on_headers) or sent metadata. Loop thread. Errors as
 * qrpc_req_set_trailer(), plus QRPC_EINVAL for a unary call and
 * QRPC_ESTATE once the headers have gone out. */
int qrpc_req_set_header(qrpc_req *req, const char *key, const void *value,
                        size_t len);

/* Answers a unary or client-streaming call with a REPLY (payload copied);
 * req is released. Errors: QRPC_EINVAL (a streaming-result shape),
 * QRPC_ECLOSED (already answered, from inside the handler that answered),
 * QRPC_EMSGSIZE, QRPC_ENOMEM (req is then answered with INTERNAL). */
int qrpc_req_reply(qrpc_req *req, const void *payload, size_t len);
int qrpc_req_reply_msg(qrpc_req *req, const qrpc_msg *m);

/* Fails the call with status (not 0) and a detail message (UTF-8, may be
 * NULL); for server and bidi streaming this is an END with that status.
 * req is released. Errors: QRPC_EINVAL. */
int qrpc_req_error(qrpc_req *req, int status, const char *detail);

/* Sends one ITEM of a server or bidi streaming call (copied). Flow control
 * as for qrpc_call_send(). Errors: QRPC_EINVAL, QRPC_EAGAIN, QRPC_ECLOSED
 * (already ended, or its stream is gone), QRPC_EMSGSIZE, QRPC_ENOMEM. */
int qrpc_req_send(qrpc_req *req, const void *data, size_t len);
int qrpc_req_send_msg(qrpc_req *req, const qrpc_msg *m);

/* As qrpc_call_take(), inside the handler of req (its request payload) or
 * inside on_item of req (that ITEM's payload). A server that forwards or
 * echoes large messages takes them and sends them on with
 * qrpc_req_send_msg() or qrpc_call_send_msg() without a copy. */
int qrpc_req_take(qrpc_req *req, qrpc_msg *out);

/* Ends a server or bidi streaming call with END (status 0). For bidi, req
 * stays valid until the caller's END has arrived too. Errors: QRPC_EINVAL,
 * QRPC_ECLOSED (already ended). */
int qrpc_req_end(qrpc_req *req);

/* ---- Interceptors ----------------------------------------------------- */

/* What an interceptor sees of one call (docs/api.md, "Interceptors").
 * Borrowed for the duration of the hook. */
typedef struct qrpc_call_info {
  uint32_t method;
  qrpc_shape shape;
  int outgoing;            /* 1: a call this side makes; 0: one it serves */
  qrpc_peer *peer;         /* NULL for a client call waiting for a
                              connection */
  const qrpc_md *metadata; /* request metadata: the caller's options on an
                              outgoing call, what arrived on one served */
  size_t metadata_count;
  int status;           /* after: how the call ended (QRPC_STATUS_*) */
  uint64_t duration_ns; /* after: from the arrival of the REQUEST (incoming)
                          or the before hooks (outgoing) to the end */
} qrpc_call_info;

/* Handed to before hooks of outgoing calls, to add request metadata. */
typedef struct qrpc_icx qrpc_icx;

/* Adds one pair (key NUL-terminated, value copied) to the request
 * metadata of the outgoing call whose before hook received cx. Only from
 * inside that hook. Errors: QRPC_EINVAL (bad key, or cx of a served
 * call), QRPC_EMSGSIZE (over max_metadata), QRPC_ENOMEM. */
int qrpc_icx_add_metadata(qrpc_icx *cx, const char *key, const void *value,
                          size_t len);

/* A hook pair run for every call (NOTIFYs excepted) of the client or
 * server it is installed on, on the loop thread, in installation order
 * for before and reverse order for after.
 *
 * before: runs as the call starts (an outgoing call inside the function
 * that starts it, before anything is sent; a served call when its REQUEST
 * and metadata have arrived, before its handler). It returns 0 to let the
 * call go on, or a status (> 0) to refuse it, optionally setting *detail
 * to a static UTF-8 string: a refused outgoing call is not sent and its
 * on_done reports that status (local), from the loop; a refused served
 * call is answered with ERROR (or END) of that status and its handler
 * does not run. Later hooks' before does not run for a refused call.
 * after: runs once for every call whose before hooks ran (refused ones
 * included), when it is over, before on_done for outgoing calls.
 * Either may be NULL. Inside the hooks the application may not start,
 * answer or cancel calls. */
typedef struct qrpc_interceptor {
  int (*before)(qrpc_icx *cx, const qrpc_call_info *info, const char **detail,
                void *user_data);
  void (*after)(const qrpc_call_info *info, void *user_data);
  void *user_data;
} qrpc_interceptor;

/* Appends a copy of *icpt to the chain of srv or cli (at most 16). Calls
 * already started keep the chain they had. Loop thread. Errors:
 * QRPC_EINVAL (NULL), QRPC_ELIMIT (the chain is full). */
int qrpc_server_add_interceptor(qrpc_server *srv, const qrpc_interceptor *icpt);
int qrpc_client_add_interceptor(qrpc_client *cli, const qrpc_interceptor *icpt);

/* ---- Peers ------------------------------------------------------------ */

qrpc_conn *qrpc_peer_conn(qrpc_peer *peer);
void qrpc_peer_set_user_data(qrpc_peer *peer, void *user_data);
void *qrpc_peer_user_data(qrpc_peer *peer);

/* ---- Options ---------------------------------------------------------- */

typedef struct qrpc_rpc_opts {
  size_t size;
  size_t max_frame;          /* largest frame accepted; default 16 MiB */
  size_t max_calls_in_flight; /* incoming calls served at once per
                                 connection; the excess gets
                                 RESOURCE_EXHAUSTED; default 4096. A caller
                                 that does not read the answers on a stream
                                 (its send buffer, stream_send_buffer, is
                                 full) also gets RESOURCE_EXHAUSTED, and
                                 that stream is not read until they drain */
  size_t unary_streams;      /* long-lived RPC streams for unary calls; 4 */
  size_t max_buffered;       /* bytes of partly received frames held per
                                connection; beyond it the connection closes
                                with RESOURCE_LIMIT; default 64 MiB */
  size_t max_metadata;       /* key and value bytes of metadata per call,
                                each direction; a peer's call over it is
                                refused with RESOURCE_EXHAUSTED, an answer
                                over it fails the call the same way; the
                                connection stays up; default 16 KiB */
} qrpc_rpc_opts;

typedef struct qrpc_server_opts {
  size_t size;
  qrpc_endpoint_opts endpoint;
  qrpc_rpc_opts rpc;
  /* A client connected (handshake done) or is gone. The peer handle is
   * valid from on_peer_open until on_peer_close returns. A client that
   * sends calls in 0-RTT has its peer earlier (qrpc_req_peer() of those
   * requests), but on_peer_open still waits for the handshake; a
   * connection lost before it gets neither callback. */
  void (*on_peer_open)(qrpc_peer *peer, void *user_data);
  void (*on_peer_close)(qrpc_peer *peer, void *user_data);
  void *user_data;
  /* Workers: loops, each on a thread and a UDP socket of its own, that
   * share the address (SO_REUSEPORT) and the connections between them.
   * 1 (the default) serves on the loop given to qrpc_server_new() alone,
   * as servers always did; 0 means one per online CPU; at most 256.
   * With more than one, worker 0 is the loop given to qrpc_server_new()
   * and the server starts a thread with a loop of its own for each of the
   * others; see "Threading with workers" below. */
  size_t workers;
} qrpc_server_opts;

void qrpc_server_opts_default(qrpc_server_opts *o);

/* Where a client's connection stands (qrpc_client_opts.on_state). Every
 * attempt to connect goes CONNECTING, then READY or FAILED; a READY
 * connection that is lost goes FAILED. After FAILED the client backs off
 * and the next attempt starts with CONNECTING again. */
typedef enum qrpc_client_state {
  QRPC_CLIENT_CONNECTING = 0, /* an attempt started */
  QRPC_CLIENT_READY = 1,      /* its handshake completed */
  QRPC_CLIENT_FAILED = 2,     /* the attempt failed, or the READY connection
                                 was lost; backing off until retry_in_ms */
} qrpc_client_state;

/* One transition. Borrowed for the duration of on_state. */
typedef struct qrpc_client_state_info {
  qrpc_client_state state;
  uint64_t attempt; /* 1 for the client's first attempt, then counting up;
                       READY and FAILED carry the attempt they end */
  /* FAILED: why, a QRPC_E* value: QRPC_EUNREACHABLE (only ICMP came back:
   * no server at the address), QRPC_ETIMEDOUT (no handshake within
   * conn.handshake_timeout_ms: nothing answers), QRPC_ECERT, QRPC_ETLS or
   * QRPC_EALPN (the TLS handshake failed; close->reason says why),
   * QRPC_ECONNRESET, QRPC_EDEADPEER, QRPC_EIDLE, QRPC_ETRANSPORT or
   * QRPC_EAPP (the server closed it with an error), QRPC_ECLOSED (an
   * orderly close, as after the server's GOAWAY), QRPC_ERESOLVE, ... 0 for
   * CONNECTING and READY. */
  int error;
  /* FAILED: how the connection closed (kind, which side, the QUIC,
   * application or TLS alert code, the reason phrase); NULL when the
   * attempt could not even start (error says why). */
  const qrpc_close_info *close;
  int was_ready;        /* FAILED: 1 if the connection had been READY */
  uint64_t retry_in_ms; /* FAILED: the next attempt starts this many
                           milliseconds from now (0: at once) */
  /* The backend ("host:port") whose connection this is; NULL for a
   * FAILED that reports a "dns:" target's name not resolving (error
   * QRPC_ERESOLVE, attempt counting the lookups, retry_in_ms the next). */
  const char *backend;
} qrpc_client_state_info;

typedef struct qrpc_client_opts {
  size_t size;
  qrpc_conn_opts conn;
  qrpc_rpc_opts rpc;
  const char *server_name;     /* SNI and verification; default: host */
  uint64_t default_timeout_ms; /* for calls without one; 0 = none */
  int fail_fast;               /* default for calls; default 0 (wait) */
  size_t max_pending;          /* calls waiting for a connection; 1024 */
  uint64_t backoff_initial_ms; /* first reconnection delay; 100 */
  uint64_t backoff_max_ms;     /* cap of the doubling delay; 10000 */
  /* A connection was established, or one that on_connect reported was
   * lost (info says why). Failed attempts are retried without these
   * callbacks (on_state reports them); calls waiting meanwhile keep their
   * deadlines. */
  void (*on_connect)(qrpc_client *cli, qrpc_peer *peer, void *user_data);
  void (*on_disconnect)(qrpc_client *cli, const qrpc_close_info *info,
                        void *user_data);
  void *user_data;
  /* Fields from here on were added later: a caller built before them
   * passes the smaller size and gets their defaults. */
  /* Each transition of the connection (qrpc_client_state), exactly once:
   * CONNECTING when an attempt starts, then READY or FAILED, and FAILED
   * again when a READY connection is lost. READY comes before on_connect,
   * a loss's FAILED after on_disconnect. The first CONNECTING fires
   * inside qrpc_client_new(), before it returns; the others from the loop.
   * Inside it the application may start and cancel calls and read
   * qrpc_client_peer(), but not free the client. NULL: none. */
  void (*on_state)(qrpc_client *cli, const qrpc_client_state_info *info,
                   void *user_data);
  /* Fields from here on came with balancing (docs/api.md, "Balancing");
   * a caller built before them passes the smaller size. */
  /* How calls are spread over the backends: "pick_first" (the first
   * backend of the target that is ready), "round_robin" (each ready
   * backend in turn) or "least_outstanding" (the ready backend with the
   * fewest calls in flight). NULL: pick_first for one address,
   * round_robin for a list or a name. Read during qrpc_client_new(). */
  const char *lb_policy;
  /* The name server ("ip" or "ip:port") that resolves a "dns:" target;
   * NULL: the system's. Copied. */
  const char *dns_resolver;
  /* How often a "dns:" target's name is resolved again, in ms; it is
   * also resolved again soon after a backend fails. Default 30000. */
  uint64_t dns_refresh_ms;
  /* Fields from here on came with health watching; a caller built before
   * them passes the smaller size. */
  /* Non-NULL: on each backend's connection the client watches this
   * service of the standard health service (qrpc/health.h; "" is the
   * whole server), and the backend takes calls only while its status is
   * SERVING (docs/api.md, "Balancing"). A server without the health
   * service (its Watch answers UNIMPLEMENTED) is judged by its connection
   * alone. At most QRPC_HEALTH_NAME_MAX bytes; copied. NULL (the
   * default): backends are judged by their connections. */
  const char *health_service;
} qrpc_client_opts;

void qrpc_client_opts_default(qrpc_client_opts *o);

/* ---- Servers ---------------------------------------------------------- */

/* Creates a server listening on addr (as qrpc_endpoint_listen()). tls is
 * referenced (and shared by the workers; it is safe to share). With
 * opts->workers other than 1, it opens every worker's socket, makes their
 * loops and starts their threads here; they begin serving on the first
 * turn of loop (worker 0's). If any worker cannot start, nothing is left
 * behind and the error says why. Errors: as qrpc_endpoint_listen(),
 * QRPC_EINVAL (workers over 256), QRPC_ESYSTEM (a thread or loop that
 * could not be made).
 *
 * Threading with workers. A connection lives on the worker that accepted
 * it, and everything about it runs on that worker's thread: handlers,
 * interceptors, datagram functions, on_peer_open and on_peer_close, the
 * on_done of calls made on its peer, and every function taking its
 * qrpc_peer, qrpc_req or qrpc_call, which must be called there too.
 * qrpc_peer_loop() says which loop that is. Work for another worker (a
 * message for a peer on another worker) goes to it with qrpc_loop_post()
 * on qrpc_server_worker_loop() or qrpc_peer_loop(). Handler user_data
 * and opts.user_data are shared by all workers: state behind them must
 * be made safe for threads by the application, or kept per worker.
 * The qrpc_server_* functions themselves are called on worker 0's loop
 * thread (the loop given here); registrations (qrpc_server_register*,
 * qrpc_server_add_interceptor, qrpc_server_register_dgram) apply to
 * every worker and must be made before that loop first runs (after it,
 * QRPC_ESTATE). qrpc_server_free() stops the worker threads first, so the
 * on_peer_close of connections it closes run on the caller's thread. */
int qrpc_server_new(qrpc_loop *loop, const char *addr, qrpc_tls_config *tls,
                    const qrpc_server_opts *opts, qrpc_server **out);

/* Flags of a registered method. */
enum {
  /* Running the method twice with the same request does no more harm
   * than running it once, so it may serve calls that arrive in 0-RTT,
   * which an attacker can replay (docs/api.md, "0-RTT"). Without it such
   * calls are refused with QRPC_STATUS_TOO_EARLY and the handler does not
   * run. */
  QRPC_METHOD_IDEMPOTENT = 1u << 0,
};

/* Registers handler for method with shape (user_data passed through), as
 * qrpc_server_register_flags() with flags 0.
 * Errors: QRPC_EINVAL (shape), QRPC_ENOMEM; re-registering replaces. */
int qrpc_server_register(qrpc_server *srv, uint32_t method, qrpc_shape shape,
                         qrpc_handler_fn handler, void *user_data);

/* Registers handler for method with shape and flags (QRPC_METHOD_*).
 * Errors: QRPC_EINVAL (shape, or a flag this version does not know),
 * QRPC_ENOMEM; re-registering replaces, flags included. */
int qrpc_server_register_flags(qrpc_server *srv, uint32_t method,
                               qrpc_shape shape, unsigned flags,
                               qrpc_handler_fn handler, void *user_data);

/* Copies len bytes at data into memory srv owns and frees with itself
 * (after its last callback), and points *out at the copy: user data that
 * must live as long as the registrations using it, without the caller
 * keeping it (the generated $S$_register() copies its handlers struct
 * this way). Each call makes a new copy. Loop thread.
 * Errors: QRPC_EINVAL (srv, data or out NULL, or len 0), QRPC_ENOMEM. */
int qrpc_server_keep(qrpc_server *srv, const void *data, size_t len,
                     void **out);

uint16_t qrpc_server_port(qrpc_server *srv);
/* Worker 0's endpoint (the only one with one worker). Its counters are
 * worker 0's alone: qrpc_server_get_stats() sums all workers. */
qrpc_endpoint *qrpc_server_endpoint(qrpc_server *srv);

/* The number of workers (qrpc_server_opts.workers, 0 resolved). Any
 * thread. */
size_t qrpc_server_workers(const qrpc_server *srv);

/* Worker idx's loop (0: the loop given to qrpc_server_new()), or NULL
 * past the last: the way to reach a worker with qrpc_loop_post(). Any
 * thread; the loop lives as long as the server. */
qrpc_loop *qrpc_server_worker_loop(qrpc_server *srv, size_t idx);

/* The loop the peer's connection runs on: its worker's, on a server.
 * Any thread while the peer is valid. */
qrpc_loop *qrpc_peer_loop(qrpc_peer *peer);

/* 1 if the kernel steers packets to their connection's worker by
 * connection id (a BPF program on the workers' sockets); 0 with one
 * worker, or where the kernel refused the program (a warning was logged
 * then), in which case packets that reach the wrong worker are handed to
 * their owner, at some cost. */
int qrpc_server_steered(const qrpc_server *srv);

/* One worker's figures. */
typedef struct qrpc_server_worker_stats {
  qrpc_endpoint_stats endpoint; /* the worker's endpoint */
  uint64_t peers;               /* peers on the worker now */
  uint64_t peers_opened;        /* peers whose handshake completed there */
} qrpc_server_worker_stats;

/* Fills *total (may be NULL) with every worker's endpoint counters summed,
 * and per[0..nper) (may be NULL) with each worker's figures (zeros past
 * the last worker). Asks each running worker on its own thread and waits
 * for the answers, so the figures are consistent per worker; this costs a
 * round trip to every worker. Worker 0's loop thread.
 * Errors: QRPC_EINVAL, QRPC_ENOMEM, QRPC_ESTATE (called on the thread of
 * another worker, which could not answer while waiting). */
int qrpc_server_get_stats(qrpc_server *srv, qrpc_endpoint_stats *total,
                          qrpc_server_worker_stats *per, size_t nper);

/* Graceful shutdown: sends GOAWAY on every connection, refuses new calls
 * (UNAVAILABLE) and new connections, lets calls in flight finish, closes
 * each connection with GOING_AWAY once it is idle, and at deadline_ms
 * closes whatever is left. on_done (may be NULL) fires once after the last
 * connection of every worker is closed, on worker 0's loop thread; the
 * server may then be freed.
 * Errors: QRPC_ESTATE (already shutting down). */
int qrpc_server_shutdown(qrpc_server *srv, uint64_t deadline_ms,
                         void (*on_done)(qrpc_server *srv, void *user_data),
                         void *user_data);

/* Closes everything now (calls in flight on the peers fail with
 * UNAVAILABLE, requests get on_cancel) and frees the server. Not from
 * inside one of its callbacks. NULL is ignored. */
void qrpc_server_free(qrpc_server *srv);

/* ---- Clients ---------------------------------------------------------- */

/* Creates a client for the target addr and starts connecting. The target
 * is "host:port" (or "[v6]:port"), a comma-separated list of them
 * ("h1:p1,h2:p2"), or "dns:name:port", whose A and AAAA records are all
 * used and looked up again (opts dns_refresh_ms); each address is a
 * backend with a connection of its own (docs/api.md, "Balancing"). tls is
 * referenced; opts (may be NULL: the defaults) is copied, and may come
 * from a caller built against an older qrpc (its smaller size).
 * Errors: QRPC_EINVAL (also a target or lb_policy that
 * qrpc_client_target_problem() objects to, logged with the reason),
 * QRPC_ENOMEM. */
int qrpc_client_new(qrpc_loop *loop, const char *addr, qrpc_tls_config *tls,
                    const qrpc_client_opts *opts, qrpc_client **out);

/* What is wrong with target (as qrpc_client_new() takes it) and
 * lb_policy (NULL: the default), as a static English sentence, or NULL if
 * nothing is. A name that does not resolve is not found here: the client
 * reports it through on_state and keeps trying. Any thread. */
const char *qrpc_client_target_problem(const char *target,
                                       const char *lb_policy);

/* Registers a method the server may call on this client. */
int qrpc_client_register(qrpc_client *cli, uint32_t method, qrpc_shape shape,
                         qrpc_handler_fn handler, void *user_data);

/* As qrpc_server_keep(), for memory cli owns and frees with itself. */
int qrpc_client_keep(qrpc_client *cli, const void *data, size_t len,
                     void **out);

/* The current peer (with several backends: that of the first ready one in
 * target order), or NULL while not connected (in the 0-RTT phase
 * too) or while the connection drains after the server's GOAWAY (new calls
 * then wait for the next connection, which is made once the draining one
 * has closed). */
qrpc_peer *qrpc_client_peer(qrpc_client *cli);

/* One backend of a client, as qrpc_client_backends() reports it. */
typedef struct qrpc_backend_info {
  const char *addr;        /* "host:port" or "[v6]:port"; borrowed, valid
                              until the loop runs again */
  qrpc_client_state state; /* of its connection, as on_state reported it
                              (FAILED before its first attempt) */
  int takes_calls;         /* 1: ready, not draining: new calls may go to
                              it */
  int retiring;            /* its name no longer lists it: it finishes its
                              calls and goes */
  size_t in_flight;        /* its calls awaiting an answer now */
  uint64_t calls;          /* calls started on it */
  uint64_t failures;       /* failed attempts and lost connections */
  uint64_t attempts;       /* connection attempts */
  /* With opts.health_service: the status its health service sent last
   * (a qrpc_health_status: 0 UNKNOWN, also before the first, 1 SERVING,
   * 2 NOT_SERVING, 3 SERVICE_UNKNOWN); -1 when health is not watched or
   * the server has no health service. */
  int health;
} qrpc_backend_info;

/* Writes the first cap (out may be NULL when cap is 0) of cli's backends,
 * in target order, to out, and returns how many there are. Loop thread. */
size_t qrpc_client_backends(qrpc_client *cli, qrpc_backend_info *out,
                            size_t cap);

/* For a "dns:" target: QRPC_ERESOLVE while the last lookup of its name
 * failed or found no address (the client keeps trying, with backoff, and
 * keeps the backends it had), 0 otherwise. Loop thread. */
int qrpc_client_resolve_error(qrpc_client *cli);

/* Calls of cli that went out in 0-RTT since it was created: their REQUEST
 * was written before the handshake was done. If the server refused the
 * early data, the transport sent them again after the handshake; they are
 * counted all the same (qrpc_conn_stats says whether early data was
 * accepted). */
uint64_t qrpc_client_early_calls(qrpc_client *cli);

/* Fails every call (waiting or in flight) with CANCELLED, closes the
 * connection and frees the client. The on_done callbacks run inside this
 * function, before it returns. Not from inside the client's callbacks. */
void qrpc_client_free(qrpc_client *cli);

#ifdef __cplusplus
}
#endif
#endif
