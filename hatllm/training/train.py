"""Train a HatLLM (or causal baseline) recommender from scratch on a dataset folder.

    python -m hatllm.training.train --data data/ml-latest-small --out runs/ml-latest-small/hat --schedule hat
    python -m hatllm.training.train ... --teacher runs/ml-latest-small/sasrec     # distil a SASRec teacher as well
    python -m hatllm.training.train ... --resume                                  # go on from the last finished epoch

Because every mask is prefix-consistent, one forward over a window of up to max_history+1 consecutive
items trains every item of the window at once: item j is predicted from exactly the prompt it would
get at inference with items [0, j) of the window as its history.

Two recipes:
  - item codes (default): every item gets its own code token at the start of its span (`item_codes`);
    the loss is the cross-entropy of the next item's code over all codes (a full-catalog softmax), and
    optionally (`--teacher`) the KL divergence to a SASRec teacher's distribution over the next item.
  - titles only (`--no-item-codes`): the model writes titles token by token; every title token and
    close delimiter is a target.

Training runs to convergence: after every epoch the validation users are ranked by the same constrained
search as the service (NDCG@10, seen items excluded), the best epoch's checkpoint is kept in `--out`,
and training stops after `--patience` epochs without a better one. With `--max-minutes` the run plans
the epochs that fit by the mean epoch so far, and the learning-rate cosine ends with the last of them.
The whole training state is saved after each epoch, so `--resume` continues an interrupted run and ends
with the same model.
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

from hatllm.core.catalog import ModelCatalog
from hatllm.core.item_codes import ItemCodes
from hatllm.core.layers import parse_schedule
from hatllm.core.prompt import DEFAULT_INSTRUCTION, PromptBuilder
from hatllm.data import DEFAULT_MAX_HISTORY, Split, dataset_folder, leave_one_out, load_dataset
from hatllm.evaluation.evaluate import LLMRanker
from hatllm.evaluation.metrics import evaluate_ranker
from hatllm.evaluation.plots import plot_validation
from hatllm.reference.modeling import HAT_ATTENTION, MODEL_SIZES, forward, make_config, save_model
from hatllm.sasrec import SASRecRanker, left_pad
from hatllm.training.tokenizer import ITEM_CLOSE, ITEM_OPEN, train_tokenizer

STATE_FILE = "train_state.pt"


def training_windows(split: Split, titles: dict[str, str], builder: PromptBuilder, codes: dict | None):
    """`Split.training_windows` as token sequences: (token ids, next-token-is-target flags, item ids)."""
    return [(*builder.training_sequence([titles[i] for i in items], [codes[i] for i in items] if codes else None), items)
            for items in split.training_windows()]


def batches(windows, batch_size: int, rng: random.Random):
    """Length-bucketed batches: little padding, still random order."""
    order = list(range(len(windows)))
    rng.shuffle(order)
    pool = batch_size * 32
    result = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(windows[i][0]))
        result += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(result)
    return result


def collate(windows, idx: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and the positions whose next token is a target."""
    length = max(len(windows[i][0]) for i in idx)
    ids = torch.full((len(idx), length), pad_id, dtype=torch.long)
    predicts = torch.zeros((len(idx), length), dtype=torch.bool)
    for row, i in enumerate(idx):
        seq, pred, _ = windows[i]
        ids[row, : len(seq)] = torch.tensor(seq)
        predicts[row, : len(pred)] = torch.tensor(pred)
    return ids, predicts


