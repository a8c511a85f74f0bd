/*
 * Protocol constants of qrpc wire version 1, mirroring docs/protocol.md.
 * Every protocol number used in the code comes from here.
 */
#ifndef QRPCI_WIRE_PROTOCOL_H
#define QRPCI_WIRE_PROTOCOL_H

#define QRPCI_ALPN "qrpc/1"
#define QRPCI_ALPN_LEN 6

/* Section 1: minimum max_datagram_frame_size an endpoint advertises. */
#define QRPCI_MIN_DATAGRAM_FRAME_SIZE 1200
#define QRPCI_DEFAULT_DATAGRAM_FRAME_SIZE 65535

/* Section 2: stream kinds. */
#define QRPCI_STREAM_KIND_RPC 0x00
#define QRPCI_STREAM_KIND_RAW 0x01
#define QRPCI_RAW_NAME_MIN 1
#define QRPCI_RAW_NAME_MAX 255
#define QRPCI_MIN_PEER_STREAMS_BIDI 100

/* Section 3: frame types. */
#define QRPCI_FRAME_REQUEST 0x01
#define QRPCI_FRAME_NOTIFY 0x02
#define QRPCI_FRAME_REPLY 0x03
#define QRPCI_FRAME_ERROR 0x04
#define QRPCI_FRAME_CANCEL 0x05
#define QRPCI_FRAME_ITEM 0x06
#define QRPCI_FRAME_END 0x07
#define QRPCI_FRAME_GOAWAY 0x08
/* Call metadata extension (docs/protocol.md, "Call metadata"). */
#define QRPCI_FRAME_HEADERS 0x09
#define QRPCI_FRAME_TRAILERS 0x0a

/* Section 3: frame size limits. */
#define QRPCI_MIN_FRAME_LIMIT (1u << 20)
#define QRPCI_DEFAULT_FRAME_LIMIT (16u << 20)

/* Section 3: first status code reserved for applications. */
#define QRPCI_STATUS_APP_MIN 1000

/* Section 6: application error codes (connection close and stream reset). */
#define QRPCI_ERR_NO_ERROR 0x0
#define QRPCI_ERR_PROTOCOL_ERROR 0x1
#define QRPCI_ERR_INTERNAL_ERROR 0x2
#define QRPCI_ERR_FRAME_TOO_LARGE 0x3
#define QRPCI_ERR_GOING_AWAY 0x4
#define QRPCI_ERR_RESOURCE_LIMIT 0x5
#define QRPCI_ERR_UNKNOWN_STREAM_KIND 0x101

/* RFC 9001 section 8.1: no_application_protocol alert as a QUIC error. */
#define QRPCI_TLS_ALERT_NO_APP_PROTOCOL 120
#define QRPCI_QUIC_CRYPTO_ERROR_BASE 0x100

#endif
