"""Tests of pose.datasets: generated data, fetch + manifest, download, extraction, the format
registry and its converters, the catalogue, ingest.

Real data is read from ``../shared/datasets`` (``POSE_SHARED_DATASETS``; never copied into the
repo). Tests about the COCO layout and code paths use coco-mini when present, else the generated
set (``coco_like`` / ``generated_coco`` of conftest.py); tests about a real native format's
specifics (the CrowdPose / MPII / AIC fixtures) are skipped with a reason when it is absent.
The PoseTrack test runs on a hand-written file in tests/data/posetrack/.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import shutil
import tarfile
import threading
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pose.datasets.schema import COCO_SIGMAS, KEYPOINT_NAMES, NUM_JOINTS, PERSON_CATEGORY

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))
FIXTURES = SHARED / "fixtures"

needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"native-format fixtures not present at {FIXTURES}")


@pytest.fixture(scope="module")
def params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def _load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


# ============================================================================ generated

#: A generated set whose persons span all COCO area ranges (small, medium, large) and >= 8x in
#: height: the generator's properties are tested on it, whatever params.yaml's CPU default is.
WIDE_GENERATED = {"seed": 0, "num_train": 240, "num_val": 40, "width": 320, "height": 256, "max_people": 4,
                  "min_person_height": 24, "max_person_height": 230}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A wide-span generated set (`WIDE_GENERATED`)."""
    from pose.datasets.generated import generate_dataset

    out = tmp_path_factory.mktemp("gen") / "generated"
    summary = generate_dataset(out, **WIDE_GENERATED, train_split="train2017", val_split="val2017")
    return out, summary


def test_generated_as_params_yaml_configures_it(tmp_path, params):
    """The params.yaml set (fewer images): sizes and person heights within its bounds."""
    from pose.datasets.generated import generate_dataset

    g = {**params["generated"], "num_train": 12, "num_val": 4}
    generate_dataset(tmp_path / "g", **g, train_split="train2017", val_split="val2017")
    doc = _load(tmp_path / "g" / "annotations" / "person_keypoints_train2017.json")
    assert {(i["width"], i["height"]) for i in doc["images"]} == {(g["width"], g["height"])}
    heights = [a["person_height"] for a in doc["annotations"]]
    assert heights and g["min_person_height"] <= min(heights) and max(heights) <= g["max_person_height"]


def _manifest_of(root: Path) -> str:
    from pose.datasets.fetch import write_manifest

    return write_manifest(root).read_text()


def test_generated_is_deterministic(tmp_path):
    from pose.datasets.generated import generate_dataset

    kw = dict(seed=7, num_train=12, num_val=4, width=160, height=128, max_people=4,
              min_person_height=16, max_person_height=120)
    generate_dataset(tmp_path / "a", **kw)
    generate_dataset(tmp_path / "b", **kw)
    ma, mb = _manifest_of(tmp_path / "a"), _manifest_of(tmp_path / "b")
    assert ma == mb
    assert len(ma.splitlines()) == 12 + 4 + 2
    generate_dataset(tmp_path / "c", **{**kw, "seed": 8})
    assert _manifest_of(tmp_path / "c") != ma


def test_generated_layout_and_schema(generated):
    out, summary = generated
    g = WIDE_GENERATED
    for split, n in (("train2017", g["num_train"]), ("val2017", g["num_val"])):
        doc = _load(out / "annotations" / f"person_keypoints_{split}.json")
        assert "GENERATED" in doc["info"]["description"]
        assert doc["categories"] == [PERSON_CATEGORY]
        assert len(doc["images"]) == n == summary["splits"][split]["images"]
        assert len(doc["annotations"]) == summary["splits"][split]["annotations"]
        ids = [a["id"] for a in doc["annotations"]]
        assert len(ids) == len(set(ids))
        per_image = {}
        for img in doc["images"]:
            path = out / split / img["file_name"]
            im = cv2.imread(str(path))
            assert im is not None and im.shape == (img["height"], img["width"], 3) == (g["height"], g["width"], 3)
        for a in doc["annotations"]:
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
            assert a["category_id"] == 1 and a["iscrowd"] == 0
            assert len(a["keypoints"]) == 3 * NUM_JOINTS
            v = np.asarray(a["keypoints"][2::3])
            assert a["num_keypoints"] == int((v > 0).sum()) >= 1
        assert 1 <= max(per_image.values()) <= g["max_people"]


def test_generated_heights_span_and_area_ranges(generated):
    out, summary = generated
    heights, areas = [], []
    for split in ("train2017", "val2017"):
        for a in _load(out / "annotations" / f"person_keypoints_{split}.json")["annotations"]:
            heights.append(a["person_height"])
            areas.append(a["area"])
            # the joints themselves span a height consistent with the figure (upright ones)
    assert max(heights) / min(heights) >= 8.0
    g = WIDE_GENERATED
    assert min(heights) >= g["min_person_height"] and max(heights) <= g["max_person_height"]
    areas = np.asarray(areas)
    assert (areas < 32 ** 2).any() and ((areas >= 32 ** 2) & (areas < 96 ** 2)).any() and (areas >= 96 ** 2).any()
    hist = summary["splits"]["train2017"]["area_histogram"]
    assert sum(hist.values()) == summary["splits"]["train2017"]["annotations"]


def test_generated_visibility_bbox_area(generated):
    from pycocotools import mask as mask_utils

    out, _ = generated
    n_occluded = n_outside = 0
    for split in ("train2017", "val2017"):
        doc = _load(out / "annotations" / f"person_keypoints_{split}.json")
        size = {i["id"]: (i["width"], i["height"]) for i in doc["images"]}
        for a in doc["annotations"]:
            w, h = size[a["image_id"]]
            k = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
            lab = k[:, 2] > 0
            # labelled joints inside the image, unlabelled ones zeroed
            assert ((k[lab, 0] >= 0) & (k[lab, 0] <= w - 1) & (k[lab, 1] >= 0) & (k[lab, 1] <= h - 1)).all()
            assert (k[~lab, :2] == 0).all()
            assert set(np.unique(k[:, 2])) <= {0.0, 1.0, 2.0}
            n_occluded += int((k[:, 2] == 1).sum())
            n_outside += int((~lab).sum())
            x, y, bw, bh = a["bbox"]
            assert a["area"] > 0 and bw > 0 and bh > 0
            assert x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            # area is the pycocotools area of the stored polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))
            assert float(mask_utils.area(rle)) == pytest.approx(a["area"])
            # labelled joints lie in (or right at the edge of) the figure's box
            assert (k[lab, 0] >= x - 1).all() and (k[lab, 0] <= x + bw + 1).all()
            assert (k[lab, 1] >= y - 1).all() and (k[lab, 1] <= y + bh + 1).all()
    assert n_occluded > 0, "no occluded (v=1) joint in the whole set"
    assert n_outside > 0, "no joint outside the image (v=0) in the whole set"


def test_generated_v0_exactly_when_outside():
    from pose.datasets.generated import _make_image

    n_out = 0
    for i in range(40):
        rng = np.random.default_rng((5, 0, i))
        img, labels = _make_image(rng, 160, 128, 4, 20.0, 200.0)
        assert img.shape == (128, 160, 3) and img.dtype == np.uint8
        for lab in labels:
            raw = lab["_joints"]
            outside = (raw[:, 0] < 0) | (raw[:, 0] > 159) | (raw[:, 1] < 0) | (raw[:, 1] > 127)
            v = np.asarray(lab["keypoints"][2::3])
            assert np.array_equal(v == 0, outside)
            assert not outside.all()
            n_out += int(outside.sum())
    assert n_out > 0


