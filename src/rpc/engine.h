/*
 * Internal structures of the RPC engine, shared by core.c (calls, requests,
 * frames), server.c and client.c.
 *
 * Lifetime rule: a peer and its streams may be asked to go away (the
 * connection closed) while frames of that peer are being dispatched, since
 * handlers may close connections. peer->busy counts dispatch depth; memory
 * is released only when it is back at zero.
 */
#ifndef QRPCI_RPC_ENGINE_H
#define QRPCI_RPC_ENGINE_H

#include <event2/event.h>
#include <event2/event_struct.h>

#include "qrpc/rpc.h"
#include "util/list.h"
#include "util/u64map.h"
#include "wire/payload.h"
#include "wire/reassembler.h"

#define QRPCI_COMMON_TIMEOUTS 16
#define QRPCI_FREELIST_MAX 1024
#define QRPCI_MAX_INTERCEPTORS 16
/* Bytes given away (qrpc_msg with pack NULL) from this size on are linked
 * into the stream's send buffer instead of copied; smaller ones are cheaper
 * to copy next to their frame header. */
#define QRPCI_GIVE_MIN (16 * 1024)

typedef struct qrpci_method {
  qrpc_shape shape;
  unsigned flags; /* QRPC_METHOD_* */
  qrpc_handler_fn fn;
  void *ud;
} qrpci_method;

typedef struct qrpci_core qrpci_core;

/* Metadata pairs being built for sending, in wire form (wire/metadata.h);
 * total is the sum of key and value sizes the per-call limit applies to. */
typedef struct qrpci_mdbuf {
  uint8_t *p;
  size_t len;
  size_t cap;
  size_t total;
} qrpci_mdbuf;

/* What the engine tells its owner (a server or client, which embeds the
 * core and finds itself from it), the way a lower layer reports upward:
 * through functions the owner hands it, never by name. */
typedef struct qrpci_core_ops {
  /* The peer's connection is gone and its calls and requests are over;
   * the owner forgets the peer. Runs inside qrpci_peer_closed(). */
  void (*peer_released)(qrpci_core *core, qrpc_peer *peer);
  /* The peer's memory goes right after this returns: the owner frees what
   * it attached to the peer. */
  void (*peer_freed)(qrpci_core *core, qrpc_peer *peer);
  /* A call the owner queued (QRPCI_CALL_QUEUED) timed out or was
   * cancelled: the owner takes it off its queue. NULL for owners that
   * never queue calls. */
  void (*call_unqueued)(qrpci_core *core, qrpc_call *call);
  /* A call in flight is off its peer without an answer: the connection
   * was lost (ran 1: the callee may have served it), or the peer's GOAWAY
   * said it was not served (ran 0). The call is off the wire (no peer, no
   * MsgId) and its deadline runs on. The owner returns 1 when it took the
   * call (to send it again), else 0, and may then point *detail at a
   * static reason for the failure. NULL: calls just fail. */
  int (*call_lost)(qrpci_core *core, qrpc_call *call, int ran,
                   const char **detail);
  /* The peer's GOAWAY arrived: it takes no new calls. NULL: nothing to
   * do. */
  void (*peer_goaway)(qrpci_core *core, qrpc_peer *peer);
} qrpci_core_ops;

/* The frame being delivered to a handler or callback, for
 * qrpc_req_take() and qrpc_call_take(); rs is NULL outside on_frame's
 * dispatch and once the payload was taken. */
typedef struct qrpci_delivery {
  struct qrpci_rstream *rs;
  const uint8_t *body;
  const uint8_t *payload;
  size_t len;
  uint64_t msgid;
  uint8_t type;
} qrpci_delivery;

/* What servers and clients share: the loop, options, registered methods,
 * free lists and deferred completions. */
