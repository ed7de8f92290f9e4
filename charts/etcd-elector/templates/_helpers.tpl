{{/*
Names and labels, in the `helm create` style.

Every helper here takes the chart's root scope (what `.` is in a template of
this chart). Another chart that depends on this one passes this chart's scope
as `index .Subcharts "etcd-elector"`, so the helpers see this chart's values,
name and appVersion, not the parent's.
*/}}

{{/*
Expand the name of the chart.
*/}}
{{- define "etcd-elector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "etcd-elector.fullname" -}}
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
Create chart name and version as used by the chart label.
*/}}
{{- define "etcd-elector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of the chart's objects (not of their pod templates: see
"etcd-elector.podLabels").
*/}}
{{- define "etcd-elector.labels" -}}
helm.sh/chart: {{ include "etcd-elector.chart" . }}
{{ include "etcd-elector.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels of pod templates: the selector labels and managed-by, without
helm.sh/chart or app.kubernetes.io/version. A label in a pod template is part
of the template, so a chart version in it would roll every pod (and restart
every bundled etcd member) on a chart upgrade that changes nothing else.
*/}}
{{- define "etcd-elector.podLabels" -}}
{{ include "etcd-elector.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "etcd-elector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etcd-elector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of the application pods. The component label keeps the
Service from ever selecting the bundled etcd or the test pod.
*/}}
{{- define "etcd-elector.appSelectorLabels" -}}
{{ include "etcd-elector.selectorLabels" . }}
app.kubernetes.io/component: app
{{- end }}

{{/*
Selector labels of the bundled etcd members.
*/}}
{{- define "etcd-elector.etcdSelectorLabels" -}}
{{ include "etcd-elector.selectorLabels" . }}
app.kubernetes.io/component: etcd
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "etcd-elector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "etcd-elector.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Name of the bundled etcd StatefulSet and its client Service; the headless
(peer) Service adds "-headless". At most 52 characters: the StatefulSet
controller labels each pod with controller-revision-hash "<name>-<hash of up
to 10 characters>", a label value that must fit 63, or no pod is created.
*/}}
{{- define "etcd-elector.etcdFullname" -}}
{{- printf "%s-etcd" (include "etcd-elector.fullname" . | trunc 47 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the CronJob: at most 52 characters, the API server's limit (each Job
it creates adds "-<scheduled time in minutes>", and a Job's name is a label
value of at most 63).
*/}}
{{- define "etcd-elector.cronjobName" -}}
{{- include "etcd-elector.fullname" . | trunc 52 | trimSuffix "-" }}
{{- end }}

