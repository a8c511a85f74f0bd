/*
 * echo_client: talks to echo_server over QUIC and checks the echoes.
 *
 * It connects, prints what the handshake negotiated, opens a raw stream
 * named "echo", sends a greeting followed by some KiB of patterned bytes,
 * finishes the stream and checks that the echo is byte-identical. It also
 * sends a few datagrams and counts the ones that come back, waiting a
 * bounded time for them since datagrams are unreliable. Then it closes the
 * connection gracefully and prints a summary.
 *
 * Exit status: 0 when the stream echo is identical and at least one
 * datagram came back, 1 on any failure (connection, echo, timeout), 2 on a
 * bad command line.
 *
 *   echo_client [--connect HOST:PORT] [--ca PEM] [--servername NAME]
 *               [--cert PEM --key PEM] [--kib N] [--datagrams N]
 *               [--timeout SECONDS] [--qlog DIR] [--verbose]
 *
 * --cert and --key (both or neither) give the client certificate
 * presented to a server that requires one (echo_server --client-ca); a
 * server that refuses it, or the lack of one, is reported as such.
 */
#include <errno.h>
#include <event2/event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/qrpc.h>

#define PROG "echo_client"
#define GREETING "hello from echo_client\n"
#define WRITE_CHUNK (16u * 1024u)
#define DATAGRAM_LEN 200u
#define DATAGRAM_MAX_COUNT 64u
#define DATAGRAM_WAIT_MS 1000

typedef struct options {
  const char *connect;
  const char *ca;
  const char *servername;
  const char *cert;
  const char *key;
  const char *qlog_dir;
  unsigned long kib;
  unsigned long datagrams;
  unsigned long timeout_s;
  int verbose;
} options;

typedef struct client {
  options opt;
  qrpc_loop *loop;
  qrpc_conn *conn; /* NULL once on_closed has run */
  struct event *deadline;
  struct event *datagram_wait;

  /* Connection. */
  int established;
  int closing;
  int timed_out;
  int close_error;
  char close_desc[512];
  qrpc_conn_stats stats;

  /* The echo stream. */
  qrpc_stream *stream; /* NULL once its on_closed has run */
  uint8_t *sent;
  size_t sent_len;
  size_t written;
  size_t received;
  size_t mismatch_at;  /* first differing offset, or SIZE_MAX */
  int stream_finished; /* the server finished its side */
  int stream_error;

  /* Datagrams. */
  size_t datagram_len;
  unsigned long datagrams_sent;
  unsigned long datagrams_echoed;
  unsigned long datagrams_bad;
  unsigned char datagram_seen[DATAGRAM_MAX_COUNT];
  int datagram_wait_over;
  int datagram_send_error;
} client;

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " [--connect HOST:PORT] [--ca PEM]\n"
          "         [--servername NAME] [--cert PEM --key PEM] [--kib N]\n"
          "         [--datagrams N] [--timeout SECONDS] [--qlog DIR]"
          " [--verbose]\n"
          "\n"
          "  --connect HOST:PORT  the server (default 127.0.0.1:4433)\n"
          "  --ca PEM             CA to trust (default: the system store)\n"
          "  --servername NAME    name to verify (default localhost)\n"
          "  --cert PEM           client certificate, for servers that\n"
          "                       require one (with --key)\n"
          "  --key PEM            its private key (with --cert)\n"
          "  --kib N              KiB to echo on the stream (default 64)\n"
          "  --datagrams N        datagrams to send, 0..%u (default 5)\n"
          "  --timeout SECONDS    give up after this long (default 10)\n"
          "  --qlog DIR           write a qlog file into DIR\n"
          "  --verbose            log qrpc debug messages to stderr\n",
          DATAGRAM_MAX_COUNT);
}

