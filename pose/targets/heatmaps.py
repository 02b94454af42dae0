"""Training targets of HigherHRNet (Cheng et al., CVPR 2020, Sec. 3.3) and associative
embedding (Newell et al., NeurIPS 2017, Sec. 3): Gaussian keypoint heatmaps and the
joint-index lists the tag (grouping) loss reads, plus the coordinate convention that
targets, decoding, resampling and flip test share.

Keypoints passed here are already in *heatmap* pixels (input px / stride, see
`pose.augment.affine`).

Coordinate conventions (params ``model.convention``; :data:`CONVENTIONS`)
-------------------------------------------------------------------------
A convention says where the centre of pixel index ``i`` lies on the continuous axis that
keypoint coordinates live on: at ``i + pixel_offset(convention)``.

* ``project``: centre at ``i`` (offset 0). A keypoint's peak pixel is ``rint(x)``; the
  decoder reports pixel ``i`` as coordinate ``i``; resampling maps pixel centres
  (``j -> j * w_in / w_out``); the flip test mirrors ``x -> S - 1 - x`` in input px.
* ``reference``: centre at ``i + 0.5`` (offset 0.5; pixel ``i`` covers ``[i, i + 1)``), the
  convention of the official HigherHRNet code: the Gaussian sits at the truncated pixel
  ``int(x)`` (``lib/dataset/target_generators/target_generators.py``, ``HeatmapGenerator``
  and ``JointsGenerator``), the decoder adds 0.5 (``lib/core/group.py``, ``adjust`` and
  ``refine``), maps are resampled with ``align_corners=False`` and flipped back with a
  plain array flip (``lib/core/inference.py``). Published weights are trained in it.

In both, the peak pixel is the pixel whose centre is nearest to the keypoint, so a
keypoint uniformly placed within a pixel decodes without bias in its own convention.
``targets.subpixel`` evaluates the Gaussian at the continuous location instead
(``exp(-|c_i - p|^2 / 2 sigma^2)`` with ``c_i`` the pixel centre), so the peak value is
below 1 off-centre and the neighbours encode the sub-pixel position; the reference
behaviour (Gaussian centred on the peak pixel) is ``subpixel: false``.
"""

from __future__ import annotations

import numpy as np

#: The coordinate conventions (module docstring), params ``model.convention``.
CONVENTIONS: tuple[str, ...] = ("project", "reference")


def pixel_offset(convention) -> float:
    """Continuous coordinate of the centre of pixel 0: 0.0 (``project``) or 0.5 (``reference``).
    ``convention`` is the params value or a `pose.codec.Convention` (its ``pixel_offset``).

    Raises ValueError naming the allowed values for anything else.
    """
    if not isinstance(convention, str) and isinstance(getattr(convention, "pixel_offset", None), float):
        return convention.pixel_offset
    if convention == "project":
        return 0.0
    if convention == "reference":
        return 0.5
    raise ValueError(f"model.convention must be one of {', '.join(CONVENTIONS)}; got {convention!r}")


def peak_pixel(coords: np.ndarray, convention: str) -> np.ndarray:
    """Pixel index whose centre is nearest to each coordinate (float64 array of the same
    shape, integral values): ``rint`` in ``project``, truncation ``int(x)`` in ``reference``
    (what the reference writes; equal to ``floor`` for x >= 0, and -0.5 truncates to 0 there
    too). Raises ValueError on an unknown convention."""
    c = np.asarray(coords, dtype=np.float64)
    return np.trunc(c) if pixel_offset(convention) else np.rint(c)


def _inside(keypoints: np.ndarray, height: int, width: int, convention: str) -> np.ndarray:
    x = peak_pixel(keypoints[..., 0], convention)
    y = peak_pixel(keypoints[..., 1], convention)
    return (keypoints[..., 2] > 0) & (x >= 0) & (y >= 0) & (x < width) & (y < height)


