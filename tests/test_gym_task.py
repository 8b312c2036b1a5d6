"""reasoning-gym tasks (`task.name=reasoning_gym`): problems are a pure function of (seed, split, index), the splits
never share a draw, difficulty comes from the generator's metadata, both graders (math-verify and the generator's
own scorer) judge real answers, and every bad setting is one clear error."""
from __future__ import annotations

import pytest

from mrt_ray.config import ConfigError, TaskConfig, load_config
from mrt_ray.rewards import get_grader
from mrt_ray.tasks.data import DataError
from mrt_ray.tasks.gym import EVAL_OFFSET, GymTask, check_scorer, split_seed
from mrt_ray.tasks.source import PromptSource
from mrt_ray.validation import validate

CHAIN = {"min_terms": 2, "max_terms": 4, "min_digits": 1, "max_digits": 2}


def task(**kw) -> TaskConfig:
    kw.setdefault("dataset", "chain_sum")
    kw.setdefault("dataset_config", dict(CHAIN))
    kw.setdefault("grader", "math")
    return TaskConfig(name="reasoning_gym", template="Q: {question}\nA:", **kw)


def test_problems_are_a_pure_function_of_seed_split_and_index():
    a, b, c = GymTask(task(), seed=0), GymTask(task(), seed=0), GymTask(task(), seed=1)
    assert [a.problem("train", i) for i in range(20)] == [b.problem("train", i) for i in range(20)]
    assert a.problem("train", 7) == b.problem("train", 7)  # any index, in any order: no state
    assert [a.problem("train", i).prompt for i in range(20)] != [c.problem("train", i).prompt for i in range(20)]
    p = a.problem("eval", 3)
    assert p.id == "chain_sum-eval-3" and p.prompt.startswith("Q: State the final answer") and p.prompt.endswith("A:")
    assert str(int(p.answer)) == p.answer


def test_train_and_eval_never_share_a_draw():
    for seed in range(5):
        assert split_seed(seed, "eval") - split_seed(seed, "train") == EVAL_OFFSET
        assert 0 <= split_seed(seed, "train") < EVAL_OFFSET <= split_seed(seed, "eval") < 2**31
    t = GymTask(task(dataset_config={"min_terms": 3, "max_terms": 4, "min_digits": 3, "max_digits": 3}), seed=0)
    train = {t.problem("train", i).prompt for i in range(300)}
    assert not train & {t.problem("eval", i).prompt for i in range(300)}


def test_difficulty_from_metadata():
    t = GymTask(task(difficulty_key="num_terms"), seed=0)
    levels = {t.problem("eval", i).meta["difficulty"] for i in range(40)}
    assert levels == {2, 3, 4}
    assert "difficulty" not in GymTask(task(), seed=0).problem("eval", 0).meta
    with pytest.raises(DataError, match="task.difficulty_key='level'.*num_digits, num_terms"):
        GymTask(task(difficulty_key="level"), seed=0).problem("eval", 0)


@pytest.mark.parametrize("kw, message", [
    ({"dataset": "chain_sums"}, "task.dataset='chain_sums' is not a reasoning-gym dataset; nearest: chain_sum"),
    ({"dataset_config": {"max_term": 3}}, "task.dataset_config.max_term: chain_sum has no such key"),
    ({"dataset_config": {"seed": 3}}, "task.dataset_config.seed: chain_sum has no such key"),
    ({"dataset_config": {"min_terms": 5, "max_terms": 3}}, "invalid: max_terms must be >= min_terms"),
    ({"dataset": ""}, "needs task.dataset"),
])
def test_bad_settings_are_one_clear_error(kw, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GymTask(task(**kw), seed=0)


def test_prompt_too_long_names_the_problem():
    class Tok:
        def encode(self, text, add_special_tokens=True):
            return list(text)

    with pytest.raises(DataError, match="chain_sum-eval-0: the prompt has .* tokens > .* = 10"):
        GymTask(task(), seed=0, tokenizer=Tok(), max_prompt_tokens=10).problem("eval", 0)


def test_graders_judge_real_answers():
    gold = GymTask(task(), seed=0).problem("eval", 0).answer
    wrong = str(int(gold) + 1)
    for name in ("math", "reasoning_gym"):
        grader = get_grader(name, dataset="chain_sum")
        texts = [f"So the sum is \\boxed{{{gold}}}.", f"The answer is {gold}.", f"\\boxed{{{wrong}}}", "no answer"]
        assert grader.many(texts, [gold] * 4) == [True, True, False, False], name
    rg = get_grader("reasoning_gym", dataset="chain_sum")
    assert rg("\\boxed{1,000}", "1000") and rg("\\boxed{+01000.0}", "1000")  # the generator's own tolerance
    assert rg("\\boxed{1000 apples}", "1000") is False  # partial credit is not right


def test_reasoning_gym_grader_needs_an_answer_only_scorer():
    check_scorer("chain_sum", {"answer": "12"})
    with pytest.raises(DataError, match="the countdown scorer needs more of the problem than its gold answer"):
        GymTask(task(dataset="countdown", dataset_config={}, grader="reasoning_gym"), seed=0)


def _cfg(*overrides: str):
    return load_config(None, ["task.name=reasoning_gym", "task.grader=math", "task.dataset=chain_sum",
                              "task.dataset_config.max_terms=3", "train.prompts_per_step=4", "eval.size=5",
                              *overrides])


def test_prompt_source_steps_and_eval():
    cfg = _cfg()
    assert cfg.task.dataset_config == {"max_terms": 3}
    src, again = PromptSource(cfg), PromptSource(cfg)
    assert [p.id for p in src.batch(2)] == [f"chain_sum-train-{i}" for i in range(8, 12)]
    assert src.batch(2) == again.batch(2)  # a resumed run sees the same prompts
    assert [p.id for p in src.eval] == [f"chain_sum-eval-{i}" for i in range(5)]


def test_validation():
    with pytest.raises(ConfigError, match="task.name=reasoning_gym needs task.dataset"):
        validate(load_config(None, ["task.name=reasoning_gym", "task.grader=math"]))
    with pytest.raises(ConfigError, match="task.grader=reasoning_gym grades reasoning-gym problems"):
        validate(load_config(None, ["task.grader=reasoning_gym"]))
    validate(_cfg("task.grader=reasoning_gym"))
