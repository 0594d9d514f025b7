#!/usr/bin/env python3
"""Attack kiln the way a careful tester would, and count what breaks.

  attack.py --kiln PATH [--rounds N] [--quick] [--results FILE]

Phases (each prints its figures; the run fails if any bar is missed):

  kill        kill -9 at a random moment during a build (which rebuilds
              and exports), during a no-op build and during `kiln gc`; then
              build again. The exports seen right after each kill must be a
              whole old or whole new export (never a mix), and after the
              next build they must equal the reference byte for byte.
  damage      every kind of state file damaged in every way (bit flip,
              truncation, removal, garbage, another object's bytes), then
              a build with the exports in place, one without them, and one
              after `kiln gc`. Each must give the reference exports or stop
              with a clear error; a wrong byte exported counts as a failure.
  concurrent  several builds and `kiln gc` at once on one store, from an
              empty store; every build must succeed with reference exports.
  hostile     destinations that would destroy the project, includes of
              host files, ignore files leading outside the context and
              archive bombs: each refused, nothing outside the state
              directory changed, no secret printed, no hang.
  hostile-run `run` steps that try to get out of the sandbox (as root, on
              the test images): kernel knobs, mounts, namespaces, devices
              and setuid files in cache mounts, descriptors planted in
              kiln's caller, a host process, and a compiled probe of every
              system call Docker's profile refuses. Each attempt must be
              held, and nothing of the host may change: its kernel knobs,
              hostname, mounts, /tmp and a canary process.

The bars: 0 wrong exports, 0 mixed exports, 0 failed concurrent builds,
0 unsafe outcomes, 0 escapes. `--quick` runs few rounds (the integration tests run it);
the figures in tests/reliability/RESULTS.md come from a full run.
"""

import argparse
import glob
import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import io
import tempfile
import time

SPEC = """kiln 1
arg VARIANT default="a"
context ctx path="ctx"
stage base {
    copy "src/" "/src/" context=ctx
    copy "big/" "/big/" context=ctx
    write "/variant" "${VARIANT}\\n"
    symlink "/src/f0" "/link"
}
stage tool {
    copy "/src/" "/tool/" from=base
    write "/tool/marker" "tool ${VARIANT}\\n"
}
stage final {
    copy "/" "/" from=base
    copy "/tool/" "/opt/tool/" from=tool
    mkdir "/empty"
}
export {
    final to="dist/dir"
    final to="dist/final.tar" format="tar"
    tool to="dist/tool"
}
"""


class Failure(Exception):
    pass


def sha(data):
    return hashlib.sha256(data).hexdigest()


def describe_export(path):
    """What an export holds: every entry with kind, mode and content digest."""
    if not os.path.lexists(path):
        return None
    if os.path.isfile(path) and not os.path.islink(path):
        with open(path, "rb") as f:
            return ("file", sha(f.read()))
    out = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs + files):
            p = os.path.join(root, name)
            rel = os.path.relpath(p, path)
            st = os.lstat(p)
            if os.path.islink(p):
                out.append((rel, "l", os.readlink(p)))
            elif os.path.isdir(p):
                out.append((rel, "d", oct(st.st_mode & 0o7777)))
            else:
                with open(p, "rb") as f:
                    out.append((rel, "f", oct(st.st_mode & 0o7777), sha(f.read())))
    return ("dir", tuple(out))


EXPORTS = ["dist/dir", "dist/final.tar", "dist/tool"]


class Project:
    def __init__(self, kiln, root, files=300, big=3, state=None):
        self.kiln = kiln
        self.dir = root
        # A state directory shared with other projects (else `.kiln`,
        # made here: kiln uses a project's own when it is there).
        self.shared_state = state
        if not state:
            os.makedirs(os.path.join(root, ".kiln"), exist_ok=True)
        os.makedirs(os.path.join(root, "ctx", "src"), exist_ok=True)
        os.makedirs(os.path.join(root, "ctx", "big"), exist_ok=True)
        rnd = random.Random(7)
        for i in range(files):
            with open(os.path.join(root, "ctx", "src", f"f{i}"), "wb") as f:
                f.write(rnd.randbytes(rnd.randint(1, 64 * 1024)))
        for i in range(big):
            with open(os.path.join(root, "ctx", "big", f"b{i}"), "wb") as f:
                f.write(rnd.randbytes(4 << 20))
        with open(os.path.join(root, "kiln.kdl"), "w") as f:
            f.write(SPEC)

    def path(self, rel):
        return os.path.join(self.dir, rel)

    def env(self):
        env = dict(os.environ)
        env.pop("KILN_STATE_DIR", None)
        if self.shared_state:
            env["KILN_STATE_DIR"] = self.shared_state
        return env

    def run(self, *args, timeout=300):
        env = self.env()
        env["NO_COLOR"] = "1"
        return subprocess.run(
            [self.kiln, *args],
            cwd=self.dir,
            capture_output=True,
            timeout=timeout,
            env=env,
        )

    def spawn(self, *args):
        env = self.env()
        return subprocess.Popen(
            [self.kiln, *args],
            cwd=self.dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )

    def build(self, variant="a", *extra):
        return self.run("build", "--progress", "plain", "--arg", f"VARIANT={variant}", *extra)

    def exports(self):
        return {e: describe_export(self.path(e)) for e in EXPORTS}

    def state(self, *rel):
        return os.path.join(self.dir, ".kiln", *rel)

    def project_records(self, name):
        """A record file of this project's (its spec's path, hashed)."""
        return sorted(glob.glob(self.state("records", "projects", "*", name)))


