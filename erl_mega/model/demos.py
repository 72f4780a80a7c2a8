"""Procedurally generated, deliberately imperfect demonstrations for the embedded base policy.

Three kinds, all in the exact token format the ERL loop uses:
- attempt 1 under the initial prompt: a shortest-path expert that moves at random with prob `noise`;
- reflections: failed attempts' traces -> `<prompt>` advice derived from their feedback (sometimes
  without the tag, so the fallback path is exercised from the first step);
- attempt 2 under such advice: the same expert, noisier advice-free behaviour reduced to `reflected_noise`.
So the base policy starts well below 100 % on first attempts and reflections genuinely help attempt 2:
the situation ERL is built for, reproduced at toy scale.
"""

from __future__ import annotations

import random

from erl_mega.algo.prompts import REFLECTION_SYSTEM, reflection_request, with_action_format
from erl_mega.algo.rows import TrainRow
from erl_mega.config.schema import WarmupConfig
from erl_mega.envs.frozenlake import ACTIONS, FrozenLake, shortest_path
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.trajectory import Segment, Trajectory, Turn

def expert_move(env: FrozenLake) -> str:
    """First move of a shortest hole-free path to the goal (BFS over the map)."""
    path = shortest_path(env.desc, env.position)
    return path[0] if path else "right"  # every drawn map has a path; 'right' only for a finished episode


def advice(feedback: str) -> str:
    """The lesson a good reflection draws from one failure's feedback."""
    if "hole" in feedback:
        where = feedback.split("hole at ")[1].split(" after")[0]
        return f"Avoid the x at {where}. Take the shortest safe path to *."
    if "step limit" in feedback:
        return "Do not waste moves. Take the shortest safe path to *."
    return "Answer with one action tag. Take the shortest safe path to *."


def demo_episode(env: FrozenLake, chat: ChatFormat, seed: int, system: str, noise: float, rng: random.Random) -> Trajectory:
    """One demonstrated episode in the agent loop's segment layout."""
    obs = env.reset(seed)
    segments = [Segment(chat.system(system)), Segment(chat.user_turn(obs.text, after_reply=False))]
    turns = []
    while True:
        move = rng.choice(list(ACTIONS)) if rng.random() < noise else expert_move(env)
        reply = f"<action>{move}</action>"
        ids = chat.reply(reply)
        segments.append(Segment(ids, (0.0,) * len(ids)))
        result = env.step(reply)
        turns.append(Turn(reply, result.feedback, result.reward))
        if result.done:
            return Trajectory(tuple(segments), tuple(turns), sum(t.reward for t in turns), 0)
        segments.append(Segment(chat.user_turn(result.observation.text, after_reply=True)))


REQUEST_TOKENS = 768  # the reflection request's budget, as algo.reflection_tokens' default


def demonstrations(env: FrozenLake, chat: ChatFormat, initial_prompt: str, cfg: WarmupConfig, seed: int) -> list[TrainRow]:
    """SFT rows (weight 1) for the warm-up: attempts 1, reflections and attempts 2, shuffled."""
    rng = random.Random(seed)
    first_system = with_action_format(initial_prompt, env.action_format)
    count_tokens = lambda text: len(chat.tokenizer.encode(text))  # noqa: E731
    rows: list[TrainRow] = []
    for index in range(cfg.episodes):
        task = rng.randrange(0, 500_000)  # train seeds only: held-out seeds start at 1e6
        first = demo_episode(env, chat, task, first_system, cfg.noise, rng)
        rows.append(TrainRow(first, "distill", "attempt1", weight=1.0))
        if first.reward >= 1:
            continue
        lesson = advice(first.feedback)
        current = initial_prompt if rng.random() < 0.5 else advice(rng.choice(["hole at row 1, column 1 after", "step limit"]))
        request = reflection_request(current, [first], rng.random(), env.parse_action, count_tokens, REQUEST_TOKENS)
        if request is None:
            continue
        answer = lesson if rng.random() < cfg.missing_tag_rate else f"<prompt>{lesson}</prompt>"
        ids = chat.reply(answer)
        reflection = Trajectory(
            (Segment(chat.system(REFLECTION_SYSTEM)), Segment(chat.user_turn(request, after_reply=False)), Segment(ids, (0.0,) * len(ids))),
            (Turn(answer, "", 0.0),),
            0.0,
            0,
        )
        rows.append(TrainRow(reflection, "distill", "reflection", weight=1.0))
        second = demo_episode(env, chat, task, with_action_format(lesson, env.action_format), cfg.reflected_noise, rng)
        rows.append(TrainRow(second, "distill", "attempt2", weight=1.0))
    rng.shuffle(rows)
    return rows


def corpus(rows: list[TrainRow], chat: ChatFormat) -> list[str]:
    """Texts of the rows (for training the tokenizer before the rows are re-encoded with it)."""
    return [chat.tokenizer.decode(r.trajectory.token_ids()) for r in rows]
