/*
 * End-to-end tests of the generated datagram stubs (tests/codegen/proto/
 * cg/dgram.proto) between a real server and two clients over loopback
 * QUIC: typed send in both directions, encode-once broadcast, the channel
 * options the IDL sets ((qrpc.latest_only), (qrpc.max_age_ms)), the size
 * and queue refusals, and payloads that do not decode (dropped, counted,
 * the connection unharmed); snapshot channels ((qrpc.snapshot_ring),
 * (qrpc.snapshot_key)): a server's world tick by tick, mostly as deltas,
 * arriving whole and equal to what was sent.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cg/dgram.qrpc.h"
#include "cg/shapes.qrpc.h"
#include "harness.h"
#include "qrpc/qrpc.h"
#include "util/varint.h"

typedef Qrpc__Test__Dgram__PlayerInput Input;
typedef Qrpc__Test__Dgram__WorldState State;
typedef Qrpc__Test__Dgram__World World;
typedef Qrpc__Test__Dgram__Entity Entity;

#define INPUT_CH qrpc_test_dgram_Sync_Input_METHOD_ID
#define STATE_CH qrpc_test_dgram_Sync_State_METHOD_ID
#define SNAPSHOT_CH qrpc_test_dgram_Sync_Snapshot_METHOD_ID
#define FRAME_CH qrpc_test_dgram_Sync_Frame_METHOD_ID
#define SCORES_CH qrpc_test_dgram_Sync_Scores_METHOD_ID
#define TOTALS_CH qrpc_test_dgram_Sync_Totals_METHOD_ID
#define NCLI 2
#define MAX_SEEN 64

static const uint8_t garbage[] = {0xff, 0xff, 0xff};

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_server *srv;

/* ---- Server side: inputs, and which peer is which player ----------------- */

typedef struct server_seen {
  int inputs;
  uint64_t seqs[MAX_SEEN];
  int dx[MAX_SEEN];
  qrpc_peer *player_peer[NCLI + 1]; /* by player number, 1 and 2 */
  int foreign;                      /* a handler got another user_data */
} server_seen;

static server_seen ss;

static void on_input(qrpc_peer *peer, uint64_t seq, const Input *msg,
                     void *ud) {
  server_seen *s = ud;
  if (s != &ss) s->foreign++;
  if (s->inputs < MAX_SEEN) {
    s->seqs[s->inputs] = seq;
    s->dx[s->inputs] = msg->dx;
  }
  s->inputs++;
  if (msg->player >= 1 && msg->player <= NCLI)
    s->player_peer[msg->player] = peer;
}

static const qrpc_test_dgram_Sync_handlers server_handlers = {
    .user_data = &ss,
    .Input = on_input,
};

/* ---- Client side: states ------------------------------------------------- */

typedef struct client_side {
  qrpc_client *cli;
  int connected;
  int states;
  uint64_t seqs[MAX_SEEN];
  uint64_t ticks[MAX_SEEN];
  size_t last_blob;
  int snapshots;
  size_t snapshot_blob;
  int frames;       /* snapshot channel Frame: states handed over */
  int frames_wrong; /* of them, not the world the server made at seq */
  uint64_t frame_tick;
  qrpc_test_dgram_Sync_handlers h; /* borrowed by the client until freed */
} client_side;

static client_side cl[NCLI];

static void on_state(qrpc_peer *peer, uint64_t seq, const State *msg,
                     void *ud) {
  client_side *c = ud;
  if (c->states < MAX_SEEN) {
    c->seqs[c->states] = seq;
    c->ticks[c->states] = msg->tick;
  }
  c->states++;
  c->last_blob = msg->blob.len;
}

static void on_snapshot(qrpc_peer *peer, uint64_t seq, const State *msg,
                        void *ud) {
  client_side *c = ud;
  c->snapshots++;
  c->snapshot_blob = msg->blob.len;
  for (size_t k = 0; k < msg->blob.len; k++)
    if (msg->blob.data[k] != (uint8_t)(k * 7)) c->snapshot_blob = 0;
}

/* The world of the snapshot channel at a tick, built the same way on both
 * sides: 60 entities, three moving each tick, one added at tick 6
 * (after the others, where a delta appends it) and one gone from tick 9,
 * and the map renamed at tick 11. x repeats across entities, so only
 * keying by id (the IDL's "entities.id") tells them apart. */
