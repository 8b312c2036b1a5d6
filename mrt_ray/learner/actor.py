"""Learner: one rank of the DeepSpeed world. Recomputes log-probs, computes the registered loss, steps, saves, and
(rank 0) pushes the weights to the inference workers. A plain class; `trainer.py` makes it a Ray actor.

A shard (what the controller sends each rank) is a dict of lists, one entry per sequence:
  input_ids        list[list[int]]    prompt + completion token ids
  prompt_lens      list[int]
  advantages       list[list[float]]  one per completion token (dense: MRT credits episodes separately)
  rollout_logprobs list[list[float]]  behaviour log-probs from the rollout engine, one per completion token
"""
from __future__ import annotations

import math
import os
import socket
import time
from pathlib import Path

import torch
import torch.distributed as dist

from mrt_ray import safe_state
from mrt_ray.algos.logprobs import gather_logprobs
from mrt_ray.algos.losses import StepNorm
from mrt_ray.config import Config
from mrt_ray.learner import ds
from mrt_ray.learner.objective import microbatch_loss, policy_logprobs, ref_logprobs
from mrt_ray.models import load_causal_lm, load_tokenizer
from mrt_ray.utils import limit_threads, listen_socket, rng_state, set_rng_state, usable_cores
from mrt_ray.weight_sync.buckets import Plan, flatten, state_metas
from mrt_ray.weight_sync.group import await_receivers, create_group, send_stream


def collate(shard: dict, pad_id: int, device) -> dict:
    """Right-padded tensors, scored from `start`, the shortest prompt's length - 1 (the first position that predicts a
    completion token): position t of the *_t tensors scores the prediction of token start+t+1."""
    seqs, plens = shard["input_ids"], shard["prompt_lens"]
    B, T = len(seqs), max(len(s) for s in seqs)
    start = max(0, min(plens) - 1)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros((B, T), dtype=torch.long)
    mask = torch.zeros((B, T - 1 - start))  # [B, T-1-start] 1 where the target is a completion token
    adv = torch.zeros((B, T - 1 - start))
    old = torch.zeros((B, T - 1 - start))
    for b, s in enumerate(seqs):
        p, c = plens[b] - 1 - start, len(s) - plens[b]  # p: the first completion target's position
        ids[b, :len(s)] = torch.tensor(s)
        attn[b, :len(s)] = 1
        mask[b, p:p + c] = 1
        adv[b, p:p + c] = torch.tensor(shard["advantages"][b], dtype=torch.float)
        old[b, p:p + c] = torch.tensor(shard["rollout_logprobs"][b], dtype=torch.float)
    tensors = dict(ids=ids, attn=attn, mask=mask, adv=adv, rollout_lp=old)
    return {**{k: v.to(device) for k, v in tensors.items()}, "start": start}


