{{/* _helpers.tpl: names, labels, the config table and the datastore wiring of helm/tierone. */}}

{{- define "tierone.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tierone.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: (dict "ctx" $ "component" "worker") -> <fullname>-worker */}}
{{- define "tierone.componentName" -}}
{{- printf "%s-%s" (include "tierone.fullname" .ctx | trunc (int (sub 62 (len .component)))) .component | trimSuffix "-" -}}
{{- end -}}

{{- define "tierone.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels (immutable: never the version): (dict "ctx" $ "component" "worker") */}}
{{- define "tierone.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tierone.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tierone.labels" -}}
helm.sh/chart: {{ include "tierone.chart" .ctx }}
{{ include "tierone.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tierone
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tierone.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "tierone.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tierone.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The config table: every key of `tierone-worker --config-json` and `tierone-ingest
   --config-json` and its environment variable. tests/integration/test_helm.sh checks it
   against the binaries both ways. */}}
{{- define "tierone.envNames" -}}
admin_host: TIERONE_ADMIN_HOST
admin_port: TIERONE_ADMIN_PORT
ai_retries: TIERONE_AI_RETRIES
beat_interval: TIERONE_BEAT_INTERVAL
body_timeout: TIERONE_BODY_TIMEOUT
chatwoot_base_url: CHATWOOT_BASE_URL
chatwoot_bot_token: CHATWOOT_BOT_TOKEN
chatwoot_rate: TIERONE_CHATWOOT_RATE
chatwoot_user_token: CHATWOOT_USER_TOKEN
concurrency: TIERONE_CONCURRENCY
contact_sync_account: TIERONE_CONTACT_SYNC_ACCOUNT
contact_sync_database_url: TIERONE_CONTACT_SYNC_DATABASE_URL
contact_sync_interval: TIERONE_CONTACT_SYNC_INTERVAL
contact_sync_sql: TIERONE_CONTACT_SYNC_SQL
database_pipeline: TIERONE_DATABASE_PIPELINE
database_pool: TIERONE_DATABASE_POOL
database_prepare: TIERONE_DATABASE_PREPARE
database_url: TIERONE_DATABASE_URL
dead_max_jobs: TIERONE_DEAD_MAX_JOBS
dead_timeout_s: TIERONE_DEAD_TIMEOUT_S
debounce: TIERONE_DEBOUNCE
dedupe_ttl: TIERONE_DEDUPE_TTL
diagnostic_jobs: TIERONE_DIAGNOSTIC_JOBS
fetch_idle_max: TIERONE_FETCH_IDLE_MAX
header_timeout: TIERONE_HEADER_TIMEOUT
heartbeat_ttl: TIERONE_HEARTBEAT_TTL
idle_timeout: TIERONE_IDLE_TIMEOUT
inbox_config: TIERONE_INBOX_CONFIG
linear_api_key: LINEAR_API_KEY
linear_api_url: LINEAR_API_URL
linear_rate: TIERONE_LINEAR_RATE
linear_team_id: LINEAR_TEAM_ID
listen_host: TIERONE_LISTEN_HOST
listen_port: TIERONE_LISTEN_PORT
llm_api_key: LLM_API_KEY
llm_base_url: LLM_BASE_URL
llm_max_tokens: LLM_MAX_TOKENS
llm_model: LLM_MODEL
llm_rate: TIERONE_LLM_RATE
llm_response_format: LLM_RESPONSE_FORMAT
llm_timeout: LLM_TIMEOUT
llm_token_param: LLM_TOKEN_PARAM
log_level: TIERONE_LOG_LEVEL
max_body: TIERONE_MAX_BODY
max_connections: TIERONE_MAX_CONNECTIONS
max_header_bytes: TIERONE_MAX_HEADER_BYTES
max_recoveries: TIERONE_MAX_RECOVERIES
max_retries: TIERONE_MAX_RETRIES
poll_interval: TIERONE_POLL_INTERVAL
processes: TIERONE_INGEST_PROCESSES
queues: TIERONE_QUEUES
recovery_interval: TIERONE_RECOVERY_INTERVAL
redis_timeout: TIERONE_REDIS_TIMEOUT
redis_url: TIERONE_REDIS_URL
shadow: TIERONE_SHADOW
shutdown_timeout: TIERONE_SHUTDOWN_TIMEOUT
signature_tolerance: TIERONE_SIGNATURE_TOLERANCE
slack_webhook_url: SLACK_WEBHOOK_URL
spool_max_bytes: TIERONE_SPOOL_MAX_BYTES
spool_path: TIERONE_SPOOL_PATH
tag: TIERONE_TAG
timestamp_format: TIERONE_TIMESTAMP_FORMAT
unsigned_token: TIERONE_UNSIGNED_TOKEN
webhook_secrets: TIERONE_WEBHOOK_SECRETS
{{- end -}}

{{/* Secret settings, per binary (values under .Values.secrets). */}}
{{- define "tierone.secretKeys" -}}
worker: [redis_url, database_url, chatwoot_bot_token, chatwoot_user_token, llm_api_key, slack_webhook_url, linear_api_key, contact_sync_database_url]
ingest: [redis_url, webhook_secrets, unsigned_token]
{{- end -}}

{{/* One config value as an environment string: bools true/false, numbers as integers. */}}
{{- define "tierone.envValue" -}}
{{- if kindIs "bool" . -}}
{{- ternary "true" "false" . -}}
{{- else if or (kindIs "float64" .) (kindIs "int" .) (kindIs "int64" .) -}}
{{- printf "%d" (int64 .) -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/* A duration setting in milliseconds ("25s", "250ms", "2m", "1h", bare = ms). */}}
{{- define "tierone.durationMs" -}}
{{- $s := toString . -}}
{{- if regexMatch "^[0-9]+ms$" $s -}}{{ trimSuffix "ms" $s | int64 }}
{{- else if regexMatch "^[0-9]+s$" $s -}}{{ mul (trimSuffix "s" $s | int64) 1000 }}
{{- else if regexMatch "^[0-9]+m$" $s -}}{{ mul (trimSuffix "m" $s | int64) 60000 }}
{{- else if regexMatch "^[0-9]+h$" $s -}}{{ mul (trimSuffix "h" $s | int64) 3600000 }}
{{- else if regexMatch "^[0-9]+$" $s -}}{{ $s | int64 }}
{{- else -}}{{ fail (printf "not a duration: %q" $s) }}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds of a component, refused unless it exceeds the binary's
   shutdown_timeout ("" = its built-in 25s worker / 20s ingest). (dict "ctx" $ "component" "worker") */}}
{{- define "tierone.gracePeriod" -}}
{{- $v := index .ctx.Values .component -}}
{{- $timeout := $v.config.shutdown_timeout | toString -}}
{{- if eq $timeout "" -}}{{- $timeout = ternary "25s" "20s" (eq .component "worker") -}}{{- end -}}
{{- $ms := include "tierone.durationMs" $timeout | int64 -}}
{{- $grace := $v.terminationGracePeriodSeconds | int64 -}}
{{- if le (mul $grace 1000) $ms -}}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed %s.config.shutdown_timeout (%s): Kubernetes would kill jobs that are still finishing" .component $grace .component $timeout) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/* The non-secret settings of a component as a ConfigMap's data (environment variable ->
   value); "" values are left out so the binary's default applies. (dict "ctx" $ "component" "worker") */}}
{{- define "tierone.configData" -}}
{{- $names := include "tierone.envNames" .ctx | fromYaml -}}
{{- $secret := index (include "tierone.secretKeys" .ctx | fromYaml) .component -}}
{{- $cfg := deepCopy (index .ctx.Values .component).config -}}
{{- if and (eq .component "worker") .ctx.Values.inboxConfig (eq (toString (default "" $cfg.inbox_config)) "") -}}
{{- $_ := set $cfg "inbox_config" .ctx.Values.inboxConfigPath -}}
{{- end -}}
{{- range $key := keys $cfg | sortAlpha }}
{{- $val := index $cfg $key -}}
{{- if not (hasKey $names $key) -}}
{{- fail (printf "%s.config.%s: no such setting of tierone-%s (see tierone-%s --config-json)" $.component $key $.component $.component) -}}
{{- end -}}
{{- if has $key $secret -}}
{{- fail (printf "%s.config.%s is a secret: set secrets.%s (or put %s in secrets.existingSecret)" $.component $key $key (index $names $key)) -}}
{{- end -}}
{{- if ne (toString $val) "" }}
{{ index $names $key }}: {{ include "tierone.envValue" $val | quote }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* ---- Redis ---------------------------------------------------------------------- */}}

{{/* bundled | external | secret (the whole URL comes from the Secret) */}}
{{- define "tierone.redis.mode" -}}
{{- if .Values.redis.enabled -}}bundled
{{- else if .Values.externalRedis.host -}}external
{{- else -}}secret
{{- end -}}
{{- end -}}

{{- define "tierone.redis.host" -}}
{{- if .Values.redis.enabled -}}{{ include "tierone.componentName" (dict "ctx" . "component" "redis") }}
{{- else -}}{{ .Values.externalRedis.host }}
{{- end -}}
{{- end -}}

{{- define "tierone.redis.port" -}}
{{- if .Values.redis.enabled -}}6379{{- else -}}{{ .Values.externalRedis.port | int }}{{- end -}}
{{- end -}}

{{- define "tierone.redis.database" -}}
{{- if .Values.redis.enabled -}}{{ .Values.redis.database | int }}{{- else -}}{{ .Values.externalRedis.database | int }}{{- end -}}
{{- end -}}

{{/* Where the Redis password is: "name/key", or "" for none. */}}
{{- define "tierone.redis.passwordRef" -}}
{{- if .Values.redis.enabled -}}
{{ include "tierone.componentName" (dict "ctx" . "component" "redis") }}/redis-password
{{- else if .Values.externalRedis.existingSecret -}}
{{ .Values.externalRedis.existingSecret }}/{{ .Values.externalRedis.existingSecretPasswordKey }}
{{- else if and .Values.externalRedis.password (not .Values.secrets.existingSecret) -}}
{{ include "tierone.fullname" . }}/TIERONE_REDIS_PASSWORD
{{- end -}}
{{- end -}}

{{/* env entries that give TIERONE_REDIS_URL. */}}
{{- define "tierone.redis.env" -}}
{{- $mode := include "tierone.redis.mode" . -}}
{{- if eq $mode "secret" }}
{{- $name := default (include "tierone.fullname" .) .Values.secrets.existingSecret }}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.redis_url) }}
{{- fail "no Redis: set redis.enabled=true, externalRedis.host (e.g. <chatwoot-release>-chatwoot-redis-master) or secrets.redis_url" }}
{{- end }}
- name: TIERONE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: TIERONE_REDIS_URL
{{- else }}
{{- $ref := include "tierone.redis.passwordRef" . }}
{{- $user := ternary "" .Values.externalRedis.username .Values.redis.enabled }}
{{- $scheme := ternary "rediss" "redis" (and (not .Values.redis.enabled) .Values.externalRedis.tls) }}
{{- $auth := "" }}
{{- if $ref }}
{{- $auth = printf "%s:$(TIERONE_REDIS_PASSWORD)@" ($user | urlquery) }}
- name: TIERONE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ dir $ref }}
      key: {{ base $ref }}
{{- else if $user }}
{{- $auth = printf "%s@" ($user | urlquery) }}
{{- end }}
- name: TIERONE_REDIS_URL
  value: {{ printf "%s://%s%s:%s/%s" $scheme $auth (include "tierone.redis.host" .) (include "tierone.redis.port" .) (include "tierone.redis.database" .) | quote }}
{{- end }}
{{- end -}}

{{/* ---- PostgreSQL ----------------------------------------------------------------- */}}

{{/* bundled | external | secret (URL in the Secret) | none */}}
{{- define "tierone.database.mode" -}}
{{- if .Values.postgresql.enabled -}}bundled
{{- else if .Values.externalDatabase.host -}}external
{{- else if or .Values.secrets.existingSecret .Values.secrets.database_url -}}secret
{{- else -}}none
{{- end -}}
{{- end -}}

{{/* "name/key" of the database password, or "". (dict "ctx" $ "secret" <name of the chart Secret to use>) */}}
{{- define "tierone.database.passwordRef" -}}
{{- $v := .ctx.Values -}}
{{- if $v.postgresql.enabled -}}
{{ include "tierone.componentName" (dict "ctx" .ctx "component" "postgresql") }}/password
{{- else if $v.externalDatabase.existingSecret -}}
{{ $v.externalDatabase.existingSecret }}/{{ $v.externalDatabase.existingSecretPasswordKey }}
{{- else if and $v.externalDatabase.password (not $v.secrets.existingSecret) -}}
{{ .secret }}/TIERONE_DATABASE_PASSWORD
{{- end -}}
{{- end -}}

{{/* env entries that give TIERONE_DATABASE_URL (none when no database is configured).
   (dict "ctx" $ "secret" <name of the chart Secret to use>) */}}
{{- define "tierone.database.env" -}}
{{- $v := .ctx.Values -}}
{{- $mode := include "tierone.database.mode" .ctx -}}
{{- if eq $mode "secret" }}
{{- if $v.secrets.existingSecret }}
- name: TIERONE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.existingSecret }}
      key: TIERONE_DATABASE_URL
      optional: true
{{- else }}
- name: TIERONE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: TIERONE_DATABASE_URL
{{- end }}
{{- else if ne $mode "none" }}
{{- $ref := include "tierone.database.passwordRef" . }}
{{- $host := ternary (include "tierone.componentName" (dict "ctx" .ctx "component" "postgresql")) $v.externalDatabase.host $v.postgresql.enabled }}
{{- $port := ternary 5432 ($v.externalDatabase.port | int) $v.postgresql.enabled }}
{{- $user := ternary $v.postgresql.username $v.externalDatabase.username $v.postgresql.enabled }}
{{- $db := ternary $v.postgresql.database $v.externalDatabase.database $v.postgresql.enabled }}
{{- $ssl := ternary "disable" $v.externalDatabase.sslmode $v.postgresql.enabled }}
{{- $auth := $user | urlquery }}
{{- if $ref }}
{{- $auth = printf "%s:$(TIERONE_DATABASE_PASSWORD)" $auth }}
- name: TIERONE_DATABASE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ dir $ref }}
      key: {{ base $ref }}
{{- end }}
- name: TIERONE_DATABASE_URL
  value: {{ printf "postgresql://%s@%s:%d/%s?sslmode=%s" $auth $host $port ($db | urlquery) $ssl | quote }}
{{- end }}
{{- end -}}

{{/* env entries of the other secret settings of a component: from secrets.existingSecret
   (optional keys), else from the chart's Secret for the ones that are set.
   (dict "ctx" $ "component" "worker") */}}
{{- define "tierone.secretEnv" -}}
{{- $v := .ctx.Values -}}
{{- $names := include "tierone.envNames" .ctx | fromYaml -}}
{{- $keys := index (include "tierone.secretKeys" .ctx | fromYaml) .component -}}
{{- range $key := $keys }}
{{- if not (has $key (list "redis_url" "database_url")) }}
{{- if $v.secrets.existingSecret }}
- name: {{ index $names $key }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.secrets.existingSecret }}
      key: {{ index $names $key }}
      optional: true
{{- else if index $v.secrets $key }}
- name: {{ index $names $key }}
  valueFrom:
    secretKeyRef:
      name: {{ include "tierone.fullname" $.ctx }}
      key: {{ index $names $key }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The chart Secret's data (not rendered when secrets.existingSecret is set). */}}
{{- define "tierone.secretData" -}}
{{- $names := include "tierone.envNames" . | fromYaml -}}
{{- range $key := list "redis_url" "database_url" "chatwoot_bot_token" "chatwoot_user_token" "llm_api_key" "slack_webhook_url" "linear_api_key" "contact_sync_database_url" "webhook_secrets" "unsigned_token" }}
{{- with index $.Values.secrets $key }}
{{ index $names $key }}: {{ . | toString | b64enc | quote }}
{{- end }}
{{- end }}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.host .Values.externalRedis.password (not .Values.externalRedis.existingSecret) }}
TIERONE_REDIS_PASSWORD: {{ .Values.externalRedis.password | toString | b64enc | quote }}
{{- end }}
{{- if and (not .Values.postgresql.enabled) .Values.externalDatabase.host .Values.externalDatabase.password (not .Values.externalDatabase.existingSecret) }}
TIERONE_DATABASE_PASSWORD: {{ .Values.externalDatabase.password | toString | b64enc | quote }}
{{- end }}
{{- end -}}

{{/* Pod annotations that roll the pods when their config or secrets change.
   (dict "ctx" $ "component" "worker") */}}
{{- define "tierone.checksums" -}}
checksum/config: {{ include "tierone.configData" . | sha256sum }}
{{- if eq .component "worker" }}
checksum/inbox-config: {{ toJson .ctx.Values.inboxConfig | sha256sum }}
{{- end }}
{{- if .ctx.Values.secrets.existingSecret }}
{{- $s := lookup "v1" "Secret" .ctx.Release.Namespace .ctx.Values.secrets.existingSecret }}
checksum/secret: {{ toJson (dig "data" (dict) ($s | default (dict))) | sha256sum }}
{{- else }}
checksum/secret: {{ include "tierone.secretData" .ctx | sha256sum }}
{{- end }}
{{- end -}}

{{/* Which autoscaler the worker gets: keda | hpa | "" */}}
{{- define "tierone.worker.scaler" -}}
{{- $a := .Values.worker.autoscaling -}}
{{- if $a.enabled -}}
{{- if and $a.keda.enabled (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") -}}keda{{- else -}}hpa{{- end -}}
{{- end -}}
{{- end -}}

{{/* Queues the KEDA triggers watch: keda.queues, else the names in worker.config.queues. */}}
{{- define "tierone.worker.queues" -}}
{{- $q := .Values.worker.autoscaling.keda.queues -}}
{{- if not $q -}}
{{- $spec := default "actions:3,ai:2,events:2,linear:1,sync:1" (toString .Values.worker.config.queues) -}}
{{- $q = list -}}
{{- range splitList "," $spec -}}
{{- $q = append $q (regexReplaceAll ":.*$" (trim .) "") -}}
{{- end -}}
{{- end -}}
{{- toYaml (uniq $q) -}}
{{- end -}}

{{/* Security context, volumes and mounts every tierone container shares. */}}
{{- define "tierone.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end -}}

{{/* Hook events of the migration Job (see migrate-job.yaml). */}}
{{- define "tierone.migrate.hook" -}}
{{- ternary "post-install,pre-upgrade" "pre-install,pre-upgrade" .Values.postgresql.enabled -}}
{{- end -}}