#define WORLD_MAX 64

typedef struct world_buf {
  World w;
  Entity e[WORLD_MAX];
  Entity *pe[WORLD_MAX];
  char names[WORLD_MAX][16];
} world_buf;

static void world_at(uint64_t tick, world_buf *b) {
  b->w = (World)QRPC__TEST__DGRAM__WORLD__INIT;
  b->w.tick = tick;
  b->w.map = tick >= 11 ? "arena-2" : "arena";
  size_t n = 0;
  for (uint32_t id = 1; id <= 61; id++) {
    uint32_t eid = id == 61 ? 1000 : id;
    if ((id == 61 && tick < 6) || (id == 30 && tick >= 9)) continue;
    Entity *e = &b->e[n];
    *e = (Entity)QRPC__TEST__DGRAM__ENTITY__INIT;
    e->id = eid;
    e->x = (int32_t)(id % 3);
    /* y counts the ticks that moved the entity: those equal to its id
     * modulo 20, three entities a tick. */
    int32_t moves = 0;
    for (uint64_t t = 1; t <= tick; t++)
      if (t % 20 == id % 20) moves++;
    e->y = moves - 1;
    snprintf(b->names[n], sizeof(b->names[n]), "e%u", (unsigned)eid);
    e->name = b->names[n];
    b->pe[n] = e;
    n++;
  }
  b->w.n_entities = n;
  b->w.entities = b->pe;
}

static int worlds_equal(const World *a, const World *b) {
  if (a->tick != b->tick || strcmp(a->map, b->map) != 0 ||
      a->n_entities != b->n_entities)
    return 0;
  for (size_t i = 0; i < a->n_entities; i++) {
    const Entity *x = a->entities[i], *y = b->entities[i];
    if (x->id != y->id || x->x != y->x || x->y != y->y ||
        strcmp(x->name, y->name) != 0)
      return 0;
  }
  return 1;
}

static void on_frame(qrpc_peer *peer, uint64_t seq, const World *msg,
                     void *ud) {
  client_side *c = ud;
  static world_buf want;
  world_at(seq, &want);
  if (!worlds_equal(msg, &want.w) || seq <= c->frame_tick) c->frames_wrong++;
  c->frame_tick = seq;
  c->frames++;
}

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  ((client_side *)ud)->connected = 1;
}

static int all_connected(void *arg) {
  for (int i = 0; i < NCLI; i++)
    if (!cl[i].connected) return 0;
  return 1;
}

static void setup(void) {
  memset(&ss, 0, sizeof(ss));
  memset(cl, 0, sizeof(cl));
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
  qrpc_tls_config *stls = qt_server_tls(&certs);
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", stls, NULL, &srv), 0);
  qrpc_tls_config_free(stls);
  ck_assert_int_eq(qrpc_test_dgram_Sync_register(srv, &server_handlers), 0);

  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)qrpc_server_port(srv));
  for (int i = 0; i < NCLI; i++) {
    qrpc_client_opts co;
    qrpc_client_opts_default(&co);
    co.server_name = "localhost";
    co.on_connect = on_connect;
    co.user_data = &cl[i];
    qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
    ck_assert_int_eq(qrpc_client_new(loop, addr, ctls, &co, &cl[i].cli), 0);
    qrpc_tls_config_free(ctls);
    cl[i].h.user_data = &cl[i];
    cl[i].h.State = on_state;
    cl[i].h.Snapshot = on_snapshot;
    cl[i].h.Frame = on_frame;
    ck_assert_int_eq(qrpc_test_dgram_Sync_register_client(cl[i].cli, &cl[i].h),
                     0);
  }
  ck_assert(qt_run_until(loop, all_connected, NULL, QT_WAIT_MS));
}

static void teardown(void) {
  for (int i = 0; i < NCLI; i++) qrpc_client_free(cl[i].cli);
  qrpc_server_free(srv);
  srv = NULL;
  qt_run_until_released(loop, QT_WAIT_MS);
  qrpc_loop_free(loop);
  loop = NULL;
}

