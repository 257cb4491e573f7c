#!/usr/bin/env bash
# The robust augmentation preset and per-image input scaling against the current presets on
# brain4, at equal budget (same model, size, epochs, lr; seeds 0 and 1), measured on brain4's
# test split (a different source folder from its train) and under `evaluate --stress`.
# Usage, from the repository root: bash docs/results/robust-brain4/run.sh [OUT] (default runs/robust-brain4)
set -euo pipefail
DATA="${RAY_XRAY_SHARED_DATA:-../shared/data}/brain4"
OUT="${1:-runs/robust-brain4}"
PY="${PY:-.venv/bin/python}"
SEEDS="${SEEDS:-0 1}"
RECIPE=(--model resnet18 --data "$DATA" --img-size 64 --epochs 8 --lr 1e-3 --no-report)
variants=(
  "flip        --augment flip"
  "seeds       --augment seeds"
  "robust      --augment robust"
  "seeds-zimg  --augment seeds --normalize image"
)
# More, e.g. robust + per-image scaling or histogram equalisation, as extra lines:
#   "robust-zimg --augment robust --normalize image"   "seeds-hist --augment seeds --equalize hist"
for seed in $SEEDS; do
  for v in "${variants[@]}"; do
    read -r name flags <<<"$v"
    run="$OUT/$name-s$seed"
    [ -f "$run/eval/metrics.json" ] && continue   # re-running resumes
    # shellcheck disable=SC2086
    /usr/bin/time -f "$name seed $seed train %e s" "$PY" -m ray_xray.train "${RECIPE[@]}" $flags \
      --seed "$seed" --out "$run"
    /usr/bin/time -f "$name seed $seed evaluate %e s" "$PY" -m ray_xray.evaluate "$run" "$DATA" \
      --stress --no-images --out "$run/eval"
  done
done
"$PY" docs/results/robust-brain4/summarize.py "$OUT"