def learner_threads(cfg: Config, cores: int, ranks: int) -> int:
    """`learner.threads=0` (the default), derived where the rank runs: `ranks` learners on CPU in sync mode share the
    `cores` of their node (generation and estimation are idle while they learn): cores // ranks, at least 1; on GPUs, or
    in async mode (the rollout worker samples while they learn), 1. A set number is kept. On 2 cores one rank on
    two threads measured 0.88x and 1.00x the step of two ranks on one thread each in two side-by-side runs, with a
    faster learn phase in both (docs/performance.md, section 11)."""
    lc = cfg.learner
    if lc.threads:
        return lc.threads
    if lc.num_gpus > 0 or cfg.train.async_rollout:
        return 1
    return max(1, cores // ranks)


class Learner:
    """Made in two steps, so that rank 0 can host the rendezvous on a port nobody else can take: construct every
    rank, ask rank 0 to `listen` on the rendezvous address, then `start` every rank with that port."""

    def __init__(self, cfg: Config, model_path: str, rank: int, world_size: int):
        self.threads = learner_threads(cfg, usable_cores(), world_size)
        limit_threads(self.threads)
        self.cfg, self.model_path, self.rank, self.world = cfg, model_path, rank, world_size
        self._listening: dict[str, socket.socket] = {}  # rank 0: sockets bound for a store, by purpose

    def listen(self, host: str, purpose: str) -> int:
        """Rank 0: bind a socket on `host` (port 0) for the store of `purpose` ("learners": the DeepSpeed world,
        "weights": the weight group); the store takes it over. Returns its port."""
        sock = listen_socket(host)
        self._listening[purpose] = sock
        return sock.getsockname()[1]

    def _listen_fd(self, purpose: str) -> int | None:
        return self._listening.pop(purpose).detach() if self.rank == 0 else None

    def start(self, master_addr: str, master_port: int) -> None:
        """Join the DeepSpeed world (rank 0 hosts its store on the socket from `listen`), load the model, build the
        engine."""
        cfg, model_path = self.cfg, self.model_path
        self.backend = ds.init_distributed(self.rank, self.world, master_addr, master_port,
                                           cfg.learner.collective_timeout_s, self._listen_fd("learners"))
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        torch.manual_seed(cfg.seed)
        self.tok = load_tokenizer(model_path, cfg.model)
        model = load_causal_lm(model_path, cfg.model)
        if cfg.learner.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.ref = None
        if cfg.algo.kl_coef > 0 or cfg.algo.kl_in_reward > 0:  # frozen reference: the initial policy
            self.ref = load_causal_lm(model_path, cfg.model).to(self.device).eval().requires_grad_(False)
        self.engine = ds.initialize(model, cfg, cfg.learner.micro_batch_size)
        self.zero3 = cfg.learner.zero_stage == 3
        state = self._state()
        if not self.zero3 and all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in state.values()):
            # each tensor in a storage of its own (ZeRO-0 fp32: nothing flattened them, as ZeRO-1/2 and DeepSpeed's
            # mixed-precision optimizers do): lay them out flat, so the weight push sends buckets without packing
            flatten(state)
        self.weight_group = None
        self.weight_plan: Plan | None = None

    # ------------------------------------------------------------------ training
    def _all_finite(self, x: torch.Tensor) -> bool:
        flag = torch.tensor([1.0 if torch.isfinite(x).all() else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _micro_batches(self, shard: dict, n_micro: int) -> list[tuple[dict, float]]:
        """`n_micro` collated micro-batches of similar lengths (each is padded to its longest sequence; order kept
        inside a chunk). An empty chunk still runs, with weight 0, so that every rank enters every collective."""
        n = len(shard["input_ids"])
        size = math.ceil(n / n_micro)
        by_length = sorted(range(n), key=lambda j: len(shard["input_ids"][j]))
        out = []
        for i in range(n_micro):
            idx = sorted(by_length[i * size:(i + 1) * size])
            sub = {key: [v[j] for j in (idx or [0])] for key, v in shard.items()}
            out.append((collate(sub, self.tok.pad_token_id, self.device), 1.0 if idx else 0.0))
        return out

    def train_step(self, shard: dict, n_micro: int, norm: StepNorm) -> dict:
        """`learner.ppo_epochs` optimizer steps on this rank's shard, each over exactly `n_micro` micro-batches (equal
        on every rank, so the collectives line up). `norm` holds the whole step's token and sequence counts, so every
        aggregation mode is exact however the step is sharded. Epoch 1 is on-policy (ratio 1); later epochs clip
        against the log-probs of epoch 1."""
        t0 = time.perf_counter()
        ac, temp = self.cfg.algo, self.cfg.rollout.temperature
        batches = self._micro_batches(shard, n_micro)
        old: list[torch.Tensor | None] = [None] * n_micro
        sums: dict[str, float] = {}
        tokens = diff_sum = 0.0
        own_norm = None
        self.engine.train()
        for epoch in range(self.cfg.learner.ppo_epochs):
            for k, (batch, weight) in enumerate(batches):
                mask = batch["mask"] * weight
                logp, logits = policy_logprobs(self.engine, batch["ids"], batch["attn"], temp, batch["start"])
                if old[k] is None:
                    old[k] = logp.detach()
                is_w = None
                if self.cfg.train.async_rollout:  # truncated IS weight: learner's old policy / behaviour policy
                    is_w = torch.exp(old[k] - batch["rollout_lp"]).clamp(max=self.cfg.train.is_clip) * mask
                loss, stats = microbatch_loss(
                    logp, logits, mask, batch["adv"], old[k], ac, norm, self.world,
                    ref_logp=ref_logprobs(self.ref, batch["ids"], batch["attn"], temp, batch["start"]),
                    is_weight=is_w)
                if not self._all_finite(loss.detach()):
                    self.engine.zero_grad()
                    return {"skipped": 1.0, "learn_seconds": time.perf_counter() - t0}
                ds.set_accumulation_boundary(self.engine, k == n_micro - 1)
                self.engine.backward(loss, scale_wrt_gas=False)
                gnorm = ds.step(self.engine)  # ZeRO-0's norm at the boundary (DeepSpeed keeps the others)
                own_norm = own_norm if gnorm is None else gnorm
                ntok = float(mask.sum())
                tokens += ntok
                for key, v in stats.items():
                    sums[key] = sums.get(key, 0.0) + v * ntok
                if epoch == 0:
                    with torch.no_grad():
                        diff_sum += float(((logp.detach() - batch["rollout_lp"]).abs() * mask).sum())
        out = {k: v / max(tokens, 1.0) for k, v in sums.items()}
        out.update(tokens=tokens / self.cfg.learner.ppo_epochs, logprob_diff_sum=diff_sum, skipped=0.0,
                   grad_norm=ds.grad_norm(self.engine, own_norm), lr=self.engine.get_lr()[0],
                   learn_seconds=time.perf_counter() - t0)
        return out

    @torch.no_grad()
    def ref_logprobs(self, shard: dict, n_micro: int) -> list[list[float]]:
        """The frozen reference policy's log-prob of every completion token of the shard's sequences, in shard order
        (for algo.kl_in_reward). Runs on every rank; under ZeRO the reference is a plain replicated module."""
        n = len(shard["input_ids"])
        out: list[list[float]] = [[] for _ in range(n)]
        size = math.ceil(n / max(1, n_micro))
        for i in range(0, n, size):
            idx = list(range(i, min(n, i + size)))
            sub = {key: [v[j] for j in idx] for key, v in shard.items()}
            batch = collate(sub, self.tok.pad_token_id, self.device)
            start, temp = batch["start"], self.cfg.rollout.temperature
            lp = ref_logprobs(self.ref, batch["ids"], batch["attn"], temp, start)  # [b, T-1-start]
            for row, j in enumerate(idx):
                p, c = shard["prompt_lens"][j] - 1 - start, len(shard["input_ids"][j]) - shard["prompt_lens"][j]
                out[j] = lp[row, p:p + c].tolist()
        return out

    # ------------------------------------------------------------------ weights
    def _state(self) -> dict[str, torch.Tensor]:
        # keep_vars: parameter objects (ZeRO-3 gathers them; a tied pair is one object under two names)
        return self.engine.module.state_dict(keep_vars=True)

    def weight_metas(self) -> list[tuple]:
        return state_metas(self._state())

    def init_weight_group(self, backend: str, host: str, port: int, world_size: int, timeout_s: float,
                          plan: Plan) -> None:
        """(Re)join the weight group as its rank 0; a group from before (a rebuild) is aborted first."""
        self.weight_plan = plan
        if self.rank == 0:
            if self.weight_group is not None:
                self.weight_group.close()
            self.weight_group = create_group(backend, host, port, 0, world_size, timeout_s, self.device,
                                             self._listen_fd("weights"))

    def await_receivers(self, push_id: int) -> None:
        """Rank 0: the ready gate of push `push_id` (ZeRO-3 passes it before any rank enters a gather)."""
        await_receivers(self.weight_group, push_id, self.weight_group.timeout_s)

    def _bucket_tensors(self):
        """Each bucket's tensors in entry order; ZeRO-3: gathered one bucket at a time on every rank."""
        state = self._state()
        for bucket in self.weight_plan.buckets:
            ts = [state[e.name] for e in bucket.entries]
            with ds.gathered(ts, self.zero3):
                yield [t.data for t in ts]

    def push_weights(self, push_id: int, zero_copy: bool = True) -> dict:
        """All ranks call this (ZeRO-3 gathers on every rank); rank 0 broadcasts the buckets, from the parameters'
        own storage where it can (`zero_copy`; never for ZeRO-3's gathered copies, which go once their bucket is
        sent). Returns rank 0's per-bucket checksums, its seconds at the ready gate, its seconds sending (gathers,
        packing, broadcasts) and how many buckets it packed."""
        t0 = time.perf_counter()
        sums: list[int] = []
        gate, packed = 0.0, 0
        with torch.no_grad():
            if self.rank == 0:
                sums, gate, packed = send_stream(self.weight_group, self.weight_plan, self._bucket_tensors(), push_id,
                                                 zero_copy and not self.zero3)
            elif self.zero3:  # enter every bucket's gather, send nothing
                for _ in self._bucket_tensors():
                    pass
        return {"sums": sums, "gate_seconds": gate, "seconds": time.perf_counter() - t0 - gate, "packed": packed}

    @torch.no_grad()
    def probe_logprobs(self, ids: list[int]) -> list[float]:
        """log p(ids[t] | ids[:t]) under the current weights (all ranks run it: ZeRO-3 forward is collective)."""
        self.engine.eval()
        x = torch.tensor([ids], device=self.device)
        logits = self.engine(input_ids=x).logits[0, :-1].float()
        return gather_logprobs(logits[None], x[:, 1:])[0].tolist()

    # ------------------------------------------------------------------ checkpoints
    def save_hf(self, path: str) -> None:
        """Policy in HF format (safetensors + tokenizer), written by rank 0 (ZeRO-3: gathered on every rank)."""
        module = self.engine.module
        with ds.gathered(module.parameters(), self.zero3):
            if self.rank == 0:
                module.save_pretrained(path, safe_serialization=True)
                self.tok.save_pretrained(path)

    def save_state(self, path: str, tag: str) -> None:
        """DeepSpeed's state (per-rank shards) and this rank's RNG state, as safetensors + JSON (no pickle)."""
        ds.save_checkpoint(self.engine, path, tag)
        safe_state.save(rng_state(), Path(path) / f"rng_rank_{self.rank}.safetensors")

    def load_state(self, path: str, tag: str) -> None:
        ds.load_checkpoint(self.engine, path, tag)
        set_rng_state(safe_state.load(Path(path) / f"rng_rank_{self.rank}.safetensors"))

    def pid(self) -> int:
        return os.getpid()
