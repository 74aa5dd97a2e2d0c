/* test_port: loopback TCP ports for the servers a test starts. */
#ifndef TIERONE_TEST_PORT_H
#define TIERONE_TEST_PORT_H

/* A port on 127.0.0.1 that nothing listens on now: bound to port 0, read back, released.
 * Something else may take it before the caller does; tests use it at once. */
int test_port_free(void);

#endif
