{{/*
The init container that fills the weights volume from model.download.url.
Usage: include "mistral-serve.fetchModelContainer" (dict "ctx" $ "head" true)
*/}}

{{- define "mistral-serve.fetchModelContainer" -}}
{{- $ctx := .ctx }}
{{- $d := $ctx.Values.model.download }}
{{- if $d.enabled }}
{{- $image := include "mistral-serve.downloadImage" $ctx | fromYaml }}
- name: fetch-model
  image: {{ printf "%s:%s" $image.repository $image.tag }}
  imagePullPolicy: {{ $image.pullPolicy }}
  command: [sh, -c]
  args:
    - |
      {{- include "mistral-serve.fetchScript" $ctx | nindent 6 }}
  env:
    - name: MODEL_URL
      value: {{ $d.url | quote }}
    - name: MODEL_DIR
      value: {{ $ctx.Values.model.path | quote }}
    # KubeRay builds its Redis cleanup Job from the head's pod template, this container
    # included, and labels it ray.io/node-type=redis-cleanup (raycluster_controller.go
    # buildRedisCleanupJob): there the script stops at once instead of spending the Job's
    # 300 s on the weights.
    - name: RAY_NODE_TYPE
      valueFrom:
        fieldRef:
          fieldPath: metadata.labels['ray.io/node-type']
    # The head runs no model; with the weights in its own emptyDir it fetches only the
    # checkpoint's JSON files (the app builder reads config.json), so a recreated head is
    # back well within the 600 s the workers wait for it.
    - name: CONFIG_ONLY
      value: {{ ternary "true" "false" (and .head (include "mistral-serve.weightsInEmptyDir" $ctx | eq "true")) | quote }}
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
  {{- with $ctx.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $d.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "mistral-serve.modelMount" (dict "ctx" $ctx "readOnly" false) | nindent 4 }}
{{- end }}
{{- end }}

{{/*
Fills MODEL_DIR once. Pods sharing a claim race here: mkdir is atomic, so one pod fetches and
the others wait for the completion marker; a lock older than LOCK_TIMEOUT_MINUTES was left by
a pod that died mid-fetch. CONFIG_ONLY (the head, weights in its emptyDir) fetches the JSON
files alone: from S3 with a filter, from an archive by reading only until config.json (or
params.json) is out, so put it first in the archive. No $(...) in the script: Kubernetes
would take it for a variable reference. The scheme picks the image (values.yaml
model.download), so the tool each branch needs is there.
*/}}
{{- define "mistral-serve.fetchScript" -}}
set -eu
if [ "${RAY_NODE_TYPE:-}" = redis-cleanup ]; then
  echo "Redis cleanup Job: no model needed"
  exit 0
fi
dest="$MODEL_DIR"
done_marker="$dest/.mistral-serve-complete"
lock="$dest/.mistral-serve-fetching"
fetch() {
  case "$MODEL_URL" in
    s3://*)
      if [ "${CONFIG_ONLY:-false}" = true ]; then
        aws s3 sync --only-show-errors --no-progress --exclude '*' --include '*.json' "$MODEL_URL" "$dest"
      else
        aws s3 sync --only-show-errors --no-progress "$MODEL_URL" "$dest"
      fi ;;
    http://*|https://*)
      python3 -c '
import sys, tarfile, urllib.request
url, dest, config_only = sys.argv[1], sys.argv[2], sys.argv[3] == "true"
with tarfile.open(fileobj=urllib.request.urlopen(url), mode="r|*") as archive:
    for member in archive:
        name = member.name.rsplit("/", 1)[-1]
        if config_only and not (member.isfile() and name.endswith(".json")):
            continue
        archive.extract(member, dest, filter="data")
        if config_only and name in ("config.json", "params.json"):
            break
' "$MODEL_URL" "$dest" "${CONFIG_ONLY:-false}" ;;
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