def test_generated_occlusion_matches_pixels(generated):
    """v=1 joints are covered by a later figure: the pixel there is rarely the joint's marker colour,
    while v=2 joints of reasonably large figures show their marker colour (the learnable cue)."""
    from pose.datasets.generated import JOINT_COLOURS

    out, _ = generated
    doc = _load(out / "annotations" / "person_keypoints_train2017.json")
    files = {i["id"]: i["file_name"] for i in doc["images"]}
    cache: dict[int, np.ndarray] = {}
    vis_hits = vis_n = occ_hits = occ_n = 0
    for a in doc["annotations"]:
        if a["person_height"] < 50:
            continue
        img = cache.setdefault(a["image_id"], cv2.imread(str(out / "train2017" / files[a["image_id"]])))
        for j, (x, y, v) in enumerate(np.asarray(a["keypoints"]).reshape(-1, 3)):
            if v == 0:
                continue
            px = img[int(round(y)), int(round(x))].astype(int)
            hit = int(np.abs(px - np.asarray(JOINT_COLOURS[j])).max() <= 40)
            if v == 2:
                vis_hits, vis_n = vis_hits + hit, vis_n + 1
            else:
                occ_hits, occ_n = occ_hits + hit, occ_n + 1
    assert vis_n > 100 and occ_n > 5
    assert vis_hits / vis_n > 0.85
    assert occ_hits / occ_n < 0.5


def test_generated_marker_colours_survive_flip(generated):
    """A horizontally flipped generated image must be a valid generated image: flip swaps the
    left/right labels (FLIP_INDEX), so a joint and its mirror partner share one marker colour,
    while different joint types keep telling colours apart."""
    from pose.datasets.generated import JOINT_COLOURS
    from pose.datasets.schema import FLIP_INDEX

    for k, f in enumerate(FLIP_INDEX):
        assert JOINT_COLOURS[k] == JOINT_COLOURS[f], (k, f)
    pair_colours = {JOINT_COLOURS[min(k, f)] for k, f in enumerate(FLIP_INDEX)}
    assert len(pair_colours) == 9  # nose + 8 left/right pairs, all distinct

    # pixels agree: a visible left joint and its right partner show the same colour
    out, _ = generated
    doc = _load(out / "annotations" / "person_keypoints_train2017.json")
    files = {i["id"]: i["file_name"] for i in doc["images"]}
    same = n = 0
    for a in doc["annotations"][:200]:
        if a["person_height"] < 60:
            continue
        img = cv2.imread(str(out / "train2017" / files[a["image_id"]])).astype(int)
        kp = np.asarray(a["keypoints"]).reshape(-1, 3)
        for k in (5, 7, 9, 11, 13, 15):  # left body joints
            f = FLIP_INDEX[k]
            if kp[k, 2] == 2 and kp[f, 2] == 2:
                pk = img[int(round(kp[k, 1])), int(round(kp[k, 0]))]
                pf = img[int(round(kp[f, 1])), int(round(kp[f, 0]))]
                same += int(np.abs(pk - pf).max() <= 40)
                n += 1
    assert n > 50 and same / n > 0.85


def test_generated_is_fast(tmp_path):
    import time

    from pose.datasets.generated import generate_dataset

    t = time.process_time()  # CPU time of this process: robust to other load on the machine
    generate_dataset(tmp_path / "g", seed=1, num_train=40, num_val=10, width=320, height=256, max_people=4,
                     min_person_height=24, max_person_height=230)
    # 200 images must take < 10 s; 50 images get a quarter of that
    assert time.process_time() - t < 2.5


def test_generated_rejects_bad_arguments(tmp_path):
    from pose.datasets.generated import generate_dataset

    kw = dict(seed=0, num_train=1, num_val=1, width=64, height=64, max_people=2,
              min_person_height=10, max_person_height=40)
    with pytest.raises(ValueError, match="max_people"):
        generate_dataset(tmp_path, **{**kw, "max_people": 0})
    with pytest.raises(ValueError, match="min_person_height"):
        generate_dataset(tmp_path, **{**kw, "min_person_height": 50})


# ============================================================================ fetch

def _fetch(name, catalogue, out, params, mirror_root=SHARED, **kw):
    from pose.datasets.fetch import fetch_dataset

    return fetch_dataset(name, catalogue=catalogue, mirror_root=mirror_root, out_dir=out,
                         generated_params=params["generated"], train_split="train2017", val_split="val2017", **kw)


def _split_sizes(root: Path) -> dict[str, tuple[int, int]]:
    """{split: (images, annotations)} of a COCO-layout folder's two annotation files."""
    out = {}
    for split in ("train2017", "val2017"):
        doc = _load(root / "annotations" / f"person_keypoints_{split}.json")
        out[split] = (len(doc["images"]), len(doc["annotations"]))
    return out


def test_fetch_coco_from_mirror_and_tamper(tmp_path, params, coco_like):
    from pose.datasets.fetch import ManifestError, verify_manifest

    sizes = _split_sizes(coco_like)
    (n_train, _), (n_val, _) = sizes["train2017"], sizes["val2017"]
    out = tmp_path / "raw" / "cm"
    summary = _fetch("cm", {"cm": {"kind": "coco", "mirror": coco_like.name}}, out, params,
                     mirror_root=coco_like.parent)
    assert {s: (v["images"], v["annotations"]) for s, v in summary["splits"].items()} == sizes
    assert summary["source"] == f"mirror:{coco_like}" and n_train > 0 and n_val > 0
    assert len(list((out / "train2017").iterdir())) == n_train
    assert len(list((out / "val2017").iterdir())) == n_val
    for split in ("train2017", "val2017"):
        ann = out / "annotations" / f"person_keypoints_{split}.json"
        src = coco_like / "annotations" / ann.name
        assert ann.read_bytes() == src.read_bytes()
        assert not ann.samefile(src)  # annotation files are copies, never links into the mirror
    verify_manifest(out)
    lines = (out / "MANIFEST.sha256").read_text().splitlines()
    assert lines == sorted(lines, key=lambda s: s.split("  ", 1)[1]) and len(lines) == n_train + n_val + 2
    digest, rel = lines[5].split("  ", 1)
    assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    assert not list(tmp_path.joinpath("raw").glob(".cm.*")), "temporary folders left behind"

    # tamper with one image: replace it (a new inode, so the linked mirror file stays intact)
    victim = sorted((out / "val2017").iterdir())[3]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 0xFF
    victim.unlink()
    victim.write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=victim.name):
        verify_manifest(out)
    # an extra file is detected too
    victim.unlink()
    (out / "val2017" / victim.name).write_bytes(coco_like.joinpath("val2017", victim.name).read_bytes())
    verify_manifest(out)
    (out / "stray.txt").write_text("x")
    with pytest.raises(ManifestError, match="stray.txt"):
        verify_manifest(out)


def test_fetch_generated_replaces_existing_dir(tmp_path, params):
    from pose.datasets.fetch import verify_manifest

    small = {**params["generated"], "num_train": 6, "num_val": 3}
    out = tmp_path / "raw" / "generated"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("stale")
    s = _fetch("generated", params["catalogue"], out, {"generated": small})
    assert s["source"] == "generated" and s["splits"]["train2017"]["images"] == 6
    assert not (out / "old.txt").exists()
    verify_manifest(out)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["generated"]


def test_fetch_unknown_name_and_failure_keeps_old(tmp_path, params):
    from pose.datasets.fetch import FetchError

    with pytest.raises(ValueError, match="coco-mini") as ei:
        _fetch("no-such-set", params["catalogue"], tmp_path / "x", params)
    assert "generated" in str(ei.value) and "no-such-set" in str(ei.value)
    out = tmp_path / "raw" / "ds"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("previous good copy")
    cat = {"ds": {"kind": "coco", "mirror": "does-not-exist", "sources": []}}
    with pytest.raises(FetchError, match="no sources"):
        _fetch("ds", cat, out, params)
    assert (out / "keep.txt").read_text() == "previous good copy"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["ds"]


def test_fetch_from_file_source_tree(tmp_path, params, coco_like):
    """No mirror: the first failing source is skipped, a file:// COCO tree is used."""
    cat = {"cm": {"kind": "coco", "mirror": "absent", "sources": [
        (tmp_path / "nowhere").as_uri(), coco_like.as_uri()]}}
    out = tmp_path / "raw" / "cm"
    s = _fetch("cm", cat, out, params, link=False, retries=0, progress=False)
    assert s["source"] == coco_like.as_uri()
    n_img, n_ann = _split_sizes(coco_like)["val2017"]
    assert s["splits"]["val2017"] == {"images": n_img, "annotations": n_ann} and n_ann > 0


