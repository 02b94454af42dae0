"""``pose predict VIDEO``: the persons of every frame of a video as JSON Lines, and an overlay video.
Params sections read (handed in by ``pose.cli``): ``evaluate`` and ``predict`` (`pose.params`).

A video (``.mp4``, ``.avi``, ``.mov``, ``.mkv``: :data:`VIDEO_SUFFIXES`) is decoded with OpenCV
(``cv2.VideoCapture``, its FFmpeg backend); each frame (BGR uint8, as ``cv2.imread`` gives an
image) goes through the same ``predict_fn`` that ``pose predict`` applies to an image, so a
frame gets exactly the persons the image path would give for the same pixels.

Outputs (:func:`video_outputs`), both written under a temporary name in the target folder and
renamed only once every frame is done, so an interrupted or failed run leaves neither:

* ``<stem>.jsonl``: one line per predicted frame, in frame order,
  ``{"frame": i, "t_s": i / fps, "persons": [...]}``; ``i`` is the 0-based index of the frame
  in the video (frames skipped by ``predict.video_frame_stride`` have no line), ``t_s`` its
  time in seconds from the container's frame rate, ``persons`` every person ``predict_fn``
  returned (as ``results.json`` keeps them all), ``keypoints`` as ``[[x, y, score] x K]`` in
  image px;
* ``<stem>_overlay.mp4`` (``.avi`` for an ``.avi`` input): the predicted frames with the
  confident persons drawn (the ``predict`` filters ``min_person_score`` / ``min_joints`` /
  ``joint_threshold``, as on images; :func:`pose.predict.confident_persons`), same
  size as the input, frame rate ``fps / video_frame_stride``, FourCC from
  ``predict.video_fourcc`` (``mp4v`` in MP4, ``MJPG`` in AVI: both ship with OpenCV's FFmpeg).

Each overlay frame carries a legend (top left) naming the thresholds that decided what is drawn
and how many of the frame's persons that is (:func:`pose.draw.thresholds_legend`), so a frame
whose JSON line holds 30 persons and whose overlay shows none says why.

Partial videos: before predicting, the frames are counted by decoding them (``grab``, no
prediction; :func:`count_decodable_frames`). When fewer decode than the container declares
(``CAP_PROP_FRAME_COUNT``; a truncated or partly corrupt file), :func:`predict_video` raises
:class:`PartialVideoError` naming both counts, before any prediction, unless
``allow_partial`` (``pose predict --allow-partial``): then the decodable frames are predicted
and the summary reports ``frames_decoded`` / ``frames_declared``.

Like OpenPifPaf's ``video`` command and mmpose's inferencer, frames are predicted one at a
time, in order (no batching across frames, no temporal smoothing or tracking).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np

from pose.decode.persons import person_json
from pose.draw import draw_legend, draw_persons, thresholds_legend
from pose.io import atomic_write_text, default_file_mode
from pose.predict import OptionError, check_predict_params, confident_persons

if TYPE_CHECKING:
    from pose.params import EvaluateSection, PredictSection

#: file suffixes `pose predict` treats as videos (lower case)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")

#: persons of one BGR uint8 (H, W, 3) frame: ``[{"keypoints": (K, 3) [x, y, score] image px, "score", ...}]``
PredictFn = Callable[[np.ndarray], Sequence[dict]]


class PartialVideoError(ValueError):
    """Fewer frames decode than the container declares (a truncated or partly corrupt video)
    and partial input was not allowed. ``decoded`` / ``declared``: the two counts."""

    def __init__(self, message: str, *, decoded: int, declared: int) -> None:
        super().__init__(message)
        self.decoded = int(decoded)
        self.declared = int(declared)


class VideoInfo(NamedTuple):
    """What the container says about a video: ``frames`` (CAP_PROP_FRAME_COUNT; None when the
    container does not say), ``fps`` (frames per second, > 0), ``width`` / ``height`` (px)."""

    frames: int | None
    fps: float
    width: int
    height: int


def is_video(path: Path | str) -> bool:
    """True when ``path``'s suffix is one of :data:`VIDEO_SUFFIXES` (case-insensitive)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def video_outputs(video_path: Path | str, out_dir: Path | str) -> tuple[Path, Path]:
    """``(out_dir/<stem>.jsonl, out_dir/<stem>_overlay.<mp4|avi>)`` for ``video_path``: an AVI
    input gives an AVI overlay, every other video an MP4 one."""
    video_path, out_dir = Path(video_path), Path(out_dir)
    suffix = ".avi" if video_path.suffix.lower() == ".avi" else ".mp4"
    return out_dir / f"{video_path.stem}.jsonl", out_dir / f"{video_path.stem}_overlay{suffix}"


