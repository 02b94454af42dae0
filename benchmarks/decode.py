"""Grouping speed: `pose.decode.group.group_keypoints` vs a straightforward per-joint
Python decoder using the pure-Python `munkres` Hungarian solver (the way the
HigherHRNet / pose-ae reference code, ``lib/core/group.py`` ``HeatmapParser``, does it), on
the same inputs in the same run, with the reference's 5 x 5 NMS window (``--nms-kernel``).

Scenes: N random poses (N in 1, 5, 10, 20, 40) in a 256 x 256 heatmap (the 1/2
resolution of a 512 input); Gaussian heatmaps (sigma 2) with a random peak height per
person and joint (so no two candidates tie in the matching cost), one tag per person
(spaced 2 apart, shuffled) written over a 5 x 5 patch at each of its joints on top of
N(0, 0.05) noise. Both decoders share :func:`top_k_peaks` (the baseline on the full map as
the reference's torch max-pool + top-k does, ours with the detection threshold, which
checks the window only around pixels above it). "decode" times the whole call (NMS/top-k,
matching, quarter-pixel adjustment, refinement); "matching" times the Hungarian grouping
alone on the same candidates. Per image, best of the repeats (as ``timeit`` reports: on a
shared machine the minimum is the least disturbed figure). Both use the same matching cost
(``--tie-break``) and the project's adjust rule (no shift on equal neighbours), so their
outputs can be compared ("identical").

Prints a table and ``speedup at 20 people: N.Nx`` (the decode ratio; the target is >= 10x).

Run:  PYTHONPATH=. python benchmarks/decode.py [--repeats 5] [--people 1 5 10 20 40] [--nms-kernel 5]
Needs `pip install munkres` (not a project dependency).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

try:
    from munkres import Munkres
except ImportError:  # pragma: no cover - exercised only without munkres
    Munkres = None

from pose.decode.group import default_joint_order, group_keypoints, match_candidates, matching_cost, top_k_peaks

SIZE = 256
SIGMA = 2.0


def make_scene(num_people: int, seed: int, size: int = SIZE, tag_dim: int = 1,
               num_joints: int = 17, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps (K, S, S) float32, tags (K, S, S, T) float32 and keypoints (N, K, 2) in
    heatmap px of ``num_people`` random poses (deterministic by ``seed``); ``scale``
    multiplies the pose spread and the Gaussian sigma (2: the same scene on maps of twice
    the resolution)."""
    rng = np.random.default_rng(seed)
    margin, spread, sigma = 24 * scale, 22 * scale, SIGMA * scale
    centres = rng.uniform(margin, size - margin, (num_people, 2))
    kps = centres[:, None, :] + rng.uniform(-spread, spread, (num_people, num_joints, 2))
    kps = np.clip(kps, 0, size - 1)
    amp = rng.uniform(0.5, 1.0, (num_people, num_joints))
    r = int(np.ceil(3 * sigma))
    hm = np.zeros((num_joints, size, size), dtype=np.float32)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    person_tags = rng.permutation(num_people).astype(np.float32) * 2.0
    tags = rng.normal(0.0, 0.05, (num_joints, size, size, tag_dim)).astype(np.float32)
    for p in range(num_people):
        for k in range(num_joints):
            cx, cy = np.rint(kps[p, k]).astype(int)
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, size), max(cx - r, 0), min(cx + r + 1, size)
            patch = amp[p, k] * g[y0 - cy + r:y1 - cy + r, x0 - cx + r:x1 - cx + r]
            np.maximum(hm[k, y0:y1, x0:x1], patch, out=hm[k, y0:y1, x0:x1])
            tags[k, max(cy - 2, 0):cy + 3, max(cx - 2, 0):cx + 3, :] = person_tags[p]
    return hm, tags, kps


