#!/usr/bin/env bash
# Builds Prometheus from its Go module (v0.316.0 is Prometheus 3.16) with Kubernetes
# service discovery, which Debian's package leaves out; every other discovery is left
# out here. Cached outside the checkout like the control plane. Prints its path.
set -euo pipefail
exec bash "$(dirname "$0")/../go-install.sh" prometheus prometheus \
  "github.com/prometheus/prometheus/cmd/prometheus@v0.316.0" remove_all_sd,enable_kubernetes_sd
