/*
 * Diagnostics: where qrpc's log lines go.
 *
 * By default messages at QRPC_LOG_WARN and above go to stderr. The handler
 * and level are process-wide; set them before creating any loop. The
 * handler may be called from any thread that runs a qrpc loop.
 */
#ifndef QRPC_LOG_H
#define QRPC_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qrpc_log_level {
  QRPC_LOG_DEBUG = 0,
  QRPC_LOG_INFO = 1,
  QRPC_LOG_WARN = 2,
  QRPC_LOG_ERROR = 3,
  QRPC_LOG_NONE = 4,
} qrpc_log_level;

/* A log handler. msg is a complete line without the trailing newline,
 * borrowed for the duration of the call. */
typedef void (*qrpc_log_fn)(qrpc_log_level level, const char *msg,
                            void *user_data);

/* Installs fn as the log handler (NULL restores stderr) and sets the least
 * level that is passed to it. Not thread-safe: call before starting loops. */
void qrpc_log_set_handler(qrpc_log_fn fn, void *user_data);
void qrpc_log_set_level(qrpc_log_level level);

/* Returns "debug", "info", "warn" or "error". */
const char *qrpc_log_level_name(qrpc_log_level level);

#ifdef __cplusplus
}
#endif
#endif
