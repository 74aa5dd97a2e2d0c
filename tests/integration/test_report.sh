#!/usr/bin/env bash
# test_report.sh: `tierone report` on a fresh database seeded with SQL: turns that ended
# every way (answered, escalated, dropped, still open), their decisions, cited passages and
# effects (shadow and sent), in three conversations over three days. Checks the text (fields,
# order of conversations, continuation lines, summary line), the JSON document (parsed by
# Ruby), the filters (--since DURATION|all|TIMESTAMP, --conversation) and the exit statuses.
#
#   TIERONE_TEST_DATABASE_URL=postgresql://... bash tests/integration/test_report.sh
#   (TIERONE_BIN_DIR defaults to build/; TIERONE_REPORT_BIN overrides the binary)
set -euo pipefail

ROOT=${TIERONE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN=${TIERONE_REPORT_BIN:-${TIERONE_BIN_DIR:-$ROOT/build}/tierone}
PSQL=psql
if [ -n "${TIERONE_TEST_PG_BINDIR:-}" ] && [ -x "$TIERONE_TEST_PG_BINDIR/psql" ]; then
  PSQL=$TIERONE_TEST_PG_BINDIR/psql
fi
DBNAME=tierone_test_sync_report
EMPTY=tierone_test_sync_report_empty
STEP=""

log() { printf 'report: %s\n' "$*" >&2; }
fail() {
  log "FAILED${STEP:+ during $STEP}: $*"
  exit 1
}

[ -n "${TIERONE_TEST_DATABASE_URL:-}" ] || fail "TIERONE_TEST_DATABASE_URL is not set (run through scripts/test.sh)"
[ -x "$BIN" ] || fail "no binary at $BIN"

# The server's URL with another database name (keeps a ?query part).
db_url() {
  local base=$TIERONE_TEST_DATABASE_URL query=""
  if [[ $base == *\?* ]]; then
    query="?${base#*\?}"
    base=${base%%\?*}
  fi
  printf '%s/%s%s\n' "${base%/*}" "$1" "$query"
}

sql() { PGOPTIONS="-c client_min_messages=warning" "$PSQL" -X -q -v ON_ERROR_STOP=1 "$1" -c "$2" >/dev/null; }

fresh_db() {
  sql "$TIERONE_TEST_DATABASE_URL" "DROP DATABASE IF EXISTS $1 WITH (FORCE)"
  sql "$TIERONE_TEST_DATABASE_URL" "CREATE DATABASE $1"
}

# Run the report; sets OUT, ERR and RC (never fails the script by itself).
run() {
  local errf
  errf=$(mktemp)
  set +e
  OUT=$("$BIN" report "$@" 2>"$errf")
  RC=$?
  set -e
  ERR=$(cat "$errf")
  rm -f "$errf"
}

expect_line() {
  grep -qxF -- "$1" <<<"$OUT" || fail "no line '$1' in:"$'\n'"$OUT"
}
expect_text() {
  grep -qF -- "$1" <<<"$OUT" || fail "no '$1' in:"$'\n'"$OUT"
}
refuse_text() {
  if grep -qF -- "$1" <<<"$OUT"; then fail "unexpected '$1' in:"$'\n'"$OUT"; fi
}
line_of() {
  grep -nF -- "$1" <<<"$OUT" | head -1 | cut -d: -f1
}

STEP="setup"
fresh_db "$DBNAME"
URL=$(db_url "$DBNAME")
"$BIN" migrate --database-url "$URL" >/dev/null || fail "tierone migrate"
export TIERONE_DATABASE_URL=$URL

sql "$URL" "
INSERT INTO conversations (account_id, conversation_id, inbox_id, status, human_active, human_reason) VALUES
  (1, 42, 3, 'pending', false, NULL),
  (1, 43, 3, 'open', true, 'an agent replied');
INSERT INTO turns (id, account_id, conversation_id, message_id, inbox_id, channel, contact, content,
                   received_at, state, question, passages, decision, outcome_reason, finished_at) VALUES
  (1, 1, 43, 2001, 3, 'Channel::Email', '{\"name\": \"Bob Roe\", \"email\": \"bob@example.com\"}',
   'The export button crashes the page', now() - interval '2 hours', 'escalated',
   'The export button crashes the page', '[]',
   '{\"action\": \"escalate\", \"answer\": \"\", \"reason\": \"bug report: export crashes\", \"category\": \"bug\", \"passage_ids\": [], \"by\": \"llm\"}',
   NULL, now() - interval '119 minutes'),
  (2, 1, 42, 1001, 3, 'Channel::WebWidget', '{\"name\": \"Alice Doe\", \"email\": \"alice@example.com\"}',
   E'How do I reset\nmy password?', now() - interval '1 hour', 'answered', E'How do I reset\nmy password?',
   '[{\"id\": 7, \"score\": 0.82, \"source\": \"docs/account.md\", \"title\": \"Resetting your password\", \"heading_path\": \"Account > Password\", \"content\": \"...\"}, {\"id\": 9, \"score\": 0.4, \"source\": \"docs/faq.md\", \"title\": \"FAQ\", \"content\": \"...\"}]',
   '{\"action\": \"answer\", \"answer\": \"Go to Settings.\", \"reason\": \"the docs cover it\", \"category\": \"question\", \"passage_ids\": [7], \"by\": \"llm\"}',
   NULL, now() - interval '59 minutes'),
  (3, 1, 42, 1002, 3, 'Channel::WebWidget', '{\"name\": \"Alice Doe\"}', 'thanks',
   now() - interval '50 minutes', 'dropped', NULL, NULL, NULL, 'conversation resolved', now() - interval '49 minutes'),
  (4, 1, 42, 1003, 3, 'Channel::WebWidget', '{}', 'one more question', now() - interval '10 minutes',
   'open', NULL, NULL, NULL, NULL, NULL),
  (5, 1, 44, 3001, 5, 'Channel::Api', '{\"phone_number\": \"+4915112345678\"}', 'old question',
   now() - interval '3 days', 'superseded', NULL, NULL,
   '{\"action\": \"answer\", \"answer\": \"An answer nobody saw.\", \"reason\": \"retrieval-only\", \"category\": \"question\", \"passage_ids\": [], \"by\": \"retrieval\"}',
   'a newer message was answered', now() - interval '3 days');
INSERT INTO effects (turn_id, kind, state, payload, result) VALUES
  (2, 'reply', 'shadow', '{\"content\": \"Go to Settings → Security\nand click Reset.\", \"private\": false}', NULL),
  (1, 'escalation_note', 'shadow', '{\"content\": \"Escalated: bug report: export crashes\", \"private\": true}', NULL),
  (1, 'labels', 'shadow', '{\"labels\": [\"billing\", \"needs-human\"]}', NULL),
  (1, 'handoff', 'shadow', '{\"status\": \"open\"}', NULL),
  (1, 'slack', 'shadow', '{\"text\": \"New escalation from Bob Roe\", \"blocks\": []}', NULL),
  (1, 'linear_issue', 'sent', '{\"id\": \"5f0c\", \"title\": \"Export button crashes the page\", \"description\": \"...\", \"priority\": 2}',
   '{\"id\": \"5f0c\", \"identifier\": \"ENG-1\", \"url\": \"https://linear.app/acme/issue/ENG-1\"}');
"

STEP="text, default window (24h)"
run
[ "$RC" = 0 ] || fail "exit $RC: $ERR"
expect_line "conversation 43 · account 1 · inbox 3 · Channel::Email · status open · human took over: an agent replied"
expect_line "conversation 42 · account 1 · inbox 3 · Channel::WebWidget · status pending"
[ "$(line_of 'conversation 43')" -lt "$(line_of 'conversation 42')" ] || fail "conversations not ordered by their first turn"
if ! [ "$(line_of 'turn 2 ')" -lt "$(line_of 'turn 3 ')" ] ||
  ! [ "$(line_of 'turn 3 ')" -lt "$(line_of 'turn 4 ')" ]; then
  fail "turns not in time order"
fi
expect_text "  turn 2 · "
expect_text " · message 1001 · Alice Doe <alice@example.com>"
expect_line "    customer   How do I reset"
expect_line "               my password?"
expect_line "    ended      answered"
expect_line "    decision   answer · question · by llm"
expect_line "    reason     the docs cover it"
expect_line "    cites      [7] Resetting your password — docs/account.md (score 0.82)"
refuse_text "[9] FAQ"
expect_line "    effect     reply [shadow]: Go to Settings → Security"
expect_line "               and click Reset."
refuse_text "    answer     Go to Settings." # posted (reply effect): not repeated
expect_line "    customer   The export button crashes the page"
expect_line "    ended      escalated"
expect_line "    decision   escalate · bug · by llm"
expect_line "    reason     bug report: export crashes"
expect_line "    effect     escalation_note [shadow]: Escalated: bug report: export crashes"
expect_line "    effect     labels [shadow]: billing, needs-human"
expect_line "    effect     handoff [shadow]: open"
expect_line "    effect     slack [shadow]: New escalation from Bob Roe"
expect_line "    effect     linear_issue [sent] → https://linear.app/acme/issue/ENG-1: Export button crashes the page"
expect_line "    ended      dropped: conversation resolved"
expect_line "    ended      open (in progress)"
refuse_text "conversation 44"
expect_line "summary: 2 conversations, 4 turns: 1 answered, 1 escalated, 0 superseded, 1 dropped, 1 open; effects: 5 shadow, 1 sent, 0 pending"

STEP="--since 7d"
run --since 7d
[ "$RC" = 0 ] || fail "exit $RC: $ERR"
expect_line "conversation 44 · account 1 · inbox 5 · Channel::Api"
[ "$(line_of 'conversation 44')" -lt "$(line_of 'conversation 43')" ] || fail "the oldest conversation is not first"
expect_text " · message 3001 · +4915112345678"
expect_line "    ended      superseded: a newer message was answered"
expect_line "    decision   answer · question · by retrieval"
expect_line "    answer     An answer nobody saw." # decided, never posted
expect_line "summary: 3 conversations, 5 turns: 1 answered, 1 escalated, 1 superseded, 1 dropped, 1 open; effects: 5 shadow, 1 sent, 0 pending"
run --since all
[ "$RC" = 0 ] || fail "--since all: exit $RC: $ERR"
expect_text "summary: 3 conversations, 5 turns"
run --since "$(date -u -d '90 minutes ago' '+%Y-%m-%d %H:%M:%S+00')"
[ "$RC" = 0 ] || fail "--since TIMESTAMP: exit $RC: $ERR"
expect_text "summary: 1 conversations, 3 turns"

STEP="--conversation"
run --conversation 43 --since all
[ "$RC" = 0 ] || fail "exit $RC: $ERR"
refuse_text "conversation 42"
expect_line "summary: 1 conversations, 1 turns: 0 answered, 1 escalated, 0 superseded, 0 dropped, 0 open; effects: 4 shadow, 1 sent, 0 pending"
run --conversation 99
[ "$RC" = 0 ] || fail "exit $RC: $ERR"
expect_text "no turns since "
expect_text "summary: 0 conversations, 0 turns"

STEP="--json"
run --json --since all
[ "$RC" = 0 ] || fail "exit $RC: $ERR"
ruby -rjson -e '
  d = JSON.parse(STDIN.read)
  def check(c, what)
    c or abort("json: #{what}")
  end
  s = d["summary"]
  check(s == {"conversations"=>3, "turns"=>5, "answered"=>1, "escalated"=>1, "superseded"=>1,
              "dropped"=>1, "open"=>1, "effects"=>{"shadow"=>5, "sent"=>1, "pending"=>0}}, "summary #{s}")
  cs = d["conversations"]
  check(cs.map { |c| c["conversation_id"] } == [44, 43, 42], "order")
  c42 = cs[2]
  check(c42["status"] == "pending" && c42["human_active"] == false && c42["inbox_id"] == 3, "conversation fields")
  check(c42["turns"].map { |t| t["id"] } == [2, 3, 4], "turn order")
  t = c42["turns"][0]
  check(t["content"] == "How do I reset\nmy password?", "content")
  check(t["state"] == "answered" && t["contact"]["name"] == "Alice Doe", "state, contact")
  check(t["decision"]["action"] == "answer" && t["decision"]["reason"] == "the docs cover it", "decision")
  check(t["cited"] == [{"id"=>7, "title"=>"Resetting your password", "heading_path"=>"Account > Password",
                        "source"=>"docs/account.md", "score"=>0.82}], "cited #{t["cited"]}")
  e = t["effects"][0]
  check(e["kind"] == "reply" && e["state"] == "shadow" && e["text"] == "Go to Settings → Security\nand click Reset.", "effect")
  check(e["payload"]["private"] == false, "effect payload")
  esc = cs[1]["turns"][0]["effects"]
  check(esc.map { |x| x["kind"] } == %w[escalation_note labels handoff slack linear_issue], "effect order")
  check(esc[4]["result"]["url"] == "https://linear.app/acme/issue/ENG-1" && esc[4]["text"] == "Export button crashes the page", "linear")
  check(c42["turns"][2]["decision"].nil? && c42["turns"][2]["effects"] == [], "open turn")
  check(d["filter"]["since"] == "all", "filter")
' <<<"$OUT" || fail "JSON document"

STEP="exit statuses"
run --since yesterdayish
[ "$RC" = 2 ] || fail "a bad --since exited $RC"
[[ $ERR == *"bad --since"* ]] || fail "bad --since said: $ERR"
run --since 5x
[ "$RC" = 2 ] || fail "--since 5x exited $RC"
run --conversation abc
[ "$RC" = 2 ] || fail "--conversation abc exited $RC"
run extra
[ "$RC" = 2 ] || fail "an extra argument exited $RC"
(
  unset TIERONE_DATABASE_URL
  set +e
  "$BIN" report >/dev/null 2>&1
  [ $? = 2 ]
) || fail "no database URL must exit 2"
TIERONE_DATABASE_URL=$URL run --since all
[ "$RC" = 0 ] || fail "TIERONE_DATABASE_URL: exit $RC: $ERR"
expect_text "summary: 3 conversations"
fresh_db "$EMPTY"
run --database-url "$(db_url "$EMPTY")"
[ "$RC" = 1 ] || fail "a database without the schema exited $RC"
[[ $ERR == *"tierone migrate"* ]] || fail "no schema said: $ERR"
run --help
[ "$RC" = 0 ] || fail "--help exited $RC"
[[ $OUT == *"usage: tierone report"* ]] || fail "--help printed: $OUT"

[ -n "${KEEP:-}" ] || sql "$TIERONE_TEST_DATABASE_URL" "DROP DATABASE IF EXISTS $DBNAME WITH (FORCE)"
sql "$TIERONE_TEST_DATABASE_URL" "DROP DATABASE IF EXISTS $EMPTY WITH (FORCE)"
log "ok"
