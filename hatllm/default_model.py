"""The project's default model: HatLLM trained on the embedded ml-latest-small dataset.

    python -m hatllm.default_model            # build it if missing, then evaluate it on the test split
    python -m hatllm.default_model --retrain  # rebuild it (about 20 minutes on 2 CPU cores)

The trained checkpoint ships in models/; this command is how it was made.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import evaluate, train

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT / "data" / "ml-latest-small"
DEFAULT_MODEL = ROOT / "models" / "ml-latest-small-hat"
TRAIN_ARGS = ["--schedule", "hat", "--size", "small", "--epochs", "2", "--seed", "0"]


def ensure_default_model(retrain: bool = False) -> Path:
    if retrain or not (DEFAULT_MODEL / "config.json").is_file():
        train.main(["--data", str(DEFAULT_DATA), "--out", str(DEFAULT_MODEL), *TRAIN_ARGS])
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
