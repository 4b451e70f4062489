#!/usr/bin/env bash
# Prints the folder where built test tools (control plane, MinIO, Helm, node parts,
# images) are cached: outside the checkout, so that a fresh clone on the same machine
# reuses them. Each tool keys its sub-folder by its own inputs (pins, scripts).
# FT_CACHE_DIR overrides it.
set -euo pipefail
dir=${FT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/finetune-operator}
mkdir -p "$dir"
echo "$dir"
