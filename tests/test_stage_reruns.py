"""Each DVC stage reruns for exactly the params keys its command reads (issue 22, item 2).

The repository's tree is copied to a temporary folder, every stage's outputs and data deps are
stubbed, and ``dvc commit --force`` records a lock in which every stage is up to date (nothing is
trained: the stage graph and the params/code dependencies are what is under test). Then one key of
params.yaml is changed and ``dvc status`` says which stages ``dvc repro`` would rerun: a stage reruns
when one of its own deps or params changed (a downstream stage reruns later only if an upstream
output's bytes change, which these stubs cannot say; the end-to-end tests run the real graph).

``check_params`` depends on the whole params.yaml by design (it validates every key in about a
second) and writes the same marker for every valid file, so it never makes another stage rerun; it
is left out of the expected sets.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def _run(cmd, cwd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def up_to_date_repo(tmp_path_factory):
    """A copy of the repository's tree with a dvc.lock in which every stage is up to date."""
    root = tmp_path_factory.mktemp("reruns")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file() and not rel.startswith("data/"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    (root / "dvc.lock").unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    stub = ("import os\nfrom dvc.repo import Repo\n"
            "for st in Repo('.').index.stages:\n"
            "    for o in list(st.deps) + list(st.outs):\n"
            "        rel = os.path.relpath(o.fs_path)\n"
            "        if rel == 'params.yaml' or os.path.exists(rel):\n"
            "            continue\n"
            "        if os.path.splitext(rel)[1]:\n"
            "            os.makedirs(os.path.dirname(rel) or '.', exist_ok=True)\n"
            "            open(rel, 'w').write('stub')\n"
            "        else:\n"
            "            os.makedirs(rel, exist_ok=True)\n"
            "            open(os.path.join(rel, 'stub'), 'w').write('stub')\n")
    _check_params(root)                                # its real outputs (what the later stages depend on)
    _run([sys.executable, "-c", stub], root)
    _run(DVC + ["commit", "--force", "--quiet"], root)
    assert json.loads(_run(DVC + ["status", "--json"], root)) == {}, "the stubbed repo is not up to date"
    return root


def _check_params(root: Path) -> None:
    """The check_params stage's command, as `dvc repro` runs it first."""
    cmd = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["check_params"]["cmd"].split()
    assert cmd[0] == "pose"
    _run([sys.executable, "-m", "pose.cli", *cmd[1:]], root)


def _set(params: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for k in path:
        params = params[k]
    params[last] = value


def _reruns(root: Path, dotted: str, value) -> set[str]:
    """The stages whose own deps or params change when params.yaml ``dotted`` is set to ``value``."""
    original = (root / "params.yaml").read_text()
    try:
        params = yaml.safe_load(original)
        _set(params, dotted, value)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        _check_params(root)
        return set(json.loads(_run(DVC + ["status", "--json"], root))) - {"check_params"}
    finally:
        (root / "params.yaml").write_text(original)
        _check_params(root)


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("evaluate.overlay_count", 4, {"evaluate"}),                 # a report setting: no retraining
    ("evaluate.latency_samples", 5, {"evaluate"}),
    ("evaluate.nms_kernel", 3, {"train", "evaluate", "register"}),   # decoding: validation picks best.pt with it
    ("schedule.cron", "0 4 * * 2", set()),                       # when the flow runs is not what it computes
    ("schedule.push", False, set()),
    ("schedule.retry_delays_s.fetch", [1], set()),
    ("registry.rules", [{"metric": "AP", "min": 0.3}], {"register"}),
    ("train.lr", 0.001, {"train"}),
    ("predict.joint_threshold", 0.3, {"evaluate"}),              # what the overlays draw
    ("serve.max_images", 4, {"register"}),                       # stored with the served model
    # a listed ingest batch: fetch reruns; when it adds no image the fetched folder is byte-identical and
    # nothing after fetch reruns (the catalogue entry's reading keys are unchanged)
    ("catalogue.generated.ingest", ["batches/week-49"], {"fetch"}),
    # how images are read: every stage that reads them (fetch reads the whole entry; its folder is unchanged)
    ("catalogue.generated.exif_orientation", "apply", {"fetch", "validate", "evaluate", "register"}),
])
def test_a_params_change_reruns_exactly_the_stages_that_read_it(up_to_date_repo, key, value, expected):
    assert _reruns(up_to_date_repo, key, value) == expected


def test_code_outside_a_stage_s_imports_reruns_nothing(up_to_date_repo):
    """pose/registry/compare.py is run by `pose compare` (not a stage): editing it reruns no stage,
    while editing the decoder reruns every stage that decodes."""
    root = up_to_date_repo
    for rel, expected in (("pose/registry/compare.py", set()),
                          ("pose/decode/group.py", {"train", "evaluate", "register"})):
        f = root / rel
        original = f.read_text()
        try:
            f.write_text(original + "\n# edited\n")
            assert set(json.loads(_run(DVC + ["status", "--json"], root))) - {"check_params"} == expected, rel
        finally:
            f.write_text(original)


def test_bytecode_never_enters_a_code_hash(up_to_date_repo):
    """A __pycache__ folder (what importing the package writes) changes no stage (.dvcignore)."""
    root = up_to_date_repo
    cache = root / "pose" / "augment" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "transforms.cpython-311.pyc").write_bytes(b"\0" * 64)
    try:
        assert json.loads(_run(DVC + ["status", "--json"], root)) == {}
    finally:
        shutil.rmtree(cache)


def test_stages_that_decode_list_every_decoding_key():
    """train (validation) and register (the champion's re-evaluation) decode as the evaluate stage does:
    they list every key inference reads (pose.decode.persons.EVAL_KEYS + OPTIONAL_EVAL_KEYS)."""
    from pose.decode.persons import EVAL_KEYS, OPTIONAL_EVAL_KEYS

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("train", "register"):
        listed = {str(p) for p in stages[name]["params"] if isinstance(p, str)}
        missing = {f"evaluate.{k}" for k in EVAL_KEYS + OPTIONAL_EVAL_KEYS} - listed
        assert not missing, f"dvc.yaml stage {name} misses decoding params: {sorted(missing)}"
