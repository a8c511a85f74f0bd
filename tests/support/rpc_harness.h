/*
 * Shared pieces of the RPC engine's end-to-end tests: server and client
 * fixtures, call records that count every callback, a handler that holds
 * requests until the test answers them, and a hand-built RPC peer that
 * speaks frames directly (to play a hostile or exactly scripted peer).
 *
 * Like harness.h, nothing here asserts: fixtures count what happened and
 * the tests assert on the counts. Everything runs on the loop thread.
 */
#ifndef QT_RPC_HARNESS_H
#define QT_RPC_HARNESS_H

#include <stddef.h>
#include <stdint.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "wire/frame.h"
#include "wire/reassembler.h"

/* Status slots counted one by one; application codes are counted apart. */
#define QT_STATUS_SLOTS (QRPC_STATUS_UNAUTHENTICATED + 1)

/* ---- Servers ---------------------------------------------------------- */

/* Starts a server on bind ("127.0.0.1:0", or a fixed port to restart on
 * it) and writes the address clients use into addr ("127.0.0.1:P").
 * opts may be NULL. Returns 0 or the error of qrpc_server_new(). */
int qt_rpc_server_start(qrpc_loop *loop, const char *bind, qrpc_tls_config *tls,
                        const qrpc_server_opts *opts, qrpc_server **out,
                        char *addr, size_t addr_cap);

/* Peer events of a server, for on_peer_open/on_peer_close with the
 * struct as the server's user_data (see qt_rpc_peers_install()). */
typedef struct qt_rpc_peers {
  int opened;
  int closed;
  int live;
  qrpc_peer *last; /* most recently opened, NULL once it closed */
} qt_rpc_peers;

/* Points opts' peer callbacks at counters kept in p. */
void qt_rpc_peers_install(qrpc_server_opts *opts, qt_rpc_peers *p);

/* ---- Handlers --------------------------------------------------------- */

/* Answers every call with its own payload. user_data may be NULL or an int
 * counting invocations (NOTIFYs included; they are not answered). */
void qt_rpc_echo(qrpc_req *req, const uint8_t *payload, size_t len,
                 void *user_data);

/* A handler that keeps its requests (with on_cancel set, as rpc.h asks)
 * until the test answers them. Give a qt_holder as user_data. */
#define QT_HOLD_MAX 512
#define QT_HOLD_PAYLOAD 64

typedef struct qt_hold_slot {
  struct qt_holder *h;
  qrpc_req *req; /* NULL when free */
  uint8_t payload[QT_HOLD_PAYLOAD];
  size_t len;
} qt_hold_slot;

typedef struct qt_holder {
  qt_hold_slot slots[QT_HOLD_MAX];
  int received; /* handler invocations */
  int held;     /* requests kept now */
  int overflow; /* arrived with every slot taken, or payload too long */
  int notifies; /* qrpc_req_is_notify() was true */
  int cancels;  /* on_cancel calls */
  int cancel_by_status[QT_STATUS_SLOTS];
  int cancel_other; /* on_cancel with a status outside the slots */
  int answered;     /* released by qt_holder_reply_all() */
  int answer_errors;
  uint64_t last_remaining_ms; /* qrpc_req_remaining_ms() at arrival */
} qt_holder;

void qt_holder_init(qt_holder *h);
void qt_holder_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                       void *user_data);
/* Answers every held request with its own payload; returns how many. */
int qt_holder_reply_all(qt_holder *h);

/* ---- Client fixture --------------------------------------------------- */

#define QT_RPC_EVENTS 64

typedef struct qt_rpc_client {
  qrpc_loop *loop;
  qrpc_client *cli;
  int connects;
  int disconnects; /* on_disconnect calls, whatever they followed */
  qt_close_rec last_disconnect;
  int connected; /* an on_connect not yet followed by on_disconnect */
  int lost;      /* on_disconnect after an on_connect */
  qt_close_rec last_lost;
  int unpaired;    /* on_disconnect with no connection to lose */
  qrpc_peer *peer; /* from on_connect, NULL once lost */
  /* In order: 'C' on_connect, 'D' on_disconnect after it, 'd' an
   * on_disconnect with no on_connect before it. */
  char events[QT_RPC_EVENTS + 1];
  size_t nevents;
  int peer_mismatch; /* on_connect's peer differed from qrpc_client_peer() */
} qt_rpc_client;

/* Creates a client for addr. opts may be NULL for defaults; its callbacks
 * and user_data are replaced by the fixture's. Returns 0 or the error. */
int qt_rpc_client_start(qt_rpc_client *c, qrpc_loop *loop, const char *addr,
                        qrpc_tls_config *tls, const qrpc_client_opts *opts);

/* Runs the loop until the client has connected n times in all. Returns 1
 * if it did within timeout_ms. */
int qt_rpc_client_wait_connects(qt_rpc_client *c, int n, uint64_t timeout_ms);

/* Frees the client (NULL client ignored). */
void qt_rpc_client_free(qt_rpc_client *c);

/* ---- Call records ----------------------------------------------------- */

/* Totals over many calls. */
typedef struct qt_call_tally {
  int done;
  int ok;
  int local;
  int by_status[QT_STATUS_SLOTS];
  int app_status; /* 1000 and up */
  int odd_status; /* anything else */
} qt_call_tally;

#define QT_REPLY_CAP 256

/* One call: start it with qt_call_rec_start() (which zeroes the record),
 * or prepare it with qt_call_rec_init() and give it, with
 * qt_call_rec_cbs, to any function that starts a call. The record must
 * stay in place until done. */
