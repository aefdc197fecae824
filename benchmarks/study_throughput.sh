#!/usr/bin/env bash
# The study-throughput figures of docs/performance.md ("Where a study's time goes"): the demo anchor ablation frozen
# and fine-tuned, and a 48-arm frozen sweep, each a whole `python -m calm_study run` timed from outside, its own
# end-of-run "time:" lines kept. Run from the repository root on an otherwise idle machine:
#   bash benchmarks/study_throughput.sh [OTHER_CHECKOUT] 2>&1 | tee throughput.txt
# With OTHER_CHECKOUT (another clone or worktree, e.g. of the previous release), each demo runs there too, right
# after this checkout's, so that both are measured in the same hour on the same machine.
set -euo pipefail
other="${1:-}"
out="$(mktemp -d /tmp/calm-throughput-XXXX)"
frozen=(--set model.frozen=true --set anchors.encode=once)
# 4 alphas x 3 latent sizes x 4 anchor counts = 48 arms, frozen, on the demo's data and model
sweep=(--set model.frozen=true --set anchors.encode=once
       --set 'search={grid: {loss.alpha: [0.01, 0.1, 0.5, 1.0], vae.latent_dim: [32, 64, 256],
                             anchors.count: [20, 50, 100, 157]}}')

run() {  # run LABEL CHECKOUT ARGS...: one study, fresh storage and results, its wall clock and its time lines
  local label="$1" checkout="$2"; shift 2
  local dir="$out/$label"
  mkdir -p "$dir"
  local start end
  start=$(date +%s.%N)
  (cd "$checkout" && PYTHONPATH="$checkout" RAY_TMPDIR="$(mktemp -d /tmp/calm-ray-XXXX)" \
    python -m calm_study run studies/anchor_ablation.yaml --preset demo "$@" \
      --set storage="$dir/runs" --set results_dir="$dir/results" >"$dir/log" 2>&1)
  end=$(date +%s.%N)
  python - "$label" "$start" "$end" "$dir/results/anchor_ablation" <<'PY'
import sys
import pandas as pd
label, start, end, results = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
df = pd.read_parquet(results).drop_duplicates(["trial_key", "epoch"])  # one row per epoch (not per eval set)
work = float((df.train_s + df.eval_s).sum())
wall = end - start
print(f"{label:<22} wall {wall:6.1f} s  trials {df.trial_key.nunique():3d}  sum(train+eval) {work:6.1f} s  "
      f"ideal (2 at a time) {work / 2:6.1f} s  wall/ideal {wall / (work / 2):5.1f}x")
PY
  grep -E '^(time:|  per )' "$dir/log" || true
}

echo "machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(git rev-parse --short HEAD)"
python -m calm_study run --help >/dev/null  # warm the file cache for the first timed run
run frozen-this . "${frozen[@]}"
[[ -n "$other" ]] && run frozen-other "$other" "${frozen[@]}"
run finetune-this .
[[ -n "$other" ]] && run finetune-other "$other"
run sweep48-frozen-this . "${sweep[@]}"
echo "logs and results: $out"
