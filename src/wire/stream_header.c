#include "wire/stream_header.h"

#include <string.h>

int qrpci_utf8_valid(const uint8_t *p, size_t len) {
  size_t i = 0;
  while (i < len) {
    uint8_t c = p[i];
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      i++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      n = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      n = 4;
      cp = c & 0x07;
    } else {
      return 0;
    }
    if (len - i < n) return 0;
    for (size_t k = 1; k < n; k++) {
      if ((p[i + k] & 0xc0) != 0x80) return 0;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    /* Overlong forms, surrogates and values past U+10FFFF are invalid. */
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return 0;
    i += n;
  }
  return 1;
}

static int name_ok(const uint8_t *name, size_t len) {
  return len >= QRPCI_RAW_NAME_MIN && len <= QRPCI_RAW_NAME_MAX &&
         qrpci_utf8_valid(name, len);
}

qrpci_hdr_result qrpci_stream_header_decode(const uint8_t *p, size_t len,
                                            qrpci_stream_header *h,
                                            size_t *consumed) {
  if (len == 0) return QRPCI_HDR_NEED_MORE;
  memset(h, 0, sizeof(*h));
  h->kind = p[0];
  if (h->kind == QRPCI_STREAM_KIND_RPC) {
    *consumed = 1;
    return QRPCI_HDR_OK;
  }
  if (h->kind != QRPCI_STREAM_KIND_RAW) return QRPCI_HDR_UNKNOWN_KIND;
  uint64_t n;
  size_t vl = qrpci_varint_get(p + 1, len - 1, &n);
  if (vl == 0) return QRPCI_HDR_NEED_MORE;
  /* Checked before waiting for the name, so a hostile length never makes
   * the receiver buffer more than the header's maximum. */
  if (n < QRPCI_RAW_NAME_MIN || n > QRPCI_RAW_NAME_MAX)
    return QRPCI_HDR_BAD_NAME;
  if (len - 1 - vl < n) return QRPCI_HDR_NEED_MORE;
  h->name = p + 1 + vl;
  h->name_len = (size_t)n;
  if (!name_ok(h->name, h->name_len)) return QRPCI_HDR_BAD_NAME;
  *consumed = 1 + vl + (size_t)n;
  return QRPCI_HDR_OK;
}

size_t qrpci_stream_header_encode_raw(uint8_t *out, const char *name,
                                      size_t name_len) {
  if (!name_ok((const uint8_t *)name, name_len)) return 0;
  size_t off = 0;
  out[off++] = QRPCI_STREAM_KIND_RAW;
  off += qrpci_varint_put(out + off, name_len);
  memcpy(out + off, name, name_len);
  return off + name_len;
}