def test_fetch_native_kind_converts_from_mirror(tmp_path, params):
    """A native kind from a mirror folder with a custom ``native`` layout (the hand-written PoseTrack file)."""
    _posetrack_mirror(tmp_path / "mirror")
    spec = {"annotations": "annotations/posetrack18_val.json", "images": "."}
    cat = {"pt": {"kind": "posetrack", "mirror": "posetrack18", "native": {"train2017": spec, "val2017": spec}}}
    out = tmp_path / "raw" / "pt"
    s = _fetch("pt", cat, out, params, mirror_root=tmp_path / "mirror", link=False)
    assert s["splits"]["train2017"] == {"images": 2, "annotations": 3}
    doc = _load(out / "annotations" / "person_keypoints_val2017.json")
    assert doc["categories"] == [PERSON_CATEGORY]
    assert sorted(p.name for p in (out / "val2017" / "images" / "val" / "000001_test").iterdir()) == [
        "000000.jpg", "000002.jpg"]                             # the unlabelled frame is not linked


# ============================================================================ download

class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files; honours `Range: bytes=N-`; server.drop_after[path] = n makes the
    next response for path send n body bytes (after announcing the full length) and hang up,
    server.always_drop[path] = n every response; server.status[path] = code answers that error."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        srv = self.server
        data = srv.files.get(self.path)
        if self.path in srv.status:
            code = srv.status[self.path]
            srv.log.append((self.path, None, 0, code))
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if data is None:
            srv.log.append((self.path, None, 0, 404))  # log first: the client may look right after
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        rng = self.headers.get("Range")
        start = 0
        if rng:
            start = int(rng.split("=", 1)[1].split("-", 1)[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = srv.drop_after.pop(self.path, srv.always_drop.get(self.path))
        sent = body if cut is None else body[:cut]
        srv.log.append((self.path, rng, len(sent), 206 if rng else 200))
        self.wfile.write(sent)
        self.wfile.flush()
        if cut is not None:
            self.close_connection = True


@pytest.fixture()
def http_server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.files, srv.drop_after, srv.always_drop, srv.status, srv.log = {}, {}, {}, {}, []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


def test_http_download_resumes_only_missing_bytes(tmp_path, http_server):
    from pose.datasets.sources import download

    data = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    http_server.files["/blob.bin"] = data
    http_server.drop_after["/blob.bin"] = 100_000
    dest = tmp_path / "dl" / "blob.bin"
    out = download(f"{http_server.base}/blob.bin", dest, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                   retries=3, backoff=0.01, progress=False)
    assert out == dest and dest.read_bytes() == data
    assert not (tmp_path / "dl" / "blob.bin.part").exists()
    log = [entry for entry in http_server.log if entry[0] == "/blob.bin"]
    assert log[0] == ("/blob.bin", None, 100_000, 200)
    assert log[1] == ("/blob.bin", "bytes=100000-", 200_000, 206)
    assert sum(e[2] for e in log) == len(data), "resume re-fetched bytes it already had"


def test_http_download_wrong_checksum_leaves_nothing(tmp_path, http_server):
    from pose.datasets.sources import ChecksumError, DownloadError, download

    data = b"some bytes " * 1000
    http_server.files["/f.json"] = data
    dest = tmp_path / "f.json"
    wrong = "0" * 64
    url = f"{http_server.base}/f.json"
    with pytest.raises(ChecksumError) as ei:
        download(url, dest, sha256=wrong, size=None, retries=0, backoff=0.01, progress=False)
    msg = str(ei.value)
    assert url in msg and wrong in msg and hashlib.sha256(data).hexdigest() in msg
    assert not dest.exists() and not (tmp_path / "f.json.part").exists()
    # a missing file is an error at once (no retry loop on 4xx)
    with pytest.raises(DownloadError, match="404"):
        download(f"{http_server.base}/missing", tmp_path / "m", sha256=None, size=None, retries=5, backoff=5.0,
                 progress=False)
    assert [e[3] for e in http_server.log if e[0] == "/missing"] == [404]


def test_file_download_and_checksum(tmp_path):
    from pose.datasets.sources import ChecksumError, download

    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 100)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert download(src.as_uri(), tmp_path / "a.bin", sha256=digest, size=300, retries=0, backoff=0,
                    progress=False).read_bytes() == src.read_bytes()
    assert download(str(src), tmp_path / "b.bin", sha256=digest.upper(), size=None, retries=0, backoff=0,
                    progress=False).exists()
    with pytest.raises(ChecksumError, match="expected 301 bytes"):
        download(str(src), tmp_path / "c.bin", sha256=None, size=301, retries=0, backoff=0, progress=False)
    assert not (tmp_path / "c.bin").exists() and not (tmp_path / "c.bin.part").exists()
    with pytest.raises(FileNotFoundError):
        download(str(tmp_path / "nope"), tmp_path / "d.bin", sha256=None, size=None, retries=0, backoff=0,
                 progress=False)
    with pytest.raises(ValueError, match="unsupported URL scheme"):
        download("ftp://x/y", tmp_path / "e.bin", sha256=None, size=None, retries=0, backoff=0, progress=False)


def test_s3_upload_list_download(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    from pose.datasets.sources import ChecksumError, download, list_s3, upload_s3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    src = tmp_path / "ann.json"
    src.write_text(json.dumps({"x": list(range(1000))}))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="poses")
        assert upload_s3(src, "s3://poses/coco/annotations/ann.json") == "s3://poses/coco/annotations/ann.json"
        upload_s3(src, "s3://poses/other/x.json")
        assert list_s3("s3://poses/coco/") == ["s3://poses/coco/annotations/ann.json"]
        out = download("s3://poses/coco/annotations/ann.json", tmp_path / "dl" / "ann.json", sha256=digest,
                       size=None, retries=0, backoff=0, progress=False)
        assert out.read_bytes() == src.read_bytes()
        with pytest.raises(ChecksumError, match="s3://poses/coco/annotations/ann.json"):
            download("s3://poses/coco/annotations/ann.json", tmp_path / "dl" / "bad.json", sha256="1" * 64,
                     size=None, retries=0, backoff=0, progress=False)
        assert not (tmp_path / "dl" / "bad.json").exists()


def test_fetch_from_http_archive_source(tmp_path, http_server, params):
    """No mirror: a zip (COCO tree under a top folder) is downloaded, verified, safely extracted."""
    from pose.datasets.fetch import verify_manifest
    from pose.datasets.generated import generate_dataset

    tree = tmp_path / "tree"
    generate_dataset(tree, seed=3, num_train=3, num_val=2, width=96, height=80, max_people=2,
                     min_person_height=12, max_person_height=60)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                zf.write(p, "release/" + p.relative_to(tree).as_posix())
    blob = buf.getvalue()
    http_server.files["/data/set.zip"] = blob
    http_server.drop_after["/data/set.zip"] = len(blob) // 3
    cat = {"z": {"kind": "coco", "mirror": "absent", "sources": [
        {"url": f"{http_server.base}/data/missing.zip"},
        {"url": f"{http_server.base}/data/set.zip", "sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}]}}
    out = tmp_path / "raw" / "z"
    s = _fetch("z", cat, out, params, retries=2, backoff=0.01, progress=False)
    assert s["source"].endswith("/data/set.zip")
    assert s["splits"] == {"train2017": {"images": 3, "annotations": s["splits"]["train2017"]["annotations"]},
                           "val2017": {"images": 2, "annotations": s["splits"]["val2017"]["annotations"]}}
    verify_manifest(out)
    for split in ("train2017", "val2017"):
        a = out / "annotations" / f"person_keypoints_{split}.json"
        assert a.read_bytes() == (tree / "annotations" / a.name).read_bytes()
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["z"]  # downloads + temp dirs cleaned


# ============================================================================ extract

def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_slip_refused(tmp_path):
    from pose.datasets.extract import UnsafeArchiveError, safe_extract

    arc = _zip(tmp_path / "evil.zip", {"ok/a.txt": b"fine", "../../escaped.txt": b"pwned"})
    target = tmp_path / "work" / "out"
    with pytest.raises(UnsafeArchiveError) as ei:
        safe_extract(arc, target)
    assert "evil.zip" in str(ei.value) and "../../escaped.txt" in str(ei.value)
    assert not target.exists() and not (tmp_path / "escaped.txt").exists()
    assert not list((tmp_path / "work").iterdir()), "temporary extraction folder left behind"

    abs_arc = _zip(tmp_path / "abs.zip", {"/etc/passwd_copy": b"x"})
    with pytest.raises(UnsafeArchiveError, match="absolute"):
        safe_extract(abs_arc, tmp_path / "o2")


def test_tar_links_and_bombs_refused(tmp_path):
    from pose.datasets.extract import UnsafeArchiveError, safe_extract

    def tar(path: Path, build) -> Path:
        with tarfile.open(path, "w:gz") as tf:
            build(tf)
        return path

    def sym(tf, name, target):
        ti = tarfile.TarInfo(name)
        ti.type, ti.linkname = tarfile.SYMTYPE, target
        tf.addfile(ti)

    def reg(tf, name, data):
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))

    out_link = tar(tmp_path / "l.tgz", lambda tf: sym(tf, "data/link", "../../../etc"))
    with pytest.raises(UnsafeArchiveError, match="data/link"):
        safe_extract(out_link, tmp_path / "o1")
    # a link that is fine on its own, used to write outside
    chain = tar(tmp_path / "c.tgz", lambda tf: (sym(tf, "sub", "."), sym(tf, "sub/x", "../"),
                                              reg(tf, "sub/x/evil", b"pwn")))
    with pytest.raises(UnsafeArchiveError, match="c.tgz"):
        safe_extract(chain, tmp_path / "o2")
    assert not (tmp_path / "evil").exists()
    bomb = tar(tmp_path / "b.tgz", lambda tf: reg(tf, "zeros.bin", bytes(8 * 1024 * 1024)))
    with pytest.raises(UnsafeArchiveError, match="zeros.bin"):
        safe_extract(bomb, tmp_path / "o3", ratio_min_bytes=1024 * 1024, max_ratio=100)
    with pytest.raises(UnsafeArchiveError, match="members exceed"):
        safe_extract(bomb, tmp_path / "o4", max_entries=0)
    # the same archive passes with generous limits; inside links are kept
    good = tar(tmp_path / "g.tgz", lambda tf: (reg(tf, "d/a.txt", b"A"), sym(tf, "d/alias.txt", "a.txt")))
    res = safe_extract(good, tmp_path / "o5")
    assert res["members"] == 2 and (tmp_path / "o5" / "d" / "alias.txt").read_bytes() == b"A"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


# ============================================================================ converters

def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _check_coco17(out_json: Path, images_dir: Path) -> dict:
    from pycocotools.coco import COCO

    doc = _load(out_json)
    assert doc["categories"] == [PERSON_CATEGORY]
    img_ids = {i["id"] for i in doc["images"]}
    for img in doc["images"]:
        assert (images_dir / img["file_name"]).is_file() and img["width"] > 0 and img["height"] > 0
    for a in doc["annotations"]:
        assert a["image_id"] in img_ids and a["category_id"] == 1
        assert len(a["keypoints"]) == 17 * 3
        k = np.asarray(a["keypoints"], float).reshape(17, 3)
        assert a["num_keypoints"] == int((k[:, 2] > 0).sum())
        assert (k[:5] == 0).all(), "datasets without face joints must leave COCO 0-4 unlabelled"
        assert len(a["bbox"]) == 4 and a["bbox"][2] > 0 and a["bbox"][3] > 0 and a["area"] > 0
    coco = COCO(str(out_json))  # loads with the reference API
    assert len(coco.getAnnIds()) == len(doc["annotations"])
    return doc


@needs_fixtures
@pytest.mark.parametrize("dataset,rel", [("crowdpose", "crowdpose/test_crowdpose.json"), ("aic", "aic/test_aic.json")])
def test_convert_coco_style_fixtures_by_joint_name(tmp_path, dataset, rel):
    from pose.datasets.convert import convert
    from pose.datasets.formats import FORMATS

    fmt = FORMATS[dataset]
    native_path = FIXTURES / rel
    native = _load(native_path)
    out = tmp_path / f"{dataset}.json"
    s = convert(dataset, native_path, native_path.parent, out)
    doc = _check_coco17(out, native_path.parent)
    assert s["annotations"] == len(native["annotations"]) == len(doc["annotations"]) > 0
    names = [_norm(n) for n in native["categories"][0]["keypoints"]]
    assert len(names) == 14 == len(fmt.keypoint_names)
    by_id = {a["id"]: a for a in doc["annotations"]}
    checked = 0
    for na in native["annotations"]:
        a = by_id[na["id"]]
        assert a["native_schema"] == fmt.schema
        nk = np.asarray(na["keypoints"], float).reshape(14, 3)
        ck = np.asarray(a["keypoints"], float).reshape(17, 3)
        assert np.array_equal(np.asarray(a["native_keypoints"], float).reshape(14, 3)[nk[:, 2] > 0], nk[nk[:, 2] > 0])
        for i, n in enumerate(names):  # independent of the mapping table: match by the file's joint names
            if n in KEYPOINT_NAMES:
                if nk[i, 2] > 0:
                    assert np.array_equal(ck[KEYPOINT_NAMES.index(n)], nk[i]), (dataset, n)
                    checked += 1
            else:
                assert n in ("head", "neck", "head_top"), n
    assert checked > 20
    if dataset == "crowdpose":  # one known joint: ann 123803's right shoulder
        a = by_id[123803]
        assert a["keypoints"][3 * 6: 3 * 6 + 3] == [208, 108, 2]
        assert a["native_keypoints"][3 * 12: 3 * 12 + 3] == [256, 27, 1]  # head top kept natively only
    else:  # aic ann 4: right shoulder (native 0) -> COCO 6, head top (native 12) not mapped
        a = by_id[4]
        assert a["keypoints"][3 * 6: 3 * 6 + 3] == [313, 201, 2]
        assert a["native_keypoints"][3 * 12: 3 * 12 + 3] == [395, 74, 2]


@needs_fixtures
def test_convert_mpii_fixture(tmp_path):
    from pose.datasets.convert import convert
    from pose.datasets.formats.mpii import SIGMAS as MPII_SIGMAS

    native_path = FIXTURES / "mpii" / "test_mpii.json"
    native = _load(native_path)
    out = tmp_path / "mpii.json"
    s = convert("mpii", native_path, native_path.parent, out)
    doc = _check_coco17(out, native_path.parent)
    assert s["annotations"] == len(native) == len(doc["annotations"])
    assert s["images"] == len({r["image"] for r in native})
    rec = next(r for r in native if r["image"] == "005808361.jpg")
    img_id = next(i["id"] for i in doc["images"] if i["file_name"] == "005808361.jpg")
    a = next(a for a in doc["annotations"] if a["image_id"] == img_id)
    # MPII 13 = left shoulder, 1-based [1067, 253] -> COCO 5 at 0-based [1066, 252]
    assert rec["joints"][13] == [1067.0, 253.0]
    assert a["keypoints"][15:18] == [1066, 252, 2]
    # MPII 0 = right ankle -> COCO 16
    assert a["keypoints"][48:51] == [rec["joints"][0][0] - 1, rec["joints"][0][1] - 1, 2]
    # head top (MPII 9) only in native_keypoints
    assert a["native_schema"] == "mpii16"
    assert a["native_keypoints"][27:30] == pytest.approx([rec["joints"][9][0] - 1, rec["joints"][9][1] - 1, 2])
    k = np.asarray(a["keypoints"], float).reshape(17, 3)
    x, y, w, h = a["bbox"]
    lab = k[:, 2] > 0
    assert (k[lab, 0] >= x).all() and (k[lab, 0] <= x + w).all() and (k[lab, 1] >= y).all()
    assert MPII_SIGMAS.shape == (16,)


def test_convert_constants_and_errors(tmp_path):
    from pose.datasets.convert import ConversionError, convert, map_keypoints
    from pose.datasets.formats import FORMATS, NATIVE_KINDS, SIGMA_CONSTANTS
    from pose.datasets.formats.base import DatasetFormat

    cp = FORMATS["crowdpose"]
    assert cp.sigmas.shape == (14,) and cp.sigmas[0] == pytest.approx(0.079)
    # CrowdPose body sigmas equal COCO's for the same joints
    assert np.allclose(cp.sigmas[:12], COCO_SIGMAS[5:])
    assert FORMATS["aic"].sigmas.shape == (14,) and FORMATS["mpii"].sigmas.shape == (16,)
    assert {"crowdpose", "aic", "mpii"} <= set(NATIVE_KINDS) and "coco" not in NATIVE_KINDS
    assert np.array_equal(SIGMA_CONSTANTS["COCO_SIGMAS"], COCO_SIGMAS)
    for name, fmt in FORMATS.items():
        assert fmt.kind == name and len(fmt.sigmas) == len(fmt.keypoint_names) == len(fmt.to_coco), name
        assert (fmt.parse is None) == (name not in NATIVE_KINDS)
        for i, c in enumerate(fmt.to_coco):  # the mapping agrees with the joint names, both ways
            if c is not None:
                assert fmt.keypoint_names[i] == KEYPOINT_NAMES[c], (name, i)
            else:
                assert fmt.keypoint_names[i] not in KEYPOINT_NAMES, (name, i)
    with pytest.raises(ValueError, match="distinct"):   # a format's own consistency check
        DatasetFormat(kind="x", schema="x2", keypoint_names=("a", "b"), sigmas=np.ones(2), sigmas_name="X",
                      to_coco=(5, 5), parse=None, native_metrics=None, native_metric="", reference="")
    nat = np.zeros((14, 3))
    nat[0] = [5, 6, 0]  # v = 0: not copied even with coordinates
    assert (map_keypoints(nat, cp.to_coco) == 0).all()
    nat[0] = [5, 6, 2]
    assert map_keypoints(nat, cp.to_coco)[5].tolist() == [5, 6, 2]
    with pytest.raises(ValueError, match="crowdpose"):
        convert("nope", tmp_path / "x.json", tmp_path, tmp_path / "o.json")
    with pytest.raises(ValueError, match="crowdpose"):
        convert("coco", tmp_path / "x.json", tmp_path, tmp_path / "o.json")   # COCO needs no conversion
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [], "annotations": [], "categories": [
        {"id": 1, "name": "person", "keypoints": ["a"] * 17}]}))
    with pytest.raises(ConversionError, match="17 keypoints"):
        convert("crowdpose", bad, tmp_path, tmp_path / "o.json")


