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
   tie-breaker (:func:`matching_cost`). A candidate joins its assigned group when the
   (unrounded) tag distance is ``< tag_threshold``, otherwise it opens a new group.
3. Person score = mean over all K joints of the detection scores (missing joints count 0),
   taken before refinement, as in the reference.
4. ``adjust``: quarter-pixel shift of each detected joint toward its higher neighbour
   (:func:`quarter_offsets`).
5. ``refine``: each joint a person misses is searched over the whole map of that joint as
   ``argmax(heatmap - round(||tag - person_mean_tag||))``; it is filled in when the
   heatmap value there is > 0 (with the quarter-pixel shift, as the reference does).

Coordinate units: everything here is in **pixel indices of the maps passed in**: pixel
``(row y, column x)`` is reported as ``(x, y)`` (plus the quarter-pixel adjustment). The
coordinate convention's pixel-centre offset (``pose.targets.heatmaps.pixel_offset``: the
reference's +0.5) is added when the points leave heatmap px
(``pose.decode.preprocess.heatmap_to_image``); the reference adds it inside ``adjust`` and
``refine``, so there a joint matched with ``adjust`` off lacks it (not reproduced).

The coordinate convention (``convention``: params ``model.convention`` or a
`pose.codec.Convention`) decides four things here, each a named field:

* ``assignment``: ``scipy`` solves the rectangular cost with ``linear_sum_assignment``;
  ``munkres`` (``reference``) gives the assignment the ``munkres`` package returns for the
  cost padded to square with 1e10 columns, as the official code calls it
  (:func:`munkres_assignment`: the same algorithm, steps and scan order, so the same choice
  among exactly tied optima, and the group mean tags in float32 as the reference averages
  them). The two differ only where several assignments have the optimal cost.
* ``adjust_equal``: the shift of a peak whose two neighbours are equal: 0 (``project``) or
  -0.25 (``reference``, the official ``else`` branch; it biases every symmetric peak).
* ``keep_all_groups``: ``project`` keeps the ``max_people`` best-scoring persons; the
  reference (``True``) keeps every group.
* ``peak_ties``: the order of NMS peaks with exactly equal values (they meet the assignment
  solver in that order, and the ``k``-th slot may have to choose between them): ``index``
  (``project``: lower flat index first) or ``torch`` (``reference``: the order the official
  ``HeatmapParser.top_k``'s ``torch.topk`` returns on CPU, :func:`torch_topk_order`).

Other deviations from the reference, deliberate in both modes: the optional tie-breaking
term of :func:`matching_cost` (params ``evaluate.tie_break``, off by default); groups are kept
in a list (the reference keys a dict by the first tag value, so two groups with exactly
equal tags collide); refinement reads the person's mean tag from the matched peaks' tags (the
reference re-reads them at the integer part of the adjusted location, which is the same
pixel) and scores a missing joint on the pixels that can win first (:func:`_refine`: the
result of the full scan, bit for bit); the whole decode is vectorised (NMS, gathers,
adjust, and refinement batched over the missing (person, joint) pairs).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from pose.codec import PEAK_TIES, Convention, convention_rules

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


@functools.lru_cache(maxsize=8)
def _window_offsets(kernel: int) -> tuple[tuple[int, int], ...]:
    """The (dy, dx) offsets of a ``kernel x kernel`` window without (0, 0), nearest first
    (the 4-neighbours, then the diagonals, then the outer rings)."""
    r = kernel // 2
    offs = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if (dy, dx) != (0, 0)]
    return tuple(sorted(offs, key=lambda o: (max(abs(o[0]), abs(o[1])), abs(o[0]) + abs(o[1]), o)))


