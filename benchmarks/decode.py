"""Grouping speed: `pose.decode.group.group_keypoints` against the official HigherHRNet
parser (``lib/core/group.py`` ``HeatmapParser.parse`` of HRNet/HigherHRNet-Human-Pose-Estimation,
imported from a checkout outside this repository and run in the same process on the same maps),
per crowd size, on sparse (oracle) and dense (network-like) maps, with the reference's 5 x 5 NMS
window and 30 peaks per joint (``max_people = max(30, N)``).

Scenes: N random poses in a 256 x 256 heatmap (the 1/2 resolution of a 512 input; ``--size``).
Each joint is a Gaussian (sigma 2) with a random peak height; about 1 joint in 5 is left out
("occluded"), so refinement has joints to search for. One tag per person (spaced 2 apart, shuffled,
plus N(0, 0.02) per pixel as a network's tags: no two candidates read exactly the same tag,
which the official parser's dict of groups keyed by tag value cannot hold) over a 5 x 5 patch
at each joint, N(0, 0.05) elsewhere (tag_dim 1, or 2 as with the flip test:
``--tag-dim``). ``sparse``: zero heatmap away from the Gaussians (oracle maps, about 95% exact
zeros). ``dense``: every pixel positive, a smooth background of 0.005-0.05 under the Gaussians
(a network's output). Both decoders decode every scene in the ``reference`` convention (the
official rules: munkres' choice on ties, -0.25 on equal neighbours, every group kept), so their
persons can be compared: "same as official" means the same persons with the same joints
(official coordinates = ours + 0.5, the official adds the pixel centre inside the parser) and
scores. "bit-identical" compares ours with the full-map refine (``REFINE_FULL_SCAN``) on the same
maps. Times are CPU ms per image of this process (one thread), best of the repeats: the least
disturbed figure on a shared machine, where the wall clock also counts other processes.

Prints a table and one line per map kind: ``ratio vs official at N people: ...``; the target is
>= 20x at every crowd size. With ``--official`` it then decodes ``--tie-scenes`` scenes whose
grouping depends on the order of equal peak values (:func:`make_tie_scene`) with both
``peak_ties`` orders and counts the scenes equal to the official parser's persons.

Run:  PYTHONPATH=. python benchmarks/decode.py --official /path/to/HigherHRNet-Human-Pose-Estimation
      [--people 1 5 10 20 40] [--repeats 5] [--official-repeats 2] [--size 256] [--tag-dim 1] [--tie-scenes 50]

The official checkout is not part of this repository: get it with
``git clone https://github.com/HRNet/HigherHRNet-Human-Pose-Estimation /work/peer/HigherHRNet``
(any folder outside the package; this repository git-ignores ``.peer/``). Its parser needs
``munkres`` (a dev dependency here) and torch. Without ``--official`` the baseline is
:func:`reference_decode`, a straightforward Python reimplementation of the same parser (printed
as such).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

try:
    from munkres import Munkres
except ImportError:  # pragma: no cover - exercised only without munkres
    Munkres = None

from pose.codec import convention_rules
from pose.decode import group as group_module
from pose.decode.group import MUNKRES_PAD, default_joint_order, group_keypoints, matching_cost, top_k_peaks

SIZE = 256
SIGMA = 2.0


def make_scene(num_people: int, seed: int, size: int = SIZE, tag_dim: int = 1, num_joints: int = 17,
               scale: float = 1.0, dense: bool = False,
               occluded: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heatmaps (K, S, S) float32, tags (K, S, S, T) float32 and keypoints (N, K, 2) in
    heatmap px of ``num_people`` random poses (deterministic by ``seed``); ``scale``
    multiplies the pose spread and the Gaussian sigma (2: the same scene on maps of twice
    the resolution); ``dense`` adds a smooth positive background (every pixel > 0, as a
    network's output); a fraction ``occluded`` of the joints gets no Gaussian."""
    rng = np.random.default_rng(seed)
    margin, spread, sigma = 24 * scale, 22 * scale, SIGMA * scale
    centres = rng.uniform(margin, size - margin, (num_people, 2))
    kps = centres[:, None, :] + rng.uniform(-spread, spread, (num_people, num_joints, 2))
    kps = np.clip(kps, 0, size - 1)
    amp = rng.uniform(0.5, 1.0, (num_people, num_joints))
    amp[rng.random((num_people, num_joints)) < occluded] = 0.0
    r = int(np.ceil(3 * sigma))
    hm = np.zeros((num_joints, size, size), dtype=np.float32)
    if dense:
        yy, xx = np.mgrid[0:size, 0:size] / size
        for k in range(num_joints):
            fx, fy, ph = rng.uniform(1.0, 4.0, 3)
            hm[k] = 0.0275 + 0.0225 * np.sin(2 * np.pi * fx * xx + ph) * np.cos(2 * np.pi * fy * yy)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    g = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
    person_tags = rng.permutation(num_people).astype(np.float32) * 2.0
    tags = rng.normal(0.0, 0.05, (num_joints, size, size, tag_dim)).astype(np.float32)
    for p in range(num_people):
        for k in range(num_joints):
            if amp[p, k] == 0:
                continue
            cx, cy = np.rint(kps[p, k]).astype(int)
            y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, size), max(cx - r, 0), min(cx + r + 1, size)
            patch = amp[p, k] * g[y0 - cy + r:y1 - cy + r, x0 - cx + r:x1 - cx + r]
            np.maximum(hm[k, y0:y1, x0:x1], patch, out=hm[k, y0:y1, x0:x1])
            patch_tags = tags[k, max(cy - 2, 0):cy + 3, max(cx - 2, 0):cx + 3, :]
            patch_tags[...] = person_tags[p] + rng.normal(0.0, 0.02, patch_tags.shape)
    return hm, tags, kps


