"""Multi-hop QA: reward as the HotpotQA reference, tag parsing, search, loaders, the episode and the ERL loop."""

import json

import pytest
import yaml

from erl_mega.algo.erl import ErlConfig, ErlWorkflow
from erl_mega.algo.memory import ReflectionMemory
from erl_mega.envs.base import make_env, task_seed
from erl_mega.envs.hotpotqa import HotpotQA, answer_reward, extract_boxed, f1_score, parse_search
from erl_mega.envs.qa_corpus import load_corpus, load_dataset, synthetic_dataset
from erl_mega.rollout.engine import SamplingParams

RECORD = {  # the official HotpotQA JSON layout
    "_id": "a1",
    "question": "Which city hosts the Zorblat museum?",
    "answer": "Quentaro",
    "type": "bridge",
    "supporting_facts": [["Zorblat museum", 0], ["Quentaro", 1]],
    "context": [["Zorblat museum", ["The Zorblat museum is in Quentaro."]], ["Quentaro", ["Quentaro is a city.", "It is old."]]],
}
HF_RECORD = dict(  # the Hugging Face (parquet) layout
    RECORD,
    supporting_facts={"title": ["Zorblat museum"], "sent_id": [0]},
    context={"title": ["Zorblat museum"], "sentences": [["The Zorblat museum is in Quentaro."]]},
)


@pytest.mark.parametrize(
    "prediction, gold, reward",
    [
        ("Paris", "paris", 1.0),
        ("The Paris.", "Paris", 1.0),
        ("the city of Paris", "Paris", 0.5),  # F1 = 2 * (1/3 * 1) / (1/3 + 1)
        ("Paris France Europe Earth", "Paris", 0.4),
        ("b c d e f Paris", "Paris", 0.0),  # F1 = 2/7 < 0.3
        ("London", "Paris", 0.0),
        ("yes", "no", 0.0),
    ],
)
def test_reward_matches_the_reference(prediction, gold, reward):
    assert answer_reward(prediction, gold) == pytest.approx(reward)


def test_yes_no_need_an_exact_match_for_f1():
    assert f1_score("yes it is", "yes") == 0 and f1_score("no", "yes") == 0 and f1_score("Yes.", "yes") == 1


def test_tag_parsing():
    assert extract_boxed("so \\boxed{x} then \\boxed{ \\text{New York} }") == "New York"
    assert extract_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert extract_boxed("\\boxed{open") is None and extract_boxed("no answer") is None
    assert parse_search("<search>a</search> then <SEARCH>\n b c \n</search>") == "b c"
    assert parse_search("<search>  </search>") is None and parse_search("<search>x") is None


def test_synthetic_corpus_is_deterministic_and_two_hop():
    a, b = synthetic_dataset(), synthetic_dataset()
    assert a == b and len(a.train) == 800 and len(a.test) == 200
    assert not {q.question for q in a.train} & {q.question for q in a.test}
    titles = {p.title: p for p in a.passages}
    for q in a.train[:50]:
        assert len({t for t, _ in q.supporting_facts}) == 2
        assert all(i < len(titles[t].sentences) for t, i in q.supporting_facts)
    with pytest.raises(ValueError, match="num_questions"):
        synthetic_dataset(num_questions=0)


def test_search_finds_each_supporting_passage_by_title():
    env = HotpotQA()
    for q in env.dataset.train[:100]:
        for title, _ in q.supporting_facts:
            assert title in [p.title for p in env.search.search(title, 3)]
    assert env.search.search("zzzqqq unknown words", 3) == []


def test_two_hop_episode_search_then_answer():
    env = HotpotQA()
    obs = env.reset(task_seed("train", 0))
    q = env.example
    assert obs.text == f"Question: {q.question}"
    first = env.step(f"<search>{q.supporting_facts[0][0]}</search>")
    assert not first.done and first.reward == 0 and q.supporting_facts[0][0] in first.observation.text
    assert first.feedback.startswith(f'Searched "{q.supporting_facts[0][0]}"')
    end = env.step(f"The answer is \\boxed{{{q.answer}}}")
    assert end.done and end.reward == 1.0 and end.feedback == f"CORRECT | reward=1.00 | extracted={q.answer}"


