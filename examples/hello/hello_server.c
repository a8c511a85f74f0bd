/*
 * hello_server: serves the Greeter service of hello.proto with the stubs
 * protoc-gen-qrpc generates from it (hello.qrpc.h): SayHello(name) answers
 * "Hello, " + name.
 *
 * Once listening it prints "READY <port>", so scripts can start it on
 * port 0 and learn the port. SIGTERM or SIGINT stops it: calls in flight
 * are finished (for at most a second), then it exits with status 0.
 *
 *   hello_server [--listen HOST:PORT] [--cert PEM] [--key PEM]
 *                [--client-ca PEM] [--verbose]
 *
 * The defaults match `make certs`: build/certs/server.pem and
 * build/certs/server-key.pem, listening on 127.0.0.1:4433.
 *
 * With --client-ca PEM the server requires mutual TLS: a client must
 * present a certificate that verifies against that CA (hello_client --cert
 * and --key), or its handshake fails. Each greeting then names the
 * subject of the caller's certificate.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/qrpc.h>

#include "hello.qrpc.h"

#define PROG "hello_server"
/* How long a shutdown waits for calls in flight. */
#define DRAIN_MS 1000
/* Longest name answered; longer ones get INVALID_ARGUMENT. */
#define MAX_NAME 1024

typedef struct options {
  const char *listen;
  const char *cert;
  const char *key;
  const char *client_ca;
  const char *server_key;
  const char *metrics;
  int verbose;
} options;

typedef struct server {
  qrpc_loop *loop;
  qrpc_server *srv;
  qrpc_health *health;
  qrpc_metrics *metrics;
  unsigned long greeted;
} server;

static void usage(FILE *f) {
  fprintf(f, "usage: " PROG " [--listen HOST:PORT] [--cert PEM] [--key PEM]\n"
             "         [--client-ca PEM] [--server-key FILE] [--metrics ADDR]\n"
             "         [--verbose]\n"
             "\n"
             "  --listen HOST:PORT  address (default 127.0.0.1:4433; port 0\n"
             "                      picks a free port)\n"
             "  --cert PEM          certificate chain (default\n"
             "                      build/certs/server.pem)\n"
             "  --key PEM           its private key (default\n"
             "                      build/certs/server-key.pem)\n"
             "  --client-ca PEM     require a client certificate verified\n"
             "                      against this CA (mutual TLS)\n"
             "  --server-key FILE   server key (made there if missing): a\n"
             "                      restart resets old connections at once\n"
             "  --metrics HOST:PORT serve Prometheus metrics at /metrics\n"
             "  --verbose           log qrpc debug messages to stderr\n"
             "\n"
             "Serves qrpc.examples.hello.Greeter and the health service.\n"
             "Prints READY <port> once\n"
             "listening; stops on SIGTERM or SIGINT.\n");
}

/* The health service (Greeter SERVING) and, with --metrics, the metrics
 * endpoint. */
static int serve_extras(server *s, const char *metrics) {
  int rc = qrpc_health_new(s->srv, &s->health);
  if (rc == 0)
    rc = qrpc_health_set(s->health, "qrpc.examples.hello.Greeter",
                         QRPC_HEALTH_SERVING);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot serve health: %s\n", qrpc_strerror(rc));
    return rc;
  }
  if (!metrics) return 0;
  if ((rc = qrpc_metrics_serve(s->loop, metrics, NULL, &s->metrics)) == 0 &&
      (rc = qrpc_metrics_add_server(s->metrics, s->srv)) == 0)
    rc = qrpc_metrics_name_method(
        s->metrics, qrpc_examples_hello_Greeter_SayHello_METHOD_ID,
        qrpc_examples_hello_Greeter_SayHello_METHOD_NAME);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot serve --metrics %s: %s\n", metrics,
            qrpc_strerror(rc));
    return rc;
  }
  printf(PROG ": metrics on %s, tcp port %u, path /metrics\n", metrics,
         (unsigned)qrpc_metrics_port(s->metrics));
  return 0;
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying which flag was wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->listen = "127.0.0.1:4433";
  o->cert = "build/certs/server.pem";
  o->key = "build/certs/server-key.pem";
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
    } else if (strcmp(a, "--metrics") == 0) {
      dst = &o->metrics;
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
  return 0;
}

/* ---- The service --------------------------------------------------------- */

/* Greeter.SayHello: the request is decoded already (and freed by the stub
 * after this returns); the reply is packed straight into the send buffer. */
