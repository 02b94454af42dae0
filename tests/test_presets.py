"""Published HigherHRNet presets (conf/preset/*.yaml) and their DVC Hydra composition."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import COCO_MINI, REPO

from pose.models import build_model, count_flops, count_params
from pose.params import validate_params
from pose.presets import compose, conf_in_sync, list_presets, preset_values

#: Transcribed by hand from the official experiment files
#: (github.com/HRNet/HigherHRNet-Human-Pose-Estimation/experiments/...), independently of conf/:
#: the file each preset must cite, W (NUM_CHANNELS[0]), INPUT_SIZE, IMAGES_PER_GPU, FP16.ENABLED,
#: MODEL.PRETRAINED, the dataset, published #Params (M) and GFLOPs (the repo's README).
OFFICIAL = {
    "coco_w32_512": ("experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml", 32, 512, 12, False,
                     "hrnet_w32-36af842e.pth", "coco2017", 28.6, 47.9),
    "coco_w32_640": ("experiments/coco/higher_hrnet/w32_640_adam_lr1e-3.yaml", 32, 640, 12, True,
                     "hrnet_w32-36af842e.pth", "coco2017", 28.6, 74.8),
    "coco_w48_640": ("experiments/coco/higher_hrnet/w48_640_adam_lr1e-3.yaml", 48, 640, 10, True,
                     "hrnet_w48-8ef0771d.pth", "coco2017", 63.8, 154.3),
    "crowdpose_w32_512": ("experiments/crowd_pose/higher_hrnet/w32_512_adam_lr1e-3.yaml", 32, 512, 12, False,
                          "hrnet_w32-36af842e.pth", "crowdpose", 28.6, 47.9),
}
DEFAULTS = yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_four_published_presets_exist():
    assert list_presets() == sorted(OFFICIAL)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preset_builds_the_published_model_and_protocol(name):
    source, width, size, batch, amp, backbone, dataset, params_m, gflops = OFFICIAL[name]
    assert source in (REPO / "conf" / "preset" / f"{name}.yaml").read_text()  # the cited file
    p = compose(name)
    validate_params(p, source=f"conf/preset/{name}.yaml")  # the pipeline accepts it as params.yaml
    m = p["model"]
    with torch.device("meta"):
        model = build_model(dict(m, pretrained=""))
    assert count_params(model) / 1e6 == pytest.approx(params_m, abs=0.05)
    assert count_flops(model, size, convention="reference") == pytest.approx(gflops, abs=0.05)
    assert (m["width"], m["stage_blocks"], m["stem_blocks"], m["deconv_blocks"], m["backbone"]) == (
        width, [1, 4, 3], 4, 4, "hrnet")
    assert m["init"] == "reference" and m["pretrained_backbone"].endswith("models/pytorch/imagenet/" + backbone)
    assert p["data"]["dataset"] == dataset
    # training recipe
    t = p["train"]
    assert t["curriculum"] == [{"sizes": [size], "epochs": 300}]
    assert (t["batch_size"], t["optimizer"], t["lr"], t["weight_decay"], t["amp"]) == (
        batch, "adam", 0.001, 0.0001, amp)
    assert p["augment"] == {"crop": "short_side", "max_rotation": 30, "min_scale": 0.75, "max_scale": 1.5,
                            "max_translate": 40, "flip_prob": 0.5, "color_jitter": 0.0}
    assert (p["targets"]["sigma"], p["targets"]["max_people"]) == (2.0, 30)
    assert p["loss"] == {"heatmap_weights": [1.0, 1.0], "foreground_weight": 0.0, "push_weight": 0.001,
                         "pull_weight": 0.001, "push_type": "exp", "push_margin": 1.0}
    # test protocol
    e = p["evaluate"]
    assert (e["input_size"], e["resize"], e["nms_kernel"], e["flip_test"], e["test_scales"]) == (
        size, "short_side", 5, True, [1.0])
    assert (e["detection_threshold"], e["tag_threshold"], e["max_people"], e["project2image"], e["adjust"],
            e["refine"]) == (0.1, 1.0, 30, True, True, True)
    # everything the preset does not set is the params.yaml default
    untouched = set(DEFAULTS) - set(preset_values(name))
    assert untouched and all(p[k] == DEFAULTS[k] for k in untouched)


def test_conf_config_mirrors_params_yaml():
    assert conf_in_sync(), "conf/config.yaml differs from params.yaml: run `python -m pose.presets sync`"
    assert compose(None) == DEFAULTS


def test_overrides_and_errors():
    p = compose("coco_w32_512", ["data.dataset=coco-mini", "train.batch_size=2"])
    assert (p["data"]["dataset"], p["train"]["batch_size"], p["model"]["width"]) == ("coco-mini", 2, 32)
    with pytest.raises(ValueError, match="unknown preset 'coco_w99'.*coco_w32_512"):
        compose("coco_w99")
    with pytest.raises(ValueError, match="cannot compose"):
        compose("coco_w32_512", ["model.no_such_key=1"])


def test_dvc_hydra_composition_writes_the_preset(tmp_path):
    """What `dvc exp run -S preset=...` does: DVC's own compose_and_dump, with .dvc/config's settings."""
    from dvc.repo import Repo
    from dvc.utils.hydra import compose_and_dump

    with Repo(str(REPO)) as repo:
        hydra = repo.config["hydra"]
    assert hydra["enabled"] is True
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(REPO / hydra.get("config_dir", "conf")), None, hydra.get("config_name", "config"),
                     str(REPO), ["preset=coco_w48_640", "data.dataset=coco-mini"])
    written = yaml.safe_load(out.read_text())
    assert written == compose("coco_w48_640", ["data.dataset=coco-mini"])
    assert written["model"]["width"] == 48 and "defaults" not in written and "hydra" not in written


def test_presets_cli():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "pose.presets", "show", "coco_w32_640", "data.dataset=coco-mini"],
                         cwd=REPO, capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    shown = yaml.safe_load(run.stdout)
    assert shown["evaluate"]["input_size"] == 640 and shown["data"]["dataset"] == "coco-mini"
    bad = subprocess.run([sys.executable, "-m", "pose.presets", "show", "nope"], cwd=REPO, capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "unknown preset" in bad.stderr


@pytest.mark.slow
def test_dvc_exp_run_preset_reaches_check_scales(tmp_path):
    """`dvc exp run -S preset=coco_w32_512` in a copy of the work tree, up to check_scales (offline:
    coco-mini from the shared mirror): params.yaml is composed from conf/ and the reference crop is
    checked on real annotations at 512."""
    if not (COCO_MINI / "annotations" / "person_keypoints_train2017.json").exists():
        pytest.skip(f"real COCO sample not found at {COCO_MINI}")
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    work = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, work / rel)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run(git + cmd, cwd=work, check=True)
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(work), PATH=bin_dir + os.pathsep + os.environ["PATH"])
    run = subprocess.run([os.path.join(bin_dir, "dvc"), "exp", "run", "-S", "preset=coco_w32_512",
                          "-S", "data.dataset=coco-mini", "-S", f"data.mirror={COCO_MINI.parent}", "check_scales"],
                         cwd=work, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    params = yaml.safe_load((work / "params.yaml").read_text())
    assert params == compose("coco_w32_512", ["data.dataset=coco-mini", f"data.mirror={COCO_MINI.parent}"])
    report = yaml.safe_load((work / "data/reports/scales.json").read_text())
    assert report["ok"] and report["params"]["crop"] == "short_side" and report["params"]["input_sizes"] == [512]


# ----------------------------------------------------------------------------- benchmarks/gpu_train.py


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_gpu_train_says_so_and_exits_0_without_cuda():
    run = subprocess.run([sys.executable, "benchmarks/gpu_train.py"], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert run.returncode == 0 and "no CUDA device" in run.stdout and not run.stderr.strip()


@pytest.mark.slow
def test_gpu_train_script_runs_end_to_end_on_cpu(tmp_path, coco_like):
    """The GPU script's whole path (preset, project training loop, loader clock, checkpoint,
    validation AP) on the CPU, shrunk: W16 at 128, 6 steps."""
    out = tmp_path / "gpu.json"
    run = subprocess.run([sys.executable, "benchmarks/gpu_train.py", "--allow-cpu", "--coco", str(coco_like),
                          "--steps", "6", "--warmup", "1", "--val-images", "3", "--size", "128",
                          "--set", "model.width=16", "--set", "model.stage_blocks=[1,1,1]",
                          "--set", "train.batch_size=2", "--set", "train.workers=1", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                         timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = yaml.safe_load(out.read_text())
    assert report["timed_steps"] == 4 and report["images_per_s"] > 0 and 0 <= report["loader_wait_share"] < 1
    assert isinstance(report["AP"], float) and report["input_size"] == 128
    assert "images/s" in run.stdout and "loader wait" in run.stdout and "validation" in run.stdout


@pytest.mark.slow
def test_w32_preset_takes_a_whole_hrnet_w32_imagenet_checkpoint(tmp_path):
    """A randomly initialised checkpoint of hrnet_w32-36af842e.pth's layout (41.3 M parameters, like
    the ImageNet HRNet-W32) fills the whole backbone of the coco_w32_512 model."""
    from test_models import classification_state

    from pose.models import build_training_model
    from pose.models.backbone import BACKBONE_MODULES

    src = classification_state(width=32, stage_blocks=[1, 4, 3], stem_blocks=4, branch_blocks=4, seed=0)
    assert sum(v.numel() for k, v in src.items() if not k.endswith("num_batches_tracked")) / 1e6 == pytest.approx(
        41.3, abs=0.1)
    path = tmp_path / "hrnet_w32-36af842e.pth"
    torch.save(src, path)
    mp = dict(compose("coco_w32_512")["model"], pretrained_backbone=str(path))
    model, report = build_training_model(mp, verbose=False)
    own = model.state_dict()
    assert report.missing == [] and report.loaded == sorted(k for k in own if k.split(".")[0] in BACKBONE_MODULES)
    assert len(report.loaded) == 1752 and all(torch.equal(own[k], src[k]) for k in report.loaded)
    assert {k.split(".")[0] for k in report.skipped_classifier} == {"incre_modules", "downsamp_modules",
                                                                    "final_layer", "classifier"}
    assert {".".join(k.split(".")[:4]) for k in report.skipped_unused} == {
        "stage4.2.fuse_layers.1", "stage4.2.fuse_layers.2", "stage4.2.fuse_layers.3"}
