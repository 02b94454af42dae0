"""Errors of the registry operations (promote, rollback, compare, register)."""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry operation cannot be done (unknown version, no previous champion, ...)."""


class RegistryConflict(RegistryError):
    """The champion alias changed under us (a writer that does not take the lock)."""


class RuleError(RegistryError, ValueError):
    """``registry.rules`` or ``registry.model_name`` in params is malformed (the message names the key)."""


__all__ = ["RegistryError", "RegistryConflict", "RuleError"]
