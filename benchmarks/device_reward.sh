#!/usr/bin/env bash
# The reward model and the learned-reward RL comparison on the GPU machine (device tool; see ../shared/DEVICE.md):
# collect expert/noisy/random episodes, train a reward model on the GPU (bounded), validate it (embodied bench reward)
# and run the RL grid on the CPU cores (benchmarks/reward_rl.py). Carry .whl (with stable-baselines3), .gl and a
# fallback checkpoint; .emb/emb.npz (reward_rl.py table) travels untracked. Usage: bash benchmarks/device_reward.sh FALLBACK_CKPT
set -u
T0=$(date +%s); REPO=$(pwd); FALLBACK=$REPO/$1; BUDGET=${2:-550}
source benchmarks/device_setup.sh
cd /tmp
{ nproc; nvidia-smi --query-gpu=name --format=csv,noheader; echo "setup $(( $(date +%s) - T0 )) s"; } > "$OUT/host.txt"
python3 "$REPO/benchmarks/reward_rl.py" train --table "$REPO/.emb/emb.npz" --out /tmp/r --episodes 500 --preset small --steps 6000 --seconds 110 > /tmp/train.txt 2>&1
tail -c 3000 /tmp/train.txt | tr '\r' '\n' | tail -8 > "$OUT/train.txt"
CKPT=/tmp/r/run; [ -f /tmp/r/run/checkpoints/latest.json ] || CKPT=$FALLBACK
echo "trained until $(( $(date +%s) - T0 )) s; reward model $CKPT" >> "$OUT/host.txt"
LEFT=$(( BUDGET - ($(date +%s) - T0) ))
python3 "$REPO/benchmarks/reward_rl.py" grid --ckpt "$CKPT" --table "$REPO/.emb/emb.npz" --out "$OUT" --seconds "$LEFT" > "$OUT/grid.txt" 2>&1
rm -rf "$OUT/runs"
if [ -f /tmp/r/run/checkpoints/latest.json ]; then
  P=$(python3 -c "import json; print(json.load(open('/tmp/r/run/checkpoints/latest.json'))['path'])")
  mkdir -p "$OUT/model"; cp /tmp/r/run/checkpoints/$P/config.json /tmp/r/run/checkpoints/$P/model.safetensors "$OUT/model/"
fi
echo "done $(( $(date +%s) - T0 )) s" >> "$OUT/host.txt"
cat "$OUT/host.txt" "$OUT/train.txt" "$OUT/grid.txt"
