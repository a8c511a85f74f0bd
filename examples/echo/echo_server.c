/*
 * echo_server: a QUIC echo server on qrpc's transport API.
 *
 * Every raw stream a client opens is echoed back byte for byte, and the
 * echo is finished when the client finishes its side. Every datagram is
 * sent straight back. One line is printed per connection and stream event.
 * Once listening it prints "READY <port>", so scripts can start it on port
 * 0 and learn the port. SIGTERM or SIGINT stops it cleanly.
 *
 *   echo_server [--listen HOST:PORT] --cert PEM --key PEM
 *               [--client-ca PEM] [--qlog DIR] [--verbose]
 *
 * With --client-ca PEM the server requires mutual TLS: a client must
 * present a certificate that verifies against that CA (echo_client --cert
 * and --key), or its handshake fails; the connection's line then names
 * the subject of the client's certificate.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/qrpc.h>

#define PROG "echo_server"

typedef struct options {
  const char *listen;
  const char *cert;
  const char *key;
  const char *client_ca;
  const char *server_key;
  const char *qlog_dir;
  int verbose;
} options;

typedef struct server {
  qrpc_loop *loop;
  qrpc_endpoint *ep;
  unsigned long next_conn_id;
  unsigned long connections;
} server;

/* The endpoint's user data. A connection's user data is this until
 * on_established replaces it with the connection's own state. */
static server the_server;

/* Per connection, allocated once the handshake is done. */
typedef struct conn_state {
  server *srv;
  unsigned long id;
  unsigned long datagrams;
} conn_state;

/* Per stream. Bytes the stream would not take yet (QRPC_EAGAIN) wait in
 * pending while reading is paused, so a fast sender cannot make the server
 * buffer without bound. */
typedef struct stream_state {
  conn_state *conn;
  uint64_t echoed;
  uint8_t *pending;
  size_t pending_len;
  int fin_pending; /* the peer finished; finish once pending is sent */
} stream_state;

static void usage(FILE *f) {
  fprintf(f, "usage: " PROG " [--listen HOST:PORT] --cert PEM --key PEM\n"
             "         [--client-ca PEM] [--qlog DIR] [--verbose]\n"
             "\n"
             "  --listen HOST:PORT  address (default 127.0.0.1:4433; port 0\n"
             "                      picks a free port)\n"
             "  --cert PEM          server certificate chain\n"
             "  --key PEM           private key of the certificate\n"
             "  --client-ca PEM     require a client certificate verified\n"
             "                      against this CA (mutual TLS)\n"
             "  --server-key FILE   server key (made there if missing): a\n"
             "                      restart resets old connections at once\n"
             "  --qlog DIR          write a qlog file per connection into DIR\n"
             "  --verbose           log qrpc debug messages to stderr\n"
             "\n"
             "Prints READY <port> once listening; stops on SIGTERM or "
             "SIGINT.\n");
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying which flag was wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->listen = "127.0.0.1:4433";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char **dst = NULL;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 1;
    } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
      o->verbose = 1;
      continue;
    } else if (strcmp(a, "--listen") == 0) {
      dst = &o->listen;
    } else if (strcmp(a, "--cert") == 0) {
      dst = &o->cert;
    } else if (strcmp(a, "--key") == 0) {
      dst = &o->key;
    } else if (strcmp(a, "--client-ca") == 0) {
      dst = &o->client_ca;
    } else if (strcmp(a, "--server-key") == 0) {
      dst = &o->server_key;
    } else if (strcmp(a, "--qlog") == 0) {
      dst = &o->qlog_dir;
    } else {
      fprintf(stderr, PROG ": unknown argument '%s'\n", a);
      usage(stderr);
      return -1;
    }
    if (i + 1 >= argc || argv[i + 1][0] == '\0') {
      fprintf(stderr, PROG ": %s expects a value\n", a);
      return -1;
    }
    *dst = argv[++i];
  }
  if (o->cert == NULL || o->key == NULL) {
    fprintf(stderr, PROG ": --cert and --key are required\n");
    usage(stderr);
    return -1;
  }
  return 0;
}

