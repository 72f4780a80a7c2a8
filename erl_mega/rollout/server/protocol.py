"""SGLang's native HTTP request bodies (srt/managers/io_struct.py), field for field, as validated pydantic models."""

from __future__ import annotations

from typing import Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingParamsIn(_Strict):
    """The subset of SGLang's `sampling_params` the embedded engine honours; anything else is a 400."""

    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = -1  # only -1 (disabled) is supported; checked in the scheduler's conversion
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    sampling_seed: Optional[int] = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False


class GenerateReqInput(_Strict):
    """`/generate`: one prompt (`input_ids: list[int]`) or a batch (`list[list[int]]`); text needs a tokenizer."""

    input_ids: Union[list[int], list[list[int]]]
    sampling_params: Union[SamplingParamsIn, list[SamplingParamsIn], None] = None
    return_logprob: Union[bool, list[bool]] = False
    logprob_start_len: Union[int, list[int]] = -1
    rid: Union[str, list[str], None] = None
    stream: bool = False


class UpdateWeightsFromTensorReqInput(_Strict):
    """`/update_weights_from_tensor`: one serialised payload per TP rank (we serve TP=1, so one)."""

    serialized_named_tensors: list[Union[str, bytes]]
    load_format: Optional[str] = None
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: Optional[str] = None


class InitWeightsUpdateGroupReqInput(_Strict):
    """`/init_weights_update_group`: join the trainer's broadcast group at `rank_offset`."""

    master_address: str
    master_port: int = Field(ge=1, le=65535)
    rank_offset: int = Field(ge=1)
    world_size: int = Field(ge=2)
    group_name: str = "weight_update_group"
    backend: str = "gloo"


class UpdateWeightsFromDistributedReqInput(_Strict):
    """`/update_weights_from_distributed`: receive these tensors, in order, by broadcast from rank 0."""

    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    group_name: str = "weight_update_group"
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    load_format: Optional[str] = None


class UpdateWeightsFromDiskReqInput(_Strict):
    """`/update_weights_from_disk`: load HF safetensors from `model_path`."""

    model_path: str
    load_format: Optional[str] = None
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    is_async: bool = False
    torch_empty_cache: bool = False


class MemoryOccupationReqInput(_Strict):
    """`/release_memory_occupation` and `/resume_memory_occupation`; no tags means all."""

    tags: Optional[list[str]] = None


class AbortReq(_Strict):
    """`/abort_request`: one request by id, or all."""

    rid: str = ""
    abort_all: bool = False


class PauseGenerationReqInput(_Strict):
    """`/pause_generation`: SGLang's modes; the embedded engine finishes the running batch in every mode."""

    mode: str = "abort"


class WeightsCheckerReqInput(_Strict):
    """`/weights_checker`: `checksum` returns a digest of every parameter, in name order."""

    action: str = "checksum"