def make_tie_scene(seed: int, size: int = 64, num_joints: int = 17,
                   person_tags: tuple[float, ...] = (0.0, 0.3, 5.0, 5.3, 10.0, 10.3, 15.0, 15.3)):
    """A scene where the order of equal peaks decides the grouping: every joint of every person is
    one peak of height 0.5 (exact value ties in each joint's top-k) and the persons come in pairs
    whose tags are 0.3 apart (their rounded tag distances, so their matching costs, tie), so the
    row order in which the tied candidates meet ``munkres`` picks who gets which joint. Tags:
    the person's plus N(0, 0.02) per pixel of a 5 x 5 patch (no two candidates read exactly the
    same tag). Returns heatmaps (K, S, S) float32 and tags (K, S, S, 1) float32."""
    rng = np.random.default_rng(seed)
    hm = np.zeros((num_joints, size, size), np.float32)
    tags = np.zeros((num_joints, size, size, 1), np.float32)
    for t in person_tags:
        for j in range(num_joints):
            while True:  # a free spot, 3 px from every other peak of the joint
                y, x = rng.integers(3, size - 3, 2)
                if hm[j, y - 3:y + 4, x - 3:x + 4].max() == 0:
                    break
            hm[j, y, x] = 0.5
            patch = tags[j, y - 2:y + 3, x - 2:x + 3, 0]
            patch[...] = t + rng.normal(0.0, 0.02, patch.shape)
    return hm, tags


def tie_scenes(parser, count: int) -> tuple[int, int]:
    """How many of ``count`` tie scenes (:func:`make_tie_scene`) decode to the official parser's
    persons with ``peak_ties`` ``torch`` (the reference convention) and with ``index``."""
    import dataclasses

    from pose.codec import CONVENTION_RULES

    ref = CONVENTION_RULES["reference"]
    by_index = dataclasses.replace(ref, peak_ties="index")
    kw = dict(detection_threshold=0.1, tag_threshold=1.0, max_people=30, adjust=True, refine=True, nms_kernel=5,
              tie_break=False)
    same_torch = same_index = 0
    for seed in range(count):
        hm, tags = make_tie_scene(seed)
        base, s_base = official_decode(parser, hm, tags)
        same_torch += same_as_official(*group_keypoints(hm, tags, convention=ref, **kw), base, s_base)
        same_index += same_as_official(*group_keypoints(hm, tags, convention=by_index, **kw), base, s_base)
    return same_torch, same_index


