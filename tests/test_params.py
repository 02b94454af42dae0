"""The params.yaml schema (pose.params): every key of the repo's params.yaml is known, bad values
fail with one line naming the key, the value and what is allowed, and a bad value stops
`dvc repro` at the first stage with every previous output byte-identical."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pose.params import (
    SIZE_DIVISOR,
    Params,
    ParamsError,
    check_input_size,
    input_size_error,
    load_checked_params,
    load_params,
    validate_params,
)

BIN = Path(sys.executable).parent
BASE = load_params(REPO / "params.yaml")


def _bad(mutate) -> ParamsError:
    p = copy.deepcopy(BASE)
    mutate(p)
    with pytest.raises(ParamsError) as info:
        validate_params(p)
    return info.value


def test_repo_params_yaml_passes_the_schema():
    """Every section and key present in params.yaml is in the schema (unknown keys are errors)."""
    model = validate_params(copy.deepcopy(BASE))
    assert isinstance(model, Params)
    assert set(Params.model_fields) - {"validate_"} | {"validate"} == set(BASE), "one model per section"
    assert model.train.lr == pytest.approx(float(BASE["train"]["lr"]))
    # the checked dict is the file's own dict, unchanged (no defaults added, no types coerced)
    assert load_checked_params(REPO / "params.yaml") == BASE


@pytest.mark.parametrize("mutate,key,fragments", [
    (lambda p: p["train"].update(lr=-0.1), "train.lr", ["train.lr = -0.1", "must be > 0"]),
    (lambda p: p["train"]["curriculum"][0]["sizes"].append(136), "train.curriculum[0].sizes[1]",
     ["= 136", f"multiple of {SIZE_DIVISOR}", "128 or 160"]),
    (lambda p: p["train"]["curriculum"][1].update(sizes=[]), "train.curriculum[1].sizes", ["must not be empty"]),
    (lambda p: p["train"].update(curriculum=[]), "train.curriculum", ["must not be empty"]),
    (lambda p: p["evaluate"].update(input_size=200), "evaluate.input_size", ["192 or 224"]),
    (lambda p: p["train"].update(optimizer="sgd"), "train.optimizer", ["'sgd'", "adam | adamw"]),
    (lambda p: p["augment"].update(flip_prob=1.5), "augment.flip_prob", ["1.5", "in [0, 1]"]),
    (lambda p: p["train"].update(lrr=0.1), "train.lrr", ["unknown key", "did you mean lr?"]),
    (lambda p: p.update(trian={"lr": 1}), "trian", ["unknown key", "did you mean train?"]),
    (lambda p: p["train"].pop("batch_size"), "train.batch_size", ["missing"]),
    (lambda p: p["train"].update(batch_size=True), "train.batch_size", ["not true/false"]),
    (lambda p: p["train"].update(batch_size=2.5), "train.batch_size", ["integer"]),
    (lambda p: p["train"].update(lr=float("nan")), "train.lr", ["finite"]),
    (lambda p: p["train"].update(amp="maybe"), "train.amp", ["true or false"]),
    (lambda p: p["data"].update(dataset="nope"), "data.dataset", ["'nope'", "catalogue key", "coco-mini"]),
    (lambda p: p["data"].update(val_split=p["data"]["train_split"]), "data.val_split", ["must differ"]),
    (lambda p: p["catalogue"]["coco-mini"].update(sigmas="NOPE"), "catalogue.coco-mini", ["unknown sigmas"]),
    (lambda p: p["catalogue"]["coco2017"]["sources"][0]["archives"][1].update(md5="xyz"),
     "catalogue.coco2017.sources[0].archives[1].md5", ["32 hex digits"]),
    (lambda p: p["registry"]["rules"].append({"metric": "APX", "min": 0.1}), "registry.rules[", ["'APX'", "AP50"]),
    (lambda p: p["registry"]["rules"].append({"metric": "AP", "min": 0.1, "max_drop": 0.1}), "registry.rules[",
     ["exactly one of min, min_delta, max_drop"]),
    (lambda p: p["registry"].update(rules=[]), "registry.rules", ["must not be empty"]),
    (lambda p: p["registry"].update(model_name="my model"), "registry.model_name", ["letters, digits"]),
    (lambda p: p["schedule"].update(cron="every monday"), "schedule.cron", ["5-field cron"]),
    (lambda p: p["schedule"].update(timezone="Mars/Base"), "schedule.timezone", ["IANA"]),
    (lambda p: p["schedule"].update(fingerprint="mtime"), "schedule.fingerprint", ["content | stat"]),
    (lambda p: p["model"].update(stage_blocks=[1, 1]), "model.stage_blocks", ["3 module counts"]),
    (lambda p: p["loss"].update(heatmap_weights=[1.0]), "loss.heatmap_weights", ["one per output stride 4 and 2"]),
    (lambda p: p["augment"].update(max_scale=0.5), "augment.max_scale", ["augment.min_scale"]),
    (lambda p: p["evaluate"].update(area_bins=[64, 32]), "evaluate.area_bins", ["increasing"]),
    (lambda p: p.update(train=None), "train", ["must be a mapping"]),
])
def test_bad_values_name_key_value_and_what_is_allowed(mutate, key, fragments):
    err = _bad(mutate)
    msg = str(err)
    assert "\n" not in msg, msg
    assert msg.startswith(f"params.yaml: {key}"), msg
    assert err.key.startswith(key.rstrip("[")), (err.key, key)
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_several_problems_are_one_line_with_a_count():
    def mutate(p):
        p["train"].update(lr=-1.0, batch_size=0)
        p["augment"].update(flip_prob=2.0)
    err = _bad(mutate)
    assert "\n" not in str(err)
    assert [k for k, _ in err.problems] == ["augment.flip_prob", "train.batch_size", "train.lr"]
    assert str(err).endswith("(+2 more: train.batch_size, train.lr)")


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_checked_params(tmp_path / "missing.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("train: [1,\n")
    with pytest.raises(ParamsError, match=r"p.yaml: invalid YAML at line 2 column 1") as info:
        load_checked_params(bad)
    assert "\n" not in str(info.value)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        load_checked_params(bad)


def test_yaml_1_1_exponent_strings_still_read_as_numbers():
    """PyYAML reads `lr: 1e-3` as the string "1e-3"; the code's float() accepts it, so must the schema."""
    p = copy.deepcopy(BASE)
    p["train"]["lr"] = "1e-3"
    assert validate_params(p).train.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("size,ok", [(32, True), (128, True), (192, True), (512, True), (136, False),
                                     (0, False), (-32, False), (16, False), (True, False), (128.0, False)])
