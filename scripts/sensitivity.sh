#!/usr/bin/env bash
# Layer-split sensitivity: one model size, data, step count and seed; only the IN/OR/CR schedule changes.
#   [SIZE=tiny|small|base] scripts/sensitivity.sh DATASET_DIR NAME EPOCHS SEED SCHEDULE...
# (SCHEDULE as train --schedule; SIZE as train --size, default small). Checkpoints go to
# runs/NAME/<schedule>[-<size>]-s<seed>/ (kept; an existing one is not retrained), evaluation JSONs to
# docs/results/NAME/sensitivity/; the table and plot come from `python -m hatllm.sensitivity`.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 name=$2 epochs=$3 seed=$4
shift 4
py=.venv/bin/python runs=runs/$name out=docs/results/$name/sensitivity size=${SIZE:-small}
size_tag=$([ "$size" = small ] || echo "-$size")
mkdir -p "$runs" "$out"
slug() { echo "$1" | tr ':,' '-_'; }
# Two single-threaded jobs at a time use 2 cores better than one two-threaded job at this model size.
run_pairs() {  # run_pairs train|evaluate SCHEDULE...: that step for the schedules, two at a time
  local kind=$1; shift
  while [ $# -gt 0 ]; do
    pids=()
    for schedule in "${@:1:2}"; do
      tag="$(slug "$schedule")$size_tag-s$seed"
      dir="$runs/$tag"
      if [ "$kind" = train ] && [ ! -f "$dir/config.json" ]; then
        $py -m hatllm.train --data "$data" --out "$dir" --schedule "$schedule" --epochs "$epochs" --seed "$seed" \
          --size "$size" --threads 1 > "$dir.train.log" 2>&1 &
        pids+=($!)
      elif [ "$kind" = evaluate ] && [ ! -f "$out/$tag.json" ]; then
        $py -m hatllm.evaluate --data "$data" --method llm --model "$dir" --name "$schedule seed $seed" \
          --out "$out/$tag.json" > "$dir.evaluate.log" 2>&1 &
        pids+=($!)
      fi
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    shift $(( $# < 2 ? $# : 2 ))
  done
}
run_pairs train "$@"
run_pairs evaluate "$@"
$py -m hatllm.sensitivity "$out" --title "$name: sensitivity to layer split, seed and size"
