"""Geometric checks of the evaluation/training transform on real annotations.

For every network input size (params ``train.curriculum`` sizes) and every heatmap
resolution (stride 4: the 1/4 head, stride 2: HigherHRNet's 1/2 head), on all
labeled keypoints (COCO ``v > 0``) of the non-crowd persons of a COCO file, with the
deterministic image px -> input px affine of the active training crop (params
``augment.crop``, `pose.augment.transforms.crop_affine`: the letterbox, or the centre
square of the short side for ``short_side``):

1. **Round trip**: image px -> input px with that affine and back with `invert_affine`;
   the largest error (px) must stay below ``max_roundtrip_error``.
2. **Canvas**: with ``letterbox`` every *visible* keypoint (v = 2) lands inside the square
   canvas ``[0, size]^2`` (a violation otherwise); labeled keypoints outside are counted as
   "lost to cropping". With ``short_side`` the longer side is cut by design (the random
   crop shifts over it during training), so keypoints outside the centre square are only
   counted.
3. **Heatmap peaks**: for up to ``max_peak_images`` images (a seeded sample),
   `pose.targets.heatmaps.render_heatmaps` of the mapped keypoints (input px /
   stride) is rendered and, for each *isolated* joint, the argmax of its channel
   inside a ``(2w+1)^2`` window (``w = ceil(max_peak_error) + 1``) around the joint
   must lie within ``max_peak_error`` heatmap px of the continuous mapped keypoint.
   A joint is *not isolated*, and skipped, when a same-type joint of another
   person lies closer than ``max(2 sigma, sqrt(2) (w + 1))`` heatmap px: then the
   other person's peak may sit in the window (their Gaussians overlap within
   2 sigma). Joints that `render_heatmaps` drops because their rounded position
   falls outside the heatmap (a keypoint within half a heatmap pixel of the right
   or bottom border) are counted as ``dropped_by_rounding``, not checked.
4. **Flip**: `FLIP_INDEX` is an involution mapping ``left_*`` <-> ``right_*`` names
   (centre joints to themselves); `hflip_keypoints` (``pose.augment.transforms``)
   applied twice is the identity, and once moves joint k to channel
   ``FLIP_INDEX[k]`` mirroring x about a fixed axis: ``x' = width - x``
   (continuous) or ``x' = width - 1 - x`` (pixel index) — the one found is reported
   (`pose.quality.flip`).

Per size it also reports persons too small to resolve (torso = mean of the
left and right shoulder-to-hip distances, in heatmap px at stride 4, below
``min_torso_heatmap_px``), keypoints lost to cropping and a histogram of person
heights (bbox height, input px). ``ok`` is False on any violation of 1-4.

Source of the keypoint format: COCO data format spec (cocodataset.org/#format-data).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from pose.augment.affine import apply_affine, invert_affine
from pose.augment.transforms import CROPS, crop_affine
from pose.codec import convention_rules
from pose.datasets.schema import KEYPOINT_NAMES, NUM_JOINTS
from pose.io import atomic_write_bytes
from pose.quality.findings import json_bytes, py_value
from pose.quality.flip import flip_check
from pose.quality.tables import LEFT_HIP, LEFT_SHOULDER, RIGHT_HIP, RIGHT_SHOULDER, load_tables
from pose.targets.heatmaps import peak_pixel, pixel_offset, render_heatmaps

#: Person-height histogram edges, input px (last bin open-ended).
HEIGHT_BIN_EDGES = (0, 8, 16, 32, 64, 128, 256, 512, 1024)
#: Stride at which the torso size is measured (the 1/4 head).
TORSO_STRIDE = 4


def _torso(kp: np.ndarray) -> np.ndarray:
    """(P,) mean of the labeled shoulder-to-hip distances (px of ``kp``); NaN when neither side is labeled."""
    v = kp[..., 2] > 0
    d = []
    for s, h in ((LEFT_SHOULDER, LEFT_HIP), (RIGHT_SHOULDER, RIGHT_HIP)):
        dist = np.hypot(kp[:, s, 0] - kp[:, h, 0], kp[:, s, 1] - kp[:, h, 1])
        d.append(np.where(v[:, s] & v[:, h], dist, np.nan))
    d = np.stack(d, axis=1)
    cnt = np.sum(~np.isnan(d), axis=1)
    return np.where(cnt > 0, np.nansum(d, axis=1) / np.maximum(cnt, 1), np.nan)


def _map_grouped(fn_mats: np.ndarray, order: np.ndarray, bounds: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply affine ``fn_mats[g]`` (G, 2, 3) to the rows of ``xy`` (P, K, 2) of group g,
    with ``order``/``bounds`` from a sort of the group index (contiguous slices)."""
    out = np.empty_like(xy)
    for g in range(len(fn_mats)):
        sl = order[bounds[g]:bounds[g + 1]]
        if len(sl):
            out[sl] = apply_affine(fn_mats[g], xy[sl])
    return out


