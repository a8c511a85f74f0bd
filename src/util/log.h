/* Internal logging onto the handler set with qrpc_log_set_handler(). */
#ifndef QRPCI_UTIL_LOG_H
#define QRPCI_UTIL_LOG_H

#include "qrpc/log.h"

int qrpci_log_enabled(qrpc_log_level level);

void qrpci_log(qrpc_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define QRPCI_LOG(level, ...)                                                  \
  do {                                                                         \
    if (qrpci_log_enabled(level)) qrpci_log(level, __VA_ARGS__);               \
  } while (0)
#define QRPCI_DEBUG(...) QRPCI_LOG(QRPC_LOG_DEBUG, __VA_ARGS__)
#define QRPCI_INFO(...) QRPCI_LOG(QRPC_LOG_INFO, __VA_ARGS__)
#define QRPCI_WARN(...) QRPCI_LOG(QRPC_LOG_WARN, __VA_ARGS__)
#define QRPCI_ERROR(...) QRPCI_LOG(QRPC_LOG_ERROR, __VA_ARGS__)

#endif
