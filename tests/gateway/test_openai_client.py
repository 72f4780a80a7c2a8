"""The real openai client against the gateway process: completions, streaming, errors, episode traces."""

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(gateway_process):
    return openai.OpenAI(base_url=gateway_process, api_key="unused")


def test_chat_completion_records_the_sampled_ids(client, gateway_process):
    messages = [{"role": "system", "content": "hi"}, {"role": "user", "content": "Question: who"}]
    r = client.chat.completions.create(model="erl-mega", messages=messages, max_tokens=8, logprobs=True,
                                       extra_headers={"X-Episode-Id": "e1"})
    choice = r.choices[0]
    assert r.system_fingerprint == "weights-v0" and len(choice.logprobs.content) == r.usage.completion_tokens
    trace = httpx.get(f"{gateway_process}/episodes/e1").json()
    assert trace["segments"][-1]["token_ids"] == choice.model_extra["token_ids"]
    assert trace["segments"][-1]["logprobs"] == [t.logprob for t in choice.logprobs.content]


def test_streaming_joins_to_the_whole_reply(client):
    kwargs = dict(model="erl-mega", messages=[{"role": "user", "content": "Question"}], max_tokens=8, seed=3)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)]
    assert "".join(parts) == whole


def test_text_completion_with_logprobs(client):
    r = client.completions.create(model="erl-mega", prompt="Question: who", max_tokens=5, logprobs=0)
    assert len(r.choices[0].logprobs.token_logprobs) == r.usage.completion_tokens == 5


def test_malformed_request_gets_openai_error_shape(client, gateway_process):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="erl-mega", messages=[], max_tokens=8)
    assert err.value.status_code == 400 and "messages" in err.value.body["message"]
    r = httpx.post(f"{gateway_process}/chat/completions", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
