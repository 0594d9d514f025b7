#!/usr/bin/env python3
"""`kiln query rdeps` and `kiln affected` on a generated workspace, side
by side with `git diff --name-only` on the same repository (not a test;
nothing here asserts).

A git repository of N packages (built once, as a workspace in use is) (default 1000): each a folder `pkgs/pI`
with a spec `pkg.kdl` (included from the root spec) declaring a library
stage that copies the package's sources, built on the one before it
every tenth package, and a test stage that copies from the library. One
source file is changed in a commit, and then:

  git diff     git diff --name-only HEAD~1
  rdeps        kiln query rdeps p500 (every stage that needs one library)
  affected     kiln affected --since HEAD~1

Median of `--runs` each, after one warm-up run.

    bench/query.py [--packages N] [--runs N]

Writes bench/results/query.md.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "bench", "work", "query")


def kiln_bin():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    subprocess.run(["cargo", "build", "--release", "-q"], cwd=ROOT, check=True)
    return os.path.join(target, "release", "kiln")


def git(*args):
    env = dict(os.environ, GIT_AUTHOR_NAME="b", GIT_AUTHOR_EMAIL="b@example.com",
               GIT_COMMITTER_NAME="b", GIT_COMMITTER_EMAIL="b@example.com")
    subprocess.run(["git", *args], cwd=WORK, check=True, env=env,
                   stdout=subprocess.DEVNULL)


def generate(n):
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    includes = []
    for i in range(n):
        d = os.path.join(WORK, "pkgs", f"p{i}")
        os.makedirs(os.path.join(d, "src"))
        for f in range(3):
            with open(os.path.join(d, "src", f"f{f}.c"), "w") as fh:
                fh.write(f"int p{i}_f{f}(void) {{ return {i + f}; }}\n")
        base = f"    from p{i - 1 - (i - 1) % 10}\n" if i >= 10 and i % 10 else ""
        with open(os.path.join(d, "pkg.kdl"), "w") as fh:
            fh.write(f'kiln 1\nstage p{i} {{\n{base}    copy "pkgs/p{i}/src/" "/src/p{i}/"\n}}\n'
                     f'stage test-p{i} {{\n    copy from=p{i} "/src/p{i}" "/t"\n}}\n')
        includes.append(f'include "pkgs/p{i}/pkg.kdl"')
    with open(os.path.join(WORK, "kiln.kdl"), "w") as fh:
        fh.write("kiln 1\n" + "\n".join(includes) + "\n")
    with open(os.path.join(WORK, ".kilnignore"), "w") as fh:
        fh.write(".git\n.state\n.cache-home\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "one")
    with open(os.path.join(WORK, "pkgs", "p500", "src", "f1.c"), "a") as fh:
        fh.write("/* changed */\n")
    git("commit", "-qam", "two")


def median_ms(cmd, runs, env):
    subprocess.run(cmd, cwd=WORK, env=env, check=True, stdout=subprocess.DEVNULL)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        out = subprocess.run(cmd, cwd=WORK, env=env, check=True, capture_output=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out.stdout.decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--packages", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=10)
    a = ap.parse_args()
    kiln = kiln_bin()
    generate(a.packages)
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(WORK, ".cache-home"),
               KILN_STATE_DIR=os.path.join(WORK, ".state"))
    # As in a workspace that builds: the state directory is there (its
    # parse cache answers for the spec files).
    subprocess.run([kiln, "build", "--target", "test-*"], cwd=WORK, env=env, check=True,
                   capture_output=True)
    diff, diff_out = median_ms(["git", "diff", "--name-only", "HEAD~1"], a.runs, env)
    rdeps, rdeps_out = median_ms([kiln, "query", "rdeps", "p500"], a.runs, env)
    aff, aff_out = median_ms([kiln, "affected", "--since", "HEAD~1"], a.runs, env)
    rows = [
        ("git diff --name-only HEAD~1", diff, len(diff_out.split())),
        ("kiln query rdeps p500", rdeps, len(rdeps_out.split())),
        ("kiln affected --since HEAD~1", aff, len(aff_out.split())),
    ]
    lines = [
        f"## Queries on a workspace of {a.packages} packages ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores)",
        "",
        f"{a.packages} included spec files, {2 * a.packages} stages, {3 * a.packages} source files;"
        " one file changed in the last commit. Median of"
        f" {a.runs} runs after one warm-up.",
        "",
        "| command | time | lines out | against git diff |",
        "| --- | --- | --- | --- |",
    ]
    for name, ms, n in rows:
        lines.append(f"| `{name}` | {ms:.1f} ms | {n} | {ms / diff:.1f}× |")
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "query.md"), "w") as fh:
        fh.write(text)
    print(text)


if __name__ == "__main__":
    main()
