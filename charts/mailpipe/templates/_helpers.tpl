{{/* Chart name, or nameOverride; used in labels and as the default name suffix. */}}
{{- define "mailpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: fullnameOverride, or the release name joined with the chart name unless it already contains it. */}}
{{- define "mailpipe.fullname" -}}
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

{{/* Chart name and version, as the helm.sh/chart label expects them. */}}
{{- define "mailpipe.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that selectors use: only name and instance, because selectors cannot change after creation. */}}
{{- define "mailpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The standard label set of every object; call with (dict "context" $ "component" "operator"). */}}
{{- define "mailpipe.labels" -}}
{{- $context := .context -}}
{{ include "mailpipe.selectorLabels" $context }}
app.kubernetes.io/version: {{ $context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $context.Release.Service }}
app.kubernetes.io/part-of: mailpipe
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
helm.sh/chart: {{ include "mailpipe.chart" $context }}
{{- with $context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* An "annotations:" block at metadata indentation, merging commonAnnotations into an object's own; empty when both are. */}}
{{- define "mailpipe.annotations" -}}
{{- $merged := merge (deepCopy (default dict .annotations)) .context.Values.commonAnnotations -}}
{{- with $merged }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* Name of the operator's ServiceAccount, created or existing. */}}
{{- define "mailpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "mailpipe.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Full image reference: repository with the digest when set, else with the tag or appVersion. */}}
{{- define "mailpipe.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Namespace of the dashboard ConfigMaps. */}}
{{- define "mailpipe.dashboardsNamespace" -}}
{{- default .Release.Namespace .Values.dashboards.namespace -}}
{{- end -}}

{{/* Namespace of the PrometheusRule. */}}
{{- define "mailpipe.prometheusRuleNamespace" -}}
{{- default .Release.Namespace .Values.prometheusRule.namespace -}}
{{- end -}}

{{/* Fail the install with a message naming the key when values contradict each other (checks the schema cannot express). */}}
{{- define "mailpipe.validateValues" -}}
{{- if and (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) -}}
{{- fail "serviceAccount.name: required when serviceAccount.create is false; set it to an existing ServiceAccount, or set serviceAccount.create=true" -}}
{{- end -}}
{{- $watched := .Values.operator.watchNamespaces -}}
{{- if and .Values.examplePipeline.enabled $watched (not (has .Release.Namespace $watched)) -}}
{{- fail (printf "examplePipeline.enabled: the example is created in namespace %q, which operator.watchNamespaces (%s) leaves out; add the namespace to operator.watchNamespaces or disable the example" .Release.Namespace (join ", " $watched)) -}}
{{- end -}}
{{- end -}}
