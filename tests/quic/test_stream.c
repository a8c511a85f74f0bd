/*
 * End-to-end raw stream tests over loopback UDP: many streams, names, bulk
 * transfer with back-pressure, a paused reader, FIN, resets, acks and the
 * argument checks of qrpc_stream_open().
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"

#define MIB (1024u * 1024u)

static qt_certs certs;
static qrpc_loop *loop;

static void setup(void) {
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
}

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
  qt_certs_free(&certs);
}

/* ---- Many streams ---------------------------------------------------- */

#define MANY_STREAMS 1000

typedef struct many {
  qrpc_conn *conn;
  qt_xfer *x;
  qt_xfer_stats st;
  int next;
  int elimit;
  int other_error;
  int max_open;
} many;

/* Opens streams until the peer's limit says wait; the loop runs between
 * calls, and closed streams return credit. */
static int many_pump(void *arg) {
  many *m = arg;
  while (m->next < MANY_STREAMS && !m->other_error) {
    /* Sizes from 1 byte to a few packets, so both single-packet and
     * multi-packet streams are exercised. */
    uint64_t len = 1 + ((uint64_t)m->next * 7919u) % 6000u;
    int rv = qt_xfer_start(&m->x[m->next], m->conn, "echo", len,
                           1000u + (uint64_t)m->next, 0, &m->st);
    if (rv == QRPC_ELIMIT) {
      m->elimit++;
      break;
    }
    if (rv != 0) {
      m->other_error = rv;
      break;
    }
    m->next++;
    if (m->st.opened - m->st.closed > m->max_open)
      m->max_open = m->st.opened - m->st.closed;
  }
  return m->st.closed == MANY_STREAMS || m->other_error;
}

START_TEST(test_stream_many_echoed) {
  qt_server srv;
  qt_client cl;
  many m;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  memset(&m, 0, sizeof(m));
  m.conn = cl.conn;
  m.x = calloc(MANY_STREAMS, sizeof(*m.x));
  ck_assert_ptr_nonnull(m.x);

  ck_assert_msg(qt_run_until(loop, many_pump, &m, 30000),
                "only %d of %d streams finished", m.st.closed, MANY_STREAMS);
  ck_assert_msg(m.other_error == 0, "qrpc_stream_open: %s",
                qrpc_strerror(m.other_error));
  ck_assert_int_eq(m.st.opened, MANY_STREAMS);
  ck_assert_int_eq(m.st.ok, MANY_STREAMS);
  ck_assert_int_eq(m.st.failed, 0);
  /* The default peer limit is 100 streams: more at once must be refused
   * with QRPC_ELIMIT, never queued past it. */
  ck_assert_int_gt(m.elimit, 0);
  ck_assert_int_le(m.max_open, 100);

  ck_assert(
      qt_run_until_count(loop, &srv.streams_closed, MANY_STREAMS, QT_WAIT_MS));
  ck_assert_int_eq(srv.streams, MANY_STREAMS);
  ck_assert_int_eq(srv.stream_fins, MANY_STREAMS);
  ck_assert_int_eq(srv.stream_read_after_fin, 0);
  ck_assert_int_eq(srv.stream_write_errors, 0);
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
  free(m.x);
}
END_TEST

/* ---- Names ----------------------------------------------------------- */

/* Opens a stream called name and checks the server saw exactly that. */
static void check_name_arrives(qt_server *srv, qt_client *cl,
                               const char *name) {
  qt_xfer x;
  int before = srv->streams;
  ck_assert_int_eq(qt_xfer_start(&x, cl->conn, name, 100, 3, 0, NULL), 0);
  ck_assert_ptr_eq(qrpc_stream_conn(x.s), cl->conn);
  ck_assert_ptr_eq(qrpc_stream_user_data(x.s), &x);
  /* A client-initiated bidirectional stream (RFC 9000 section 2.1). */
  ck_assert_int_eq(qrpc_stream_id(x.s) % 4, 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);
  ck_assert_int_eq(srv->streams, before + 1);
  ck_assert_uint_eq(srv->last_name_len, strlen(name));
  ck_assert_mem_eq(srv->last_name, name, strlen(name));
}

