#!/usr/bin/env bash
# The data-layer benchmark on the GPU machine (device tool; see ../shared/DEVICE.md).
# Carry .whl (mujoco, gymnasium, zarr, numcodecs, ... for Python 3.12) and .gl (EGL debs).
# Writes $OUT/gpu.txt, $OUT/data_w2.json (2 loader workers, as on the CPU VM) and $OUT/data_w8.json.
set -u
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/emb . || exit 1
export PYTHONPATH=/tmp/emb:/tmp/site MUJOCO_GL=egl HF_HUB_OFFLINE=1
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"; nproc >> "$OUT/gpu.txt"
cd /tmp  # import the installed package, not the source folders
t0=$(date +%s)
python3 -m embodied bench data --data /tmp/bench.zarr --collect-workers 12 --workers 2 --device cuda --json > "$OUT/data_w2.json" 2> "$OUT/data_w2.err"
echo "w2 rc=$? $(( $(date +%s) - t0 )) s" >> "$OUT/gpu.txt"
python3 -m embodied bench data --data /tmp/bench.zarr --workers 8 --device cuda --json > "$OUT/data_w8.json" 2> "$OUT/data_w8.err"
echo "w8 rc=$? $(( $(date +%s) - t0 )) s" >> "$OUT/gpu.txt"
tail -3 "$OUT"/*.err
cat "$OUT/gpu.txt"
