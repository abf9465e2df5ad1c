{{/* The operator's name: fixed, because the RBAC objects (generated from the operator's
     rules file) and the CRD are cluster-wide; one kubemaas per cluster. */}}
{{- define "kubemaas.name" -}}kubemaas-operator{{- end -}}

{{- define "kubemaas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubemaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubemaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubemaas.labels" -}}
{{ include "kubemaas.selectorLabels" . }}
app.kubernetes.io/part-of: kubemaas
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "kubemaas.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kubemaas.operatorImage" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end -}}

{{- define "kubemaas.runtimeImage" -}}
{{- $tag := .Values.runtime.image.tag | default .Chart.AppVersion -}}
{{ .Values.runtime.image.repository }}:{{ $tag }}
{{- end -}}

{{/* "true" when the replicas run with kopf peering: asked for, or implied by replicaCount > 1. */}}
{{- define "kubemaas.peering" -}}
{{- if or .Values.peering.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}
