#!/usr/bin/env bash
# Plugin step benchmarks (not tests; nothing here asserts).
#
#   bench/plugins.sh [STEPS]      default: 1000
#
# 1. Per-step overhead: STEPS stages of one `wasm noop` step (a module that
#    does nothing), against the same stages with one `env` step, built
#    with --no-cache (every step runs; compiled modules stay cached) at -j 1.
#    The difference per step is what a warm plugin step costs kiln. Beside
#    it: a native fork+exec of /bin/true, and one step whose module is
#    compiled afresh (an empty module cache).
# 2. Throughput: STEPS plugin steps at -j 1 and -j 2, empty and with about
#    a millisecond of guest work each.
#
# Results go to bench/results/plugins.md and .json.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
n=${1:-1000}
command -v hyperfine >/dev/null || { echo "bench needs hyperfine (apt-get install hyperfine)"; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/kiln-target}
cargo build --release --quiet
kiln=$CARGO_TARGET_DIR/release/kiln
work=$root/bench/work/plugins
rm -rf "$work"
mkdir -p "$work" "$root/bench/results"
noop=$root/plugins/dist/noop.wasm

python3 - "$work" "$n" "$noop" <<'PY'
import sys
d, n, noop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
targets = " ".join(f"--target s{i}" for i in range(n))
open(f"{d}/targets", "w").write(targets)
w = ["kiln 1", f'plugin noop path="{noop}"']
busy = ["kiln 1", f'plugin noop path="{noop}"']
b = ["kiln 1"]
for i in range(n):
    w.append(f'stage s{i} {{\n    wasm noop\n}}')
    # About a millisecond of guest work each.
    busy.append(f'stage s{i} {{\n    wasm noop "1000000"\n}}')
    # A builtin step that changes only the config: like `wasm noop`, it
    # leaves the tree as it is, so the difference is the plugin's cost.
    b.append(f'stage s{i} {{\n    env I "{i}"\n}}')
open(f"{d}/wasm.kdl", "w").write("\n".join(w) + "\n")
open(f"{d}/busy.kdl", "w").write("\n".join(busy) + "\n")
open(f"{d}/builtin.kdl", "w").write("\n".join(b) + "\n")
open(f"{d}/one.kdl", "w").write("\n".join(["kiln 1", f'plugin noop path="{noop}"', 'stage s {\n    wasm noop\n}']) + "\n")
PY
targets=$(cat "$work/targets")
cd "$work"
state=$work/state
# Warm the module cache.
$kiln build -f wasm.kdl --state-dir "$state" --target s0 >/dev/null 2>&1
hyperfine --style basic --warmup 1 --runs 10 --export-json "$root/bench/results/plugins-steps.json" \
    -n "wasm-j1" "$kiln build -f wasm.kdl --no-cache -j 1 --progress plain --state-dir $state $targets" \
    -n "builtin-j1" "$kiln build -f builtin.kdl --no-cache -j 1 --progress plain --state-dir $state $targets" \
    -n "wasm-j2" "$kiln build -f wasm.kdl --no-cache -j 2 --progress plain --state-dir $state $targets" \
    -n "busy-j1" "$kiln build -f busy.kdl --no-cache -j 1 --progress plain --state-dir $state $targets" \
    -n "busy-j2" "$kiln build -f busy.kdl --no-cache -j 2 --progress plain --state-dir $state $targets" \
    -n "native-spawns" "bash -c 'for i in \$(seq $n); do /bin/true; done'"
# One step: the module compiled afresh (empty module cache) or not.
# Compiled modules are kept per machine (KILN_CACHE_DIR), so each case
# gets a cache directory of its own.
KILN_CACHE_DIR=$work/warm-cache $kiln build -f one.kdl --progress plain --state-dir "$work/warm" >/dev/null 2>&1
hyperfine --style basic --runs 10 --export-json "$root/bench/results/plugins-compile.json" \
    --prepare "rm -rf $work/cold $work/cold-cache" \
    -n "one-step-cold-compile" "env KILN_CACHE_DIR=$work/cold-cache $kiln build -f one.kdl --no-cache --progress plain --state-dir $work/cold" \
    -n "one-step-warm" "env KILN_CACHE_DIR=$work/warm-cache $kiln build -f one.kdl --no-cache --progress plain --state-dir $work/warm"
cd "$root"

python3 - "$root/bench/results" "$n" <<'PY'
import json, sys
d, n = sys.argv[1], int(sys.argv[2])
r = {x["command"]: x["mean"] for x in json.load(open(f"{d}/plugins-steps.json"))["results"]}
c = {x["command"]: x["mean"] for x in json.load(open(f"{d}/plugins-compile.json"))["results"]}
per_step = (r["wasm-j1"] - r["builtin-j1"]) / n
native = r["native-spawns"] / n
rows = [
    "| measure | time | ratio |",
    "| --- | --- | --- |",
    f"| plugin step, warm module, kiln's overhead (wasm − builtin, per step, -j 1) | {per_step*1e6:.0f} µs | {per_step/native:.3f}× a native spawn |",
    f"| native fork+exec of /bin/true (per spawn) | {native*1e6:.0f} µs | 1.000× |",
    f"| one plugin step, module compiled afresh (whole build) | {c['one-step-cold-compile']*1000:.1f} ms | {c['one-step-cold-compile']/c['one-step-warm']:.1f}× the warm build |",
    f"| one plugin step, module cached (whole build) | {c['one-step-warm']*1000:.1f} ms | 1.0× |",
    f"| {n} empty plugin steps, -j 1 | {r['wasm-j1']*1000:.0f} ms | 1.00× |",
    f"| {n} empty plugin steps, -j 2 | {r['wasm-j2']*1000:.0f} ms | {r['wasm-j1']/r['wasm-j2']:.2f}× faster than -j 1 |",
    f"| {n} plugin steps of about 1 ms of guest work, -j 1 | {r['busy-j1']*1000:.0f} ms | 1.00× |",
    f"| {n} plugin steps of about 1 ms of guest work, -j 2 | {r['busy-j2']*1000:.0f} ms | {r['busy-j1']/r['busy-j2']:.2f}× faster than -j 1 |",
]
open(f"{d}/plugins.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
