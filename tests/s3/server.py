"""A real S3-compatible server (MinIO, built from source by build.sh) on loopback."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def minio_binary() -> Path:
    from controlplane import built

    return Path(built(HERE / "build.sh")[-1])


@dataclass
class S3Server:
    workdir: Path
    port: int
    access_key: str = "finetune-test"
    secret_key: str = field(default_factory=lambda: os.urandom(12).hex())
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pod_endpoint(self) -> str:
        """Where pods of the test nodes reach it: the host's address on their bridge."""
        from controlplane import POD_GATEWAY

        return f"http://{POD_GATEWAY}:{self.port}"

    def env(self) -> dict[str, str]:
        """What a training pod gets from its credentials Secret."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def start(self) -> S3Server:
        from controlplane import wait_for

        env = dict(
            os.environ,
            MINIO_ROOT_USER=self.access_key,
            MINIO_ROOT_PASSWORD=self.secret_key,
            MINIO_BROWSER="off",
            MINIO_UPDATE="off",
        )
        log = (self.workdir / "minio.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(minio_binary()),
                "server",
                str(self.workdir / "data"),
                # All addresses: tests on this host use loopback, pods of the test
                # nodes the bridge gateway (pod_endpoint). Every request needs the keys.
                "--address",
                f":{self.port}",
                "--quiet",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def live() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError((self.workdir / "minio.log").read_text()[-2000:])
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/live", timeout=2) as r:
                return bool(r.status == 200)

        wait_for(live, 60, "MinIO to answer")
        return self

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None
