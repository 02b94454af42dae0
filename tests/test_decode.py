"""Decoding: NMS/top-k, associative-embedding grouping, output aggregation (flip and
multi-scale test), inference on images, and an oracle run on real COCO annotations."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pose.augment.affine import apply_affine, letterbox_affine
from pose.codec import convention_rules
from pose.datasets.schema import COCO_SIGMAS, FLIP_INDEX, NUM_JOINTS
from pose.decode.group import default_joint_order, group_keypoints, max_pool_nms, oks_nms, top_k_peaks
from pose.decode.inference import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    aggregate_outputs,
    heatmap_to_image,
    input_geometry,
    model_convention,
    multi_scale_maps,
    predict_dataset,
    predict_image,
    resize_maps,
    short_side_geometry,
    to_coco_results,
    to_input_tensor,
    unflip_maps,
)
from pose.evaluate.coco import evaluate_results
from pose.targets.heatmaps import render_heatmaps

K = NUM_JOINTS
DECODE = dict(detection_threshold=0.1, tag_threshold=1.0, max_people=30, nms_kernel=5, tie_break=False,
              convention="project")


def _load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode.py"
    spec = importlib.util.spec_from_file_location("bench_decode", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scene(points: dict[int, list[tuple[int, int, float]]], size: int = 64, sigma: float = 1.5):
    """Heatmaps/tags from {tag: [(x, y, amplitude) per joint or None]} at integer px; the
    tag is written over a 5x5 patch per joint, the background tag is -10."""
    hm = np.zeros((K, size, size), np.float32)
    tags = np.full((K, size, size, 1), -10.0, np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for tag, joints in points.items():
        for k, pt in enumerate(joints):
            if pt is None:
                continue
            x, y, a = pt
            g = a * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
            np.maximum(hm[k], g, out=hm[k])
            tags[k, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3, 0] = tag
    return hm, tags


# --------------------------------------------------------------------------- NMS / top-k
def test_max_pool_nms_matches_torch_maxpool():
    rng = np.random.default_rng(0)
    hm = rng.random((3, 20, 17)).astype(np.float32)
    for kernel in (3, 5):
        t = torch.from_numpy(hm)[None]
        pooled = nn.functional.max_pool2d(t, kernel, 1, kernel // 2)[0].numpy()
        np.testing.assert_array_equal(max_pool_nms(hm, kernel), np.where(hm == pooled, hm, 0))
    with pytest.raises(ValueError):
        max_pool_nms(hm, 4)


def test_top_k_peaks_orders_and_suppresses():
    hm = np.zeros((2, 10, 12), np.float32)
    hm[0, 2, 3], hm[0, 2, 4] = 0.9, 0.5   # 0.5 is suppressed by its neighbour
    hm[0, 7, 9] = 0.7
    hm[0, 5, 0] = 0.3
    vals, xs, ys = top_k_peaks(hm, 4, 3)
    np.testing.assert_allclose(vals[0], [0.9, 0.7, 0.3, 0.0])
    assert (xs[0, :3].tolist(), ys[0, :3].tolist()) == ([3, 9, 0], [2, 7, 5])
    assert vals[1].max() == 0
    # The thresholded (sparse) path returns the same peaks above the threshold.
    # (power 8: a quarter of the pixels is above 0.1, the dense fallback runs; power 40:
    # about 6 %, the sparse check runs).
    rng = np.random.default_rng(1)
    for power in (8, 40):
        big = rng.random((4, 40, 40)).astype(np.float32) ** power
        dense, sparse = top_k_peaks(big, 30, 3), top_k_peaks(big, 30, 3, threshold=0.1)
        keep = dense[0] > 0.1
        assert keep.any()
        for a, b in zip(dense, sparse, strict=True):
            np.testing.assert_array_equal(np.where(keep, a, 0), b)


def _official_top_k(hm: np.ndarray, k: int, kernel: int) -> tuple[np.ndarray, np.ndarray]:
    """The official ``HeatmapParser.nms`` + ``top_k`` (lib/core/group.py) in torch: values and
    flat indices (K, k)."""
    det = torch.from_numpy(hm)[None]
    maxm = torch.eq(nn.functional.max_pool2d(det, kernel, 1, (kernel - 1) // 2), det).float()
    val, ind = (det * maxm).view(1, hm.shape[0], -1).topk(k, dim=2)
    return val[0].numpy(), ind[0].numpy()


def test_torch_topk_order_is_torch_topk_on_ties():
    """`torch_topk_order` reproduces the CPU ``torch.topk`` order of equal values (libstdc++
    partial sort, k * 64 <= n) on rows full of ties, zeros and negative values; index order
    (None) where torch takes its other path."""
    from pose.decode.group import torch_topk_order

    rng = np.random.default_rng(7)
    for trial in range(200):
        n, k = int(rng.integers(1920, 6000)), int(rng.choice([1, 2, 5, 30]))
        row = np.zeros(n, np.float32)
        pos = rng.choice(n, int(rng.integers(5, 300)), replace=False)
        row[pos] = rng.integers(-3, 12, pos.size).astype(np.float32) / 10  # many exact ties
        want = torch.from_numpy(row).topk(k)[1].numpy()
        got = torch_topk_order(row, k)
        assert got is not None and got.tolist() == want.tolist(), trial
    assert torch_topk_order(np.zeros(64 * 30 - 1, np.float32), 30) is None


@pytest.mark.parametrize("threshold", [0.1, None])
def test_top_k_peaks_torch_ties_follow_the_official_top_k(threshold):
    """``ties="torch"`` (the reference convention) returns the official NMS + ``torch.topk``
    peaks in the official order, ties included, on both the sparse and the dense path;
    ``ties="index"`` puts lower flat indices first, which differs from torch here."""
    rng = np.random.default_rng(3)
    hm = np.zeros((3, 64, 64), np.float32)
    for j in range(3):
        for _ in range(60):   # separated plateau-free peaks with values from a small set: exact ties
            y, x = rng.integers(0, 64, 2)
            hm[j, y, x] = max(hm[j, y, x], rng.integers(2, 9) / 10)
    differs = False
    for h in (hm, hm + np.float32(0.01) * (hm == 0)):   # sparse (mostly zeros) and dense (all positive)
        want_v, want_i = _official_top_k(h, 30, 5)
        vals, xs, ys = top_k_peaks(h, 30, 5, threshold=threshold, ties="torch")
        keep = want_v > (threshold or -1)
        np.testing.assert_array_equal(vals, np.where(keep, want_v, 0))
        np.testing.assert_array_equal((ys * 64 + xs)[keep], want_i[keep])
        iv, ix, iy = top_k_peaks(h, 30, 5, threshold=threshold, ties="index")
        np.testing.assert_array_equal(iv, vals)   # same values, maybe another order of equal ones
        differs |= not np.array_equal(iy * 64 + ix, ys * 64 + xs)
    assert differs
    with pytest.raises(ValueError, match="ties"):
        top_k_peaks(hm, 30, 5, ties="stable")


# --------------------------------------------------------------------------- grouping
def test_group_recovers_people_with_exact_locations():
    rng = np.random.default_rng(2)
    truth = {}
    for p, tag in enumerate((0.0, 3.0, 6.0)):
        truth[tag] = [(int(8 + 15 * p + rng.integers(0, 6)), int(rng.integers(4, 60)), 0.9) for _ in range(K)]
    hm, tags = _scene(truth)
    persons, scores = group_keypoints(hm, tags, adjust=False, refine=False, **DECODE)
    assert persons.shape == (3, K, 4) and persons.dtype == np.float32 and scores.shape == (3,)
    for person in persons:
        tag = float(np.round(person[0, 3]))
        np.testing.assert_array_equal(person[:, :2], np.array([pt[:2] for pt in truth[tag]], np.float32))
        np.testing.assert_allclose(person[:, 3], tag, atol=1e-6)
    np.testing.assert_allclose(scores, 0.9, atol=1e-6)


def test_far_tag_opens_new_person_and_threshold_filters():
    joints_a = [(10, 10, 0.9)] * 5 + [None] * (K - 5)
    joints_b = [None] * 5 + [(40, 40, 0.9)] + [None] * (K - 6)
    hm, tags = _scene({0.0: joints_a, 1.2: joints_b})
    persons, scores = group_keypoints(hm, tags, adjust=False, refine=False, **DECODE)
    assert len(persons) == 2                               # |1.2 - 0| >= tag_threshold 1.0
    persons, _ = group_keypoints(hm, tags, adjust=False, refine=False,
                                 **{**DECODE, "tag_threshold": 1.5})
    assert len(persons) == 1                               # now close enough to join
    hm[5] *= 0.05                                          # below detection_threshold
    persons, scores = group_keypoints(hm, tags, adjust=False, refine=False, **DECODE)
    assert len(persons) == 1 and persons[0, 5, 2] == 0
    np.testing.assert_allclose(scores[0], 5 * 0.9 / K, rtol=1e-6)   # mean over all K joints


def test_refine_fills_missing_joint_from_mean_tag():
    joints = [(20, 20 + k, 0.9) for k in range(K)]
    joints[9] = (30, 33, 0.05)                              # weak wrist: below threshold
    other = [(50, 10 + k, 0.9) for k in range(K)]
    hm, tags = _scene({0.0: joints, 5.0: other})
    plain, s_plain = group_keypoints(hm, tags, adjust=False, refine=False, **DECODE)
    refined, s_ref = group_keypoints(hm, tags, adjust=False, refine=True, **DECODE)
    me = int(np.argmin(np.abs(plain[:, 0, 3])))
    assert plain[me, 9, 2] == 0
    # Refinement adds the quarter offset toward the higher neighbour, as the reference does;
    # the Gaussian is symmetric about its pixel, so no shift (ties: 0).
    assert (refined[me, 9, 0], refined[me, 9, 1]) == (30.0, 33.0)
    assert refined[me, 9, 2] == pytest.approx(0.05, rel=1e-5)
    np.testing.assert_array_equal(s_plain, s_ref)           # person score is taken before refinement
    hm[9, 33, 31] += 0.001                                  # right neighbour now higher: +0.25 in x
    refined, _ = group_keypoints(hm, tags, adjust=False, refine=True, **DECODE)
    assert (refined[me, 9, 0], refined[me, 9, 1]) == (30.25, 33.0)


def test_adjust_moves_a_quarter_pixel_toward_the_higher_neighbour():
    hm = np.zeros((K, 16, 16), np.float32)
    tags = np.zeros((K, 16, 16, 1), np.float32)
    hm[:, 8, 8] = 1.0
    hm[:, 8, 9] = 0.6      # right neighbour higher -> +0.25 in x
    hm[:, 7, 8] = 0.6      # upper neighbour higher -> -0.25 in y
    persons, _ = group_keypoints(hm, tags, adjust=True, refine=False, **DECODE)
    np.testing.assert_allclose(persons[0, :, 0], 8.25)
    np.testing.assert_allclose(persons[0, :, 1], 7.75)
    # Equal neighbours (a peak symmetric about its pixel): no shift on that axis (the
    # reference shifts -0.25, a bias on every symmetric peak).
    hm[:, 8, 7] = 0.6
    hm[:, 9, 8] = 0.3
    persons, _ = group_keypoints(hm, tags, adjust=True, refine=False, **DECODE)
    np.testing.assert_allclose(persons[0, :, 0], 8.0)
    np.testing.assert_allclose(persons[0, :, 1], 7.75)
    # On the border the clamped neighbour is the peak itself, higher than the inner one, so
    # the shift points outward (as in the reference).
    edge = np.zeros((K, 16, 16), np.float32)
    edge[:, 0, 0], edge[:, 0, 1], edge[:, 1, 0] = 1.0, 0.5, 0.5
    persons, _ = group_keypoints(edge, tags, adjust=True, refine=False, **DECODE)
    np.testing.assert_allclose(persons[0, :, :2], -0.25)



def test_empty_and_invalid_inputs():
    persons, scores = group_keypoints(np.zeros((K, 8, 8), np.float32), np.zeros((K, 8, 8, 1), np.float32),
                                      adjust=True, refine=True, **DECODE)
    assert persons.shape == (0, K, 4) and scores.shape == (0,)
    flags = dict(adjust=True, refine=True)
    with pytest.raises(ValueError):
        group_keypoints(np.zeros((K, 8, 8)), np.zeros((K, 8, 9, 1)), **DECODE, **flags)
    with pytest.raises(ValueError):
        group_keypoints(np.zeros((K, 8, 8)), np.zeros((K, 8, 8)), **{**DECODE, "max_people": 0}, **flags)
    with pytest.raises(ValueError, match="odd"):
        group_keypoints(np.ones((K, 8, 8)), np.zeros((K, 8, 8)), **{**DECODE, "nms_kernel": 4}, **flags)
    assert sorted(default_joint_order(14)) == list(range(14))
    assert default_joint_order(17)[:9] == (0, 1, 2, 3, 4, 5, 6, 11, 12)


@pytest.mark.parametrize("convention", ["project", "reference"])
def test_matches_straightforward_munkres_decoder(convention):
    """The vectorised decoder gives the persons of a plain per-joint Python decoder that calls
    the `munkres` package (benchmarks/decode.py reference_decode), in each convention: project
    (SciPy on the rectangular cost, no shift on equal neighbours, at most max_people persons) on
    scenes without tied costs; reference (munkres' choice, -0.25 on equal neighbours, every
    group) also on scenes with occluded joints, many fragments and exactly tied tags."""
    pytest.importorskip("munkres")
    bench = _load_benchmark()
    scenes = [(n, size, 0.0) for n, size in ((1, 128), (6, 128), (15, 128), (30, 256))]
    if convention == "reference":
        scenes += [(12, 128, 0.3), (35, 256, 0.3)]
    for n, size, occluded in scenes:
        hm, tags, _ = bench.make_scene(n, seed=100 + n, size=size, occluded=occluded)
        variants = [(hm, tags)]
        if convention == "reference":   # every candidate of a person reads exactly its tag: ties
            variants.append((hm, np.round(tags)))
        for kernel, tie_break in ((5, False), (3, True)):
            for h, t in variants:
                kw = dict(detection_threshold=0.1, tag_threshold=1.0, max_people=max(30, n), adjust=True,
                          refine=True, nms_kernel=kernel, tie_break=tie_break, convention=convention)
                ours, s_ours = group_keypoints(h, t, **kw)
                ref, s_ref = bench.reference_decode(h, t, **kw)
                assert ours.shape == ref.shape
                np.testing.assert_allclose(ours, ref, atol=1e-5)
                np.testing.assert_allclose(s_ours, s_ref, atol=1e-6)


def test_munkres_assignment_is_the_munkres_package_on_random_costs():
    """`munkres_assignment` returns the pairs `munkres.Munkres().compute` returns, on 600 random
    costs shaped as the reference builds them (round(d) * 100 - score, padded with 1e10 columns
    when there are more candidates than groups): unique row minima in distinct columns, tied
    minima that step 2 still stars in every row (both returned early), and costs that need
    steps 3-6."""
    munkres = pytest.importorskip("munkres")
    from pose.decode.group import MUNKRES_PAD, munkres_assignment

    rng = np.random.default_rng(7)
    paths = [0, 0, 0]
    seen: set[int] = set()
    for case in range(600):
        r, g = rng.integers(1, 9, 2)
        dist = rng.uniform(0, 4, (r, g))
        if case % 3 == 1:  # exact ties: few distinct rounded distances and scores
            dist = rng.integers(0, 3, (r, g)).astype(float)
        scores = np.round(rng.uniform(0.2, 1.0, r), 1 if case % 3 == 1 else 6)
        cost = np.round(dist) * 100.0 - scores[:, None]
        if r > g:
            cost = np.concatenate([cost, np.full((r, r - g), MUNKRES_PAD)], axis=1)
        rows, cols = munkres_assignment(cost)
        expect = [(i, j) for i, j in munkres.Munkres().compute(cost.copy()) if j < cost.shape[1]]
        assert list(zip(rows.tolist(), cols.tolist())) == expect, (case, cost)
        zr, zc = np.nonzero(cost == cost.min(axis=1, keepdims=True))
        taken: set[int] = set()
        for i, j in zip(zr.tolist(), zc.tolist()):  # munkres' step 2
            if i not in seen and j not in taken:
                seen.add(i)
                taken.add(j)
        paths[0 if zr.size == r and len(taken) == r else 1 if len(seen) == r else 2] += 1
        seen.clear()
    assert min(paths) > 40, paths  # unique minima; step 2 stars every row; steps 3-6 needed


# --------------------------------------------------------------------------- aggregation
def _render(kps: np.ndarray, person_tags, width: int, stride: int, sigma: float):
    """Continuous Gaussians of input-px keypoints (P, K, 2) on a map of stride ``stride``
    (pixel j <-> input px j * stride); tags of the dominant person per pixel."""
    j = np.arange(width)
    gx = np.exp(-((j[None, None, :] - kps[:, :, None, 0] / stride) ** 2) / (2 * sigma ** 2))
    gy = np.exp(-((j[None, None, :] - kps[:, :, None, 1] / stride) ** 2) / (2 * sigma ** 2))
    g = gy[:, :, :, None] * gx[:, :, None, :]
    return g.max(0).astype(np.float32), np.asarray(person_tags, np.float32)[g.argmax(0)]


def _outputs(kps, person_tags, size):
    hq, tq = _render(kps, person_tags, size // 4, 4, 1.0)
    hh, _ = _render(kps, person_tags, size // 2, 2, 2.0)
    return [torch.from_numpy(np.concatenate([hq, tq]))[None], torch.from_numpy(hh)[None]]


def _mirror(kps, size):
    m = kps.copy()
    m[..., 0] = size - 1 - m[..., 0]
    return m[:, list(FLIP_INDEX)]


def test_resize_and_unflip_follow_the_coordinate_convention():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    up = resize_maps(x, 4, 8, convention="project")[0, 0, 0]
    np.testing.assert_allclose(up.numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])   # j -> j / 2, border kept
    assert resize_maps(x, 2, 4, convention="project") is x
    # Un-flipping a map rendered from the mirrored input reproduces the direct rendering.
    kps = np.array([[[21.0, 30.0]]])
    direct, _ = _render(kps, [0], 32, 2, 2.0)
    flipped, _ = _render(_mirror(kps[:, :1].repeat(K, 1), 64)[:, :1], [0], 32, 2, 2.0)
    back = unflip_maps(torch.from_numpy(flipped)[None], 2.0, convention="project")[0].numpy()
    naive = flipped[..., ::-1]
    assert np.abs(back - direct).max() < 0.04 < np.abs(naive - direct).max()


def test_aggregate_without_flip_averages_heads_and_lays_out_tags():
    b, size, tdim = 2, 32, 2
    rng = np.random.default_rng(3)
    quarter = torch.from_numpy(rng.random((b, K + K * tdim, size // 4, size // 4)).astype(np.float32))
    half = torch.from_numpy(rng.random((b, K, size // 2, size // 2)).astype(np.float32))
    hm, tags = aggregate_outputs([quarter, half], K, tdim, convention="project")
    assert hm.shape == (b, K, 16, 16) and tags.shape == (b, K, 16, 16, tdim)
    # Even pixels of the upsampled quarter map are its own pixels.
    np.testing.assert_allclose(hm[:, :, ::2, ::2].numpy(), ((quarter[:, :K] + half[:, :, ::2, ::2]) / 2).numpy(),
                               rtol=1e-6)
    # Tag channel K + t*K + k is dimension t of joint k (the layout of pose.models.hrnet).
    np.testing.assert_allclose(tags[0, 4, ::2, ::2, 1].numpy(), quarter[0, K + 1 * K + 4].numpy())
    with pytest.raises(ValueError):
        aggregate_outputs([quarter], K, tdim, convention="project")


def test_flip_branch_swaps_joints_of_heatmaps_and_every_tag_dimension():
    tdim, size = 2, 32
    quarter = torch.zeros(1, K + K * tdim, size // 4, size // 4)
    half = torch.zeros(1, K, size // 2, size // 2)
    for k in range(K):                   # maps constant along x: the un-flip resampling is exact
        quarter[0, k] = half[0, k] = k / 100
        for t in range(tdim):
            quarter[0, K + t * K + k] = 100 * t + k
    hm, tags = aggregate_outputs([quarter, half], K, tdim, flip_outputs=[quarter, half],
                                 convention="project")
    assert tags.shape == (1, K, 16, 16, 2 * tdim)
    for k in range(K):
        assert hm[0, k].unique().tolist() == pytest.approx([(k + FLIP_INDEX[k]) / 200])
        for t in range(tdim):
            assert tags[0, k, ..., t].unique().tolist() == [100 * t + k]
            assert tags[0, k, ..., tdim + t].unique().tolist() == [100 * t + FLIP_INDEX[k]]


def test_flip_test_agrees_with_plain_decoding():
    size = 128
    rng = np.random.default_rng(4)
    kps = rng.uniform(20, 108, (3, K, 2))
    tags = [1.0, 3.0, 5.0]
    plain = aggregate_outputs(_outputs(kps, tags, size), K, 1, convention="project")
    both = aggregate_outputs(_outputs(kps, tags, size), K, 1, _outputs(_mirror(kps, size), tags, size),
                             convention="project")
    assert both[1].shape[-1] == 2
    assert (plain[0] - both[0]).abs().max() < 0.1
    for hm, tg in (plain, both):
        persons, _ = group_keypoints(hm[0].numpy(), tg[0].numpy(), adjust=True, refine=False, **DECODE)
        assert len(persons) == 3
        for person in persons:
            found = person[:, 2] > 0
            assert found.sum() >= K - 2          # a joint may merge with another person's
            who = int(np.argmin([abs(person[found, 3].mean() - t) for t in tags]))
            assert np.abs(person[found, :2] - kps[who, found] / 2).max() <= 0.5   # px of the 1/2 map


def test_flip_test_on_symmetric_input_gives_symmetric_output():
    """A left-right symmetric scene: person B is the mirror of person A, so the flipped
    input is the input itself and any model returns the same outputs for both."""
    size = 128
    rng = np.random.default_rng(5)
    a = rng.uniform(8, 56, (1, K, 2))
    scene = np.concatenate([a, _mirror(a, size)])
    out = _outputs(scene, [1.0, 4.0], size)
    hm, tags = aggregate_outputs(out, K, 1, flip_outputs=out, convention="project")
    # The aggregated heatmaps equal their own mirror image (mirror x -> S - 1 - x in input
    # px, joints swapped) up to the bilinear resampling.
    mirrored = unflip_maps(hm, 2.0, convention="project")[:, list(FLIP_INDEX)]
    assert (mirrored - hm).abs().max() < 0.05
    persons, scores = group_keypoints(hm[0].numpy(), tags[0].numpy(), adjust=True, refine=True, **DECODE)
    assert len(persons) == 2
    mirror_pts = persons.copy()
    mirror_pts[..., 0] = (size - 1) / 2 - mirror_pts[..., 0]
    mirror_pts = mirror_pts[:, list(FLIP_INDEX)]
    left = int(np.argmin(persons[:, :, 0].mean(1)))
    # Heatmap pixels are not mirror-symmetric under x -> (S-1)/2 - x (it maps pixel
    # centres to half-pixels), so decoded points agree within half a heatmap pixel.
    assert np.abs(mirror_pts[1 - left, :, :2] - persons[left, :, :2]).max() <= 0.5
    assert scores[0] == pytest.approx(scores[1], abs=0.02)


# --------------------------------------------------------------------------- inference
class TinyPoseNet(nn.Module):
    """A 2-conv stand-in with the HigherHRNet output format (1/4: heatmaps + tags, 1/2: heatmaps)."""

    def __init__(self, num_joints: int = K, tag_dim: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.quarter = nn.Conv2d(8, num_joints * (1 + tag_dim), 1)
        self.head_half = nn.Conv2d(8, num_joints, 1)
        self.num_joints = num_joints
        self.convention = "project"   # what pose.models.build_model records from params model.convention

    def forward(self, x):
        f2 = torch.relu(self.stem(x))
        f4 = torch.relu(self.down(f2))
        q = self.quarter(f4)
        q = torch.cat([torch.sigmoid(q[:, :self.num_joints]), q[:, self.num_joints:]], 1)
        return [q, torch.sigmoid(self.head_half(f2))]


EVAL = dict(input_size=64, resize="letterbox", flip_test=True, test_scales=[1.0], detection_threshold=0.5,
            tag_threshold=1.0, max_people=5, nms_kernel=5, tie_break=False, project2image=False, adjust=True,
            refine=True, nms_oks=1.0)


def _image(h=48, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_to_input_tensor_normalises_rgb_and_letterboxes():
    img = np.zeros((20, 40, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 100, 200       # B, G, R
    aff = letterbox_affine(40, 20, 32)
    x = to_input_tensor(img, aff, 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    centre = x[:, 16, 16]
    expect = (np.array([200, 100, 10]) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(centre, expect, rtol=1e-5)
    np.testing.assert_allclose(x[:, 0, 16], -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD), rtol=1e-5)  # padding


def test_predict_image_returns_image_px_and_restores_mode():
    model = TinyPoseNet().train()
    img = _image()
    persons = predict_image(model, img, eval_params=EVAL)
    assert model.training
    assert persons, "the random model should produce some detections at this threshold"
    scores = [p["score"] for p in persons]
    assert scores == sorted(scores, reverse=True)
    for p in persons:
        kp = p["keypoints"]
        assert kp.shape == (K, 3)
        found = kp[:, 2] > 0
        assert (kp[found, 0] >= -1).all() and (kp[found, 0] <= 80).all()
        assert (kp[~found, :2] == 0).all()
    with pytest.raises(ValueError, match="tag_threshold"):
        predict_image(model, img, eval_params={k: v for k, v in EVAL.items() if k != "tag_threshold"})


def test_single_scale_pipeline_and_multi_scale_with_one_scale():
    model = TinyPoseNet().eval()
    img = _image(seed=1)
    cfg = {**EVAL, "flip_test": False}
    # Manual single-scale pipeline.
    aff = letterbox_affine(img.shape[1], img.shape[0], 64)
    with torch.no_grad():
        out = model(torch.from_numpy(to_input_tensor(img, aff, 64))[None])
    hm, tg = aggregate_outputs(out, K, 1, convention="project")
    persons, scores = group_keypoints(hm[0].numpy(), tg[0].numpy(), detection_threshold=0.5, tag_threshold=1.0,
                                      max_people=5, nms_kernel=5, tie_break=False, adjust=True, refine=True,
                                      convention="project")
    manual = heatmap_to_image(persons, aff, 2.0, convention="project")
    got = predict_image(model, img, eval_params=cfg)
    order = np.argsort(-scores, kind="stable")
    assert len(got) == len(order)
    for p, i in zip(got, order):
        np.testing.assert_allclose(p["keypoints"], manual[i], atol=1e-9)
    # Multi-scale machinery with one scale is the single-scale result; a repeated scale
    # averages to the same heatmaps and concatenates its tags.
    ms = dict(input_size=64, resize="letterbox", flip_test=True, project2image=False, convention="project")
    h1, t1, _, _ = multi_scale_maps(model, img, test_scales=[1.0], **ms)
    h2, t2, _, _ = multi_scale_maps(model, img, test_scales=[1.0, 1.0], **ms)
    torch.testing.assert_close(h1, h2)
    torch.testing.assert_close(torch.cat([t1, t1], -1), t2)
    h3, t3, _, _ = multi_scale_maps(model, img, test_scales=[1.0, 0.5, 1.5], **ms)
    assert h3.shape == h1.shape and t3.shape[-1] == 3 * t1.shape[-1]


def test_heatmap_to_image_inverts_the_letterbox():
    aff = letterbox_affine(640, 427, 512)
    pts = np.array([[[100.0, 50.0, 1.0], [600.0, 400.0, 0.5]]])
    hm = pts.copy()
    hm[..., :2] = apply_affine(aff, pts[..., :2]) / 2
    np.testing.assert_allclose(heatmap_to_image(hm, aff, 2.0, convention="project"), pts, atol=1e-9)
    ref = pts.copy()                          # reference: pixel i centred at i + 0.5, image px p at input px M p
    ref[..., :2] = apply_affine(aff, pts[..., :2]) / 2 - 0.5
    np.testing.assert_allclose(heatmap_to_image(ref, aff, 2.0, convention="reference"), pts, atol=1e-9)


def test_mapping_back_and_missing_joints_follow_the_official_formulas():
    """Issue 21, rows "mapping back to image px" and "missing joints": the official
    get_final_preds maps heatmap coordinates (pixel + 0.5 from adjust / refine) with the inverse
    of the image -> heatmap affine, M^-1 c, and maps a missing joint's (0, 0) the same way, to
    M^-1 (0, 0); the project maps M^-1 (c - o) + o and writes (0, 0). Worked out by hand for a
    192 x 160 image letterboxed into 192 (M = [[1, 0, 0], [0, 1, 16]]) and a 640 x 427 image at
    512 (scale 0.8, ty = 85.2), heatmaps at stride 2."""
    joint = np.array([[[10.0, 20.0, 0.7], [0.0, 0.0, 0.0]]])      # pixel (10, 20) found; joint 1 missing
    aff = letterbox_affine(192, 160, 192)
    np.testing.assert_allclose(aff, [[1, 0, 0], [0, 1, 16]])
    # official: c = ((10, 20) + 0.5) * 2 = (21, 41) input px; M^-1 c = (21, 25); missing: M^-1 (0, 0) = (0, -16)
    np.testing.assert_allclose(heatmap_to_image(joint, aff, 2.0, convention="reference"),
                               [[[21.0, 25.0, 0.7], [0.0, -16.0, 0.0]]], atol=1e-12)
    # project (o = 0): c = (20, 40); p = c - (0, 16) = (20, 24); missing: (0, 0)
    np.testing.assert_allclose(heatmap_to_image(joint, aff, 2.0, convention="project"),
                               [[[20.0, 24.0, 0.7], [0.0, 0.0, 0.0]]], atol=1e-12)
    aff = letterbox_affine(640, 427, 512)                          # s = 0.8, t = (0, 85.2)
    # official: ((10.5 * 2, 20.5 * 2) - t) / s = (26.25, -55.25); missing: -t / s = (0, -106.5)
    np.testing.assert_allclose(heatmap_to_image(joint, aff, 2.0, convention="reference"),
                               [[[26.25, -55.25, 0.7], [0.0, -106.5, 0.0]]], atol=1e-9)
    # the centred mapping M^-1 (c - .5) + .5 of the same peak is o (1 - 1/f) = -0.125 px off it
    centred = dataclasses.replace(convention_rules("reference"), keypoint_mapping="centred", missing_joint="zero")
    np.testing.assert_allclose(heatmap_to_image(joint, aff, 2.0, convention=centred),
                               [[[26.125, -55.375, 0.7], [0.0, 0.0, 0.0]]], atol=1e-9)


# --------------------------------------------------------------------------- the reference test protocol
def _reference_affine(width: int, height: int, out_w: int, out_h: int) -> np.ndarray:
    """The reference's ``get_affine_transform(center, scale, 0, (out_w, out_h))`` of
    ``get_multi_scale_size``'s centre and scale, rebuilt from its three point pairs with
    ``cv2.getAffineTransform`` (in float64; the reference uses float32)."""
    center = np.array([int(width / 2.0 + 0.5), int(height / 2.0 + 0.5)], np.float64)
    scale_w = width / 200.0 if width < height else out_w / out_h * height / 200.0
    src_w = scale_w * 200.0
    src = np.array([center, center + [0, -0.5 * src_w], center + [-0.5 * src_w, -0.5 * src_w]])
    c = np.array([out_w * 0.5, out_h * 0.5])
    dst = np.array([c, c + [0, -0.5 * out_w], c + [-0.5 * out_w, -0.5 * out_w]])
    return cv2.getAffineTransform(src.astype(np.float32), dst.astype(np.float32)).astype(np.float64), src, dst


def test_short_side_geometry_on_coco_mini_and_its_inverse(coco_like):
    """On every val image (coco-mini, or the generated set without ../shared): the shorter
    side becomes input_size (rounded up to 64), the longer one keeps the aspect ratio rounded
    up to a multiple of 64 as the reference rounds (scaled by the test scale relative to the
    smallest), the affine is the reference's, and labelled keypoints mapped to input px /
    heatmap px and back (both conventions, strides 1, 2, 4) return to within 1e-6 image px."""
    data = json.loads((coco_like / "annotations/person_keypoints_val2017.json").read_text())
    kps_by_image: dict[int, list] = {}
    for a in data["annotations"]:
        kp = np.asarray(a["keypoints"], np.float64).reshape(K, 3)
        kps_by_image.setdefault(a["image_id"], []).append(kp[kp[:, 2] > 0])
    checked = 0
    for im in data["images"]:
        w, h = im["width"], im["height"]
        for input_size, scales in ((512, [1.0]), (192, [1.0]), (512, [0.5, 1.0, 2.0])):
            lo = min(scales)
            m = int(np.ceil(lo * input_size / 64) * 64)
            for scale in scales:
                g = short_side_geometry(w, h, input_size, scale, lo)
                short, long_ = (g.width, g.height) if w < h else (g.height, g.width)
                assert short == int(m * scale / lo)
                # the reference rounds (x + 63) // 64 * 64: up for integer x, and a fractional x
                # may land up to 1 px below (640 x 426 at 256: x = 384.6 -> 384)
                assert long_ == int(int((m / min(w, h) * max(w, h) + 63) // 64 * 64) * scale / lo)
                if scale == lo:
                    assert short % 64 == 0 and long_ % 64 == 0 and long_ > short * max(w, h) / min(w, h) - 1
                ref, src, dst = _reference_affine(w, h, g.width, g.height)
                np.testing.assert_allclose(g.affine, ref, rtol=1e-6, atol=2e-4)        # float32 reference
                np.testing.assert_allclose(apply_affine(g.affine, src), dst, atol=1e-9)  # exact in float64
                same = input_geometry(w, h, resize="short_side", input_size=input_size, scale=scale, min_scale=lo)
                assert (same.width, same.height) == (g.width, g.height)
                np.testing.assert_array_equal(same.affine, g.affine)
        g = short_side_geometry(w, h, 512)
        pts = np.concatenate(kps_by_image.get(im["id"], []) + [np.array([[0.0, 0.0, 1.0], [w - 1.0, h - 1.0, 1.0]])])
        for convention, offset, mapped in (("project", 0.0, 0.0), ("reference", 0.5, 0.0)):
            for stride in (1, 2, 4):   # targets at M (p - m) + m in input px, m = 0 for the reference's M p
                hm = pts.copy()[None]
                hm[..., :2] = (apply_affine(g.affine, pts[:, :2] - mapped)[None] + mapped) / stride - offset
                back = heatmap_to_image(hm, g.affine, stride, convention=convention)[0]
                assert np.abs(back[:, :2] - pts[:, :2]).max() < 1e-6
        checked += 1
    assert checked == len(data["images"]) > 0


def test_letterbox_and_short_side_inputs_of_a_real_image(coco_like):
    """The warped input of a real image: short_side keeps the aspect ratio at the reference's
    size and shows the whole image centre; letterbox pads to a square."""
    im = json.loads((coco_like / "annotations/person_keypoints_val2017.json").read_text())["images"][0]
    img = cv2.imread(str(coco_like / "val2017" / im["file_name"]))
    h, w = img.shape[:2]
    g = input_geometry(w, h, resize="short_side", input_size=256)
    x = to_input_tensor(img, g.affine, (g.width, g.height))
    assert x.shape == (3, g.height, g.width) and min(g.width, g.height) == 256
    # input pixel -> image pixel through the inverse affine reads the same colour
    inv = np.linalg.inv(np.vstack([g.affine, [0, 0, 1]]))[:2]
    for yi, xi in ((g.height // 2, g.width // 2), (10, 20)):
        sx, sy = apply_affine(inv, np.array([xi, yi], np.float64))
        if 0 <= sx < w - 1 and 0 <= sy < h - 1:
            rgb = cv2.getRectSubPix(img, (1, 1), (float(sx), float(sy)))[0, 0, ::-1].astype(np.float32) / 255
            expect = (rgb - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
            np.testing.assert_allclose(x[:, yi, xi], expect, atol=0.05)
    lb = input_geometry(w, h, resize="letterbox", input_size=256)
    assert (lb.width, lb.height) == (256, 256)
    with pytest.raises(ValueError, match="evaluate.resize"):
        input_geometry(w, h, resize="crop", input_size=256)
    with pytest.raises(ValueError, match="multiple of 32"):
        input_geometry(w, h, resize="letterbox", input_size=100)


class FixedNet(nn.Module):
    """Returns the same outputs for any input (batch size taken from the input)."""

    def __init__(self, quarter: torch.Tensor, half: torch.Tensor, convention: str | None = "project"):
        super().__init__()
        self.quarter, self.half = quarter, half
        if convention is not None:
            self.convention = convention
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        n = x.shape[0]
        return [self.quarter.expand(n, -1, -1, -1), self.half.expand(n, -1, -1, -1)]


def test_nms_kernel_is_honoured():
    """Two wrists 2 px apart on the 1/2 map (4 px at stride 1), tags 0 and 5: at 1/2 a 3 x 3
    NMS window keeps both persons, the reference's 5 x 5 suppresses the lower peak; decoded
    at stride 1 (project2image) 5 x 5 keeps both and 9 x 9 suppresses it."""
    quarter = torch.zeros(1, 2 * K, 16, 16)
    quarter[0, K + 9, :, 8:] = 5.0                   # tag of the right half of the map
    half = torch.zeros(1, K, 32, 32)
    half[0, 9, 10, 10], half[0, 9, 10, 12] = 0.9, 0.8
    model = FixedNet(quarter, half)
    img = np.zeros((64, 64, 3), np.uint8)
    cfg = {**EVAL, "flip_test": False, "detection_threshold": 0.1, "refine": False}
    for p2i, keeps, suppresses in ((False, 3, 5), (True, 5, 9)):
        both = predict_image(model, img, eval_params={**cfg, "nms_kernel": keeps, "project2image": p2i})
        one = predict_image(model, img, eval_params={**cfg, "nms_kernel": suppresses, "project2image": p2i})
        assert len(both) == 2 and len(one) == 1
        assert one[0]["keypoints"][9, 0] == pytest.approx(20.0, abs=0.6)    # the higher peak, input px 20
    with pytest.raises(ValueError, match="nms_kernel"):
        predict_image(model, img, eval_params={**cfg, "nms_kernel": 4})


def test_convention_comes_from_the_model_or_the_call():
    model = TinyPoseNet()
    img = _image(seed=2)
    assert model_convention(model) == "project"
    assert model_convention(model, "reference") == "reference"
    del model.convention
    with pytest.raises(ValueError, match="model.convention"):
        predict_image(model, img, eval_params=EVAL)
    ref = predict_image(model, img, eval_params=EVAL, convention="reference")
    proj = predict_image(model, img, eval_params=EVAL, convention="project")
    assert ref and len(ref) == len(proj)
    with pytest.raises(ValueError, match="model.convention"):
        predict_image(model, img, eval_params=EVAL, convention="centre")


@pytest.mark.parametrize("convention", ["project", "reference"])
def test_multi_scale_short_side_follows_the_reference(convention):
    """Each test scale runs at its own short-side size (the reference's sizes for
    min(test_scales)), its maps are resampled to the base grid and averaged, its tags
    concatenated; project2image decodes at the base input size."""
    seen = []

    class Recorder(TinyPoseNet):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return super().forward(x)

    model = Recorder()
    model.convention = convention
    img = _image(h=90, w=120, seed=4)
    kw = dict(input_size=64, resize="short_side", flip_test=True, convention=convention)
    maps = multi_scale_maps(model, img, test_scales=[0.5, 1.0, 2.0], project2image=True, **kw)
    # min scale 0.5: ceil64(32) = 64 -> scale 1.0 is 128 x ceil64(64 / 90 * 120) * 2 = 128 x 256
    assert seen == [(2, 3, 64, 128), (2, 3, 128, 256), (2, 3, 256, 512)]
    assert maps.heatmaps.shape == (K, 128, 256) and maps.stride == 1
    assert maps.tags.shape == (K, 128, 256, 3 * 2)
    single = multi_scale_maps(model, img, test_scales=[1.0], project2image=False, **kw)
    assert single.heatmaps.shape == (K, 32, 64) and single.stride == 2   # 64 x 128 input, 1/2 grid
    np.testing.assert_allclose(single.affine, short_side_geometry(120, 90, 64).affine)
    # the average over scales: a repeated scale gives the single-scale maps
    twice = multi_scale_maps(model, img, test_scales=[1.0, 1.0], project2image=False, **kw)
    torch.testing.assert_close(twice.heatmaps, single.heatmaps)
    torch.testing.assert_close(twice.tags, torch.cat([single.tags, single.tags], -1))
    # scales whose sizes are not multiples of 32 are refused with the key named
    with pytest.raises(ValueError, match="evaluate.test_scales"):
        multi_scale_maps(model, img, test_scales=[0.7, 1.0], project2image=False, **{**kw, "input_size": 512})


def test_predict_dataset_end_to_end(coco_like, tmp_path):
    data = json.loads((coco_like / "annotations/person_keypoints_val2017.json").read_text())
    images = data["images"][:3]
    ids = {im["id"] for im in images}
    small = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    ann = tmp_path / "val3.json"
    ann.write_text(json.dumps(small))
    results = predict_dataset(TinyPoseNet(), ann, coco_like / "val2017", {**EVAL, "oks_threshold": 0.5}, "cpu")
    assert all(r["category_id"] == 1 and len(r["keypoints"]) == 3 * K for r in results)
    assert {r["image_id"] for r in results} == ids                   # every image decoded, in COCO ids
    metrics = evaluate_results(ann, results)
    assert metrics["AP"] >= 0.0                                      # scored against ground truth (-1: none)
    with pytest.raises(FileNotFoundError):
        predict_dataset(TinyPoseNet(), ann, tmp_path, EVAL, "cpu")


# --------------------------------------------------------------------------- oracle
def test_oracle_ground_truth_maps_decode_to_high_ap(coco_like):
    """Ground-truth heatmaps (render_heatmaps, sigma 2, at 1/2 of a 512 letterbox) and tags
    (one value per person, 2 apart, over a 7x7 patch at each of its keypoints, N(0, 0.05)
    noise elsewhere) -> group_keypoints -> image px -> COCO AP."""
    data = json.loads((coco_like / "annotations/person_keypoints_val2017.json").read_text())
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        if a["num_keypoints"] > 0 and not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(a)
    rng = np.random.default_rng(0)
    size, hm_size = 512, 256
    results = []
    for im in data["images"]:
        anns = by_image.get(im["id"], [])
        if not anns:
            continue
        aff = letterbox_affine(im["width"], im["height"], size)
        kp = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(-1, K, 3)
        kp_hm = kp.copy()
        kp_hm[..., :2] = apply_affine(aff, kp[..., :2]) / 2
        heatmaps = render_heatmaps(kp_hm, hm_size, hm_size, 2.0, convention="project", subpixel=False)
        tags = rng.normal(0.0, 0.05, (K, hm_size, hm_size, 1)).astype(np.float32)
        for p in range(len(anns)):
            for k in np.flatnonzero(kp_hm[p, :, 2] > 0):
                x, y = np.rint(kp_hm[p, k, :2]).astype(int)
                tags[k, max(y - 3, 0):y + 4, max(x - 3, 0):x + 4, 0] = 2.0 * (p + 1)
        persons, scores = group_keypoints(heatmaps, tags, adjust=True, refine=True, **DECODE)
        kps = heatmap_to_image(persons, aff, 2.0, convention="project")
        results += to_coco_results([{"keypoints": kps[i], "score": float(scores[i])} for i in range(len(scores))],
                                   im["id"])
    metrics = evaluate_results(coco_like / "annotations/person_keypoints_val2017.json", results, per_keypoint=False)
    print(f"\noracle AP on {coco_like.name} val: {metrics['AP']:.6f} (AP50 {metrics['AP50']:.4f}, "
          f"grouping accuracy {metrics['grouping_accuracy']:.4f}, {len(results)} persons)")
    assert metrics["AP"] >= 0.9
    assert metrics["grouping_accuracy"] >= 0.95


def test_overlay_of_predictions(tmp_path):
    from pose.draw import overlay

    img = _image(seed=3)
    persons = predict_image(TinyPoseNet(), img, eval_params=EVAL)
    out = overlay(img, persons, tmp_path / "o.png", min_score=0.0)
    assert cv2.imread(str(out)).shape == img.shape


def test_oks_nms_drops_duplicates_of_a_real_person(coco_like):
    """Pose NMS on a real coco-mini person: a slightly shifted copy is a duplicate, a
    different person of the same image is not; >= 1 keeps everyone."""
    gt = json.loads((coco_like / "annotations/person_keypoints_val2017.json").read_text())
    by_image: dict[int, list] = {}
    for a in gt["annotations"]:
        if a["num_keypoints"] >= 10 and not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(np.array(a["keypoints"], float).reshape(17, 3))
    a, b = next(v for v in by_image.values() if len(v) >= 2)[:2]
    a[:, 2] = (a[:, 2] > 0).astype(float)
    b[:, 2] = (b[:, 2] > 0).astype(float)
    dup = a.copy()
    dup[:, :2] += 1.0                                         # 1 px off: OKS ~ 1
    kps = np.stack([b, dup, a])
    scores = np.array([0.5, 0.4, 0.9])
    assert oks_nms(kps, scores, COCO_SIGMAS, 0.9).tolist() == [2, 0]   # a kept, its duplicate dropped, b kept
    assert oks_nms(kps, scores, COCO_SIGMAS, 1.0).tolist() == [2, 0, 1]
    assert oks_nms(np.zeros((0, 17, 3)), np.zeros(0), COCO_SIGMAS, 0.9).tolist() == []
    with pytest.raises(ValueError):
        oks_nms(kps, scores[:2], COCO_SIGMAS, 0.9)


def test_group_keypoints_keeps_at_most_max_people_best_scoring():
    """Every peak has its own tag far from the others, so each opens a group: with more peaks
    than max_people the project convention returns only the best-scoring persons (at most
    max_people); the reference convention (Convention.keep_all_groups) every group, in creation
    order, as the official parser (its match_by_tag returns every key of joint_dict)."""
    from pose.decode.group import group_keypoints

    k, h, w, n = 17, 32, 32, 12
    hm = np.zeros((k, h, w), np.float32)
    tg = np.zeros((k, h, w), np.float32)
    rng = np.random.default_rng(0)
    ys, xs = np.divmod(rng.choice(h * w // 9, size=n, replace=False) * 3, w)
    peak_scores = np.linspace(0.3, 0.9, n).astype(np.float32)
    for i, (y, x) in enumerate(zip(ys, xs)):
        hm[i % k, y, x] = peak_scores[i]  # one joint each, different joint types for the first 12
        tg[i % k, y, x] = 10.0 * i
    for cap in (4, 30):
        persons, scores = group_keypoints(hm, tg, detection_threshold=0.1, tag_threshold=1.0, max_people=cap,
                                          adjust=False, refine=True, nms_kernel=5, tie_break=False,
                                          convention="project")
        assert len(persons) == min(cap, n)
        expected = np.sort(peak_scores)[::-1][: min(cap, n)] / k
        np.testing.assert_allclose(np.sort(scores)[::-1], expected, rtol=1e-6)
        persons, scores = group_keypoints(hm, tg, detection_threshold=0.1, tag_threshold=1.0, max_people=cap,
                                          adjust=False, refine=True, nms_kernel=5, tie_break=False,
                                          convention="reference")
        assert len(persons) == n                                  # no cap: all 12 groups
        # creation order: joints in the reference visiting order, each joint's peak opens a group
        visit = [j for j in default_joint_order(k) if j < n]
        np.testing.assert_allclose(scores, peak_scores[visit] / k, rtol=1e-6)


# --------------------------------------------------------------------------- one inference path
def _previous_multi_scale_maps(model, image, *, input_size, resize, test_scales, flip_test, project2image,
                               convention):
    """The loop multi_scale_maps ran before InferenceNet existed (model on [x, flip(x)],
    aggregate_outputs, every scale resampled onto the base grid with _to_grid), kept as the
    regression reference of the one inference path."""
    from pose.decode.inference import _to_grid

    scales = [float(s) for s in test_scales]
    h, w = image.shape[:2]
    geo = dict(resize=resize, input_size=input_size, min_scale=min(scales))
    base = input_geometry(w, h, scale=1.0, **geo)
    stride = 1 if project2image else 2
    grid = (base.height // stride, base.width // stride)
    hm_sum, tag_list = None, []
    with torch.no_grad():
        for s in scales:
            g = base if s == 1.0 else input_geometry(w, h, scale=s, **geo)
            x = torch.from_numpy(to_input_tensor(image, g.affine, (g.width, g.height)))[None]
            out = model(torch.cat([x, torch.flip(x, dims=[3])]) if flip_test else x)
            k = int(out[1].shape[1])
            t = (int(out[0].shape[1]) - k) // k
            hm, tg = aggregate_outputs([o[:1] for o in out], k, t, [o[1:] for o in out] if flip_test else None,
                                       convention=convention)
            hm = _to_grid(hm, g, base, stride, grid, convention)[0]
            tg = _to_grid(tg[0].permute(0, 3, 1, 2), g, base, stride, grid, convention).permute(0, 2, 3, 1)
            hm_sum = hm if hm_sum is None else hm_sum + hm
            tag_list.append(tg)
    return hm_sum / len(scales), torch.cat(tag_list, dim=-1)


@pytest.mark.parametrize("convention", ["project", "reference"])
def test_inference_net_reproduces_the_previous_maps_exactly(coco_like, convention):
    """multi_scale_maps through InferenceNet (the module pose export writes) gives bit-identical
    maps to the previous aggregation, with flip, multi-scale and both resizes; with project2image
    the same up to float rounding (1e-6: the flip branches are now projected before averaging)."""
    from pose.models import build_model

    model_params = dict(json.loads(json.dumps(__import__("yaml").safe_load(
        (Path(__file__).resolve().parents[1] / "params.yaml").read_text())["model"])), width=8,
        stage_blocks=[1, 1, 1], convention=convention)
    torch.manual_seed(0)
    model = build_model(model_params).eval()
    with torch.no_grad():
        [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == K][-1].bias.fill_(0.5)
    image = cv2.imread(str(sorted((coco_like / "val2017").glob("*.jpg"))[0]))
    for cfg in (dict(resize="letterbox", input_size=128, test_scales=[1.0], flip_test=True, project2image=True),
                dict(resize="short_side", input_size=128, test_scales=[0.5, 1.0], flip_test=True, project2image=True),
                dict(resize="letterbox", input_size=96, test_scales=[1.0, 1.5], flip_test=False, project2image=False)):
        hm, tags, _, stride = multi_scale_maps(model, image, convention=convention, **cfg)
        hm_prev, tags_prev = _previous_multi_scale_maps(model, image, convention=convention, **cfg)
        assert stride == (1 if cfg["project2image"] else 2)
        assert float(hm.max()) > 0.1
        if cfg["project2image"]:  # each branch is projected before the flip average now (the official order,
            # tests/test_convention.py::test_reference_projection_follows_the_official_order): float rounding only
            torch.testing.assert_close(hm, hm_prev, rtol=0, atol=1e-6)
            torch.testing.assert_close(tags, tags_prev, rtol=0, atol=1e-6)
        else:
            assert torch.equal(hm, hm_prev) and torch.equal(tags, tags_prev), cfg


@pytest.mark.parametrize("batch", [0, 2048])
@pytest.mark.parametrize("tile", [4, 16])
@pytest.mark.parametrize("tag_dims", [1, 2])
def test_refine_gives_the_full_scan_result(monkeypatch, tile, tag_dims, batch):
    """Refinement scores the pixels above the detection threshold first (every missing pair in
    one pass, or joint by joint: pose.decode.group.REFINE_BATCH_PIXELS), then bounds the rest
    (all of it, then tile by tile: REFINE_TILE) and scores only what can win: the persons are
    those of a full scan of every pixel (REFINE_FULL_SCAN), bit for bit, on dense maps with
    negative values and wide tags (the tiles decide), sparse maps with exact zeros and occluded
    joints (the bound of the rest decides), tag maps that are views in another memory order (as
    inference hands them over), in both conventions."""
    from pose.decode import group

    bench = _load_benchmark()
    rng = np.random.default_rng(tile + tag_dims)
    monkeypatch.setattr(group, "REFINE_TILE", tile)
    monkeypatch.setattr(group, "REFINE_BATCH_PIXELS", batch)
    filled = 0
    scenes = []
    for _ in range(4):
        hm = rng.normal(0.0, 0.05, (17, 64, 48)).astype(np.float32)
        tg = rng.normal(0.0, 2.0, (17, 64, 48, tag_dims)).astype(np.float32)
        for _ in range(5):  # partial persons: a few joints peak, the rest is left to refine
            y, x = rng.integers(4, 60), rng.integers(4, 44)
            joints = rng.random(17) < 0.6
            hm[joints, y, x] += rng.uniform(0.2, 1.0, int(joints.sum())).astype(np.float32)
            tg[:, y - 3:y + 4, x - 3:x + 4] = rng.normal(0.0, 2.0, tag_dims).astype(np.float32)
        scenes.append((hm, tg))
    for n, dense in ((8, False), (20, True), (20, False)):
        hm, tg, _ = bench.make_scene(n, seed=n, size=96, tag_dim=tag_dims, dense=dense, occluded=0.3)
        scenes.append((hm, tg))
    for hm, tg in (scenes[0], scenes[4]):  # (K, H, W, T) views of (T, K, H, W) maps
        scenes.append((hm, np.moveaxis(np.ascontiguousarray(np.moveaxis(tg, -1, 0)), 0, -1)))
    for hm, tg in scenes:
        for convention in ("project", "reference"):
            kw = dict(detection_threshold=0.1, tag_threshold=1.0, max_people=30, nms_kernel=5, tie_break=False,
                      adjust=True, refine=True, convention=convention)
            monkeypatch.setattr(group, "REFINE_FULL_SCAN", True)
            ref_persons, ref_scores = group.group_keypoints(hm, tg, **kw)
            monkeypatch.setattr(group, "REFINE_FULL_SCAN", False)
            persons, scores = group.group_keypoints(hm, tg, **kw)
            np.testing.assert_array_equal(persons, ref_persons)
            np.testing.assert_array_equal(scores, ref_scores)
            filled += int((ref_persons[..., 2] > 0).sum())
    assert filled > 0


def test_two_dimensional_tag_distances_are_the_reference_numbers(monkeypatch):
    """The flip test's T = 2 tags take a fast path (pose.decode.group._norm2, two columns instead of
    a NumPy reduction over the short last axis): its distances are the reference formula's
    ``(((t - m) ** 2).sum(-1)) ** 0.5`` bit for bit, over tag magnitudes from 1e-6 to 1e3, and
    grouping with it gives the persons grouping with the reduction gives."""
    from pose.decode import group

    bench = _load_benchmark()
    rng = np.random.default_rng(7)
    tags = (rng.normal(0.0, 1.0, (4096, 2)) * 10.0 ** rng.uniform(-6, 3, (4096, 1))).astype(np.float32)
    means = (rng.normal(0.0, 1.0, (9, 2)) * 10.0 ** rng.uniform(-6, 3, (9, 1))).astype(np.float32)
    reference = np.sqrt(((tags[None] - means[:, None]) ** 2).sum(-1))
    assert reference.dtype == np.float32
    np.testing.assert_array_equal(group._tag_distance(tags, means), reference)

    def reduction(t0, t1, m0, m1):  # the general path's arithmetic
        diff = np.stack([t0 - m0, t1 - m1], axis=-1)
        return np.sqrt((diff * diff).sum(axis=-1))

    kw = dict(detection_threshold=0.1, tag_threshold=1.0, max_people=30, nms_kernel=5, tie_break=False,
              adjust=True, refine=True, convention="reference")
    filled = 0
    for n, dense in ((8, False), (20, True)):
        hm, tg, _ = bench.make_scene(n, seed=n, size=96, tag_dim=2, dense=dense, occluded=0.3)
        fast = group.group_keypoints(hm, tg, **kw)
        with monkeypatch.context() as m:
            m.setattr(group, "_norm2", reduction)
            slow = group.group_keypoints(hm, tg, **kw)
        for a, b in zip(fast, slow):
            np.testing.assert_array_equal(a, b)
        filled += int((fast[0][..., 2] > 0).sum())
    assert filled > 0
