/*
 * Session resumption over loopback UDP with real handshakes: a client
 * config keeps the tickets servers send and resumes the next connection
 * with one; servers that share a server key accept each other's tickets,
 * others fall back to a full handshake without an error; the ticket cache
 * survives a file, and a corrupted, expired or foreign file is ignored;
 * server key files are written private and refused when they are not.
 * Nothing here depends on the TLS backend.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "qrpc/qrpc.h"

static qt_certs certs;
static qrpc_loop *loop;
static char dir[256];

static void setup(void) {
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
  ck_assert_int_eq(qt_tmpdir_make(dir, sizeof(dir)), 0);
}

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
  qt_certs_free(&certs);
  qt_tmpdir_remove(dir);
}

static const uint8_t key_a[QRPC_SERVER_KEY_LEN] = {1, 2, 3, 4, 5};
static const uint8_t key_b[QRPC_SERVER_KEY_LEN] = {9, 8, 7, 6, 5};

/* A server config with the test certificate and, if key is not NULL,
 * that server key. */
static qrpc_tls_config *server_tls(const uint8_t *key) {
  qrpc_tls_config *cfg = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(cfg);
  if (key)
    ck_assert_int_eq(
        qrpc_tls_config_set_server_key(cfg, key, QRPC_SERVER_KEY_LEN), 0);
  return cfg;
}

typedef struct tickets_arg {
  qrpc_tls_config *cfg;
  size_t want;
} tickets_arg;

static int have_tickets(void *arg) {
  tickets_arg *t = arg;
  return qrpc_tls_config_tickets(t->cfg) >= t->want;
}

/* Connects a new client with ctls to srv, waits for the handshake on both
 * sides and, when want_tickets > 0, for that many tickets in the cache;
 * returns whether the client's connection resumed, and fills *server_resumed
 * from the server's side. The client is closed again. */
static int connect_once(qt_server *srv, qrpc_tls_config *ctls,
                        size_t want_tickets, int *server_resumed) {
  qt_client cl;
  ck_assert_int_eq(qt_client_connect_wait(&cl, loop, srv, ctls, NULL), 0);
  qrpc_conn_stats st, sst;
  qrpc_conn_get_stats(cl.conn, &st);
  ck_assert_ptr_nonnull(srv->last_conn);
  qrpc_conn_get_stats(srv->last_conn, &sst);
  if (server_resumed) *server_resumed = sst.resumed;
  ck_assert_int_eq(st.resumed, sst.resumed);
  if (want_tickets) {
    tickets_arg ta = {ctls, want_tickets};
    ck_assert_msg(qt_run_until(loop, have_tickets, &ta, QT_WAIT_MS),
                  "%zu tickets in the cache, %zu expected",
                  qrpc_tls_config_tickets(ctls), want_tickets);
  }
  qt_client_close(&cl);
  ck_assert(qt_run_until_count(loop, &cl.closed, 1, QT_WAIT_MS));
  return st.resumed;
}

