"""The official `openai` package (sync, async, streaming) against a real `bitttt serve` app."""

from __future__ import annotations

import asyncio

import pytest

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=60)


def test_models(client):
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_chat_usage_and_max_tokens(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=7,
                                       temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 7
    # <|bos|> <|user|> h i <|eos|> <|assistant|>: the byte tokenizer's chat format
    assert r.usage.prompt_tokens == 6 and r.usage.total_tokens == 13
    assert r.usage.prompt_tokens_details.cached_tokens == 0
    r2 = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                        max_completion_tokens=3, temperature=0)
    assert r2.usage.completion_tokens == 3
    assert r.choices[0].message.content.startswith(r2.choices[0].message.content)  # greedy: a prefix


def test_seed_reproducibility(client):
    kw = dict(model="tiny", prompt="Once upon a time", max_tokens=20, temperature=1.0, top_p=0.9)
    a = client.completions.create(seed=7, **kw).choices[0].text
    b = client.completions.create(seed=7, **kw).choices[0].text
    c = client.completions.create(seed=8, **kw).choices[0].text
    assert a == b and a != c


def test_stop_strings(client):
    kw = dict(model="tiny", prompt="abc", max_tokens=40, temperature=0)
    full = client.completions.create(**kw).choices[0].text
    stop = full[5:7]
    cut = client.completions.create(stop=[stop, "\x00never"], **kw)
    assert cut.choices[0].text == full[:full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert client.completions.create(stop=stop, **kw).choices[0].text == full[:full.index(stop)]


def test_streaming_chat_with_usage(client):
    kw = dict(model="tiny", messages=[{"role": "user", "content": "stream me"}], max_tokens=12, temperature=0, seed=1)
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_streaming_completion(client):
    kw = dict(model="tiny", prompt="xyz", max_tokens=9, temperature=0)
    whole = client.completions.create(**kw).choices[0].text
    assert "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw)) == whole


def test_async_client_concurrent(server):
    async def main():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=server.api_key, max_retries=0, timeout=60)
        prompts = [f"request {i}" for i in range(6)]
        outs = await asyncio.gather(*(c.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0)
                                      for p in prompts))
        alone = [(await c.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0)).choices[0].text
                 for p in prompts]
        await c.close()
        return [o.choices[0].text for o in outs], alone

    together, alone = asyncio.run(main())
    assert together == alone


def test_error_codes(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="x", temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="n > 1"):
        client.completions.create(model="tiny", prompt="x", n=2)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], logprobs=True)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model="tiny", prompt="x" * 3000)
    assert e.value.status_code == 413
