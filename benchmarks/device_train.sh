#!/usr/bin/env bash
# Training speed on the GPU machine (device tool; see ../shared/DEVICE.md): base and large on 64x64 pixels
# read from a Zarr store, and the peer plain GPT (../shared/bench/plain_gpt_mfu.py, carried as .peer/) at the
# same width, depth, sequence and batch; then the gpu-marked tests. Carry .whl, .gl and .peer.
set -u
REPO=$(pwd)
source benchmarks/device_setup.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
cd /tmp
t0=$(date +%s); stamp() { echo "$1 rc=$2 $(( $(date +%s) - t0 )) s" >> "$OUT/gpu.txt"; }
python3 -m embodied collect --env embodied/PointPushZone-v0 --env embodied/Arm2PushDir-v0 --episodes 334 --policy noisy:0.5 \
  --pixels 64 --workers 12 --out /tmp/px.zarr > "$OUT/collect.txt" 2>&1; stamp collect $?
for P in base large; do
  python3 -m embodied bench train --preset $P --pixels 64 --window 64 --batch 256 --steps 20 --warmup 6 --data /tmp/px.zarr --json \
    > "$OUT/train_$P.json" 2> "$OUT/train_$P.err"; stamp "train_$P" $?
done
python3 "$REPO/.peer/plain_gpt_mfu.py" --d 512 --layers 8 --heads 8 --seq 130 --batch 256 > "$OUT/peer_base.json" 2>&1; stamp peer_base $?
python3 "$REPO/.peer/plain_gpt_mfu.py" --d 768 --layers 14 --heads 12 --seq 130 --batch 256 > "$OUT/peer_large.json" 2>&1; stamp peer_large $?
python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_gpu.py" > "$OUT/pytest_gpu.txt" 2>&1; stamp pytest_gpu $?
tail -2 "$OUT/pytest_gpu.txt"; cat "$OUT/gpu.txt"; cat "$OUT"/train_*.json "$OUT"/peer_*.json | grep -E '"(preset|tokens_per_s|step_ms|data_wait_fraction|mfu|mfu_all)"|mfu'
