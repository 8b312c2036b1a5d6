"""`mrt-ray eval`: its argument parsing and budget-forcing planning against hand-computed values, and one end-to-end
run of two tiny random models on Ray + vLLM (structure and value ranges of eval.json, plots written)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mrt_ray.config import ConfigError, ModelConfig
from mrt_ray.eval.forcing import BudgetPlan, force_answer_prompt
from mrt_ray.eval.plan import budget_thinking, episode_curve, equal_token_pairs, natural_thinking, parse_eval_args
from mrt_ray.tasks.embedded import FORCE_TEXT, THINK_CLOSE, THINK_OPEN, make_problem, make_trace

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---- arguments ----------------------------------------------------------------------------------------------------

def test_parse_eval_args_models_labels_and_overrides(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    a = parse_eval_args(["model=grpo:runs/g/", "model=/abs/ckpt/", f"data={data}", "eval.size=5",
                         "task.grader=exact", "model.dtype=bfloat16"])
    assert a.models == (("grpo", "runs/g/"), ("/abs/ckpt", "/abs/ckpt/"))
    assert a.data == str(data)
    # data's own overrides come first, so the user's later task.grader=exact wins
    assert a.overrides == ("task.name=file", f"task.path={data}", "task.grader=math",
                           "eval.size=5", "task.grader=exact", "model.dtype=bfloat16")
    assert parse_eval_args(["data=embedded"]).overrides == ("task.name=embedded", "task.grader=exact")
    plain = parse_eval_args(["eval.size=3"])  # no model (the embedded base), no data (the task as configured)
    assert (plain.models, plain.data, plain.overrides) == ((), "", ("eval.size=3",))
    # a model preset: its keys are applied, its base model ("" path: the configured one) is evaluated by that label
    preset = parse_eval_args(["model=smollm2", "model=lp:runs/lp", "model.dtype=float32"])
    assert preset.models == (("smollm2", ""), ("lp", "runs/lp"))
    assert preset.overrides == ("model=smollm2", "model.dtype=float32")


@pytest.mark.parametrize("args, match", [
    (["model=a:/x", "model=a:/y"], "label 'a' is already used"),
    (["model=/x", "model=/x/"], "label '/x' is already used"),
    (["model="], "model=PATH"),
    (["data=embedded", "data=embedded"], "data= given twice"),
    (["data=/no/such/file.jsonl"], "no such file"),
])
def test_parse_eval_args_errors(args, match):
    with pytest.raises(ConfigError, match=match):
        parse_eval_args(args)


def test_cli_eval_dry_run_and_user_error(tmp_path, capsys):
    from mrt_ray.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1", "answer": "2"}\n')
    assert main(["eval", "--dry-run", "model=a:/x", "model=b:/y", f"data={data}", "task.grader=exact"]) == 0
    out = capsys.readouterr().out
    assert "name: file" in out and f"path: {data}" in out
    assert "grader: exact" in out
    assert main(["eval", "model=a:/x", "model=a:/y"]) == 2
    assert "already used" in capsys.readouterr().err


def test_data_file_is_the_eval_set(tmp_path):
    from mrt_ray.config import load_config
    from mrt_ray.tasks.source import PromptSource

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i}+1", "answer": f"so #### {i + 1}"}) + "\n" for i in range(5)))
    cfg = load_config(None, [*parse_eval_args([f"data={data}", "eval.size=3"]).overrides])
    assert (cfg.task.name, cfg.task.grader) == ("file", "math")
    source = PromptSource(cfg, _char_tok()[2])
    assert [p.answer for p in source.eval] == ["3", "4", "5"]  # the rows training holds out: the last eval.size


def test_missing_model_dir_fails_before_ray(tmp_path):
    from mrt_ray.config import load_config
    from mrt_ray.eval.runner import EvalRunner

    cfg = load_config(None, [f"run.dir={tmp_path}/eval"])
    with pytest.raises(FileNotFoundError, match="model=a: /no/such/dir is not a directory"):
        EvalRunner(cfg, [("a", "/no/such/dir")])


def test_a_training_run_dir_stands_for_its_latest_checkpoint(tmp_path):
    from mrt_ray.checkpoint import write_manifest
    from mrt_ray.models import resolve_model_path

    ckpt = tmp_path / "run" / "checkpoints" / "step_000007"
    (ckpt / "hf").mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    write_manifest(ckpt)  # a checkpoint counts once its manifest is written
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_000007")
    assert resolve_model_path(str(tmp_path / "run"), ModelConfig()) == str(ckpt / "hf")
    assert resolve_model_path(str(ckpt / "hf"), ModelConfig()) == str(ckpt / "hf")


# ---- budget-forcing planning --------------------------------------------------------------------------------------

def _char_tok():
    from mrt_ray.bootstrap import build_tokenizer

    tok = build_tokenizer()
    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    def decode(ids) -> str:
        return tok.decode(ids, skip_special_tokens=True)

    return encode, decode, tok


def test_natural_thinking_on_embedded_traces():
    encode, decode, tok = _char_tok()
    trace = make_trace(make_problem(0, "eval", 3), "verbose", random.Random(0))
    thinking = trace[:trace.index(FORCE_TEXT)]  # everything before "\n</think>\n#### "
    ids = encode(trace) + [tok.eos_token_id]
    assert natural_thinking(ids, decode, THINK_OPEN, THINK_CLOSE) == len(thinking)  # one token per character
    # truncated (no close tag): all of it but the trailing whitespace
    assert natural_thinking(encode("3+5=8\n8-2=6\n\n"), decode, THINK_OPEN, THINK_CLOSE) == 11
    # the model opens the thinking itself: the open tag counts as thinking tokens
    assert natural_thinking(encode("<think>\n1+1=2\n</think>\n#### 2"), decode, THINK_OPEN, THINK_CLOSE) == 13
    assert natural_thinking([], decode, THINK_OPEN, THINK_CLOSE) == 0


def test_budget_thinking_cuts_and_extends():
    ids = [1, 2, 3, 4, 5, 6, 90, 91, 7]  # 6 thinking tokens, then close tag and answer
    marker = [80, 81]
    plan = BudgetPlan.build([4, 6, 8, 20], natural_length=6, marker_len=2)
    ext = list(range(50, 60))  # the continuation after the marker: 10 tokens, thinking closes after 7
    got = budget_thinking(ids, plan, marker, ext, extension_natural=7)
    assert got == [
        [1, 2, 3, 4],  # cut at 4
        [1, 2, 3, 4, 5, 6],  # exactly the natural length
        [1, 2, 3, 4, 5, 6],  # 8 - 6 - 2 = 0 new tokens: no room for the marker, the whole trace is kept
        [1, 2, 3, 4, 5, 6, 80, 81, 50, 51, 52, 53, 54, 55, 56],  # 12 new allowed, the continuation closed after 7
    ]
    assert budget_thinking(ids, plan, marker, ext, extension_natural=10)[3][8:] == ext  # 10 <= 12: all of it
    with pytest.raises(ValueError, match="extension_natural"):
        budget_thinking(ids, plan, marker, ext[:3], extension_natural=7)


def test_forced_prompt_at_the_natural_length_is_the_original_trace():
    encode, decode, tok = _char_tok()
    problem = make_problem(0, "eval", 5)
    trace = make_trace(problem, "repair", random.Random(1))
    ids = encode(trace)
    n = natural_thinking(ids, decode, THINK_OPEN, THINK_CLOSE)
    plan = BudgetPlan.build([10, n], natural_length=n, marker_len=len(encode("\n\nWait")))
    short, full = budget_thinking(ids, plan, encode("\n\nWait"))
    assert decode(force_answer_prompt(encode(problem.prompt), full, encode(FORCE_TEXT))) + problem.answer \
        == problem.prompt + trace
    assert decode(force_answer_prompt(encode(problem.prompt), short, encode(FORCE_TEXT))) \
        == problem.prompt + trace[:10] + FORCE_TEXT


def test_equal_token_pairs():
    # long = 192: m = 12, 6, 3, 2, 1 for 16, 32, 64, 96, 128; n_samples = 4 allows m in [2, 4]
    assert equal_token_pairs([16, 32, 64, 96, 128, 192], 4) == [(64, 192), (96, 192)]
    assert equal_token_pairs([16, 32, 64, 96, 128, 192], 1) == []
    assert equal_token_pairs([8], 4) == []


def test_episode_curve():
    rows = episode_curve([[0.0, 0.5, 1.0], [0.0, 1.0]], [[0, 4, 9], [0, 6]])
    assert rows == [
        {"episode": -1, "j": 0.0, "thinking_tokens_mean": 0.0, "traces": 2},
        {"episode": 0, "j": 0.75, "thinking_tokens_mean": 5.0, "traces": 2},
        {"episode": 1, "j": 1.0, "thinking_tokens_mean": 9.0, "traces": 1},
    ]
    with pytest.raises(ValueError, match="trace 1"):
        episode_curve([[0.0], [0.0, 1.0]], [[0], [0]])


# ---- end to end on Ray + vLLM -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_models(tmp_path_factory) -> list[tuple[str, str]]:
    from mrt_ray.bootstrap import build_model, build_tokenizer
    from mrt_ray.config import BootstrapConfig

    out = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"random{seed}")
        tok = build_tokenizer()
        model = build_model(BootstrapConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128),
                            len(tok), 128, seed=seed)
        model.save_pretrained(path, safe_serialization=True)
        tok.save_pretrained(path)
        out.append((f"random{seed}", str(path)))
    return out


@pytest.fixture(scope="module")
def ray_cluster():
    """The session's Ray if one is up, else a local one (own dashboard port: other runs may hold the default)."""
    import ray

    from mrt_ray.actors import init_ray
    from mrt_ray.config import Config
    from mrt_ray.utils import free_port

    if ray.is_initialized():
        yield
        return
    cfg = Config()
    cfg.ray.num_cpus, cfg.ray.dashboard_port = 2, free_port()
    init_ray(cfg)
    yield
    ray.shutdown()


