#include "wire/payload.h"

#include <string.h>

#include "qrpc/error.h"

int qrpci_payload_write(const qrpci_payload *p, uint8_t *out) {
  if (!p->is_msg) {
    if (p->len) memcpy(out, p->bytes, p->len);
    return 0;
  }
  if (p->msg->size == 0) return 0;
  if (!p->msg->pack) {
    memcpy(out, p->msg->msg, p->msg->size);
    return 0;
  }
  return p->msg->pack(p->msg->msg, out) == p->msg->size ? 0 : QRPC_EINVAL;
}
