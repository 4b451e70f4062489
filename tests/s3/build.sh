#!/usr/bin/env bash
# Builds MinIO, the S3-compatible server the tests run on loopback, from its Go
# module at a pinned commit. Cached outside the checkout like the control plane.
set -euo pipefail
exec bash "$(dirname "$0")/../go-install.sh" minio minio \
  "github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c"
