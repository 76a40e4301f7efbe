#!/usr/bin/env python3
"""Drives a running guardrail-gateway with the official `openai` and `anthropic` SDKs and reports,
as one JSON object, what each SDK surfaced for blocked requests and streams.

    python3 tests/sdk/check_sdks.py http://127.0.0.1:4000 gpt-guarded claude-guarded "tell me about the project"

The end-to-end test `tests/sdk.rs` starts the gateway and a mock upstream, runs this script and
asserts on its output; run it by hand against any gateway configured the same way.
"""

import json
import sys

import anthropic
import openai


def main() -> None:
    base, openai_model, anthropic_model, prompt = sys.argv[1:5]
    out = {}
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)

    # A streamed chat completion blocked after the 200: the SDK must raise its APIError.
    chunks = []
    try:
        for chunk in client.chat.completions.create(
            model=openai_model,
            messages=[{"role": "user", "content": prompt}],
            stream=True,
        ):
            chunks.append(chunk.choices[0].delta.content if chunk.choices else None)
        out["chat_stream"] = {"raised": None, "chunks": chunks}
    except openai.APIError as e:
        out["chat_stream"] = {
            "raised": type(e).__name__,
            "message": e.message,
            "code": getattr(e, "code", None),
            "text_before_error": "".join(c or "" for c in chunks),
        }

    # A streamed Responses call blocked after the 200: an `error` event with our code and
    # message, then `response.failed`.
    events = []
    try:
        for event in client.responses.create(model=openai_model, input=prompt, stream=True):
            entry = {"type": event.type}
            if event.type == "error":
                entry.update(code=event.code, message=event.message, param=event.param)
            if event.type == "response.failed":
                entry.update(
                    status=event.response.status,
                    error_code=event.response.error.code if event.response.error else None,
                    error_message=event.response.error.message if event.response.error else None,
                )
            events.append(entry)
        out["responses_stream"] = {"raised": None, "events": events}
    except openai.APIError as e:
        out["responses_stream"] = {"raised": type(e).__name__, "message": e.message, "events": events}

    # A request blocked before the upstream is called: a 400 the SDK maps to BadRequestError.
    try:
        client.chat.completions.create(
            model=openai_model, messages=[{"role": "user", "content": "this is forbidden"}]
        )
        out["chat_blocked"] = {"raised": None}
    except openai.APIStatusError as e:
        out["chat_blocked"] = {
            "raised": type(e).__name__,
            "status": e.status_code,
            "message": e.message,
            "code": e.code,
            "type": e.type,
            "param": e.param,
        }

    # A streamed Anthropic message blocked after the 200: the SDK raises from `event: error`.
    claude = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
    texts = []
    try:
        with claude.messages.stream(
            model=anthropic_model,
            max_tokens=64,
            messages=[{"role": "user", "content": prompt}],
        ) as stream:
            for text in stream.text_stream:
                texts.append(text)
        out["anthropic_stream"] = {"raised": None, "text": "".join(texts)}
    except anthropic.APIStatusError as e:
        out["anthropic_stream"] = {
            "raised": type(e).__name__,
            "body": e.body,
            "text_before_error": "".join(texts),
        }

    print(json.dumps(out))


if __name__ == "__main__":
    main()