def _peak_check(kp_hm: np.ndarray, person_image: np.ndarray, sample_images: np.ndarray, image_codes: np.ndarray,
                hm_size: int, sigma: float, max_peak_error: float, convention: str = "project",
                subpixel: bool = False) -> dict:
    """Heatmap peak check over the persons of the sampled images (see module docstring)."""
    w = int(math.ceil(max_peak_error)) + 1
    iso = max(2.0 * sigma, math.sqrt(2.0) * (w + 1))
    offs = np.arange(-w, w + 1)
    checked = skipped = dropped = n_bad = outside_map = 0
    worst = 0.0
    bad: list[dict] = []
    order = np.argsort(person_image, kind="stable")
    sorted_img = person_image[order]
    starts = np.searchsorted(sorted_img, sample_images, side="left")
    ends = np.searchsorted(sorted_img, sample_images, side="right")
    for img, a, b in zip(image_codes[sample_images], starts, ends):
        if a == b:
            continue
        idx = order[a:b]
        kp = kp_hm[idx]  # (P, K, 3)
        heat = render_heatmaps(kp, hm_size, hm_size, sigma, convention=convention, subpixel=subpixel)
        lab = kp[..., 2] > 0
        rx, ry = peak_pixel(kp[..., 0], convention), peak_pixel(kp[..., 1], convention)
        inside = lab & (rx >= 0) & (ry >= 0) & (rx < hm_size) & (ry < hm_size)
        # reference convention: a keypoint just left of / above the map (-1 < x < 0) truncates to
        # pixel 0 and is rendered there, as the reference's int() does; its peak is up to 1.5 px
        # away by construction, so it is counted, not checked
        beyond = inside & ((kp[..., 0] < 0) | (kp[..., 1] < 0))
        outside_map += int(beyond.sum())
        inside &= ~beyond
        dropped += int(np.sum(lab & ~inside & (kp[..., 0] >= 0) & (kp[..., 1] >= 0)
                              & (kp[..., 0] <= hm_size) & (kp[..., 1] <= hm_size)))
        # isolation: distance to the nearest same-type joint of another person
        dx = kp[:, None, :, 0] - kp[None, :, :, 0]
        dy = kp[:, None, :, 1] - kp[None, :, :, 1]
        dist = np.hypot(dx, dy)  # (P, P, K)
        both = inside[:, None, :] & inside[None, :, :]
        ar = np.arange(len(idx))
        dist[ar, ar, :] = np.inf
        dist = np.where(both, dist, np.inf)
        isolated = inside & (dist.min(axis=1) >= iso) if len(idx) > 1 else inside
        skipped += int(np.sum(inside & ~isolated))
        pi, ki = np.nonzero(isolated)
        if len(pi) == 0:
            continue
        cx, cy = rx[pi, ki].astype(np.int64), ry[pi, ki].astype(np.int64)
        pad = np.pad(heat, ((0, 0), (w, w), (w, w)), constant_values=-1.0)
        win = pad[ki[:, None, None], cy[:, None, None] + w + offs[None, :, None],
                  cx[:, None, None] + w + offs[None, None, :]]
        flat = win.reshape(len(pi), -1).argmax(axis=1)
        py = cy + flat // (2 * w + 1) - w
        px = cx + flat % (2 * w + 1) - w
        off = pixel_offset(convention)  # the centre of pixel index i lies at i + off
        err = np.hypot(px + off - kp[pi, ki, 0], py + off - kp[pi, ki, 1])
        checked += len(pi)
        worst = max(worst, float(err.max()))
        over = np.flatnonzero(err > max_peak_error)
        n_bad += len(over)
        for j in over[: max(0, 20 - len(bad))]:
            bad.append({"image_id": py_value(img), "person": int(idx[pi[j]]), "joint": KEYPOINT_NAMES[int(ki[j])],
                        "error_hm_px": float(err[j])})
    return {"checked": checked, "skipped_not_isolated": skipped, "dropped_by_rounding": dropped,
            "skipped_truncated_into_map": outside_map,
            "max_peak_error_hm_px": round(worst, 6), "isolation_radius_hm_px": round(iso, 4),
            "window_radius_hm_px": w, "examples": bad,
            "violations_count": n_bad}


