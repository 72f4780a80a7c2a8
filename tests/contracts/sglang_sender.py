"""SGLang's own weight-sync client code as a separate process: `python sglang_sender.py URL TENSORS.safetensors VERSION`.

Builds one `flattened_bucket` payload exactly as SGLang's callers (slime, verl) do, with
`sglang.srt.weight_sync.tensor_bucket.FlattenedTensorBucket` and `sglang.srt.utils.MultiprocessingSerializer`,
posts it to `/update_weights_from_tensor` and prints the server's answer as one JSON line. Exit code 3
means sglang is not importable here (the message says why). Its own process, because importing
sglang takes tens of seconds and pulls in much that the test process should not carry.
"""

from __future__ import annotations

import json
import sys

import requests
import torch
import torch.multiprocessing
from safetensors.torch import load_file


def main(url: str, tensors_path: str, version: str) -> int:
    try:
        from sglang.srt.utils import MultiprocessingSerializer
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket
    except Exception as err:  # noqa: BLE001 - any import failure means "no usable sglang here"
        print(f"sglang is not importable: {type(err).__name__}: {err}", file=sys.stderr)
        return 3
    # a CPU tensor's handle then names a /dev/shm file the server opens, not an fd passed over a socket
    torch.multiprocessing.set_sharing_strategy("file_system")
    named = list(load_file(tensors_path).items())
    bucket = FlattenedTensorBucket(named_tensors=named)
    payload = {"flattened_tensor": bucket.get_flattened_tensor(), "metadata": bucket.get_metadata()}
    body = {"serialized_named_tensors": [MultiprocessingSerializer.serialize(payload, output_str=True)],
            "load_format": "flattened_bucket", "flush_cache": True, "weight_version": version}
    r = requests.post(f"{url}/update_weights_from_tensor", json=body, timeout=300)
    print(json.dumps({"status": r.status_code, "body": r.json()}))
    return 0 if r.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