static void format_addr(const struct sockaddr_storage *ss, char *buf,
                        size_t len) {
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
    port = ntohs(sin->sin_port);
    snprintf(buf, len, "%s:%u", host, port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
    port = ntohs(sin6->sin6_port);
    snprintf(buf, len, "[%s]:%u", host, port);
  } else {
    snprintf(buf, len, "(unknown address)");
  }
}

static const char *close_kind_name(qrpc_close_kind kind) {
  switch (kind) {
  case QRPC_CLOSE_APPLICATION: return "application";
  case QRPC_CLOSE_TRANSPORT: return "transport";
  case QRPC_CLOSE_IDLE: return "idle timeout";
  case QRPC_CLOSE_HANDSHAKE_TIMEOUT: return "handshake timeout";
  case QRPC_CLOSE_TLS: return "TLS";
  case QRPC_CLOSE_ENDPOINT: return "endpoint closed";
  case QRPC_CLOSE_ERROR: return "local error";
  case QRPC_CLOSE_RESET: return "stateless reset";
  case QRPC_CLOSE_DEAD_PEER: return "dead peer";
  }
  return "unknown";
}

/* ---- Streams ------------------------------------------------------------ */

/* Sends what is pending, then the FIN if the peer has finished. Returns 0,
 * or a QRPC_E* error other than QRPC_EAGAIN. */
static int flush_pending(qrpc_stream *s, stream_state *ss) {
  if (ss->pending_len > 0) {
    int rc = qrpc_stream_write(s, ss->pending, ss->pending_len);
    if (rc == QRPC_EAGAIN) return 0;
    if (rc != 0) return rc;
    ss->echoed += ss->pending_len;
    free(ss->pending);
    ss->pending = NULL;
    ss->pending_len = 0;
    qrpc_stream_pause_read(s, 0);
  }
  if (ss->fin_pending) {
    ss->fin_pending = 0;
    printf("conn %lu: stream %lld finished by the client, echoed %llu bytes\n",
           ss->conn->id, (long long)qrpc_stream_id(s),
           (unsigned long long)ss->echoed);
    return qrpc_stream_finish(s);
  }
  return 0;
}

static void echo_failed(qrpc_stream *s, stream_state *ss, int rc) {
  printf("conn %lu: stream %lld: echo failed: %s; resetting it\n", ss->conn->id,
         (long long)qrpc_stream_id(s), qrpc_strerror(rc));
  qrpc_stream_reset(s, 1);
}

static void on_stream_read(qrpc_stream *s, const uint8_t *data, size_t len,
                           int fin, void *user_data) {
  stream_state *ss = user_data;
  if (len > 0) {
    if (ss->pending_len > 0) {
      /* Still waiting for room: queue behind what is already pending. */
      uint8_t *p = realloc(ss->pending, ss->pending_len + len);
      if (p == NULL) {
        echo_failed(s, ss, QRPC_ENOMEM);
        return;
      }
      memcpy(p + ss->pending_len, data, len);
      ss->pending = p;
      ss->pending_len += len;
    } else {
      int rc = qrpc_stream_write(s, data, len);
      if (rc == QRPC_EAGAIN) {
        ss->pending = malloc(len);
        if (ss->pending == NULL) {
          echo_failed(s, ss, QRPC_ENOMEM);
          return;
        }
        memcpy(ss->pending, data, len);
        ss->pending_len = len;
        qrpc_stream_pause_read(s, 1);
      } else if (rc != 0) {
        echo_failed(s, ss, rc);
        return;
      } else {
        ss->echoed += len;
      }
    }
  }
  if (fin) {
    ss->fin_pending = 1;
    int rc = flush_pending(s, ss);
    if (rc != 0) echo_failed(s, ss, rc);
  }
}

static void on_stream_writable(qrpc_stream *s, void *user_data) {
  stream_state *ss = user_data;
  int rc = flush_pending(s, ss);
  if (rc != 0) echo_failed(s, ss, rc);
}

static void on_stream_reset(qrpc_stream *s, uint64_t app_error,
                            void *user_data) {
  stream_state *ss = user_data;
  printf("conn %lu: stream %lld reset by the client (code %llu)\n",
         ss->conn->id, (long long)qrpc_stream_id(s),
         (unsigned long long)app_error);
}

