"""Many accounts polling one export service, run by benches/run.py with the SDKs' Python
(target/sdk-venv, installed by scripts/test.sh):

    python tenants_bench.py '{"bin", "img", "work", "s3s_fs", "seconds", "pollers"[, "rate"]}'

Starts s3s-fs and `imgconv serve` (4 workers, SQLite) on loopback with three AWS accounts,
each owning a copy of the image `img`, and a 1 TiB sparse image holding 64 MiB. Each account
submits exports of its image, so that 4 run while the service is measured; then, for `seconds`
each:

1. `pollers` boto3 clients per account (one process per account, a thread per client) call
   DescribeExportImageTasks on their own account's task: calls per second, p50 and p99;
2. the same, while 4 more clients loop ExportImage with DryRun=True on the 1 TiB image (each
   dry run opens the image and measures the export);
3. and 4. the same two, with the pollers paced as pollers are (each calls on a fixed
   timetable; together they offer `rate` calls per second, default 1,050), latency counted
   from each call's scheduled time.

Prints one JSON object.
"""

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "crates/imgconv-cli/tests/sdk"))
import clients  # noqa: E402
from serve_bench import KEY, SECRET, free_port, start_s3s, wait_port  # noqa: E402
ACCOUNTS = ["111111111111", "222222222222", "333333333333"]


def caller(account):
    return {"key": f"AKID{account}", "secret": f"secret-of-{account}"}


def poll(args):
    """One account's pollers (a process of its own: the GIL is per process)."""
    return clients.poll_load(args)


def dry_runs(args, stop_at, out):
    """Loop DryRun exports of the 1 TiB image until `stop_at`; count them."""
    from botocore.exceptions import ClientError

    ec2 = clients.ec2_client(args)
    n = 0
    while time.time() < stop_at:
        try:
            ec2.export_image(DiskImageFormat="VMDK", ImageId="ami-sparse", DryRun=True,
                             S3ExportLocation={"S3Bucket": "exports", "S3Prefix": "dry/"})
        except ClientError as e:
            if e.response["Error"]["Code"] != "DryRunOperation":
                raise
        n += 1
    out.put(n)


def measure(endpoint, tasks, seconds, pollers, with_dry_runs, interval=None):
    ctx = multiprocessing.get_context("fork")
    stop_at = time.time() + seconds
    dry_q = ctx.Queue()
    dry = []
    if with_dry_runs:
        for _ in range(4):
            p = ctx.Process(target=dry_runs, args=({"endpoint": endpoint, **caller(ACCOUNTS[0])},
                                                   stop_at, dry_q))
            p.start()
            dry.append(p)
    with ctx.Pool(len(ACCOUNTS)) as pool:
        results = pool.map(poll, [{"endpoint": endpoint, **caller(acc), "clients": pollers,
                                   "seconds": seconds, "task": tasks[acc], "latencies": True,
                                   "interval": interval}
                                  for acc in ACCOUNTS])
    dry_count = 0
    for p in dry:
        p.join()
        dry_count += dry_q.get()
    lat = sorted(x for r in results for x in r["latencies"])
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] if lat else None
    return {"calls": len(lat), "calls_per_s": len(lat) / seconds, "p50": q(0.5), "p99": q(0.99),
            "max": lat[-1] if lat else None, "failures": sum(r["failures"] for r in results),
            "dry_runs": dry_count}


def service_times(path, start):
    """p50 and p99 of the service's own time (seconds) for the describe calls logged after
    byte `start` of its log."""
    ms = []
    with open(path) as f:
        f.seek(start)
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            fields = r.get("fields", {})
            if fields.get("message") == "request" and fields.get("method") == "POST":
                ms.append(fields.get("millis", 0) / 1000)
    ms.sort()
    q = lambda f: ms[min(len(ms) - 1, int(f * len(ms)))] if ms else None
    return {"requests": len(ms), "p50": q(0.5), "p99": q(0.99)}


def main():
    a = json.loads(sys.argv[1])
    work = Path(a["work"]) / "tenants-bench"
    shutil.rmtree(work, ignore_errors=True)
    (work / "s3" / "exports").mkdir(parents=True)
    sparse = work / "sparse-1t.raw"
    with open(sparse, "wb") as f:
        f.truncate(1 << 40)
        for i in range(16):
            f.seek(i * (1 << 36))
            f.write(os.urandom(4 << 20))
    s3_port, port = free_port(), free_port()
    s3 = start_s3s(a["s3s_fs"], s3_port, work / "s3")
    images = "\n".join(f'"ami-{acc}" = {{ path = "{a["img"]}", owner = "{acc}" }}' for acc in ACCOUNTS)
    callers = "\n".join(f'[[callers]]\napi = "aws"\naccount = "{acc}"\naccess_key_id = "{caller(acc)["key"]}"\n'
                        f'secret_access_key = "{caller(acc)["secret"]}"\n' for acc in ACCOUNTS)
    (work / "serve.toml").write_text(f"""listen = "127.0.0.1:{port}"
public_url = "http://127.0.0.1:{port}"
db = "jobs.sqlite"
workers = 4
[storage]
endpoint = "http://127.0.0.1:{s3_port}"
region = "us-east-1"
access_key_id = "{KEY}"
secret_access_key = "{SECRET}"
[images]
"ami-sparse" = "{sparse}"
{images}
{callers}""")
    # The service's own log line per request carries its time in the service (`millis`).
    env = dict(os.environ, IMGCONV_LOG="info")
    log = open(work / "serve.log", "w")
    serve = subprocess.Popen([a["bin"], "serve", "--config", str(work / "serve.toml")], env=env,
                             stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_port(s3_port)
        wait_port(port)
        endpoint = f"http://127.0.0.1:{port}"
        tasks = {}

        def submit(acc, n):
            ec2 = clients.ec2_client({"endpoint": endpoint, **caller(acc)})
            return ec2.export_image(DiskImageFormat="VMDK", ImageId=f"ami-{acc}",
                                    S3ExportLocation={"S3Bucket": "exports",
                                                      "S3Prefix": f"{acc}/{n}/"})["ExportImageTaskId"]

        out = {}
        # Closed loop (each poller calls again at once), then paced as pollers are: the
        # 3 x `pollers` pollers together offer `rate` calls per second on a fixed timetable.
        interval = 3 * a["pollers"] / a.get("rate", 1050)
        phases = [("pollers", False, None), ("pollers_and_dry_runs", True, None),
                  ("paced", False, interval), ("paced_and_dry_runs", True, interval)]
        for phase, with_dry, paced in phases:
            # Four exports running (or queued behind one another) while the phase runs.
            for n in range(4):
                tasks[ACCOUNTS[n % 3]] = submit(ACCOUNTS[n % 3], f"{phase}-{n}")
            time.sleep(0.5)
            start = log.tell()
            out[phase] = measure(endpoint, tasks, a["seconds"], a["pollers"], with_dry, paced)
            log.flush()
            out[phase]["in_service"] = service_times(work / "serve.log", start)
        print(json.dumps(out))
    finally:
        serve.terminate()
        serve.wait()
        log.close()
        s3.terminate()
        s3.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
