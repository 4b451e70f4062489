"""Object storage behind every URI the trainer reads or writes.

`s3://BUCKET/KEY` goes through boto3 (multipart uploads with concurrency: s3transfer's
for files, multipart.py's for bytes in memory; every object written carries the SHA-256
of each part, which S3 verifies on arrival; botocore's standard retries per request
and retries.py's outage budget per operation; endpoint/region/path-style for
S3-compatible stores; credentials only from the environment). `file:///PATH`
and `pvc://CLAIM/PATH` (mounted at FT_PVC_ROOT/CLAIM) are plain directories.
`https://HOST/FILE` (one file) and `hf://OWNER/NAME` (a Hub dataset) are read
with Range requests and refuse writes. All implement `Store`, so checkpoints
and data do not care which one they have; settings come from `TrainerEnv`.
"""

from __future__ import annotations

import fnmatch
import io
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, NoReturn, Protocol, TypeVar, cast
from urllib.parse import quote

from finetune_api.env import TrainerEnv
from finetune_api.types import HubSpec, S3Spec

from .errors import PermanentError, RetryableError
from .multipart import PART_SIZE, THREADS, piece_digests, upload_from_memory
from .retries import Retry, classify_hub, classify_s3


def pvc_root() -> Path:
    """Where the pod mounts the claims of pvc:// URIs."""
    root: Path = TrainerEnv.read("pvc_root")
    return root


GLOB_CHARS = "*?["
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class Store(Protocol):
    """What the trainer needs from a storage location (keys are relative paths)."""

    uri: str

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]: ...
    def read_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def upload_bytes(self, key: str, data: bytes | memoryview) -> list[str]:
        """Writes `data` at `key`; returns the hex SHA-256 of each `PART_SIZE` piece."""
        ...

    def upload_file(self, path: Path, key: str) -> None: ...
    def download_file(self, key: str, path: Path) -> None: ...
    def delete(self, keys: list[str]) -> None: ...
    def check(self) -> None: ...


def object_uri(store: Store, key: str) -> str:
    """The URI a user would write for one object of a store (what messages name)."""
    if key.startswith(("https://", "http://")):
        return key
    return store.uri + key if store.uri.endswith("/") else f"{store.uri}/{key}"


def split_glob(path: str) -> tuple[str, str | None]:
    """("data/", "data/*.csv") for a glob, (path, None) for a plain key or prefix."""
    if not any(ch in path for ch in GLOB_CHARS):
        return path, None
    first = min(path.index(ch) for ch in GLOB_CHARS if ch in path)
    prefix = path[: path.rfind("/", 0, first) + 1]
    return prefix, path


