/*
 * cross_peer: one side of the cross-backend test (run-cross.sh). The same
 * program is built against each TLS backend; a server of one build and a
 * client of the other then exercise the handshake (with or without a
 * client certificate), a unary call, a server-streaming call and
 * datagrams.
 *
 *   cross_peer serve --cert PEM --key PEM [--client-ca PEM] [--seconds N]
 *   cross_peer call  --connect HOST:PORT --ca PEM [--cert PEM --key PEM]
 *                    [--expect-subject DN | --expect-refused]
 *   cross_peer backend   (prints the TLS backend it was built with)
 *
 * The server prints "READY <port>" and serves until SIGTERM or for N
 * seconds (default 60). Its unary method answers with the subject of the
 * client's verified certificate ("-" without one), so the client can check
 * what the server saw. The client exits 0 when everything it expected
 * happened, 1 otherwise (the reason on stderr), 2 on a bad command line.
 */
#include <errno.h>
#include <event2/event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/qrpc.h>

#define M_WHOAMI 1      /* unary: the subject of the caller's certificate */
#define M_COUNT 2       /* server streaming: N items "item-<i>" */
#define CH_ECHO 7       /* datagrams echoed back */
#define ITEMS 5
#define DATAGRAMS 10
#define WAIT_MS 5000
#define DGRAM_TRIES 5
#define DGRAM_WAIT_MS 300

typedef struct options {
  const char *mode, *connect, *ca, *cert, *key, *client_ca, *subject;
  int refused;
  unsigned long seconds;
} options;

static int fail(const char *what) {
  fprintf(stderr, "cross_peer: %s\n", what);
  return 1;
}

static int parse(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->seconds = 60;
  if (argc < 2) return -1;
  o->mode = argv[1];
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    const char **slot = !strcmp(a, "--connect")          ? &o->connect
                        : !strcmp(a, "--ca")             ? &o->ca
                        : !strcmp(a, "--cert")           ? &o->cert
                        : !strcmp(a, "--key")            ? &o->key
                        : !strcmp(a, "--client-ca")      ? &o->client_ca
                        : !strcmp(a, "--expect-subject") ? &o->subject
                                                         : NULL;
    if (!strcmp(a, "--expect-refused")) {
      o->refused = 1;
    } else if (!strcmp(a, "--seconds") && i + 1 < argc) {
      o->seconds = strtoul(argv[++i], NULL, 10);
    } else if (slot && i + 1 < argc) {
      *slot = argv[++i];
    } else {
      fprintf(stderr, "cross_peer: unexpected argument '%s'\n", a);
      return -1;
    }
  }
  return 0;
}

static qrpc_tls_config *tls_from(const options *o) {
  qrpc_tls_config *tls;
  if (qrpc_tls_config_new(&tls) != 0) return NULL;
  int rv = 0;
  if (o->cert) rv = qrpc_tls_config_set_cert_files(tls, o->cert, o->key);
  if (rv == 0 && o->ca) rv = qrpc_tls_config_set_ca_file(tls, o->ca);
  if (rv == 0 && o->client_ca) {
    rv = qrpc_tls_config_set_ca_file(tls, o->client_ca);
    if (rv == 0)
      rv = qrpc_tls_config_set_client_auth(tls, QRPC_CLIENT_AUTH_REQUIRE);
  }
  if (rv != 0) {
    fprintf(stderr, "cross_peer: TLS setup: %s\n", qrpc_strerror(rv));
    qrpc_tls_config_free(tls);
    return NULL;
  }
  return tls;
}

/* ---- Server ------------------------------------------------------------ */

static void whoami(qrpc_req *req, const uint8_t *payload, size_t len,
                   void *ud) {
  const qrpc_identity *id =
      qrpc_conn_peer_identity(qrpc_peer_conn(qrpc_req_peer(req)));
  if (id)
    qrpc_req_reply(req, id->subject.ptr, id->subject.len);
  else
    qrpc_req_reply(req, "-", 1);
}

static void count(qrpc_req *req, const uint8_t *payload, size_t len,
                  void *ud) {
  for (int i = 0; i < ITEMS; i++) {
    char item[32];
    int n = snprintf(item, sizeof(item), "item-%d", i);
    qrpc_req_send(req, item, (size_t)n);
  }
  qrpc_req_end(req);
}

static void echo_dgram(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                       const uint8_t *payload, size_t len, void *ud) {
  qrpc_peer_send_dgram(peer, channel, payload, len);
}

static void on_signal(evutil_socket_t fd, short what, void *arg) {
  qrpc_loop_stop(arg);
}