START_TEST(test_resumes_with_a_ticket) {
  qrpc_tls_config *stls = server_tls(NULL);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  int sres = -1;
  ck_assert_int_eq(connect_once(&srv, ctls, 1, &sres), 0);
  ck_assert_int_eq(sres, 0);
  size_t before = qrpc_tls_config_tickets(ctls);
  /* The second connection uses a ticket (each once) and gets new ones. */
  ck_assert_int_eq(connect_once(&srv, ctls, 0, &sres), 1);
  ck_assert_int_eq(sres, 1);
  ck_assert_uint_ge(before, 1);
  /* The resumed server still knows its peer's certificate chain: the
   * client's verification of it carried over with the session. */
  ck_assert_int_eq(connect_once(&srv, ctls, 0, NULL), 1);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

/* A chain of connections with one config, each made after the last one
 * closed: every one after the first resumes, because a resumed connection
 * gets a fresh ticket for the one it used (each ticket is used once). */
#define CHAIN_LEN 5

START_TEST(test_chain_resumes) {
  qrpc_tls_config *stls = server_tls(NULL);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(connect_once(&srv, ctls, 1, NULL), 0);
  for (int i = 1; i < CHAIN_LEN; i++) {
    size_t before = qrpc_tls_config_tickets(ctls);
    ck_assert_uint_ge(before, 1);
    int sres = -1;
    /* It uses one ticket and must leave at least as many as it found. */
    ck_assert_msg(connect_once(&srv, ctls, before, &sres) == 1,
                  "connection %d of the chain did not resume", i + 1);
    ck_assert_int_eq(sres, 1);
  }
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

START_TEST(test_resumption_off_keeps_nothing) {
  qrpc_tls_config *stls = server_tls(NULL);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  ck_assert_int_eq(qrpc_tls_config_set_resumption(ctls, 0), 0);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(connect_once(&srv, ctls, 0, NULL), 0);
  qt_run_for(loop, 100);
  ck_assert_uint_eq(qrpc_tls_config_tickets(ctls), 0);
  ck_assert_int_eq(connect_once(&srv, ctls, 0, NULL), 0);
  ck_assert_int_eq(qrpc_tls_config_set_resumption(ctls, 1), QRPC_ESTATE);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

/* A ticket from a server, then a different server on the same address:
 * with the same server key it resumes, with another key it does a full
 * handshake without an error. */
static int resumes_after_restart(const uint8_t *first, const uint8_t *second) {
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_tls_config *s1 = server_tls(first);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", s1, NULL), 0);
  char bind[64];
  snprintf(bind, sizeof(bind), "127.0.0.1:%u", srv.port);
  ck_assert_int_eq(connect_once(&srv, ctls, 1, NULL), 0);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(s1);

  qrpc_tls_config *s2 = server_tls(second);
  ck_assert_int_eq(qt_server_start(&srv, loop, bind, s2, NULL), 0);
  int resumed = connect_once(&srv, ctls, 0, NULL);
  ck_assert_int_eq(srv.established, 1);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(s2);
  qrpc_tls_config_free(ctls);
  return resumed;
}

START_TEST(test_shared_server_key_resumes) {
  ck_assert_int_eq(resumes_after_restart(key_a, key_a), 1);
}
END_TEST

START_TEST(test_other_server_key_full_handshake) {
  ck_assert_int_eq(resumes_after_restart(key_a, key_b), 0);
  /* A server without a key makes its own: a restart forgets tickets. */
  ck_assert_int_eq(resumes_after_restart(NULL, NULL), 0);
}
END_TEST

START_TEST(test_cache_file_roundtrip) {
  qrpc_tls_config *stls = server_tls(NULL);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(connect_once(&srv, ctls, 1, NULL), 0);
  char path[512];
  snprintf(path, sizeof(path), "%s/tickets", dir);
  int saved = qrpc_tls_config_save_tickets(ctls, path);
  ck_assert_int_ge(saved, 1);
  ck_assert_int_eq(saved, (int)qrpc_tls_config_tickets(ctls));
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_int_eq(st.st_mode & 0777, 0600);

  /* A new process's config: the file makes its first connection resume. */
  qrpc_tls_config *fresh = qt_client_tls(certs.ca_pem);
  ck_assert_int_eq(qrpc_tls_config_load_tickets(fresh, path), saved);
  ck_assert_int_eq(connect_once(&srv, fresh, 0, NULL), 1);

  /* A missing file is a first run: nothing, no error. */
  char missing[512];
  snprintf(missing, sizeof(missing), "%s/none", dir);
  qrpc_tls_config *other = qt_client_tls(certs.ca_pem);
  ck_assert_int_eq(qrpc_tls_config_load_tickets(other, missing), 0);
  ck_assert_int_eq(connect_once(&srv, other, 0, NULL), 0);

  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(other);
  qrpc_tls_config_free(fresh);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

/* Reads path, lets edit change the text, writes it back. */
static void rewrite(const char *path, void (*edit)(char *text)) {
  FILE *f = fopen(path, "r");
  ck_assert_ptr_nonnull(f);
  static char text[1 << 16];
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  fclose(f);
  text[n] = '\0';
  edit(text);
  ck_assert_int_eq(qt_file_write(path, text), 0);
}

/* Flips a hex digit in the middle of the first ticket. */
static void corrupt(char *text) {
  char *line = strchr(text, '\n');
  ck_assert_ptr_nonnull(line);
  char *p = line + strlen(line) / 2;
  while (*p == ' ' || *p == '\n') p++;
  *p = *p == 'g' ? 'h' : 'g'; /* not a hex digit */
}

/* Sets every ticket's expiry to the past. */
static void expire(char *text) {
  for (char *line = strchr(text, '\n'); line && line[1];
       line = strchr(line + 1, '\n')) {
    char *exp = strchr(line + 1, ' ') + 1;
    char *end = strchr(exp, ' ');
    memset(exp, '0', (size_t)(end - exp));
    exp[0] = '1';
  }
}

static void other_backend(char *text) {
  char *sp = strchr(text, ' ');
  sp = strchr(sp + 1, ' ');
  memcpy(sp + 1, "nosuch", 6);
}

START_TEST(test_bad_cache_files_ignored) {
  qrpc_tls_config *stls = server_tls(NULL);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(connect_once(&srv, ctls, 1, NULL), 0);
  char path[512];
  snprintf(path, sizeof(path), "%s/tickets", dir);
  void (*edits[])(char *) = {corrupt, expire, other_backend};
  for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
    ck_assert_int_ge(qrpc_tls_config_save_tickets(ctls, path), 1);
    rewrite(path, edits[i]);
    qrpc_tls_config *fresh = qt_client_tls(certs.ca_pem);
    ck_assert_int_eq(qrpc_tls_config_load_tickets(fresh, path), 0);
    ck_assert_uint_eq(qrpc_tls_config_tickets(fresh), 0);
    /* And it still connects, with a full handshake. */
    ck_assert_int_eq(connect_once(&srv, fresh, 0, NULL), 0);
    qrpc_tls_config_free(fresh);
  }
  /* Not a cache at all. */
  ck_assert_int_eq(qt_file_write(path, "hello\n"), 0);
  qrpc_tls_config *fresh = qt_client_tls(certs.ca_pem);
  ck_assert_int_eq(qrpc_tls_config_load_tickets(fresh, path), 0);
  qrpc_tls_config_free(fresh);
  ck_assert_int_eq(qrpc_tls_config_load_tickets(NULL, path), QRPC_EINVAL);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
}
END_TEST

START_TEST(test_server_key_files) {
  char path[512];
  snprintf(path, sizeof(path), "%s/server.key", dir);
  ck_assert_int_eq(qrpc_server_key_write(path), 0);
  struct stat st;
  ck_assert_int_eq(stat(path, &st), 0);
  ck_assert_int_eq(st.st_mode & 0777, 0600);
  /* Never overwritten. */
  ck_assert_int_eq(qrpc_server_key_write(path), QRPC_EADDRINUSE);

  /* Two servers loading the file accept each other's tickets. */
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_tls_config *s1 = qt_server_tls(&certs);
  ck_assert_int_eq(qrpc_tls_config_load_server_key(s1, path), 0);
  qt_server srv;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", s1, NULL), 0);
  char bind[64];
  snprintf(bind, sizeof(bind), "127.0.0.1:%u", srv.port);
  ck_assert_int_eq(connect_once(&srv, ctls, 1, NULL), 0);
  qt_close_all(loop, &srv, NULL, 0);
  qrpc_tls_config_free(s1);
  qrpc_tls_config *s2 = qt_server_tls(&certs);
  ck_assert_int_eq(qrpc_tls_config_load_server_key(s2, path), 0);
  ck_assert_int_eq(qt_server_start(&srv, loop, bind, s2, NULL), 0);
  ck_assert_int_eq(connect_once(&srv, ctls, 0, NULL), 1);
  qt_close_all(loop, &srv, NULL, 0);
  /* In use: no more changes. */
  ck_assert_int_eq(qrpc_tls_config_load_server_key(s2, path), QRPC_ESTATE);
  qrpc_tls_config_free(s2);
  qrpc_tls_config_free(ctls);

  qrpc_tls_config *cfg = qt_server_tls(&certs);
  /* Readable by others: refused. */
  ck_assert_int_eq(chmod(path, 0644), 0);
  ck_assert_int_eq(qrpc_tls_config_load_server_key(cfg, path), QRPC_ETLS);
  /* Malformed. */
  char bad[512];
  snprintf(bad, sizeof(bad), "%s/bad.key", dir);
  ck_assert_int_eq(qt_file_write(bad, "qrpc-server-key 1\nxyz\n"), 0);
  ck_assert_int_eq(chmod(bad, 0600), 0);
  ck_assert_int_eq(qrpc_tls_config_load_server_key(cfg, bad), QRPC_ETLS);
  snprintf(bad, sizeof(bad), "%s/missing.key", dir);
  ck_assert_int_eq(qrpc_tls_config_load_server_key(cfg, bad), QRPC_ESYSTEM);
  ck_assert_int_eq(qrpc_tls_config_set_server_key(cfg, key_a, 3), QRPC_EINVAL);
  qrpc_tls_config_free(cfg);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("quic_resume");
  TCase *tc = tcase_create("resume");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_resumes_with_a_ticket);
  tcase_add_test(tc, test_chain_resumes);
  tcase_add_test(tc, test_resumption_off_keeps_nothing);
  tcase_add_test(tc, test_shared_server_key_resumes);
  tcase_add_test(tc, test_other_server_key_full_handshake);
  tcase_add_test(tc, test_cache_file_roundtrip);
  tcase_add_test(tc, test_bad_cache_files_ignored);
  tcase_add_test(tc, test_server_key_files);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
