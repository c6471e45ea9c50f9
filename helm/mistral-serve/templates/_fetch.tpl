{{/* The init container that fills the weights volume from model.download.url. */}}

{{- define "mistral-serve.fetchModelContainer" -}}
{{- $d := .Values.model.download }}
{{- if $d.enabled }}
{{- $image := include "mistral-serve.downloadImage" . | fromYaml }}
- name: fetch-model
  image: {{ printf "%s:%s" $image.repository $image.tag }}
  imagePullPolicy: {{ $image.pullPolicy }}
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
    # The pod runs as a non-root user the image does not know; the aws CLI wants a writable home.
    - name: HOME
      value: /tmp
  {{- with $d.secretName }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
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
reference. The scheme picks the image (values.yaml model.download), so the tool each branch
needs is there.
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
