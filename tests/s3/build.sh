#!/usr/bin/env bash
# Builds MinIO, the S3-compatible server the tests run on loopback, from its Go
# module at a pinned commit. Cached outside the checkout like the control plane.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
version=v0.0.0-20260212201848-7aac2a2c5b7c
out=${FT_S3_BIN:-$(bash "$root/tests/cache-dir.sh")/minio/$version}
# One build at a time per output (make and a pytest fixture may both ask).
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -x "$out/minio" ]; then
  echo "$out/minio"
  exit 0
fi
echo "building MinIO $version into $out (first build takes a while)" >&2
mkdir -p "$out.partial"
GOBIN="$out.partial" CGO_ENABLED=0 GOFLAGS=-trimpath go install -ldflags "-s -w" "github.com/minio/minio@$version"
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out/minio"
