"""Throughput of `pose.datasets.sources.download` against curl on the same file, same run.

    python benchmarks/download.py                      # 200 MB random file, 5 rounds
    python benchmarks/download.py --source coco-mini   # a zip of ../shared/datasets/coco-mini
    python benchmarks/download.py --sweep              # also try several read buffer sizes

A loopback HTTP server (a child process of this script, ``sendfile`` zero-copy, so the
server is never the bottleneck and does not share our GIL) serves the file from a
temporary folder. Each round downloads it once with curl (``curl -sS --fail -o``) and
once with ``download()`` (no checksum: the same work as curl), alternating, then once
more each *with* SHA-256 verification (``download(sha256=...)`` vs ``curl`` followed by
``sha256sum``). MB = 10^6 bytes. The median of the rounds is reported, with the ratio
``download / curl`` (goal: >= 0.80). Exit status 1 with ``--min-ratio R`` when the plain
ratio is below R.

Only 127.0.0.1 is contacted. Everything is written under one temporary folder, removed
at the end.
"""

from __future__ import annotations

import argparse
import http.server
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSE_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


# ----------------------------------------------------------------------------- server (child process)

class _SendfileHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = (self.root / self.path.lstrip("/")).resolve()
        if self.root not in path.parents or not path.is_file():
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as f:
            self.connection.sendfile(f)


def serve(root: Path) -> None:
    _SendfileHandler.root = root.resolve()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SendfileHandler)
    srv.daemon_threads = True
    print(srv.server_address[1], flush=True)
    # the parent closes our stdin when it is done: stop then
    import threading

    threading.Thread(target=lambda: (sys.stdin.read(), srv.shutdown()), daemon=True).start()
    srv.serve_forever()


# ----------------------------------------------------------------------------- benchmark

def _make_random(path: Path, size_mb: int) -> None:
    block = 8 * 1024 * 1024
    left = size_mb * 1_000_000
    with open(path, "wb") as f:
        while left > 0:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n


def _make_coco_zip(path: Path) -> None:
    if not (SHARED / "coco-mini" / "annotations").is_dir():
        raise SystemExit(f"coco-mini not found at {SHARED / 'coco-mini'}")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted((SHARED / "coco-mini").rglob("*")):
            if p.is_file() and p.suffix in (".json", ".jpg"):
                zf.write(p, "coco-mini/" + p.relative_to(SHARED / "coco-mini").as_posix())


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=["random", "coco-mini"], default="random")
    ap.add_argument("--size-mb", type=int, default=200, help="size of the random file (MB)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=None,
                    help="where the served file and the downloads go (default: /dev/shm when writable, so the "
                         "disk does not dominate, else the system temp folder)")
    ap.add_argument("--sweep", action="store_true", help="also time several HTTP_CHUNK read sizes")
    ap.add_argument("--min-ratio", type=float, default=None, help="exit 1 when download/curl is below this")
    ap.add_argument("--serve", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0
    if not shutil.which("curl"):
        raise SystemExit("curl not found on PATH")

    sys.path.insert(0, str(REPO))
    from pose.datasets import sources

    base = args.dir
    if base is None and os.access("/dev/shm", os.W_OK):
        base = Path("/dev/shm")
    tmp = Path(tempfile.mkdtemp(prefix="pose-dl-bench-", dir=base))
    server = None
    try:
        (tmp / "srv").mkdir()
        blob = tmp / "srv" / ("blob.bin" if args.source == "random" else "coco-mini.zip")
        if args.source == "random":
            _make_random(blob, args.size_mb)
        else:
            _make_coco_zip(blob)
        size = blob.stat().st_size
        digest = sources.sha256_file(blob)
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(tmp / "srv")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        url = f"http://127.0.0.1:{port}/{blob.name}"
        dest = tmp / "out.bin"

        def clean():
            dest.unlink(missing_ok=True)
            dest.with_name(dest.name + ".part").unlink(missing_ok=True)

        def curl():
            subprocess.run(["curl", "-sS", "--fail", "-o", str(dest), url], check=True)

        def curl_sha():
            curl()
            out = subprocess.run(["sha256sum", str(dest)], check=True, capture_output=True, text=True).stdout
            assert out.split()[0] == digest

        def ours():
            sources.download(url, dest, retries=0, progress=False)

        def ours_sha():
            sources.download(url, dest, sha256=digest, size=size, retries=0, progress=False)

        def measure(fn) -> float:
            clean()
            t = _timed(fn)
            assert dest.stat().st_size == size
            return size / 1e6 / t

        # warm-up: page cache, server, imports
        measure(curl)
        measure(ours)
        res: dict[str, list[float]] = {"curl": [], "download": [], "curl+sha256sum": [], "download(sha256)": []}
        for _ in range(args.rounds):
            res["curl"].append(measure(curl))
            res["download"].append(measure(ours))
            res["curl+sha256sum"].append(measure(curl_sha))
            res["download(sha256)"].append(measure(ours_sha))
        print(f"file: {blob.name}, {size / 1e6:.1f} MB, loopback http://127.0.0.1:{port}, written under {tmp.parent}, "
              f"{args.rounds} rounds, HTTP_CHUNK={sources.HTTP_CHUNK}, load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} CPUs")
        med = {k: statistics.median(v) for k, v in res.items()}
        for k, v in res.items():
            print(f"  {k:<18} median {med[k]:8.1f} MB/s   (runs: {', '.join(f'{x:.0f}' for x in v)})")
        ratio = med["download"] / med["curl"]
        ratio_sha = med["download(sha256)"] / med["curl+sha256sum"]
        print(f"ratio download / curl:                      {ratio:.2f}  (goal >= 0.80)")
        print(f"ratio download(sha256) / curl+sha256sum:    {ratio_sha:.2f}")
        if args.sweep:
            original = sources.HTTP_CHUNK
            chunks = (64 * 1024, 256 * 1024, 1 << 20, 4 << 20)
            sweep: dict[int, list[float]] = {c: [] for c in chunks}
            curls = []
            for _ in range(args.rounds):  # interleaved with curl, so load changes hit all alike
                curls.append(measure(curl))
                for chunk in chunks:
                    sources.HTTP_CHUNK = chunk
                    sweep[chunk].append(measure(ours))
            sources.HTTP_CHUNK = original
            c = statistics.median(curls)
            print(f"read buffer sweep (download, no checksum; median of {args.rounds}; curl {c:.1f} MB/s):")
            for chunk, v in sweep.items():
                m = statistics.median(v)
                print(f"  HTTP_CHUNK={chunk:>8}: {m:8.1f} MB/s  ({m / c:.2f} of curl)")
        if args.min_ratio is not None and ratio < args.min_ratio:
            print(f"FAIL: ratio {ratio:.2f} < {args.min_ratio}")
            return 1
        return 0
    finally:
        if server is not None:
            server.stdin.close()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
