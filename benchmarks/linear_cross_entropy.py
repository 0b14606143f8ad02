"""SASRec's training head, forward and backward: the plain full softmax against the chunked one.

    python -m benchmarks.linear_cross_entropy                          # a ml-latest-small batch (128 x 50 positions)
    python -m benchmarks.linear_cross_entropy --items 3416 --chunks 128,256,512   # ml-1m's catalog

Times `F.cross_entropy(hidden @ weight.T, targets)` and `linear_cross_entropy` at each chunk size on random
tensors of one batch's shape (the real positions of 128 windows of 50 items, dim 64), and checks that both
give the same loss and gradients. Run it on an otherwise idle machine; it uses torch's default threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from hatllm.training.linear_cross_entropy import linear_cross_entropy


def time_head(loss_fn, hidden: torch.Tensor, weight: torch.Tensor, repeats: int) -> tuple[float, tuple]:
    """Median seconds of loss + backward, and the last run's (loss, grad of hidden, grad of weight)."""
    seconds = []
    for _ in range(repeats + 1):  # the first run warms up allocator and thread pool: dropped
        hidden.grad = weight.grad = None
        started = time.perf_counter()
        loss = loss_fn(hidden, weight)
        loss.backward()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds[1:]), (loss.detach(), hidden.grad, weight.grad)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=6400, help="scored positions per batch")
    p.add_argument("--items", type=int, default=9742, help="catalog size (softmax width)")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--chunks", default="64,256,1024", help="chunk sizes (rows) to time")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    hidden = torch.randn(args.rows, args.dim, requires_grad=True)
    weight = (torch.randn(args.items, args.dim) * 0.05).requires_grad_()
    targets = torch.randint(0, args.items, (args.rows,))
    plain_s, expected = time_head(lambda h, w: F.cross_entropy(h @ w.T, targets), hidden, weight, args.repeats)
    print(f"{args.rows} rows x {args.items} items, dim {args.dim}, {torch.get_num_threads()} threads")
    print(f"plain   {plain_s * 1e3:7.1f} ms")
    for chunk in (int(c) for c in args.chunks.split(",")):
        chunked_s, got = time_head(lambda h, w: linear_cross_entropy(h, w, targets, chunk), hidden, weight, args.repeats)
        gap = max((a - b).abs().max().item() for a, b in zip(got, expected))
        print(f"chunk {chunk:5d} {chunked_s * 1e3:7.1f} ms  {plain_s / chunked_s:.2f}x  largest difference {gap:.1e}")


if __name__ == "__main__":
    main()
