#!/usr/bin/env bash
# go install of one command at a pinned module version into the cache outside the checkout
# (tests/cache-dir.sh), once per machine and version; prints the binary's path.
#   go-install.sh CACHE_NAME BINARY PACKAGE@VERSION [BUILD_TAGS]
# $FT_<CACHE_NAME>_BIN (e.g. FT_HELM_BIN) names another folder for it.
set -euo pipefail
name=$1 binary=$2 package=$3 tags=${4:-}
root=$(cd "$(dirname "$0")/.." && pwd)
version=${package##*@}
override="FT_$(echo "$name" | tr '[:lower:]-' '[:upper:]_')_BIN"
out=${!override:-$(bash "$root/tests/cache-dir.sh")/$name/$version${tags:+-$tags}}
# One build at a time per output (make and a pytest fixture may both ask).
mkdir -p "$(dirname "$out")"
exec 9>"$out.lock"
flock 9
if [ -x "$out/$binary" ]; then
  echo "$out/$binary"
  exit 0
fi
echo "building $package into $out (the first build takes a while)" >&2
rm -rf "$out.partial"
mkdir -p "$out.partial"
GOBIN="$out.partial" CGO_ENABLED=0 GOFLAGS=-trimpath \
  go install -ldflags "-s -w" ${tags:+-tags "$tags"} "$package"
rm -rf "$out"
mv "$out.partial" "$out"
echo "$out/$binary"
