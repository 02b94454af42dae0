"""The whole training chain can memorise: a few generated images, no augmentation, the params.yaml
model and losses, then the evaluate path on the same images must find and group every person
(AP50 1.0, AP75 >= 0.9) and reach AP >= 0.8.

If targets, the augmentation's coordinate mapping, the coordinate convention, the tag loss or
the decoder disagreed anywhere, a memorised model would still score far below that (the
collapsed-tag failure of the reference push scored AP 0.01-0.03 on the generated set).

Budget (2026-12-06, to keep `make test` inside its time): 4 images of 128x112 px trained and
evaluated at input 128, 200 steps at lr 5e-3, ~60 s on 2 cores. Measured on this code: AP 0.886 /
AP50 1.0 / AP75 1.0 (generated seed 3, the one asserted); seed 5: AP 0.975; 150 steps: AP 0.754
(AP75 0.827). Each epoch is one step here, so the checkpoint writes of the 199 intermediate
epochs (half of the test's time; checkpointing has its own tests in tests/test_train_loop.py) are
skipped: only the final ``last.pt`` is written and decoded. The previous budget (192 px, 400 steps,
every checkpoint) took 290-700 s and scored AP 0.80.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import train_sections

from pose.datasets.schema import COCO_SIGMAS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

NO_AUGMENT = {"crop": "letterbox", "max_rotation": 0, "min_scale": 1.0, "max_scale": 1.0, "max_translate": 0.0,
              "flip_prob": 0.0, "color_jitter": 0.0}


SIZE, STEPS = 128, 200


def test_training_chain_memorises_a_few_generated_images(tmp_path, monkeypatch):
    import pose.train.loop as loop
    from pose.datasets.generated import generate_dataset
    from pose.decode.inference import predict_dataset
    from pose.device import pick_device
    from pose.evaluate.coco import evaluate_results
    from pose.train.checkpoint import load_trained_model
    from pose.train.loop import train

    real_save = loop.save_checkpoint

    def final_save_only(state, path, *args, **kwargs):
        """Write only the last epoch's last.pt (see the module docstring)."""
        if state["epoch"] == STEPS and Path(path).name == "last.pt":
            return real_save(state, path, *args, **kwargs)
        return None

    monkeypatch.setattr(loop, "save_checkpoint", final_save_only)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    p = copy.deepcopy(params)
    g = {**p["generated"], "num_train": 4, "num_val": 1, "seed": 3, "width": 128, "height": 112,
         "min_person_height": 40, "max_person_height": 100}
    data = tmp_path / "gen"
    generate_dataset(data, **g, train_split="train2017", val_split="val2017")
    ann = data / "annotations" / "person_keypoints_train2017.json"
    p["augment"] = dict(NO_AUGMENT)
    p["targets"]["sigma"] = 1.0  # sharper peaks: memorising is about precision (README ablation)
    p["train"].update(batch_size=4, workers=0, warmup_steps=10, lr=5e-3, log_every=50, val_every=0,
                      checkpoint_every=0, max_steps_per_epoch=0, multi_scale=True, use_curriculum=True,
                      curriculum=[{"sizes": [SIZE], "epochs": STEPS}])
    p["evaluate"].update(flip_test=False, input_size=SIZE)  # trained without flips
    summary = train(**train_sections(p), train_ann=ann, train_images=data / "train2017", out_dir=tmp_path / "models",
                    metrics_path=tmp_path / "train.json", steps_path=tmp_path / "steps.csv", resume=False)
    assert summary["steps"] == STEPS
    device = pick_device()
    model = load_trained_model(tmp_path / "models" / "last.pt", device)
    results = predict_dataset(model, ann, data / "train2017", p["evaluate"], device)
    metrics = evaluate_results(ann, results, sigmas=COCO_SIGMAS, oks_threshold=0.5)
    assert metrics["AP50"] == 1.0 and metrics["AP75"] >= 0.9 and metrics["AP"] >= 0.8, metrics
