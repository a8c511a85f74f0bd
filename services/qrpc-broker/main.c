/*
 * qrpc-broker: the publish/subscribe broker daemon (docs/broker.md).
 *
 * A thin command line around qrpc_broker_new(): it loads the certificate
 * and the ACL, listens, prints "READY <port>" on stdout once clients can
 * connect, and on SIGTERM or SIGINT drains (GOAWAY, then closes what is
 * left after --drain-ms) and exits 0 after printing its counters as a
 * "RESULT k=v ..." line. A second signal stops it at once. A bad command
 * line or configuration exits 2 with a message naming what is wrong.
 *
 * With --client-ca PEM it requires mutual TLS: only clients presenting a
 * certificate that verifies against that CA get in, and the ACL may name
 * them by their certificate's subject or subjectAltName entries.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/broker.h>
#include <qrpc/qrpc.h>

#define PROG "qrpc-broker"

typedef struct options {
  const char *listen, *cert, *key, *client_ca, *acl, *server_key, *metrics;
  const char *cluster, *cluster_user, *cluster_prefix;
  unsigned long long max_payload, max_subs, queue_msgs, queue_bytes;
  unsigned long long max_conns, max_retained, drain_ms, keepalive_ms;
  unsigned long long workers, busy_poll_us;
  qrpc_log_level level;
} options;

static void usage(FILE *f) {
  fprintf(
      f,
      "usage: " PROG " --cert PEM --key PEM [options]\n"
      "\n"
      "  --listen HOST:PORT      address to serve on (default "
      "127.0.0.1:7422;\n"
      "                          port 0 picks a free one)\n"
      "  --cert PEM --key PEM    the server's certificate chain and key\n"
      "  --client-ca PEM         require a client certificate verified\n"
      "                          against this CA (mutual TLS); the ACL may\n"
      "                          then name clients by certificate\n"
      "  --acl FILE              access control: tokens or certificates and\n"
      "                          the topics they may publish and subscribe\n"
      "                          to (docs/broker.md);\n"
      "                          without it every client may do everything\n"
      "  --max-payload BYTES     largest message (default 1048576)\n"
      "  --max-subscriptions N   per connection (default 1000)\n"
      "  --queue-messages N      default queue of a reliable subscription\n"
      "                          (default 10000)\n"
      "  --queue-bytes BYTES     the same in bytes (default 8388608)\n"
      "  --max-connections N     clients at once (default 10000)\n"
      "  --workers N             threads serving, each with a UDP socket of\n"
      "                          its own on the same port; 0: one per CPU\n"
      "                          (default 1; a clustered broker takes 1)\n"
      "  --max-retained N        topics with a retained message (default "
      "100000)\n"
      "  --drain-ms MS           graceful shutdown limit (default 5000)\n"
      "  --busy-poll US          poll without sleeping for US microseconds\n"
      "                          after the last packet: lower latency for\n"
      "                          a whole CPU while traffic flows (default 0,\n"
      "                          off; one worker)\n"
      "  --server-key FILE       the server key (made there, mode 0600, if\n"
      "                          missing): a restarted broker, or its twins,\n"
      "                          reset the connections of the one before at\n"
      "                          once, and accept its session tickets\n"
      "  --keepalive-ms MS       PING idle subscribers this often, so those\n"
      "                          that vanished are freed (default 10000;\n"
      "                          0: off)\n"
      "  --metrics HOST:PORT     serve Prometheus metrics over HTTP at\n"
      "                          /metrics there (docs/broker.md)\n"
      "  --cluster URL[,URL...]  join the brokers sharing these NATS servers\n"
      "                          (nats://HOST:PORT each): topics are shared\n"
      "                          across nodes (docs/broker.md, Clustering)\n"
      "  --cluster-user USER     NATS user; the password is read from the\n"
      "                          environment variable QRPC_CLUSTER_PASSWORD,\n"
      "                          a token from QRPC_CLUSTER_TOKEN\n"
      "  --cluster-prefix P      topic T is NATS subject P.T (default qrpc)\n"
      "  --log-level LEVEL       error, warn, info (default) or debug\n"
      "  --help                  this text\n"
      "\n"
      "Prints READY <port> once listening; SIGTERM or SIGINT drains and "
      "exits.\n");
}

static int parse_num(const char *flag, const char *v, unsigned long long min,
                     unsigned long long max, unsigned long long *out) {
  char *end;
  errno = 0;
  unsigned long long n = strtoull(v, &end, 10);
  if (errno || end == v || *end || v[0] == '-' || n < min || n > max) {
    fprintf(stderr,
            PROG ": %s expects a whole number from %llu to %llu, not "
                 "'%s'\n",
            flag, min, max, v);
    return -1;
  }
  *out = n;
  return 0;
}

static int parse_level(const char *v, qrpc_log_level *out) {
  static const struct {
    const char *name;
    qrpc_log_level level;
  } levels[] = {{"error", QRPC_LOG_ERROR},
                {"warn", QRPC_LOG_WARN},
                {"info", QRPC_LOG_INFO},
                {"debug", QRPC_LOG_DEBUG}};
  for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
    if (strcmp(v, levels[i].name) == 0) {
      *out = levels[i].level;
      return 0;
    }
  fprintf(stderr,
          PROG ": --log-level expects error, warn, info or debug, "
               "not '%s'\n",
          v);
  return -1;
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command
 * line (after saying which flag was wrong). */
