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

{{/* Labels and annotations from the values may not repeat a key the chart sets: a key twice in
     one map is kept by some YAML readers and dropped by others (kubectl and helm keep the last),
     and a changed app.kubernetes.io/name or instance no longer matches the selectors of the
     operator's Deployment, metrics Service and ServiceMonitor. */}}
{{- define "kubemaas.checkLabels" -}}
{{- $own := list "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/part-of"
      "app.kubernetes.io/version" "app.kubernetes.io/managed-by" "app.kubernetes.io/component"
      "helm.sh/chart" -}}
{{- $checks := dict "commonLabels" (list .Values.commonLabels $own)
      "serviceMonitor.labels" (list .Values.serviceMonitor.labels $own)
      "podLabels" (list .Values.podLabels (list "app.kubernetes.io/name" "app.kubernetes.io/instance"))
      "podAnnotations" (list .Values.podAnnotations (list "checksum/templates")) -}}
{{- range $value, $check := $checks -}}
{{- range $key := keys (index $check 0 | default dict) | sortAlpha -}}
{{- if has $key (index $check 1) -}}
{{- fail (printf "%s: %s is set by the chart itself; choose another key" $value $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A value as an environment variable's quoted string. Numbers go through JSON: values files
     give templates floats, which toString and quote print with an exponent from a million on
     ("1e+06"), and the operator's integer settings refuse that. */}}
{{- define "kubemaas.envValue" -}}
{{- if kindIs "string" . -}}{{ . | quote }}{{- else -}}{{ toJson . | quote }}{{- end -}}
{{- end -}}

{{/* A duration of values.schema.json's form (NUMBER ms|s|m|h) in milliseconds. */}}
{{- define "kubemaas.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 -}}
{{- mul (regexFind "^[0-9]+" .) (index $units (regexFind "(ms|s|m|h)$" .)) -}}
{{- end -}}