struct qrpci_core {
  const qrpci_core_ops *ops;
  qrpc_loop *loop;
  qrpc_rpc_opts opts;
  qrpci_u64map methods; /* method id + 1 -> qrpci_method */
  void **kept;          /* copies made by qrpc_server_keep() and
                           qrpc_client_keep(), freed with the core */
  size_t nkept;
  qrpci_list done;      /* calls whose on_done is due from the loop */
  struct event *done_ev;
  qrpc_call *free_calls;
  size_t nfree_calls;
  qrpc_req *free_reqs;
  size_t nfree_reqs;
  struct {
    uint64_t ms;
    const struct timeval *tv;
  } timeouts[QRPCI_COMMON_TIMEOUTS];
  size_t ntimeouts;
  uint64_t early_calls; /* calls whose REQUEST went out in 0-RTT */
  qrpc_interceptor icpt[QRPCI_MAX_INTERCEPTORS];
  size_t nicpt;
  struct qrpci_callstats *callstats; /* NULL until metrics ask for it */
  qrpci_delivery dl; /* the frame on_frame is delivering */
};

typedef struct qrpci_rstream qrpci_rstream;

/* A peer begins with its core pointer: a server tells its connections'
 * user data apart by it (server.c). */
struct qrpc_peer {
  qrpci_core *core;
  qrpc_conn *conn;
  qrpci_list node;          /* in the owner's list of peers */
  struct qrpci_dgconn *dg;  /* the owner's datagram state; core ignores it */
  void *user_data;
  int ready;                /* handshake done */
  int early;                /* 0-RTT phase: idempotent calls may start */
  int closed;               /* connection gone; release when not busy */
  int busy;
  uint64_t last_msgid;      /* highest MsgId we issued */
  uint64_t peer_max_msgid;  /* highest REQUEST MsgId the peer sent */
  qrpci_u64map calls;       /* our calls in flight, by MsgId */
  size_t bg_calls;          /* of those, background ones */
  qrpci_u64map reqs;        /* the peer's calls we serve, by MsgId */
  qrpci_rstream **pool;     /* long-lived streams for unary calls */
  size_t rr;
  qrpci_list streams;
  int goaway_sent;
  uint64_t goaway_last;     /* what we promised to answer */
  int goaway_received;
  int close_when_idle;      /* close with GOING_AWAY once drained */
  size_t rx_buffered;       /* partial frames held by all its streams */
};

struct qrpci_rstream {
  qrpc_peer *peer;
  qrpc_stream *s;
  qrpci_list node;
  qrpci_reasm reasm;
  size_t rx_buffered;       /* this stream's share of peer->rx_buffered */
  int local;                /* we opened it: ITEM/END are for our calls */
  int pool_slot;            /* index in peer->pool, or -1 */
  qrpc_call *call;          /* the streaming call it is dedicated to */
  qrpc_req *req;            /* the streaming request it is dedicated to */
  uint64_t last_req_msgid;  /* REQUEST MsgIds must grow per stream */
  size_t pending;           /* requests received here still open */
  size_t ncalls;            /* our calls in flight here */
  int fin_received;
  int finished;             /* our FIN is queued */
  int gone;                 /* the transport closed it */
  int read_paused;          /* answers back up: stop taking requests */
  /* Whether a frame arrived in 0-RTT is decided by the bytes its Length
   * started in: frame_early for the frame being reassembled, rx_early for
   * the read being fed, then for frames that start in it. */
  int frame_early;
  int rx_early;
  uint64_t rx_ns; /* when the read being fed arrived (qrpci_stream_rx_ns) */
  /* A caller's HEADERS waiting for its REQUEST, which must come next. */
  int hdr_pending;
  int hdr_over; /* over max_metadata: the call is refused */
  uint64_t hdr_msgid;
  uint8_t *hdr_pairs; /* copy of the pairs */
  size_t hdr_len;
};

typedef enum qrpci_call_state {
  QRPCI_CALL_QUEUED,   /* waiting for a client connection */
  QRPCI_CALL_ACTIVE,   /* REQUEST sent */
  QRPCI_CALL_DONE,     /* on_done is due from the loop */
} qrpci_call_state;

