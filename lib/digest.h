/* digest: content hashes (OpenSSL), for the checksums tierone stores and compares. */
#ifndef TIERONE_DIGEST_H
#define TIERONE_DIGEST_H

#include <stddef.h>

/* SHA-256 of len bytes at data as 64 lowercase hex digits and a NUL in out. */
void digest_sha256_hex(const void *data, size_t len, char out[65]);

#endif
