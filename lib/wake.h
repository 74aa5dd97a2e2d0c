/* wake: how a producer tells idle workers that a queue has a new job, so they fetch it now
 * instead of at their next poll.
 *
 * A worker whose queues are all empty polls them with a growing pause (1 ms up to
 * TIERONE_FETCH_IDLE_MAX), and meanwhile blocks on one more connection in
 * BRPOP tierone:wake:<queue> ... for every queue it serves. A producer that pushes onto
 * queue:<name> also pushes a token (the string "1") onto tierone:wake:<name> and trims that
 * list to WAKE_TOKENS_MAX entries, in the same transaction: one idle worker serving the
 * queue takes the token and fetches at once. Tokens carry nothing: a lost one costs a poll
 * pause, a stale one (left while every worker was busy) one empty fetch. Producers that do
 * not push tokens (a Ruby Sidekiq client, for one) are picked up by the polling as before. */
#ifndef TIERONE_WAKE_H
#define TIERONE_WAKE_H

#define WAKE_KEY_PREFIX "tierone:wake:" /* + queue name: LIST of tokens */
#define WAKE_TOKENS_MAX 8               /* a wake list is trimmed to this many tokens */

#endif