def check_scales(annotations: Path, *, input_sizes: list[int], strides: list[int] = (4, 2), sigma: float,
                 max_roundtrip_error: float, max_peak_error: float, min_torso_heatmap_px: float,
                 report_path: Path, max_peak_images: int = 256, seed: int = 0, crop: str = "letterbox",
                 convention: str = "project", subpixel: bool = False) -> dict:
    """Scale/geometry checks of the crop -> heatmap mapping on a COCO file.

    Args:
        annotations: COCO keypoint JSON (validated first, e.g. the cleaned file).
        input_sizes: square network input sizes, px (params ``train.curriculum``).
        strides: heatmap strides (4: 1/4 head, 2: 1/2 head).
        sigma: Gaussian sigma of the targets, heatmap px (params ``targets.sigma``).
        max_roundtrip_error: px (image), bound on image -> input -> image error.
        max_peak_error: heatmap px, bound on |argmax - mapped keypoint|.
        min_torso_heatmap_px: heatmap px at stride 4; smaller persons are reported.
        report_path: JSON report, written atomically.
        max_peak_images: images sampled (seeded) for the heatmap peak check per
            size and stride; all when the file has fewer.
        seed: sampling seed.
        crop: params ``augment.crop`` (``letterbox`` | ``short_side``); `pose check-scales`
            passes the params value (the default is the crop of callers written before
            ``augment.crop`` existed).
        convention, subpixel: params ``model.convention`` / ``targets.subpixel``: keypoints are
            mapped, rendered and compared to the peak exactly as training does
            (`pose.augment.transforms.TrainTransform`: input px ``M (p - o) + o``, or ``M p``
            with the ``raw`` keypoint mapping of ``reference`` (`pose.codec.Convention`), pixel
            index ``i`` centred at ``i + o``); `pose check-scales` passes the params values.

    Returns:
        The report dict: ``ok`` bool, ``violations`` (list of str), ``persons``,
        ``images``, ``flip`` (see `flip_check`) and ``sizes`` keyed by str(size) with
        ``roundtrip`` (max error px), ``canvas`` (``labeled``, ``lost_to_cropping``,
        ``visible_outside``), ``strides`` keyed by str(stride) (peak-check numbers),
        ``too_small`` and ``height_histogram`` ({edges, counts}).

    Raises:
        pose.quality.tables.AnnotationFileError: unreadable annotation file.
        ValueError: empty ``input_sizes``/``strides``, non-positive values, unknown ``crop``.
    """
    t0 = time.perf_counter()
    if crop not in CROPS:
        raise ValueError(f"params augment.crop: unknown crop {crop!r} ({' | '.join(CROPS)})")
    if not input_sizes or not strides:
        raise ValueError("input_sizes and strides must be non-empty")
    if any(int(s) <= 0 for s in list(input_sizes) + list(strides)) or sigma <= 0:
        raise ValueError("input sizes, strides and sigma must be positive")
    tables = load_tables(Path(annotations), keypoints_table=False)
    ann = tables.annotations
    person = ((ann["iscrowd"].to_numpy() == 0) & (ann["keypoints_len"].to_numpy() == 3 * NUM_JOINTS)
              & ann["image_found"].to_numpy() & (ann["n_labeled"].to_numpy() > 0)
              & (ann["img_width"].to_numpy() > 0) & (ann["img_height"].to_numpy() > 0))
    rows = np.flatnonzero(person)
    kp = tables.keypoint_array[rows]  # (P, K, 3) image px
    kp = np.where(np.isnan(kp), 0.0, kp)
    img_w = ann["img_width"].to_numpy()[rows].astype(np.int64)
    img_h = ann["img_height"].to_numpy()[rows].astype(np.int64)
    bbox_h = ann["bbox_h"].to_numpy()[rows]
    image_ids = ann["image_id"].to_numpy()[rows]
    img_codes, img_index = (np.unique(image_ids, return_inverse=True) if len(rows)
                            else (np.zeros(0), np.zeros(0, np.int64)))
    img_index = np.asarray(img_index, dtype=np.int64).reshape(-1)
    rng = np.random.default_rng(seed)
    n_img = len(img_codes)
    sample = (np.arange(n_img) if n_img <= max_peak_images
              else np.sort(rng.choice(n_img, size=max_peak_images, replace=False)))

    sizes_wh = np.stack([img_w, img_h], axis=1) if len(rows) else np.zeros((0, 2), np.int64)
    uniq_wh, group = (np.unique(sizes_wh, axis=0, return_inverse=True) if len(rows)
                      else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64)))
    group = np.asarray(group, dtype=np.int64).reshape(-1)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(uniq_wh) + 1))
    lab = kp[..., 2] > 0
    vis = kp[..., 2] == 2
    xy = kp[..., :2]
    torso_img = _torso(kp)

    violations: list[str] = []
    report_sizes: dict[str, Any] = {}
    flip_result = None
    for size in [int(s) for s in input_sizes]:
        mats = (np.stack([crop_affine(crop, int(w), int(h), size) for w, h in uniq_wh]) if len(uniq_wh)
                else np.zeros((0, 2, 3)))
        invs = np.stack([invert_affine(m) for m in mats]) if len(mats) else np.zeros((0, 2, 3))
        o = convention_rules(convention).map_offset  # raw mapping (reference): M p; centred: M (p - o) + o
        mapped = _map_grouped(mats, order, bounds, xy - o) + o
        back = _map_grouped(invs, order, bounds, mapped - o) + o
        err = np.hypot(*(back - xy).transpose(2, 0, 1))
        max_rt = float(err[lab].max()) if lab.any() else 0.0
        entry: dict[str, Any] = {"roundtrip": {"keypoints": int(lab.sum()), "max_error_px": max_rt,
                                               "limit_px": float(max_roundtrip_error)}}
        if not max_rt < max_roundtrip_error:
            violations.append(f"size {size}: image->input->image round trip error {max_rt:.4g} px "
                              f">= max_roundtrip_error {max_roundtrip_error}")
        # pixel-index coordinates (OpenCV's), as the training transform crops; pixel 0 covers
        # [-0.5, 0.5], so a keypoint on the image's first half pixel (reference convention) stays in
        idx = mapped - o
        inside = ((idx[..., 0] >= -0.5) & (idx[..., 0] <= size) & (idx[..., 1] >= -0.5)
                  & (idx[..., 1] <= size))
        lost = int(np.sum(lab & ~inside))
        vis_out = int(np.sum(vis & ~inside))
        entry["canvas"] = {"labeled": int(lab.sum()), "lost_to_cropping": lost, "visible_outside": vis_out}
        if vis_out and crop == "letterbox":
            violations.append(f"size {size}: {vis_out} visible keypoints fall outside the {size}x{size} canvas")
        scale = mats[group, 0, 0] if len(rows) else np.zeros(0)
        kp_in = np.concatenate([mapped, kp[..., 2:3]], axis=-1)
        strides_out: dict[str, Any] = {}
        for stride in [int(s) for s in strides]:
            if size % stride:
                violations.append(f"size {size} is not divisible by stride {stride}")
                strides_out[str(stride)] = {"error": "size not divisible by stride"}
                continue
            hm = size // stride
            kp_hm = kp_in.copy()
            kp_hm[..., :2] /= stride
            res = _peak_check(kp_hm, img_index, sample, img_codes, hm, float(sigma), float(max_peak_error),
                              convention=convention, subpixel=subpixel)
            res["heatmap_size"] = hm
            res["images_sampled"] = int(len(sample))
            if res["violations_count"]:
                violations.append(f"size {size} stride {stride}: {res['violations_count']} heatmap peaks farther than "
                                  f"{max_peak_error} hm px from the mapped keypoint (max "
                                  f"{res['max_peak_error_hm_px']:.3g})")
            strides_out[str(stride)] = res
        entry["strides"] = strides_out
        torso_hm = torso_img * scale / TORSO_STRIDE
        known = ~np.isnan(torso_hm)
        small = known & (torso_hm < min_torso_heatmap_px)
        entry["too_small"] = {"persons": int(len(rows)), "torso_known": int(known.sum()),
                              "too_small": int(small.sum()),
                              "fraction_of_known": round(float(small.sum() / known.sum()), 6) if known.any() else None,
                              "min_torso_heatmap_px": float(min_torso_heatmap_px), "stride": TORSO_STRIDE,
                              "median_torso_heatmap_px": (round(float(np.median(torso_hm[known])), 4)
                                                          if known.any() else None)}
        height_in = bbox_h * scale
        edges = list(HEIGHT_BIN_EDGES) + [np.inf]
        counts, _ = np.histogram(height_in[np.isfinite(height_in)], bins=edges)
        entry["height_histogram"] = {"unit": "input px (bbox height)", "edges": list(HEIGHT_BIN_EDGES) + ["inf"],
                                     "counts": counts.astype(int).tolist()}
        fr = flip_check(kp_in, size)
        flip_result = flip_result or fr
        entry["flip_ok"] = fr["ok"]
        if not fr["ok"]:
            violations.extend(f"size {size}: {v}" for v in fr["violations"])
        report_sizes[str(size)] = entry

    report = {
        "ok": not violations, "violations": violations, "annotations": str(annotations),
        "params": {"crop": crop, "input_sizes": [int(s) for s in input_sizes], "strides": [int(s) for s in strides],
                   "sigma": float(sigma), "max_roundtrip_error": float(max_roundtrip_error),
                   "max_peak_error": float(max_peak_error), "min_torso_heatmap_px": float(min_torso_heatmap_px),
                   "max_peak_images": int(max_peak_images), "seed": int(seed)},
        "persons": int(len(rows)), "images": int(n_img), "labeled_keypoints": int(lab.sum()),
        "flip": flip_result, "sizes": report_sizes,
        "timings_s": {"total": round(time.perf_counter() - t0, 3)},
    }
    # wall-clock timings are returned, not written: equal data gives a byte-identical report
    atomic_write_bytes(Path(report_path), json_bytes({k: v for k, v in report.items() if k != "timings_s"}))
    return report
