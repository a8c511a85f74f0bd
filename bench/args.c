#include "args.h"

#include "qrpc/quic.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Width of the flag column of --help. */
#define HELP_COLUMN 24

static const char *kind_default(const bench_flag *f, char *buf, size_t cap) {
  switch (f->kind) {
  case BENCH_FLAG_STR: {
    const char *v = *(const char **)f->dst;
    if (v == NULL) return NULL;
    snprintf(buf, cap, "%s", v);
    return buf;
  }
  case BENCH_FLAG_UINT:
    snprintf(buf, cap, "%llu", (unsigned long long)*(uint64_t *)f->dst);
    return buf;
  case BENCH_FLAG_SECONDS:
    snprintf(buf, cap, "%g", *(double *)f->dst);
    return buf;
  case BENCH_FLAG_CHOICE:
    snprintf(buf, cap, "%s", f->choices[*(int *)f->dst]);
    return buf;
  case BENCH_FLAG_BOOL: return NULL;
  }
  return NULL;
}

void bench_args_usage(FILE *f, const char *prog, const char *synopsis,
                      const char *about, const bench_flag *flags,
                      size_t nflags) {
  fprintf(f, "usage: %s %s\n\n%s\n\nflags:\n", prog, synopsis, about);
  for (size_t i = 0; i < nflags; i++) {
    const bench_flag *fl = &flags[i];
    char left[64], def[128];
    if (fl->kind == BENCH_FLAG_BOOL)
      snprintf(left, sizeof(left), "%s", fl->name);
    else
      snprintf(left, sizeof(left), "%s %s", fl->name, fl->meta);
    fprintf(f, "  %-*s %s", HELP_COLUMN, left, fl->help);
    const char *d = kind_default(fl, def, sizeof(def));
    if (fl->required)
      fprintf(f, " (required)");
    else if (d != NULL)
      fprintf(f, " (default %s)", d);
    fputc('\n', f);
  }
  fprintf(f, "  %-*s %s\n", HELP_COLUMN, "--help", "print this help and exit");
}

const bench_flag *bench_args_find(const bench_flag *flags, size_t nflags,
                                  const char *name) {
  for (size_t i = 0; i < nflags; i++)
    if (strcmp(flags[i].name, name) == 0) return &flags[i];
  return NULL;
}

/* What a flag expects, for messages: "a whole number from 1 to 65535". */
static void describe(const bench_flag *f, char *buf, size_t cap) {
  switch (f->kind) {
  case BENCH_FLAG_STR: snprintf(buf, cap, "a value (%s)", f->meta); break;
  case BENCH_FLAG_UINT:
    snprintf(buf, cap, "a whole number from %.0f to %.0f", f->min, f->max);
    break;
  case BENCH_FLAG_SECONDS:
    snprintf(buf, cap, "a number of seconds from %g to %g", f->min, f->max);
    break;
  case BENCH_FLAG_CHOICE: {
    size_t used = (size_t)snprintf(buf, cap, "one of");
    for (size_t i = 0; f->choices[i] != NULL && used < cap; i++)
      used += (size_t)snprintf(buf + used, cap - used, "%s %s", i ? "," : "",
                               f->choices[i]);
    break;
  }
  case BENCH_FLAG_BOOL: snprintf(buf, cap, "no value"); break;
  }
}

static int parse_uint(const char *s, double min, double max, uint64_t *out) {
  if (s[0] < '0' || s[0] > '9') return -1;
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0') return -1;
  if ((double)v < min || (double)v > max) return -1;
  *out = v;
  return 0;
}

