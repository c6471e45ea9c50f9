{{/* Names, labels and images shared by every template. */}}

{{- define "mistral-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The RayService name, and the prefix of everything else. 40 characters, not 63: KubeRay
derives longer names from it (<name>-xxxxx for the RayCluster, then -head-xxxxx pods,
<name>-serve-svc, <name>-head-svc), and the chart adds <name>-gcs-redis-headless; all of
them must stay valid DNS labels (tests/helm renders a 45-character release name).
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

{{/*
Labels of the Ray pods. The PodDisruptionBudgets and NetworkPolicies select on the chart's
own labels, so podLabels go underneath them (and _validate.tpl refuses the keys outright).
*/}}
{{- define "mistral-serve.rayPodLabels" -}}
{{- $own := include "mistral-serve.selectorLabels" . | fromYaml }}
{{- $_ := set $own "app.kubernetes.io/component" "ray" }}
{{- toYaml (merge $own (deepCopy (.Values.podLabels | default dict))) }}
{{- end }}

{{/* The selector of every Ray pod of this release, head and workers, any RayCluster. */}}
{{- define "mistral-serve.raySelector" -}}
{{ include "mistral-serve.selectorLabels" . }}
app.kubernetes.io/component: ray
{{- end }}

{{/*
The selector of the client Service (service.yaml): the Ray pods of this release, in any
RayCluster, that KubeRay marks as serving; with service.excludeHead, workers only.
*/}}
{{- define "mistral-serve.serveSelector" -}}
{{ include "mistral-serve.raySelector" . }}
ray.io/serve: "true"
{{- if .Values.service.excludeHead }}
ray.io/node-type: worker
{{- end }}
{{- end }}

{{/* The tag says the Ray version it carries: <appVersion>-ray<rayVersion> unless set. */}}
{{- define "mistral-serve.imageTag" -}}
{{- .Values.image.tag | default (printf "%s-ray%s" .Chart.AppVersion .Values.rayVersion) }}
{{- end }}

{{- define "mistral-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "mistral-serve.imageTag" .) }}
{{- end }}

{{/* The fetch-model image for the URL's scheme: s3:// needs the aws CLI, https:// python3. */}}
{{- define "mistral-serve.downloadImage" -}}
{{- $d := .Values.model.download }}
{{- $image := ternary $d.s3Image $d.httpImage (hasPrefix "s3://" $d.url) }}
{{- toYaml $image }}
{{- end }}

{{- define "mistral-serve.redisFullname" -}}
{{- printf "%s-redis" (include "mistral-serve.fullname" .) }}
{{- end }}

{{- define "mistral-serve.gcsRedisFullname" -}}
{{- printf "%s-gcs-redis" (include "mistral-serve.fullname" .) }}
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

{{/* The GCS state lives in the in-chart GCS Redis unless an external address is given. */}}
{{- define "mistral-serve.inChartGcsRedis" -}}
{{- if and .Values.gcsFaultTolerance.enabled (not .Values.gcsFaultTolerance.externalRedis.address) }}true{{ end }}
{{- end }}

{{/* Any in-chart Redis (index or GCS): they share one password Secret. */}}
{{- define "mistral-serve.inChartRedis" -}}
{{- if or .Values.redis.enabled (include "mistral-serve.inChartGcsRedis" .) }}true{{ end }}
{{- end }}

{{/* GPU pods at the low end: the fixed count, or the autoscaler's floor. */}}
{{- define "mistral-serve.minGpuPods" -}}
{{- ternary .Values.autoscaling.minReplicas .Values.replicas .Values.autoscaling.enabled | int }}
{{- end }}

{{/* rayStartParams as KubeRay wants them: every value a string. */}}
{{- define "mistral-serve.stringMap" -}}
{{- $out := dict }}
{{- range $key, $value := . }}
{{- $_ := set $out $key (toString $value) }}
{{- end }}
{{- toYaml $out }}
{{- end }}
