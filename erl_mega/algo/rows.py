"""Training rows from ERL episodes: policy rows with group advantages per role, and distillation rows."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from erl_mega.kernels.advantages import group_advantages
from erl_mega.algo.erl import Episodes
from erl_mega.rollout.trajectory import Segment, Trajectory

ROLES = {"attempt1": "attempt1", "reflection": "reflections", "attempt2": "attempt2"}  # role -> TaskEpisodes field


@dataclass(frozen=True)
class TrainRow:
    """One sequence to train on. `kind='policy'`: PPO-clip with `advantage`; `'distill'`: SFT scaled by `weight`."""

    trajectory: Trajectory
    kind: str
    role: str
    advantage: float = 0.0
    weight: float = 0.0


def policy_rows(episodes: Episodes, mode: str = "grpo") -> list[TrainRow]:
    """Every attempt and reflection, its advantage normalised within (role, task); a reflection's reward is r2."""
    trajectories, roles, groups = [], [], []
    for task_index, task in enumerate(episodes.tasks):
        for role_index, (role, attribute) in enumerate(ROLES.items()):
            for tr in getattr(task, attribute):
                trajectories.append(tr)
                roles.append(role)
                groups.append(task_index * len(ROLES) + role_index)
    if not trajectories:
        return []
    rewards = torch.tensor([tr.reward for tr in trajectories])
    adv = group_advantages(rewards, torch.tensor(groups), mode)
    return [TrainRow(tr, "policy", role, float(a)) for tr, role, a in zip(trajectories, roles, adv)]


def distill_rows(episodes: Episodes, initial_system: Segment, mode: str = "raft") -> list[TrainRow]:
    """Successful attempts 2 re-paired with the initial system prompt (context distillation).

    `raft` (the reference): ordinary rows of the PPO loss with advantage max(r2, 0) on every sampled token,
    so they share its normalisation and KL; `separate`: rows of the separate SFT term, weight r2.
    """
    rows = []
    for task in episodes.tasks:
        for tr in task.attempt2:
            if tr.reward > 0:
                distilled = tr.with_system(initial_system)
                rows.append(TrainRow(distilled, "policy", "distill", advantage=max(tr.reward, 0.0)) if mode == "raft"
                            else TrainRow(distilled, "distill", "attempt2", weight=tr.reward))
    return rows
