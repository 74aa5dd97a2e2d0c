/* healthcheck: one blocking HTTP GET with a deadline, for the daemons' --healthcheck. */
#include "healthcheck.h"

#include "clock.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Longest status line (plus whatever follows it in the same read) we look at. */
#define HC_STATUS_MAX 1024

struct hc {
    char host[256];  /* what we connect to, without brackets */
    char where[400]; /* "127.0.0.1:9091/healthz" or "[::1]:9091/healthz", for messages */
    char port[8];
    const char *path;
    long long timeout_ms;
    uint64_t deadline_ms;
};

static void hc_msg(char *msg, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void hc_msg(char *msg, size_t cap, const char *fmt, ...)
{
    if (cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, cap, fmt, ap);
    va_end(ap);
}

/* Fill h from the caller's arguments: the host to connect to and the "where" text. */
static void hc_setup(struct hc *h, const char *host, long long port, const char *path,
                     long long timeout_ms)
{
    if (host == NULL || host[0] == '\0' || strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    else if (strcmp(host, "::") == 0 || strcmp(host, "[::]") == 0)
        host = "::1";
    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') {
        host++;
        len -= 2;
    }
    if (len >= sizeof h->host)
        len = sizeof h->host - 1;
    memcpy(h->host, host, len);
    h->host[len] = '\0';
    h->path = path && path[0] ? path : HEALTHCHECK_PATH;
    h->timeout_ms = timeout_ms > 0 ? timeout_ms : HEALTHCHECK_TIMEOUT_MS;
    snprintf(h->port, sizeof h->port, "%lld", port);
    bool v6 = strchr(h->host, ':') != NULL;
    snprintf(h->where, sizeof h->where, "%s%s%s:%lld%s", v6 ? "[" : "", h->host, v6 ? "]" : "",
             port, h->path);
}

/* Wait for `events` on fd until the deadline: 1 ready, 0 deadline passed, -1 poll error. */
static int hc_wait(int fd, short events, uint64_t deadline_ms)
{
    for (;;) {
        uint64_t now = clock_mono_ms();
        if (now >= deadline_ms)
            return 0;
        uint64_t left = deadline_ms - now;
        struct pollfd p = {.fd = fd, .events = events};
        int rc = poll(&p, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (rc > 0)
            return 1;
        if (rc < 0 && errno != EINTR)
            return -1;
    }
}

/* Connect to one address; 0 with *fd set, or the errno of the failure (ETIMEDOUT when
 * the deadline passed). */
static int hc_connect_one(const struct addrinfo *ai, uint64_t deadline_ms, int *fd_out)
{
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    int err = 0;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        err = errno;
        if (err == EINPROGRESS) {
            int w = hc_wait(fd, POLLOUT, deadline_ms);
            socklen_t len = sizeof err;
            if (w == 0)
                err = ETIMEDOUT;
            else if (w < 0)
                err = errno;
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
                err = errno;
        }
    }
    if (err != 0) {
        close(fd);
        return err;
    }
    *fd_out = fd;
    return 0;
}

/* Resolve and connect, trying every address. Returns the socket, or -1 with msg set. */
static int hc_connect(const struct hc *h, char *msg, size_t cap)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(h->host, h->port, &hints, &res);
    if (gai != 0) {
        hc_msg(msg, cap, "unhealthy: cannot resolve %s (%s)", h->where, gai_strerror(gai));
        return -1;
    }
    int fd = -1, err = ECONNREFUSED;
    for (const struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        err = hc_connect_one(ai, h->deadline_ms, &fd);
        if (err == ETIMEDOUT)
            break;
    }
    freeaddrinfo(res);
    if (fd >= 0)
        return fd;
    if (err == ETIMEDOUT)
        hc_msg(msg, cap, "unhealthy: no connection within %lld ms to %s", h->timeout_ms, h->where);
    else if (err == ECONNREFUSED)
        hc_msg(msg, cap, "unhealthy: connection refused by %s", h->where);
    else
        hc_msg(msg, cap, "unhealthy: cannot connect to %s (%s)", h->where, strerror(err));
    return -1;
}

/* Send the whole request. 0, or -1 with msg set. */
static int hc_send(const struct hc *h, int fd, char *msg, size_t cap)
{
    char req[1024];
    bool v6 = strchr(h->host, ':') != NULL;
    int len = snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\nHost: %s%s%s:%s\r\nUser-Agent: tierone-healthcheck\r\n"
                       "Accept: */*\r\nConnection: close\r\n\r\n",
                       h->path, v6 ? "[" : "", h->host, v6 ? "]" : "", h->port);
    if (len < 0 || (size_t)len >= sizeof req) {
        hc_msg(msg, cap, "unhealthy: path too long: %s", h->where);
        return -1;
    }
    size_t off = 0;
    while (off < (size_t)len) {
        ssize_t n = send(fd, req + off, (size_t)len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
            int w = hc_wait(fd, POLLOUT, h->deadline_ms);
            if (w > 0)
                continue;
            if (w == 0) {
                hc_msg(msg, cap, "unhealthy: no answer within %lld ms from %s", h->timeout_ms,
                       h->where);
                return -1;
            }
        }
        hc_msg(msg, cap, "unhealthy: cannot send to %s (%s)", h->where, strerror(errno));
        return -1;
    }
    return 0;
}

