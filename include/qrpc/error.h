/*
 * qrpc error codes.
 *
 * Every qrpc function that can fail returns int: 0 on success or one of the
 * negative QRPC_E* values below. qrpc_strerror() names them.
 */
#ifndef QRPC_ERROR_H
#define QRPC_ERROR_H

#ifdef __cplusplus
extern "C" {
#endif

enum {
  QRPC_OK = 0,
  QRPC_EINVAL = -1,        /* an argument is invalid */
  QRPC_ENOMEM = -2,        /* out of memory */
  QRPC_EAGAIN = -3,        /* try again later: a buffer or credit is full */
  QRPC_ESYSTEM = -4,       /* a system call failed (see errno in the log) */
  QRPC_ERESOLVE = -5,      /* the host name could not be resolved */
  QRPC_ETLS = -6,          /* TLS configuration or handshake failed */
  QRPC_ECERT = -7,         /* the peer's certificate was rejected */
  QRPC_EALPN = -8,         /* the peer does not speak qrpc/1 */
  QRPC_ETIMEDOUT = -9,     /* the handshake or an operation timed out */
  QRPC_EIDLE = -10,        /* the connection was idle too long */
  QRPC_ECLOSED = -11,      /* the connection or stream is closed */
  QRPC_EPROTO = -12,       /* the peer violated the protocol */
  QRPC_ENODGRAM = -13,     /* the peer did not enable QUIC datagrams */
  QRPC_EMSGSIZE = -14,     /* the message exceeds the current size limit */
  QRPC_ENOBUFS = -15,      /* a bounded send queue is full */
  QRPC_ELIMIT = -16,       /* a configured limit was reached */
  QRPC_ESTATE = -17,       /* not allowed in the object's current state */
  QRPC_ETRANSPORT = -18,   /* the QUIC transport failed or was closed */
  QRPC_EAPP = -19,         /* closed with an application error code */
  QRPC_ERESET = -20,       /* the peer reset the stream */
  QRPC_EADDRINUSE = -21,   /* the address is already in use */
  QRPC_ENOTFOUND = -22,    /* no such object */
  QRPC_ECONNRESET = -23,   /* the peer has lost the connection's state: a
                              valid stateless reset arrived */
  QRPC_EDEADPEER = -24,    /* the peer stopped answering (dead-peer
                              detection, qrpc_conn_opts) */
  QRPC_EUNREACHABLE = -25, /* nothing answered the handshake but an ICMP
                              error: no server listens at the address, or
                              no route leads to it */
  QRPC_ENOTSUP = -26,      /* this build of qrpc lacks the feature (for
                              example clustering without libnats) */
};

/* Returns a static, human-readable name for a QRPC_E* code (or "unknown
 * error"). Thread-safe. */
const char *qrpc_strerror(int err);

#ifdef __cplusplus
}
#endif
#endif
