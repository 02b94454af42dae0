"""Shared fixtures: paths to the real data in ../shared/datasets (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import pose  # noqa: F401  (telemetry off for every tool the tests import)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
COCO_MINI = SHARED / "coco-mini"


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not (COCO_MINI / "annotations" / "person_keypoints_val2017.json").exists():
        pytest.skip(f"real COCO sample not found at {COCO_MINI} (see ../shared/datasets/README.md)")
    return COCO_MINI
