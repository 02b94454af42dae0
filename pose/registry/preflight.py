"""Checks that a registry write can succeed, run before anything is written, and the one-line
errors of a write that failed anyway.

``pose register`` / ``pose promote`` / ``pose rollback`` call :func:`check_folder_writable` for
the local record (``data/registry/``) and :func:`check_registry_writable` for the tracking
store before the first write, so a read-only folder or database ends the command with one
line and the registry exactly as it was. A write that fails later (the store goes away in the
middle) is turned into one line by :func:`store_error`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import tempfile
from pathlib import Path

from pose.registry.errors import RegistryError

#: MLflow loggers that print a whole traceback (at ERROR) for a failed database write before raising
_NOISY_LOGGERS = ("mlflow.store.db.utils",)


def check_folder_writable(folder: Path | str, what: str) -> None:
    """Create ``folder`` when missing and write + delete a probe file in it.

    Raises RegistryError naming ``what`` and the folder when that is impossible (read-only,
    immutable (``chattr +i``), missing permission, not a folder). Root ignores permission bits
    but not the immutable flag, so this probe is exact for every user."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise RegistryError(f"cannot write the {what} in {folder}/: {exc.strerror or exc}; nothing was registered "
                            f"or changed: make the folder writable and rerun") from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///<path>`` tracking URI, None for other stores."""
    return Path(uri[len("sqlite:///"):]) if str(uri).startswith("sqlite:///") else None


def check_registry_writable(uri: str, timeout_s: float = 30.0) -> None:
    """For a SQLite registry (``sqlite:///<path>``): run a write that changes nothing
    (``UPDATE alembic_version SET version_num = version_num``, rolled back), which needs the
    database file and its folder (the journal) to be writable. A database that does not exist
    yet needs its folder writable. Other stores (a tracking server) are not probed; their
    failures surface through :func:`store_error`.

    Raises RegistryError (one line naming the database) when the write is refused."""
    db = sqlite_path(uri)
    if db is None:
        return
    if not db.exists():
        check_folder_writable(db.parent if str(db.parent) else Path("."), f"registry database {db.name}")
        return
    try:
        conn = sqlite3.connect(str(db), timeout=timeout_s)
    except sqlite3.Error as exc:
        raise RegistryError(f"registry {uri} cannot be opened: {exc}") from None
    try:
        has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'").fetchone()
        if has_table:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE alembic_version SET version_num = version_num")
    except sqlite3.Error as exc:
        raise RegistryError(f"registry {uri} is not writable ({exc}): nothing was registered or changed; "
                            f"make {db} and its folder writable and rerun") from None
    finally:
        with contextlib.suppress(sqlite3.Error):
            conn.rollback()
        conn.close()


def root_cause(exc: BaseException) -> str:
    """The first line of the innermost cause of ``exc`` (e.g. ``attempt to write a readonly database``
    instead of MLflow's and SQLAlchemy's wrappers)."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:
        nxt = seen.__cause__ or seen.__context__
        if nxt is seen:
            break
        seen = nxt
    for candidate in (seen, exc):
        lines = [ln.strip() for ln in str(candidate).splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("(raised as a result of")]
        if lines:
            return f"{type(candidate).__name__}: {lines[0]}"[:300]
    return type(exc).__name__


def store_error(exc: BaseException, doing: str, state: str) -> RegistryError:
    """A RegistryError ``<doing> failed: <root cause>; <state>`` (one line): ``state`` says what the
    registry holds now and how to finish (e.g. "rerun `pose register` to complete v3")."""
    return RegistryError(f"{doing} failed: {root_cause(exc)}; {state}")


@contextlib.contextmanager
def quiet_store_logs():
    """Silence MLflow's multi-line ERROR logs of failed database writes (:data:`_NOISY_LOGGERS`)
    while the caller turns the exception into one line (:func:`store_error`)."""
    loggers = [logging.getLogger(n) for n in _NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


__all__ = ["check_folder_writable", "check_registry_writable", "sqlite_path", "root_cause", "store_error",
           "quiet_store_logs"]