{{/*
Name of the Service for the elector's metrics port (a DNS label, at most 63).
*/}}
{{- define "etcd-elector.metricsServiceName" -}}
{{- printf "%s-metrics" (include "etcd-elector.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Name of the helm test Pod and its Service (at most 63).
*/}}
{{- define "etcd-elector.testName" -}}
{{- printf "%s-test-leader" (include "etcd-elector.fullname" . | trunc 51 | trimSuffix "-") }}
{{- end }}

{{/*
The Deployment strategy. strategy.type defaults to RollingUpdate; its
rollingUpdate settings are rendered for RollingUpdate only (the API refuses
them with Recreate), and each one not set takes the readiness mode's default:
"leader" maxSurge 1, maxUnavailable 100% (only the leader is ever Ready, so
any lower maxUnavailable deadlocks a rollout); "healthy" maxSurge 1,
maxUnavailable 0 (every healthy pod is Ready: a classic rolling update).
*/}}
{{- define "etcd-elector.strategy" -}}
{{- $type := default "RollingUpdate" .Values.strategy.type }}
{{- $default := dict "maxSurge" 1 "maxUnavailable" "100%" }}
{{- if eq .Values.elector.readiness "healthy" }}
{{- $default = dict "maxSurge" 1 "maxUnavailable" 0 }}
{{- end }}
type: {{ $type }}
{{- if eq $type "RollingUpdate" }}
{{- $ru := default dict .Values.strategy.rollingUpdate }}
rollingUpdate:
  maxSurge: {{ ternary $ru.maxSurge $default.maxSurge (hasKey $ru "maxSurge") | toJson }}
  maxUnavailable: {{ ternary $ru.maxUnavailable $default.maxUnavailable (hasKey $ru "maxUnavailable") | toJson }}
{{- end }}
{{- end }}

{{/*
PromQL label matchers of this release's elector series, for the
PrometheusRule: monitoring.prometheusRule.selector, or the namespace and the
job label Prometheus gives targets of the chart's PodMonitor.
*/}}
{{- define "etcd-elector.metricsSelector" -}}
{{- if .Values.monitoring.prometheusRule.selector }}
{{- .Values.monitoring.prometheusRule.selector }}
{{- else }}
{{- printf "namespace=%q, job=%q" .Release.Namespace (printf "%s/%s" .Release.Namespace (include "etcd-elector.fullname" .)) }}
{{- end }}
{{- end }}

{{/*
Refuse a rolling update that deadlocks in readiness "leader": the controller
removes the old leader (the only available pod) only while
replicas - maxUnavailable <= 0, and no new pod is Ready before it goes. So
maxUnavailable (a percentage rounds down, as the controller does) must
reach replicaCount.
*/}}
{{- define "etcd-elector.validateStrategy" -}}
{{- $n := int .Values.replicaCount }}
{{- if and .Values.deployment.enabled (eq .Values.elector.readiness "leader") (eq (default "RollingUpdate" .Values.strategy.type) "RollingUpdate") (gt $n 0) }}
{{- $ru := default dict .Values.strategy.rollingUpdate }}
{{- if hasKey $ru "maxUnavailable" }}
{{- $mu := $ru.maxUnavailable }}
{{- $allowed := 0 }}
{{- if kindIs "string" $mu }}
{{- $allowed = div (mul $n (trimSuffix "%" $mu | int)) 100 }}
{{- else }}
{{- $allowed = int $mu }}
{{- end }}
{{- if lt (int $allowed) $n }}
{{- fail (printf "strategy.rollingUpdate.maxUnavailable %v allows %d of %d replicas to be unavailable: with elector.readiness \"leader\" only the leader is ever Ready, so this rollout would deadlock. Use \"100%%\" (the default), strategy.type Recreate, or elector.readiness \"healthy\"" $mu (int $allowed) $n) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
True (the string "true") when the bundled etcd is installed: no endpoints given.
*/}}
{{- define "etcd-elector.bundledEtcd" -}}
{{- if not .Values.etcd.endpoints }}true{{ end }}
{{- end }}

{{/*
The peer URL host of bundled member number $i.
Usage: include "etcd-elector.etcdMemberHost" (list $ $i)
*/}}
{{- define "etcd-elector.etcdMemberHost" -}}
{{- $root := index . 0 }}
{{- $sts := include "etcd-elector.etcdFullname" $root }}
{{- printf "%s-%d.%s-headless.%s.svc.%s" $sts (index . 1) $sts $root.Release.Namespace $root.Values.etcd.bundled.clusterDomain }}
{{- end }}

{{/*
The etcd client URLs the elector uses, comma-separated: the given endpoints,
or every member of the bundled etcd (the client fails over between them).
*/}}
{{- define "etcd-elector.etcdEndpoints" -}}
{{- if .Values.etcd.endpoints }}
{{- join "," .Values.etcd.endpoints }}
{{- else }}
{{- $urls := list }}
{{- range $i := until (int .Values.etcd.bundled.replicas) }}
{{- $urls = append $urls (printf "%s://%s:2379" (ternary "https" "http" $.Values.etcd.bundled.tls.enabled) (include "etcd-elector.etcdMemberHost" (list $ $i))) }}
{{- end }}
{{- join "," $urls }}
{{- end }}
{{- end }}

{{/*
The sidecar's lock key.
*/}}
{{- define "etcd-elector.key" -}}
{{- default (printf "/elector/%s/%s" .Release.Namespace (include "etcd-elector.fullname" .)) .Values.elector.key }}
{{- end }}

{{/*
The CronJob's lock key: no namespace in the default, so that installs of the
same release in several namespaces or clusters share it.
*/}}
{{- define "etcd-elector.cronjobKey" -}}
{{- default (printf "/elector/cron/%s" (include "etcd-elector.fullname" .)) .Values.cronjob.key }}
{{- end }}

{{/*
The elector image reference.
*/}}
{{- define "etcd-elector.image" -}}
{{- printf "%s:%s" .Values.elector.image.repository (default .Chart.AppVersion .Values.elector.image.tag | toString) }}
{{- end }}

{{/*
"true" when the sidecar is rendered as a native sidecar (an init container
with restartPolicy: Always, Kubernetes >= 1.29), "false" for a plain
container. elector.nativeSidecar: auto | true | false.
*/}}
{{- define "etcd-elector.sidecar.native" -}}
{{- $mode := .Values.elector.nativeSidecar }}
{{- if eq (toString $mode) "auto" }}
{{- semverCompare ">=1.29-0" .Capabilities.KubeVersion.Version }}
{{- else }}
{{- eq (toString $mode) "true" }}
{{- end }}
{{- end }}

{{/*
Refuse combinations that the schema cannot express, with a clear message.
*/}}
{{- define "etcd-elector.validate" -}}
{{- $etcd := .Values.etcd }}
{{- if and $etcd.tls.enabled (not $etcd.tls.existingSecret) }}
{{- fail "etcd.tls.enabled needs etcd.tls.existingSecret: the name of a Secret with the CA (and client certificate and key)" }}
{{- end }}
{{- if and $etcd.auth.enabled (not $etcd.auth.existingSecret) }}
{{- fail "etcd.auth.enabled needs etcd.auth.existingSecret: the name of a Secret holding the password" }}
{{- end }}
{{- if and $etcd.auth.enabled (not $etcd.auth.username) }}
{{- fail "etcd.auth.enabled needs etcd.auth.username" }}
{{- end }}
{{- if and (not $etcd.endpoints) $etcd.auth.enabled }}
{{- fail "etcd.auth applies to an external etcd: set etcd.endpoints (the bundled etcd has no auth)" }}
{{- end }}
{{- if and (not $etcd.endpoints) $etcd.tls.enabled (not $etcd.bundled.tls.enabled) }}
{{- fail "etcd.tls with the bundled etcd needs etcd.bundled.tls.enabled (the bundled etcd serves plain HTTP otherwise); for an external etcd set etcd.endpoints" }}
{{- end }}
{{- if and $etcd.endpoints $etcd.bundled.tls.enabled }}
{{- fail "etcd.bundled.tls applies to the bundled etcd, which is not installed when etcd.endpoints is set: use etcd.tls" }}
{{- end }}
{{- if and $etcd.bundled.tls.enabled (not $etcd.bundled.tls.existingSecret) }}
{{- fail "etcd.bundled.tls.enabled needs etcd.bundled.tls.existingSecret: a Secret with ca.crt, tls.crt and tls.key for the members" }}
{{- end }}
{{- if and $etcd.tls.enabled (or (and $etcd.tls.certKey (not $etcd.tls.keyKey)) (and $etcd.tls.keyKey (not $etcd.tls.certKey))) }}
{{- fail "etcd.tls.certKey and etcd.tls.keyKey go together: set both for a client certificate, or both empty for none" }}
{{- end }}
{{- if and (gt (int .Values.elector.releaseDelay) 0) (ge (int .Values.elector.releaseDelay) (int .Values.elector.shutdownTimeout)) }}
{{- fail "elector.releaseDelay must be less than elector.shutdownTimeout: the lease is revoked after the delay, within the timeout" }}
{{- end }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int .Values.elector.shutdownTimeout) }}
{{- fail "terminationGracePeriodSeconds must be at least elector.shutdownTimeout, or the sidecar is killed before it releases the lock" }}
{{- end }}
{{- include "etcd-elector.validateStrategy" . }}
{{- with .Values.monitoring.prometheusRule }}
{{- if and .enabled (not .selector) (not $.Values.monitoring.podMonitor.enabled) }}
{{- fail "monitoring.prometheusRule needs monitoring.podMonitor.enabled, or monitoring.prometheusRule.selector naming the labels your own scrape config gives the elector's series (e.g. job=\"my-job\", namespace=\"prod\")" }}
{{- end }}
{{- end }}
{{- if .Values.cronjob.enabled }}
{{- if not .Values.cronjob.command }}
{{- fail "cronjob.enabled needs cronjob.command: the command to run under the lock" }}
{{- end }}
{{- if ge (int .Values.cronjob.gracePeriod) (int .Values.cronjob.ttl) }}
{{- fail "cronjob.gracePeriod must be well below cronjob.ttl: the command is stopped before the lease can expire" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" when the elector talks TLS to etcd: etcd.tls.enabled, or the bundled
etcd with etcd.bundled.tls.enabled. With the bundled etcd and no
etcd.tls.existingSecret, the members' Secret serves the elector too (its
certificate must then allow client authentication).
*/}}
{{- define "etcd-elector.clientTls" -}}
{{- if or .Values.etcd.tls.enabled (and (include "etcd-elector.bundledEtcd" .) .Values.etcd.bundled.tls.enabled) }}true{{ end }}
{{- end }}

