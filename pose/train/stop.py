"""Stopping a training run cleanly: SIGTERM / SIGINT and the death of the process that started it.

A preempted node, ``kill``, Ctrl-C, a cancelled Prefect flow run (its runner sends SIGTERM to the
flow run's process group) all end in SIGTERM or SIGINT. `StopRequest` turns the first one into a
flag; the training loop (`pose.train.loop`) checks it after every optimiser step (and between the
images of a validation), writes ``last.pt`` at that step boundary and raises
:class:`TrainingInterrupted`; ``pose train`` prints one line and exits ``128 + signal`` (130 for
SIGINT, 143 for SIGTERM). A second signal while the first is being handled ends the process at
once with the default action (a checkpoint being written is atomic, `pose.train.checkpoint`).

Parent watch (``watch_parents``, the ``pose train --dvc-stage`` mode): a SIGKILLed ``dvc repro``
(or a flow process that SIGKILLs it: `subprocess.run` kills its child when interrupted) sends
nothing to its children, so the training process would be re-parented and train on, writing
outputs nobody records. A daemon thread polls the "owners" every ``poll_s`` seconds: the parent,
its parent as long as the process in between is a shell (DVC runs a stage's command through
``$SHELL -c``), and the pids listed in env ``POSE_STOP_WITH_PID`` (comma separated; the Prefect
flow puts its own pid there). An owner counts as dead when its pid is gone or now belongs to
another process (its start time in ``/proc/<pid>/stat`` changed) or is a zombie, or when this
process was re-parented; the watch then requests a stop as SIGTERM would (same checkpoint, exit
143). ``PR_SET_PDEATHSIG`` is not used: it fires when the *thread* that forked the child exits,
not the process, and it sees only the direct parent.
Without ``/proc`` (macOS) the watch only compares ``os.getppid()`` with its first value.

Output lost: a runner that captures the output (the flow runs ``dvc repro`` with pipes) and dies
closes the pipe; the next progress line would end the process with ``BrokenPipeError`` and no
checkpoint. `echo` catches that, sends further output to ``/dev/null`` and requests a stop
(SIGPIPE, exit 141), so the step reached is saved as for a signal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

#: env var: extra pids (comma separated) whose death stops a watching training run
STOP_WITH_ENV = "POSE_STOP_WITH_PID"
#: executables treated as a pass-through between a runner and its command (DVC: ``$SHELL -c cmd``)
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "fish", "ksh", "busybox"})
#: signals turned into a checkpoint + clean exit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary on request (a signal, or an owner process died);
    ``checkpoint`` (``last.pt``) holds the exact state to resume from.

    Attributes: ``reason`` (e.g. ``"SIGTERM"``, ``"parent process 123 (dvc) ended"``), ``signum``
    (the exit status is ``128 + signum``), ``step`` (optimiser steps done), ``total_steps``,
    ``checkpoint`` (Path or None on ranks other than 0)."""

    def __init__(self, reason: str, signum: int, step: int, total_steps: int, checkpoint: Path | None):
        self.reason, self.signum, self.step, self.total_steps = reason, int(signum), int(step), int(total_steps)
        self.checkpoint = checkpoint
        where = f"checkpoint {checkpoint} written" if checkpoint is not None else "checkpoint written by rank 0"
        super().__init__(f"training interrupted ({reason}) after step {step}/{total_steps}: {where}; "
                         f"run the same command (or `dvc repro`) again to resume")


def _proc_stat(pid: int) -> tuple[int, int, str] | None:
    """``(ppid, start time in clock ticks, comm)`` of ``pid`` from ``/proc/<pid>/stat``; None when
    gone or a zombie (ended, not yet reaped by its parent)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces / parentheses: split at the last ')'
    head, _, rest = raw.rpartition(")")
    comm = head.partition("(")[2]
    fields = rest.split()
    # fields[0] is field 3 (state): ppid is field 4, starttime field 22
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19]), comm


def _exe_name(pid: int) -> str:
    """The executable's file name (``bash``); for an interpreter (python) running a script, the
    script's (``dvc``, ``pose``), for ``python -m m``, ``m``. Empty when unreadable."""
    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe")).name
    except OSError:
        stat = _proc_stat(pid)
        return stat[2] if stat else ""
    if exe.startswith("python"):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return exe
        args = [a.decode(errors="replace") for a in argv[1:] if a]
        if len(args) >= 2 and args[0] == "-m":
            return args[1]
        if args and not args[0].startswith("-"):
            return Path(args[0]).name
    return exe


