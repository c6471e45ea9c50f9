{{/* Names, labels and images shared by every template. */}}

{{- define "mistral-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The RayService name, and the prefix of everything else. 40 characters, not 63: KubeRay
derives longer names from it (<name>-xxxxx for the RayCluster, then -head-xxxxx pods,
<name>-serve-svc, <name>-head-svc), and those must stay valid DNS labels.
*/}}
{{- define "mistral-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mistral-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mistral-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mistral-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mistral-serve.labels" -}}
helm.sh/chart: {{ include "mistral-serve.chart" . }}
{{ include "mistral-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the Ray pods: the API Service selects them (plus KubeRay's ray.io/serve). */}}
{{- define "mistral-serve.rayPodLabels" -}}
{{ include "mistral-serve.selectorLabels" . }}
app.kubernetes.io/component: ray
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mistral-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "mistral-serve.redisFullname" -}}
{{- printf "%s-redis" (include "mistral-serve.fullname" .) }}
{{- end }}

{{- define "mistral-serve.redisSecretName" -}}
{{- .Values.redis.auth.existingSecret | default (include "mistral-serve.redisFullname" .) }}
{{- end }}

{{- define "mistral-serve.apiKeySecretName" -}}
{{- .Values.apiKey.existingSecret | default (printf "%s-api-key" (include "mistral-serve.fullname" .)) }}
{{- end }}

{{- define "mistral-serve.modelClaimName" -}}
{{- .Values.model.pvc.existingClaim | default (printf "%s-model" (include "mistral-serve.fullname" .)) }}
{{- end }}

{{/*
A Secret value, base64-encoded: the given value, else the one already in the cluster (so a
generated password survives `helm upgrade`), else a fresh random one.
Usage: include "mistral-serve.secretValue" (dict "ctx" $ "name" "secret" "key" "k" "value" "")
*/}}
{{- define "mistral-serve.secretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .name }}
{{- if .value }}
{{- .value | b64enc }}
{{- else if and $existing (index $existing.data .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum 32 | b64enc }}
{{- end }}
{{- end }}
