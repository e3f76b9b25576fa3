#!/usr/bin/env bash
# GPU tier of the LA SSL benchmark: one offline call of at most 10 minutes on one H100/H200 (see docs/benchmarks.md).
# Needs benchmarks/gpu_payload/ from `python benchmarks/pack_gpu_tier.py`, carried along with the working tree.
# Installs the payload's wheels (pip --no-index), unpacks the dataset, runs run_ssl_benchmark.py on the GPU and
# copies report.md, report.json, state.json, ad_progress.png and logs.tar.xz to $OUT, also when the benchmark fails or
# runs out of time.
# Knobs (environment): STEPS (250) IPE (50) DDIM (10) DEVICE (cuda) NP (12) NDA (6) DEADLINE (s, 560) WORK OUT;
# PRESET (a plans preset instead of nnU-Net's 3d_fullres; its spacing_factor is divided by the payload's, whose training
# images are already resampled), BENCH_ARGS (more runner arguments, e.g. the fine-tuning protocol), FIRST_METHODS (run
# these --methods first, then all: a deadline hit in the second invocation leaves the first's report), SAVE_MODELS (a
# glob of trainer names whose final models, without optimizer state, come back as model_<trainer>.tar.xz).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PAYLOAD=${PAYLOAD:-$REPO/benchmarks/gpu_payload}
STEPS=${STEPS:-250} IPE=${IPE:-50} DDIM=${DDIM:-10} DEVICE=${DEVICE:-cuda} NP=${NP:-12} NDA=${NDA:-6}
DEADLINE=${DEADLINE:-560}  # seconds after start by which everything, results copied, is done
PRESET=${PRESET:-} BENCH_ARGS=${BENCH_ARGS:-} FIRST_METHODS=${FIRST_METHODS:-} SAVE_MODELS=${SAVE_MODELS:-}
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
  [ -z "$SAVE_MODELS" ] || for run in "$WORK"/nnUNet_results/*/$SAVE_MODELS; do
    [ -f "$run/fold_0/checkpoint_final.pth" ] || continue
    $PY -c "import sys, tarfile, torch; from pathlib import Path
run = Path(sys.argv[1]); slim = run / 'fold_0' / 'checkpoint_final_weights.pth'
ck = torch.load(run / 'fold_0' / 'checkpoint_final.pth', map_location='cpu', weights_only=False)
torch.save({k: v for k, v in ck.items() if k not in ('optimizer_state', 'grad_scaler_state')}, slim)
with tarfile.open(sys.argv[2], 'w:xz') as tar:
    for f in ('plans.json', 'dataset.json', 'dataset_fingerprint.json'):
        tar.add(run / f, arcname=f'{run.name}/{f}')
    tar.add(slim, arcname=f'{run.name}/fold_0/checkpoint_final.pth')" "$run" "$OUT/model_$(basename "$run").tar.xz" || true
  done
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
export nnUNet_compile=f  # the benchmark compares runs without torch.compile (docs/benchmarks.md); the image may set it
export AD_BENCH_COMMIT="$($PY -c "import json; print(json.load(open('$PAYLOAD/manifest.json'))['commit'])") (payload)"
CONFIG_ARGS=(--configuration 3d_fullres)
if [ -n "$PRESET" ]; then  # the payload's training images are resampled already: the preset resamples the rest
  PYTHONPATH=$WORK/site $PY -c "import json, sys; from ad_nnunet.plans_presets import load_preset
p = load_preset(sys.argv[1]); f = json.load(open(sys.argv[2]))['data']['spacing_factor']
p['spacing_factor'] = p.get('spacing_factor', 1) / f
p['description'] = f'{sys.argv[1]} on training images resampled x{f} already (GPU tier): ' + p.get('description', '')
json.dump(p, open(sys.argv[3], 'w'), indent=2)" "$PRESET" "$PAYLOAD/manifest.json" "$WORK/preset.json"
  CONFIG_ARGS=(--preset "$WORK/preset.json")
fi
bench() {  # bench <seconds> [runner arguments]
  timeout --signal=TERM --kill-after=10 "$1" $PY benchmarks/run_ssl_benchmark.py --dataset "$DATASET" \
    --labeled "$D/splits/labeled.txt" --unlabeled "$D/splits/unlabeled.txt" \
    --test_images "$D/imagesTs" --test_labels "$D/labelsTs" "${CONFIG_ARGS[@]}" \
    --steps "$STEPS" --iterations_per_epoch "$IPE" --ddim_steps "$DDIM" --device "$DEVICE" --np "$NP" \
    --n_proc_da "$NDA" --out "$WORK/bench" $BENCH_ARGS "${@:2}" \
    --note "GPU tier: training cases resampled x2 (1.25 mm) before planning, test cases at 0.625 mm"
}
echo "gpu_tier: setup took ${SECONDS} s; the benchmark gets at most $((DEADLINE - SECONDS - 25)) s"
[ -z "$FIRST_METHODS" ] || bench $((DEADLINE - SECONDS - 25)) --methods $FIRST_METHODS
bench $((DEADLINE - SECONDS - 25))
