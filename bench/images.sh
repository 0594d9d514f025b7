#!/usr/bin/env bash
# Images and `run` steps, side by side with the peers (not tests; nothing
# here asserts). Needs root, and the tools scripts/test installs, plus
# hyperfine and pigz.
#
#   bench/images.sh [run|dockerfile|pull|export]...     default: all four
#
# run         kiln's cost for one `run` step (the command is `true`) over a
#             base image of 10,000 files and over busybox, against a bare
#             `mount -t overlay` + `bwrap` + `umount` of the same tree.
# dockerfile  a 10-`RUN` Dockerfile on the Debian test image: `buildah bud
#             --layers` (vfs, chroot) against `kiln build`, cold (empty
#             storage and state) and warm (nothing changed).
# pull        first use of the Debian image from a registry on loopback:
#             kiln (pull and unpack into its store) against `skopeo copy`
#             + `umoci unpack`.
# export      an OCI image export of a 1 GiB, 10,000-file stage (gzip and
#             zstd) against `tar c | pigz | sha256sum` of the same tree,
#             and the same export again with nothing changed.
#
# Each section's results go to bench/results/images-SECTION.md, and all of
# them to bench/results/images.md; bench/RESULTS.md has the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
sections=("${@:-run dockerfile pull export}")
read -r -a sections <<<"${sections[*]}"
[ "$(id -u)" = 0 ] || { echo "bench/images.sh needs root (overlayfs, bwrap as root)"; exit 1; }
for tool in hyperfine bwrap umoci skopeo buildah docker-registry python3 pigz; do
    command -v "$tool" >/dev/null || { echo "bench needs $tool"; exit 1; }
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/kiln-target}
cargo build --release --quiet
kiln=$CARGO_TARGET_DIR/release/kiln
images=$(scripts/test-images)
work=$root/bench/work/images
mkdir -p "$work" "$root/bench/results"
results=$root/bench/results

mean_ms() { python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['results'][0]['mean']*1000, 1))" "$1"; }

run_section() {
    # A base image of 10,000 small files on busybox.
    local big=$work/big
    if [ ! -d "$big/layout" ]; then
        rm -rf "$big" && mkdir -p "$big"
        cp -a "$images/busybox" "$big/layout"
        umoci unpack --image "$big/layout:1" "$big/bundle" >/dev/null
        python3 - "$big/bundle/rootfs/data" <<'PY'
import os, sys
d = sys.argv[1]
for i in range(100):
    os.makedirs(f"{d}/d{i}", exist_ok=True)
    for j in range(100):
        with open(f"{d}/d{i}/f{j}.txt", "w") as f:
            f.write(f"file {i}/{j}\n" * 4)
PY
        umoci repack --image "$big/layout:1" "$big/bundle" >/dev/null
    fi
    echo "## One run step: kiln against a bare overlay + bwrap" >>"$out"
    echo >>"$out"
    echo "| base image | files | kiln build, one \`run true\` | bare mount + bwrap + umount | ratio |" >>"$out"
    echo "| --- | --- | --- | --- | --- |" >>"$out"
    for name in big busybox; do
        local layout dir=$work/run-$name
        if [ $name = big ]; then layout=$big/layout; else layout=$images/busybox; fi
        rm -rf "$dir" && mkdir -p "$dir/p/.kiln"
        cat >"$dir/p/kiln.kdl" <<EOF
kiln 1
stage a {
    from image="oci:$layout:1"
    run "true #0"
}
EOF
        # The image's tree goes to disk once; what is measured is a step.
        "$kiln" build "$dir/p" --progress plain >/dev/null 2>&1
        hyperfine --warmup 2 --runs 20 --export-json "$dir/kiln.json" \
            --prepare "sed -i \"s/#[0-9]*\\\"/#\$(date +%s%N)\\\"/\" $dir/p/kiln.kdl" \
            "$kiln build $dir/p --progress plain" >/dev/null
        # The same tree, for the bare mount: unpacked by umoci.
        rm -rf "$dir/bundle" && umoci unpack --image "$layout:1" "$dir/bundle" >/dev/null
        cat >"$dir/bare.sh" <<EOF
#!/bin/sh
set -e
d=$dir/bare
rm -rf \$d && mkdir -p \$d/u \$d/w \$d/m
mount -t overlay overlay -o lowerdir=$dir/bundle/rootfs,upperdir=\$d/u,workdir=\$d/w \$d/m
bwrap --bind \$d/m / --proc /proc --dev /dev --unshare-all --die-with-parent --clearenv --setenv PATH /bin true
umount \$d/m
EOF
        chmod +x "$dir/bare.sh"
        hyperfine --warmup 2 --runs 20 --export-json "$dir/bare.json" "$dir/bare.sh" >/dev/null
        local k b files
        k=$(mean_ms "$dir/kiln.json")
        b=$(mean_ms "$dir/bare.json")
        files=$(find "$dir/bundle/rootfs" | wc -l)
        echo "| $name | $files | $k ms | $b ms | $(python3 -c "print(f'{$k/$b:.2f}×')") |" >>"$out"
    done
    echo >>"$out"
}

