"""The export service on a PostgreSQL job store, run by benches/run.py with the SDKs' Python
(target/sdk-venv, installed by scripts/test.sh):

    python fleet_bench.py '{"bin", "img", "runs", "work", "s3s_fs", "samples"}'

Starts s3s-fs, a throwaway PostgreSQL cluster (scripts/pg-cluster.sh) and three `imgconv serve`
instances on it (one worker each), and one instance on SQLite. Measures:

- latency: a 4 MiB export, sent with boto3 and polled every 10 ms until `completed`, `samples`
  times each: on SQLite (one instance); on PostgreSQL with the three instances idle (sent to
  each in turn); on PostgreSQL with the receiving instance's worker busy, so that another
  instance (which looks for queued jobs every second when idle) must take it;
- the job store's share of an export: the image's streamOptimized VMDK export from the command
  line, through the SQLite instance and through the PostgreSQL fleet, alternated run by run.

Prints one JSON object.
"""

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "crates/imgconv-cli/tests/sdk"))
import clients  # noqa: E402
from serve_bench import KEY, SECRET, free_port, wait_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CALLER = {"key": "AKIDBENCH", "secret": "bench-caller-secret"}


def config(port, s3_port, db, images):
    imgs = "\n".join(f'"{k}" = "{v}"' for k, v in images.items())
    return f"""listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
db = "{db}"
workers = 1
[storage]
endpoint = "http://127.0.0.1:{s3_port}"
region = "us-east-1"
access_key_id = "{KEY}"
secret_access_key = "{SECRET}"
[images]
{imgs}
[[callers]]
api = "aws"
access_key_id = "{CALLER['key']}"
secret_access_key = "{CALLER['secret']}"
"""


def export(ec2, image, prefix, poll):
    """Send an export, poll until it completes; seconds."""
    t0 = time.perf_counter()
    tid = ec2.export_image(DiskImageFormat="VMDK", ImageId=image,
                           S3ExportLocation={"S3Bucket": "exports", "S3Prefix": prefix})["ExportImageTaskId"]
    while True:
        t = ec2.describe_export_image_tasks(ExportImageTaskIds=[tid])["ExportImageTasks"][0]
        if t["Status"] == "completed":
            return time.perf_counter() - t0
        if t["Status"] == "deleted":
            raise SystemExit(f"the export failed: {t}")
        time.sleep(poll)


def main():
    a = json.loads(sys.argv[1])
    work = Path(a["work"]) / "fleet-bench"
    shutil.rmtree(work, ignore_errors=True)
    (work / "s3" / "exports").mkdir(parents=True)
    small = work / "small.raw"
    small.write_bytes(os.urandom(4 << 20))
    images = {"ami-big": a["img"], "ami-small": str(small)}
    procs = []
    pg_dir = work / "pg"
    pg_url = subprocess.run([str(ROOT / "scripts" / "pg-cluster.sh"), "start", str(pg_dir)],
                            capture_output=True, text=True, check=True).stdout.strip()
    try:
        s3_port = free_port()
        procs.append(subprocess.Popen([a["s3s_fs"], "--host", "127.0.0.1", "--port", str(s3_port),
                                       "--access-key", KEY, "--secret-key", SECRET, str(work / "s3")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        env = dict(os.environ, IMGCONV_LOG="warn")

        def serve(name, db):
            port = free_port()
            (work / f"{name}.toml").write_text(config(port, s3_port, db, images))
            procs.append(subprocess.Popen([a["bin"], "serve", "--config", str(work / f"{name}.toml")],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(port)
            return clients.ec2_client({**CALLER, "endpoint": f"http://127.0.0.1:{port}"})

        wait_port(s3_port)
        lite = serve("sqlite", "jobs.sqlite")
        fleet = [serve(f"pg{i}", pg_url) for i in range(3)]
        n = a["samples"]
        lat = {"sqlite": [], "pg_idle": [], "pg_busy": []}
        for i in range(n):
            lat["sqlite"].append(export(lite, "ami-small", "lat/", 0.01))
            lat["pg_idle"].append(export(fleet[i % 3], "ami-small", "lat/", 0.01))
        # Instance 0's worker busy with the big export: the small ones go to the others.
        busy = fleet[0].export_image(DiskImageFormat="VMDK", ImageId="ami-big",
                                     S3ExportLocation={"S3Bucket": "exports", "S3Prefix": "busy/"})["ExportImageTaskId"]
        time.sleep(1.5)
        for _ in range(n):
            lat["pg_busy"].append(export(fleet[0], "ami-small", "lat/", 0.01))
        clients.aws_wait(fleet[0], busy, ["completed"])

        cli_env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)

        def by_cli():
            t0 = time.perf_counter()
            subprocess.run([a["bin"], "-o", "subformat=streamOptimized", a["img"], "s3://exports/cli/out.vmdk",
                            "--endpoint", f"http://127.0.0.1:{s3_port}", "--force"],
                           env=cli_env, check=True, stdout=subprocess.DEVNULL)
            return time.perf_counter() - t0

        walls = {"cli": [], "sqlite": [], "pg": []}
        ways = [("cli", by_cli), ("sqlite", lambda: export(lite, "ami-big", "wall/", 0.05)),
                ("pg", lambda: export(fleet[1], "ami-big", "wall/", 0.05))]
        for r in range(a["runs"]):
            for name, fn in ways[r % 3:] + ways[:r % 3]:
                shutil.rmtree(work / "s3" / "exports", ignore_errors=True)
                (work / "s3" / "exports").mkdir()
                os.sync()
                walls[name].append(fn())
        q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))]
        print(json.dumps({
            "latency": {k: {"p50": statistics.median(v), "p90": q(v, 0.9), "max": max(v)} for k, v in lat.items()},
            "wall": {k: {"median": statistics.median(v), "min": min(v)} for k, v in walls.items()},
            "samples": n,
        }))
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait()
        subprocess.run([str(ROOT / "scripts" / "pg-cluster.sh"), "stop", str(pg_dir)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
