#!/usr/bin/env python3
"""A no-op `kiln test` of N cached tests against the no-op build of the
same stages (not a test; nothing here asserts).

N packages (default 1000), each a spec file `pkgs/pI/pkg.kdl` included
from the root spec, with a stage on the busybox test image that copies
the package's source and runs one `test` step over it. Every test runs
once (cold, reported), then, side by side:

  build   kiln build --target 'test-*'   (answered from the build memo)
  test    kiln test                      (the same stages, every test
                                          reported passed (cached))
  junit   kiln test --junit FILE --json FILE

Median of `--runs` each, after one warm-up run. Needs root (bubblewrap
over overlayfs) and the test images (`scripts/test-images`).

    bench/tests.py [--packages N] [--runs N]

Writes bench/results/tests.md.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work", "tests")


def kiln_bin():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    return os.path.join(target, "release", "kiln")


def images():
    out = subprocess.run([os.path.join(ROOT, "scripts", "test-images")], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def generate(n, image):
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    includes = []
    for i in range(n):
        d = os.path.join(WORK, "pkgs", f"p{i}")
        os.makedirs(os.path.join(d, "src"))
        with open(os.path.join(d, "src", "lib.c"), "w") as fh:
            fh.write(f"int p{i}(void) {{ return {i}; }}\n")
        with open(os.path.join(d, "pkg.kdl"), "w") as fh:
            fh.write(f'kiln 1\nstage test-p{i} {{\n    from image="{image}"\n'
                     f'    copy "pkgs/p{i}/src/" "/src/"\n'
                     f'    test "grep -q p{i} /src/lib.c"\n}}\n')
        includes.append(f'include "pkgs/p{i}/pkg.kdl"')
    with open(os.path.join(WORK, "kiln.kdl"), "w") as fh:
        fh.write("kiln 1\n" + "\n".join(includes) + "\n")
    with open(os.path.join(WORK, ".kilnignore"), "w") as fh:
        fh.write(".state\n.cache-home\nreport.*\n")


def median_ms(cmd, runs, env):
    subprocess.run(cmd, cwd=WORK, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=WORK, env=env, check=True, capture_output=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    kiln = kiln_bin()
    image = f"oci:{images()}/busybox:1"
    generate(a.packages, image)
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(WORK, ".cache-home"),
               KILN_STATE_DIR=os.path.join(WORK, ".state"))
    t = time.perf_counter()
    cold = subprocess.run([kiln, "test"], cwd=WORK, env=env, capture_output=True, text=True)
    cold_ms = (time.perf_counter() - t) * 1000
    if cold.returncode != 0:
        raise SystemExit(f"the cold run failed:\n{cold.stdout[-2000:]}\n{cold.stderr[-2000:]}")
    build = median_ms([kiln, "build", "--target", "test-*"], a.runs, env)
    test = median_ms([kiln, "test"], a.runs, env)
    junit = median_ms([kiln, "test", "--junit", "report.xml", "--json", "report.json"], a.runs, env)
    rows = [
        ("kiln build --target 'test-*'", build),
        ("kiln test", test),
        ("kiln test --junit report.xml --json report.json", junit),
    ]
    lines = [
        f"## A no-op `kiln test` of {a.packages} cached tests ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)",
        "",
        f"{a.packages} included spec files, each a stage on the busybox test image with one"
        f" `test` step; the first run (every test run) took {cold_ms / 1000:.1f} s. Median of"
        f" {a.runs} no-op runs after one warm-up (aim: `kiln test` within 2× of the no-op build).",
        "",
        "| command | time | against the no-op build |",
        "| --- | --- | --- |",
    ]
    for name, ms in rows:
        lines.append(f"| `{name}` | {ms:.1f} ms | {ms / build:.2f}× |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "tests.md"), "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
