/*
 * The QUIC transport: endpoints, connections, raw streams and datagrams.
 *
 * A server is a qrpc_endpoint bound to a UDP address; it accepts
 * connections and reports each one to the application once its handshake
 * has completed. A client connection is made with qrpc_conn_connect(); it
 * owns its own UDP socket.
 *
 * Threading: every function here must be called on the thread running the
 * loop the object belongs to. Callbacks fire on that thread.
 *
 * Lifetime: a connection's on_closed callback fires exactly once, and is the
 * last callback for that connection; the handle must not be used after it
 * returns. A stream's on_closed callback is likewise its last. Data passed to
 * a callback is borrowed for the duration of the callback. When a
 * connection closes, each open stream's on_closed fires first, then the
 * connection's.
 *
 * Reentrancy: from inside any callback the application may write to
 * streams, open streams, send datagrams and close streams or connections;
 * freeing an endpoint from inside one of its own callbacks is not allowed.
 */
#ifndef QRPC_QUIC_H
#define QRPC_QUIC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "qrpc/loop.h"
#include "qrpc/tls.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qrpc_endpoint qrpc_endpoint;
typedef struct qrpc_conn qrpc_conn;
typedef struct qrpc_stream qrpc_stream;

/* Why a connection closed. */
typedef enum qrpc_close_kind {
  QRPC_CLOSE_APPLICATION = 0, /* an application error code (0 = orderly) */
  QRPC_CLOSE_TRANSPORT = 1,   /* a QUIC transport error code */
  QRPC_CLOSE_IDLE = 2,        /* idle timeout; nothing was sent */
  QRPC_CLOSE_HANDSHAKE_TIMEOUT = 3,
  QRPC_CLOSE_TLS = 4,         /* handshake failed; code is the TLS alert */
  QRPC_CLOSE_ENDPOINT = 5,    /* the endpoint or loop was freed */
  QRPC_CLOSE_ERROR = 6,       /* a local failure (socket, memory) */
  QRPC_CLOSE_RESET = 7,       /* a valid stateless reset from the peer */
  QRPC_CLOSE_DEAD_PEER = 8,   /* the peer stopped answering */
} qrpc_close_kind;

/* kind, local and error go together as follows:
 * - APPLICATION: code is the application error code; error is 0 for code 0
 *   (orderly), QRPC_EPROTO for PROTOCOL_ERROR detected by this side, else
 *   QRPC_EAPP.
 * - TRANSPORT: code is the QUIC transport error code (0x2 when a server
 *   refused the connection at its limit); error QRPC_ETRANSPORT, or 0 for
 *   NO_ERROR.
 * - IDLE: QRPC_EIDLE. HANDSHAKE_TIMEOUT: QRPC_ETIMEDOUT.
 * - TLS: code is the TLS alert; error QRPC_EALPN (alert 120), QRPC_ECERT
 *   (a certificate alert, or our own verification refused the peer) or
 *   QRPC_ETLS.
 * - ENDPOINT: QRPC_ECLOSED. ERROR: the local failure (QRPC_ERESOLVE, ...),
 *   or QRPC_EUNREACHABLE on a client whose handshake heard nothing from
 *   the server but an ICMP port or host unreachable error: nothing listens
 *   at the address (the reason says which error). ICMP is not
 *   authenticated, so it ends only a handshake that has received nothing;
 *   later ones are ignored.
 * - RESET: QRPC_ECONNRESET, local 0: the peer answered with a stateless
 *   reset (RFC 9000 10.3) whose token matches, so it has no state for this
 *   connection (it restarted, or lost it); nothing more is sent.
 * - DEAD_PEER: QRPC_EDEADPEER, local 1: ack-eliciting packets went
 *   unanswered for dead_peer_timeout_ms (qrpc_conn_opts) with nothing at
 *   all received; one CONNECTION_CLOSE is sent in case the peer still
 *   listens.
 * A server reports nothing for connections whose handshake failed; they
 * are counted in qrpc_endpoint_stats. The exception is a connection that
 * accepted 0-RTT data: its streams may have reached the application before
 * the handshake completed, so on_closed fires for it whatever happens. */