static int parse_ulong(const char *flag, const char *s, unsigned long min,
                       unsigned long max, unsigned long *out) {
  char *end = NULL;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min ||
      v > max) {
    fprintf(stderr,
            PROG ": %s expects a whole number from %lu to %lu, got '%s'\n",
            flag, min, max, s);
    return -1;
  }
  *out = v;
  return 0;
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying which flag was wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->connect = "127.0.0.1:4433";
  o->servername = "localhost";
  o->kib = 64;
  o->datagrams = 5;
  o->timeout_s = 10;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 1;
    }
    if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
      o->verbose = 1;
      continue;
    }
    const char **str = NULL;
    unsigned long *num = NULL, min = 0, max = 0;
    if (strcmp(a, "--connect") == 0) {
      str = &o->connect;
    } else if (strcmp(a, "--ca") == 0) {
      str = &o->ca;
    } else if (strcmp(a, "--servername") == 0) {
      str = &o->servername;
    } else if (strcmp(a, "--cert") == 0) {
      str = &o->cert;
    } else if (strcmp(a, "--key") == 0) {
      str = &o->key;
    } else if (strcmp(a, "--qlog") == 0) {
      str = &o->qlog_dir;
    } else if (strcmp(a, "--kib") == 0) {
      num = &o->kib, min = 0, max = 1024 * 1024;
    } else if (strcmp(a, "--datagrams") == 0) {
      num = &o->datagrams, min = 0, max = DATAGRAM_MAX_COUNT;
    } else if (strcmp(a, "--timeout") == 0) {
      num = &o->timeout_s, min = 1, max = 3600;
    } else {
      fprintf(stderr, PROG ": unknown argument '%s'\n", a);
      usage(stderr);
      return -1;
    }
    if (i + 1 >= argc || argv[i + 1][0] == '\0') {
      fprintf(stderr, PROG ": %s expects a value\n", a);
      return -1;
    }
    const char *v = argv[++i];
    if (str != NULL)
      *str = v;
    else if (parse_ulong(a, v, min, max, num) != 0)
      return -1;
  }
  if ((o->cert == NULL) != (o->key == NULL)) {
    fprintf(stderr,
            PROG ": %s needs %s as well (the client certificate and its key "
                 "go together)\n",
            o->cert ? "--cert" : "--key", o->cert ? "--key" : "--cert");
    return -1;
  }
  return 0;
}

static const char *close_kind_name(qrpc_close_kind kind) {
  switch (kind) {
  case QRPC_CLOSE_APPLICATION: return "application close";
  case QRPC_CLOSE_TRANSPORT: return "transport error";
  case QRPC_CLOSE_IDLE: return "idle timeout";
  case QRPC_CLOSE_HANDSHAKE_TIMEOUT: return "handshake timeout";
  case QRPC_CLOSE_TLS: return "TLS handshake failure";
  case QRPC_CLOSE_ENDPOINT: return "endpoint closed";
  case QRPC_CLOSE_ERROR: return "local error";
  case QRPC_CLOSE_RESET: return "stateless reset";
  case QRPC_CLOSE_DEAD_PEER: return "dead peer";
  }
  return "unknown";
}

/* The stream payload: a greeting, then bytes from a fixed xorshift
 * sequence, so reordered or corrupted data cannot echo back identical. */
static int make_payload(client *cl) {
  size_t n = strlen(GREETING) + (size_t)cl->opt.kib * 1024;
  cl->sent = malloc(n > 0 ? n : 1);
  if (cl->sent == NULL) return QRPC_ENOMEM;
  memcpy(cl->sent, GREETING, strlen(GREETING));
  uint32_t x = 2463534242u;
  for (size_t i = strlen(GREETING); i < n; i++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    cl->sent[i] = (uint8_t)x;
  }
  cl->sent_len = n;
  cl->mismatch_at = SIZE_MAX;
  return 0;
}

/* Datagram i carries its own number first, then a filler derived from it. */
static void make_datagram(uint8_t *buf, size_t len, unsigned long i) {
  int n = snprintf((char *)buf, len, "echo datagram %lu ", i);
  for (size_t k = (size_t)n; k < len; k++)
    buf[k] = (uint8_t)('a' + (i + k) % 26);
}

/* ---- Finishing ------------------------------------------------------------
 */

static int stream_done(const client *cl) { return cl->stream == NULL; }

static int datagrams_done(const client *cl) {
  return cl->datagram_wait_over || cl->datagrams_echoed == cl->datagrams_sent;
}