/* ---- Helpers ------------------------------------------------------------- */

static qrpc_peer *peer_of(int i) { return qrpc_client_peer(cl[i].cli); }

static int player_known(void *arg) {
  return ss.player_peer[*(int *)arg] != NULL;
}

/* Client i announces itself with an input; returns the server's peer for
 * it, learnt from that input. */
static qrpc_peer *join(int i) {
  int player = i + 1;
  Input in = QRPC__TEST__DGRAM__PLAYER_INPUT__INIT;
  in.player = (uint32_t)player;
  ck_assert_int_eq(qrpc_test_dgram_Sync_Input_send(peer_of(i), &in), 0);
  ck_assert(qt_run_until(loop, player_known, &player, QT_WAIT_MS));
  return ss.player_peer[player];
}

static int states_at_least(void *arg) {
  const int *want = arg;
  for (int i = 0; i < NCLI; i++)
    if (cl[i].states < want[i]) return 0;
  return 1;
}

static void wait_states(int a, int b) {
  int want[NCLI] = {a, b};
  ck_assert_msg(qt_run_until(loop, states_at_least, want, QT_WAIT_MS),
                "states: %d and %d, expected %d and %d", cl[0].states,
                cl[1].states, a, b);
}

/* Sends a hand-built datagram (Channel, Seq, payload) on the raw
 * connection, to choose the Seq. */
static void send_raw(qrpc_peer *p, uint32_t ch, uint64_t seq,
                     const ProtobufCMessage *msg) {
  uint8_t buf[256];
  size_t n = qrpci_varint_put(buf, ch);
  n += qrpci_varint_put(buf + n, seq);
  ck_assert_uint_le(protobuf_c_message_get_packed_size(msg), sizeof(buf) - n);
  n += protobuf_c_message_pack(msg, buf + n);
  ck_assert_int_eq(qrpc_conn_send_datagram(qrpc_peer_conn(p), buf, n), 0);
}

/* ---- Typed send, both ways ----------------------------------------------- */

START_TEST(test_send_both_ways) {
  /* Client to server: the handler gets the decoded message and its Seq
   * (the client's first on the channel). */
  Input in = QRPC__TEST__DGRAM__PLAYER_INPUT__INIT;
  in.player = 1;
  in.dx = -3;
  in.dy = 4;
  ck_assert_int_eq(qrpc_test_dgram_Sync_Input_send(peer_of(0), &in), 0);
  ck_assert(qt_run_until_count(loop, &ss.inputs, 1, QT_WAIT_MS));
  ck_assert_uint_eq(ss.seqs[0], 1);
  ck_assert_int_eq(ss.dx[0], -3);
  ck_assert_ptr_nonnull(ss.player_peer[1]);
  ck_assert_int_eq(ss.foreign, 0);

  /* Server to that client only. */
  State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
  st.tick = 7;
  st.blob.data = (uint8_t *)"abc";
  st.blob.len = 3;
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_send(ss.player_peer[1], &st), 0);
  wait_states(1, 0);
  qt_run_for(loop, 50);
  ck_assert_int_eq(cl[0].states, 1);
  ck_assert_int_eq(cl[1].states, 0);
  ck_assert_uint_eq(cl[0].ticks[0], 7);
  ck_assert_uint_eq(cl[0].last_blob, 3);

  qrpc_dgram_stats s;
  qrpc_peer_dgram_stats(peer_of(0), STATE_CH, &s);
  ck_assert_uint_eq(s.received, 1);
  ck_assert_uint_eq(s.delivered, 1);
  ck_assert_uint_eq(s.dropped_undecodable, 0);
  qrpc_peer_dgram_stats(ss.player_peer[1], STATE_CH, &s);
  ck_assert_uint_eq(s.sent, 1);
}
END_TEST

