{{/* Names, labels and images shared by every template. */}}

{{- define "finetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "finetune.fullname" -}}
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

{{- define "finetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "finetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "finetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "finetune.labels" -}}
helm.sh/chart: {{ include "finetune.chart" . }}
app.kubernetes.io/name: {{ include "finetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: finetune
{{- end -}}

{{- define "finetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "finetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository[:tag][@digest]; a digest pins the image and wins over the tag. */}}
{{- define "finetune.imageRef" -}}
{{- $img := index . 0 -}}
{{- $appVersion := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $appVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{- define "finetune.image" -}}
{{- include "finetune.imageRef" (list .Values.image .Chart.AppVersion) -}}
{{- end -}}

{{- define "finetune.trainerImage" -}}
{{- include "finetune.imageRef" (list .Values.trainer.image .Chart.AppVersion) -}}
{{- end -}}

{{- define "finetune.clusterWide" -}}
{{- if .Values.watchNamespaces -}}false{{- else -}}true{{- end -}}
{{- end -}}

{{/* Namespaces that get the trainer ServiceAccount/Role/RoleBinding (JSON list). */}}
{{- define "finetune.trainerNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- .Values.watchNamespaces | uniq | toJson -}}
{{- else if .Values.trainer.namespaces -}}
{{- .Values.trainer.namespaces | uniq | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/*
The operator's namespaced rules: exactly what finetune_operator calls (kube.py and
kopf's watches/indexes in handlers_job.py and handlers_sweep.py). No wildcards, no
secrets, no pods/log, no pods/exec; every write to an object is a PATCH.
- finetunejobs: watched and indexed; sweeps create, patch (prune) and delete trials.
- hyperparametersweeps: watched and read; only their status is written.
- jobs: created, adopted, suspended/resumed (patch), deleted.
- pods: watched and indexed for failure reasons (read only).
- events: created for milestones (kopf posts too).
- the finalizers subresources, update: Jobs and trial FineTuneJobs carry owner references with
  blockOwnerDeletion; clusters with the OwnerReferencesPermissionEnforcement admission
  plugin (e.g. OpenShift) require this to create them. It cannot touch specs or status.
*/}}
{{- define "finetune.operatorRules" -}}
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["finetune.dev"]
  resources: ["hyperparametersweeps"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs/status", "hyperparametersweeps/status"]
  verbs: ["patch"]
- apiGroups: ["finetune.dev"]
  resources: ["finetunejobs/finalizers", "hyperparametersweeps/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# spec.promote: the KServe InferenceService serving a run (created; read back for its
# URL and on a 409). Harmless without KServe installed.
- apiGroups: ["serving.kserve.io"]
  resources: ["inferenceservices"]
  verbs: ["create", "get"]
{{- end -}}
