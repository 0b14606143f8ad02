"""Train a HatLLM (or causal baseline) recommender from scratch on a dataset folder.

    python -m hatllm.train --data data/ml-latest-small --out runs/ml-latest-small/hat --schedule hat

Because every mask is prefix-consistent, one forward over a window of up to max_history+1 consecutive
items trains every item of the window at once: item j is predicted from exactly the prompt it would
get at inference with items [0, j) of the window as its history.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import LlamaForCausalLM

from .data import Split, leave_one_out, load_dataset
from .masks import parse_schedule
from .modeling import HAT_ATTENTION, MODEL_SIZES, forward, logits, make_config, save_model
from .plots import plot_curves
from .prompt import DEFAULT_INSTRUCTION, PromptBuilder
from .tokenizer import ITEM_CLOSE, ITEM_OPEN, train_tokenizer


def training_windows(split: Split, titles: dict[str, str], builder: PromptBuilder) -> list[tuple[list[int], list[bool]]]:
    """Each user's training items cut into windows of max_history + 1 items, newest window first, so
    the most recent items are trained with a full history."""
    size = split.max_history + 1
    windows = []
    for seq in split.train.values():
        for end in range(len(seq), 0, -size):
            windows.append(builder.training_sequence([titles[i] for i in seq[max(0, end - size) : end]]))
    return windows


def validation_sequences(split: Split, titles: dict[str, str], builder: PromptBuilder) -> list[tuple[list[int], list[bool]]]:
    """Prompt + target item, with only the target's tokens scored (teacher-forced validation loss)."""
    out = []
    for ex in split.valid:
        ids = builder.prompt([titles[i] for i in ex.history])
        predicts = [False] * (len(ids) - 1) + [True] * (len(builder.title_tokens(titles[ex.target])) + 1)
        ids += [*builder.title_tokens(titles[ex.target]), builder.item_close_id]
        out.append((ids, predicts + [False]))
    return out


def batches(seqs, batch_size: int, rng: random.Random, shuffle: bool = True):
    """Length-bucketed batches: little padding, still random order."""
    order = list(range(len(seqs)))
    if shuffle:
        rng.shuffle(order)
    pool = batch_size * 32
    result = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(seqs[i][0]))
        result += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(result)
    return result


def collate(seqs, idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, the positions that predict a target, and those targets."""
    length = max(len(seqs[i][0]) for i in idx)
    ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
    predicts = torch.zeros((len(idx), length), dtype=torch.bool)
    for row, i in enumerate(idx):
        seq, pred = seqs[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        predicts[row, : len(pred)] = torch.tensor(pred)
    targets = torch.roll(ids, -1, dims=1)[predicts]
    return ids, predicts, targets


def sequence_loss(model, ids, predicts, targets, autocast: bool) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        hidden = forward(model, ids).hidden
        return F.cross_entropy(logits(model, hidden[predicts]), targets)


@torch.no_grad()
def evaluate_loss(model, seqs, batch_size: int, pad_id: int, autocast: bool) -> float:
    model.eval()
    total, count = 0.0, 0
    for idx in batches(seqs, batch_size, random.Random(0), shuffle=False):
        ids, predicts, targets = collate(seqs, idx, pad_id)
        total += sequence_loss(model, ids, predicts, targets, autocast).item() * len(targets)
        count += len(targets)
    model.train()
    return total / max(count, 1)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset folder (any supported format)")
    p.add_argument("--out", required=True, help="output folder for the HF checkpoint")
    p.add_argument("--schedule", default="hat", help="'hat', 'causal', 'hat:N_IN,N_CR' or 'IN,OR,...'")
    p.add_argument("--size", default="small", choices=sorted(MODEL_SIZES))
    p.add_argument("--layers", type=int, help="override the size's number of layers")
    p.add_argument("--epochs", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-history", type=int, default=20)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on CPUs with AVX512-BF16/AMX)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    out = Path(args.out)
    started = time.time()

    dataset = load_dataset(args.data)
    print(f"{dataset.name}: {len(dataset.catalog)} items, {len(dataset.sequences)} users, "
          f"{dataset.num_interactions} interactions ({dataset.report.summary()})")
    split = leave_one_out(dataset, args.max_history)
    titles = dataset.catalog.titles

    tokenizer = train_tokenizer([*titles.values(), DEFAULT_INSTRUCTION], args.vocab_size)
    open_id, close_id = tokenizer.convert_tokens_to_ids([ITEM_OPEN, ITEM_CLOSE])
    builder = PromptBuilder(tokenizer, open_id, close_id, DEFAULT_INSTRUCTION)

    num_layers = args.layers or MODEL_SIZES[args.size]["num_hidden_layers"]
    config = make_config(
        len(tokenizer), args.size, parse_schedule(args.schedule, num_layers), open_id, close_id,
        DEFAULT_INSTRUCTION, tokenizer.bos_token_id, tokenizer.pad_token_id, num_layers,
    )
    config._attn_implementation = HAT_ATTENTION
    model = LlamaForCausalLM(config)
    model.train()
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"layers {config.hat_layer_types}")

    windows = training_windows(split, titles, builder)
    valid = validation_sequences(split, titles, builder)
    steps_per_epoch = math.ceil(len(windows) / args.batch_size)
    total_steps = max(1, int(steps_per_epoch * args.epochs))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, total_steps // 20)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )

    history = {"step": [], "train_loss": [], "valid_step": [], "valid_loss": []}
    step = 0
    bar = tqdm(total=total_steps, desc=f"train {args.schedule}", unit="step")
    while step < total_steps:
        for idx in batches(windows, args.batch_size, rng):
            ids, predicts, targets = collate(windows, idx, tokenizer.pad_token_id)
            loss = sequence_loss(model, ids, predicts, targets, args.bf16)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            history["step"].append(step)
            history["train_loss"].append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
            bar.update()
            if step % steps_per_epoch == 0 or step == total_steps:
                history["valid_step"].append(step)
                history["valid_loss"].append(evaluate_loss(model, valid, args.batch_size, tokenizer.pad_token_id, args.bf16))
                bar.write(f"step {step}: valid loss {history['valid_loss'][-1]:.4f}")
            if step == total_steps:
                break
    bar.close()

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    save_model(model, tokenizer, out)
    meta = {
        "dataset": str(args.data), "schedule": config.hat_layer_types, "args": vars(args),
        "train_windows": len(windows), "steps": total_steps, "seconds": round(time.time() - started, 1),
        "final_valid_loss": history["valid_loss"][-1], "history": history,
    }
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    plot_curves(history, out / "training.png", title=f"{dataset.name} {args.schedule}")
    print(f"saved {out} in {meta['seconds']} s (valid loss {meta['final_valid_loss']:.4f})")
    return out


if __name__ == "__main__":
    main()
