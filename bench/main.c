/*
 * qrpc-bench: the load generator for the workloads of bench/README.md.
 *
 *   qrpc-bench server rpc|game [flags]
 *   qrpc-bench client rpc|game|idle|pubsub|floor [flags]
 *
 * Each ROLE FAMILY pair is one entry of the table below; its function
 * parses the rest of the command line. TLS flags are the same for every
 * family (tls.c): servers take --tls-cert, --tls-key and --tls-client-ca
 * (require client certificates verified against that CA); clients take
 * --tls-ca, --tls-name, and --tls-cert with --tls-key (the client
 * certificate they present).
 */
#include <stdio.h>
#include <string.h>

#include "bench.h"

#define PROG "qrpc-bench"

typedef struct command {
  const char *role;
  const char *family;
  bench_cmd_fn fn; /* NULL: not built yet */
  const char *summary;
} command;

static const command commands[] = {
    {"server", "rpc", bench_server_rpc, "the Echo service (unary and bidi)"},
    {"server", "game", bench_server_game,
     "a game server broadcasting every client's state each tick"},
    {"client", "rpc", bench_client_rpc,
     "unary calls, bidi streams or connection setup against server rpc"},
    {"client", "game", bench_client_game,
     "simulated players sending and receiving state as datagrams"},
    {"client", "idle", bench_client_idle,
     "idle connections to server rpc, and the server memory they take"},
    {"client", "pubsub", bench_client_pubsub,
     "fan-out through qrpc-broker to reliable subscribers"},
    {"client", "floor", bench_client_floor,
     "the machine's floor: a bare UDP or TCP round trip, no QUIC, no TLS"},
};

#define NCOMMANDS (sizeof(commands) / sizeof(commands[0]))

static void usage(FILE *f) {
  fprintf(f, "usage: " PROG " server|client FAMILY [flags]\n\n");
  for (size_t i = 0; i < NCOMMANDS; i++)
    fprintf(f, "  " PROG " %-6s %-7s %s%s\n", commands[i].role,
            commands[i].family, commands[i].summary,
            commands[i].fn ? "" : " (not built yet)");
  fprintf(f, "\n'" PROG " ROLE FAMILY --help' lists the flags of each.\n"
             "Servers print READY on stdout once they accept connections;\n"
             "clients print RESULT k=v ... as their last line on stdout.\n");
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  if (argc >= 2 &&
      (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    usage(stdout);
    return 0;
  }
  if (argc < 3) {
    fprintf(stderr, PROG ": expected a role (server or client) and a "
                         "family\n\n");
    usage(stderr);
    return 2;
  }
  int role_known = 0;
  for (size_t i = 0; i < NCOMMANDS; i++) {
    const command *c = &commands[i];
    if (strcmp(c->role, argv[1]) != 0) continue;
    role_known = 1;
    if (strcmp(c->family, argv[2]) != 0) continue;
    if (c->fn == NULL) {
      fprintf(stderr, "%s: not built yet\n", c->family);
      return 2;
    }
    char prog[64];
    snprintf(prog, sizeof(prog), PROG " %s %s", c->role, c->family);
    return c->fn(prog, argc - 3, argv + 3);
  }
  if (!role_known)
    fprintf(stderr, PROG ": unknown role '%s': expected server or client\n\n",
            argv[1]);
  else
    fprintf(stderr, PROG ": '%s' has no family '%s'\n\n", argv[1], argv[2]);
  usage(stderr);
  return 2;
}