struct qrpc_call {
  qrpci_core *core;
  qrpc_peer *peer;
  qrpci_rstream *rs;        /* dedicated stream of a streaming call */
  qrpci_list node;          /* client pending list, or core->done */
  qrpc_call *next_free;
  qrpci_call_state state;
  uint64_t msgid;
  uint32_t method;
  qrpc_shape shape;
  int idempotent;           /* may go out in 0-RTT */
  int background;           /* the owner's own (a client's health watch):
                               it does not make the connection await
                               answers, nor keep a draining one open */
  qrpc_call_callbacks cbs;
  void *ud;
  struct event timer;
  int timer_set;
  uint64_t deadline_ns;     /* 0: none */
  int sent_end;
  int got_end;
  int res_status;           /* for a deferred completion */
  const char *res_detail;
  uint8_t *payload; /* copy while queued (and while in flight,
                       when kept) */
  size_t len;
  int kept;        /* the copy outlives qrpci_call_start(), to
                      send the call again */
  int retried;     /* sent again once already */
  int send_hdr;    /* a HEADERS frame precedes the REQUEST */
  qrpci_mdbuf hdr; /* its pairs */
  void (*on_headers)(qrpc_call *call, const qrpc_md *md, size_t n,
                     void *user_data);
  void *on_headers_ud;
  int got_headers;
  qrpc_md *trailers; /* received TRAILERS, for the result */
  size_t ntrailers;
  size_t nicpt; /* interceptors whose before ran */
  uint64_t start_ns;
  qrpc_peer *icpt_peer; /* the peer the before hooks saw */
};

struct qrpc_req {
  qrpc_peer *peer;
  qrpci_rstream *rs;
  qrpc_req *next_free;
  uint64_t msgid;
  uint32_t method;
  qrpc_shape shape;
  int notify;
  int early;                /* arrived in 0-RTT */
  int in_handler;
  int released;             /* over; freed when the handler returns */
  int answered;             /* our END is sent (bidi waits for theirs) */
  int caller_ended;
  qrpc_req_callbacks cbs;
  void *ud;
  struct event timer;
  int timer_set;
  uint64_t deadline_ns;
  int md_peer; /* the caller sent HEADERS: it takes ours */
  qrpc_md *md; /* request metadata */
  size_t nmd;
  size_t md_total;
  qrpci_mdbuf rhdr; /* response headers of a streaming call */
  int hdr_sent;
  qrpci_mdbuf trl; /* trailers */
  size_t nicpt;    /* interceptors whose before ran */
  uint64_t start_ns; /* arrival: deadline, interceptors, callstats */
  int status;        /* how it ended, for them */
};

/* metadata.c. Appends one pair (key_len 0: key is NUL-terminated) unless
 * b's total would pass limit. Errors: QRPC_EINVAL (bad key, or value NULL
 * with a length), QRPC_EMSGSIZE, QRPC_ENOMEM. */
int qrpci_mdbuf_add(qrpci_mdbuf *b, const char *key, size_t key_len,
                    const void *value, size_t value_len, size_t limit);
int qrpci_mdbuf_add_list(qrpci_mdbuf *b, const qrpc_md *md, size_t n,
                         size_t limit);
void qrpci_mdbuf_free(qrpci_mdbuf *b);
/* Parses well-formed pairs into one allocated block (*out, free() it),
 * or *out NULL for none. Errors: QRPC_EINVAL (malformed), QRPC_ENOMEM. */
int qrpci_md_parse(const uint8_t *pairs, size_t len, qrpc_md **out,
                   size_t *count);

/* Sets up core for its owner; ops must outlive it. Errors: QRPC_EINVAL
 * (invalid options), QRPC_ENOMEM. */
int qrpci_core_init(qrpci_core *core, qrpc_loop *loop,
                    const qrpc_rpc_opts *opts, const qrpci_core_ops *ops);
/* Completes what is deferred and frees what core holds. */
void qrpci_core_cleanup(qrpci_core *core);
/* Errors: QRPC_EINVAL (shape, no fn, or unknown flags), QRPC_ENOMEM. */
/* Copies len bytes at data into memory the core frees in
 * qrpci_core_cleanup(); *out points at it. Errors: QRPC_EINVAL,
 * QRPC_ENOMEM. */
