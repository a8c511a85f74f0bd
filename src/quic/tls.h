/*
 * TLS inside the transport: the configuration every backend shares, the
 * interface a backend implements (tls_gnutls.c, tls_openssl.c), and the
 * references the layers above keep on a qrpc_tls_config. Nothing here
 * names a TLS library. tls.c holds what backends share: the public
 * setters' checks, the last word on a peer's chain, the meaning of alerts,
 * and peer identities.
 * Internal; not installed. Loop thread only, unless said otherwise.
 */
#ifndef QRPCI_QUIC_TLS_H
#define QRPCI_QUIC_TLS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "qrpc/quic.h"
#include "qrpc/tls.h"

typedef struct qrpci_tlsb qrpci_tlsb; /* the backend's part of a config */
typedef struct qrpci_ticket_cache qrpci_ticket_cache; /* tickets.c */
typedef struct qrpci_replay qrpci_replay;             /* tickets.c */

/* The size of an HMAC-SHA256. */
#define QRPCI_HMAC_LEN 32
/* How far a 0-RTT ClientHello's ticket age may be from the server's view
 * of it, which bounds how long a replay can be noticed (the TLS
 * libraries use 10 s as well). */
#define QRPCI_EARLY_WINDOW_MS 10000

struct qrpc_tls_config {
  atomic_int refs; /* the workers of a server share their config */
  int in_use;
  int has_cert;
  int has_ca;
  int insecure;
  int insecure_warned; /* the warning was logged once */
  qrpc_client_auth client_auth;
  qrpc_verify_fn verify_fn;
  void *verify_ud;
  char alpn[256];
  size_t alpn_len;
  qrpci_tlsb *be;
  int no_resumption;        /* qrpc_tls_config_set_resumption(cfg, 0) */
  pthread_mutex_t mu;       /* guards the server key's first use */
  int has_server_key;
  int server_key_from_file;
  uint8_t server_key[QRPC_SERVER_KEY_LEN];
  uint64_t created_s;       /* wall clock, for the 0-RTT warm-up */
  qrpci_ticket_cache *tickets; /* a client's tickets, by server */
  qrpci_replay *replay;     /* a server's record of early-data tickets */
  /* The refusal last logged at warning level (qrpci_tls_verify_failed);
   * empty after a verification passed. Guarded by mu. */
  char last_refusal[256];
};

/* Takes a reference on a TLS config (qrpc_tls_config_free() drops it) and
 * marks it in use, so later changes to it are refused. */
void qrpci_tls_config_ref(qrpc_tls_config *cfg);

/* 0 if cfg can serve: it has a certificate, and a CA when it verifies
 * clients. Errors, logged with the cause: QRPC_ETLS (no certificate),
 * QRPC_EINVAL (client authentication without a CA). */
int qrpci_tls_config_check_server(const qrpc_tls_config *cfg);

/* Derives len bytes for label and n from the config's server key (one
 * made at random on first use when none was set): HKDF-Expand with
 * HMAC-SHA256. Any thread. Errors: QRPC_ESYSTEM, QRPC_EINVAL. */
int qrpci_tls_derive(qrpc_tls_config *cfg, const char *label, uint64_t n,
                     uint8_t *out, size_t len);

/* ---- Tickets and 0-RTT (tickets.c) -------------------------------------- */

/* A session ticket a client keeps: the backend's encoding of the session,
 * the server's transport parameters for 0-RTT, and what was known when it
 * arrived. */
typedef struct qrpci_ticket {
  struct qrpci_ticket *next;
  uint64_t expiry_s;  /* wall clock */
  int early;          /* the server allows 0-RTT with it */
  int verified;       /* the server's chain passed the built-in check */
  uint8_t *data;      /* backend's encoding */
  size_t len;
  uint8_t *tp;        /* ngtcp2's encoding of the 0-RTT parameters */
  size_t tplen;
  void *session;      /* the backend's decoded session, owned, or NULL:
                         resuming with it spares decoding data again */
} qrpci_ticket;

void qrpci_ticket_free(qrpci_ticket *t);

/* Client, from the backend: a ticket arrived on c (data is the backend's
 * encoding, copied; lifetime_s the server's lifetime hint). It goes into
 * the config's cache with the 0-RTT transport parameters, unless
 * resumption is off. session (may be NULL) is the backend's decoded form
 * of it, taken in every case (freed with qrpci_tlsb_session_drop() when
 * not kept). */
void qrpci_tls_ticket_received(qrpc_conn *c, const uint8_t *data, size_t len,
                               uint64_t lifetime_s, int early, void *session);

/* Client, before its first packet: takes a ticket for c's server from the
 * cache and hands it to the backend; with one that allows early data, sets
 * the server's remembered transport parameters. Returns 1 when 0-RTT can
 * be sent, 0 otherwise (a full handshake, or resumption without 0-RTT). */
int qrpci_tls_client_resume(qrpc_conn *c);

/* Server: whether a ticket (id: bytes unique to it, issued_s: when it was
 * issued) may carry early data now. Each ticket gets one yes, recorded for
 * long enough that a replay of its ClientHello is refused by this record
 * or by the ticket-age check of the TLS library; a ticket issued before
 * this config served (by a previous run, or a twin sharing the key) gets
 * no, since its first use may have been elsewhere; issued_s is UINT64_MAX
 * when the TLS library checked that itself. Any thread. */
