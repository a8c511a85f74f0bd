/* What every TLS backend shares: the meaning of TLS alerts. */
#include "quic/tls.h"

#include "qrpc/error.h"
#include "wire/protocol.h"

/* TLS alerts (RFC 8446 6.2) that mean the certificate was refused. */
#define ALERT_BAD_CERTIFICATE 42
#define ALERT_UNSUPPORTED_CERTIFICATE 43
#define ALERT_CERTIFICATE_REVOKED 44
#define ALERT_CERTIFICATE_EXPIRED 45
#define ALERT_CERTIFICATE_UNKNOWN 46
#define ALERT_UNKNOWN_CA 48

int qrpci_tls_alert_error(uint8_t alert) {
  switch (alert) {
  case QRPCI_TLS_ALERT_NO_APP_PROTOCOL: return QRPC_EALPN;
  case ALERT_BAD_CERTIFICATE:
  case ALERT_UNSUPPORTED_CERTIFICATE:
  case ALERT_CERTIFICATE_REVOKED:
  case ALERT_CERTIFICATE_EXPIRED:
  case ALERT_CERTIFICATE_UNKNOWN:
  case ALERT_UNKNOWN_CA: return QRPC_ECERT;
  default: return QRPC_ETLS;
  }
}
