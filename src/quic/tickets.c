/*
 * Session tickets and 0-RTT, the parts every TLS backend shares: a
 * client's cache of tickets by server (kept, taken once, saved to and
 * loaded from a file), and a server's record of the tickets that already
 * carried early data (its anti-replay).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <ngtcp2/ngtcp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qrpc/error.h"
#include "quic/conn.h"
#include "quic/tls.h"
#include "util/clock.h"
#include "util/log.h"

/* Tickets kept per server, and servers per config: the oldest go first. */
#define MAX_PER_SERVER 4
#define MAX_SERVERS 256
/* The longest lifetime a ticket is kept for, whatever the server says
 * (RFC 8446 4.6.1 caps it at 7 days). */
#define MAX_LIFETIME_S (7 * 24 * 3600)
/* Bounds on what a cache file may hold. */
#define MAX_TICKET_BYTES 16384
#define MAX_TP_BYTES 512
#define MAX_KEY_LEN 300
#define FILE_MAGIC "qrpc-tickets 1"
/* The most tickets the replay record holds: past it, early data is
 * refused (a full handshake still resumes). */
#define REPLAY_MAX 100000
#define REPLAY_BUCKETS 4096

/* ---- The client's cache ------------------------------------------------ */

typedef struct server_entry {
  struct server_entry *next;
  char *key;             /* "name|port" */
  qrpci_ticket *tickets; /* newest first */
  size_t n;
} server_entry;

struct qrpci_ticket_cache {
  pthread_mutex_t mu;
  server_entry *head; /* most recently given a ticket first */
  size_t n;
};

typedef struct replay_ent {
  struct replay_ent *next_in_bucket;
  struct replay_ent *next_in_age;
  uint64_t expiry_ns;
  uint8_t id[QRPCI_HMAC_LEN];
} replay_ent;

struct qrpci_replay {
  pthread_mutex_t mu;
  uint8_t hkey[QRPCI_HMAC_LEN]; /* ids are hashed with it */
  replay_ent *buckets[REPLAY_BUCKETS];
  replay_ent *oldest, *newest;
  size_t n;
};

static uint64_t wall_s(void) { return (uint64_t)time(NULL); }

void qrpci_ticket_free(qrpci_ticket *t) {
  if (!t) return;
  free(t->data);
  free(t->tp);
  if (t->session) qrpci_tlsb_session_drop(t->session);
  free(t);
}

static void free_entry(server_entry *e) {
  while (e->tickets) {
    qrpci_ticket *t = e->tickets;
    e->tickets = t->next;
    qrpci_ticket_free(t);
  }
  free(e->key);
  free(e);
}

static qrpci_ticket_cache *cache_of(qrpc_tls_config *cfg) {
  pthread_mutex_lock(&cfg->mu);
  if (!cfg->tickets && (cfg->tickets = calloc(1, sizeof(*cfg->tickets))))
    pthread_mutex_init(&cfg->tickets->mu, NULL);
  pthread_mutex_unlock(&cfg->mu);
  return cfg->tickets;
}

static void drop_expired(server_entry *e, uint64_t now) {
  for (qrpci_ticket **p = &e->tickets; *p;) {
    if ((*p)->expiry_s <= now) {
      qrpci_ticket *t = *p;
      *p = t->next;
      qrpci_ticket_free(t);
      e->n--;
    } else {
      p = &(*p)->next;
    }
  }
}

/* The entry for key, moved to the front; made when create is 1. Under the
 * cache's lock. */
static server_entry *find_entry(qrpci_ticket_cache *tc, const char *key,
                                int create) {
  server_entry **p = &tc->head;
  for (; *p; p = &(*p)->next)
    if (strcmp((*p)->key, key) == 0) break;
  server_entry *e = *p;
  if (e) {
    *p = e->next;
  } else {
    if (!create || !(e = calloc(1, sizeof(*e)))) return NULL;
    if (!(e->key = strdup(key))) {
      free(e);
      return NULL;
    }
    tc->n++;
  }
  e->next = tc->head;
  tc->head = e;
  if (tc->n > MAX_SERVERS) {
    server_entry **last = &tc->head;
    while ((*last)->next) last = &(*last)->next;
    free_entry(*last);
    *last = NULL;
    tc->n--;
  }
  return e;
}

