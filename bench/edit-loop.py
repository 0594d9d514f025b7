#!/usr/bin/env python3
"""The edit loop on the Debian test image, side by side (not a test;
nothing here asserts).

A stage `tool` (the image plus one `mkdir`) and a stage `s` (from `tool`,
`WORKDIR /src`, copy one C file, `gcc -c` it); each edit changes one line
of the C file and builds again. Measured per edit: wall time and how many
bytes the tool's storage grew. Side by side in one run:

  floor      a bare overlay mount of the unpacked image (lower) with the
             edited file in a fresh upper directory, `bwrap` running the
             same `gcc -c`, umount: what any tool must at least do
  kiln       `kiln build -t edit-loop:1`, as root (overlay layers)
  kiln-user  the same as `nobody` (kept private copies)
  buildkit   Debian's docker.io (BuildKit, `docker build --network=host`)
             on the equivalent Dockerfile
  buildah    `buildah bud --layers` (vfs, chroot) on the same Dockerfile

    bench/edit-loop.py [--edits N] [--only floor,kiln,...]

Needs root. Installs docker.io and buildah with apt-get when missing.
Writes bench/results/edit-loop.md; bench/RESULTS.md has the summary.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work", "edit-loop")
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/cache/kiln-target")
KILN = os.path.join(TARGET, "release", "kiln")


def sh(*args, **kw):
    kw.setdefault("check", True)
    return subprocess.run(list(args), **kw)


def tree_bytes(path):
    """Bytes of the regular files below `path`, each inode once."""
    seen, total = set(), 0
    for d, dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(d, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen or not (st.st_mode & 0o170000 == 0o100000):
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def source(i):
    return f'int value(void) {{ return {i}; }}\nint main(void) {{ return value(); }}\n'


def loop(name, edits, setup, build, storage):
    """Run `setup`, one build to warm, then `edits` edits: (seconds, bytes) each."""
    ctx = setup()
    with open(os.path.join(ctx, "a.c"), "w") as f:
        f.write(source(0))
    build(ctx)
    times, grown = [], []
    for i in range(1, edits + 1):
        with open(os.path.join(ctx, "a.c"), "w") as f:
            f.write(source(i))
        before = tree_bytes(storage)
        t0 = time.perf_counter()
        build(ctx)
        times.append(time.perf_counter() - t0)
        grown.append(tree_bytes(storage) - before)
    print(f"{name}: median {statistics.median(times) * 1000:.0f} ms, "
          f"{statistics.median(grown) / 1e6:.2f} MB per edit", file=sys.stderr)
    return times, grown


KDL = """kiln 1
stage tool {{
    from image="oci:{images}/debian:12"
    mkdir "/tool"
}}
stage s {{
    from tool
    workdir "/src"
    copy "a.c" "./"
    run "gcc -c a.c -o a.o"
}}
"""

DOCKERFILE = """FROM {base}
RUN mkdir /tool
WORKDIR /src
COPY a.c ./
RUN gcc -c a.c -o a.o
"""


def kiln_loop(images, edits, user):
    d = os.path.join(WORK, "kiln-user" if user else "kiln")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "home"))
    # The project's own state directory, measured below (else kiln would
    # use the machine's).
    os.makedirs(os.path.join(d, ".kiln"))

    def setup():
        with open(os.path.join(d, "kiln.kdl"), "w") as f:
            f.write(KDL.format(images=images))
        if user:
            sh("chown", "-R", "65534:65534", d)
        return d

    def build(ctx):
        # An image in kiln's store, as `docker build -t` makes one in
        # Docker's (an export of the whole tree would write the image's
        # files again each time, which no peer does).
        cmd = [KILN, "build", "--progress", "plain", "-t", "edit-loop:1", "--target", "s", ctx]
        if user:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                   "env", f"HOME={d}/home"] + cmd
        sh(*cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return loop("kiln-user" if user else "kiln", edits, setup, build, os.path.join(d, ".kiln"))


def floor_loop(images, edits):
    d = os.path.join(WORK, "floor")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    lower = os.path.join(d, "bundle", "rootfs")
    sh("umoci", "unpack", "--image", f"{images}/debian:12", os.path.join(d, "bundle"),
       stdout=subprocess.DEVNULL)
    os.makedirs(os.path.join(lower, "tool"), exist_ok=True)
    ctx = os.path.join(d, "ctx")

    def setup():
        os.makedirs(ctx, exist_ok=True)
        return ctx

    def build(ctx):
        run = os.path.join(d, "run")
        shutil.rmtree(run, ignore_errors=True)
        upper, work, merged = (os.path.join(run, x) for x in ("upper", "work", "merged"))
        for p in (upper, work, merged):
            os.makedirs(p)
        os.makedirs(os.path.join(upper, "src"))
        shutil.copy(os.path.join(ctx, "a.c"), os.path.join(upper, "src", "a.c"))
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={lower},upperdir={upper},workdir={work}", merged)
        try:
            sh("bwrap", "--bind", merged, "/", "--proc", "/proc", "--dev", "/dev",
               "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent", "--chdir", "/src",
               "gcc", "-c", "a.c", "-o", "a.o")
        finally:
            sh("umount", merged)

    return loop("floor", edits, setup, build, os.path.join(d, "run"))


def ensure(pkg, binary):
    if shutil.which(binary):
        return
    sh("apt-get", "install", "-y", "-qq", pkg, stdout=subprocess.DEVNULL,
       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def buildkit_loop(images, edits):
    ensure("docker.io", "dockerd")
    # Debian's client: a newer one elsewhere on PATH may want buildx.
    docker = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
    d = os.path.join(WORK, "buildkit")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "ctx"))
    data, execroot = os.path.join(d, "data"), tempfile.mkdtemp(prefix="kiln-bench-docker-")
    sock = os.path.join(d, "docker.sock")
    daemon = subprocess.Popen(
        ["dockerd", "--data-root", data, "--exec-root", execroot, "-H", f"unix://{sock}",
         "--iptables=false", "--bridge=none", "--pidfile", os.path.join(d, "docker.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_BUILDKIT": "1"}
    try:
        for _ in range(300):
            if sh(docker, "info", env=env, check=False, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL).returncode == 0:
                break
            time.sleep(0.1)
        archive = os.path.join(d, "debian.tar")
        sh("skopeo", "copy", "--quiet", f"oci:{images}/debian:12",
           f"docker-archive:{archive}:kiln-bench/debian:12")
        sh(docker, "load", "-q", "-i", archive, env=env, stdout=subprocess.DEVNULL)
        os.remove(archive)

        def setup():
            with open(os.path.join(d, "ctx", "Dockerfile"), "w") as f:
                f.write(DOCKERFILE.format(base="kiln-bench/debian:12"))
            return os.path.join(d, "ctx")

        def build(ctx):
            sh(docker, "build", "--network=host", "-q", "-t", "edit-loop", ctx, env=env,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        return loop("buildkit", edits, setup, build, data)
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        shutil.rmtree(execroot, ignore_errors=True)


def buildah_loop(images, edits):
    ensure("buildah", "buildah")
    d = os.path.join(WORK, "buildah")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(os.path.join(d, "ctx"))

    def setup():
        with open(os.path.join(d, "ctx", "Dockerfile"), "w") as f:
            f.write(DOCKERFILE.format(base=f"oci:{images}/debian:12"))
        return os.path.join(d, "ctx")

    def build(ctx):
        sh("buildah", "--storage-driver", "vfs", "--root", os.path.join(d, "root"),
           "--runroot", os.path.join(d, "run"), "bud", "--layers", "--isolation", "chroot",
           "--quiet", "-t", "edit-loop", "-f", "Dockerfile", ctx,
           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return loop("buildah", edits, setup, build, os.path.join(d, "root"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--only", default="floor,kiln,kiln-user,buildkit,buildah")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/edit-loop.py needs root (overlayfs, dockerd)")
    sh("cargo", "build", "--release", "--quiet", cwd=ROOT,
       env={**os.environ, "CARGO_TARGET_DIR": TARGET})
    images = subprocess.run([os.path.join(ROOT, "scripts", "test-images")], check=True,
                            capture_output=True, text=True).stdout.strip()
    os.makedirs(WORK, exist_ok=True)
    runs = {
        "floor": lambda: floor_loop(images, args.edits),
        "kiln": lambda: kiln_loop(images, args.edits, False),
        "kiln-user": lambda: kiln_loop(images, args.edits, True),
        "buildkit": lambda: buildkit_loop(images, args.edits),
        # buildah copies the image per layer: fewer edits.
        "buildah": lambda: buildah_loop(images, max(2, args.edits // 4)),
    }
    results = {}
    for name in args.only.split(","):
        results[name] = runs[name]()
    med = {k: statistics.median(t) for k, (t, _) in results.items()}
    grown = {k: statistics.median(g) for k, (_, g) in results.items()}
    lines = [
        f"## Edit loop on the Debian image ({time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} cores, {args.edits} edits)",
        "",
        "Copy one C file, `gcc -c` it, after a stage of the image plus one `mkdir`.",
        "Median per edit.",
        "",
        "| tool | time per edit | storage growth per edit | against the floor | kiln (root) is |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k in results:
        vs_floor = f"{med[k] / med['floor']:.2f}×" if "floor" in med else "-"
        vs_kiln = "-"
        if "kiln" in med and k not in ("kiln", "floor"):
            r = med[k] / med["kiln"]
            vs_kiln = f"{r:.1f}× faster" if r >= 1 else f"{1 / r:.1f}× slower"
        lines.append(f"| {k} | {med[k] * 1000:.0f} ms | {grown[k] / 1e6:.3f} MB | "
                     f"{vs_floor} | {vs_kiln} |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "edit-loop.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