typedef struct qrpc_close_info {
  qrpc_close_kind kind;
  int local;        /* 1: this side closed; 0: the peer did */
  uint64_t code;    /* application, transport or TLS alert code */
  int error;        /* the matching QRPC_E* value, 0 for an orderly close */
  const char *reason; /* NUL-terminated, possibly empty; borrowed */
} qrpc_close_info;

typedef struct qrpc_conn_stats {
  uint64_t smoothed_rtt_ns;
  uint64_t min_rtt_ns;
  uint64_t latest_rtt_ns;
  uint64_t cwnd;
  uint64_t bytes_in_flight;
  uint64_t bytes_sent;      /* UDP payload bytes */
  uint64_t bytes_recv;
  uint64_t pkts_sent;       /* QUIC packets */
  uint64_t pkts_recv;
  uint64_t datagrams_sent;
  uint64_t datagrams_recv;
  uint64_t datagrams_lost;
  int resumed;    /* 1: the handshake resumed a session with a ticket */
  int early_data; /* what became of 0-RTT: a qrpc_early_data value */
  uint64_t pkts_lost;      /* QUIC packets declared lost; their frames are sent
                              again. 0 when qrpc is built on ngtcp2 < 1.12,
                              which does not report them */
  uint64_t bytes_lost;     /* UDP payload bytes of those packets */
  uint64_t stream_blocked; /* times a stream's send buffer filled up (a
                              write returned QRPC_EAGAIN) */
  uint64_t flow_blocked;   /* times a stream waited for the peer's flow
                              control credit (MAX_STREAM_DATA) */
  uint64_t sim_dropped;    /* packets the link conditioner dropped
                              (qrpc_conn_opts.sim_loss_pct) */
} qrpc_conn_stats;

/* 0-RTT on a connection (qrpc_conn_stats.early_data). */
typedef enum qrpc_early_data {
  QRPC_EARLY_NONE = 0,     /* not sent (client) or not accepted (server) */
  QRPC_EARLY_ACCEPTED = 1, /* sent and accepted */
  QRPC_EARLY_REJECTED = 2, /* client: refused by the server; what went in
                              it was sent again after the handshake */
} qrpc_early_data;

/* ---- Stream callbacks ------------------------------------------------- */

typedef struct qrpc_stream_callbacks {
  /* Bytes arrived in order. fin is 1 once the peer has finished sending
   * (len may then be 0). Not called while reading is paused. */
  void (*on_read)(qrpc_stream *s, const uint8_t *data, size_t len, int fin,
                  void *user_data);
  /* The peer reset its sending side with an application error code. */
  void (*on_reset)(qrpc_stream *s, uint64_t app_error, void *user_data);
  /* The peer asked us to stop sending (STOP_SENDING); further writes fail
   * with QRPC_ERESET. */
  void (*on_stop_sending)(qrpc_stream *s, uint64_t app_error,
                          void *user_data);
  /* Buffered outgoing bytes fell below the low watermark after a write
   * returned QRPC_EAGAIN. */
  void (*on_writable)(qrpc_stream *s, void *user_data);
  /* The peer acknowledged every byte up to offset (bytes written so far,
   * not counting the stream header). May be NULL, like every callback. */
  void (*on_acked)(qrpc_stream *s, uint64_t offset, void *user_data);
  /* The stream is gone (both directions done, reset, or connection closed).
   * error is 0 after an orderly finish, QRPC_ERESET after a reset with a
   * non-zero code (either side), QRPC_ECLOSED when the connection closed. Last
   * callback for the stream; the handle is invalid after it returns. */
  void (*on_closed)(qrpc_stream *s, int error, void *user_data);
} qrpc_stream_callbacks;

/* ---- Connection callbacks --------------------------------------------- */

