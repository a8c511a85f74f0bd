/*
 * Prepares descriptors for protoc-c. qrpc stubs never use protoc-c's own
 * service code, and protoc-c 1.4 emits service code that does not compile
 * for some method names (C keywords such as "int", or names equal after
 * protoc-c lowers them, such as Get and get). So the build hands protoc-c
 * the files without their services, and without the imports only those
 * services needed (qrpc/options.proto above all, whose protoc-c header
 * would otherwise be required).
 */
#ifndef CG_STRIP_H
#define CG_STRIP_H

#include "google/protobuf/descriptor.pb-c.h"

/* Removes every service of every file of set, and each non-public import
 * that no remaining message, enum or extension refers to. Returns 0, or -1
 * with *why set to a new string saying why (NULL: out of memory). */
int cg_strip_services(Google__Protobuf__FileDescriptorSet *set, char **why);

#endif
