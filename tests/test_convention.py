"""The coordinate convention (params ``model.convention``): targets rendered in each
convention and decoded by each inference chain, with a perfect network (its outputs are
the targets of the input it is given, flipped input included)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from pose.augment.affine import apply_affine
from pose.codec import convention_rules
from pose.datasets.schema import FLIP_INDEX, NUM_JOINTS
from pose.decode.group import group_keypoints
from pose.decode.inference import heatmap_to_image, input_geometry, multi_scale_maps, resize_maps, unflip_maps
from pose.targets.heatmaps import joint_indices, peak_pixel, pixel_offset, render_heatmaps

K = NUM_JOINTS
CONVENTIONS = ("project", "reference")


class OracleNet(nn.Module):
    """A perfect network: for an input of a known geometry it returns the training targets
    of the persons it shows, drawn in ``convention`` (1/4 and 1/2 heatmaps of sigma
    ``sigma`` heatmap px, as ``pose.train.data`` and the reference draw them; one tag value
    per person, 2 apart, over a 5 x 5 patch at
    each joint's peak pixel of the 1/4 map, 0 elsewhere). The flipped input (second item of
    a batch of two) shows the persons mirrored ``x -> W - 1 + 2 o - x`` in input px, joints
    swapped: the exact mirror in the convention's own frame. Image px ``p`` is input px
    ``M (p - m) + m`` with ``m`` the convention's mapping offset (``o`` in ``project``, 0 in
    ``reference``: the official ``M p``), as ``pose.augment.transforms`` maps keypoints."""

    def __init__(self, keypoints: np.ndarray, geometries: dict[tuple[int, int], np.ndarray], *,
                 convention: str, subpixel: bool, sigma: float = 2.0):
        super().__init__()
        self.kp = np.asarray(keypoints, np.float64)          # (P, K, 3) image px
        self.geometries = geometries                          # (height, width) of an input -> its affine
        self.target_convention, self.subpixel, self.sigma = convention, subpixel, sigma
        self.dummy = nn.Parameter(torch.zeros(1))

    def _targets(self, kp_in: np.ndarray, height: int, width: int) -> list[torch.Tensor]:
        conv = self.target_convention
        out = []
        for stride, sigma in ((4, self.sigma), (2, self.sigma)):
            kp = kp_in.copy()
            kp[..., :2] /= stride
            hm = np.zeros((K, height // stride, width // stride), np.float32)
            for p in range(len(kp)):   # persons one by one: the max over persons is what render does
                np.maximum(hm, render_heatmaps(kp[p:p + 1], hm.shape[1], hm.shape[2], sigma, convention=conv,
                                               subpixel=self.subpixel), out=hm)
            if stride == 4:
                tags = np.zeros_like(hm)
                idx = joint_indices(kp, hm.shape[1], hm.shape[2], len(kp), convention=conv)
                for p in range(len(kp)):
                    for k in np.flatnonzero(idx[p, :, 1]):
                        rest = idx[p, k, 0] - k * hm.shape[1] * hm.shape[2]
                        y, x = divmod(int(rest), hm.shape[2])
                        tags[k, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = 2.0 * (p + 1)
                hm = np.concatenate([hm, tags])
            out.append(torch.from_numpy(hm)[None])
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        height, width = x.shape[-2:]
        o = pixel_offset(self.target_convention)
        mo = convention_rules(self.target_convention).map_offset
        kp_in = self.kp.copy()   # image px -> input px as the training transform maps them: M (p - m) + m
        kp_in[..., :2] = apply_affine(self.geometries[(height, width)], self.kp[..., :2] - mo) + mo
        outs = [self._targets(kp_in, height, width)]
        if x.shape[0] == 2:
            mirrored = kp_in.copy()
            mirrored[..., 0] = width - 1 + 2 * o - kp_in[..., 0]
            outs.append(self._targets(mirrored[:, list(FLIP_INDEX)], height, width))
        return [torch.cat(parts) for parts in zip(*outs)]


def grid_persons(num_persons: int, spacing: float, seed: int) -> np.ndarray:
    """(P, K, 3) image px keypoints: person p's joints on a 5 x 4 lattice ``spacing`` px
    apart inside its own cell (persons side by side; lattice points on multiples of 4 px),
    shifted by offsets spread evenly over [0, 4) px per axis (a shuffled stratified sample:
    uniform over a 1/4 map pixel at scale 1), all visible."""
    rng = np.random.default_rng(seed)
    n = num_persons * K
    fx = 4.0 * (rng.permutation(n) + rng.random(n)) / n
    fy = 4.0 * (rng.permutation(n) + rng.random(n)) / n
    kp = np.zeros((num_persons, K, 3))
    for p in range(num_persons):
        for k in range(K):
            r, c = divmod(k, 4)
            kp[p, k] = (20 + p * 5 * spacing + c * spacing, 20 + r * spacing, 2)
    kp[..., 0] += fx.reshape(num_persons, K)
    kp[..., 1] += fy.reshape(num_persons, K)
    return kp


def decode_bias(target_convention: str, chain_convention: str, *, subpixel: bool, flip_test: bool,
                project2image: bool, resize: str = "letterbox", image_size: tuple[int, int] = (512, 512),
                input_size: int = 512, test_scales: tuple[float, ...] = (1.0,), sigma: float = 2.0,
                num_persons: int = 6, seed: int = 0) -> tuple[np.ndarray, float, int]:
    """Mean (dx, dy) error in input px, mean |error| in input px, and joints decoded, of
    ``grid_persons`` rendered by :class:`OracleNet` in ``target_convention`` and decoded by
    the chain of ``chain_convention``."""
    width, height = image_size
    kp = grid_persons(num_persons, 16.0, seed)
    geos = [input_geometry(width, height, resize=resize, input_size=input_size, scale=s, min_scale=min(test_scales))
            for s in test_scales]
    net = OracleNet(kp, {(g.height, g.width): g.affine for g in geos}, convention=target_convention,
                    subpixel=subpixel, sigma=sigma)
    g = geos[list(test_scales).index(1.0)]
    image = np.zeros((height, width, 3), np.uint8)
    maps = multi_scale_maps(net, image, input_size=input_size, resize=resize, test_scales=list(test_scales),
                            flip_test=flip_test, project2image=project2image, convention=chain_convention)
    persons, _ = group_keypoints(maps.heatmaps.numpy(), maps.tags.numpy(), detection_threshold=0.1,
                                 tag_threshold=1.0, max_people=30, nms_kernel=5, tie_break=False,
                                 adjust=True, refine=True, convention=chain_convention)
    found = heatmap_to_image(persons, maps.affine, maps.stride, convention=chain_convention)
    errs = []
    for person, pts in zip(persons, found):
        ok = pts[:, 2] > 0
        who = int(round(float(np.median(person[ok, 3])) / 2.0)) - 1
        assert 0 <= who < num_persons
        errs.append((pts[ok, :2] - kp[who, ok, :2]) * g.affine[0, 0])   # image px -> input px
    err = np.concatenate(errs)
    return err.mean(axis=0), float(np.linalg.norm(err, axis=1).mean()), len(err)


# --------------------------------------------------------------------------- targets
def test_peak_pixel_and_offset_per_convention():
    x = np.array([3.0, 3.4, 3.5, 3.6, 3.99, -0.5])
    np.testing.assert_array_equal(peak_pixel(x, "project"), [3, 3, 4, 4, 4, -0.0])
    np.testing.assert_array_equal(peak_pixel(x, "reference"), [3, 3, 3, 3, 3, 0])    # int(): truncation
    assert (pixel_offset("project"), pixel_offset("reference")) == (0.0, 0.5)
    with pytest.raises(ValueError, match="model.convention"):
        pixel_offset("centre")


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_subpixel_targets_encode_the_continuous_location(convention):
    o = pixel_offset(convention)
    kp = np.zeros((1, K, 3))
    kp[0, 0] = (10.3, 7.8, 2)
    quant = render_heatmaps(kp, 20, 20, 1.5, convention=convention, subpixel=False)
    sub = render_heatmaps(kp, 20, 20, 1.5, convention=convention, subpixel=True)
    py, px = int(peak_pixel(7.8, convention)), int(peak_pixel(10.3, convention))
    assert quant[0, py, px] == pytest.approx(1.0)
    assert quant[0, py, px + 1] == pytest.approx(quant[0, py, px - 1])     # symmetric about the peak pixel
    # sub-pixel: the Gaussian of the continuous location at each pixel centre (i + o)
    yy, xx = np.mgrid[0:20, 0:20]
    expect = np.exp(-((xx + o - 10.3) ** 2 + (yy + o - 7.8) ** 2) / (2 * 1.5 ** 2))
    near = (np.abs(xx - px) <= 5) & (np.abs(yy - py) <= 5)
    np.testing.assert_allclose(sub[0][near], expect[near], rtol=1e-5, atol=1e-7)
    assert np.unravel_index(sub[0].argmax(), sub[0].shape) == (py, px)
    # the centroid of the sub-pixel map recovers the location, the quantised one does not
    cx = (sub[0] * (xx + o)).sum() / sub[0].sum()
    assert cx == pytest.approx(10.3, abs=0.02)
    assert abs((quant[0] * (xx + o)).sum() / quant[0].sum() - 10.3) > 0.15


# --------------------------------------------------------------------------- chain pieces
def test_resampling_and_unflip_follow_the_convention():
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 2, 4)
    proj = resize_maps(x, 4, 8, convention="project")[0, 0, 0]
    ref = resize_maps(x, 4, 8, convention="reference")[0, 0, 0]
    np.testing.assert_allclose(proj.numpy(), [0, 0.5, 1, 1.5, 2, 2.5, 3, 3])           # j -> j / 2
    np.testing.assert_allclose(ref.numpy(), [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3])  # (j + .5) / 2 - .5
    torch.testing.assert_close(unflip_maps(x, 2.0, convention="reference"), torch.flip(x, [3]))
    np.testing.assert_allclose(unflip_maps(x, 2.0, convention="project")[0, 0, 0].numpy(), [3, 2.5, 1.5, 0.5])
    with pytest.raises(ValueError, match="model.convention"):
        resize_maps(x, 4, 8, convention="x")


# --------------------------------------------------------------------------- the bias matrix
@pytest.mark.parametrize("convention, subpixel, flip_test, project2image, sigma", [
    pytest.param(conv, sub, flip, p2i, sigma,
                 id=f"{conv}-{'subpixel' if sub else 'peak'}-{'flip' if flip else 'plain'}-"
                    f"{'stride1' if p2i else 'stride2'}-sigma{sigma:g}")
    for conv in CONVENTIONS for sub in (False, True) for flip in (False, True) for p2i in (False, True)
    for sigma in (1.0, 2.0)])
def test_same_convention_decodes_without_bias(convention, subpixel, flip_test, project2image, sigma):
    """Targets rendered in a convention, decoded by the same convention's chain: the mean
    error over keypoints spread evenly over a 1/4 map pixel is < 0.05 input px per axis."""
    bias, mean_err, n = decode_bias(convention, convention, subpixel=subpixel, flip_test=flip_test,
                                    project2image=project2image, sigma=sigma)
    assert n == 6 * K
    assert mean_err < 1.5
    assert np.abs(bias).max() < 0.05, f"bias {bias} input px"


@pytest.mark.parametrize("flip_test", [False, True])
def test_cross_convention_bias_is_reported(flip_test, capsys):
    """Targets of one convention decoded by the other chain (printed; input px). Targets
    drawn in the project convention decoded by the reference chain land about +0.5 px
    per stride off, and the reverse about as much the other way."""
    rows = []
    for targets, chain in (("project", "reference"), ("reference", "project")):
        for subpixel in (False, True):
            bias, mean_err, _ = decode_bias(targets, chain, subpixel=subpixel, flip_test=flip_test,
                                            project2image=True)
            rows.append((targets, chain, subpixel, bias))
            assert np.abs(bias).max() > 0.2              # a real offset: the setting matters
    with capsys.disabled():
        print(f"\ncross-convention bias, flip_test={flip_test} (input px, (dx, dy)):")
        for targets, chain, subpixel, bias in rows:
            print(f"  targets {targets:9s} subpixel={subpixel!s:5s} -> chain {chain:9s}: "
                  f"({bias[0]:+.3f}, {bias[1]:+.3f})")


@pytest.mark.parametrize("project2image", [False, True])
@pytest.mark.parametrize("convention", CONVENTIONS)
def test_multi_scale_short_side_decodes_without_bias(convention, project2image):
    """The reference protocol (short side, scales 0.5 / 1 / 2, flip test) with sub-pixel
    targets: every scale's maps land on the base grid where they belong (project: through
    the exact affines; reference: interpolate, as the reference), so no bias remains."""
    bias, _, n = decode_bias(convention, convention, subpixel=True, flip_test=True, project2image=project2image,
                             resize="short_side", image_size=(512, 384), input_size=384,
                             test_scales=(0.5, 1.0, 2.0))
    assert n == 6 * K
    assert np.abs(bias).max() < 0.05, f"bias {bias} input px"


@pytest.mark.parametrize("resize, input_size", [("letterbox", 384), ("short_side", 288)])
def test_downscaled_input_decodes_without_bias(resize, input_size):
    """A 640 x 480 image at input scale 0.6: image px ``p`` is input px ``M (p - o) + o``, and
    decoding inverts exactly that. Applying ``M^-1`` to the input px directly, as the
    reference's ``get_final_preds`` does, would land ``o (1 - 1/f)`` image px = +0.2 input px
    off here."""
    bias, mean_err, n = decode_bias("reference", "reference", subpixel=True, flip_test=True, project2image=True,
                                    resize=resize, image_size=(640, 480), input_size=input_size)
    assert n == 6 * K and mean_err < 0.3
    assert np.abs(bias).max() < 0.05, f"bias {bias} input px"


# --------------------------------------------------------------------------- reference mode, row by row (issue 21)
def test_convention_rules_name_every_difference():
    """One Convention object per params value; every field differs between the two modes and
    the reference's are the official code's."""
    import dataclasses

    from pose.codec import CONVENTION_RULES, Convention

    proj, ref = CONVENTION_RULES["project"], CONVENTION_RULES["reference"]
    fields = [f.name for f in dataclasses.fields(Convention)]
    assert all(getattr(proj, f) != getattr(ref, f) for f in fields)
    assert (ref.pixel_offset, ref.keypoint_mapping, ref.input_affine, ref.assignment, ref.adjust_equal,
            ref.keep_all_groups, ref.missing_joint, ref.peak_ties) == (0.5, "raw", "float32", "munkres", -0.25, True,
                                                                       "origin", "torch")
    assert convention_rules("reference") is ref and convention_rules(ref) is ref
    with pytest.raises(ValueError, match="model.convention"):
        convention_rules("official")
    with pytest.raises(ValueError, match="assignment"):
        dataclasses.replace(ref, assignment="hungarian")


@pytest.mark.parametrize("crop", ["letterbox", "short_side"])
def test_reference_training_targets_sit_at_M_p(crop):
    """Row "mapping": the official RandomAffineTransform maps keypoints with the image's matrix,
    c = M p (lib/dataset/transforms/transforms.py, _affine_joints), then divides by nothing but
    the output size; the reference convention's targets are at M p / stride. Worked out for a
    320 x 240 image into 192 input px: letterbox M = [[0.6, 0, 0], [0, 0.6, 24]], short-side
    centre crop M = [[0.8, 0, -32], [0, 0.8, 0]]; p = (50.3, 70.6). The project convention maps
    M (p - o) + o (here o = 0: the same M p); the centred variant of the reference convention
    would be 0.5 (1 - f) px away. A flipped sample mirrors in the continuous frame: x -> 192 - x
    (the plain array flip; the official flips heatmap coordinates to out - 1 - x instead)."""
    from pose.augment.transforms import TrainTransform

    kp = np.zeros((1, K, 3))
    kp[0, 0] = (50.3, 70.6, 2)
    kp[0, 1] = (150.0, 100.0, 2)                     # left eye: lands in channel 2 (right eye) when flipped
    image = np.zeros((240, 320, 3), np.uint8)
    ignore = np.zeros((240, 320), np.uint8)
    expect = {"letterbox": (0.6 * 50.3, 0.6 * 70.6 + 24), "short_side": (0.8 * 50.3 - 32, 0.8 * 70.6)}[crop]
    for flip in (False, True):
        _, kps, _, m = TrainTransform(crop, None, convention="reference")(
            image, kp, ignore, input_size=192, strides=(4, 2), flip=flip, seed=0)
        x, y = expect
        nose_x = 192 - x if flip else x
        for stride, k in zip((4, 2), kps):
            np.testing.assert_allclose(k[0, 0, :2], (nose_x / stride, y / stride), atol=1e-9)
        eye = apply_affine(m if not flip else TrainTransform(crop, None, convention="reference")(
            image, kp, ignore, input_size=192, strides=(4,), flip=False, seed=0)[3], kp[0, 1, :2])
        eye_x = 192 - eye[0] if flip else eye[0]
        np.testing.assert_allclose(kps[0][0, FLIP_INDEX[1] if flip else 1, :2], (eye_x / 4, eye[1] / 4), atol=1e-9)
    centred = dataclasses.replace(convention_rules("reference"), keypoint_mapping="centred")
    _, kps, _, _ = TrainTransform(crop, None, convention=centred)(image, kp, ignore, input_size=192, strides=(1,),
                                                                   flip=False, seed=0)
    f = 0.6 if crop == "letterbox" else 0.8
    np.testing.assert_allclose(kps[0][0, 0, :2] - expect, 0.5 * (1 - f), atol=1e-9)


def test_reference_input_affine_is_built_from_float32_points():
    """Row "input affine": the official get_affine_transform puts three float32 points (the
    centre, the point half a source width above it, the right angle's third point, computed in
    float32) through cv2.getAffineTransform. Worked out for 640 x 427 at input 192: output
    320 x 192 (the long side 192 / 427 * 640 = 287.8, rounded as (x + 63) // 64 * 64 = 320),
    centre (int(320.5), int(214.0)) = (320, 214), source width 320 / 192 * 427 = 711.67 px,
    destination points (160, 96), (160, -64) and the third points of the right angles. The
    float32 affine differs from the exact one by ~1e-5 and moves some pixels of an image by one
    grey level (119 pixels of coco-mini image 397133, 640 x 427, at 192)."""
    from pose.decode.preprocess import short_side_geometry

    w, h = 640, 427
    exact = short_side_geometry(w, h, 192)
    official = short_side_geometry(w, h, 192, input_affine="float32")
    assert (official.width, official.height) == (exact.width, exact.height) == (320, 192)
    src_w = 320 / 192 * h / 200.0 * 200.0
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = (320, 214), (320, 214 - src_w / 2)
    dst[0], dst[1] = (160, 96), (160, 96 - 160)
    for pts in (src, dst):
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]], np.float32)
    np.testing.assert_array_equal(official.affine, cv2.getAffineTransform(src, dst))
    assert 1e-7 < np.abs(official.affine - exact.affine).max() < 1e-4
    np.testing.assert_allclose(exact.affine, [[192 / h, 0, 160 - 192 / h * 320], [0, 192 / h, 96 - 192 / h * 214]])
    # the reference convention's test input uses it (input_geometry), the project's the exact one
    assert np.array_equal(input_geometry(w, h, resize="short_side", input_size=192, convention="reference").affine,
                          official.affine)
    assert np.array_equal(input_geometry(w, h, resize="short_side", input_size=192, convention="project").affine,
                          exact.affine)
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    a = cv2.warpAffine(img, exact.affine, (320, 192))
    b = cv2.warpAffine(img, official.affine, (320, 192))
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() == 1 and 0 < (diff > 0).sum() < 0.01 * diff.size


def test_solver_ties_follow_munkres_on_a_hand_built_cost():
    """Row "assignment solver": three candidates of a joint against three groups with mean tags
    0.0, 0.4, 0.8; candidate tags 0.4, 0.6, 0.2, scores 0.9, 0.9, 0.5. Rounded distances
    [[0, 0, 0], [1, 0, 0], [0, 0, 1]], cost round(d) * 100 - score: two assignments cost -2.3.
    munkres (by hand: row minima subtracted; step 2 stars (0, 0), (1, 1); step 4 primes (0, 2)
    and covers row 0, primes (1, 2) and covers row 1, then in row 2 scanning from column 1
    keeps the last uncovered zero, (2, 0); step 5 swaps the path (2, 0) -> (0, 0) -> (0, 2))
    returns (0, 2), (1, 1), (2, 0), as the official parser groups them; SciPy another optimum."""
    from munkres import Munkres

    from pose.decode.group import match_candidates, munkres_assignment

    cost = np.array([[-0.9, -0.9, -0.9], [99.1, -0.9, -0.9], [-0.5, -0.5, 99.5]])
    rows, cols = munkres_assignment(cost)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 2), (1, 1), (2, 0)] == Munkres().compute(cost.copy())
    tags = [np.array([[0.0], [0.4], [0.8]], np.float32), np.array([[0.4], [0.6], [0.2]], np.float32)]
    scores = [np.array([0.9, 0.8, 0.7], np.float32), np.array([0.9, 0.9, 0.5], np.float32)]
    kw = dict(tag_threshold=1.0, max_people=30, order=(0, 1), tie_break=False)
    ref, n_ref = match_candidates(tags, scores, assignment="munkres", **kw)
    proj, n_proj = match_candidates(tags, scores, assignment="scipy", **kw)
    assert n_ref == n_proj == 3
    assert ref[1].tolist() == [2, 1, 0]                # candidate 0 -> group 2, 1 -> 1, 2 -> 0
    assert proj[1].tolist() != ref[1].tolist()         # the same cost, the other optimum
    # more candidates than groups: the 1e10 padding columns; the weakest candidate opens a group
    tags2 = [np.array([[0.0], [2.0]], np.float32), np.array([[0.1], [2.1], [0.2]], np.float32)]
    scores2 = [np.array([0.9, 0.8], np.float32), np.array([0.9, 0.8, 0.3], np.float32)]
    ref2, n2 = match_candidates(tags2, scores2, assignment="munkres", **kw)
    assert n2 == 3 and ref2[1].tolist() == [0, 1, 2]


def test_adjust_on_equal_neighbours_shifts_minus_a_quarter_in_reference():
    """Row "adjust on equal neighbours": the official adjust is ``if right > left: +0.25 else:
    -0.25`` (and the same for rows), then +0.5: a peak at pixel (10, 7) of a 1/2 map with equal
    left/right and up/down neighbours ends at (10.25, 7.25) heatmap px = (20.5, 14.5) input px;
    a higher right neighbour moves it +0.25. The project leaves a symmetric peak in place."""
    from pose.decode.group import quarter_offsets

    hm = np.zeros((K, 16, 16), np.float32)
    hm[0, 7, 10] = 1.0
    hm[0, 7, 9] = hm[0, 7, 11] = hm[0, 6, 10] = hm[0, 8, 10] = 0.5
    hm[1, 7, 10], hm[1, 7, 11], hm[1, 7, 9] = 1.0, 0.6, 0.5
    joint, x, y = np.array([0, 1]), np.array([10, 10]), np.array([7, 7])
    dx, dy = quarter_offsets(hm, joint, x, y, equal=-0.25)
    assert dx.tolist() == [-0.25, 0.25] and dy.tolist() == [-0.25, -0.25]
    dx, dy = quarter_offsets(hm, joint, x, y, equal=0.0)
    assert dx.tolist() == [0.0, 0.25] and dy.tolist() == [0.0, 0.0]
    tags = np.zeros((K, 16, 16, 1), np.float32)
    kw = dict(detection_threshold=0.1, tag_threshold=1.0, max_people=30, nms_kernel=5, tie_break=False,
              adjust=True, refine=False)
    aff = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    for convention, expect in (("reference", (20.5, 14.5)), ("project", (20.0, 14.0))):
        persons, _ = group_keypoints(hm, tags, convention=convention, **kw)
        np.testing.assert_allclose(heatmap_to_image(persons, aff, 2.0, convention=convention)[0, 0, :2], expect)


def test_convention_overrides_switch_one_test_time_field():
    """params evaluate.convention_overrides names a switch of the model's convention at test time
    (the way a recipe keeps a project choice under model.convention: reference): predict_image
    decodes a symmetric peak at -0.25 heatmap px with the reference rule and at 0 with
    {adjust_equal: 0.0}; unknown fields and values are refused naming the params key."""
    from pose.codec import with_overrides
    from pose.decode.inference import predict_image

    assert with_overrides("reference", {}) == "reference" and with_overrides("project", None) == "project"
    switched = with_overrides("reference", {"assignment": "scipy", "missing_joint": None})
    assert (switched.name, switched.assignment, switched.missing_joint) == ("reference", "scipy", "origin")
    with pytest.raises(ValueError, match="evaluate.convention_overrides: unknown field.*pixel_offset"):
        with_overrides("reference", {"pixel_offset": 0.0})
    with pytest.raises(ValueError, match="evaluate.convention_overrides: Convention.assignment"):
        with_overrides("reference", {"assignment": "greedy"})

    half = torch.zeros(1, K, 32, 32)
    half[0, 0, 10, 12] = 1.0
    half[0, 0, 10, 11] = half[0, 0, 10, 13] = half[0, 0, 9, 12] = half[0, 0, 11, 12] = 0.5
    quarter = torch.zeros(1, 2 * K, 16, 16)

    class Fixed(nn.Module):
        convention, num_joints, tag_dim = "reference", K, 1

        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return [quarter.expand(x.shape[0], -1, -1, -1), half.expand(x.shape[0], -1, -1, -1)]

    ev = dict(input_size=64, resize="letterbox", flip_test=False, test_scales=[1.0], detection_threshold=0.1,
              tag_threshold=1.0, max_people=30, nms_kernel=5, tie_break=False, project2image=False, adjust=True,
              refine=False, nms_oks=1.0)
    image = np.zeros((64, 64, 3), np.uint8)
    official = predict_image(Fixed(), image, eval_params=ev)[0]["keypoints"][0]
    kept = predict_image(Fixed(), image, eval_params=dict(ev, convention_overrides={"adjust_equal": 0.0}))
    # the 1/4 head (zeros, upsampled) halves the peak: the neighbours stay equal; (12 + 0.5 - 0.25) * 2
    np.testing.assert_allclose(official[:2], [24.5, 20.5])
    np.testing.assert_allclose(kept[0]["keypoints"][0][:2], [25.0, 21.0])


def test_readme_protocol_table_shows_the_params_defaults():
    """Issue 21 item 6: the defaults the README's test-protocol table names are params.yaml's.
    Every row whose first cell is a params key marks exactly one value ``(default`` and that value
    is the key's value in params.yaml (YAML-parsed, so `true`, `5`, `[1.0]`, `{}` compare as values)."""
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((repo / "params.yaml").read_text())
    text = (repo / "README.md").read_text()
    section = text.split("## Test protocol and coordinate convention", 1)[1].split("\n## ", 1)[0]
    checked = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| `") else []
        if len(cells) < 2 or "." not in cells[0].strip("`"):
            continue
        key = cells[0].strip("`")
        marked = [v for v in cells[1].replace("\\|", "|").split("|") if "(default" in v]
        if not marked:
            continue
        assert len(marked) == 1, f"README row {key}: more than one default"
        value = yaml.safe_load(marked[0].split("(default")[0].strip().strip("`"))
        node = params
        for part in key.split("."):
            node = node[part]
        assert value == node, f"README says {key} defaults to {value!r}; params.yaml has {node!r}"
        checked.append(key)
    assert {"evaluate.resize", "evaluate.project2image", "model.convention", "targets.subpixel",
            "evaluate.convention_overrides"} <= set(checked), checked


def test_reference_projection_follows_the_official_order():
    """Row "projection order" (float rounding, not a convention choice): with flip test and
    project2image the official get_multi_stage_outputs (lib/core/inference.py) averages the two
    heads per branch, ``(interp(quarter)[:K] + half) / 2`` (the flip branch flipped back and
    joint-swapped), projects EACH branch to the input with ``interpolate(size=(H, W),
    align_corners=False)`` and aggregate_results averages them, ``(plain + flip) / 2.0``; tags are
    the projected 1/4-head tags, plain then flip. InferenceNet in the reference convention gives
    these numbers to the last bit (averaging first, or another bilinear kernel, moves some
    pixels by an ulp, enough to turn an adjust on near-equal neighbours by 0.5 px)."""
    from pose.decode.inference import InferenceNet

    class Elementwise(nn.Module):            # per-sample arithmetic only: batching cannot change its numbers
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.a = nn.Parameter(torch.rand(1, 2 * K, 1, 1, generator=g) * 7)
            self.b = nn.Parameter(torch.rand(1, K, 1, 1, generator=g) * 5)

        def forward(self, x):
            m = x.mean(dim=1, keepdim=True)
            return [torch.sin(nn.functional.avg_pool2d(m, 4) * self.a),
                    torch.cos(nn.functional.avg_pool2d(m, 2) * self.b)]

    model = Elementwise()
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    net = InferenceNet(model, num_joints=K, tag_dim=1, convention="reference", flip_test=True,
                       flip_index=FLIP_INDEX, project2image=True)
    with torch.no_grad():
        hm, tags = net(x)
        interp = nn.functional.interpolate
        branches = []
        for flip in (False, True):
            quarter, half = model(torch.flip(x, [3]) if flip else x)
            q = interp(quarter, size=half.shape[-2:], mode="bilinear", align_corners=False)
            if flip:
                q, half = torch.flip(q, [3]), torch.flip(half, [3])
            idx = list(FLIP_INDEX) if flip else list(range(K))
            branches.append(((0 + q[:, :K][:, idx] + half[:, idx]) / 2, q[:, K:][:, idx]))
        proj = [(interp(h, size=(64, 96), mode="bilinear", align_corners=False),
                 interp(t, size=(64, 96), mode="bilinear", align_corners=False)) for h, t in branches]
        official_hm = (proj[0][0] + proj[1][0]) / 2.0
        official_tags = torch.stack([proj[0][1], proj[1][1]], dim=4)
    assert hm.shape == (1, K, 64, 96) and tags.shape == (1, K, 64, 96, 2)
    assert torch.equal(hm, official_hm) and torch.equal(tags, official_tags)


def test_readme_lists_every_convention_field_once():
    """Issue 21 item 3: every difference between the two modes is a field of
    pose.codec.Convention, and the README's row-by-row table names each field exactly once (a
    new field without a README row fails here)."""
    import dataclasses
    from pathlib import Path

    from pose.codec import Convention

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### The two conventions, row by row", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    first_cells = [line.split("|")[1] for line in rows]
    for field in (f.name for f in dataclasses.fields(Convention) if f.name != "name"):
        assert sum(f"(`{field}`" in cell for cell in first_cells) == 1, field