static void say_hello(qrpc_req *req,
                      const Qrpc__Examples__Hello__HelloRequest *request,
                      void *user_data) {
  server *s = user_data;
  size_t len = strlen(request->name);
  if (len > MAX_NAME) {
    qrpc_examples_hello_Greeter_SayHello_error(
        req, QRPC_STATUS_INVALID_ARGUMENT, "name too long");
    return;
  }
  char text[sizeof("Hello, ") + MAX_NAME];
  snprintf(text, sizeof(text), "Hello, %s", request->name);
  Qrpc__Examples__Hello__HelloReply reply =
      QRPC__EXAMPLES__HELLO__HELLO_REPLY__INIT;
  reply.message = text;
  int rc = qrpc_examples_hello_Greeter_SayHello_reply(req, &reply);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot answer: %s\n", qrpc_strerror(rc));
    return;
  }
  s->greeted++;
  /* Verified by the handshake when the server requires client
   * certificates; a (pointer, length) string like every certificate's. */
  const qrpc_identity *id =
      qrpc_conn_peer_identity(qrpc_peer_conn(qrpc_req_peer(req)));
  if (id)
    printf(PROG ": greeted \"%s\" for client certificate \"%.*s\"\n",
           request->name, (int)id->subject.len, id->subject.ptr);
  else
    printf(PROG ": greeted \"%s\"\n", request->name);
}

/* ---- Main ---------------------------------------------------------------- */

static void on_shutdown_done(qrpc_server *srv, void *user_data) {
  server *s = user_data;
  (void)srv;
  qrpc_loop_stop(s->loop);
}

static void on_signal(qrpc_loop *loop, int sig, void *arg) {
  server *s = arg;
  (void)loop;
  printf(PROG ": %s received, shutting down\n",
         sig == SIGTERM ? "SIGTERM" : "SIGINT");
  if (qrpc_server_shutdown(s->srv, DRAIN_MS, on_shutdown_done, s) != 0)
    qrpc_loop_stop(s->loop); /* already shutting down: a second signal */
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

  setvbuf(stdout, NULL, _IOLBF, 0);
  qrpc_log_set_handler(log_to_stderr, NULL);
  qrpc_log_set_level(opt.verbose ? QRPC_LOG_DEBUG : QRPC_LOG_WARN);

  static server s;
  qrpc_tls_config *tls = NULL;
  qrpc_signal *sigterm = NULL, *sigint = NULL;
  int status = 1;

  if ((rc = qrpc_loop_new(NULL, &s.loop)) != 0) {
    fprintf(stderr, PROG ": cannot create the loop: %s\n", qrpc_strerror(rc));
    return 1;
  }
  if ((rc = qrpc_tls_config_new(&tls)) != 0 ||
      (rc = qrpc_tls_config_set_cert_files(tls, opt.cert, opt.key)) != 0) {
    fprintf(stderr,
            PROG ": cannot load --cert %s / --key %s: %s (make certs creates "
                 "the default ones)\n",
            opt.cert, opt.key, qrpc_strerror(rc));
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
  rc = qrpc_server_new(s.loop, opt.listen, tls, NULL, &s.srv);
  /* The server holds its own reference to the config. */
  qrpc_tls_config_free(tls);
  tls = NULL;
  if (rc != 0) {
    s.srv = NULL;
    fprintf(stderr, PROG ": cannot listen on --listen %s: %s%s\n", opt.listen,
            qrpc_strerror(rc),
            rc == QRPC_EINVAL ? " (expected HOST:PORT)" : "");
    goto out;
  }

  /* Handlers are borrowed until the server is freed: static storage. */
  static qrpc_examples_hello_Greeter_handlers greeter;
  greeter.user_data = &s;
  greeter.SayHello = say_hello;
  if ((rc = qrpc_examples_hello_Greeter_register(s.srv, &greeter)) != 0) {
    fprintf(stderr, PROG ": cannot register Greeter: %s\n", qrpc_strerror(rc));
    goto out;
  }
  if (serve_extras(&s, opt.metrics) != 0) goto out;

  if (qrpc_loop_on_signal(s.loop, SIGTERM, on_signal, &s, &sigterm) != 0 ||
      qrpc_loop_on_signal(s.loop, SIGINT, on_signal, &s, &sigint) != 0) {
    fprintf(stderr, PROG ": cannot install the signal handlers\n");
    goto out;
  }

  unsigned port = qrpc_server_port(s.srv);
  printf(PROG ": serving %s on %s, udp port %u%s\n",
         qrpc_examples_hello_Greeter_SayHello_METHOD_NAME, opt.listen, port,
         opt.client_ca ? ", client certificates required" : "");
  printf("READY %u\n", port);

  if ((rc = qrpc_loop_run(s.loop)) != 0) {
    fprintf(stderr, PROG ": the loop failed: %s\n", qrpc_strerror(rc));
    goto out;
  }
  status = 0;

out:
  qrpc_metrics_free(s.metrics);
  qrpc_server_free(s.srv);
  qrpc_health_free(s.health);
  qrpc_signal_free(sigterm);
  qrpc_signal_free(sigint);
  qrpc_tls_config_free(tls);
  qrpc_loop_free(s.loop);
  if (status == 0)
    printf(PROG ": stopped after %lu greeting%s\n", s.greeted,
           s.greeted == 1 ? "" : "s");
  return status;
}