/* Adds t (owned) to the cache under key. */
static void cache_put(qrpci_ticket_cache *tc, const char *key,
                      qrpci_ticket *t) {
  pthread_mutex_lock(&tc->mu);
  server_entry *e = find_entry(tc, key, 1);
  if (!e) {
    pthread_mutex_unlock(&tc->mu);
    qrpci_ticket_free(t);
    return;
  }
  drop_expired(e, wall_s());
  t->next = e->tickets;
  e->tickets = t;
  if (++e->n > MAX_PER_SERVER) {
    qrpci_ticket **p = &e->tickets;
    while ((*p)->next) p = &(*p)->next;
    qrpci_ticket_free(*p);
    *p = NULL;
    e->n--;
  }
  pthread_mutex_unlock(&tc->mu);
}

/* Takes the newest live ticket for key out of the cache. */
static qrpci_ticket *cache_take(qrpci_ticket_cache *tc, const char *key) {
  pthread_mutex_lock(&tc->mu);
  server_entry *e = find_entry(tc, key, 0);
  qrpci_ticket *t = NULL;
  if (e) {
    drop_expired(e, wall_s());
    if ((t = e->tickets)) {
      e->tickets = t->next;
      e->n--;
      t->next = NULL;
    }
  }
  pthread_mutex_unlock(&tc->mu);
  return t;
}

/* "name|port": the server a client connects to. */
static int server_key(const qrpc_conn *c, char *out, size_t cap) {
  int n = snprintf(out, cap, "%s|%s", c->server_name ? c->server_name : "",
                   c->port ? c->port : "");
  return n > 0 && (size_t)n < cap ? 0 : -1;
}

void qrpci_tls_ticket_received(qrpc_conn *c, const uint8_t *data, size_t len,
                               uint64_t lifetime_s, int early, void *session) {
  qrpc_tls_config *cfg = c->tlscfg;
  char key[MAX_KEY_LEN];
  qrpci_ticket_cache *tc = NULL;
  qrpci_ticket *t = NULL;
  if (!cfg->no_resumption && !c->is_server && c->q && len != 0 &&
      len <= MAX_TICKET_BYTES && lifetime_s != 0 &&
      server_key(c, key, sizeof(key)) == 0 && (tc = cache_of(cfg)) != NULL)
    t = calloc(1, sizeof(*t));
  if (!t) {
    if (session) qrpci_tlsb_session_drop(session);
    return;
  }
  t->session = session;
  if (lifetime_s > MAX_LIFETIME_S) lifetime_s = MAX_LIFETIME_S;
  t->expiry_s = wall_s() + lifetime_s;
  t->early = early;
  t->verified = c->peer_verified;
  t->data = malloc(len);
  uint8_t tp[MAX_TP_BYTES];
  ngtcp2_ssize tplen =
      ngtcp2_conn_encode_0rtt_transport_params(c->q, tp, sizeof(tp));
  if (tplen > 0 && (t->tp = malloc((size_t)tplen))) {
    memcpy(t->tp, tp, (size_t)tplen);
    t->tplen = (size_t)tplen;
  }
  if (!t->data) {
    qrpci_ticket_free(t);
    return;
  }
  memcpy(t->data, data, len);
  t->len = len;
  cache_put(tc, key, t);
}

int qrpci_tls_client_resume(qrpc_conn *c) {
  qrpc_tls_config *cfg = c->tlscfg;
  char key[MAX_KEY_LEN];
  if (cfg->no_resumption || server_key(c, key, sizeof(key)) != 0) return 0;
  qrpci_ticket_cache *tc = cache_of(cfg);
  qrpci_ticket *t = tc ? cache_take(tc, key) : NULL;
  if (!t) return 0;
  /* The transport parameters go in first: without them, no 0-RTT. */
  int early = t->early && t->tplen &&
              ngtcp2_conn_decode_and_set_0rtt_transport_params(c->q, t->tp,
                                                               t->tplen) == 0;
  if (qrpci_tlsb_resume(c, t, early) != 0) {
    QRPCI_INFO("tls: a session ticket for %s could not be used", key);
    early = 0;
  } else {
    c->resume_verified = t->verified;
  }
  qrpci_ticket_free(t);
  return early;
}

