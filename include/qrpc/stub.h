/*
 * The runtime of generated code: what the stubs protoc-gen-qrpc writes
 * (docs/codegen.md) have in common, compiled and tested once in the library
 * instead of pasted into every generated file. Users call the generated
 * functions, not these; they are public because generated code is compiled
 * in the user's program and links against them, and they change with the
 * generator of the same qrpc version.
 *
 * The runtime is written on the public API only (the other headers of
 * include/qrpc/): it does nothing that generated code could not do itself.
 *
 * Messages are protobuf-c's. This header only declares the two protobuf-c
 * types it names, so including it (or qrpc/qrpc.h) needs no protobuf-c
 * headers; code that calls it includes <protobuf-c/protobuf-c.h>.
 *
 * Threading: functions that take a qrpc object run on that object's loop
 * thread, like everything in qrpc/rpc.h. The message and result helpers
 * (qrpc_stub_msg() to qrpc_stub_result_reply()) touch no qrpc object and
 * may be called from any thread.
 */
#ifndef QRPC_STUB_H
#define QRPC_STUB_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/dgram.h"
#include "qrpc/loop.h"
#include "qrpc/rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ProtobufCMessage;
struct ProtobufCMessageDescriptor;

/* ---- Messages and results -------------------------------------------- */

/* Describes msg for the _msg functions of qrpc/rpc.h and qrpc/dgram.h,
 * which pack it with protobuf-c straight into the send buffer, after
 * checking that it is a message of type desc, so a stub never sends a
 * message of another type. msg is borrowed: it must stay valid and
 * unchanged until the function given *m returns. Any thread.
 * Errors: QRPC_EINVAL (m, msg or desc NULL, or msg of another type; *m is
 * then untouched). */
int qrpc_stub_msg(qrpc_msg *m, const struct ProtobufCMessage *msg,
                  const struct ProtobufCMessageDescriptor *desc);

/* Decodes the len bytes at data (borrowed; NULL when len is 0) as a
 * message of type desc. On success *out is the message, decoded with
 * protobuf-c's default allocator and owned by the caller, who frees it
 * with qrpc_stub_free(); on failure *out is NULL (when out is not). Any
 * thread.
 * Errors: QRPC_EINVAL (desc or out NULL, or data NULL with len > 0),
 * QRPC_EPROTO (the bytes are not a message of type desc, or a string
 * field in it holds a NUL byte, which protobuf-c's NUL-terminated strings
 * would hide from the handler by cutting the string short; protobuf-c
 * reports running out of memory the same way). */
int qrpc_stub_unpack(const struct ProtobufCMessageDescriptor *desc,
                     const uint8_t *data, size_t len,
                     struct ProtobufCMessage **out);

/* Frees a message that qrpc_stub_unpack(), qrpc_stub_result_reply() or
 * qrpc_stub_call_sync() returned; the caller's pointer is invalid after
 * it. NULL is ignored. Any thread; no errors. */
void qrpc_stub_free(struct ProtobufCMessage *msg);

/* Turns *r into a local QRPC_STATUS_INTERNAL failure saying detail, with
 * no payload: what a caller sees when a reply or an item it received does
 * not decode. detail is a NUL-terminated string from the stubs, not from
 * the wire, borrowed for as long as *r is used. r and detail must not be
 * NULL. Any thread; no errors. */
void qrpc_stub_result_fail(qrpc_result *r, const char *detail);

/* Decodes the reply of a finished call (r->payload, r->len) as desc when
 * r->status is QRPC_STATUS_OK. On success *reply is the message, the
 * caller's to free with qrpc_stub_free(), or NULL for a call that failed
 * (r unchanged). A reply that does not decode turns *r into a failure
 * saying detail, as qrpc_stub_result_fail() does, so the caller's on_done
 * learns why there is no reply; detail is borrowed as there. Any thread.
 * Errors: QRPC_EINVAL (an argument is NULL; nothing changed),
 * QRPC_EPROTO (the reply does not decode; *reply NULL, *r changed). */
int qrpc_stub_result_reply(qrpc_result *r,
                           const struct ProtobufCMessageDescriptor *desc,
                           const char *detail, struct ProtobufCMessage **reply);

/* ---- Starting calls and registering ---------------------------------- */

/* Starts a call of method with shape on cli, or on peer when cli is NULL:
 * a unary call with qrpc_client_call_msg() or qrpc_peer_call_msg(), a
 * server streaming call with qrpc_client_stream_msg() or
 * qrpc_peer_stream_msg() (m is the request), a client or bidi streaming
 * call with qrpc_client_stream() or qrpc_peer_stream() and no payload (m
 * is NULL; items follow). flags are the method's QRPC_METHOD_* from the
 * IDL: with QRPC_METHOD_IDEMPOTENT the call is made idempotent whatever
 * opts says, every other option is the caller's. m, opts, cbs, user_data
 * and *out are as for those functions, and on success cbs->on_done fires
 * exactly once. Loop thread of cli or peer.
 * Errors: QRPC_EINVAL (cli and peer both NULL, no m for a unary or server
 * streaming call, an m for the others, or opts of an unknown size), and
 * those of the function called. */