typedef struct qt_call_rec {
  qt_call_tally *tally; /* optional */
  qrpc_call *call;      /* the handle; NULL once on_done returned */
  int done;
  int status;
  int local;
  char detail[256];
  size_t detail_len;
  uint8_t reply[QT_REPLY_CAP];
  size_t reply_len;
  int reply_overflow; /* the reply was longer than QT_REPLY_CAP */
  int reply_null;     /* payload was NULL with a non-zero len */
  int items;
  int writables;
  int user_data_wrong; /* qrpc_call_user_data() did not return the record */
  int after_done;      /* a callback arrived after on_done */
} qt_call_rec;

extern const qrpc_call_callbacks qt_call_rec_cbs;

/* Zeroes r and attaches the tally (may be NULL). */
void qt_call_rec_init(qt_call_rec *r, qt_call_tally *tally);

/* Options in one expression: timeout (0 for the client's default) and
 * fail_fast (-1 for the client's default). */
qrpc_call_opts qt_call_opts(uint64_t timeout_ms, int fail_fast);

/* Starts a unary call recorded in r (which is zeroed first, keeping the
 * tally given). Returns the result of qrpc_client_call(). */
int qt_call_rec_start(qt_call_rec *r, qt_call_tally *tally, qrpc_client *cli,
                      uint32_t method, const void *payload, size_t len,
                      const qrpc_call_opts *opts);
int qt_call_rec_start_peer(qt_call_rec *r, qt_call_tally *tally,
                           qrpc_peer *peer, uint32_t method,
                           const void *payload, size_t len,
                           const qrpc_call_opts *opts);

/* 1 if the call ended with OK and exactly this reply. */
int qt_call_rec_replied(const qt_call_rec *r, const void *payload, size_t len);

/* ---- Hand-built RPC peer ---------------------------------------------- */

/* One RPC stream driven frame by frame: incoming bytes are cut into frames
 * with the wire reassembler and decoded, and each decoded frame is counted
 * and handed to on_frame; frames to send are encoded with wire/frame.h or
 * written as raw bytes, to play a peer that breaks the protocol. */
typedef struct qt_raw_rpc qt_raw_rpc;
typedef struct qt_raw_acceptor qt_raw_acceptor;
typedef void (*qt_raw_frame_fn)(qt_raw_rpc *r, const qrpci_frame *f,
                                void *user_data);

#define QT_RAW_TYPES 11 /* frame types 1..10 */

struct qt_raw_rpc {
  qrpc_stream *s; /* NULL once closed */
  qrpci_reasm reasm;
  qt_raw_frame_fn on_frame; /* optional */
  void *user_data;
  qt_raw_acceptor *acceptor; /* set for accepted streams, which are
                                freed when they close */
  int finish_on_fin;         /* answer the peer's FIN with our own */
  int frames;
  int by_type[QT_RAW_TYPES];
  int undecodable; /* 1 once bytes failed to reassemble or decode: the
                      stream's frames are not parsed after that */
  const char *why; /* the reassembler's or decoder's reason */
  int fins;
  int resets;
  uint64_t reset_code;
  int stop_sendings;
  int closes;
  int write_errors;
  qrpci_frame last; /* last frame; its pointers are cleared */
  uint8_t last_payload[QT_REPLY_CAP];
  size_t last_payload_len;
};

/* Opens an RPC stream on c (client or server side). r is caller-owned and
 * must stay in place until r->closes is non-zero or the loop is freed.
 * Returns the error of qrpci_stream_open_rpc(). */
int qt_raw_rpc_open(qt_raw_rpc *r, qrpc_conn *c, qt_raw_frame_fn on_frame,
                    void *user_data);

/* Encodes f and writes it. Returns 0 or an error (QRPC_EINVAL when f
 * cannot be encoded, else the write's error). */
int qt_raw_rpc_send(qt_raw_rpc *r, const qrpci_frame *f);

/* Writes arbitrary bytes. Returns the error of qrpc_stream_write(). */
int qt_raw_rpc_send_bytes(qt_raw_rpc *r, const void *data, size_t len);

/* Streams the peer opens, accepted as qt_raw_rpc (allocated, freed when
 * each stream closes). Install with qrpci_conn_set_rpc_acceptor() or
 * qrpci_endpoint_set_rpc_acceptor(), passing qt_raw_accept_fn and the
 * struct. */
struct qt_raw_acceptor {
  qt_raw_frame_fn on_frame;
  void *user_data;
  int accepted;
  int alloc_failed;
  qt_raw_rpc *last; /* most recently accepted, NULL once it closed */
  /* Totals over every accepted stream. */
  int frames;
  int by_type[QT_RAW_TYPES];
  int undecodable;
};

void qt_raw_accept_fn(qrpc_conn *c, qrpc_stream *s, void *user_data);

/* ---- Frames ----------------------------------------------------------- */

/* Shorthands filling a qrpci_frame (payload and detail borrowed). */
qrpci_frame qt_frame_request(uint64_t msgid, uint64_t method,
                             uint64_t timeout_ms, const void *payload,
                             size_t len);
qrpci_frame qt_frame_reply(uint64_t msgid, const void *payload, size_t len);

/* ---- Teardown --------------------------------------------------------- */

/* End of a test: frees the n clients (fixtures whose cli is NULL are
 * skipped) and the server (*srv may be NULL; it is set to NULL), then runs
 * the loop until it holds no connection, so the loop can be freed and
 * LeakSanitizer sees nothing. Returns 1 once everything was released. */
int qt_rpc_close_all(qrpc_loop *loop, qrpc_server **srv, qt_rpc_client *clients,
                     size_t n);

/* ---- Small utilities -------------------------------------------------- */

/* 1 if hay contains needle, ignoring ASCII case. */
int qt_contains_nocase(const char *hay, const char *needle);

#endif