def _sparse_peaks(hm: np.ndarray, threshold: float, kernel: int,
                  above: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Local maxima above ``threshold`` by checking only the pixels above it; None when
    too many pixels are above it for the sparse check to pay off.

    The window is checked one neighbour offset at a time, nearest first, and after each
    offset only the pixels still at least as high as every neighbour seen so far are kept:
    most pixels of a blob fail against an immediate neighbour, so the outer rings of a
    large window (5 x 5: 16 of its 24 offsets) are read for a few pixels per peak only.
    """
    num_joints, h, w = hm.shape
    # 1-D nonzero: far faster than 3-D np.nonzero
    flat_idx = np.flatnonzero(hm > threshold) if above is None else above
    if flat_idx.size > hm.size // 8:
        return None
    flat = hm.reshape(-1)
    offsets = _window_offsets(kernel)
    r = kernel // 2
    rest = flat_idx % (h * w)
    y, x = np.divmod(rest, w)
    edge = (y < r) | (y >= h - r) | (x < r) | (x >= w - r)
    # pixels whose whole window lies inside the map: neighbours by flat offset, no bounds checks
    fi = flat_idx[~edge]
    vi = flat[fi]
    for dy, dx in offsets:
        if not fi.size:
            break
        keep = vi >= flat[fi + (dy * w + dx)]
        if not keep.all():
            fi, vi = fi[keep], vi[keep]
    # pixels near the border: neighbours outside the map do not count (-inf padding)
    fe = flat_idx[edge]
    j, y, x = fe // (h * w), y[edge], x[edge]
    v = flat[fe]
    for dy, dx in offsets:
        if not v.size:
            break
        yy, xx = y + dy, x + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        nb = hm[j, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        keep = ~inside | (v >= nb)
        if not keep.all():
            j, y, x, v = j[keep], y[keep], x[keep], v[keep]
    jj = np.concatenate([fi // (h * w), j])
    return jj, np.concatenate([fi % (h * w), y * w + x]), np.concatenate([vi, v])


def _adjust_heap(heap: list, hole: int, length: int, value: tuple) -> None:
    """libstdc++ ``std::__adjust_heap`` on ``heap[:length]`` with torch's ``largest``
    comparator ``a > b`` on the values (``heap``: ``(value, index)`` tuples): sift the hole
    down to a leaf along the child that is not "greater", then push ``value`` up."""
    top = child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if heap[child][0] > heap[child - 1][0]:
            child -= 1
        heap[hole] = heap[child]
        hole = child
    if length % 2 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        heap[hole] = heap[child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and heap[parent][0] > value[0]:
        heap[hole] = heap[parent]
        hole = parent
        parent = (hole - 1) // 2
    heap[hole] = value


#: ``torch.topk`` on CPU takes the partial-sort path (:func:`torch_topk_order`) when ``k * 64 <= n``.
TORCH_PARTIAL_SORT_FACTOR = 64


def torch_topk_order(row: np.ndarray, k: int) -> np.ndarray | None:
    """The ``k`` flat indices, in order, that ``torch.from_numpy(row).topk(k)`` returns on CPU
    (``sorted=True``, ``largest=True``), ties included, computed without torch: the official
    ``HeatmapParser.top_k`` (``lib/core/group.py``) calls ``det.topk(max_num_people, dim=2)`` on
    the NMS'd maps, and the order it gives equal values decides the row order in which tied
    candidates meet ``munkres``.

    For ``k * 64 <= n`` torch runs ``std::partial_sort`` with the comparator ``a > b``
    (ATen ``TopKImpl.h``; libstdc++: ``make_heap`` of the first ``k``, each later element
    greater than the heap's top replaces it, then ``sort_heap``), reproduced here step for
    step; only elements greater than the heap's top at some point are visited in Python.
    Checked against ``torch.topk`` of the pinned torch on rows with many ties
    (``tests/test_decode.py``). For ``k * 64 > n`` torch uses ``std::nth_element`` and
    ``std::sort`` (introselect, not reproduced): returns None, and the caller keeps its own order.

    Args:
        row: (n,) float array (one joint's NMS'd map, flattened row-major), no NaN.
        k: 1 <= k <= n.

    Returns (k,) int64 indices into ``row``, or None (see above).
    """
    v = np.asarray(row).reshape(-1)
    n = v.size
    if k * TORCH_PARTIAL_SORT_FACTOR > n:
        return None
    vals = v.astype(np.float64)
    heap = [(float(vals[i]), i) for i in range(k)]
    for parent in range((k - 2) // 2, -1, -1):              # make_heap
        _adjust_heap(heap, parent, k, heap[parent])
    top = heap[0][0]
    rest = np.flatnonzero(vals[k:] > top) + k               # the only elements that can enter
    for i, x in zip(rest.tolist(), vals[rest].tolist()):
        if x > heap[0][0]:                                  # comp(*i, *first): pop_heap(first, middle, i)
            _adjust_heap(heap, 0, k, (x, i))
    for end in range(k - 1, 0, -1):                         # sort_heap
        last = heap[end]
        heap[end] = heap[0]
        _adjust_heap(heap, 0, end, last)
    return np.fromiter((i for _, i in heap), dtype=np.int64, count=k)


def _torch_tie_order(hm: np.ndarray, j: int, k: int, nms_kernel: int, vals: np.ndarray,
                     inds: np.ndarray, threshold: float) -> None:
    """Rewrite row ``j`` of ``vals`` / ``inds`` (index order on ties) in place with the peaks
    and order of :func:`torch_topk_order` when equal values above ``threshold`` meet in the
    top ``k`` or at its edge; nothing changes otherwise (or where torch's order is not
    reproduced)."""
    row = max_pool_nms(hm[j:j + 1], nms_kernel).reshape(-1)
    order = torch_topk_order(row, k)
    if order is None:
        return
    v = row[order]
    keep = v > threshold
    vals[j] = np.where(keep, v, 0.0)
    inds[j] = np.where(keep, order, 0)


def top_k_peaks(heatmaps: np.ndarray, k: int, nms_kernel: int, threshold: float | None = None,
                above: np.ndarray | None = None,
                ties: str = "index") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` highest NMS peaks of every joint (NumPy only; pass ``tensor.cpu().numpy()``).

    Args:
        heatmaps: (K, H, W) float array (e.g. the aggregated model heatmaps of one image).
        k: peaks per joint (``max_people``); clipped to ``H * W``.
        nms_kernel: odd max-pool window of the NMS, in px.
        threshold: optional value >= 0; peaks ``<= threshold`` are not returned (their
            slots hold score 0 at x = y = 0). With it, only pixels above the threshold are
            examined, which is much faster on real heatmaps. The peaks above the
            threshold are exactly those of the unthresholded call.
        above: optional ``np.flatnonzero(heatmaps.reshape(-1) > threshold)``, when the caller
            has it already (:func:`group_keypoints` shares it with the refinement).
        ties: order of equal peak values (``Convention.peak_ties``): ``index`` (lower flat
            index first) or ``torch`` (``torch.topk``'s, :func:`torch_topk_order`; only the
            joints where equal values above the threshold meet in the top ``k`` or at its edge
            are re-ordered, so the common case costs nothing).

    Returns:
        ``(scores, xs, ys)``: (K, k) float32 heatmap values, sorted descending per joint
        (ties: ``ties``), and (K, k) int64 column / row of each peak in
        heatmap px. After NMS non-peaks are 0, so when a joint has fewer than ``k`` peaks
        the remaining entries have score 0 (drop them with a positive threshold).

    Raises ValueError on a wrong shape, ``k < 1``, a negative threshold or unknown ``ties``.
    """
    hm = np.asarray(heatmaps, dtype=np.float32)
    if hm.ndim != 3:
        raise ValueError(f"heatmaps must be (K, H, W), got {hm.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if ties not in PEAK_TIES:
        raise ValueError(f"ties must be one of {', '.join(PEAK_TIES)}, got {ties!r}")
    if threshold is not None and threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    num_joints, h, w = hm.shape
    k = min(int(k), h * w)
    sparse = _sparse_peaks(hm, float(threshold), nms_kernel, above) if threshold is not None else None
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
        if ties == "torch":
            # equal neighbours in the sorted peaks (up to rank k, the first one left out)
            tied = (v[1:] == v[:-1]) & (j[1:] == j[:-1]) & (rank[1:] <= k)
            for jt in np.unique(j[1:][tied]).tolist():
                _torch_tie_order(hm, jt, k, nms_kernel, vals, inds, float(threshold))
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
    if ties == "torch":
        # equal values above the threshold in the top k, or the k-th value also left out (one O(n) count)
        thr = -np.inf if threshold is None else float(threshold)
        tied = ((vals[:, 1:] == vals[:, :-1]) & (vals[:, 1:] > thr)).any(axis=1)
        if k < flat.shape[1]:
            kth = vals[:, k - 1:k]
            tied |= (kth[:, 0] > thr) & ((flat == kth).sum(axis=1) > (vals == kth).sum(axis=1))
        for jt in np.flatnonzero(tied).tolist():
            by_torch = torch_topk_order(flat[jt], k)
            if by_torch is not None:
                ind[jt], vals[jt] = by_torch, flat[jt][by_torch]
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
                    y: np.ndarray, *, equal: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The quarter-pixel adjustment of peaks (reference ``HeatmapParser.adjust`` / ``refine``).

    Args:
        heatmaps: (K, H, W) float maps; joint, x, y: (N,) int64 peak joint / column / row.
        equal: the shift when the two neighbours on an axis are equal
            (``Convention.adjust_equal``): 0.0 (``project``) or -0.25 (``reference``: the
            official ``if right > left: +0.25 else: -0.25``).

    Returns:
        ``(dx, dy)``: (N,) float64 each, +0.25 heatmap px toward the higher of the two
        neighbours on that axis, ``equal`` when they are equal (borders clamped, so a peak on
        the border compares with itself). With ``equal`` 0 a symmetric peak (every peak of
        targets drawn at a pixel centre) is not moved; the reference's -0.25 biases it.
    """
    _, h, w = heatmaps.shape
    right = heatmaps[joint, y, np.minimum(x + 1, w - 1)]
    left = heatmaps[joint, y, np.maximum(x - 1, 0)]
    down = heatmaps[joint, np.minimum(y + 1, h - 1), x]
    up = heatmaps[joint, np.maximum(y - 1, 0), x]
    dx = np.where(right > left, 0.25, np.where(right < left, -0.25, float(equal)))
    dy = np.where(down > up, 0.25, np.where(down < up, -0.25, float(equal)))
    return dx.astype(np.float64), dy.astype(np.float64)


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


#: Cost of the padding columns the reference appends when a joint has more candidates than
#: there are groups (``lib/core/group.py``: ``np.zeros(...) + 1e10``).
MUNKRES_PAD = 1e10


def munkres_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The assignment the ``munkres`` package (``Munkres().compute``, version 1.1.4) returns
    for ``cost``, computed with NumPy: the same Kuhn-Munkres steps in the same order, so the
    same choice where several assignments have the optimal cost.

    As ``munkres``: the matrix is padded to square with zero rows / columns; step 1 subtracts
    each row's minimum; step 2 stars, row by row, the first zero whose column has no star; if
    every column then has one the stars are the result (the common case, no further work).
    Otherwise steps 3-6 run as the package runs them: a non-covered zero is searched from the
    last primed position, row by row (wrapping), and within a row the *last* one in the
    wrapped column order is taken (the package keeps scanning the row after a hit);
    augmenting paths follow the first star in a column and the first prime in a row; step 6
    adds the smallest uncovered value to covered rows, then subtracts it from uncovered
    columns. Element-wise float64 arithmetic is the same as the package's Python floats, so
    the exact zeros are the same.

    Args:
        cost: (R, C) float array (the reference pads R > C to square with
            :data:`MUNKRES_PAD` columns before the call; see :func:`match_candidates`).

    Returns:
        ``(rows, cols)`` int64 arrays of the assigned pairs with ``row < R`` and ``col < C``,
        by row (as ``munkres`` lists them).

    Raises ValueError when no uncovered element is left in step 6 (the package's unsolvable matrix).
    """
    c = np.asarray(cost, dtype=np.float64)
    r0, c0 = c.shape
    n = max(r0, c0)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if r0 <= c0:  # the common case: step 2 stars a zero in every row
        zr, zc = np.nonzero(c == c.min(axis=1, keepdims=True))  # the zeros of step 1 (x - min == 0 iff x == min)
        if zr.size == r0 and np.bincount(zc, minlength=c0).max() <= 1:
            # each row's minimum is its only zero, in distinct columns: step 2 stars them all
            return zr.astype(np.int64), zc.astype(np.int64)
        star = [-1] * r0
        taken = [False] * c0
        for i, j in zip(zr.tolist(), zc.tolist()):
            if star[i] < 0 and not taken[j]:
                star[i] = j
                taken[j] = True
        if min(star) >= 0:
            # every row has a star; the zero rows of the padding star the free columns, so every
            # column is starred and munkres returns these pairs
            return np.arange(r0, dtype=np.int64), np.array(star, dtype=np.int64)
    m = np.zeros((n, n), dtype=np.float64)
    m[:r0, :c0] = c
    m -= m.min(axis=1, keepdims=True)                                   # step 1
    star_col = np.full(n, -1, dtype=np.int64)                           # step 2
    col_starred = np.zeros(n, dtype=bool)
    zr, zc = np.nonzero(m[:r0] == 0)                                   # real rows, row-major
    zero_rows, zero_cols = zr.tolist(), zc.tolist()
    taken = col_starred.tolist()
    for i, j in zip(zero_rows, zero_cols):
        if star_col[i] < 0 and not taken[j]:
            star_col[i] = j
            taken[j] = True
    col_starred[:] = taken
    if n > r0:                                                          # zero rows: first free columns
        free = np.flatnonzero(~col_starred)[: n - r0]
        star_col[r0:r0 + free.size] = free
        col_starred[free] = True
    if not col_starred.all():
        star_col = _munkres_steps(m, star_col)
    rows = np.flatnonzero((star_col >= 0) & (star_col < c0))
    rows = rows[rows < r0]
    return rows.astype(np.int64), star_col[rows].astype(np.int64)


def _munkres_steps(m: np.ndarray, star_col: np.ndarray) -> np.ndarray:
    """Steps 3-6 of ``munkres`` (:func:`munkres_assignment`) on the reduced square matrix
    ``m`` (changed in place) from the stars of step 2 (``star_col[i]``: the starred column of
    row ``i`` or -1); returns the final ``star_col``. Covers, stars and primes are Python
    lists (a row holds at most one star and, within one step 4, one prime); the zeros of each
    row are re-read from ``m`` only after step 6 changes it."""
    n = m.shape[0]
    star_c = [int(c) for c in star_col]                 # star column of each row, -1: none
    star_r = [-1] * n                                   # star row of each column
    for i, c in enumerate(star_c):
        if c >= 0:
            star_r[c] = i

    def zero_rows() -> list[list[int]]:
        zr, zc = np.nonzero(m == 0)
        rows: list[list[int]] = [[] for _ in range(n)]
        for i, j in zip(zr.tolist(), zc.tolist()):
            rows[i].append(j)
        return rows

    zeros = zero_rows()
    while True:
        col_cov = [r >= 0 for r in star_r]              # step 3
        if sum(col_cov) >= n:
            break
        row_cov = [False] * n
        prime_c = [-1] * n
        row = col = 0
        while True:                                     # step 4 (and 6)
            found = -1
            for k in range(n):                          # rows from `row`, wrapping
                i = (row + k) % n
                if row_cov[i]:
                    continue
                hits = [j for j in zeros[i] if not col_cov[j]]
                if hits:
                    # the package scans the row from column `col` (wrapping) and keeps the last hit
                    found = i
                    col = max(hits, key=lambda j, c0=col: (j - c0) % n)
                    break
            if found < 0:                               # step 6
                rc = np.array(row_cov)
                cc = np.array(col_cov)
                uncovered = m[~rc][:, ~cc]
                if uncovered.size == 0:
                    raise ValueError("munkres: the matrix cannot be solved")
                minval = uncovered.min()
                m[rc] += minval
                m[:, ~cc] -= minval
                zeros = zero_rows()
                row = col = 0
                continue
            row = found
            prime_c[row] = col
            if star_c[row] >= 0:
                col = star_c[row]
                row_cov[row] = True
                col_cov[col] = False
                continue
            path = [(row, col)]                         # step 5
            while star_r[path[-1][1]] >= 0:
                r = star_r[path[-1][1]]
                path.append((r, path[-1][1]))
                path.append((r, prime_c[r]))
            for r, c in path[1::2]:                     # unstar the starred zeros of the path
                star_c[r] = -1
                star_r[c] = -1
            for r, c in path[0::2]:                     # star its primed zeros
                star_c[r] = c
                star_r[c] = r
            break
    return np.asarray(star_c, dtype=np.int64)


def match_candidates(cand_tags: Sequence[np.ndarray], cand_scores: Sequence[np.ndarray], *,
                     tag_threshold: float, max_people: int, order: Sequence[int],
                     tie_break: bool, assignment: str = "scipy") -> tuple[np.ndarray, int]:
    """Greedy-by-joint Hungarian grouping (step 2 of the module docstring).

    Args:
        cand_tags: per joint, (C_j, T) float tags of its candidates (already thresholded).
        cand_scores: per joint, (C_j,) float detection scores.
        tag_threshold: a candidate joins its assigned group when the L2 tag distance to the
            group's mean tag is ``< tag_threshold``.
        max_people: only the first ``max_people`` groups take part in matching.
        order: joint visiting order.
        tie_break: use the tie-breaking term of :func:`matching_cost`.
        assignment: ``scipy`` (the rectangular cost) or ``munkres`` (the reference's: the
            cost padded to square with :data:`MUNKRES_PAD` columns when there are more
            candidates than groups, solved as ``munkres`` does, :func:`munkres_assignment`;
            group mean tags averaged in float32 as the reference's ``np.mean`` of its
            float32 tags); ``Convention.assignment``.

    Returns:
        ``(assign, n)``: ``assign`` is a (K, max_j C_j) int64 array, the group index of each
        candidate (-1 for padding), and ``n`` the number of groups.

    Raises ValueError on an unknown ``assignment``.
    """
    if assignment not in ("scipy", "munkres"):
        raise ValueError(f"assignment must be scipy or munkres, got {assignment!r}")
    reference = assignment == "munkres"
    num_joints = len(cand_tags)
    width = max((len(s) for s in cand_scores), default=0)
    assign = np.full((num_joints, width), -1, dtype=np.int64)
    tdim = cand_tags[0].shape[1] if num_joints else 1
    cap = sum(len(s) for s in cand_scores)
    # the reference averages its float32 tags in float32 (sequential sums, as np.mean over a list)
    tag_sum = np.zeros((max(cap, 1), tdim), dtype=np.float32 if reference else np.float64)
    tag_cnt = np.zeros(max(cap, 1), dtype=tag_sum.dtype)
    n = 0
    for j in order:
        tags_j = np.asarray(cand_tags[j], dtype=np.float64)
        scores_j = np.asarray(cand_scores[j], dtype=np.float64)
        c = len(scores_j)
        if c == 0:
            continue
        if n == 0:
            assign[j, :c] = np.arange(c)
            tag_sum[:c] = cand_tags[j]
            tag_cnt[:c] = 1.0
            n = c
            continue
        g = min(n, max_people)
        means = (tag_sum[:g] / tag_cnt[:g, None]).astype(np.float64)
        dist = np.sqrt(((tags_j[:, None, :] - means[None, :, :]) ** 2).sum(axis=2))  # (c, g)
        cost = matching_cost(dist, scores_j, tag_threshold, tie_break=tie_break)
        if reference:
            if c > g:  # the reference pads to square with constant columns (a row there opens a new group)
                cost = np.concatenate([cost, np.full((c, c - g), MUNKRES_PAD)], axis=1)
            rows, cols = munkres_assignment(cost)
        else:
            # c > g: the reference pads to square with constant columns; the rectangular
            # problem has the same optimum (ties aside).
            rows, cols = linear_sum_assignment(cost)
        joined = np.zeros(c, dtype=bool)
        valid = cols < g
        r_ok, c_ok = rows[valid], cols[valid]
        ok = dist[r_ok, c_ok] < tag_threshold
        r_ok, c_ok = r_ok[ok], c_ok[ok]
        assign[j, r_ok] = c_ok
        tag_sum[c_ok] += np.asarray(cand_tags[j], dtype=tag_sum.dtype)[r_ok]  # one tag per group and joint
        tag_cnt[c_ok] += 1.0
        joined[r_ok] = True
        new_rows = np.flatnonzero(~joined)  # in row order, as the reference creates them
        if new_rows.size:
            ids = n + np.arange(new_rows.size)
            assign[j, new_rows] = ids
            tag_sum[ids] = np.asarray(cand_tags[j])[new_rows]
            tag_cnt[ids] = 1.0
            n += new_rows.size
    return assign, n


def group_keypoints(heatmaps: np.ndarray, tags: np.ndarray, *, detection_threshold: float,
                    tag_threshold: float, max_people: int, adjust: bool, refine: bool,
                    nms_kernel: int, tie_break: bool, convention: str | Convention,
                    joint_order: Sequence[int] | None = None,
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
        convention: params ``model.convention`` or a `pose.codec.Convention`: its
            ``assignment``, ``adjust_equal`` and ``keep_all_groups`` (module docstring).
        joint_order: visiting order (default :func:`default_joint_order`).
        refine_chunk: persons per batched refinement step (bounds memory to
            ``refine_chunk * H * W * T`` floats; no effect on the result).

    Returns:
        ``(persons, scores)``: persons (N, K, 4) float32 ``[x, y, score, tag_mean]``, x and y
        in heatmap px of the given maps (missing joints: all four 0), ``tag_mean`` the
        joint's tag vector averaged over its T channels; scores (N,) float32, the person score (mean of
        its K joint scores before refinement). Persons are in creation order; every group
        (``keep_all_groups``, the reference) or at most ``max_people`` of them (the best-scoring).

    Raises ValueError on inconsistent shapes, ``max_people < 1``, a negative
    ``detection_threshold`` or an unknown convention.
    """
    rules = convention_rules(convention)
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
    above = np.flatnonzero(hm.reshape(-1) > thr)  # shared by the peak search and the refinement
    vals, xs, ys = top_k_peaks(hm, max_people, nms_kernel, threshold=thr, above=above, ties=rules.peak_ties)
    jj = np.arange(num_joints)[:, None]
    tag_k = tg[jj, ys, xs]  # (K, k, T)
    keep = vals > detection_threshold
    counts = keep.sum(axis=1)
    # top_k_peaks sorts descending, so the kept candidates are a prefix of each row.
    cand_tags = [tag_k[j, :counts[j]] for j in range(num_joints)]
    cand_scores = [vals[j, :counts[j]] for j in range(num_joints)]
    assign, n = match_candidates(cand_tags, cand_scores, tag_threshold=tag_threshold,
                                 max_people=max_people, order=order, tie_break=tie_break,
                                 assignment=rules.assignment)
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
        dx, dy = quarter_offsets(hm, jk, xs[jk, ck], ys[jk, ck], equal=rules.adjust_equal)
        px += dx
        py += dy
    persons[pk, jk, 0] = px
    persons[pk, jk, 1] = py
    persons[pk, jk, 2] = vals[jk, ck]
    persons[pk, jk, 3] = tag_k[jk, ck].mean(axis=1)
    scores = persons[:, :, 2].mean(axis=1).astype(np.float32)

    mean_tag = None
    if refine:
        # Person mean tag from its matched peaks' tags, summed in joint order (np.add.at is
        # sequential), in float32 as the reference's np.mean of its float32 tags.
        tsum = np.zeros((n, tg.shape[-1]), dtype=np.float32)
        np.add.at(tsum, pk, tag_k[jk, ck])
        tcnt = np.bincount(pk, minlength=n).astype(np.float32)
        mean_tag = tsum / tcnt[:, None]
    if n > max_people and not rules.keep_all_groups:
        # Project: keep the max_people best-scoring persons, in creation order (the reference
        # returns every group). Unmatched candidates each open a group, so a weak model yields
        # up to K * max_people fragments; COCOeval scores only the top 20 per image (maxDets),
        # so AP is unchanged for max_people >= 20, and refinement runs on max_people persons at most.
        top = np.sort(np.argsort(-scores, kind="stable")[:max_people])
        persons, scores = persons[top], scores[top]
        mean_tag = mean_tag[top] if mean_tag is not None else None
    if refine:
        _refine(hm, tg, persons, mean_tag, refine_chunk, above=above, threshold=thr,
                adjust_equal=rules.adjust_equal)
    return persons, scores


#: Refinement scores a missing joint first on the pixels above the detection threshold, then
#: only on the tiles of the map that can still hold a better (or equal) pixel (:func:`_refine`).
#: True: score every pixel (the full scan; tests and ``benchmarks/decode.py`` compare the two).
REFINE_FULL_SCAN = False
#: Refinement scores every missing (person, joint) pair in one pass (:func:`_first_max_per_pair`)
#: while (pairs x the most pixels above the threshold of a joint) is at most this many per joint;
#: above it, joint by joint (:func:`_best_pixels`: the per-joint calls then cost less than the one
#: pass's gathers and padding).
REFINE_BATCH_PIXELS = 2048
#: Side in map px of the tiles whose heatmap maximum and tag range bound the refinement score.
REFINE_TILE = 16


def _tag_distance(tag_px: np.ndarray, mean_tag: np.ndarray) -> np.ndarray:
    """L2 distance (P, N) float32 between N tag vectors ``tag_px`` (N, T) and P mean tags
    (P, T), as the reference computes it: ``(((t - m) ** 2).sum(-1)) ** 0.5`` (for T = 1 the
    same numbers as ``|t - m|``)."""
    if tag_px.shape[-1] == 1:
        return np.abs(np.subtract(tag_px[None, :, 0], mean_tag[:, 0][:, None]))
    if tag_px.shape[-1] == 2:
        return _norm2(tag_px[None, :, 0], tag_px[None, :, 1], mean_tag[:, 0][:, None], mean_tag[:, 1][:, None])
    diff = tag_px[None] - mean_tag[:, None, :]  # (P, N, T)
    np.multiply(diff, diff, out=diff)
    return np.sqrt(diff.sum(axis=-1))


def _norm2(t0: np.ndarray, t1: np.ndarray, m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
    """``sqrt((t0 - m0)**2 + (t1 - m1)**2)`` float32 (broadcast shapes) for T = 2 tags (the flip
    test's pair): the same numbers as :func:`_tag_distance`'s ``sum(-1)`` over a length-2 axis (a
    sum of two terms is one addition), about 20x faster (a NumPy reduction over a short last axis
    runs one element at a time; grouping spent most of its time there: 54 ms of a 59 ms decode at
    512 x 512 on coco-mini photos before, ``benchmarks/predict.py``)."""
    d = np.subtract(t0, m0)
    np.multiply(d, d, out=d)
    e = np.subtract(t1, m1)
    np.multiply(e, e, out=e)
    np.add(d, e, out=d)
    return np.sqrt(d, out=d)


def _best_pixels(flat: np.ndarray, tags_flat: np.ndarray, mean_tag: np.ndarray, idx: np.ndarray | None,
                 chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Per person (rows of ``mean_tag``), the first maximiser of ``flat - round(||tag - m||)``
    over the pixels ``idx`` (row-major flat indices, ascending; None: every pixel) and its
    score: ((P,) int64 flat index, (P,) float32 score)."""
    vals = flat if idx is None else flat[idx]
    tags = tags_flat if idx is None else tags_flat[idx]
    best = np.empty(len(mean_tag), dtype=np.int64)
    best_score = np.empty(len(mean_tag), dtype=np.float32)
    step = max(1, chunk)
    for s in range(0, len(mean_tag), step):
        dist = _tag_distance(tags, mean_tag[s:s + step])
        np.round(dist, out=dist)
        score = np.subtract(vals[None], dist, out=dist)
        arg = score.argmax(axis=1)
        best_score[s:s + step] = score[np.arange(arg.size), arg]
        best[s:s + step] = arg if idx is None else idx[arg]
    return best, best_score


def _rest_range(tags_flat: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min and max (T,) of the rows of ``tags_flat`` (N, T) that are not in ``cand`` (row
    indices, fewer than N): one contiguous (T, N) copy whose ``cand`` columns are set to +inf for
    the min and -inf for the max, reduced along its contiguous axis (SIMD; a reduction over the
    first axis of (N, T), or ``reduceat`` over the runs between candidates, took 4-25x longer)."""
    v = np.array(tags_flat.T, dtype=np.float32, order="C")  # always a copy (for T = 1 the transpose is contiguous)
    v[:, cand] = np.inf
    lo = v.min(axis=1)
    v[:, cand] = -np.inf
    return lo, v.max(axis=1)


def _pairwise(a: np.ndarray, op: np.ufunc, axis: int) -> np.ndarray:
    """``op``-reduce ``axis`` (a power-of-two length) by halves: far faster than a NumPy
    reduction over a short middle axis, and exact (max / min)."""
    while a.shape[axis] > 1:
        half = a.shape[axis] // 2
        lo = [slice(None)] * a.ndim
        hi = list(lo)
        lo[axis], hi[axis] = slice(0, half), slice(half, 2 * half)
        a = op(a[tuple(lo)], a[tuple(hi)])
    return np.squeeze(a, axis)


def _tile_reduce(x: np.ndarray, tile: int, op: np.ufunc) -> np.ndarray:
    """``op`` (np.maximum / np.minimum) over ``tile`` x ``tile`` tiles of x (H, W, ...) with H
    and W multiples of ``tile``: rows first (contiguous), then columns."""
    h, w = x.shape[:2]
    rest = x.shape[2:]
    a = _pairwise(x.reshape((h // tile, tile, w) + rest), op, 1)
    return _pairwise(a.reshape((h // tile, w // tile, tile) + rest), op, 2)


def _tile_tag_range(tg: np.ndarray, tile: int) -> tuple[np.ndarray, np.ndarray]:
    """Per ``tile`` x ``tile`` tile (a power of two) of one joint's tags (H, W, T): the tag
    range, min and max (ht, wt, T) float32 (tiles past the map's edge hold only the pixels
    inside it)."""
    h, w, t = tg.shape
    ht, wt = -(-h // tile), -(-w // tile)
    if (ht * tile, wt * tile) != (h, w):
        lo = np.full((ht * tile, wt * tile, t), np.inf, np.float32)
        hi = np.full((ht * tile, wt * tile, t), -np.inf, np.float32)
        lo[:h, :w], hi[:h, :w] = tg, tg
        return _tile_reduce(lo, tile, np.minimum), _tile_reduce(hi, tile, np.maximum)
    return _tile_reduce(tg, tile, np.minimum), _tile_reduce(tg, tile, np.maximum)


def _score_bound(hmax: np.ndarray, tmin: np.ndarray, tmax: np.ndarray, mean_tag: np.ndarray, *,
                 paired: bool = False) -> np.ndarray:
    """Upper bound (P, ...) float32 of ``hm - round(||tag - m||)`` over a set of pixels whose
    heatmap is ``<= hmax`` and whose tags lie in the box ``[tmin, tmax]`` (arrays (..., T)),
    for P mean tags (P, T): ``hmax - round(d)``, ``d`` the distance from ``m`` to the box less
    1e-3 (covers float32 rounding of the pixels' distances; ``round`` is monotone).
    ``paired``: ``tmin`` and ``tmax`` are (P, T), one box per mean tag, and the result is (P,)."""
    if paired:
        m = mean_tag.astype(np.float64)
        gap = np.maximum(np.maximum(tmin - m, m - tmax), 0.0)
    else:
        m = mean_tag.reshape((len(mean_tag),) + (1,) * (tmin.ndim - 1) + (mean_tag.shape[-1],)).astype(np.float64)
        gap = np.maximum(np.maximum(tmin[None] - m, m - tmax[None]), 0.0)
    dist = np.abs(gap[..., 0]) if gap.shape[-1] == 1 else np.sqrt((gap * gap).sum(axis=-1))
    dist = np.round(np.maximum(dist - 1e-3, 0.0)).astype(np.float32)
    return np.subtract(np.float32(hmax) if np.ndim(hmax) == 0 else hmax[None], dist, dtype=np.float32)


def _refine(hm: np.ndarray, tg: np.ndarray, persons: np.ndarray, mean_tag: np.ndarray, chunk: int, *,
            above: np.ndarray, threshold: float, adjust_equal: float) -> None:
    """Fill missing joints in place (reference ``HeatmapParser.refine``), batched over the
    (person, joint) pairs.

    For joint ``j`` of a person with mean tag ``m`` the reference takes the first (row-major)
    argmax over all pixels of ``hm[j] - round(||tag[j] - m||)`` and keeps it when the heatmap
    there is positive. Since ``round(.) >= 0``, a pixel's score never exceeds its heatmap
    value, and a set of pixels with heatmap ``<= h`` and tags in a box at distance ``d`` from
    ``m`` scores at most ``h - round(d)`` (:func:`_score_bound`). So:

    1. every missing pair is scored on its joint's pixels above the detection ``threshold``
       (``above``: flat indices into ``hm``, the ones the peak search read), all pairs in one
       pass (:func:`_first_max_per_pair`); a pair whose best score ``s`` there beats
       ``threshold`` is done (every other pixel is ``<= threshold``);
    2. the other pixels of the joint together (heatmap ``<= threshold``, their tag range,
       :func:`_rest_range`) bound the rest: a pair whose bound is below ``s`` is done;
    3. the others are scored again, joint by joint, on the pixels above the threshold and those
       of every :data:`REFINE_TILE` square tile whose own bound (its heatmap maximum, its tag
       range) is ``>= s`` (ties must be seen: the first maximiser wins);
    4. a pair without a pixel above the threshold is scored on the whole map.

    Each step keeps the first maximiser of the whole map: the full scan's result, pixel for
    pixel (``tests/test_decode.py``, ``benchmarks/decode.py``). Not in the reference: a
    speed-up (the reference scans all K joints of every person; ``np.partition`` of the
    mostly-zero maps, an earlier speed-up, cost more than it saved).
    ``adjust_equal``: :func:`quarter_offsets`.
    """
    _, _, w = hm.shape
    tdim = tg.shape[-1]
    pj, pp = np.nonzero((persons[:, :, 2] == 0).T)  # missing (joint, person) pairs, by joint
    if pp.size == 0:
        return
    m = mean_tag[pp]
    joints, first = np.unique(pj, return_index=True)
    bounds = np.append(first, pp.size)  # pairs of joints[i]: bounds[i]:bounds[i + 1]
    if REFINE_FULL_SCAN:
        best_idx = np.zeros(pp.size, dtype=np.int64)
        for i, j in enumerate(joints):
            s = slice(bounds[i], bounds[i + 1])
            best_idx[s], _ = _best_pixels(hm[j].reshape(-1), tg[j].reshape(-1, tdim), m[s], None, chunk)
    else:
        best_idx = _refine_search(hm, tg, pj, m, joints, bounds, above, threshold, chunk)
    y, x = best_idx // w, best_idx % w
    ok = hm[pj, y, x] > 0
    if not ok.any():
        return
    p, jv, y, x = pp[ok], pj[ok], y[ok], x[ok]
    dx, dy = quarter_offsets(hm, jv, x, y, equal=adjust_equal)
    persons[p, jv, 0] = x + dx
    persons[p, jv, 1] = y + dy
    persons[p, jv, 2] = hm[jv, y, x]
    persons[p, jv, 3] = tg[jv, y, x].mean(axis=-1)


def _refine_search(hm: np.ndarray, tg: np.ndarray, pj: np.ndarray, m: np.ndarray, joints: np.ndarray,
                   bounds: np.ndarray, above: np.ndarray, threshold: float, chunk: int) -> np.ndarray:
    """Steps 1-4 of :func:`_refine` for the missing pairs (joint ``pj`` (P,) int64, sorted; mean tag
    ``m`` (P, T) float32; ``joints`` the distinct ``pj``, whose pairs are ``bounds[i]:bounds[i + 1]``).
    Returns (P,) int64: each pair's first maximiser, a flat index into its joint's (H, W) map."""
    num_joints, h, w = hm.shape
    size = h * w
    tdim = tg.shape[-1]
    thr = np.float32(threshold)
    tile = int(REFINE_TILE)
    ht, wt = -(-h // tile), -(-w // tile)
    starts = np.searchsorted(above, np.arange(num_joints + 1) * size)
    count = starts[pj + 1] - starts[pj]  # (P,) pixels above the threshold in the pair's joint
    best_idx = np.zeros(pj.size, dtype=np.int64)
    best_score = np.full(pj.size, -np.inf, dtype=np.float32)
    some = (count > 0) & (count < size)
    if some.any():                                                                     # step 1
        jsel, row = np.unique(pj[some], return_inverse=True)
        width = int(count[some].max())
        if row.size * width <= REFINE_BATCH_PIXELS * jsel.size:
            # few pixels per joint: every pair in one pass (per-joint calls would cost more than the work)
            best_idx[some], best_score[some] = _first_max_per_pair(hm, tg, above, starts, jsel, row, m[some], width)
            best_idx[some] -= pj[some] * size
        else:  # joint by joint: broadcasting beats the one pass's gathers
            for i, j in enumerate(joints):
                s = slice(bounds[i], bounds[i + 1])
                if some[s].any():  # the same count for every pair of the joint
                    cand = above[starts[j]:starts[j + 1]] - j * size
                    best_idx[s], best_score[s] = _best_pixels(hm[j].reshape(-1), tg[j].reshape(-1, tdim), m[s],
                                                              cand, chunk)
    todo = ~(best_score > thr) & np.isfinite(best_score)
    if todo.any():                                                                     # step 2
        lo = np.empty((pj.size, tdim), np.float32)
        hi = np.empty((pj.size, tdim), np.float32)
        for i in np.flatnonzero(np.logical_or.reduceat(todo, bounds[:-1])):
            j = joints[i]
            cand = above[starts[j]:starts[j + 1]] - j * size
            lo[bounds[i]:bounds[i + 1]], hi[bounds[i]:bounds[i + 1]] = _rest_range(tg[j].reshape(-1, tdim), cand)
        todo[todo] = _score_bound(thr, lo[todo], hi[todo], m[todo], paired=True) >= best_score[todo]
    blind_all = ~np.isfinite(best_score)
    for i in np.flatnonzero(np.logical_or.reduceat(todo | blind_all, bounds[:-1])):
        j = joints[i]
        s = slice(bounds[i], bounds[i + 1])
        t, blind = todo[s], blind_all[s]
        flat = hm[j].reshape(-1)
        tags_flat = tg[j].reshape(-1, tdim)  # (H*W, T)
        cand = above[starts[j]:starts[j + 1]] - j * size
        m_j, bs = m[s], best_score[s]
        idx = best_idx[s]  # a view: written in place
        if t.any():                                                                    # step 3
            sel = np.flatnonzero(t)
            tmin, tmax = _tile_tag_range(tg[j], tile)
            hmax = np.full(ht * wt, thr, np.float32)
            np.maximum.at(hmax, (cand // w) // tile * wt + (cand % w) // tile, flat[cand])
            bound = _score_bound(hmax.reshape(ht, wt), tmin, tmax, m_j[sel])        # (P, ht, wt)
            need = (bound >= bs[sel][:, None, None]).any(axis=0)
            ty, tx = np.nonzero(need)
            wider = None
            if ty.size * tile * tile < size // 2:
                mask = np.zeros((ht * tile, wt * tile), dtype=bool)
                mask.reshape(ht, tile, wt, tile)[ty, :, tx, :] = True
                mask = mask[:h, :w].reshape(-1)
                mask[cand] = True
                wider = np.flatnonzero(mask)
            idx[sel], _ = _best_pixels(flat, tags_flat, m_j[sel], wider, chunk)
        if blind.any():                                                                # step 4
            sel = np.flatnonzero(blind)
            idx[sel], _ = _best_pixels(flat, tags_flat, m_j[sel], None, chunk)
    return best_idx


def _first_max_per_pair(hm: np.ndarray, tg: np.ndarray, above: np.ndarray, starts: np.ndarray, joints: np.ndarray,
                        row: np.ndarray, mean_tag: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_best_pixels` for many (person, joint) pairs in one pass. Pair ``i`` has the mean tag
    ``mean_tag[i]`` (T,) and the joint ``joints[row[i]]``, scored on that joint's pixels above the
    threshold, ``above[starts[j]:starts[j + 1]]`` (flat indices into ``hm`` (K, H, W), ascending;
    at most ``width`` of them; ``tg`` (K, H, W, T)). The pixels of each joint are laid out in one
    row of a (J, width) table, padded with -inf heatmap values, and each pair's row is scored with
    the float32 arithmetic of :func:`_best_pixels` (same numbers; the first maximiser, the first NaN
    as ``argmax``). Returns ((P,) int64 flat index into ``hm``, (P,) float32 score)."""
    n = starts[joints + 1] - starts[joints]
    pos = starts[joints][:, None] + np.arange(width)[None]                              # (J, width)
    pad = pos >= (starts[joints] + n)[:, None]
    pix = above[np.minimum(pos, above.size - 1)]
    vals = _gather(hm, pix)
    tags = _gather(tg, pix)                                                           # (J, width, T)
    vals[pad] = -np.inf
    tags[pad] = 0.0
    tags = tags[row]                                                                  # (P, width, T)
    if tags.shape[-1] == 1:
        dist = np.abs(np.subtract(tags[..., 0], mean_tag[:, 0][:, None]))
    elif tags.shape[-1] == 2:
        dist = _norm2(tags[..., 0], tags[..., 1], mean_tag[:, 0][:, None], mean_tag[:, 1][:, None])
    else:  # as _tag_distance
        diff = np.subtract(tags, mean_tag[:, None, :], out=tags)
        np.multiply(diff, diff, out=diff)
        dist = np.sqrt(diff.sum(axis=-1))
    np.round(dist, out=dist)
    score = np.subtract(vals[row], dist, out=dist)
    arg = score.argmax(axis=1)
    pick = np.arange(arg.size)
    return pix[row, arg], score[pick, arg]


def _gather(a: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``a`` (K, H, W, ...) at the flat (K*H*W) pixel indices ``flat`` (any shape): a take from
    the flat view when ``a`` is C-contiguous, else through (k, y, x) (no copy of ``a``)."""
    if a.flags.c_contiguous:
        return a.reshape((-1,) + a.shape[3:])[flat]
    return a[np.unravel_index(flat, a.shape[:3])]


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
