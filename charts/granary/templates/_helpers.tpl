{{/*
The chart's name, unless nameOverride.
*/}}
{{- define "granary.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The name of the release's objects: fullnameOverride, else RELEASE (when it
already holds the chart's name) or RELEASE-NAME; at most 63 characters.
*/}}
{{- define "granary.fullname" -}}
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

{{/*
The operator's objects are named FULLNAME-operator.
*/}}
{{- define "granary.operatorName" -}}
{{- printf "%s-operator" (include "granary.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
chart: NAME-VERSION, as the helm.sh/chart label wants it.
*/}}
{{- define "granary.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels that select the operator's pods (never changed by an upgrade).
*/}}
{{- define "granary.selectorLabels" -}}
app.kubernetes.io/name: {{ include "granary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
Labels of every object of the chart.
*/}}
{{- define "granary.labels" -}}
helm.sh/chart: {{ include "granary.chart" . }}
{{ include "granary.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: granary
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The operator's ServiceAccount.
*/}}
{{- define "granary.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "granary.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image tag: image.tag, else the chart's appVersion.
*/}}
{{- define "granary.tag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
The operator's image.
*/}}
{{- define "granary.image" -}}
{{- printf "%s:%s" .Values.image.repository (include "granary.tag" .) }}
{{- end }}

{{/*
The workers' images: worker.image, else the operator's; worker.cephfsImage,
else the operator's repository with TAG-cephfs.
*/}}
{{- define "granary.workerImage" -}}
{{- default (include "granary.image" .) .Values.worker.image }}
{{- end }}

{{- define "granary.workerImageCephFS" -}}
{{- default (printf "%s:%s-cephfs" .Values.image.repository (include "granary.tag" .)) .Values.worker.cephfsImage }}
{{- end }}

{{- define "granary.workerPullPolicy" -}}
{{- default .Values.image.pullPolicy .Values.worker.pullPolicy }}
{{- end }}

{{/*
The pod webhook's Service, and its MutatingWebhookConfiguration.
*/}}
{{- define "granary.webhookName" -}}
{{- printf "%s-webhook" (include "granary.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