int qrpci_core_keep(qrpci_core *core, const void *data, size_t len, void **out);
int qrpci_core_register(qrpci_core *core, uint32_t method, qrpc_shape shape,
                        unsigned flags, qrpc_handler_fn fn, void *ud);
void qrpci_rpc_opts_default(qrpc_rpc_opts *o);
/* The core's per-method counters (rpc/callstats.h), created on the first
 * call; counting starts then. NULL when out of memory. */
struct qrpci_callstats *qrpci_core_callstats(qrpci_core *core);
int qrpci_rpc_opts_valid(const qrpc_rpc_opts *o);

/* A peer for conn; it takes the connection's RPC streams. NULL when out
 * of memory. */
qrpc_peer *qrpci_peer_new(qrpci_core *core, qrpc_conn *conn);
/* A client's connection is in its 0-RTT phase: calls marked idempotent
 * may start. (A server's peer never enters it: its calls wait for the
 * handshake, even when requests arrive earlier.) */
void qrpci_peer_early(qrpc_peer *peer);
/* The connection is established: streams may be opened. */
void qrpci_peer_ready(qrpc_peer *peer);
/* 1 if a call may start on peer now: it is established and not going
 * away, or in its 0-RTT phase and the call is idempotent. */
int qrpci_peer_takes(const qrpc_peer *peer, int idempotent);
/* The connection is gone: fail calls with UNAVAILABLE, cancel requests,
 * tell the owner, and free the peer (now, or when its dispatch unwinds). */
void qrpci_peer_closed(qrpc_peer *peer);
/* Sends GOAWAY and closes with GOING_AWAY once idle. */
void qrpci_peer_goaway(qrpc_peer *peer);
int qrpci_peer_idle(qrpc_peer *peer);
/* Sends a NOTIFY on the peer. Errors: QRPC_EINVAL (invalid payload),
 * QRPC_ECLOSED, QRPC_EMSGSIZE, QRPC_ENOMEM. */
int qrpci_peer_notify(qrpc_peer *peer, uint32_t method, qrpci_payload *pl);

/* Checks the metadata of opts (this version's struct) against core's
 * limit. Errors: QRPC_EINVAL, QRPC_EMSGSIZE. */
int qrpci_call_opts_check(qrpci_core *core, const qrpc_call_opts *opts);
/* opts is this version's struct (qrpc_call_opts_copy()), already checked
 * with qrpci_call_opts_check(). NULL when out of memory. */
qrpc_call *qrpci_call_new(qrpci_core *core, uint32_t method, qrpc_shape shape,
                          const qrpc_call_opts *opts, uint64_t default_timeout,
                          const qrpc_call_callbacks *cbs, void *ud);
/* Runs the before hooks of core's interceptors for a new outgoing call
 * (peer NULL while it waits for a connection); they may add to its
 * metadata. Returns 0, or the status a hook refused it with (*detail
 * then set). */
int qrpci_call_intercept(qrpc_call *call, qrpc_peer *peer,
                         const qrpc_call_opts *opts, const char **detail);
/* Appends a copy of icpt. Errors: QRPC_EINVAL, QRPC_ELIMIT. */
int qrpci_core_add_interceptor(qrpci_core *core, const qrpc_interceptor *icpt);
/* Sends the call's REQUEST on peer (payload given, or the queued copy).
 * Errors: QRPC_ECLOSED (peer does not take the call now), those of
 * opening a stream and of writing the frame. */
int qrpci_call_start(qrpc_call *call, qrpc_peer *peer, qrpci_payload *pl);
/* Completes a call that never reached the wire, from the loop. */
void qrpci_call_defer_done(qrpc_call *call, int status, const char *detail);
void qrpci_call_release(qrpc_call *call);

/* peer_dgram.c: what servers and clients share about a peer's datagram
 * state. The on_datagram callback of their connections (ud: the peer),
 * and their peer_freed operation. */
void qrpci_peer_on_datagram(qrpc_conn *c, const uint8_t *data, size_t len,
                            void *ud);
void qrpci_peer_free_dgram(qrpci_core *core, qrpc_peer *peer);

#endif
