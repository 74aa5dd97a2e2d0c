/* test_redis: blocking Redis access for tests (hiredis sync API), against the real
 * redis-server the test script starts (TIERONE_TEST_REDIS_URL). */
#ifndef TIERONE_TEST_REDIS_H
#define TIERONE_TEST_REDIS_H

#include <hiredis/hiredis.h>

/* The test Redis URL with its database replaced by db (static buffer). Aborts the test
 * with a clear message when TIERONE_TEST_REDIS_URL is not set. */
const char *test_redis_url(int db);
/* Connect to database db and FLUSHDB it. */
redisContext *test_redis_connect(int db);
/* Run a command; returns the reply (caller frees with freeReplyObject). Aborts on I/O error. */
redisReply *test_redis_cmd(redisContext *c, const char *fmt, ...);
/* Integer result of a command (LLEN, ZCARD...). */
long long test_redis_int(redisContext *c, const char *fmt, ...);
/* String result of a command as a new string (NULL for nil). */
char *test_redis_str(redisContext *c, const char *fmt, ...);

#endif
