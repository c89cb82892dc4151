#!/usr/bin/env bash
# The data-layer benchmark on the GPU machine (device tool; see ../shared/DEVICE.md).
# Carry .whl (mujoco, gymnasium, zarr, numcodecs, ... for Python 3.12) and .gl (EGL debs).
# Writes $OUT/gpu.txt, $OUT/data_w2.json (2 loader workers, as on the CPU VM) and $OUT/data_w8.json.
set -u
source benchmarks/device_setup.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"; nproc >> "$OUT/gpu.txt"
cd /tmp  # import the installed package, not the source folders
t0=$(date +%s)
python3 -m embodied bench data --data /tmp/bench.zarr --collect-workers 12 --workers 2 --device cuda --json > "$OUT/data_w2.json" 2> "$OUT/data_w2.err"
echo "w2 rc=$? $(( $(date +%s) - t0 )) s" >> "$OUT/gpu.txt"
python3 -m embodied bench data --data /tmp/bench.zarr --workers 8 --device cuda --json > "$OUT/data_w8.json" 2> "$OUT/data_w8.err"
echo "w8 rc=$? $(( $(date +%s) - t0 )) s" >> "$OUT/gpu.txt"
tail -3 "$OUT"/*.err
cat "$OUT/gpu.txt"