int qrpc_stub_call_start(qrpc_client *cli, qrpc_peer *peer, uint32_t method,
                         qrpc_shape shape, unsigned flags, const qrpc_msg *m,
                         const qrpc_call_opts *opts,
                         const qrpc_call_callbacks *cbs, void *user_data,
                         qrpc_call **out);

/* Registers handler for method with shape on srv with flags, the method's
 * QRPC_METHOD_* from the IDL (qrpc_server_register_flags()), or on cli
 * when srv is NULL (qrpc_client_register(); flags do not apply there,
 * since a server never calls its client in 0-RTT). handlers, the
 * generated handlers struct (the copy qrpc_stub_handlers_copy() made), is
 * handler's user_data: borrowed, it must stay valid until srv or cli is
 * freed. Loop thread of srv or cli.
 * Errors: QRPC_EINVAL (srv and cli both NULL), and those of the function
 * called. */
int qrpc_stub_register(qrpc_server *srv, qrpc_client *cli, uint32_t method,
                       qrpc_shape shape, unsigned flags,
                       qrpc_handler_fn handler, const void *handlers);

/* Copies the generated handlers struct h (size bytes, its void *
 * user_data member at user_data_offset) into memory that srv, or cli when
 * srv is NULL, owns and frees with itself (qrpc_server_keep(),
 * qrpc_client_keep()), sets the copy's user_data to user_data when
 * set_user_data is 1 (else it keeps h's), and points *out at the copy,
 * which the generated register functions then register instead of h. So
 * h is only read here, and one static const handlers table can serve many
 * servers and clients, each with its own user_data. Loop thread of srv or
 * cli.
 * Errors: QRPC_EINVAL (srv and cli both NULL, h or out NULL, or size too
 * small for the offset), QRPC_ENOMEM. */
int qrpc_stub_handlers_copy(qrpc_server *srv, qrpc_client *cli, const void *h,
                            size_t size, size_t user_data_offset,
                            int set_user_data, void *user_data,
                            const void **out);

/* Configures datagram channel on srv, or on cli when srv is NULL
 * (qrpc_server_register_dgram(), qrpc_client_register_dgram()), with the
 * options the IDL gave it; fn NULL makes it send-only there. handlers is
 * fn's user_data, borrowed as for qrpc_stub_register(). Loop thread of
 * srv or cli.
 * Errors: QRPC_EINVAL (srv and cli both NULL), and those of the function
 * called. */
int qrpc_stub_register_dgram(qrpc_server *srv, qrpc_client *cli,
                             uint32_t channel, int latest_only,
                             uint64_t max_age_ms, qrpc_dgram_fn fn,
                             const void *handlers);
/* The same with (qrpc.max_message_bytes): max_message > 0 makes the
 * channel fragmented (qrpc_dgram_opts.max_message). */
int qrpc_stub_register_dgram_frag(qrpc_server *srv, qrpc_client *cli,
                                  uint32_t channel, int latest_only,
                                  uint64_t max_age_ms, size_t max_message,
                                  qrpc_dgram_fn fn, const void *handlers);
/* The same with (qrpc.snapshot_ring) and the field numbers
 * (qrpc.snapshot_key) resolved to: snapshot_ring > 0 makes the channel a
 * snapshot channel (qrpc_dgram_opts.snapshot_ring, snapshot_entities and
 * snapshot_key; max_message 0 then means QRPC_DGRAM_SNAPSHOT_MESSAGE).
 * Errors: as qrpc_stub_register_dgram(), QRPC_EINVAL also for a
 * snapshot_ring over QRPC_DGRAM_MAX_RING. */
int qrpc_stub_register_dgram_snapshot(qrpc_server *srv, qrpc_client *cli,
                                      uint32_t channel, int latest_only,
                                      uint64_t max_age_ms, size_t max_message,
                                      size_t snapshot_ring,
                                      uint32_t snapshot_entities,
                                      uint32_t snapshot_key, qrpc_dgram_fn fn,
                                      const void *handlers);

/* Refuses a request whose payload does not decode: it is failed with
 * QRPC_STATUS_INVALID_ARGUMENT and detail (a NUL-terminated string from
 * the stubs, copied; may be NULL) and released. A NOTIFY is left alone,
 * since nothing answers those. For a handler on req's loop thread.
 * Errors: QRPC_EINVAL (req NULL). */
int qrpc_stub_refuse(qrpc_req *req, const char *detail);

/* ---- Blocking calls --------------------------------------------------- */

