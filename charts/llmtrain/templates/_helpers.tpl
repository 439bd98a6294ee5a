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

{{/*
The ServiceAccount job pods run as, as the operator gets it (LLMTRAIN_WORKER_SERVICE_ACCOUNT):
empty means the namespace's `default`, which the ServiceAccount admission plugin fills in.
*/}}
{{- define "llmtrain.workerServiceAccountName" -}}
{{- if .Values.serviceAccount.worker.create }}
{{- default (printf "%s-worker" (include "llmtrain.fullname" .)) .Values.serviceAccount.worker.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- .Values.serviceAccount.worker.name }}
{{- end }}
{{- end }}

{{/* ... and as the apiserver sees it by validating admission: never empty. */}}
{{- define "llmtrain.workerServiceAccountEffective" -}}
{{- default "default" (include "llmtrain.workerServiceAccountName" .) }}
{{- end }}

{{/* The operator's user name, as request.userInfo.username has it. */}}
{{- define "llmtrain.operatorUserName" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "llmtrain.operatorServiceAccountName" .) }}
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
Whether to render the prometheus-operator objects: when the cluster serves
monitoring.coreos.com/v1, or `metrics.assumeMonitoringCrds` says it will. "true" or "".
*/}}
{{- define "llmtrain.monitoringApi" -}}
{{- if or .Values.metrics.assumeMonitoringCrds (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{ end }}
{{- end }}

{{/*
Who may reach a job's driver metrics port, besides the job's own pods: the operator
(progress) and Prometheus, as NetworkPolicyPeer objects in JSON (LLMTRAIN_METRICS_FROM).
*/}}
{{- define "llmtrain.metricsFrom" -}}
{{- $np := .Values.networkPolicy }}
{{- $operator := dict
      "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" .Release.Namespace))
      "podSelector" (dict "matchLabels" (include "llmtrain.operatorSelectorLabels" . | fromYaml)) }}
{{- $prometheus := dict
      "namespaceSelector" $np.prometheus.namespaceSelector
      "podSelector" $np.prometheus.podSelector }}
{{- concat (list $operator $prometheus) $np.extraMetricsFrom | toJson }}
{{- end }}

{{/* The uninstall hook's annotations (templates/uninstall-hook.yaml); dict "weight". */}}
{{- define "llmtrain.cleanupHook" -}}
helm.sh/hook: post-delete
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded,hook-failed
{{- end }}

{{- define "llmtrain.cleanupName" -}}
{{- printf "%s-cleanup" (include "llmtrain.fullname" .) | trunc 63 | trimSuffix "-" }}
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