dockerfile_section() {
    local dir=$work/dockerfile
    rm -rf "$dir" && mkdir -p "$dir/ctx"
    {
        echo "FROM oci:$images/debian:12"
        for i in $(seq 1 10); do echo "RUN echo step $i > /step-$i"; done
    } >"$dir/ctx/Dockerfile"
    local bud="buildah --storage-driver vfs --root $dir/buildah/root --runroot $dir/buildah/run bud --layers --isolation chroot --quiet -t bench -f Dockerfile $dir/ctx"
    local kb="$kiln build -f $dir/ctx/Dockerfile --state-dir $dir/kiln --progress plain $dir/ctx"
    hyperfine --runs 2 --export-json "$dir/buildah-cold.json" \
        --prepare "rm -rf $dir/buildah; sync" "$bud" >/dev/null
    hyperfine --runs 3 --export-json "$dir/buildah-warm.json" "$bud" >/dev/null
    hyperfine --runs 5 --export-json "$dir/kiln-cold.json" \
        --prepare "rm -rf $dir/kiln; sync" "$kb" >/dev/null
    hyperfine --warmup 2 --runs 20 --export-json "$dir/kiln-warm.json" "$kb" >/dev/null
    local bc bw kc kw
    bc=$(mean_ms "$dir/buildah-cold.json")
    bw=$(mean_ms "$dir/buildah-warm.json")
    kc=$(mean_ms "$dir/kiln-cold.json")
    kw=$(mean_ms "$dir/kiln-warm.json")
    {
        echo "## A 10-RUN Dockerfile on Debian: kiln against buildah bud --layers"
        echo
        echo "| build | buildah | kiln | kiln is |"
        echo "| --- | --- | --- | --- |"
        echo "| cold | $bc ms | $kc ms | $(python3 -c "print(f'{$bc/$kc:.0f}× faster')") |"
        echo "| warm (nothing changed) | $bw ms | $kw ms | $(python3 -c "print(f'{$bw/$kw:.0f}× faster')") |"
        echo
    } >>"$out"
}

pull_section() {
    local dir=$work/pull
    rm -rf "$dir" && mkdir -p "$dir/p/.kiln"
    local port
    port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
    cat >"$dir/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $dir/registry
http:
  addr: 127.0.0.1:$port
EOF
    docker-registry serve "$dir/registry.yml" >/dev/null 2>&1 &
    local reg=$!
    trap 'kill $reg 2>/dev/null || true' RETURN
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    skopeo copy --quiet --dest-tls-verify=false "oci:$images/debian:12" "docker://127.0.0.1:$port/debian:12"
    printf 'kiln 1\nstage base {\n    from image="127.0.0.1:%s/debian:12"\n}\n' "$port" >"$dir/p/kiln.kdl"
    hyperfine --runs 3 --export-json "$dir/kiln.json" \
        --prepare "rm -rf $dir/p/.kiln $dir/p/kiln.lock; mkdir $dir/p/.kiln; sync" \
        "$kiln build $dir/p --progress plain" >/dev/null
    hyperfine --runs 3 --export-json "$dir/peer.json" \
        --prepare "rm -rf $dir/oci $dir/bundle; sync" \
        "skopeo copy --quiet --src-tls-verify=false docker://127.0.0.1:$port/debian:12 oci:$dir/oci:12 && umoci unpack --image $dir/oci:12 $dir/bundle" >/dev/null
    local k s
    k=$(mean_ms "$dir/kiln.json")
    s=$(mean_ms "$dir/peer.json")
    {
        echo "## First use of a pulled image (Debian with gcc, from a registry on loopback)"
        echo
        echo "| kiln (pull + unpack into the store) | skopeo copy + umoci unpack | ratio |"
        echo "| --- | --- | --- |"
        echo "| $k ms | $s ms | $(python3 -c "print(f'{$k/$s:.2f}×')") |"
        echo
    } >>"$out"
}

