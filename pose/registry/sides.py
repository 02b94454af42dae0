"""The two sides of ``pose compare`` (a run / registered version and its logged evidence) and the
evaluation data they are compared on (:class:`Basis`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pose.registry.champion import resolve_version
from pose.registry.errors import RegistryError
from pose.registry.evidence import cached_reevaluation, download_artifacts, eval_files
from pose.registry.report import num, short
from pose.registry.rules import metric_value


@dataclass
class Side:
    """One side of the comparison: a run, the registered version it belongs to, its logged evidence."""

    ref: str
    run_id: str
    version: int | None
    aliases: list[str]
    params: dict
    tags: dict
    run_metrics: dict
    metrics: dict = field(default_factory=dict)
    results: Path | None = None
    annotations: Path | None = None
    eval_images: list | None = None
    train_images: list | None = None
    version_tags: dict = field(default_factory=dict)
    model: str | None = None            # registered model name of ``version`` (None for a bare run)

    @property
    def title(self) -> str:
        """``higherhrnet-generated-sweep v3 (champion)``: the model name and :attr:`label`."""
        return f"{self.model} {self.label}" if self.model else self.label

    @property
    def label(self) -> str:
        """``v3 (champion)`` for a registered version, ``run 1a2b3c4d`` for a bare run."""
        if self.version is not None:
            return f"v{self.version}" + (f" ({', '.join(self.aliases)})" if self.aliases else "")
        return f"run {self.run_id[:8]}"

    @property
    def slug(self) -> str:
        """``v3`` or the run id's first 8 characters (file and artifact names)."""
        return f"v{self.version}" if self.version is not None else self.run_id[:8]


def resolve_side(client: MlflowClient, name: str, ref: str, workdir: Path) -> Side:
    """Resolve ``ref`` (module docstring) and download its ``eval/`` and ``data/`` artifacts."""
    ref = str(ref)
    mv = None
    if re.fullmatch(r"[0-9a-f]{32}", ref):
        run_id = ref
        found = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        mv = found[0] if found else None
    else:
        mv = resolve_version(client, name, ref)
        run_id = mv.run_id
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"{ref!r}: no such run / version in {client.tracking_uri}") from exc
    if mv is not None:
        mv = client.get_model_version(mv.name, mv.version)
    side = Side(ref=ref, run_id=run_id, version=int(mv.version) if mv is not None else None,
                aliases=sorted(mv.aliases) if mv is not None else [], params=dict(run.data.params),
                tags=dict(run.data.tags), run_metrics=dict(run.data.metrics),
                version_tags=dict(mv.tags) if mv is not None else {}, model=mv.name if mv is not None else None)
    d = workdir / (side.slug + "-" + run_id[:8])
    metrics, side.results, side.annotations = eval_files(run_id, d)
    side.metrics = metrics or {}
    if not side.metrics:
        side.metrics = {k: v for k, v in side.run_metrics.items() if "/" not in k}
    dd = download_artifacts(run_id, "data", d)
    if dd is not None:
        for attr, fn in (("eval_images", "eval_images.json"), ("train_images", "train_images.json")):
            if (dd / fn).is_file():
                setattr(side, attr, json.loads((dd / fn).read_text()))
    return side


# ----------------------------------------------------------------------------- like-for-like basis

@dataclass
class Basis:
    """The evaluation data A and B are compared on, and each side's numbers / results on it.

    ``kind``:

    * ``same_data``: both were evaluated on the same annotations (same ``eval_data_hash``);
    * ``a_reeval``: A's re-evaluation on B's data, cached on A's run under ``reeval/<hash16>/``
      by the promotion gate (:func:`pose.registry.promotion.cached_reevaluation`);
    * ``b_reeval``: B's re-evaluation on A's data (B was the champion when A was gated);
    * ``common_images``: different data and no re-evaluation: the bootstrap uses the images
      both evaluation sets contain, scored against B's annotations; the A / B metric columns
      are then each model's own numbers, not like-for-like;
    * ``none``: nothing comparable (no shared image, or annotations not logged).
    """

    kind: str
    annotations: Path | None
    side: str | None                    # "A" / "B": whose evaluation data ``annotations`` is
    a_metrics: dict
    b_metrics: dict
    a_results: Path | None
    b_results: Path | None
    img_ids: list[int] | None = None    # common_images: the shared image ids

    @property
    def like_for_like(self) -> bool:
        """Both sides' numbers come from the same evaluation data."""
        return self.kind in ("same_data", "a_reeval", "b_reeval")