# ============================================================================ catalogue

def _cli(*args):
    from typer.testing import CliRunner

    from pose.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _params_file(tmp_path: Path, params: dict, **catalogue_extra) -> Path:
    """params.yaml with the mirror root made absolute (tests run from any folder)."""
    p = json.loads(json.dumps(params))
    p["data"]["mirror"] = str(SHARED)
    p["catalogue"].update(catalogue_extra)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def test_catalogue_entries_schema_and_sigmas(params):
    from pose.datasets.catalogue import check_catalogue, check_entry, entry_sigmas
    from pose.datasets.formats import FORMATS

    cat = params["catalogue"]
    assert {"generated", "coco-mini", "coco2017", "crowdpose", "mpii", "aic"} <= set(cat)
    check_catalogue(cat)
    for name, entry in cat.items():
        assert entry["schema"] == "coco17" and "kind" in entry, name
        assert np.array_equal(entry_sigmas(entry), COCO_SIGMAS), name
    for name, sig in ((n, FORMATS[n].sigmas) for n in ("crowdpose", "aic", "mpii")):
        assert cat[name]["kind"] == name and cat[name]["mirror"] == f"fixtures/{name}"
        assert np.array_equal(entry_sigmas(cat[name], native=True), sig)
        assert set(cat[name]["native"]) == {params["data"]["train_split"], params["data"]["val_split"]}
    # COCO 2017: the three official archives, pinned by size and the published md5 / sha1
    arcs = cat["coco2017"]["sources"][0]["archives"]
    assert [Path(a["url"]).name for a in arcs] == ["annotations_trainval2017.zip", "train2017.zip", "val2017.zip"]
    assert all(a["url"].startswith("http://images.cocodataset.org/") for a in arcs)
    for a in arcs:
        assert a["size"] > 100_000_000 and len(a["md5"]) == 32 and len(a["sha1"]) == 40
    with pytest.raises(ValueError, match="native_schema"):
        check_entry("x", {"kind": "mpii", "schema": "coco17", "mirror": "m", "native_schema": "aic14"})
    with pytest.raises(ValueError, match="16"):
        check_entry("x", {"kind": "mpii", "mirror": "m", "native_schema": "mpii16", "native_sigmas": "AIC_SIGMAS"})
    with pytest.raises(ValueError, match="unknown sigmas"):
        check_entry("x", {"kind": "coco", "mirror": "m", "sigmas": "NOPE"})


