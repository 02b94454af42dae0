"""``pose export``: write a trained model as ONNX, ready for the onnxruntime backend of
``pose predict`` (``pose.decode.onnx_backend``) with no torch checkpoint.

What is exported is :class:`pose.decode.inference.InferenceNet` of one test scale, the
module ``pose predict`` / ``pose evaluate`` run with torch: normalised input batch in,
aggregated heatmaps and tags on the decode grid out (flip test and ``project2image`` as
params ``evaluate`` says at export; the coordinate convention of the model). Batch,
height and width are dynamic (height and width multiples of 32). The ONNX
``metadata_props`` carry what decoding needs (``pose.decode.onnx_backend`` lists them).

Every file records what the model was trained on (``train_data``: dataset, ``domain`` (photos |
generated), annotation file, sha256, image count; and ``domain`` on its own) when the checkpoint
has the record (:func:`export_checkpoint`).

int8 (:func:`quantize_int8`, ``pose export --int8``): onnxruntime's static quantization of the
exported fp32 file, QDQ format, the convolutions' weights int8 per output channel and their
activations uint8, with activation ranges calibrated (MinMax) on the network inputs of
``predict.int8_calibration_images`` training images (:func:`calibration_inputs`); the
aggregation after the network (flip merge, resampling) stays float. The metadata of the fp32
file is kept, plus ``quantization``.

Exporter: torch's ``torch.export``-based ONNX exporter (``torch.onnx.export(...,
dynamo=True)``, which needs ``onnxscript``); the TorchScript-tracing one
(``dynamo=False``) bakes the example's map sizes into the resampling and gives wrong
shapes at other input sizes.

Params sections read (handed in by ``pose.cli``, `pose.params`): ``evaluate``, ``predict``
(``int8_calibration_images``) and ``data`` (the default calibration images).
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from pose.datasets.schema import FLIP_INDEX, KEYPOINT_NAMES, SKELETON
from pose.decode.inference import inference_net
from pose.decode.onnx_backend import FORMAT, INPUT_NAME, OUTPUT_NAMES
from pose.decode.persons import InferenceSettings, graph_projects, resolve_eval_params
from pose.io import atomic_write_bytes

if TYPE_CHECKING:
    from pose.params import DataSection, EvaluateSection, PredictSection

#: ONNX opset of exported files (onnxruntime 1.32 runs up to 23; 18 is torch's default)
ONNX_OPSET = 18
#: values of ``pose export --format``
FORMATS: tuple[str, ...] = ("onnx",)
#: example input for the exporter: batch 2 (torch.export specialises sizes 0 and 1), 128 x 96 input px
_EXAMPLE_SHAPE = (2, 3, 128, 96)
#: largest input side in units of 32 px the exported graph accepts (4096 px)
_MAX_SIDE_32 = 128


def export_onnx(model: torch.nn.Module, out_path: Path | str, *,
                eval_params: EvaluateSection | InferenceSettings | dict, opset: int = ONNX_OPSET,
                metadata: dict[str, str] | None = None) -> Path:
    """Export ``model`` (a ``pose.models`` model) as an ONNX file (module docstring).

    Args:
        model: the trained model; not modified (a CPU copy is exported).
        out_path: ``.onnx`` file to write (atomically; parent folders are created).
        eval_params: the params ``evaluate`` section (`pose.params.EvaluateSection`), or
            `pose.decode.persons.InferenceSettings` (all of ``pose.decode.persons.EVAL_KEYS``):
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
    net = inference_net(cpu_model, flip_test=bool(cfg.flip_test), project2image=graph_projects(cfg),
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
        "project2image": str(bool(cfg.project2image)).lower(),
        "project_maps": str(bool(cfg.project_maps)).lower(), "stride": str(net.stride),
        "input_size": str(int(cfg.input_size)), "resize": str(cfg.resize),
        "keypoint_names": json.dumps(list(KEYPOINT_NAMES)), "flip_index": json.dumps(list(FLIP_INDEX)),
        "skeleton": json.dumps([list(limb) for limb in SKELETON]),
        "eval_params": json.dumps(cfg.as_dict()),
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


def export_checkpoint(model_ref: str, out_path: Path | str, *, eval_params: EvaluateSection | InferenceSettings | dict,
                      model: torch.nn.Module,
                      train_data: str | None, opset: int = ONNX_OPSET) -> Path:
    """:func:`export_onnx` of ``model`` (loaded from ``model_ref``) with the metadata that says where it
    came from: ``source`` (``model_ref``), ``train_data`` (the checkpoint's JSON record, when it has
    one) and ``domain`` (the record's ``domain``: ``photos`` | ``generated``; ``unknown`` without a
    record). Returns the written path. Raises as :func:`export_onnx`."""
    extra = {"source": str(model_ref), "domain": "unknown"}
    if train_data:
        extra["train_data"] = str(train_data)
        record = json.loads(train_data)
        extra["domain"] = str(record.get("domain") or ("generated" if record.get("dataset") == "generated"
                                                          else "unknown"))
    return export_onnx(model, out_path, eval_params=eval_params, opset=opset, metadata=extra)


def calibration_inputs(annotations: Path | str, images_dir: Path | str, *, count: int,
                       eval_params: EvaluateSection | InferenceSettings):
    """Network inputs of ``count`` images of a COCO annotation file (evenly spaced in image-id order;
    the training split for :func:`quantize_int8`), each ``(1, 3, H, W)`` float32 as the model sees
    it at ``eval_params`` (``input_size``, ``resize``; ``pose.decode.preprocess.input_batch``).
    A generator. Raises FileNotFoundError for a missing file, ValueError when ``count < 1`` or the
    file lists no image."""
    from pose.decode.preprocess import input_batch, input_geometry
    from pose.io import read_image

    annotations, images_dir = Path(annotations), Path(images_dir)
    if int(count) < 1:
        raise ValueError(f"params predict.int8_calibration_images: must be >= 1, got {count}")
    if not annotations.is_file():
        raise FileNotFoundError(f"{annotations}: no annotation file for the int8 calibration images")
    images = sorted(json.loads(annotations.read_text()).get("images", []), key=lambda im: im["id"])
    if not images:
        raise ValueError(f"{annotations}: lists no image for the int8 calibration")
    picks = sorted({int(i) for i in np.linspace(0, len(images) - 1, min(int(count), len(images)))})
    for i in picks:
        image = read_image(images_dir / images[i]["file_name"], images[i]["id"])
        geo = input_geometry(image.shape[1], image.shape[0], resize=str(eval_params.resize),
                             input_size=int(eval_params.input_size), scale=1.0, min_scale=1.0)
        yield input_batch(image, geo)


def quantize_int8(fp32_path: Path | str, out_path: Path | str, inputs) -> Path:
    """Write the int8 version of an exported fp32 file (module docstring): onnxruntime
    ``quantize_static`` (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration)
    over the convolutions, calibrated on ``inputs`` (an iterable of ``(1, 3, H, W)`` float32
    network inputs, :func:`calibration_inputs`). The fp32 file's metadata is copied, plus
    ``quantization``. Written atomically. Returns the path.

    Raises ValueError when ``inputs`` is empty or the file is not an exported pose model."""
    import tempfile

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from pose.decode.onnx_backend import read_metadata

    fp32_path = Path(fp32_path)
    meta = read_metadata(fp32_path)
    if meta.get("pose.format") != FORMAT:
        raise ValueError(f"{fp32_path}: not a model exported by `pose export`")
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in inputs]
    if not batches:
        raise ValueError("int8 calibration: no input images")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {INPUT_NAME: batch}

    with tempfile.TemporaryDirectory(prefix="pose-int8-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(q), _Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        proto = onnx.load(str(q))
    props = {**meta, "quantization": f"int8 static QDQ (onnxruntime quantize_static, Conv only, per-channel int8 "
                                     f"weights, uint8 activations, MinMax on {len(batches)} training images)"}
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return atomic_write_bytes(Path(out_path), proto.SerializeToString())


def export_model(ev: EvaluateSection, predict: PredictSection, data: DataSection, model: str, out: Path, *,
                 int8: bool = False,
                 calibration_annotations: Path | None = None, calibration_images: Path | None = None,
                 tracking_uri: str | None, notice=None) -> Path:
    """``pose export``: the model behind ``model`` (a checkpoint or an MLflow reference,
    :func:`pose.predict.load_model`) as ONNX at ``out`` (:func:`export_checkpoint` with params
    ``evaluate``); with ``int8`` quantized (:func:`quantize_int8`) on
    ``predict.int8_calibration_images`` images of ``calibration_annotations`` /
    ``calibration_images`` (default ``<data.raw_dir>/<data.dataset>/<data.train_split>``).
    ``notice`` gets the one-line domain notice (:func:`pose.predict.domain_notice`) when there is one.
    ``ev``, ``predict``, ``data``: the params ``evaluate``, ``predict`` and ``data`` sections
    (`pose.params.EvaluateSection`, `pose.params.PredictSection`, `pose.params.DataSection`).

    Returns the written path. Raises FileNotFoundError (the calibration images, a checkpoint),
    ValueError, RuntimeError (a model that cannot be loaded or exported)."""
    import tempfile

    from pose.predict import domain_notice, load_model, training_data_record

    if int8:
        calibration_images = calibration_images or Path(data.raw_dir) / data.dataset / data.train_split
        if not calibration_annotations.is_file() or not calibration_images.is_dir():
            raise FileNotFoundError(f"--int8: calibration images {calibration_annotations} / {calibration_images} "
                                    "not found (run `dvc repro validate` first, or give --calibration-annotations "
                                    "and --calibration-images)")
    net = load_model(model, tracking_uri=tracking_uri, device="cpu")
    record = training_data_record(model, tracking_uri=tracking_uri)
    line = domain_notice(model, json.loads(record) if record else None)
    if line and notice is not None:
        notice(line)
    if not int8:
        return export_checkpoint(model, out, eval_params=ev, model=net, train_data=record)
    with tempfile.TemporaryDirectory(prefix="pose-export-") as tmp:
        fp32 = export_checkpoint(model, Path(tmp) / "fp32.onnx", eval_params=ev, model=net, train_data=record)
        inputs = calibration_inputs(calibration_annotations, calibration_images,
                                    count=int(predict.int8_calibration_images), eval_params=ev)
        return quantize_int8(fp32, out, inputs)


__all__ = ["FORMATS", "ONNX_OPSET", "calibration_inputs", "export_checkpoint", "export_model", "export_onnx",
           "quantize_int8"]
