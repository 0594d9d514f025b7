#!/usr/bin/env python3
"""`kiln gc` on a state directory of about 10 GB (not a test; nothing here asserts).

Fills a fresh state directory with the results of `--stages` stages on
the busybox test image, each a `run` step that writes one large file of
random bytes and 1,000 small ones (about 76 MB a stage), then times, one
after the other:

  gc           `kiln gc` with nothing to remove (every entry is used)
  gc-budget    `kiln gc --max-size 1G` (most entries go)
  build        the newest stage built again after that gc: what the budget
               leaves the next build (it must not write its base out again)

    bench/gc.py [--stages N] [--images DIR]

With GC_PROFILE="perf record -g -o FILE" the budgeted gc runs under it.

Writes bench/results/gc.md; bench/RESULTS.md has the summary.
"""

import argparse
import os
import shutil
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work", "gc")
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/cache/kiln-target")
KILN = os.path.join(TARGET, "release", "kiln")
PROFILE = os.environ.get("GC_PROFILE", "").split()

STAGE = """stage s{i} {{
    from image="oci:{images}/busybox:1"
    run "echo {i} > /id && mkdir /small && head -c 60000000 /dev/urandom > /big && i=0 && while [ $i -lt 1000 ]; do head -c 16000 /dev/urandom > /small/$i; i=$((i+1)); done"
}}
"""


def du(path):
    out = subprocess.run(["du", "-sb", path], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0])


def count_files(path):
    return sum(len(fs) for _, _, fs in os.walk(path))


def timed(cmd, **kw):
    start = time.perf_counter()
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
    return time.perf_counter() - start, r.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stages", type=int, default=135)
    ap.add_argument("--images", default="/var/cache/kiln-test-images")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    shutil.rmtree(WORK, ignore_errors=True)
    project = os.path.join(WORK, "project")
    state = os.path.join(WORK, "state")
    os.makedirs(project)
    with open(os.path.join(project, "kiln.kdl"), "w") as fh:
        fh.write("kiln 1\n" + "".join(STAGE.format(i=i, images=a.images)
                                      for i in range(a.stages)))
        # The last stage (what a plain build builds) needs every other.
        fh.write("stage all {\n" + "".join(f'    copy from="s{i}" "/id" "/{i}"\n'
                                           for i in range(a.stages)) + "}\n")
    env = dict(os.environ, KILN_STATE_DIR=state)
    fill, _ = timed([KILN, "build", "--progress", "plain", "-j", "2"], cwd=project, env=env)
    # The newest build used only the last stage.
    timed([KILN, "build", "--progress", "plain", "--target", f"s{a.stages - 1}"],
          cwd=project, env=env)
    size, files = du(state), count_files(state)
    cache = du(os.path.join(state, "blobs")) + du(os.path.join(state, "packs")) \
        + du(os.path.join(state, "trees"))
    subprocess.run(["sync"], check=True)
    gc, _ = timed([KILN, "gc"], cwd=project, env=env)
    subprocess.run(["sync"], check=True)
    gc_budget, out = timed(PROFILE + [KILN, "gc", "--max-size", "1G"], cwd=project, env=env)
    after = du(state)
    build, _ = timed([KILN, "build", "--progress", "plain", "--target", f"s{a.stages - 1}"],
                     cwd=project, env=env)
    lines = [
        f"`bench/gc.py`: {a.stages} stages on busybox, each a `run` writing 60 MB in one"
        " file and 16 MB in 1,000 files; filled in"
        f" {fill:.0f} s. State directory: {size / 1e9:.1f} GB in {files} files"
        f" (cache proper: blobs, packs and trees, {cache / 1e9:.1f} GB).",
        "",
        "| run | time | state directory after |",
        "|---|---|---|",
        f"| `kiln gc` (everything in use) | {gc * 1000:.0f} ms | {size / 1e9:.1f} GB |",
        f"| `kiln gc --max-size 1G` | {gc_budget * 1000:.0f} ms | {after / 1e9:.2f} GB |",
        f"| the newest stage built again after it | {build * 1000:.0f} ms | |",
        "",
        "gc's report:",
        "",
        "```",
        out.strip(),
        "```",
    ]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "gc.md"), "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