def test_the_shared_input_size_rule(size, ok):
    assert (input_size_error(size) is None) is ok
    if ok:
        assert check_input_size(size, "x") == size
    else:
        with pytest.raises(ParamsError, match=r"^params.yaml: x = "):
            check_input_size(size, "x")
    assert "nearest: 32" in input_size_error(16)


def test_rule_metrics_are_eval_json_metrics(generated_coco):
    """Every metric a `registry.rules` entry may name is one the evaluate stage writes: the COCO
    metrics and keypoint diagnostics for any dataset (scored here on real ground truth against
    itself), CrowdPose's crowd-index APs for CrowdPose ground truth."""
    from pose.evaluate.coco import evaluate_results
    from pose.params import RULE_METRICS

    gt = json.loads((generated_coco / "annotations" / "person_keypoints_val2017.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in gt["annotations"] if a["num_keypoints"] > 0]
    written = set(evaluate_results(gt, results))
    crowdpose_only = {"AP_easy", "AP_medium", "AP_hard"}
    assert set(RULE_METRICS) - crowdpose_only <= written, set(RULE_METRICS) - crowdpose_only - written
    assert crowdpose_only <= set(RULE_METRICS)


def test_the_size_rule_guards_curriculum_and_evaluate_sizes():
    """The schema applies `input_size_error` to the sizes check_scales and train read."""
    from pydantic import ValidationError

    from pose.params import CurriculumStage, EvaluateSection

    with pytest.raises(ValidationError, match="multiple of 32"):
        CurriculumStage.model_validate({"sizes": [128, 136], "epochs": 1})
    with pytest.raises(ValidationError, match="multiple of 32"):
        EvaluateSection.model_validate({**BASE["evaluate"], "input_size": 136})


# ----------------------------------------------------------------------------- DVC: first stage

def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="1", DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _dvc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "dvc"), *args], cwd=cwd, env=_env(), capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"dvc {args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "data").rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("mutate,key", [
    (lambda p: p["train"].update(lr=-0.1), "train.lr"),
    (lambda p: p["train"]["curriculum"][0].update(sizes=[128, 136]), "train.curriculum[0].sizes[1]"),
    (lambda p: p["train"]["curriculum"][0].update(sizes=[]), "train.curriculum[0].sizes"),
])
def test_dvc_repro_stops_at_check_params_with_outputs_intact(tmp_path, mutate, key):
    """A repo whose every stage is up to date (placeholder outputs recorded with `dvc commit`);
    a bad value then fails `dvc repro` in the first stage, naming the key, and no stage's
    outputs are removed or changed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / rel, repo / rel)
    shutil.copytree(REPO / "pose", repo / "pose", ignore=shutil.ignore_patterns("__pycache__"))
    _dvc(["init", "--no-scm", "-q"], repo)
    # placeholders for every output and every dependency under data/, then record them as up to date
    code = ("from dvc.repo import Repo\n"
            "r = Repo('.')\n"
            "for s in r.index.stages:\n"
            "    for o in [*s.outs, *s.deps]:\n"
            "        p = o.fs_path\n"
            "        if hasattr(o, 'params') or not p.startswith(r.root_dir + '/data'):\n"
            "            continue\n"
            "        print(('d ' if '.' not in p.rsplit('/', 1)[-1] else 'f ') + p)\n")
    listing = subprocess.run([sys.executable, "-c", code], cwd=repo, env=_env(), capture_output=True, text=True,
                             check=True).stdout.split("\n")
    for line in filter(None, listing):
        kind, path = line.split(" ", 1)
        path = Path(path)
        if kind == "d":
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder.txt").write_text(f"previous output {path.name}\n")
        elif not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"previous output {path.name}\n")
    subprocess.run([str(BIN / "pose"), "check-params", "--out", "data/params_ok.json"], cwd=repo, env=_env(),
                   check=True, capture_output=True)
    _dvc(["commit", "-f", "-q"], repo)
    assert "up to date" in _dvc(["status"], repo).stdout.lower()
    before = _snapshot(repo)
    assert len(before) >= 10

    params = yaml.safe_load((repo / "params.yaml").read_text())
    mutate(params)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # without the first stage, DVC would now remove train's outputs and run it
    assert "train:" in _dvc(["status"], repo).stdout
    t0 = time.perf_counter()
    proc = _dvc(["repro"], repo, check=False)
    elapsed = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"error: params.yaml: {key}" in out, out
    assert "check_params" in out and "Traceback" not in out, out
    for stage in ("fetch", "validate", "check_scales", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" not in out, out
    after = _snapshot(repo)
    # check_params' own outputs are removed by DVC before its command runs; every other output is intact
    own = {"data/params_ok.json", "data/params_dataset.json"}
    assert {k: v for k, v in before.items() if k not in own} == after
    print(f"dvc repro with {key} bad: failed in {elapsed:.1f} s")
    assert elapsed < 60, elapsed


def test_restore_hint_only_for_a_committed_params_file_that_changed(tmp_path):
    """Outside a git repository (where `git diff` would fall back to --no-index and exit 1) no hint;
    in a repository, a hint only when the committed file was changed."""
    import subprocess

    from pose.params import restore_hint

    f = tmp_path / "params.yaml"
    f.write_text("a: 1\n")
    assert restore_hint(f) == ""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "params.yaml"], check=True)
    subprocess.run(git + ["commit", "-qm", "p"], check=True)
    assert restore_hint(f) == ""
    f.write_text("a: 2\n")
    assert "git checkout" in restore_hint(f) and "dvc exp apply HEAD" in restore_hint(f)
