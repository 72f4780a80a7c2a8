"""The gateway on the rollout servers' side: /v1/* on `erl-mega serve`, and one URL in front of a Router over two."""

import os
import signal
import subprocess
import sys

import openai
import pytest
import requests

from erl_mega.agents.openai_qa import SEARCH_TOOL
from erl_mega.envs.base import make_env, task_seed
from erl_mega.rollout.agent_loop import EpisodeSpec
from erl_mega.rollout.engine import SamplingParams
from erl_mega.rollout.server.process import ServerProcess, free_port
from erl_mega.sdk import GatewayAttempts, load_agent

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tool_checkpoint, tmp_path_factory):
    """Two `erl-mega serve` processes on the tool-calling checkpoint; ended by pid."""
    logs = tmp_path_factory.mktemp("servers")
    procs = [ServerProcess.embedded(str(tool_checkpoint), log_path=logs / f"server{i}.log", max_batch_size=8)
             for i in range(2)]
    try:
        for proc in procs:
            proc.start(wait=False)
        for proc in procs:
            proc.wait_healthy()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="module")
def front(servers, tool_checkpoint):
    """`python -m erl_mega.gateway.serve --servers ...`: one /v1 URL over both servers; ended by pid."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "erl_mega.gateway.serve", "--model", str(tool_checkpoint),
                             "--servers", ",".join(p.url for p in servers), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_embedded_server_serves_v1_beside_sglang_api(servers, tool_checkpoint):
    """Tool calls through /v1 on the server itself; a weight update through its SGLang route shows in the next reply."""
    server = servers[0]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    question = make_env("hotpotqa").reset(task_seed("train", 5)).text
    ask = dict(model="erl-mega", messages=[{"role": "system", "content": "Answer the question."},
                                           {"role": "user", "content": question}],
               tools=[SEARCH_TOOL], temperature=0.0, max_tokens=40)
    first = client.chat.completions.create(**ask)
    assert first.choices[0].finish_reason == "tool_calls" and first.system_fingerprint == "weights-v0"
    r = requests.post(f"{server.url}/update_weights_from_disk", json={"model_path": str(tool_checkpoint), "weight_version": "3"})
    assert r.status_code == 200, r.text
    assert client.chat.completions.create(**ask).system_fingerprint == "weights-v3"
    assert requests.post(f"{server.url}/generate", json={"input_ids": [1, 2], "sampling_params": {"max_new_tokens": 2}}).ok


def test_one_url_over_a_router_plays_agent_episodes_on_both_servers(servers, front):
    before = [requests.get(f"{p.url}/get_server_info").json()["requests"] for p in servers]
    attempts = GatewayAttempts(load_agent("erl_mega.agents.langgraph_qa:langgraph_qa"), front,
                               lambda: make_env("hotpotqa", max_turns=2), concurrency=4)
    specs = [EpisodeSpec(task_seed("train", i), "Answer.", i) for i in range(4)]
    episodes = attempts.play(specs, SamplingParams(max_new_tokens=40, temperature=0.0))
    assert all(len(e.turns) == 2 and e.meta["calls"] == 2 and e.meta["prefix_mismatches"] == 0 for e in episodes)
    served = [requests.get(f"{p.url}/get_server_info").json()["requests"] - b for p, b in zip(servers, before)]
    assert sum(served) == 8 and min(served) >= 2  # every call reached a server; each episode stays on one (sticky)