static int parse_args(int argc, char **argv, options *o) {
  qrpc_broker_opts d;
  qrpc_broker_opts_default(&d);
  *o = (options){.listen = "127.0.0.1:7422",
                 .max_payload = d.max_payload,
                 .max_subs = d.max_subscriptions,
                 .queue_msgs = d.queue_messages,
                 .queue_bytes = d.queue_bytes,
                 .max_conns = d.server.endpoint.max_connections,
                 .max_retained = d.max_retained,
                 .drain_ms = 5000,
                 .keepalive_ms = d.server.endpoint.conn.keepalive_ms,
                 .workers = d.server.workers,
                 .level = QRPC_LOG_INFO};
  static const struct {
    const char *flag;
    size_t off; /* of the unsigned long long in options */
    unsigned long long min, max;
  } nums[] = {
      {"--max-payload", offsetof(options, max_payload), 1, 64u << 20},
      {"--max-subscriptions", offsetof(options, max_subs), 1, 1000000},
      {"--queue-messages", offsetof(options, queue_msgs), 1, 100000},
      {"--queue-bytes", offsetof(options, queue_bytes), 1024, 64u << 20},
      {"--max-connections", offsetof(options, max_conns), 1, 1000000},
      {"--max-retained", offsetof(options, max_retained), 0, 10000000},
      {"--drain-ms", offsetof(options, drain_ms), 0, 600000},
      {"--keepalive-ms", offsetof(options, keepalive_ms), 0, 3600000},
      {"--workers", offsetof(options, workers), 0, 256},
      {"--busy-poll", offsetof(options, busy_poll_us), 0, 1000000},
  };
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 1;
    }
    if (i + 1 >= argc || argv[i + 1][0] == '\0') {
      fprintf(stderr, PROG ": %s expects a value (see --help)\n", a);
      return -1;
    }
    const char *v = argv[++i];
    if (strcmp(a, "--listen") == 0) {
      o->listen = v;
    } else if (strcmp(a, "--cert") == 0) {
      o->cert = v;
    } else if (strcmp(a, "--key") == 0) {
      o->key = v;
    } else if (strcmp(a, "--client-ca") == 0) {
      o->client_ca = v;
    } else if (strcmp(a, "--acl") == 0) {
      o->acl = v;
    } else if (strcmp(a, "--server-key") == 0) {
      o->server_key = v;
    } else if (strcmp(a, "--metrics") == 0) {
      o->metrics = v;
    } else if (strcmp(a, "--cluster") == 0) {
      char why[256];
      if (qrpc_broker_cluster_check(v, why, sizeof(why)) != 0) {
        fprintf(stderr, PROG ": --cluster: %s\n", why);
        return -1;
      }
      o->cluster = v;
    } else if (strcmp(a, "--cluster-user") == 0) {
      o->cluster_user = v;
    } else if (strcmp(a, "--cluster-prefix") == 0) {
      if (qrpc_broker_topic_problem(v) || v[0] == '$' || v[0] == '_' ||
          strlen(v) > 64) {
        fprintf(stderr,
                PROG ": --cluster-prefix expects a topic of at most 64 "
                     "bytes not starting with '$' or '_', not '%s'\n",
                v);
        return -1;
      }
      o->cluster_prefix = v;
    } else if (strcmp(a, "--log-level") == 0) {
      if (parse_level(v, &o->level) != 0) return -1;
    } else {
      size_t k = 0, n = sizeof(nums) / sizeof(nums[0]);
      while (k < n && strcmp(a, nums[k].flag) != 0) k++;
      if (k == n) {
        fprintf(stderr, PROG ": unknown argument '%s' (see --help)\n", a);
        return -1;
      }
      if (parse_num(a, v, nums[k].min, nums[k].max,
                    (unsigned long long *)((char *)o + nums[k].off)) != 0)
        return -1;
    }
  }
  if ((o->cluster_user || o->cluster_prefix) && !o->cluster) {
    fprintf(stderr, PROG ": --cluster-user and --cluster-prefix need "
                         "--cluster\n");
    return -1;
  }
  if (!o->cert || !o->key) {
    fprintf(stderr, PROG ": --cert and --key are required (QUIC always "
                         "uses TLS)\n");
    return -1;
  }
  return 0;
}

