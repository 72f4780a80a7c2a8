"""Multi-hop question answering (HotpotQA format) with a BM25 search tool, as a multi-turn text game.

Tag format, one tool call or answer per turn:
- `<search>query</search>`: the tool call. The next observation lists the `top_k` best BM25 passages
  (bm25s over the corpus of qa_corpus.py) as `[i] Title: text`; reward 0, not done.
- `\\boxed{answer}`: the final answer; it ends the episode. Reward as the HotpotQA reference: 1.0 on an
  exact match after normalisation, else the token F1 if it is >= 0.3, else 0. Feedback is one line,
  `CORRECT | reward=1.00 | extracted=…` or `INCORRECT | reward=… | extracted=…`.
The last tag in a reply counts, and an answer wins over a search in the same reply. Anything else
(no tag, an empty or unclosed `<search>`, an unclosed `\\boxed{`) is a malformed call: feedback, and the
turn is used. After `max_turns` turns without an answer the episode ends with reward 0. Train seeds
draw from the train questions and test seeds (>= TEST_SEED_OFFSET) from the held-out ones.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

import bm25s
from bm25s.tokenization import Tokenizer

from erl_mega.envs.base import TEST_SEED_OFFSET, Observation, StepResult, register_env, tag_blocks
from erl_mega.envs.qa_corpus import Passage, QADataset, QAExample, load_dataset

ACTION_FORMAT = "Search with <search>your query</search>, one per turn; give the final answer as \\boxed{answer}."
BOXED = "\\boxed{"
MIN_F1 = 0.3  # partial credit floor, as the reference


def normalize_answer(text: str) -> str:
    """HotpotQA's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def f1_score(prediction: str, gold: str) -> float:
    """HotpotQA's token F1 between normalised answers; yes/no/noanswer must match exactly."""
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in ("yes", "no", "noanswer") or ref in ("yes", "no", "noanswer")) and pred != ref:
        return 0.0
    common = sum((Counter(pred.split()) & Counter(ref.split())).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred.split()), common / len(ref.split())
    return 2 * precision * recall / (precision + recall)


def answer_reward(prediction: str, gold: str) -> float:
    """1.0 on exact match, else F1 when >= 0.3, else 0."""
    if normalize_answer(prediction) == normalize_answer(gold):
        return 1.0
    f1 = f1_score(prediction, gold)
    return f1 if f1 >= MIN_F1 else 0.0


def extract_boxed(text: str) -> str | None:
    """The content of the last closed `\\boxed{...}` (nested braces allowed, `\\text{}` unwrapped), or None."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, at = 1, start + len(BOXED)
    for i in range(at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return re.sub(r"\\text(?:bf|it)?\{([^{}]*)\}", r"\1", text[at:i]).strip()
    return None


def content_key(question: str) -> str:
    """A question's content: normalised, with the two sides of 'A or B' in a fixed order."""
    text = normalize_answer(question)
    head, comma, tail = text.rpartition(", ")
    left, sep, right = tail.partition(" or ")
    return f"{head}{comma}{' or '.join(sorted((left, right)))}" if comma and sep else text


def held_out(train: tuple[QAExample, ...], test: tuple[QAExample, ...]) -> tuple[QAExample, ...]:
    """Test questions whose content no training question shares, each content once."""
    seen = {content_key(q.question) for q in train}
    kept = []
    for q in test:
        key = content_key(q.question)
        if key not in seen:
            seen.add(key)
            kept.append(q)
    return tuple(kept)


def parse_search(text: str) -> str | None:
    """The query of the last `<search>...</search>`, or None when there is no non-empty one."""
    found = tag_blocks(text, "<search>", "</search>", ignore_case=True)
    query = found[-1].strip() if found else ""
    return query or None


class PassageSearch:
    """BM25 (bm25s) over passages' titles and text; the search tool."""

    def __init__(self, passages: tuple[Passage, ...]) -> None:
        self.passages = passages
        self.tokenizer = Tokenizer(stopwords="en")
        self.bm25 = bm25s.BM25()
        ids = self.tokenizer.tokenize([f"{p.title} {p.text}" for p in passages], show_progress=False)
        self.bm25.index(ids, show_progress=False)

    def search(self, query: str, k: int) -> list[Passage]:
        """The up-to-k passages that score above zero for `query`, best first."""
        ids = self.tokenizer.tokenize([query], update_vocab=False, show_progress=False)
        found, scores = self.bm25.retrieve(ids, k=min(k, len(self.passages)), show_progress=False)
        return [self.passages[i] for i, score in zip(found[0], scores[0]) if score > 0]


