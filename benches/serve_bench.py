"""The export service against the command line, run by benches/run.py with the SDKs' Python
(target/sdk-venv, installed by scripts/test.sh):

    python serve_bench.py '{"bin", "img", "runs", "work", "s3s_fs"}'

Starts s3s-fs and `imgconv serve` (one worker) on loopback, then alternates, run by run, the
same streamOptimized VMDK export done two ways: `imgconv IN s3://...` and an EC2 ExportImage
through boto3, timed from the request to the moment a poll sees `completed` (polls every
50 ms). Then 20 boto3 clients poll DescribeExportImageTasks while one more export runs.
Prints one JSON object.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "crates/imgconv-cli/tests/sdk"))
import clients  # noqa: E402

KEY, SECRET = "bench-key", "bench-secret-0123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def start_s3s(s3s_fs, port, root):
    """s3s-fs on 127.0.0.1:`port` storing under `root` (which holds the bucket folders),
    accepting KEY and SECRET."""
    return subprocess.Popen([s3s_fs, "--host", "127.0.0.1", "--port", str(port),
                             "--access-key", KEY, "--secret-key", SECRET, str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    a = json.loads(sys.argv[1])
    work = Path(a["work"]) / "serve-bench"
    shutil.rmtree(work, ignore_errors=True)
    (work / "s3" / "exports").mkdir(parents=True)
    s3_port, port = free_port(), free_port()
    s3 = start_s3s(a["s3s_fs"], s3_port, work / "s3")
    (work / "serve.toml").write_text(f"""listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
db = "jobs.sqlite"
workers = 1
[storage]
endpoint = "http://127.0.0.1:{s3_port}"
region = "us-east-1"
access_key_id = "{KEY}"
secret_access_key = "{SECRET}"
[images]
"ami-bench" = "{a['img']}"
[[callers]]
api = "aws"
access_key_id = "AKIDBENCH"
secret_access_key = "bench-caller-secret"
""")
    env = dict(os.environ, IMGCONV_LOG="warn")
    serve = subprocess.Popen([a["bin"], "serve", "--config", str(work / "serve.toml")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(s3_port)
        wait_port(port)
        args = {"endpoint": f"http://127.0.0.1:{port}", "key": "AKIDBENCH", "secret": "bench-caller-secret"}
        ec2 = clients.ec2_client(args)
        cli_env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
        objects = work / "s3" / "exports"

        def clean():
            shutil.rmtree(objects, ignore_errors=True)
            objects.mkdir()
            os.sync()

        def by_cli():
            subprocess.run([a["bin"], "-o", "subformat=streamOptimized", a["img"], "s3://exports/cli/out.vmdk",
                            "--endpoint", f"http://127.0.0.1:{s3_port}", "--force"],
                           env=cli_env, check=True, stdout=subprocess.DEVNULL)

        def by_service():
            tid = ec2.export_image(DiskImageFormat="VMDK", ImageId="ami-bench",
                                   S3ExportLocation={"S3Bucket": "exports", "S3Prefix": "svc/"})["ExportImageTaskId"]
            while True:
                t = ec2.describe_export_image_tasks(ExportImageTaskIds=[tid])["ExportImageTasks"][0]
                if t["Status"] == "completed":
                    return
                if t["Status"] == "deleted":
                    raise SystemExit(f"the export failed: {t}")
                time.sleep(0.05)

        times = {"cli": [], "service": []}
        for r in range(a["runs"]):
            order = [("cli", by_cli), ("service", by_service)]
            if r % 2:
                order.reverse()
            for name, fn in order:
                clean()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        clean()
        # Pollers while an export runs.
        tid = ec2.export_image(DiskImageFormat="VMDK", ImageId="ami-bench",
                               S3ExportLocation={"S3Bucket": "exports", "S3Prefix": "load/"})["ExportImageTaskId"]
        load = clients.poll_load({**args, "clients": 20, "seconds": statistics.median(times["cli"]), "task": tid})
        clients.aws_wait(ec2, tid, ["completed"])
        print(json.dumps({
            "cli": statistics.median(times["cli"]),
            "service": statistics.median(times["service"]),
            "cli_min": min(times["cli"]),
            "service_min": min(times["service"]),
            "load": load,
        }))
    finally:
        serve.terminate()
        serve.wait()
        s3.terminate()
        s3.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
