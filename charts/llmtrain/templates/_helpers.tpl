{{/* Names and labels, as in the kuberay-operator and prometheus-community charts. */}}

{{- define "llmtrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, prefixed with the chart name unless it already contains it. */}}
{{- define "llmtrain.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llmtrain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmtrain.labels" -}}
helm.sh/chart: {{ include "llmtrain.chart" . }}
{{ include "llmtrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: llmtrain
{{- end }}

{{- define "llmtrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmtrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's pods (Deployment selector, Service, NetworkPolicy). */}}
{{- define "llmtrain.operatorSelectorLabels" -}}
{{ include "llmtrain.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "llmtrain.operatorName" -}}
{{- printf "%s-operator" (include "llmtrain.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmtrain.metricsServiceName" -}}
{{- printf "%s-metrics" (include "llmtrain.operatorName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llmtrain.operatorServiceAccountName" -}}
{{- if .Values.serviceAccount.operator.create }}
{{- default (include "llmtrain.operatorName" .) .Values.serviceAccount.operator.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.operator.name }}
{{- end }}
{{- end }}

{{/* Job pods run as this ServiceAccount: it has no API permissions. */}}
{{- define "llmtrain.workerServiceAccountName" -}}
{{- if .Values.serviceAccount.worker.create }}
{{- default (printf "%s-worker" (include "llmtrain.fullname" .)) .Values.serviceAccount.worker.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- default "default" .Values.serviceAccount.worker.name }}
{{- end }}
{{- end }}

{{/* Namespaces the operator watches, as a JSON list; empty when it watches all of them. */}}
{{- define "llmtrain.watchNamespaces" -}}
{{- if .Values.watch.allNamespaces }}
{{- list | toJson }}
{{- else }}
{{- default (list .Release.Namespace) .Values.watch.namespaces | uniq | toJson }}
{{- end }}
{{- end }}

{{/*
Namespaces where jobs run, as a JSON list: the watched namespaces, or `jobNamespaces`
(default: the release namespace) when the operator watches all of them. Per-namespace
objects (worker ServiceAccount, NetworkPolicy) go there.
*/}}
{{- define "llmtrain.jobNamespaces" -}}
{{- if .Values.watch.allNamespaces }}
{{- default (list .Release.Namespace) .Values.jobNamespaces | uniq | toJson }}
{{- else }}
{{- include "llmtrain.watchNamespaces" . }}
{{- end }}
{{- end }}

{{- define "llmtrain.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) }}
{{- end }}

{{- define "llmtrain.operatorImage" -}}
{{- include "llmtrain.image" (dict "repository" .Values.image.repository "tag" .Values.image.tag "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "llmtrain.trainerImage" -}}
{{- include "llmtrain.image" (dict "repository" .Values.jobDefaults.image.repository "tag" .Values.jobDefaults.image.tag "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* The Prometheus `job` label of the operator's targets: the ServiceMonitor's Service. */}}
{{- define "llmtrain.operatorScrapeJob" -}}
{{- include "llmtrain.metricsServiceName" . }}
{{- end }}