static int serve(const options *o) {
  qrpc_loop *loop;
  qrpc_server *srv = NULL;
  qrpc_tls_config *tls = tls_from(o);
  if (!tls || qrpc_loop_new(NULL, &loop) != 0) return fail("setup failed");
  int rv = qrpc_server_new(loop, "127.0.0.1:0", tls, NULL, &srv);
  qrpc_tls_config_free(tls);
  if (rv == 0)
    rv = qrpc_server_register(srv, M_WHOAMI, QRPC_SHAPE_UNARY, whoami, NULL);
  if (rv == 0)
    rv = qrpc_server_register(srv, M_COUNT, QRPC_SHAPE_SERVER_STREAM, count,
                              NULL);
  if (rv == 0)
    rv = qrpc_server_register_dgram(srv, CH_ECHO, NULL, echo_dgram, NULL);
  if (rv != 0) {
    fprintf(stderr, "cross_peer: server: %s\n", qrpc_strerror(rv));
    return 1;
  }
  struct event *term = evsignal_new(qrpc_loop_base(loop), SIGTERM, on_signal,
                                    loop);
  event_add(term, NULL);
  printf("READY %u\n", (unsigned)qrpc_server_port(srv));
  fflush(stdout);
  qrpc_loop_run_for(loop, o->seconds * 1000);
  event_free(term);
  qrpc_server_free(srv);
  qrpc_loop_free(loop);
  return 0;
}

/* ---- Client ------------------------------------------------------------ */

typedef struct client {
  const options *o;
  qrpc_loop *loop;
  int done;     /* the current step finished */
  int ok;       /* and went as expected */
  int error;    /* a probe's close error */
  int items;
  int echoed[DATAGRAMS];
  char subject[512];
} client;

static void probe_established(qrpc_conn *c, void *ud) {
  client *cl = ud;
  const qrpc_identity *id = qrpc_conn_peer_identity(c);
  /* The server's certificate is for localhost. */
  cl->ok = id && id->ndns > 0 && id->dns[0].len == 9 &&
           memcmp(id->dns[0].ptr, "localhost", 9) == 0;
}

static void probe_closed(qrpc_conn *c, const qrpc_close_info *info,
                         void *ud) {
  client *cl = ud;
  cl->error = info->error;
  cl->done = 1;
}

/* A bare connection first: the handshake, the server's identity and, when
 * a refusal is expected, its error. */
static int probe(client *cl) {
  qrpc_tls_config *tls = tls_from(cl->o);
  if (!tls) return fail("client TLS setup failed");
  qrpc_conn_callbacks cbs = {.on_established = probe_established,
                             .on_closed = probe_closed};
  qrpc_conn *conn;
  int rv = qrpc_conn_connect(cl->loop, cl->o->connect, "localhost", tls, NULL,
                             &cbs, cl, &conn);
  qrpc_tls_config_free(tls);
  if (rv != 0) return fail("connect failed");
  /* A refused client may complete its side of the handshake before the
   * server's verdict arrives: wait for the close either way, and close
   * ourselves after a short while when nothing refuses us. */
  uint64_t start = qrpc_loop_now_ns(cl->loop);
  while (!cl->done && qrpc_loop_now_ns(cl->loop) - start < WAIT_MS * 1000000ull) {
    qrpc_loop_run_for(cl->loop, 50);
    if (cl->ok && !cl->o->refused &&
        qrpc_loop_now_ns(cl->loop) - start > 300 * 1000000ull)
      qrpc_conn_close(conn, 0, "probe done");
  }
  if (!cl->done) return fail("the probe connection neither closed nor failed");
  if (cl->o->refused) {
    if (cl->error != QRPC_ECERT) {
      fprintf(stderr, "cross_peer: expected a refusal (%s), got %s\n",
              qrpc_strerror(QRPC_ECERT), qrpc_strerror(cl->error));
      return 1;
    }
    return 0;
  }
  if (!cl->ok) return fail("no verified identity for the server (localhost)");
  return cl->error == 0 ? 0 : fail(qrpc_strerror(cl->error));
}

static void whoami_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  client *cl = ud;
  cl->done = 1;
  if (res->status != QRPC_STATUS_OK || res->len >= sizeof(cl->subject)) return;
  memcpy(cl->subject, res->payload, res->len);
  cl->subject[res->len] = '\0';
  cl->ok = 1;
}

static void count_item(qrpc_call *call, const uint8_t *data, size_t len,
                       void *ud) {
  client *cl = ud;
  char want[32];
  int n = snprintf(want, sizeof(want), "item-%d", cl->items);
  if ((size_t)n == len && memcmp(data, want, len) == 0) cl->items++;
}