def reference_match(vals: np.ndarray, xs: np.ndarray, ys: np.ndarray, tags: np.ndarray, *,
                    detection_threshold: float, tag_threshold: float, max_people: int,
                    tie_break: bool) -> list[np.ndarray]:
    """The reference's matching loop: per joint, Python lists of candidates, a `munkres`
    assignment against the groups' mean tags. Returns groups, each (K, 3 + T) float64
    ``[x, y, score, tag...]`` (rows of missing joints all 0)."""
    if Munkres is None:
        raise RuntimeError("the baseline needs the `munkres` package: pip install munkres")
    num_joints = vals.shape[0]
    groups: list[np.ndarray] = []
    group_tags: list[list[np.ndarray]] = []
    for j in default_joint_order(num_joints):
        cands = [(xs[j, c], ys[j, c], vals[j, c], tags[j, ys[j, c], xs[j, c]].astype(np.float64))
                 for c in range(vals.shape[1]) if vals[j, c] > detection_threshold]
        if not cands:
            continue
        rows = [np.concatenate([[x, y, v], t]) for x, y, v, t in cands]
        if not groups:
            for row in rows:
                grp = np.zeros((num_joints, rows[0].size))
                grp[j] = row
                groups.append(grp)
                group_tags.append([row[3:]])
            continue
        considered = list(range(min(len(groups), max_people)))
        means = [np.mean(group_tags[g], axis=0) for g in considered]
        dist = np.array([[np.linalg.norm(row[3:] - m) for m in means] for row in rows])
        cost = matching_cost(dist, np.array([row[2] for row in rows]), tag_threshold, tie_break=tie_break)
        if len(rows) > len(considered):
            cost = np.concatenate([cost, np.full((len(rows), len(rows) - len(considered)), 1e6)], axis=1)
        pairs = Munkres().compute(cost.tolist())
        for r, c in sorted(pairs):
            if c < len(considered) and dist[r, c] < tag_threshold:
                groups[considered[c]][j] = rows[r]
                group_tags[considered[c]].append(rows[r][3:])
            else:
                grp = np.zeros((num_joints, rows[0].size))
                grp[j] = rows[r]
                groups.append(grp)
                group_tags.append([rows[r][3:]])
    return groups


def _quarter(a: float, b: float) -> float:
    """+0.25 toward the higher of two neighbour values, 0 when equal (the project's rule;
    the reference's ``else`` branch gives -0.25 there)."""
    return 0.25 if a > b else -0.25 if a < b else 0.0


def reference_decode(heatmaps: np.ndarray, tags: np.ndarray, *, detection_threshold: float,
                     tag_threshold: float, max_people: int, adjust: bool, refine: bool,
                     nms_kernel: int, tie_break: bool) -> tuple[np.ndarray, np.ndarray]:
    """Straightforward decoder: dense max-pool NMS and top-k on the whole map, per joint a
    Python loop with `munkres` (:func:`reference_match`), per-joint adjustment loops and
    per-person refinement over every joint, written the way the reference is. Same inputs,
    outputs and conventions as :func:`group_keypoints`."""
    num_joints, h, w = heatmaps.shape
    tags = tags if tags.ndim == 4 else tags[..., None]
    vals, xs, ys = top_k_peaks(heatmaps, max_people, nms_kernel)
    groups = reference_match(vals, xs, ys, tags, detection_threshold=detection_threshold,
                             tag_threshold=tag_threshold, max_people=max_people, tie_break=tie_break)
    if not groups:
        return np.zeros((0, num_joints, 4), np.float32), np.zeros(0, np.float32)
    out = np.zeros((len(groups), num_joints, 4), dtype=np.float32)
    for p, grp in enumerate(groups):
        for j in range(num_joints):
            if grp[j, 2] > 0:
                x, y = grp[j, 0], grp[j, 1]
                xi, yi = int(x), int(y)
                if adjust:
                    hmj = heatmaps[j]
                    x += _quarter(hmj[yi, min(xi + 1, w - 1)], hmj[yi, max(xi - 1, 0)])
                    y += _quarter(hmj[min(yi + 1, h - 1), xi], hmj[max(yi - 1, 0), xi])
                out[p, j] = (x, y, grp[j, 2], grp[j, 3:].mean())
    scores = out[:, :, 2].mean(axis=1)
    if refine:
        for p, grp in enumerate(groups):
            mean_tag = np.mean([tags[j, int(grp[j, 1]), int(grp[j, 0])] for j in range(num_joints) if grp[j, 2] > 0],
                               axis=0)
            for j in range(num_joints):
                dist = np.sqrt(((tags[j] - mean_tag[None, None, :].astype(np.float32)) ** 2).sum(axis=2))
                score_map = heatmaps[j] - np.round(dist)
                y, x = np.unravel_index(np.argmax(score_map), score_map.shape)
                val = heatmaps[j, y, x]
                if val > 0 and out[p, j, 2] == 0:
                    hmj = heatmaps[j]
                    dx = _quarter(hmj[y, min(x + 1, w - 1)], hmj[y, max(x - 1, 0)])
                    dy = _quarter(hmj[min(y + 1, h - 1), x], hmj[max(y - 1, 0), x])
                    out[p, j] = (x + dx, y + dy, val, tags[j, y, x].mean())
    return out, scores.astype(np.float32)


