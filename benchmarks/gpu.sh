#!/usr/bin/env bash
# One lent GPU, a few minutes: the CUDA tests, then the binarized-MNIST paper presets that need a GPU
# (PixelCNN and MADE with 32 masks, trained side by side for MINUTES each, and two epochs of the IWAE
# to time its schedule; MODELS="made-32" picks fewer). Every process has its own time bound, so the results
# are packed even when a run is cut short. Writes OUT/summary.log (the GPU, the test log, the runs' last
# lines) and OUT/results.tgz (each model's JSON, curve.json and log; no checkpoints).
#
# Here, once: the wheels the GPU machine lacks, and the data beside the code (both ignored by git):
#   bash ../shared/gpu/wheels.sh zuko==1.6.0 constriction==0.5.0 pgmpy==1.1.2 scikit-base==1.2.0
#   echo /.gpudata/ >> .git/info/exclude; mkdir -p .gpudata; cp ../shared/data/binarized_mnist.npz .gpudata/
# There (device run, carrying .whl and .gpudata; about 7.5 minutes with MINUTES=6):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .pysite .whl/*.whl &&
#   export PYTHONPATH=$PWD/.pysite:$PWD PYTHONUNBUFFERED=1 && bash benchmarks/gpu.sh $OUT 6
# On the CPU, as a smoke test of this script:
#   DEVICE=cpu DATA=../shared/data PYTHON=.venv/bin/python \
#     EXTRA="--train-rows 200 --test-rows 50 --epochs 1 --num-samples 5" bash benchmarks/gpu.sh /tmp/smoke 1
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu.sh OUT [MINUTES]}
minutes=${2:-6}
device=${DEVICE:-cuda}
data=${DATA:-.gpudata}
python=${PYTHON:-python3}
models=${MODELS:-pixelcnn made-32 iwae}  # the IWAE only times two epochs: its schedule takes a GPU-day
mkdir -p "$out"
logs=$(mktemp -d)
runs=$logs/runs
limit=$(( ${minutes%.*} * 60 + 110 ))  # training, then evaluation and sampling, which take about a minute

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$logs/gpu.txt"

timeout 300 "$python" -m pytest -q -p no:cacheprovider -m cuda tests > "$logs/cuda_tests.log" 2>&1 &

bench() {  # model, minutes, extra arguments
  local model=$1 budget=$2; shift 2
  timeout "$limit" "$python" benchmarks/binarized_mnist.py --root "$data" --preset paper --device "$device" \
    --threads 4 --num-samples 1000 --models "$model" --max-minutes "$budget" --runs "$runs" \
    --out "$logs/$model.json" "$@" ${EXTRA:-} > "$logs/$model.log" 2>&1
  echo "exit $?" >> "$logs/$model.log"
}
for model in $models; do
  if [ "$model" = iwae ]; then bench iwae "$minutes" --epochs 2 & else bench "$model" "$minutes" & fi
done
wait

{ cat "$logs/gpu.txt"; echo "--- CUDA tests"; tail -n 30 "$logs/cuda_tests.log"
  for model in $models; do echo "--- $model"; tail -n 5 "$logs/$model.log"; done
} > "$out/summary.log"
rm -f "$logs"/*.png
tar czf "$out/results.tgz" -C "$logs" --exclude checkpoint .
cat "$out/summary.log"
