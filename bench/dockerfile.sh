#!/usr/bin/env bash
# Dockerfile benchmarks, side by side with buildah (not tests; nothing here
# asserts).
#
#   bench/dockerfile.sh [STAGES]      default: 50
#
# 1. A generated FROM-scratch multistage Dockerfile of STAGES stages: each
#    stage copies its own input directory (20 files) and the previous
#    stage's data; a final stage copies from every stage. Built by
#    `buildah bud --layers` (vfs storage, chroot isolation: the setup that
#    works without a daemon) and by `kiln build -f Dockerfile`, both
#    exporting the final stage to a directory:
#    - cold: empty storage / state directory;
#    - warm: the same build again, nothing changed.
# 2. Import throughput: `kiln import` on a Dockerfile of 20,000 instructions.
#
# Results go to bench/results/dockerfile.md (and .json from hyperfine).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
n=${1:-50}
for tool in buildah hyperfine python3; do
    command -v "$tool" >/dev/null || { echo "bench needs $tool (apt-get install buildah hyperfine)"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "buildah bud needs root here"; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/kiln-target}
cargo build --release --quiet
kiln=$CARGO_TARGET_DIR/release/kiln
work=$root/bench/work/dockerfile
rm -rf "$work"
mkdir -p "$work/ctx" "$root/bench/results"

python3 - "$work/ctx" "$n" <<'PY'
import sys, os
d, n = sys.argv[1], int(sys.argv[2])
lines = []
for i in range(n):
    os.makedirs(f"{d}/inputs/s{i}", exist_ok=True)
    for j in range(20):
        with open(f"{d}/inputs/s{i}/f{j}.txt", "w") as f:
            f.write(f"stage {i} file {j}\n" * 64)
    lines.append(f"FROM scratch AS s{i}")
    lines.append(f"COPY inputs/s{i}/ /data/")
    if i:
        lines.append(f"COPY --from=s{i-1} /data/f0.txt /prev/")
    lines.append("")
lines.append("FROM scratch")
for i in range(n):
    lines.append(f"COPY --from=s{i} /data/ /all/s{i}/")
open(f"{d}/Dockerfile", "w").write("\n".join(lines) + "\n")
PY

bstore=$work/buildah
kstate=$work/kiln-state
bud="buildah --storage-driver vfs --root $bstore/root --runroot $bstore/run bud --layers --isolation chroot --quiet -f Dockerfile -o type=local,dest=$work/out-buildah ."
kb="$kiln build -f Dockerfile --progress plain --state-dir $kstate -o $work/out-kiln"

cd "$work/ctx"
echo "== cold ($n stages)"
hyperfine --style basic --runs "${BUILDAH_RUNS:-3}" \
    --prepare "rm -rf $bstore $work/out-buildah; sync" \
    --export-json "$root/bench/results/dockerfile-buildah-cold.json" -n buildah-cold "$bud"
hyperfine --style basic --runs 10 \
    --prepare "rm -rf $kstate $work/out-kiln; sync" \
    --export-json "$root/bench/results/dockerfile-kiln-cold.json" -n kiln-cold "$kb"
echo "== warm"
$bud >/dev/null 2>&1
hyperfine --style basic --runs "${BUILDAH_RUNS:-3}" \
    --export-json "$root/bench/results/dockerfile-buildah-warm.json" -n buildah-warm "$bud"
# Inputs older than two seconds, so the stat index vouches for them.
sleep 3
$kb >/dev/null 2>&1
hyperfine --style basic --warmup 2 --runs 20 \
    --export-json "$root/bench/results/dockerfile-kiln-warm.json" -n kiln-warm "$kb"
cd "$root"

echo "== import throughput"
big=$work/big
mkdir -p "$big"
python3 - "$big/Dockerfile" <<'PY'
import sys
out = ["ARG VERSION=1.0"]
i = 0
while len(out) < 20000:
    out += [f"FROM scratch AS s{i}", "ARG VERSION", f"ENV STAGE={i} V=${{VERSION}}",
            f"WORKDIR /app/s{i}", f"COPY src/ ./", f"COPY --from=s{max(i-1,0)} /app /prev" if i else "LABEL first=yes",
            f"RUN echo building $STAGE && make -j2 \\\n    install", f"LABEL stage=s{i}",
            "EXPOSE 8080", f"CMD [\"/app/s{i}/run\"]"]
    i += 1
open(sys.argv[1], "w").write("\n".join(out) + "\n")
PY
hyperfine --style basic --warmup 2 --runs 10 \
    --export-json "$root/bench/results/dockerfile-import.json" -n import \
    "$kiln import -q $big/Dockerfile"

python3 - "$root/bench/results" "$n" "$big/Dockerfile" <<'PY'
import json, os, sys
d, n, big = sys.argv[1], sys.argv[2], sys.argv[3]
def mean(name):
    return json.load(open(f"{d}/dockerfile-{name}.json"))["results"][0]["mean"]
bc, kc, bw, kw = mean("buildah-cold"), mean("kiln-cold"), mean("buildah-warm"), mean("kiln-warm")
imp = mean("import")
size = os.path.getsize(big)
lines = sum(1 for _ in open(big))
rows = [
    "| build | buildah | kiln | kiln is |",
    "| --- | --- | --- | --- |",
    f"| cold, {n} stages | {bc:.2f} s | {kc*1000:.1f} ms | {bc/kc:.0f}× faster |",
    f"| warm, {n} stages | {bw:.2f} s | {kw*1000:.1f} ms | {bw/kw:.0f}× faster |",
    "",
    "| import | time | throughput |",
    "| --- | --- | --- |",
    f"| {lines} lines, {size/1e6:.2f} MB | {imp*1000:.1f} ms | {lines/imp/1e3:.0f}k lines/s, {size/imp/1e6:.1f} MB/s |",
]
open(f"{d}/dockerfile.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