# ----------------------------------------------------------------------------- straightforward baseline
def reference_match(vals: np.ndarray, xs: np.ndarray, ys: np.ndarray, tags: np.ndarray, *,
                    detection_threshold: float, tag_threshold: float, max_people: int,
                    tie_break: bool, convention: str = "project") -> list[np.ndarray]:
    """The reference's matching loop written plainly: per joint, Python lists of candidates, a
    `munkres` assignment against the groups' mean tags (the cost padded to square with 1e10
    columns, as ``lib/core/group.py``). ``convention="reference"`` averages the group tags in
    float32 as the reference's ``np.mean`` of float32 tags; ``project`` in float64. Returns
    groups, each (K, 3 + T) float64 ``[x, y, score, tag...]`` (rows of missing joints all 0)."""
    if Munkres is None:
        raise RuntimeError("the baseline needs the `munkres` package: pip install munkres")
    float32_means = convention_rules(convention).assignment == "munkres"
    num_joints = vals.shape[0]
    groups: list[np.ndarray] = []
    group_tags: list[list[np.ndarray]] = []
    for j in default_joint_order(num_joints):
        cands = [(xs[j, c], ys[j, c], vals[j, c], tags[j, ys[j, c], xs[j, c]])
                 for c in range(vals.shape[1]) if vals[j, c] > detection_threshold]
        if not cands:
            continue
        rows = [np.concatenate([[x, y, v], t.astype(np.float64)]) for x, y, v, t in cands]
        raw = [t for *_, t in cands]
        if not groups:
            for row, t in zip(rows, raw):
                grp = np.zeros((num_joints, rows[0].size))
                grp[j] = row
                groups.append(grp)
                group_tags.append([t])
            continue
        considered = list(range(min(len(groups), max_people)))
        if float32_means:
            means = [np.mean(np.asarray(group_tags[g], np.float32), axis=0) for g in considered]
        else:
            means = [np.mean(np.asarray(group_tags[g], np.float64), axis=0) for g in considered]
        dist = np.array([[np.linalg.norm(row[3:] - m) for m in means] for row in rows])
        cost = matching_cost(dist, np.array([row[2] for row in rows]), tag_threshold, tie_break=tie_break)
        if len(rows) > len(considered):
            cost = np.concatenate([cost, np.full((len(rows), len(rows) - len(considered)), MUNKRES_PAD)], axis=1)
        pairs = Munkres().compute(cost.tolist())
        for r, c in sorted(pairs):
            if c < len(considered) and dist[r, c] < tag_threshold:
                groups[considered[c]][j] = rows[r]
                group_tags[considered[c]].append(raw[r])
            else:
                grp = np.zeros((num_joints, rows[0].size))
                grp[j] = rows[r]
                groups.append(grp)
                group_tags.append([raw[r]])
    return groups


def _quarter(a: float, b: float, equal: float) -> float:
    """+0.25 toward the higher of two neighbour values, ``equal`` when they are equal (0 in the
    project's rule; the reference's ``else`` branch gives -0.25)."""
    return 0.25 if a > b else -0.25 if a < b else equal


