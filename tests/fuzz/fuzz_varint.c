/*
 * Fuzz target: QUIC varint decoding (util/varint.h), which every field of
 * frames, stream headers and datagram headers goes through. The input is
 * read as a sequence of varints, as a receiver walks the Channel (i),
 * Seq (i) header of a datagram (docs/protocol.md section 4) and then the
 * fields that follow.
 *
 * Properties: no read outside the input; a varint is refused only when the
 * input is shorter than the length its first byte announces; a decoded
 * value is at most 2^62-1 and re-encodes in at most as many bytes, to
 * exactly the same value; the shortest encoding is canonical (decoding and
 * re-encoding it gives the same bytes).
 */
#include <string.h>

#include "fuzz.h"
#include "util/varint.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static void check_value(uint64_t v, size_t used) {
  uint8_t buf[QRPCI_VARINT_MAXLEN], again[QRPCI_VARINT_MAXLEN];
  uint64_t w;
  FZ_CHECK(v <= QRPCI_VARINT_MAX);
  size_t n = qrpci_varint_len(v);
  FZ_CHECK(n == 1 || n == 2 || n == 4 || n == 8);
  FZ_CHECK(n <= used);
  FZ_CHECK(qrpci_varint_put(buf, v) == n);
  /* Every shorter input is refused. */
  for (size_t k = 0; k < n; k++) FZ_CHECK(qrpci_varint_get(buf, k, &w) == 0);
  FZ_CHECK(qrpci_varint_get(buf, n, &w) == n && w == v);
  FZ_CHECK(qrpci_varint_put(again, w) == n && memcmp(buf, again, n) == 0);
  /* The smallest value needing this many bytes does, the one below not. */
  if (n > 1) {
    static const uint64_t min_for[9] = {0, 0, 64, 0,         16384,
                                        0, 0, 0,  1073741824};
    FZ_CHECK(v >= min_for[n]);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  size_t pos = 0;
  while (pos < size) {
    uint64_t v = 0;
    size_t want = (size_t)1 << (data[pos] >> 6);
    size_t n = qrpci_varint_get(data + pos, size - pos, &v);
    if (n == 0) {
      FZ_CHECK(size - pos < want);
      break;
    }
    FZ_CHECK(n == want);
    check_value(v, n);
    pos += n;
  }
  uint64_t unused;
  FZ_CHECK(qrpci_varint_get(data, 0, &unused) == 0);
  return 0;
}