static int parse_seconds(const char *s, double min, double max, double *out) {
  if ((s[0] < '0' || s[0] > '9') && s[0] != '.') return -1;
  char *end = NULL;
  errno = 0;
  double v = strtod(s, &end);
  if (errno != 0 || *end != '\0' || !isfinite(v) || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

static int set_value(bench_flag *f, const char *v) {
  switch (f->kind) {
  case BENCH_FLAG_STR:
    if (v[0] == '\0') return -1;
    *(const char **)f->dst = v;
    return 0;
  case BENCH_FLAG_UINT: return parse_uint(v, f->min, f->max, f->dst);
  case BENCH_FLAG_SECONDS: return parse_seconds(v, f->min, f->max, f->dst);
  case BENCH_FLAG_CHOICE:
    for (int i = 0; f->choices[i] != NULL; i++) {
      if (strcmp(f->choices[i], v) != 0) continue;
      *(int *)f->dst = i;
      return 0;
    }
    return -1;
  case BENCH_FLAG_BOOL: return -1;
  }
  return -1;
}

int bench_args_parse(const char *prog, const char *synopsis, const char *about,
                     bench_flag *flags, size_t nflags, int argc, char **argv) {
  for (int i = 0; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      bench_args_usage(stdout, prog, synopsis, about, flags, nflags);
      return 1;
    }
    char name[64];
    const char *eq = strchr(a, '=');
    size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
    if (nlen >= sizeof(name)) nlen = sizeof(name) - 1;
    memcpy(name, a, nlen);
    name[nlen] = '\0';
    bench_flag *f = (bench_flag *)bench_args_find(flags, nflags, name);
    if (f == NULL) {
      fprintf(stderr, "%s: unknown flag '%s' (see '%s --help')\n", prog, a,
              prog);
      return 2;
    }
    f->seen = 1;
    if (f->kind == BENCH_FLAG_BOOL) {
      if (eq != NULL) {
        fprintf(stderr, "%s: %s takes no value\n", prog, f->name);
        return 2;
      }
      *(int *)f->dst = 1;
      continue;
    }
    const char *v = eq ? eq + 1 : NULL;
    if (v == NULL) {
      if (i + 1 >= argc) {
        char what[160];
        describe(f, what, sizeof(what));
        fprintf(stderr, "%s: %s expects %s after it\n", prog, f->name, what);
        return 2;
      }
      v = argv[++i];
    }
    if (set_value(f, v) != 0) {
      char what[160];
      describe(f, what, sizeof(what));
      fprintf(stderr, "%s: %s expects %s, not '%s'\n", prog, f->name, what, v);
      return 2;
    }
  }
  for (size_t i = 0; i < nflags; i++) {
    if (!flags[i].required || flags[i].seen) continue;
    char what[160];
    describe(&flags[i], what, sizeof(what));
    fprintf(stderr, "%s: %s %s is required: %s, %s\n", prog, flags[i].name,
            flags[i].meta, flags[i].help, what);
    return 2;
  }
  return 0;
}

size_t bench_client_common_flags(bench_flag *flags, size_t n,
                                 bench_client_common *c) {
  c->host = "127.0.0.1";
  c->port = 0;
  c->tls_ca = NULL;
  c->tls_name = "localhost";
  c->tls_cert = NULL;
  c->tls_key = NULL;
  c->warmup_s = 1;
  c->duration_s = 5;
  c->json = 0;
  c->qlog_dir = NULL;
  c->shared_socket = 0;
  c->busy_poll_us = 0;
  const bench_flag common[] = {
      {"--host", BENCH_FLAG_STR, &c->host, 0, 0, NULL, "HOST",
       "the server's address", 0, 0},
      {"--port", BENCH_FLAG_UINT, &c->port, 1, 65535, NULL, "P",
       "the server's UDP port", 1, 0},
      {"--tls-ca", BENCH_FLAG_STR, &c->tls_ca, 0, 0, NULL, "PEM",
       "CA certificate to verify the server with (without it the server "
       "is not verified)",
       0, 0},
      {"--tls-name", BENCH_FLAG_STR, &c->tls_name, 0, 0, NULL, "NAME",
       "the name the server's certificate must carry", 0, 0},
      {"--tls-cert", BENCH_FLAG_STR, &c->tls_cert, 0, 0, NULL, "PEM",
       "client certificate, for servers that require one (with --tls-key)", 0,
       0},
      {"--tls-key", BENCH_FLAG_STR, &c->tls_key, 0, 0, NULL, "PEM",
       "the client certificate's private key", 0, 0},
      {"--warmup", BENCH_FLAG_SECONDS, &c->warmup_s, 0, 3600, NULL, "W",
       "seconds of load before measuring", 0, 0},
      {"--duration", BENCH_FLAG_SECONDS, &c->duration_s, 0.01, 86400, NULL, "D",
       "seconds measured", 0, 0},
      {"--json", BENCH_FLAG_BOOL, &c->json, 0, 0, NULL, NULL,
       "also print the run as one JSON object (before RESULT)", 0, 0},
      {"--qlog", BENCH_FLAG_STR, &c->qlog_dir, 0, 0, NULL, "DIR",
       "write a qlog file per connection into DIR (slows the run; for "
       "diagnosis)",
       0, 0},
      {"--shared-socket", BENCH_FLAG_BOOL, &c->shared_socket, 0, 0, NULL, NULL,
       "make every connection of this client through one UDP socket "
       "(qrpc_endpoint_open, qrpc_conn_opts.via) instead of one each",
       0, 0},
      {"--busy-poll", BENCH_FLAG_UINT, &c->busy_poll_us, 0, 1000000, NULL,
       "US",
       "poll without sleeping for US microseconds after the last packet "
       "(qrpc_loop_set_busy_poll; uses the whole CPU meanwhile)",
       0, 0},
  };
  for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++)
    if (n < BENCH_MAX_FLAGS) flags[n++] = common[i];
  return bench_sim_flags(flags, n, &c->sim);
}

size_t bench_sim_flags(bench_flag *flags, size_t n, bench_sim *s) {
  memset(s, 0, sizeof(*s));
  const bench_flag sim[] = {
      {"--loss", BENCH_FLAG_UINT, &s->loss_pct, 0, 100, NULL, "PCT",
       "link conditioner: drop this share of our outgoing packets "
       "(development; qrpc_conn_opts.sim_loss_pct)",
       0, 0},
      {"--delay", BENCH_FLAG_UINT, &s->delay_ms, 0, 10000, NULL, "MS",
       "link conditioner: hold our outgoing packets this long", 0, 0},
      {"--jitter", BENCH_FLAG_UINT, &s->jitter_ms, 0, 10000, NULL, "MS",
       "link conditioner: and up to this much longer, at random", 0, 0},
      {"--reorder", BENCH_FLAG_UINT, &s->reorder_pct, 0, 100, NULL, "PCT",
       "link conditioner: hold this share 10 ms longer, so later packets "
       "overtake them",
       0, 0},
  };
  for (size_t i = 0; i < sizeof(sim) / sizeof(sim[0]); i++)
    if (n < BENCH_MAX_FLAGS) flags[n++] = sim[i];
  return n;
}

void bench_sim_apply(const bench_sim *s, qrpc_conn_opts *o) {
  o->sim_loss_pct = (double)s->loss_pct;
  o->sim_reorder_pct = (double)s->reorder_pct;
  o->sim_delay_ms = (uint32_t)s->delay_ms;
  o->sim_jitter_ms = (uint32_t)s->jitter_ms;
}
