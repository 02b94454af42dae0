"""The crash report of the ``pose`` command line (``pose.cli.main``): an exception no command
handles becomes one line naming the command, the exception and the innermost `pose` frame, and a log
file holding the full traceback (:func:`crash_report`) in the first writable of ``$POSE_LOG_DIR``,
``./data/logs`` and ``<tempdir>/pose-logs`` (:func:`crash_log_dir`).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

#: where the crash handler writes full tracebacks: env POSE_LOG_DIR, else data/logs under the
#: working directory (the repo root for DVC stages), else the system temp folder when that is not writable
LOG_DIR_ENV = "POSE_LOG_DIR"


def crash_log_dir() -> Path:
    """The first writable of ``$POSE_LOG_DIR``, ``./data/logs`` and ``<tempdir>/pose-logs``."""
    import tempfile

    candidates = [Path(os.environ[LOG_DIR_ENV])] if os.environ.get(LOG_DIR_ENV) else []
    candidates += [Path("data") / "logs", Path(tempfile.gettempdir()) / "pose-logs"]
    for folder in candidates:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    return Path(tempfile.gettempdir())


def crash_report(exc: BaseException, argv: list[str], *, one_line: Callable[[object], str]) -> str:
    """Write the full traceback of an exception no handler expected to a log file and return the
    one line the user sees: the command, the exception (type, message as ``one_line`` writes it,
    innermost `pose` frame) and the log path, e.g. ``pose train failed unexpectedly: KeyError: 'x'
    (pose/train/loop.py:120 in train); full traceback: data/logs/pose-train-20260601T030000Z-4242.log``.

    ``one_line`` is the command line's own formatter (colour codes dropped, lines joined with "; "),
    so the crash line reads like every other error line."""
    import datetime
    import traceback

    command = next((a for a in argv if not a.startswith("-")), "")
    marker = f"{os.sep}pose{os.sep}"
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if marker in f.filename] or frames
    where = ""
    if ours:
        f = ours[-1]
        shown = "pose/" + f.filename.rsplit(marker, 1)[1] if marker in f.filename else Path(f.filename).name
        where = f" ({shown}:{f.lineno} in {f.name})"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"pose-{re.sub(r'[^A-Za-z0-9_-]', '_', command) or 'main'}-{stamp}-{os.getpid()}.log"
    text = (f"pose {' '.join(argv)}\ncwd: {os.getcwd()}\nat: {stamp}\n\n"
            + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    message = f"{type(exc).__name__}: {one_line(exc) or '(no message)'}{where}"
    try:
        log = crash_log_dir() / name
        log.write_text(text)
        saved = f"full traceback: {log}"
    except OSError as write_error:  # the disk refuses: the traceback goes to stderr after the line
        saved = f"full traceback below (could not write a log file: {write_error})"
        print(text, file=sys.stderr)
    return f"{' '.join(['pose', command]).strip()} failed unexpectedly: {message}; {saved}"


__all__ = ["crash_log_dir", "crash_report", "LOG_DIR_ENV"]
