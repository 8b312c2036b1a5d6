"""Token budgets in the prompt (L1/LCPO): draws that are pure functions of (seed, stream, index), the cues on the
embedded task and on real data (plain and chat templates), the prompt source with budgets (train, eval, a resumed
source), the reward step reading each prompt's budget, the per-step adherence metrics, the eval's adherence rows,
and the config checks."""
from __future__ import annotations

import json

import pytest

from mrt_ray.bootstrap import build_tokenizer, cache_key, sft_batch, sft_cued
from mrt_ray.config import BudgetConfig, ConfigError, load_config
from mrt_ray.eval.adherence import adherence_row
from mrt_ray.rewards import get_grader
from mrt_ray.rewards.score import score
from mrt_ray.rollout.types import Completion
from mrt_ray.tasks.budget import Budget, budget_stats, cue_text, draw_budget
from mrt_ray.tasks.embedded import cued_prompt, make_problem, task_problem
from mrt_ray.tasks.source import PromptSource
from mrt_ray.trajectory import Trajectory
from mrt_ray.validation import validate


def test_draws_are_pure_uniform_and_split_by_kind() -> None:
    bc = BudgetConfig(min_tokens=16, max_tokens=20, max_share=0.0)
    draws = [draw_budget(bc, 0, "train", i) for i in range(400)]
    assert draws == [draw_budget(bc, 0, "train", i) for i in range(400)]  # same (seed, stream, index), same budget
    assert {b.tokens for b in draws} == {16, 17, 18, 19, 20}  # both ends included
    assert {b.kind for b in draws} == {"exact"}
    assert draws != [draw_budget(bc, 1, "train", i) for i in range(400)]  # seeds differ
    assert draws != [draw_budget(bc, 0, "eval", i) for i in range(400)]  # so do streams
    assert {draw_budget(BudgetConfig(16, 20, 1.0), 0, "train", i).kind for i in range(50)} == {"max"}
    share = sum(draw_budget(BudgetConfig(16, 20, 0.5), 0, "train", i).kind == "max" for i in range(1000)) / 1000
    assert 0.45 < share < 0.55
    assert draw_budget(BudgetConfig(), 0, "train", 3) is None  # max_tokens 0: budgets off


def test_cues() -> None:
    assert cue_text(Budget(48), "Think for {n} tokens.", "Think for maximum {n} tokens.") == "Think for 48 tokens."
    assert cue_text(Budget(48, "max"), "Think for {n} tokens.", "Think for maximum {n} tokens.") == \
        "Think for maximum 48 tokens."
    assert cued_prompt("3+5-2=?\n<think>\n", " [48]") == "3+5-2=? [48]\n<think>\n"


def _embedded_cfg(*overrides: str):
    return load_config(None, ["train.prompts_per_step=4", "eval.size=3", "algo.budget.min_tokens=16",
                              "algo.budget.max_tokens=160", "algo.budget.max_share=0.5", *overrides])


def test_embedded_prompts_carry_their_budget() -> None:
    cfg = _embedded_cfg()
    src = PromptSource(cfg)
    batch = src.batch(5)
    for i, p in enumerate(batch):
        b = draw_budget(cfg.algo.budget, cfg.seed, "train", 5 * 4 + i)
        plain = make_problem(cfg.seed, "train", 5 * 4 + i, cfg.task.min_terms, cfg.task.max_terms,
                             cfg.task.max_operand, cfg.task.max_value)
        assert p.meta["budget"] == b and p.id == plain.id and p.answer == plain.answer
        cue = f" [{b.tokens}]" if b.kind == "exact" else f" [<{b.tokens}]"
        assert p.prompt == plain.prompt.replace("=?\n", f"=?{cue}\n")
    assert PromptSource(cfg).batch(5) == batch  # a resumed run's source: the same prompts and budgets
    assert [p.meta["budget"] for p in src.eval] == [draw_budget(cfg.algo.budget, cfg.seed, "eval", i)
                                                    for i in range(3)]
    assert all("budget" not in p.meta and "[" not in p.prompt for p in src.eval_plain)
    with pytest.raises(ValueError, match="already carries a budget"):
        src.cued(src.eval[0], Budget(8))
    assert PromptSource(load_config(None, ["eval.size=2"])).batch(0)[0].meta.get("budget") is None  # budgets off