static void on_stream_closed(qrpc_stream *s, int error, void *user_data) {
  stream_state *ss = user_data;
  if (error == 0)
    printf("conn %lu: stream %lld closed\n", ss->conn->id,
           (long long)qrpc_stream_id(s));
  else
    printf("conn %lu: stream %lld closed: %s\n", ss->conn->id,
           (long long)qrpc_stream_id(s), qrpc_strerror(error));
  free(ss->pending);
  free(ss);
}

static const qrpc_stream_callbacks stream_callbacks = {
    .on_read = on_stream_read,
    .on_reset = on_stream_reset,
    .on_writable = on_stream_writable,
    .on_closed = on_stream_closed,
};

/* ---- Connections -------------------------------------------------------- */

static void on_established(qrpc_conn *c, void *user_data) {
  server *srv = user_data;
  conn_state *cs = calloc(1, sizeof(*cs));
  if (cs == NULL) {
    qrpc_conn_close(c, 2, "out of memory");
    return;
  }
  cs->srv = srv;
  cs->id = ++srv->next_conn_id;
  srv->connections++;
  qrpc_conn_set_user_data(c, cs);

  char peer[80] = "(unknown)";
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof(ss);
  if (qrpc_conn_remote_addr(c, &ss, &sslen) == 0)
    format_addr(&ss, peer, sizeof(peer));
  const char *alpn = qrpc_conn_alpn(c);
  printf("conn %lu: established with %s (alpn %s, max datagram %zu bytes)\n",
         cs->id, peer, alpn ? alpn : "none", qrpc_conn_max_datagram_size(c));
  /* Only a certificate the handshake verified has an identity. */
  const qrpc_identity *id = qrpc_conn_peer_identity(c);
  if (id)
    printf("conn %lu: client certificate \"%.*s\"\n", cs->id,
           (int)id->subject.len, id->subject.ptr);
}

static void on_stream(qrpc_conn *c, qrpc_stream *s, const char *name,
                      size_t name_len, void *user_data) {
  conn_state *cs = user_data;
  stream_state *ss = calloc(1, sizeof(*ss));
  if (ss == NULL) return; /* not taking it: qrpc resets the stream */
  ss->conn = cs;
  qrpc_stream_set_callbacks(s, &stream_callbacks, ss);
  printf("conn %lu: stream %lld opened, name \"%.*s\"\n", cs->id,
         (long long)qrpc_stream_id(s), (int)name_len, name);
}

static void on_datagram(qrpc_conn *c, const uint8_t *data, size_t len,
                        void *user_data) {
  conn_state *cs = user_data;
  cs->datagrams++;
  int rc = qrpc_conn_send_datagram(c, data, len);
  if (rc == 0)
    printf("conn %lu: datagram of %zu bytes echoed\n", cs->id, len);
  else
    printf("conn %lu: datagram of %zu bytes not echoed: %s\n", cs->id, len,
           qrpc_strerror(rc));
}

static void on_path_changed(qrpc_conn *c, void *user_data) {
  conn_state *cs = user_data;
  char peer[80] = "(unknown)";
  struct sockaddr_storage ss;
  socklen_t sslen = sizeof(ss);
  if (qrpc_conn_remote_addr(c, &ss, &sslen) == 0)
    format_addr(&ss, peer, sizeof(peer));
  printf("conn %lu: client moved to %s\n", cs->id, peer);
}

static void on_conn_closed(qrpc_conn *c, const qrpc_close_info *info,
                           void *user_data) {
  conn_state *cs = user_data;
  if (user_data == &the_server) return; /* never established */
  printf("conn %lu: closed by %s (%s, code %llu%s%s), %lu datagrams\n", cs->id,
         info->local ? "the server" : "the client", close_kind_name(info->kind),
         (unsigned long long)info->code,
         info->reason && info->reason[0] ? ", reason: " : "",
         info->reason ? info->reason : "", cs->datagrams);
  free(cs);
}

/* ---- Main ---------------------------------------------------------------- */

static void on_signal(qrpc_loop *loop, int sig, void *arg) {
  server *srv = arg;
  (void)loop;
  printf(PROG ": %s received, shutting down\n",
         sig == SIGTERM ? "SIGTERM" : "SIGINT");
  qrpc_loop_stop(srv->loop);
}

static void log_to_stderr(qrpc_log_level level, const char *msg,
                          void *user_data) {
  (void)user_data;
  fprintf(stderr, PROG ": qrpc %s: %s\n", qrpc_log_level_name(level), msg);
}

