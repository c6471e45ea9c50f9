{{/*
Secrets the chart generates, and the checksum annotations that restart the pods using them.

Each value is worked out once per render and remembered on the root context, so the Secret
and every pod annotation of one render agree whichever template Helm renders first.

`lookup` reads the Secret already in the cluster, so a generated key survives `helm upgrade`.
Without a cluster (`helm template`, `--dry-run=client`, Argo CD, Flux's helm-controller in
template mode) it finds nothing and every render makes a new key, a new Secret and a new
checksum. So GitOps installs supply existing Secrets (apiKey.existingSecret,
redis.auth.existingSecret); README "Secrets" explains.
*/}}

{{/*
The base64 value of one key of a chart-made Secret: the given value, else the one already in
the cluster, else a fresh random one. `existing` is the lookup result, passed in so the
choice itself can be tested offline.
Usage: include "mistral-serve.pickSecretValue" (dict "value" "" "existing" $secret "key" "k")
*/}}
{{- define "mistral-serve.pickSecretValue" -}}
{{- $data := (.existing | default dict).data | default dict }}
{{- if .value }}
{{- .value | b64enc }}
{{- else if index $data .key }}
{{- index $data .key }}
{{- else }}
{{- /* Alphanumeric: it goes into redis://:<password>@host URLs without escaping. */}}
{{- randAlphaNum 32 | b64enc }}
{{- end }}
{{- end }}

{{/* Usage: include "mistral-serve.secretValue" (dict "ctx" $ "name" "secret" "key" "k" "value" "") */}}
{{- define "mistral-serve.secretValue" -}}
{{- $cache := .ctx.mistralServeSecretCache | default dict }}
{{- $cacheKey := printf "%s/%s" .name .key }}
{{- if not (hasKey $cache $cacheKey) }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- $value := include "mistral-serve.pickSecretValue" (dict "value" .value "existing" $existing "key" .key) }}
{{- $_ := set $cache $cacheKey $value }}
{{- $_ := set .ctx "mistralServeSecretCache" $cache }}
{{- end }}
{{- index $cache $cacheKey }}
{{- end }}

{{- define "mistral-serve.apiKeyValue" -}}
{{- include "mistral-serve.secretValue" (dict "ctx" . "name" (include "mistral-serve.apiKeySecretName" .) "key" .Values.apiKey.existingSecretKey "value" .Values.apiKey.value) }}
{{- end }}

{{- define "mistral-serve.redisPasswordValue" -}}
{{- include "mistral-serve.secretValue" (dict "ctx" . "name" (include "mistral-serve.redisSecretName" .) "key" .Values.redis.auth.existingSecretPasswordKey "value" "") }}
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
