"""The shared run store, as ratios against a baseline measured in the same run.

Baseline: institution A's cold `rk batch annual` (warm engine; nothing cached, no store).
- B's `rk batch annual` restored from a shared folder after A pushed: target <= 0.1
- the same from an S3-compatible server (moto's standalone server on 127.0.0.1, through s3fs): reported
- A's `rk push --batch annual` to each store, reported against the same baseline

A and B are two copies of this workspace (templates and data packages) in a temporary folder,
with different institutions and signing keys; nothing is written into the repository.

Usage: python benchmarks/bench_share.py [--workers N] [--batch NAME]
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def rk(ws: Path, *args, env, restores: bool = False) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / "rk"), *map(str, args)], cwd=ws, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"rk {' '.join(map(str, args))} in {ws} failed:\n{proc.stdout}\n{proc.stderr}")
    if restores and ("succeeded" in proc.stdout or "restored from the share" not in proc.stdout):
        raise SystemExit(f"B's batch executed runs instead of restoring them:\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - t0


def workspace(tmp: Path, name: str, institution: str, share: str) -> Path:
    "A copy of this workspace's templates and data with its own institution, store and key."
    ws = tmp / name
    ws.mkdir()
    for part in ("datasets", "reports", "locales"):
        if (ROOT / part).exists():
            shutil.copytree(
                ROOT / part, ws / part, ignore=shutil.ignore_patterns("_build", "_share", ".tmp-*")
            )
    text = (ROOT / "settings.ini").read_text()
    (ws / "settings.ini").write_text(
        text.replace(
            "institution =",
            f"institution = {institution}\nshare = {share}\nsigning_key = {tmp / 'home' / name}.key\n#",
            1,
        )
    )
    return ws


def moto(port: int):
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise SystemExit("moto_server did not start")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", default="annual")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RK_")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FSSPEC_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "RK_RUNNER_WORKERS": str(args.workers),
        }
    )
    tmp = Path(tempfile.mkdtemp(prefix="rk-bench-share-"))
    server = moto(port)
    try:
        import s3fs

        s3fs.S3FileSystem(key="bench", secret="bench", endpoint_url=env["FSSPEC_S3_ENDPOINT_URL"]).mkdir(
            "bench-share"
        )
        (tmp / "drive").mkdir()
        a = workspace(tmp, "A", "METU", str(tmp / "drive"))
        b = workspace(tmp, "B-folder", "KITIG", str(tmp / "drive"))
        b3 = workspace(tmp, "B-s3", "KITIG", "s3://bench-share/runs")
        for ws in (a, b, b3):
            rk(ws, "keys", "new", env=env)
        for ws in (b, b3):
            shutil.copy(a / "keys" / "METU.pub", ws / "keys")
        for ws in (b, b3):
            rk(ws, "datasets", "validate", env=env)  # B's data cache warm, as a researcher's would be

        cold = rk(a, "batch", args.batch, "--no-share", env=env)
        push_folder = rk(a, "push", "--batch", args.batch, env=env)
        push_s3 = rk(
            a, "push", "--batch", args.batch, env={**env, "RK_WORKSPACE_SHARE": "s3://bench-share/runs"}
        )
        restore_folder = rk(b, "batch", args.batch, env=env, restores=True)
        restore_s3 = rk(b3, "batch", args.batch, env=env, restores=True)
        runs = sum(1 for _ in (a / "reports" / "_build").glob("*/*/manifest.json"))
        print(
            f"batch {args.batch!r}: {runs} runs, {args.workers} workers; baseline: A's cold rk batch = {cold:.1f} s"
        )
        print(
            f"B's batch restored from a shared folder: {restore_folder:.2f} s  ratio {restore_folder / cold:.3f}  (target <= 0.1)"
        )
        print(
            f"B's batch restored from S3 (moto on 127.0.0.1): {restore_s3:.2f} s  ratio {restore_s3 / cold:.3f}"
        )
        print(f"A's push to the shared folder: {push_folder:.2f} s  ratio {push_folder / cold:.3f}")
        print(f"A's push to S3 (moto): {push_s3:.2f} s  ratio {push_s3 / cold:.3f}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
