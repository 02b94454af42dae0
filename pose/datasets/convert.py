"""Convert one native annotation file into the project's COCO-17 schema, through the format
registry (`pose.datasets.formats`): the format's parser reads the file, this module writes the
COCO document.

The formats, their files, joint mappings and the fields of a converted annotation (COCO-17
``keypoints`` plus ``native_schema`` / ``native_keypoints``) are documented in each format's
module (`pose.datasets.formats.crowdpose`, ``.aic``, ``.mpii``, ...) and in
`pose.datasets.formats.base`.
"""

from __future__ import annotations

import json
from pathlib import Path

from pose.datasets.formats import FORMATS, NATIVE_KINDS
from pose.datasets.formats.base import ConversionError, map_keypoints
from pose.datasets.schema import PERSON_CATEGORY
from pose.io import atomic_write_text


def convert(dataset: str, native_json: Path, images_dir: Path, out_json: Path) -> dict:
    """Convert one native annotation file into a COCO-17 keypoint JSON.

    Args:
        dataset: a format kind with a parser (`pose.datasets.formats.NATIVE_KINDS`:
            ``"crowdpose"``, ``"aic"``, ``"mpii"``, ...).
        native_json: the dataset's annotation file (its layout: the format's module).
        images_dir: folder holding the images the file names (checked to exist; sizes
            are read from them when the file lacks width / height).
        out_json: COCO JSON to write atomically (``images``, ``annotations``, ``categories`` =
            [PERSON_CATEGORY], ``info``, ``licenses``); keypoints are 17 x [x, y, v] in image
            px, 0-based.

    Returns:
        ``{"dataset", "schema", "images", "annotations", "coco_keypoints" (labelled COCO
        joints), "native_keypoints" (labelled native joints), "out_json"}``.

    Raises:
        ValueError: ``dataset`` is not a native format (the message lists them).
        ConversionError: unexpected structure (wrong keypoint count, missing fields).
        FileNotFoundError: the native file or a referenced image is missing.
    """
    if dataset not in NATIVE_KINDS:
        raise ValueError(f"unknown dataset {dataset!r}; converters exist for {', '.join(sorted(NATIVE_KINDS))}")
    fmt = FORMATS[dataset]
    native_json, images_dir, out_json = Path(native_json), Path(images_dir), Path(out_json)
    parsed = fmt.parse(native_json, images_dir)
    images, anns = parsed["images"], parsed["annotations"]
    doc = {
        "info": {"description": f"{dataset} converted to COCO-17 by pose.datasets.convert",
                 "source_file": native_json.name, "native_schema": fmt.schema,
                 "native_keypoints": list(fmt.keypoint_names)},
        "licenses": parsed.get("licenses", []),
        "images": images,
        "annotations": anns,
        "categories": [PERSON_CATEGORY],
    }
    atomic_write_text(out_json, json.dumps(doc, sort_keys=True))
    return {
        "dataset": dataset, "schema": fmt.schema, "images": len(images), "annotations": len(anns),
        "coco_keypoints": int(sum(a["num_keypoints"] for a in anns)),
        "native_keypoints": int(sum(sum(1 for v in a["native_keypoints"][2::3] if v > 0) for a in anns)),
        "out_json": str(out_json),
    }


__all__ = ["convert", "map_keypoints", "ConversionError"]
