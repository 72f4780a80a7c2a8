"""Procedurally generated demonstrations for the embedded base policy: a world where advice helps only
through what it says.

Every demonstration happens in its own world: the symbols of the environment's hidden roles (FrozenLake's
hole and goal, Sokoban's box and target) are drawn per episode from `SYMBOL_POOL`, never the RL task's
symbol for that role, so the warm-up never shows the RL tasks' own facts. Four kinds, in the exact token
format of the ERL loop:
- attempt 1 under the initial prompt, which states no facts: the demonstrator does not know them either;
  it plays a shortest plan under the true roles or under the swapped ones (a fair coin), and moves at
  random with prob `noise`;
- reflections: the request of 1-3 such attempts -> `<prompt>` the initial prompt plus the facts their
  feedback revealed (and those the current prompt already stated), sometimes without the tag;
- attempt 2 under that prompt: the demonstrator acts on the stated facts, moving at random with prob
  `reflected_noise`;
- now and then (`FOLLOW_WRONG_RATE`) an attempt under wrongly stated facts that follows them and fails.
So what a reflection is worth depends on what it says: correct facts help, none leave the coin, wrong
ones hurt; ERL has to discover the RL tasks' facts from feedback (`tests/unit/test_embedded_world.py`).
"""

from __future__ import annotations

import random
from typing import Callable

from erl_mega.algo.prompts import REFLECTION_SYSTEM, facts_in, reflection_request, state_facts, with_action_format
from erl_mega.algo.rows import TrainRow
from erl_mega.config.schema import WarmupConfig
from erl_mega.envs.base import SYMBOL_POOL, Env
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.trajectory import Segment, Trajectory, Turn

DEMONSTRATED_ENVS = ("frozenlake", "sokoban")  # environments the embedded base policy can be warmed up on
MOVES = ("up", "down", "left", "right")
FOLLOW_WRONG_RATE = 0.3  # episodes that also demonstrate following wrongly stated facts
REQUEST_TOKENS = 768  # the reflection request's budget, as algo.reflection_tokens' default


def draw_facts(hidden: dict[str, str], rng: random.Random) -> dict[str, str]:
    """A demonstration world's facts: per role a pool symbol other than the RL task's for that role, all distinct,
    and such that the swapped (wrong) statement does not state an RL task's fact either."""
    while True:
        facts: dict[str, str] = {}
        for role, symbol in hidden.items():
            facts[role] = rng.choice([s for s in SYMBOL_POOL if s != symbol and s not in facts.values()])
        if not set(swapped(facts).items()) & set(hidden.items()):
            return facts


def swapped(facts: dict[str, str]) -> dict[str, str]:
    """The roles' symbols exchanged (hole <-> goal, box <-> target): the wrong belief."""
    return dict(zip(facts, reversed(list(facts.values()))))


def demo_episode(env: Env, chat: ChatFormat, seed: int, system: str, believed: dict[str, str], noise: float,
                 rng: random.Random) -> Trajectory:
    """One demonstrated episode in the agent loop's layout: the expert under `believed`, random with prob `noise`."""
    obs = env.reset(seed)
    segments = [Segment(chat.system(system)), Segment(chat.user_turn(obs.text, after_reply=False))]
    turns = []
    while True:
        move = env.expert_move(believed) if rng.random() >= noise else None
        reply = f"<action>{move or rng.choice(MOVES)}</action>"
        ids = chat.reply(reply)
        segments.append(Segment(ids, (0.0,) * len(ids)))
        result = env.step(reply)
        turns.append(Turn(reply, result.feedback, result.reward, result.observation.text))
        if result.done:
            return Trajectory(tuple(segments), tuple(turns), sum(t.reward for t in turns), 0, {"task": obs.text})
        segments.append(Segment(chat.user_turn(result.observation.text, after_reply=True)))


def reflection_row(chat: ChatFormat, request: str, answer: str) -> TrainRow:
    ids = chat.reply(answer)
    segments = (Segment(chat.system(REFLECTION_SYSTEM)), Segment(chat.user_turn(request, after_reply=False)),
                Segment(ids, (0.0,) * len(ids)))
    return TrainRow(Trajectory(segments, (Turn(answer, "", 0.0),), 0.0, 0), "distill", "reflection", weight=1.0)


def demonstrations(make_world: Callable[[dict[str, str]], Env], chat: ChatFormat, initial_prompt: str,
                   cfg: WarmupConfig, seed: int) -> list[TrainRow]:
    """SFT rows (weight 1) for the warm-up, shuffled; `make_world(facts)` is the environment drawn with `facts`
    (`{}`: the RL task's own, which only decide what the worlds avoid)."""
    rng = random.Random(seed)
    hidden = make_world({}).facts
    first_system = with_action_format(initial_prompt, make_world({}).action_format)
    count_tokens = lambda text: len(chat.tokenizer.encode(text))  # noqa: E731
    rows: list[TrainRow] = []
    for _ in range(cfg.episodes):
        facts = draw_facts(hidden, rng)
        env = make_world(facts)
        task = rng.randrange(0, 500_000)  # train seeds only: held-out seeds start at 1e6
        firsts = [demo_episode(env, chat, task, first_system, facts if rng.random() < 0.5 else swapped(facts),
                               cfg.noise, rng) for _ in range(rng.randint(1, 3))]
        rows += [TrainRow(first, "distill", "attempt1", weight=1.0) for first in firsts]
        if rng.random() < FOLLOW_WRONG_RATE:
            wrong = with_action_format(f"{initial_prompt} {state_facts(swapped(facts))}", env.action_format)
            rows.append(TrainRow(demo_episode(env, chat, task, wrong, swapped(facts), cfg.reflected_noise, rng),
                                 "distill", "attempt2", weight=1.0))
        if all(first.reward >= 1 for first in firsts):
            continue
        known = {r: s for r, s in facts.items() if rng.random() < 0.5} if rng.random() < 0.5 else {}
        current = f"{initial_prompt} {state_facts(known)}".strip()
        request = reflection_request(current, firsts, rng.random(), env.parse_action, count_tokens, REQUEST_TOKENS)
        if request is None:
            continue
        learnt = known | {r: s for first in firsts for r, s in facts_in(first.feedback).items()}
        lesson = f"{initial_prompt} {state_facts({r: learnt[r] for r in facts if r in learnt})}".strip()
        rows.append(reflection_row(chat, request, lesson if rng.random() < cfg.missing_tag_rate else f"<prompt>{lesson}</prompt>"))
        second = demo_episode(env, chat, task, with_action_format(lesson, env.action_format), facts, cfg.reflected_noise, rng)
        rows.append(TrainRow(second, "distill", "attempt2", weight=1.0))
    rng.shuffle(rows)
    return rows


def corpus(rows: list[TrainRow], chat: ChatFormat) -> list[str]:
    """Texts of the rows (for training the tokenizer before the rows are re-encoded with it)."""
    return [chat.tokenizer.decode(r.trajectory.token_ids()) for r in rows]
