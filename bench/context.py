#!/usr/bin/env python3
"""A large build context, side by side (not a test; nothing here asserts).

A context of 100 folders of 1,000 small files (100,000 files, each a few
dozen bytes) and a spec with one stage that copies it whole and exports it
as a tar. Measured in one run, each case the median of `--runs`:

  b3sum      `b3sum` over every file (the cost of hashing the bytes)
  tar        `tar c` of the tree to a file (the cost of writing them out)
  cp         `cp -r` of the tree: what creating its files costs on this
             file system (a store that keeps each file as a file pays it)
  cold       `kiln build` on a fresh state directory
  touched    one file's content changed, built again
  no-op      nothing changed, built again

The bars (issue 20): cold within 2x of b3sum + tar, touched within 1.5x
of tar.

    bench/context.py [--runs N] [--files-per-dir N]

Writes bench/results/context.md; bench/RESULTS.md has the summary.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work", "context")
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/cache/kiln-target")
KILN = os.path.join(TARGET, "release", "kiln")

SPEC = """kiln 1
stage s {
    copy "src" "/src"
}
export {
    s to="out.tar" format="tar"
}
"""


def timed(cmd, **kw):
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - start


def settle():
    """Let the file system finish what removals left it (ext4 frees inodes
    after `rm` returns, and that work lands on whatever runs next)."""
    subprocess.run(["sync"], check=True)
    time.sleep(3)


def make_context(project, dirs, per_dir):
    src = os.path.join(project, "src")
    if os.path.isdir(src) and len(os.listdir(src)) == dirs:
        return src
    shutil.rmtree(project, ignore_errors=True)
    os.makedirs(src)
    for d in range(dirs):
        sub = os.path.join(src, f"d{d:03}")
        os.mkdir(sub)
        for f in range(per_dir):
            with open(os.path.join(sub, f"f{f:04}.txt"), "w") as fh:
                fh.write(f"file {d}/{f}: some small content\n")
    with open(os.path.join(project, "kiln.kdl"), "w") as fh:
        fh.write(SPEC)
    return src


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dirs", type=int, default=100)
    ap.add_argument("--files-per-dir", type=int, default=1000)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    project = os.path.join(WORK, "project")
    src = make_context(project, a.dirs, a.files_per_dir)
    files = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs
    )
    state = os.path.join(WORK, "state")
    env = dict(os.environ, KILN_STATE_DIR=state)
    kiln = [KILN, "build", "--progress", "plain"]
    results = {k: [] for k in ["b3sum", "tar", "cp", "cold", "touched", "no-op"]}
    touched = files[len(files) // 2]
    for run in range(a.runs):
        # b3sum takes the paths on its command line, in chunks.
        start = time.perf_counter()
        for i in range(0, len(files), 10000):
            subprocess.run(["b3sum", "--no-names", *files[i:i + 10000]],
                           check=True, stdout=subprocess.DEVNULL)
        results["b3sum"].append(time.perf_counter() - start)
        results["tar"].append(
            timed(["tar", "cf", os.path.join(WORK, "peer.tar"), "-C", project, "src"]))
        shutil.rmtree(state, ignore_errors=True)
        settle()
        results["cold"].append(timed(kiln, cwd=project, env=env))
        with open(touched, "a") as fh:
            fh.write(f"edit {run}\n")
        # Past the two seconds in which a change is always re-read.
        time.sleep(2.1)
        results["touched"].append(timed(kiln, cwd=project, env=env))
        time.sleep(2.1)
        results["no-op"].append(timed(kiln, cwd=project, env=env))
        # Last: removing 100,000 files keeps ext4 busy for seconds after.
        copied = os.path.join(WORK, "copied")
        shutil.rmtree(copied, ignore_errors=True)
        settle()
        results["cp"].append(timed(["cp", "-r", src, copied]))
        shutil.rmtree(copied, ignore_errors=True)
        settle()
    med = {k: statistics.median(v) for k, v in results.items()}
    floor_cold = med["b3sum"] + med["tar"]
    lines = [
        f"`bench/context.py`: {len(files)} files in {a.dirs} folders, copied whole"
        f" and exported as a tar; median of {a.runs} runs.",
        "",
        "| case | time | ratio | bar |",
        "|---|---|---|---|",
        f"| b3sum over the files | {med['b3sum']*1000:.0f} ms | | |",
        f"| tar c of the tree | {med['tar']*1000:.0f} ms | | |",
        f"| cp -r of the tree | {med['cp']*1000:.0f} ms | | |",
        f"| kiln cold | {med['cold']*1000:.0f} ms | {med['cold']/floor_cold:.2f}x b3sum+tar | 2x |",
        f"| kiln, one file touched | {med['touched']*1000:.0f} ms | {med['touched']/med['tar']:.2f}x tar | 1.5x |",
        f"| kiln no-op | {med['no-op']*1000:.0f} ms | {med['no-op']/med['tar']:.2f}x tar | |",
    ]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "context.md"), "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