@needs_fixtures
@pytest.mark.parametrize("name,n_native,images,anns", [("crowdpose", 14, 2, 5), ("mpii", 16, 5, 5), ("aic", 14, 3, 9)])
def test_cli_fetch_native_dataset_from_mirror(tmp_path, params, name, n_native, images, anns):
    """`pose fetch --dataset <name>` reads the fixture mirror and writes COCO-17, native keypoints kept."""
    from pose.datasets.fetch import verify_manifest

    out = tmp_path / "raw" / name
    res = _cli("fetch", "--dataset", name, "--out", out, "--params", _params_file(tmp_path, params))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["source"] == f"mirror:{SHARED / 'fixtures' / name}"
    assert summary["schema"] == "coco17" and summary["native_schema"] == params["catalogue"][name]["native_schema"]
    verify_manifest(out)
    for split in ("train2017", "val2017"):
        assert summary["splits"][split] == {"images": images, "annotations": anns}
        doc = _check_coco17(out / "annotations" / f"person_keypoints_{split}.json", out / split)
        assert len(doc["images"]) == images == len(list((out / split).iterdir()))
        for a in doc["annotations"]:
            assert a["native_schema"] == summary["native_schema"]
            assert len(a["native_keypoints"]) == 3 * n_native
        assert sum(a["num_keypoints"] for a in doc["annotations"]) >= 2 * anns
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [name]


def test_fetch_native_from_archive_source_with_release_layout(tmp_path, http_server, params):
    """No mirror: a release-like tar (annotations/ + frames under a top folder; the hand-written PoseTrack
    file), pinned by md5 and sha1, is downloaded, verified, unpacked and converted with the source's own
    `native` layout."""
    from pose.datasets.fetch import verify_manifest

    rel = _posetrack_mirror(tmp_path / "mirror") / "posetrack18"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(rel / "annotations" / "posetrack18_train.json", "release/annotations/pt_train.json")
        tf.add(rel / "annotations" / "posetrack18_val.json", "release/annotations/pt_val.json")
        tf.add(rel / "images", "release/frames/images")
    blob = buf.getvalue()
    http_server.files["/cp/crowdpose.tar.gz"] = blob
    release = {"train2017": {"annotations": "annotations/pt_train.json", "images": "frames"},
               "val2017": {"annotations": "annotations/pt_val.json", "images": "frames"}}
    entry = {**params["catalogue"]["posetrack"], "mirror": "absent", "sources": [
        {"archives": [{"url": f"{http_server.base}/cp/crowdpose.tar.gz", "size": len(blob),
                       "md5": hashlib.md5(blob).hexdigest(), "sha1": hashlib.sha1(blob).hexdigest()}],
         "native": release}]}
    out = tmp_path / "raw" / "cp"
    s = _fetch("cp", {"cp": entry}, out, params, retries=0, progress=False)
    assert s["source"].endswith("/cp/crowdpose.tar.gz")
    assert s["splits"]["train2017"] == {"images": 2, "annotations": 3}
    verify_manifest(out)
    doc = _load(out / "annotations" / "person_keypoints_train2017.json")
    assert {a["native_schema"] for a in doc["annotations"]} == {"posetrack17"}
    assert all((out / "train2017" / im["file_name"]).is_file() for im in doc["images"])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["cp"]
    # the release layout is required: a source whose native paths are wrong says what is missing
    bad = {**entry, "sources": [{**entry["sources"][0], "native": {
        **release, "val2017": {"annotations": "annotations/nope.json", "images": "images"}}}]}
    from pose.datasets.fetch import FetchError

    with pytest.raises(FetchError, match="nope.json"):
        _fetch("cp", {"cp": bad}, tmp_path / "raw" / "cp2", params, retries=0, progress=False)
    assert not (tmp_path / "raw" / "cp2").exists()


