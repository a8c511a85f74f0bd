/*
 * Shared pieces of the end-to-end tests: bounded loop running, resource
 * probes, self-checking payloads, an echo server and a client fixture, and
 * a client-side stream transfer that verifies what comes back.
 *
 * Everything here runs on the loop thread and never asserts: fixtures count
 * what happened and tests assert on the counts, so a failure is reported
 * once, by the test, with the loop still in a state that can be cleaned up.
 */
#ifndef QT_HARNESS_H
#define QT_HARNESS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "certs.h"
#include "qrpc/qrpc.h"

/* Deadline of an ordinary wait: far above what loopback needs, far below
 * the suite's timeout, so a hang fails the one test quickly. Under
 * valgrind every handshake costs tens of times more CPU, the RTT the
 * transport measures grows with it, and so do its timers (a closing
 * connection lingers three PTOs): the memcheck runs set QT_WAIT_SCALE. */
#define QT_WAIT_MS (5000 * qt_wait_scale())

/* QT_WAIT_SCALE from the environment, 1 to 20; 1 when unset. */
int qt_wait_scale(void);

/* What a verification callback saw, kept by qt_verify_record() (give it
 * the record as user_data): how often it ran, its arguments, and whether
 * chain[0] was the certificate the test expected. It returns verdict. */
typedef struct qt_verify_rec {
  qrpc_cert expect; /* the DER chain[0] should be */
  int verdict;      /* what the callback returns */
  int calls;
  int ok;
  size_t chain_len;
  int chain0_matches;
  qrpc_conn *conn;
} qt_verify_rec;

int qt_verify_record(qrpc_conn *conn, const qrpc_cert *chain, size_t chain_len,
                     int ok, void *user_data);

/* ---- Time and bounded loop running ----------------------------------- */

uint64_t qt_now_ms(void);

typedef int (*qt_pred_fn)(void *arg);

/* Runs loop in short slices until pred(arg) returns non-zero or
 * timeout_ms pass. pred is evaluated between slices, so it may also push
 * more work (open streams, send). Returns 1 if pred became true, else 0. */
int qt_run_until(qrpc_loop *loop, qt_pred_fn pred, void *arg,
                 uint64_t timeout_ms);

/* Runs loop until *counter >= target, or timeout_ms pass. Returns 1 if the
 * counter got there. */
int qt_run_until_count(qrpc_loop *loop, const int *counter, int target,
                       uint64_t timeout_ms);

/* Runs loop for ms milliseconds (to see that something does NOT happen, or
 * happens only once). */
void qt_run_for(qrpc_loop *loop, uint64_t ms);

/* Runs loop until it holds no connection at all (closing and draining
 * ones included). Returns 1 on success. */
int qt_run_until_released(qrpc_loop *loop, uint64_t timeout_ms);

/* ---- Resource probes ------------------------------------------------- */

/* Open file descriptors of this process, or -1. */
int qt_count_fds(void);

/* 1 in AddressSanitizer builds, where the heap probe below is meaningless
 * and LeakSanitizer checks for leaks at exit instead. */
int qt_asan_enabled(void);

/* Heap bytes in use by the allocator (malloc'd, not freed). */
size_t qt_heap_in_use(void);

/* ---- Self-checking payloads ------------------------------------------ */

/* A byte stream determined by seed and position, so any lost, duplicated,
 * reordered or corrupted byte is detected without keeping a copy. */
void qt_pattern_fill(uint64_t seed, uint64_t offset, uint8_t *buf, size_t len);
int qt_pattern_check(uint64_t seed, uint64_t offset, const uint8_t *buf,
                     size_t len);

#define QT_FNV1A_INIT UINT64_C(0xcbf29ce484222325)
uint64_t qt_fnv1a(uint64_t h, const uint8_t *p, size_t n);

/* Datagram payloads carry their own seed and length in the first 8 bytes,
 * so a receiver can check one without knowing which one it is. len >= 8. */
#define QT_DGRAM_MIN 8
void qt_dgram_fill(uint32_t seed, uint8_t *buf, size_t len);
int qt_dgram_check(const uint8_t *buf, size_t len);

void qt_put_be64(uint8_t *p, uint64_t v);
uint64_t qt_get_be64(const uint8_t *p);

/* ---- TLS configs ----------------------------------------------------- */

/* A server config holding the generated server certificate and key. NULL
 * on failure. The caller frees its reference. */
qrpc_tls_config *qt_server_tls(const qt_certs *c);

/* A client config trusting ca_pem. NULL on failure. */
qrpc_tls_config *qt_client_tls(const char *ca_pem);