def open_video(video_path: Path | str) -> tuple[cv2.VideoCapture, VideoInfo]:
    """Open ``video_path`` for reading with OpenCV.

    FFmpeg's own log lines (e.g. ``moov atom not found``) are silenced unless the environment
    sets ``OPENCV_FFMPEG_LOGLEVEL``: the error raised here says the same in one line.

    Returns the open capture (the caller releases it) and its :class:`VideoInfo`.
    Raises FileNotFoundError when the file is missing and ValueError, naming the file, when
    it is not a video OpenCV can decode (corrupt, truncated, unknown codec) or reports no
    frame size or frame rate.
    """
    video_path = Path(video_path)
    if not video_path.is_file():
        raise FileNotFoundError(f"{video_path}: no such video file")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when FFmpeg first loads
    cap = cv2.VideoCapture(str(video_path))
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"{video_path}: cannot read the video (corrupt, truncated or a codec OpenCV's FFmpeg "
                         f"cannot decode); allowed: {', '.join(VIDEO_SUFFIXES)} files OpenCV can open")
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(cap.get(cv2.CAP_PROP_FPS))
    width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width <= 0 or height <= 0 or not math.isfinite(fps) or fps <= 0:
        cap.release()
        raise ValueError(f"{video_path}: the video reports no frame size or frame rate "
                         f"({width} x {height} px at {fps:g} fps); cannot time its frames")
    return cap, VideoInfo(frames if frames > 0 else None, fps, width, height)


def count_decodable_frames(video_path: Path | str, limit: int | None = None) -> int:
    """How many frames of ``video_path`` decode, in order from the first, until the first that
    does not (``cv2.VideoCapture.grab``: demux and decode, no colour conversion; a few ms per
    frame, against the hundreds a prediction takes). Stops after ``limit`` frames when given.
    Raises FileNotFoundError / ValueError as :func:`open_video`."""
    cap, _ = open_video(video_path)
    n = 0
    try:
        while (limit is None or n < limit) and cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def read_frames(cap: cv2.VideoCapture, info: VideoInfo, video_path: Path | str, *, frame_stride: int,
                max_frames: int | None) -> Iterator[tuple[int, float, np.ndarray]]:
    """Yield ``(frame index, t_s, frame)`` for every ``frame_stride``-th frame of an open capture
    (:func:`open_video`), at most ``max_frames`` of them (None: to the end of the video);
    ``frame`` is (H, W, 3) uint8 BGR, ``t_s = index / info.fps`` seconds.

    Raises ValueError naming ``video_path`` when not even the first frame decodes, or a frame's
    size differs from the container's."""
    if int(frame_stride) < 1:
        raise ValueError(f"params predict.video_frame_stride: must be >= 1, got {frame_stride!r}")
    index = yielded = 0
    while max_frames is None or yielded < max_frames:
        if index % frame_stride:
            if not cap.grab():
                break
            index += 1
            continue
        ok, frame = cap.read()
        if not ok:
            break
        if frame.shape[:2] != (info.height, info.width) or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"{video_path}: frame {index} is {frame.shape}, the video says "
                             f"{info.height} x {info.width} x 3")
        yield index, index / info.fps, frame
        yielded += 1
        index += 1
    if index == 0:
        raise ValueError(f"{video_path}: no frame could be decoded (corrupt or truncated video)")


