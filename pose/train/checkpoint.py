"""Atomic, resumable checkpoints.

A checkpoint is a plain dict of tensors and Python scalars so it loads with
``torch.load(weights_only=True)`` (no pickled code runs on load). It is written to
a temp file ``.<name>.<random>.tmp`` in the same folder, fsynced, then renamed over
the target and the folder fsynced: a kill (or power loss) at any moment leaves
either the previous complete file or the new complete file under ``<name>``. A
kill mid-write leaves a stale temp file; it is never read (its name differs) and
`remove_stale_temps` deletes it when the next training run starts.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is racy)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms / filesystems cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_prefix(path: Path) -> str:
    """Name prefix of `save_checkpoint`'s temp files for ``path``."""
    return f".{Path(path).name}."


def save_checkpoint(state: dict, path: Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace + folder fsync).

    The file gets the usual permissions (0666 minus the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temps(folder: Path, names: tuple[str, ...] = ("last.pt", "best.pt")) -> list[Path]:
    """Delete temp files a killed `save_checkpoint` left for ``names`` in ``folder``.

    Call it only while no other process saves into ``folder`` (rank 0, before
    training). Returns the deleted paths.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for name in names:
        for stale in folder.glob(f"{temp_prefix(folder / name)}*.tmp"):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by `save_checkpoint` with ``weights_only=True``.

    Raises FileNotFoundError when absent and RuntimeError naming the file when it
    cannot be read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"{path}: cannot load checkpoint ({exc})") from exc


#: Keys added to params ``model`` after checkpoints were first written, with the value every
#: older checkpoint was built with (the published HigherHRNet block counts; the project's
#: coordinate convention, the only one before ``model.convention`` existed; the HRNet backbone,
#: the only one before ``model.backbone`` existed).
_LEGACY_ARCHITECTURE = {"stem_blocks": 4, "deconv_blocks": 4, "convention": "project", "backbone": "hrnet"}


def upgrade_model_params(model_params: dict) -> dict:
    """A checkpoint's recorded ``model`` params in today's schema (a new dict).

    Keys that older checkpoints lack get the value those checkpoints were built with
    (:data:`_LEGACY_ARCHITECTURE`); the removed ``num_deconv`` (always 1: the one deconvolution
    of `pose.codec.OUTPUT_STRIDES`) is dropped. Raises ValueError for a ``num_deconv`` other than 1.
    """
    mp = dict(model_params)
    for key, value in _LEGACY_ARCHITECTURE.items():
        mp.setdefault(key, value)
    num_deconv = mp.pop("num_deconv", 1)
    if int(num_deconv) != 1:
        raise ValueError(f"checkpoint model params have num_deconv = {num_deconv}: only 1 (outputs at strides 4, 2) "
                         f"is supported")
    return mp


def trained_model_params(ck: dict) -> dict:
    """The ``model`` params a training checkpoint was built with, ready for `build_model`.

    Reads ``ck["model_params"]`` (JSON) through :func:`upgrade_model_params` (older checkpoints:
    ``stem_blocks``, ``deconv_blocks`` 4, ``convention`` ``project``, ``backbone`` ``hrnet``;
    ``num_deconv`` dropped). Weight paths are cleared: the weights come from the checkpoint
    itself, so a run started from ``model.pretrained`` or ``model.pretrained_backbone`` loads
    where those files do not exist. Raises KeyError when ``model_params`` is absent.
    """
    import json

    if "model_params" not in ck:
        raise KeyError("checkpoint has no 'model_params' (not written by pose train)")
    mp = upgrade_model_params(json.loads(ck["model_params"]))
    return dict(mp, pretrained="", pretrained_backbone="")


def load_trained_model(path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model recorded in a training checkpoint and load its weights (eval mode).

    The checkpoint stores the ``model`` params section (``model_params``), so a
    checkpoint is self-describing (see `trained_model_params`: the pretrained paths it
    was trained from are not read). Raises as `load_checkpoint`; KeyError without
    ``model_params``; RuntimeError naming the file when the weights do not fit.
    """
    from pose.models import build_model

    ck = load_checkpoint(path, map_location=device)
    model = build_model(trained_model_params(ck))
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise RuntimeError(f"{path}: weights do not match the recorded model params ({exc})") from exc
    return model.to(device).eval()
