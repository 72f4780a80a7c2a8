"""The planner's inputs (`erl-mega plan key=value ...`): model, cluster, workload, placement, training knobs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from omegaconf import OmegaConf

from erl_mega.config.schema import build


@dataclass(frozen=True)
class ClusterSpec:
    """Defaults: H100 SXM (80 GB, 989 dense bf16 TFLOP/s, 3.35 TB/s HBM3, 450 GB/s NVLink per direction, 400 Gb/s IB per GPU)."""

    nodes: int = 8
    gpus_per_node: int = 8
    gpu_memory_gb: float = 80.0
    bf16_tflops: float = 989.0
    hbm_gbps: float = 3350.0
    nvlink_gbps: float = 450.0
    internode_gbps: float = 50.0

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class WorkloadSpec:
    """One step's rollouts; ERL adds a reflection and a second attempt for `second_attempt_share` of episodes."""

    algo: str = "erl"
    tasks_per_step: int = 64
    rollouts_per_task: int = 8
    prompt_tokens: int = 1024
    response_tokens: int = 1024
    reflection_tokens: int = 256
    second_attempt_share: float = 0.5


@dataclass(frozen=True)
class PlacementSpec:
    """Colocated (engines sleep while the trainer runs) or disaggregated (`rollout_gpus` of the cluster roll out)."""

    mode: str = "colocated"
    rollout_tp: int = 8
    rollout_gpus: int = 0
    memory_fraction: float = 0.85  # of GPU memory the rollout engine takes for weights + KV cache


@dataclass(frozen=True)
class TrainSpec:
    micro_batch_size: int = 1
    recompute: str = "none"  # what `erl-mega train` runs: its trainer does not recompute activations (yet)
    params_dtype: str = "bfloat16"
    mfu: float = 0.4
    decode_efficiency: float = 0.6  # achieved share of HBM bandwidth while decoding
    sync_efficiency: float = 0.5  # achieved share of link bandwidth for weight sync (not measured here)


@dataclass(frozen=True)
class PlanConfig:
    model: str = "llama3.1-70b"
    cluster: ClusterSpec = field(default_factory=ClusterSpec)
    workload: WorkloadSpec = field(default_factory=WorkloadSpec)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    top: int = 10  # feasible layouts shown

    def __post_init__(self) -> None:
        choices = {"workload.algo": (self.workload.algo, ("erl", "grpo")),
                   "placement.mode": (self.placement.mode, ("colocated", "disaggregated")),
                   "train.recompute": (self.train.recompute, ("none", "selective", "full")),
                   "train.params_dtype": (self.train.params_dtype, ("bfloat16", "float32"))}
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{name}={value!r}; choose one of {allowed}")
        if self.placement.mode == "disaggregated" and not 0 < self.placement.rollout_gpus < self.cluster.gpus:
            raise ValueError(f"placement.rollout_gpus={self.placement.rollout_gpus}; disaggregated needs 0 < it < {self.cluster.gpus}")
        if not 0 < self.placement.memory_fraction < 1:
            raise ValueError(f"placement.memory_fraction={self.placement.memory_fraction}; must be in (0, 1)")


def plan_config(overrides: list[str]) -> PlanConfig:
    """The defaults above with hydra-style `key=value` overrides; an unknown key or bad value is one ValueError."""
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"expected key=value overrides, got {bad}")
    merged = OmegaConf.merge(OmegaConf.create(asdict(PlanConfig())), OmegaConf.from_dotlist(overrides))
    return build(PlanConfig, OmegaConf.to_container(merged, resolve=True))
