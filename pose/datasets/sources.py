"""Getting one file from wherever it lives: ``https://`` / ``http://``, ``s3://``, ``file://``
or a plain path, through one interface, `download`.

* HTTP(S) (RFC 9110 range requests, Sec. 14): the body is streamed into
  ``<dest>.part``; after a dropped connection the next attempt asks for
  ``Range: bytes=<bytes already there>-`` and appends, so only the missing bytes are
  fetched again (a server that answers 200 instead of 206 restarts the file).
  (urllib / http.client.) Attempts are retried ``retries`` times with exponential backoff
  (``backoff * 2**attempt`` seconds).
* S3 (boto3): credentials come only from boto3's standard chain (environment,
  shared config / credentials files, instance / container roles); the endpoint from
  the ``endpoint_url`` argument, else the ``AWS_ENDPOINT_URL`` environment variable,
  else AWS.
* ``file://`` URLs and plain paths are copied.

Whatever the scheme, the file lands in ``<dest>.part`` first; its size and checksums
(SHA-256, and / or the MD5 / SHA-1 some datasets publish instead) are checked when
given, and it is renamed to ``dest`` only when they match. A checksum mismatch deletes
the part file and raises `ChecksumError`; nothing is ever left at ``dest`` unless it
verified. A download that failed for good otherwise (`DownloadError`) keeps its
``.part`` file so that the next call resumes it.

Errors, one class each (all `DownloadError`, message naming the URL):
`ChecksumError` (size / digest differ), `CredentialsError` (S3 without usable
credentials: what to set), `NetworkError` (5xx, dropped, refused or truncated transfers,
S3 throttling, after the retries: the one kind a later retry may cure, `is_network_error`),
`DownloadError` (HTTP 4xx, missing S3 keys: at once).

Throughput: the HTTP body is read with ``readinto`` into one reused buffer of
`HTTP_CHUNK` bytes (no per-block allocation); `benchmarks/download.py` compares it with
curl on a loopback server.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

from pose.io import sha256_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: bytes per ``readinto`` of an HTTP body (tuned with benchmarks/download.py on loopback, 200 MB:
#: 64 KiB reads reached 0.88 of curl's throughput, 256 KiB 1.14, 1 MiB 1.35, 4 MiB 1.28)
HTTP_CHUNK = 1 << 20
#: checksum algorithms a source may pin, with their hex digest lengths
DIGESTS = {"sha256": 64, "sha1": 40, "md5": 32}


class DownloadError(RuntimeError):
    """A download failed for good (after the retries); the message names the URL."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected checksum (SHA-256 / SHA-1 / MD5) or size."""


class CredentialsError(DownloadError):
    """An S3 source could not be read for lack of (valid) credentials; the message says what to set."""


#: exit status of a `pose` command whose only failure was the network (EX_TEMPFAIL of sysexits.h:
#: try again later); the retrain flow retries the fetch stage on this status only
NETWORK_EXIT_CODE = 75


class NetworkError(DownloadError):
    """The network failed (connection refused / dropped / timed out, HTTP 5xx, S3 throttling or
    5xx) on every attempt: the only failure a later retry can cure (`is_network_error`)."""


def is_network_error(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from, or every source failure a
    ``FetchError`` lists) is a `NetworkError`: worth retrying later. Data errors (bad JSON,
    undecodable images, checksum mismatches, HTTP 4xx, missing files) are not."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NetworkError) or getattr(exc, "transient", False):
            return True
        exc = exc.__cause__
    return False


def file_digests(path: Path, algorithms: tuple[str, ...], chunk: int = _CHUNK) -> dict[str, str]:
    """Hex digests of a file's bytes, ``{algorithm: hex}``, all computed in one read: the
    checksums a download pins (SHA-256 / SHA-1 / MD5). A file's SHA-256 alone:
    `pose.io.sha256_file`."""
    hs = {a: hashlib.new(a) for a in algorithms}
    buf = bytearray(chunk)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            for h in hs.values():
                h.update(mv[:n])
    return {a: h.hexdigest() for a, h in hs.items()}


