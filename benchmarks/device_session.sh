#!/usr/bin/env bash
# Everything one session needs from the GPU machine (device tool; see ../shared/DEVICE.md), in two phases run
# back to back on one warm machine. Carry .whl, .gl, .peer and .data (multi.tgz: the multi-task state store;
# px.tgz: the PointPushZone pixel store; both made and embedded on the CPU VM, since the GPU machine has no
# sentence encoder).
#   quality: (retrain: only the two training runs) train `small` on the multi-task state store and on 64x64 pixels + proprioception (two runs side by
#            side on the one GPU), bring the runs back (evaluated on the CPU VM), `base` policy latency, gpu tests.
#   mfu:     `embodied bench train` for base and large (and large's size in a deeper shape) beside the peer plain GPT at the same
#            width, depth, sequence and batch, then a kernel profile of base.
set -u
PHASE=${1:-quality}
REPO=$(pwd)
source benchmarks/device_setup.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/log.txt"
t0=$(date +%s); stamp() { echo "$1 rc=$2 $(( $(date +%s) - t0 )) s" >> "$OUT/log.txt"; }
mkdir -p /tmp/d /tmp/runs
for f in .data/*.tgz; do tar xzf "$f" -C /tmp/d; done; stamp untar $?
cd /tmp
if [ "$PHASE" = quality ] || [ "$PHASE" = retrain ]; then
  timeout 170 python3 -m embodied train --data /tmp/d/multi.zarr --preset small --out /tmp/runs/state --steps 4000 --batch-size 256 \
    --window 16 --lr 6e-4 --warmup 300 --eval-every 0 --save-every 1000 --keep-last 1 --workers 4 > /tmp/train_state.log 2>&1 &
  P1=$!
  timeout 170 python3 -m embodied train --data /tmp/d/px.zarr --preset small --state proprio --out /tmp/runs/pixels --steps 4000 \
    --batch-size 128 --window 16 --lr 6e-4 --warmup 300 --eval-every 0 --save-every 1000 --keep-last 1 --workers 4 > /tmp/train_px.log 2>&1 &
  P2=$!
  wait $P1; stamp train_state $?; wait $P2; stamp train_pixels $?
  tr '\r' '\n' < /tmp/train_state.log | grep -v "^train: " | tail -20 > "$OUT/train_state.txt"
  tr '\r' '\n' < /tmp/train_px.log | grep -v "^train: " | tail -20 > "$OUT/train_pixels.txt"
  (cd /tmp/runs && find . -name "optimizer.safetensors" -delete; tar czf "$OUT/state.tgz" state; tar czf "$OUT/pixels.tgz" pixels); stamp tar $?
  [ "$PHASE" = retrain ] && { cat "$OUT/log.txt"; exit 0; }
  python3 -m embodied bench policy --preset base --json > "$OUT/policy_base.json" 2> "$OUT/policy_base.err"; stamp policy_base $?
  python3 -m pytest -q -m gpu -p no:cacheprovider "$REPO/tests/test_gpu.py" > "$OUT/pytest_gpu.txt" 2>&1; stamp pytest_gpu $?
else
  bench() {  # name preset [field=value ...]
    local name=$1 p=$2; shift 2
    local kw=""; for s in "$@"; do kw="$kw, ${s%%=*}=${s#*=}"; done
    python3 -c "import json; from embodied.bench_train import bench_train; print(json.dumps(bench_train('$p', pixels=64, window=64, batch=256, steps=20, warmup=6, data='/tmp/d/px.zarr'$kw)))" \
      > "$OUT/train_$name.json" 2> "/tmp/train_$name.err"; stamp "train_$name" $?
  }
  peer() { python3 "$REPO/.peer/plain_gpt_mfu.py" --d $2 --layers $3 --heads $4 --seq 130 --batch 256 > "$OUT/peer_$1.json" 2>&1; stamp "peer_$1" $?; }
  bench base base;  peer base 512 8 8
  bench large large; peer large 1024 8 16
  bench deep large d_model=768 n_layer=14 n_head=12; peer deep 768 14 12  # the same size, narrower and deeper
  python3 "$REPO/benchmarks/profile_train.py" --preset base --data /tmp/d/px.zarr > "$OUT/profile_base.txt" 2>&1; stamp profile $?
  cat "$OUT"/train_*.json "$OUT"/peer_*.json
fi
cat "$OUT/log.txt"