export_section() {
    local dir=$work/export
    if [ ! -d "$dir/p/data" ]; then
        rm -rf "$dir" && mkdir -p "$dir/p/data" "$dir/p/.kiln"
        # 1 GiB in 10,000 files: 100 of 8 MiB and 9,900 of 20 KiB, half
        # text-like (compressible), half random.
        python3 - "$dir/p/data" <<'PY'
import os, random, sys
d = sys.argv[1]
rng = random.Random(7)
letters = "abcdefghijklmnopqrstuvwxyz"
words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
def text(n):
    out, size = [], 0
    while size < n:
        w = rng.choice(words) + (" " if rng.random() < 0.9 else "\n")
        out.append(w)
        size += len(w)
    return "".join(out)[:n].encode()
os.makedirs(f"{d}/big", exist_ok=True)
for i in range(100):
    data = text(8 << 20) if i % 2 else rng.randbytes(8 << 20)
    open(f"{d}/big/f{i}", "wb").write(data)
for i in range(9900):
    sub = f"{d}/small/d{i // 100}"
    os.makedirs(sub, exist_ok=True)
    data = text(20 << 10) if i % 2 else rng.randbytes(20 << 10)
    open(f"{sub}/f{i}", "wb").write(data)
PY
    fi
    local p=$dir/p
    for c in gzip zstd; do
        cat >"$p/kiln-$c.kdl" <<EOF
kiln 1
stage s {
    copy "data/" "/data/"
}
export {
    s to="img-$c" format="oci" compression="$c"
}
EOF
    done
    # The stage is built once; what is measured is the export.
    "$kiln" build -f "$p/kiln-gzip.kdl" "$p" --progress plain >/dev/null 2>&1
    for c in gzip zstd; do
        hyperfine --runs 3 --export-json "$dir/kiln-$c.json" \
            --prepare "rm -rf $p/img-$c $p/.kiln/layers; sync" \
            "$kiln build -f $p/kiln-$c.kdl $p --progress plain" >/dev/null
    done
    hyperfine --runs 3 --export-json "$dir/again.json" \
        --prepare "rm -rf $p/img-gzip; sync" \
        "$kiln build -f $p/kiln-gzip.kdl $p --progress plain" >/dev/null
    hyperfine --warmup 1 --runs 10 --export-json "$dir/intact.json" \
        "$kiln build -f $p/kiln-gzip.kdl $p --progress plain" >/dev/null
    hyperfine --runs 3 --export-json "$dir/peer.json" \
        "tar -C $p -c data | pigz | sha256sum" >/dev/null
    local g z a i t
    g=$(mean_ms "$dir/kiln-gzip.json")
    z=$(mean_ms "$dir/kiln-zstd.json")
    a=$(mean_ms "$dir/again.json")
    i=$(mean_ms "$dir/intact.json")
    t=$(mean_ms "$dir/peer.json")
    {
        echo "## OCI image export of a 1 GiB, 10,000-file stage"
        echo
        echo "| export | time | ratio |"
        echo "| --- | --- | --- |"
        echo "| tar c, pigz, sha256sum of the same files | $t ms | 1.00× |"
        echo "| kiln, gzip layer | $g ms | $(python3 -c "print(f'{$g/$t:.2f}×')") |"
        echo "| kiln, zstd layer | $z ms | $(python3 -c "print(f'{$z/$t:.2f}×')") |"
        echo "| kiln, the same image to a new destination (layer cached, 1 GiB written) | $a ms | $(python3 -c "print(f'{$g/$a:.0f}× faster than the first')") |"
        echo "| kiln, the same export again, destination intact | $i ms | $(python3 -c "print(f'{$g/$i:.0f}× faster than the first')") |"
        echo
    } >>"$out"
}

for s in "${sections[@]}"; do
    out=$results/images-$s.md
    : >"$out"
    "${s}_section"
done
{
    echo "# Images and run steps ($(date -u +%Y-%m-%d), $(nproc) cores)"
    echo
    for s in run dockerfile pull export; do
        if [ -f "$results/images-$s.md" ]; then cat "$results/images-$s.md"; fi
    done
} >"$results/images.md"
cat "$results/images.md"
