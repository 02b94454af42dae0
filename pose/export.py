"""``pose export``: write a trained model as ONNX, ready for the onnxruntime backend of
``pose predict`` (``pose.decode.onnx_backend``) with no torch checkpoint.

What is exported is :class:`pose.decode.inference.InferenceNet` of one test scale, the
module ``pose predict`` / ``pose evaluate`` run with torch: normalised input batch in,
aggregated heatmaps and tags on the decode grid out (flip test and ``project2image`` as
params ``evaluate`` says at export; the coordinate convention of the model). Batch,
height and width are dynamic (height and width multiples of 32). The ONNX
``metadata_props`` carry what decoding needs (``pose.decode.onnx_backend`` lists them).

Exporter: torch's ``torch.export``-based ONNX exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``); the TorchScript-tracing one
(``dynamo=False``) bakes the example's map sizes into the resampling and gives wrong
shapes at other input sizes.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import torch

from pose.datasets.schema import FLIP_INDEX, KEYPOINT_NAMES, SKELETON
from pose.decode.inference import inference_net
from pose.decode.onnx_backend import FORMAT, INPUT_NAME, OUTPUT_NAMES
from pose.decode.persons import EVAL_KEYS, resolve_eval_params
from pose.io import atomic_write_bytes

#: ONNX opset of exported files (onnxruntime 1.32 runs up to 23; 18 is torch's default)
ONNX_OPSET = 18
#: values of ``pose export --format``
FORMATS: tuple[str, ...] = ("onnx",)
#: example input for the exporter: batch 2 (torch.export specialises sizes 0 and 1), 128 x 96 input px
_EXAMPLE_SHAPE = (2, 3, 128, 96)
#: largest input side in units of 32 px the exported graph accepts (4096 px)
_MAX_SIDE_32 = 128


def export_onnx(model: torch.nn.Module, out_path: Path | str, *, eval_params: dict, opset: int = ONNX_OPSET,
                metadata: dict[str, str] | None = None) -> Path:
    """Export ``model`` (a ``pose.models`` model) as an ONNX file (module docstring).

    Args:
        model: the trained model; not modified (a CPU copy is exported).
        out_path: ``.onnx`` file to write (atomically; parent folders are created).
        eval_params: params.yaml ``evaluate`` (all of ``pose.decode.persons.EVAL_KEYS``):
            ``flip_test`` and ``project2image`` shape the graph, all of them are stored as
            the file's default settings.
        opset: ONNX opset version.
        metadata: extra ``metadata_props`` (string values), e.g. ``train_data``, ``source``.

    Returns the written path.

    Raises ValueError on missing or invalid settings, or a model that does not record its
    joints, tag dimension or convention.
    """
    cfg = resolve_eval_params(eval_params)
    cpu_model = copy.deepcopy(model).cpu().eval()
    net = inference_net(cpu_model, flip_test=bool(cfg["flip_test"]), project2image=bool(cfg["project2image"]),
                        convention=None).eval()
    if net.num_joints is None or net.tag_dim is None:
        raise ValueError("the model does not record num_joints / tag_dim (a pose.models model does)")
    if net.num_joints != len(KEYPOINT_NAMES):
        raise ValueError(f"the model has {net.num_joints} joints; export supports the {len(KEYPOINT_NAMES)} "
                         "COCO-17 joints (keypoint names, flip index)")
    dims = {0: torch.export.Dim("batch", min=1, max=1024),
            2: 32 * torch.export.Dim("height_32", min=1, max=_MAX_SIDE_32),
            3: 32 * torch.export.Dim("width_32", min=1, max=_MAX_SIDE_32)}
    example = torch.zeros(_EXAMPLE_SHAPE, dtype=torch.float32)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # "torchvision is not installed": no torchvision op is used
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations, nothing to act on
            program = torch.onnx.export(net, (example,), None, dynamo=True, dynamic_shapes=(dims,),
                                        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        opset_version=int(opset), verbose=False, optimize=True)
    finally:
        registration.setLevel(level)
    proto = program.model_proto
    props = {
        "pose.format": FORMAT, "num_joints": str(net.num_joints), "tag_dim": str(net.tag_dim),
        "convention": net.convention, "flip_test": str(net.flip_test).lower(),
        "project2image": str(net.project2image).lower(), "stride": str(net.stride),
        "input_size": str(int(cfg["input_size"])), "resize": str(cfg["resize"]),
        "keypoint_names": json.dumps(list(KEYPOINT_NAMES)), "flip_index": json.dumps(list(FLIP_INDEX)),
        "skeleton": json.dumps([list(limb) for limb in SKELETON]),
        "eval_params": json.dumps({k: cfg[k] for k in EVAL_KEYS}),
        **{str(k): str(v) for k, v in (metadata or {}).items()},
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "pose"
    import onnx

    onnx.checker.check_model(proto)
    return atomic_write_bytes(Path(out_path), proto.SerializeToString())


__all__ = ["FORMATS", "ONNX_OPSET", "export_onnx"]
