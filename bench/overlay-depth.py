#!/usr/bin/env python3
"""How overlayfs costs with the depth of a stack (not a test; nothing here
asserts): what `rootfs::MAX_DEPTH` is chosen against.

For each depth D, a stack of D layers (the bottom one holds 1,000 files in
10 directories, each layer above holds one file of its own and one
directory shared by all) is mounted with lowerdir names relative to the
layers' directory, as kiln mounts them, and measured: the mount and
umount, 20,000 `stat`s of a file only the bottom layer has (a lookup that
misses in every layer above), and a walk of the whole merged tree.

    bench/overlay-depth.py [D ...]     default: 1 8 16 32 64 128 256 480

Needs root. Writes bench/results/overlay-depth.md.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(base, depth):
    layers = os.path.join(base, "l")
    os.makedirs(layers)
    names = []
    for i in range(depth):
        name = f"{i:04x}"
        d = os.path.join(layers, name)
        os.makedirs(os.path.join(d, "shared"))
        with open(os.path.join(d, "shared", f"f{i}"), "w") as f:
            f.write(str(i))
        if i == 0:
            for j in range(10):
                os.makedirs(os.path.join(d, "usr", f"d{j}"))
                for k in range(100):
                    with open(os.path.join(d, "usr", f"d{j}", f"f{k}"), "w") as f:
                        f.write("x")
        names.append(name)
    # Top first, as overlayfs wants.
    return layers, list(reversed(names))


def measure(depth):
    base = tempfile.mkdtemp(prefix="kiln-ovl-")
    try:
        layers, names = make(base, depth)
        merged = os.path.join(base, "m")
        os.makedirs(merged)
        opts = "lowerdir=" + ":".join(names)
        if depth == 1:
            # A single lower needs an upper to be a valid overlay.
            for p in ("u", "w"):
                os.makedirs(os.path.join(base, p))
            opts += f",upperdir={base}/u,workdir={base}/w"
        t0 = time.perf_counter()
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, merged], cwd=layers,
                       check=True)
        mount_ms = (time.perf_counter() - t0) * 1000
        try:
            target = os.path.join(merged, "usr", "d5", "f50")
            t0 = time.perf_counter()
            for _ in range(20000):
                os.stat(target)
            stat_us = (time.perf_counter() - t0) / 20000 * 1e6
            # Fresh overlay dentries (the layers' own stay cached, as they
            # are for a command on a stack a build used before).
            subprocess.run(["umount", merged], check=True)
            subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, merged], cwd=layers,
                           check=True)
            t0 = time.perf_counter()
            n = sum(len(files) + len(dirs) for _, dirs, files in os.walk(merged))
            walk_ms = (time.perf_counter() - t0) * 1000
        finally:
            t0 = time.perf_counter()
            subprocess.run(["umount", merged], check=True)
            umount_ms = (time.perf_counter() - t0) * 1000
        return mount_ms, stat_us, walk_ms, umount_ms, n
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main():
    if os.geteuid() != 0:
        sys.exit("bench/overlay-depth.py needs root")
    depths = [int(a) for a in sys.argv[1:]] or [1, 8, 16, 32, 64, 128, 256, 480]
    lines = [
        f"## overlayfs cost by stack depth ({time.strftime('%Y-%m-%d')}, {os.uname().release})",
        "",
        "| layers | mount | stat of a bottom file (warm) | walk of the merged tree (fresh mount) | umount |",
        "| --- | --- | --- | --- | --- |",
    ]
    for d in depths:
        mount_ms, stat_us, walk_ms, umount_ms, n = measure(d)
        lines.append(f"| {d} | {mount_ms:.1f} ms | {stat_us:.2f} µs | {walk_ms:.1f} ms ({n} entries) | "
                     f"{umount_ms:.1f} ms |")
        print(lines[-1], file=sys.stderr)
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "overlay-depth.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