def reference_decode(heatmaps: np.ndarray, tags: np.ndarray, *, detection_threshold: float,
                     tag_threshold: float, max_people: int, adjust: bool, refine: bool,
                     nms_kernel: int, tie_break: bool, convention: str = "project") -> tuple[np.ndarray, np.ndarray]:
    """Straightforward decoder: dense max-pool NMS and top-k on the whole map, per joint a
    Python loop with `munkres` (:func:`reference_match`), per-joint adjustment loops and
    per-person refinement over every joint, written the way the reference is, with the
    convention's adjust rule and person cap. Same inputs, outputs and conventions as
    :func:`group_keypoints`."""
    rules = convention_rules(convention)
    num_joints, h, w = heatmaps.shape
    tags = tags if tags.ndim == 4 else tags[..., None]
    vals, xs, ys = top_k_peaks(heatmaps, max_people, nms_kernel)
    groups = reference_match(vals, xs, ys, tags, detection_threshold=detection_threshold,
                             tag_threshold=tag_threshold, max_people=max_people, tie_break=tie_break,
                             convention=convention)
    if not groups:
        return np.zeros((0, num_joints, 4), np.float32), np.zeros(0, np.float32)
    out = np.zeros((len(groups), num_joints, 4), dtype=np.float32)
    eq = rules.adjust_equal
    for p, grp in enumerate(groups):
        for j in range(num_joints):
            if grp[j, 2] > 0:
                x, y = grp[j, 0], grp[j, 1]
                xi, yi = int(x), int(y)
                if adjust:
                    hmj = heatmaps[j]
                    x += _quarter(hmj[yi, min(xi + 1, w - 1)], hmj[yi, max(xi - 1, 0)], eq)
                    y += _quarter(hmj[min(yi + 1, h - 1), xi], hmj[max(yi - 1, 0), xi], eq)
                out[p, j] = (x, y, grp[j, 2], grp[j, 3:].mean())
    scores = out[:, :, 2].mean(axis=1)
    keep = list(range(len(groups)))
    if len(groups) > max_people and not rules.keep_all_groups:
        keep = sorted(np.argsort(-scores, kind="stable")[:max_people].tolist())
    out, scores = out[keep], scores[keep]
    if refine:
        for p, g in enumerate(keep):
            grp = groups[g]
            mean_tag = np.mean([tags[j, int(grp[j, 1]), int(grp[j, 0])] for j in range(num_joints) if grp[j, 2] > 0],
                               axis=0)
            for j in range(num_joints):
                dist = (((tags[j] - mean_tag[None, None, :]) ** 2).sum(axis=2)) ** 0.5
                score_map = heatmaps[j] - np.round(dist)
                y, x = np.unravel_index(np.argmax(score_map), score_map.shape)
                val = heatmaps[j, y, x]
                if val > 0 and out[p, j, 2] == 0:
                    hmj = heatmaps[j]
                    dx = _quarter(hmj[y, min(x + 1, w - 1)], hmj[y, max(x - 1, 0)], eq)
                    dy = _quarter(hmj[min(y + 1, h - 1), x], hmj[max(y - 1, 0), x], eq)
                    out[p, j] = (x + dx, y + dy, val, tags[j, y, x].mean())
    return out, scores.astype(np.float32)


