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
{{- $copies := ternary $v.autoscaling.maxReplicas $v.replicas $v.autoscaling.enabled | int }}
{{- if gt $copies (int $v.worker.maxPods) }}
{{- fail (printf "%s (%d) is above worker.maxPods (%d), the most GPU pods Ray's autoscaler may run: lower it, or raise worker.maxPods too (that builds a new Ray cluster: README \"Scaling\")" (ternary "autoscaling.maxReplicas" "replicas" $v.autoscaling.enabled) $copies (int $v.worker.maxPods)) }}
{{- end }}
{{- include "mistral-serve.validateCluster" . }}
{{- include "mistral-serve.validateModel" . }}
{{- include "mistral-serve.validateRedis" . }}
{{- include "mistral-serve.validateOwnedNames" . }}
{{- include "mistral-serve.validateService" . }}
{{- if .Values.redis.enabled }}
{{- include "mistral-serve.validateRedisMemory" (dict "r" .Values.redis "key" "redis") }}
{{- end }}
{{- if include "mistral-serve.inChartGcsRedis" . }}
{{- include "mistral-serve.validateRedisMemory" (dict "r" .Values.gcsFaultTolerance.redis "key" "gcsFaultTolerance.redis") }}
{{- end }}
{{- end }}

{{/*
A Redis that persists forks to rewrite its AOF; the child shares the parent's pages until the
parent writes them, so under load the pod can briefly hold the data set twice. Below
2 x maxMemory + 256Mi the container's limit turns a rewrite into an OOM kill. Checked where
both values use a unit this can read (Redis mb/gb, Kubernetes Mi/Gi).
*/}}
{{- define "mistral-serve.mebibytes" -}}
{{- $m := regexFindAll "^([0-9]+)(mb|gb|Mi|Gi)$" (toString .) 1 }}
{{- if $m }}
{{- $n := regexFind "^[0-9]+" (first $m) | int }}
{{- if or (hasSuffix "gb" (first $m)) (hasSuffix "Gi" (first $m)) }}{{ mul $n 1024 }}{{ else }}{{ $n }}{{ end }}
{{- end }}
{{- end }}

{{- define "mistral-serve.validateRedisMemory" -}}
{{- $r := .r }}
{{- $limits := ($r.resources | default dict).limits | default dict }}
{{- if and $r.persistence.enabled $limits.memory }}
{{- $max := include "mistral-serve.mebibytes" $r.maxMemory }}
{{- $limit := include "mistral-serve.mebibytes" $limits.memory }}
{{- if and $max $limit }}
{{- $needed := add (mul (int $max) 2) 256 }}
{{- if lt (int $limit) $needed }}
{{- fail (printf "%s.resources.limits.memory %s leaves no room for an AOF rewrite with maxMemory %s: set it to at least %dMi (2 x maxMemory + 256Mi), or lower %s.maxMemory" .key $limits.memory $r.maxMemory $needed .key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Names the chart or KubeRay already set on the Ray pods. A second env entry of the same name
silently wins or loses (the API server keeps both), and KubeRay refuses REDIS_PASSWORD,
RAY_REDIS_ADDRESS, REDIS_USERNAME and rayStartParams redis-password / redis-username on a GCS
fault tolerant head (utils/validation.go ValidateRayClusterSpec).
*/}}
{{- define "mistral-serve.validateOwnedNames" -}}
{{- $v := .Values }}
{{- $owned := dict
      "MISTRAL_SERVE_API_KEY" "set apiKey.* instead"
      "MISTRAL_SERVE_REDIS_URL" "set redis.* or externalRedis.* instead"
      "INDEX_REDIS_PASSWORD" "set redis.auth.* instead"
      "POD_IP" "the chart sets it on the head for head.dashboardHost"
      "REDIS_PASSWORD" "KubeRay sets it from gcsFaultTolerance; set gcsFaultTolerance.externalRedis.existingSecret instead"
      "REDIS_USERNAME" "KubeRay refuses it on the head; the chart's GCS Redis has no users"
      "RAY_REDIS_ADDRESS" "KubeRay sets it; set gcsFaultTolerance.externalRedis.address instead"
      "RAY_AUTH_TOKEN" "KubeRay sets it from rayAuth; set rayAuth.existingSecret instead"
      "RAY_AUTH_MODE" "KubeRay sets it from rayAuth.mode"
      "RAY_gcs_rpc_server_reconnect_timeout_s" "KubeRay sets it on workers under GCS fault tolerance" }}
{{- range $env := $v.extraEnv }}
{{- with get $owned $env.name }}
{{- fail (printf "extraEnv must not set %s: %s" $env.name .) }}
{{- end }}
{{- end }}
{{- $params := dict
      "redis-password" "KubeRay refuses it under GCS fault tolerance and the chart sets the password from redis.auth / gcsFaultTolerance.externalRedis"
      "redis-username" "KubeRay refuses it under GCS fault tolerance"
      "dashboard-port" "set ports.dashboard instead (the head's ports and the NetworkPolicy follow it)"
      "dashboard-host" "set head.dashboardHost instead"
      "port" "the GCS port is 6379 in the head's ports, the GCS Redis and the NetworkPolicy" }}
{{- range $key, $_ := $v.head.rayStartParams }}
{{- with get $params $key }}
{{- fail (printf "head.rayStartParams must not set %s: %s" $key .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The client Service: fields the API server accepts only for some Service types, and ports that
would collide on the Ray pods (the metrics port 8080, the GCS 6379 and the Ray client 10001
are Ray's own).
*/}}
{{- define "mistral-serve.validateService" -}}
{{- $v := .Values }}
{{- $svc := $v.service }}
{{- if and $svc.loadBalancerSourceRanges (ne $svc.type "LoadBalancer") }}
{{- fail (printf "service.loadBalancerSourceRanges applies only to service.type LoadBalancer (the API server refuses it on %s): remove it or set service.type=LoadBalancer" $svc.type) }}
{{- end }}
{{- if and (eq $svc.type "ClusterIP") (or $svc.nodePorts.grpc $svc.nodePorts.http) }}
{{- fail "service.nodePorts applies only to service.type NodePort or LoadBalancer: remove them or change service.type" }}
{{- end }}
{{- if and $svc.nodePorts.grpc (eq (int $svc.nodePorts.grpc) (int ($svc.nodePorts.http | default 0))) }}
{{- fail (printf "service.nodePorts.grpc and service.nodePorts.http are both %v: give them different ports" $svc.nodePorts.grpc) }}
{{- end }}
{{- $taken := dict "8080" "Ray's metrics port" "6379" "the GCS port" "10001" "the Ray client port" }}
{{- range $name := list "grpc" "http" "dashboard" }}
{{- $port := toString (int (get $v.ports $name)) }}
{{- with get $taken $port }}
{{- fail (printf "ports.%s %s is already %s on the Ray pods: pick another port" $name $port .) }}
{{- end }}
{{- $_ := set $taken $port (printf "ports.%s" $name) }}
{{- end }}
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