typedef struct qrpc_conn_callbacks {
  /* The handshake completed. On servers this is the first callback for a
   * connection: it is the accept. */
  void (*on_established)(qrpc_conn *c, void *user_data);
  /* The peer opened a raw stream named name (name_len bytes, not
   * NUL-terminated, borrowed). Set the stream's callbacks with
   * qrpc_stream_set_callbacks() before returning, or the stream is reset.
   * Without this callback peer raw streams are reset. */
  void (*on_stream)(qrpc_conn *c, qrpc_stream *s, const char *name,
                    size_t name_len, void *user_data);
  /* A QUIC datagram arrived (borrowed bytes). */
  void (*on_datagram)(qrpc_conn *c, const uint8_t *data, size_t len,
                      void *user_data);
  /* The peer's address changed (migration or NAT rebinding). */
  void (*on_path_changed)(qrpc_conn *c, void *user_data);
  /* The connection is closed. Exactly once; the last callback. */
  void (*on_closed)(qrpc_conn *c, const qrpc_close_info *info,
                    void *user_data);
} qrpc_conn_callbacks;

/* ---- Options ---------------------------------------------------------- */

/* Options shared by servers and clients. Always initialise with
 * qrpc_conn_opts_default() so fields added later get their defaults. */
typedef struct qrpc_conn_opts {
  size_t size; /* sizeof(qrpc_conn_opts), set by the default function */
  uint64_t idle_timeout_ms;      /* default 30000 */
  uint64_t handshake_timeout_ms; /* default 10000 */
  uint64_t max_streams_bidi;     /* streams the peer may open; default 100 */
  uint64_t stream_window;        /* receive window per stream; default 1 MiB */
  uint64_t conn_window;          /* receive window per connection; 16 MiB */
  size_t stream_send_buffer;     /* high watermark of buffered writes; 1 MiB */
  int enable_datagrams;          /* accept datagrams from the peer; 1 */
  size_t datagram_queue_len;     /* datagrams waiting to be sent; 1024 */
  const char *qlog_dir; /* if set, write <dir>/<cid>.sqlog per connection */
  /* The largest UDP payload (QUIC packet) this side sends, and the largest
   * it lets the peer send (its max_udp_payload_size transport parameter);
   * 1200 to 65527, default 65507. Packets start at 1200 bytes and grow
   * only to a size whose path MTU discovery probe was acknowledged on the
   * current path, so on the Internet they stop near 1450 bytes whatever
   * this says, while on loopback (MTU 65536) they reach it, and a bulk
   * transfer costs several times less CPU. 1452 keeps packets
   * Ethernet-sized everywhere; 1200 turns discovery off, and makes
   * datagrams (about 1,150 bytes then) as small as on the smallest path,
   * in both directions: set it while developing datagram payloads. It
   * also bounds what a connection keeps for the largest packet it has
   * received (ngtcp2's decryption buffer: 64 KiB per connection on
   * loopback at the default, 2 KiB at 1452). */
  size_t max_udp_payload;
  /* Dead-peer detection. When packets that the peer must acknowledge have
   * been outstanding this long and nothing at all (no packet that
   * decrypts) has come back, the connection closes with
   * QRPC_CLOSE_DEAD_PEER and QRPC_EDEADPEER, instead of waiting for the
   * idle timeout. The value is raised to at least three probe timeouts
   * (PTO) of the path, so a slow path is never declared dead by its round
   * trip alone. Default 1000 (3000 in qrpc_endpoint_opts_default(), so a
   * client moved by a NAT has sent a few PINGs first); 0 turns detection
   * off. A peer that was
   * killed and restarted without the same server key is found this way;
   * one with the same key answers with a stateless reset at once. */
  uint64_t dead_peer_timeout_ms;
  /* Keepalive: after this much silence in both directions a PING goes
   * out, so a dead peer is found by the check above before the next call
   * needs it (gRPC's keepalive time; the timeout is dead_peer_timeout_ms).
   * Default 0, off. A server sets it to free connections whose peer
   * vanished within keepalive_ms + dead_peer_timeout_ms. Each PING costs a
   * packet each way; while calls wait for answers the core pings every
   * second regardless (NAT rebinding). Values at or above idle_timeout_ms
   * are lowered to half of it. */
  uint64_t keepalive_ms;
  /* Link conditioner, for development only (docs/datagrams.md, "Link
   * conditioner"), like other game stacks' fake lag and loss: this side's
   * outgoing packets are dropped with probability sim_loss_pct percent;
   * the others are held sim_delay_ms plus a uniform 0..sim_jitter_ms, and
   * a sim_reorder_pct percent share of them sim_reorder_ms (default 10)
   * more, so that later packets overtake them. All 0, the default: off,
   * and packets leave as without it. The first connection of the
   * process with it on logs a warning that says so. sim_seed seeds the
   * connection's draws (0: a random seed); set it for repeatable runs. Set it
   * on both sides to condition both directions. */
  double sim_loss_pct;
  double sim_reorder_pct;
  uint32_t sim_delay_ms;
  uint32_t sim_jitter_ms;
  uint32_t sim_reorder_ms;
  uint64_t sim_seed;
  /* Outgoing connections only (ignored by an endpoint for the connections
   * it accepts): send and receive through this endpoint's UDP socket, made
   * with qrpc_endpoint_open() or qrpc_endpoint_listen() on the same loop,
   * instead of a socket of the connection's own. Packets are told apart
   * by connection id, so a process holding many connections (a gateway,
   * a test driver, a bench client with 1000 subscribers) reads them with
   * one recvmmsg and sends them with one sendmmsg per loop turn instead of
   * a system call and a wake-up per connection. The endpoint is
   * referenced, not owned: close these connections before freeing it (if
   * it goes first, they close with QRPC_ECLOSED). Such a connection cannot
   * qrpc_conn_rebind() (QRPC_ESTATE), learns of an unreachable server by
   * its handshake timeout rather than an ICMP error, and does not detect
   * stateless resets (a restarted server's connections end by dead-peer
   * detection or idle timeout instead). NULL, the default: a socket of
   * its own. */
  qrpc_endpoint *via;
  /* How long this side's acknowledgement of a lone packet may wait. When
   * one small packet (up to 1200 bytes) came and this side has nothing
   * in flight or queued to send (a subscriber, a receiver of datagrams or
   * of a trickle of stream data), its ACK waits for the next packet, data
   * of ours to ride on, or this many milliseconds, and then covers them
   * all: a one-way flow sends about half the packets back it did, and
   * its peer has half as many to read and decrypt. Otherwise
   * every packet that wants an ACK is acknowledged in the next write, at
   * the end of the loop turn. Default 12 (about half the 25 ms
   * max_ack_delay this side announces, which the peer's loss timers
   * allow for); 0 acknowledges every packet at once, for a receiver that
   * needs its ACKs to reach the sender soonest (a game client of a
   * snapshot channel above 80 Hz sending nothing back, whose deltas are
   * taken against the newest acknowledged state); at most 20. */
  uint32_t ack_wait_ms;
} qrpc_conn_opts;

