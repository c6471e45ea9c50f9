{{/* The Ray pod template shared by the head, GPU worker and CPU worker groups. */}}

{{/*
Usage: include "mistral-serve.rayPodTemplate" (dict "ctx" $ "group" .Values.head
  "container" "ray-head" "ports" $ports "gpus" 0 "head" true)
*/}}
{{- define "mistral-serve.rayPodTemplate" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $g := .group }}
metadata:
  labels:
    {{- include "mistral-serve.rayPodLabels" $ctx | nindent 4 }}
  {{- with merge (include "mistral-serve.rayPodAnnotations" . | fromYaml) (deepCopy ($v.podAnnotations | default dict)) }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $v.serviceAccountName }}
  serviceAccountName: {{ . }}
  {{- end }}
  {{- /* Only KubeRay's autoscaler sidecar (on the head) talks to the Kubernetes API. */}}
  automountServiceAccountToken: {{ .head }}
  {{- with $g.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $g.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with $v.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with (include "mistral-serve.fetchModelContainer" (dict "ctx" $ctx "head" .head) | trim) }}
  initContainers:
    {{- . | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ .container }}
      image: {{ include "mistral-serve.image" $ctx }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      {{- with $v.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        {{- toYaml .ports | nindent 8 }}
      {{- if not .head }}
      {{- /*
      Ready = this pod's Ingress replica answers /-/healthz with a live LLMServer behind it
      (200 "success"; 503 before the weights load or when no model server answers), so the
      Service sends clients only to front doors that can serve, and a pod with no Ingress
      replica stays NotReady. Set here, KubeRay v1.7 injects none of its own (common/pod.go
      initLivenessAndReadinessProbe), whose bash + wget exec needs both in the image and
      drops the pod after a single 2 s miss; the kubelet's HTTP GET needs nothing, and two
      misses (10 s) ride out one slow answer from a busy Ingress. Only readiness: KubeRay's
      liveness probe (the raylet) stays, as a pod whose model server is loading or gone
      must not be restarted for it.
      */}}
      readinessProbe:
        httpGet:
          path: /-/healthz
          port: serve
        initialDelaySeconds: 10
        periodSeconds: 5
        timeoutSeconds: 2
        successThreshold: 1
        failureThreshold: 2
      {{- end }}
      {{- with (include "mistral-serve.rayEnv" (dict "ctx" $ctx "head" .head) | trim) }}
      env:
        {{- . | nindent 8 }}
      {{- end }}
      resources:
        {{- include "mistral-serve.rayResources" (dict "ctx" $ctx "resources" $g.resources "gpus" .gpus "head" .head) | nindent 8 }}
      volumeMounts:
        {{- include "mistral-serve.modelMount" (dict "ctx" $ctx "readOnly" true) | nindent 8 }}
  volumes:
    {{- include "mistral-serve.modelVolume" (dict "ctx" $ctx "head" .head) | nindent 4 }}
{{- end }}

{{/*
The chart's annotations on a Ray pod template (a dict; podAnnotations go underneath):
- checksum/* of the generated secrets (templates/_secrets.tpl);
- the values KubeRay leaves out of the cluster hash it compares on an upgrade (utils/util.go
  GenerateHashWithoutReplicasAndWorkersToDelete: tolerations, and a group's replicas,
  minReplicas and maxReplicas), stamped here so a change to them reaches the pod template,
  hence the hash, and is applied by upgrade.strategy instead of being dropped. `stamps` holds
  the group's count values; the tolerations go in as a checksum;
- on the head alone, the cluster autoscalers' do-not-evict marks: moving it to pack nodes
  would cost a head restart (with GCS fault tolerance, a pause in scaling and deploys;
  without it, every GPU pod).
*/}}
{{- define "mistral-serve.rayPodAnnotations" -}}
{{- $annotations := include "mistral-serve.rayChecksums" .ctx | fromYaml | default dict }}
{{- with .group.tolerations }}
{{- $_ := set $annotations "checksum/tolerations" (toJson . | sha256sum) }}
{{- end }}
{{- range $key, $value := .stamps }}
{{- $_ := set $annotations $key $value }}
{{- end }}
{{- if .head }}
{{- $_ := set $annotations "cluster-autoscaler.kubernetes.io/safe-to-evict" "false" }}
{{- $_ := set $annotations "karpenter.sh/do-not-disrupt" "true" }}
{{- end }}
{{- toYaml $annotations }}
{{- end }}

{{/*
Env of every Ray container. Serve may run the app builder and Ingress replicas on any pod,
so all of them get the secrets; ServeConfig.from_env reads them, and they never appear in
serveConfigV2. INDEX_REDIS_PASSWORD comes first: Kubernetes expands $(INDEX_REDIS_PASSWORD)
only from variables defined earlier in the list. It is not called REDIS_PASSWORD: KubeRay
owns that name on the head for GCS fault tolerance and refuses a spec that sets it.
*/}}
{{- define "mistral-serve.rayEnv" -}}
{{- $v := .ctx.Values }}
{{- if .head }}
{{- /* The head's `ray start --dashboard-host=$POD_IP` (see rayservice.yaml). */}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end }}
{{- if $v.apiKey.enabled }}
- name: MISTRAL_SERVE_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mistral-serve.apiKeySecretName" .ctx }}
      key: {{ $v.apiKey.existingSecretKey }}
{{- end }}
{{- if $v.redis.enabled }}
- name: INDEX_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mistral-serve.redisSecretName" .ctx }}
      key: {{ $v.redis.auth.existingSecretPasswordKey }}
- name: MISTRAL_SERVE_REDIS_URL
  value: {{ printf "redis://:$(INDEX_REDIS_PASSWORD)@%s.%s.svc:6379/%v" (include "mistral-serve.redisFullname" .ctx) .ctx.Release.Namespace $v.redis.database | quote }}
{{- else if $v.externalRedis.existingSecret }}
- name: MISTRAL_SERVE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.externalRedis.existingSecret }}
      key: {{ $v.externalRedis.existingSecretKey }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
A group's resources, plus nvidia.com/gpu (KubeRay reads it from limits) and, when the weights
live in each pod's emptyDir, an ephemeral-storage request of its sizeLimit so the scheduler
only picks nodes with that much disk free. A request the group sets itself wins.
*/}}
{{- define "mistral-serve.rayResources" -}}
{{- $resources := deepCopy (.resources | default dict) }}
{{- if gt (int .gpus) 0 }}
{{- $limits := $resources.limits | default dict }}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpus) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- if include "mistral-serve.weightsInEmptyDir" .ctx }}
{{- $requests := $resources.requests | default dict }}
{{- if not (hasKey $requests "ephemeral-storage") }}
{{- $_ := set $requests "ephemeral-storage" (include "mistral-serve.emptyDirSize" .) }}
{{- end }}
{{- $_ := set $resources "requests" $requests }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{- define "mistral-serve.weightsInEmptyDir" -}}
{{- $m := .Values.model }}
{{- if and $m.download.enabled (not $m.pvc.enabled) (not $m.hostPath) }}true{{ end }}
{{- end }}

