#!/usr/bin/env bash
# Build the Go programs that the tests and the demo run, from the Go module proxy, into a cache
# outside the repository keyed by name and version, so that a second run builds nothing.
#
# Usage: scripts/build-tools.sh [ferretdb|helm|kwok|etcd|kubernetes ...]   (default: all)
# The cache folder is $MAILPIPE_TOOLS_DIR, by default ~/.cache/mailpipe/tools.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/versions.sh
source "$here/versions.sh"

tools_dir=${MAILPIPE_TOOLS_DIR:-$HOME/.cache/mailpipe/tools}
mkdir -p "$tools_dir"
export GOFLAGS="-trimpath -mod=mod"
export CGO_ENABLED=0

log() { printf 'build-tools: %s\n' "$*" >&2; }

# Build main packages from one module into $tools_dir/NAME-VERSION/bin, through a throwaway
# wrapper module, because `go install pkg@version` rejects modules whose go.mod has replace
# directives (etcd and Kubernetes both do).
#   build_with_wrapper NAME VERSION "MODULE@VERSION ..." "REPLACE ..." PACKAGE...
build_with_wrapper() {
    local name=$1 version=$2 requires=$3 replaces=$4
    shift 4
    local out=$tools_dir/$name-$version
    if [ -f "$out/.complete" ]; then
        log "$name $version is cached in $out"
        return 0
    fi
    log "building $name $version (this takes minutes on a cold cache)"
    local work
    work=$(mktemp -d)
    (
        cd "$work"
        go mod init mailpipe.local/tools-"$name" >/dev/null 2>&1
        for replacement in $replaces; do
            go mod edit -replace "$replacement"
        done
        for requirement in $requires; do
            go mod edit -require "$requirement"
        done
        mkdir -p "$out/bin"
        go build -ldflags="-s -w ${extra_ldflags:-}" -o "$out/bin/" "$@"
    )
    rm -rf "$work"
    touch "$out/.complete"
    log "$name $version built into $out/bin"
}

# FerretDB embeds build/version/version.txt, which its release process writes and the module zip
# lacks; the binary panics at start without it. Build from a copy of the module with that file.
build_ferretdb() {
    local out=$tools_dir/ferretdb-$FERRETDB_CACHE_KEY
    if [ -f "$out/.complete" ]; then
        log "ferretdb $FERRETDB_CACHE_KEY is cached in $out"
        return 0
    fi
    local module_dir source_copy
    module_dir=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
    source_copy=$tools_dir/src/ferretdb-$FERRETDB_CACHE_KEY
    rm -rf "$source_copy"
    mkdir -p "$(dirname "$source_copy")"
    cp -r "$module_dir" "$source_copy"
    chmod -R u+w "$source_copy"
    echo "$FERRETDB_VERSION" > "$source_copy/build/version/version.txt"
    # scripts/ferretdb-mailpipe.patch fixes FerretDB 1.24 defects and costs that Mailpipe's load hits:
    # - The SQLite back end indexes `_ferretdb_sjson->"_id"` but filtered on
    #   `_ferretdb_sjson->'$._id'`. SQLite uses an expression index only for the same spelling, so
    #   every update or delete by _id scanned the collection (24 ms per update at 5,000 documents,
    #   64 ms at 20,000). The filter now uses the index's spelling.
    # - The update command closed each statement's iterator only when the whole command ended,
    #   holding one pooled SQLite connection per statement. Concurrent bulk updates used up the
    #   pool of 100 and deadlocked the server. Each statement now reads its documents and closes
    #   the read before writing. An open read also kept SQLite's checkpoints from resetting the
    #   write-ahead log, which grew without end (200 MB in 15 s) while each commit got slower.
    # - Only a filter of exactly `{_id: value}` used the _id index. Now `{_id: {$in: [...]}}` does
    #   too, with or without other conditions beside it, so that a consumer reads a batch of
    #   emails, and the publisher replaces a chunk's, with one command.
    # - Release builds recorded a stack trace for every tracked iterator, to find leaks: about 7%
    #   of FerretDB's CPU. Only debug builds record them now; the check for leaks stays.
    # - A writer that found SQLite's write lock taken slept 1, 2, 5 ms and more in SQLite's busy
    #   handler, however soon the lock was free. Writes to one database now queue on a mutex.
    (cd "$source_copy" && git apply -p1 "$here/ferretdb-mailpipe.patch")
    build_with_wrapper ferretdb "$FERRETDB_CACHE_KEY" \
        "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" "github.com/FerretDB/FerretDB=$source_copy" \
        github.com/FerretDB/FerretDB/cmd/ferretdb
    rm -rf "$source_copy"
}

# Helm's release builds stamp its version and the Kubernetes version it assumes for
# `helm template` and `helm lint`; without them it reports v3.22 and assumes Kubernetes v1.20.
build_helm() {
    local minor=${KUBERNETES_VERSION#v1.}
    local flags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
    local package
    for package in pkg/chartutil pkg/lint/rules; do
        flags="$flags -X helm.sh/helm/v3/$package.k8sVersionMajor=1 -X helm.sh/helm/v3/$package.k8sVersionMinor=${minor%%.*}"
    done
    extra_ldflags=$flags build_with_wrapper helm "$HELM_VERSION" "helm.sh/helm/v3@$HELM_VERSION" "" helm.sh/helm/v3/cmd/helm
}

build_kwok() {
    build_with_wrapper kwok "$KWOK_VERSION" "sigs.k8s.io/kwok@$KWOK_VERSION" "" sigs.k8s.io/kwok/cmd/kwok
}

build_etcd() {
    build_with_wrapper etcd "$ETCD_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
    # The main package of the server module is named after its folder, so name the binary etcd.
    local bin=$tools_dir/etcd-$ETCD_VERSION/bin
    if [ -f "$bin/v3" ]; then mv "$bin/v3" "$bin/etcd"; fi
}

# k8s.io/kubernetes requires its staging modules (k8s.io/api and others) at v0.0.0 and points
# them at folders of its own repository. A wrapper module pins each to the matching v0.x release.
build_kubernetes() {
    local minor=${KUBERNETES_VERSION#v1.}
    local staging_version=v0.$minor
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    local replaces=""
    local module
    for module in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod"); do
        replaces="$replaces $module=$module@$staging_version"
    done
    # Release builds stamp the version; without it the API server reports v0.0.0, and charts with
    # a kubeVersion constraint refuse to install.
    local flags="" package
    for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags="$flags -X $package.gitVersion=$KUBERNETES_VERSION -X $package.gitMajor=1 -X $package.gitMinor=${minor%%.*}"
    done
    extra_ldflags=$flags build_with_wrapper kubernetes "$KUBERNETES_VERSION" "k8s.io/kubernetes@$KUBERNETES_VERSION" "$replaces" \
        k8s.io/kubernetes/cmd/kube-apiserver \
        k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler \
        k8s.io/kubernetes/cmd/kubectl
}

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(ferretdb helm kwok etcd kubernetes)
fi
for target in "${targets[@]}"; do
    case "$target" in
        ferretdb|helm|kwok|etcd|kubernetes) "build_$target" ;;
        *) log "unknown tool '$target'; expected ferretdb, helm, kwok, etcd or kubernetes"; exit 2 ;;
    esac
done
