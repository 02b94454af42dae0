"""Associative-embedding grouping of keypoint detections into persons (NumPy + SciPy).

Algorithm: Newell et al., "Associative Embedding", NeurIPS 2017, Sec. 3, as implemented
by HigherHRNet (Cheng et al., CVPR 2020; ``lib/core/group.py`` of the official code,
itself from ``princeton-vl/pose-ae-train``):

1. Per joint, max-pool NMS (``nms_kernel`` x ``nms_kernel``; the reference's COCO and
   CrowdPose configs use 5 with padding 2) and the ``max_people`` highest peaks
   (:func:`top_k_peaks`).
2. Joints are visited in the reference order (:data:`REFERENCE_JOINT_ORDER`: head,
   shoulders, hips, then arms and legs). Candidates above ``detection_threshold`` of the
   first visited joint open one group each; the candidates of every later joint are
   matched to the (first ``max_people``) existing groups by the Hungarian algorithm on
   ``cost = round(||tag - group_mean_tag||) * 100 - score``, optionally plus a tiny
   tie-breaker (:func:`matching_cost`; SciPy's ``linear_sum_assignment`` instead of the pure-Python
   ``munkres``). A candidate joins its assigned group when the (unrounded) tag distance is
   ``< tag_threshold``, otherwise it opens a new group.
3. Person score = mean over all K joints of the detection scores (missing joints count 0),
   taken before refinement, as in the reference.
4. ``adjust``: quarter-pixel shift of each detected joint toward its higher neighbour
   (:func:`quarter_offsets`; none when both neighbours are equal).
5. ``refine``: each joint a person misses is searched over the whole map of that joint as
   ``argmax(heatmap - round(||tag - person_mean_tag||))``; it is filled in when the
   heatmap value there is > 0 (with the quarter-pixel shift, as the reference does).

Coordinate units: everything here is in **pixel indices of the maps passed in**: pixel
``(row y, column x)`` is reported as ``(x, y)`` (plus the quarter-pixel adjustment). The
coordinate convention's pixel-centre offset (``pose.targets.heatmaps.pixel_offset``: the
reference's +0.5) is added when the points leave heatmap px
(``pose.decode.inference.heatmap_to_image``); the reference adds it inside ``adjust`` and
``refine``, so there a joint matched with ``adjust`` off lacks it.

Deviations from the reference, all deliberate: the optional tie-breaking term of
:func:`matching_cost` (params ``evaluate.tie_break``); no shift on equal neighbours in
``adjust`` (the reference shifts -0.25); the rectangular assignment instead of padding with 1e10 columns (same
optimum); groups are kept in a list (the reference keys a dict by the first tag value, so
two groups with exactly equal tags collide);
refinement reads the person's mean tag from the matched peaks' tags (the reference re-reads
them at the integer part of the adjusted location, which is the same pixel); the whole
decode is vectorised (NMS, gathers, adjust, and refinement batched per joint).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

#: Joint visiting order of the reference (1-based [1..7, 12, 13, 8..11, 14..17] made
#: 0-based): nose, eyes, ears, shoulders, hips, then elbows, wrists, knees, ankles.
REFERENCE_JOINT_ORDER: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 11, 12, 7, 8, 9, 10, 13, 14, 15, 16)

#: Weight of the tie-breaking term of :func:`matching_cost`.
TIE_BREAK = 1e-6


def default_joint_order(num_joints: int) -> tuple[int, ...]:
    """Visiting order for ``num_joints`` joints: the reference order restricted to indices
    ``< num_joints`` followed by any remaining indices (for 14-joint CrowdPose this is the
    reference's own truncated order)."""
    order = [j for j in REFERENCE_JOINT_ORDER if j < num_joints]
    order += [j for j in range(num_joints) if j not in order]
    return tuple(order)


def max_pool_nms(heatmaps: np.ndarray, kernel: int) -> np.ndarray:
    """Keep local maxima: ``heatmaps * (heatmaps == maxpool(heatmaps))`` (stride 1, padding
    ``kernel // 2`` with -inf, like ``torch.nn.MaxPool2d``). Plateaus keep every pixel.

    Args:
        heatmaps: (K, H, W) float array.
        kernel: odd window size in px.

    Returns:
        (K, H, W) array of the input dtype, non-maxima set to 0.

    Raises ValueError on a wrong rank or an even/non-positive kernel.
    """
    hm = np.asarray(heatmaps)
    if hm.ndim != 3:
        raise ValueError(f"heatmaps must be (K, H, W), got {hm.shape}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be odd and positive, got {kernel}")
    pooled = hm.copy()
    for axis in (2, 1):  # separable: rows, then columns (borders behave as -inf padding)
        src = pooled.copy()
        n = src.shape[axis]
        for d in range(1, kernel // 2 + 1):
            if d >= n:
                break
            lo = [slice(None)] * 3
            hi = [slice(None)] * 3
            lo[axis], hi[axis] = slice(0, n - d), slice(d, n)
            np.maximum(pooled[tuple(lo)], src[tuple(hi)], out=pooled[tuple(lo)])
            np.maximum(pooled[tuple(hi)], src[tuple(lo)], out=pooled[tuple(hi)])
    return np.where(hm == pooled, hm, np.zeros((), hm.dtype))


def _window_offsets(kernel: int) -> list[tuple[int, int]]:
    """The (dy, dx) offsets of a ``kernel x kernel`` window without (0, 0), nearest first
    (the 4-neighbours, then the diagonals, then the outer rings)."""
    r = kernel // 2
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    return sorted(offs, key=lambda o: (max(abs(o[0]), abs(o[1])), abs(o[0]) + abs(o[1]), o))


def _sparse_peaks(hm: np.ndarray, threshold: float, kernel: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Local maxima above ``threshold`` by checking only the pixels above it; None when
    too many pixels are above it for the sparse check to pay off.

    The window is checked one neighbour offset at a time, nearest first, and after each
    offset only the pixels still at least as high as every neighbour seen so far are kept:
    most pixels of a blob fail against an immediate neighbour, so the outer rings of a
    large window (5 x 5: 16 of its 24 offsets) are read for a few pixels per peak only.
    """
    num_joints, h, w = hm.shape
    flat_idx = np.flatnonzero(hm > threshold)  # 1-D nonzero: far faster than 3-D np.nonzero
    if flat_idx.size > hm.size // 8:
        return None
    j, rest = np.divmod(flat_idx, h * w)
    y, x = np.divmod(rest, w)
    v = hm.reshape(-1)[flat_idx]
    for dy, dx in _window_offsets(kernel):
        if not v.size:
            break
        yy, xx = y + dy, x + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        nb = hm[j, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        keep = ~inside | (v >= nb)
        if not keep.all():
            j, y, x, v = j[keep], y[keep], x[keep], v[keep]
    return j, y * w + x, v


def top_k_peaks(heatmaps: np.ndarray, k: int, nms_kernel: int,
                threshold: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` highest NMS peaks of every joint (NumPy only; pass ``tensor.cpu().numpy()``).

    Args:
        heatmaps: (K, H, W) float array (e.g. the aggregated model heatmaps of one image).
        k: peaks per joint (``max_people``); clipped to ``H * W``.
        nms_kernel: odd max-pool window of the NMS, in px.
        threshold: optional value >= 0; peaks ``<= threshold`` are not returned (their
            slots hold score 0 at x = y = 0). With it, only pixels above the threshold are
            examined, which is much faster on real heatmaps. The peaks above the
            threshold are exactly those of the unthresholded call.

    Returns:
        ``(scores, xs, ys)``: (K, k) float32 heatmap values, sorted descending per joint
        (ties: lower flat index first), and (K, k) int64 column / row of each peak in
        heatmap px. After NMS non-peaks are 0, so when a joint has fewer than ``k`` peaks
        the remaining entries have score 0 (drop them with a positive threshold).

    Raises ValueError on a wrong shape, ``k < 1`` or a negative threshold.
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    if hm.ndim != 3:
        raise ValueError(f"heatmaps must be (K, H, W), got {hm.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if threshold is not None and threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    num_joints, h, w = hm.shape
    k = min(int(k), h * w)
    sparse = _sparse_peaks(hm, float(threshold), nms_kernel) if threshold is not None else None
    if sparse is not None:
        j, ind, v = sparse
        order = np.lexsort((ind, -v, j))  # by joint, value descending, flat index
        j, ind, v = j[order], ind[order], v[order]
        starts = np.searchsorted(j, np.arange(num_joints))
        rank = np.arange(j.size) - starts[j]
        sel = rank < k
        vals = np.zeros((num_joints, k), dtype=np.float32)
        inds = np.zeros((num_joints, k), dtype=np.int64)
        vals[j[sel], rank[sel]] = v[sel]
        inds[j[sel], rank[sel]] = ind[sel]
        return vals, inds % w, inds // w
    flat = max_pool_nms(hm, nms_kernel).reshape(num_joints, -1)
    if k < flat.shape[1]:
        part = np.argpartition(-flat, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(flat.shape[1]), (num_joints, flat.shape[1]))
    vals = np.take_along_axis(flat, part, axis=1)
    # Sort each row by value descending, then by flat index ascending (deterministic ties).
    order = np.lexsort((part, -vals), axis=1)
    ind = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    if threshold is not None:
        drop = vals <= threshold
        vals = np.where(drop, 0.0, vals)
        ind = np.where(drop, 0, ind)
    return vals.astype(np.float32), (ind % w).astype(np.int64), (ind // w).astype(np.int64)


def _as_tags(tags: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    t = np.asarray(tags, dtype=np.float32)
    if t.ndim == 3:
        t = t[..., None]
    if t.ndim != 4 or t.shape[:3] != shape:
        raise ValueError(f"tags must be (K, H, W, T) with (K, H, W) = {shape}, got {np.shape(tags)}")
    return t


def quarter_offsets(heatmaps: np.ndarray, joint: np.ndarray, x: np.ndarray,
                    y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The quarter-pixel adjustment of peaks (reference ``HeatmapParser.adjust`` / ``refine``).

    Args:
        heatmaps: (K, H, W) float maps; joint, x, y: (N,) int64 peak joint / column / row.

    Returns:
        ``(dx, dy)``: (N,) float64 each, +0.25 heatmap px toward the higher of the two
        neighbours on that axis, 0 when they are equal (borders clamped, so a peak on the
        border compares with itself). Deliberate deviation: the reference shifts -0.25 on
        equal neighbours, which biases every symmetric peak (all peaks of targets drawn at
        a pixel centre) by -0.25 px.
    """
    _, h, w = heatmaps.shape
    right = heatmaps[joint, y, np.minimum(x + 1, w - 1)]
    left = heatmaps[joint, y, np.maximum(x - 1, 0)]
    down = heatmaps[joint, np.minimum(y + 1, h - 1), x]
    up = heatmaps[joint, np.maximum(y - 1, 0), x]
    return 0.25 * np.sign(right - left).astype(np.float64), 0.25 * np.sign(down - up).astype(np.float64)


def matching_cost(dist: np.ndarray, scores: np.ndarray, tag_threshold: float, *, tie_break: bool) -> np.ndarray:
    """Hungarian cost of candidates (rows) against groups (columns).

    ``round(dist) * 100 - score`` is the reference's cost. It ties often: when every
    candidate gets a group the score term is the same for all assignments, and sums of
    rounded distances coincide (2 + 2 == 4 + 0), so the reference's result then depends on
    the solver's internals (munkres and SciPy pick different optima). A tiny term
    ``TIE_BREAK * (min(dist, 100) + 100 * (dist >= tag_threshold))`` (at most 2e-4 per
    candidate) breaks such ties toward fewer rejected matches and smaller distances. It
    can change the reference's choice only between assignments whose reference costs
    differ by less than 2e-4 per candidate. Exact ties remain when two candidates of a
    joint carry identical tags.

    Args:
        dist: (C, G) float64 L2 tag distances; scores: (C,) detection scores.
        tag_threshold: as :func:`match_candidates`.
        tie_break: add the tie-breaking term (params ``evaluate.tie_break``); False is
            the reference's cost.

    Returns (C, G) float64 costs.
    """
    cost = np.round(dist) * 100.0 - scores[:, None]
    if not tie_break:
        return cost
    tie = np.minimum(dist, 100.0) + 100.0 * (dist >= tag_threshold)
    return cost + TIE_BREAK * tie


def match_candidates(cand_tags: Sequence[np.ndarray], cand_scores: Sequence[np.ndarray], *,
                     tag_threshold: float, max_people: int, order: Sequence[int],
                     tie_break: bool) -> tuple[np.ndarray, int]:
    """Greedy-by-joint Hungarian grouping (step 2 of the module docstring).

    Args:
        cand_tags: per joint, (C_j, T) float tags of its candidates (already thresholded).
        cand_scores: per joint, (C_j,) float detection scores.
        tag_threshold: a candidate joins its assigned group when the L2 tag distance to the
            group's mean tag is ``< tag_threshold``.
        max_people: only the first ``max_people`` groups take part in matching.
        order: joint visiting order.
        tie_break: use the tie-breaking term of :func:`matching_cost`.

    Returns:
        ``(assign, n)``: ``assign`` is a (K, max_j C_j) int64 array, the group index of each
        candidate (-1 for padding), and ``n`` the number of groups.
    """
    num_joints = len(cand_tags)
    width = max((len(s) for s in cand_scores), default=0)
    assign = np.full((num_joints, width), -1, dtype=np.int64)
    tdim = cand_tags[0].shape[1] if num_joints else 1
    cap = sum(len(s) for s in cand_scores)
    tag_sum = np.zeros((max(cap, 1), tdim), dtype=np.float64)
    tag_cnt = np.zeros(max(cap, 1), dtype=np.float64)
    n = 0
    for j in order:
        tags_j = np.asarray(cand_tags[j], dtype=np.float64)
        scores_j = np.asarray(cand_scores[j], dtype=np.float64)
        c = len(scores_j)
        if c == 0:
            continue
        if n == 0:
            assign[j, :c] = np.arange(c)
            tag_sum[:c] = tags_j
            tag_cnt[:c] = 1.0
            n = c
            continue
        g = min(n, max_people)
        means = tag_sum[:g] / tag_cnt[:g, None]
        dist = np.sqrt(((tags_j[:, None, :] - means[None, :, :]) ** 2).sum(axis=2))  # (c, g)
        cost = matching_cost(dist, scores_j, tag_threshold, tie_break=tie_break)
        # c > g: the reference pads to square with constant columns (a row on a padding
        # column opens a new group); the rectangular problem has the same optimum.
        rows, cols = linear_sum_assignment(cost)
        joined = np.zeros(c, dtype=bool)
        valid = cols < g
        r_ok, c_ok = rows[valid], cols[valid]
        ok = dist[r_ok, c_ok] < tag_threshold
        r_ok, c_ok = r_ok[ok], c_ok[ok]
        assign[j, r_ok] = c_ok
        tag_sum[c_ok] += tags_j[r_ok]
        tag_cnt[c_ok] += 1.0
        joined[r_ok] = True
        new_rows = np.flatnonzero(~joined)  # in row order, as the reference creates them
        if new_rows.size:
            ids = n + np.arange(new_rows.size)
            assign[j, new_rows] = ids
            tag_sum[ids] = tags_j[new_rows]
            tag_cnt[ids] = 1.0
            n += new_rows.size
    return assign, n


def group_keypoints(heatmaps: np.ndarray, tags: np.ndarray, *, detection_threshold: float,
                    tag_threshold: float, max_people: int, adjust: bool, refine: bool,
                    nms_kernel: int, tie_break: bool, joint_order: Sequence[int] | None = None,
                    refine_chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Decode one image's heatmaps and tag maps into persons (see module docstring).

    Args:
        heatmaps: (K, H, W) float32 detection heatmaps (e.g. aggregated 1/2-resolution maps).
        tags: (K, H, W, T) float32 tag maps (T = tag_dim x flips x scales); (K, H, W) is
            read as T = 1.
        detection_threshold: candidates need a heatmap value ``> detection_threshold``.
        tag_threshold: max L2 tag distance (exclusive) for joining an existing group.
        max_people: peaks per joint and groups taking part in matching.
        adjust: quarter-pixel shift of grouped joints toward the higher neighbour.
        refine: fill each person's missing joints from its mean tag (reference ``refine``).
        nms_kernel: odd NMS window in px of these maps (params ``evaluate.nms_kernel``; the
            reference's ``TEST.NMS_KERNEL`` 5 with padding 2 at input resolution).
        tie_break: the tie-breaking term of :func:`matching_cost` (params
            ``evaluate.tie_break``).
        joint_order: visiting order (default :func:`default_joint_order`).
        refine_chunk: persons per batched refinement step (bounds memory to
            ``refine_chunk * H * W * T`` floats; no effect on the result).

    Returns:
        ``(persons, scores)``: persons (N, K, 4) float32 ``[x, y, score, tag_mean]``, x and y
        in heatmap px of the given maps (missing joints: all four 0), ``tag_mean`` the
        joint's tag vector averaged over its T channels; scores (N,) float32, the person score (mean of
        its K joint scores before refinement). Persons are in creation order; at most
        ``max_people`` of them (the best-scoring; the reference keeps every group).

    Raises ValueError on inconsistent shapes, ``max_people < 1`` or a negative
    ``detection_threshold``.
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    if hm.ndim != 3:
        raise ValueError(f"heatmaps must be (K, H, W), got {hm.shape}")
    tg = _as_tags(tags, hm.shape)
    if max_people < 1:
        raise ValueError(f"max_people must be >= 1, got {max_people}")
    if detection_threshold < 0:
        raise ValueError(f"detection_threshold must be >= 0, got {detection_threshold}")
    num_joints, h, w = hm.shape
    order = tuple(joint_order) if joint_order is not None else default_joint_order(num_joints)
    if sorted(order) != list(range(num_joints)):
        raise ValueError(f"joint order must be a permutation of range({num_joints}), got {order}")

    thr = max(float(detection_threshold), 0.0)
    vals, xs, ys = top_k_peaks(hm, max_people, nms_kernel, threshold=thr)
    jj = np.arange(num_joints)[:, None]
    tag_k = tg[jj, ys, xs]  # (K, k, T)
    keep = vals > detection_threshold
    counts = keep.sum(axis=1)
    # top_k_peaks sorts descending, so the kept candidates are a prefix of each row.
    cand_tags = [tag_k[j, :counts[j]] for j in range(num_joints)]
    cand_scores = [vals[j, :counts[j]] for j in range(num_joints)]
    assign, n = match_candidates(cand_tags, cand_scores, tag_threshold=tag_threshold,
                                 max_people=max_people, order=order, tie_break=tie_break)
    persons = np.zeros((n, num_joints, 4), dtype=np.float32)
    if n == 0:
        return persons, np.zeros(0, dtype=np.float32)

    jk, ck = np.nonzero(assign >= 0)
    pk = assign[jk, ck]
    # A later candidate of the same joint never lands in a group that already has that
    # joint (each group gets at most one row per assignment), so writes do not collide.
    px = xs[jk, ck].astype(np.float32)
    py = ys[jk, ck].astype(np.float32)
    if adjust:
        dx, dy = quarter_offsets(hm, jk, xs[jk, ck], ys[jk, ck])
        px += dx
        py += dy
    persons[pk, jk, 0] = px
    persons[pk, jk, 1] = py
    persons[pk, jk, 2] = vals[jk, ck]
    persons[pk, jk, 3] = tag_k[jk, ck].mean(axis=1)
    scores = persons[:, :, 2].mean(axis=1).astype(np.float32)

    mean_tag = None
    if refine:
        # Person mean tag from its matched peaks' tags.
        tsum = np.zeros((n, tg.shape[-1]), dtype=np.float64)
        np.add.at(tsum, pk, tag_k[jk, ck].astype(np.float64))
        tcnt = np.bincount(pk, minlength=n).astype(np.float64)
        mean_tag = (tsum / tcnt[:, None]).astype(np.float32)
    if n > max_people:
        # Deviation from the reference (which returns every group): keep the max_people
        # best-scoring persons, in creation order. Unmatched candidates each open a group, so
        # a weak model yields up to K * max_people fragments; COCOeval scores only the top 20
        # per image (maxDets), so AP is unchanged for max_people >= 20, and refinement (the
        # costly part) runs on max_people persons at most.
        top = np.sort(np.argsort(-scores, kind="stable")[:max_people])
        persons, scores = persons[top], scores[top]
        mean_tag = mean_tag[top] if mean_tag is not None else None
    if refine:
        _refine(hm, tg, persons, mean_tag, refine_chunk)
    return persons, scores


#: Refinement first scores each person on the heatmap's REFINE_CANDIDATES highest pixels; only a
#: person whose best candidate score does not beat every other pixel's heatmap value is scored on
#: the whole map. Speed only: the result is the full scan's, pixel for pixel (:func:`_refine`).
REFINE_CANDIDATES = 4096


def _tag_distance(tag_px: np.ndarray, mean_tag: np.ndarray) -> np.ndarray:
    """L2 distance (P, N) float32 between N tag vectors ``tag_px`` (N, T) and P mean tags (P, T)."""
    if tag_px.shape[-1] == 1:
        return np.abs(np.subtract(tag_px[None, :, 0], mean_tag[:, 0][:, None]))
    diff = tag_px[None] - mean_tag[:, None, :]  # (P, N, T)
    return np.sqrt(np.einsum("pnt,pnt->pn", diff, diff))


def _refine(hm: np.ndarray, tg: np.ndarray, persons: np.ndarray, mean_tag: np.ndarray, chunk: int) -> None:
    """Fill missing joints in place (reference ``HeatmapParser.refine``), batched per joint.

    For joint ``j`` of a person with mean tag ``m`` the reference takes the first (row-major)
    argmax over all pixels of ``hm[j] - round(||tag[j] - m||)`` and keeps it when the heatmap
    there is positive. Since ``round(.) >= 0``, a pixel's score never exceeds its heatmap
    value: when the best score over the :data:`REFINE_CANDIDATES` highest heatmap pixels
    beats the heatmap value of every other pixel, it is the global maximum and the first
    maximiser is among the candidates (exact); other persons (about 1 in 10 on real photos)
    are scored on the whole map, as the reference does. Not in the reference: a speed-up with
    the same result (``tests/test_decode.py`` compares it with a full scan).
    """
    num_joints, h, w = hm.shape
    missing = persons[:, :, 2] == 0  # (N, K)
    for j in np.flatnonzero(missing.any(axis=0)):
        people = np.flatnonzero(missing[:, j])
        flat = hm[j].reshape(-1)
        tags_flat = tg[j].reshape(-1, tg.shape[-1])  # (H*W, T)
        best_idx = np.empty(people.size, dtype=np.int64)
        full = np.ones(people.size, dtype=bool)
        if REFINE_CANDIDATES < flat.size:
            kth = flat.size - REFINE_CANDIDATES
            threshold = np.partition(flat, kth)[kth]
            cand = np.flatnonzero(flat >= threshold)  # row-major order
            others = flat[flat < threshold]
            rest_max = others.max() if others.size else -np.inf
            for s in range(0, people.size, max(1, chunk)):
                sl = slice(s, s + max(1, chunk))
                dist = _tag_distance(tags_flat[cand], mean_tag[people[sl]])
                np.round(dist, out=dist)
                score = np.subtract(flat[cand][None], dist, out=dist)
                arg = score.argmax(axis=1)
                exact = score[np.arange(arg.size), arg] > rest_max
                best_idx[sl] = cand[arg]
                full[sl] = ~exact
        for s in range(0, int(full.sum()), max(1, chunk)):
            sel = np.flatnonzero(full)[s:s + max(1, chunk)]
            dist = _tag_distance(tags_flat, mean_tag[people[sel]])
            np.round(dist, out=dist)
            score = np.subtract(flat[None], dist, out=dist)
            best_idx[sel] = score.argmax(axis=1)
        y, x = best_idx // w, best_idx % w
        val = hm[j, y, x]
        ok = val > 0
        if not ok.any():
            continue
        p, x, y, val = people[ok], x[ok], y[ok], val[ok]
        jv = np.full(p.size, j)
        dx, dy = quarter_offsets(hm, jv, x, y)
        persons[p, j, 0] = x + dx
        persons[p, j, 1] = y + dy
        persons[p, j, 2] = val
        persons[p, j, 3] = tg[j, y, x].mean(axis=-1)


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, sigmas: np.ndarray, oks_threshold: float) -> np.ndarray:
    """Greedy pose non-maximum suppression by object keypoint similarity.

    Persons are visited by descending score; a person is dropped when its OKS with an
    already kept person exceeds ``oks_threshold``. OKS is computed as COCO does
    (cocodataset.org/#keypoints-eval: ``exp(-d^2 / (2 s^2 k^2))`` with ``k = 2 sigma``,
    averaged over the joints the kept person found), with the kept person's keypoint
    bounding-box area as ``s^2`` (the pose NMS of mmpose's bottom-up decoders; the AE /
    HigherHRNet reference has none). It removes the duplicate persons that the refine
    step makes when several partial groups of one person each pull in the same joints.

    Args:
        keypoints: (N, K, 3) float ``[x, y, score]`` (any one coordinate frame; score 0 =
            joint not found).
        scores: (N,) float person scores.
        sigmas: (K,) float OKS sigmas (``pose.datasets.schema.COCO_SIGMAS``).
        oks_threshold: in (0, 1]; ``>= 1`` keeps everyone.

    Returns:
        (M,) int64 indices of the kept persons, by descending score (ties: input order).

    Raises:
        ValueError: on mismatched shapes.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    sig = np.asarray(sigmas, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] < 3 or sc.shape != (kp.shape[0],) or sig.shape != (kp.shape[1],):
        raise ValueError(f"need keypoints (N, K, 3), scores (N,), sigmas (K,); got {kp.shape}, {sc.shape}, {sig.shape}")
    order = np.argsort(-sc, kind="stable")
    if oks_threshold >= 1.0 or len(order) < 2:
        return order.astype(np.int64)
    found = kp[..., 2] > 0
    var = (2.0 * sig) ** 2
    kept: list[int] = []
    suppressed = np.zeros(len(kp), dtype=bool)
    for i in order:
        if suppressed[i]:
            continue
        kept.append(int(i))
        ref = found[i]
        if not ref.any():
            continue
        xy = kp[i, ref, :2]
        area = float(np.prod(xy.max(axis=0) - xy.min(axis=0))) + np.spacing(1.0)
        suppressed[i] = True
        rest = np.flatnonzero(~suppressed)
        d2 = ((kp[rest][:, ref, :2] - xy[None]) ** 2).sum(axis=-1)          # (R, J)
        oks = np.exp(-d2 / (2.0 * area * var[ref][None])).mean(axis=1)
        suppressed[rest[oks > oks_threshold]] = True
    return np.asarray(kept, dtype=np.int64)