int qrpci_tls_early_fresh(qrpc_tls_config *cfg, const uint8_t *id, size_t len,
                          uint64_t issued_s);

/* Frees the cache and the replay record of a config. */
void qrpci_tls_tickets_free(qrpc_tls_config *cfg);

/* ---- What a backend implements ---------------------------------------- */

/* The backend's part of a new config (cfg->be). Errors: QRPC_ENOMEM,
 * QRPC_ETLS. */
int qrpci_tlsb_new(qrpc_tls_config *cfg);
void qrpci_tlsb_free(qrpc_tls_config *cfg);
/* Loads the certificate chain and key, from files (files = 1) or PEM
 * strings, checking that they parse, match each other and are not
 * expired. Logs the file or the cause. Errors: QRPC_ETLS, QRPC_ENOMEM. */
int qrpci_tlsb_set_cert(qrpc_tls_config *cfg, const char *cert,
                        const char *key, int files);
/* Adds trusted CA certificates from a file or a PEM string. Errors:
 * QRPC_ETLS (unreadable, malformed, or no certificate in it). */
int qrpci_tlsb_add_ca(qrpc_tls_config *cfg, const char *ca, int file);

/* Creates c->tls for a client (server_name: SNI and the name verified) or
 * a server connection, and hands it to c->q. Errors: QRPC_ETLS,
 * QRPC_ENOMEM. */
int qrpci_tls_session_new(qrpc_tls_config *cfg, qrpc_conn *c, int server,
                          const char *server_name);
/* Frees c->tls, if any, once ngtcp2 no longer uses it. */
void qrpci_tls_session_free(qrpc_conn *c);

/* The handshake completed: copies the negotiated ALPN, the peer's chain
 * and, if it verified, its identity into c (they outlive the session).
 * Errors: QRPC_EALPN when the ALPN is not the config's; running out of
 * memory leaves the chain or identity empty. */
int qrpci_tls_handshake_done(qrpc_conn *c);

/* Client: sets the session in t (t->session, or else t->data decoded) on
 * c's TLS session, and asks for 0-RTT when early is 1. Errors: QRPC_ETLS
 * (the ticket cannot be used; a full handshake follows). */
int qrpci_tlsb_resume(qrpc_conn *c, const qrpci_ticket *t, int early);

/* Frees a decoded session that qrpci_tls_ticket_received() was given.
 * Any thread. */
void qrpci_tlsb_session_drop(void *session);

/* After the handshake: 1 if it resumed a session. */
int qrpci_tlsb_resumed(qrpc_conn *c);

/* Client, after the handshake: 1 if the server accepted its early data. */
int qrpci_tlsb_early_accepted(qrpc_conn *c);

/* out = HMAC-SHA256(key, data). Any thread. Errors: QRPC_ESYSTEM. */
int qrpci_tlsb_hmac(const uint8_t *key, size_t keylen, const uint8_t *data,
                    size_t len, uint8_t out[QRPCI_HMAC_LEN]);

/* Fills dest with len bytes from the TLS library's random generator, fit
 * for keys and connection ids. Any thread. Errors: QRPC_ESYSTEM. */
int qrpci_tls_rand(void *dest, size_t len);

/* ---- What backends share (tls.c) -------------------------------------- */

/* The last word on a peer's chain (chain[0] is the peer's): the built-in
 * verdict, the config's insecure flag (clients only), then its
 * verification callback. Sets c->peer_verified when the built-in check
 * passed and the chain was accepted, c->cert_rejected when it was refused.
 * Returns 1 to accept. */
int qrpci_tls_decide(qrpc_conn *c, int verified, const qrpc_cert *chain,
                     size_t n);

/* Our verification refused the peer's chain for reason why (a complete
 * phrase): it becomes the connection's close reason, and it is logged at
 * warning level when the config's last refusal said something else or a
 * verification has passed since, at info level otherwise, so a client
 * retrying against the wrong CA says why once, not on every attempt. */
void qrpci_tls_verify_failed(qrpc_conn *c, const char *why);

/* Logs, once per config, that a client connects without verification. */
void qrpci_tls_warn_insecure(qrpc_tls_config *cfg, const char *server_name);

/* 1 if name is an IPv4 or IPv6 address literal (never sent as SNI, and
 * verified against iPAddress entries). */
int qrpci_tls_is_ip_literal(const char *name);

/* The qrpc error a TLS alert stands for: QRPC_ECERT, QRPC_EALPN or
 * QRPC_ETLS. */
int qrpci_tls_alert_error(uint8_t alert);

/* Parts of a certificate's identity, borrowed from the backend. */
typedef enum qrpci_id_kind {
  QRPCI_ID_SUBJECT,
  QRPCI_ID_DNS,
  QRPCI_ID_URI,
  QRPCI_ID_EMAIL,
  QRPCI_ID_IP,
} qrpci_id_kind;

typedef struct qrpci_id_part {
  qrpci_id_kind kind;
  const char *ptr;
  size_t len;
} qrpci_id_part;

/* Packs parts into one allocation that holds the identity and copies of
 * its strings, each NUL-terminated; free() releases it. NULL when out of
 * memory. */
qrpc_identity *qrpci_identity_pack(const qrpci_id_part *parts, size_t n);

#endif