def _expected_digests(url: str, sha256: str | None, md5: str | None, sha1: str | None) -> dict[str, str]:
    out = {}
    for algo, value in (("sha256", sha256), ("sha1", sha1), ("md5", md5)):
        if value:
            value = str(value).strip().lower()
            if len(value) != DIGESTS[algo] or any(c not in "0123456789abcdef" for c in value):
                raise ValueError(f"{url}: {algo} must be {DIGESTS[algo]} hex characters, got {value!r}")
            out[algo] = value
    return out


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _finish(url: str, part: Path, dest: Path, digests: dict[str, str], size: int | None) -> Path:
    """Check size / checksums of ``part`` and rename it to ``dest``."""
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: expected {size} bytes, got {actual_size} (truncated or wrong file); "
                            f"part file removed, nothing written to {dest}")
    if digests:
        actual = file_digests(part, tuple(digests))
        for algo, want in digests.items():
            if actual[algo] != want:
                part.unlink(missing_ok=True)
                raise ChecksumError(f"{url}: {algo.upper().replace('SHA', 'SHA-')} mismatch, expected {want}, "
                                    f"got {actual[algo]}; part file removed, nothing written to {dest}")
    os.replace(part, dest)
    return dest


def _retrying(url: str, retries: int, backoff: float, attempt_fn: Callable[[], None]) -> None:
    last: BaseException | None = None
    for attempt in range(retries + 1):
        try:
            attempt_fn()
            return
        except DownloadError:  # checksum mismatch, HTTP 4xx: retrying cannot help
            raise
        except (OSError, _TransientError, http.client.HTTPException) as exc:  # URLError is an OSError
            last = exc
            if attempt < retries:
                wait = backoff * (2 ** attempt)
                log.warning("download of %s failed (attempt %d/%d): %s; retrying in %.2fs",
                            url, attempt + 1, retries + 1, exc, wait)
                time.sleep(wait)
        except Exception as exc:  # boto / botocore errors
            if not _is_transient(exc):
                raise s3_error(url, exc) from exc
            last = exc
            if attempt < retries:
                time.sleep(backoff * (2 ** attempt))
    raise NetworkError(f"{url}: giving up after {retries + 1} attempt(s): {last}") from last


class _TransientError(Exception):
    pass