START_TEST(test_argument_checks) {
  Input in = QRPC__TEST__DGRAM__PLAYER_INPUT__INIT;
  State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
  qrpc_dgram *d = NULL;
  ck_assert_int_eq(qrpc_test_dgram_Sync_Input_send(NULL, &in), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_dgram_Sync_Input_send(peer_of(0), NULL),
                   QRPC_EINVAL);
  /* A message of another type, by its descriptor. */
  ck_assert_int_eq(
      qrpc_test_dgram_Sync_Input_send(peer_of(0), (const Input *)&st),
      QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_encode(NULL, &st, &d),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_encode(srv, &st, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_encode(srv, NULL, &d),
                   QRPC_EINVAL);
  ck_assert_ptr_null(d);
  ck_assert_int_eq(qrpc_test_dgram_Sync_register(NULL, &server_handlers),
                   QRPC_EINVAL);
  qt_run_for(loop, 50);
  ck_assert_int_eq(ss.inputs, 0);
}
END_TEST

/* ---- Encode once, send to many ------------------------------------------- */

START_TEST(test_encode_once_broadcast) {
  qrpc_peer *p[NCLI] = {join(0), join(1)};
  ck_assert_ptr_ne(p[0], p[1]);
  for (uint64_t tick = 1; tick <= 3; tick++) {
    State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
    st.tick = 100 + tick;
    qrpc_dgram *d = NULL;
    ck_assert_int_eq(qrpc_test_dgram_Sync_State_encode(srv, &st, &d), 0);
    for (int i = 0; i < NCLI; i++)
      ck_assert_int_eq(qrpc_peer_send_encoded(p[i], d), 0);
    qrpc_dgram_free(d);
    wait_states((int)tick, (int)tick);
  }
  /* One encoding, one Seq: both clients saw the same numbers. */
  for (int k = 0; k < 3; k++) {
    ck_assert_uint_eq(cl[0].ticks[k], 101 + (uint64_t)k);
    ck_assert_uint_eq(cl[1].ticks[k], 101 + (uint64_t)k);
    ck_assert_uint_eq(cl[0].seqs[k], cl[1].seqs[k]);
    if (k > 0) ck_assert_uint_eq(cl[0].seqs[k], cl[0].seqs[k - 1] + 1);
  }
}
END_TEST

/* ---- Payloads that do not decode ----------------------------------------- */

START_TEST(test_undecodable_dropped) {
  qrpc_peer *p = join(0);
  int inputs = ss.inputs;
  /* To the client, on a latest-only channel, and to the server. */
  ck_assert_int_eq(qrpc_peer_send_dgram(p, STATE_CH, garbage, sizeof(garbage)),
                   0);
  ck_assert_int_eq(
      qrpc_peer_send_dgram(peer_of(0), INPUT_CH, garbage, sizeof(garbage)), 0);
  qt_run_for(loop, 200);
  ck_assert_int_eq(cl[0].states, 0);
  ck_assert_int_eq(ss.inputs, inputs);

  qrpc_dgram_stats s;
  qrpc_peer_dgram_stats(peer_of(0), STATE_CH, &s);
  ck_assert_uint_eq(s.received, 1);
  ck_assert_uint_eq(s.delivered, 1);
  ck_assert_uint_eq(s.dropped_undecodable, 1);
  qrpc_peer_dgram_stats(p, INPUT_CH, &s);
  ck_assert_uint_eq(s.dropped_undecodable, 1);
  ck_assert_uint_eq(s.delivered, (uint64_t)inputs + 1);

  /* Nothing else is affected: the connection is up and typed traffic
   * flows both ways. */
  ck_assert_int_eq(qrpc_conn_is_established(qrpc_peer_conn(p)), 1);
  State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
  st.tick = 9;
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_send(p, &st), 0);
  wait_states(1, 0);
  ck_assert_uint_eq(cl[0].ticks[0], 9);
  Input in = QRPC__TEST__DGRAM__PLAYER_INPUT__INIT;
  in.dx = 5;
  ck_assert_int_eq(qrpc_test_dgram_Sync_Input_send(peer_of(0), &in), 0);
  ck_assert(qt_run_until_count(loop, &ss.inputs, inputs + 1, QT_WAIT_MS));
  ck_assert_int_eq(ss.dx[inputs], 5);
}
END_TEST

/* ---- Refusals ------------------------------------------------------------ */

/* A State whose packing is exactly size bytes (blob points into buf). */
static void state_of_size(State *st, uint8_t *buf, size_t size) {
  *st = (State)QRPC__TEST__DGRAM__WORLD_STATE__INIT;
  st->blob.data = buf;
  for (size_t len = size; len > 0; len--) {
    st->blob.len = len;
    if (protobuf_c_message_get_packed_size(&st->base) <= size) break;
  }
  ck_assert_uint_eq(protobuf_c_message_get_packed_size(&st->base), size);
}