typedef struct daemon_state {
  qrpc_loop *loop;
  qrpc_broker *broker;
  qrpc_metrics *metrics;
  uint64_t drain_ms;
} daemon_state;

/* --metrics: the broker's counters over HTTP, on the broker's loop. */
static int serve_metrics(daemon_state *d, const char *addr) {
  int rc = qrpc_metrics_serve(d->loop, addr, NULL, &d->metrics);
  if (rc == 0) rc = qrpc_metrics_add_broker(d->metrics, d->broker);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot serve --metrics %s: %s\n", addr,
            qrpc_strerror(rc));
    return rc;
  }
  fprintf(stderr, PROG ": metrics on %s, tcp port %u, path /metrics\n", addr,
          (unsigned)qrpc_metrics_port(d->metrics));
  return 0;
}

static void on_drained(qrpc_broker *b, void *ud) {
  daemon_state *d = ud;
  qrpc_loop_stop(d->loop);
}

static void on_signal(qrpc_loop *loop, int sig, void *arg) {
  daemon_state *d = arg;
  (void)loop;
  fprintf(stderr, PROG ": %s: draining (at most %llu ms)\n",
          sig == SIGTERM ? "SIGTERM" : "SIGINT",
          (unsigned long long)d->drain_ms);
  if (qrpc_broker_shutdown(d->broker, d->drain_ms, on_drained, d) != 0)
    qrpc_loop_stop(d->loop); /* a second signal: stop now */
}

static void log_to_stderr(qrpc_log_level level, const char *msg, void *ud) {
  fprintf(stderr, PROG ": %s: %s\n", qrpc_log_level_name(level), msg);
}

static void print_result(qrpc_broker *b) {
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  qrpc_broker_cluster_stats cs;
  qrpc_broker_get_cluster_stats(b, &cs);
  char cluster[256] = "";
  if (cs.enabled)
    snprintf(cluster, sizeof(cluster),
             " cluster_published=%llu cluster_publish_failed=%llu "
             "cluster_received=%llu cluster_malformed=%llu "
             "cluster_dropped=%llu cluster_interests=%llu",
             (unsigned long long)cs.published,
             (unsigned long long)cs.publish_failed,
             (unsigned long long)cs.received, (unsigned long long)cs.malformed,
             (unsigned long long)cs.dropped, (unsigned long long)cs.interests);
  printf("RESULT published=%llu refused=%llu delivered=%llu dropped=%llu "
         "conflated=%llu slow_disconnects=%llu denied=%llu "
         "dead_peers=%llu%s\n",
         (unsigned long long)st.published, (unsigned long long)st.refused,
         (unsigned long long)st.delivered, (unsigned long long)st.dropped,
         (unsigned long long)st.conflated,
         (unsigned long long)st.slow_disconnects, (unsigned long long)st.denied,
         (unsigned long long)st.dead_peers, cluster);
}

/* The address the broker is bound to, port resolved ("127.0.0.1:7422",
 * "[::1]:7422"); what --listen said if it cannot be read. */
static void bound_addr(qrpc_broker *b, const char *asked, char *out,
                       size_t cap) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  char host[INET6_ADDRSTRLEN];
  qrpc_endpoint *ep = qrpc_server_endpoint(qrpc_broker_server(b));
  snprintf(out, cap, "%s", asked);
  if (qrpc_endpoint_local_addr(ep, &ss, &len) != 0) return;
  if (ss.ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)&ss;
    if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)))
      snprintf(out, cap, "%s:%u", host, (unsigned)ntohs(a->sin_port));
  } else if (ss.ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&ss;
    if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)))
      snprintf(out, cap, "[%s]:%u", host, (unsigned)ntohs(a->sin6_port));
  }
}

