{{/* Pieces shared by the head and GPU worker pods of the RayService. */}}

{{/*
Env of every Ray container. Serve may run the app builder and Ingress replicas on any pod,
so head and workers all get the secrets; ServeConfig.from_env reads them, and they never
appear in serveConfigV2. REDIS_PASSWORD comes first: Kubernetes expands $(REDIS_PASSWORD) only
from variables defined earlier in the list.
*/}}
{{- define "mistral-serve.rayEnv" -}}
{{- if .Values.apiKey.enabled }}
- name: MISTRAL_SERVE_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "mistral-serve.apiKeySecretName" . }}
      key: {{ .Values.apiKey.existingSecretKey }}
{{- end }}
{{- if .Values.redis.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "mistral-serve.redisSecretName" . }}
      key: {{ .Values.redis.auth.existingSecretPasswordKey }}
- name: MISTRAL_SERVE_REDIS_URL
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s.%s.svc:6379/%v" (include "mistral-serve.redisFullname" .) .Release.Namespace .Values.redis.database | quote }}
{{- else if .Values.externalRedis.existingSecret }}
- name: MISTRAL_SERVE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mistral-serve.modelVolume" -}}
- name: model
{{- if .Values.model.pvc.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "mistral-serve.modelClaimName" . }}
{{- else if .Values.model.hostPath }}
  hostPath:
    path: {{ .Values.model.hostPath }}
    type: Directory
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.model.download.sizeLimit }}
{{- end }}
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

{{- define "mistral-serve.modelInitContainers" -}}
{{- $d := .Values.model.download }}
{{- if $d.enabled }}
- name: fetch-model
  image: {{ printf "%s:%s" $d.image.repository $d.image.tag }}
  imagePullPolicy: {{ $d.image.pullPolicy }}
  command: [sh, -c]
  args:
    - |
      {{- include "mistral-serve.fetchScript" . | nindent 6 }}
  env:
    - name: MODEL_URL
      value: {{ $d.url | quote }}
    - name: MODEL_DIR
      value: {{ .Values.model.path | quote }}
    - name: LOCK_TIMEOUT_MINUTES
      value: {{ $d.lockTimeoutMinutes | quote }}
  {{- with $d.secretName }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  {{- with $d.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "mistral-serve.modelMount" (dict "ctx" . "readOnly" false) | nindent 4 }}
{{- end }}
{{- end }}

{{/*
Fills MODEL_DIR once. Pods sharing a claim race here: mkdir is atomic, so one pod fetches and
the others wait for the completion marker; a lock older than LOCK_TIMEOUT_MINUTES was left by
a pod that died mid-fetch. No $(...) in the script: Kubernetes would take it for a variable
reference.
*/}}
{{- define "mistral-serve.fetchScript" -}}
set -eu
dest="$MODEL_DIR"
done_marker="$dest/.mistral-serve-complete"
lock="$dest/.mistral-serve-fetching"
fetch() {
  case "$MODEL_URL" in
    s3://*) aws s3 sync --only-show-errors --no-progress "$MODEL_URL" "$dest" ;;
    http://*|https://*)
      python3 -c 'import sys, tarfile, urllib.request as u; tarfile.open(fileobj=u.urlopen(sys.argv[1]), mode="r|*").extractall(sys.argv[2], filter="data")' "$MODEL_URL" "$dest" ;;
    *) echo "model.download.url: unsupported scheme in $MODEL_URL (s3:// or https://)" >&2; exit 1 ;;
  esac
}
while [ ! -f "$done_marker" ]; do
  find "$dest" -maxdepth 1 -name .mistral-serve-fetching -mmin "+$LOCK_TIMEOUT_MINUTES" -exec rm -rf {} + || true
  if mkdir "$lock" 2>/dev/null; then
    trap 'rmdir "$lock" 2>/dev/null || true' EXIT
    echo "fetching $MODEL_URL into $dest"
    fetch
    touch "$done_marker"
  else
    echo "another pod is fetching the model into $dest; waiting"
    sleep 15
  fi
done
echo "model ready in $dest"
{{- end }}

{{/* Pull secrets and placement of one Ray group: (dict "ctx" $ "group" .Values.head) */}}
{{- define "mistral-serve.rayPodScheduling" -}}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* worker.resources plus nvidia.com/gpu = tensorParallelSize (KubeRay reads it from limits). */}}
{{- define "mistral-serve.workerResources" -}}
{{- $resources := deepCopy (.Values.worker.resources | default (dict)) }}
{{- $limits := $resources.limits | default (dict) }}
{{- $_ := set $limits "nvidia.com/gpu" (int .Values.tensorParallelSize) }}
{{- $_ := set $resources "limits" $limits }}
{{- toYaml $resources }}
{{- end }}
