"""One S3 object from memory, in parallel multipart parts (`S3Store.upload_bytes`), each
part hashed once.

Each part is one copy of its slice of the buffer, handed to botocore as `bytes` with its
SHA-256 (`x-amz-checksum-sha256`), which S3 checks on arrival. That one hash is also what
the checkpoint's manifest records (`piece_digests`), so each byte is hashed once. botocore
would otherwise hash every body again to sign it over plain HTTP, or compute a CRC32 over
HTTPS: the client sends bodies unsigned (`S3Store`), checked by this SHA-256 instead.
s3transfer's `upload_fileobj` would read the same part through a file object and copy it
again in small pieces. A checkpoint upload runs beside training, so its CPU is training's
(docs/benchmarks.md, "The checkpoint stall").
"""

from __future__ import annotations

import base64
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# At most THREADS parts are copied and in flight at once: about 128 MiB of host memory.
PART_SIZE = 16 * 1024 * 1024
THREADS = 8

log = logging.getLogger(__name__)


def piece_digests(data: bytes | memoryview, part_size: int = PART_SIZE) -> list[str]:
    """The hex SHA-256 of each `part_size` piece of `data` (one for data that fits one
    piece, or is empty): what `upload_from_memory` sends and a manifest records."""
    view = memoryview(data).cast("B")
    starts = range(0, max(len(view), 1), part_size)
    return [hashlib.sha256(view[s : s + part_size]).hexdigest() for s in starts]


def upload_from_memory(
    client: Any,
    bucket: str,
    key: str,
    data: bytes | memoryview,
    part_size: int = PART_SIZE,
    threads: int = THREADS,
) -> list[str]:
    """Puts `data` at `key`: in one request up to `part_size` bytes, else in parts, `threads`
    at a time, each with its SHA-256 for S3 to check. Returns those digests (hex, as
    `piece_digests`). A failed multipart upload is aborted, so its parts do not linger in
    the bucket."""
    view = memoryview(data).cast("B")
    if len(view) <= part_size:
        body = bytes(view)
        digest = hashlib.sha256(body)
        client.put_object(Bucket=bucket, Key=key, Body=body, ChecksumSHA256=b64(digest))
        return [digest.hexdigest()]
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
    upload_id = upload["UploadId"]

    def send(number: int) -> tuple[dict[str, Any], str]:
        start = (number - 1) * part_size
        body = bytes(view[start : start + part_size])
        digest = hashlib.sha256(body)
        sent = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
            ChecksumSHA256=b64(digest),
        )
        part = {"PartNumber": number, "ETag": sent["ETag"], "ChecksumSHA256": b64(digest)}
        return part, digest.hexdigest()

    count = -(-len(view) // part_size)
    pool = ThreadPoolExecutor(min(threads, count), thread_name_prefix="upload-part")
    try:
        sent = list(pool.map(send, range(1, count + 1)))
        pool.shutdown()
        client.complete_multipart_upload(
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [part for part, _ in sent]},
        )
    except BaseException:
        pool.shutdown(cancel_futures=True)
        abort(client, bucket, key, upload_id)
        raise
    return [digest for _, digest in sent]


def b64(digest: Any) -> str:
    return base64.b64encode(digest.digest()).decode()


def abort(client: Any, bucket: str, key: str, upload: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    except Exception as e:  # the next start aborts what is left (abort_stale_uploads)
        log.warning("could not abort the multipart upload of s3://%s/%s: %s", bucket, key, e)