def owner_pids(env: dict | None = None) -> list[tuple[int, int | None, str]]:
    """The processes whose death stops a watching run: ``[(pid, start time or None, name), ...]``.

    The parent; while that process is a shell (:data:`SHELLS`), its parent too; then the pids of
    env :data:`STOP_WITH_ENV`. pid 1 (init / a container's entry point) is never an owner.
    Start times come from ``/proc`` (None where it is missing)."""
    env = os.environ if env is None else env
    owners: list[tuple[int, int | None, str]] = []
    pid = os.getppid()
    while pid > 1 and len(owners) < 8:
        stat = _proc_stat(pid)
        name = _exe_name(pid) if stat else ""
        owners.append((pid, stat[1] if stat else None, name))
        if not stat or name not in SHELLS:
            break
        pid = stat[0]
    for item in str(env.get(STOP_WITH_ENV, "")).split(","):
        item = item.strip()
        if item.isdigit() and int(item) > 1 and int(item) not in {p for p, _, _ in owners}:
            stat = _proc_stat(int(item))
            owners.append((int(item), stat[1] if stat else None, _exe_name(int(item)) if stat else ""))
    return owners


def _alive(pid: int, start: int | None) -> bool:
    if start is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    stat = _proc_stat(pid)
    return stat is not None and stat[1] == start


class StopRequest:
    """SIGTERM / SIGINT handlers and the optional parent watch of one training run (module docstring).

    Use as a context manager around the loop; ``requested`` is the flag, ``reason`` / ``signum``
    say why. Handlers are installed only in the main thread (Python allows no other) and the
    previous ones are restored on exit."""

    def __init__(self, *, watch_parents: bool = False, poll_s: float = 0.5):
        self.watch_parents, self.poll_s = bool(watch_parents), float(poll_s)
        self.requested = False
        self.reason = ""
        self.signum = 0
        self.owners: list[tuple[int, int | None, str]] = []
        self._previous: dict[int, object] = {}
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def request(self, reason: str, signum: int) -> None:
        if not self.requested:
            self.reason, self.signum, self.requested = reason, int(signum), True

    def _handler(self, signum, frame) -> None:
        if self.requested:  # second signal: the default action now (SIGINT: KeyboardInterrupt)
            signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
            signal.raise_signal(signum)
            return
        self.request(signal.Signals(signum).name, signum)

    def _watch(self) -> None:
        first_ppid = os.getppid()
        while not self._done.wait(self.poll_s):
            for pid, start, name in self.owners:
                if not _alive(pid, start):
                    self.request(f"parent process {pid} ({name or '?'}) ended", signal.SIGTERM)
                    return
            if os.getppid() != first_ppid:  # re-parented: the parent ended (also where /proc is missing)
                self.request(f"parent process {first_ppid} ended", signal.SIGTERM)
                return

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        if self.watch_parents:
            self.owners = owner_pids() if Path("/proc/self/stat").exists() else []
            self._thread = threading.Thread(target=self._watch, name="pose-parent-watch", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def echo(message: str, stop: StopRequest | None = None) -> None:
    """Print ``message`` to stdout (flushed). When stdout is gone (``BrokenPipeError`` / ``OSError``:
    the reader ended), later output goes to ``/dev/null`` and ``stop`` (if any) is requested with
    SIGPIPE, so the training loop writes its checkpoint and ends instead of crashing."""
    try:
        print(message, flush=True)
    except (BrokenPipeError, OSError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (for the rest of the process)
        if stop is not None:
            stop.request("stdout closed (the process reading it ended)", signal.SIGPIPE)