void qrpc_conn_opts_default(qrpc_conn_opts *o);

typedef struct qrpc_endpoint_opts {
  size_t size;
  qrpc_conn_opts conn;     /* per-connection settings */
  size_t max_connections;  /* connections held at once, including those in
                              their closing period; default 10000 */
  size_t max_handshakes;   /* half-open connections at once; default 1000 */
  int validate_address;    /* send a stateless Retry first; default 0 */
  /* Stateless resets (RFC 9000 10.3) sent at most, per second, in answer
   * to short-header packets for connections this endpoint does not know
   * (a restarted server's reply to its predecessor's clients). A token
   * bucket holding one second's worth; default 1000; 0 sends none. */
  uint32_t stateless_resets_per_s;
} qrpc_endpoint_opts;

void qrpc_endpoint_opts_default(qrpc_endpoint_opts *o);

typedef struct qrpc_endpoint_stats {
  uint64_t accepted;     /* handshakes completed */
  uint64_t handshake_failed;
  uint64_t refused;      /* over a connection limit */
  uint64_t retries_sent;
  uint64_t version_negotiations_sent;
  uint64_t packets_dropped; /* undecodable or for no connection */
  uint64_t connections;     /* open now (not yet reported closed) */
  uint64_t stateless_resets_sent;
  uint64_t stateless_resets_limited; /* not sent: over the rate limit */
  uint64_t dead_peers;      /* connections closed by dead-peer detection */
  /* The qrpc_conn_stats counters summed over every connection the
   * endpoint has had, open or gone. */
  uint64_t bytes_sent;
  uint64_t bytes_recv;
  uint64_t pkts_sent;
  uint64_t pkts_recv;
  uint64_t pkts_lost;
  uint64_t bytes_lost;
  uint64_t datagrams_sent;
  uint64_t datagrams_recv;
  uint64_t datagrams_lost;
  uint64_t stream_blocked;
  uint64_t flow_blocked;
  /* Servers with several workers (qrpc_server_opts.workers): packets this
   * endpoint received for another worker's connection and handed to it,
   * those it could not hand over (the owner's queue was full), and those
   * it received from other workers. 0 for a lone endpoint. */
  uint64_t handed_off;
  uint64_t handoff_dropped;
  uint64_t handed_in;
  /* Packets the kernel dropped on the endpoint's socket before qrpc read
   * them, nearly all because its receive buffer was full: the loop was
   * too busy to keep up (a storm of handshakes, say). QUIC sends them
   * again, but a count that keeps growing means the server needs another
   * core (qrpc_server_opts.workers) or a larger net.core.rmem_max. */
  uint64_t socket_drops;
} qrpc_endpoint_stats;

