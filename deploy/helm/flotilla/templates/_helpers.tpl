{{/* Names, labels and shared snippets of the chart. */}}

{{- define "flotilla.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "flotilla.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries; call with (dict "root" $ "component" "registry"). */}}
{{- define "flotilla.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: flotilla
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "flotilla.selectorLabels" . }}
{{- end -}}

{{- define "flotilla.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flotilla.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "flotilla.clusterNamespace" -}}
{{- default .Release.Namespace .Values.kubernetes.clusterNamespace -}}
{{- end -}}

{{- define "flotilla.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "flotilla.gatewaySecret" -}}
{{- default (printf "%s-gateway" (include "flotilla.fullname" .)) .Values.gateway.existingSecret -}}
{{- end -}}

{{- define "flotilla.dbSecret" -}}
{{- default (printf "%s-database" (include "flotilla.fullname" .)) .Values.registry.database.existingSecret -}}
{{- end -}}

{{- define "flotilla.keysSecret" -}}
{{- default (printf "%s-encrypt-keys" (include "flotilla.fullname" .)) .Values.registry.encryptKeys.existingSecret -}}
{{- end -}}

{{- define "flotilla.hasDatabase" -}}
{{- if or .Values.registry.database.url .Values.registry.database.existingSecret }}true{{ end -}}
{{- end -}}

{{/* The in-cluster URL of the Envoy Service. */}}
{{- define "flotilla.envoyUrl" -}}
{{- printf "http://%s-envoy.%s.svc.%s:%d" (include "flotilla.fullname" .) .Release.Namespace .Values.clusterDomain (int .Values.envoy.service.port) -}}
{{- end -}}

{{/* Environment of a gateway service: which one it is, and the shared secrets. */}}
{{- define "flotilla.serviceEnv" -}}
- name: FLOTILLA_SERVICE
  value: {{ .service }}
- name: FLOTILLA_CONFIG
  value: /etc/flotilla/flotilla_config.py
- name: FLOTILLA_IDENTITY_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flotilla.gatewaySecret" .root }}
      key: identity_key
- name: FLOTILLA_INTERNAL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "flotilla.gatewaySecret" .root }}
      key: internal_token
- name: FLOTILLA_COOKIE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "flotilla.gatewaySecret" .root }}
      key: cookie_key
{{- end -}}

{{/* Pod spec parts every gateway pod shares. */}}
{{- define "flotilla.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "flotilla.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities:
    drop: ["ALL"]
{{- end -}}

{{- define "flotilla.volumes" -}}
- name: config
  configMap:
    name: {{ include "flotilla.fullname" . }}-config
- name: state
  emptyDir: {}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "flotilla.volumeMounts" -}}
- name: config
  mountPath: /etc/flotilla
  readOnly: true
- name: state
  mountPath: /var/lib/flotilla
- name: tmp
  mountPath: /tmp
{{- end -}}
