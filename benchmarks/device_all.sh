#!/usr/bin/env bash
# What this session needs from the GPU machine (device tool; see ../shared/DEVICE.md), in two calls back to back on
# one warm machine. Carry .whl (wheels), .gl (EGL debs), .peer (plain_gpt_mfu.py) and .data: px.tgz (the
# PointPushZone pixel store, for the MFU benchmark) and emb.npz (`python benchmarks/reward_rl.py table --split train
# --half --out .data/emb.npz`: every training instruction with its token outputs; the GPU machine has no encoder).
#   main:  collect the multi-task state dataset with the experts (clean and noisy, with the expert's labels) on 14
#          CPU processes in the background; meanwhile `embodied bench train` for base (matmul stem, and the plain
#          convolution stem as its A/B) and large beside the peer plain GPT at the same width, depth, sequence and
#          batch; then train `small` on the collected data ($OUT/big.tgz, evaluated on the CPU VM).
#   check: base policy latency and the gpu-marked tests.
# What its one run (2026-11-26, H100) taught: collection there ran at 33 episodes/s with 14 workers (103/s on the
# 2-core VM with 2), so 16,000 episodes took 400 s; `embodied train` then needed over 110 s before its first step on
# them; and the benchmarks shared the CPUs with the collectors. Next time: carry a collected store (.data, under the
# 64 MiB limit), run the benchmarks alone, and keep the training run's own start-up in its time budget.
set -u
PHASE=${1:-main}
REPO=$(pwd)
STEPS=${STEPS:-6000}
EPISODES=${EPISODES:-8000}
source benchmarks/device_setup.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/log.txt"
t0=$(date +%s); stamp() { echo "$1 rc=$2 $(( $(date +%s) - t0 )) s" >> "$OUT/log.txt"; }
mkdir -p /tmp/d /tmp/runs
cd /tmp
if [ "$PHASE" = main ]; then
  tar xzf "$REPO/.data/px.tgz" -C /tmp/d; stamp untar $?
  ENVS="embodied/PointReach-v0 embodied/PointPushZone-v0 embodied/PointPushDir-v0"
  ( python3 -m embodied collect --env $ENVS --episodes "$EPISODES" --workers 14 --out /tmp/d/big.zarr > /tmp/collect.log 2>&1 &&
    python3 -m embodied collect --env $ENVS --episodes "$EPISODES" --policy noisy:0.4 --workers 14 --append --seed 1 \
      --out /tmp/d/big.zarr >> /tmp/collect.log 2>&1 &&
    python3 - "$REPO/.data/emb.npz" /tmp/d/big.zarr >> /tmp/collect.log 2>&1 <<'PY'
import sys, numpy as np
from embodied.datasets import EpisodeStore
z = np.load(sys.argv[1]); table = dict(zip(z["instructions"].tolist(), z["vectors"].astype(np.float32)))
with EpisodeStore.open(sys.argv[2], "a") as s:
    names = s.instructions()
    missing = [n for n in names if n not in table]
    assert not missing, f"{len(missing)} instructions lack an embedding, e.g. {missing[0]!r}"
    s.set_embeddings(str(z["encoder"]), names, np.stack([table[n] for n in names]), {"encoder": str(z["encoder"])})
print("embedded", len(names), "instructions")
PY
  ) & PC=$!
  bench() {  # name preset; CONV=1: the pixel stem as the plain convolution (the A/B of the matmul stem)
    local patch=""; [ "${CONV:-0}" = 1 ] && patch="import embodied.model as m; m.PixelEncoder.forward = lambda self, p: self.net(p.permute(0, 3, 1, 2).float() / 255.0 - 0.5); "
    python3 -c "${patch}import json; from embodied.bench_train import bench_train; print(json.dumps(bench_train('$2', pixels=64, window=64, batch=256, steps=20, warmup=6, data='/tmp/d/px.zarr')))" \
      > "$OUT/train_$1.json" 2> "/tmp/train_$1.err"; stamp "train_$1" $?; tail -2 "/tmp/train_$1.err" >> "$OUT/log.txt"
  }
  peer() { python3 "$REPO/.peer/plain_gpt_mfu.py" --d $2 --layers $3 --heads $4 --seq 130 --batch 256 > "$OUT/peer_$1.json" 2>&1; stamp "peer_$1" $?; }
  bench base base; CONV=1 bench base_conv base; peer base 512 8 8
  bench large large; peer large 1024 8 16
  wait $PC; stamp collect $?; tail -4 /tmp/collect.log | tr '\r' '\n' | tail -4 >> "$OUT/log.txt"
  timeout ${TRAIN_S:-240} python3 -m embodied train --data /tmp/d/big.zarr --preset small --out /tmp/runs/big --steps "$STEPS" \
    --batch-size 256 --window 16 --lr 1e-3 --warmup 200 --eval-every 2000 --save-every 1000 --keep-last 1 --workers 6 \
    > /tmp/train_big.log 2>&1; stamp train_big $?
  tr '\r' '\n' < /tmp/train_big.log | grep -v "^train: " | tail -25 > "$OUT/train_big.txt"
  tr '\r' '\n' < /tmp/train_big.log | grep "^train: " | tail -2 >> "$OUT/train_big.txt"
  (cd /tmp/runs && find . -name "optimizer.safetensors" -delete; tar czf "$OUT/big.tgz" big); stamp tar $?
  cat "$OUT"/train_*.json "$OUT"/peer_*.json
else
  python3 -m embodied bench policy --preset base --json > "$OUT/policy_base.json" 2> "$OUT/policy_base.err"; stamp policy_base $?
  timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_gpu.py" > "$OUT/pytest_gpu.txt" 2>&1; stamp pytest_gpu $?
  tail -5 "$OUT/pytest_gpu.txt" >> "$OUT/log.txt"; cat "$OUT/policy_base.json"
fi
cat "$OUT/log.txt"