{{/*
Environment that tells etcd-elector (sidecar or `run`) how to reach etcd:
endpoints, TLS files and auth. Secrets are mounted as files by
"etcd-elector.etcdVolumeMounts"; the password never enters the environment.
*/}}
{{- define "etcd-elector.etcdEnv" -}}
- name: ELECTOR_ENDPOINTS
  value: {{ include "etcd-elector.etcdEndpoints" . | quote }}
{{- with .Values.etcd.tls }}
{{- if include "etcd-elector.clientTls" $ }}
- name: ELECTOR_ETCD_CACERT
  value: {{ printf "/etc/etcd-elector/tls/%s" .caKey | quote }}
{{- if .certKey }}
- name: ELECTOR_ETCD_CERT
  value: {{ printf "/etc/etcd-elector/tls/%s" .certKey | quote }}
- name: ELECTOR_ETCD_KEY
  value: {{ printf "/etc/etcd-elector/tls/%s" .keyKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.etcd.auth }}
{{- if .enabled }}
- name: ELECTOR_ETCD_USER
  value: {{ .username | quote }}
- name: ELECTOR_ETCD_PASSWORD_FILE
  value: {{ printf "/etc/etcd-elector/auth/%s" .passwordKey | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Volume mounts for the etcd TLS and auth Secrets (empty when neither is on).
*/}}
{{- define "etcd-elector.etcdVolumeMounts" -}}
{{- if include "etcd-elector.clientTls" . }}
- name: etcd-elector-tls
  mountPath: /etc/etcd-elector/tls
  readOnly: true
{{- end }}
{{- if .Values.etcd.auth.enabled }}
- name: etcd-elector-auth
  mountPath: /etc/etcd-elector/auth
  readOnly: true
{{- end }}
{{- end }}