def predict_video(predict_fn: PredictFn, video_path: Path | str, *, out_jsonl: Path | str, out_video: Path | str,
                  predict_params: PredictSection, max_frames: int | None, progress: bool,
                  allow_partial: bool = False) -> dict:
    """Predict every ``predict.video_frame_stride``-th frame of a video; write the JSON Lines and
    the overlay video (module docstring).

    Args:
        predict_fn: persons of one (H, W, 3) uint8 BGR frame (what ``pose predict`` applies to
            an image: ``{"keypoints": (K, 3) [x, y, score] image px, "score": float, ...}``).
        video_path: the input video.
        out_jsonl / out_video: the outputs (:func:`video_outputs`); their folder is created.
        predict_params: the params ``predict`` section (`pose.params.PredictSection`): the drawing
            filters ``min_person_score``,
            ``min_joints``, ``joint_threshold``, and ``video_frame_stride`` (predict frames
            0, n, 2n, ...) and ``video_fourcc`` (``{"mp4": ..., "avi": ...}``: the FourCC of
            the overlay, chosen by ``out_video``'s suffix).
        max_frames: predict at most this many frames (None: the whole video).
        progress: show a tqdm progress bar on stderr (its total: the decodable frames).
        allow_partial: predict the frames that decode when fewer decode than the container
            declares (module docstring); False: raise :class:`PartialVideoError` first.

    Returns ``{"frames": predicted frames, "frames_decoded": frames that decode,
    "frames_declared": frames the container declares (None when it does not say), "partial":
    bool, "persons": persons over all frames, "drawn": drawn persons, "fps": input fps,
    "size": (width, height), "jsonl": Path, "video": Path}``.

    Raises FileNotFoundError for a missing video; :class:`PartialVideoError` (a ValueError)
    for a partly decodable video without ``allow_partial``; ValueError naming the file for a
    corrupt or unreadable video, an overlay the writer cannot open, or a bad ``predict``
    value. Nothing is left at ``out_jsonl`` / ``out_video`` (nor temporary files) when it
    raises.
    """
    from tqdm import tqdm

    video_path, out_jsonl, out_video = Path(video_path), Path(out_jsonl), Path(out_video)
    show = check_predict_params(predict_params)
    stride = predict_params.video_frame_stride
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"params predict.video_frame_stride: must be an integer >= 1, got {stride!r}")
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames: must be >= 1 (or None for the whole video), got {max_frames!r}")
    container = out_video.suffix.lower().lstrip(".")
    fourcc = predict_params.video_fourcc.as_dict().get(container)
    if not isinstance(fourcc, str) or len(fourcc) != 4:
        raise ValueError(f"params predict.video_fourcc.{container}: need a 4-character FourCC for a "
                         f".{container} overlay, got {fourcc!r}")
    probe, info = open_video(video_path)
    probe.release()
    needed = None
    if max_frames is not None:   # frames that must decode for max_frames predictions at this stride
        needed = (int(max_frames) - 1) * stride + 1
    decoded = count_decodable_frames(video_path, limit=needed)
    if decoded == 0:
        raise ValueError(f"{video_path}: no frame could be decoded (corrupt or truncated video)")
    expected = info.frames if needed is None or info.frames is None else min(info.frames, needed)
    partial = expected is not None and decoded < expected
    if partial and not allow_partial:
        raise PartialVideoError(
            f"{video_path}: only {decoded} of the {info.frames} frames the video declares decode (truncated or "
            f"partly corrupt); pass --allow-partial to predict the {decoded} decodable frame(s)",
            decoded=decoded, declared=info.frames)
    cap, info = open_video(video_path)
    out_video.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out_video.parent, prefix=f".{out_video.stem}.",
                                    suffix=f".tmp{out_video.suffix}")
    os.close(fd)
    tmp_video = Path(tmp_name)
    writer = None
    try:
        writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter_fourcc(*fourcc), info.fps / stride,
                                 (info.width, info.height))
        if not writer.isOpened():
            raise ValueError(f"{out_video}: OpenCV cannot write a {fourcc!r} video in a .{container} file "
                             f"(params predict.video_fourcc.{container})")
        total = math.ceil(decoded / stride)
        total = min(total, max_frames) if max_frames is not None else total
        lines, persons_total, drawn = [], 0, 0
        frames = read_frames(cap, info, video_path, frame_stride=stride, max_frames=max_frames)
        for index, t_s, frame in tqdm(frames, total=total, unit="frame", desc=video_path.name, disable=not progress):
            persons = list(predict_fn(frame))
            shown = confident_persons(persons, **show)
            legend = thresholds_legend(**show, drawn=len(shown), total=len(persons))
            writer.write(draw_legend(draw_persons(frame, shown, min_score=show["joint_threshold"]), legend))
            lines.append(json.dumps({"frame": index, "t_s": t_s, "persons": [person_json(p) for p in persons]}))
            persons_total += len(persons)
            drawn += len(shown)
        writer.release()
        writer = None
        os.chmod(tmp_video, default_file_mode())
        atomic_write_text(out_jsonl, "".join(line + "\n" for line in lines))
        try:
            os.replace(tmp_video, out_video)
        except BaseException:
            out_jsonl.unlink(missing_ok=True)
            raise
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        tmp_video.unlink(missing_ok=True)
    return {"frames": len(lines), "frames_decoded": decoded, "frames_declared": info.frames, "partial": partial,
            "persons": persons_total, "drawn": drawn, "fps": info.fps,
            "size": (info.width, info.height), "jsonl": out_jsonl, "video": out_video}


