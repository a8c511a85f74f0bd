/*
 * The standard health service (idl/qrpc/health.proto, package
 * qrpc.health.v1, modelled on gRPC's grpc.health.v1): a status per service
 * name that the server sets, answered to Check and streamed to Watch.
 * Clients call it through stubs generated from idl/qrpc/health.proto
 * (docs/api.md, "Health").
 *
 * Threading: everything runs on the server's loop thread.
 */
#ifndef QRPC_HEALTH_H
#define QRPC_HEALTH_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* HealthCheckResponse.ServingStatus. */
typedef enum qrpc_health_status {
  QRPC_HEALTH_UNKNOWN = 0,
  QRPC_HEALTH_SERVING = 1,
  QRPC_HEALTH_NOT_SERVING = 2,
  QRPC_HEALTH_SERVICE_UNKNOWN = 3, /* sent to Watch only; not settable */
} qrpc_health_status;

/* The longest service name served; longer names are refused. */
#define QRPC_HEALTH_NAME_MAX 256

/* The method ids of Check and Watch (the hashes of their full names, as
 * protoc-gen-qrpc computes them). */
#define QRPC_HEALTH_CHECK_METHOD_ID 0x3c5f0b8bu
#define QRPC_HEALTH_WATCH_METHOD_ID 0x2e0bb774u

typedef struct qrpc_health qrpc_health;

/* Registers Check and Watch on srv and returns the service in *out, with
 * "" (the whole server) SERVING. srv is borrowed: free the health service
 * with qrpc_health_free() after qrpc_server_free(srv) (which ends the
 * watches), never before. Loop thread.
 * Errors: QRPC_EINVAL, QRPC_ENOMEM. */
int qrpc_health_new(qrpc_server *srv, qrpc_health **out);

/* Sets the status of service (a NUL-terminated name, copied; "" for the
 * whole server) and sends it to its watchers. Loop thread; also from
 * inside any qrpc callback. Errors: QRPC_EINVAL (a NULL or over-long name,
 * or a status other than UNKNOWN, SERVING and NOT_SERVING), QRPC_ENOMEM. */
int qrpc_health_set(qrpc_health *h, const char *service,
                    qrpc_health_status status);

/* The status service has now; QRPC_HEALTH_SERVICE_UNKNOWN if it was never
 * set. */
qrpc_health_status qrpc_health_get(qrpc_health *h, const char *service);

/* Sets every service NOT_SERVING and ignores later qrpc_health_set()
 * calls: for a server that is shutting down. Loop thread. */
void qrpc_health_shutdown(qrpc_health *h);

/* Ends the watches still open (END with UNAVAILABLE) and frees h. After
 * qrpc_server_free() of its server (see qrpc_health_new()). NULL is
 * ignored. */
void qrpc_health_free(qrpc_health *h);

#ifdef __cplusplus
}
#endif
#endif
