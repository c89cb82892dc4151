#!/usr/bin/env bash
# The learned-reward RL comparison and the reward validation on the GPU machine's 16 CPU cores (device tool;
# see ../shared/DEVICE.md). Carry .whl (with stable-baselines3), .gl and the reward checkpoint folder; .emb/emb.npz
# (benchmarks/reward_rl.py table) travels untracked. Usage: bash benchmarks/device_reward.sh CKPT SECONDS
set -u
REPO=$(pwd); CKPT=$REPO/$1; SECONDS_RL=${2:-450}
source benchmarks/device_setup.sh
nproc > "$OUT/host.txt"; ls "$REPO/policies/reward.py" "$CKPT" >> "$OUT/host.txt" 2>&1
cd /tmp
python3 "$REPO/benchmarks/reward_rl.py" grid --ckpt "$CKPT" --table "$REPO/.emb/emb.npz" --out "$OUT" --seconds "$SECONDS_RL" > "$OUT/grid.txt" 2>&1
rm -rf "$OUT/runs"
cat "$OUT/host.txt" "$OUT/grid.txt"; tail -12 "$OUT/logs.txt"
