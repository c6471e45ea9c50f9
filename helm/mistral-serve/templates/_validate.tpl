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
{{- include "mistral-serve.validateModel" . }}
{{- include "mistral-serve.validateRedis" . }}
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