class CodeObjective:
    """Next-item cross-entropy over all item codes at each item-open position, plus (with a teacher) the
    KL divergence from the teacher's next-item distribution."""

    def __init__(self, codes: ItemCodes, item_ids: list[str], teacher: SASRecRanker | None = None,
                 distill_weight: float = 1.0, device: str = "cpu"):
        """`device`: the student's (the teacher already sits on its own)."""
        self.column = {item: c for c, item in enumerate(item_ids)}  # item -> its column in the code softmax
        self.code_ids = torch.tensor([codes.codes[item][0] for item in item_ids], device=device)
        self.teacher, self.distill_weight = teacher, distill_weight
        if teacher is not None:  # teacher column -> code column
            self.teacher_order = torch.tensor([teacher.index[item] - 1 for item in item_ids], device=teacher.device)

    def code_logits(self, model, hidden: torch.Tensor) -> torch.Tensor:
        return (hidden @ model.lm_head.weight[self.code_ids].T).float()

    def loss(self, model, windows, idx, ids, predicts, autocast: bool) -> torch.Tensor:
        opens = (ids == model.config.hat_item_open_token_id) & predicts
        opens[torch.arange(len(ids), device=ids.device), opens.int().argmax(1)] = False  # a window's first item has no history in it
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
            hidden = forward(model, ids).hidden[opens]
            scores = self.code_logits(model, hidden)
        # Row-major order of `opens` = window by window, item by item (the first item has no open target).
        targets = torch.tensor([self.column[item] for i in idx for item in windows[i][2][1:]], device=ids.device)
        loss = F.cross_entropy(scores, targets)
        if self.teacher is not None:
            with torch.no_grad():
                teacher = self.teacher_scores([windows[i][2] for i in idx])
            loss = loss + self.distill_weight * F.kl_div(scores.log_softmax(-1), teacher.log_softmax(-1),
                                                         log_target=True, reduction="batchmean")
        return loss

    @torch.no_grad()
    def init_codes_from_teacher(self, model) -> None:
        """Start each code embedding from the teacher's item embedding (its first dims, rescaled to the
        model's init scale): the collaborative geometry is there from the first step."""
        source = self.teacher.model.item_vectors[self.teacher_order]
        source = source * (model.config.initializer_range / source.std())
        embeddings = model.get_input_embeddings().weight
        embeddings[self.code_ids, : source.shape[1]] = source.to(embeddings.device)

    def teacher_scores(self, item_windows: list[list[str]]) -> torch.Tensor:
        """The teacher's scores for every item after each prefix of each window, in code order."""
        model = self.teacher.model
        seqs = left_pad([[self.teacher.index[i] for i in w[:-1]] for w in item_windows], model.max_len).to(self.teacher.device)
        real = seqs != 0
        return model.scores(model(seqs)[real])[:, self.teacher_order]


class TitleObjective:
    """Cross-entropy of every title token and close delimiter (the titles-only recipe)."""

    def loss(self, model, windows, idx, ids, predicts, autocast: bool) -> torch.Tensor:
        with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
            hidden = forward(model, ids).hidden[predicts]
            return F.cross_entropy(model.lm_head(hidden).float(), torch.roll(ids, -1, dims=1)[predicts])


