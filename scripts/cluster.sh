#!/usr/bin/env bash
# Start, stop or report a local Kubernetes control plane for the operator's tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok, all on loopback, with
# certificates, keys, data and logs under $MAILPIPE_STATE_DIR/cluster (default: .run/cluster).
# kwok stands in for kubelets: pods bound to its fake Nodes turn Running and Ready without
# containers, so Deployments and StatefulSets behave as they would on real nodes.
#
# Usage: scripts/cluster.sh start|stop|status
# Starting is idempotent: a component whose pid file names a live process is left alone.
# The admin kubeconfig is written to $MAILPIPE_STATE_DIR/cluster/kubeconfig.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
# shellcheck source=scripts/versions.sh
source "$here/versions.sh"

# Loopback ports of the control plane; they avoid each component's default port so that a cluster
# already running on the machine keeps its own.
ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
APISERVER_PORT=16443
CONTROLLER_MANAGER_PORT=20257
SCHEDULER_PORT=20259
KWOK_PORT=20250
FAKE_NODES=3
SERVICE_CIDR=10.96.0.0/16

state_dir=${MAILPIPE_STATE_DIR:-$repo/.run}
tools_dir=${MAILPIPE_TOOLS_DIR:-$HOME/.cache/mailpipe/tools}
cluster_dir=$state_dir/cluster
pki=$cluster_dir/pki
kubeconfig=$cluster_dir/kubeconfig

etcd_bin=$tools_dir/etcd-$ETCD_VERSION/bin/server
kube_bin=$tools_dir/kubernetes-$KUBERNETES_VERSION/bin
kwok_bin=$tools_dir/kwok-$KWOK_VERSION/bin/kwok

