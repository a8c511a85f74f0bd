#include "qrpc/error.h"

const char *qrpc_strerror(int err) {
  switch (err) {
  case QRPC_OK: return "success";
  case QRPC_EINVAL: return "invalid argument";
  case QRPC_ENOMEM: return "out of memory";
  case QRPC_EAGAIN: return "resource temporarily full, try again";
  case QRPC_ESYSTEM: return "system call failed";
  case QRPC_ERESOLVE: return "host name could not be resolved";
  case QRPC_ETLS: return "TLS failure";
  case QRPC_ECERT: return "peer certificate rejected";
  case QRPC_EALPN: return "peer does not speak qrpc/1 (ALPN)";
  case QRPC_ETIMEDOUT: return "timed out";
  case QRPC_EIDLE: return "connection idle timeout";
  case QRPC_ECONNRESET: return "connection reset by the peer";
  case QRPC_EDEADPEER: return "the peer stopped answering";
  case QRPC_EUNREACHABLE: return "server unreachable (port closed or no route)";
  case QRPC_ECLOSED: return "connection or stream closed";
  case QRPC_EPROTO: return "protocol violation";
  case QRPC_ENODGRAM: return "peer did not enable datagrams";
  case QRPC_EMSGSIZE: return "message too large";
  case QRPC_ENOBUFS: return "send queue full";
  case QRPC_ELIMIT: return "limit reached";
  case QRPC_ESTATE: return "not allowed in the current state";
  case QRPC_ETRANSPORT: return "QUIC transport error";
  case QRPC_EAPP: return "connection closed with an application error code";
  case QRPC_ERESET: return "stream reset by the peer";
  case QRPC_EADDRINUSE: return "address already in use";
  case QRPC_ENOTFOUND: return "not found";
  case QRPC_ENOTSUP: return "not supported by this build";
  default: return "unknown error";
  }
}
