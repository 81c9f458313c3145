# Versions of the tools that scripts/build-tools.sh builds; the cache is keyed by them.
FERRETDB_VERSION=v1.24.2
# Bump when scripts/build-tools.sh changes how FerretDB is built, so that caches rebuild it.
FERRETDB_BUILD=7
FERRETDB_CACHE_KEY=$FERRETDB_VERSION-build$FERRETDB_BUILD
HELM_VERSION=v3.22.0
KWOK_VERSION=v0.8.0
ETCD_VERSION=v3.6.17
KUBERNETES_VERSION=v1.37.2