def find_basis(a: Side, b: Side, workdir: Path) -> Basis:
    """The best like-for-like basis of A vs B (:class:`Basis`), in the order listed there."""
    ha, hb = a.tags.get("eval_data_hash"), b.tags.get("eval_data_hash")
    if ha is not None and ha == hb:
        return Basis("same_data", b.annotations, "B", a.metrics, b.metrics, a.results, b.results)
    got = cached_reevaluation(a.run_id, hb, workdir / f"{a.slug}-{a.run_id[:8]}-reeval")
    if got is not None and b.annotations is not None:
        return Basis("a_reeval", b.annotations, "B", got[0], b.metrics, got[1], b.results)
    got = cached_reevaluation(b.run_id, ha, workdir / f"{b.slug}-{b.run_id[:8]}-reeval")
    if got is not None and a.annotations is not None:
        return Basis("b_reeval", a.annotations, "A", a.metrics, got[0], a.results, got[1])
    common = sorted({r["id"] for r in a.eval_images or []} & {r["id"] for r in b.eval_images or []})
    if common and b.annotations is not None:
        return Basis("common_images", b.annotations, "B", a.metrics, b.metrics, a.results, b.results, common)
    return Basis("none", None, None, a.metrics, b.metrics, a.results, b.results)


def basis_note(basis: Basis, a: Side, b: Side) -> str:
    """One sentence (inline Markdown) saying what A and B are compared on."""
    h = (b.tags.get("eval_data_hash") if basis.side == "B" else a.tags.get("eval_data_hash")) or "?"
    own = num(metric_value(a.metrics if basis.kind == "a_reeval" else b.metrics, "AP"))
    return {
        "same_data": f"Both models were evaluated on the same data (eval annotations sha256 `{short(h)}`).",
        "a_reeval": f"A and B were evaluated on different data. A's numbers are its re-evaluation on B's evaluation "
                    f"data (eval annotations sha256 `{short(h)}`), cached by the promotion gate under "
                    f"`reeval/{h[:16]}/` of A's run; A's AP on its own evaluation data was {own}.",
        "b_reeval": f"A and B were evaluated on different data. B's numbers are its re-evaluation on A's evaluation "
                    f"data (eval annotations sha256 `{short(h)}`), cached under `reeval/{h[:16]}/` of B's run; "
                    f"B's AP on its own evaluation data was {own}.",
        "common_images": "A and B were evaluated on different data and no re-evaluation is cached (`pose promote` "
                         "caches one): the A / B columns are each model's own numbers, not like-for-like; the paired "
                         f"column uses the {len(basis.img_ids or [])} images common to both evaluation sets, scored "
                         "against B's annotations.",
        "none": "A and B were evaluated on different data with no image in common (or without logged annotations), "
                "and no re-evaluation is cached: nothing below is like-for-like.",
    }[basis.kind]


def report_path(a: Side, b: Side) -> Path:
    """Where the report of A vs B goes, below ``data/compare/`` and ``compare/`` of B's run: by model
    and version, so comparisons of different models never overwrite each other:
    ``<model>/v1_vs_v2`` for two versions of one model, ``<modelA>-v1_vs_<modelB>-v2`` otherwise
    (``run-<id8>`` for a run that is no registered version)."""
    if a.model and a.model == b.model:
        return Path(a.model) / f"{a.slug}_vs_{b.slug}"

    def full(side: Side) -> str:
        return f"{side.model}-{side.slug}" if side.model else f"run-{side.run_id[:8]}"

    return Path(f"{full(a)}_vs_{full(b)}")


__all__ = ["report_path", "Side", "resolve_side", "Basis", "find_basis", "basis_note"]