int qrpc_tls_config_set_resumption(qrpc_tls_config *cfg, int on) {
  if (!cfg) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  cfg->no_resumption = !on;
  return 0;
}

size_t qrpc_tls_config_tickets(qrpc_tls_config *cfg) {
  qrpci_ticket_cache *tc = cfg ? cache_of(cfg) : NULL;
  if (!tc) return 0;
  size_t n = 0;
  pthread_mutex_lock(&tc->mu);
  uint64_t now = wall_s();
  for (server_entry *e = tc->head; e; e = e->next)
    for (qrpci_ticket *t = e->tickets; t; t = t->next)
      if (t->expiry_s > now) n++;
  pthread_mutex_unlock(&tc->mu);
  return n;
}

/* ---- The cache file ------------------------------------------------------
 * Text, one ticket per line after a first line naming the format and the
 * backend that encoded the sessions:
 *   qrpc-tickets 1 BACKEND
 *   KEY EXPIRY EARLY VERIFIED DATA TP
 * KEY, DATA and TP in hex (TP may be "-"), EXPIRY in seconds since the
 * epoch. */

static void put_hex(FILE *f, const uint8_t *p, size_t n) {
  static const char d[] = "0123456789abcdef";
  if (n == 0) fputc('-', f);
  for (size_t i = 0; i < n; i++) {
    fputc(d[p[i] >> 4], f);
    fputc(d[p[i] & 15], f);
  }
}

int qrpc_tls_config_save_tickets(qrpc_tls_config *cfg, const char *path) {
  if (!cfg || !path) return QRPC_EINVAL;
  qrpci_ticket_cache *tc = cache_of(cfg);
  if (!tc) return QRPC_ENOMEM;
  size_t plen = strlen(path);
  char *tmp = malloc(plen + 8);
  if (!tmp) return QRPC_ENOMEM;
  memcpy(tmp, path, plen);
  memcpy(tmp + plen, ".XXXXXX", 8);
  /* mkstemp makes the file with mode 0600. */
  int fd = mkstemp(tmp);
  FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
  if (!f) {
    QRPCI_ERROR("tls: cannot write the ticket cache %s: %s", path,
                strerror(errno));
    if (fd >= 0) {
      close(fd);
      unlink(tmp);
    }
    free(tmp);
    return QRPC_ESYSTEM;
  }
  fprintf(f, "%s %s\n", FILE_MAGIC, qrpc_tls_backend());
  int n = 0;
  pthread_mutex_lock(&tc->mu);
  uint64_t now = wall_s();
  for (server_entry *e = tc->head; e; e = e->next) {
    for (qrpci_ticket *t = e->tickets; t; t = t->next) {
      if (t->expiry_s <= now) continue;
      put_hex(f, (const uint8_t *)e->key, strlen(e->key));
      fprintf(f, " %llu %d %d ", (unsigned long long)t->expiry_s, t->early,
              t->verified);
      put_hex(f, t->data, t->len);
      fputc(' ', f);
      put_hex(f, t->tp, t->tplen);
      fputc('\n', f);
      n++;
    }
  }
  pthread_mutex_unlock(&tc->mu);
  int ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
  if (fclose(f) != 0) ok = 0;
  if (ok && rename(tmp, path) != 0) ok = 0;
  if (!ok) {
    QRPCI_ERROR("tls: cannot write the ticket cache %s: %s", path,
                strerror(errno));
    unlink(tmp);
  }
  free(tmp);
  return ok ? n : QRPC_ESYSTEM;
}

/* Decodes the hex word at *p (up to the next space or the end) into a new
 * buffer of at most max bytes; "-" is empty. 0, or -1 when malformed. */
static int get_hex(char **p, uint8_t **out, size_t *len, size_t max) {
  char *s = *p;
  size_t n = strcspn(s, " ");
  *out = NULL;
  *len = 0;
  *p = s + n + (s[n] == ' ');
  if (n == 1 && s[0] == '-') return 0;
  if (n == 0 || n % 2 || n / 2 > max) return -1;
  uint8_t *b = malloc(n / 2 + 1);
  if (!b) return -1;
  for (size_t i = 0; i < n / 2; i++) {
    int v = 0;
    for (int k = 0; k < 2; k++) {
      char ch = s[2 * i + (size_t)k];
      int d = ch >= '0' && ch <= '9'   ? ch - '0'
              : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                       : -1;
      if (d < 0) {
        free(b);
        return -1;
      }
      v = v << 4 | d;
    }
    b[i] = (uint8_t)v;
  }
  b[n / 2] = 0;
  *out = b;
  *len = n / 2;
  return 0;
}

