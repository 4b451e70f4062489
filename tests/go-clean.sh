#!/usr/bin/env bash
# Removes the Go caches of the test tools' builds (GOCACHE and GOMODCACHE, which the
# Makefile points into the cache folder) once every tool is built: the binaries are
# cached by their inputs, while the Go caches hold gigabytes (the Kubernetes build
# alone about 10 GB) that only a change of a tool's pin would use again.
set -euo pipefail
go_cache=$(bash "$(dirname "$0")/cache-dir.sh")/go
[ -d "$go_cache" ] || exit 0
size=$(du -sh "$go_cache" | cut -f1)
# The module cache is read-only by design: `go clean` removes it as Go means it to be.
GOMODCACHE="$go_cache/mod" go clean -modcache
rm -rf "$go_cache"
echo "go-clean.sh: removed the test tools' Go caches ($size)" >&2
