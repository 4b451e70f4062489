#!/usr/bin/env bash
# Builds Helm from its Go module at a pinned version, for the chart tests. Cached outside
# the checkout like the control plane. Prints the path of the helm binary.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
version=v3.22.0
out=${FT_HELM_BIN:-$(bash "$root/tests/cache-dir.sh")/helm/$version}
# One build at a time per output (make and a pytest fixture may both ask).
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -x "$out/helm" ]; then
  echo "$out/helm"
  exit 0
fi
echo "building Helm $version into $out" >&2
mkdir -p "$out.partial"
GOBIN="$out.partial" CGO_ENABLED=0 GOFLAGS=-trimpath go install -ldflags "-s -w" "helm.sh/helm/v3/cmd/helm@$version"
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out/helm"
