"""Peer check: the official HigherHRNet test code (``tools/valid.py`` main() of
HRNet/HigherHRNet-Human-Pose-Estimation) and this project's reference protocol on the same
weights, images and ground truth; prints AP of both and a per-image comparison of the persons.

The official code is NOT part of this repository. Get it into any folder outside the package
(this repository git-ignores ``.peer/``), and its two pure-Python dependencies the project does
not have into a folder of their own::

    git clone https://github.com/HRNet/HigherHRNet-Human-Pose-Estimation /work/peer/HigherHRNet
    python -m pip install --target /work/peer/site yacs json_tricks

then, with weights trained by ``pose train`` in ``model.convention: reference`` (a checkpoint
``{"model": state_dict, "model_params": json}``; the project's state dict has the official key
layout, `pose.models.official_keys`)::

    PYTHONPATH=. python benchmarks/peer_reference.py /work/peer/HigherHRNet --site /work/peer/site \\
        --checkpoint data/models/best.pt --coco ../shared/datasets/coco-mini --input-sizes 192 512

For each input size the official ``valid.py`` runs in a child process on the CPU with these
run-time stand-ins and nothing else changed (all listed in :func:`install_stand_ins`):
``torch.nn.Module.cuda`` / ``torch.Tensor.cuda`` return the object itself (no GPU;
``DataParallel`` runs the module directly without CUDA), ``np.float`` = ``float`` (removed in
NumPy 2, used by ``COCODataset``), a ``torchvision`` module with the two transforms it uses
(``ToTensor``: HWC uint8 -> CHW float32 / 255; ``Normalize``: ``(x - mean) / std``; and the
matching ``functional``), and an empty ``crowdposetools`` (imported by the dataset package, not
used for COCO). The official config is the published COCO one
(``experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml``) with the model's widths and block
counts, ``DATASET.INPUT_SIZE`` and the paths set; its test settings are the project's
``evaluate`` defaults (flip test, ``PROJECT2IMAGE``, NMS 5, thresholds 0.1 / 1.0, 30 people).

The project side runs `pose.decode.inference.predict_dataset` with ``evaluate.resize:
short_side`` (the official ``resize_align_multi_scale``), the same settings and
``convention_overrides: {}`` (every row of the official code, `pose.codec.Convention`). Both
result lists are scored by the same pycocotools COCOeval (`pose.evaluate.coco.evaluate_results`);
the official's own printed table is quoted too. Per image: the number of persons of each and the
largest difference of any joint (x, y in image px, after matching persons by score, then by
distance), "same" when the counts are equal and every joint is within ``--tolerance`` (0.01 px;
the project rounds result coordinates to 1e-3).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the official side (child process)
def install_stand_ins() -> None:
    """The run-time stand-ins the official code needs on a CPU machine with NumPy 2 (module
    docstring). Nothing of the official code is edited."""
    import torch

    torch.nn.Module.cuda = lambda self, *a, **k: self
    torch.Tensor.cuda = lambda self, *a, **k: self
    if not hasattr(np, "float"):
        np.float = float  # NumPy 2 removed the alias COCODataset still uses
    tv = types.ModuleType("torchvision")
    tr = types.ModuleType("torchvision.transforms")
    fn = types.ModuleType("torchvision.transforms.functional")

    def to_tensor(pic):
        return torch.from_numpy(np.ascontiguousarray(pic.transpose((2, 0, 1)))).contiguous().float().div(255)

    def normalize(tensor, mean, std):
        mean = torch.as_tensor(mean, dtype=tensor.dtype)[:, None, None]
        std = torch.as_tensor(std, dtype=tensor.dtype)[:, None, None]
        return tensor.sub(mean).div(std)

    class Compose:
        def __init__(self, transforms):
            self.transforms = transforms

        def __call__(self, x):
            for t in self.transforms:
                x = t(x)
            return x

    class ToTensor:
        def __call__(self, pic):
            return to_tensor(pic)

    class Normalize:
        def __init__(self, mean, std):
            self.mean, self.std = mean, std

        def __call__(self, x):
            return normalize(x, self.mean, self.std)

    fn.to_tensor, fn.normalize = to_tensor, normalize
    tr.Compose, tr.ToTensor, tr.Normalize, tr.functional = Compose, ToTensor, Normalize, fn
    tv.transforms = tr
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})
    cp = types.ModuleType("crowdposetools")
    for sub in ("coco", "cocoeval"):
        m = types.ModuleType(f"crowdposetools.{sub}")
        m.COCO = m.COCOeval = None
        sys.modules[f"crowdposetools.{sub}"] = m
        setattr(cp, sub, m)
    sys.modules["crowdposetools"] = cp


def run_official(checkout: Path, cfg_file: Path, site: Path | None) -> None:
    """``tools/valid.py`` main() of the checkout with ``--cfg cfg_file`` (in this process)."""
    import torch

    torch.set_num_threads(1)
    install_stand_ins()
    sys.path[:0] = [str(checkout / "tools"), str(checkout / "lib")]
    if site is not None:
        sys.path.append(str(site))            # after the project's own packages (site also holds a PyYAML)
    sys.argv = ["valid.py", "--cfg", str(cfg_file)]
    import runpy

    runpy.run_path(str(checkout / "tools" / "valid.py"), run_name="__main__")


def official_config(checkout: Path, model_params: dict, *, input_size: int, root: Path, weights: Path,
                    out: Path) -> dict:
    """The published COCO config with the model's architecture, the input size, the project's
    test settings and the paths of this run."""
    import yaml

    cfg = yaml.safe_load((checkout / "experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml").read_text())
    w = int(model_params["width"])
    if int(model_params.get("stem_blocks", 4)) != 4 or int(model_params.get("tag_dim", 1)) != 1:
        raise ValueError("the official network has 4 stem blocks and tag_dim 1: train with model.stem_blocks 4, "
                         "model.tag_dim 1")
    for n, (stage, modules) in enumerate(zip(("STAGE2", "STAGE3", "STAGE4"), model_params["stage_blocks"]), start=2):
        cfg["MODEL"]["EXTRA"][stage].update(NUM_MODULES=int(modules), NUM_CHANNELS=[w * 2 ** i for i in range(n)])
    cfg["MODEL"]["EXTRA"]["DECONV"].update(NUM_CHANNELS=[w], NUM_BASIC_BLOCKS=int(model_params["deconv_blocks"]))
    cfg["MODEL"]["INIT_WEIGHTS"] = False
    cfg["DATASET"].update(ROOT=str(root), TEST="val2017", INPUT_SIZE=int(input_size),
                          OUTPUT_SIZE=[input_size // 4, input_size // 2])
    cfg["TEST"].update(MODEL_FILE=str(weights), FLIP_TEST=True, PROJECT2IMAGE=True, NMS_KERNEL=5, NMS_PADDING=2,
                       DETECTION_THRESHOLD=0.1, TAG_THRESHOLD=1.0, SCALE_FACTOR=[1], ADJUST=True, REFINE=True,
                       LOG_PROGRESS=False)
    cfg["DATASET"]["MAX_NUM_PEOPLE"] = 30
    cfg.update(OUTPUT_DIR=str(out / "output"), LOG_DIR=str(out / "log"), DATA_DIR="", WORKERS=0, PRINT_FREQ=10 ** 6)
    cfg["CUDNN"]["ENABLED"] = False
    return cfg


# ----------------------------------------------------------------------------- comparison
def by_image(results: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for r in results:
        out.setdefault(int(r["image_id"]), []).append(r)
    return out


def compare_image(ours: list[dict], official: list[dict]) -> tuple[int, int, float]:
    """(persons of ours, of the official, largest joint difference in image px after matching
    each official person to one of ours: equal score within 1e-6 first, then the closest)."""
    if len(ours) != len(official):
        return len(ours), len(official), float("inf")
    left = list(range(len(ours)))
    worst = 0.0
    for o in official:
        ko = np.asarray(o["keypoints"], np.float64).reshape(-1, 3)
        same_score = [i for i in left if abs(float(ours[i]["score"]) - float(o["score"])) < 1e-6] or left
        diffs = [np.abs(np.asarray(ours[i]["keypoints"], np.float64).reshape(-1, 3)[:, :2] - ko[:, :2]).max()
                 for i in same_score]
        best = int(np.argmin(diffs))
        worst = max(worst, float(diffs[best]))
        left.remove(same_score[best])
    return len(ours), len(official), worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("official", type=Path, help="official HigherHRNet checkout (module docstring says how to get it)")
    ap.add_argument("--checkpoint", type=Path, help="pose train checkpoint, model.convention reference")
    ap.add_argument("--coco", type=Path, default=REPO.parent / "shared/datasets/coco-mini")
    ap.add_argument("--split", default="val2017")
    ap.add_argument("--input-sizes", type=int, nargs="+", default=[192, 512])
    ap.add_argument("--site", type=Path, default=None, help="folder holding yacs and json_tricks (pip --target)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/peer_reference"))
    ap.add_argument("--reuse-official", action="store_true",
                    help="reuse the official results of an earlier run in --work (same checkpoint and settings)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="image px per joint")
    ap.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)  # child: run valid.py with this cfg
    args = ap.parse_args(argv)
    if args.worker is not None:
        run_official(args.official, args.worker, args.site)
        return 0
    if not (args.official / "tools" / "valid.py").is_file():
        print(f"{args.official}: not an official HigherHRNet checkout; see the module docstring", file=sys.stderr)
        return 2
    import torch
    import yaml

    from pose.decode.inference import predict_dataset
    from pose.evaluate.coco import evaluate_results
    from pose.predict import load_model

    torch.set_num_threads(1)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model_params = state["model_params"]
    model_params = json.loads(model_params) if isinstance(model_params, str) else model_params
    if model_params.get("convention") != "reference":
        print(f"{args.checkpoint}: trained in convention {model_params.get('convention')!r}; the peer check needs "
              "model.convention: reference", file=sys.stderr)
        return 2
    work = args.work
    root = work / "data"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    ann = root / "annotations" / f"person_keypoints_{args.split}.json"
    ann.write_text((args.coco / "annotations" / f"person_keypoints_{args.split}.json").read_text())
    link = root / "images" / args.split
    if not link.exists():
        link.symlink_to((args.coco / args.split).resolve())
    weights = work / "official_weights.pth"
    torch.save(state["model"], weights)                      # the official key layout (pose.models.official_keys)
    gt = json.loads(ann.read_text())
    model = load_model(str(args.checkpoint), tracking_uri=None)
    ev = dict(yaml.safe_load((REPO / "params.yaml").read_text())["evaluate"])
    print(f"checkpoint {args.checkpoint} ({model_params['backbone']} W{model_params['width']}, "
          f"stage modules {model_params['stage_blocks']}, convention reference); {args.coco.name} {args.split}: "
          f"{len(gt['images'])} images, {sum(a.get('num_keypoints', 0) > 0 for a in gt['annotations'])} persons")
    ok = True
    for size in args.input_sizes:
        out = work / f"size{size}"
        cfg_file = out / f"peer_{size}.yaml"
        out.mkdir(parents=True, exist_ok=True)
        cfg_text = yaml.safe_dump(official_config(args.official, model_params, input_size=size, root=root,
                                                  weights=weights, out=out))
        pattern = str(out / "output" / "**" / f"keypoints_{args.split}_results.json")
        log_file = out / "official.log"
        reuse = (args.reuse_official and cfg_file.is_file() and cfg_file.read_text() == cfg_text
                 and log_file.is_file() and glob.glob(pattern, recursive=True))
        if not reuse:
            cfg_file.write_text(cfg_text)
            env = dict(os.environ, OMP_NUM_THREADS="1")
            log = subprocess.run([sys.executable, __file__, str(args.official), "--worker", str(cfg_file)]
                                 + (["--site", str(args.site)] if args.site else []),
                                 capture_output=True, text=True, env=env, cwd=str(out))
            if log.returncode:
                print(log.stdout[-3000:], log.stderr[-3000:], file=sys.stderr)
                print(f"official valid.py failed at input {size}", file=sys.stderr)
                return 1
            log_file.write_text(log.stdout + log.stderr)
        table = [line.split(" - ", 1)[-1] for line in log_file.read_text().splitlines() if "| " in line][-3:]
        res_file = sorted(glob.glob(pattern, recursive=True))[-1]
        official = json.loads(Path(res_file).read_text())
        cfg = dict(ev, input_size=size, resize="short_side", flip_test=True, project2image=True, test_scales=[1.0],
                   nms_kernel=5, detection_threshold=0.1, tag_threshold=1.0, max_people=30, adjust=True,
                   refine=True, nms_oks=1.0, tie_break=False, convention_overrides={},
                   project_maps=True)  # the official graph: every map projected before grouping (domain's key)
        ours = predict_dataset(model, ann, args.coco / args.split, cfg)
        m_off = evaluate_results(json.loads(ann.read_text()), official, per_keypoint=False)
        m_our = evaluate_results(json.loads(ann.read_text()), ours, per_keypoint=False)
        print(f"\ninput {size} (short side), flip test, project2image:")
        print("  official valid.py printed:")
        for line in table:
            print("    " + line)
        print(f"  {'':10s} {'AP':>6} {'AP50':>6} {'AP75':>6} {'AR':>6} persons")
        for name, m, res in (("official", m_off, official), ("project", m_our, ours)):
            print(f"  {name:10s} {m['AP']:6.3f} {m['AP50']:6.3f} {m['AP75']:6.3f} {m['AR']:6.3f} {len(res)}")
        d_ap = abs(m_off["AP"] - m_our["AP"])
        print(f"  |AP official - AP project| = {d_ap:.4f} (limit 0.005)")
        a, b = by_image(ours), by_image(official)
        same = 0
        rows = []
        for im in sorted(gt["images"], key=lambda im: im["id"]):
            n_our, n_off, worst = compare_image(a.get(im["id"], []), b.get(im["id"], []))
            hit = n_our == n_off and worst <= args.tolerance
            same += hit
            rows.append((im["id"], n_off, n_our, worst, hit))
        print(f"  per image: {same}/{len(rows)} images with the same persons and every joint within "
              f"{args.tolerance} px; largest joint difference {max(r[3] for r in rows):.4f} px")
        for image_id, n_off, n_our, worst, hit in rows:
            if not hit or n_off:
                print(f"    image {image_id:>12}: official {n_off:3d} persons, project {n_our:3d}, "
                      f"max joint diff {worst:.4f} px{'' if hit else '  DIFFERENT'}")
        ok &= d_ap <= 0.005 and same == len(rows)
    print("\npeer check passed:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
