/*
 * Frame reassembly on an RPC stream: turns bytes that arrive in arbitrary
 * pieces (a frame split over many reads, many frames in one read) into
 * complete frame bodies, ready for qrpci_frame_decode().
 *
 * Memory: a frame that lies wholly inside one piece is handed to the
 * callback in place, without copying. Only a frame split across pieces is
 * copied, into a buffer that grows with the bytes actually received and
 * never beyond that frame's size; a large buffer is used again by the
 * frames that follow until the owner trims it between frames. The Length limit is checked the moment the
 * Length field is complete, before any byte of the body is kept, so a peer
 * cannot make the receiver hold more than max_frame + 8 bytes per stream.
 *
 * One reassembler serves one stream and is used from one thread at a time.
 */
#ifndef QRPCI_WIRE_REASSEMBLER_H
#define QRPCI_WIRE_REASSEMBLER_H

#include <stddef.h>
#include <stdint.h>

#include "util/varint.h"

/* Called once per complete frame, in stream order, with its body (Type,
 * fields and payload; body_len is the frame's Length, never 0). body is
 * borrowed for the duration of the call. Return 0 to go on; any other value
 * stops feeding and is returned by qrpci_reasm_feed(). The callback must not
 * call qrpci_reasm_feed() or qrpci_reasm_free() on the same reassembler. */
typedef int (*qrpci_reasm_cb)(void *ctx, const uint8_t *body, size_t body_len);

/* Embedded by value in the owner's stream state; fields are private. */
typedef struct qrpci_reasm {
  size_t max_frame; /* largest Length accepted */
  int err;          /* sticky: the first non-zero result of a feed */
  /* A Length field split across pieces. */
  uint8_t len_bytes[QRPCI_VARINT_MAXLEN];
  size_t len_have;  /* bytes in len_bytes */
  size_t body_len;  /* Length of the current frame; 0 while reading it */
  size_t body_have; /* body bytes copied into buf */
  uint8_t *buf;     /* partial body; heap */
  size_t buf_cap;
} qrpci_reasm;

/* Prepares r for a new stream. Frames with a Length above max_frame are
 * refused (docs/protocol.md: every endpoint accepts at least 1 MiB, default
 * 16 MiB; the caller chooses). Allocates nothing. */
void qrpci_reasm_init(qrpci_reasm *r, size_t max_frame);

/* Consumes data[0..len), calling cb(ctx, body, body_len) for every frame it
 * completes. data is borrowed: bytes of a frame that is not yet complete are
 * copied. Returns:
 *   0             all of data was consumed (a partial frame may be pending);
 *   QRPC_EPROTO   a frame with Length 0;
 *   QRPC_EMSGSIZE a frame whose Length exceeds max_frame, found as soon as
 *                 the Length field is complete, before its body is read;
 *   QRPC_ENOMEM   the buffer for a split frame could not be grown;
 *   other         the non-zero value cb returned, which stopped feeding.
 * For QRPC_EPROTO and QRPC_EMSGSIZE, if why is not NULL, *why is set to a
 * static reason phrase for the connection close; otherwise it is left
 * alone. Any failure is final: later feeds return the same value and call
 * nothing. */
int qrpci_reasm_feed(qrpci_reasm *r, const uint8_t *data, size_t len,
                     qrpci_reasm_cb cb, void *ctx, const char **why);

/* To be called when the stream ends (FIN). Returns 0 if the stream ended on
 * a frame boundary, QRPC_EPROTO if it ended inside a frame (a truncated
 * frame, for which the reason phrase "frame truncated by end of stream"
 * fits), or the earlier failure of a feed. */
int qrpci_reasm_finish(const qrpci_reasm *r);

/* 1 if part of a frame has been fed (some of its Length field, or its
 * body) and the rest is still to come; 0 on a frame boundary. */
int qrpci_reasm_in_frame(const qrpci_reasm *r);

/* Body bytes the frame being read still lacks: 0 on a frame boundary and
 * while its Length field is incomplete. Feeding fewer bytes than this
 * completes no frame, so calls no callback. */
size_t qrpci_reasm_missing(const qrpci_reasm *r);

/* Bytes of heap memory r holds right now: at most max_frame. Lets the owner
 * account buffered data against per-connection memory limits. */
size_t qrpci_reasm_buffered(const qrpci_reasm *r);

/* Inside the callback: if body is r's own buffer (a frame that arrived in
 * several pieces), r lets go of it and returns it; the caller frees it
 * with free(), and r allocates anew for the next split frame. NULL when
 * body lies in the fed data (a frame that arrived whole), which stays
 * borrowed. */
uint8_t *qrpci_reasm_take(qrpci_reasm *r, const uint8_t *body);

/* Between frames (no frame in progress), gives a buffer larger than a
 * split packet's frames need back to the heap; keeps it otherwise. The
 * owner calls it when a piece has been fed: back-to-back large frames
 * reuse one buffer, and an idle stream holds none. */
void qrpci_reasm_trim(qrpci_reasm *r);

/* Releases the buffer. r may be initialized again afterwards. */
void qrpci_reasm_free(qrpci_reasm *r);

#endif
