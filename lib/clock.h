/* clock: the two clocks tierone uses. Monotonic time measures durations and drives
 * timers; wall time is what goes into Sidekiq payloads and ZSET scores. */
#ifndef TIERONE_CLOCK_H
#define TIERONE_CLOCK_H

#include <stdint.h>

/* Monotonic nanoseconds since an arbitrary origin (CLOCK_MONOTONIC). */
uint64_t clock_mono_ns(void);
/* Monotonic milliseconds. */
uint64_t clock_mono_ms(void);
/* Wall clock as float epoch seconds with microsecond resolution (Ruby's Time.now.to_f). */
double clock_wall_s(void);
/* Wall clock as integer epoch milliseconds (Sidekiq 8's format). */
int64_t clock_wall_ms(void);

#endif