SIZES = {"large": (300, 3), "small": (40, 1), "tiny": (10, 0)}


def reference(kiln, work, size):
    """The exports of both variants of a project size, built in fresh projects."""
    files, big = SIZES[size]
    refs = {}
    for v in ["a", "b"]:
        p = Project(kiln, os.path.join(work, f"ref-{size}-{v}"), files=files, big=big)
        r = p.build(v)
        if r.returncode != 0:
            raise Failure(f"reference build failed:\n{r.stderr.decode()}")
        refs[v] = p.exports()
        shutil.rmtree(p.dir, ignore_errors=True)
    return refs


def files_under(path):
    out = []
    for root, dirs, files in os.walk(path):
        for name in files:
            out.append(os.path.join(root, name))
    return sorted(out)


# ---------------------------------------------------------------- kill

def phase_kill(kiln, work, rounds, stats):
    refs = reference(kiln, work, "large")
    p = Project(kiln, os.path.join(work, "kill"))
    r = p.build("a")
    if r.returncode != 0:
        raise Failure(r.stderr.decode())
    start = time.monotonic()
    p.build("b")
    full = time.monotonic() - start
    rnd = random.Random(11)
    mixed = wrong = 0
    kinds = {"build": 0, "no-op": 0, "gc": 0}
    variant = "b"
    for i in range(rounds):
        kind = ["build", "build", "no-op", "gc"][i % 4]
        kinds[kind] += 1
        if kind == "build":
            variant = "a" if variant == "b" else "b"
            # Half the rounds also lose the exports, so the kill can land in an export.
            if rnd.random() < 0.5:
                shutil.rmtree(p.path("dist"), ignore_errors=True)
            proc = p.spawn("build", "--progress", "plain", "--arg", f"VARIANT={variant}")
        elif kind == "no-op":
            proc = p.spawn("build", "--progress", "plain", "--arg", f"VARIANT={variant}")
        else:
            proc = p.spawn("gc", "--max-size", rnd.choice(["1", "10M", "1G"]))
        time.sleep(rnd.uniform(0, full * 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Right after a kill: each export is whole, of one variant, or absent.
        for e, got in p.exports().items():
            if got is not None and got not in (refs["a"][e], refs["b"][e]):
                mixed += 1
                print(f"  kill round {i} ({kind}): {e} is neither whole export")
        r = p.build(variant)
        if r.returncode != 0:
            wrong += 1
            print(f"  kill round {i} ({kind}): the next build failed:\n{r.stderr.decode()[-2000:]}")
            continue
        if p.exports() != refs[variant]:
            wrong += 1
            print(f"  kill round {i} ({kind}): exports differ from the reference")
        leftovers = [n for n in os.listdir(p.path("dist")) if "kiln-tmp" in n]
        if leftovers:
            wrong += 1
            print(f"  kill round {i} ({kind}): leftovers beside the exports: {leftovers}")
    tmp_left = files_under(p.state("tmp"))
    stats["kill"] = {
        "rounds": rounds,
        "builds killed": kinds["build"],
        "no-op builds killed": kinds["no-op"],
        "gc killed": kinds["gc"],
        "mixed exports after a kill": mixed,
        "wrong or failed rebuilds": wrong,
        "temp files left at the end": len(tmp_left),
    }
    return mixed == 0 and wrong == 0 and not tmp_left


# ---------------------------------------------------------------- damage

def flip(path, rnd):
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        if not data:
            return False
        st = os.stat(path)
        i = rnd.randrange(len(data))
        data[i] ^= 1 << rnd.randrange(8)
        f.seek(0)
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    return True


def truncate(path, rnd):
    os.chmod(path, 0o644)
    size = os.path.getsize(path)
    if size == 0:
        return False
    with open(path, "r+b") as f:
        f.truncate(rnd.randrange(size))
    return True


def remove(path, rnd):
    os.remove(path)
    return True


def garbage(path, rnd):
    os.chmod(path, 0o644)
    with open(path, "wb") as f:
        f.write(rnd.randbytes(rnd.randint(0, 4096)))
    return True


def swap_with_sibling(path, rnd):
    """Replace an object's bytes with another object's (a valid file, wrong name)."""
    # Objects sharded by digest (blobs/ab/…) or side by side (packs/…).
    parent = os.path.dirname(path)
    kind = parent if os.path.basename(parent) == "packs" else os.path.dirname(parent)
    siblings = [p for p in files_under(kind) if p != path]
    if not siblings:
        return False
    other = rnd.choice(siblings)
    os.chmod(path, 0o644)
    shutil.copyfile(other, path)
    return True


DAMAGES = {"flip a bit": flip, "truncate": truncate, "remove": remove,
           "garbage": garbage, "another object's bytes": swap_with_sibling}

TARGETS = [
    ("blob", lambda p: files_under(p.state("blobs"))),
    ("pack of small blobs", lambda p: files_under(p.state("packs"))),
    ("tree", lambda p: files_under(p.state("trees"))),
    ("action log", lambda p: [p.state("actions.log")]),
    ("stat index", lambda p: files_under(p.state("index"))),
    ("parse cache", lambda p: files_under(p.state("parse"))),
    ("build memo", lambda p: p.project_records("memo")),
    ("export records", lambda p: files_under(p.state("records", "exports"))),
    ("explain records", lambda p: [f for n in ["last.json", "steps.json", "last.digest",
                                               os.path.join("inputs", "*")]
                                   for f in p.project_records(n)]),
    ("use lists", lambda p: files_under(p.state("records", "used"))),
    ("lock file", lambda p: [p.state("lock")]),
    ("exported file", lambda p: [f for f in files_under(p.path("dist/dir")) if not os.path.islink(f)][:50]),
    ("exported tar", lambda p: [p.path("dist/final.tar")]),
]


def phase_damage(kiln, work, rounds, stats, quick):
    refs = reference(kiln, work, "small")
    rnd = random.Random(23)
    results = []
    wrong_total = 0
    for target, find in TARGETS:
        healed = stopped = wrong = skipped = 0
        damages = list(DAMAGES.items())
        if quick:
            damages = rnd.sample(damages, 2)
        for damage_name, damage in damages:
            for k in range(rounds):
                p = Project(kiln, os.path.join(work, f"damage-{len(results)}-{damage_name}-{k}"), files=40, big=1)
                r = p.build("a")
                if r.returncode != 0:
                    raise Failure(r.stderr.decode())
                # Old enough for the stat index and the memo to be in use.
                time.sleep(2.1)
                p.build("a")
                candidates = [c for c in find(p) if os.path.isfile(c) and not os.path.islink(c)]
                if not candidates:
                    skipped += 1
                    continue
                victims = rnd.sample(candidates, min(len(candidates), rnd.choice([1, 1, 3])))
                done = [damage(v, rnd) for v in victims]
                if not any(done):
                    skipped += 1
                    continue
                outcome = "healed"
                for step in ["as is", "without exports", "after gc", "--no-cache"]:
                    if step == "without exports":
                        shutil.rmtree(p.path("dist"), ignore_errors=True)
                    if step == "after gc":
                        g = p.run("gc")
                        if g.returncode != 0:
                            outcome = "stopped"
                            continue
                    extra = ["--no-cache"] if step == "--no-cache" else []
                    r = p.build("a", *extra)
                    got = p.exports()
                    if r.returncode == 0:
                        if got != refs["a"]:
                            outcome = "wrong"
                            print(f"  {target} / {damage_name}: build {step} exported wrong bytes")
                            break
                    else:
                        msg = r.stderr.decode()
                        if "panicked" in msg or r.returncode not in (1, 2, 3):
                            outcome = "wrong"
                            print(f"  {target} / {damage_name}: build {step} crashed ({r.returncode}):\n{msg[-1500:]}")
                            break
                        for e, v in got.items():
                            if v is not None and v != refs["a"][e]:
                                outcome = "wrong"
                                print(f"  {target} / {damage_name}: failed build {step} left a wrong export {e}")
                        if outcome == "healed":
                            outcome = "stopped"
                if outcome == "healed":
                    healed += 1
                elif outcome == "stopped":
                    stopped += 1
                else:
                    wrong += 1
                shutil.rmtree(p.dir, ignore_errors=True)
        wrong_total += wrong
        results.append((target, healed, stopped, wrong, skipped))
    stats["damage"] = results
    return wrong_total == 0


# ---------------------------------------------------------------- concurrent

def phase_concurrent(kiln, work, rounds, stats):
    refs = reference(kiln, work, "small")
    failed = 0
    builds = 0
    for i in range(rounds):
        p = Project(kiln, os.path.join(work, f"concurrent-{i}"), files=40, big=1)
        procs = [p.spawn("build", "--progress", "plain", "--arg", "VARIANT=a") for _ in range(3)]
        procs.append(p.spawn("gc"))
        procs.append(p.spawn("build", "--progress", "plain", "--arg", "VARIANT=a", "-j", "1"))
        for j, proc in enumerate(procs):
            _, err = proc.communicate(timeout=600)
            is_gc = j == 3
            builds += 0 if is_gc else 1
            if proc.returncode != 0:
                failed += 1
                print(f"  concurrent round {i}: {'gc' if is_gc else 'build'} failed:\n{err.decode()[-1500:]}")
        if p.exports() != refs["a"]:
            failed += 1
            print(f"  concurrent round {i}: exports differ from the reference")
        shutil.rmtree(p.dir, ignore_errors=True)
    stats["concurrent"] = {"rounds": rounds, "builds": builds, "failures": failed}
    return failed == 0


def phase_shared(kiln, work, rounds, stats):
    """Two projects on one state directory: one project's build killed at a
    random moment while the other builds (and, every other round, `kiln gc`
    runs); then both build the same variant at once. The other project's
    build, the killed one's rebuild and both concurrent builds must give
    the reference exports."""
    refs = reference(kiln, work, "small")
    state = os.path.join(work, "shared-state")
    rnd = random.Random(11)
    counts = {"rounds": rounds, "builds killed": 0, "builds beside a kill": 0, "gc beside builds": 0,
              "concurrent identical builds": 0, "failures": 0}

    def failed(what, proc_err=b""):
        counts["failures"] += 1
        print(f"  shared: {what}\n{proc_err.decode(errors='replace')[-1500:]}")

    for i in range(rounds):
        a = Project(kiln, os.path.join(work, f"shared-a-{i}"), files=40, big=1, state=state)
        b = Project(kiln, os.path.join(work, f"shared-b-{i}"), files=40, big=1, state=state)
        pa = a.spawn("build", "--progress", "plain", "--arg", "VARIANT=a")
        pb = b.spawn("build", "--progress", "plain", "--arg", "VARIANT=b")
        pg = b.spawn("gc") if i % 2 else None
        time.sleep(rnd.uniform(0.01, 0.4))
        pa.kill()
        pa.communicate(timeout=600)
        counts["builds killed"] += 1
        _, err = pb.communicate(timeout=600)
        counts["builds beside a kill"] += 1
        if pb.returncode != 0:
            failed(f"round {i}: the other project's build failed", err)
        elif b.exports() != refs["b"]:
            failed(f"round {i}: the other project's exports differ from the reference")
        if pg is not None:
            _, err = pg.communicate(timeout=600)
            counts["gc beside builds"] += 1
            if pg.returncode != 0:
                failed(f"round {i}: gc failed", err)
        r = a.build("a")
        if r.returncode != 0:
            failed(f"round {i}: the killed project's next build failed", r.stderr)
        elif a.exports() != refs["a"]:
            failed(f"round {i}: the killed project's exports differ from the reference")
        # The same variant in both at once, on a new shared state
        # directory: each step is run once between them (the other build
        # waits for it and takes its result) and both get the right exports.
        fresh = os.path.join(work, f"shared-fresh-{i}")
        for p in (a, b):
            p.shared_state = fresh
        procs = [p.spawn("build", "--progress", "plain", "--arg", "VARIANT=b") for p in (a, b)]
        for p, proc in zip([a, b], procs):
            _, err = proc.communicate(timeout=600)
            counts["concurrent identical builds"] += 1
            if proc.returncode != 0:
                failed(f"round {i}: a concurrent build failed", err)
            elif p.exports() != refs["b"]:
                failed(f"round {i}: a concurrent build's exports differ from the reference")
        shutil.rmtree(a.dir, ignore_errors=True)
        shutil.rmtree(b.dir, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    stats["shared"] = counts
    return counts["failures"] == 0


# ---------------------------------------------------------------- hostile

def snapshot(root):
    out = {}
    for path in files_under(root):
        if "/.kiln/" in path:
            continue
        if os.path.islink(path):
            out[path] = "-> " + os.readlink(path)
            continue
        with open(path, "rb") as f:
            out[path] = sha(f.read())
    return out


def phase_hostile(kiln, work, stats):
    unsafe = 0
    checks = 0
    secret = "kiln-reliability-secret-93c1"
    p = Project(kiln, os.path.join(work, "hostile"), files=10, big=0)
    r = p.build("a")
    if r.returncode != 0:
        raise Failure(r.stderr.decode())
    name = os.path.basename(p.dir)
    before = snapshot(os.path.dirname(p.dir))
    dests = ["nx/../ctx", f"nx/../../{name}", "nx/../../..", "nx/a/../../../..", ".kiln",
             ".kiln/blobs", ".kiln/actions.log", ".kiln/lock", "kiln.kdl", "ctx", "ctx/src",
             "ctx/src/f1", ".", "..", "/", os.path.expanduser("~"), "dist/../ctx"]
    for d in dests:
        for o in [d, f"type=tar,dest={d}"]:
            checks += 1
            r = p.run("build", "--arg", "VARIANT=a", "-o", o)
            if r.returncode == 0:
                unsafe += 1
                print(f"  hostile: `-o {o}` was accepted")
    after = snapshot(os.path.dirname(p.dir))
    if before != after:
        unsafe += 1
        print("  hostile: refused exports changed files")
    env = dict(os.environ, KILN_TEST_SECRET=secret)
    for target in ["/proc/self/environ", "/dev/zero", "/etc/shadow", "/etc/passwd", "../../etc/passwd"]:
        with open(p.path("kiln.kdl"), "w") as f:
            f.write(f'kiln 1\ninclude "{target}"\nstage s {{\n}}\n')
        checks += 1
        r = subprocess.run(["timeout", "30", kiln, "check"], cwd=p.dir, capture_output=True, env=env)
        out = r.stderr.decode(errors="replace")
        if r.returncode in (0, 124) or secret in out or "root:" in out:
            unsafe += 1
            print(f"  hostile: include {target} gave {r.returncode}:\n{out[-800:]}")
    os.mkfifo(p.path("fifo.kdl"))
    with open(p.path("kiln.kdl"), "w") as f:
        f.write('kiln 1\ninclude "fifo.kdl"\nstage s {\n}\n')
    checks += 1
    r = subprocess.run(["timeout", "30", kiln, "check"], cwd=p.dir, capture_output=True)
    if r.returncode in (0, 124):
        unsafe += 1
        print("  hostile: a FIFO include hung or was accepted")
    with open(p.path("kiln.kdl"), "w") as f:
        f.write(SPEC)
    outside = os.path.join(work, "outside-secret")
    with open(outside, "w") as f:
        f.write(f"[{secret}\n")
    for name, make in [
        (".dockerignore", lambda t: os.symlink(outside, t)),
        (".kilnignore", lambda t: os.symlink(outside, t)),
        (".kilnignore", lambda t: os.mkfifo(t)),
        (".dockerignore", lambda t: os.symlink("/dev/zero", t)),
    ]:
        t = p.path(os.path.join("ctx", name))
        make(t)
        checks += 1
        r = subprocess.run(["timeout", "60", kiln, "build", "--arg", "VARIANT=a"], cwd=p.dir, capture_output=True)
        out = r.stderr.decode(errors="replace")
        if r.returncode in (0, 124) or secret in out:
            unsafe += 1
            print(f"  hostile: ignore file {name} gave {r.returncode}:\n{out[-800:]}")
        os.remove(t)
    # Archives: a bomb, an escape, a device node.
    archives = {}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        info = tarfile.TarInfo("zeros")
        info.size = 64 << 20

        class Zeros(io.RawIOBase):
            left = 64 << 20

            def readinto(self, b):
                n = min(len(b), self.left)
                b[:n] = bytes(n)
                self.left -= n
                return n
        t.addfile(info, Zeros())
    archives["bomb.tar.gz"] = (buf.getvalue(), "archive bomb")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("../../escape")
        info.size = 1
        t.addfile(info, io.BytesIO(b"x"))
    archives["escape.tar"] = (buf.getvalue(), "outside")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("dev")
        info.type = tarfile.CHRTYPE
        info.devmajor, info.devminor = 1, 3
        t.addfile(info)
    # A device node is kept in the tree (as Docker keeps a root file
    # system's /dev/console) and never made on disk: the build succeeds
    # and the `dir` export holds no device.
    archives["device.tar"] = (buf.getvalue(), None)
    for fname, (data, word) in archives.items():
        with open(p.path(os.path.join("ctx", fname)), "wb") as f:
            f.write(data)
        with open(p.path("kiln.kdl"), "w") as f:
            f.write(f'kiln 1\ncontext ctx path="ctx"\nstage s {{\n    copy "{fname}" "/x/" context=ctx unpack=#true\n}}\nexport {{\n    s to="dist/unpacked"\n}}\n')
        checks += 1
        r = subprocess.run(["timeout", "120", kiln, "build", "--max-unpack-size", "16MiB"], cwd=p.dir, capture_output=True)
        out = r.stderr.decode(errors="replace")
        if word is None:
            made = os.path.join(p.dir, "dist", "unpacked", "x", "dev")
            if r.returncode != 0 or os.path.lexists(made):
                unsafe += 1
                print(f"  hostile: archive {fname} gave {r.returncode}, device made: {os.path.lexists(made)}:\n{out[-800:]}")
        elif r.returncode in (0, 124) or word not in out or "kiln.kdl:4" not in out:
            unsafe += 1
            print(f"  hostile: archive {fname} gave {r.returncode}:\n{out[-800:]}")
        if os.path.lexists(os.path.join(work, "escape")):
            unsafe += 1
            print("  hostile: an archive wrote outside its destination")
    stats["hostile"] = {"checks": checks, "unsafe outcomes": unsafe}
    return unsafe == 0


# Shell attacks on the busybox image: each prints `ESCAPED` if it got
# through. Every one is made so that, done on the host, it would change
# nothing lasting (a knob written with its own value, a mount of nothing).
SHELL_ATTACKS = [
    ("core-pattern", "cat /proc/sys/kernel/core_pattern > /tmp/v; cat /tmp/v > /proc/sys/kernel/core_pattern"),
    ("sysrq", ": > /proc/sysrq-trigger"),
    ("drop-caches", "echo 1 > /proc/sys/vm/drop_caches"),
    ("proc-hostname", "cat /proc/sys/kernel/hostname > /tmp/h; cat /tmp/h > /proc/sys/kernel/hostname"),
    ("mount-tmpfs", "mkdir -p /m && mount -t tmpfs none /m"),
    ("mount-proc", "mkdir -p /m && mount -t proc proc /m"),
    ("mount-sysfs", "mkdir -p /m && mount -t sysfs sysfs /m"),
    ("umount-proc", "umount -l /proc"),
    ("unshare-user", "unshare -r true"),
    ("unshare-mount", "unshare -m true"),
    ("nsenter-init", "nsenter -t 1 -m -u -i -n -p true"),
    ("mknod-disk", "mknod /vda b 254 0 && head -c 1 /vda"),
    ("mknod-mem", "mknod /mem c 1 1 && head -c 1 /mem"),
    ("host-root-map", "grep -q '^ *0 *0 ' /proc/self/uid_map"),
    ("descriptors", "ls /proc/self/fd | grep -qvE '^(0|1|2|3)$'"),
    ("kcore", "test -s /proc/kcore && head -c 1 /proc/kcore | grep -q ."),
    ("sys-write", "echo x > /sys/kernel/uevent_helper"),
    ("hostname", "hostname owned-by-kiln-test && hostname | grep -q owned"),
    ("ptrace-canary", "ls /proc | grep -qx \"$CANARY\""),
]


def host_marks():
    """What a step must never change on the host."""
    def read(p):
        try:
            with open(p) as f:
                return f.read()
        except OSError as e:
            return f"<{e}>"
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(l.split(" ")[4] for l in f)
    return {
        "core_pattern": read("/proc/sys/kernel/core_pattern"),
        "hostname": read("/proc/sys/kernel/hostname"),
        "mounts": mounts,
        # Names other processes make and remove meanwhile (tests beside
        # this one, by the tempfile crate's, Python's and mktemp's patterns) are left
        # out; the attacks write other names (`/tmp/v`, `/tmp/kiln-vda`…).
        "tmp": sorted(n for n in os.listdir("/tmp") if not TEMP_NAME.match(n)),
    }


TEMP_NAME = re.compile(r"^(\.tmp[A-Za-z0-9]{6}|tmp[a-z0-9_]{8}|tmp\.[A-Za-z0-9]{10})$")


def phase_hostile_run(kiln, work, stats, images):
    """Hostile `run` steps; returns whether none got out."""
    if os.geteuid() != 0 or shutil.which("bwrap") is None or not images:
        print("  hostile-run: skipped (needs root, bubblewrap and the test images)")
        stats["hostile-run"] = {"skipped": "needs root, bubblewrap and the test images"}
        return os.environ.get("CI") != "true"
    busybox = f"oci:{images}/busybox:1"
    debian = f"oci:{images}/debian:12"
    canary = subprocess.Popen(["bash", "-c", "exec -a kiln-canary sleep 3600"])
    tried = held = escaped = changed = 0
    root = os.path.join(work, "hostile-run")
    os.makedirs(os.path.join(root, "ctx"), exist_ok=True)
    probe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hostile-probe.c")
    shutil.copy(probe, os.path.join(root, "ctx", "probe.c"))
    steps = []
    for name, attack in SHELL_ATTACKS:
        script = f"if ( {attack} ) >/dev/null 2>&1; then echo '{name} ESCAPED'; else echo '{name} held'; fi >> /report"
        steps.append(f'    run #"{script}"# {{\n        env CANARY="{canary.pid}"\n    }}')
    # Setuid files and devices left in a cache mount.
    steps.append('    run "cp /bin/busybox /c/sh; chmod 4755 /c/sh; mknod /c/vda b 254 0 2>/dev/null; chmod 666 /c/vda 2>/dev/null; true" {\n        mount "type=cache,target=/c,id=hostile-run"\n    }')
    spec = "kiln 1\ncontext src path=\"ctx\"\nstage shell {\n    from image=\"%s\"\n%s\n}\n" % (busybox, "\n".join(steps))
    spec += (
        "stage probe {\n"
        f"    from image=\"{debian}\"\n"
        "    copy \"probe.c\" \"/src/\" context=src\n"
        "    run \"gcc -O1 -o /usr/local/bin/probe /src/probe.c -lpthread\"\n"
        f"    run \"probe {canary.pid} > /report 2>&1\"\n"
        "}\n"
        "export {\n    shell to=\"out/shell\"\n    probe to=\"out/probe\"\n}\n"
    )
    with open(os.path.join(root, "kiln.kdl"), "w") as f:
        f.write(spec)
    os.makedirs(os.path.join(root, ".kiln"), exist_ok=True)
    before = host_marks()
    env = dict(os.environ)
    env.pop("KILN_STATE_DIR", None)
    # Descriptors kiln's caller leaves open must not reach a step.
    r = subprocess.run(
        ["bash", "-c", 'exec 78</ 10</etc/hostname; exec "$0" "$@"', kiln, "build", "--progress", "plain"],
        cwd=root, capture_output=True, env=env, timeout=1800,
    )
    after = host_marks()
    alive = canary.poll() is None
    canary.kill()
    canary.wait()
    if r.returncode != 0:
        raise Failure("hostile-run build failed:\n" + r.stderr.decode(errors="replace")[-3000:])
    for report in ["out/shell/report", "out/probe/report"]:
        with open(os.path.join(root, report)) as f:
            for line in f:
                line = line.strip()
                if line.endswith(" held"):
                    tried += 1
                    held += 1
                elif "ESCAPED" in line or "FAILED" in line:
                    tried += 1
                    escaped += 1
                    print(f"  hostile-run: {line}")
    for k in before:
        if before[k] != after[k]:
            changed += 1
            if isinstance(before[k], list):
                added = sorted(set(after[k]) - set(before[k]))
                gone = sorted(set(before[k]) - set(after[k]))
                print(f"  hostile-run: the host's {k} changed: added {added}, removed {gone}")
            else:
                print(f"  hostile-run: the host's {k} changed: {before[k]!r} to {after[k]!r}")
    if not alive:
        changed += 1
        print("  hostile-run: the canary died")
    # The cache mount: nothing usable by another user, no device.
    cache_files = []
    for dirpath, _, files in os.walk(os.path.join(root, ".kiln", "sandbox")):
        if "/cache/" in dirpath + "/":
            cache_files += [os.path.join(dirpath, f) for f in files]
    tried += 2
    sandbox_mode = os.stat(os.path.join(root, ".kiln", "sandbox")).st_mode & 0o777
    setuid_root = [f for f in cache_files if os.lstat(f).st_uid == 0 and os.lstat(f).st_mode & 0o4000]
    devices = [f for f in cache_files if not os.path.isfile(f) and not os.path.islink(f)]
    if sandbox_mode != 0o700 or setuid_root:
        escaped += 1
        print(f"  hostile-run: cache mounts reachable ({oct(sandbox_mode)}) or setuid-root files: {setuid_root}")
    else:
        held += 1
    if devices:
        escaped += 1
        print(f"  hostile-run: device nodes left in a cache mount: {devices}")
    else:
        held += 1
    # Specs that must be refused, leaving the host as it was: a symlink
    # where a file is mounted (bubblewrap would follow it from the host's
    # root), an export block naming a host path, directories nested
    # without end (a crash would take every other stage with it).
    marker = f"/dev/shm/kiln-attack-{os.getpid()}"
    outside = os.path.join(work, "outside-export")
    refusals = [
        ("link-at-mount-target",
         f'    run "ln -s /oldroot{marker} /victim"\n    run "true" {{\n        mount "type=secret,id=x,target=/victim"\n    }}\n',
         "", lambda: not os.path.lexists(marker)),
        ("export-outside", '    write "/authorized_keys" "attacker"\n',
         f'export {{\n    s to="{outside}"\n}}\n', lambda: not os.path.lexists(outside)),
        ("nested-without-end",
         '    run "mkdir /deep && cd /deep && i=0; while [ $i -lt 3000 ]; do mkdir d && cd d; i=$((i+1)); done"\n',
         "", lambda: True),
    ]
    for name, body, exports, host_clean in refusals:
        d = os.path.join(root, "refuse-" + name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "x"), "w") as f:
            f.write("secret")
        with open(os.path.join(d, "kiln.kdl"), "w") as f:
            f.write(f'kiln 1\nstage s {{\n    from image="{busybox}"\n{body}}}\n{exports}')
        r = subprocess.run([kiln, "build", "--secret", "id=x,src=x"], cwd=d, capture_output=True, env=env, timeout=600)
        tried += 1
        # Refused: a clean error (not a crash, not a success), nothing on the host.
        if r.returncode in (1, 2, 3) and host_clean():
            held += 1
        else:
            escaped += 1
            print(f"  hostile-run: {name} gave {r.returncode}:\n{r.stderr.decode(errors='replace')[-800:]}")
    stats["hostile-run"] = {
        "hostile attempts": tried,
        "held": held,
        "got out": escaped,
        "host changes": changed,
    }
    return escaped == 0 and changed == 0 and tried >= 63


def report(stats, path, args):
    lines = ["# Reliability results", "",
             f"Produced by `tests/reliability/attack.py --rounds {args.rounds}` on "
             f"{time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores). The bars: 0 wrong "
             "exports, 0 mixed exports, 0 failed concurrent builds, 0 unsafe outcomes.", ""]
    if "kill" in stats:
        lines += ["## kill -9 at random moments", "", "| what | count |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in stats["kill"].items()]
        lines.append("")
    if "damage" in stats:
        lines += ["## Damaged state files", "",
                  "Each kind of file damaged five ways (bit flip, truncation, removal, "
                  "garbage, another object's bytes), then built as is, without the "
                  "exports, after `kiln gc`, and with `--no-cache`. *Healed*: every build "
                  "gave the reference exports. *Stopped*: a build stopped with a clear "
                  "error and left the exports alone. *Wrong*: a wrong byte was exported.", "",
                  "| state file | healed | stopped | wrong | not applicable |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {t} | {h} | {s} | {w} | {n} |" for t, h, s, w, n in stats["damage"]]
        lines.append("")
    if "concurrent" in stats:
        lines += ["## Concurrent builds and gc on one empty store", "",
                  "Each round: four builds and a `kiln gc` started at once.", "",
                  "| what | count |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in stats["concurrent"].items()]
        lines.append("")
    if "shared" in stats:
        lines += ["## Two projects on one state directory", "",
                  "Each round: one project's build killed at a random moment while the other's "
                  "builds (and, every other round, `kiln gc` runs), the killed one built again, "
                  "then both building the same variant at once on a new shared state directory.",
                  "", "| what | count |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in stats["shared"].items()]
        lines.append("")
    if "hostile" in stats:
        lines += ["## Hostile input", "",
                  "Destinations that would destroy the project (`-o`, dir and tar), includes "
                  "of host files and a FIFO, ignore files leading outside the context or to a "
                  "FIFO or a device, archives with a bomb, an escape and a device node (kept in "
                  "the tree, never made on disk).", "",
                  "| what | count |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in stats["hostile"].items()]
        lines.append("")
    if "hostile-run" in stats:
        lines += ["## Hostile `run` steps", "",
                  "As root, on the busybox and Debian test images: shell attacks (kernel knobs, "
                  "mounts, namespaces, device nodes, the host's ids, planted descriptors, a host "
                  "process), setuid files and devices left in a cache mount, and a compiled probe "
                  "(`hostile-probe.c`) of every system call Docker's seccomp profile refuses. "
                  "*Held*: the sandbox stopped it. *Host changes*: the host's kernel knobs, "
                  "hostname, mounts, /tmp or a canary process changed.", "",
                  "| what | count |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in stats["hostile-run"].items()]
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--results")
    ap.add_argument("--phases", default="kill,damage,concurrent,shared,hostile,hostile-run")
    ap.add_argument("--images", default=os.environ.get("KILN_TEST_IMAGES", "/var/cache/kiln-test-images"))
    args = ap.parse_args()
    if args.quick:
        args.rounds = 4
    kiln = os.path.abspath(args.kiln)
    ok = True
    stats = {}
    with tempfile.TemporaryDirectory(prefix="kiln-attack-") as work:
        # A project without a state directory of its own would use the
        # machine's: here, one inside the work directory.
        os.environ["XDG_CACHE_HOME"] = os.path.join(work, "machine-cache")
        phases = args.phases.split(",")
        if "kill" in phases:
            ok &= phase_kill(kiln, work, args.rounds, stats)
            print("kill:", stats["kill"])
        if "damage" in phases:
            ok &= phase_damage(kiln, work, 1 if args.quick else max(1, args.rounds // 12), stats, args.quick)
            print("damage:", stats["damage"])
        if "concurrent" in phases:
            ok &= phase_concurrent(kiln, work, 2 if args.quick else max(2, args.rounds // 4), stats)
            print("concurrent:", stats["concurrent"])
        if "shared" in phases:
            ok &= phase_shared(kiln, work, 2 if args.quick else max(2, args.rounds // 2), stats)
            print("shared:", stats["shared"])
        if "hostile" in phases:
            ok &= phase_hostile(kiln, work, stats)
            print("hostile:", stats["hostile"])
        if "hostile-run" in phases:
            images = args.images if os.path.isdir(os.path.join(args.images, "debian")) else None
            ok &= phase_hostile_run(kiln, work, stats, images)
            print("hostile-run:", stats["hostile-run"])
    if args.results:
        report(stats, args.results, args)
    print("all bars met" if ok else "SOME BARS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failure as e:
        print(f"setup failed: {e}")
        sys.exit(2)