def predict_video_file(source: Path, model: str, out_dir: Path, *, eval_params: EvaluateSection,
                       predict_params: PredictSection,
                       backend: str, device: str, tracking_uri: str | None, max_frames: int | None = None,
                       allow_partial: bool = False, notice: Callable[[str], None] | None = None,
                       echo: Callable[[str], None] = print) -> dict:
    """``pose predict VIDEO``: ``out_dir/<stem>.jsonl`` (persons per frame) and
    ``out_dir/<stem>_overlay.mp4`` (.avi for an .avi input) through :func:`predict_video`, each frame
    predicted as an image is (:func:`pose.predict.make_predictor`, then at most
    ``evaluate.max_people`` persons: :func:`pose.predict.limit_persons`). ``echo`` gets the line saying
    what the model was trained on and its backend, before any frame is predicted. ``eval_params``,
    ``predict_params``: the params ``evaluate`` / ``predict`` sections (`pose.params.EvaluateSection`,
    `pose.params.PredictSection`; `pose.predict.prediction_settings`).

    Returns :func:`predict_video`'s summary. An ``out_dir`` this call created is removed again when it
    fails. Raises OptionError for ``max_frames`` < 1; FileNotFoundError, ValueError, RuntimeError as
    loading the model and :func:`predict_video` do."""
    import shutil

    from pose.predict import limit_persons, make_predictor, training_data

    if max_frames is not None and max_frames < 1:
        raise OptionError(f"--max-frames {max_frames}: must be >= 1 (leave it out for the whole video)")
    out_jsonl, out_video = video_outputs(source, out_dir)
    created = not out_dir.exists()
    done = False
    try:
        predictor = make_predictor(model, backend=backend, eval_params=eval_params, tracking_uri=tracking_uri,
                                   device=device, notice=notice)
        echo(f"model {model}: trained on {training_data(model, tracking_uri=tracking_uri)}; "
             f"backend {predictor.backend}, {predictor.threads} thread(s)")
        max_people = int(eval_params.max_people)
        summary = predict_video(lambda frame: limit_persons(predictor(frame), max_people), source,
                                out_jsonl=out_jsonl, out_video=out_video, predict_params=predict_params,
                                max_frames=max_frames, progress=True, allow_partial=allow_partial)
        done = True
    finally:
        if not done and created and out_dir.exists():  # no empty output folder is left behind
            shutil.rmtree(out_dir, ignore_errors=True)
    return summary