START_TEST(test_oversize_refused) {
  qrpc_peer *p = join(0);
  size_t max = qrpc_peer_max_dgram_payload(p, STATE_CH);
  ck_assert_uint_gt(max, 1000);
  uint8_t *buf = calloc(1, max + QRPCI_VARINT_MAXLEN);
  ck_assert_ptr_nonnull(buf);
  State st;
  state_of_size(&st, buf, max);
  size_t fit_len = st.blob.len;
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_send(p, &st), 0);
  /* The limit assumes the longest Seq, so a few bytes over it may still
   * fit today's Seq; a varint's worth over never does. */
  state_of_size(&st, buf, max + QRPCI_VARINT_MAXLEN);
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_send(p, &st), QRPC_EMSGSIZE);
  /* Encoding takes any size; the send to a peer refuses it. */
  qrpc_dgram *d = NULL;
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_encode(srv, &st, &d), 0);
  ck_assert_int_eq(qrpc_peer_send_encoded(p, d), QRPC_EMSGSIZE);
  qrpc_dgram_free(d);

  wait_states(1, 0);
  qt_run_for(loop, 50);
  ck_assert_int_eq(cl[0].states, 1);
  ck_assert_uint_eq(cl[0].last_blob, fit_len);
  qrpc_dgram_stats s;
  qrpc_peer_dgram_stats(p, STATE_CH, &s);
  ck_assert_uint_eq(s.sent, 1);
  ck_assert_uint_eq(s.refused_too_large, 2);
  ck_assert_uint_eq(s.refused_queue_full, 0);
  free(buf);
}
END_TEST

START_TEST(test_queue_full_distinct) {
  qrpc_peer *p = join(0);
  State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
  st.tick = 1;
  /* Within one callback nothing drains: the queue (1024) fills. */
  int rv, sent = 0;
  while ((rv = qrpc_test_dgram_Sync_State_send(p, &st)) == 0) sent++;
  ck_assert_int_eq(rv, QRPC_ENOBUFS);
  ck_assert_int_ge(sent, 1);
  qrpc_dgram_stats s;
  qrpc_peer_dgram_stats(p, STATE_CH, &s);
  ck_assert_uint_eq(s.sent, (uint64_t)sent);
  ck_assert_uint_eq(s.refused_queue_full, 1);
  ck_assert_uint_eq(s.refused_too_large, 0);
}
END_TEST

/* ---- The IDL's channel options ------------------------------------------- */

START_TEST(test_latest_only_from_idl) {
  ck_assert_int_eq(qrpc_test_dgram_Sync_State_LATEST_ONLY, 1);
  ck_assert_int_eq(qrpc_test_dgram_Sync_Input_LATEST_ONLY, 0);
  qrpc_peer *p = join(0);
  int inputs = ss.inputs;
  static const uint64_t order[] = {5, 3, 6};
  for (int k = 0; k < 3; k++) {
    State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
    st.tick = order[k];
    send_raw(p, STATE_CH, order[k], &st.base);
    Input in = QRPC__TEST__DGRAM__PLAYER_INPUT__INIT;
    in.dx = (int32_t)order[k];
    send_raw(peer_of(0), INPUT_CH, order[k] + 100, &in.base);
  }
  qt_run_for(loop, 300);
  /* State is latest-only on the client: 3 arrived after 5 and is gone. */
  ck_assert_int_eq(cl[0].states, 2);
  ck_assert_uint_eq(cl[0].ticks[0], 5);
  ck_assert_uint_eq(cl[0].ticks[1], 6);
  qrpc_dgram_stats s;
  qrpc_peer_dgram_stats(peer_of(0), STATE_CH, &s);
  ck_assert_uint_eq(s.dropped_stale, 1);
  /* Input is not: the server saw all three, in the order sent. */
  ck_assert_int_eq(ss.inputs, inputs + 3);
  for (int k = 0; k < 3; k++) {
    ck_assert_int_eq(ss.dx[inputs + k], (int)order[k]);
    ck_assert_uint_eq(ss.seqs[inputs + k], order[k] + 100);
  }
}
END_TEST

