"""Cooperative deadlines: a unit of work (one served request) stops at the next checkpoint once
its deadline has passed or it was cancelled (the client went away).

Python cannot interrupt a thread that runs the network, so the inference code calls
:func:`checkpoint` where stopping is cheap and leaves nothing half-done: before each test
scale's network pass, and between the network and the decoding
(`pose.decode.inference.multi_scale_maps` / `predict_image`, `pose.decode.onnx_backend`), and
the server between the images of a request (`pose.serving.model.PoseService`). Work stops
at most one such step after the deadline; the largest step is bounded by the request limits
(params ``serve.max_input_size``).

The deadline of the running work is a :class:`contextvars.ContextVar`, so it follows a request
from the server's event loop into the thread that runs the model (``asyncio.to_thread`` copies
the context) without any signature change of the inference functions. Outside a request (``pose
predict``, ``pose evaluate``) no deadline is set and :func:`checkpoint` costs one lookup.

Interface (kept by `pose.decode.inference`, `pose.decode.onnx_backend`, `pose.predict`)::

    from pose.decode.deadline import checkpoint
    checkpoint("scale 2.0")       # raises DeadlineExceeded when the current work must stop

    with deadline_scope(Deadline.after(60.0, "serve.request_timeout_s = 60")):
        predictor(image)          # every checkpoint inside sees this deadline
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


class DeadlineExceeded(TimeoutError):
    """The current work passed its deadline (``cancelled`` False) or was cancelled
    (``cancelled`` True, e.g. the client disconnected). The message is one line naming the
    limit, the elapsed time and where the work stopped."""

    def __init__(self, message: str, *, cancelled: bool = False) -> None:
        super().__init__(message)
        self.cancelled = cancelled


@dataclass
class Deadline:
    """When a unit of work must stop.

    Attributes:
        start: ``time.monotonic()`` when the work began (s).
        at: ``time.monotonic()`` after which it must stop (s).
        limit: what set the deadline, for messages (e.g. ``"serve.request_timeout_s = 60"``).
        reason: why it was cancelled (:meth:`cancel`), None while it is not.
    """

    start: float
    at: float
    limit: str
    reason: str | None = field(default=None)

    @classmethod
    def after(cls, seconds: float, limit: str) -> Deadline:
        """A deadline ``seconds`` (> 0) from now."""
        now = time.monotonic()
        return cls(start=now, at=now + float(seconds), limit=limit)

    def cancel(self, reason: str) -> None:
        """Stop the work at its next checkpoint (thread-safe: one attribute store)."""
        self.reason = reason

    def remaining(self) -> float:
        """Seconds left until the deadline (<= 0 once passed; 0 once cancelled)."""
        return 0.0 if self.reason is not None else self.at - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def check(self, where: str) -> None:
        """Raise :class:`DeadlineExceeded` (one line: the limit, elapsed seconds, ``where``)
        when the deadline has passed or the work was cancelled."""
        if self.reason is not None:
            raise DeadlineExceeded(f"stopped after {self.elapsed():.1f} s at {where}: {self.reason}", cancelled=True)
        if time.monotonic() >= self.at:
            raise DeadlineExceeded(f"stopped after {self.elapsed():.1f} s at {where}: the request took longer than "
                                   f"{self.limit} s")


_CURRENT: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar("pose_deadline", default=None)


def current() -> Deadline | None:
    """The deadline of the work running in this context (None outside a request)."""
    return _CURRENT.get()


@contextlib.contextmanager
def deadline_scope(deadline: Deadline | None) -> Iterator[Deadline | None]:
    """Make ``deadline`` the current one inside the ``with`` block (None: no deadline)."""
    token = _CURRENT.set(deadline)
    try:
        yield deadline
    finally:
        _CURRENT.reset(token)


def checkpoint(where: str) -> None:
    """A point where the current work may stop: raises :class:`DeadlineExceeded` when the
    current deadline (:func:`current`) has passed or was cancelled; nothing without one."""
    d = _CURRENT.get()
    if d is not None:
        d.check(where)


__all__ = ["Deadline", "DeadlineExceeded", "checkpoint", "current", "deadline_scope"]
