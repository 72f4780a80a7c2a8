"""The planner against truth nobody here chose: megatron-core's own GPTModel, published counts, counted FLOPs."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from erl_mega.plan.flops import attention_flops_per_token, matmul_flops_per_token
from erl_mega.plan.layouts import plan_all
from erl_mega.plan.params import embedding_params, total_params
from erl_mega.plan.shape import PRESETS_DIR, load_shape, presets
from erl_mega.plan.spec import plan_config

# (total, non-embedding: input and output embeddings both out) in billions, as the model cards print them (Qwen3 cards; Qwen2.5-72B card; Llama 3.1's 8B / 70.6B)
PUBLISHED = {"qwen3-0.6b": (0.6, 0.44), "qwen3-1.7b": (1.7, 1.4), "qwen3-4b": (4.0, 3.6), "qwen3-8b": (8.2, 6.95),
             "qwen3-14b": (14.8, 13.2), "qwen3-32b": (32.8, 31.2), "qwen2.5-72b": (72.7, None),
             "llama3.1-8b": (8.0, None), "llama3.1-70b": (70.6, None)}


def test_every_preset_has_a_published_count():
    assert sorted(PUBLISHED) == presets()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_param_count_matches_published(name):
    shape = load_shape(name)
    total, non_embedding = PUBLISHED[name]
    digits = len(str(total).split(".")[1])
    assert round(total_params(shape) / 1e9, digits) == total
    if non_embedding is not None:
        digits = len(str(non_embedding).split(".")[1])
        heads = 1 if shape.tied else 2
        assert round((total_params(shape) - heads * embedding_params(shape)) / 1e9, digits) == non_embedding


def test_param_count_equals_megatron_gptmodel_on_meta(megatron_parallel):  # the session's group: never torn down here
    from erl_mega.train.megatron_model import build_gpt_model

    for name in presets():
        config = AutoConfig.from_pretrained(PRESETS_DIR / f"{name}.json")
        with torch.device("meta"):
            model = build_gpt_model(config, torch.bfloat16)
        assert sum(p.numel() for p in model.parameters()) == total_params(load_shape(name)), name


@pytest.mark.parametrize("model_type", ["llama", "qwen3"])
def test_forward_flops_equal_counted_flops(tmp_path, model_type):
    """torch's FlopCounterMode on a real HF forward; eager attention multiplies by all s keys (masked), so context = s."""
    from torch.utils.flop_counter import FlopCounterMode

    config = AutoConfig.for_model(model_type, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, intermediate_size=96, vocab_size=128,
                                  attn_implementation="eager")
    (tmp_path / "config.json").write_text(config.to_json_string())
    model = AutoModelForCausalLM.from_config(config)
    seq = 24
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, 128, (1, seq)))
    shape = load_shape(str(tmp_path))
    assert counter.get_total_flops() == seq * (matmul_flops_per_token(shape) + attention_flops_per_token(shape, seq))


def test_plan_70b_on_64_h100_ranks_feasible_layouts_and_says_why_others_fail():
    cfg = plan_config(["model=llama3.1-70b", "cluster.nodes=8"])
    plans = plan_all(load_shape(cfg.model), cfg)
    feasible = [p for p in plans if p.feasible]
    assert feasible and all(p.tp * p.pp * p.dp == 64 for p in feasible)
    assert [p.seconds["step"] for p in feasible] == sorted(p.seconds["step"] for p in feasible)
    assert all(max(p.phases_gb.values()) <= 80 for p in feasible)
    rejected = {(p.tp, p.pp, p.vpp): p.reasons for p in plans if not p.feasible}
    assert any("out of memory in train" in r for r in rejected[(1, 1, 1)])
    assert any("not divisible by pp*vpp" in r for r in rejected[(8, 2, 3)])


def test_unknown_key_is_one_clear_error():
    with pytest.raises(ValueError, match="cluster.gpu"):
        plan_config(["cluster.gpu=8"])
    with pytest.raises(ValueError, match="placement.mode"):
        plan_config(["placement.mode=sideways"])


def test_plot_draws_a_png_per_phase_and_refuses_a_missing_path(tmp_path, capsys):
    from erl_mega.plan.command import plan_main

    path = tmp_path / "plan.png"
    assert plan_main(["model=qwen3-8b", "cluster.nodes=1", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plan_main(["--plot", "model=qwen3-8b"]) == 2
    assert "--plot needs a PATH" in capsys.readouterr().err


@pytest.mark.parametrize("pp,vpp,micro_batches", [(2, 1, 8), (4, 1, 2), (4, 2, 8), (8, 5, 16), (4, 4, 4)])
def test_in_flight_micro_batches_equal_megatron_schedule_warmup(pp, vpp, micro_batches):
    """Activations a pipeline rank holds at its peak: megatron's warm-up forwards plus the one 1F1B step's."""
    from types import SimpleNamespace

    from megatron.core.pipeline_parallel.schedules import get_pp_rank_microbatches

    from erl_mega.plan.memory import in_flight_layers

    layers = pp * vpp * 3
    for rank in range(pp):
        p2p = SimpleNamespace(pp_group=SimpleNamespace(size=lambda: pp, rank=lambda: rank),
                              virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None)
        total, all_warmup, warmup, _ = get_pp_rank_microbatches(micro_batches, vpp, pp, p2p_communicator=p2p)
        chunks = total if all_warmup else warmup + 1
        assert in_flight_layers(layers, pp, vpp, micro_batches, rank) == chunks * layers / (pp * vpp), rank