def render_heatmaps(keypoints: np.ndarray, height: int, width: int, sigma: float, *,
                    convention: str, subpixel: bool) -> np.ndarray:
    """Gaussian heatmaps, one channel per joint, max over persons.

    A keypoint takes part when its visibility v > 0 and its peak pixel
    (:func:`peak_pixel`) lies inside the map. Its Gaussian covers the square of radius
    ``ceil(3 sigma) + 1`` px around the peak pixel (the reference draws ``6 sigma + 3`` px,
    the same square for integer sigma).

    Args:
        keypoints: (P, K, 3) float array, x and y in heatmap px, v the COCO visibility.
        height, width: heatmap size in px.
        sigma: Gaussian standard deviation in heatmap px (params ``targets.sigma``).
        convention: ``project`` | ``reference`` (params ``model.convention``, module
            docstring).
        subpixel: evaluate the Gaussian at the continuous keypoint location (params
            ``targets.subpixel``); False centres it on the peak pixel (value 1 there), as
            the reference does.

    Returns:
        (K, height, width) float32 in [0, 1].

    Raises ValueError on a wrong shape, a non-positive sigma or an unknown convention.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[-1] != 3:
        raise ValueError(f"keypoints must be (P, K, 3), got {kp.shape}")
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    offset = pixel_offset(convention)
    num_joints = kp.shape[1]
    out = np.zeros((num_joints, height, width), dtype=np.float32)
    ok = _inside(kp, height, width, convention)
    if not ok.any():
        return out
    radius = int(np.ceil(3 * sigma)) + 1
    offs = np.arange(-radius, radius + 1)
    pi, ki = np.nonzero(ok)
    px, py = kp[pi, ki, 0], kp[pi, ki, 1]
    cx = peak_pixel(px, convention).astype(np.int64)
    cy = peak_pixel(py, convention).astype(np.int64)
    if subpixel:
        # distance of each patch pixel's centre to the continuous location, per axis
        dx = (cx[:, None] + offs[None, :] + offset) - px[:, None]      # (N, 2r+1)
        dy = (cy[:, None] + offs[None, :] + offset) - py[:, None]
    else:
        dx = np.broadcast_to(offs[None, :].astype(np.float64), (len(pi), offs.size))
        dy = dx
    gx = np.exp(-dx ** 2 / (2 * sigma ** 2))
    gy = np.exp(-dy ** 2 / (2 * sigma ** 2))
    vals = (gy[:, :, None] * gx[:, None, :]).astype(np.float32)          # (N, 2r+1, 2r+1)
    # Scatter all patches at once with np.maximum.at over flat indices.
    ys = cy[:, None, None] + offs[None, :, None]
    xs = cx[:, None, None] + offs[None, None, :]
    ys, xs = np.broadcast_arrays(ys, xs)
    valid = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    chan = np.broadcast_to(ki[:, None, None], ys.shape)
    flat = (chan * height + ys) * width + xs
    np.maximum.at(out.reshape(-1), flat[valid], vals[valid])
    return out


def joint_indices(keypoints: np.ndarray, height: int, width: int, max_people: int, *,
                  convention: str) -> np.ndarray:
    """Joint-index targets of the associative-embedding (tag) loss.

    Args:
        keypoints: (P, K, 3) float array in heatmap px of the tag map's resolution.
        height, width: tag map size in px.
        max_people: rows in the output (params ``targets.max_people``); extra persons
            are dropped, in the given order.
        convention: as :func:`render_heatmaps`: the tag is read at the keypoint's peak
            pixel (``rint`` / truncation, the reference's ``JointsGenerator``).

    Returns:
        (max_people, K, 2) int64: ``[..., 0]`` is the flat index ``k*H*W + y*W + x``
        into the (K, H, W) tag map, ``[..., 1]`` is 1 when the joint is usable
        (v > 0 and its peak pixel inside the map) and 0 otherwise. (The reference packs
        the usable joints of a person first; the loss does not depend on the order.)

    Raises ValueError on an unknown convention.
    """
    pixel_offset(convention)
    kp = np.asarray(keypoints, dtype=np.float64)
    num_joints = kp.shape[1] if kp.ndim == 3 else 0
    out = np.zeros((max_people, num_joints, 2), dtype=np.int64)
    if kp.ndim != 3 or kp.shape[0] == 0:
        return out
    kp = kp[:max_people]
    ok = _inside(kp, height, width, convention)
    x = np.clip(peak_pixel(kp[..., 0], convention), 0, width - 1).astype(np.int64)
    y = np.clip(peak_pixel(kp[..., 1], convention), 0, height - 1).astype(np.int64)
    k = np.arange(num_joints)[None, :]
    out[: kp.shape[0], :, 0] = np.where(ok, k * height * width + y * width + x, 0)
    out[: kp.shape[0], :, 1] = ok.astype(np.int64)
    return out