/* Closes the connection once the stream is over and the datagrams are back
 * or have been waited for long enough. */
static void maybe_finish(client *cl) {
  if (cl->conn == NULL || cl->closing || !stream_done(cl)) return;
  if (!datagrams_done(cl)) {
    if (!event_pending(cl->datagram_wait, EV_TIMEOUT, NULL)) {
      struct timeval tv = {DATAGRAM_WAIT_MS / 1000,
                           (DATAGRAM_WAIT_MS % 1000) * 1000};
      event_add(cl->datagram_wait, &tv);
    }
    return;
  }
  cl->closing = 1;
  qrpc_conn_get_stats(cl->conn, &cl->stats);
  printf(PROG ": closing the connection\n");
  if (qrpc_conn_shutdown(cl->conn, 2000) != 0 && cl->conn != NULL)
    qrpc_conn_close(cl->conn, 0, "done");
}

static void on_datagram_wait(evutil_socket_t fd, short events, void *arg) {
  client *cl = arg;
  (void)fd, (void)events;
  cl->datagram_wait_over = 1;
  maybe_finish(cl);
}

static void on_deadline(evutil_socket_t fd, short events, void *arg) {
  client *cl = arg;
  (void)fd, (void)events;
  cl->timed_out = 1;
  fprintf(stderr, PROG ": no result after %lu s (--timeout), giving up\n",
          cl->opt.timeout_s);
  if (cl->conn != NULL) qrpc_conn_close(cl->conn, 1, "client timeout");
  qrpc_loop_stop(cl->loop);
}

/* ---- The echo stream ------------------------------------------------------
 */

/* Writes as much of the payload as the stream takes, then finishes it. */
static void write_more(client *cl) {
  while (cl->written < cl->sent_len) {
    size_t n = cl->sent_len - cl->written;
    if (n > WRITE_CHUNK) n = WRITE_CHUNK;
    int rc = qrpc_stream_write(cl->stream, cl->sent + cl->written, n);
    if (rc == QRPC_EAGAIN) return; /* on_writable calls us again */
    if (rc != 0) {
      fprintf(stderr, PROG ": stream write failed: %s\n", qrpc_strerror(rc));
      cl->stream_error = rc;
      qrpc_stream_reset(cl->stream, 1);
      return;
    }
    cl->written += n;
  }
  int rc = qrpc_stream_finish(cl->stream);
  if (rc != 0) {
    fprintf(stderr, PROG ": stream finish failed: %s\n", qrpc_strerror(rc));
    cl->stream_error = rc;
  }
}

static void on_stream_writable(qrpc_stream *s, void *user_data) {
  (void)s;
  write_more(user_data);
}

static void on_stream_read(qrpc_stream *s, const uint8_t *data, size_t len,
                           int fin, void *user_data) {
  client *cl = user_data;
  (void)s;
  for (size_t i = 0; i < len && cl->mismatch_at == SIZE_MAX; i++) {
    size_t off = cl->received + i;
    if (off >= cl->sent_len || data[i] != cl->sent[off]) cl->mismatch_at = off;
  }
  cl->received += len;
  if (fin) {
    cl->stream_finished = 1;
    printf(PROG ": stream echo complete: %zu of %zu bytes back\n", cl->received,
           cl->sent_len);
  }
}

static void on_stream_reset(qrpc_stream *s, uint64_t app_error,
                            void *user_data) {
  (void)s;
  (void)user_data;
  fprintf(stderr, PROG ": the server reset the stream (code %llu)\n",
          (unsigned long long)app_error);
}

static void on_stream_closed(qrpc_stream *s, int error, void *user_data) {
  client *cl = user_data;
  (void)s;
  if (error != 0 && cl->stream_error == 0) cl->stream_error = error;
  cl->stream = NULL;
  maybe_finish(cl);
}

static const qrpc_stream_callbacks stream_callbacks = {
    .on_read = on_stream_read,
    .on_reset = on_stream_reset,
    .on_writable = on_stream_writable,
    .on_closed = on_stream_closed,
};

/* ---- Datagrams ------------------------------------------------------------
 */