int main(int argc, char **argv) {
  options opt;
  int rc = parse_args(argc, argv, &opt);
  if (rc != 0) return rc > 0 ? 0 : 2;

  /* Lines reach a pipe or log file as they happen. */
  setvbuf(stdout, NULL, _IOLBF, 0);
  qrpc_log_set_handler(log_to_stderr, NULL);
  qrpc_log_set_level(opt.verbose ? QRPC_LOG_DEBUG : QRPC_LOG_WARN);

  server *srv = &the_server;
  qrpc_tls_config *tls = NULL;
  qrpc_signal *sigterm = NULL, *sigint = NULL;
  int status = 1;

  if ((rc = qrpc_loop_new(NULL, &srv->loop)) != 0) {
    fprintf(stderr, PROG ": cannot create the loop: %s\n", qrpc_strerror(rc));
    return 1;
  }
  if ((rc = qrpc_tls_config_new(&tls)) != 0 ||
      (rc = qrpc_tls_config_set_cert_files(tls, opt.cert, opt.key)) != 0) {
    fprintf(stderr, PROG ": cannot load --cert %s / --key %s: %s\n", opt.cert,
            opt.key, qrpc_strerror(rc));
    goto out;
  }
  if (opt.client_ca &&
      ((rc = qrpc_tls_config_set_ca_file(tls, opt.client_ca)) != 0 ||
       (rc = qrpc_tls_config_set_client_auth(tls, QRPC_CLIENT_AUTH_REQUIRE)) !=
           0)) {
    fprintf(stderr, PROG ": cannot load --client-ca %s: %s\n", opt.client_ca,
            qrpc_strerror(rc));
    goto out;
  }
  if (opt.server_key &&
      (rc = qrpc_tls_config_use_server_key_file(tls, opt.server_key)) != 0) {
    fprintf(stderr, PROG ": cannot use --server-key %s: %s\n", opt.server_key,
            qrpc_strerror(rc));
    goto out;
  }

  qrpc_endpoint_opts eo;
  qrpc_endpoint_opts_default(&eo);
  eo.conn.qlog_dir = opt.qlog_dir;
  static const qrpc_conn_callbacks conn_callbacks = {
      .on_established = on_established,
      .on_stream = on_stream,
      .on_datagram = on_datagram,
      .on_path_changed = on_path_changed,
      .on_closed = on_conn_closed,
  };
  rc = qrpc_endpoint_listen(srv->loop, opt.listen, tls, &eo, &conn_callbacks,
                            srv, &srv->ep);
  /* The endpoint holds its own reference to the config. */
  qrpc_tls_config_free(tls);
  tls = NULL;
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot listen on --listen %s: %s%s\n", opt.listen,
            qrpc_strerror(rc),
            rc == QRPC_EINVAL ? " (expected HOST:PORT)" : "");
    goto out;
  }

  if (qrpc_loop_on_signal(srv->loop, SIGTERM, on_signal, srv, &sigterm) != 0 ||
      qrpc_loop_on_signal(srv->loop, SIGINT, on_signal, srv, &sigint) != 0) {
    fprintf(stderr, PROG ": cannot install the signal handlers\n");
    goto out;
  }

  printf(PROG ": listening on %s, udp port %u%s\n", opt.listen,
         (unsigned)qrpc_endpoint_port(srv->ep),
         opt.client_ca ? ", client certificates required" : "");
  printf("READY %u\n", (unsigned)qrpc_endpoint_port(srv->ep));

  rc = qrpc_loop_run(srv->loop);
  if (rc != 0) {
    fprintf(stderr, PROG ": the loop failed: %s\n", qrpc_strerror(rc));
    goto out;
  }
  status = 0;

out:
  /* Closes the remaining connections; their on_closed callbacks run here. */
  qrpc_endpoint_free(srv->ep);
  qrpc_signal_free(sigterm);
  qrpc_signal_free(sigint);
  qrpc_tls_config_free(tls);
  qrpc_loop_free(srv->loop);
  if (status == 0)
    printf(PROG ": stopped after %lu connection%s\n", srv->connections,
           srv->connections == 1 ? "" : "s");
  return status;
}
