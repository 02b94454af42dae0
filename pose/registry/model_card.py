"""The model card of a registered version (``model_card.md`` artifact of its run): the run, data
and model, training, evaluation, the promotion decision with its rule table, intended use.

Params sections read (handed in by `pose.registry.mlflow_registry`, `pose.params`): ``model``,
``train`` and ``evaluate``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pose.codec import OUTPUT_STRIDES
from pose.registry.report import delta, num
from pose.registry.rules import RuleResult

if TYPE_CHECKING:
    from pose.params import EvaluateSection, ModelSection, TrainSection


def _version_txt(v) -> str:
    """``v3`` or ``none``."""
    return f"v{v}" if v is not None else "none"


def rules_table_md(results: list[RuleResult], *, a: str = "champion", b: str = "challenger") -> str:
    """Markdown table of rule results (one row per rule): rule, values, delta, CI, result.

    ``a`` / ``b``: column titles of the champion / challenger values."""
    if not results:
        return "_(no rules evaluated: forced, already champion, or registered without the gate)_\n"
    lines = [f"| rule | {a} | {b} | Δ | 95% CI of Δ | result |", "|---|---|---|---|---|---|"]
    for r in results:
        ci = f"[{r.ci_low:+.4f}, {r.ci_high:+.4f}]" if r.ci_low is not None and r.ci_high is not None else "n/a"
        res = r.status.upper() if r.status != "n/a" else "n/a"
        if r.note:
            res += f" ({r.note})"
        lines.append(f"| `{r.rule.describe()}` ({r.kind}) | {num(r.champion)} | {num(r.challenger)} | "
                     f"{delta(r.delta)} | {ci} | {res} |")
    return "\n".join(lines) + "\n"


def model_card(*, name: str, version: str, run_id: str, model: ModelSection, train: TrainSection,
               evaluate: EvaluateSection, tags: dict, metrics: dict, train_summary: dict | None, record: dict,
               n_eval_images: int | None, n_train_images: int | None) -> str:
    """The model card (Markdown) of a registered version. ``model``, ``train``, ``evaluate``: the params
    sections of those names (`pose.params.ModelSection`, `pose.params.TrainSection`,
    `pose.params.EvaluateSection`) the version was trained and evaluated with."""
    m, t, tr = model, train, train_summary or {}
    ev = evaluate
    rows = "\n".join(f"| {k} | {num(metrics[k])} |" for k in ("AP", "AP50", "AP75", "APM", "APL", "AR")
                     if isinstance(metrics.get(k), (int, float)))
    kp = metrics.get("per_keypoint_AP") or {}
    kp_sorted = sorted(kp.items(), key=lambda kv: kv[1])
    weakest = ", ".join(f"{k} {v:.3f}" for k, v in kp_sorted[:3]) or "n/a"
    strongest = ", ".join(f"{k} {v:.3f}" for k, v in kp_sorted[-3:][::-1]) or "n/a"
    ci = (record.get("ci") or {}).get("metrics", {}).get("AP") or {}
    ci_txt = (f"paired bootstrap 95% CI of the AP difference vs the champion: "
              f"[{ci['ci_low']:+.4f}, {ci['ci_high']:+.4f}]"
              if ci.get("ci_low") is not None else "no bootstrap CI (first version, or results not comparable)")
    rules_md = rules_table_md([RuleResult.from_dict(d) for d in record.get("rules") or []])
    curriculum = "; ".join(f"{st.sizes} x {st.epochs} ep" for st in t.curriculum)
    n_eval = n_eval_images if n_eval_images is not None else "?"
    n_train = n_train_images if n_train_images is not None else "?"
    run_txt = (f'{tr.get("steps", "?")} steps, {tr.get("epochs", "?")} epochs, final loss {tr.get("final_loss", "?")}, '
               f'device {tr.get("device", "?")}')
    return f"""# Model card: {name} v{version}

| | |
|---|---|
| MLflow run | `{run_id}` |
| registered | version {version}, aliases: {", ".join(record.get("aliases", [])) or "none"} |
| git | `{tags.get("git.commit", "unknown")}` (dirty: {tags.get("git.dirty", "unknown")}) |
| dataset | `{tags.get("dataset")}` version `{str(tags.get("dataset.version", "unknown"))[:16]}` |
| eval data | `{str(tags.get("eval_data_hash"))[:16]}` ({n_eval} images) |
| train data | `{str(tags.get("data.train_hash", "unknown"))[:16]}` ({n_train} images) |

## Model

HigherHRNet ({m.backbone} backbone, width {m.width}, stage modules {m.stage_blocks}, heatmaps at
strides {", ".join(str(s) for s in OUTPUT_STRIDES)}) with associative embedding (tag dim {m.tag_dim}) for
bottom-up multi-person pose estimation of {m.num_joints} COCO keypoints. Input: normalised RGB, sides multiples
of 32; served as an MLflow pyfunc model: encoded images in, persons (keypoints in image px, score, box) out,
with the evaluation's test-time settings (`pose.serving.model`).

## Training

Curriculum {curriculum or "n/a"} (use_curriculum {t.use_curriculum}, multi_scale {t.multi_scale}),
optimizer {t.optimizer} lr {t.lr}, batch {t.batch_size}, seed {t.seed};
{run_txt}.

## Evaluation (COCO keypoint OKS AP, pycocotools; input {ev.input_size}, flip test {ev.flip_test})

| metric | value |
|---|---|
{rows}

Strongest keypoints: {strongest}. Weakest: {weakest}.

## Promotion decision

**{record.get("decision", "not gated")}** (champion before: {_version_txt(record.get("champion_before"))}{
    f"; compared on: {record['compared_on']}" if record.get("compared_on") else ""}).
Rules (`registry.rules`), challenger = this version:

{rules_md}
{ci_txt}.

## Intended use and limitations

- Multi-person 2D keypoints of people in natural images, COCO-17 skeleton; research and evaluation use.
- Numbers are from `{tags.get("dataset")}`; a small evaluation set gives wide confidence intervals, so compare
  versions with `pose compare` (bootstrap CIs) rather than point estimates.
- Small / distant people (see APM) and crowded scenes are the usual failure modes of bottom-up grouping.
- Not for identification of individuals or safety-critical decisions.

## Use

```bash
pose predict IMAGES --model models:/{name}/{version}
mlflow models serve -m models:/{name}/{version} --env-manager local    # needs `pose` installed
```
"""


__all__ = ["model_card", "rules_table_md"]