@pytest.mark.stack
def test_eval_two_models_end_to_end(tmp_path, two_models, ray_cluster):
    from mrt_ray.config import load_config
    from mrt_ray.eval.regret import regret_curve
    from mrt_ray.eval.runner import EvalRunner

    budgets = [4, 8, 16, 40]
    cfg = load_config(None, [f"run.dir={tmp_path}/eval", "rollout.backend=vllm", "eval.size=3", "eval.n_samples=2",
                             f"eval.budgets={budgets}", "eval.target_accuracy=0.5", "rollout.max_new_tokens=24",
                             "model.max_model_len=128", "progress.samples=2", "progress.round_size=2",
                             "eval.targets=[8,16]", "wandb.mode=offline"])
    headline = EvalRunner(cfg, two_models).run()
    run = Path(tmp_path / "eval")
    report = json.loads((run / "eval.json").read_text())
    assert headline["eval_json"] == str(run / "eval.json")
    assert set(headline["models"]) == set(report["models"]) == {"random0", "random1"}
    assert report["eval"]["budgets"] == budgets and report["task"] == "embedded"
    for r in report["models"].values():
        assert r["problems"] == 3
        s = r["sampled"]
        assert s["k"] == 2 and 0 <= s["accuracy"] <= 1 and 0 <= s["maj@k"] <= 1 and 0 <= s["truncation"] <= 1
        assert all(1 <= s[k] <= 24 for k in ("tokens_mean", "tokens_p50", "tokens_p90"))
        assert 0 <= r["greedy"]["accuracy"] <= 1
        rows = r["budget_forcing"]
        assert [b["budget"] for b in rows] == budgets
        for b in rows:
            assert 0 <= b["accuracy"] <= 1 and 0 <= b["thinking_tokens_mean"] <= b["budget"]
        # traces end by 24 tokens and the marker is 6: budget 40 is always an extension, budget 4 never
        assert rows[-1]["extended_share"] == 1.0 and rows[0]["extended_share"] == 0.0
        assert r["extensions"] == 6 and r["forced_prompts"] <= 6 * len(budgets)
        assert [b["regret"] for b in rows] == pytest.approx(
            regret_curve(budgets, [b["accuracy"] for b in rows], budgets))
        # equal tokens: only 16 -> 40 has a vote size (2) within n_samples
        assert [(e["budget_short"], e["m"]) for e in r["majority_at_equal_tokens"]] == [(16, 2)]
        curve = r["episodes"]["curve"]
        assert curve[0]["episode"] == -1 and curve[0]["thinking_tokens_mean"] == 0 and curve[0]["traces"] == 6
        assert all(0 <= row["j"] <= 1 for row in curve)
        assert r["episodes"]["estimate_prefixes"] >= 1
        adh = r["budget_adherence"]
        assert [a["target"] for a in adh] == [8, 16]
        for a in adh:
            assert 0 <= a["accuracy"] <= 1 and 1 <= a["used_mean"] <= 24 and 0 <= a["over_share"] <= 1
            assert a["abs_error_mean"] >= abs(a["used_mean"] - a["target"]) - 1e-9  # mean |x| >= |mean x|
    for name in ("accuracy_vs_tokens", "regret_vs_budget", "pareto", "j_by_episode", "used_vs_target",
                 "accuracy_vs_target"):
        assert Path(report["plots"][name]).read_bytes()[:8] == PNG_MAGIC, name
    assert (run / "eval_config.yaml").is_file() and (run / "wandb_files").is_dir()
