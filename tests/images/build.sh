#!/usr/bin/env bash
# Builds one of the project's images from its Dockerfile with buildah (no Docker
# engine, no registry) and writes it as a docker-archive that a test node's
# containerd imports. Usage: tests/images/build.sh operator|trainer
# Prints the archive's path, then the image's name.
#
# The base is a local Debian bookworm with Python in a virtual environment on its
# PATH (what the public python image offers), made once with debootstrap from
# the Debian mirror this machine's apt uses, and passed as BASE_IMAGE. A CA
# bundle for a TLS-intercepting proxy reaches pip as a build secret, never a layer.
# Images are keyed by a hash of their inputs (Dockerfile, pyproject, README, the
# copied trees, the base), the base by its recipe below; a second build with the
# same inputs does nothing, and older builds are removed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
which=${1:?usage: build.sh operator|trainer}
case "$which" in
  operator) dockerfile=operator/Dockerfile; trees=(api operator) ;;
  trainer) dockerfile=trainer_image/Dockerfile; trees=(api trainer_image) ;;
  *) echo "build.sh: unknown image $which (operator or trainer)" >&2; exit 2 ;;
esac
cache=$(bash "$root/tests/cache-dir.sh")/images
mkdir -p "$cache"
exec 9>"$cache/build.lock"
flock 9
buildah() { command buildah --storage-driver overlay "$@"; }

# --- the base ----------------------------------------------------------------------
# Change the recipe (and base_recipe with it) to make a new base.
base_recipe="bookworm minbase python3 python3-venv ca-certificates venv=/usr/local/python"
base=localhost/finetune-python:bookworm-$(echo "$base_recipe" | sha256sum | cut -c1-12)
if ! buildah inspect --type image "$base" >/dev/null 2>&1; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list)
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
  echo "build.sh: debootstrap of bookworm for $base" >&2
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$mirror" >&2
  chroot "$rootfs" python3 -m venv /usr/local/python
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -cf "$rootfs.tar" .
  ctr=$(buildah from scratch)
  buildah add "$ctr" "$rootfs.tar" / >/dev/null
  rm -f "$rootfs.tar"
  buildah config --env PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 "$ctr"
  buildah commit --rm "$ctr" "$base" >&2
fi

# --- the image -----------------------------------------------------------------------
key=$( (echo "$base"; cat "$root/$dockerfile" "$root/pyproject.toml" "$root/README.md";
        find "${trees[@]/#/$root/}" -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | sort | xargs cat) \
      | sha256sum | cut -c1-12)
image=localhost/finetune-$which:$key
archive=$cache/$which-$key.tar
if [ ! -s "$archive" ]; then
  if ! buildah inspect --type image "$image" >/dev/null 2>&1; then
    secret=()
    ca=/etc/ssl/certs/ca-certificates.crt
    [ -f "$ca" ] && secret=(--secret "id=ca-certificates,src=$ca")
    echo "build.sh: building $image from $dockerfile" >&2
    # A chroot-isolated step now and then fails to seal its memfd ("Device or
    # resource busy"); the finished layers are cached, so a second try is cheap.
    for try in 1 2; do
      buildah bud --isolation chroot --network host --layers "${secret[@]}" \
        --build-arg "BASE_IMAGE=$base" -f "$root/$dockerfile" -t "$image" "$root" >&2 && break
      [ "$try" = 2 ] && exit 1
      echo "build.sh: retrying the build of $image" >&2
    done
  fi
  rm -f "$cache/$which"-*.tar
  buildah push "$image" "docker-archive:$archive.partial:$image" >&2
  mv "$archive.partial" "$archive"
  # Earlier builds of this image, and bases of earlier versions of this script.
  for old in $(buildah images --format '{{.Name}}:{{.Tag}}' | grep -E "^localhost/finetune-($which|python):" \
               | grep -v -e "^$image\$" -e "^$base\$"); do
    buildah rmi "$old" >/dev/null 2>&1 || true
  done
  buildah rmi --prune >/dev/null 2>&1 || true
fi
echo "$archive"
echo "$image"