def build_model(args, titles: dict[str, str], item_ids: list[str]):
    """Tokenizer (with one code token per item for the code recipe), prompt builder, codes and model."""
    code_tokens = ItemCodes.code_tokens(len(item_ids)) if args.item_codes else []
    tokenizer = train_tokenizer([*titles.values(), DEFAULT_INSTRUCTION], args.vocab_size, code_tokens)
    open_id, close_id = tokenizer.convert_tokens_to_ids([ITEM_OPEN, ITEM_CLOSE])
    builder = PromptBuilder(tokenizer, open_id, close_id, DEFAULT_INSTRUCTION)
    codes = None
    if args.item_codes:
        code_ids = tokenizer.convert_tokens_to_ids(code_tokens)
        codes = ItemCodes({item: (code,) for item, code in zip(item_ids, code_ids)})
    num_layers = args.layers or MODEL_SIZES[args.size]["num_hidden_layers"]
    config = make_config(
        len(tokenizer), args.size, parse_schedule(args.schedule, num_layers), open_id, close_id,
        DEFAULT_INSTRUCTION, tokenizer.bos_token_id, tokenizer.pad_token_id, num_layers,
    )
    config.hat_max_history = args.max_history
    config._attn_implementation = HAT_ATTENTION
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    if codes and args.code_logit_range:
        # Code logits are h . e with unit-RMS h and init-sized e: about +-0.2, far too flat for a softmax over
        # thousands of items (a teacher's top item has ~10%). A larger final-norm gain lets the first
        # epochs learn which item, not the logit scale.
        with torch.no_grad():
            model.model.norm.weight.fill_(args.code_logit_range / (config.hidden_size * config.initializer_range))
    return tokenizer, builder, codes, model


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=dataset_folder, help="dataset folder (any supported format)")
    p.add_argument("--out", required=True, help="output folder for the HF checkpoint")
    p.add_argument("--schedule", default="hat", help="'hat', 'causal', 'hat:N_IN,N_CR' or 'IN,OR,...'")
    p.add_argument("--size", default="small", choices=sorted(MODEL_SIZES))
    p.add_argument("--layers", type=int, help="override the size's number of layers")
    p.add_argument("--item-codes", action=argparse.BooleanOptionalAction, default=True,
                   help="one collaborative code token per item (default); --no-item-codes: titles only")
    p.add_argument("--teacher", help="SASRec checkpoint folder to distil (item-code recipe)")
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--teacher-init", action="store_true", help="start the code embeddings from the teacher's")
    p.add_argument("--code-logit-range", type=float, default=10.0,
                   help="largest code logit at init (sets the final norm's gain; 0: leave it at 1)")
    p.add_argument("--epochs", type=int, default=100, help="most epochs (early stopping usually ends sooner)")
    p.add_argument("--patience", type=int, default=5, help="epochs without a better validation NDCG@10 before stopping")
    p.add_argument("--max-minutes", type=float,
                   help="training time budget: no epoch starts that would end past it (judged by the mean epoch so far), "
                        "and the learning-rate schedule ends with the last epoch that fits")
    p.add_argument("--valid-users", type=int, help="rank a fixed random sample of validation users (default: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-history", type=int, default=DEFAULT_MAX_HISTORY)
    p.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary of the titles (codes come on top)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                   help="bf16 autocast (default: where the device computes bf16 natively, see native_bf16)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (the teacher runs there too)")
    p.add_argument("--resume", action="store_true", help=f"continue from {STATE_FILE} in --out")
    p.add_argument("--stop-after", type=int, help="end this run after this many more epochs (continue with --resume)")
    args = p.parse_args(argv)
    if args.bf16 is None:
        args.bf16 = native_bf16(args.device)
    return args


