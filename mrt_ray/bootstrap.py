"""`mrt-ray bootstrap`: the embedded base policy, made here because nothing can be downloaded.

A character-level tokenizer (a `tokenizer.json` that AutoTokenizer and vLLM load) and a small Qwen2 causal LM,
trained by supervised fine-tuning on a deliberately over-thinking mix of trace styles (mrt_ray/tasks/embedded.py), so
that RL has both accuracy and length to improve; with task.traces=backtrack, on linearised searches instead
(mrt_ray/tasks/backtrack.py; bootstrap.sft_loss=suffix: loss only on the attempt after the last backtrack). Saved in
HF format (safetensors), cached under `bootstrap.cache_dir/<config hash>`, deterministic for a seed.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from mrt_ray import console
from mrt_ray.config import BootstrapConfig, BudgetConfig, Config, TaskConfig
from mrt_ray.tasks import Problem, backtrack
from mrt_ray.tasks.budget import cue_text, draw_budget
from mrt_ray.tasks.embedded import BUDGET_CUE, BUDGET_MAX_CUE, cued_prompt, make_trace, style_weights, task_problem
from mrt_ray.utils import atomic_dir, seed_everything

SPECIALS = ["<pad>", "<eos>", "<unk>"]
CHARS = ["\n"] + [chr(c) for c in range(32, 127)]


def build_tokenizer():
    """Character-level tokenizer: one token per printable ASCII character or newline, plus <pad>/<eos>/<unk>.

    Built as a byte-level BPE with no merges (Qwen2's tokenizer class), so every character is one token AND the
    saved files reload identically: AutoTokenizer (and so vLLM) maps a Qwen2 model to Qwen2Tokenizer, which rebuilds
    its own byte-level pipeline; a plain WordLevel tokenizer silently lost its newline tokens on that reload."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_chars = bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(SPECIALS + [byte_chars[ord(c)] for c in CHARS])}
    return Qwen2Tokenizer(vocab=vocab, merges=[], unk_token="<unk>", eos_token="<eos>", pad_token="<pad>",
                          model_max_length=4096, clean_up_tokenization_spaces=False)


def build_model(cfg: BootstrapConfig, vocab_size: int, max_len: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    mcfg = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max(512, max_len),
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=SPECIALS.index("<eos>"),
        pad_token_id=SPECIALS.index("<pad>"),
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(mcfg)


def cache_key(cfg: Config) -> str:
    """Hash of everything the base policy depends on (bootstrap settings, task shape, seed, context length)."""
    relevant = {
        "bootstrap": {k: v for k, v in asdict(cfg.bootstrap).items()
                      if k not in ("cache_dir", "threads", "sft_loss") and not k.startswith("budget_")},
        "task": {k: getattr(cfg.task, k) for k in ("min_terms", "max_terms", "max_operand", "max_value")},
        "seed": cfg.seed,
        "max_model_len": cfg.model.max_model_len,
        "format": 7,  # 2: byte-level char tokenizer; 3: difficulty-dependent mix; 7: estimate, then compute
    }
    if cfg.bootstrap.budget_share > 0:  # budget cues enter the key only when on: keys without them stay as they were
        relevant["budget_cues"] = {k: v for k, v in asdict(cfg.bootstrap).items() if k.startswith("budget_")}
    if cfg.task.traces != "r1":  # the other families enter the key only when chosen: r1 keys stay as they were
        relevant["traces"] = {"family": cfg.task.traces, "format": backtrack.FORMAT, "sft_loss": cfg.bootstrap.sft_loss}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:12]


def base_model_dir(cfg: Config) -> Path:
    return Path(cfg.bootstrap.cache_dir) / cache_key(cfg)


def sft_batch(tok, task: TaskConfig, bc: BootstrapConfig, seed: int, step: int, batch: int):
    """One SFT batch: ids [B, T], labels [B, T] (-100 on prompt, unlearned context and padding), attention mask
    [B, T]. r1 traces: each problem's trace style is drawn from the mix at its difficulty (`style_weights`).
    backtrack traces: `backtrack.search_example`; with sft_loss=suffix the text up to the last backtrack line is
    context (no loss), as the reference's sft_suffix."""
    rng = random.Random(f"{seed}/sft/{step}")
    rows = []
    for i in range(batch):
        if task.traces == "backtrack":
            p, trace = backtrack.search_example(task, seed, step * batch + i)
            cut = backtrack.suffix_start(trace) if bc.sft_loss == "suffix" else 0
        else:
            p = sft_cued(task_problem(task, seed, "sft", step * batch + i), bc, seed, step * batch + i)
            weights = style_weights(bc.style_weights_easy, bc.style_weights_hard, p.meta["difficulty_frac"])
            if not any(weights.values()):
                raise ValueError("bootstrap.style_weights_easy/_hard give every trace style weight 0")
            style = rng.choices(list(weights), weights=list(weights.values()))[0]
            trace, cut = make_trace(p, style, rng), 0
        context_ids = tok(p.prompt + trace[:cut], add_special_tokens=False)["input_ids"]
        comp_ids = tok(trace[cut:], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append((context_ids, comp_ids))
    width = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((batch, width), tok.pad_token_id)
    labels = torch.full((batch, width), -100)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, (a, b) in enumerate(rows):
        n = len(a) + len(b)
        ids[i, :n] = torch.tensor(a + b)
        labels[i, len(a):n] = torch.tensor(b)
        mask[i, :n] = 1
    return ids, labels, mask


def sft_cued(p: Problem, bc: BootstrapConfig, seed: int, index: int) -> Problem:
    """SFT problem `index`, its prompt with an L1 budget cue for a `bc.budget_share` of indices. The budget is drawn
    as training draws it (`draw_budget`) but says nothing about the trace that follows: the base learns to read a
    cue, not to follow one."""
    if bc.budget_share == 0 or random.Random(f"{seed}/sft-cue/{index}").random() >= bc.budget_share:
        return p
    cues = BudgetConfig(min_tokens=bc.budget_min_tokens, max_tokens=bc.budget_max_tokens,
                        max_share=bc.budget_max_share)
    budget = draw_budget(cues, seed, "sft", index)
    return dataclasses.replace(p, prompt=cued_prompt(p.prompt, cue_text(budget, BUDGET_CUE, BUDGET_MAX_CUE)))


@torch.no_grad()
def hf_evaluate(model, tok, problems, max_new_tokens: int, greedy: bool = True, batch: int = 100, seed: int = 0,
                attempts: Callable[[str], int] | None = None):
    """Accuracy and completion tokens with HF generate (used to report the base policy; training evals use vLLM);
    with `attempts` (completion text -> attempts in its search), also the mean attempts and the share that
    backtrack."""
    from mrt_ray.tasks.embedded import grade

    model.eval()
    tok.padding_side = "left"
    correct, lengths, searched = [], [], []
    torch.manual_seed(seed)
    for s in range(0, len(problems), batch):
        chunk = problems[s:s + batch]
        enc = tok([p.prompt for p in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=1.0 if not greedy else None,
            top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        )
        for p, row in zip(chunk, out[:, enc["input_ids"].shape[1]:].tolist()):
            n = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            text = tok.decode(row[:n], skip_special_tokens=True)
            correct.append(grade(text, p.answer) and tok.eos_token_id in row)
            lengths.append(n)
            searched += [attempts(text)] if attempts else []
    acc = sum(correct) / len(correct)
    out = {
        "accuracy": acc,
        "accuracy_se": math.sqrt(acc * (1 - acc) / len(correct)),
        "mean_tokens": sum(lengths) / len(lengths),
        "n": len(correct),
    }
    if searched:
        out["attempts_mean"] = sum(searched) / len(searched)
        out["backtrack_share"] = sum(a > 1 for a in searched) / len(searched)
    return out


def bootstrap(cfg: Config, force: bool = False, eval_size: int | None = None) -> Path:
    """Train (or find in the cache) the embedded base policy; returns its HF directory."""
    out = base_model_dir(cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:  # concurrent runs wait for the one that trains
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "bootstrap.json").is_file() and not force:
            return out
        _train_base(cfg, out, eval_size)
    return out


def _train_base(cfg: Config, out: Path, eval_size: int | None) -> None:
    bc = cfg.bootstrap
    seed_everything(cfg.seed)
    torch.set_num_threads(bc.threads)
    tok = build_tokenizer()
    model = build_model(bc, len(tok), cfg.model.max_model_len, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=bc.lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / max(1, bc.warmup))
        * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, bc.steps)))),
    )
    t0 = time.time()
    model.train()
    bar = tqdm(range(bc.steps), desc=f"bootstrap SFT ({n_params / 1e6:.2f}M params)", mininterval=2,
               file=console.term())
    for step in bar:
        ids, labels, mask = sft_batch(tok, cfg.task, bc, cfg.seed, step, bc.batch_size)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.time() - t0
    n_eval = eval_size if eval_size is not None else cfg.eval.size
    problems = [task_problem(cfg.task, cfg.seed, "eval", i)
                for i in range(n_eval)]
    count = (lambda text: len(backtrack.attempt_answers(text))) if cfg.task.traces == "backtrack" else None
    greedy = hf_evaluate(model, tok, problems, cfg.rollout.max_new_tokens, greedy=True, attempts=count)
    sampled = hf_evaluate(model, tok, problems, cfg.rollout.max_new_tokens, greedy=False, seed=cfg.seed,
                          attempts=count)
    report = {
        "params": n_params, "sft_steps": bc.steps, "final_loss": loss.item(), "train_seconds": round(train_s, 1),
        "traces": cfg.task.traces, "sft_loss": bc.sft_loss,
        "total_seconds": round(time.time() - t0, 1), "greedy": greedy, "sampled": sampled, "cache_key": cache_key(cfg),
    }
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "bootstrap.json").write_text(json.dumps(report, indent=2))
