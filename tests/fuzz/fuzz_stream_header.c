/*
 * Fuzz target: the stream header decoder (wire/stream_header.h), given the
 * first bytes of a stream.
 *
 * Properties: no read outside the input; OK consumes at most the input and
 * a RAW name lies inside it, is 1..255 bytes and is UTF-8; every shorter
 * prefix of an accepted header asks for more bytes, and appending bytes
 * never changes an answer that was not "need more"; a RAW header the
 * encoder writes for the decoded name decodes to the same name; the
 * decision on the name length is taken as soon as the length is read.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "util/varint.h"
#include "wire/stream_header.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static qrpci_hdr_result decode_copy(const uint8_t *p, size_t len,
                                    qrpci_stream_header *h, size_t *used) {
  /* An exact-size copy, so ASan sees a read one byte too far. */
  uint8_t *c = malloc(len ? len : 1);
  FZ_CHECK(c != NULL);
  if (len) memcpy(c, p, len);
  qrpci_hdr_result r = qrpci_stream_header_decode(c, len, h, used);
  if (r == QRPCI_HDR_OK && h->name)
    h->name = p + (h->name - c); /* keep pointing into the caller's bytes */
  free(c);
  return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  qrpci_stream_header h;
  size_t used = 0;
  qrpci_hdr_result r = decode_copy(data, size, &h, &used);
  FZ_CHECK(r == QRPCI_HDR_OK || r == QRPCI_HDR_NEED_MORE ||
           r == QRPCI_HDR_UNKNOWN_KIND || r == QRPCI_HDR_BAD_NAME);
  if (r == QRPCI_HDR_NEED_MORE) {
    FZ_CHECK(size == 0 || data[0] == QRPCI_STREAM_KIND_RAW);
    return 0;
  }
  FZ_CHECK(size > 0);
  FZ_CHECK(h.kind == data[0]);
  if (r == QRPCI_HDR_UNKNOWN_KIND) {
    FZ_CHECK(data[0] != QRPCI_STREAM_KIND_RPC &&
             data[0] != QRPCI_STREAM_KIND_RAW);
    return 0;
  }

  size_t decided = used;
  if (r == QRPCI_HDR_BAD_NAME) {
    /* Decided from the kind and the name length alone when the length is
     * out of range, else once the whole name is there. */
    uint64_t n;
    size_t vl = qrpci_varint_get(data + 1, size - 1, &n);
    FZ_CHECK(vl > 0);
    decided = 1 + vl;
    if (n >= QRPCI_RAW_NAME_MIN && n <= QRPCI_RAW_NAME_MAX)
      decided += (size_t)n;
    FZ_CHECK(decided <= size);
  } else {
    FZ_CHECK(used >= 1 && used <= size);
    if (h.kind == QRPCI_STREAM_KIND_RPC) {
      FZ_CHECK(used == 1 && h.name == NULL && h.name_len == 0);
    } else {
      FZ_CHECK(h.kind == QRPCI_STREAM_KIND_RAW);
      FZ_CHECK(h.name_len >= QRPCI_RAW_NAME_MIN &&
               h.name_len <= QRPCI_RAW_NAME_MAX);
      FZ_CHECK(h.name >= data && h.name + h.name_len == data + used);
      FZ_CHECK(qrpci_utf8_valid(h.name, h.name_len));
      uint8_t enc[QRPCI_STREAM_HEADER_MAX];
      size_t el =
          qrpci_stream_header_encode_raw(enc, (const char *)h.name, h.name_len);
      FZ_CHECK(el > 0 && el <= used);
      qrpci_stream_header h2;
      size_t used2 = 0;
      FZ_CHECK(decode_copy(enc, el, &h2, &used2) == QRPCI_HDR_OK);
      FZ_CHECK(used2 == el && h2.name_len == h.name_len);
      FZ_CHECK(memcmp(h2.name, enc + el - h.name_len, h.name_len) == 0);
      FZ_CHECK(memcmp(h2.name, h.name, h.name_len) == 0);
    }
  }

  /* Shorter prefixes than the deciding bytes need more; longer inputs get
   * the same answer. */
  for (size_t k = 0; k < decided; k++) {
    qrpci_stream_header hp;
    size_t up = 0;
    FZ_CHECK(decode_copy(data, k, &hp, &up) == QRPCI_HDR_NEED_MORE);
  }
  qrpci_stream_header hd;
  size_t ud = 0;
  FZ_CHECK(decode_copy(data, decided, &hd, &ud) == r);
  return 0;
}