static void send_datagrams(client *cl) {
  size_t max = qrpc_conn_max_datagram_size(cl->conn);
  if (cl->opt.datagrams == 0) return;
  if (max == 0) {
    fprintf(stderr, PROG ": the server did not enable datagrams\n");
    cl->datagram_send_error = QRPC_ENODGRAM;
    return;
  }
  cl->datagram_len = max < DATAGRAM_LEN ? max : DATAGRAM_LEN;
  uint8_t buf[DATAGRAM_LEN];
  for (unsigned long i = 0; i < cl->opt.datagrams; i++) {
    make_datagram(buf, cl->datagram_len, i);
    int rc = qrpc_conn_send_datagram(cl->conn, buf, cl->datagram_len);
    if (rc != 0) {
      fprintf(stderr, PROG ": datagram %lu not sent: %s\n", i,
              qrpc_strerror(rc));
      cl->datagram_send_error = rc;
      continue;
    }
    cl->datagrams_sent++;
  }
  printf(PROG ": sent %lu datagrams of %zu bytes\n", cl->datagrams_sent,
         cl->datagram_len);
}

static void on_datagram(qrpc_conn *c, const uint8_t *data, size_t len,
                        void *user_data) {
  client *cl = user_data;
  (void)c;
  unsigned long i = 0;
  uint8_t want[DATAGRAM_LEN];
  /* Which datagram is this? The number is at a fixed place. */
  if (len == cl->datagram_len &&
      sscanf((const char *)data, "echo datagram %lu ", &i) == 1 &&
      i < cl->opt.datagrams) {
    make_datagram(want, len, i);
    if (memcmp(want, data, len) == 0 && !cl->datagram_seen[i]) {
      cl->datagram_seen[i] = 1;
      cl->datagrams_echoed++;
      maybe_finish(cl);
      return;
    }
  }
  cl->datagrams_bad++;
}

/* ---- The connection -------------------------------------------------------
 */

static void on_established(qrpc_conn *c, void *user_data) {
  client *cl = user_data;
  cl->established = 1;

  const char *alpn = qrpc_conn_alpn(c);
  size_t ncerts = 0;
  const qrpc_cert *certs = qrpc_conn_peer_certs(c, &ncerts);
  qrpc_conn_stats st;
  qrpc_conn_get_stats(c, &st);
  printf(PROG ": connected to %s (server name %s)\n", cl->opt.connect,
         cl->opt.servername);
  printf(PROG ":   alpn %s\n", alpn ? alpn : "(none)");
  printf(PROG ":   server certificate chain: %zu certificate%s", ncerts,
         ncerts == 1 ? "" : "s");
  if (certs != NULL && ncerts > 0) printf(", leaf %zu bytes DER", certs[0].len);
  printf("\n");
  printf(PROG ":   rtt %.3f ms, max datagram %zu bytes\n",
         (double)st.smoothed_rtt_ns / 1e6, qrpc_conn_max_datagram_size(c));

  int rc = qrpc_stream_open(c, "echo", &stream_callbacks, cl, &cl->stream);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot open the echo stream: %s\n",
            qrpc_strerror(rc));
    cl->stream_error = rc;
    cl->stream = NULL;
    qrpc_conn_close(c, 1, "cannot open stream");
    return;
  }
  printf(PROG ": stream %lld \"echo\": sending %zu bytes\n",
         (long long)qrpc_stream_id(cl->stream), cl->sent_len);
  write_more(cl);
  send_datagrams(cl);
  maybe_finish(cl);
}