# ============================================================================ bad input: one clear error each

def _no_partial(dest: Path) -> None:
    assert not dest.exists(), f"partial file left at the final path {dest}"


def test_bad_input_checksum_mismatch_md5_sha1(tmp_path, http_server):
    from pose.datasets.sources import ChecksumError, download

    data = b"payload " * 5000
    http_server.files["/c.bin"] = data
    url = f"{http_server.base}/c.bin"
    for kw, algo in (({"md5": "0" * 32}, "MD5"), ({"sha1": "f" * 40, "md5": hashlib.md5(data).hexdigest()}, "SHA-1")):
        dest = tmp_path / "c.bin"
        with pytest.raises(ChecksumError, match=algo) as ei:
            download(url, dest, retries=0, backoff=0, progress=False, **kw)
        assert url in str(ei.value) and "nothing written" in str(ei.value)
        _no_partial(dest)
        assert not (tmp_path / "c.bin.part").exists()
    with pytest.raises(ValueError, match="md5 must be 32 hex"):
        download(url, tmp_path / "d.bin", md5="xyz", retries=0, progress=False)
    good = download(url, tmp_path / "ok.bin", md5=hashlib.md5(data).hexdigest(), sha1=hashlib.sha1(data).hexdigest(),
                    sha256=hashlib.sha256(data).hexdigest(), size=len(data), retries=0, progress=False)
    assert good.read_bytes() == data


def test_bad_input_truncated_transfer(tmp_path, http_server):
    """The server announces the full length but hangs up early, every time: after the retries a
    DownloadError says so; nothing at dest; the .part keeps the bytes, so a later call only resumes."""
    from pose.datasets.sources import DownloadError, download

    data = np.random.default_rng(1).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    http_server.files["/t.bin"] = data
    http_server.always_drop["/t.bin"] = 100_000
    url, dest = f"{http_server.base}/t.bin", tmp_path / "t.bin"
    with pytest.raises(DownloadError, match="truncated") as ei:
        download(url, dest, sha256=hashlib.sha256(data).hexdigest(), retries=1, backoff=0.01, progress=False)
    assert url in str(ei.value) and "2 attempt(s)" in str(ei.value)
    _no_partial(dest)
    assert (tmp_path / "t.bin.part").stat().st_size == 200_000
    del http_server.always_drop["/t.bin"]
    download(url, dest, sha256=hashlib.sha256(data).hexdigest(), retries=0, progress=False)
    assert dest.read_bytes() == data
    assert [e[1] for e in http_server.log if e[0] == "/t.bin"][-1] == "bytes=200000-"


def test_bad_input_server_error(tmp_path, http_server):
    from pose.datasets.sources import DownloadError, download

    http_server.status["/e.bin"] = 503
    url, dest = f"{http_server.base}/e.bin", tmp_path / "e.bin"
    with pytest.raises(DownloadError) as ei:
        download(url, dest, retries=2, backoff=0.01, progress=False)
    msg = str(ei.value)
    assert url in msg and "HTTP 503" in msg and "server error" in msg and "3 attempt(s)" in msg
    assert [e[3] for e in http_server.log if e[0] == "/e.bin"] == [503, 503, 503]  # 5xx is retried
    _no_partial(dest)


@pytest.fixture()
def no_aws_credentials(monkeypatch, tmp_path):
    """An environment with no AWS credentials anywhere (and no instance-metadata lookups: nothing but
    loopback is ever contacted)."""
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
              "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
              "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # never reached: signing fails first


def test_bad_input_s3_without_credentials(tmp_path, params, no_aws_credentials):
    from pose.datasets.fetch import FetchError
    from pose.datasets.sources import CredentialsError, download, list_s3

    url = "s3://poses/releases/set.zip"
    dest = tmp_path / "set.zip"
    with pytest.raises(CredentialsError) as ei:
        download(url, dest, retries=3, backoff=5.0, progress=False)  # not retried: would take 35 s
    msg = str(ei.value)
    assert url in msg and "AWS_ACCESS_KEY_ID" in msg and "AWS_PROFILE" in msg
    _no_partial(dest)
    assert not (tmp_path / "set.zip.part").exists()
    with pytest.raises(CredentialsError, match="s3://poses/batch/"):
        list_s3("s3://poses/batch/")
    # through fetch: the failing source is named with the reason
    cat = {"s3set": {"kind": "coco", "mirror": "absent", "sources": ["s3://poses/coco-tree"]}}
    with pytest.raises(FetchError, match="(?s)s3://poses/coco-tree.*CredentialsError.*AWS_ACCESS_KEY_ID"):
        _fetch("s3set", cat, tmp_path / "raw" / "s3set", params, retries=0, progress=False)
    assert not (tmp_path / "raw" / "s3set").exists()
    # and through `pose ingest`
    target = tmp_path / "ds"
    _small_generated(target)
    before = (target / "MANIFEST.sha256").read_bytes()
    res = _cli("ingest", "--batch", "s3://poses/batch/", "--into", target)
    assert res.exit_code == 1 and "s3://poses/batch/" in res.output and "AWS_ACCESS_KEY_ID" in res.output
    assert (target / "MANIFEST.sha256").read_bytes() == before


def test_bad_input_malicious_archive_through_fetch(tmp_path, http_server, params):
    from pose.datasets.fetch import FetchError

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("release/annotations/person_keypoints_train2017.json", "{}")
        zf.writestr("../../../evil.txt", "pwned")
    blob = buf.getvalue()
    http_server.files["/evil.zip"] = blob
    cat = {"evil": {"kind": "coco", "mirror": "absent", "sources": [
        {"url": f"{http_server.base}/evil.zip", "sha256": hashlib.sha256(blob).hexdigest()}]}}
    raw = tmp_path / "a" / "b" / "raw"
    with pytest.raises(FetchError, match=r"(?s)UnsafeArchiveError.*\.\./\.\./\.\./evil\.txt"):
        _fetch("evil", cat, raw / "evil", params, retries=0, progress=False)
    assert not (raw / "evil").exists()
    assert not list(tmp_path.rglob("evil.txt"))
    assert not [p for p in raw.iterdir() if p.name != ".downloads"], "temporary folders left behind"


def test_bad_input_unknown_dataset_cli(tmp_path, params):
    out = tmp_path / "raw" / "nope"
    res = _cli("fetch", "--dataset", "nope", "--out", out, "--params", _params_file(tmp_path, params))
    assert res.exit_code == 1
    assert "unknown dataset 'nope'" in res.output and "crowdpose" in res.output and "coco2017" in res.output
    assert not (tmp_path / "raw").exists(), "nothing may be created for an unknown dataset"


# ============================================================================ ingest