static int get_uint(char **p, uint64_t *v, uint64_t max) {
  char *end;
  errno = 0;
  if (**p < '0' || **p > '9') return -1;
  unsigned long long x = strtoull(*p, &end, 10);
  if (errno || x > max || (*end != ' ')) return -1;
  *v = x;
  *p = end + 1;
  return 0;
}

/* Parses one line into a ticket and its key; -1 when malformed. */
static int parse_line(char *line, char **key, qrpci_ticket **out) {
  qrpci_ticket *t = calloc(1, sizeof(*t));
  uint8_t *k = NULL;
  size_t klen;
  uint64_t early, verified;
  char *p = line;
  int ok = t && get_hex(&p, &k, &klen, MAX_KEY_LEN - 1) == 0 && klen &&
           memchr(k, 0, klen) == NULL &&
           get_uint(&p, &t->expiry_s, UINT64_MAX / 2) == 0 &&
           get_uint(&p, &early, 1) == 0 && get_uint(&p, &verified, 1) == 0 &&
           get_hex(&p, &t->data, &t->len, MAX_TICKET_BYTES) == 0 && t->len &&
           get_hex(&p, &t->tp, &t->tplen, MAX_TP_BYTES) == 0 && *p == '\0';
  if (!ok) {
    free(k);
    qrpci_ticket_free(t);
    return -1;
  }
  t->early = (int)early;
  t->verified = (int)verified;
  *key = (char *)k;
  *out = t;
  return 0;
}

int qrpc_tls_config_load_tickets(qrpc_tls_config *cfg, const char *path) {
  if (!cfg || !path) return QRPC_EINVAL;
  qrpci_ticket_cache *tc = cache_of(cfg);
  if (!tc) return QRPC_ENOMEM;
  FILE *f = fopen(path, "r");
  if (!f) {
    if (errno == ENOENT) return 0;
    QRPCI_ERROR("tls: cannot read the ticket cache %s: %s", path,
                strerror(errno));
    return QRPC_ESYSTEM;
  }
  size_t cap = 2 * (MAX_KEY_LEN + MAX_TICKET_BYTES + MAX_TP_BYTES) + 64;
  char *line = malloc(cap);
  qrpci_ticket *got = NULL;
  char **keys = NULL;
  size_t n = 0, expired = 0;
  const char *bad = line ? NULL : "out of memory";
  if (line) line[0] = '\0';
  char head[64];
  snprintf(head, sizeof(head), "%s %s\n", FILE_MAGIC, qrpc_tls_backend());
  if (!bad && (!fgets(line, (int)cap, f) || strcmp(line, head) != 0))
    bad = strncmp(line, FILE_MAGIC, strlen(FILE_MAGIC)) == 0
              ? "written by another TLS backend"
              : "not a ticket cache";
  while (!bad && fgets(line, (int)cap, f)) {
    size_t len = strlen(line);
    if (len == 0 || line[len - 1] != '\n') {
      bad = "a line is cut or too long";
      break;
    }
    line[len - 1] = '\0';
    char *key;
    qrpci_ticket *t;
    char **nk;
    if (n >= MAX_SERVERS * MAX_PER_SERVER) {
      bad = "too many tickets";
    } else if (parse_line(line, &key, &t) != 0) {
      bad = "a ticket is malformed";
    } else if (t->expiry_s <= wall_s()) {
      expired++;
      free(key);
      qrpci_ticket_free(t);
    } else if (!(nk = realloc(keys, (n + 1) * sizeof(*keys)))) {
      free(key);
      qrpci_ticket_free(t);
      bad = "out of memory";
    } else {
      keys = nk;
      keys[n++] = key;
      t->next = got;
      got = t;
    }
  }
  if (!bad && ferror(f)) bad = "read error";
  fclose(f);
  free(line);
  /* keys[i] goes with the i-th ticket read, which is last in got. */
  for (size_t i = n; i-- > 0;) {
    qrpci_ticket *t = got;
    got = t->next;
    t->next = NULL;
    if (bad)
      qrpci_ticket_free(t);
    else
      cache_put(tc, keys[i], t);
    free(keys[i]);
  }
  free(keys);
  if (bad) {
    QRPCI_WARN("tls: ignoring the ticket cache %s: %s", path, bad);
    return 0;
  }
  if (expired && n == 0)
    QRPCI_WARN("tls: every ticket in %s has expired; ignoring them", path);
  return (int)n;
}