/* ---- Server endpoint -------------------------------------------------- */

/* Creates a server endpoint bound to addr ("127.0.0.1:4433", "[::1]:4433",
 * port 0 picks a free one). tls must hold a certificate and key; it is
 * referenced, not copied. cbs is copied; user_data is passed to every
 * connection callback until qrpc_conn_set_user_data() changes it for one
 * connection. opts may be NULL for defaults.
 * Errors: QRPC_EINVAL (bad address or options), QRPC_ETLS (no
 * certificate), QRPC_EADDRINUSE, QRPC_ESYSTEM, QRPC_ENOMEM. */
int qrpc_endpoint_listen(qrpc_loop *loop, const char *addr,
                         qrpc_tls_config *tls,
                         const qrpc_endpoint_opts *opts,
                         const qrpc_conn_callbacks *cbs, void *user_data,
                         qrpc_endpoint **out);

/* Creates an endpoint for outgoing connections only, bound to addr
 * ("127.0.0.1:0", "[::]:0"): connections made with qrpc_conn_opts.via set
 * to it share its socket. It answers no handshake (Initial packets from
 * others are dropped and counted in packets_dropped). opts may be NULL
 * (its conn part is unused: it accepts no connection). Free it with
 * qrpc_endpoint_free() after closing the connections that use it.
 * Loop thread. Errors: QRPC_EINVAL (bad address), QRPC_EADDRINUSE,
 * QRPC_ESYSTEM, QRPC_ENOMEM. */
int qrpc_endpoint_open(qrpc_loop *loop, const char *addr,
                       const qrpc_endpoint_opts *opts, qrpc_endpoint **out);

/* The bound address (port resolved when 0 was asked). */
int qrpc_endpoint_local_addr(qrpc_endpoint *ep, struct sockaddr_storage *ss,
                             socklen_t *len);
/* The bound port. */
uint16_t qrpc_endpoint_port(qrpc_endpoint *ep);

/* Fills st with the endpoint's counters now; the traffic counters walk
 * the open connections, so this costs O(connections). Loop thread. */
void qrpc_endpoint_get_stats(qrpc_endpoint *ep, qrpc_endpoint_stats *st);

/* Closes every connection abruptly (CONNECTION_CLOSE with NO_ERROR, no
 * closing period), firing on_closed (kind QRPC_CLOSE_ENDPOINT, local) for
 * each established one, then releases the socket and the endpoint. Not from
 * inside a callback of this endpoint's connections. Outgoing connections
 * made through it (qrpc_conn_opts.via) that are still open close the same
 * way, with QRPC_ECLOSED; those still resolving their server's name fail
 * with QRPC_ECLOSED when they would start. NULL is ignored. */
void qrpc_endpoint_free(qrpc_endpoint *ep);

