{{/*
Names. The release name is the prefix of every namespaced and cluster-wide
object, so two releases (e.g. with different driverName) do not collide.
*/}}
{{- define "cairn.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cairn.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "cairn.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cairn.labels" -}}
helm.sh/chart: {{ include "cairn.chart" . }}
app.kubernetes.io/name: {{ include "cairn.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: cairn
{{- end -}}

{{/* Selector labels; "component" is node or resizer. */}}
{{- define "cairn.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cairn.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "cairn.nodeName" -}}{{ include "cairn.fullname" . }}-node{{- end -}}
{{- define "cairn.resizerName" -}}{{ include "cairn.fullname" . }}-resizer{{- end -}}

{{- define "cairn.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "cairn.sidecarImage" -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}

{{/* The plugin directory on the host, which kubelet dials into. */}}
{{- define "cairn.pluginDir" -}}
{{- printf "%s/plugins/%s" (trimSuffix "/" .Values.kubeletDir) .Values.driverName -}}
{{- end -}}

{{/* The CSI socket as kubelet sees it: --kubelet-registration-path. */}}
{{- define "cairn.kubeletSocket" -}}
{{- printf "%s/csi.sock" (include "cairn.pluginDir" .) -}}
{{- end -}}

{{/*
Whether cairn runs its HTTP server (/metrics and /healthz): needed for
metrics, and for the builtin liveness probe.
*/}}
{{- define "cairn.httpEnabled" -}}
{{- if or .Values.metrics.enabled (eq .Values.health.mode "builtin") -}}true{{- end -}}
{{- end -}}

{{/* Fail early on values the templates cannot render correctly. */}}
{{- define "cairn.validate" -}}
{{- if not (has .Values.registration.mode (list "builtin" "sidecar")) -}}
{{- fail (printf "registration.mode must be builtin or sidecar, not %q" .Values.registration.mode) -}}
{{- end -}}
{{- if not (has .Values.health.mode (list "builtin" "sidecar")) -}}
{{- fail (printf "health.mode must be builtin or sidecar, not %q" .Values.health.mode) -}}
{{- end -}}
{{- if not (has .Values.resizer.cairnMode (list "all" "controller")) -}}
{{- fail (printf "resizer.cairnMode must be all or controller, not %q" .Values.resizer.cairnMode) -}}
{{- end -}}
{{- if not (has .Values.logFormat (list "text" "json")) -}}
{{- fail (printf "logFormat must be text or json, not %q" .Values.logFormat) -}}
{{- end -}}
{{- $names := dict -}}
{{- range .Values.pools -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .name)) -}}
{{- fail (printf "pool name %q must be a DNS label (lower case letters, digits, '-')" (toString .name)) -}}
{{- end -}}
{{- if hasKey $names .name -}}
{{- fail (printf "pool %q is listed twice" .name) -}}
{{- end -}}
{{- $_ := set $names .name true -}}
{{- if not (has .type (list "dir" "btrfs" "image" "lvm")) -}}
{{- fail (printf "pool %q: type must be dir, btrfs, image or lvm, not %q" .name (toString .type)) -}}
{{- end -}}
{{- if eq .type "lvm" -}}
{{- if not (regexMatch "^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*(/[A-Za-z0-9+_.][A-Za-z0-9+_.-]*)?$" (toString .path)) -}}
{{- fail (printf "pool %q: an lvm pool's path is VG or VG/THINPOOL, not %q" .name (toString .path)) -}}
{{- end -}}
{{- /* cairn refuses two lvm pools on one VG or thin pool: each would reconcile away the other's volumes. */ -}}
{{- $key := printf "lvm:%s" (toString .path) -}}
{{- if hasKey $names $key -}}
{{- fail (printf "pool %q: %s is already pool %q; one VG or thin pool is one pool" .name $key (get $names $key)) -}}
{{- end -}}
{{- $_ := set $names $key .name -}}
{{- else if not (isAbs (toString .path)) -}}
{{- fail (printf "pool %q: path %q must be absolute" .name (toString .path)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Pool paths that need a hostPath volume of their own: those not inside
dataDir, which is mounted anyway. Returns a dict of volume name -> path.
*/}}
{{- define "cairn.poolMounts" -}}
{{- $dataDir := trimSuffix "/" .Values.dataDir -}}
{{- $mounts := dict -}}
{{- range .Values.pools -}}
{{- $path := trimSuffix "/" .path -}}
{{- if and (ne .type "lvm") (not (or (eq $path $dataDir) (hasPrefix (printf "%s/" $dataDir) $path))) -}}
{{- $_ := set $mounts (printf "pool-%s" .name) $path -}}
{{- end -}}
{{- end -}}
{{- toYaml $mounts -}}
{{- end -}}

{{/* "true" when some pool is an lvm pool. */}}
{{- define "cairn.hasLVM" -}}
{{- range .Values.pools -}}{{- if eq .type "lvm" -}}true{{- end -}}{{- end -}}
{{- end -}}

{{/* Common cairn flags, for the node pods and the resizer pod alike. */}}
{{- define "cairn.commonArgs" -}}
- --endpoint=unix:///csi/csi.sock
- --driver-name={{ .Values.driverName }}
- --controller-expansion={{ .Values.controllerExpansion }}
- --log-format={{ .Values.logFormat }}
- --log-level={{ .Values.logLevel }}
{{- if include "cairn.httpEnabled" . }}
- --metrics-address=:{{ .Values.metrics.port }}
{{- end }}
{{- end -}}

{{/*
Liveness probe and ports of a cairn container, per health.mode. With the
sidecar, the probe targets the livenessprobe sidecar's port: it is in the
cairn container so that a failing CSI Probe restarts cairn itself.
*/}}
{{- define "cairn.ports" -}}
{{- if include "cairn.httpEnabled" . }}
- name: http
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- if eq .Values.health.mode "sidecar" }}
- name: healthz
  containerPort: {{ .Values.health.sidecar.port }}
  protocol: TCP
{{- end }}
{{- end -}}

{{- define "cairn.livenessProbe" -}}
httpGet:
  path: /healthz
  port: {{ if eq .Values.health.mode "sidecar" }}healthz{{ else }}http{{ end }}
initialDelaySeconds: {{ .Values.health.probe.initialDelaySeconds }}
periodSeconds: {{ .Values.health.probe.periodSeconds }}
timeoutSeconds: {{ .Values.health.probe.timeoutSeconds }}
failureThreshold: {{ .Values.health.probe.failureThreshold }}
{{- end -}}

{{/* The livenessprobe sidecar container, when health.mode=sidecar. */}}
{{- define "cairn.livenessSidecar" -}}
- name: liveness-probe
  image: {{ include "cairn.sidecarImage" .Values.health.sidecar.image }}
  imagePullPolicy: {{ .Values.health.sidecar.image.pullPolicy }}
  args:
    - --csi-address=/csi/csi.sock
    - --health-port={{ .Values.health.sidecar.port }}
    {{- with .Values.health.sidecar.extraArgs }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- toYaml .Values.sidecarSecurityContext | nindent 4 }}
  {{- with .Values.health.sidecar.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: socket-dir
      mountPath: /csi
{{- end -}}

{{/*
Whether a pool's StorageClass is wanted: yes unless storageClass.enabled is
set to false. (`default true false` would give true: Sprig's default treats
false as unset.)
*/}}
{{- define "cairn.scEnabled" -}}
{{- if or (not (hasKey . "enabled")) .enabled -}}true{{- end -}}
{{- end -}}
