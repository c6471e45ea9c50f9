{{/*
serveConfigV2: the same document `serve.app.serve_config(ServeConfig)` exports, so the
cluster builds the app exactly as `mistral-serve up` does (tests/helm compares the two).
`args` is ServeConfig.model_dump(exclude_none=True) minus the ports and host, which live in
http_options / grpc_options. Secrets never go in here: the API key and a Redis URL with a
password reach ServeConfig.from_env through env vars on the Ray pods (templates/_pod.tpl).
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
      "ingress_replicas" $v.ingressReplicas
      "accelerator" "gpu"
      "app_name" $v.appName
      "limits" $limits
      "session_ttl_s" $v.sessionTtlSeconds
      "index_resync_s" $v.indexResyncSeconds
      "stream_items_per_s" $v.streamItemsPerSecond
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
{{- $config := dict
      "proxy_location" "EveryNode"
      "http_options" (dict "host" "0.0.0.0" "port" $v.ports.http)
      "grpc_options" (dict
        "port" $v.ports.grpc
        "grpc_servicer_functions" (list "serve.grpc_service.add_llm_service_to_server"))
      "applications" (list $app) }}
{{- toYaml $config }}
{{- end }}
