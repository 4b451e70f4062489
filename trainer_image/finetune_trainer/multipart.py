"""One S3 object from memory, in parallel multipart parts (`S3Store.upload_bytes`).

Each part is one copy of its slice of the buffer, handed to botocore as `bytes`: botocore
hashes and checksums it in one call each, and the connection writes it in one piece.
s3transfer's `upload_fileobj` reads the same part through a file object and copies it
again in small pieces for the signature, the checksum and the socket: about 15% more CPU
(bench/upload_cpu.py). A checkpoint upload runs beside training, so its CPU is training's
(docs/benchmarks.md, "The checkpoint stall").
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# At most THREADS parts are copied and in flight at once: about 64 MiB of host memory.
PART_SIZE = 8 * 1024 * 1024
THREADS = 8

log = logging.getLogger(__name__)


def checksum_args(client: Any) -> dict[str, str]:
    """S3 checks each part against a CRC32 that botocore computes, as s3transfer asks,
    unless the client computes checksums only where S3 requires them (S3Store's over plain
    HTTP, where each request's signed SHA-256 already checks the bytes)."""
    if client.meta.config.request_checksum_calculation == "when_supported":
        return {"ChecksumAlgorithm": "CRC32"}
    return {}


def upload_from_memory(
    client: Any,
    bucket: str,
    key: str,
    data: bytes | memoryview,
    part_size: int = PART_SIZE,
    threads: int = THREADS,
) -> None:
    """Puts `data` at `key`: in one request up to `part_size` bytes, else in parts, `threads`
    at a time. A failed multipart upload is aborted, so its parts do not linger in the
    bucket."""
    view = memoryview(data).cast("B")
    checksum = checksum_args(client)
    if len(view) <= part_size:
        client.put_object(Bucket=bucket, Key=key, Body=bytes(view), **checksum)
        return
    upload = client.create_multipart_upload(Bucket=bucket, Key=key, **checksum)["UploadId"]

    def send(number: int) -> dict[str, Any]:
        start = (number - 1) * part_size
        sent = client.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            PartNumber=number,
            Body=bytes(view[start : start + part_size]),
            **checksum,
        )
        done = {"PartNumber": number, "ETag": sent["ETag"]}
        return done | {k: v for k, v in sent.items() if k == "ChecksumCRC32"}

    count = -(-len(view) // part_size)
    pool = ThreadPoolExecutor(min(threads, count), thread_name_prefix="upload-part")
    try:
        parts = list(pool.map(send, range(1, count + 1)))
        pool.shutdown()
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    except BaseException:
        pool.shutdown(cancel_futures=True)
        abort(client, bucket, key, upload)
        raise


def abort(client: Any, bucket: str, key: str, upload: str) -> None:
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    except Exception as e:  # the next start aborts what is left (abort_stale_uploads)
        log.warning("could not abort the multipart upload of s3://%s/%s: %s", bucket, key, e)