static void on_conn_closed(qrpc_conn *c, const qrpc_close_info *info,
                           void *user_data) {
  client *cl = user_data;
  (void)c;
  cl->conn = NULL;
  cl->stream = NULL;
  cl->close_error = info->error;
  /* Our own application close needs no error name: the reason says it. */
  int show_error = info->error != 0 &&
                   !(info->local && info->kind == QRPC_CLOSE_APPLICATION);
  snprintf(cl->close_desc, sizeof(cl->close_desc), "%s by %s, code %llu%s%s%s",
           close_kind_name(info->kind), info->local ? "us" : "the server",
           (unsigned long long)info->code, show_error ? " (" : "",
           show_error ? qrpc_strerror(info->error) : "", show_error ? ")" : "");
  if (info->reason != NULL && info->reason[0] != '\0') {
    size_t n = strlen(cl->close_desc);
    snprintf(cl->close_desc + n, sizeof(cl->close_desc) - n, ", reason: %s",
             info->reason);
  }
  if (!cl->established && cl->timed_out)
    fprintf(stderr, PROG ": cannot connect to %s: no handshake within %lu s\n",
            cl->opt.connect, cl->opt.timeout_s);
  else if (!cl->established)
    fprintf(stderr, PROG ": cannot connect to %s: %s\n", cl->opt.connect,
            cl->close_desc);
  else
    printf(PROG ": connection closed: %s\n", cl->close_desc);
  /* Under TLS 1.3 the server judges a client certificate after this side
   * has finished its handshake: a refusal closes an established
   * connection. */
  if (info->error == QRPC_ECERT && !info->local) {
    if (cl->opt.cert)
      fprintf(stderr,
              PROG ": the server refused the client certificate --cert %s\n",
              cl->opt.cert);
    else
      fprintf(stderr, PROG ": the server requires a client certificate: give "
                           "--cert PEM and --key PEM\n");
  }
  qrpc_loop_stop(cl->loop);
}

/* ---- Main ------------------------------------------------------------------
 */

/* Prints the summary and returns the exit status. */
static int report(const client *cl) {
  int stream_ok = cl->stream_finished && cl->stream_error == 0 &&
                  cl->mismatch_at == SIZE_MAX && cl->received == cl->sent_len;
  int datagrams_ok = cl->opt.datagrams == 0 || cl->datagrams_echoed > 0;
  int ok = cl->established && !cl->timed_out && stream_ok && datagrams_ok;

  printf("\n" PROG ": summary\n");
  printf("  connection:  %s\n", cl->established ? "established" : "failed");
  if (cl->close_desc[0] != '\0') printf("  closed:      %s\n", cl->close_desc);
  if (cl->established) {
    if (stream_ok)
      printf("  stream echo: ok, %zu bytes identical\n", cl->sent_len);
    else if (cl->mismatch_at != SIZE_MAX)
      printf("  stream echo: FAILED, first difference at byte %zu\n",
             cl->mismatch_at);
    else
      printf("  stream echo: FAILED, %zu of %zu bytes back%s%s\n", cl->received,
             cl->sent_len, cl->stream_error ? ", " : "",
             cl->stream_error ? qrpc_strerror(cl->stream_error) : "");
    printf("  datagrams:   %lu of %lu echoed", cl->datagrams_echoed,
           cl->datagrams_sent);
    if (cl->datagrams_bad > 0) printf(", %lu unexpected", cl->datagrams_bad);
    if (cl->datagrams_echoed < cl->datagrams_sent) {
      printf(", missing:");
      for (unsigned long i = 0; i < cl->opt.datagrams; i++)
        if (!cl->datagram_seen[i]) printf(" #%lu", i);
    }
    printf("%s\n", datagrams_ok ? "" : " (FAILED: none came back)");
    if (cl->stats.pkts_sent > 0)
      printf("  transport:   rtt %.3f ms, %llu packets (%llu bytes) sent, "
             "%llu packets (%llu bytes) received\n",
             (double)cl->stats.smoothed_rtt_ns / 1e6,
             (unsigned long long)cl->stats.pkts_sent,
             (unsigned long long)cl->stats.bytes_sent,
             (unsigned long long)cl->stats.pkts_recv,
             (unsigned long long)cl->stats.bytes_recv);
    if (cl->stats.datagrams_sent > 0 || cl->stats.datagrams_lost > 0)
      printf("               datagrams: %llu sent, %llu received, %llu lost\n",
             (unsigned long long)cl->stats.datagrams_sent,
             (unsigned long long)cl->stats.datagrams_recv,
             (unsigned long long)cl->stats.datagrams_lost);
  }
  if (cl->timed_out)
    printf("  timeout:     gave up after %lu s\n", cl->opt.timeout_s);
  printf("  result:      %s\n", ok ? "OK" : "FAILED");
  return ok ? 0 : 1;
}

