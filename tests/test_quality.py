"""Tests of pose.quality: tables, validate_dataset (great-expectations suite + image
checks, policies, report) and check_scales, on a COCO-layout set (`coco_like`: the real
coco-mini sample when ../shared is present, else the generated set: the checks are about
the COCO format, not the photos) and on corrupted copies of it made in tmp_path (images
symlinked unless corrupted)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pose.cli import app
from pose.datasets.schema import KEYPOINT_NAMES
from pose.quality import scales as scales_mod
from pose.quality.flip import flip_check, hflip_spec
from pose.quality.scales import check_scales
from pose.quality.suite import suspicious_lr_swaps
from pose.quality.tables import load_tables
from pose.quality.validate import validate_dataset

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"

LR_SWAP = 0.2  # params.yaml `validate.lr_swap_min_shoulder_reversal`
VALIDATE = dict(bbox_tolerance=1.0, min_labeled_keypoints=3, lr_swap_min_shoulder_reversal=LR_SWAP, workers=2)
SCALES = dict(max_roundtrip_error=0.01, max_peak_error=1.0, min_torso_heatmap_px=4.0, sigma=2.0)
#: the dataset the tests run on (set by the autouse fixture below: coco-mini or the generated set)
COCO: Path = Path("unset")


@pytest.fixture(autouse=True)
def _dataset(coco_like):
    global COCO
    COCO = coco_like


def ann_file(split: str) -> Path:
    return COCO / "annotations" / f"person_keypoints_{split}2017.json"


def load(split: str) -> dict:
    return json.loads(ann_file(split).read_text())


def make_copy(tmp_path: Path, split: str, data: dict, *, truncate: tuple[str, ...] = (), missing: tuple[str, ...] = (),
              copies: dict[str, str] | None = None, text: str | None = None) -> tuple[Path, Path]:
    """Annotation file ``data`` (or raw ``text``) + an image folder of symlinks to the
    real images; ``truncate`` names are written as their first half, ``missing`` left
    out, ``copies`` {new name: existing name} written as byte copies."""
    img_dir = tmp_path / f"{split}2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    for src in sorted((COCO / f"{split}2017").glob("*.jpg")):
        if src.name in missing:
            continue
        dst = img_dir / src.name
        if src.name in truncate:
            raw = src.read_bytes()
            dst.write_bytes(raw[: len(raw) // 2])
        else:
            os.symlink(src, dst)
    for new, old in (copies or {}).items():
        shutil.copyfile(COCO / f"{split}2017" / old, img_dir / new)
    path = tmp_path / "annotations" / f"person_keypoints_{split}2017.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else json.dumps(data))
    return path, img_dir


def run(tmp_path: Path, ann: Path, img_dir: Path, on_error: str = "fail", cleaned: bool = True, **kw) -> dict:
    return validate_dataset(ann, img_dir, on_error=on_error, report_path=tmp_path / "out" / "report.json",
                            docs_dir=kw.pop("docs_dir", None),
                            cleaned_path=tmp_path / "out" / "cleaned.json" if cleaned else None,
                            cache_path=kw.pop("cache_path", tmp_path / "out" / "cache.json"), **VALIDATE, **kw)


def errors(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["severity"] == "error"]


def keyed(fs: list[dict]) -> set[tuple]:
    return {(f["check"], f["image_id"], f["annotation_id"], f.get("joint")) for f in fs}


def pick_person(data: dict, skip_images: set = frozenset(), min_kp: int = 8) -> dict:
    for a in data["annotations"]:
        if not a["iscrowd"] and a["num_keypoints"] >= min_kp and a["image_id"] not in skip_images:
            return a
    raise AssertionError("no suitable person")


def first_labeled_joint(a: dict) -> int:
    return next(k for k in range(17) if a["keypoints"][3 * k + 2] > 0)


def image_of(data: dict, image_id: int) -> dict:
    return next(i for i in data["images"] if i["id"] == image_id)


# ------------------------------------------------------------------------ tables

def test_tables_shapes_and_joins():
    t = load_tables(ann_file("val"))
    raw = load("val")
    assert len(t.images) == len(raw["images"]) and len(t.annotations) == len(raw["annotations"])
    assert len(t.keypoints) == 17 * len(raw["annotations"])
    assert t.keypoint_array.shape == (len(raw["annotations"]), 17, 3)
    assert t.annotations["image_found"].all()
    assert (t.annotations["n_labeled"].to_numpy() == [a["num_keypoints"] for a in raw["annotations"]]).all()
    a = raw["annotations"][0]
    row = t.keypoints[(t.keypoints["ann_row"] == 0) & (t.keypoints["joint"] == 5)].iloc[0]
    assert (row["x"], row["y"], row["v"]) == tuple(a["keypoints"][15:18])
    img = image_of(raw, a["image_id"])
    assert t.annotations.loc[0, "img_width"] == img["width"] and t.annotations.loc[0, "img_height"] == img["height"]
    assert t.annotations["annotation_id"].dtype == np.int64


def test_tables_tolerate_malformed_entries():
    raw = load("val")
    raw["annotations"][0]["keypoints"] = raw["annotations"][0]["keypoints"][:-3]
    raw["annotations"][1]["bbox"] = None
    raw["annotations"][2]["keypoints"][4] = "x"
    from pose.quality.tables import build_tables
    t = build_tables(raw)
    assert t.annotations.loc[0, "keypoints_len"] == 48
    assert t.annotations.loc[1, "bbox_len"] == -1 and np.isnan(t.annotations.loc[1, "bbox_w"])
    assert t.annotations.loc[2, "keypoints_len"] == -2
    assert len(t.keypoints) == 17 * (len(raw["annotations"]) - 2)


# ---------------------------------------------------------------- clean datasets

@pytest.mark.parametrize("split", ["train", "val"])
def test_clean_coco_mini_passes(tmp_path, split):
    cache = tmp_path / "cache.json"
    kw = dict(on_error="fail", report_path=tmp_path / "report.json", docs_dir=tmp_path / "docs",
              cleaned_path=tmp_path / "cleaned.json", cache_path=cache, **VALIDATE)
    report = validate_dataset(ann_file(split), COCO / f"{split}2017", **kw)
    assert report["ok"] is True and report["summary"]["errors"] == 0, errors(report)[:5]
    assert json.loads((tmp_path / "report.json").read_text())["ok"] is True
    assert (tmp_path / "cleaned.json").read_bytes() == ann_file(split).read_bytes()
    assert (tmp_path / "docs" / "index.html").is_file()
    assert list((tmp_path / "docs").glob("validations/**/*.html"))
    assert report["summary"]["image_decoded"] == len(load(split)["images"])
    assert all(e["success"] for e in report["expectations"] if e["severity"] == "error")
    # only warnings: persons with 1..2 labeled keypoints, named exactly
    raw = load(split)
    few = {a["id"] for a in raw["annotations"] if 0 < a["num_keypoints"] < 3}
    assert {f["annotation_id"] for f in report["findings"] if f["check"] == "few_keypoints"} == few
    assert all(f["severity"] == "warning" for f in report["findings"])
    # unchanged re-run: every image comes from the content-hash cache, nothing is decoded
    again = validate_dataset(ann_file(split), COCO / f"{split}2017", **dict(kw, docs_dir=None))
    assert again["summary"]["image_decoded"] == 0 and again["summary"]["image_from_cache"] == len(raw["images"])
    assert again["findings"] == report["findings"]


# ------------------------------------------------------------- single corruptions

def corrupt(name: str, data: dict) -> tuple[dict, set[tuple], dict]:
    """Apply corruption ``name`` to ``data`` in place; return (make_copy kwargs,
    expected error keys, extra expectations)."""
    a = pick_person(data)
    iid, aid = a["image_id"], a["id"]
    img = image_of(data, iid)
    if name == "truncated_jpeg":
        return {"truncate": (img["file_name"],)}, {("image_decodes", iid, None, None)}, {"field": "file_name"}
    if name == "missing_file":
        return {"missing": (img["file_name"],)}, {("image_file_exists", iid, None, None)}, {"field": "file_name"}
    if name == "declared_size_wrong":
        img["width"] += 10
        return {}, {("image_size_matches", iid, None, None)}, {"field": "width"}
    if name == "negative_bbox":
        a["bbox"][2] = -5.0
        return {}, {("bbox_positive", iid, aid, None)}, {"field": "bbox.w"}
    if name == "keypoint_outside_image":
        j = first_labeled_joint(a)
        a["keypoints"][3 * j] = img["width"] + 50
        return {}, {("keypoint_inside_image", iid, aid, j)}, {"field": "keypoints.x"}
    if name == "visibility_3":
        j = first_labeled_joint(a)
        a["keypoints"][3 * j + 2] = 3
        return {}, {("visibility_valid", iid, aid, j)}, {"field": "keypoints.v"}
    if name == "duplicate_annotation_ids":
        b = next(x for x in data["annotations"] if x["id"] != aid)
        b["id"] = aid
        return {}, {("annotation_id_unique", iid, aid, None), ("annotation_id_unique", b["image_id"], aid, None)}, \
            {"field": "id", "count": 2}
    if name == "num_keypoints_wrong":
        a["num_keypoints"] += 1
        return {}, {("num_keypoints_consistent", iid, aid, None)}, {"field": "num_keypoints"}
    if name == "bbox_outside_image":
        a["bbox"][0] = img["width"] - a["bbox"][2] + 5.0  # right edge 5 px past the border (> 1 px tolerance)
        return {}, {("bbox_inside_image", iid, aid, None)}, {"field": "bbox.x+w"}
    if name == "missing_image_id":
        a["image_id"] = 999999999
        return {}, {("image_exists", 999999999, aid, None)}, {"field": "image_id"}
    if name == "duplicate_image_content":
        new = dict(img, id=987654321, file_name="copy_" + img["file_name"])
        data["images"].append(new)
        return {"copies": {new["file_name"]: img["file_name"]}}, {("image_duplicate", 987654321, None, None)}, \
            {"field": "file_name"}
    raise KeyError(name)


CORRUPTIONS = ["truncated_jpeg", "missing_file", "declared_size_wrong", "negative_bbox", "keypoint_outside_image",
               "visibility_3", "duplicate_annotation_ids", "num_keypoints_wrong", "bbox_outside_image",
               "missing_image_id", "duplicate_image_content"]


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_corruption_is_reported_with_ids(tmp_path, name):
    data = load("val")
    kw, expected, extra = corrupt(name, data)
    ann, img_dir = make_copy(tmp_path, "val", data, **kw)
    report = run(tmp_path, ann, img_dir)
    errs = errors(report)
    assert keyed(errs) == expected, errs
    assert len(errs) == extra.get("count", 1)
    assert all(f["field"] == extra["field"] and f["message"] for f in errs)
    assert report["ok"] is False and report["summary"]["errors"] == len(errs)
    assert not (tmp_path / "out" / "cleaned.json").exists()  # fail policy: nothing for downstream to read
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["findings"] == report["findings"]
    for f in errs:  # file names the thing to fix
        if f["check"].startswith("image_") and f["check"] not in ("image_exists",):
            assert f["file"].startswith(str(img_dir))
        else:
            assert f["file"] == str(ann)


def test_truncated_jpeg_detected_even_when_only_eoi_missing(tmp_path):
    data = load("val")
    name = data["images"][0]["file_name"]
    ann, img_dir = make_copy(tmp_path, "val", data)
    (img_dir / name).unlink()
    raw = (COCO / "val2017" / name).read_bytes()
    assert raw.endswith(b"\xff\xd9")
    (img_dir / name).write_bytes(raw[:-2])
    report = run(tmp_path, ann, img_dir, cleaned=False)
    assert keyed(errors(report)) == {("image_decodes", data["images"][0]["id"], None, None)}


def test_malformed_json_is_one_error_with_line_and_column(tmp_path):
    data = load("val")
    lines = json.dumps(data, indent=1).splitlines()
    assert lines[0] == "{" and lines[1].startswith(' "')
    lines.insert(1, ' "broken": 1')  # no delimiter after it: the parser stops at the next key, line 3, column 2
    ann, img_dir = make_copy(tmp_path, "val", data, text="\n".join(lines))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "cleaned.json").write_text("stale")
    report = run(tmp_path, ann, img_dir)
    assert report["ok"] is False
    assert len(report["findings"]) == 1
    f = report["findings"][0]
    assert (f["severity"], f["check"], f["file"], f["line"], f["column"]) == ("error", "json_parse", str(ann), 3, 2)
    assert "line 3, column 2" in f["message"]
    assert not (tmp_path / "out" / "cleaned.json").exists()
    assert json.loads((tmp_path / "out" / "report.json").read_text())["findings"] == [f]
    # `pose validate` exits 1 with the finding and one error line, without a traceback
    res = CliRunner().invoke(app, ["validate", "--annotations", str(ann), "--images", str(img_dir),
                                   "--report", str(tmp_path / "cli.json"), "--docs", str(tmp_path / "cli_docs"),
                                   "--params", str(PARAMS_YAML)])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.stderr and "[json_parse]" in res.stderr and "line 3, column 2" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: 1 error(s) in ")
    assert json.loads((tmp_path / "cli.json").read_text())["findings"][0]["check"] == "json_parse"


def test_unknown_policy_raises(tmp_path):
    with pytest.raises(ValueError, match="on_error must be one of"):
        validate_dataset(ann_file("val"), COCO / "val2017", on_error="ignore", report_path=tmp_path / "r.json",
                         docs_dir=None, cache_path=None, **VALIDATE)


# ------------------------------------------------------------------- quarantine

def test_quarantine_removes_exactly_the_offenders(tmp_path):
    data = load("val")
    ann_ids_by_image: dict[int, list[int]] = {}
    for a in data["annotations"]:
        ann_ids_by_image.setdefault(a["image_id"], []).append(a["id"])
    persons = [a for a in data["annotations"] if not a["iscrowd"] and a["num_keypoints"] >= 8]
    by_image = {}
    for a in persons:
        by_image.setdefault(a["image_id"], a)
    p = list(by_image.values())  # persons on distinct images
    trunc_img, size_img = image_of(data, p[0]["image_id"]), image_of(data, p[1]["image_id"])
    size_img["height"] += 3
    p[2]["bbox"][3] = 0.0                                   # bbox_positive
    j = first_labeled_joint(p[3])
    p[3]["keypoints"][3 * j + 2] = 3                        # visibility_valid
    dup_a, dup_b = p[4], p[5]
    dup_b["id"] = dup_a["id"]                               # annotation_id_unique (both)
    ann, img_dir = make_copy(tmp_path, "val", data, truncate=(trunc_img["file_name"],))
    report = run(tmp_path, ann, img_dir, on_error="quarantine", docs_dir=tmp_path / "out" / "docs")
    assert (tmp_path / "out" / "docs" / "index.html").is_file()
    assert list((tmp_path / "out" / "docs").glob("validations/**/*.html"))
    assert report["ok"] is True and report["summary"]["errors"] > 0
    removed = report["removed"]
    assert {(r["image_id"], tuple(r["reasons"])) for r in removed["images"]} == {
        (trunc_img["id"], ("image_decodes",)), (size_img["id"], ("image_size_matches",))}
    expected_anns = {(aid, ("image_removed",)) for iid in (trunc_img["id"], size_img["id"])
                     for aid in ann_ids_by_image[iid]}
    expected_anns |= {(p[2]["id"], ("bbox_positive",)), (p[3]["id"], ("visibility_valid",)),
                      (dup_a["id"], ("annotation_id_unique",))}
    got = {(r["annotation_id"], tuple(r["reasons"])) for r in removed["annotations"]}
    assert got == expected_anns
    assert len(removed["annotations"]) == len(expected_anns) + 1  # both rows of the duplicated id
    cleaned = json.loads((tmp_path / "out" / "cleaned.json").read_text())
    assert len(cleaned["images"]) == len(data["images"]) - 2
    assert len(cleaned["annotations"]) == len(data["annotations"]) - len(removed["annotations"])
    kept_ids = {a["id"] for a in cleaned["annotations"]}
    assert not kept_ids & {p[2]["id"], p[3]["id"], dup_a["id"]}
    assert cleaned["categories"] == data["categories"]
    # the cleaned file passes the same gate
    again = validate_dataset(tmp_path / "out" / "cleaned.json", img_dir, on_error="fail",
                             report_path=tmp_path / "again.json", docs_dir=None, cache_path=None, **VALIDATE)
    assert again["ok"] is True and again["summary"]["errors"] == 0


# --------------------------------------------------------------------- warnings

def test_few_keypoints_is_a_warning_naming_the_person(tmp_path):
    data = load("val")
    a = pick_person(data)
    labeled = [k for k in range(17) if a["keypoints"][3 * k + 2] > 0]
    for k in labeled[2:]:                                   # keep 2 labeled joints (< min_labeled_keypoints 3)
        a["keypoints"][3 * k:3 * k + 3] = [0, 0, 0]
    a["num_keypoints"] = 2
    ann, img_dir = make_copy(tmp_path, "val", data)
    report = run(tmp_path, ann, img_dir, cleaned=False)
    few = [f for f in report["findings"] if f["check"] == "few_keypoints"]
    assert report["ok"] is True and not errors(report)
    assert a["id"] in {f["annotation_id"] for f in few} and all(f["severity"] == "warning" for f in few)
    (mine,) = [f for f in few if f["annotation_id"] == a["id"]]
    assert mine["image_id"] == a["image_id"] and "only 2 labeled keypoint(s) (< 3)" in mine["message"]


def test_left_right_swap_warning(tmp_path):
    data = load("val")
    raw = np.array([a["keypoints"] for a in data["annotations"]], dtype=np.float64).reshape(-1, 17, 3)
    ls, rs, lh, rh = (KEYPOINT_NAMES.index(n) for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"))
    swapped = raw.copy()
    swapped[:, [ls, rs, lh, rh]] = raw[:, [rs, ls, rh, lh]]
    assert not suspicious_lr_swaps(raw, LR_SWAP).any()  # real labels: none suspicious
    hits = np.flatnonzero(suspicious_lr_swaps(swapped, LR_SWAP))
    assert len(hits) > 0
    target = data["annotations"][int(hits[0])]
    target["keypoints"] = swapped[hits[0]].reshape(-1).tolist()
    ann, img_dir = make_copy(tmp_path, "val", data)
    report = run(tmp_path, ann, img_dir, cleaned=False)
    assert report["ok"] is True and not errors(report)
    lr = [f for f in report["findings"] if f["check"] == "left_right_swap"]
    assert [(f["severity"], f["annotation_id"], f["image_id"]) for f in lr] == [
        ("warning", target["id"], target["image_id"])]


def test_lr_swap_definition_synthetic():
    kp = np.zeros((2, 17, 3))
    idx = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    # frontal face (nose between visible eyes), person's left on the image right: correct
    for n, (x, y) in {"nose": (50, 10), "left_eye": (55, 8), "right_eye": (45, 8), "left_shoulder": (70, 40),
                      "right_shoulder": (30, 40), "left_hip": (62, 100), "right_hip": (38, 100)}.items():
        kp[:, idx[n]] = (x, y, 2)
    kp[1, [idx["left_shoulder"], idx["right_shoulder"]]] = kp[0, [idx["right_shoulder"], idx["left_shoulder"]]]
    kp[1, [idx["left_hip"], idx["right_hip"]]] = kp[0, [idx["right_hip"], idx["left_hip"]]]
    assert suspicious_lr_swaps(kp, LR_SWAP).tolist() == [False, True]
    kp[1, idx["nose"], 2] = 1  # nose not visible: no frontal view, no claim
    assert suspicious_lr_swaps(kp, LR_SWAP).tolist() == [False, False]


# ------------------------------------------------------------------------ scales

def test_check_scales_coco_mini_val(tmp_path):
    out = tmp_path / "scales.json"
    report = check_scales(ann_file("val"), input_sizes=[256, 384, 512], strides=[4, 2], report_path=out, **SCALES)
    assert report["ok"] is True, report["violations"]
    assert json.loads(out.read_text())["ok"] is True
    assert report["persons"] > 0 and report["flip"]["ok"] and report["flip"]["mirror"] in ("width - x", "width - 1 - x")
    for size in ("256", "384", "512"):
        s = report["sizes"][size]
        assert s["roundtrip"]["keypoints"] == report["labeled_keypoints"]
        assert s["roundtrip"]["max_error_px"] < 0.01
        assert s["canvas"]["visible_outside"] == 0 and s["canvas"]["lost_to_cropping"] == 0
        assert sum(s["height_histogram"]["counts"]) == report["persons"]
        assert 0 < s["too_small"]["torso_known"] <= report["persons"]
        for stride, hm in (("4", int(size) // 4), ("2", int(size) // 2)):
            st = s["strides"][stride]
            assert st["heatmap_size"] == hm and st["checked"] > 0
            assert st["max_peak_error_hm_px"] <= 1.0 and st["violations_count"] == 0
    # bigger inputs resolve more persons
    small = [report["sizes"][s]["too_small"]["too_small"] for s in ("256", "384", "512")]
    assert small[0] >= small[1] >= small[2]


def test_check_scales_catches_broken_inverse(tmp_path, monkeypatch):
    real = scales_mod.invert_affine

    def off_by_half(m):
        inv = real(m).copy()
        inv[0, 2] += 0.5  # a half-pixel shift that the forward map does not have
        return inv

    monkeypatch.setattr(scales_mod, "invert_affine", off_by_half)
    report = check_scales(ann_file("val"), input_sizes=[256], strides=[4, 2], report_path=tmp_path / "s.json", **SCALES)
    assert report["ok"] is False
    assert any("round trip" in v for v in report["violations"])
    assert report["sizes"]["256"]["roundtrip"]["max_error_px"] == pytest.approx(0.5)


def test_check_scales_catches_shifted_heatmaps(tmp_path, monkeypatch):
    real = scales_mod.render_heatmaps
    monkeypatch.setattr(scales_mod, "render_heatmaps",
                        lambda kp, h, w, s, **kw: np.roll(real(kp, h, w, s, **kw), 2, axis=2))
    report = check_scales(ann_file("val"), input_sizes=[256], strides=[4, 2], report_path=tmp_path / "s.json", **SCALES)
    assert report["ok"] is False
    assert report["sizes"]["256"]["strides"]["4"]["violations_count"] > 0
    assert report["sizes"]["256"]["strides"]["4"]["examples"][0]["error_hm_px"] > 1.0


def test_flip_check_catches_missing_channel_swap():
    kp = np.array([[[10.0 + k, 20.0 + 2 * k, 2.0] for k in range(17)]])

    def no_swap(keypoints, width):
        out = np.asarray(keypoints, dtype=np.float64).copy()
        out[..., 0] = width - out[..., 0]
        return out

    res = flip_check(kp, 64, hflip=no_swap)
    assert res["ok"] is False and res["twice_identity"] is True and res["channels_swap"] is False
    good = flip_check(kp, 64, hflip=hflip_spec)
    assert good["ok"] and good["mirror"] == "width - x"


def test_check_scales_cli_reads_params(tmp_path):
    import yaml

    params = yaml.safe_load(PARAMS_YAML.read_text())
    res = CliRunner().invoke(app, ["check-scales", "--annotations", str(ann_file("val")),
                                   "--report", str(tmp_path / "s.json"), "--params", str(PARAMS_YAML)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s.json").read_text())
    sizes = sorted({s for st in params["train"]["curriculum"] for s in st["sizes"]}
                   | {params["evaluate"]["input_size"]})
    assert report["params"]["input_sizes"] == sizes and f"scale checks passed for sizes {sizes}" in res.stdout
    assert report["params"]["sigma"] == params["targets"]["sigma"]
    assert report["params"]["crop"] == params["augment"]["crop"]
