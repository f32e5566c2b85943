#!/usr/bin/env bash
# Build the Kubernetes control plane the kubernetes backend's tests run against:
# kube-apiserver, kube-controller-manager and kube-scheduler from k8s.io/kubernetes, etcd
# from the same module graph, and helm from its own module. None is packaged in a
# registry this project can reach; all are Go modules on the module proxy.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/apiserver, ...) at
# v0.0.0 and replaces them with ./staging paths. Replace directives only count in the main
# module, so a throwaway main module requires k8s.io/kubernetes and points each staging
# module at its published v0.<minor>.<patch> tag, cut from the same release.
#
# Usage: scripts/build_k8s.sh OUT_DIR   (binaries go to OUT_DIR; idempotent)
# Go's module and build caches stay where `go env` puts them, outside the clone.
set -euo pipefail

out=${1:?usage: build_k8s.sh OUT_DIR}
K8S_VERSION=${K8S_VERSION:-v1.37.2}
HELM_VERSION=${HELM_VERSION:-v4.3.2}
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
"$GO" version >/dev/null

mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -f "$out/VERSIONS" ]; then exit 0; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/flotilla-k8s-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
start=$(date +%s)

gomod=$("$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')
staging=v0.${K8S_VERSION#v1.}
python3 - "$gomod" "$K8S_VERSION" "$staging" > go.mod <<'PY'
import re
import sys

path, release, staging = sys.argv[1:]
text = open(path).read()
modules = re.findall(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", text, re.M)
if not modules:
    sys.exit(f"{path}: no ./staging replacements; is {release} a k8s.io/kubernetes release?")
print("module flotilla-k8s-build\n")
print("go " + re.search(r"^go\s+(\S+)", text, re.M).group(1))
for line in re.findall(r"^godebug\s+.*$", text, re.M):
    print(line)
print(f"\nrequire k8s.io/kubernetes {release}\n\nreplace (")
for module in modules:
    print(f"\t{module} => {module} {staging}")
print(")")
PY
packages=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kube-scheduler)
{
  printf '//go:build tools\n\npackage tools\n\nimport (\n'
  for p in "${packages[@]}" go.etcd.io/etcd/server/v3; do printf '\t_ "%s"\n' "$p"; done
  printf ')\n'
} > tools.go
export GOFLAGS=-mod=mod CGO_ENABLED=0
"$GO" mod tidy

# The version stamp hack/lib/version.sh would set, so /version answers the release.
minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
"$GO" build -ldflags "$ldflags" -o "$out/" "${packages[@]}"
"$GO" build -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
etcd=$("$GO" list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
GOBIN=$out "$GO" install -ldflags "-s -w" "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"

printf 'kubernetes %s\netcd %s\nhelm %s\n%s\nbuilt in %ss\n' "$K8S_VERSION" "$etcd" \
  "$HELM_VERSION" "$("$GO" version)" "$(( $(date +%s) - start ))" > "$out/VERSIONS.tmp"
mv "$out/VERSIONS.tmp" "$out/VERSIONS"
cat "$out/VERSIONS"