def _small_generated(out: Path, seed: int = 3, n_train: int = 4, n_val: int = 2) -> dict:
    """A fetched-like dataset folder (COCO layout + manifest) of tiny generated images."""
    from pose.datasets.fetch import write_manifest
    from pose.datasets.generated import generate_dataset

    s = generate_dataset(out, seed=seed, num_train=n_train, num_val=n_val, width=96, height=80, max_people=2,
                         min_person_height=12, max_person_height=60)
    write_manifest(out)
    return s


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ingest_val_into_train(tmp_path, params, coco_like):
    """A batch (the val split of coco-mini, or of the generated set without ../shared) into a copy
    of that set whose val split keeps only its first half: the others are added to train2017 with
    fresh ids; the half still in val2017 is refused (leakage); ingesting the same batch again adds
    nothing and writes nothing."""
    from pose.datasets.fetch import verify_manifest, write_manifest

    target = tmp_path / "raw" / "cm"
    _fetch("cm", {"cm": {"kind": "coco", "mirror": coco_like.name}}, target, params, mirror_root=coco_like.parent,
           link=False)
    val_json = target / "annotations" / "person_keypoints_val2017.json"
    val = _load(val_json)
    n_train = len(_load(target / "annotations" / "person_keypoints_train2017.json")["images"])
    n_val = len(val["images"])
    n_keep = n_val // 2
    n_add = n_val - n_keep
    keep = {i["id"] for i in sorted(val["images"], key=lambda i: i["id"])[:n_keep]}
    for img in val["images"]:
        if img["id"] not in keep:
            (target / "val2017" / img["file_name"]).unlink()
    val["images"] = [i for i in val["images"] if i["id"] in keep]
    val["annotations"] = [a for a in val["annotations"] if a["image_id"] in keep]
    val_json.write_text(json.dumps(val))
    write_manifest(target)
    train_before = _load(target / "annotations" / "person_keypoints_train2017.json")
    batch_doc = _load(coco_like / "annotations" / "person_keypoints_val2017.json")
    n_new_anns = sum(1 for a in batch_doc["annotations"] if a["image_id"] not in keep)
    assert n_keep > 0 and n_add > 0 and n_new_anns > 0

    res = _cli("ingest", "--batch", coco_like, "--annotations", "annotations/person_keypoints_val2017.json",
               "--into", target, "--params", _params_file(tmp_path, params))
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["added_images"] == n_add and s["added_annotations"] == n_new_anns and s["changed"] is True
    assert s["skipped_duplicate_images"] == s["skipped_in_other_splits"] == n_keep
    verify_manifest(target)
    train = _load(target / "annotations" / "person_keypoints_train2017.json")
    assert len(train["images"]) == n_train + n_add
    assert len(train["annotations"]) == len(train_before["annotations"]) + n_new_anns
    img_ids = [i["id"] for i in train["images"]] + [i["id"] for i in val["images"]]
    ann_ids = [a["id"] for a in train["annotations"]] + [a["id"] for a in val["annotations"]]
    assert len(img_ids) == len(set(img_ids)) and len(ann_ids) == len(set(ann_ids)), "id collision"
    old_max = max(i["id"] for i in train_before["images"] + val["images"])
    assert all(i["id"] > old_max for i in train["images"][n_train:])
    by_id = {i["id"]: i for i in train["images"]}
    for a in train["annotations"][len(train_before["annotations"]):]:
        img = by_id[a["image_id"]]
        src = coco_like / "val2017" / img["file_name"]
        assert (target / "train2017" / img["file_name"]).read_bytes() == src.read_bytes()
    record = _load(target / "ingest_record.json")
    (entry,) = record["batches"]
    assert entry["added_images"] == n_add and len(entry["image_id_map"]) == n_add
    assert len(entry["duplicates"]) == n_keep
    assert all(d["duplicate_of"].startswith("val2017/") for d in entry["duplicates"]) and "ingested_at" in entry
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["cm"], "temporary folders left behind"

    snap = _snapshot(target)
    again = _cli("ingest", "--batch", coco_like, "--annotations", "annotations/person_keypoints_val2017.json",
                 "--into", target, "--params", _params_file(tmp_path, params))
    assert again.exit_code == 0, again.output
    s2 = json.loads(again.stdout)
    assert s2["added_images"] == 0 and s2["skipped_duplicate_images"] == n_val and s2["changed"] is False
    assert _snapshot(target) == snap
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["cm"]


def test_ingest_renumbers_renames_and_dedupes_within_batch(tmp_path):
    from pose.datasets.fetch import verify_manifest
    from pose.datasets.ingest import ingest_batch

    target = tmp_path / "ds"
    _small_generated(target, seed=3)
    batch = tmp_path / "batch"
    _small_generated(batch, seed=4, n_train=3, n_val=1)  # same ids (1..) and file names, other pixels
    doc = _load(batch / "annotations" / "person_keypoints_train2017.json")
    # the batch layout: one JSON at the top, images in images/; plus an exact copy of one image
    (batch / "images").mkdir()
    for img in doc["images"]:
        (batch / "train2017" / img["file_name"]).rename(batch / "images" / img["file_name"])
    twin = dict(doc["images"][0], id=99, file_name="twin.jpg")
    (batch / "images" / "twin.jpg").write_bytes((batch / "images" / doc["images"][0]["file_name"]).read_bytes())
    doc["images"].append(twin)
    doc["annotations"].append(dict(doc["annotations"][0], id=999, image_id=99))
    shutil.rmtree(batch / "annotations")
    shutil.rmtree(batch / "val2017")
    shutil.rmtree(batch / "train2017")
    (batch / "MANIFEST.sha256").unlink()
    (batch / "new.json").write_text(json.dumps(doc))

    before = _load(target / "annotations" / "person_keypoints_train2017.json")
    s = ingest_batch(batch, target, split="train2017")
    assert s["added_images"] == 3 and s["skipped_duplicate_images"] == 1 and s["skipped_in_other_splits"] == 0
    verify_manifest(target)
    after = _load(target / "annotations" / "person_keypoints_train2017.json")
    new_imgs = after["images"][len(before["images"]):]
    val = _load(target / "annotations" / "person_keypoints_val2017.json")
    assert min(i["id"] for i in new_imgs) > max(i["id"] for i in before["images"] + val["images"])
    for img in new_imgs:  # names were taken by different images: renamed with a content hash
        assert img["file_name"] not in {i["file_name"] for i in before["images"]}
        assert (target / "train2017" / img["file_name"]).is_file()
    (entry,) = _load(target / "ingest_record.json")["batches"]
    assert entry["duplicates"][0]["file_name"] == "twin.jpg"
    assert entry["duplicates"][0]["duplicate_of"].startswith("train2017/")


def test_ingest_bad_batches_change_nothing(tmp_path):
    from pose.datasets.ingest import IngestError, ingest_batch

    target = tmp_path / "raw" / "ds"
    _small_generated(target, seed=5)
    snap = _snapshot(target)
    src = tmp_path / "src"
    _small_generated(src, seed=6, n_train=2, n_val=1)
    good = _load(src / "annotations" / "person_keypoints_train2017.json")

    def batch(name, doc, images=True, extra_json=False):
        b = tmp_path / name
        (b / "annotations").mkdir(parents=True)
        (b / "annotations" / "person_keypoints_train2017.json").write_text(json.dumps(doc))
        if images:
            shutil.copytree(src / "train2017", b / "train2017")
        if extra_json:
            (b / "other.json").write_text("{}")
        return b

    missing = batch("missing", good, images=False)
    short = batch("short", {**good, "annotations": [dict(good["annotations"][0], keypoints=[0] * 42)]})
    two = batch("two", good, extra_json=True)
    wrong_size = batch("size", {**good, "images": [dict(good["images"][0], width=7)] + good["images"][1:]})
    orphan = batch("orphan", {**good, "annotations": [dict(good["annotations"][0], image_id=12345)]})
    unsafe = batch("unsafe", {**good, "images": [dict(good["images"][0], file_name="../../etc/passwd")]})
    for b, pattern in ((missing, "not found"), (short, "42 keypoint values"), (two, "exactly one annotation JSON"),
                       (wrong_size, "JSON says 7x"), (orphan, "12345"), (unsafe, "unsafe")):
        with pytest.raises(IngestError, match=pattern) as ei:
            ingest_batch(b, target, split="train2017")
        assert str(b) in str(ei.value)
        assert _snapshot(target) == snap, b.name
        assert sorted(p.name for p in target.parent.iterdir()) == ["ds"], "temporary folders left behind"
    with pytest.raises(IngestError, match="no annotations/person_keypoints_test.json"):
        ingest_batch(batch("ok", good), target, split="test")
    with pytest.raises(IngestError, match="no such dataset folder"):
        ingest_batch(batch("ok2", good), tmp_path / "nowhere", split="train2017")


def test_ingest_from_s3_prefix(tmp_path, monkeypatch):
    moto = pytest.importorskip("moto")
    import boto3

    from pose.datasets.fetch import verify_manifest
    from pose.datasets.ingest import ingest_batch
    from pose.datasets.sources import upload_s3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    target = tmp_path / "ds"
    _small_generated(target, seed=7)
    src = tmp_path / "src"
    _small_generated(src, seed=8, n_train=2, n_val=1)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="labels")
        upload_s3(src / "annotations" / "person_keypoints_train2017.json", "s3://labels/2024-06/batch.json")
        for p in sorted((src / "train2017").iterdir()):
            upload_s3(p, f"s3://labels/2024-06/images/{p.name}")
        upload_s3(src / "MANIFEST.sha256", "s3://labels/2024-07/unrelated.txt")
        s = ingest_batch("s3://labels/2024-06", target, split="train2017", retries=0)
    assert s["added_images"] == 2 and s["batch"] == "s3://labels/2024-06"
    verify_manifest(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "src"]