/* Calls method on cli with request, a message of type in (borrowed, packed
 * before this returns), as an idempotent call if flags (the method's
 * QRPC_METHOD_*) say so, and runs loop until the call is over: for at most
 * timeout_ms (0: the client's default, which may be none) and a second of
 * grace, after which the call is cancelled. A loop stopped meanwhile by
 * other callbacks is run again. Loop thread only, and not from inside a
 * callback of loop: qrpc_loop_run() then fails and so does this.
 *
 * Returns 0 when the call ran: *status is its QRPC_STATUS_*, and *reply is
 * the decoded reply of type out if that is QRPC_STATUS_OK, else NULL. A
 * reply that does not decode makes the status QRPC_STATUS_INTERNAL. The
 * reply is the caller's, to free with qrpc_stub_free(). reply and status
 * may be NULL (a reply is then freed here).
 *
 * Returns a negative code when the call could not run (*status is then
 * QRPC_STATUS_UNKNOWN, *reply NULL). Errors: QRPC_EINVAL (loop, cli or out
 * NULL, or request NULL or not of type in), QRPC_ENOMEM, those of
 * qrpc_client_call_msg(), and QRPC_ESYSTEM when the loop cannot run (the
 * call is then cancelled, and its state freed when it ends). */
int qrpc_stub_call_sync(qrpc_loop *loop, qrpc_client *cli, uint32_t method,
                        unsigned flags, const struct ProtobufCMessage *request,
                        const struct ProtobufCMessageDescriptor *in,
                        const struct ProtobufCMessageDescriptor *out,
                        uint64_t timeout_ms, struct ProtobufCMessage **reply,
                        int *status);

/* ---- Serving client and bidi streaming calls -------------------------- */

/* The untyped members of a method's generated _handlers struct, as the
 * generated header documents them; any may be NULL. */
typedef struct qrpc_stub_stream_handlers {
  void *(*on_start)(qrpc_req *req, void *user_data);
  void (*on_end)(qrpc_req *req, void *user_data);
  void (*on_cancel)(qrpc_req *req, int status, void *user_data);
  void (*on_writable)(qrpc_req *req, void *user_data);
} qrpc_stub_stream_handlers;

/* Hands one decoded item to the method's typed on_item: handlers is the
 * generated _handlers struct given to qrpc_stub_sreq_start(), item is
 * borrowed until it returns. */
typedef void (*qrpc_stub_item_fn)(qrpc_req *req,
                                  const struct ProtobufCMessage *item,
                                  const void *handlers, void *user_data);

/* Serves an incoming client or bidi streaming call through the stubs:
 * sets req's callbacks (qrpc_req_set_callbacks()) to the runtime's, which
 * keep per-call state until the request is over, and runs
 * cbs->on_start(req, user_data), whose result replaces user_data for the
 * call's later callbacks.
 *
 * Each item is decoded as item_desc and passed to item() with handlers and
 * the call's user_data; one that does not decode runs cbs->on_cancel with
 * QRPC_STATUS_INVALID_ARGUMENT, then fails the call with that status and
 * bad_item as detail unless on_cancel answered it, and no later item
 * arrives. The caller's end runs cbs->on_end, room to send
 * cbs->on_writable, and a request gone unanswered (cancel, deadline,
 * connection lost) cbs->on_cancel, after which req is invalid.
 *
 * Answer such calls only with qrpc_stub_sreq_reply(), qrpc_stub_sreq_end()
 * and qrpc_stub_sreq_error() (items with qrpc_req_send_msg()), from any
 * callback or later: the state is freed when the request is over, never
 * while one of these callbacks runs. A NOTIFY gets nothing: streaming
 * methods have nothing to do with one.
 *
 * item_desc, bad_item and handlers are borrowed while the call lasts (the
 * generated code passes static data and the registered handlers); cbs is
 * copied. For the method's handler, on req's loop thread.
 * Errors: QRPC_EINVAL (an argument other than cbs' members and user_data
 * is NULL; nothing is done), QRPC_ENOMEM (the call is failed with
 * QRPC_STATUS_RESOURCE_EXHAUSTED). */
int qrpc_stub_sreq_start(qrpc_req *req,
                         const struct ProtobufCMessageDescriptor *item_desc,
                         const char *bad_item, qrpc_stub_item_fn item,
                         const void *handlers,
                         const qrpc_stub_stream_handlers *cbs, void *user_data);

/* Answers a client streaming call served by qrpc_stub_sreq_start() with m
 * (its message borrowed, packed before this returns) as
 * qrpc_req_reply_msg() does; req is released then. Loop thread of req.
 * Errors: QRPC_EINVAL (req or m NULL, or not a client streaming call; req
 * stays as it was), and the others of qrpc_req_reply_msg() (req released
 * all the same). */
int qrpc_stub_sreq_reply(qrpc_req *req, const qrpc_msg *m);

/* Fails a call served by qrpc_stub_sreq_start() with status (> 0) and
 * detail (copied, may be NULL), as qrpc_req_error() does; req is released.
 * Loop thread of req.
 * Errors: QRPC_EINVAL (req NULL or status <= 0; req stays as it was). */
int qrpc_stub_sreq_error(qrpc_req *req, int status, const char *detail);

/* Ends the server's side of a bidi call served by qrpc_stub_sreq_start(),
 * as qrpc_req_end() does: req lives on until the caller has ended too.
 * Loop thread of req.
 * Errors: as qrpc_req_end() (nothing changes then). */
int qrpc_stub_sreq_end(qrpc_req *req);

#ifdef __cplusplus
}
#endif
#endif
