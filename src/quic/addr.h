/*
 * Addresses as users write them. Internal; not installed. Any thread.
 */
#ifndef QRPCI_QUIC_ADDR_H
#define QRPCI_QUIC_ADDR_H

/* Splits "host:port" or "[v6]:port" into fresh strings the caller frees.
 * The port must be 1 to 5 digits, at most 65535. Errors: QRPC_EINVAL,
 * QRPC_ENOMEM (nothing to free then). */
int qrpci_parse_addr(const char *addr, char **host, char **port);

#endif
