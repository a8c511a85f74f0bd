/*
 * Streams (stream.c): send buffers that never move, receive with the
 * stream header, pause and resume, and the close sequence. Internal; not
 * installed.
 */
#ifndef QRPCI_QUIC_STREAM_H
#define QRPCI_QUIC_STREAM_H

#include <ngtcp2/ngtcp2.h>
#include <stddef.h>
#include <stdint.h>

#include "quic/internal.h"
#include "util/list.h"

/* Stream send buffer: a list of chunks that never move, because ngtcp2
 * keeps pointers into sent data until it is acknowledged. A chunk holds
 * its bytes in mem[] after it, or (release set) points to bytes a caller
 * gave away, which go back with release(owner) when the chunk is freed. */
typedef struct qrpci_chunk {
  struct qrpci_chunk *next;
  size_t cap, len;
  uint8_t *data;
  void (*release)(void *owner);
  void *owner;
  uint8_t mem[];
} qrpci_chunk;

struct qrpc_stream {
  qrpc_conn *conn;
  int64_t id;
  qrpci_list node;           /* in conn->streams */
  qrpci_list send_node;      /* in conn->sendq while it has data */
  qrpc_stream_callbacks cbs;
  void *user_data;
  int local;                 /* we opened it */
  int kind_known;            /* header parsed (or we wrote it) */
  int has_user;              /* the application has the handle */
  int cbs_set;               /* callbacks were given */
  int fin_queued, fin_sent;
  int write_blocked;         /* a write returned EAGAIN */
  int stopped;               /* peer sent STOP_SENDING */
  int data_blocked;          /* flow control: wait for MAX_STREAM_DATA */
  int paused;
  int fin_received, fin_delivered;
  int transport_closed;      /* ngtcp2 closed it; free when delivered */
  int close_error;
  int closed_fired;
  uint64_t hdr_len;          /* bytes of our stream header */

  qrpci_chunk *head, *tail, *cur;
  uint64_t head_off;         /* stream offset of head->data[0] */
  uint64_t cur_off;          /* stream offset of cur->data[0] */
  uint64_t written, sent, acked;

  uint8_t *hdr;              /* peer header bytes until complete */
  size_t hdr_got;
  uint8_t *rx;               /* bytes held while paused */
  size_t rx_len, rx_cap;
  size_t rest;               /* qrpci_stream_hold_rest() inside on_read */
  int rx_early;              /* the bytes on_read delivers came in 0-RTT */
  int held_early;            /* some of the held bytes came in 0-RTT */
};

qrpc_stream *qrpci_stream_new(qrpc_conn *c, int64_t id, int local);
void qrpci_stream_free(qrpc_stream *s);
int qrpci_stream_recv(qrpc_stream *s, uint32_t flags, const uint8_t *data,
                      size_t len);
void qrpci_stream_acked(qrpc_stream *s, uint64_t offset, uint64_t len);
void qrpci_stream_transport_closed(qrpc_stream *s, int error);
void qrpci_stream_fire_closed(qrpc_stream *s, int error);
size_t qrpci_stream_pending_vec(qrpc_stream *s, ngtcp2_vec *v, size_t max);
void qrpci_stream_advance(qrpc_stream *s, size_t n);
int qrpci_stream_has_pending(qrpc_stream *s);
void qrpci_stream_deliver_held(qrpc_stream *s);
/* The server rejected the 0-RTT data of a stream we opened: it gets a new
 * id and everything written to it is sent again. Errors: QRPC_ELIMIT (no
 * stream id to be had), QRPC_ESTATE (part of it was acknowledged, which a
 * rejection rules out). */
int qrpci_stream_restart(qrpc_stream *s);


#endif
