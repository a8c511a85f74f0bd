/*
 * qrpc-bench: the subcommands and what they share.
 *
 * Each family lives in its own file (rpc_server.c, rpc_client.c,
 * game_server.c, game_client.c, idle.c) and exposes one entry point of
 * type bench_cmd_fn; main.c maps "ROLE FAMILY" to it. A new family (the
 * pub/sub client, for one) is a new file with one such function, declared
 * here and named in main.c's table.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stddef.h>
#include <stdint.h>

#include <qrpc/qrpc.h>

struct event;
struct event_base;

/* Runs one subcommand. prog names it in messages ("qrpc-bench client
 * rpc"); argv holds only its flags (argc of them). Returns the process
 * exit status: 0, 1 when the run failed, 2 on a bad command line. */
typedef int (*bench_cmd_fn)(const char *prog, int argc, char **argv);

int bench_server_rpc(const char *prog, int argc, char **argv);
int bench_server_game(const char *prog, int argc, char **argv);
int bench_client_rpc(const char *prog, int argc, char **argv);
int bench_client_game(const char *prog, int argc, char **argv);
int bench_client_idle(const char *prog, int argc, char **argv);
int bench_client_pubsub(const char *prog, int argc, char **argv);
int bench_client_floor(const char *prog, int argc, char **argv);

/* The largest --payload of the RPC family. Both sides set their max_frame
 * above it, so a frame of this size is never refused. */
#define BENCH_MAX_PAYLOAD (16u << 20)
/* max_frame of both sides: the payload inside a Msg plus the frame
 * header, with room to spare. */
#define BENCH_MAX_FRAME (BENCH_MAX_PAYLOAD + 4096u)

/* The servers' limits: idle connections are held for the whole run, and
 * qrpc sends no keep-alives, so neither side may time them out first. */
#define BENCH_SERVER_IDLE_TIMEOUT_MS (3600u * 1000u)
#define BENCH_DEFAULT_MAX_CONNS 65536u
#define BENCH_MAX_HANDSHAKES 4096u

/* CLOCK_MONOTONIC in nanoseconds; comparable between processes of one
 * machine, which the game family relies on. */
uint64_t bench_now_ns(void);

/* Makes the process's loop. With precise set its libevent base uses
 * timers finer than a millisecond (timerfd), which ticks at hundreds of
 * hertz need; *base is then the caller's to free after the loop
 * (bench_loop_free()). Returns 0 or a QRPC_E* code. */
int bench_loop_new(int precise, qrpc_loop **loop, struct event_base **base);
void bench_loop_free(qrpc_loop *loop, struct event_base *base);

/* Seconds of CPU (user + system) this process has used. */
double bench_cpu_s(void);

/* Raises RLIMIT_NOFILE to at least want descriptors (up to the hard
 * limit, which a privileged process also raises). Returns the soft limit
 * now in force. */
uint64_t bench_raise_nofile(uint64_t want);

/* Reads VmRSS of process pid from /proc, in KiB. Returns 0, or -1 (errno
 * set) when the process or the line does not exist. */
int bench_read_rss_kb(long pid, uint64_t *kb);

/* Writes "host:port" (brackets around an IPv6 literal) into buf. Returns 0,
 * or -1 when it does not fit. */
int bench_join_addr(char *buf, size_t cap, const char *host, uint64_t port);

/* Routes qrpc's log lines to stderr with prog in front: warnings and
 * errors, at most a few dozen lines per run. The last warning is kept
 * for bench_log_last(). */
void bench_log_init(const char *prog);
/* Drops qrpc's per-connection lines about the server's certificate, for a
 * client that does not verify it. */
void bench_log_unverified(void);
/* The last warning qrpc logged, or its last line about a failed
 * connection attempt, or "" (borrowed). */
const char *bench_log_last(void);

/* TLS, always on. A server without cert and key files makes a throwaway
 * self-signed certificate for "localhost" in memory; with client_ca it
 * requires client certificates verified against that CA. A client without
 * a CA file does not verify the server and says so once on stderr; with
 * cert and key (both or neither) it presents that certificate to servers
 * that ask for one. Return 0, or 1 after printing why, naming the flag
 * (prog in front). */
int bench_tls_server(const char *prog, const char *cert, const char *key,
                     const char *client_ca, qrpc_tls_config **out);
int bench_tls_client(const char *prog, const char *ca, const char *cert,
                     const char *key, qrpc_tls_config **out);

/* Installs SIGTERM and SIGINT handlers on the loop that stop it and set
 * *flag. Returns 0, or -1. bench_signals_free() removes them. */
typedef struct bench_signals {
  struct event *term, *intr;
  qrpc_loop *loop;
  volatile int *flag;
} bench_signals;

int bench_signals_init(bench_signals *s, qrpc_loop *loop, volatile int *flag);
void bench_signals_free(bench_signals *s);

#endif