def test_fetch_applies_catalogue_ingest_batches_reproducibly(tmp_path, params):
    """`ingest:` in a catalogue entry (and `pose fetch --ingest`) merge batches inside the fetch: the
    result is one atomic, manifest-verified folder, identical on every fetch (no timestamps)."""
    from pose.datasets.fetch import verify_manifest

    src = tmp_path / "src"
    _small_generated(src, seed=9, n_train=2, n_val=1)
    batch = tmp_path / "batch"
    (batch / "images").mkdir(parents=True)
    shutil.copy(src / "annotations" / "person_keypoints_train2017.json", batch / "labels.json")
    for p in (src / "train2017").iterdir():
        shutil.copy(p, batch / "images" / p.name)
    small = {**params["generated"], "num_train": 4, "num_val": 2, "width": 96, "height": 80}
    cat = {"g": {"kind": "generated", "schema": "coco17", "ingest": [str(batch)]}}
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run / "g"
        s = _fetch("g", cat, out, {"generated": small})
        assert s["splits"]["train2017"]["images"] == 6 and s["ingested"][0]["added_images"] == 2
        verify_manifest(out)
        outs.append(out)
    assert (outs[0] / "MANIFEST.sha256").read_bytes() == (outs[1] / "MANIFEST.sha256").read_bytes()
    assert "ingested_at" not in _load(outs[0] / "ingest_record.json")["batches"][0]
    # the same batch through the CLI option, on top of the catalogue's: all duplicates, nothing added twice
    pf = tmp_path / "params.yaml"
    pf.write_text(yaml.safe_dump({**params, "generated": small, "catalogue": cat,
                                  "data": {**params["data"], "dataset": "g", "mirror": str(SHARED)}}))
    res = _cli("fetch", "--dataset", "g", "--out", tmp_path / "c" / "g", "--ingest", batch, "--params", pf)
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert [b["added_images"] for b in s["ingested"]] == [2, 0] and s["splits"]["train2017"]["images"] == 6


def test_ingest_concurrent_runs_are_serialised(tmp_path):
    """Three ingests of the same batch at once: the folder lock serialises them, so the batch is added
    exactly once, and the folder is exchanged atomically, so no ingest or reader ever finds it missing
    (CI once failed here: a second ingest's first check ran between two renames)."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from pose.datasets.fetch import verify_manifest
    from pose.datasets.ingest import ingest_batch

    target = tmp_path / "raw" / "ds"
    _small_generated(target, seed=11)
    src = tmp_path / "src"
    _small_generated(src, seed=12, n_train=3, n_val=1)
    (src / "annotations" / "person_keypoints_val2017.json").unlink()
    ann = target / "annotations" / "person_keypoints_train2017.json"
    done, missing = threading.Event(), []

    def reader():  # a concurrent reader (or a third ingest's first check) never finds the folder gone
        while not done.is_set():
            if not ann.is_file():
                missing.append(time.monotonic())

    watcher = threading.Thread(target=reader)
    watcher.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: ingest_batch(src, target, split="train2017"), range(3)))
    finally:
        done.set()
        watcher.join()
    assert missing == []
    assert sorted(r["added_images"] for r in results) == [0, 0, 3]
    verify_manifest(target)
    assert len(_load(target / "ingest_record.json")["batches"]) == 1
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["ds"]


# ============================================================================ posetrack (a format added in one file)

POSETRACK = REPO / "tests" / "data" / "posetrack" / "000001_test.json"


def _posetrack_mirror(root: Path) -> Path:
    """A PoseTrack 2018 release copy under ``root/posetrack18`` (the catalogue entry's ``mirror``): the
    hand-written video JSON as both splits' annotation file and a blank 320 x 240 JPEG per frame."""
    rel = root / "posetrack18"
    for split in ("train", "val"):
        dst = rel / "annotations" / f"posetrack18_{split}.json"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(POSETRACK, dst)
    for img in _load(POSETRACK)["images"]:
        path = rel / img["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.full((240, 320, 3), 127, np.uint8))
    return root


def test_posetrack_fetch_maps_to_coco17_and_native_ap(tmp_path, params):
    from pose.datasets.fetch import verify_manifest

    p = json.loads(json.dumps(params))
    p["data"].update(mirror=str(_posetrack_mirror(tmp_path / "mirror")), dataset="posetrack")
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(p, sort_keys=False))
    out = tmp_path / "raw" / "posetrack"
    res = _cli("fetch", "--out", out, "--params", pfile)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["kind"] == "posetrack" and summary["native_schema"] == "posetrack17"
    assert summary["splits"]["val2017"] == {"images": 2, "annotations": 3}   # the unlabelled frame is dropped
    verify_manifest(out)
    native = _load(POSETRACK)
    names = native["categories"][0]["keypoints"]
    doc = _load(out / "annotations" / "person_keypoints_val2017.json")
    assert doc["categories"] == [PERSON_CATEGORY]
    assert {im["file_name"] for im in doc["images"]} == {"images/val/000001_test/000000.jpg",
                                                         "images/val/000001_test/000002.jpg"}
    assert all((im["width"], im["height"]) == (320, 240) for im in doc["images"])   # read from the frames
    assert all((out / "val2017" / im["file_name"]).is_file() for im in doc["images"])
    by_id = {a["id"]: a for a in doc["annotations"]}
    checked = 0
    for na in native["annotations"]:
        a = by_id[na["id"]]
        nk = np.asarray(na["keypoints"], float).reshape(17, 3)
        ck = np.asarray(a["keypoints"], float).reshape(17, 3)
        assert a["native_schema"] == "posetrack17" and a["native_keypoints"] == na["keypoints"]
        assert a["track_id"] == na["track_id"] and a["bbox"] == na["bbox"] and a["bbox_head"] == na["bbox_head"]
        assert (ck[[1, 2]] == 0).all()                        # COCO's eyes: PoseTrack has none
        for i, n in enumerate(names):                         # by the file's joint names, not the mapping table
            if n in KEYPOINT_NAMES:
                assert np.array_equal(ck[KEYPOINT_NAMES.index(n)], nk[i]), n
                checked += nk[i, 2] > 0
            else:
                assert n in ("head_bottom", "head_top") and nk[i, 2] > 0   # kept natively only
        assert a["num_keypoints"] == int((nk[[0, *range(3, 17)], 2] > 0).sum())
    assert checked == 15 + 12 + 14
    # native evaluation: the ground truth scores AP 1 against itself, a perturbed copy less
    gt_json = out / "annotations" / "person_keypoints_val2017.json"
    perfect = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in doc["annotations"]]
    rng = np.random.default_rng(0)
    moved = []
    for r in perfect:
        k = np.asarray(r["keypoints"], float).reshape(17, 3)
        k[:, :2] += rng.normal(0, 6.0, (17, 2)) * (k[:, 2:] > 0)
        moved.append({**r, "keypoints": k.reshape(-1).tolist()})
    scores = {}
    for tag, results in (("perfect", perfect), ("moved", moved)):
        rfile = tmp_path / f"{tag}.json"
        rfile.write_text(json.dumps(results))
        res = _cli("evaluate", "--annotations", gt_json, "--results", rfile, "--out", tmp_path / f"{tag}_eval.json",
                   "--params", pfile)
        assert res.exit_code == 0, res.output
        scores[tag] = _load(tmp_path / f"{tag}_eval.json")
    assert scores["perfect"]["posetrack_AP"] == pytest.approx(1.0) and scores["perfect"]["AP"] == pytest.approx(1.0)
    assert scores["perfect"]["posetrack_joints"] == 15     # head_bottom / head_top: no COCO-17 prediction
    assert scores["moved"]["posetrack_AP"] < 0.9, scores["moved"]["posetrack_AP"]
