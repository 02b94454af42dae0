"""Parameters and GFLOPs of HigherHRNet for several widths and input sizes.

Usage::

    python benchmarks/model_flops.py                       # widths 16 32 48, sizes 256 384 512
    python benchmarks/model_flops.py --widths 32 --sizes 512 --configs published

``num_joints``, ``tag_dim``, ``stem_blocks`` and ``deconv_blocks`` come from params.yaml's ``model``
section (one deconvolution: outputs at `pose.codec.OUTPUT_STRIDES`).
Two stage configurations are listed: ``params`` (params.yaml ``model.stage_blocks``) and
``published`` (modules 1, 4, 3 in stages 2, 3, 4, as in the paper).

Columns: ``GMACs`` exact multiply-adds of Conv/Deconv/Linear layers; ``GFLOPs(paper)`` the
HRNet repositories' counting (1 multiply-add = 1 FLOP, deconvolutions counted over output
pixels; HigherHRNet-W32 @ 512 -> 47.9, Table 2 of the paper); ``GFLOPs(2xMAC)`` with
1 MAC = 2 FLOPs. Models are built on the ``meta`` device, so nothing is computed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pose.models.hrnet import PUBLISHED_BRANCH_BLOCKS, HigherHRNet, count_macs, count_params  # noqa: E402

PUBLISHED_STAGE_BLOCKS = (1, 4, 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml", help="params.yaml path")
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 48])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384, 512],
                        help="square input sizes (multiples of 32)")
    parser.add_argument("--configs", nargs="+", choices=["params", "published"],
                        default=["params", "published"])
    args = parser.parse_args(argv)

    model_params = yaml.safe_load(args.params.read_text())["model"]
    stage_configs = {"params": tuple(int(b) for b in model_params["stage_blocks"]),
                     "published": PUBLISHED_STAGE_BLOCKS}
    configs = list(dict.fromkeys(stage_configs[c] for c in args.configs))  # drop duplicates

    header = (f"{'width':>5} {'stages':>7} {'input':>5} {'params(M)':>10} {'GMACs':>8} "
              f"{'GFLOPs(paper)':>13} {'GFLOPs(2xMAC)':>13}")
    print(f"num_joints={model_params['num_joints']} tag_dim={model_params['tag_dim']} "
          f"stem_blocks={model_params['stem_blocks']} deconv_blocks={model_params['deconv_blocks']}")
    print(header)
    print("-" * len(header))
    for stage_blocks in configs:
        for width in args.widths:
            with torch.device("meta"):
                model = HigherHRNet(width=width, num_joints=int(model_params["num_joints"]),
                                    tag_dim=int(model_params["tag_dim"]),
                                    stage_blocks=stage_blocks, stem_blocks=int(model_params["stem_blocks"]),
                                    branch_blocks=PUBLISHED_BRANCH_BLOCKS,
                                    deconv_blocks=int(model_params["deconv_blocks"]))
            params_m = count_params(model) / 1e6
            for size in args.sizes:
                macs = count_macs(model, size) / 1e9
                paper = count_macs(model, size, convention="reference") / 1e9
                stages = "-".join(map(str, stage_blocks))
                print(f"{width:>5} {stages:>7} {size:>5} {params_m:>10.2f} {macs:>8.2f} "
                      f"{paper:>13.2f} {2 * macs:>13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
