#!/usr/bin/env python3
"""The remote cache against BuildGrid and a registry (not a test; nothing
here asserts).

A spec on the Debian test image whose steps do real work (compile 24 C
files with `gcc -O2`, link them, export the binary and objects). Two
folders with their own state directories play two CI machines, against
BuildGrid (`scripts/fetch-buildgrid`) on loopback with an in-memory
cache:

  A cold       machine A's first build with no remote (the baseline)
  A upload     machine A's first build with the remote: builds, uploads
  B remote     machine B's first build from the warm remote
  warm local   machine A again, every step in its own cache (the memo
               of its last build does not answer: a file is rewritten),
               without and with the remote configured
  registry     the same A upload and B remote through Debian's
               docker-registry on loopback (`--cache-to`/`--cache-from
               type=registry,ref=…`)

Median of `--runs` for the warm builds; the cold ones run once each
(each from an empty state directory and, for A upload, an empty server).

    bench/remote.py [--runs N]

Needs root and the test images (`scripts/test-images`).
Writes bench/results/remote.md.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work", "remote")
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/cache/kiln-target")
KILN = os.path.join(TARGET, "release", "kiln")
FILES = 24

SPEC = """kiln 1
stage build {{
    from image="oci:{images}/debian:12"
    workdir "/src"
    copy "src/" "./"
    run "for f in *.c; do gcc -O2 -c $f & done; wait"
    run "gcc -o app *.o"
}}
stage out {{
    from scratch
    copy "/src/app" "/app" from=build
}}
export {{
    out to="out"
}}
"""




def source(i):
    # Enough code for gcc -O2 to take a moment.
    funcs = "\n".join(
        f"double f{i}_{k}(double x) {{ double s = 0; for (int j = 0; j < {k + 10}; j++) "
        f"s += x * j / (j + {k + 1}.0); return s; }}" for k in range(150))
    main = "int main(void) { return 0; }" if i == 0 else ""
    return funcs + "\n" + main + "\n"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_grid(bgd):
    d = os.path.join(WORK, "grid")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    port = free_port()
    with open(os.path.join(ROOT, "scripts", "buildgrid-cache.yml")) as f:
        config = f.read().replace("PORT", str(port)).replace("SIZE", "4GB")
    with open(os.path.join(d, "grid.yml"), "w") as f:
        f.write(config)
    log = open(os.path.join(d, "log"), "w")
    p = subprocess.Popen([bgd, "server", "start", os.path.join(d, "grid.yml")],
                         stdout=log, stderr=log)
    wait_for(p, port, 90, "BuildGrid")
    return p, f"grpc://127.0.0.1:{port}"


def start_registry():
    d = os.path.join(WORK, "registry")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    port = free_port()
    with open(os.path.join(d, "config.yml"), "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                f"    rootdirectory: {d}/data\nhttp:\n  addr: 127.0.0.1:{port}\n")
    p = subprocess.Popen(["docker-registry", "serve", os.path.join(d, "config.yml")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(p, port, 30, "docker-registry")
    return p, f"type=registry,ref=127.0.0.1:{port}/bench/cache:main"


def wait_for(p, port, seconds, what):
    """Until the server `p` listens on `port` (killed, and the bench
    stopped, after `seconds`)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit(f"{what} did not start")


def machine(name, images):
    d = os.path.join(WORK, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "src"))
    os.makedirs(os.path.join(d, ".kiln"))
    with open(os.path.join(d, "kiln.kdl"), "w") as f:
        f.write(SPEC.format(images=images))
    for i in range(FILES):
        with open(os.path.join(d, "src", f"f{i}.c"), "w") as f:
            f.write(source(i))
    return d


def build(d, *extra):
    t = time.perf_counter()
    r = subprocess.run([KILN, "build", "--progress", "json", *extra, d],
                       capture_output=True, text=True)
    ms = (time.perf_counter() - t) * 1000
    if r.returncode != 0:
        raise SystemExit(f"kiln failed in {d}:\n{r.stderr[-3000:]}")
    events = [json.loads(l) for l in r.stderr.splitlines() if l.startswith("{")]
    remote = next((e for e in events if e.get("event") == "remote_cache"), {})
    ran = sum(1 for e in events if e.get("event") == "step_finished")
    return ms, remote, ran