def _file_source(tmp_path, *overrides: str, chat: bool = False) -> PromptSource:
    from mrt_ray.bootstrap import build_tokenizer

    rows = [{"question": f"What is {i}+1?", "answer": str(i + 1)} for i in range(6)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_tokenizer()
    if chat:
        tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    cfg = load_config(None, ["task.name=file", f"task.path={tmp_path / 'd.jsonl'}", f"task.chat_template={chat}",
                             "eval.size=2", "train.prompts_per_step=2",
                             "algo.budget.min_tokens=100", "algo.budget.max_tokens=4000", "algo.budget.max_share=0.5",
                             "rollout.max_new_tokens=4096", "model.max_model_len=8192", *overrides])
    cfg.task.template = "Q: {question}\nA:"
    validate(cfg)
    return PromptSource(cfg, tok)


def test_real_data_prompts_append_the_l1_cue_to_the_question(tmp_path) -> None:
    src = _file_source(tmp_path)
    for p in src.batch(0) + src.eval:
        b = p.meta["budget"]
        words = "Think for" if b.kind == "exact" else "Think for maximum"
        assert p.prompt == f"Q: {p.meta['question']} {words} {b.tokens} tokens.\nA:"
    chat = _file_source(tmp_path, chat=True)
    p = chat.cued(chat.eval_plain[0], Budget(512))
    assert p.prompt == f"user: {p.meta['question']} Think for 512 tokens.\nassistant:"


def test_real_data_reserves_room_for_the_cue(tmp_path) -> None:
    # a prompt may have max_model_len - max_new_tokens (4096) - the longest cue (" Think for maximum 4000 tokens.",
    # 31 characters) - 1 tokens; "Q: What is 0+1?\nA:" has 18: it fits at 4146, not at 4145
    assert len(_file_source(tmp_path, "model.max_model_len=4146").eval) == 2
    with pytest.raises(ValueError, match="prompt has 18 tokens > max_prompt_tokens=17"):
        _file_source(tmp_path, "model.max_model_len=4145")


def _traj(problem, text: str, n: int, finished: bool = True) -> Trajectory:
    return Trajectory(problem=problem, prompt_ids=[0], completion=Completion(ids=[1] * n, logprobs=[0.0] * n,
                                                                            text=text, finished=finished), group=0)


def test_score_hands_each_prompt_its_budget_and_steps_log_adherence() -> None:
    cfg = _embedded_cfg("algo=l1_exact", "algo.l1_alpha=0.01")
    src = PromptSource(cfg)
    p = src.cued(src.eval_plain[0], Budget(40))
    group = [_traj(p, f"#### {p.answer}", 30), _traj(p, "#### -1", 40), _traj(p, f"#### {p.answer}", 60, False)]
    stats = score([group], cfg, get_grader("exact"))
    assert [t.reward for t in group] == pytest.approx([1 - 0.1, 0.0, -0.2])  # the truncated sample is wrong
    assert stats["accuracy"] == pytest.approx(1 / 3)
    assert budget_stats([group]) == pytest.approx({"budget_target_mean": 40.0, "budget_abs_error": 10.0,
                                                   "budget_over_share": 1 / 3})
    assert budget_stats([[_traj(src.eval_plain[0], "", 3)]]) == {}


def test_adherence_row_hand_computed() -> None:
    # two prompts x two samples at target 10: used (8, 12) and (10, 14) -> per-prompt means 10 and 12
    row = adherence_row(10, [[True, False], [True, True]], [[8, 12], [10, 14]])
    assert row == pytest.approx({"target": 10, "accuracy": 0.75, "accuracy_se": 0.25, "used_mean": 11.0,
                                 "used_se": 1.0, "abs_error_mean": 2.0, "rel_error_mean": 0.2, "over_share": 0.5})
    with pytest.raises(ValueError, match="differ in shape"):
        adherence_row(10, [[True]], [[8, 9]])


@pytest.mark.parametrize(("overrides", "expect"), [
    (["algo.reward=l1_exact"], "algo.reward=l1_exact needs a budget in every prompt"),
    (["algo=l1_exact", "algo.budget.max_share=0.5"], "algo.reward=l1_exact rewards exact budgets only"),
    (["algo.budget.max_tokens=300"], "max_tokens (300) <= rollout.max_new_tokens (192)"),
    (["algo.budget.min_tokens=50", "algo.budget.max_tokens=40"], "1 <= min_tokens (50) <= max_tokens (40)"),
    (["algo.budget.min_tokens=0", "algo.budget.max_tokens=40"], "1 <= min_tokens (0)"),
    (["algo.budget.min_tokens=16"], "budgets off"),
    (["algo.reward=thinkprune"], "needs algo.token_limit > 0 or algo.schedule.token_limit"),
    (["algo.token_limit=300"], "reaches 300 > rollout.max_new_tokens (192)"),
    (["eval.targets=[16,400]"], "eval.targets=[16, 400] must not exceed rollout.max_new_tokens (192)"),
    (["task.name=file", "task.path=x.jsonl", "algo=l1_exact", "algo.budget.cue=Think briefly."],
     "must both hold {n}"),
    (["bootstrap.budget_min_tokens=200", "bootstrap.budget_max_tokens=100"], "bootstrap.budget_min_tokens=200 must"),
    (["task=embedded_backtrack", "bootstrap.budget_share=0.5"], "task.traces=backtrack has none"),
])
def test_budget_config_mistakes(overrides: list[str], expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        validate(load_config(None, overrides))
    assert expect in str(e.value) and "\n" not in str(e.value)


def test_bootstrap_budget_cues_take_their_share_and_leave_the_traces_alone() -> None:
    """bootstrap.budget_share puts a drawn cue into that share of SFT prompts (the budget independent of the trace),
    never touches the others, and enters the cache key only when on (existing bases keep their keys)."""
    plain, cued = load_config(None, []), load_config(None, ["bootstrap.budget_share=0.5"])
    assert cache_key(plain) == cache_key(load_config(None, ["bootstrap.budget_max_tokens=90"]))
    assert cache_key(cued) != cache_key(plain)
    assert cache_key(cued) != cache_key(load_config(None, ["bootstrap.budget_share=0.5",
                                                           "bootstrap.budget_max_share=0"]))
    prompts = [sft_cued(task_problem(cued.task, 0, "sft", i), cued.bootstrap, 0, i).prompt for i in range(400)]
    tagged = [p for p in prompts if " [" in p]
    assert 160 < len(tagged) < 240  # ~half
    assert 0.3 < sum(" [<" in p for p in tagged) / len(tagged) < 0.7  # half of the cues ask for a maximum
    for i in range(400):
        p = task_problem(cued.task, 0, "sft", i)
        out = sft_cued(p, cued.bootstrap, 0, i)
        if out.prompt != p.prompt:
            n = int(out.prompt.split(" [")[1].split("]")[0].lstrip("<"))
            assert 16 <= n <= 160 and out.prompt.endswith("]\n<think>\n") and out.answer == p.answer
        assert sft_cued(p, plain.bootstrap, 0, i) == p  # off: untouched
    tok = build_tokenizer()
    ids_plain, labels_plain, _ = sft_batch(tok, plain.task, plain.bootstrap, 0, 0, 8)
    ids_cued, labels_cued, _ = sft_batch(tok, cued.task, cued.bootstrap, 0, 0, 8)
    learned = [[t for t in row.tolist() if t != -100] for row in labels_plain]
    assert learned == [[t for t in row.tolist() if t != -100] for row in labels_cued]  # same traces, cue is context
    assert not ids_cued.equal(ids_plain)
