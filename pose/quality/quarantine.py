"""Quarantine (``validate.on_error: quarantine``): the annotation file without the records that
error findings name, and the list of what was removed and why."""

from __future__ import annotations

import numpy as np

from pose.quality.findings import py_value
from pose.quality.tables import CocoTables


def quarantine(t: CocoTables, findings: list[dict]) -> tuple[dict, dict]:
    """Drop every image / annotation named by an error finding.

    Image-level errors (table ``images`` or image-file checks) remove the image row
    and every annotation of that image id (unless another kept image row has the
    id); annotation-level errors remove the annotation. An id used twice removes
    every row carrying it (which one is right cannot be told). Returns (cleaned JSON,
    removed = {"images": [...], "annotations": [...]}) with the reasons (check names).
    """
    img_reasons: dict[int, list[str]] = {}
    ann_reasons: dict[int, list[str]] = {}
    for f in findings:
        if f["severity"] != "error" or f.get("row") is None:
            continue
        if f.get("table") in ("annotations", "keypoints"):
            ann_reasons.setdefault(int(f["row"]), []).append(f["check"])
        else:
            img_reasons.setdefault(int(f["row"]), []).append(f["check"])
    images, anns = t.images, t.annotations
    kept_img = ~images["image_row"].isin(list(img_reasons)).to_numpy()
    removed_ids = set(images.loc[~kept_img, "image_id"].tolist()) - set(images.loc[kept_img, "image_id"].tolist())
    cascade = anns["image_id"].isin(list(removed_ids)).to_numpy()
    for row in np.flatnonzero(cascade):
        ann_reasons.setdefault(int(row), []).append("image_removed")

    raw_imgs, raw_anns = t.raw["images"], t.raw["annotations"]
    removed = {
        "images": [{"row": r, "image_id": py_value(images.at[r, "image_id"]), "file_name": raw_imgs[r].get("file_name"),
                    "reasons": sorted(set(c))} for r, c in sorted(img_reasons.items())],
        "annotations": [{"row": r, "annotation_id": py_value(anns.at[r, "annotation_id"]),
                         "image_id": py_value(anns.at[r, "image_id"]), "reasons": sorted(set(c))}
                        for r, c in sorted(ann_reasons.items())],
    }
    drop_img, drop_ann = set(img_reasons), set(ann_reasons)
    cleaned = dict(t.raw)
    cleaned["images"] = [e for i, e in enumerate(raw_imgs) if i not in drop_img]
    cleaned["annotations"] = [e for i, e in enumerate(raw_anns) if i not in drop_ann]
    return cleaned, removed


__all__ = ["quarantine"]