{{/* Usage: include "mistral-serve.modelVolume" (dict "ctx" $ "head" false) */}}
{{- define "mistral-serve.modelVolume" -}}
{{- $v := .ctx.Values }}
- name: model
{{- if $v.model.pvc.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "mistral-serve.modelClaimName" .ctx }}
{{- else if $v.model.hostPath }}
  {{- /* Pod Security: hostPath volumes need the `privileged` level (README). */}}
  hostPath:
    path: {{ $v.model.hostPath }}
    type: Directory
{{- else }}
  emptyDir:
    sizeLimit: {{ include "mistral-serve.emptyDirSize" . }}
{{- end }}
{{- end }}

{{/* The weights' emptyDir: sizeLimit on GPU and CPU pods; the head holds the JSON files only. */}}
{{- define "mistral-serve.emptyDirSize" -}}
{{- ternary "1Gi" .ctx.Values.model.download.sizeLimit (eq .head true) }}
{{- end }}

{{/* The weights: read-only in the Ray container, writable only for the fetch init container. */}}
{{- define "mistral-serve.modelMount" -}}
- name: model
  mountPath: {{ .ctx.Values.model.path }}
  readOnly: {{ .readOnly }}
  {{- with .ctx.Values.model.subPath }}
  subPath: {{ . }}
  {{- end }}
{{- end }}