START_TEST(test_stream_name_reaches_server) {
  qt_server srv;
  qt_client cl;
  char longest[256];

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  check_name_arrives(&srv, &cl, "echo");
  check_name_arrives(&srv, &cl, "e");
  check_name_arrives(&srv, &cl,
                     "echo/\xe5\x90\x8d\xe5\x89\x8d-\xc3\xbc-\xf0\x9f\x9a\x80");
  memset(longest, 'x', 255);
  memcpy(longest, "echo", 4);
  longest[255] = '\0';
  check_name_arrives(&srv, &cl, longest);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_stream_invalid_names) {
  static const qrpc_stream_callbacks cbs;
  static const char *const bad[] = {
      "",
      "\xff",
      "a\xc0\x80",         /* overlong NUL */
      "a\xe2\x82",         /* truncated sequence */
      "a\xed\xa0\x80",     /* UTF-16 surrogate */
      "a\x80",             /* stray continuation byte */
      "a\xf4\x90\x80\x80", /* above U+10FFFF */
  };
  qt_server srv;
  qt_client cl;
  qrpc_stream *s = NULL;
  char name[300];
  size_t i;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    ck_assert_msg(qrpc_stream_open(cl.conn, bad[i], &cbs, NULL, &s) ==
                      QRPC_EINVAL,
                  "name %zu was accepted", i);
  ck_assert_int_eq(qrpc_stream_open(cl.conn, NULL, &cbs, NULL, &s),
                   QRPC_EINVAL);
  memset(name, 'n', 256);
  name[256] = '\0';
  ck_assert_int_eq(qrpc_stream_open(cl.conn, name, &cbs, NULL, &s),
                   QRPC_EINVAL);
  /* 128 two-byte characters: 128 characters, but 256 bytes. */
  for (i = 0; i < 128; i++) memcpy(name + 2 * i, "\xc3\xa9", 2);
  name[256] = '\0';
  ck_assert_int_eq(qrpc_stream_open(cl.conn, name, &cbs, NULL, &s),
                   QRPC_EINVAL);
  ck_assert_ptr_null(s);
  ck_assert_int_eq(srv.streams, 0);
  qt_run_for(loop, 100);
  ck_assert_int_eq(srv.streams, 0);
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_stream_before_established) {
  static const qrpc_stream_callbacks cbs;
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qt_server srv;
  qt_client cl;
  qrpc_stream *s = NULL;

  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  ck_assert_int_eq(qrpc_stream_open(cl.conn, "echo", &cbs, NULL, &s),
                   QRPC_ESTATE);
  ck_assert_ptr_null(s);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* ---- Bulk ------------------------------------------------------------ */

START_TEST(test_stream_64mib_checksum) {
  const uint64_t total = 64u * MIB;
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_conn_opts copts;

  qrpc_conn_opts_default(&copts);
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &copts), 0);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "sink", total, 64, 0, NULL), 0);
  ck_assert_msg(qt_run_until_count(loop, &x.closes, 1, 90000),
                "stalled: %llu of %llu bytes written, server read %llu",
                (unsigned long long)x.sent, (unsigned long long)total,
                (unsigned long long)srv.bytes_in);
  ck_assert_int_eq(x.write_error, 0);
  ck_assert_uint_eq(x.sent, total);
  ck_assert_int_eq(srv.sinks_done, 1);
  ck_assert_uint_eq(srv.sink_bytes, total);
  ck_assert_uint_eq(srv.sink_hash, x.sent_hash);
  ck_assert(x.ok);
  /* 64 MiB cannot fit the 1 MiB send buffer: back-pressure must have been
   * applied and released, and never exceeded by more than one write. */
  ck_assert_int_gt(x.eagain, 0);
  ck_assert_int_gt(x.writables, 0);
  ck_assert_uint_le(x.max_buffered, copts.stream_send_buffer + x.max_chunk);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* An echo larger than both send buffers: the server's writes are refused
 * too, so its reading pauses and resumes while the client reads back. */
