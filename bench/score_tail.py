"""What scoring from the shortest prompt saves in the learner: one micro-batch's forward + backward through
`policy_logprobs`, scored from position 0 (every position through the output head) against from the prompt's end
(`start` = prompt - 1, through `logits_to_keep`, what the learner does), side by side in one process.

    .venv/bin/python bench/score_tail.py --model DIR [--batch 8] [--prompt-tokens 42] \\
        [--completion-tokens 16 64] [--rounds 4] [--block 2] [--threads 2]

Random token ids (the cost does not depend on them), fp32, no optimizer step. Blocks alternate (full, tail), (tail,
full), ... so drift hits both alike; per round the tail block's median over the full block's gives a paired ratio.
A benchmark, not a test: nothing is asserted.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from mrt_ray.learner.objective import policy_logprobs


def timed_step(model, ids: torch.Tensor, attn: torch.Tensor, start: int, first: int) -> float:
    """Forward + backward of the completion positions' log-probs (position `first` on), scored from `start`."""
    t0 = time.perf_counter()
    logp, _ = policy_logprobs(model, ids, attn, 0.7, start)  # [B, T-1-start]
    logp[:, first - start:].sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an HF causal-LM directory (e.g. runs/models/SmolLM2-...)")
    ap.add_argument("--batch", type=int, default=8, help="sequences per micro-batch (learner.micro_batch_size)")
    ap.add_argument("--prompt-tokens", type=int, default=42)
    ap.add_argument("--completion-tokens", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--block", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).train()
    vocab = model.config.vocab_size
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters())} params; torch {torch.__version__}, "
          f"{args.threads} threads; {args.batch} sequences of {args.prompt_tokens} prompt tokens\n")
    print("| completion tokens | full s (median) | tail s (median) | tail / full per round, median [min, max] |")
    print("|---|---|---|---|")
    for c in args.completion_tokens:
        ids = torch.randint(0, vocab, (args.batch, args.prompt_tokens + c))
        attn = torch.ones_like(ids)
        first = args.prompt_tokens - 1  # the first position that predicts a completion token
        starts = {"full": 0, "tail": first}
        for s in starts.values():  # warm-up
            timed_step(model, ids, attn, s, first)
        times = {k: [] for k in starts}
        ratios = []
        for r in range(args.rounds):
            block = {}
            for k in (("full", "tail") if r % 2 == 0 else ("tail", "full")):
                block[k] = [timed_step(model, ids, attn, starts[k], first) for _ in range(args.block)]
                times[k] += block[k]
            ratios.append(statistics.median(block["tail"]) / statistics.median(block["full"]))
        print(f"| {c} | {statistics.median(times['full']):.2f} | {statistics.median(times['tail']):.2f} | "
              f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] |")


if __name__ == "__main__":
    main()