@lru_cache(maxsize=4)
def _data(data_dir: str) -> tuple[QADataset, PassageSearch]:
    """The dataset and its search index, built once per process and shared by every env instance."""
    dataset = load_dataset(data_dir)
    return dataset, PassageSearch(dataset.passages)


class HotpotQA:
    """One question per seed; search, then answer in \\boxed{}; reward EM 1.0, else F1 >= 0.3, else 0."""

    name = "hotpotqa"
    action_format = ACTION_FORMAT

    def __init__(self, *, max_turns: int = 5, data_dir: str = "", top_k: int = 3) -> None:
        if max_turns < 1:
            raise ValueError(f"env.max_turns={max_turns}; must be >= 1")
        if not 1 <= top_k <= 20:
            raise ValueError(f"env.options.top_k={top_k}; must be in [1, 20]")
        self.max_turns, self.top_k = max_turns, top_k
        self.dataset, self.search = _data(data_dir)
        self.test = held_out(self.dataset.train, self.dataset.test)
        if not self.dataset.train or not self.test:
            raise ValueError(f"env.options.data_dir={data_dir!r}: the train and test splits must not be empty")
        self.example: QAExample | None = None
        self.turns = 0
        self.done = True

    def reset(self, seed: int) -> Observation:
        """Start the episode of `seed`: train seeds pick train questions, test seeds held-out ones."""
        if seed < 0:
            raise ValueError(f"seed={seed}; must be >= 0")
        split = self.dataset.train if seed < TEST_SEED_OFFSET else self.test
        self.example = split[(seed % TEST_SEED_OFFSET) % len(split)]
        self.turns, self.done = 0, False
        return Observation(f"Question: {self.example.question}")

    def parse_action(self, reply: str) -> str | None:
        """What `step` plays: the boxed answer (it wins), else the search, else None."""
        answer = extract_boxed(reply)
        if answer is not None:
            return f"answer {answer}"
        query = parse_search(reply)
        return None if query is None else f"search {query}"

    def step(self, action: str) -> StepResult:
        """Run one reply: a search, an answer, or a malformed call; never raises on agent text."""
        if self.done:
            raise RuntimeError("step() after the episode ended; call reset(seed) first")
        self.turns += 1
        answer = extract_boxed(action)
        if answer is not None:
            reward = answer_reward(answer, self.example.answer)
            verdict = "CORRECT" if reward == 1.0 else "INCORRECT"
            return self._end(reward, f"{verdict} | reward={reward:.2f} | extracted={answer}")
        query = parse_search(action)
        if query is not None:
            hits = self.search.search(query, self.top_k)
            note = f'Searched "{query}": {len(hits)} passages.'
            shown = "\n".join(f"[{i}] {p.title}: {p.text}" for i, p in enumerate(hits, 1)) or "No passage matches."
        else:
            note = _malformed(action)
            shown = ""
        if self.turns >= self.max_turns:
            return self._end(0.0, f"INCORRECT | reward=0.00 | extracted=None | no answer within {self.max_turns} turns")
        return StepResult(Observation(f"{note}\n{shown}".strip()), 0.0, False, note)

    def _end(self, reward: float, feedback: str) -> StepResult:
        self.done = True
        return StepResult(Observation(feedback), reward, True, feedback)


def _malformed(action: str) -> str:
    """Feedback for a reply that is neither a search nor an answer."""
    if BOXED in action:
        return f"Malformed answer: \\boxed{{ is not closed. {ACTION_FORMAT}"
    if "<search>" in action.lower():
        return f"Malformed tool call: write <search>your query</search> with a non-empty query. {ACTION_FORMAT}"
    return f"No tool call or answer found. {ACTION_FORMAT}"


register_env("hotpotqa")(HotpotQA)