static int snapshot_arrived(void *arg) { return cl[0].snapshots > 0; }

START_TEST(test_fragmented_from_idl) {
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Snapshot_MAX_MESSAGE, 65536);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_State_MAX_MESSAGE, 0);
  qrpc_peer *p = join(0);
  /* The channel takes up to max_message_bytes whatever the path. */
  ck_assert_uint_eq(qrpc_peer_max_dgram_payload(p, SNAPSHOT_CH), 65536);
  static uint8_t blob[40 * 1024];
  for (size_t k = 0; k < sizeof(blob); k++) blob[k] = (uint8_t)(k * 7);
  State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
  st.tick = 9;
  st.blob.data = blob;
  st.blob.len = sizeof(blob);
  ck_assert_int_eq(qrpc_test_dgram_Sync_Snapshot_send(p, &st), 0);
  ck_assert(qt_run_until(loop, snapshot_arrived, NULL, QT_WAIT_MS));
  ck_assert_uint_eq(cl[0].snapshot_blob, sizeof(blob));
  qrpc_dgram_stats s;
  qrpc_peer_dgram_stats(p, SNAPSHOT_CH, &s);
  ck_assert_uint_gt(s.sent, 1);
}
END_TEST

START_TEST(test_max_age_from_idl) {
  ck_assert_uint_eq(qrpc_test_dgram_Sync_State_MAX_AGE_MS, 100);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Input_MAX_AGE_MS, 0);
  qrpc_peer *p = join(0);
  int inputs = ss.inputs;
  /* Queued now, sent only when the loop runs again, 150 ms later: the
   * server's State (max age 100 ms) is dropped, the client's Input (no
   * limit) is not. */
  for (int k = 0; k < 5; k++) {
    State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
    st.tick = (uint64_t)k + 1;
    ck_assert_int_eq(qrpc_test_dgram_Sync_State_send(p, &st), 0);
    Input in = QRPC__TEST__DGRAM__PLAYER_INPUT__INIT;
    ck_assert_int_eq(qrpc_test_dgram_Sync_Input_send(peer_of(0), &in), 0);
  }
  usleep(150 * 1000);
  ck_assert(qt_run_until_count(loop, &ss.inputs, inputs + 5, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(cl[0].states, 0);
  qrpc_dgram_stats s;
  qrpc_peer_dgram_stats(p, STATE_CH, &s);
  ck_assert_uint_eq(s.sent, 5);
  ck_assert_uint_eq(s.dropped_aged, 5);
  qrpc_peer_dgram_stats(peer_of(0), INPUT_CH, &s);
  ck_assert_uint_eq(s.dropped_aged, 0);
}
END_TEST

/* ---- Snapshot channels -------------------------------------------------- */

START_TEST(test_snapshot_options_from_idl) {
  /* "entities.id" resolved to the field numbers of World and Entity. */
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Frame_SNAPSHOT_RING, 8);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Frame_SNAPSHOT_ENTITIES, 5);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Frame_SNAPSHOT_KEY, 4);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Frame_MAX_MESSAGE, 0);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Scores_SNAPSHOT_RING, 2);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Scores_SNAPSHOT_ENTITIES, 3);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Scores_SNAPSHOT_KEY, 1);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Scores_MAX_MESSAGE, 4096);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Totals_SNAPSHOT_RING,
                    QRPC_DGRAM_MAX_RING);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Totals_SNAPSHOT_ENTITIES, 0);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_Totals_SNAPSHOT_KEY, 0);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_State_SNAPSHOT_RING, 0);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_State_SNAPSHOT_ENTITIES, 0);
  ck_assert_uint_eq(qrpc_test_dgram_Sync_State_SNAPSHOT_KEY, 0);

  /* Registered as snapshot channels, so fragmented: 64 KiB without
   * (qrpc.max_message_bytes), else its value. */
  qrpc_peer *p = join(0);
  ck_assert_uint_eq(qrpc_peer_max_dgram_payload(p, FRAME_CH),
                    QRPC_DGRAM_SNAPSHOT_MESSAGE);
  ck_assert_uint_eq(qrpc_peer_max_dgram_payload(p, TOTALS_CH),
                    QRPC_DGRAM_SNAPSHOT_MESSAGE);
  ck_assert_uint_eq(qrpc_peer_max_dgram_payload(p, SCORES_CH), 4096);
  ck_assert_uint_eq(qrpc_peer_max_dgram_payload(peer_of(0), FRAME_CH),
                    QRPC_DGRAM_SNAPSHOT_MESSAGE);

  /* Only a snapshot channel takes snapshots; Scores refuses a state over
   * its 4096 bytes. */
  qrpc_snapshot *snap = NULL;
  State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
  qrpc_msg m;
  ck_assert_int_eq(qrpc_stub_msg(&m, &st.base, st.base.descriptor), 0);
  ck_assert_int_eq(qrpc_server_snapshot_new_msg(srv, STATE_CH, 1, &m, &snap),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_dgram_Sync_Totals_snapshot_new(srv, 1, &st, &snap),
                   0);
  qrpc_snapshot_free(snap);
  Qrpc__Test__Dgram__Board board = QRPC__TEST__DGRAM__BOARD__INIT;
  static Qrpc__Test__Dgram__Score scores[600];
  static Qrpc__Test__Dgram__Score *ps[600];
  for (size_t k = 0; k < 600; k++) {
    scores[k] = (Qrpc__Test__Dgram__Score)QRPC__TEST__DGRAM__SCORE__INIT;
    scores[k].player = -(int64_t)k;
    scores[k].points = 1000;
    ps[k] = &scores[k];
  }
  board.scores = ps;
  board.n_scores = 600;
  ck_assert_uint_gt(protobuf_c_message_get_packed_size(&board.base), 4096);
  snap = NULL;
  ck_assert_int_eq(
      qrpc_test_dgram_Sync_Scores_snapshot_new(srv, 1, &board, &snap),
      QRPC_EMSGSIZE);
  board.n_scores = 100;
  ck_assert_int_eq(
      qrpc_test_dgram_Sync_Scores_snapshot_new(srv, 1, &board, &snap), 0);
  qrpc_snapshot_free(snap);
}
END_TEST

