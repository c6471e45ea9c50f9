{{/*
One in-chart Redis: a single-pod StatefulSet and its two Services. The chart runs up to two,
with different jobs: the prefix/session index (a cache: bounded, evicts) and the GCS store of
the Ray head (state: noeviction, AOF on a volume). One Redis cannot be both: an evicting one
would drop GCS keys.
Usage: include "mistral-serve.redis" (dict "ctx" $ "name" "..." "component" "redis" "r" .Values.redis)
where r holds maxMemory, maxMemoryPolicy, persistence, resources and placement.
*/}}
{{- define "mistral-serve.redis" -}}
{{- $ctx := .ctx }}
{{- $common := $ctx.Values.redis }}
{{- $r := .r }}
{{- $selector := printf "%s\napp.kubernetes.io/component: %s" (include "mistral-serve.selectorLabels" $ctx) .component }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ .name }}
  labels:
    {{- include "mistral-serve.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  # One instance. The index is a routing hint (routing falls back to load while it is
  # down); the GCS store is only read when the head restarts. README "Failures".
  replicas: 1
  serviceName: {{ .name }}-headless
  selector:
    matchLabels:
      {{- $selector | nindent 6 }}
  template:
    metadata:
      labels:
        {{- $selector | nindent 8 }}
      {{- with (include "mistral-serve.redisChecksums" $ctx | trim) }}
      annotations:
        {{- . | nindent 8 }}
      {{- end }}
    spec:
      automountServiceAccountToken: false
      {{- with $ctx.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $common.podSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: redis
          image: {{ printf "%s:%s" $common.image.repository $common.image.tag }}
          imagePullPolicy: {{ $common.image.pullPolicy }}
          {{- with $common.securityContext }}
          securityContext:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          command: [sh, -c]
          # The password goes into a file on a memory volume (printf is a shell builtin, so
          # it is on no command line), then leaves the server's environment.
          args:
            - >-
              umask 077 &&
              printf 'requirepass %s\n' "$REDISCLI_AUTH" > /run/redis/redis.conf &&
              unset REDISCLI_AUTH &&
              exec redis-server /run/redis/redis.conf --dir /data
              --maxmemory {{ $r.maxMemory }} --maxmemory-policy {{ .policy }}
              {{- /* AOF only: RDB snapshots would fork a second time for nothing. */}}
              {{- if $r.persistence.enabled }} --appendonly yes --appendfsync everysec --save ''
              {{- else }} --appendonly no --save ''
              {{- end }}
          env:
            # redis-cli (the probes) authenticates with it.
            - name: REDISCLI_AUTH
              valueFrom:
                secretKeyRef:
                  name: {{ include "mistral-serve.redisSecretName" $ctx }}
                  key: {{ $common.auth.existingSecretPasswordKey }}
          ports:
            - name: redis
              containerPort: 6379
          readinessProbe:
            exec:
              command: [sh, -c, "redis-cli ping | grep -q PONG"]
            periodSeconds: 5
            timeoutSeconds: 3
          # Alive while it answers, LOADING included: a large AOF takes a while to replay,
          # and restarting it then would only start the replay again.
          livenessProbe:
            exec:
              command: [sh, -c, "redis-cli ping 2>&1 | grep -Eq '^(PONG|LOADING)'"]
            initialDelaySeconds: 10
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 5
          {{- with $r.resources }}
          resources:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          volumeMounts:
            - name: data
              mountPath: /data
            - name: run
              mountPath: /run/redis
      {{- with $r.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $r.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $r.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumes:
        - name: run
          emptyDir:
            medium: Memory
            sizeLimit: 1Mi
        {{- if not $r.persistence.enabled }}
        - name: data
          emptyDir: {}
        {{- end }}
  {{- if $r.persistence.enabled }}
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: [ReadWriteOnce]
        {{- with $r.persistence.storageClass }}
        storageClassName: {{ . | quote }}
        {{- end }}
        resources:
          requests:
            storage: {{ $r.persistence.size }}
  {{- end }}
---
# Clients connect here; the headless twin below gives the StatefulSet pod its stable DNS name.
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  labels:
    {{- include "mistral-serve.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  type: ClusterIP
  selector:
    {{- $selector | nindent 4 }}
  ports:
    - name: redis
      port: 6379
      targetPort: redis
---
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}-headless
  labels:
    {{- include "mistral-serve.labels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  clusterIP: None
  selector:
    {{- $selector | nindent 4 }}
  ports:
    - name: redis
      port: 6379
      targetPort: redis
{{- end }}
