#!/usr/bin/env bash
# Builds the local test control plane from upstream sources through the Go
# module proxy: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, and the node's kubelet and kube-proxy, at the versions pinned in
# k8s/go.mod. Binaries are cached outside
# the checkout (tests/cache-dir.sh), keyed by the pins and this script; a second
# run, or another clone, with the same inputs reuses them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
version=$(awk '$1=="require" && $2=="k8s.io/kubernetes" {print $3}' "$here/k8s/go.mod")
key=$(cat "$here/k8s/go.mod" "$here/k8s/go.sum" "$0" | sha256sum | cut -c1-12)
out=${FT_CLUSTER_BIN:-$(bash "$root/tests/cache-dir.sh")/testcluster/$version-$key/bin}
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy etcd)
# One build at a time per output (make and a pytest fixture may both ask).
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9

missing=0
for c in "${cmds[@]}"; do [ -x "$out/$c" ] || missing=1; done
if [ "$missing" = 0 ]; then
  echo "$out"
  exit 0
fi

major=${version#v}; major=${major%%.*}
minor=${version#v*.}; minor=${minor%%.*}
ld="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

tmp="$out.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
cd "$here/k8s"
echo "building Kubernetes $version control plane into $out (first build takes a while)" >&2
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ld" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy
GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
rm -rf "$out"
mv "$tmp" "$out"
echo "$out"
