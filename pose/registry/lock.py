"""The registry lock: every read-decide-write sequence on the champion (promote, rollback)
holds an exclusive ``fcntl.flock``.

The lock file is ``<db>.lock`` beside a SQLite registry, ``<dir>/.promotion.lock`` for a
file store, and ``~/.cache/pose-registry/<uri hash>.lock`` for a tracking *server*
(``http(s)://``), where it only serializes promotions started on the same host (see
:mod:`pose.registry.promotion` for running several hosts).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import time
from pathlib import Path


def lock_path_for(tracking_uri: str) -> Path:
    """The lock file that serializes promotions for ``tracking_uri`` (module docstring)."""
    uri = str(tracking_uri)
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):] + ".lock")
    if uri.startswith("file:"):
        return Path(uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):]) / ".promotion.lock"
    if "://" not in uri:
        return Path(uri) / ".promotion.lock"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "pose-registry" / f"{digest}.lock"


@contextlib.contextmanager
def registry_lock(tracking_uri: str, timeout: float):
    """Hold an exclusive ``flock`` on :func:`lock_path_for` (waits up to ``timeout`` s, params
    ``registry.lock_timeout_s``).

    Yields ``{"path", "wait_s"}``. Raises TimeoutError when the lock is not obtained."""
    path = lock_path_for(tracking_uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    t0 = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"registry lock {path} not obtained within {timeout} s") from None
                time.sleep(0.05)
        wait = time.monotonic() - t0
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}@{socket.gethostname()} since {time.time():.3f}\n".encode())
        try:
            yield {"path": str(path), "wait_s": wait}
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["lock_path_for", "registry_lock"]
