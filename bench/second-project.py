#!/usr/bin/env python3
"""A second project on the same base image, on one machine store (not a
test; nothing here asserts).

Two folders, each with a spec that builds on the Debian test image and
runs one command; no `.kiln` in either, so both use the machine's state
directory (here `XDG_CACHE_HOME` inside bench/work). Measured: the first
project's first build, then the second project's first build: time and
bytes the state directory grew by. Median of `--runs` (each run starts
from an empty machine store).

    bench/second-project.py [--runs N]

Needs root and the test images (`scripts/test-images`).
Writes bench/results/second-project.md.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work", "second-project")
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/cache/kiln-target")
KILN = os.path.join(TARGET, "release", "kiln")

SPEC = """kiln 1
stage s {{
    from image="oci:{images}/debian:12"
    copy "main.c" "/src/main.c"
    run "wc -c /src/main.c > /src/size"
}}
"""


def du(path):
    total = 0
    seen = set()
    for d, _, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(d, f))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    images = subprocess.run([os.path.join(ROOT, "scripts", "test-images")], check=True,
                            capture_output=True, text=True).stdout.strip()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    times = {"first": [], "second": []}
    grew = {"first": [], "second": []}
    for run in range(a.runs):
        shutil.rmtree(WORK, ignore_errors=True)
        cache = os.path.join(WORK, "cache")
        env = dict(os.environ, XDG_CACHE_HOME=cache)
        env.pop("KILN_STATE_DIR", None)
        for name in ["first", "second"]:
            d = os.path.join(WORK, name)
            os.makedirs(d)
            with open(os.path.join(d, "kiln.kdl"), "w") as f:
                f.write(SPEC.format(images=images))
            with open(os.path.join(d, "main.c"), "w") as f:
                f.write(f"int {name}(void) {{ return {run}; }}\n")
            before = du(cache)
            subprocess.run(["sync"], check=True)
            start = time.perf_counter()
            subprocess.run([KILN, "build", "--progress", "plain"], cwd=d, env=env, check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - start)
            grew[name].append(du(cache) - before)
    t = {k: statistics.median(v) for k, v in times.items()}
    g = {k: statistics.median(v) for k, v in grew.items()}
    lines = [
        "`bench/second-project.py`: two folders on the Debian test image, one machine",
        f"store; each project's first build; median of {a.runs} runs.",
        "",
        "| build | time | state directory grew by |",
        "|---|---|---|",
        f"| first project, first build | {t['first']*1000:.0f} ms | {g['first']/1e6:.1f} MB |",
        f"| second project, first build | {t['second']*1000:.0f} ms | {g['second']/1e6:.2f} MB |",
        f"| second ÷ first | {t['second']/t['first']:.2f}× | {g['second']/max(g['first'], 1):.4f}× |",
    ]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "second-project.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
