#!/usr/bin/env bash
# The training recipe on a GPU (--device cuda), bounded to fit one short run on a machine that has CUDA torch and
# transformers but no vLLM: training and evaluation import neither vLLM nor the service, so nothing is installed
# and the checkout goes on PYTHONPATH. Prints the minutes per epoch of teacher and student and the test
# figures of the student; logs and training records go to $OUT (the device tool's folder) or runs/gpu-check.
#
#   bash scripts/gpu_training_check.sh                 # about 7 minutes: teacher 2, student 3, fusion sweep 1, test
#   MINUTES=30 TEACHER_MINUTES=8 bash scripts/gpu_training_check.sh
#   DEVICE=cpu PYTHON=.venv/bin/python MINUTES=2 TEACHER_MINUTES=0.5 bash scripts/gpu_training_check.sh   # a dry run here
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu-check}
run=$(mktemp -d)/recipe
python=${PYTHON:-python3}
export DEVICE=${DEVICE:-cuda}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$out"
$python - <<'EOF' | tee "$out/versions.txt"
import os, torch, transformers
device = os.environ["DEVICE"]
assert device != "cuda" or torch.cuda.is_available(), "no CUDA device"
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name() if device == 'cuda' else device}")
EOF
$python -m hatllm.training.recipe --data data/ml-latest-small --out "$run" --device "$DEVICE" \
    --minutes "${MINUTES:-6}" --teacher-minutes "${TEACHER_MINUTES:-2}" --tune-minutes 1 --tune-users 500 \
    2>&1 | tee "$out/recipe.log"
cp "$run/training.json" "$out/student_training.json"
cp "$run/teacher/training.json" "$out/teacher_training.json"
cp "$run/recipe.json" "$out/recipe.json"
$python -m hatllm.evaluation.evaluate --data data/ml-latest-small --method llm --model "$run" --out "$out/test.json" \
    2>&1 | tee "$out/evaluate.log"
$python - "$out" <<'EOF' | tee "$out/summary.txt"
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
teacher, student = (json.loads((out / f"{who}_training.json").read_text()) for who in ("teacher", "student"))
print(f"teacher: {teacher['epochs_run']} epochs in {teacher['seconds'] / 60:.1f} min "
      f"({teacher['seconds'] / 60 / teacher['epochs_run']:.2f} min/epoch), best valid NDCG@10 {teacher['best_valid_ndcg@10']}")
print(f"student: {student['epochs_run']} epochs in {student['minutes']} min "
      f"({student['minutes'] / student['epochs_run']:.2f} min/epoch), best valid NDCG@10 {student['best_valid_ndcg']}")
test = json.loads((out / "test.json").read_text())
print("test:", {k: test[k] for k in ("HR@10", "NDCG@10", "invalid_outputs")})
EOF
