#!/usr/bin/env bash
# Builds what the test nodes run besides the kubelet (which tests/cluster/build.sh
# builds with the control plane): CoreDNS from its Go module, and the static
# binaries of the test images (images/: the pause sandbox and the probe tool).
# Cached outside the checkout, keyed by this script and the images' sources.
# Prints the folder that holds coredns, pause and probe.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
coredns=v1.15.0
key=$( (cat "$0"; find "$here/images" -type f -name '*.go' -o -name go.mod | sort | xargs cat) | sha256sum | cut -c1-12)
out=${FT_NODE_BIN:-$(bash "$root/tests/cache-dir.sh")/node/$coredns-$key}
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -x "$out/coredns" ] && [ -x "$out/pause" ] && [ -x "$out/probe" ]; then
  echo "$out"
  exit 0
fi
tmp="$out.partial"
rm -rf "$tmp"
mkdir -p "$tmp"
echo "building CoreDNS $coredns and the test images' binaries into $out" >&2
(cd "$here/images" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/" ./pause ./probe)
GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-trimpath go install -ldflags "-s -w" "github.com/coredns/coredns@$coredns"
rm -rf "$out"
mv "$tmp" "$out"
echo "$out"
