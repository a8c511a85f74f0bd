/*
 * Metrics for Prometheus: a small HTTP endpoint that serves a server's,
 * a broker's and a client's counters in the Prometheus text exposition format
 * (version 0.0.4) at /metrics (docs/api.md, "Metrics").
 *
 * The endpoint runs on the caller's loop, reads the counters when it is
 * scraped, and only counts calls per method (qrpc_calls_total and the
 * latency histogram) once a server is added. Everything else it reports
 * is counted whether or not metrics are served.
 *
 * Threading: everything runs on the loop thread of the objects it
 * reports; a server of another loop cannot be added.
 */
#ifndef QRPC_METRICS_H
#define QRPC_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/broker.h"
#include "qrpc/loop.h"
#include "qrpc/rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qrpc_metrics qrpc_metrics;

/* Limits of the HTTP endpoint, so a slow or hostile scraper costs little:
 * a request is one GET or HEAD without a body; the connection closes after
 * the answer. */
typedef struct qrpc_metrics_opts {
  size_t size;              /* sizeof(qrpc_metrics_opts) */
  size_t max_connections;   /* open at once; more are closed at accept; 16 */
  size_t max_request_bytes; /* request line and headers; beyond it 431 and
                               close; 8192 */
  uint64_t timeout_ms;      /* to receive the request and to send the
                               answer; 5000 */
} qrpc_metrics_opts;

void qrpc_metrics_opts_default(qrpc_metrics_opts *o);

/* Starts serving metrics over HTTP at addr ("127.0.0.1:9464",
 * "[::1]:9464"; port 0 picks a free one) on loop. opts may be NULL for
 * the defaults. Nothing is reported until a server or broker is added.
 * *out is the caller's, freed with qrpc_metrics_free(). Loop thread.
 * Errors: QRPC_EINVAL (bad address or options), QRPC_EADDRINUSE,
 * QRPC_ESYSTEM, QRPC_ENOMEM. */
int qrpc_metrics_serve(qrpc_loop *loop, const char *addr,
                       const qrpc_metrics_opts *opts, qrpc_metrics **out);

/* The bound port. */
uint16_t qrpc_metrics_port(qrpc_metrics *m);

/* Reports srv's connections, handshakes, traffic, datagrams, stalls and
 * calls by method, summed over its workers (each scrape asks every worker
 * on its own thread and waits, as qrpc_server_get_stats() does). srv is
 * borrowed: free m (or it) in the order that keeps srv alive while m is.
 * From here on every worker of srv counts each call it serves by method,
 * final status and duration. One server per m. Worker 0's thread.
 * Errors: QRPC_EINVAL, QRPC_ESTATE (m already has a server),
 * QRPC_ENOMEM. */
int qrpc_metrics_add_server(qrpc_metrics *m, qrpc_server *srv);

/* Reports b's subscriptions, queues, drops, slow-consumer disconnects
 * and retained topics, and everything qrpc_metrics_add_server() reports
 * for the broker's server. b is borrowed, as srv above. Errors as
 * qrpc_metrics_add_server(). */
int qrpc_metrics_add_broker(qrpc_metrics *m, qrpc_broker *b);

/* Reports each backend of cli, labelled backend="host:port": whether it
 * takes calls (qrpc_client_backend_up), its calls in flight, calls
 * started, failures and connection attempts, and whether the client's
 * DNS name fails to resolve (docs/api.md, "Balancing"). cli is borrowed,
 * as srv above. One client per m. Errors: QRPC_EINVAL, QRPC_ESTATE (m
 * already has a client). */
int qrpc_metrics_add_client(qrpc_metrics *m, qrpc_client *cli);

/* Names method for the method label ("hello.Greeter/SayHello"; copied).
 * Unnamed methods are labelled with their decimal id. Names must be
 * printable ASCII without quotes or backslashes.
 * Errors: QRPC_EINVAL, QRPC_ENOMEM. */
int qrpc_metrics_name_method(qrpc_metrics *m, uint32_t method,
                             const char *name);

/* Writes what a scrape would answer now into a fresh NUL-terminated
 * buffer the caller frees with free(); *len (may be NULL) is its length.
 * For applications that serve the text themselves. Errors: QRPC_EINVAL,
 * QRPC_ENOMEM. */
int qrpc_metrics_render(qrpc_metrics *m, char **out, size_t *len);

/* Closes the endpoint and its connections and frees m. Added servers and
 * brokers stay. NULL is ignored. */
void qrpc_metrics_free(qrpc_metrics *m);

#ifdef __cplusplus
}
#endif
#endif
