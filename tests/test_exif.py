"""EXIF orientation follows the annotations (issue 21, item 4): COCO-format annotations are made
in the stored pixel frame, so training, validation, evaluation and check-scales read dataset
images without turning them (catalogue ``exif_orientation: ignore``, the official code's
``IMREAD_IGNORE_ORIENTATION``), while ``pose predict`` and serving turn a user's photo as a
viewer shows it; ``pose validate`` names every image whose tag would change the frame.

The images are generated JPEGs carrying each EXIF orientation 1-8 (Pillow writes the tag; the
pixels are stored unturned): a white block in the stored top-left corner and one annotated
person whose keypoints sit on it in the stored frame."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pose.datasets.schema import NUM_JOINTS
from pose.io import dataset_exif, read_image

W, H = 96, 64
BLOCK = (slice(0, 16), slice(0, 24))    # rows, columns of the white block in the stored frame


def _stored() -> np.ndarray:
    img = np.full((H, W, 3), 40, np.uint8)
    img[BLOCK] = 255
    return img


def _turned(img: np.ndarray, tag: int) -> np.ndarray:
    """What a viewer shows for EXIF orientation ``tag`` (TIFF 6.0 / EXIF 2.3 definition)."""
    ops = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
           7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: np.rot90(a, 1)}
    return np.ascontiguousarray(ops[tag](img))


@pytest.fixture(scope="module")
def exif_set(tmp_path_factory) -> Path:
    """A COCO set of 8 images, image id k carrying EXIF orientation k, annotated in the stored frame."""
    root = tmp_path_factory.mktemp("exif")
    (root / "images").mkdir()
    images, anns = [], []
    for k in range(1, 9):
        ex = Image.Exif()
        ex[0x0112] = k
        Image.fromarray(_stored()[:, :, ::-1]).save(root / "images" / f"{k:012d}.jpg", exif=ex.tobytes(), quality=95)
        images.append({"id": k, "file_name": f"{k:012d}.jpg", "width": W, "height": H})
        kp = np.zeros((NUM_JOINTS, 3))
        kp[:, 0] = np.linspace(4, 20, NUM_JOINTS)        # every joint on the block (x < 24, y < 16)
        kp[:, 1] = np.linspace(3, 12, NUM_JOINTS)
        kp[:, 2] = 2
        anns.append({"id": k, "image_id": k, "category_id": 1, "iscrowd": 0, "num_keypoints": NUM_JOINTS,
                     "keypoints": kp.reshape(-1).round(2).tolist(), "bbox": [4.0, 3.0, 16.0, 9.0], "area": 144.0})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person",
                            "keypoints": [f"k{i}" for i in range(NUM_JOINTS)], "skeleton": []}]}
    (root / "ann.json").write_text(json.dumps(coco))
    return root


def test_read_image_ignores_or_applies_each_orientation(exif_set):
    stored = _stored()
    for k in range(1, 9):
        path = exif_set / "images" / f"{k:012d}.jpg"
        kept = read_image(path, k, exif="ignore")
        assert kept.shape == (H, W, 3)
        assert np.abs(kept.astype(int) - stored).max() < 20          # JPEG noise only
        turned = read_image(path, k, exif="apply")                   # a user's photo (pose predict)
        assert turned.shape == _turned(stored, k).shape
        assert np.abs(turned.astype(int) - _turned(stored, k)).max() < 20, k
        assert np.array_equal(read_image(path, k), turned)           # `pose predict` reads with the default
        if k in (5, 6, 7, 8):
            assert turned.shape == (W, H, 3)
    with pytest.raises(ValueError, match="exif orientation mode"):
        read_image(exif_set / "images" / "000000000001.jpg", 1, exif="rotate")


def test_serving_applies_the_orientation_of_a_users_photo(exif_set):
    from pose.serving.requests import decode_image

    for k in (1, 3, 6, 8):
        data = (exif_set / "images" / f"{k:012d}.jpg").read_bytes()
        image = decode_image(data, max_pixels=10 ** 6)
        assert np.abs(image.astype(int) - _turned(_stored(), k)).max() < 20


def test_dataset_setting_comes_from_the_annotations_and_the_catalogue():
    from pose.datasets.catalogue import exif_orientation

    assert dataset_exif({"images": []}) == "ignore"                  # COCO-format: the stored frame
    assert dataset_exif({"info": {"exif_orientation": "apply"}}) == "apply"
    with pytest.raises(ValueError, match="x.json: info.exif_orientation"):
        dataset_exif({"info": {"exif_orientation": "turn"}}, "x.json")
    for kind in ("coco", "generated", "crowdpose", "aic", "mpii", "posetrack"):
        assert exif_orientation({"kind": kind}) == "ignore"
    assert exif_orientation({"kind": "coco", "exif_orientation": "apply"}) == "apply"


@pytest.mark.parametrize("mode", ["ignore", "apply"])
def test_validate_flags_every_turning_orientation_by_image_id(exif_set, tmp_path, mode):
    from pose.quality.validate import validate_dataset

    report = validate_dataset(exif_set / "ann.json", exif_set / "images", on_error="fail", bbox_tolerance=1.0,
                              min_labeled_keypoints=3, lr_swap_min_shoulder_reversal=0.2, workers=1,
                              report_path=tmp_path / "r.json", docs_dir=None, cache_path=None,
                              cleaned_path=tmp_path / "clean.json", exif_orientation=mode)
    flagged = {f["image_id"]: f for f in report["findings"] if f["check"] == "image_exif_orientation"}
    assert sorted(flagged) == [2, 3, 4, 5, 6, 7, 8]
    assert all(f["severity"] == "warning" and f"image {k}: EXIF orientation {k}" in f["message"]
               for k, f in flagged.items())
    sizes = sorted(f["image_id"] for f in report["findings"] if f["check"] == "image_size_matches")
    if mode == "ignore":     # the declared 96 x 64 is the stored frame: valid, the file passes through unchanged
        assert report["ok"] and sizes == []
        assert (tmp_path / "clean.json").read_bytes() == (exif_set / "ann.json").read_bytes()
    else:                    # turned 90 degrees, 5-8 decode to 64 x 96: the declared frame no longer fits
        assert not report["ok"] and sizes == [5, 6, 7, 8]


def test_training_and_evaluation_read_the_stored_frame(exif_set, tmp_path):
    """The training sample (CocoKeypoints) and the evaluation / validation input (predict_dataset,
    Validator) of every image are those of the stored pixels, whatever the EXIF tag; with the
    catalogue set to ``apply`` (the cleaned file's info) they are turned."""
    from pose.codec import codec_from_params
    from pose.decode.inference import predict_dataset
    from pose.train.data import CocoKeypoints
    from pose.train.validation import Validator

    codec = codec_from_params({"num_joints": NUM_JOINTS, "tag_dim": 1, "convention": "reference"},
                              {"sigma": 2.0, "subpixel": True, "max_people": 30})
    ds = CocoKeypoints(exif_set / "ann.json", exif_set / "images", codec=codec, augment=None, seed=0,
                       crop="letterbox")
    first = ds[(0, 96)]["image"]
    for i in range(8):
        sample = ds[(i, 96)]
        assert torch.allclose(sample["image"], first, atol=0.5)      # the same stored pixels (JPEG noise)
        hm = sample["heatmap_4"][0]
        y, x = divmod(int(hm.argmax()), hm.shape[1])
        assert x * 4 < 24 and y * 4 < 16 + 16                        # the nose target on the block (+16: letterbox pad)

    class Recorder(torch.nn.Module):
        """Empty maps for any input: the decoded persons do not matter, the image read does."""
        convention, num_joints, tag_dim = "reference", NUM_JOINTS, 1

        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            b, _, h, w = x.shape
            return [torch.zeros(b, 2 * NUM_JOINTS, h // 4, w // 4), torch.zeros(b, NUM_JOINTS, h // 2, w // 2)]

    from conftest import sections

    from pose.params import load_params

    ev = sections(load_params(Path(__file__).resolve().parents[1] / "params.yaml")).evaluate.model_copy(update={
        "input_size": 96, "resize": "short_side", "flip_test": False, "test_scales": [1.0],
        "detection_threshold": 0.1, "tag_threshold": 1.0, "max_people": 30, "nms_kernel": 5, "tie_break": False,
        "project2image": False, "adjust": True, "refine": True, "nms_oks": 1.0, "oks_threshold": 0.5})
    shapes = []
    orig = cv2.warpAffine

    def spy(img, m, size, *a, **k):
        shapes.append(img.shape[:2])
        return orig(img, m, size, *a, **k)

    cv2.warpAffine = spy
    try:
        predict_dataset(Recorder(), exif_set / "ann.json", exif_set / "images", ev)
        assert shapes == [(H, W)] * 8                                # every image in the stored 64 x 96 frame
        shapes.clear()
        Validator(exif_set / "ann.json", exif_set / "images", max_images=0, eval_params=ev).run(Recorder())
        assert shapes == [(H, W)] * 8
        shapes.clear()
        applied = json.loads((exif_set / "ann.json").read_text())
        applied["info"] = {"exif_orientation": "apply"}
        (tmp_path / "apply.json").write_text(json.dumps(applied))
        predict_dataset(Recorder(), tmp_path / "apply.json", exif_set / "images", ev)
        assert shapes == [(H, W)] * 4 + [(W, H)] * 4                # 5-8 turned by 90 degrees
    finally:
        cv2.warpAffine = orig
