"""Getting one file from wherever it lives: ``https://`` / ``http://``, ``s3://``, ``file://``
or a plain path, through one interface, `download`.

* HTTP(S) (RFC 9110 range requests, Sec. 14): the body is streamed into
  ``<dest>.part``; after a dropped connection the next attempt asks for
  ``Range: bytes=<bytes already there>-`` and appends, so only the missing bytes are
  fetched again (a server that answers 200 instead of 206 restarts the file).
  Attempts are retried ``retries`` times with exponential backoff
  (``backoff * 2**attempt`` seconds).
* S3 (boto3): credentials come only from boto3's standard chain (environment,
  shared config / credentials files, instance / container roles); the endpoint from
  the ``endpoint_url`` argument, else the ``AWS_ENDPOINT_URL`` environment variable,
  else AWS.
* ``file://`` URLs and plain paths are copied.

Whatever the scheme, the file lands in ``<dest>.part`` first; its size and SHA-256
are checked when given, and it is renamed to ``dest`` only when they match. A
checksum mismatch deletes the part file and raises `ChecksumError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed for good (after the retries); the message names the URL."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected SHA-256 (or size)."""


def sha256_file(path: Path, chunk: int = _CHUNK) -> str:
    """Hex SHA-256 (64 lowercase chars) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc, disable=not enabled, leave=False, dynamic_ncols=True)


def _finish(url: str, part: Path, dest: Path, sha256: str | None, size: int | None) -> Path:
    """Check size / checksum of ``part`` and rename it to ``dest``."""
    actual_size = part.stat().st_size
    if size is not None and actual_size != size:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{url}: expected {size} bytes, got {actual_size}; part file removed")
    if sha256:
        actual = sha256_file(part)
        if actual.lower() != sha256.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: SHA-256 mismatch, expected {sha256.lower()}, got {actual}; "
                                f"part file removed")
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
        except (OSError, _TransientError) as exc:  # requests' errors are OSErrors
            last = exc
            if attempt < retries:
                wait = backoff * (2 ** attempt)
                log.warning("download of %s failed (attempt %d/%d): %s; retrying in %.2fs",
                            url, attempt + 1, retries + 1, exc, wait)
                time.sleep(wait)
        except Exception as exc:  # boto / botocore errors
            if not _is_transient(exc):
                raise DownloadError(f"{url}: {exc}") from exc
            last = exc
            if attempt < retries:
                time.sleep(backoff * (2 ** attempt))
    raise DownloadError(f"{url}: giving up after {retries + 1} attempts: {last}") from last


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
    import requests

    have = part.stat().st_size if part.exists() else 0
    if size is not None and have == size:
        return  # a previous attempt already has every byte
    if size is not None and have > size:
        part.unlink()
        have = 0
    headers = {"Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True) as r:
        if r.status_code == 416 and have:
            # Range not satisfiable: the part file is already complete (or longer than the file)
            total = _content_range_total(r.headers.get("Content-Range", ""))
            if total is not None and total == have:
                return
            part.unlink()
            raise _TransientError(f"HTTP 416 with {have} bytes on disk; restarting from zero")
        if r.status_code in (408, 425, 429) or r.status_code >= 500:
            raise _TransientError(f"HTTP {r.status_code}")
        if r.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
        if r.status_code == 206:
            start = _content_range_start(r.headers.get("Content-Range", ""))
            if start != have:
                raise _TransientError(f"server resumed at byte {start}, expected {have}")
            mode = "ab"
            total = _content_range_total(r.headers.get("Content-Range", ""))
        else:  # 200: whole body (server ignored or we sent no Range)
            have = 0
            mode = "wb"
            cl = r.headers.get("Content-Length")
            total = int(cl) if cl is not None and cl.isdigit() else None
        if total is None:
            total = size
        got = have
        with open(part, mode) as f, _progress(total, have, Path(urlparse(url).path).name or url, progress) as bar:
            for block in r.iter_content(chunk_size=64 * 1024):
                if block:
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
        if total is not None and got < total:
            raise _TransientError(f"connection ended after {got} of {total} bytes")


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

    Raises ValueError on a non-s3 URL; botocore errors (no credentials, no bucket)
    propagate.
    """
    bucket, prefix = parse_s3_url(prefix_url)
    client = s3_client(endpoint_url)
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.extend(f"s3://{bucket}/{obj['Key']}" for obj in page.get("Contents", []))
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
    s3_client(endpoint_url).upload_file(str(path), bucket, key,
                                        ExtraArgs={"Metadata": {"sha256": sha256_file(path)}})
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
             retries: int = 3, backoff: float = 1.0, progress: bool = True,
             endpoint_url: str | None = None, timeout: float = 60.0) -> Path:
    """Fetch one file to ``dest`` (via ``dest.part``), verifying it.

    Args:
        url: ``https://``/``http://`` URL, ``s3://bucket/key``, ``file://`` URL or plain path.
        dest: final file path; its parent is created.
        sha256: expected hex SHA-256 of the bytes (case-insensitive), or None to skip.
        size: expected size in bytes, or None to skip.
        retries: extra attempts after a failed one (HTTP / S3 transient errors).
        backoff: seconds before the first retry; doubled each retry.
        progress: show a tqdm bar (bytes, rate, ETA).
        endpoint_url: S3 endpoint (default: env ``AWS_ENDPOINT_URL``, else AWS).
        timeout: HTTP connect / read timeout in seconds.

    Returns:
        ``dest``.

    Raises:
        ChecksumError: size or SHA-256 differ (the part file is deleted; message names
            the URL, expected and actual values).
        DownloadError: HTTP 4xx, or still failing after ``retries`` retries.
        FileNotFoundError: a local source that does not exist.
        ValueError: unsupported URL scheme.
    """
    dest = Path(dest)
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
    return _finish(url, part, dest, sha256, size)


__all__ = ["download", "list_s3", "upload_s3", "sha256_file", "parse_s3_url", "s3_client", "local_path",
           "DownloadError", "ChecksumError"]
