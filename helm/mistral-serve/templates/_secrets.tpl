{{/*
Secrets the chart generates, and the checksum annotations that restart the pods using them.

Each value is worked out once per render and remembered on the root context, so the Secret
and every pod annotation of one render agree whichever template Helm renders first.

`lookup` reads the Secret already in the cluster, so a generated key survives `helm upgrade`.
Without a cluster (`helm template`, `helm lint`, `--dry-run=client`, Argo CD, Flux in
template mode) it finds nothing, and a generated value would be new on every render: a new
Secret, a new checksum, so a second full Ray cluster (twice the GPUs) on every sync. Such a
render is refused unless the value is supplied (an existing Secret, or apiKey.value /
redis.auth.password) or generateSecretsOffline says the render is a throwaway.
README "Secrets".
*/}}

{{/*
Where one key of a chart-made Secret comes from: "value" (given), "cluster" (the Secret
already there), "generate" (a fresh random one) or "refuse" (offline, nothing supplied).
`existing` is the lookup result and `online` whether lookup reached a cluster, passed in so
the choice itself can be tested offline.
Usage: include "mistral-serve.secretSource" (dict "value" "" "existing" $secret "key" "k"
  "online" true "generateOffline" false)
*/}}
{{- define "mistral-serve.secretSource" -}}
{{- $data := (.existing | default dict).data | default dict }}
{{- if .value }}value
{{- else if index $data .key }}cluster
{{- else if or .online .generateOffline }}generate
{{- else }}refuse
{{- end }}
{{- end }}

{{/*
The base64 value of one key of a chart-made Secret, from the source above.
Usage: include "mistral-serve.pickSecretValue" (dict "value" "" "existing" $secret "key" "k"
  "online" true "generateOffline" false "what" "the API key (apiKey.existingSecret ...)")
*/}}
{{- define "mistral-serve.pickSecretValue" -}}
{{- $source := include "mistral-serve.secretSource" . }}
{{- if eq $source "value" }}
{{- .value | b64enc }}
{{- else if eq $source "cluster" }}
{{- index .existing.data .key }}
{{- else if eq $source "generate" }}
{{- /* Alphanumeric: it goes into redis://:<password>@host URLs without escaping. */}}
{{- randAlphaNum 32 | b64enc }}
{{- else }}
{{- fail (printf "this render cannot reach a cluster (helm template, helm lint, --dry-run=client, Argo CD, Flux), so it cannot find %s and would make a new one on every render, and with it a second Ray cluster on every sync. Supply it: %s. For a throwaway render only, set generateSecretsOffline=true. README \"Secrets\"" .what .how) }}
{{- end }}
{{- end }}

{{/*
Whether `lookup` reaches a cluster: listing the release namespace's Secrets (which Helm itself
does to find its releases) returns a SecretList online, even an empty one, and nothing offline.
*/}}
{{- define "mistral-serve.online" -}}
{{- if not (hasKey .mistralServeOnline "checked") }}
{{- $_ := set .mistralServeOnline "checked" (lookup "v1" "Secret" .Release.Namespace "" | empty | not) }}
{{- end }}
{{- if .mistralServeOnline.checked }}true{{ end }}
{{- end }}

{{/* Usage: include "mistral-serve.secretValue" (dict "ctx" $ "name" "secret" "key" "k" "value" ""
  "what" "..." "how" "...") */}}
{{- define "mistral-serve.secretValue" -}}
{{- $cache := .ctx.mistralServeSecretCache | default dict }}
{{- $cacheKey := printf "%s/%s" .name .key }}
{{- if not (hasKey $cache $cacheKey) }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- $_ := set .ctx "mistralServeOnline" (.ctx.mistralServeOnline | default dict) }}
{{- $value := include "mistral-serve.pickSecretValue" (dict "value" .value "existing" $existing "key" .key
      "online" (include "mistral-serve.online" .ctx | eq "true") "generateOffline" .ctx.Values.generateSecretsOffline
      "what" .what "how" .how) }}
{{- $_ := set $cache $cacheKey $value }}
{{- $_ := set .ctx "mistralServeSecretCache" $cache }}
{{- end }}
{{- index $cache $cacheKey }}
{{- end }}

{{- define "mistral-serve.apiKeyValue" -}}
{{- include "mistral-serve.secretValue" (dict "ctx" . "name" (include "mistral-serve.apiKeySecretName" .) "key" .Values.apiKey.existingSecretKey "value" .Values.apiKey.value
      "what" "the generated API key" "how" "apiKey.existingSecret (a Secret you create), or apiKey.value") }}
{{- end }}

{{- define "mistral-serve.redisPasswordValue" -}}
{{- include "mistral-serve.secretValue" (dict "ctx" . "name" (include "mistral-serve.redisSecretName" .) "key" .Values.redis.auth.existingSecretPasswordKey "value" .Values.redis.auth.password
      "what" "the generated Redis password" "how" "redis.auth.existingSecret (a Secret you create), or redis.auth.password") }}
{{- end }}

{{- define "mistral-serve.generatesApiKey" -}}
{{- if and .Values.apiKey.enabled (not .Values.apiKey.existingSecret) }}true{{ end }}
{{- end }}

{{- define "mistral-serve.generatesRedisPassword" -}}
{{- if and (include "mistral-serve.inChartRedis" .) (not .Values.redis.auth.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Annotations of the Ray pods: a changed generated secret changes the pod template, so KubeRay
rolls the cluster (a new RayCluster under upgrade.strategy NewCluster). A Secret you supply
is yours to roll (README "Rotating secrets"): the chart never reads its value.
*/}}
{{- define "mistral-serve.rayChecksums" -}}
{{- if include "mistral-serve.generatesApiKey" . }}
checksum/api-key: {{ include "mistral-serve.apiKeyValue" . | sha256sum }}
{{- end }}
{{- if include "mistral-serve.generatesRedisPassword" . }}
checksum/redis-password: {{ include "mistral-serve.redisPasswordValue" . | sha256sum }}
{{- end }}
{{- end }}

{{- define "mistral-serve.redisChecksums" -}}
{{- if include "mistral-serve.generatesRedisPassword" . }}
checksum/redis-password: {{ include "mistral-serve.redisPasswordValue" . | sha256sum }}
{{- end }}
{{- end }}
