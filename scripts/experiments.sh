#!/usr/bin/env bash
# The comparison table on one dataset, one split and protocol for every method (leave-one-out, history 50,
# full ranking, whole test set, seen items excluded):
#   [THREADS=1] scripts/experiments.sh DATASET_DIR NAME [SCHEDULES] [SEEDS] [EPOCHS]
#   e.g. THREADS=1 scripts/experiments.sh data/ml-latest-small ml-latest-small "hat causal" "0 1 2" 6
# STUDENT_ARGS go to every student's `train` unchanged (e.g. STUDENT_ARGS="--valid-users 5000" on a large dataset).
# SASRec (the baseline and every student's teacher) -> runs/NAME/sasrec; per schedule and seed the recipe's
# student (`hatllm.training.recipe`, the shared SASRec as its teacher, a cosine schedule of EPOCHS epochs, its fusion
# weight chosen on validation) -> runs/NAME/<schedule>-s<seed>; evaluations of each student alone and fused with
# SASRec (both from one pass; the LLM alone only when the tuned weight is 0), of SASRec and of most-popular -> docs/results/NAME/*.json;
# each student's training log and fusion sweep -> docs/results/NAME/training/; a table (mean ± sd over seeds) and
# plot by hatllm.evaluation.report, and the validation curves of every finished student (its kept log) ->
# docs/results/NAME/learning_curves.png. Reruns skip what exists and resume an interrupted student, so two shells
# can share the work by taking different seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
data=$1 name=$2 schedules=${3:-hat causal} seeds=${4:-0} epochs=${5:-20} threads=${THREADS:-0}
py=.venv/bin/python runs=runs/$name out=docs/results/$name
mkdir -p "$runs" "$out/training"
[ -f "$runs/sasrec/sasrec.pt" ] || $py -m hatllm.training.sasrec --data "$data" --out "$runs/sasrec" --threads "$threads"
for seed in $seeds; do
  for schedule in $schedules; do
    dir=$runs/$schedule-s$seed
    mkdir -p "$dir"
    [ -e "$dir/teacher" ] || ln -s ../sasrec "$dir/teacher"
    [ -f "$dir/fusion.json" ] || $py -m hatllm.training.recipe --data "$data" --out "$dir" --schedule "$schedule" --seed "$seed" \
      --threads "$threads" --minutes 100000 -- --epochs "$epochs" ${STUDENT_ARGS:-}
    cp "$dir/training.json" "$out/training/$schedule-s$seed.json"
    cp "$dir/fusion_sweep.json" "$out/training/$schedule-s$seed-fusion_sweep.json"
    label=$([ "$schedule" = causal ] && echo causal || echo hatllm)
    alone=$out/$label-s$seed.json fused=$out/$label+sasrec-s$seed.json
    if [ ! -f "$alone" ] || [ ! -f "$fused" ]; then
      if $py -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["weight"] == 0)' "$dir/fusion.json"; then
        # one pass ranks both pipelines: the LLM's forward per user is shared
        $py -m hatllm.evaluation.evaluate --data "$data" --method llm --model "$dir" --name "$label+sasrec s$seed" --out "$fused" \
          --alone-name "$label s$seed" --alone-out "$alone"
      else  # tuned weight 0: the fused pipeline is the LLM alone
        $py -m hatllm.evaluation.evaluate --data "$data" --method llm --model "$dir" --no-fusion --name "$label s$seed" --out "$alone"
        $py -c 'import json, sys; r = json.load(open(sys.argv[1])); r["method"] = sys.argv[3]; json.dump(r, open(sys.argv[2], "w"), indent=1)' \
          "$alone" "$fused" "$label+sasrec s$seed"
      fi
    fi
  done
done
[ -f "$out/sasrec.json" ] || $py -m hatllm.evaluation.evaluate --data "$data" --method sasrec --model "$runs/sasrec" --out "$out/sasrec.json"
[ -f "$out/popular.json" ] || $py -m hatllm.evaluation.evaluate --data "$data" --method popular --out "$out/popular.json"
$py -m hatllm.evaluation.report "$out" --title "$name"
students=()  # every finished student's kept log, so the curves outlive runs/
for log in "$out"/training/*-s*.json; do [[ $log == *-fusion_sweep.json ]] || students+=("$log"); done
$py -m hatllm.evaluation.learning_curves "$out/learning_curves.png" "${students[@]}"
