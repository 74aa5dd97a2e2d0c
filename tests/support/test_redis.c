/* test_redis: blocking Redis helpers for tests (see test_redis.h). */
#include "test_redis.h"
#include "redis.h"
#include "xalloc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *test_redis_url(int db)
{
    static char url[512];
    const char *base = getenv("TIERONE_TEST_REDIS_URL");
    if (!base || !*base) {
        fprintf(stderr, "TIERONE_TEST_REDIS_URL is not set: run the suite with scripts/test.sh\n");
        abort();
    }
    struct redis_url u;
    const char *err;
    if (redis_url_parse(base, &u, &err) != 0) {
        fprintf(stderr, "TIERONE_TEST_REDIS_URL %s\n", err);
        abort();
    }
    snprintf(url, sizeof url, "redis://%s%s%s%s:%d/%d", u.password ? ":" : "",
             u.password ? u.password : "", u.password ? "@" : "", u.host, u.port, db);
    redis_url_free(&u);
    return url;
}

redisContext *test_redis_connect(int db)
{
    struct redis_url u;
    const char *err;
    if (redis_url_parse(test_redis_url(db), &u, &err) != 0)
        abort();
    redisContext *c = redisConnect(u.host, u.port);
    if (!c || c->err) {
        fprintf(stderr, "cannot connect to test redis %s:%d\n", u.host, u.port);
        abort();
    }
    if (u.password)
        freeReplyObject(redisCommand(c, "AUTH %s", u.password));
    freeReplyObject(redisCommand(c, "SELECT %d", db));
    freeReplyObject(redisCommand(c, "FLUSHDB"));
    redis_url_free(&u);
    return c;
}

static redisReply *test_redis_vcmd(redisContext *c, const char *fmt, va_list ap)
{
    redisReply *r = redisvCommand(c, fmt, ap);
    if (!r) {
        fprintf(stderr, "test redis command failed: %s\n", c->errstr);
        abort();
    }
    return r;
}

redisReply *test_redis_cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = test_redis_vcmd(c, fmt, ap);
    va_end(ap);
    return r;
}

long long test_redis_int(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = test_redis_vcmd(c, fmt, ap);
    va_end(ap);
    long long v = r->type == REDIS_REPLY_INTEGER  ? r->integer
                  : r->type == REDIS_REPLY_STRING ? atoll(r->str)
                                                  : -1;
    freeReplyObject(r);
    return v;
}

char *test_redis_str(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = test_redis_vcmd(c, fmt, ap);
    va_end(ap);
    char *s = (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
                  ? xstrndup(r->str, r->len)
                  : NULL;
    freeReplyObject(r);
    return s;
}
