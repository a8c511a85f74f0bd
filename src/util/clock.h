/* Monotonic time in nanoseconds, the unit ngtcp2 uses. */
#ifndef QRPCI_UTIL_CLOCK_H
#define QRPCI_UTIL_CLOCK_H

#include <stdint.h>
#include <sys/time.h>

#define QRPCI_NS_PER_MS UINT64_C(1000000)

uint64_t qrpci_now_ns(void);

/* Converts a duration in nanoseconds to a timeval, rounding up so a timer
 * never fires before its deadline. */
struct timeval qrpci_ns_to_tv(uint64_t ns);

#endif
