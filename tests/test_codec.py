"""The model I/O contract (pose.codec) and a fixed-seed regression of the whole training-side
path (dataset -> codec targets -> model -> loss): the numbers were recorded before the codec
refactor (issue 14) and must not move."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from pose.codec import LOSS_PARTS, OUTPUT_NAMES, OUTPUT_STRIDES, codec_from_params

REPO = Path(__file__).resolve().parents[1]

#: params of the regression run, written out so that a change of params.yaml does not move it
MODEL = {"backbone": "hrnet", "width": 8, "num_joints": 17, "tag_dim": 1, "stage_blocks": [1, 1, 1], "stem_blocks": 1,
         "deconv_blocks": 1, "convention": "reference", "init": "kaiming", "pretrained_backbone": "", "pretrained": ""}
TARGETS = {"sigma": 2.0, "subpixel": True, "max_people": 30}
AUGMENT = {"crop": "letterbox", "max_rotation": 30, "min_scale": 0.75, "max_scale": 1.5, "max_translate": 0.1,
           "flip_prob": 0.5, "color_jitter": 0.2}
LOSS = {"heatmap_weights": [1.0, 1.0], "foreground_weight": 10.0, "push_weight": 0.01, "pull_weight": 0.01,
        "push_type": "hinge", "push_margin": 1.0}

#: recorded with the pre-codec code (batch keys heatmaps_4 / weights_4, loss parts heatmap_0 / heatmap_1), then
#: re-recorded once when issue 21 moved the reference convention's training targets to the official M p
#: (pose.codec.Convention.keypoint_mapping "raw"): the image and the model outputs are unchanged, the targets,
#: joint indices and losses moved by < 0.1%
BEFORE = {
    "hinge": {"heatmap_4": 0.15153738856315613, "heatmap_2": 0.03813362121582031, "push": 0.00993274711072445,
              "pull": 1.1658320318019832e-06, "total": 0.19960491359233856},
    "exp": {"heatmap_4": 0.01975221373140812, "heatmap_2": 0.004973959177732468, "push": 0.004999737720936537,
            "pull": 1.1658320318019832e-06, "total": 0.02972707711160183},
    "sums": {"heatmap_2": 2761.835969546805, "heatmap_4": 2668.056651921634, "image": -79823.96497389069,
             "joints": 1005730.0, "mask_2": 16384.0, "mask_4": 4096.0},
    "outs": [-59.94961701731303, 33.846987566998116],
}


def test_losses_unchanged_on_a_fixed_seed_batch(generated_coco):
    from pose.losses import total_loss
    from pose.models import build_training_model
    from pose.params import AugmentSection, LossSection, ModelSection, TargetsSection
    from pose.train.data import dataset_from_params

    model_section = ModelSection.model_validate(MODEL)
    ds = dataset_from_params(model_section, TargetsSection.model_validate(TARGETS),
                             AugmentSection.model_validate(AUGMENT), seed=42,
                             ann_file=generated_coco / "annotations" / "person_keypoints_train2017.json",
                             images_dir=generated_coco / "train2017")
    ds.set_epoch(1)
    samples = [ds[(i, 128)] for i in range(4)]
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    for key, value in BEFORE["sums"].items():
        assert float(batch[key].double().sum()) == pytest.approx(value, rel=1e-6), key
    torch.manual_seed(0)
    model, _ = build_training_model(model_section, verbose=False)
    outputs = model(batch["image"])
    assert [float(o.detach().double().sum()) for o in outputs] == pytest.approx(BEFORE["outs"], rel=1e-5)
    loss = LossSection.model_validate(LOSS)
    for loss_params in (loss, loss.model_copy(update={"push_type": "exp", "foreground_weight": 0.0})):
        _, parts = total_loss(outputs, batch, loss_params)
        expected = BEFORE[loss_params.push_type]
        assert set(parts) == set(expected)
        for name, value in expected.items():
            assert float(parts[name]) == pytest.approx(value, rel=1e-5), (loss_params.push_type, name)


def test_one_name_per_output_across_the_repo():
    """The outputs are named by stride everywhere: the DVC plot of the steps CSV and the registry's
    curves use the codec's loss parts; no file uses the retired names."""
    assert OUTPUT_STRIDES == (4, 2) and OUTPUT_NAMES == ("heatmap_4", "heatmap_2")
    dvc = (REPO / "dvc.yaml").read_text()
    assert f"[loss, {', '.join(LOSS_PARTS)}]" in dvc
    retired = ("heatmap_0", "heatmap_1\"", "heatmaps_4", "heatmaps_2", "weights_4", "weights_2")
    for path in [*REPO.glob("pose/**/*.py"), *REPO.glob("flows/*.py"), *REPO.glob("benchmarks/*.py"), REPO / "dvc.yaml",
                 REPO / "README.md"]:
        text = path.read_text()
        for name in retired:
            assert name not in text, f"{path.relative_to(REPO)} uses the retired output name {name}"


def test_codec_needs_no_torch():
    """pose.codec imports NumPy-level modules only (the onnxruntime path must not import torch)."""
    tree = ast.parse((REPO / "pose" / "codec.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(name.split(".")[0] == "torch" for name in imported)
    assert "pose.models" not in imported


def test_codec_from_typed_params_sections():
    from pose.params import load_params, validate_params

    params = validate_params(load_params(REPO / "params.yaml"))
    typed = codec_from_params(params.model, params.targets)
    plain = codec_from_params(load_params(REPO / "params.yaml")["model"], load_params(REPO / "params.yaml")["targets"])
    assert typed == plain and typed.num_outputs == len(params.loss.heatmap_weights)
