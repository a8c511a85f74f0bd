/*
 * qrpc: RPC and messaging over QUIC. Include this one header.
 */
#ifndef QRPC_QRPC_H
#define QRPC_QRPC_H

#include "qrpc/broker.h"
#include "qrpc/dgram.h"
#include "qrpc/error.h"
#include "qrpc/health.h"
#include "qrpc/log.h"
#include "qrpc/loop.h"
#include "qrpc/metrics.h"
#include "qrpc/quic.h"
#include "qrpc/rpc.h"
#include "qrpc/stub.h"
#include "qrpc/tls.h"
#include "qrpc/version.h"

#endif