/* ---- The server's replay record ----------------------------------------- */

static qrpci_replay *replay_of(qrpc_tls_config *cfg) {
  pthread_mutex_lock(&cfg->mu);
  if (!cfg->replay && (cfg->replay = calloc(1, sizeof(*cfg->replay)))) {
    if (qrpci_tls_rand(cfg->replay->hkey, sizeof(cfg->replay->hkey)) != 0) {
      free(cfg->replay);
      cfg->replay = NULL;
    } else {
      pthread_mutex_init(&cfg->replay->mu, NULL);
    }
  }
  pthread_mutex_unlock(&cfg->mu);
  return cfg->replay;
}

static void replay_expire(qrpci_replay *r, uint64_t now) {
  while (r->oldest && r->oldest->expiry_ns <= now) {
    replay_ent *e = r->oldest;
    size_t b = (size_t)(e->id[0] | e->id[1] << 8) % REPLAY_BUCKETS;
    replay_ent **p = &r->buckets[b];
    while (*p != e) p = &(*p)->next_in_bucket;
    *p = e->next_in_bucket;
    r->oldest = e->next_in_age;
    if (!r->oldest) r->newest = NULL;
    free(e);
    r->n--;
  }
}

int qrpci_tls_early_fresh(qrpc_tls_config *cfg, const uint8_t *id, size_t len,
                          uint64_t issued_s) {
  /* Tickets issued before this config served (or in its first second:
   * the clock counts seconds) may have carried early data to a previous
   * run or a twin (RFC 8446 8.2). */
  if (issued_s <= cfg->created_s) return 0;
  qrpci_replay *r = replay_of(cfg);
  uint8_t h[QRPCI_HMAC_LEN];
  if (!r || qrpci_tlsb_hmac(r->hkey, sizeof(r->hkey), id, len, h) != 0)
    return 0;
  uint64_t now = qrpci_now_ns();
  size_t b = (size_t)(h[0] | h[1] << 8) % REPLAY_BUCKETS;
  int fresh = 0;
  pthread_mutex_lock(&r->mu);
  replay_expire(r, now);
  replay_ent *e = r->buckets[b];
  while (e && memcmp(e->id, h, sizeof(h)) != 0) e = e->next_in_bucket;
  if (!e && r->n < REPLAY_MAX && (e = calloc(1, sizeof(*e)))) {
    memcpy(e->id, h, sizeof(h));
    /* Twice the window: a replay later than that fails the ticket-age
     * check of the TLS library. */
    e->expiry_ns = now + 2 * (uint64_t)QRPCI_EARLY_WINDOW_MS * 1000000u;
    e->next_in_bucket = r->buckets[b];
    r->buckets[b] = e;
    if (r->newest)
      r->newest->next_in_age = e;
    else
      r->oldest = e;
    r->newest = e;
    r->n++;
    fresh = 1;
  }
  pthread_mutex_unlock(&r->mu);
  return fresh;
}

void qrpci_tls_tickets_free(qrpc_tls_config *cfg) {
  qrpci_ticket_cache *tc = cfg->tickets;
  if (tc) {
    while (tc->head) {
      server_entry *e = tc->head;
      tc->head = e->next;
      free_entry(e);
    }
    pthread_mutex_destroy(&tc->mu);
    free(tc);
  }
  qrpci_replay *r = cfg->replay;
  if (r) {
    replay_expire(r, UINT64_MAX);
    pthread_mutex_destroy(&r->mu);
    free(r);
  }
  cfg->tickets = NULL;
  cfg->replay = NULL;
}
