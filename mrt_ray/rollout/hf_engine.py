"""The transformers `generate` backend, for machines without vLLM: same interface as VLLMEngine."""
from __future__ import annotations

import torch

from mrt_ray.config import Config
from mrt_ray.rollout.types import Completion, Request
from mrt_ray.weight_sync.buckets import Plan
from mrt_ray.weight_sync.group import create_group, drain, receive_stream


class HFEngine:
    def __init__(self, model_path: str, cfg: Config, seed: int):
        from mrt_ray.models import load_causal_lm, load_tokenizer

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_causal_lm(model_path, cfg.model).to(self.device).eval()
        self.tok = load_tokenizer(model_path, cfg.model)
        self.eos = self.model.generation_config.eos_token_id or self.tok.eos_token_id
        self.group_size = 1

    @torch.no_grad()
    def generate(self, requests: list[Request], version: int) -> list[list[Completion]]:
        result = []
        for r in requests:  # one prompt at a time: its n samples share the prompt and the seed
            s = r.spec
            if s.seed is not None:
                torch.manual_seed(s.seed)
            ids = torch.tensor([r.prompt_ids], device=self.device)
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=s.temperature > 0, num_return_sequences=s.n,
                temperature=s.temperature if s.temperature > 0 else None, top_p=s.top_p if s.temperature > 0 else None,
                top_k=None, max_new_tokens=s.max_tokens, pad_token_id=self.tok.pad_token_id, eos_token_id=self.eos,
                output_scores=True, return_dict_in_generate=True, stop_strings=list(s.stop) or None,
                tokenizer=self.tok if s.stop else None,
            )
            seqs = out.sequences[:, ids.shape[1]:]  # [n, T]
            # processed scores (after temperature/top-p) -> log-probs of the sampled tokens: [n, T]
            lps = torch.stack([sc.log_softmax(-1) for sc in out.scores], 1).gather(-1, seqs[..., None])[..., 0]
            group = []
            for row, lp in zip(seqs.tolist(), lps.tolist()):
                n = row.index(self.eos) + 1 if self.eos in row else len(row)
                text = self.tok.decode(row[:n], skip_special_tokens=True)
                stopped = self.eos in row or any(x in text for x in s.stop)
                group.append(Completion(ids=row[:n], logprobs=lp[:n], text=text, finished=stopped, version=version))
            result.append(group)
        return result

    @torch.no_grad()
    def prompt_logprobs(self, ids: list[int]) -> list[float]:
        x = torch.tensor([ids], device=self.device)
        logp = self.model(x).logits[0, :-1].float().log_softmax(-1)
        return logp.gather(-1, x[0, 1:, None])[:, 0].tolist()

    def init_weight_group(self, backend, host, port, base_rank, world_size, timeout_s, plan: Plan) -> list[int]:
        if getattr(self, "_group", None) is not None:  # a rebuild: abort the old group first
            self._group.close()
        self._group = create_group(backend, host, port, base_rank, world_size, timeout_s, self.device)
        self._plan = plan
        return [base_rank]

    @torch.no_grad()
    def receive_weights(self, push_id: int) -> list[list[int]]:
        """Copy each tensor into the model as its bucket arrives (no second copy of the weights)."""
        params = self.model.state_dict(keep_vars=True)
        sums: list = []
        stream = receive_stream(self._group, self._plan, push_id, sums)
        loaded = set()
        try:
            for name, t in stream:
                p = params.get(name)
                if p is None or p.shape != t.shape:
                    raise RuntimeError(f"HF engine: pushed tensor {name} {tuple(t.shape)} does not match the model "
                                       f"({'absent' if p is None else tuple(p.shape)})")
                p.data.copy_(t)
                loaded.add(name)
        finally:
            drain(stream)
        missing = [n for n in params if n not in loaded and "rotary" not in n]
        if missing:
            raise RuntimeError(f"HF engine: the push did not cover {len(missing)} tensors, e.g. {missing[:3]}")
        return [torch.stack(sums).tolist() if sums else []]
