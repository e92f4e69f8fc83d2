#!/usr/bin/env python3
"""Alternate shell commands, with the page cache dropped (or one file's data read in) before
each run, untimed; print each command's median and fastest wall time, median system time, and
its median over the first command's.

    sudo python3 benches/ab.py -n 9 --rm 'OUT*' 'imgconv --no-sync -O qcow2 IN OUT1' \\
        'imgconv --no-sync -O qcow2 IN - > OUT2' 'qemu-img convert -O qcow2 IN OUT3'
    sudo python3 benches/ab.py -n 9 --warm IN ...   # IN's data cached (holes never read)

Needs root for the cache drop (/proc/sys/vm/drop_caches).
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run as bench  # noqa: E402  (read_data_only)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=7, help="runs of each command")
    ap.add_argument("--warm", help="read this file's data in before each run instead of "
                                   "dropping the page cache")
    ap.add_argument("--rm", help="a shell pattern of outputs removed before each run")
    ap.add_argument("--each", action="store_true", help="print every run's wall time too")
    ap.add_argument("cmds", nargs="+", help="shell commands")
    a = ap.parse_args()
    res = {c: [] for c in a.cmds}
    for r in range(a.n):
        for c in (a.cmds if r % 2 == 0 else list(reversed(a.cmds))):
            if a.rm:
                subprocess.run(f"rm -f {a.rm}", shell=True)
            os.sync()
            if a.warm:
                bench.read_data_only(a.warm)
            else:
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("3")
            t0, c0 = time.perf_counter(), os.times()
            p = subprocess.run(c, shell=True, stdout=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
            system = os.times().children_system - c0.children_system
            if p.returncode:
                sys.exit(f"failed: {c}")
            res[c].append((wall, system))
    base = None
    for c, xs in res.items():
        med = statistics.median(x[0] for x in xs)
        base = base or med
        if a.each:
            print("   runs: " + " ".join(f"{x[0]:.3f}" for x in xs))
        print(f"{med:7.3f} s (fastest {min(x[0] for x in xs):.3f}) system "
              f"{statistics.median(x[1] for x in xs):.3f} s  {med / base:5.2f}x  {c}")


if __name__ == "__main__":
    main()