int main(int argc, char **argv) {
  options o;
  int rc = parse_args(argc, argv, &o);
  if (rc != 0) return rc > 0 ? 0 : 2;
  setvbuf(stdout, NULL, _IOLBF, 0);
  qrpc_log_set_handler(log_to_stderr, NULL);
  qrpc_log_set_level(o.level);

  daemon_state d = {.drain_ms = o.drain_ms};
  qrpc_tls_config *tls = NULL;
  qrpc_signal *sigterm = NULL, *sigint = NULL;
  int status = 2;
  if ((rc = qrpc_loop_new(NULL, &d.loop)) != 0) {
    fprintf(stderr, PROG ": cannot create the loop: %s\n", qrpc_strerror(rc));
    return 1;
  }
  if ((rc = qrpc_tls_config_new(&tls)) != 0 ||
      (rc = qrpc_tls_config_set_cert_files(tls, o.cert, o.key)) != 0) {
    fprintf(stderr, PROG ": cannot load --cert %s / --key %s: %s\n", o.cert,
            o.key, qrpc_strerror(rc));
    goto out;
  }
  if (o.client_ca &&
      ((rc = qrpc_tls_config_set_ca_file(tls, o.client_ca)) != 0 ||
       (rc = qrpc_tls_config_set_client_auth(tls, QRPC_CLIENT_AUTH_REQUIRE)) !=
           0)) {
    fprintf(stderr, PROG ": cannot load --client-ca %s: %s\n", o.client_ca,
            qrpc_strerror(rc));
    goto out;
  }
  if (o.server_key &&
      (rc = qrpc_tls_config_use_server_key_file(tls, o.server_key)) != 0) {
    fprintf(stderr, PROG ": cannot use --server-key %s: %s\n", o.server_key,
            qrpc_strerror(rc));
    goto out;
  }
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  bo.server.endpoint.conn.keepalive_ms = o.keepalive_ms;
  bo.acl_path = o.acl;
  bo.max_payload = o.max_payload;
  bo.max_subscriptions = o.max_subs;
  bo.queue_messages = (uint32_t)o.queue_msgs;
  bo.queue_bytes = o.queue_bytes;
  bo.server.endpoint.max_connections = o.max_conns;
  bo.server.workers = (size_t)o.workers;
  bo.max_retained = o.max_retained;
  bo.cluster = o.cluster;
  bo.cluster_user = o.cluster_user;
  bo.cluster_prefix = o.cluster_prefix;
  if (o.cluster) {
    /* From the environment, so that they show in no process list. */
    bo.cluster_password = getenv("QRPC_CLUSTER_PASSWORD");
    bo.cluster_token = getenv("QRPC_CLUSTER_TOKEN");
    if (bo.cluster_token && !*bo.cluster_token) bo.cluster_token = NULL;
  }
  char err[512] = "";
  rc = qrpc_broker_new(d.loop, o.listen, tls, &bo, &d.broker, err, sizeof(err));
  if (rc != 0) {
    d.broker = NULL;
    fprintf(stderr, PROG ": %s\n", err[0] ? err : qrpc_strerror(rc));
    goto out;
  }
  if (qrpc_loop_on_signal(d.loop, SIGTERM, on_signal, &d, &sigterm) != 0 ||
      qrpc_loop_on_signal(d.loop, SIGINT, on_signal, &d, &sigint) != 0) {
    fprintf(stderr, PROG ": cannot install the signal handlers\n");
    status = 1;
    goto out;
  }
  if (o.metrics && serve_metrics(&d, o.metrics) != 0) goto out;
  unsigned port = qrpc_server_port(qrpc_broker_server(d.broker));
  char bound[INET6_ADDRSTRLEN + 16];
  bound_addr(d.broker, o.listen, bound, sizeof(bound));
  size_t nw = qrpc_broker_workers(d.broker);
  fprintf(stderr, PROG ": serving on %s (udp port %u, %zu worker%s)%s%s\n",
          bound, port, nw, nw == 1 ? "" : "s",
          o.client_ca ? ", client certificates required" : "",
          o.acl ? "" : ", open access");
  qrpc_loop_set_busy_poll(d.loop, (uint32_t)o.busy_poll_us);
  printf("READY %u\n", port);
  status = 1;
  if ((rc = qrpc_loop_run(d.loop)) != 0) {
    fprintf(stderr, PROG ": the loop failed: %s\n", qrpc_strerror(rc));
    goto out;
  }
  print_result(d.broker);
  status = 0;
out:
  qrpc_metrics_free(d.metrics);
  qrpc_broker_free(d.broker);
  qrpc_signal_free(sigterm);
  qrpc_signal_free(sigint);
  qrpc_tls_config_free(tls);
  qrpc_loop_free(d.loop);
  return status;
}
