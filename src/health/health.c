/*
 * The health service (qrpc/health.h). Its two messages are one field each,
 * so they are read and written here with util/pbwire.h rather than with
 * generated code: the library then defines none of the symbols that a
 * program's own stubs, generated from idl/qrpc/health.proto, define.
 */
#include "qrpc/health.h"

#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "util/list.h"
#include "util/pbwire.h"

typedef struct svc {
  char *name; /* NUL-terminated; len bytes */
  size_t len;
  qrpc_health_status status;
} svc;

typedef struct watcher {
  qrpc_health *h;
  qrpc_req *req;
  qrpci_list node;
  char name[QRPC_HEALTH_NAME_MAX];
  size_t len;
  int sent;    /* a status went out */
  int last;    /* the status sent last */
  int blocked; /* the stream is full: the latest goes on on_writable */
} watcher;

struct qrpc_health {
  qrpc_server *srv;
  svc *svcs;
  size_t nsvcs;
  qrpci_list watchers;
  int shut_down;
};

/* ---- Messages --------------------------------------------------------- */

/* HealthCheckRequest.service, as the bytes the wire gave (they may hold a
 * NUL, which then simply names no service set through the C API). */
static int read_service(const uint8_t *p, size_t len, const uint8_t **name,
                        size_t *name_len) {
  if (qrpci_pb_field_bytes(p, len, 1, name, name_len) != 0)
    return QRPC_STATUS_INVALID_ARGUMENT;
  if (*name_len > QRPC_HEALTH_NAME_MAX) return QRPC_STATUS_INVALID_ARGUMENT;
  return 0;
}

/* HealthCheckResponse{status}: proto3 leaves the default 0 out. */
static size_t write_status(int status, uint8_t out[2]) {
  if (status == 0) return 0;
  out[0] = 0x08; /* field 1, varint */
  out[1] = (uint8_t)status;
  return 2;
}

/* ---- Statuses --------------------------------------------------------- */

static svc *find(qrpc_health *h, const void *name, size_t len) {
  for (size_t i = 0; i < h->nsvcs; i++)
    if (h->svcs[i].len == len && memcmp(h->svcs[i].name, name, len) == 0)
      return &h->svcs[i];
  return NULL;
}

static int status_of(qrpc_health *h, const void *name, size_t len) {
  svc *s = find(h, name, len);
  return s ? (int)s->status : QRPC_HEALTH_SERVICE_UNKNOWN;
}

/* Sends w's service's status now if it changed since the last one sent. */
static void watcher_update(watcher *w) {
  int st = status_of(w->h, w->name, w->len);
  if (w->blocked || (w->sent && w->last == st)) return;
  uint8_t buf[2];
  int rv = qrpc_req_send(w->req, buf, write_status(st, buf));
  if (rv == QRPC_EAGAIN) {
    w->blocked = 1;
  } else if (rv == 0) {
    w->sent = 1;
    w->last = st;
  }
}

static void notify(qrpc_health *h, const char *name, size_t len) {
  for (qrpci_list *n = h->watchers.next; n != &h->watchers; n = n->next) {
    watcher *w = QRPCI_CONTAINER_OF(n, watcher, node);
    if (w->len == len && memcmp(w->name, name, len) == 0) watcher_update(w);
  }
}

static int set(qrpc_health *h, const char *service, int status) {
  size_t len = strlen(service);
  svc *s = find(h, service, len);
  if (!s) {
    svc *v = realloc(h->svcs, (h->nsvcs + 1) * sizeof(*v));
    if (!v) return QRPC_ENOMEM;
    h->svcs = v;
    char *copy = malloc(len + 1);
    if (!copy) return QRPC_ENOMEM;
    memcpy(copy, service, len + 1);
    s = &h->svcs[h->nsvcs++];
    *s = (svc){copy, len, QRPC_HEALTH_UNKNOWN};
  }
  s->status = (qrpc_health_status)status;
  notify(h, service, len);
  return 0;
}

int qrpc_health_set(qrpc_health *h, const char *service,
                    qrpc_health_status status) {
  if (!h || !service || strlen(service) > QRPC_HEALTH_NAME_MAX ||
      (status != QRPC_HEALTH_UNKNOWN && status != QRPC_HEALTH_SERVING &&
       status != QRPC_HEALTH_NOT_SERVING))
    return QRPC_EINVAL;
  if (h->shut_down) return 0;
  return set(h, service, status);
}

qrpc_health_status qrpc_health_get(qrpc_health *h, const char *service) {
  if (!h || !service) return QRPC_HEALTH_SERVICE_UNKNOWN;
  return (qrpc_health_status)status_of(h, service, strlen(service));
}

