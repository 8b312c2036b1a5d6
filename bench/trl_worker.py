"""TRL's side of bench/vs_trl.py: GRPOTrainer on the workload the parent describes, stepped in blocks on command.

Runs in .venv-bench (bench/setup_trl.sh) with the repo root on PYTHONPATH (for mrt-ray's grader only):

    .venv-bench/bin/python bench/trl_worker.py SPEC.json

SPEC.json: model (HF dir), rows ([{prompt, answer}], in step order: prompts_per_step rows per step), prompts_per_step,
n_samples, max_new_tokens, temperature, top_p, lr, betas, grad_clip, seed, threads, output_dir, grader (mrt-ray's
`task.grader`, `task.answer_marker`, `task.grader_timeout`, `task.dataset`, as a list).

Protocol (stdout lines starting with "BENCH ", everything else is TRL's own output):
  BENCH {"ready": ...versions...}         then the worker reads a command line from stdin
  stdin "go K"                            run K steps, then print
  BENCH {"steps": [per-step records]}     and read the next command; "stop" ends the run.
A step's clock runs from on_step_begin to on_step_end (generation happens inside it); the parent's commands are
read outside it. Phases: generate (`_generate`: tokenize, sample, decode), score (`_calculate_rewards`), prepare
(`_generate_and_score_completions`: generate + score + advantages), forward (`compute_loss`), and
backward_optimizer = step - prepare - forward.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _emit(obj: dict) -> None:
    print("BENCH " + json.dumps(obj), flush=True)


def _command() -> int:
    """Steps to run next (0 = stop)."""
    line = sys.stdin.readline().strip()
    if line == "stop" or not line:
        return 0
    verb, _, k = line.partition(" ")
    if verb != "go" or not k.isdigit():
        raise ValueError(f"trl_worker: expected 'go K' or 'stop' on stdin, got {line!r}")
    return int(k)


def main() -> None:
    spec = json.loads(open(sys.argv[1]).read())
    os.environ["OMP_NUM_THREADS"] = str(spec["threads"])
    import torch
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mrt_ray.rewards.grading import get_grader  # the grader mrt-ray's run uses (task.grader)

    torch.set_num_threads(spec["threads"])
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    eos = tok.eos_token_id
    grader = get_grader(*spec["grader"])
    phase: dict[str, float] = {}
    last: dict[str, float] = {}

    def timed(name: str, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phase[name] = phase.get(name, 0.0) + time.perf_counter() - t
        return wrapper

    def outcome(prompts, completions, completion_ids, answer, **_):
        """1 for a finished (ended with EOS) completion whose answer is right, else 0: mrt-ray's outcome reward."""
        right = grader.many(completions, answer)
        out = [1.0 if ids and ids[-1] == eos and ok else 0.0 for ids, ok in zip(completion_ids, right)]
        last.update(accuracy=sum(out) / len(out), tokens_mean=sum(map(len, completion_ids)) / len(completion_ids),
                    truncation=sum(not ids or ids[-1] != eos for ids in completion_ids) / len(completion_ids))
        return out

    class Timed(GRPOTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            for name, attr in (("generate", "_generate"), ("score", "_calculate_rewards"),
                               ("prepare", "_generate_and_score_completions"), ("forward", "compute_loss")):
                setattr(self, attr, timed(name, getattr(self, attr)))

    class Blocks(TrainerCallback):
        def __init__(self):
            self.left, self.records, self.t = 0, [], 0.0

        def _next(self, control):
            self.left = _command()
            if self.left == 0:
                control.should_training_stop = True
            return control

        def on_train_begin(self, args, state, control, **kw):
            _emit({"ready": {"trl": trl.__version__, "transformers": transformers.__version__,
                             "torch": torch.__version__, "threads": torch.get_num_threads(),
                             "init_seconds": time.perf_counter() - t0,
                             "params": sum(p.numel() for p in model.parameters())}})
            return self._next(control)

        def on_step_begin(self, args, state, control, **kw):
            phase.clear()
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step = time.perf_counter() - self.t
            rec = {"step_seconds": step, **{f"{k}_seconds": v for k, v in phase.items()}, **last}
            rec["backward_optimizer_seconds"] = step - phase.get("prepare", 0.0) - phase.get("forward", 0.0)
            self.records.append(rec)
            self.left -= 1
            if self.left == 0:
                _emit({"steps": self.records})
                self.records = []
                return self._next(control)
            return control

    n_steps = len(spec["rows"]) // spec["prompts_per_step"]
    args = GRPOConfig(
        output_dir=spec["output_dir"], max_steps=n_steps, per_device_train_batch_size=spec["prompts_per_step"]
        * spec["n_samples"], gradient_accumulation_steps=1, num_generations=spec["n_samples"],
        max_completion_length=spec["max_new_tokens"], temperature=spec["temperature"], top_p=spec["top_p"],
        beta=0.0, gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, shuffle_dataset=False,
        learning_rate=spec["lr"], adam_beta1=spec["betas"][0], adam_beta2=spec["betas"][1], weight_decay=0.0,
        max_grad_norm=spec["grad_clip"], lr_scheduler_type="constant", loss_type="dapo", seed=spec["seed"],
        report_to="none", logging_steps=10**9, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    trainer = Timed(model=model, reward_funcs=outcome, args=args, processing_class=tok,
                    train_dataset=Dataset.from_list(spec["rows"]), callbacks=[Blocks()])
    trainer.train()


if __name__ == "__main__":
    main()
