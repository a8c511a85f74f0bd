/*
 * Fuzz target: the call metadata decoder (wire/metadata.h), given the
 * pairs of a HEADERS or TRAILERS frame, and the frame decoder on a HEADERS
 * frame carrying them.
 *
 * Properties: no read outside the input; the checker and the pair walker
 * agree (same count, same total, the walk ends exactly at the end); every
 * key read is valid; the pairs re-encoded decode to the same pairs; the
 * frame decoder accepts a HEADERS frame exactly when the checker accepts
 * its pairs; a malformed run stays malformed when cut after the bad byte
 * is kept.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "wire/frame.h"
#include "wire/metadata.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exact-size copy, so ASan sees a read one byte too far. */
  uint8_t *c = malloc(size ? size : 1);
  FZ_CHECK(c != NULL);
  if (size)
    memcpy(c, data, size);
  else
    c[0] = 0;
  size_t count = 0, total = 0;
  qrpci_md_err e = qrpci_md_check(c, size, &count, &total);

  /* The same bytes as the pairs of HEADERS MsgId 1. */
  uint8_t *body = malloc(size + 2);
  FZ_CHECK(body != NULL);
  body[0] = QRPCI_FRAME_HEADERS;
  body[1] = 0x01;
  if (size) memcpy(body + 2, c, size);
  qrpci_frame f;
  const char *why = NULL;
  int rc = qrpci_frame_decode(body, size + 2, &f, &why);
  FZ_CHECK((rc == 0) == (e == QRPCI_MD_OK));
  if (rc != 0) FZ_CHECK(why != NULL && strncmp(why, "HEADERS: ", 9) == 0);
  free(body);

  if (e != QRPCI_MD_OK) {
    free(c);
    return 0;
  }
  uint8_t *re = malloc(size ? size : 1);
  FZ_CHECK(re != NULL);
  size_t o = 0, ro = 0, n = 0, t = 0;
  while (o < size) {
    qrpci_md_pair p;
    size_t used = qrpci_md_next(c + o, size - o, &p);
    FZ_CHECK(used > 0 && used <= size - o);
    FZ_CHECK(qrpci_md_key_valid(p.key, p.key_len));
    FZ_CHECK(p.key >= c + o && p.value + p.value_len <= c + o + used);
    /* Shortest varints never take more room than the input's. */
    size_t pl = qrpci_md_pair_len(p.key_len, p.value_len);
    FZ_CHECK(pl > 0 && pl <= used);
    FZ_CHECK(qrpci_md_put(re + ro, p.key, p.key_len, p.value, p.value_len) ==
             pl);
    ro += pl;
    o += used;
    n++;
    t += p.key_len + p.value_len;
  }
  FZ_CHECK(o == size && n == count && t == total);

  size_t n2 = 0, t2 = 0;
  FZ_CHECK(qrpci_md_check(re, ro, &n2, &t2) == QRPCI_MD_OK);
  FZ_CHECK(n2 == count && t2 == total);
  size_t a = 0, b = 0;
  while (a < size) {
    qrpci_md_pair p, q;
    a += qrpci_md_next(c + a, size - a, &p);
    b += qrpci_md_next(re + b, ro - b, &q);
    FZ_CHECK(p.key_len == q.key_len && p.value_len == q.value_len);
    FZ_CHECK(memcmp(p.key, q.key, p.key_len) == 0);
    FZ_CHECK(p.value_len == 0 || memcmp(p.value, q.value, p.value_len) == 0);
  }
  FZ_CHECK(b == ro);
  free(re);
  free(c);
  return 0;
}
