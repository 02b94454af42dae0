"""Targets, masks, transforms and the curriculum sampler: hand-made COCO annotations and the
generated set, real coco-mini photos where present (`coco_like`)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import yaml
from conftest import REPO

from pose.augment.affine import apply_affine, invert_affine, letterbox_affine
from pose.augment.transforms import augment_sample, build_augmenter, hflip_keypoints, to_canvas
from pose.codec import JOINTS_NAME, MASK_NAMES, OUTPUT_NAMES, Codec, codec_from_params
from pose.datasets.schema import FLIP_INDEX, KEYPOINT_NAMES
from pose.params import AugmentSection
from pose.targets.heatmaps import joint_indices, render_heatmaps
from pose.train.data import CocoKeypoints, CurriculumBatchSampler, curriculum_schedule

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())
#: params.yaml's ``augment`` section, checked (`pose.params.AugmentSection`)
AUGMENT = AugmentSection.model_validate(PARAMS["augment"])

#: the codec of the hand-computed tests: COCO-17, tag_dim 1, sigma 2, project convention, quantised Gaussians
HAND_CODEC = codec_from_params({"num_joints": 17, "tag_dim": 1, "convention": "project"},
                               {"sigma": 2.0, "subpixel": False, "max_people": 30})


def _val(root):
    return root / "annotations" / "person_keypoints_val2017.json", root / "val2017"


def _hand_set(tmp_path):
    """A COCO keypoints file written here with black 640x427 images: image 397133 carries the
    keypoints of COCO val2017 annotations 200887 and 1218137 (copied numbers), image 217285 one
    crowd region (a polygon) and one labelled person."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000000397133.jpg", "000000217285.jpg"):
        cv2.imwrite(str(images / name), np.zeros((427, 640, 3), np.uint8))
    kp_200887 = [433, 94, 2, 434, 90, 2, 0, 0, 0, 443, 98, 2, 0, 0, 0, 420, 128, 2, 474, 133, 2, 396, 162, 2,
                 489, 173, 2, 0, 0, 0, 0, 0, 0, 419, 214, 2, 458, 215, 2, 411, 274, 2, 458, 273, 2, 402, 333, 2,
                 465, 334, 2]
    kp_1218137 = [0] * 51
    kp_1218137[27:30] = [9, 277, 2]
    crowd = [100.0, 50.0, 300.0, 50.0, 300.0, 200.0, 100.0, 200.0]
    data = {
        "images": [{"id": 397133, "file_name": "000000397133.jpg", "width": 640, "height": 427},
                   {"id": 217285, "file_name": "000000217285.jpg", "width": 640, "height": 427}],
        "annotations": [
            {"id": 200887, "image_id": 397133, "category_id": 1, "iscrowd": 0, "num_keypoints": 13,
             "keypoints": kp_200887, "bbox": [388.66, 69.92, 109.41, 277.62], "area": 17376.9, "segmentation": []},
            {"id": 1218137, "image_id": 397133, "category_id": 1, "iscrowd": 0, "num_keypoints": 1,
             "keypoints": kp_1218137, "bbox": [0, 262.81, 62.16, 36.77], "area": 1037.8, "segmentation": []},
            {"id": 1, "image_id": 217285, "category_id": 1, "iscrowd": 1, "num_keypoints": 0, "keypoints": [0] * 51,
             "bbox": [100.0, 50.0, 200.0, 150.0], "area": 30000.0, "segmentation": [crowd]},
            {"id": 2, "image_id": 217285, "category_id": 1, "iscrowd": 0, "num_keypoints": 1,
             "keypoints": [500, 300, 2] + [0] * 48, "bbox": [490, 290, 20, 20], "area": 400.0, "segmentation": []},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    ann = tmp_path / "person_keypoints.json"
    ann.write_text(json.dumps(data))
    return ann, images


def test_targets_match_hand_computed_values(tmp_path):
    ann, images = _hand_set(tmp_path)
    ds = CocoKeypoints(ann, images, codec=HAND_CODEC, augment=None, seed=0, crop="letterbox")
    index = next(i for i, (img, _) in enumerate(ds.records) if img["id"] == 397133)
    sample = ds[(index, 256)]
    assert set(sample) == {"image", *OUTPUT_NAMES, *MASK_NAMES, JOINTS_NAME}
    # Image 397133 is 640x427; letterbox to 256: s = 0.4, ty = (256 - 170.8) / 2 = 42.6.
    # Annotation 200887's nose is at (433, 94) -> input (173.2, 80.2) -> stride 4 (43.3, 20.05) -> pixel (43, 20).
    hm4 = sample["heatmap_4"].numpy()
    assert hm4.shape == (17, 64, 64)
    assert hm4[0, 20, 43] == pytest.approx(1.0)
    assert np.unravel_index(hm4[0].argmax(), hm4[0].shape) == (20, 43)
    # stride 2: (86.6, 40.1) -> pixel (87, 40)
    hm2 = sample["heatmap_2"].numpy()
    assert hm2.shape == (17, 128, 128) and hm2[0, 40, 87] == pytest.approx(1.0)
    # a neighbour one pixel away has exp(-1 / (2 * sigma^2)) with sigma 2
    assert hm4[0, 20, 44] == pytest.approx(np.exp(-1 / 8), rel=1e-5)
    joints = sample["joints"].numpy()
    assert joints.shape == (30, 17, 2)
    # first person (200887), nose: index 0*64*64 + 20*64 + 43
    assert joints[0, 0].tolist() == [20 * 64 + 43, 1]
    # right_eye (index 2) is unlabelled (v=0) -> not used by the tag loss
    assert joints[0, 2, 1] == 0
    # left_ankle (15) at (402, 333) -> input (160.8, 175.8) -> stride 4 (40.2, 43.95) -> (40, 44)
    assert joints[0, 15].tolist() == [15 * 64 * 64 + 44 * 64 + 40, 1]
    # the second person (1218137, one labelled keypoint) is a labelled person too
    assert joints[1, :, 1].sum() == 1 and joints[2:, :, 1].sum() == 0
    # padding rows of the letterbox are supervised (weight 1), no crowd in this image
    assert sample["mask_4"].numpy().min() == 1.0


def test_crowd_regions_are_masked(tmp_path):
    ann, images = _hand_set(tmp_path)
    crowd = next(a for a in json.loads(ann.read_text())["annotations"] if a["iscrowd"])
    ds = CocoKeypoints(ann, images, codec=HAND_CODEC, augment=None, seed=0, crop="letterbox")
    index = next(i for i, (img, _) in enumerate(ds.records) if img["id"] == crowd["image_id"])
    img = ds.records[index][0]
    sample = ds[(index, 256)]
    w4 = sample["mask_4"].numpy()
    m = letterbox_affine(img["width"], img["height"], 256)
    x, y, bw, bh = crowd["bbox"]
    cx, cy = apply_affine(m, np.array([x + bw / 2, y + bh / 2])) / 4
    assert w4[int(cy), int(cx)] == 0, "crowd region must be ignored"
    # the ignored area is the crowd's area scaled to the 1/4 map (a rectangle: to its border pixels)
    scale = (m[0, 0] / 4) ** 2
    assert 0.9 * crowd["area"] * scale < (w4 == 0).sum() < 1.2 * crowd["area"] * scale
    assert 3.5 * (w4 == 0).sum() < (sample["mask_2"].numpy() == 0).sum() < 4.5 * (w4 == 0).sum()  # 4x the pixels at 1/2


def test_codec_encode_is_the_targets_module():
    """Codec.encode = render_heatmaps per stride + joint_indices at the tag stride, names from the codec."""
    rng = np.random.default_rng(0)
    codec = codec_from_params(PARAMS["model"], PARAMS["targets"])
    kp4 = np.concatenate([rng.uniform(-2, 34, (3, 17, 2)), rng.integers(0, 3, (3, 17, 1))], axis=-1)
    kps = [kp4 * [4 / s, 4 / s, 1] for s in codec.strides]
    masks = [np.ones((128 // s, 128 // s), np.float32) for s in codec.strides]
    out = codec.encode(kps, masks, 128)
    assert set(out) == {"heatmap_4", "heatmap_2", "mask_4", "mask_2", "joints"}
    for s, k in zip(codec.strides, kps):
        expected = render_heatmaps(k, 128 // s, 128 // s, codec.sigma, convention=codec.convention,
                                   subpixel=codec.subpixel)
        assert np.array_equal(out[f"heatmap_{s}"], expected)
    assert np.array_equal(out["joints"], joint_indices(kps[0], 32, 32, codec.max_people, convention=codec.convention))
    with pytest.raises(ValueError, match="mask at stride 2"):
        codec.encode(kps, [masks[0], masks[0]], 128)
    with pytest.raises(ValueError, match="targets"):
        codec_from_params(PARAMS["model"], None).encode(kps, masks, 128)
    with pytest.raises(KeyError, match="sigma"):
        codec_from_params(PARAMS["model"], {"subpixel": True, "max_people": 3})
    with pytest.raises(ValueError, match="model.convention"):
        codec_from_params(dict(PARAMS["model"], convention="centre"), None)
    assert codec.pixel_offset == {"project": 0.0, "reference": 0.5}[PARAMS["model"]["convention"]]
    assert codec.flip_index == tuple(FLIP_INDEX) and codec.loss_parts == ("heatmap_4", "heatmap_2", "push", "pull")
    with pytest.raises(ValueError, match="halve"):
        Codec(num_joints=17, tag_dim=1, convention="project", strides=(4, 4), flip_index=tuple(FLIP_INDEX),
              sigma=None, subpixel=None, max_people=None)


def test_hflip_swaps_joints_and_is_an_involution():
    rng = np.random.default_rng(0)
    kp = np.concatenate([rng.uniform(0, 100, (3, 17, 2)), np.full((3, 17, 1), 2.0)], axis=-1)
    once = hflip_keypoints(kp, 120)
    assert np.allclose(hflip_keypoints(once, 120), kp)
    left_wrist, right_wrist = KEYPOINT_NAMES.index("left_wrist"), KEYPOINT_NAMES.index("right_wrist")
    assert once[0, left_wrist, 0] == pytest.approx(119 - kp[0, right_wrist, 0])
    assert all(FLIP_INDEX[FLIP_INDEX[k]] == k for k in range(17))


def test_flip_through_albumentations_matches_mirrored_image():
    img = np.random.default_rng(3).integers(0, 256, (427, 640, 3), dtype=np.uint8)
    kp = np.array([[[433, 94, 2]] * 17], dtype=np.float64)
    out_img, out_kp, _ = augment_sample(img, kp, np.zeros(img.shape[:2], np.uint8), None, True, 0)
    assert np.array_equal(out_img, img[:, ::-1])
    assert out_kp[0, 0, 0] == pytest.approx(640 - 1 - 433)


def test_augmented_keypoints_follow_the_image():
    """A keypoint drawn as a bright dot must stay under its mapped coordinate after augmentation."""
    img = np.zeros((200, 300, 3), np.uint8)
    kp = np.array([[[120.0, 80.0, 2.0]] + [[0, 0, 0]] * 16])
    cv2.circle(img, (120, 80), 3, (255, 255, 255), -1)
    aug = build_augmenter(AUGMENT.model_copy(update={"color_jitter": 0.0}))
    for seed in range(5):
        out_img, out_kp, _ = augment_sample(img, kp, np.zeros((200, 300), np.uint8), aug, False, seed)
        if out_kp[0, 0, 2] == 0:
            continue
        ys, xs = np.nonzero(out_img[..., 0] > 128)
        assert abs(xs.mean() - out_kp[0, 0, 0]) < 1.5 and abs(ys.mean() - out_kp[0, 0, 1]) < 1.5


def test_letterbox_roundtrip_and_canvas():
    m = letterbox_affine(640, 427, 512)
    pts = np.array([[0.0, 0.0], [639.0, 426.0], [433.0, 94.0]])
    back = apply_affine(invert_affine(m), apply_affine(m, pts))
    assert np.abs(back - pts).max() < 1e-9
    img = np.zeros((427, 640, 3), np.uint8)
    canvas, kps, weights, m2 = to_canvas(img, np.array([[[433.0, 94.0, 2.0]] * 17]), np.zeros((427, 640), np.uint8),
                                         512, (4, 2))
    assert canvas.shape == (512, 512, 3) and weights[0].shape == (128, 128) and weights[1].shape == (256, 256)
    assert kps[1][0, 0, :2] == pytest.approx(apply_affine(m2, np.array([433.0, 94.0])) / 2)


def test_curriculum_schedule_variants():
    from pose.params import CurriculumStage

    cur = [CurriculumStage.model_validate(st) for st in
           ({"sizes": [256], "epochs": 2}, {"sizes": [256, 384], "epochs": 1}, {"sizes": [256, 384, 512], "epochs": 1})]
    plan = curriculum_schedule(cur, multi_scale=True, use_curriculum=True)
    assert plan == [[256], [256], [256, 384], [256, 384, 512]]
    assert curriculum_schedule(cur, multi_scale=True, use_curriculum=False) == [[256, 384, 512]] * 4
    assert curriculum_schedule(cur, multi_scale=False, use_curriculum=True) == [[512]] * 4
    with pytest.raises(ValueError, match="multiples of 32"):
        # a stage the schema would refuse (pose.params.input_size_error), built unchecked: the schedule refuses it too
        curriculum_schedule([CurriculumStage.model_construct(sizes=[250], epochs=1)], multi_scale=True,
                            use_curriculum=True)


def test_sampler_one_size_per_batch_deterministic_and_sharded():
    schedule = [[256, 384]] * 3
    s = CurriculumBatchSampler(50, 4, schedule, seed=1, max_batches=0)
    s.set_epoch(1)
    batches = list(s)
    assert len(batches) == 12
    assert all(len({size for _, size in b}) == 1 for b in batches)
    assert {b[0][1] for b in batches} == {256, 384}
    again = CurriculumBatchSampler(50, 4, schedule, seed=1, max_batches=0)
    again.set_epoch(1, start_batch=5)
    assert list(again) == batches[5:]
    r0 = CurriculumBatchSampler(50, 4, schedule, seed=1, max_batches=0, rank=0, world_size=2)
    r1 = CurriculumBatchSampler(50, 4, schedule, seed=1, max_batches=0, rank=1, world_size=2)
    b0, b1 = list(r0), list(r1)
    assert len(b0) == len(b1) == 6
    ids0 = {i for b in b0 for i, _ in b}
    ids1 = {i for b in b1 for i, _ in b}
    assert not ids0 & ids1
    assert [b[0][1] for b in b0] == [b[0][1] for b in b1], "ranks train the same size at the same step"
    capped = CurriculumBatchSampler(50, 4, schedule, seed=1, max_batches=5)  # train.max_steps_per_epoch
    capped.set_epoch(1)
    assert list(capped) == batches[:5]


def test_render_heatmaps_skips_invisible_and_outside():
    kp = np.array([[[10.2, 5.7, 2], [-3, 4, 2], [5, 5, 0], [63.4, 63.4, 1]] + [[0, 0, 0]] * 13], dtype=np.float64)
    hm = render_heatmaps(kp, 64, 64, 2.0, convention="project", subpixel=False)
    assert hm[0, 6, 10] == pytest.approx(1.0)
    assert hm[1].max() == 0 and hm[2].max() == 0
    assert hm[3, 63, 63] == pytest.approx(1.0)
    ji = joint_indices(kp, 64, 64, 2, convention="project")
    assert ji[0, 0].tolist() == [6 * 64 + 10, 1] and ji[0, 1, 1] == 0 and ji[1].sum() == 0


# ----------------------------------------------------------------------------- the reference crop (augment.crop)

REFERENCE_AUGMENT = AugmentSection.model_validate(
    {"crop": "short_side", "max_rotation": 30, "min_scale": 0.75, "max_scale": 1.5, "max_translate": 40,
     "flip_prob": 0.5, "color_jitter": 0.0})  # experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml


def _coco_persons(ann_file, count):
    """(file_name, width, height, keypoints (P, 17, 3)) of the first ``count`` images with labelled persons."""
    data = json.loads(ann_file.read_text())
    by_image = {}
    for a in data["annotations"]:
        if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(np.asarray(a["keypoints"], np.float64).reshape(17, 3))
    out = []
    for img in sorted(data["images"], key=lambda i: i["id"]):
        if img["id"] in by_image:
            out.append((img["file_name"], img["width"], img["height"], np.stack(by_image[img["id"]])))
        if len(out) == count:
            break
    return out


def _fit_affine(canvas_ramp, valid):
    """Least-squares affine (2, 3) input px -> image px read from a warped coordinate ramp: the
    mapping the *pixels* went through (cv2 quantises each pixel's source position to 1/32 px; the
    fit over thousands of pixels averages that out)."""
    ys, xs = np.nonzero(valid)
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, canvas_ramp[ys, xs, :2].astype(np.float64), rcond=None)
    return coef.T


@pytest.mark.parametrize("crop,convention", [("short_side", "project"), ("short_side", "reference"),
                                              ("letterbox", "project"), ("letterbox", "reference")])
def test_crop_keypoints_follow_the_pixels(coco_like, crop, convention):
    """Images and keypoints (real coco-mini where present, else generated) through each training crop
    (random scale, rotation, shift, flip): the keypoints land where the image pixels they sat on went, to < 0.01 px, in
    either coordinate convention (the ramp holds pixel indices). The reference convention maps as the official code,
    input px M p (keypoints treated as pixel indices), and mirrors a flipped sample in its continuous frame (pixel i
    centred at i + 0.5: x -> S - x, one pixel right of the pixel-index mirror S - 1 - x)."""
    from pose.augment.transforms import TrainTransform
    from pose.targets.heatmaps import pixel_offset

    ann, images = _val(coco_like)
    aug = REFERENCE_AUGMENT if crop == "short_side" else AUGMENT.model_copy(update={"crop": "letterbox",
                                                                                     "color_jitter": 0.0})
    from pose.codec import convention_rules

    transform = TrainTransform(crop, aug, convention=convention)
    o = convention_rules(convention).map_offset      # reference: the official M p (o = 0), project: o = 0 too
    mirror = 2.0 * (pixel_offset(convention) - o)    # a flip mirrors x -> S - 1 + 2 pixel_offset - x
    size, strides, checked = 512, (4, 2), 0
    for file_name, width, height, kp in _coco_persons(ann, 4):
        real = cv2.imread(str(images / file_name))
        assert real.shape[:2] == (height, width)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = np.stack([xs, ys, np.ones_like(xs)], axis=-1)  # channel 2: 1 inside the image, 0 in the border
        for seed, flip in [(1, False), (2, True), (3, False), (4, True)]:
            ignore = np.zeros((height, width), np.uint8)
            canvas, kps, weights, m = transform(ramp, kp, ignore, input_size=size, strides=strides, flip=flip,
                                                seed=seed)
            real_canvas, real_kps, _, m_real = transform(real, kp, ignore, input_size=size, strides=strides, flip=flip,
                                                         seed=seed)
            assert np.array_equal(m, m_real) and real_canvas.shape == (size, size, 3)  # same draw for any image
            assert all(np.array_equal(a, b) for a, b in zip(kps, real_kps))
            assert [w.shape for w in weights] == [(128, 128), (256, 256)]
            inside = cv2.erode((canvas[..., 2] > 0.999).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            fitted = _fit_affine(canvas, inside)  # input pixel index -> image pixel index, as the pixels moved
            src = kp[:, list(FLIP_INDEX)] if flip else kp  # output channel k came from joint FLIP_INDEX[k]
            for stride, k in zip(strides, kps):
                vis = k[..., 2] > 0
                # the mirror's extra pixel: in image px before the letterbox (times its scale), in input px after
                # the short-side crop
                shift = mirror * flip * (m[0, 0] if crop == "letterbox" else 1.0)
                back = apply_affine(fitted, k[..., :2][vis] * stride - [shift, 0.0] - o) + o
                err = np.abs(back - src[..., :2][vis])
                assert err.max() < 0.01, (file_name, seed, flip, stride, err.max())
                checked += int(vis.sum())
            if crop == "short_side":  # joints cut off by the crop are marked unusable
                mapped = apply_affine(m, src[..., :2] - o)
                out = (mapped < 0).any(-1) | (mapped > size - 1).any(-1)
                assert not (kps[0][..., 2][out] > 0).any()
    assert checked > 100


def test_short_side_crop_draws_the_reference_ranges():
    from pose.augment.affine import short_side_crop_affine
    from pose.augment.transforms import draw_short_side_crop

    w, h, size = 640, 427, 512
    sides, angles, shifts = [], [], []
    for seed in range(300):
        m = draw_short_side_crop(np.random.default_rng(seed), REFERENCE_AUGMENT, w, h, size)
        scale = np.sqrt(abs(np.linalg.det(m[:, :2])))  # input px per image px
        side = size / scale  # crop side, image px
        sides.append(side / min(w, h))
        angles.append(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
        centre = apply_affine(invert_affine(m), np.array([size / 2, size / 2]))  # image px under the canvas centre
        shifts.append((centre - [w / 2, h / 2]) / (side / 200))  # in the reference's 1/200-of-crop units
    sides, angles, shifts = np.array(sides), np.array(angles), np.array(shifts)
    assert 0.75 <= sides.min() < 0.8 and 1.45 < sides.max() <= 1.5
    assert -30 <= angles.min() < -25 and 25 < angles.max() <= 30
    assert np.abs(shifts).max() <= 40 + 1e-9 and np.abs(shifts).max() > 35
    # deterministic centre crop: the middle min(W, H) square fills the canvas
    m0 = short_side_crop_affine(w, h, size)
    corners = apply_affine(m0, np.array([[w / 2 - h / 2, 0.0], [w / 2 + h / 2, float(h)]]))
    assert np.abs(corners - [[0, 0], [size, size]]).max() < 1e-9
    # positive rotation turns the content counter-clockwise on screen: a point right of centre moves up
    right = apply_affine(short_side_crop_affine(w, h, size, rotation=30), np.array([w / 2 + 50, h / 2]))
    assert right[1] < size / 2


def test_train_transform_letterbox_is_the_previous_pipeline(coco_like):
    from pose.augment.transforms import TrainTransform

    ann, images = _val(coco_like)
    file_name, width, height, kp = _coco_persons(ann, 1)[0]
    img = cv2.imread(str(images / file_name))
    ignore = np.zeros((height, width), np.uint8)
    ignore[:20] = 1
    aug = AUGMENT.model_copy(update={"crop": "letterbox"})
    new = TrainTransform("letterbox", aug, convention="project")(img, kp, ignore, input_size=256, strides=(4, 2),
                                                                 flip=True, seed=11)
    a, k, i = augment_sample(img, kp, ignore, build_augmenter(aug), True, 11)
    old = to_canvas(a, k, i, 256, (4, 2))
    assert np.array_equal(new[0], old[0]) and np.array_equal(new[3], old[3])
    assert all(np.array_equal(x, y) for x, y in zip(new[1] + new[2], old[1] + old[2]))


def test_crop_param_errors():
    from pose.augment.transforms import TrainTransform, crop_affine

    with pytest.raises(ValueError, match="augment.crop"):
        TrainTransform("centre", REFERENCE_AUGMENT, convention="project")
    with pytest.raises(ValueError, match="model.convention"):
        TrainTransform("short_side", REFERENCE_AUGMENT, convention="centre")
    with pytest.raises(ValueError, match="augment.crop"):
        crop_affine("long_side", 640, 480, 512)
    with pytest.raises(ValueError, match="TrainTransform"):
        build_augmenter(REFERENCE_AUGMENT)  # the letterbox warp must not run silently for short_side
    with pytest.raises(ValueError, match="min_scale"):
        TrainTransform("short_side", REFERENCE_AUGMENT.model_copy(update={"min_scale": 2.0}), convention="project")(
            np.zeros((64, 64, 3), np.uint8), np.zeros((0, 17, 3)), np.zeros((64, 64), np.uint8),
            input_size=64, strides=(4,), flip=False, seed=0)


def test_check_scales_follows_the_active_crop(coco_like, tmp_path):
    from pose.quality.scales import check_scales

    ann, _ = _val(coco_like)
    common = dict(input_sizes=[512], strides=[4, 2], sigma=2.0, max_roundtrip_error=0.01, max_peak_error=1.0,
                  min_torso_heatmap_px=4)
    box = check_scales(ann, report_path=tmp_path / "l.json", crop="letterbox", **common)
    short = check_scales(ann, report_path=tmp_path / "s.json", crop="short_side", **common)
    assert box["ok"] and short["ok"], short["violations"]
    assert short["params"]["crop"] == "short_side"
    b, s = box["sizes"]["512"], short["sizes"]["512"]
    assert s["roundtrip"]["max_error_px"] < 1e-6
    assert b["canvas"]["lost_to_cropping"] == 0 < s["canvas"]["lost_to_cropping"]  # the long side is cut
    # persons are larger with the short side at 512 (4:3 images: x 4/3)
    assert s["too_small"]["median_torso_heatmap_px"] > 1.2 * b["too_small"]["median_torso_heatmap_px"]
    with pytest.raises(ValueError, match="augment.crop"):
        check_scales(ann, report_path=tmp_path / "x.json", crop="square", **common)


def test_check_scales_follows_the_coordinate_convention(coco_like, tmp_path):
    """Peaks are compared in the convention targets are rendered in: sub-pixel targets in either
    convention peak within half a heatmap pixel (per axis) of the keypoint."""
    from pose.quality.scales import check_scales

    ann, _ = _val(coco_like)
    common = dict(input_sizes=[256], strides=[4, 2], sigma=2.0, max_roundtrip_error=0.01, max_peak_error=0.75,
                  min_torso_heatmap_px=4, crop="letterbox")
    worst = {}
    for convention in ("project", "reference"):
        rep = check_scales(ann, report_path=tmp_path / f"{convention}.json", convention=convention, subpixel=True,
                           **common)
        assert rep["ok"], rep["violations"]
        assert rep["sizes"]["256"]["roundtrip"]["max_error_px"] < 1e-6
        worst[convention] = max(rep["sizes"]["256"]["strides"][s]["max_peak_error_hm_px"] for s in ("4", "2"))
        assert rep["sizes"]["256"]["strides"]["4"]["checked"] > 100
    assert max(worst.values()) <= 0.5 * np.sqrt(2) + 1e-6
