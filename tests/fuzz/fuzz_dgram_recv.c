/*
 * Fuzz target: the datagram receive path (dgram/channel.h) of one
 * connection, without a transport: datagrams on a fragmented channel, a
 * snapshot channel (its messages fragmented too, each a full state or a
 * delta against a state received before) and a plain latest-only channel.
 *
 * Input: one control byte (bit 0: the fragmented channel is latest-only;
 * bit 1: the snapshot channel has no entity field), then datagrams, each
 * a two-byte big-endian length and that many bytes (the last one takes
 * what is left).
 *
 * Properties: nothing is read outside a datagram or leaked; a function
 * only gets a message of its channel within its max_message, a snapshot
 * function only ticks that move forward, a latest-only one only Seqs that
 * do; after every datagram, on every channel, received == delivered +
 * dropped_stale, delivered is what the functions saw, invalid fragments
 * are among those received, and the bytes held in partial messages stay
 * within reassembly_bytes; the totals of the qrpci_dgram agree.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dgram/channel.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

enum { CH_FRAG = 1, CH_SNAP = 2, CH_PLAIN = 3, NCH = 4 };

#define MAX_MESSAGE 4096
/* One message of MAX_MESSAGE and a bit: a second large partial message
 * pushes out the oldest. */
#define REASSEMBLY_BYTES 6000

typedef struct seen {
  size_t max_message[NCH];
  int latest_only[NCH];
  uint64_t delivered[NCH];
  uint64_t last[NCH]; /* the last Seq or tick handed over */
} seen;

static void on_msg(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                   const uint8_t *p, size_t n, void *ud) {
  seen *s = ud;
  FZ_CHECK(peer == NULL);
  FZ_CHECK(channel > 0 && channel < NCH);
  FZ_CHECK(n <= s->max_message[channel]);
  FZ_CHECK(n == 0 || p != NULL);
  /* Every byte is read, so ASan sees one outside the message. */
  volatile uint8_t sum = 0;
  for (size_t i = 0; i < n; i++) sum += p[i];
  (void)sum;
  if (s->latest_only[channel] || channel == CH_SNAP)
    FZ_CHECK(seq > s->last[channel]);
  s->last[channel] = seq;
  s->delivered[channel]++;
}

static void check_stats(qrpci_dgram *dg, qrpci_dgconn *dc, const seen *s,
                        size_t fed) {
  qrpc_dgram_stats sum = {0};
  for (uint32_t ch = 1; ch < NCH; ch++) {
    qrpc_dgram_stats st;
    qrpci_dgconn_stats(dc, ch, &st);
    FZ_CHECK(st.received == st.delivered + st.dropped_stale);
    FZ_CHECK(st.delivered == s->delivered[ch]);
    FZ_CHECK(st.frags_invalid <= st.frags_received);
    FZ_CHECK(st.reassembly_held <= st.reassembly_peak);
    FZ_CHECK(st.reassembly_held <= REASSEMBLY_BYTES);
    FZ_CHECK(st.sent == 0 && st.lost == 0 && st.bytes_sent == 0);
    sum.received += st.received;
    sum.delivered += st.delivered;
    sum.dropped_stale += st.dropped_stale;
    sum.bytes_received += st.bytes_received;
  }
  qrpc_dgram_stats tot;
  qrpci_dgram_totals(dg, &tot);
  FZ_CHECK(tot.received == sum.received);
  FZ_CHECK(tot.delivered == sum.delivered);
  FZ_CHECK(tot.dropped_stale == sum.dropped_stale);
  FZ_CHECK(tot.bytes_received == sum.bytes_received);
  FZ_CHECK(tot.bytes_received <= fed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_input in = {data, size};
  uint8_t ctl = fz_u8(&in);
  seen s;
  memset(&s, 0, sizeof(s));

  qrpci_dgram *dg = qrpci_dgram_new();
  FZ_CHECK(dg != NULL);
  qrpc_dgram_opts o;
  qrpc_dgram_opts_default(&o);
  o.max_message = MAX_MESSAGE;
  o.fragment_size = 64;
  o.reassembly_bytes = REASSEMBLY_BYTES;
  o.latest_only = ctl & 1;
  FZ_CHECK(qrpci_dgram_register(dg, CH_FRAG, &o, on_msg, &s) == 0);
  s.max_message[CH_FRAG] = MAX_MESSAGE;
  s.latest_only[CH_FRAG] = o.latest_only;

  qrpc_dgram_opts_default(&o);
  o.max_message = MAX_MESSAGE;
  o.fragment_size = 64;
  o.reassembly_bytes = REASSEMBLY_BYTES;
  o.snapshot_ring = 4;
  o.snapshot_entities = ctl & 2 ? 0 : 2;
  o.snapshot_key = 1;
  FZ_CHECK(qrpci_dgram_register(dg, CH_SNAP, &o, on_msg, &s) == 0);
  s.max_message[CH_SNAP] = MAX_MESSAGE;

  qrpc_dgram_opts_default(&o);
  o.latest_only = 1;
  FZ_CHECK(qrpci_dgram_register(dg, CH_PLAIN, &o, on_msg, &s) == 0);
  s.max_message[CH_PLAIN] = SIZE_MAX;
  s.latest_only[CH_PLAIN] = 1;

  qrpci_dgconn *dc = qrpci_dgconn_new(dg, NULL, NULL);
  FZ_CHECK(dc != NULL);
  size_t fed = 0;
  while (in.len > 0) {
    const uint8_t *p;
    size_t n = fz_take(&in, fz_u16(&in), &p);
    /* An exactly sized copy, so ASan sees a read one byte too far. */
    uint8_t *d = malloc(n ? n : 1);
    FZ_CHECK(d != NULL);
    if (n) memcpy(d, p, n);
    qrpci_dgconn_recv(dc, d, n);
    free(d);
    fed += n;
    check_stats(dg, dc, &s, fed);
  }
  qrpci_dgconn_free(dc);
  qrpci_dgram_free(dg);
  return 0;
}