START_TEST(test_snapshot_argument_checks) {
  static world_buf b;
  world_at(1, &b);
  State st = QRPC__TEST__DGRAM__WORLD_STATE__INIT;
  qrpc_snapshot *snap = NULL;
  ck_assert_int_eq(
      qrpc_test_dgram_Sync_Frame_snapshot_new(NULL, 1, &b.w, &snap),
      QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_dgram_Sync_Frame_snapshot_new(srv, 1, &b.w, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_dgram_Sync_Frame_snapshot_new(srv, 1, NULL, &snap),
                   QRPC_EINVAL);
  /* A message of another type, by its descriptor. */
  ck_assert_int_eq(qrpc_test_dgram_Sync_Frame_snapshot_new(
                       srv, 1, (const World *)&st, &snap),
                   QRPC_EINVAL);
  /* Ticks start at 1 and only increase. */
  ck_assert_int_eq(qrpc_test_dgram_Sync_Frame_snapshot_new(srv, 0, &b.w, &snap),
                   QRPC_EINVAL);
  ck_assert_ptr_null(snap);
  ck_assert_int_eq(qrpc_test_dgram_Sync_Frame_snapshot_new(srv, 5, &b.w, &snap),
                   0);
  qrpc_snapshot_free(snap);
  snap = NULL;
  ck_assert_int_eq(qrpc_test_dgram_Sync_Frame_snapshot_new(srv, 5, &b.w, &snap),
                   QRPC_EINVAL);
  ck_assert_ptr_null(snap);
}
END_TEST

typedef struct frame_wait {
  int client;
  uint64_t tick;
} frame_wait;

static int frame_arrived(void *arg) {
  const frame_wait *w = arg;
  return cl[w->client].frame_tick >= w->tick;
}

START_TEST(test_snapshot_ticks_e2e) {
  enum { TICKS = 16 };
  qrpc_peer *p = join(0);
  static world_buf b;
  size_t whole = 0;
  for (uint64_t tick = 1; tick <= TICKS; tick++) {
    world_at(tick, &b);
    whole += protobuf_c_message_get_packed_size(&b.w.base);
    qrpc_snapshot *snap = NULL;
    ck_assert_int_eq(
        qrpc_test_dgram_Sync_Frame_snapshot_new(srv, tick, &b.w, &snap), 0);
    ck_assert_int_eq(qrpc_peer_send_snapshot(p, snap), 0);
    qrpc_snapshot_free(snap);
    frame_wait w = {0, tick};
    ck_assert_msg(qt_run_until(loop, frame_arrived, &w, QT_WAIT_MS),
                  "tick %u did not arrive (client at %u)", (unsigned)tick,
                  (unsigned)cl[0].frame_tick);
    /* Time for the acknowledgement, so the next tick can be a delta. */
    qt_run_for(loop, 10);
  }
  /* Every tick arrived whole, equal to the world sent, in order. */
  ck_assert_int_eq(cl[0].frames, TICKS);
  ck_assert_int_eq(cl[0].frames_wrong, 0);
  ck_assert_int_eq(cl[1].frames, 0);

  qrpc_dgram_stats s;
  qrpc_peer_dgram_stats(p, FRAME_CH, &s);
  ck_assert_uint_eq(s.snap_full_sent + s.snap_delta_sent, TICKS);
  ck_assert_uint_gt(s.snap_delta_sent, 0);
  ck_assert_uint_ge(s.snap_delta_sent, TICKS / 2);
  /* Entities are keyed by id, so a delta carries the few that changed:
   * far less than whole states (x alone would key them ambiguously and
   * force whole states). */
  ck_assert_uint_lt(s.bytes_sent, whole / 2);
  qrpc_peer_dgram_stats(peer_of(0), FRAME_CH, &s);
  ck_assert_uint_eq(s.snap_no_baseline + s.snap_bad_delta, 0);
  ck_assert_uint_eq(s.dropped_undecodable, 0);

  /* The client's view of the server's clock follows the ticks. */
  qrpc_snapshot_clock clk;
  ck_assert_int_eq(qrpc_peer_snapshot_clock(peer_of(0), FRAME_CH, &clk), 0);
  ck_assert_uint_eq(clk.tick, TICKS);
}
END_TEST

/* ---- A datagram method next to RPC methods ------------------------------- */

typedef struct calc_seen {
  int positions;
  int64_t last;
} calc_seen;

static void on_position(qrpc_peer *peer, uint64_t seq,
                        const Qrpc__Test__Common__Num *msg, void *ud) {
  calc_seen *c = ud;
  c->positions++;
  c->last = msg->value;
}

START_TEST(test_mixed_service) {
  /* Calc mixes RPC methods with the datagram method Position; only the
   * member that is set is registered here. */
  static calc_seen seen;
  static qrpc_test_shapes_Calc_handlers h;
  memset(&seen, 0, sizeof(seen));
  h.user_data = &seen;
  h.Position = on_position;
  ck_assert_int_eq(qrpc_test_shapes_Calc_register(srv, &h), 0);
  Qrpc__Test__Common__Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = 77;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Position_send(peer_of(1), &n), 0);
  ck_assert(qt_run_until_count(loop, &seen.positions, 1, QT_WAIT_MS));
  ck_assert_int_eq(seen.last, 77);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("codegen_dgram");
  TCase *t = tcase_create("e2e");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, test_send_both_ways);
  tcase_add_test(t, test_argument_checks);
  tcase_add_test(t, test_encode_once_broadcast);
  tcase_add_test(t, test_undecodable_dropped);
  tcase_add_test(t, test_oversize_refused);
  tcase_add_test(t, test_queue_full_distinct);
  tcase_add_test(t, test_latest_only_from_idl);
  tcase_add_test(t, test_max_age_from_idl);
  tcase_add_test(t, test_fragmented_from_idl);
  tcase_add_test(t, test_mixed_service);
  tcase_add_test(t, test_snapshot_options_from_idl);
  tcase_add_test(t, test_snapshot_argument_checks);
  tcase_add_test(t, test_snapshot_ticks_e2e);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  if (qt_certs_generate(&certs) != 0) return EXIT_FAILURE;
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  qt_certs_free(&certs);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
