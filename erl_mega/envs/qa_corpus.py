"""Multi-hop QA data in the HotpotQA format: a procedural offline world, and loaders for the real files.

Real data, when you have it, lives in one folder (the config's `env.options.data_dir`, e.g. `data/hotpotqa`):
  train.json | train.jsonl | train.parquet   training questions (e.g. hotpot_train_v1.1.json, renamed)
  test.json  | test.jsonl  | test.parquet    held-out questions (e.g. hotpot_dev_distractor_v1.json, renamed)
  corpus.jsonl | corpus.parquet (optional)   passages: {"title", "text"} or {"contents": "\"Title\"\\ntext"}
Questions are HotpotQA records (question, answer, supporting_facts, context) in the official JSON layout or
the Hugging Face parquet layout. Without a corpus file the passages of the questions' own contexts form the
corpus (the distractor setting). Parquet needs pyarrow.

With no data_dir, a procedural world of fictional films, people, cities and countries (invented names, so
no model knows the answers) gives bridge and comparison questions whose facts sit in two passages.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Passage:
    """One corpus document: a title and its sentences."""

    title: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        """The sentences as one paragraph."""
        return " ".join(self.sentences)


@dataclass(frozen=True)
class QAExample:
    """One HotpotQA-style question."""

    question: str
    answer: str
    supporting_facts: tuple[tuple[str, int], ...]  # (passage title, sentence index) pairs
    kind: str  # "bridge" or "comparison"


@dataclass(frozen=True)
class QADataset:
    """Train and held-out questions over one shared passage corpus."""

    train: tuple[QAExample, ...]
    test: tuple[QAExample, ...]
    passages: tuple[Passage, ...]


def load_dataset(data_dir: str = "") -> QADataset:
    """The real HotpotQA files in `data_dir` (layout in the module docstring), or the procedural world."""
    if not data_dir:
        return synthetic_dataset()
    root = Path(data_dir)
    splits = {}
    context: dict[str, Passage] = {}
    for split in ("train", "test"):
        examples, passages = load_questions(_find(root, split, (".json", ".jsonl", ".parquet")))
        splits[split] = tuple(examples)
        context.update((p.title, p) for p in passages)
    corpus = [path for path in (root / "corpus.jsonl", root / "corpus.parquet") if path.exists()]
    passages = load_corpus(corpus[0]) if corpus else list(context.values())
    return QADataset(splits["train"], splits["test"], tuple(passages))


def load_questions(path: str | Path) -> tuple[list[QAExample], list[Passage]]:
    """HotpotQA questions from a .json, .jsonl or .parquet file, and the passages of their contexts."""
    examples, passages = [], {}
    for record in _records(Path(path)):
        try:
            examples.append(_example(record))
            passages.update((p.title, p) for p in _context(record))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a HotpotQA record ({err!r}): {str(record)[:200]}") from None
    return examples, list(passages.values())


def load_corpus(path: str | Path) -> list[Passage]:
    """Passages from a .jsonl or .parquet file of {"title", "text"} or {"contents": "\"Title\"\\ntext"} rows."""
    passages = []
    for row in _records(Path(path)):
        if "contents" in row:
            title, _, text = row["contents"].partition("\n")
            passages.append(Passage(title.strip().strip('"'), (text.strip(),)))
        elif "title" in row and "text" in row:
            passages.append(Passage(row["title"], (row["text"],)))
        else:
            raise ValueError(f"{path}: a corpus row needs 'title' and 'text', or 'contents'; got keys {sorted(row)}")
    return passages


def _find(root: Path, split: str, suffixes: tuple[str, ...]) -> Path:
    for suffix in suffixes:
        if (root / f"{split}{suffix}").exists():
            return root / f"{split}{suffix}"
    raise ValueError(f"env.options.data_dir={str(root)!r}: no {split}{{{','.join(suffixes)}}} file there")


def _records(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from err
        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in f if line.strip()]
        return json.load(f)


def _example(record: dict) -> QAExample:
    facts = record["supporting_facts"]
    if isinstance(facts, dict):  # Hugging Face layout: {"title": [...], "sent_id": [...]}
        facts = zip(facts["title"], facts["sent_id"])
    return QAExample(
        question=record["question"],
        answer=record["answer"],
        supporting_facts=tuple((title, int(sent)) for title, sent in facts),
        kind=record.get("type") or "bridge",
    )


def _context(record: dict) -> list[Passage]:
    context = record.get("context") or []
    if isinstance(context, dict):  # Hugging Face layout: {"title": [...], "sentences": [[...], ...]}
        context = zip(context["title"], context["sentences"])
    return [Passage(title, tuple(sentences)) for title, sentences in context]


SYLLABLES = ("ka", "ri", "mo", "ten", "var", "lo", "shi", "dun", "el", "ba", "no", "quor", "zar", "pe", "thal",
             "vin", "os", "ru", "me", "dra", "gal", "syl", "tor", "an", "be", "cor", "fi", "ny", "ul", "wen")
NOUNS = ("Harbor", "Lantern", "Winter", "Echo", "Mirror", "Orchard", "Tide", "Ember", "Meadow", "Signal", "Crown",
         "Thread", "Garden", "Canyon", "Compass", "Ashes")
GENRES = ("drama", "comedy", "thriller", "science fiction", "war", "romance", "musical", "western")
JOBS = ("novelist", "painter", "composer", "architect", "actor", "chemist", "poet", "photographer")


def synthetic_dataset(seed: int = 0, num_questions: int = 1000) -> QADataset:
    """A fictional world and its two-hop questions; every fifth question is held out for test."""
    if not 1 <= num_questions <= 5000:  # the world holds a little over 5000 distinct questions
        raise ValueError(f"num_questions={num_questions}; must be in [1, 5000]")
    rng = random.Random(seed)
    used: set[str] = set()

    def name(parts: int) -> str:
        while True:
            word = "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()
            if word not in used:
                used.add(word)
                return word

    countries = [name(3) for _ in range(10)]
    cities = {name(2): (rng.choice(countries), name(2)) for _ in range(30)}  # city -> (country, river)
    people = {}  # person -> (birth year, birth city, occupation)
    for job in ["film director"] * 30 + [rng.choice(JOBS) for _ in range(40)]:
        people[f"{name(2)} {name(3)}"] = (rng.randint(1890, 1990), rng.choice(list(cities)), job)
    directors = [p for p, (_, _, job) in people.items() if job == "film director"]
    films = {}  # film -> (year, genre, director, shooting city)
    for _ in range(80):
        title = f"The {name(2)} {rng.choice(NOUNS)}"
        films[title] = (rng.randint(1930, 2020), rng.choice(GENRES), rng.choice(directors), rng.choice(list(cities)))

    passages = [Passage(c, (f"{c} is a city in {country}.", f"It lies on the {river} river."))
                for c, (country, river) in cities.items()]
    passages += [Passage(p, (f"{p} (born {year}) is a {job}.", f"{p} was born in {city}."))
                 for p, (year, city, job) in people.items()]
    passages += [Passage(f, (f"{f} is a {year} {genre} film directed by {director}.",
                             f"The film was shot on location in {city}."))
                 for f, (year, genre, director, city) in films.items()]

    def question() -> QAExample:
        kind = rng.randrange(6)
        film, person = rng.choice(list(films)), rng.choice(list(people))
        year, _, director, shot_in = films[film]
        if kind == 0:
            return QAExample(f"In which city was the director of {film} born?", people[director][1],
                             ((film, 0), (director, 1)), "bridge")
        if kind == 1:
            return QAExample(f"In which year was the director of {film} born?", str(people[director][0]),
                             ((film, 0), (director, 0)), "bridge")
        if kind == 2:
            city = people[person][1]
            return QAExample(f"In which country was {person} born?", cities[city][0], ((person, 1), (city, 0)),
                             "bridge")
        if kind == 3:
            return QAExample(f"In which country was the film {film} shot?", cities[shot_in][0],
                             ((film, 1), (shot_in, 0)), "bridge")
        if kind == 4:
            other = rng.choice([f for f in films if films[f][0] != year])
            first = film if year < films[other][0] else other
            return QAExample(f"Which film came out first, {film} or {other}?", first, ((film, 0), (other, 0)),
                             "comparison")
        other = rng.choice([p for p in people if people[p][0] != people[person][0]])
        first = person if people[person][0] < people[other][0] else other
        return QAExample(f"Who was born first, {person} or {other}?", first, ((person, 0), (other, 0)),
                         "comparison")

    questions: dict[str, QAExample] = {}
    while len(questions) < num_questions:
        example = question()
        questions.setdefault(example.question, example)
    ordered = list(questions.values())
    test = tuple(q for i, q in enumerate(ordered) if i % 5 == 4)
    train = tuple(q for i, q in enumerate(ordered) if i % 5 != 4)
    return QADataset(train, test, tuple(passages))