def size_of(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(d, f)).st_size
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    images = subprocess.run([os.path.join(ROOT, "scripts", "test-images")], check=True,
                            capture_output=True, text=True).stdout.strip()
    bgd = subprocess.run([os.path.join(ROOT, "scripts", "fetch-buildgrid")], check=True,
                         capture_output=True, text=True).stdout.strip()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)

    base = machine("baseline", images)
    cold, _, cold_ran = build(base)

    grid, url = start_grid(bgd)
    try:
        a_dir = machine("a", images)
        up, up_remote, _ = build(a_dir, "--remote-cache", url)
        b_dir = machine("b", images)
        down, down_remote, b_ran = build(b_dir, "--remote-cache", url)
        exported = size_of(os.path.join(b_dir, "out"))

        def warm(*extra):
            times = []
            for _ in range(a.runs):
                # Rewritten, same bytes: the memo cannot answer, every key
                # is looked up (and found here).
                time.sleep(2.1)
                p = os.path.join(a_dir, "src", "f0.c")
                with open(p) as f:
                    text = f.read()
                with open(p, "w") as f:
                    f.write(text)
                ms, remote, ran = build(a_dir, *extra)
                assert ran == 0, "a warm build ran steps"
                times.append(ms)
            return statistics.median(times), remote
        warm_plain, _ = warm()
        warm_remote, warm_r = warm("--remote-cache", url)
    finally:
        grid.kill()
        grid.wait()

    registry, ref = start_registry()
    try:
        ra_dir = machine("ra", images)
        r_up, r_up_remote, _ = build(ra_dir, "--cache-to", ref)
        rb_dir = machine("rb", images)
        r_down, r_down_remote, rb_ran = build(rb_dir, "--cache-from", ref)
    finally:
        registry.kill()
        registry.wait()

    lines = [
        f"## Remote cache against BuildGrid ({time.strftime('%Y-%m-%d')}, 2 cores)",
        "",
        f"{FILES} C files compiled with `gcc -O2` and linked on the Debian test image;",
        "the binary exported. BuildGrid 0.4.4 on loopback, in-memory cache;",
        "Debian's docker-registry 2.8 on loopback, file system storage.",
        "",
        "| build | time | steps run | remote |",
        "| --- | --- | --- | --- |",
        f"| A cold, no remote | {cold:.0f} ms | {cold_ran} | - |",
        f"| A cold, uploading | {up:.0f} ms | {cold_ran} | {up_remote.get('results_uploaded')} results, "
        f"{up_remote.get('uploaded_blobs')} blobs, {up_remote.get('uploaded_bytes', 0) / 1e6:.1f} MB up |",
        f"| B from the warm remote | {down:.0f} ms | {b_ran} | {down_remote.get('found')} found, "
        f"{down_remote.get('downloaded_bytes', 0) / 1e3:.0f} KB down |",
        f"| A warm, no remote (median of {a.runs}) | {warm_plain:.1f} ms | 0 | - |",
        f"| A warm, remote configured (median of {a.runs}) | {warm_remote:.1f} ms | 0 | "
        f"{warm_r.get('found')} found |",
        f"| A cold, uploading to a registry | {r_up:.0f} ms | {cold_ran} | "
        f"{r_up_remote.get('results_uploaded')} results, {r_up_remote.get('uploaded_blobs')} blobs, "
        f"{r_up_remote.get('uploaded_bytes', 0) / 1e6:.1f} MB up |",
        f"| B from the registry | {r_down:.0f} ms | {rb_ran} | {r_down_remote.get('found')} found, "
        f"{r_down_remote.get('downloaded_bytes', 0) / 1e3:.0f} KB down |",
        "",
        f"B is {cold / down:.1f}× faster than A's cold build without a remote "
        f"({cold / r_down:.1f}× through the registry); it "
        f"downloaded {down_remote.get('downloaded_bytes', 0) / max(exported, 1):.2f}× "
        f"the size of its export ({exported / 1e3:.0f} KB).",
        "",
    ]
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "remote.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
