#include "util/clock.h"

#include <time.h>

uint64_t qrpci_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

struct timeval qrpci_ns_to_tv(uint64_t ns) {
  uint64_t us = (ns + 999) / 1000;
  struct timeval tv = {.tv_sec = (time_t)(us / 1000000),
                       .tv_usec = (suseconds_t)(us % 1000000)};
  return tv;
}