START_TEST(test_stream_echo_backpressure) {
  const uint64_t total = 4u * MIB;
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_endpoint_opts sopts;

  qrpc_endpoint_opts_default(&sopts);
  sopts.conn.stream_send_buffer = 64u * 1024u;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &cl, NULL), 0);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", total, 65, 0, NULL), 0);
  ck_assert_msg(qt_run_until_count(loop, &x.closes, 1, 30000),
                "stalled: %llu written, %llu echoed",
                (unsigned long long)x.sent, (unsigned long long)x.recvd);
  ck_assert(x.ok);
  ck_assert_uint_eq(x.recvd, total);
  ck_assert_int_gt(srv.stream_eagains, 0);
  ck_assert_int_eq(srv.stream_write_errors, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

typedef struct paused_run {
  qt_xfer *x;
  qt_server *srv;
  size_t max_buffered;
  size_t heap_peak;
} paused_run;

/* Keeps the writer pushing and samples its buffer and the heap. */
static int paused_pump(void *arg) {
  paused_run *p = arg;
  size_t heap;
  qt_xfer_pump(p->x);
  if (p->x->s && qrpc_stream_buffered(p->x->s) > p->max_buffered)
    p->max_buffered = qrpc_stream_buffered(p->x->s);
  heap = qt_heap_in_use();
  if (heap > p->heap_peak) p->heap_peak = heap;
  return p->x->closes > 0;
}

START_TEST(test_stream_paused_reader) {
  const uint64_t total = 8u * MIB;
  const size_t send_buffer = 256u * 1024u;
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_conn_opts copts;
  qrpc_endpoint_opts sopts;
  paused_run p;
  size_t heap0;

  qrpc_conn_opts_default(&copts);
  copts.stream_send_buffer = send_buffer;
  qrpc_endpoint_opts_default(&sopts);
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &cl, &copts), 0);
  heap0 = qt_heap_in_use();

  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "paused", total, 77, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &srv.streams, 1, QT_WAIT_MS));
  ck_assert_ptr_nonnull(srv.last_stream);

  /* One second of a writer pushing against a reader that does not read. */
  memset(&p, 0, sizeof(p));
  p.x = &x;
  p.srv = &srv;
  qt_run_until(loop, paused_pump, &p, 1000);
  ck_assert_int_eq(x.closes, 0);
  ck_assert_int_eq(x.write_error, 0);
  ck_assert_int_gt(x.eagain, 0);
  ck_assert_uint_lt(x.sent, total);
  ck_assert_uint_le(p.max_buffered, send_buffer + x.max_chunk);
  ck_assert_uint_le(x.max_buffered, send_buffer + x.max_chunk);
  /* Without returned credit the peer holds at most its stream window;
   * everything else stays in our bounded buffer. */
  ck_assert_uint_le(x.sent,
                    sopts.conn.stream_window + send_buffer + 2 * x.max_chunk);
  ck_assert_uint_eq(srv.bytes_in, 0);
  if (!qt_asan_enabled())
    ck_assert_msg(p.heap_peak < heap0 + 4 * MIB,
                  "heap grew by %zu bytes while the reader was paused",
                  p.heap_peak - heap0);

  qrpc_stream_pause_read(srv.last_stream, 0);
  ck_assert_msg(qt_run_until_count(loop, &x.closes, 1, 30000),
                "stalled after resume: %llu of %llu bytes written",
                (unsigned long long)x.sent, (unsigned long long)total);
  ck_assert(x.ok);
  ck_assert_uint_eq(srv.sink_bytes, total);
  ck_assert_uint_eq(srv.sink_hash, x.sent_hash);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* ---- FIN, reset, acks, state ----------------------------------------- */