def _is_transient(exc: BaseException) -> bool:
    name = type(exc).__name__
    if name in {"EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError",
                "ConnectTimeoutError", "IncompleteReadError", "ResponseStreamingError"}:
        return True
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        code = str(resp.get("Error", {}).get("Code", ""))
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        return code in {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable"} or status >= 500
    return False


# ----------------------------------------------------------------------------- http(s)

def _http_attempt(url: str, part: Path, size: int | None, progress: bool, timeout: float) -> None:
    # urllib (http.client) rather than requests: on a dropped connection http.client hands
    # over every byte received before the drop, so the resume offset is exact.
    import urllib.error
    import urllib.request

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return  # a previous attempt already has every byte
    if size is not None and have > size:
        part.unlink()
        have = 0
    req = urllib.request.Request(url, headers={"Accept-Encoding": "identity", "User-Agent": "pose-fetch/1"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            # Range not satisfiable: the part file is already complete (or longer than the file)
            total = _content_range_total(exc.headers.get("Content-Range", ""))
            if total is not None and total == have:
                return
            part.unlink()
            raise _TransientError(f"HTTP 416 with {have} bytes on disk; restarting from zero") from exc
        if exc.code in (408, 425, 429) or exc.code >= 500:
            kind = "server error" if exc.code >= 500 else "try again later"
            raise _TransientError(f"HTTP {exc.code} {exc.reason} ({kind})") from exc
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    with resp:
        status = resp.status
        if status == 206:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != have:
                raise _TransientError(f"server resumed at byte {start}, expected {have}")
            mode = "ab"
            total = _content_range_total(resp.headers.get("Content-Range", ""))
        else:  # 200: the whole body (the server ignored the Range, or none was sent)
            have = 0
            mode = "wb"
            cl = resp.headers.get("Content-Length")
            total = int(cl) if cl is not None and cl.isdigit() else None
        if total is None:
            total = size
        got = have
        buf = bytearray(HTTP_CHUNK)
        mv = memoryview(buf)
        with open(part, mode, buffering=0) as f, \
                _progress(total, have, Path(urlparse(url).path).name or url, progress) as bar:
            try:
                while True:
                    n = resp.readinto(buf)
                    if not n:
                        break
                    f.write(mv[:n])
                    got += n
                    if progress:
                        bar.update(n)
            except http.client.IncompleteRead as exc:  # fewer body bytes than Content-Length
                f.write(exc.partial)
                got += len(exc.partial)
                raise _TransientError(f"transfer truncated: connection ended after {got} of {total} bytes") \
                    from exc
        if total is not None and got < total:
            raise _TransientError(f"transfer truncated: connection ended after {got} of {total} bytes")


def _content_range_start(value: str) -> int | None:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str) -> int | None:
    try:
        total = value.rsplit("/", 1)[1]
        return None if total == "*" else int(total)
    except (IndexError, ValueError):
        return None


# ----------------------------------------------------------------------------- s3

def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/key/parts`` -> ``("bucket", "key/parts")``. Raises ValueError otherwise."""
    p = urlparse(url)
    if p.scheme != "s3" or not p.netloc:
        raise ValueError(f"not an s3://bucket/key URL: {url!r}")
    return p.netloc, p.path.lstrip("/")


_CREDENTIAL_HELP = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
                    "credentials), or AWS_PROFILE naming a profile in ~/.aws/credentials, or run where an "
                    "instance / container role applies; for a non-AWS server also set AWS_ENDPOINT_URL")


def s3_error(url: str, exc: BaseException) -> DownloadError:
    """A clear `DownloadError` (`CredentialsError` for credential problems) for a botocore error on ``url``."""
    name = type(exc).__name__
    if name in {"NoCredentialsError", "PartialCredentialsError", "NoAuthTokenError", "CredentialRetrievalError",
                "ProfileNotFound", "UnauthorizedSSOTokenError", "SSOTokenLoadError"}:
        return CredentialsError(f"{url}: no usable AWS credentials ({exc}); {_CREDENTIAL_HELP}")
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict):
        code = str(resp.get("Error", {}).get("Code", ""))
        status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                    "AccessDenied", "AllAccessDisabled"} or status == 403:
            return CredentialsError(f"{url}: S3 refused the credentials ({code or status}: {exc}); check them: "
                                    f"{_CREDENTIAL_HELP}")
        if code in {"NoSuchBucket", "NoSuchKey", "404", "NotFound"} or status == 404:
            return DownloadError(f"{url}: not found on S3 ({code or status})")
    if _is_transient(exc):
        return NetworkError(f"{url}: {name}: {exc}")
    return DownloadError(f"{url}: {name}: {exc}")


def s3_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client; endpoint from the argument, else ``AWS_ENDPOINT_URL``, else AWS.
    Credentials: boto3's standard chain only."""
    import boto3

    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint)


def _s3_attempt(url: str, part: Path, progress: bool, endpoint_url: str | None) -> None:
    bucket, key = parse_s3_url(url)
    client = s3_client(endpoint_url)
    total = int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    with _progress(total, 0, key.rsplit("/", 1)[-1], progress) as bar:
        client.download_file(bucket, key, str(part), Callback=bar.update)


def list_s3(prefix_url: str, *, endpoint_url: str | None = None) -> list[str]:
    """All object URLs (``s3://bucket/key``, sorted) under ``s3://bucket/prefix``.

    Raises ValueError on a non-s3 URL; `CredentialsError` without usable credentials,
    `DownloadError` for a missing bucket or other S3 errors.
    """
    bucket, prefix = parse_s3_url(prefix_url)
    client = s3_client(endpoint_url)
    out: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
    except (ImportError, DownloadError):
        raise
    except Exception as exc:
        raise s3_error(prefix_url, exc) from exc
    return sorted(out)


def upload_s3(path: Path, url: str, *, endpoint_url: str | None = None) -> str:
    """Upload the local file ``path`` to ``s3://bucket/key``; returns ``url``.

    The SHA-256 of the file is stored as object metadata ``sha256``. Raises
    FileNotFoundError when ``path`` is not a file, ValueError on a non-s3 URL.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upload source is not a file: {path}")
    bucket, key = parse_s3_url(url)
    try:
        s3_client(endpoint_url).upload_file(str(path), bucket, key,
                                            ExtraArgs={"Metadata": {"sha256": sha256_file(path)}})
    except Exception as exc:
        err = s3_error(url, exc)
        if type(err) is DownloadError and "boto3.exceptions" in type(exc).__module__:
            err = s3_error(url, exc.__context__ or exc)  # S3UploadFailedError wraps the ClientError
        raise err from exc
    return url


# ----------------------------------------------------------------------------- local

def local_path(url: str) -> Path | None:
    """The filesystem path of a ``file://`` URL or plain path; None for other schemes."""
    p = urlparse(url)
    if p.scheme == "file":
        return Path(unquote(p.path))
    if p.scheme == "" or (len(p.scheme) == 1 and os.name == "nt"):
        return Path(url)
    return None


def download(url: str, dest: Path, *, sha256: str | None = None, size: int | None = None,
             md5: str | None = None, sha1: str | None = None,
             retries: int = 3, backoff: float = 1.0, progress: bool = True,
             endpoint_url: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch one file to ``dest`` (via ``dest.part``), verifying it.

    Args:
        url: ``https://``/``http://`` URL, ``s3://bucket/key``, ``file://`` URL or plain path.
        dest: final file path; its parent is created.
        sha256: expected hex SHA-256 of the bytes (case-insensitive), or None to skip.
        size: expected size in bytes, or None to skip.
        md5, sha1: expected hex MD5 / SHA-1 (for sources that publish only those, e.g.
            COCO), or None. Every given checksum must match; all are computed in one read.
        retries: extra attempts after a failed one (HTTP / S3 transient errors).
        backoff: seconds before the first retry; doubled each retry.
        progress: show a tqdm bar (bytes, rate, ETA).
        endpoint_url: S3 endpoint (default: env ``AWS_ENDPOINT_URL``, else AWS).
        timeout: HTTP connect / read timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        ChecksumError: size or a checksum differ (the part file is deleted; message names
            the URL, expected and actual values).
        CredentialsError: S3 without usable credentials (message says what to set).
        DownloadError: HTTP 4xx / S3 not found at once, or still failing after
            ``retries`` retries (HTTP 5xx, dropped or truncated transfers); the part file
            is kept for a later resume, ``dest`` is untouched.
        FileNotFoundError: a local source that does not exist.
        ValueError: unsupported URL scheme or a malformed checksum.
    """
    dest = Path(dest)
    digests = _expected_digests(url, sha256, md5, sha1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part(dest)
    scheme = urlparse(url).scheme.lower()
    src = local_path(url)
    if src is not None:
        if not src.is_file():
            raise FileNotFoundError(f"source file not found: {url}")
        shutil.copyfile(src, part)
    elif scheme in ("http", "https"):
        _retrying(url, retries, backoff, lambda: _http_attempt(url, part, size, progress, timeout))
    elif scheme == "s3":
        part.unlink(missing_ok=True)
        _retrying(url, retries, backoff, lambda: _s3_attempt(url, part, progress, endpoint_url))
    else:
        raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r} (https, http, s3, file, path)")
    return _finish(url, part, dest, digests, size)


__all__ = ["download", "list_s3", "upload_s3", "file_digests", "parse_s3_url", "s3_client",
           "s3_error", "local_path", "DownloadError", "ChecksumError", "CredentialsError", "HTTP_CHUNK", "DIGESTS"]