class LocalStore:
    """A directory: file:///PATH, or a PersistentVolumeClaim mounted under pvc_root()."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri = uri
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        if base.is_file():
            return [ObjectInfo(prefix, base.stat().st_size)]
        if not base.is_dir():
            return []
        out = []
        for path in sorted(base.rglob("*")):
            if path.is_file():
                out.append(ObjectInfo(str(path.relative_to(self.root)), path.stat().st_size))
        return out

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        f = self._path(key).open("rb")
        f.seek(start)
        if end is None:
            return f
        data = f.read(end - start)
        f.close()

        return io.BytesIO(data)

    def get_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def put_bytes(self, key: str, data: bytes) -> None:
        self.upload_bytes(key, data)

    def upload_bytes(self, key: str, data: bytes | memoryview) -> list[str]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(path)
        return piece_digests(data)

    def upload_file(self, path: Path, key: str) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".partial")
        shutil.copyfile(path, tmp)
        tmp.replace(dest)

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._path(key), path)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            # Folders vanish with their last file, as prefixes do in S3.
            for parent in path.parents:
                if parent == self.root or not parent.is_relative_to(self.root):
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)


class S3Store:
    """A bucket and key prefix in S3 or an S3-compatible store."""

    def __init__(self, uri: str, bucket: str, prefix: str, s3: S3Spec | None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.uri = uri
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        settings = s3 or S3Spec()
        # Every body carries its own SHA-256 (multipart.py; `ChecksumAlgorithm` for
        # files), which S3 checks on arrival. botocore would otherwise hash each body a
        # second time: to sign it over plain HTTP, or for a CRC32 over HTTPS. That second
        # hash cost about 0.18 CPU-s per 273 MB checkpoint, time a checkpoint upload takes
        # from training (docs/benchmarks.md, "The checkpoint stall").
        config = Config(
            request_checksum_calculation="when_required",
            retries={
                "mode": "standard",
                "max_attempts": TrainerEnv.read("s3_attempts"),
            },
            connect_timeout=TrainerEnv.read("s3_connect_timeout"),
            read_timeout=60,
            s3={
                "addressing_style": "path" if settings.force_path_style else "auto",
                "payload_signing_enabled": False,
            },
            max_pool_connections=32,
        )
        # Credentials come from the environment (the Secret) or the pod identity,
        # never from the spec.
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint,
            region_name=settings.region or TrainerEnv.read("aws_region") or "us-east-1",
            config=config,
        )
        where = f"the store at {settings.endpoint}" if settings.endpoint else "AWS S3"
        self.retry = Retry(float(settings.retry_seconds), where)
        self.transfer = TransferConfig(
            multipart_threshold=PART_SIZE,
            multipart_chunksize=PART_SIZE,
            max_concurrency=THREADS,
            use_threads=True,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix and key else (key or self.prefix)

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _uri(self, key: str) -> str:
        full = self._key(key)
        return f"s3://{self.bucket}/{full}" if full else f"s3://{self.bucket}"

    def _call(self, what: str, key: str, fn: Callable[[], T], bucket_level: bool = False) -> T:
        def classify(e: BaseException) -> tuple[str, str] | None:
            return classify_s3(e, bucket_level)

        return self.retry.call(what, self._uri(key), fn, self.bucket, classify)

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        return self._call("list", prefix, lambda: self._list(prefix))

    def _list(self, prefix: str) -> list[ObjectInfo]:
        full = self._key(prefix)
        out = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                # A prefix matches whole path segments only: "a/b" lists "a/b" and
                # "a/b/...", not "a/bc".
                if full and key != full and not key.startswith(full.rstrip("/") + "/"):
                    continue
                out.append(ObjectInfo(self._rel(key), int(obj["Size"])))
        return out

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        rng = f"bytes={start}-" if end is None else f"bytes={start}-{end - 1}"
        if end is not None and end <= start:
            return io.BytesIO(b"")

        def fetch() -> BinaryIO:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=rng)
            body: BinaryIO = resp["Body"]
            # A bounded range is read whole here, so an outage mid-body is retried too;
            # an open-ended one streams.
            return body if end is None else io.BytesIO(body.read())

        return self._call("read", key, fetch)

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(resp["Body"].read())

        return self._call("read", key, get)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call(
            "write",
            key,
            lambda: upload_from_memory(self.client, self.bucket, self._key(key), data),
        )

    def upload_bytes(self, key: str, data: bytes | memoryview) -> list[str]:
        """A large object from memory, in parallel parts as `upload_file` sends a file,
        each part copied and hashed once from `data` (multipart.py)."""
        return self._call(
            "upload",
            key,
            lambda: upload_from_memory(self.client, self.bucket, self._key(key), data),
        )

    def upload_file(self, path: Path, key: str) -> None:
        self._call(
            "upload",
            key,
            lambda: self.client.upload_file(
                str(path),
                self.bucket,
                self._key(key),
                ExtraArgs={"ChecksumAlgorithm": "SHA256"},
                Config=self.transfer,
            ),
        )

    def download_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._call(
            "download",
            key,
            lambda: self.client.download_file(
                self.bucket, self._key(key), str(path), Config=self.transfer
            ),
        )

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
            self._call(
                "delete under",
                "",
                lambda batch=batch: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                ),
            )

    def abort_stale_uploads(self, older_than: timedelta = timedelta(0)) -> int:
        """Abort multipart uploads under this prefix left behind by a dead uploader."""
        return self._call("clean up uploads under", "", lambda: self._abort_stale(older_than))

    def _abort_stale(self, older_than: timedelta) -> int:
        cutoff = datetime.now(UTC) - older_than
        aborted = 0
        paginator = self.client.get_paginator("list_multipart_uploads")
        # Listed for the whole bucket and filtered here: some S3-compatible stores
        # (MinIO) match a Prefix only against whole object names.
        mine = f"{self.prefix}/" if self.prefix else ""
        for page in paginator.paginate(Bucket=self.bucket):
            for up in page.get("Uploads", []):
                if up["Key"].startswith(mine) and up["Initiated"] <= cutoff:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    aborted += 1
        return aborted

    def check(self) -> None:
        """Fail with a clear, permanent error when the bucket cannot be used at all,
        after waiting out an outage within the retry budget."""
        self._call(
            "reach",
            "",
            lambda: self.client.head_bucket(Bucket=self.bucket),
            bucket_level=True,
        )


class ReadOnlyStore:
    """Writes to a store that can only be read fail with one clear line."""

    uri: str

    def _read_only(self, *_: object) -> NoReturn:
        raise PermanentError(f"{self.uri} is read-only: write to s3://, file:// or pvc://")

    put_bytes = upload_bytes = upload_file = download_file = delete = _read_only


class HttpStore(ReadOnlyStore):
    """One file served over https:// (or http://), read with Range requests."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def _open(self, key: str, method: str = "GET", start: int = 0, end: int | None = None) -> Any:
        import urllib.request

        if not key.startswith(("https://", "http://")):
            raise PermanentError(f"not an http(s) URL: {key!r}")
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        # Only http(s) URLs reach here (checked above).
        request = urllib.request.Request(key, method=method, headers=headers)  # noqa: S310
        try:
            return urllib.request.urlopen(request, timeout=60)  # noqa: S310
        except OSError as e:
            raise RetryableError(f"cannot read {key}: {e}") from None

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        with self._open(self.uri, "HEAD") as resp:
            return [ObjectInfo(self.uri, int(resp.headers.get("Content-Length") or 0))]

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        if end is not None and end <= start:
            return io.BytesIO(b"")
        resp = self._open(key, start=start, end=end)
        if start and resp.status != 206:
            # The server ignored the range: skip to it.
            remaining = start
            while remaining > 0:
                chunk = resp.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                remaining -= len(chunk)
        if end is None:
            return cast(BinaryIO, resp)
        data = resp.read(end - start)
        resp.close()
        return io.BytesIO(data)

    def get_bytes(self, key: str) -> bytes:
        with self._open(key) as resp:
            return bytes(resp.read())

    def check(self) -> None:
        self.list_objects()