/* The fixture most end-to-end suites share: certificates made at run
 * time, a loop, and server and client TLS configs built from them.
 * Returns 0, or -1 (with everything it made released) on failure.
 * qt_env_teardown() releases it all and clears the pointers. */
int qt_env_setup(qt_certs *certs, qrpc_loop **loop, qrpc_tls_config **stls,
                 qrpc_tls_config **ctls);
void qt_env_teardown(qt_certs *certs, qrpc_loop **loop, qrpc_tls_config **stls,
                     qrpc_tls_config **ctls);

/* ---- Close records --------------------------------------------------- */

/* A copy of a qrpc_close_info (whose reason is only borrowed). */
typedef struct qt_close_rec {
  int count; /* on_closed calls seen */
  qrpc_close_kind kind;
  int local;
  uint64_t code;
  int error;
  char reason[1024];
} qt_close_rec;

void qt_close_rec_set(qt_close_rec *r, const qrpc_close_info *info);

/* ---- Echo server ----------------------------------------------------- */

#define QT_SERVER_MAX_CONNS 64

/* What the server does with a raw stream is chosen by the stream's name
 * prefix:
 *   "echo"   writes every byte back, finishes after the peer's FIN;
 *   "sink"   reads and hashes, and after the peer's FIN answers with 16
 *            bytes (big-endian byte count, then FNV-1a 64 of the bytes)
 *            and finishes;
 *   "paused" like "sink", but reading starts paused (see last_stream);
 *   "reset"  resets the stream with QT_SERVER_RESET_CODE on first data.
 * Other names are treated as "echo". Datagrams are echoed while
 * echo_datagrams is set. */
#define QT_SERVER_RESET_CODE UINT64_C(0x5151)
#define QT_SINK_REPLY_LEN 16

typedef struct qt_server {
  qrpc_loop *loop;
  qrpc_endpoint *ep;
  uint16_t port;
  char addr[64]; /* where clients connect: "127.0.0.1:P" or "[::1]:P" */
  int echo_datagrams;

  /* Connections. */
  int established;
  int closed;
  int closed_before_established; /* on_closed with no on_established */
  int live;
  qt_close_rec last_close;
  int closed_by_kind[QRPC_CLOSE_DEAD_PEER + 1]; /* on_closed per close kind */
  int closed_local;                         /* ... with local set */
  qrpc_conn *last_conn; /* most recently established, NULL once closed */
  qrpc_conn *conns[QT_SERVER_MAX_CONNS]; /* established and not closed */
  int conns_overflow; /* more live connections than conns can hold */

  /* Streams the clients opened. */
  int streams;
  int streams_closed;
  int stream_fins;
  int stream_read_after_fin; /* on_read after fin, or a second fin */
  int stream_resets;
  uint64_t last_reset_code;
  int stream_stop_sendings;
  int stream_eagains;      /* echo writes refused with QRPC_EAGAIN */
  int stream_write_errors; /* writes failing other than with EAGAIN */
  char last_name[256];
  size_t last_name_len;
  qrpc_stream *last_stream; /* most recent, NULL once it closed */
  uint64_t bytes_in;

  /* Sink streams that saw their FIN. */
  int sinks_done;
  uint64_t sink_bytes; /* of the last one */
  uint64_t sink_hash;

  /* Datagrams. */
  int datagrams;
  int datagrams_bad;
  size_t datagram_max_len;
  int datagram_echo_errors;
} qt_server;

/* Starts an endpoint on bind ("127.0.0.1:0", "[::1]:0", ...). opts may be
 * NULL. tls is referenced by the endpoint; the caller keeps its own
 * reference. Returns 0 or the qrpc error. */
int qt_server_start(qt_server *s, qrpc_loop *loop, const char *bind,
                    qrpc_tls_config *tls, const qrpc_endpoint_opts *opts);

/* Frees the endpoint (its connections' on_closed fire). Idempotent. */
void qt_server_stop(qt_server *s);

/* ---- Client fixture -------------------------------------------------- */

typedef struct qt_client {
  qrpc_loop *loop;
  qrpc_conn *conn; /* NULL once on_closed has fired */
  int established;
  int closed;
  qt_close_rec close;
  int alpn_ok_at_established; /* qrpc_conn_alpn() was "qrpc/1" then */

  int datagrams;
  int datagrams_bad;
  uint64_t datagram_bytes;

  int peer_streams; /* streams the server opened (reset: not expected) */
} qt_client;

/* Connects to addr. server_name and opts may be NULL. Returns 0 or the
 * qrpc error of qrpc_conn_connect(). */
int qt_client_connect(qt_client *cl, qrpc_loop *loop, const char *addr,
                      const char *server_name, qrpc_tls_config *tls,
                      const qrpc_conn_opts *opts);

/* Closes the connection (code 0) if it is still open. */
void qt_client_close(qt_client *cl);