log() { printf 'cluster: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

running() {
    local pid_file=$cluster_dir/pids/$1.pid
    [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null
}

# launch NAME COMMAND...: run a component in the background with its log and pid file.
launch() {
    local name=$1
    shift
    nohup "$@" >>"$cluster_dir/logs/$name.log" 2>&1 &
    echo $! >"$cluster_dir/pids/$name.pid"
}

# fail_with_log NAME MESSAGE: report a component that did not come up, with its log's tail.
fail_with_log() {
    log "$2; last lines of $cluster_dir/logs/$1.log:"
    tail -n 20 "$cluster_dir/logs/$1.log" >&2 || true
    exit 1
}

kubectl() { "$kube_bin/kubectl" --kubeconfig "$kubeconfig" "$@"; }

check_tools() {
    local tool
    for tool in "$etcd_bin" "$kube_bin/kube-apiserver" "$kube_bin/kube-controller-manager" \
        "$kube_bin/kube-scheduler" "$kube_bin/kubectl" "$kwok_bin"; do
        [ -x "$tool" ] || { log "missing $tool; run scripts/build-tools.sh (make tools) first"; exit 1; }
    done
}

# issue_cert NAME SUBJECT [SAN]: a key and a certificate signed by the cluster's CA.
issue_cert() {
    local name=$1 subject=$2 san=${3:-}
    [ -f "$pki/$name.crt" ] && return
    openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -subj "$subject" \
        -out "$pki/$name.csr" 2>/dev/null
    local extensions=$pki/$name.ext
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        if [ -n "$san" ]; then
            echo "extendedKeyUsage=serverAuth,clientAuth"
            echo "subjectAltName=$san"
        else
            echo "extendedKeyUsage=clientAuth"
        fi
    } >"$extensions"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 3650 -sha256 -extfile "$extensions" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$extensions"
}

generate_pki() {
    mkdir -p "$pki"
    if [ ! -f "$pki/ca.crt" ]; then
        openssl req -x509 -new -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -days 3650 \
            -subj "/CN=mailpipe-local-ca" -out "$pki/ca.crt" 2>/dev/null
    fi
    issue_cert apiserver "/CN=kube-apiserver" \
        "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    # The system:masters group gives the admin, the controller manager and the scheduler every
    # permission; acceptable for a throwaway loopback cluster, never for a shared one.
    issue_cert admin "/O=system:masters/CN=mailpipe-admin"
    issue_cert kwok "/O=system:masters/CN=kwok"
    if [ ! -f "$pki/service-account.key" ]; then
        openssl genrsa -out "$pki/service-account.key" 2048 2>/dev/null
        openssl rsa -in "$pki/service-account.key" -pubout -out "$pki/service-account.pub" 2>/dev/null
    fi
}

# write_kubeconfig PATH USER: a kubeconfig for the API server with one client certificate.
write_kubeconfig() {
    local path=$1 user=$2
    cat >"$path" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: mailpipe-local
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $pki/$user.crt
    client-key: $pki/$user.key
contexts:
- name: mailpipe-local
  context:
    cluster: mailpipe-local
    user: $user
current-context: mailpipe-local
YAML
}

start_etcd() {
    running etcd && return
    launch etcd "$etcd_bin" --name mailpipe-local --data-dir "$cluster_dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "mailpipe-local=http://127.0.0.1:$ETCD_PEER_PORT" \
        --unsafe-no-fsync --quota-backend-bytes 2147483648
    local deadline=$((SECONDS + 30))
    until curl -fsS "http://127.0.0.1:$ETCD_CLIENT_PORT/health" 2>/dev/null | grep -q '"health":"true"'; do
        [ "$SECONDS" -lt "$deadline" ] || fail_with_log etcd "etcd was not healthy within 30s"
        running etcd || fail_with_log etcd "etcd exited"
        sleep 0.2
    done
}

start_apiserver() {
    running kube-apiserver && return
    # The endpoint reconciler refuses a loopback advertise address; nothing in this cluster
    # reaches the API server through the kubernetes Service, so it is switched off.
    launch kube-apiserver "$kube_bin/kube-apiserver" \
        --etcd-servers "http://127.0.0.1:$ETCD_CLIENT_PORT" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$APISERVER_PORT" \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$pki/service-account.pub" \
        --service-account-signing-key-file "$pki/service-account.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --authorization-mode Node,RBAC \
        --allow-privileged=true \
        --endpoint-reconciler-type none \
        --disable-admission-plugins TaintNodesByCondition
    local deadline=$((SECONDS + 60))
    until kubectl get --raw /readyz >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail_with_log kube-apiserver "kube-apiserver was not ready within 60s"
        running kube-apiserver || fail_with_log kube-apiserver "kube-apiserver exited"
        sleep 0.3
    done
}

start_controller_manager() {
    running kube-controller-manager && return
    launch kube-controller-manager "$kube_bin/kube-controller-manager" \
        --kubeconfig "$kubeconfig" --bind-address 127.0.0.1 --secure-port "$CONTROLLER_MANAGER_PORT" \
        --leader-elect=false --service-account-private-key-file "$pki/service-account.key" \
        --root-ca-file "$pki/ca.crt" --use-service-account-credentials=false \
        --service-cluster-ip-range "$SERVICE_CIDR" --controllers '*,-node-lifecycle-controller' \
        --concurrent-deployment-syncs 10 --concurrent-statefulset-syncs 10
}

start_scheduler() {
    running kube-scheduler && return
    launch kube-scheduler "$kube_bin/kube-scheduler" \
        --kubeconfig "$kubeconfig" --bind-address 127.0.0.1 --secure-port "$SCHEDULER_PORT" \
        --leader-elect=false
}

# kwok's stages: a node turns Ready once; a scheduled pod turns Running and Ready; a pod of a Job
# then succeeds; a pod being deleted goes at once, as a kubelet would remove it after its grace
# period. Nodes send no heartbeats, so the controller manager runs without the node lifecycle
# controller, which would otherwise mark them unreachable and evict their pods. Without that
# controller nothing would lift the not-ready taint that the API server's TaintNodesByCondition
# admission puts on new nodes, so that admission plugin is switched off as well.
write_kwok_stages() {
    cat >"$cluster_dir/kwok-stages.yaml" <<'YAML'
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: node-ready
spec:
  resourceRef: {apiGroup: v1, kind: Node}
  selector:
    matchExpressions:
    - {key: '.status.phase', operator: NotIn, values: [Running]}
  next:
    statusTemplate: |
      phase: Running
      conditions:
      - type: Ready
        status: "True"
        reason: KubeletReady
        message: kwok stands in for the kubelet
        lastHeartbeatTime: {{ Now | Quote }}
        lastTransitionTime: {{ Now | Quote }}
      addresses:
      - {type: InternalIP, address: {{ NodeIP | Quote }}}
      - {type: Hostname, address: {{ NodeName | Quote }}}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-ready
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Pending]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Running
      hostIP: {{ NodeIPWith .spec.nodeName | Quote }}
      podIP: {{ PodIPWith .spec.nodeName false .metadata.uid .metadata.name .metadata.namespace | Quote }}
      startTime: {{ $now | Quote }}
      conditions:
      {{ range list "Initialized" "PodScheduled" "ContainersReady" "Ready" }}
      - {type: {{ . }}, status: "True", lastTransitionTime: {{ $now | Quote }}}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        imageID: ""
        ready: true
        started: true
        restartCount: 0
        state: {running: {startedAt: {{ $now | Quote }}}}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: DoesNotExist}
    - {key: '.status.phase', operator: In, values: [Running]}
    - {key: '.metadata.ownerReferences.[].kind', operator: In, values: [Job]}
  next:
    statusTemplate: |
      {{ $now := Now }}
      phase: Succeeded
      conditions:
      {{ range list "ContainersReady" "Ready" }}
      - {type: {{ . }}, status: "False", reason: PodCompleted, lastTransitionTime: {{ $now | Quote }}}
      {{ end }}
      containerStatuses:
      {{ range .spec.containers }}
      - name: {{ .name | Quote }}
        image: {{ .image | Quote }}
        imageID: ""
        ready: false
        started: false
        restartCount: 0
        state: {terminated: {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}}
      {{ end }}
