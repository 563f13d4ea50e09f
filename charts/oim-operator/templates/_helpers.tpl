{{/* The release's base name: "oim-operator" unless the release is named otherwise. */}}
{{- define "oim.fullname" -}}
{{- if contains "oim-operator" .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-oim-operator" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "oim.labels" -}}
app.kubernetes.io/name: oim-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: oim-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "oim.selector" -}}
app.kubernetes.io/name: oim-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "oim.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The rules of one role in files/role.yaml (a checked copy of config/rbac/role.yaml). */}}
{{- define "oim.rules" -}}
{{- $want := .name -}}
{{- range $doc := regexSplit "(?m)^---[ \t]*$" (.root.Files.Get "files/role.yaml") -1 -}}
{{- $role := fromYaml $doc -}}
{{- if and $role $role.metadata (eq $role.metadata.name $want) -}}
{{- toYaml $role.rules -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "oim.credentialsSecret" -}}
{{- with .Values.profiles.credentials -}}
{{- if .existingSecret -}}{{ .existingSecret }}{{- else if .dockerConfigJson -}}{{ include "oim.fullname" $ }}-registry{{- end -}}
{{- end -}}
{{- end -}}