static void log_to_stderr(qrpc_log_level level, const char *msg,
                          void *user_data) {
  (void)user_data;
  fprintf(stderr, PROG ": qrpc %s: %s\n", qrpc_log_level_name(level), msg);
}

int main(int argc, char **argv) {
  static client cl;
  int rc = parse_args(argc, argv, &cl.opt);
  if (rc != 0) return rc > 0 ? 0 : 2;

  setvbuf(stdout, NULL, _IOLBF, 0);
  qrpc_log_set_handler(log_to_stderr, NULL);
  qrpc_log_set_level(cl.opt.verbose ? QRPC_LOG_DEBUG : QRPC_LOG_WARN);

  qrpc_tls_config *tls = NULL;
  int status = 1;
  if (make_payload(&cl) != 0) {
    fprintf(stderr, PROG ": out of memory\n");
    return 1;
  }
  if ((rc = qrpc_loop_new(NULL, &cl.loop)) != 0) {
    fprintf(stderr, PROG ": cannot create the loop: %s\n", qrpc_strerror(rc));
    goto out;
  }
  if ((rc = qrpc_tls_config_new(&tls)) != 0) {
    fprintf(stderr, PROG ": cannot create the TLS config: %s\n",
            qrpc_strerror(rc));
    goto out;
  }
  if (cl.opt.ca != NULL &&
      (rc = qrpc_tls_config_set_ca_file(tls, cl.opt.ca)) != 0) {
    fprintf(stderr, PROG ": cannot load --ca %s: %s\n", cl.opt.ca,
            qrpc_strerror(rc));
    goto out;
  }
  if (cl.opt.cert != NULL && (rc = qrpc_tls_config_set_cert_files(
                                  tls, cl.opt.cert, cl.opt.key)) != 0) {
    fprintf(stderr, PROG ": cannot load --cert %s / --key %s: %s\n",
            cl.opt.cert, cl.opt.key, qrpc_strerror(rc));
    goto out;
  }

  struct event_base *base = qrpc_loop_base(cl.loop);
  cl.deadline = evtimer_new(base, on_deadline, &cl);
  cl.datagram_wait = evtimer_new(base, on_datagram_wait, &cl);
  struct timeval limit = {(time_t)cl.opt.timeout_s, 0};
  if (cl.deadline == NULL || cl.datagram_wait == NULL ||
      evtimer_add(cl.deadline, &limit) != 0) {
    fprintf(stderr, PROG ": cannot create timers\n");
    goto out;
  }

  qrpc_conn_opts co;
  qrpc_conn_opts_default(&co);
  co.qlog_dir = cl.opt.qlog_dir;
  static const qrpc_conn_callbacks conn_callbacks = {
      .on_established = on_established,
      .on_datagram = on_datagram,
      .on_closed = on_conn_closed,
  };
  printf(PROG ": connecting to %s\n", cl.opt.connect);
  rc = qrpc_conn_connect(cl.loop, cl.opt.connect, cl.opt.servername, tls, &co,
                         &conn_callbacks, &cl, &cl.conn);
  /* The connection holds its own reference to the config. */
  qrpc_tls_config_free(tls);
  tls = NULL;
  if (rc != 0) {
    cl.conn = NULL;
    fprintf(stderr, PROG ": cannot connect to --connect %s: %s%s\n",
            cl.opt.connect, qrpc_strerror(rc),
            rc == QRPC_EINVAL ? " (expected HOST:PORT)" : "");
    goto out;
  }

  rc = qrpc_loop_run(cl.loop);
  if (rc != 0) {
    fprintf(stderr, PROG ": the loop failed: %s\n", qrpc_strerror(rc));
    if (cl.conn != NULL) qrpc_conn_close(cl.conn, 1, "client error");
    goto out;
  }
  status = report(&cl);

out:
  if (cl.deadline != NULL) event_free(cl.deadline);
  if (cl.datagram_wait != NULL) event_free(cl.datagram_wait);
  qrpc_tls_config_free(tls);
  qrpc_loop_free(cl.loop);
  free(cl.sent);
  return status;
}