---
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef: {apiGroup: v1, kind: Pod}
  selector:
    matchExpressions:
    - {key: '.metadata.deletionTimestamp', operator: Exists}
  next:
    finalizers: {empty: true}
    delete: true
YAML
}

start_kwok() {
    running kwok && return
    write_kubeconfig "$cluster_dir/kwok.kubeconfig" kwok
    write_kwok_stages
    launch kwok "$kwok_bin" --kubeconfig "$cluster_dir/kwok.kubeconfig" \
        --config "$cluster_dir/kwok-stages.yaml" \
        --manage-all-nodes=true --cidr 10.244.0.0/16 --node-ip 127.0.0.1 \
        --server-address "127.0.0.1:$KWOK_PORT"
}

# Fake nodes large enough for a RabbitMQ cluster and many consumers, with the annotation and
# label that kwok's documentation gives its nodes.
create_nodes() {
    local index
    for index in $(seq 1 "$FAKE_NODES"); do
        kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$index
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/hostname: kwok-node-$index
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/role: agent
    type: kwok
status:
  allocatable: {cpu: "64", memory: 256Gi, pods: "250"}
  capacity: {cpu: "64", memory: 256Gi, pods: "250"}
YAML
    done
}

# Nothing provisions volumes here, so a default StorageClass without a provisioner and a pool of
# pre-made volumes let the volume controller bind the claims of StatefulSets at once.
create_volumes() {
    kubectl apply -f - >/dev/null <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
YAML
    local index manifest=""
    for index in $(seq -w 1 60); do
        manifest+="---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: local-volume-$index
spec:
  capacity: {storage: 100Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: standard
  hostPath: {path: /tmp/mailpipe-kwok-volume-$index}
"
    done
    kubectl apply -f - >/dev/null <<<"$manifest"
}

# A deleted claim leaves its volume Released and never bound again under the Retain policy; making
# such volumes Available again keeps the pool from running dry across test runs.
release_volumes() {
    local volume
    for volume in $(kubectl get pv -o jsonpath='{range .items[?(@.status.phase=="Released")]}{.metadata.name}{" "}{end}'); do
        kubectl patch pv "$volume" --type json -p '[{"op":"remove","path":"/spec/claimRef"}]' >/dev/null
    done
}

wait_for_nodes() {
    local deadline=$((SECONDS + 30))
    until [ "$(kubectl get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' 2>/dev/null | grep -c True)" -ge "$FAKE_NODES" ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail_with_log kwok "the kwok nodes did not turn Ready within 30s"
        running kwok || fail_with_log kwok "kwok exited"
        sleep 0.3
    done
}

wait_for_default_service_account() {
    local deadline=$((SECONDS + 30))
    until kubectl get serviceaccount default -n default >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail_with_log kube-controller-manager \
            "the controller manager did not create the default ServiceAccount within 30s"
        running kube-controller-manager || fail_with_log kube-controller-manager "kube-controller-manager exited"
        sleep 0.3
    done
}

start() {
    check_tools
    mkdir -p "$cluster_dir/logs" "$cluster_dir/pids"
    generate_pki
    write_kubeconfig "$kubeconfig" admin
    start_etcd
    start_apiserver
    start_controller_manager
    start_scheduler
    start_kwok
    create_volumes
    release_volumes
    create_nodes
    wait_for_nodes
    wait_for_default_service_account
    log "control plane ready at https://127.0.0.1:$APISERVER_PORT with $FAKE_NODES kwok nodes"
    echo "export KUBECONFIG=$kubeconfig"
}

stop_one() {
    local name=$1 pid_file=$cluster_dir/pids/$1.pid
    [ -f "$pid_file" ] || return 0
    local pid
    pid=$(cat "$pid_file")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
        log "stopped $name"
    fi
    rm -f "$pid_file"
}

# Stopping order: the clients of the API server first, etcd last.
components=(kwok kube-scheduler kube-controller-manager kube-apiserver etcd)

case "${1:-status}" in
    start)
        start
        ;;
    stop)
        for component in "${components[@]}"; do stop_one "$component"; done
        ;;
    status)
        for component in "${components[@]}"; do
            if running "$component"; then
                echo "$component: running (pid $(cat "$cluster_dir/pids/$component.pid"))"
            else
                echo "$component: stopped"
            fi
        done
        echo "kubeconfig: $kubeconfig"
        ;;
    *)
        log "unknown command '$1'; expected start, stop or status"
        exit 2
        ;;
esac
