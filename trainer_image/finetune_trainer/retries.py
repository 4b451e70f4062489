"""Storage failures by class, and the time budget within which transient ones are retried.

The clients retry each request a few times themselves (botocore's standard mode,
FT_S3_ATTEMPTS attempts; huggingface_hub's backoff on reads): enough for a dropped
connection, not for an outage. `Retry.call` retries a whole operation (a listing, a
multipart upload, a download, a ranged read) with exponential backoff and jitter
until its budget (`spec.s3.retrySeconds`, `spec.hub.retrySeconds`) has passed since
the operation first failed; then the attempt ends with a retryable error and the
operator starts another after its own backoff. Failures no retry fixes (access
denied, no such bucket, no credentials, a malformed bucket name) end at once with a
PermanentError naming the URI and what to check. Anything else (a missing key, say)
is the caller's to judge.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import PermanentError, StorageUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT = "transient"
PERMANENT = "permanent"

# Error codes S3 (and botocore's own retry policy) call throttling or transient.
BUSY_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "XMinioServerNotInitialized",
    }
)
DENIED_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "InvalidAccessKeyId",
        "InvalidToken",
        "ExpiredToken",
        "SignatureDoesNotMatch",
    }
)
FIRST_DELAY = 1.0
MAX_DELAY = 30.0


def causes(error: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps (boto3 and s3transfer re-raise inside handlers)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "last_exception", None)
        current = current.__cause__ or current.__context__ or wrapped


def classify_s3(error: BaseException, bucket_level: bool = False) -> tuple[str, str] | None:
    """(TRANSIENT or PERMANENT, the detail to report), or None when neither is certain.
    `bucket_level`: a 404 means the bucket, not a key, is missing."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        ParamValidationError,
    )

    for e in causes(error):
        if isinstance(e, ConnectionError | HTTPClientError):
            return TRANSIENT, str(e)
        if isinstance(e, NoCredentialsError):
            return PERMANENT, "no credentials"
        if isinstance(e, ParamValidationError) and "Invalid bucket name" in str(e):
            return PERMANENT, "invalid bucket name"
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in BUSY_CODES or status >= 500 or status == 429:
                return TRANSIENT, f"{code or status} from the server"
            if code in DENIED_CODES:
                return PERMANENT, f"denied ({code})"
            if code == "NoSuchBucket" or (bucket_level and code in ("404", "NotFound")):
                return PERMANENT, "no such bucket"
            if code == "InvalidBucketName" or (bucket_level and code == "400"):
                return PERMANENT, "invalid bucket name"
            return None
    return None


def permanent_message(detail: str, uri: str, bucket: str) -> str:
    if detail == "no credentials":
        return (
            f"no S3 credentials to read {uri}: set spec.s3.credentialsSecret or give the "
            "pod an identity"
        )
    if detail == "no such bucket":
        return f"S3 bucket {bucket!r} does not exist ({uri}); create it or correct the URI"
    if detail == "invalid bucket name":
        return (
            f"{uri}: S3 refused bucket {bucket!r} as a bad request; check the name (3-63 "
            "lower-case letters, digits, dots and hyphens) and spec.s3.region"
        )
    return (
        f"S3 {detail} on {uri}: check the keys in spec.s3.credentialsSecret and the bucket's policy"
    )


def classify_hub(error: BaseException) -> tuple[str, str] | None:
    """Transient Hub failures: the connection (refused, reset, timed out), 5xx, 429.
    Missing, gated or private repositories are mapped to PermanentError before this."""
    from huggingface_hub.errors import HfHubHTTPError

    for e in causes(error):
        if _transport_error(e):
            return TRANSIENT, f"{type(e).__name__}: {e}"
        if isinstance(e, HfHubHTTPError) and e.response is not None:
            status = e.response.status_code
            if status >= 500 or status == 429:
                return TRANSIENT, f"{status} from the server"
    return None


def _transport_error(e: BaseException) -> bool:
    """A connection that failed or timed out, in whichever HTTP client huggingface_hub
    uses (httpx and its successor both name the base class TransportError)."""
    names = {k.__name__ for k in type(e).__mro__}
    if "OfflineModeIsEnabled" in names:  # HF_HUB_OFFLINE: no wait makes it go away
        return False
    return "TransportError" in names or isinstance(e, (ConnectionError, TimeoutError))


Classifier = Callable[[BaseException], "tuple[str, str] | None"]


@dataclass
class Retry:
    """Retries one store's operations within a time budget (seconds, from the first
    failure). `clock` and `pause` are replaceable for tests of the schedule alone."""

    budget: float
    endpoint: str
    service: str = "S3"
    setting: str = "spec.s3.retrySeconds"
    classify: Classifier = classify_s3
    clock: Callable[[], float] = time.monotonic
    pause: Callable[[float], None] = time.sleep
    jitter: Callable[[float, float], float] = field(default=random.uniform)

    def call(
        self,
        what: str,
        uri: str,
        fn: Callable[[], T],
        bucket: str = "",
        classify: Classifier | None = None,
    ) -> T:
        started: float | None = None
        delay = FIRST_DELAY
        tries = 0
        while True:
            try:
                return fn()
            except Exception as e:
                found = (classify or self.classify)(e)
                if found is None:
                    raise
                kind, detail = found
                if kind == PERMANENT:
                    raise PermanentError(permanent_message(detail, uri, bucket)) from None
                tries += 1
                now = self.clock()
                started = now if started is None else started
                left = self.budget - (now - started)
                if left <= 0:
                    message = self.gave_up(what, uri, detail, now - started, tries)
                    raise StorageUnavailable(message) from None
                wait = min(self.jitter(delay / 2, delay), left)
                log.warning(
                    "%s %s %s failed (%s); retry %d in %.1fs (gives up %.0fs from now)",
                    self.service, what, uri, detail, tries, wait, left,
                )  # fmt: skip
                self.pause(wait)
                delay = min(delay * 2, MAX_DELAY)

    def gave_up(self, what: str, uri: str, detail: str, elapsed: float, tries: int) -> str:
        return (
            f"{self.service} unavailable: cannot {what} {uri} ({detail}); still failing after "
            f"{elapsed:.0f}s and {tries} tries ({self.setting}: {self.budget:g}); "
            f"check that {self.endpoint} is up and reachable"
        )
