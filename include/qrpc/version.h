/* qrpc version. */
#ifndef QRPC_VERSION_H
#define QRPC_VERSION_H

#define QRPC_VERSION_MAJOR 0
#define QRPC_VERSION_MINOR 1
#define QRPC_VERSION_PATCH 0
#define QRPC_VERSION "0.1.0"

#endif