def test_wrong_answer_malformed_calls_and_turn_limit():
    env = HotpotQA(max_turns=3)
    env.reset(7)
    assert env.step("\\boxed{Nowhere at all}").feedback == "INCORRECT | reward=0.00 | extracted=Nowhere at all"
    env.reset(7)
    assert env.step("<search></search>").feedback.startswith("Malformed tool call")
    assert env.step("\\boxed{unclosed").feedback.startswith("Malformed answer")
    end = env.step("just talking")
    assert end.done and end.reward == 0 and end.feedback.startswith("INCORRECT | reward=0.00 | extracted=None")


def test_seeds_pick_the_split():
    env = HotpotQA()
    env.reset(task_seed("test", 3))
    assert env.example in env.dataset.test
    env.reset(task_seed("train", 3))
    assert env.example in env.dataset.train


def test_real_files_load_in_both_layouts(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([RECORD]))
    (tmp_path / "test.jsonl").write_text(json.dumps(dict(HF_RECORD, question="Where is the Zorblat museum?")) + "\n")
    data = load_dataset(str(tmp_path))
    assert data.train[0].supporting_facts == (("Zorblat museum", 0), ("Quentaro", 1))
    assert data.test[0].supporting_facts == (("Zorblat museum", 0),)
    assert {p.title for p in data.passages} == {"Zorblat museum", "Quentaro"}  # the contexts form the corpus
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps({"contents": '"Zorblat museum"\nThe Zorblat museum is in Quentaro.'}) + "\n"
        + json.dumps({"title": "Brekko", "text": "Brekko is a river."}) + "\n"
    )
    assert [p.title for p in load_corpus(tmp_path / "corpus.jsonl")] == ["Zorblat museum", "Brekko"]
    env = make_env("hotpotqa", data_dir=str(tmp_path))
    env.reset(0)
    assert "Brekko is a river" in env.step("<search>Brekko river</search>").observation.text


def test_parquet_layout(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    pa = pytest.importorskip("pyarrow")
    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist([HF_RECORD]), tmp_path / f"{split}.parquet")
    pq.write_table(pa.Table.from_pylist([{"title": "Brekko", "text": "Brekko is a river."}]), tmp_path / "corpus.parquet")
    data = load_dataset(str(tmp_path))
    assert data.test[0].supporting_facts == (("Zorblat museum", 0),) and data.passages[0].title == "Brekko"


def test_bad_data_and_options_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no train"):
        load_dataset(str(tmp_path))
    (tmp_path / "train.jsonl").write_text('{"question": "q"}\n')
    (tmp_path / "test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="not a HotpotQA record"):
        load_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="top_k"):
        make_env("hotpotqa", top_k=0)


def test_config_builds_the_env():
    with open("configs/env/hotpotqa.yaml") as f:
        cfg = yaml.safe_load(f)
    env = make_env(cfg["name"], max_turns=cfg["max_turns"], **cfg["options"])
    assert isinstance(env, HotpotQA) and env.max_turns == 5


def lookup_script(prompt_text: str) -> str:
    """Under reflected instructions, search once and then answer from the dataset; otherwise guess."""
    if "Write better instructions" in prompt_text:
        return "<prompt>SEARCH FIRST</prompt>"
    if "SEARCH FIRST" not in prompt_text:
        return "\\boxed{no idea}"
    question = prompt_text.split("Question: ")[1].split("<|im_end|>")[0]
    example = next(q for q in synthetic_dataset().train if q.question == question)
    if "Searched" not in prompt_text:
        return f"<search>{example.supporting_facts[0][0]}</search>"
    return f"\\boxed{{{example.answer}}}"


def test_runs_in_the_erl_loop(chat, scripted):
    wf = ErlWorkflow(
        ErlConfig(n_rollouts=2), lambda: HotpotQA(), scripted(lookup_script), chat,
        "Answer the question.", HotpotQA.action_format,
        SamplingParams(48, stop_token_ids=chat.stop_ids), SamplingParams(32, stop_token_ids=chat.stop_ids),
        8192, ReflectionMemory(),
    )
    episodes = wf.collect([task_seed("train", 0), task_seed("train", 1)], sample_seed=0)
    assert episodes.metrics["attempt1_success"] == 0 and episodes.metrics["attempt2_success"] == 1
