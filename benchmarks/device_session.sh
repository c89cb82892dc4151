#!/usr/bin/env bash
# Everything one session asks of the GPU machine (device tool; see ../shared/DEVICE.md), as one call that stays
# inside its time budget: stages run in order of value, and the optional ones are skipped once BUDGET seconds
# (default 500) are used. Run from the repository root with $OUT set, carrying .whl (mujoco, gymnasium, zarr,
# numcodecs, ... for Python 3.12), .gl (EGL debs), .peer (../shared/bench/plain_gpt_mfu.py) and .data/emb.npz
# (`python benchmarks/reward_rl.py table --split train --half --out .data/emb.npz`: the training instructions with
# their token outputs, since the GPU machine has no sentence encoder).
#   1. collect:  PointPushZone with 64x64 pixels (expert + noisy:0.4, labelled) through the GPU's EGL on 14 processes,
#                while the gpu tests (pytest -m gpu: compiled bf16 training and resume, the CUDA-graph policy step)
#                run beside it; the store feeds the MFU benchmark (and with ONLY=pixels the pixel run).
#   2. policy:   `embodied bench policy --preset base` (latency with the cache as a CUDA graph, the same cached step
#                without the graph, and without the cache), alone on the machine.
#   3. mfu:      `embodied bench train` for base and large (pixels 64, window 64, batch 256), each beside the peer
#                plain GPT at the same width, depth, sequence and batch, with nothing else running.
#   4. if time is left: a kernel profile of base; base without pixels (the pixel stem's share, A/B); base with
#      policy_history=True (the cost of the present-only policy pass, A/B).
# ONLY=pixels runs stage 1 and the pixel run (train `small` on pixels + proprioception, --state proprio; $OUT/pixels.tgz
# comes back and is evaluated on the CPU VM) alone.
# Lessons of earlier runs: benchmarks must run alone (14 collectors beside them cut base from 32 to 88 ms/step);
# `embodied train` spends its first minute loading and compiling, so keep it inside the stage's timeout.
set -u
REPO=$(pwd)
BUDGET=${BUDGET:-500}
EPISODES=${EPISODES:-500}
NOISY=${NOISY:-200}
PIXEL_STEPS=${PIXEL_STEPS:-6000}
WORKERS=${WORKERS:-14}
BENCH_KW=${BENCH_KW:-pixels=64, window=64, batch=256, steps=20, warmup=6}
if [ -z "${DRY:-}" ]; then source benchmarks/device_setup.sh  # DRY=1: check the script on a machine set up already
else OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"; export PYTHONPATH=$REPO; fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/log.txt" 2>&1
t0=$(date +%s)
stamp() { echo "$1 rc=$2 $(( $(date +%s) - t0 )) s" >> "$OUT/log.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }
mkdir -p /tmp/d /tmp/runs
cd /tmp  # import the installed package, not the source folders

# 1. the pixel store, with the gpu tests beside it (correctness only: no timing shares the machine with them)
PX=/tmp/d/px.zarr
PT=""; [ -z "${ONLY:-}" ] && { TG=$REPO/tests/test_gpu.py; timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider $TG::test_cuda_is_there $TG::test_policy_steps_replay_as_cuda_graphs_and_act_like_eager_steps $TG::test_train_compiled_bf16_on_cuda_and_resume $TG::test_bench_train_reports_mfu_on_cuda > "$OUT/pytest_gpu.txt" 2>&1 & PT=$!; }
timeout 120 python3 -m embodied collect --env embodied/PointPushZone-v0 --episodes "$EPISODES" --pixels 64 --workers "$WORKERS" --out $PX \
  > /tmp/collect.log 2>&1 && \
timeout 60 python3 -m embodied collect --env embodied/PointPushZone-v0 --episodes "$NOISY" --pixels 64 --workers "$WORKERS" --out $PX \
  --policy noisy:0.4 --seed 1 --append >> /tmp/collect.log 2>&1
stamp collect $?; tr '\r' '\n' < /tmp/collect.log | grep wrote >> "$OUT/log.txt"
python3 - "$REPO/.data/emb.npz" $PX >> "$OUT/log.txt" 2>&1 <<'PY'
import sys, numpy as np
from embodied.datasets import EpisodeStore
from embodied.language import split_tokens
z = np.load(sys.argv[1]); table = dict(zip(z["instructions"].tolist(), z["vectors"].astype(np.float32)))
with EpisodeStore.open(sys.argv[2], "a") as s:
    names = s.instructions()
    missing = [n for n in names if n not in table]
    assert not missing, f"{len(missing)} instructions lack an embedding, e.g. {missing[0]!r}"
    rows, key = np.stack([table[n] for n in names]), str(z["encoder"])
    s.set_embeddings(key, names, rows, {"encoder": key})
    base, tokens = split_tokens(key)
    if tokens:  # the pooled vector leads each row: the table of the encoder alone (what a model that reads no tokens uses)
        s.set_embeddings(base, names, np.ascontiguousarray(rows[:, : rows.shape[1] // (tokens + 1)]), {"encoder": base})
print("embedded", len(names), "instructions")
PY
stamp embed $?

# 2. training speed beside the peer
bench() {  # name preset [field=value ...]
  local name=$1 p=$2; shift 2
  local kw=""; for s in "$@"; do kw="$kw, $s"; done
  timeout 150 python3 -c "import json; from embodied.bench_train import bench_train; print(json.dumps(bench_train('$p', **{**dict($BENCH_KW, data='$PX'), **dict(${kw#, })})))" \
    > "$OUT/train_$name.json" 2> "/tmp/train_$name.err"; stamp "train_$name" $?; tail -2 "/tmp/train_$name.err" | cut -c1-300 >> "$OUT/log.txt"
}
peer() { timeout 120 python3 "$REPO/.peer/plain_gpt_mfu.py" --d $2 --layers $3 --heads $4 --seq 130 --batch 256 > "$OUT/peer_$1.json" 2>&1; stamp "peer_$1" $?; }
[ -n "$PT" ] && { wait $PT; stamp pytest_gpu $?; tail -3 "$OUT/pytest_gpu.txt" >> "$OUT/log.txt"; }

# 2. policy latency (alone)
[ -z "${ONLY:-}" ] && { timeout 120 python3 -m embodied bench policy --preset base --json > "$OUT/policy_base.json" 2> /tmp/policy_base.err; stamp policy_base $?; tail -2 /tmp/policy_base.err | cut -c1-300 >> "$OUT/log.txt"; }

# 3. training speed, each beside the peer at its shape
[ -z "${ONLY:-}" ] && { bench base base; peer base 512 8 8; bench large large; peer large 1024 8 16; }

# 4. what time is left: where base's time goes, and two A/Bs
[ -z "${ONLY:-}" ] && [ $(left) -gt 70 ] && { timeout $(( $(left) > 120 ? 110 : $(left) - 5 )) python3 "$REPO/benchmarks/profile_train.py" --preset base --data $PX > "$OUT/profile_base.txt" 2>&1; stamp profile $?; }
[ -z "${ONLY:-}" ] && [ $(left) -gt 70 ] && bench base_state base pixels=0
[ -z "${ONLY:-}" ] && [ $(left) -gt 70 ] && bench base_history base policy_history=True

# the pixel run (ONLY=pixels)
T=$(( $(left) - 25 )); [ $T -gt 300 ] && T=300
if [ -n "${ONLY:-}" ] && [ $T -gt 60 ]; then
  timeout $T python3 -m embodied train --data $PX --preset small --pixels --state proprio --out /tmp/runs/pixels \
    --steps "$PIXEL_STEPS" --batch-size 128 --window 16 --lr 1e-3 --warmup 200 --eval-every 0 --save-every 500 --keep-last 1 \
    --workers 4 > /tmp/train_px.log 2>&1; stamp "train_pixels(limit $T s)" $?
  tr '\r' '\n' < /tmp/train_px.log | grep -v "^train: " | tail -12 | cut -c1-300 > "$OUT/train_pixels.txt"
  tr '\r' '\n' < /tmp/train_px.log | grep "^train: " | tail -2 | cut -c1-300 >> "$OUT/train_pixels.txt"
  tail -3 "$OUT/train_pixels.txt" >> "$OUT/log.txt"
  (cd /tmp/runs && find . -name "optimizer.safetensors" -delete; tar czf "$OUT/pixels.tgz" pixels); stamp tar $?
fi
cat "$OUT"/train_*.json "$OUT"/peer_*.json "$OUT/policy_base.json" 2>/dev/null
cat "$OUT/log.txt"