START_TEST(test_stream_fin_once) {
  qt_server srv;
  qt_client cl;
  qt_xfer x, empty;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 100000, 5, 0, NULL), 0);
  /* A stream with no payload at all: FIN arrives with len 0. */
  ck_assert_int_eq(qt_xfer_start(&empty, cl.conn, "echo", 0, 6, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &srv.streams_closed, 2, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &empty.closes, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_int_eq(x.fins, 1);
  ck_assert_int_eq(x.read_after_fin, 0);
  ck_assert_int_eq(x.closes, 1);
  ck_assert(x.ok);
  ck_assert_int_eq(empty.fins, 1);
  ck_assert_uint_eq(empty.recvd, 0);
  ck_assert_int_eq(empty.closes, 1);
  ck_assert(empty.ok);
  ck_assert_int_eq(srv.streams, 2);
  ck_assert_int_eq(srv.stream_fins, 2);
  ck_assert_int_eq(srv.stream_read_after_fin, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

typedef struct echo_wait {
  qt_server *srv;
  qt_xfer *x;
  uint64_t bytes;
} echo_wait;

static int echoed_back(void *arg) {
  echo_wait *w = arg;
  return w->x->recvd >= w->bytes || w->x->closes > 0;
}

START_TEST(test_stream_reset_by_client) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  echo_wait w = {&srv, &x, 1000};

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(
      qt_xfer_start(&x, cl.conn, "echo", 1000, 8, QT_XFER_NO_FINISH, NULL), 0);
  /* The bytes came back, so the server has the stream open. */
  ck_assert(qt_run_until(loop, echoed_back, &w, QT_WAIT_MS));
  ck_assert_int_eq(x.closes, 0);
  ck_assert_int_eq(qrpc_stream_reset(x.s, 0x77), 0);
  ck_assert(qt_run_until_count(loop, &srv.stream_resets, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &srv.streams_closed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_int_eq(srv.stream_resets, 1);
  ck_assert_uint_eq(srv.last_reset_code, 0x77);
  ck_assert_int_le(srv.stream_stop_sendings, 1);
  ck_assert_int_eq(srv.stream_fins, 0);
  ck_assert_int_eq(srv.streams_closed, 1);
  ck_assert_int_eq(x.closes, 1);
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_stream_reset_by_server) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(
      qt_xfer_start(&x, cl.conn, "reset", 1000, 9, QT_XFER_NO_FINISH, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_int_eq(x.resets, 1);
  ck_assert_uint_eq(x.reset_code, QT_SERVER_RESET_CODE);
  ck_assert_int_le(x.stop_sendings, 1);
  ck_assert_int_eq(x.fins, 0);
  ck_assert_int_eq(x.closes, 1);
  ck_assert_int_ne(x.close_error, 0);
  ck_assert(qt_run_until_count(loop, &srv.streams_closed, 1, QT_WAIT_MS));
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

static int all_acked(void *arg) {
  qt_xfer *x = arg;
  return x->acked >= x->len || x->closes > 0;
}

START_TEST(test_stream_acked_offsets) {
  const uint64_t total = 3u * MIB;
  qt_server srv;
  qt_client cl;
  qt_xfer open_x, bulk;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);

  /* Still open: once everything is acknowledged nothing stays buffered. */
  ck_assert_int_eq(qt_xfer_start(&open_x, cl.conn, "echo", 200000, 10,
                                 QT_XFER_NO_FINISH, NULL),
                   0);
  ck_assert(qt_run_until(loop, all_acked, &open_x, QT_WAIT_MS));
  ck_assert_int_eq(open_x.closes, 0);
  ck_assert_uint_eq(open_x.acked, 200000);
  ck_assert_uint_eq(qrpc_stream_buffered(open_x.s), 0);
  ck_assert_int_eq(qrpc_stream_finish(open_x.s), 0);
  open_x.finished = 1;
  ck_assert(qt_run_until_count(loop, &open_x.closes, 1, QT_WAIT_MS));
  ck_assert(open_x.ok);
  ck_assert_int_eq(open_x.acked_backwards, 0);

  /* Through back-pressure: the last offset is the byte count written. */
  ck_assert_int_eq(qt_xfer_start(&bulk, cl.conn, "sink", total, 11, 0, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &bulk.closes, 1, 30000));
  ck_assert(bulk.ok);
  ck_assert_uint_eq(bulk.acked, total);
  ck_assert_int_eq(bulk.acked_backwards, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_stream_write_after_finish) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 10, 12, 0, NULL), 0);
  /* The loop has not run: the stream cannot have closed yet. */
  ck_assert(x.finished);
  ck_assert_ptr_nonnull(x.s);
  ck_assert_int_eq(qrpc_stream_write(x.s, "late", 4), QRPC_ESTATE);
  ck_assert_int_eq(qrpc_stream_finish(x.s), QRPC_ESTATE);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  /* The refused write must not have reached the peer. */
  ck_assert(x.ok);
  ck_assert_uint_eq(srv.bytes_in, 10);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

static Suite *stream_suite(void) {
  Suite *s = suite_create("quic_stream");
  TCase *tc = tcase_create("stream");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_stream_many_echoed);
  tcase_add_test(tc, test_stream_name_reaches_server);
  tcase_add_test(tc, test_stream_invalid_names);
  tcase_add_test(tc, test_stream_before_established);
  tcase_add_test(tc, test_stream_64mib_checksum);
  tcase_add_test(tc, test_stream_echo_backpressure);
  tcase_add_test(tc, test_stream_paused_reader);
  tcase_add_test(tc, test_stream_fin_once);
  tcase_add_test(tc, test_stream_reset_by_client);
  tcase_add_test(tc, test_stream_reset_by_server);
  tcase_add_test(tc, test_stream_acked_offsets);
  tcase_add_test(tc, test_stream_write_after_finish);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(stream_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