static void count_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  client *cl = ud;
  cl->done = 1;
  cl->ok = res->status == QRPC_STATUS_OK && cl->items == ITEMS;
}

static void echo_back(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                      const uint8_t *payload, size_t len, void *ud) {
  client *cl = ud;
  if (len == 1 && payload[0] < DATAGRAMS) cl->echoed[payload[0]] = 1;
}

static int run_step(client *cl) {
  uint64_t start = qrpc_loop_now_ns(cl->loop);
  while (!cl->done && qrpc_loop_now_ns(cl->loop) - start < WAIT_MS * 1000000ull)
    qrpc_loop_run_for(cl->loop, 20);
  return cl->done && cl->ok;
}

/* Each datagram is sent until its echo comes back, a few times at most:
 * datagrams may be lost, but not all the tries of one on loopback. */
static int datagrams(client *cl, qrpc_client *cli) {
  for (uint8_t i = 0; i < DATAGRAMS; i++) {
    for (int t = 0; t < DGRAM_TRIES && !cl->echoed[i]; t++) {
      qrpc_peer *peer = qrpc_client_peer(cli);
      if (peer) qrpc_peer_send_dgram(peer, CH_ECHO, &i, 1);
      qrpc_loop_run_for(cl->loop, DGRAM_WAIT_MS);
    }
    if (!cl->echoed[i]) return 0;
  }
  return 1;
}

static int rpc_steps(client *cl) {
  qrpc_tls_config *tls = tls_from(cl->o);
  if (!tls) return fail("client TLS setup failed");
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  co.default_timeout_ms = WAIT_MS;
  qrpc_client *cli;
  int rv = qrpc_client_new(cl->loop, cl->o->connect, tls, &co, &cli);
  qrpc_tls_config_free(tls);
  if (rv != 0) return fail("client setup failed");
  qrpc_client_register_dgram(cli, CH_ECHO, NULL, echo_back, cl);
  int status = 1;
  qrpc_call_callbacks who = {.on_done = whoami_done};
  qrpc_call_callbacks cnt = {.on_item = count_item, .on_done = count_done};
  cl->done = cl->ok = 0;
  if (qrpc_client_call(cli, M_WHOAMI, NULL, 0, NULL, &who, cl, NULL) != 0 ||
      !run_step(cl)) {
    fail("the unary call failed");
  } else if (cl->o->subject && strcmp(cl->subject, cl->o->subject) != 0) {
    fprintf(stderr, "cross_peer: the server saw '%s', expected '%s'\n",
            cl->subject, cl->o->subject);
  } else if ((cl->done = cl->ok = 0),
             qrpc_client_stream(cli, M_COUNT, QRPC_SHAPE_SERVER_STREAM, NULL,
                                0, NULL, &cnt, cl, NULL) != 0 ||
                 !run_step(cl)) {
    fail("the server-streaming call failed");
  } else if (!datagrams(cl, cli)) {
    fail("datagrams did not come back");
  } else {
    printf("cross_peer: handshake, unary (server saw '%s'), %d streamed "
           "items and %d datagrams: OK\n",
           cl->subject, ITEMS, DATAGRAMS);
    status = 0;
  }
  qrpc_client_free(cli);
  qrpc_loop_run_for(cl->loop, 50);
  return status;
}

static int call(const options *o) {
  if (!o->connect || !o->ca) return fail("call needs --connect and --ca");
  client cl = {.o = o};
  if (qrpc_loop_new(NULL, &cl.loop) != 0) return fail("no loop");
  int rv = probe(&cl);
  if (rv == 0 && !o->refused) rv = rpc_steps(&cl);
  if (rv == 0 && o->refused) printf("cross_peer: refused as expected\n");
  qrpc_loop_free(cl.loop);
  return rv;
}

int main(int argc, char **argv) {
  options o;
  if (parse(argc, argv, &o) != 0 || (!!o.cert != !!o.key)) {
    fprintf(stderr, "usage: cross_peer serve|call [options] (see the "
                    "comment at the top of cross_peer.c)\n");
    return 2;
  }
  if (!strcmp(o.mode, "backend")) return puts(qrpc_tls_backend()) < 0;
  if (!strcmp(o.mode, "serve")) return serve(&o);
  if (!strcmp(o.mode, "call")) return call(&o);
  fprintf(stderr, "cross_peer: unknown mode '%s'\n", o.mode);
  return 2;
}