/* Connects cl to srv (server name from the address) and runs the loop
 * until both sides report the handshake: the client's on_established and
 * one more on_established on the server. Returns 0, the connect error, or
 * QRPC_ETIMEDOUT when that did not happen within QT_WAIT_MS. */
int qt_client_connect_wait(qt_client *cl, qrpc_loop *loop, qt_server *srv,
                           qrpc_tls_config *tls, const qrpc_conn_opts *opts);

/* The usual start of a test: an echo server on 127.0.0.1:0 with the
 * generated certificate and a client trusting the test CA, connected.
 * srv_opts and cl_opts may be NULL. Returns 0 or a qrpc error. */
int qt_pair_start(qrpc_loop *loop, const qt_certs *certs, qt_server *srv,
                  const qrpc_endpoint_opts *srv_opts, qt_client *cl,
                  const qrpc_conn_opts *cl_opts);

/* End of a test: closes the n clients still open, frees the server (NULL
 * allowed) and runs the loop until every connection is released, so the
 * loop can be freed and LeakSanitizer sees nothing. */
void qt_close_all(qrpc_loop *loop, qt_server *srv, qt_client *clients,
                  size_t n);

/* ---- Client stream transfer ------------------------------------------ */

/* Aggregate counts over many transfers. */
typedef struct qt_xfer_stats {
  int opened;
  int closed;
  int ok;
  int failed;
} qt_xfer_stats;

/* One stream the client opens: it writes len pattern bytes (chunked,
 * honouring QRPC_EAGAIN and on_writable), finishes, and checks the answer:
 * the same bytes for an "echo" stream, the 16-byte count and hash for a
 * "sink" or "paused" stream. Caller-owned; it must stay in place until
 * closes becomes non-zero (or the loop is freed). */
typedef struct qt_xfer {
  qrpc_stream *s; /* NULL once closed */
  qt_xfer_stats *stats;
  uint64_t seed;
  uint64_t len;
  int expect_sink;
  int no_finish; /* leave the sending side open after the last byte */

  uint64_t sent;
  uint64_t sent_hash;
  int finished;
  uint64_t recvd;
  int fins;
  int read_after_fin;
  int mismatch;
  uint8_t reply[QT_SINK_REPLY_LEN];

  int in_pump; /* guards against a write re-entering through a callback */
  int eagain;
  int writables;
  int write_error;     /* first error other than QRPC_EAGAIN */
  size_t max_buffered; /* qrpc_stream_buffered() after each write */
  size_t max_chunk;
  uint64_t acked;
  int acked_backwards; /* an on_acked offset went down or beyond sent */
  int resets;
  uint64_t reset_code;
  int stop_sendings;

  int closes;
  int close_error;
  int ok; /* set at close: everything above checked out */
} qt_xfer;

#define QT_XFER_CHUNK 32768

/* Flags of qt_xfer_start(). */
#define QT_XFER_NO_FINISH 1 /* keep the sending side open after len bytes */

/* Opens a stream named name on c and starts writing; stats may be NULL.
 * Returns the error of qrpc_stream_open() (QRPC_ELIMIT included), in which
 * case nothing is counted. */
int qt_xfer_start(qt_xfer *x, qrpc_conn *c, const char *name, uint64_t len,
                  uint64_t seed, int flags, qt_xfer_stats *stats);

/* Writes as much as the stream accepts now (used to keep a writer pushing
 * while the reader is paused). */
void qt_xfer_pump(qt_xfer *x);

/* ---- Plain UDP helpers ----------------------------------------------- */

/* A UDP socket on 127.0.0.1 that reads and discards everything, driven by
 * the loop: a peer that never answers. */
typedef struct qt_udp_sink {
  int fd;
  struct event *ev;
  uint16_t port;
  char addr[64];
  int received;
} qt_udp_sink;

int qt_udp_sink_open(qt_udp_sink *u, qrpc_loop *loop);
void qt_udp_sink_close(qt_udp_sink *u);

/* A non-blocking UDP socket bound to an ephemeral port on 127.0.0.1. */
int qt_udp_socket_v4(void);

/* Sends len bytes to 127.0.0.1:port. Returns 0 or -1. */
int qt_udp_send_v4(int fd, uint16_t port, const void *buf, size_t len);

/* Fills ss with the loopback address of family with port. */
socklen_t qt_loopback_addr(int family, uint16_t port,
                           struct sockaddr_storage *ss);

/* 1 if a UDP socket can bind ::1 here. */
int qt_ipv6_available(void);

/* Port of a sockaddr_in/sockaddr_in6. */
uint16_t qt_sockaddr_port(const struct sockaddr_storage *ss);

#endif
