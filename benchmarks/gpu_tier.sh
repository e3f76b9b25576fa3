#!/usr/bin/env bash
# GPU tier of the LA SSL benchmark: one offline call of at most 10 minutes on one H100/H200 (see docs/benchmarks.md).
# Needs benchmarks/gpu_payload/ from `python benchmarks/pack_gpu_tier.py`, carried along with the working tree.
# Installs the payload's wheels (pip --no-index), unpacks the dataset, runs run_ssl_benchmark.py on the GPU and
# copies report.md, report.json, state.json, ad_progress.png and logs.tar.xz to $OUT, also when the benchmark fails or
# runs out of time.
# Knobs (environment): STEPS (250) IPE (50) DDIM (10) DEVICE (cuda) NP (12) NDA (6) DEADLINE (s, 560) WORK OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PAYLOAD=${PAYLOAD:-$REPO/benchmarks/gpu_payload}
STEPS=${STEPS:-250} IPE=${IPE:-50} DDIM=${DDIM:-10} DEVICE=${DEVICE:-cuda} NP=${NP:-12} NDA=${NDA:-6}
DEADLINE=${DEADLINE:-560}  # seconds after start by which everything, results copied, is done
WORK=${WORK:-/tmp/adnnunet_gpu_tier}
OUT=${OUT:-$REPO/gpu_tier_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
rm -rf "$WORK" && mkdir -p "$WORK"
exec > >(tee "$OUT/gpu_tier.log") 2>&1

collect() {
  local bench=$WORK/bench
  for f in report.md report.json state.json ad_progress.png; do [ ! -f "$bench/$f" ] || cp "$bench/$f" "$OUT/"; done
  if [ -d "$bench" ]; then
    mkdir -p "$WORK/collect"
    cp -r "$bench/logs" "$bench/evaluation" "$bench/trainers" "$WORK/collect/" 2>/dev/null || true
    # training logs and progress plots of the three runs
    find "$WORK/nnUNet_results" \( -name 'training_log*.txt' -o -name '*progress.png' -o -name ad_split.json \) \
      -exec cp --parents {} "$WORK/collect/" \; 2>/dev/null || true
    $PY -c "import tarfile; tarfile.open('$OUT/logs.tar.xz', 'w:xz').add('$WORK/collect', arcname='.')" || true
  fi
  echo "gpu_tier: results in $OUT ($(ls "$OUT" | tr '\n' ' '))"
}
trap collect EXIT

echo "gpu_tier: $(date -u) on $(hostname); steps=$STEPS ipe=$IPE ddim=$DDIM device=$DEVICE np=$NP nda=$NDA"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true

# 1. payload: check it against the working tree, install its wheels offline into $WORK/site
# (before the install, ad_nnunet's payload code runs from the working tree; it needs only the standard library)
PYTHONPATH=$REPO $PY benchmarks/pack_gpu_tier.py --verify "$PAYLOAD"
PYTHONPATH=$REPO $PY -c "from ad_nnunet.benchmark.gpu_payload import extract; from pathlib import Path; \
extract(Path('$PAYLOAD/wheels.tar.xz'), Path('$WORK/wheels')); extract(Path('$PAYLOAD/data.tar.xz'), Path('$WORK/nnUNet_raw'))"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --find-links "$WORK/wheels" \
  --target "$WORK/site" "$WORK"/wheels/*.whl "$PAYLOAD"/ad_nnunet-*.whl
export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH} PATH=$WORK/site/bin:$PATH
$PY -c "import nnunetv2.run.run_training, nnunetv2.inference.predict_from_raw_data, SimpleITK, blosc2, cc3d, medpy.metric
import ad_nnunet.training.ad_trainer, ad_nnunet.evaluation.metrics, torch
assert '$DEVICE' != 'cuda' or torch.cuda.is_available(), 'no CUDA device visible to torch'
print('gpu_tier: imports OK, torch', torch.__version__)"
rm -rf "$WORK/wheels"

# 2. the benchmark
DATASET=$(basename "$(ls -d "$WORK"/nnUNet_raw/Dataset*)")
D=$WORK/nnUNet_raw/$DATASET
export nnUNet_raw=$WORK/nnUNet_raw nnUNet_preprocessed=$WORK/nnUNet_preprocessed nnUNet_results=$WORK/nnUNet_results
export AD_BENCH_COMMIT="$($PY -c "import json; print(json.load(open('$PAYLOAD/manifest.json'))['commit'])") (payload)"
LEFT=$((DEADLINE - SECONDS - 25))
echo "gpu_tier: setup took ${SECONDS} s; the benchmark gets at most ${LEFT} s"
timeout --signal=TERM --kill-after=10 "$LEFT" $PY benchmarks/run_ssl_benchmark.py --dataset "$DATASET" \
  --labeled "$D/splits/labeled.txt" --unlabeled "$D/splits/unlabeled.txt" \
  --test_images "$D/imagesTs" --test_labels "$D/labelsTs" --configuration 3d_fullres \
  --steps "$STEPS" --iterations_per_epoch "$IPE" --ddim_steps "$DDIM" --device "$DEVICE" --np "$NP" --n_proc_da "$NDA" \
  --out "$WORK/bench" --note "GPU tier: training cases resampled x2 (1.25 mm) before planning, test cases at 0.625 mm"
