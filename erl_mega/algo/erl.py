"""Experiential RL, one batch of tasks (arXiv 2602.13949, Algorithm 1).

    for each task (an environment seed):
        attempt 1: n rollouts with the initial system prompt; success = reward >= tau
        if every rollout succeeded: train attempt 1 only
        else, n times: reflect (memory or initial prompt, the task, recent attempts step by step with
                       their feedback, batch metrics) -> <prompt>
                       attempt 2: replay the same seed from scratch under the reflection
                       if attempt 2 succeeded: memory <- reflection
    train attempt 1, reflection and attempt 2 with group-relative advantages per role and task;
    distil successful attempts 2 into the initial prompt (context distillation): by default ordinary rows
    of the same PPO loss with advantage max(r2, 0) (RAFT, as the reference), or a separate SFT term.
A request that cannot fit the reflection budget skips that task's reflection (counted), never the run.

The workflow only speaks to the `RolloutEngine` and `Env` contracts; it knows nothing of training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from erl_mega.kernels.losses import PolicyLossConfig
from erl_mega.algo.memory import ReflectionMemory
from erl_mega.algo.prompts import REFLECTION_ASK, REFLECTION_SYSTEM, parse_reflection, reflection_request, with_action_format
from erl_mega.envs.base import Env
from erl_mega.rollout.agent_loop import EpisodeSpec, complete_once, play_episodes, prompt_tokens
from erl_mega.rollout.chat import ChatFormat
from erl_mega.rollout.engine import RolloutEngine, SamplingParams
from erl_mega.rollout.trajectory import Trajectory

ALGORITHMS = ("erl", "grpo")
DISTILL_MODES = ("raft", "separate")  # raft: PPO rows with advantage max(r, 0); separate: the SFT term


@dataclass(frozen=True)
class ErlConfig:
    """The workflow's knobs; `algo=grpo` is attempt 1 alone, everything else equal."""

    name: str = field(default="erl", metadata={"allowed": ALGORITHMS})
    n_rollouts: int = field(default=4, metadata={"allowed": ">= 1"})  # attempts per task (the GRPO group size)
    success_threshold: float = field(default=1.0, metadata={"allowed": "(0, 1]"})  # tau: reward >= tau succeeds (rewards in [0, 1])
    # ablation (the paper's): attempt 2 sees the prompt plus the raw attempts, no reflection call
    no_reflection: bool = field(default=False, metadata={"allowed": "any"})
    no_memory: bool = field(default=False, metadata={"allowed": "any"})  # ablation: reflections start from the initial prompt
    no_distill: bool = field(default=False, metadata={"allowed": "any"})  # ablation: no context-distillation rows
    reflection_attempts: int = field(default=8, metadata={"allowed": ">= 1"})  # recent attempts shown to the reflection
    # token budget of the reflection prompt (also capped by the context)
    reflection_tokens: int = field(default=768, metadata={"allowed": ">= 1"})
    memory_capacity: int = field(default=16, metadata={"allowed": ">= 1"})
    advantage: str = field(default="grpo", metadata={"allowed": ("grpo", "drgrpo")})
    distill: str = field(default="raft", metadata={"allowed": DISTILL_MODES})  # raft | separate
    # weight of the separate distillation term (distill=separate)
    distill_coef: float = field(default=1.0, metadata={"allowed": ">= 0"})
    loss: PolicyLossConfig = field(default=PolicyLossConfig(), metadata={"allowed": "any"})


class Attempts(Protocol):
    """Who plays attempts 1 and 2: the native agent loop, or a user's agent through the gateway (erl_mega.sdk)."""

    def play(self, specs: list[EpisodeSpec], params: SamplingParams) -> list[Trajectory]: ...


@dataclass(frozen=True)
class TaskEpisodes:
    """Everything one task produced; reflections[i] led to attempt2[i]."""

    env_seed: int
    attempt1: tuple[Trajectory, ...]
    reflections: tuple[Trajectory, ...] = ()
    attempt2: tuple[Trajectory, ...] = ()