/* ---- Client connections ----------------------------------------------- */

/* Starts a connection to host:port ("localhost:4433", "[::1]:4433").
 * Names are resolved without blocking the loop. server_name is used for SNI
 * and certificate verification; NULL means the host part of addr. On
 * success *out is valid at once and exactly one of on_established or
 * on_closed follows, then on_closed eventually. tls is required (an empty
 * config trusts the system CA store).
 * Errors: QRPC_EINVAL (bad address, NULL tls, options not initialised with
 * qrpc_conn_opts_default()), QRPC_ENOMEM, QRPC_ETLS. */
int qrpc_conn_connect(qrpc_loop *loop, const char *addr,
                      const char *server_name, qrpc_tls_config *tls,
                      const qrpc_conn_opts *opts,
                      const qrpc_conn_callbacks *cbs, void *user_data,
                      qrpc_conn **out);

/* ---- Connections ------------------------------------------------------ */

void qrpc_conn_set_user_data(qrpc_conn *c, void *user_data);
void *qrpc_conn_user_data(qrpc_conn *c);
int qrpc_conn_is_server(qrpc_conn *c);
int qrpc_conn_is_established(qrpc_conn *c);

/* Addresses of the connection's current path (updated on migration).
 * Errors: QRPC_ESTATE before an address is known. */
int qrpc_conn_local_addr(qrpc_conn *c, struct sockaddr_storage *ss,
                         socklen_t *len);
int qrpc_conn_remote_addr(qrpc_conn *c, struct sockaddr_storage *ss,
                          socklen_t *len);

/* The negotiated ALPN ("qrpc/1"), or NULL before the handshake. Borrowed. */
const char *qrpc_conn_alpn(qrpc_conn *c);

/* The peer's certificate chain (peer first), or NULL with *count 0 if there
 * is none. Borrowed; valid until on_closed returns. */
const qrpc_cert *qrpc_conn_peer_certs(qrpc_conn *c, size_t *count);

/* Bytes from a certificate: ptr[len] is a NUL added for convenience, but
 * the bytes may hold NUL themselves, so compare by len. */
typedef struct qrpc_str {
  const char *ptr;
  size_t len;
} qrpc_str;

/* Who the peer's certificate says it is. */
typedef struct qrpc_identity {
  qrpc_str subject;      /* the subject's distinguished name as an RFC 4514
                            string, most specific first: "CN=alice,O=Example" */
  const qrpc_str *dns;   /* subjectAltName dNSName entries */
  size_t ndns;
  const qrpc_str *uri;   /* uniformResourceIdentifier entries */
  size_t nuri;
  const qrpc_str *email; /* rfc822Name entries */
  size_t nemail;
  const qrpc_str *ip;    /* iPAddress entries, written as inet_ntop does */
  size_t nip;
} qrpc_identity;

/* The peer's verified identity, from its own certificate: on a client the
 * server's, on a server the client's when client authentication is on
 * (qrpc_tls_config_set_client_auth()) and the client presented one. NULL
 * before the handshake completed, when the peer presented no certificate,
 * and when its chain was not verified (verification disabled), so a
 * non-NULL identity can be trusted as far as the CA is. Borrowed; valid
 * until on_closed returns. Loop thread only. */
const qrpc_identity *qrpc_conn_peer_identity(qrpc_conn *c);

void qrpc_conn_get_stats(qrpc_conn *c, qrpc_conn_stats *st);

/* Client only: moves the connection to a new local UDP socket (a new
 * port), as after a network change or NAT rebinding, keeping its streams.
 * The server validates the new path and reports it with on_path_changed;
 * this side's local address changes at once. Needs a confirmed handshake
 * and a spare connection id from the server (issued right after the
 * handshake). Errors: QRPC_EINVAL (a server connection), QRPC_ESTATE (not
 * established, or no spare connection id yet), QRPC_ESYSTEM. */
int qrpc_conn_rebind(qrpc_conn *c);

/* Closes gracefully: no new streams; once every stream has finished and
 * its data is acknowledged, or after timeout_ms, the connection closes with
 * NO_ERROR. on_closed follows. Errors: QRPC_ECLOSED. */