void qrpc_health_shutdown(qrpc_health *h) {
  if (!h || h->shut_down) return;
  for (size_t i = 0; i < h->nsvcs; i++) {
    h->svcs[i].status = QRPC_HEALTH_NOT_SERVING;
    notify(h, h->svcs[i].name, h->svcs[i].len);
  }
  h->shut_down = 1;
}

/* ---- Handlers --------------------------------------------------------- */

/* Reads the request's service name, or answers INVALID_ARGUMENT and
 * returns -1. */
static int request_service(qrpc_req *req, const uint8_t *payload, size_t len,
                           const uint8_t **name, size_t *nlen) {
  if (read_service(payload, len, name, nlen) == 0) return 0;
  qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT,
                 "not a HealthCheckRequest, or the name is too long");
  return -1;
}

static void h_check(qrpc_req *req, const uint8_t *payload, size_t len,
                    void *ud) {
  qrpc_health *h = ud;
  const uint8_t *name;
  size_t nlen;
  if (request_service(req, payload, len, &name, &nlen) != 0) return;
  svc *s = find(h, name, nlen);
  if (!s) {
    qrpc_req_error(req, QRPC_STATUS_NOT_FOUND, "unknown service");
    return;
  }
  uint8_t buf[2];
  qrpc_req_reply(req, buf, write_status(s->status, buf));
}

static void watcher_free(watcher *w) {
  qrpci_list_remove(&w->node);
  free(w);
}

static void w_cancel(qrpc_req *req, int status, void *ud) { watcher_free(ud); }

static void w_writable(qrpc_req *req, void *ud) {
  watcher *w = ud;
  w->blocked = 0;
  watcher_update(w);
}

static void h_watch(qrpc_req *req, const uint8_t *payload, size_t len,
                    void *ud) {
  qrpc_health *h = ud;
  const uint8_t *name;
  size_t nlen;
  if (request_service(req, payload, len, &name, &nlen) != 0) return;
  watcher *w = calloc(1, sizeof(*w));
  if (!w) {
    qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->h = h;
  w->req = req;
  memcpy(w->name, name, nlen);
  w->len = nlen;
  qrpci_list_push_back(&h->watchers, &w->node);
  static const qrpc_req_callbacks cbs = {.on_cancel = w_cancel,
                                         .on_writable = w_writable};
  qrpc_req_set_callbacks(req, &cbs, w);
  watcher_update(w);
}

/* ---- Life ------------------------------------------------------------- */

static void h_unavailable(qrpc_req *req, const uint8_t *payload, size_t len,
                          void *ud) {
  qrpc_req_error(req, QRPC_STATUS_UNAVAILABLE, "no health service");
}

int qrpc_health_new(qrpc_server *srv, qrpc_health **out) {
  if (!srv || !out) return QRPC_EINVAL;
  *out = NULL;
  qrpc_health *h = calloc(1, sizeof(*h));
  if (!h) return QRPC_ENOMEM;
  h->srv = srv;
  qrpci_list_init(&h->watchers);
  int rv = set(h, "", QRPC_HEALTH_SERVING);
  if (rv == 0)
    rv = qrpc_server_register(srv, QRPC_HEALTH_CHECK_METHOD_ID,
                              QRPC_SHAPE_UNARY, h_check, h);
  if (rv == 0)
    rv = qrpc_server_register(srv, QRPC_HEALTH_WATCH_METHOD_ID,
                              QRPC_SHAPE_SERVER_STREAM, h_watch, h);
  if (rv != 0) {
    /* Check may be registered: replacing an entry needs no memory, and
     * leaves nothing pointing at h. */
    qrpc_server_register(srv, QRPC_HEALTH_CHECK_METHOD_ID, QRPC_SHAPE_UNARY,
                         h_unavailable, NULL);
    qrpc_health_free(h);
    return rv;
  }
  *out = h;
  return 0;
}

void qrpc_health_free(qrpc_health *h) {
  if (!h) return;
  /* Ending a watch releases its req; on_cancel does not fire for it. */
  while (!qrpci_list_empty(&h->watchers)) {
    watcher *w = QRPCI_CONTAINER_OF(h->watchers.next, watcher, node);
    qrpc_req_error(w->req, QRPC_STATUS_UNAVAILABLE, "health service stopped");
    watcher_free(w);
  }
  for (size_t i = 0; i < h->nsvcs; i++) free(h->svcs[i].name);
  free(h->svcs);
  free(h);
}
