#!/usr/bin/env bash
# The dynamics numbers of issue 6.1 on the CPU: a point-mass dataset (reach and push_zone; expert with noise 0.3,
# noise 1.0 and random actions), the small model trained 2000 steps, open-loop errors on its held-out episodes
# against constant velocity, imagine's latency, and the direct policy beside the planner on the same seeds.
# Usage: bash benchmarks/dynamics.sh [OUT_DIR]   (about 30 min on a quiet 2-core VM; results in OUT_DIR/*.json)
set -eu
OUT=${1:-out/bench_dynamics}
mkdir -p "$OUT"
export MUJOCO_GL=egl HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
D="$OUT/pp.zarr"
ENVS="--env embodied/PointReach-v0 --env embodied/PointPushZone-v0"
if [ ! -f "$D/zarr.json" ]; then
  embodied collect $ENVS --episodes 300 --policy noisy:0.3 --out "$D"
  embodied collect $ENVS --episodes 150 --policy noisy:1.0 --out "$D" --append --seed 1
  embodied collect $ENVS --episodes 60 --policy random --out "$D" --append --seed 2
fi
R="$OUT/run"
[ -f "$R/checkpoints/latest.json" ] || embodied train --data "$D" --preset small --out "$R" --steps 2000 --batch-size 64 --window 16 \
  --eval-every 500 --save-every 500 --workers 1 --lr 1e-3 --warmup 50 --imitate all
for S in 00000500 00002000; do
  embodied bench dynamics --ckpt "$R/checkpoints/step-$S" --data "$D" --threads 1 --json > "$OUT/dynamics_step$S.json"
done
for P in direct plan; do
  embodied eval --ckpt "$R" $ENVS --episodes 20 --policy $P --json --out "$OUT/eval_$P" > "$OUT/eval_$P.json"
done