{{/*
Pod volumes for the etcd TLS and auth Secrets (empty when neither is on).
Pods that embed the sidecar must add these to their `volumes`; this is the
same as "etcd-elector.sidecar.volumes".
*/}}
{{- define "etcd-elector.etcdVolumes" -}}
{{- with .Values.etcd.tls }}
{{- if include "etcd-elector.clientTls" $ }}
- name: etcd-elector-tls
  secret:
    secretName: {{ default $.Values.etcd.bundled.tls.existingSecret .existingSecret }}
    items:
      - key: {{ .caKey }}
        path: {{ .caKey }}
      {{- if .certKey }}
      - key: {{ .certKey }}
        path: {{ .certKey }}
      - key: {{ .keyKey }}
        path: {{ .keyKey }}
      {{- end }}
{{- end }}
{{- end }}
{{- with .Values.etcd.auth }}
{{- if .enabled }}
- name: etcd-elector-auth
  secret:
    secretName: {{ .existingSecret }}
    items:
      - key: {{ .passwordKey }}
        path: {{ .passwordKey }}
{{- end }}
{{- end }}
{{- end }}

{{/*
THE EMBEDDABLE SIDECAR.

"etcd-elector.sidecar" renders the elector as one item of a container list:
as a native sidecar (with restartPolicy: Always) to put under
`initContainers`, or as a plain container to put under `containers`, as
"etcd-elector.sidecar.native" says. "etcd-elector.sidecar.volumes" renders
the pod volumes it needs (none unless etcd TLS or auth is on).

From this chart's templates pass `$`; from a chart that depends on this one
pass `(index .Subcharts "etcd-elector")`. See README.md, "Embedding".
*/}}
{{- define "etcd-elector.sidecar" -}}
{{- $native := eq (include "etcd-elector.sidecar.native" .) "true" }}
{{- $e := .Values.elector -}}
- name: etcd-elector
  image: {{ include "etcd-elector.image" . | quote }}
  imagePullPolicy: {{ $e.image.pullPolicy }}
  {{- if $native }}
  # A native sidecar: started before the app containers, stopped after them.
  restartPolicy: Always
  {{- end }}
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- include "etcd-elector.etcdEnv" . | nindent 4 }}
    - name: ELECTOR_KEY
      value: {{ include "etcd-elector.key" . | quote }}
    - name: ELECTOR_TTL
      value: {{ $e.ttl | quote }}
    - name: ELECTOR_LISTEN
      value: {{ printf "0.0.0.0:%d" (int $e.port) | quote }}
    - name: ELECTOR_SHUTDOWN_TIMEOUT
      value: {{ $e.shutdownTimeout | quote }}
    - name: ELECTOR_RELEASE_DELAY
      value: {{ $e.releaseDelay | quote }}
    - name: ELECTOR_HANDOFF_WAIT
      value: {{ include "etcd-elector.handoffWait" . | quote }}
    {{- with $e.appHealth }}
    - name: ELECTOR_APP_HEALTH
      value: {{ . | quote }}
    - name: ELECTOR_APP_UNHEALTHY_AFTER
      value: {{ $e.appUnhealthyAfter | quote }}
    {{- end }}
    - name: ELECTOR_LOG_FORMAT
      value: {{ $e.logFormat | quote }}
    - name: ELECTOR_PROTOCOL
      value: {{ $e.protocol | quote }}
    - name: ELECTOR_ADMIN_LISTEN
      value: {{ $e.adminListen | quote }}
    {{- include "etcd-elector.leaderFile.env" . | nindent 4 }}
    {{- with $e.revisionLabel }}
    # The pod template's revision, set by the workload controller as a pod
    # label: pods of one rollout share it, so the elector can tell old from new.
    - name: ELECTOR_REVISION
      valueFrom:
        fieldRef:
          fieldPath: metadata.labels['{{ . }}']
    {{- end }}
    {{- with $e.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: elector
      containerPort: {{ $e.port }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /healthz
      port: {{ $e.port }}
    {{- toYaml $e.startupProbe | nindent 4 }}
  {{- if eq $e.readiness "healthy" }}
  # readiness "healthy": Ready while the elector runs; every healthy pod is
  # behind the Service and the app acts only while it leads.
  readinessProbe:
    httpGet:
      path: /healthz
      port: {{ $e.port }}
  {{- else }}
  # readiness "leader": 200 on the leader only, so the pod is Ready (and
  # behind the Service) while it leads; 503 on the others is intended.
  readinessProbe:
    httpGet:
      path: /leader
      port: {{ $e.port }}
  {{- end }}
    {{- toYaml $e.readinessProbe | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: {{ $e.port }}
    {{- toYaml $e.livenessProbe | nindent 4 }}
  {{- with $e.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $e.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $mounts := concat (include "etcd-elector.etcdVolumeMounts" . | fromYamlArray) (include "etcd-elector.leaderFile.volumeMounts" (list . false) | fromYamlArray) }}
  {{- with $mounts }}
  volumeMounts:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- define "etcd-elector.sidecar.volumes" -}}
{{- include "etcd-elector.etcdVolumes" . | trim }}
{{- if .Values.leaderFile.enabled }}
- name: etcd-elector-leader
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}
{{- end }}

{{/*
THE LEADER FILE, for the application container: its environment
(ELECTOR_LEADER_FILE) and its read-only mount of the directory the elector
writes the file into. Both render nothing unless leaderFile.enabled.
Usage: include "etcd-elector.leaderFile.env" $scope
       include "etcd-elector.leaderFile.volumeMounts" (list $scope true)   (true: read-only)
*/}}
{{- define "etcd-elector.leaderFile.env" -}}
{{- if .Values.leaderFile.enabled }}
- name: ELECTOR_LEADER_FILE
  value: {{ .Values.leaderFile.path | quote }}
{{- end }}
{{- end }}

{{- define "etcd-elector.leaderFile.volumeMounts" -}}
{{- $root := index . 0 }}
{{- if $root.Values.leaderFile.enabled }}
- name: etcd-elector-leader
  mountPath: {{ dir $root.Values.leaderFile.path | quote }}
  readOnly: {{ index . 1 }}
{{- end }}
{{- end }}

{{/*
Topology spread constraints of the application pods: those of the values,
each without a labelSelector given the application pods' selector labels.
*/}}
{{- define "etcd-elector.topologySpreadConstraints" -}}
{{- $selector := include "etcd-elector.appSelectorLabels" . | fromYaml }}
{{- range .Values.topologySpreadConstraints }}
{{- $c := deepCopy . }}
{{- if not $c.labelSelector }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
- {{ toYaml $c | nindent 2 | trim }}
{{- end }}
{{- end }}

{{/*
Seconds a stepping-down leader waits for a new-revision pod to register
(ELECTOR_HANDOFF_WAIT): elector.handoffWait, else by readiness mode: 2 where
old pods stop while new ones start (leader), 0 where new pods are Ready first
(healthy).
*/}}
{{- define "etcd-elector.handoffWait" -}}
{{- $e := .Values.elector -}}
{{- if kindIs "invalid" $e.handoffWait -}}
{{- ternary 2 0 (eq $e.readiness "leader") -}}
{{- else -}}
{{- $e.handoffWait -}}
{{- end -}}
{{- end -}}
