/* test_check: the assertion of the shared test support code (test_pg, test_stack).
 *
 * In the Criterion test binaries a failed check fails the running test (cr_assert). The
 * benchmarks in bench/ link the same code built with TEST_SUPPORT_STANDALONE, where a failed
 * check prints its message to stderr and exits 1: there is no test to fail. Every check
 * carries a printf-style message. */
#ifndef TIERONE_TEST_CHECK_H
#define TIERONE_TEST_CHECK_H

#ifdef TEST_SUPPORT_STANDALONE
#include <stdio.h>
#include <stdlib.h>
#define test_check(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed (%s): ", __FILE__, __LINE__, #cond);              \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#else
#include <criterion/criterion.h>
#define test_check(cond, ...) cr_assert(cond, __VA_ARGS__)
#endif

#endif
