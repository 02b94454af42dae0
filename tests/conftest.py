"""Shared fixtures: paths to the real data in ../shared/datasets (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# `make test` runs the suite in parallel workers (pytest-xdist, `-n 3` on 2 cores): each worker gets its share of the
# cores as torch/OpenMP threads, set before torch is imported. Two workers with 2 threads each would
# oversubscribe 2 cores, and OpenMP threads waiting for each other make steps over 10x slower
# (pose/train/loop.py). Subprocesses the tests start inherit it.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, len(os.sched_getaffinity(0)) // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(_share)

import pose  # noqa: E402,F401  (telemetry off for every tool the tests import)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
COCO_MINI = SHARED / "coco-mini"


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not (COCO_MINI / "annotations" / "person_keypoints_val2017.json").exists():
        pytest.skip(f"real COCO sample not found at {COCO_MINI} (see ../shared/datasets/README.md)")
    return COCO_MINI


@pytest.fixture(scope="session")
def generated_coco(tmp_path_factory) -> Path:
    """A small GENERATED COCO-17 set in COCO layout (``annotations/person_keypoints_{train,val}2017.json``
    and ``train2017/``, ``val2017/`` JPEGs), made once per session. Use it wherever real photos are not
    the point, so the test runs without ../shared (8 train + 6 val images, 320x256, <= 4 persons)."""
    from pose.datasets.generated import generate_dataset

    out = tmp_path_factory.mktemp("generated_coco")
    generate_dataset(out, seed=3, num_train=8, num_val=6, width=320, height=256, max_people=4,
                     min_person_height=60, max_person_height=180)
    return out


@pytest.fixture(scope="session")
def coco_like(generated_coco) -> Path:
    """Real coco-mini when ../shared is present, else :func:`generated_coco` (same COCO layout): for
    tests whose point is the COCO format and code path, not the content of real photos."""
    if (COCO_MINI / "annotations" / "person_keypoints_val2017.json").exists():
        return COCO_MINI
    return generated_coco


@pytest.fixture()
def prefect_server(tmp_path_factory):
    """A real `prefect server` on 127.0.0.1 (free port, temporary PREFECT_HOME, telemetry off), started
    from the repo root as the README does; yields `tests/prefect_server.PrefectServer` (``api_url``,
    ``log``, ``error_lines()``, ``client_env()``) and stops it afterwards."""
    from prefect_server import prefect_server as start

    with start(tmp_path_factory.mktemp("prefect-server")) as server:
        yield server


def pytest_collection_modifyitems(config, items):
    """Files with end-to-end (``slow``) tests first, in collection order otherwise: with `-n 3 --dist
    loadfile` (Makefile) the long files start at once and the short ones fill in around them, instead
    of one long file starting last while the other workers idle."""
    items.sort(key=lambda item: 0 if item.get_closest_marker("slow") else 1)


@pytest.fixture(scope="module", autouse=True)
def _module_keeps_the_tracking_uri():
    """Each test file leaves MLflow's tracking URI as it found it. ``mlflow.set_tracking_uri`` (MLflow 3)
    also sets ``MLFLOW_TRACKING_URI`` in ``os.environ``, which pose reads as the team's server (it wins
    over params.yaml) and every later subprocess inherits: in a parallel worker the next file would
    register into the previous file's database."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import sys

    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(before)   # None: unsets the variable too
    elif before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def sections(params: dict):
    """A params.yaml dict (the file's, or a test's tiny config) checked against the schema: the typed
    `pose.params.Params` whose sections (``p.train``, ``p.evaluate``, ...) the library functions take.
    Tweak a checked section with ``section.model_copy(update={...})``."""
    from pose.params import validate_params

    return validate_params(params, source="test params")


def train_sections(params: dict, **train) -> dict:
    """The sections ``pose train`` hands to `pose.train.loop.train`, as keyword arguments, from a params dict
    (checked: :func:`sections`); ``train`` replaces keys of the checked ``train`` section unchecked
    (``model_copy``), for values the schema refuses but the loop must refuse too."""
    from pose.datasets.formats import dataset_domain

    p = sections(params)
    return dict(tp=p.train.model_copy(update=train) if train else p.train, mp=p.model, targets=p.targets,
                augment=p.augment, lp=p.loss, ev=p.evaluate, dataset=p.data.dataset,
                domain=dataset_domain(p.catalogue, p.data.dataset))


def register_sections(p) -> tuple:
    """The sections `pose.registry.mlflow_registry.register_run` takes, in order, as ``pose register`` passes them
    (with ``logged_params=pose.params.flatten(p.as_dict())``); ``p``: a checked `pose.params.Params`."""
    return (p.registry, p.data, p.catalogue, p.generated, p.schedule, p.model, p.train, p.evaluate, p.predict,
            p.serve)