/* Parse "HTTP/1.x NNN" at the start of line; the status, or -1. */
static int hc_parse_status(const char *line)
{
    if (strncmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' || line[8] != ' ')
        return -1;
    const char *s = line + 9;
    for (int i = 0; i < 3; i++)
        if (s[i] < '0' || s[i] > '9')
            return -1;
    if (s[3] != ' ' && s[3] != '\r' && s[3] != '\n')
        return -1;
    return (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
}

/* Read until the status line is complete, the peer closes, or the deadline passes.
 * Returns the status (100..999), or -1 with msg set. */
static int hc_read_status(const struct hc *h, int fd, char *msg, size_t cap)
{
    char buf[HC_STATUS_MAX + 1];
    size_t n = 0;
    for (;;) {
        buf[n] = '\0';
        if (memchr(buf, '\n', n) != NULL || n == HC_STATUS_MAX)
            break;
        ssize_t r = recv(fd, buf + n, HC_STATUS_MAX - n, 0);
        if (r > 0) {
            n += (size_t)r;
            continue;
        }
        if (r == 0) {
            if (n == 0) {
                hc_msg(msg, cap, "unhealthy: connection closed without an answer by %s", h->where);
                return -1;
            }
            break; /* judge what arrived */
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            int w = hc_wait(fd, POLLIN, h->deadline_ms);
            if (w > 0)
                continue;
            if (w == 0) {
                hc_msg(msg, cap, "unhealthy: no answer within %lld ms from %s", h->timeout_ms,
                       h->where);
                return -1;
            }
        }
        hc_msg(msg, cap, "unhealthy: cannot read from %s (%s)", h->where, strerror(errno));
        return -1;
    }
    int status = hc_parse_status(buf);
    if (status < 0)
        hc_msg(msg, cap, "unhealthy: not an HTTP answer from %s", h->where);
    return status;
}

int healthcheck_probe(const char *host, long long port, const char *path, long long timeout_ms,
                      char *msg, size_t msgcap)
{
    struct hc h;
    hc_setup(&h, host, port, path, timeout_ms);
    if (port < 1 || port > 65535) {
        hc_msg(msg, msgcap, "unhealthy: nothing to check (port %lld) at %s", port, h.where);
        return HEALTHCHECK_UNHEALTHY;
    }
    h.deadline_ms = clock_mono_ms() + (uint64_t)h.timeout_ms;
    int rc = HEALTHCHECK_UNHEALTHY;
    int fd = hc_connect(&h, msg, msgcap);
    if (fd < 0)
        goto out;
    if (hc_send(&h, fd, msg, msgcap) != 0)
        goto out;
    int status = hc_read_status(&h, fd, msg, msgcap);
    if (status < 0)
        goto out;
    if (status >= 200 && status <= 299) {
        hc_msg(msg, msgcap, "healthy: %d from %s", status, h.where);
        rc = HEALTHCHECK_HEALTHY;
    } else {
        hc_msg(msg, msgcap, "unhealthy: %d from %s", status, h.where);
    }
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

int healthcheck_main(const char *host, long long port, const char *path, long long timeout_ms)
{
    char msg[512];
    int rc = healthcheck_probe(host, port, path, timeout_ms, msg, sizeof msg);
    FILE *out = rc == HEALTHCHECK_HEALTHY ? stdout : stderr;
    fprintf(out, "%s\n", msg);
    fflush(out);
    return rc;
}

int healthcheck_daemon(const char *admin_host, long long admin_port, const char *listen_host,
                       long long listen_port)
{
    if (admin_port != 0)
        return healthcheck_main(admin_host, admin_port, HEALTHCHECK_PATH, HEALTHCHECK_TIMEOUT_MS);
    return healthcheck_main(listen_host, listen_port, HEALTHCHECK_PATH, HEALTHCHECK_TIMEOUT_MS);
}

bool healthcheck_take_flag(int *argc, char **argv)
{
    bool found = false;
    int out = 1, i = 1;
    for (; i < *argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], HEALTHCHECK_FLAG) == 0) {
            found = true;
            continue;
        }
        argv[out++] = argv[i];
    }
    for (; i < *argc; i++)
        argv[out++] = argv[i];
    if (*argc > 0) {
        *argc = out;
        argv[out] = NULL;
    }
    return found;
}
