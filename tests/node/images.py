"""Container images without a registry: a docker-archive tarball written here and
imported into a node's containerd with `ctr images import`.

Used for the two tiny test images whose only file is a static binary (the pause
sandbox and the probe tool, built by build.sh); the project's own images come
from their Dockerfiles.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path


def _layer(files: dict[str, Path]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, src in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = src.stat().st_size
            info.mode = 0o755
            with src.open("rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def docker_archive(dest: Path, tag: str, files: dict[str, Path], entrypoint: list[str]) -> Path:
    """Write a one-layer image holding `files` (path in the image -> file here)."""
    layer = _layer(files)
    diff_id = hashlib.sha256(layer).hexdigest()
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Env": ["PATH=/"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(image_config).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
    ).encode()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, "w") as tar:
        for name, data in (
            (f"{diff_id}/layer.tar", layer),
            (config_name, image_config),
            ("manifest.json", manifest),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest
