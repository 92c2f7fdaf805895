{{/*
Labels every object of the chart carries. Names are fixed ("countersign..."):
the cluster-wide objects are shared by the whole cluster, and the operator
checks its admission policies by name.
*/}}
{{- define "countersign.labels" -}}
app.kubernetes.io/name: countersign
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The operator pods' selector: stable across upgrades. */}}
{{- define "countersign.selectorLabels" -}}
app.kubernetes.io/name: countersign
app.kubernetes.io/component: operator
{{- end }}

{{/* The image reference: by digest when one is given. */}}
{{- define "countersign.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end }}

{{/* Restricted pod security, shared by the operator and the migration Job. */}}
{{- define "countersign.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "countersign.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Adds labels (and, for CRDs, the keep policy) to one object read from files/.
Usage: include "countersign.fromFile" (dict "root" $ "object" $obj "keep" bool)
*/}}
{{- define "countersign.fromFile" -}}
{{- $obj := .object -}}
{{- $meta := $obj.metadata -}}
{{- $labels := merge (default (dict) $meta.labels) (include "countersign.labels" .root | fromYaml) -}}
{{- $_ := set $meta "labels" $labels -}}
{{- if .keep -}}
{{- $annotations := merge (default (dict) $meta.annotations) (dict "helm.sh/resource-policy" "keep") -}}
{{- $_ := set $meta "annotations" $annotations -}}
{{- end -}}
{{ toYaml $obj }}
{{- end }}
