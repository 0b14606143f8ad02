"""The shipped training recipe, end to end, in one time budget: a SASRec teacher, then the HatLLM student.

    python -m hatllm.training.recipe --data data/ml-latest-small --out runs/ml-latest-small/recipe
    python -m hatllm.training.recipe --data ../shared/datasets/ml-1m --out runs/ml-1m/recipe --schedule causal --seed 1
    python -m hatllm.training.recipe --data data/ml-latest-small --out runs/gpu --device cuda

1. The teacher: SASRec (`baselines.sasrec`), early-stopped on validation NDCG@10, capped at
   `--teacher-minutes`. It is kept in `<out>/teacher/` (the served model does not need it).
2. The student (`train`): item codes started from the teacher's item embeddings, trained on the next
   item's code with the teacher's distribution as a second target, early-stopped on validation NDCG@10 by
   the service's constrained search, capped so that all steps fit in `--minutes`.
3. Fusion (`tune_fusion`): the weight of the teacher in the student's search (decode-time fusion),
   chosen on validation users and written to `<out>/fusion.json`; the service serves the pair.

Rerunning the command goes on where it stopped: a finished teacher is reused, the student resumes.
Arguments after `--` go to `train` unchanged (e.g. `-- --size small --lr 1e-3`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hatllm.data import dataset_folder
from hatllm.training import sasrec, train, tune_fusion

STUDENT_DEFAULTS = ["--size", "mini", "--lr", "2e-3", "--batch-size", "8", "--epochs", "10", "--patience", "4"]


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=dataset_folder)
    p.add_argument("--out", required=True, help="the student checkpoint folder (the teacher goes to <out>/teacher)")
    p.add_argument("--minutes", type=float, default=45.0, help="budget for teacher and student together")
    p.add_argument("--teacher-minutes", type=float, default=15.0)
    p.add_argument("--tune-minutes", type=float, default=3.0, help="time kept for choosing the fusion weight")
    p.add_argument("--tune-users", type=int, default=2000, help="validation users ranked per fusion weight")
    p.add_argument("--schedule", default="hat")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device of teacher and student training, e.g. cuda "
                                                   "(the fusion sweep runs on the CPU, as the service does)")
    args, student_args = p.parse_known_args(argv)
    student_args = [a for a in student_args if a != "--"]
    out = Path(args.out)
    teacher = out / "teacher"
    record_path = out / "recipe.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record["recipe_args"] = list(argv if argv is not None else sys.argv[1:])
    common = ["--data", args.data, "--seed", str(args.seed), "--threads", str(args.threads)]
    if not (teacher / "sasrec.pt").is_file():
        started = time.time()
        sasrec.main([*common, "--out", str(teacher), "--max-minutes", str(args.teacher_minutes), "--device", args.device])
        record["teacher_minutes"] = round((time.time() - started) / 60, 1)
        out.mkdir(parents=True, exist_ok=True)
        record_path.write_text(json.dumps(record, indent=1))
    student_minutes = args.minutes - record.get("teacher_minutes", 0.0) - args.tune_minutes
    train.main([*common, "--out", str(out), "--schedule", args.schedule, "--teacher", str(teacher), "--teacher-init",
                "--max-minutes", str(student_minutes), "--resume", "--device", args.device, *STUDENT_DEFAULTS,
                *student_args])
    # the student's own count of its epochs' minutes: it survives a kill and a resume, a wall clock here would not
    record["student_minutes"] = json.loads((out / "training.json").read_text())["minutes"]
    started = time.time()
    record["fusion_weight"] = tune_fusion.main(["--data", args.data, "--model", str(out), "--prior", str(teacher),
                                                "--users", str(args.tune_users), "--threads", str(args.threads)])
    record["tune_minutes"] = round((time.time() - started) / 60, 1)
    record["total_minutes"] = round(sum(record.get(f"{step}_minutes", 0.0) for step in ("teacher", "student", "tune")), 1)
    record_path.write_text(json.dumps(record, indent=1))
    print(f"recipe done in {record['total_minutes']} min (teacher {record.get('teacher_minutes')}, "
          f"student {record['student_minutes']}, fusion {record['tune_minutes']}): {out}")
    return out


if __name__ == "__main__":
    main()