int qrpc_conn_shutdown(qrpc_conn *c, uint64_t timeout_ms);

/* Closes now with application error app_error and reason (may be NULL;
 * copied, truncated to 1000 bytes). Unsent data is discarded; on_closed
 * fires before this returns. Errors: QRPC_ECLOSED. */
int qrpc_conn_close(qrpc_conn *c, uint64_t app_error, const char *reason);

/* ---- Datagrams -------------------------------------------------------- */

/* The largest datagram payload that fits one packet on the current path
 * and the peer's limit, or 0 if the peer did not enable datagrams. It grows
 * as path MTU discovery finds room for larger packets (to about 1400 bytes
 * on the Internet, to 64 KiB on loopback), and falls back when the path
 * changes; datagrams queued but no longer fitting are then dropped and
 * counted as lost. */
size_t qrpc_conn_max_datagram_size(qrpc_conn *c);

/* Sends an unreliable datagram (RFC 9221). The bytes are copied on
 * success. It is queued until the congestion window lets it out.
 * Sending needs only the peer to have enabled datagrams (RFC 9221).
 * Errors: QRPC_ESTATE (handshake not finished), QRPC_ENODGRAM (the peer did
 * not enable datagrams), QRPC_EMSGSIZE (over qrpc_conn_max_datagram_size),
 * QRPC_ENOBUFS (send queue full), QRPC_ECLOSED, QRPC_ENOMEM. */
int qrpc_conn_send_datagram(qrpc_conn *c, const void *data, size_t len);

/* ---- Raw streams (docs/protocol.md section 2) ------------------------------ */

/* Opens a bidirectional raw stream named name (1..255 bytes of UTF-8).
 * cbs is copied. The handle stays valid until its on_closed returns.
 * Errors: QRPC_EINVAL (bad name), QRPC_ESTATE (handshake not finished or
 * shutting down), QRPC_ELIMIT (the peer's stream limit is reached; retry
 * when a stream closes), QRPC_ECLOSED, QRPC_ENOMEM. */
int qrpc_stream_open(qrpc_conn *c, const char *name,
                     const qrpc_stream_callbacks *cbs, void *user_data,
                     qrpc_stream **out);

/* Sets callbacks on a stream the peer opened (cbs is copied). */
void qrpc_stream_set_callbacks(qrpc_stream *s, const qrpc_stream_callbacks *cbs,
                               void *user_data);

void *qrpc_stream_user_data(qrpc_stream *s);
qrpc_conn *qrpc_stream_conn(qrpc_stream *s);
int64_t qrpc_stream_id(qrpc_stream *s);

/* Queues len bytes for sending; they are copied on success. Accepted while
 * fewer than the connection's stream_send_buffer bytes are buffered (not yet
 * acknowledged), else QRPC_EAGAIN and on_writable fires later.
 * Errors: QRPC_EAGAIN, QRPC_ESTATE (already finished), QRPC_ERESET (the
 * peer sent STOP_SENDING), QRPC_ECLOSED, QRPC_ENOMEM. */
int qrpc_stream_write(qrpc_stream *s, const void *data, size_t len);

/* Bytes written but not yet acknowledged by the peer. */
size_t qrpc_stream_buffered(qrpc_stream *s);

/* Finishes the sending side (FIN after the buffered bytes). Reading goes on
 * until the peer finishes too. Errors: QRPC_ESTATE, QRPC_ECLOSED. */
int qrpc_stream_finish(qrpc_stream *s);

/* Aborts both directions with an application error code (RESET_STREAM and
 * STOP_SENDING). on_closed follows. Errors: QRPC_ECLOSED. */
int qrpc_stream_reset(qrpc_stream *s, uint64_t app_error);

/* Pauses or resumes delivery to on_read. While paused, received bytes are
 * held (at most the stream window) and no flow-control credit is returned,
 * so the peer's writer slows down. */
void qrpc_stream_pause_read(qrpc_stream *s, int paused);

#ifdef __cplusplus
}
#endif
#endif
