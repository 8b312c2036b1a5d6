"""Real-data loaders: formats, gold-answer extraction, prompts, and every bad-input case."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrt_ray.config import TaskConfig
from mrt_ray.tasks.data import DataError, champ_to_jsonl, load_problems, normalize_answer


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def cfg(**kw) -> TaskConfig:
    return TaskConfig(name="file", **kw)


ROWS = [
    {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
    {"question": "  Compute 1/2 + 0.  ", "answer": "So it is $\\boxed{\\frac{1}{2}}$."},
    {"question": "What is 6*7?", "answer": 42},
]


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize("raw, gold", [
    ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
    ("a #### 1 #### 7 ", "7"),
    ("first \\boxed{3}, finally \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{ {a}+{b} }", "{a}+{b}"),
    ("\\fbox{5}", "5"),
    ("  x^2 + 1 ", "x^2 + 1"),
    (42, "42"),
    (2.0, "2"),
    (0.5, "0.5"),
    (-3, "-3"),
])
def test_normalize_answer(raw, gold):
    assert normalize_answer(raw) == gold


# --------------------------------------------------------------------------- formats


def test_jsonl_prompts_answers_ids(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", [ROWS[0], "", ROWS[1], "   ", ROWS[2]])
    res = load_problems(cfg(path=str(path), template="Q: {question}\nA:"))
    assert [p.id for p in res.problems] == ["gsm-1", "gsm-3", "gsm-5"]  # JSONL rows are line numbers
    assert [p.answer for p in res.problems] == ["7", "\\frac{1}{2}", "42"]
    assert res.problems[0].prompt == "Q: Tom has 3 apples and buys 4. How many?\nA:"
    assert res.problems[1].prompt == "Q: Compute 1/2 + 0.\nA:"
    assert res.skipped == {} and res.source == str(path)
    assert res.problems[2].meta == {"row": 5, "question": "What is 6*7?"}  # the question re-renders budget cues


def test_template_with_braces_is_plain_replace(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"question": "f(x)={x}", "answer": "1"}])
    res = load_problems(cfg(path=str(path), template="{a} {question} <think>\n"))
    assert res.problems[0].prompt == "{a} f(x)={x} <think>\n"


def test_json_list_and_path_argument(tmp_path):
    path = tmp_path / "math.json"
    path.write_text(json.dumps(ROWS))
    res = load_problems(cfg(), path=str(path))
    assert [(p.id, p.answer) for p in res.problems] == [("math-1", "7"), ("math-2", "\\frac{1}{2}"), ("math-3", "42")]


def test_parquet_with_dotted_keys(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "problem": ["2+2?", "3+3?"],
        "meta": [{"answer": "#### 4", "level": 1}, {"answer": "\\boxed{6}", "level": 2}],
    })
    pq.write_table(table, tmp_path / "train.parquet")
    res = load_problems(cfg(path=str(tmp_path / "train.parquet"), question_key="problem", answer_key="meta.answer"))
    assert [(p.id, p.prompt, p.answer) for p in res.problems] == [
        ("train-1", "2+2?\n", "4"), ("train-2", "3+3?\n", "6")]


def test_hf_dataset_and_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list(ROWS[:2]).save_to_disk(str(tmp_path / "single"))
    res = load_problems(cfg(path=str(tmp_path / "single")))
    assert [(p.id, p.answer) for p in res.problems] == [("single-1", "7"), ("single-2", "\\frac{1}{2}")]

    test_rows = [ROWS[2], {"question": "9-2?", "answer": 7}]  # an integer answer column
    dd = DatasetDict({"train": Dataset.from_list(ROWS[:1]), "test": Dataset.from_list(test_rows)})
    dd.save_to_disk(str(tmp_path / "dd"))
    res = load_problems(cfg(path=str(tmp_path / "dd"), split="test"))
    assert [(p.id, p.prompt, p.answer) for p in res.problems] == [("dd-1", "What is 6*7?\n", "42"),
                                                                  ("dd-2", "9-2?\n", "7")]
    assert res.source == f"{tmp_path / 'dd'}[test]"
    with pytest.raises(DataError, match=r"no split 'validation' \(task.split\); the dataset has splits "
                                        r"\['test', 'train'\]"):
        load_problems(cfg(path=str(tmp_path / "dd"), split="validation"))


# --------------------------------------------------------------------------- bad input


BAD_CASES = [
    ('{"question": "1+1?", "answer": "2"', r"line 2: invalid JSON: Expecting ',' delimiter"),
    ('[1, 2]', r"line 2: row is not a JSON object \(got list\)"),
    ({"q": "1+1?", "answer": "2"}, r"line 2: missing question key 'question' \(row keys: \['answer', 'q'\]\)"),
    ({"question": "1+1?", "ans": "2"}, r"line 2: missing answer key 'answer' \(row keys: \['ans', 'question'\]\)"),
    ({"question": " \n ", "answer": "2"}, r"line 2: empty question 'question'"),
    ({"question": 5, "answer": "2"}, r"line 2: question 'question' must be a string, got int"),
    ({"question": "1+1?", "answer": ["2"]}, r"line 2: answer must be a string or a number, got list"),
    ({"question": "1+1?", "answer": None}, r"line 2: answer must be a string or a number, got NoneType"),
    ({"question": "1+1?", "answer": True}, r"line 2: answer must be a string or a number, got bool"),
    ({"question": "1+1?", "answer": "work ####  "}, r"line 2: empty answer"),
    ({"question": "1+1?", "answer": "\\boxed{2"}, r"line 2: answer has an unbalanced \\boxed\{"),
]


@pytest.mark.parametrize("bad, message", BAD_CASES)
def test_bad_row_is_an_error_naming_file_and_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], bad, ROWS[2]])
    with pytest.raises(DataError, match=r"bad\.jsonl " + message):
        load_problems(cfg(path=str(path)))


def test_dotted_key_missing_names_the_inner_keys(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "meta": {"level": 1}}])
    with pytest.raises(DataError, match=r"d\.jsonl line 1: missing answer key 'meta.answer' "
                                        r"\('meta' keys: \['level'\]\)"):
        load_problems(cfg(path=str(path), answer_key="meta.answer"))


def test_non_utf8_line_is_reported_not_raised_raw(tmp_path):
    path = tmp_path / "enc.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"enc\.jsonl line 2: not valid UTF-8 \(byte 0xe9 at column 18\)"):
        load_problems(cfg(path=str(path)))
    res = load_problems(cfg(path=str(path), on_bad_row="skip"))
    assert [p.id for p in res.problems] == ["enc-1"] and res.skipped == {"not_utf8": 1}


def test_skip_mode_counts_every_reason(tmp_path):
    rows = [ROWS[0]] + [bad for bad, _ in BAD_CASES] + [ROWS[2]]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    res = load_problems(cfg(path=str(path), on_bad_row="skip"))
    assert [p.id for p in res.problems] == ["mixed-1", f"mixed-{len(rows)}"]
    assert res.skipped == {"invalid_json": 1, "not_an_object": 1, "missing_question_key": 1, "missing_answer_key": 1,
                           "empty_question": 1, "bad_question_type": 1, "bad_answer_type": 3, "empty_answer": 1,
                           "unbalanced_boxed": 1}
    assert sum(res.skipped.values()) == len(BAD_CASES)
    assert res.skipped_examples["bad_answer_type"].startswith(f"{path} line 8: answer must be")


def test_json_file_level_errors(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('[{"question": "a", "answer": "1"},\n {"question": }]')
    with pytest.raises(DataError, match=r"broken\.json: invalid JSON at line 2 column 15"):
        load_problems(cfg(path=str(bad)))
    obj = tmp_path / "obj.json"
    obj.write_text('{"question": "a", "answer": "1"}')
    with pytest.raises(DataError, match=r"obj\.json: a \.json data file must hold a list of objects, got dict"):
        load_problems(cfg(path=str(obj)))
    enc = tmp_path / "enc.json"
    enc.write_bytes(b'[\n{"question": "\xff", "answer": "1"}]')
    with pytest.raises(DataError, match=r"enc\.json: not valid UTF-8 at line 2 \(byte 0xff\)"):
        load_problems(cfg(path=str(enc)))
    items = tmp_path / "items.json"
    items.write_text(json.dumps([ROWS[0], "text"]))
    with pytest.raises(DataError, match=r"items\.json item 2: row is not a JSON object \(got str\)"):
        load_problems(cfg(path=str(items)))


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"data file not found: .*nope\.jsonl"):
        load_problems(cfg(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(DataError, match="no data path: set task.path"):
        load_problems(cfg())
    (tmp_path / "x.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match=r"x\.csv: unsupported data format '\.csv'"):
        load_problems(cfg(path=str(tmp_path / "x.csv")))
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"plain: a directory, but not one saved by datasets' save_to_disk"):
        load_problems(cfg(path=str(tmp_path / "plain")))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"junk\.parquet: not a readable Parquet file"):
        load_problems(cfg(path=str(tmp_path / "junk.parquet")))


def test_empty_dataset_is_an_error(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", ["", ""])
    with pytest.raises(DataError, match=r"empty\.jsonl: no usable rows$"):
        load_problems(cfg(path=str(empty)))
    all_bad = write_jsonl(tmp_path / "allbad.jsonl", [{"q": 1}, "nope"])
    with pytest.raises(DataError, match=r"allbad\.jsonl: no usable rows; skipped \{'missing_question_key': 1, "
                                        r"'invalid_json': 1\}, e\.g\. .*allbad\.jsonl line 1: missing question key"):
        load_problems(cfg(path=str(all_bad), on_bad_row="skip"))


def test_bad_settings(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", ROWS)
    with pytest.raises(DataError, match=r"task.on_bad_row='drop' is not one of \['error', 'skip'\]"):
        load_problems(cfg(path=str(path), on_bad_row="drop"))
    with pytest.raises(DataError, match=r"task.template='Q:' has no \{question\} placeholder"):
        load_problems(cfg(path=str(path), template="Q:"))
    with pytest.raises(DataError, match="task.system_prompt is only used with task.chat_template=true"):
        load_problems(cfg(path=str(path), system_prompt="Be brief."))
    with pytest.raises(DataError, match="task.chat_template=true needs the model's tokenizer"):
        load_problems(cfg(path=str(path), chat_template=True))


# --------------------------------------------------------------------------- tokenizer: chat template, length


CHAT = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:\n{% endif %}")


def make_tokenizer(chat_template: str | None = CHAT):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "system:", "user:", "assistant:", "be", "brief.", "what", "is", "1+1?", "a", "long", "question"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", chat_template=chat_template)


def test_chat_template_with_and_without_system_prompt(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"question": "what is 1+1?", "answer": "2"}])
    tok = make_tokenizer()
    res = load_problems(cfg(path=str(path), chat_template=True), tokenizer=tok)
    assert res.problems[0].prompt == "user: what is 1+1?\nassistant:\n"
    res = load_problems(cfg(path=str(path), chat_template=True, system_prompt="be brief."), tokenizer=tok,
                        max_prompt_tokens=8)
    assert res.problems[0].prompt == "system: be brief.\nuser: what is 1+1?\nassistant:\n"
    assert res.problems[0].meta["prompt_tokens"] == 8  # system: be brief. user: what is 1+1? assistant:
    with pytest.raises(DataError, match="tokenizer has no chat template"):
        load_problems(cfg(path=str(path), chat_template=True), tokenizer=make_tokenizer(None))


def test_prompt_longer_than_max_prompt_tokens(tmp_path):
    rows = [{"question": "what is 1+1?", "answer": "2"}, {"question": "a long long long question", "answer": "3"}]
    path = write_jsonl(tmp_path / "len.jsonl", rows)
    tok = make_tokenizer()
    with pytest.raises(DataError, match=r"len\.jsonl line 2: prompt has 5 tokens > max_prompt_tokens=4"):
        load_problems(cfg(path=str(path)), tokenizer=tok, max_prompt_tokens=4)
    res = load_problems(cfg(path=str(path), on_bad_row="skip"), tokenizer=tok, max_prompt_tokens=4)
    assert [p.id for p in res.problems] == ["len-1"] and res.skipped == {"prompt_too_long": 1}
    assert res.problems[0].meta["prompt_tokens"] == 3
    assert len(load_problems(cfg(path=str(path)), tokenizer=tok).problems) == 2  # no limit given: no check


# --------------------------------------------------------------------------- real data: champ-dataset


def test_champ_dataset_as_real_data(tmp_path):
    out = tmp_path / "champ.jsonl"
    assert champ_to_jsonl(out) == 270
    res = load_problems(cfg(path=str(out), template="Problem: {question}\nAnswer:"))
    assert len(res.problems) == 270 and res.skipped == {}
    assert all(p.answer.strip() for p in res.problems)
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first["id"] == "P_Combinatorics_1" and res.problems[0].answer == first["answer"] == "239"
    assert res.problems[0].prompt == f"Problem: {first['question']}\nAnswer:"
    assert not any("@@" in p.prompt or "@@" in p.answer for p in res.problems)
