"""Talks to `chrysalis serve` with the official `openai` package, as an application would.

Usage: python3 openai_client.py BASE_URL  (e.g. http://127.0.0.1:8000/v1)

Does models.list(), one non-streaming and one streaming chat completion of the same
greedy question, and prints one JSON object with what came back; the Rust test
(client/tests/e2e_openai.rs) checks it. Needs `pip install openai==3.57.0`.
"""

import json
import sys

import openai

QUESTION = "What is the capital of France?"


def main(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="unused-by-chrysalis", max_retries=0)
    models = [m.id for m in client.models.list()]

    messages = [{"role": "user", "content": QUESTION}]
    full = client.chat.completions.with_raw_response.create(
        model="chrysalis", messages=messages, max_tokens=16, temperature=0
    )
    completion = full.parse()
    choice = completion.choices[0]

    stream = client.chat.completions.create(
        model="chrysalis",
        messages=messages,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, stream_usage, chunks = [], None, None, 0
    for chunk in stream:
        chunks += 1
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
        if chunk.usage is not None:
            stream_usage = chunk.usage.model_dump()

    print(json.dumps({
        "openai_version": openai.__version__,
        "models": models,
        "completion": {
            "content": choice.message.content,
            "role": choice.message.role,
            "finish_reason": choice.finish_reason,
            "usage": completion.usage.model_dump(),
            "system_fingerprint": completion.system_fingerprint,
            "insecure_header": full.headers.get("x-chrysalis-insecure"),
        },
        "stream": {
            "content": "".join(pieces),
            "chunks": chunks,
            "finish_reason": finish,
            "usage": stream_usage,
        },
    }))


if __name__ == "__main__":
    main(sys.argv[1])
