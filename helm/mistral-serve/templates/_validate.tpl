{{/*
Cross-field checks JSON Schema cannot express (it cannot compare two values). Each failure
says what to change. Included at the top of rayservice.yaml so any render runs them.
values.schema.json already refuses single bad values; the tensor-parallel check is repeated
here for installs run with --skip-schema-validation.
*/}}
{{- define "mistral-serve.validate" -}}
{{- $v := .Values }}
{{- $tp := int $v.tensorParallelSize }}
{{- if not (has $tp (list 1 2 4 8)) }}
{{- fail (printf "tensorParallelSize must be 1, 2, 4 or 8 (a power of two, at most the 8 KV heads of Mistral-7B); got %v" $v.tensorParallelSize) }}
{{- end }}
{{- if gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas) }}
{{- fail (printf "autoscaling.minReplicas (%v) must be <= autoscaling.maxReplicas (%v)" $v.autoscaling.minReplicas $v.autoscaling.maxReplicas) }}
{{- end }}
{{- if and $v.autoscaling.enabled (eq (int $v.autoscaling.minReplicas) 0) (eq (int $v.cpuWorker.replicas) 0) }}
{{- fail "autoscaling.minReplicas 0 needs cpuWorker.replicas >= 1: the head takes no Serve replicas (num-cpus 0), so without a CPU pod the Ingress replicas would keep a GPU pod running" }}
{{- end }}
{{- include "mistral-serve.validateCluster" . }}
{{- include "mistral-serve.validateModel" . }}
{{- include "mistral-serve.validateRedis" . }}
{{- end }}

{{- define "mistral-serve.validateCluster" -}}
{{- $v := .Values }}
{{- $name := include "mistral-serve.fullname" . }}
{{- if not (regexMatch "^[a-z]" $name) }}
{{- fail (printf "the release name must start with a letter (KubeRay names the RayService %s and requires a DNS-1035 label); use another release name or set fullnameOverride" $name) }}
{{- end }}
{{- if not (semverCompare ">=2.53.0-0" $v.rayVersion) }}
{{- fail (printf "rayVersion %s is too old: the chart needs Ray >= 2.53.0 (token auth, and the HTTP health checks KubeRay uses from 2.53)" $v.rayVersion) }}
{{- end }}
{{- $tag := include "mistral-serve.imageTag" . }}
{{- $tagged := regexFind "-ray[0-9]+\\.[0-9]+\\.[0-9]+$" $tag | trimPrefix "-ray" }}
{{- if and $tagged (ne $tagged $v.rayVersion) }}
{{- fail (printf "image.tag %s carries Ray %s but rayVersion is %s; set rayVersion to the image's Ray (KubeRay picks probes from it and the autoscaler runs the head image)" $tag $tagged $v.rayVersion) }}
{{- end }}
{{- if and (not $tagged) $v.image.requireRayVersionInTag }}
{{- fail (printf "image.tag %s does not say its Ray version; tag the image <version>-ray%s, or set image.requireRayVersionInTag=false once you have checked that rayVersion (%s) is the Ray inside it" $tag $v.rayVersion $v.rayVersion) }}
{{- end }}
{{- range $key, $_ := $v.podLabels }}
{{- if or (hasPrefix "app.kubernetes.io/" $key) (hasPrefix "ray.io/" $key) }}
{{- fail (printf "podLabels must not set %s: the chart's PodDisruptionBudgets and NetworkPolicies and KubeRay's Services select on app.kubernetes.io/* and ray.io/* labels" $key) }}
{{- end }}
{{- end }}
{{- if eq $v.upgrade.strategy "NewClusterWithIncrementalUpgrade" }}
{{- $inc := $v.upgrade.incremental }}
{{- if not $v.autoscaling.enabled }}
{{- fail "upgrade.strategy NewClusterWithIncrementalUpgrade needs autoscaling.enabled=true (KubeRay scales the two clusters against each other)" }}
{{- end }}
{{- if not $inc.gatewayClassName }}
{{- fail "upgrade.strategy NewClusterWithIncrementalUpgrade needs upgrade.incremental.gatewayClassName (KubeRay routes traffic through a Gateway API Gateway of that class)" }}
{{- end }}
{{- if gt (int $inc.stepSizePercent) (int $inc.maxSurgePercent) }}
{{- fail (printf "upgrade.incremental.stepSizePercent (%v) must be <= upgrade.incremental.maxSurgePercent (%v)" $inc.stepSizePercent $inc.maxSurgePercent) }}
{{- end }}
{{- end }}
{{- $gcs := $v.gcsFaultTolerance.externalRedis }}
{{- if and $gcs.address (not $v.gcsFaultTolerance.enabled) }}
{{- fail "gcsFaultTolerance.externalRedis.address is set but gcsFaultTolerance.enabled is false" }}
{{- end }}
{{- if and $gcs.existingSecret (not $gcs.address) }}
{{- fail "gcsFaultTolerance.externalRedis.existingSecret needs gcsFaultTolerance.externalRedis.address (host:port)" }}
{{- end }}
{{- end }}

{{- define "mistral-serve.validateModel" -}}
{{- $m := .Values.model }}
{{- if and $m.pvc.enabled $m.hostPath }}
{{- fail "model: both model.pvc.enabled and model.hostPath are set; set exactly one model source" }}
{{- end }}
{{- if and $m.hostPath $m.download.enabled }}
{{- fail "model: model.download cannot fill model.hostPath (it is mounted read-only); use model.download alone, or with model.pvc" }}
{{- end }}
{{- if not (or $m.pvc.enabled $m.hostPath $m.download.enabled) }}
{{- fail "model: no model source; set exactly one of model.pvc.enabled, model.hostPath or model.download.enabled (with model.download.url)" }}
{{- end }}
{{- if and $m.download.enabled (not $m.download.url) }}
{{- fail "model.download.url is required when model.download.enabled is true (s3://bucket/prefix or https://.../model.tar.gz)" }}
{{- end }}
{{- end }}

{{- define "mistral-serve.validateRedis" -}}
{{- $ext := .Values.externalRedis }}
{{- if and .Values.redis.enabled (or $ext.url $ext.existingSecret) }}
{{- fail "redis: redis.enabled (in-chart Redis) and externalRedis are both set; set redis.enabled=false to use the external one" }}
{{- end }}
{{- if and $ext.url $ext.existingSecret }}
{{- fail "externalRedis: set either externalRedis.url or externalRedis.existingSecret, not both" }}
{{- end }}
{{- if regexMatch "^[a-z]+://[^/@]*:[^/@]*@" $ext.url }}
{{- fail "externalRedis.url must not carry a password: it would be stored in the RayService in plain text; put the URL in a Secret and set externalRedis.existingSecret" }}
{{- end }}
{{- end }}