def native_bf16(device: str) -> bool:
    """Whether bf16 autocast speeds training up on `device`: CPUs that oneDNN runs bf16 on (AVX-512 and
    newer; 1.4x over fp32 on this project's recipe with AVX512-BF16), CUDA GPUs that support it. On an
    AVX2-only CPU bf16 is emulated: it trained the amazon-games student about 10x slower than fp32."""
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.device(device).type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.teacher and not args.item_codes:
        raise SystemExit("--teacher needs the item-code recipe")
    if args.teacher_init and not args.teacher:
        raise SystemExit("--teacher-init needs --teacher")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    state_path = out / STATE_FILE
    state = torch.load(state_path, map_location="cpu", weights_only=False) if args.resume and state_path.is_file() else None
    if args.resume and state is None:
        print(f"no {state_path}: starting from scratch")

    dataset = load_dataset(args.data)
    print(f"{dataset.name}: {len(dataset.catalog)} items, {len(dataset.sequences)} users, "
          f"{dataset.num_interactions} interactions ({dataset.report.summary()})")
    split = leave_one_out(dataset, args.max_history)
    titles = dataset.catalog.titles
    item_ids = sorted(titles)
    tokenizer, builder, codes, model = build_model(args, titles, item_ids)
    model.to(args.device)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"layers {model.config.hat_layer_types}, item codes: {len(codes) if codes else 'none'}")

    teacher = SASRecRanker.load(args.teacher, args.device) if args.teacher else None
    objective = CodeObjective(codes, item_ids, teacher, args.distill_weight, args.device) if codes else TitleObjective()
    windows = training_windows(split, titles, builder, codes.codes if codes else None)
    tokens = sum(len(w[0]) for w in windows)
    print(f"{len(windows)} training windows, {tokens} tokens, {tokens / sum(len(w[2]) for w in windows):.1f} per item")
    catalog = ModelCatalog.build(builder, titles, codes, split.popularity())
    valid = split.valid
    if args.valid_users and args.valid_users < len(valid):
        valid = random.Random(args.seed).sample(valid, args.valid_users)

    steps_per_epoch = math.ceil(len(windows) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, min(steps_per_epoch * args.epochs // 20, steps_per_epoch // 2))
    planned = args.epochs
    # the lambda reads `planned` when called, so the cosine ends where the budget's latest plan ends
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, steps_per_epoch * planned))
    log, best, best_epoch, epoch, seconds = [], -1.0, 0, 0, 0.0
    if args.teacher_init and state is None:
        objective.init_codes_from_teacher(model)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        log, best, best_epoch, epoch, seconds = state["log"], state["best"], state["best_epoch"], state["epoch"], state["seconds"]
        print(f"resumed after epoch {epoch} (best valid NDCG@10 {best:.4f} at epoch {best_epoch})")

    out.mkdir(parents=True, exist_ok=True)
    meta = {"dataset": str(args.data), "schedule": model.config.hat_layer_types, "args": vars(args),
            "train_windows": len(windows), "train_tokens": tokens}
    stop_at = epoch + args.stop_after if args.stop_after else args.epochs
    planned = planned_epochs(args.epochs, seconds, epoch, args.max_minutes)
    while epoch < min(planned, stop_at) and epoch - best_epoch < args.patience:
        epoch += 1
        started = time.time()
        model.train()
        total = 0.0
        order = batches(windows, args.batch_size, random.Random(args.seed * 1_000_003 + epoch))
        for idx in tqdm(order, desc=f"epoch {epoch}", unit="batch", leave=False):
            ids, predicts = (t.to(args.device) for t in collate(windows, idx, tokenizer.pad_token_id))
            loss = objective.loss(model, windows, idx, ids, predicts, args.bf16)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total += loss.item()
        model.eval()
        ranker = LLMRanker(model, catalog)
        ndcg = evaluate_ranker(ranker, valid, titles, progress=False)["NDCG@10"]
        seconds += time.time() - started
        planned = planned_epochs(args.epochs, seconds, epoch, args.max_minutes)
        log.append({"epoch": epoch, "loss": round(total / len(order), 4), "valid_ndcg@10": ndcg,
                    "minutes": round(seconds / 60, 2), "planned_epochs": planned})
        print(json.dumps(log[-1]), flush=True)
        if ndcg > best:
            best, best_epoch = ndcg, epoch
            save_checkpoint(model, tokenizer, codes, out)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "log": log, "best": best, "best_epoch": best_epoch, "epoch": epoch, "seconds": seconds}, state_path)
        write_progress(meta, log, best, best_epoch, seconds, out, f"{dataset.name} {args.schedule}")
    write_progress(meta, log, best, best_epoch, seconds, out, f"{dataset.name} {args.schedule}")
    print(f"saved {out}: best valid NDCG@10 {best:.4f} at epoch {best_epoch}, {meta['minutes']} min")
    return out


def planned_epochs(epochs: int, seconds: float, epochs_done: int, max_minutes: float | None) -> int:
    """The epochs this run trains: `epochs`, or as many as fit in the budget by the mean epoch so far (no
    epoch starts that would end past it, so a recipe's total holds). The learning-rate cosine ends there, so
    a run that its budget cuts short still anneals. It depends only on the saved state: a resumed run plans
    as the uninterrupted one did."""
    if not max_minutes or not epochs_done:
        return epochs
    return max(epochs_done, min(epochs, math.floor(max_minutes * 60 * epochs_done / seconds)))


def warmup_cosine(step: int, warmup: int, total_steps: int) -> float:
    """The learning-rate factor: a linear warmup, then a cosine from 1 at step 0 to 0 at `total_steps`."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def write_progress(meta: dict, log: list[dict], best: float, best_epoch: int, seconds: float, out: Path, title: str) -> None:
    """training.json and its plot, rewritten after every epoch (an interrupted run still shows its curve)."""
    meta.update(best_epoch=best_epoch, best_valid_ndcg=best, epochs_run=len(log), minutes=round(seconds / 60, 1), log=log)
    (out / "training.json").write_text(json.dumps(meta, indent=1))
    if log:
        plot_validation(log, out / "training.png", title)


def save_checkpoint(model, tokenizer, codes: ItemCodes | None, out: Path) -> None:
    save_model(model, tokenizer, out)
    if codes is not None:
        codes.save(out)


if __name__ == "__main__":
    main()