def open_store(uri: str, s3: S3Spec | None = None) -> Store:
    """The store rooted at a URI (a glob's fixed prefix for data URIs)."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        return S3Store(uri, bucket, key, s3)
    if uri.startswith("file://"):
        return LocalStore(uri, Path(uri[len("file://") :]))
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://") :].partition("/")
        return LocalStore(uri, pvc_root() / claim / path)
    raise PermanentError(f"unsupported storage URI {uri!r}")


class HubStore(ReadOnlyStore):
    """A dataset repository on the Hugging Face Hub, hf://OWNER/NAME (read-only).

    Listed with the Hub's tree API and read with bounded Range requests on the
    files' resolve URLs, so nothing is downloaded whole. HF_ENDPOINT points it
    at a mirror; HF_TOKEN (from a Secret) authorises gated or private datasets
    and is sent to the Hub only, never to the storage a download redirects to.
    """

    def __init__(self, repo_id: str, revision: str | None, hub: HubSpec | None = None) -> None:
        self.uri = f"hf://{repo_id}"
        self.repo_id = repo_id
        self.revision = revision or "main"
        self.endpoint = (TrainerEnv.read("hf_endpoint") or "").rstrip("/") or None
        budget = float((hub or HubSpec()).retry_seconds)
        where = f"the Hub at {self.endpoint}" if self.endpoint else "the Hugging Face Hub"
        self.retry = Retry(budget, where, "Hub", "spec.hub.retrySeconds", classify_hub)

    def _call(self, what: str, fn: Any) -> Any:
        """`fn` retried within spec.hub.retrySeconds while the Hub is unreachable or
        failing (connections, 5xx, 429); what no retry fixes is permanent at once."""
        return self.retry.call(what, self.uri, lambda: self._mapped(what, fn))

    def _mapped(self, what: str, fn: Any) -> Any:
        from huggingface_hub.errors import (
            GatedRepoError,
            OfflineModeIsEnabled,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return fn()
        except OfflineModeIsEnabled:
            raise PermanentError(
                f"spec.dataset.uri: {self.uri} is on the Hugging Face Hub but HF_HUB_OFFLINE "
                "is set; copy the dataset to s3:// or unset HF_HUB_OFFLINE"
            ) from None
        except GatedRepoError:
            raise PermanentError(
                f"spec.dataset.uri: {self.uri} is gated: accept its terms on the Hub and "
                "set spec.hub.tokenSecret to a Secret with your token"
            ) from None
        except RepositoryNotFoundError:
            raise PermanentError(
                f"spec.dataset.uri: no dataset {self.repo_id} on the Hub (a private one needs "
                "spec.hub.tokenSecret)"
            ) from None
        except RevisionNotFoundError:
            raise PermanentError(
                f"spec.dataset.revision: {self.repo_id} has no revision {self.revision!r}"
            ) from None
        except Exception as e:
            if classify_hub(e) is not None:
                raise  # transient: retried by _call within the budget
            raise RetryableError(f"cannot {what} {self.uri} on the Hub: {e}") from None

    def list_objects(self, prefix: str = "") -> list[ObjectInfo]:
        from huggingface_hub import constants
        from huggingface_hub.errors import EntryNotFoundError

        under = prefix.strip("/")
        root = self.endpoint or constants.ENDPOINT
        url: str | None = (
            f"{root}/api/datasets/{self.repo_id}/tree/{quote(self.revision, safe='')}"
            + (f"/{quote(under, safe='')}" if under else "")
        )

        def page(address: str, params: dict[str, Any] | None) -> Any:
            try:
                return self._get(address, params=params)
            except EntryNotFoundError:
                return None

        found: list[ObjectInfo] = []
        params: dict[str, Any] | None = {"recursive": True, "expand": False}
        while url is not None:  # the Hub pages the tree, with a Link header to the next page
            response = self._call("list", partial(page, url, params))
            if response is None:
                return []
            found += [ObjectInfo(e["path"], e["size"]) for e in response.json()
                      if e["type"] == "file"]  # fmt: skip
            url, params = response.links.get("next", {}).get("url"), None
        return found

    def read_range(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        from huggingface_hub import hf_hub_url

        if end is not None and end <= start:
            return io.BytesIO(b"")
        url = hf_hub_url(
            self.repo_id, key, repo_type="dataset", revision=self.revision, endpoint=self.endpoint
        )
        headers = {"Range": f"bytes={start}-{'' if end is None else end - 1}"}

        def fetch() -> bytes:
            response = self._get(url, headers=headers)
            data = response.content
            # A server that ignores Range sends the whole file.
            return bytes(data[start:end] if response.status_code == 200 else data)

        return io.BytesIO(self._call("read", fetch))

    @staticmethod
    def _get(url: str, headers: dict[str, str] | None = None, **kwargs: Any) -> Any:
        """One GET with the Hub's headers (HF_TOKEN, which the client sends to the Hub
        only), raised as the Hub's errors. The Hub client's own retries are off: a
        failure goes back to `_call` at once, so spec.hub.retrySeconds bounds them all."""
        from huggingface_hub import hf_raise_for_status
        from huggingface_hub.utils import (  # type: ignore[attr-defined]  # public, lazily exported
            build_hf_headers,
            http_backoff,
        )

        response = http_backoff(
            "GET", url, headers={**build_hf_headers(), **(headers or {})}, max_retries=0, **kwargs
        )
        hf_raise_for_status(response)
        return response

    def get_bytes(self, key: str) -> bytes:
        return self.read_range(key).read()

    def check(self) -> None:
        self.list_objects()


def resolve_files(uri: str, s3: S3Spec | None) -> tuple[Store, list[ObjectInfo]]:
    """The files a data URI names: one object, every object under a prefix, or a glob."""
    store: Store
    if uri.startswith("s3://"):
        bucket, _, path = uri[len("s3://") :].partition("/")
        store = S3Store(f"s3://{bucket}", bucket, "", s3)
    elif uri.startswith("file://"):
        path = uri[len("file://") :].lstrip("/")
        store = LocalStore("file:///", Path("/"))
    elif uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://") :].partition("/")
        store = LocalStore(f"pvc://{claim}", pvc_root() / claim)
    elif uri.startswith(("https://", "http://")):
        web = HttpStore(uri)
        return web, [o for o in web.list_objects() if o.size > 0]
    else:
        raise PermanentError(f"unsupported data URI {uri!r}")
    prefix, pattern = split_glob(path)
    listed = store.list_objects(path if pattern is None else prefix)
    if pattern is not None:
        listed = [o for o in listed if fnmatch.fnmatchcase(o.key, pattern)]
    return store, [o for o in listed if o.size > 0 and not _hidden(o.key)]


def _hidden(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return name.startswith((".", "_")) or name.endswith(".partial")