# ----------------------------------------------------------------------------- the official parser
def load_official_parser(checkout: Path, *, max_people: int, nms_kernel: int, detection_threshold: float,
                         tag_threshold: float, num_joints: int = 17):
    """``HeatmapParser`` of the official checkout (``lib/core/group.py``, imported by path; run
    as it is), configured as the published COCO configs (``TAG_PER_JOINT``, ``USE_DETECTION_VAL``,
    no ``IGNORE_TOO_MUCH``, no centre joint). Raises FileNotFoundError without the file."""
    path = Path(checkout) / "lib" / "core" / "group.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an official HigherHRNet checkout (see the module docstring)")
    spec = importlib.util.spec_from_file_location("official_group", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg = SimpleNamespace(
        DATASET=SimpleNamespace(NUM_JOINTS=num_joints, MAX_NUM_PEOPLE=max_people, WITH_CENTER=False),
        MODEL=SimpleNamespace(TAG_PER_JOINT=True),
        TEST=SimpleNamespace(DETECTION_THRESHOLD=detection_threshold, TAG_THRESHOLD=tag_threshold,
                             USE_DETECTION_VAL=True, IGNORE_TOO_MUCH=False, IGNORE_CENTER=True,
                             NMS_KERNEL=nms_kernel, NMS_PADDING=nms_kernel // 2))
    return mod.HeatmapParser(cfg)


def official_decode(parser, heatmaps: np.ndarray, tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The official ``parse(det, tag, adjust=True, refine=True)`` of one image's maps (as
    ``tools/valid.py`` passes them: (1, K, H, W) and (1, K, H, W, T) tensors); returns persons
    (N, K, 3) float32 ``[x, y, score]`` in its coordinates (pixel + 0.5 + quarter adjust) and
    scores (N,)."""
    import torch

    det = torch.from_numpy(np.ascontiguousarray(heatmaps))[None]
    tag = torch.from_numpy(np.ascontiguousarray(tags if tags.ndim == 4 else tags[..., None]))[None]
    ans, scores = parser.parse(det, tag, True, True)
    persons = np.asarray(ans[0], np.float32).reshape(-1, heatmaps.shape[0], 3 + tag.shape[-1])[..., :3]
    return persons, np.asarray(scores, np.float32)


def same_as_official(ours: np.ndarray, s_ours: np.ndarray, official: np.ndarray, s_official: np.ndarray) -> bool:
    """Same persons in the same order: found joints at the official coordinates - 0.5 (the
    pixel centre the official parser adds) to 1e-4 px, the same joint scores and person scores."""
    if ours.shape[0] != official.shape[0]:
        return False
    found = ours[..., 2] > 0
    if not np.array_equal(found, official[..., 2] > 0):
        return False
    return (np.allclose(ours[..., :2][found] + 0.5, official[..., :2][found], atol=1e-4)
            and np.allclose(ours[..., 2], official[..., 2], atol=1e-6) and np.allclose(s_ours, s_official, atol=1e-6))


def _time(fn, repeats: int) -> tuple[float, object]:
    """Best of ``repeats`` calls of ``fn``, in CPU seconds of this process (``time.process_time``:
    on a shared machine the wall clock also counts the time other processes hold the cores;
    torch runs one thread here, so CPU time is the single-core time)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.process_time()
        result = fn()
        times.append(time.process_time() - t0)
    return min(times), result


def full_map_refine(hm: np.ndarray, tags: np.ndarray, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``group_keypoints`` with refinement scoring every pixel (``REFINE_FULL_SCAN``)."""
    previous = group_module.REFINE_FULL_SCAN
    group_module.REFINE_FULL_SCAN = True
    try:
        return group_keypoints(hm, tags, **kw)
    finally:
        group_module.REFINE_FULL_SCAN = previous


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", type=Path, default=None,
                    help="path of an official HigherHRNet checkout (module docstring says how to get it)")
    ap.add_argument("--people", type=int, nargs="+", default=[1, 5, 10, 20, 40])
    ap.add_argument("--maps", nargs="+", default=["sparse", "dense"], choices=["sparse", "dense"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--official-repeats", type=int, default=2)
    ap.add_argument("--nms-kernel", type=int, default=5, help="NMS window (params evaluate.nms_kernel; reference 5)")
    ap.add_argument("--tag-dim", type=int, default=1, help="tag channels per joint (2: with the flip test)")
    ap.add_argument("--occluded", type=float, default=0.0,
                    help="fraction of joints without a Gaussian (refinement searches for them)")
    ap.add_argument("--size", type=int, default=SIZE,
                    help="map side in px (256: the 1/2 maps of a 512 input; 512: decoding at input resolution, "
                         "evaluate.project2image; poses and Gaussians scale with it)")
    ap.add_argument("--tie-scenes", type=int, default=50,
                    help="with --official: scenes whose grouping depends on the order of equal peaks (0: none)")
    args = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)  # the official parser's NMS / top-k run in torch: one core, as ours
    except ImportError:  # pragma: no cover
        pass
    if Munkres is None:
        print("benchmarks/decode.py: the official parser and the baseline need the `munkres` package "
              "(pip install munkres; a dev dependency of this project).", file=sys.stderr)
        return 2
    baseline = "official HeatmapParser" if args.official else "straightforward reimplementation (no --official)"
    print(f"{args.size}x{args.size} maps, NMS {args.nms_kernel}x{args.nms_kernel}, tag_dim {args.tag_dim}, "
          f"{args.occluded:.0%} joints occluded, convention reference; baseline: {baseline}")
    print(f"{'maps':>6} {'people':>6} {'persons':>7} | {'ours ms':>8} {'full-map ms':>11} {'baseline ms':>11} "
          f"{'ratio':>7} | bit-identical same-as-baseline")
    ok = True
    ratios: dict[str, dict[int, float]] = {}
    for kind in args.maps:
        for n in args.people:
            hm, tags, _ = make_scene(n, seed=n, size=args.size, scale=args.size / SIZE, tag_dim=args.tag_dim,
                                     dense=kind == "dense", occluded=args.occluded)
            kw = dict(detection_threshold=0.1, tag_threshold=1.0, max_people=max(30, n), adjust=True, refine=True,
                      nms_kernel=args.nms_kernel, tie_break=False, convention="reference")
            t_ours, (ours, s_ours) = _time(lambda hm=hm, tags=tags, kw=kw: group_keypoints(hm, tags, **kw),
                                           args.repeats)
            t_full, (full, s_full) = _time(lambda hm=hm, tags=tags, kw=kw: full_map_refine(hm, tags, **kw),
                                           max(1, args.repeats // 2))
            bit = np.array_equal(ours, full) and np.array_equal(s_ours, s_full)
            if args.official:
                parser = load_official_parser(args.official, max_people=kw["max_people"], nms_kernel=args.nms_kernel,
                                              detection_threshold=0.1, tag_threshold=1.0)
                t_base, (base, s_base) = _time(lambda hm=hm, tags=tags, parser=parser: official_decode(
                    parser, hm, tags), args.official_repeats)
                same = same_as_official(ours, s_ours, base, s_base)
            else:
                t_base, (base, s_base) = _time(lambda hm=hm, tags=tags, kw=kw: reference_decode(hm, tags, **kw),
                                               args.official_repeats)
                same = (base.shape == ours.shape and np.allclose(ours, base, atol=1e-5)
                        and np.allclose(s_ours, s_base, atol=1e-6))
            ok &= bit and same
            ratios.setdefault(kind, {})[n] = t_base / t_ours
            print(f"{kind:>6} {n:>6} {len(ours):>7} | {t_ours * 1e3:>8.2f} {t_full * 1e3:>11.2f} {t_base * 1e3:>11.2f} "
                  f"{t_base / t_ours:>6.1f}x | {bit!s:>13} {same!s:>16}")
    for kind, per in ratios.items():
        print(f"ratio vs {'official' if args.official else 'baseline'} ({kind} maps): "
              + ", ".join(f"{n} people {r:.1f}x" for n, r in per.items())
              + f"; lowest {min(per.values()):.1f}x (target >= 20x)")
    print("every scene bit-identical to the full-map refine and the same persons as the baseline:", ok)
    if args.official and args.tie_scenes:
        parser = load_official_parser(args.official, max_people=30, nms_kernel=5, detection_threshold=0.1,
                                      tag_threshold=1.0)
        same_torch, same_index = tie_scenes(parser, args.tie_scenes)
        print(f"tie scenes (equal peaks whose order decides the grouping, make_tie_scene): the official parser's "
              f"persons in {same_torch}/{args.tie_scenes} with peak_ties torch (reference), "
              f"{same_index}/{args.tie_scenes} with index order")
        ok &= same_torch == args.tie_scenes
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
