#!/usr/bin/env bash
# Builds Helm from its Go module at a pinned version, for the chart tests. Cached outside
# the checkout like the control plane. Prints the path of the helm binary.
set -euo pipefail
exec bash "$(dirname "$0")/../go-install.sh" helm helm "helm.sh/helm/v3/cmd/helm@v3.22.0"