@dataclass(frozen=True)
class Episodes:
    """One batch of tasks and the workflow's metrics."""

    tasks: tuple[TaskEpisodes, ...]
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ErlWorkflow:
    """Collects ERL episodes for a batch of tasks through any rollout engine."""

    cfg: ErlConfig
    make_env: Callable[[], Env]
    engine: RolloutEngine
    chat: ChatFormat
    initial_prompt: str
    action_format: str
    act_params: SamplingParams
    reflect_params: SamplingParams
    max_context: int
    memory: ReflectionMemory
    attempts: Attempts | None = None  # None: the native agent loop over `engine`

    def collect(self, env_seeds: list[int], sample_seed: int) -> Episodes:
        """Run the whole ERL episode for each task; `sample_seed` makes the batch reproducible."""
        n, tau = self.cfg.n_rollouts, self.cfg.success_threshold
        first_prompt = with_action_format(self.initial_prompt, self.action_format)
        specs = [
            EpisodeSpec(seed, first_prompt, _sseed(sample_seed, 0, t, i)) for t, seed in enumerate(env_seeds) for i in range(n)
        ]
        clock = time.perf_counter()
        flat1 = self._play(specs)
        seconds1 = time.perf_counter() - clock
        attempt1 = [tuple(flat1[t * n : (t + 1) * n]) for t in range(len(env_seeds))]
        success1 = sum(tr.reward >= tau for tr in flat1) / len(flat1)
        failed = [t for t, group in enumerate(attempt1) if any(tr.reward < tau for tr in group)]
        metrics = {"attempt1_success": success1, "tasks_failed": len(failed) / len(env_seeds), "time_attempt1": seconds1}
        if self.cfg.name == "grpo" or not failed:
            return Episodes(tuple(TaskEpisodes(s, a) for s, a in zip(env_seeds, attempt1)), metrics)

        base = self.initial_prompt if self.cfg.no_memory else self.memory.current(self.initial_prompt)
        clock = time.perf_counter()
        reflections, prompts, missing, skipped = self._reflect(failed, attempt1, base, success1, sample_seed)
        seconds_reflect = time.perf_counter() - clock
        retried = [t for t in failed if t not in skipped]
        specs2 = [
            EpisodeSpec(env_seeds[t], with_action_format(prompts[k * n + i], self.action_format), _sseed(sample_seed, 2, t, i))
            for k, t in enumerate(retried)
            for i in range(n)
        ]
        clock = time.perf_counter()
        flat2 = self._play(specs2)
        seconds2 = time.perf_counter() - clock
        updates = 0
        for j, (second, prompt) in enumerate(zip(flat2, prompts)):
            if reflections:  # memory <- a reflection whose attempt 2 succeeded; its reward is r2
                if second.reward >= tau and not reflections[j].meta["tag_missing"] and not self.cfg.no_memory:
                    updates += 1
                    self.memory.add(prompt)
                reflections[j] = replace(reflections[j], reward=second.reward)
        slices = {t: slice(k * n, (k + 1) * n) for k, t in enumerate(retried)}
        tasks = [
            TaskEpisodes(seed, attempt1[t], tuple(reflections[slices[t]]), tuple(flat2[slices[t]]))
            if t in slices
            else TaskEpisodes(seed, attempt1[t])
            for t, seed in enumerate(env_seeds)
        ]
        metrics |= {
            "attempt2_success": sum(tr.reward >= tau for tr in flat2) / max(len(flat2), 1),
            "reflection_rate": 0.0 if self.cfg.no_reflection else len(retried) * n / len(flat1),
            "reflection_skipped": float(len(skipped)),
            "tag_missing_rate": missing / max(len(reflections), 1),
            "memory_updates": float(updates),
            "memory_size": float(len(self.memory.entries)),
            "time_reflection": seconds_reflect,
            "time_attempt2": seconds2,
        }
        return Episodes(tuple(tasks), metrics)

    def _play(self, specs: list[EpisodeSpec]) -> list[Trajectory]:
        if self.attempts is not None:
            return self.attempts.play(specs, self.act_params)
        return play_episodes(self.make_env, self.engine, self.chat, specs, self.act_params, self.max_context)

    def _reflect(
        self, failed: list[int], attempt1: list[tuple[Trajectory, ...]], base: str, success1: float, sample_seed: int
    ) -> tuple[list[Trajectory], list[str], int, set[int]]:
        """n reflections per failed task: them, the attempt-2 prompts, the missing-tag count, the skipped tasks."""
        n, env = self.cfg.n_rollouts, self.make_env()
        if self.cfg.no_reflection:  # the paper's ablation: the raw attempts go straight into attempt 2's prompt
            budget = self.max_context // 2
            shown = {t: self._request(attempt1[t], base, success1, env, budget, lambda text: len(self.chat.system(text)), ask="")
                     for t in failed}
            return [], [shown[t] for t in failed if shown[t] is not None for _ in range(n)], 0, {
                t for t in failed if shown[t] is None}
        budget = min(self.cfg.reflection_tokens, self.max_context - self.reflect_params.max_new_tokens)
        conversations, seeds, skipped = [], [], set()
        for t in failed:
            request = self._request(attempt1[t], base, success1, env, budget,
                                    lambda text: prompt_tokens(self.chat, REFLECTION_SYSTEM, text))
            if request is None:
                skipped.add(t)
                continue
            conversations += [(REFLECTION_SYSTEM, request)] * n
            seeds += [_sseed(sample_seed, 1, t, i) for i in range(n)]
        raw = complete_once(self.engine, self.chat, conversations, self.reflect_params, seeds, self.max_context) if seeds else []
        reflections, prompts, missing = [], [], 0
        for tr in raw:
            parsed = parse_reflection(tr.turns[0].reply, base)
            missing += parsed.tag_missing
            prompts.append(parsed.prompt)
            reflections.append(replace(tr, meta={"tag_missing": parsed.tag_missing, "prompt": parsed.prompt}))
        return reflections, prompts, missing, skipped

    def _request(self, group: tuple[Trajectory, ...], base: str, success1: float, env: Env, budget: int,
                 count: Callable[[str], int], ask: str = REFLECTION_ASK) -> str | None:
        """One task's request within `budget` tokens (None: it cannot fit), parsed with the environment's parser."""
        return reflection_request(base, list(group), success1, env.parse_action, count, budget,
                                  self.cfg.reflection_attempts, ask)


def _sseed(base: int, phase: int, task: int, rollout: int) -> int:
    # One reproducible sampling stream per (batch, phase, task, rollout).
    return ((base * 3 + phase) * 4096 + task) * 256 + rollout
