#include "util/log.h"

#include <stdarg.h>
#include <stdio.h>

static qrpc_log_fn log_fn;
static void *log_ud;
static qrpc_log_level log_level = QRPC_LOG_WARN;

void qrpc_log_set_handler(qrpc_log_fn fn, void *user_data) {
  log_fn = fn;
  log_ud = user_data;
}

void qrpc_log_set_level(qrpc_log_level level) { log_level = level; }

const char *qrpc_log_level_name(qrpc_log_level level) {
  switch (level) {
  case QRPC_LOG_DEBUG: return "debug";
  case QRPC_LOG_INFO: return "info";
  case QRPC_LOG_WARN: return "warn";
  case QRPC_LOG_ERROR: return "error";
  default: return "none";
  }
}

int qrpci_log_enabled(qrpc_log_level level) {
  return level >= log_level && level < QRPC_LOG_NONE;
}

void qrpci_log(qrpc_log_level level, const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  if (log_fn) {
    log_fn(level, buf, log_ud);
  } else {
    fprintf(stderr, "qrpc %s: %s\n", qrpc_log_level_name(level), buf);
  }
}
