"""The project's default model: the recipe (`hatllm.training.recipe`) on the embedded ml-latest-small dataset.

    python -m hatllm.training.default_model            # build it if missing, then evaluate it on the test split
    python -m hatllm.training.default_model --retrain  # rebuild it (the recipe's 45-minute budget on 2 CPU cores)

The trained checkpoint ships in models/ (student, its SASRec teacher and fusion.json); this command is how
it was made.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from hatllm.evaluation import evaluate
from hatllm.training import recipe

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = ROOT / "data" / "ml-latest-small"
DEFAULT_MODEL = ROOT / "models" / "ml-latest-small-hat"
RECIPE_ARGS = ["--schedule", "hat", "--seed", "0", "--minutes", "45"]


def ensure_default_model(retrain: bool = False) -> Path:
    if retrain and DEFAULT_MODEL.exists():
        shutil.rmtree(DEFAULT_MODEL)
    if not (DEFAULT_MODEL / "config.json").is_file():
        # relative paths: recipe.json records the arguments, and the checkpoint ships in the repo
        recipe.main(["--data", os.path.relpath(DEFAULT_DATA), "--out", os.path.relpath(DEFAULT_MODEL), *RECIPE_ARGS])
    return DEFAULT_MODEL


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    args = p.parse_args(argv)
    model = ensure_default_model(args.retrain)
    if not args.skip_eval:
        evaluate.main(["--data", str(DEFAULT_DATA), "--method", "llm", "--model", str(model)])


if __name__ == "__main__":
    main()
