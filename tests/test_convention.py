"""The coordinate convention (params ``model.convention``): targets rendered in each
convention and decoded by each inference chain, with a perfect network (its outputs are
the targets of the input it is given, flipped input included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pose.augment.affine import apply_affine
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
    ``M (p - o) + o``, as ``pose.augment.transforms`` maps keypoints."""

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
        kp_in = self.kp.copy()   # image px -> input px as the training transform maps them: M (p - o) + o
        kp_in[..., :2] = apply_affine(self.geometries[(height, width)], self.kp[..., :2] - o) + o
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
                                 adjust=True, refine=True)
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