def _time(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, nargs="+", default=[1, 5, 10, 20, 40])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-repeats", type=int, default=2)
    ap.add_argument("--nms-kernel", type=int, default=5, help="NMS window (params evaluate.nms_kernel; reference 5)")
    ap.add_argument("--tie-break", action="store_true", help="add the matching cost's tie-breaking term")
    ap.add_argument("--size", type=int, default=SIZE,
                    help="map side in px (256: the 1/2 maps of a 512 input; 512: decoding at input resolution, "
                         "evaluate.project2image; poses and Gaussians scale with it)")
    args = ap.parse_args(argv)
    if Munkres is None:
        print("benchmarks/decode.py: the baseline needs the `munkres` package, which is not a project "
              "dependency. Install it with `pip install munkres` and run again.", file=sys.stderr)
        return 2
    print(f"NMS window {args.nms_kernel}x{args.nms_kernel}, tie-break {'on' if args.tie_break else 'off'}, "
          f"{args.size}x{args.size} maps")
    print(f"{'people':>6} {'groups':>6} | {'decode: ours ms':>15} {'munkres ms':>10} {'speedup':>7} | "
          f"{'matching: ours ms':>17} {'munkres ms':>10} {'speedup':>7} | identical")
    all_same = True
    speedups = {}
    for n in args.people:
        hm, tags, _ = make_scene(n, seed=n, size=args.size, scale=args.size / SIZE)
        kw = dict(detection_threshold=0.1, tag_threshold=1.0, max_people=max(30, n), adjust=True, refine=True,
                  nms_kernel=args.nms_kernel, tie_break=args.tie_break)
        t_ours, (ours, s_ours) = _time(lambda hm=hm, tags=tags, kw=kw: group_keypoints(hm, tags, **kw), args.repeats)
        t_ref, (ref, s_ref) = _time(lambda hm=hm, tags=tags, kw=kw: reference_decode(hm, tags, **kw),
                                    args.baseline_repeats)
        # Matching alone, on the same candidates (the step the Hungarian solver is in).
        vals, xs, ys = top_k_peaks(hm, kw["max_people"], args.nms_kernel, threshold=kw["detection_threshold"])
        keep = vals > kw["detection_threshold"]
        cand_tags = [tags[j, ys[j, keep[j]], xs[j, keep[j]]] for j in range(hm.shape[0])]
        cand_scores = [vals[j, keep[j]] for j in range(hm.shape[0])]
        order = default_joint_order(hm.shape[0])
        m_ours, _ = _time(lambda ct=cand_tags, cs=cand_scores, kw=kw, order=order: match_candidates(
            ct, cs, tag_threshold=kw["tag_threshold"], max_people=kw["max_people"], order=order,
            tie_break=kw["tie_break"]), args.repeats)
        m_ref, _ = _time(lambda vals=vals, xs=xs, ys=ys, tags=tags, kw=kw: reference_match(
            vals, xs, ys, tags, detection_threshold=kw["detection_threshold"], tag_threshold=kw["tag_threshold"],
            max_people=kw["max_people"], tie_break=kw["tie_break"]), args.baseline_repeats)
        same = ours.shape == ref.shape and np.allclose(ours, ref, atol=1e-5) and np.allclose(s_ours, s_ref, atol=1e-6)
        all_same &= same
        speedups[n] = t_ref / t_ours
        print(f"{n:>6} {len(ours):>6} | {t_ours * 1e3:>15.2f} {t_ref * 1e3:>10.2f} {t_ref / t_ours:>6.1f}x | "
              f"{m_ours * 1e3:>17.2f} {m_ref * 1e3:>10.2f} {m_ref / m_ours:>6.1f}x | {same}")
    print("identical groups in every scene:", all_same)
    if 20 in speedups:
        print(f"speedup at 20 people: {speedups[20]:.1f}x (target >= 10x)")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
