{{/*
serveConfigV2: the same document `serve.app.serve_config(ServeConfig)` exports, so the
cluster builds the app exactly as `mistral-serve up` does (tests/helm compares the two).
Serve's proxies are off (proxy_location Disabled): each Ingress replica serves gRPC and HTTP
itself on the ports in `args`, bound to every interface of its pod. Secrets never go in
here: the API key and a Redis URL with a password reach ServeConfig.from_env through env
vars on the Ray pods (templates/_pod.tpl).
*/}}
{{- define "mistral-serve.serveArgs" -}}
{{- $v := .Values }}
{{- $limits := dict "max_new_tokens" $v.limits.maxNewTokens "max_message_bytes" $v.limits.maxMessageBytes }}
{{- if $v.limits.maxPromptTokens }}
{{- $_ := set $limits "max_prompt_tokens" $v.limits.maxPromptTokens }}
{{- end }}
{{- $args := dict
      "model" $v.model.path
      "tensor_parallel_size" $v.tensorParallelSize
      "replicas" $v.replicas
      "ingress_replicas" (include "mistral-serve.ingressPods" . | int)
      "ingress_replicas_per_node" 1
      "accelerator" "gpu"
      "app_name" $v.appName
      "limits" $limits
      "grpc_port" (int $v.ports.grpc)
      "http_port" (int $v.ports.http)
      "host" "0.0.0.0"
      "session_ttl_s" $v.sessionTtlSeconds
      "index_resync_s" $v.indexResyncSeconds
      "prefix_routing" $v.prefixRouting
      "max_ongoing_requests" $v.maxOngoingRequests
      "engine" ($v.engine | default (dict)) }}
{{- if $v.autoscaling.enabled }}
{{- $_ := set $args "autoscaling" (dict
      "min_replicas" $v.autoscaling.minReplicas
      "max_replicas" $v.autoscaling.maxReplicas
      "target_ongoing_requests" $v.autoscaling.targetOngoingRequests
      "target_waiting_requests" $v.autoscaling.targetWaitingRequests
      "target_kv_cache_usage" $v.autoscaling.targetKvCacheUsage) }}
{{- end }}
{{- /* Only a password-free URL is inlined; the others come from MISTRAL_SERVE_REDIS_URL. */}}
{{- if and (not $v.redis.enabled) $v.externalRedis.url }}
{{- $_ := set $args "redis_url" $v.externalRedis.url }}
{{- end }}
{{- toYaml $args }}
{{- end }}

{{- define "mistral-serve.serveConfig" -}}
{{- $v := .Values }}
{{- $app := dict
      "name" $v.appName
      "route_prefix" "/"
      "import_path" "serve.app:build"
      "args" (include "mistral-serve.serveArgs" . | fromYaml) }}
{{- $config := dict "proxy_location" "Disabled" "applications" (list $app) }}
{{- toYaml $config }}
{{- end }}

{{/*
The pods that take traffic, one Ingress replica each (ingress_replicas_per_node 1): the CPU
pods when there are any, else the GPU pods Serve always keeps (replicas, or
autoscaling.minReplicas). Only pods that exist anyway: one more Ingress than such pods would
wait for a node of its own, and Ray's autoscaler would start a GPU pod just to hold it. GPU
pods added above that floor carry no Ingress, so they stay NotReady and out of the Service;
the fixed front doors route to their model copies.
*/}}
{{- define "mistral-serve.ingressPods" -}}
{{- if gt (int .Values.cpuWorker.replicas) 0 }}
{{- int .Values.cpuWorker.replicas }}
{{- else }}
{{- include "mistral-serve.minGpuPods" . }}
{{- end }}
{{- end }}
