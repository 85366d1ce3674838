"""The HTTP layer: OpenAI's /v1 routes, the chat page at /, auth, caps and client disconnects, over the Engine."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from dschat.inference import batch_stream
from dschat.inference.generation import GenerationSettings
from dschat.serve import protocol
from dschat.serve.engine import DONE, Engine, Job, QueueFull
from dschat.serve.protocol import ApiError
from dschat.utils.data import prompts

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
RETRY_AFTER_SECONDS = 1
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that hung up; nobody reads it


@dataclass
class Served:
    """The model behind the server and how it is prompted."""

    model_id: str
    tokenizer: object
    prompt_template: str
    max_context: int | None


def _check_key(request: Request, api_key: str | None) -> None:
    if api_key is None or not request.url.path.startswith("/v1/"):
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise ApiError(
            401, "missing or wrong API key: send 'Authorization: Bearer <key>'", code="invalid_api_key"
        )


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON") from None
    except RecursionError:
        raise ApiError(400, "the request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def _budget(
    served: Served, prompt_tokens: int, sampling: protocol.Sampling, limits: protocol.Limits, param: str
):
    """max_tokens for this request: as asked (or the default), within what the context leaves after the prompt."""
    if served.max_context is None:
        return sampling.max_tokens or limits.default_max_tokens
    room = served.max_context - prompt_tokens
    if room < 1:
        raise protocol.bad(
            param, f"the prompt has {prompt_tokens} tokens; the model's context is {served.max_context}"
        )
    if sampling.max_tokens is not None and sampling.max_tokens > room:
        raise protocol.bad(
            "max_tokens",
            f"at most {room} here (context {served.max_context} - prompt {prompt_tokens} tokens), got {sampling.max_tokens}",
        )
    return min(sampling.max_tokens or limits.default_max_tokens, room)


def _job(
    ids: list[int], max_tokens: int, sampling: protocol.Sampling, stop: tuple[str, ...], strip: bool
) -> Job:
    settings = GenerationSettings(
        max_new_tokens=max_tokens, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
    )
    return Job(batch_stream.Row(ids, max_tokens, stop, strip=strip), settings, seed=sampling.seed)


def _submit(engine: Engine, job: Job) -> None:
    try:
        engine.submit(job)
    except QueueFull:
        raise ApiError(
            429,
            f"the server is busy ({engine.max_queue} requests queued); retry in {RETRY_AFTER_SECONDS} s",
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        ) from None


async def _until_disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body is already read, so only that message is left)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _wait_done(job: Job, request: Request) -> tuple[str, int] | None:
    """Wait for a non-streamed answer; a client that hangs up cancels its generation (None)."""

    async def done() -> tuple[str, int]:
        while True:
            kind, *payload = await job.events.get()
            if kind == DONE:
                return payload[0], payload[1]

    answer, gone = asyncio.create_task(done()), asyncio.create_task(_until_disconnected(request))
    try:
        await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if answer.done():
        return answer.result()
    answer.cancel()
    job.cancelled.set()
    return None


def _finish(reason: str | None) -> str:
    if reason == batch_stream.ERROR:
        raise ApiError(500, "generation failed; see the server log", type="server_error")
    return "length" if reason == batch_stream.LENGTH else "stop"


async def _events(
    job: Job, reply: protocol.Reply, prompt_tokens: int, include_usage: bool
) -> AsyncIterator[str]:
    """Server-sent events: a chunk per piece of text, the finish chunk, usage if asked, then [DONE]."""
    try:
        yield f"data: {json.dumps(reply.chunk('', first=True))}\n\n"
        while True:
            kind, *payload = await job.events.get()
            if kind != DONE:
                yield f"data: {json.dumps(reply.chunk(payload[0]))}\n\n"
                continue
            reason, completion_tokens = payload
            if reason == batch_stream.ERROR:
                error = ApiError(500, "generation failed; see the server log", type="server_error")
                yield f"data: {json.dumps(error.body())}\n\n"
            else:
                yield f"data: {json.dumps(reply.chunk(None, _finish(reason)))}\n\n"
                if include_usage:
                    yield f"data: {json.dumps(reply.usage_chunk(reply.usage(prompt_tokens, completion_tokens)))}\n\n"
            yield "data: [DONE]\n\n"
            return
    finally:
        job.cancelled.set()  # the client went away (or the answer is complete, when this changes nothing)


async def _respond(job: Job, reply: protocol.Reply, request: Request, prompt_tokens: int, sampling):
    if sampling.stream:
        events = _events(job, reply, prompt_tokens, sampling.include_usage)
        return StreamingResponse(
            events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    done = await _wait_done(job, request)
    if done is None:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    reason, completion_tokens = done
    return reply.full(job.row.answer, _finish(reason), reply.usage(prompt_tokens, completion_tokens))


def create_app(
    served: Served, engine: Engine, limits: protocol.Limits, api_key: str | None = None
) -> FastAPI:
    """The FastAPI app; the engine must be started (and stopped) by the caller.

    (Over 50 lines because FastAPI's routes are closures over the served model: one short one per route.)
    """
    app = FastAPI(title="dschat", docs_url=None, redoc_url=None, openapi_url=None)
    tokenizer = served.tokenizer

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(
            ApiError(error.status_code, str(error.detail)).body(), status_code=error.status_code
        )

    @app.middleware("http")
    async def auth(request: Request, call_next):
        try:
            _check_key(request, api_key)
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.status)
        return await call_next(request)

    def check_model(body: dict) -> None:
        if body.get("model") not in (served.model_id, None):
            message = f"model {body['model']!r} is not served here; this server serves {served.model_id!r}"
            raise ApiError(404, message, param="model", code="model_not_found")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served.model_id, **engine.load}

    @app.get("/v1/models")
    async def models() -> dict:
        entry = {"id": served.model_id, "object": "model", "created": 0, "owned_by": "dschat"}
        return {"object": "list", "data": [entry]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request)
        check_model(body)
        chat = protocol.parse_chat(body, limits)
        text = prompts.generation_prompt(chat.messages, served.prompt_template, tokenizer)
        add_specials = prompts.adds_special_tokens(served.prompt_template)
        ids = tokenizer(text, add_special_tokens=add_specials)["input_ids"]
        max_tokens = _budget(served, len(ids), chat.sampling, limits, "messages")
        stop = prompts.stop_markers(served.prompt_template) + chat.sampling.stop
        job = _job(ids, max_tokens, chat.sampling, stop, strip=True)
        _submit(engine, job)
        reply = protocol.Reply(served.model_id, "chat.completion")
        return await _respond(job, reply, request, len(ids), chat.sampling)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _json_body(request)
        check_model(body)
        completion = protocol.parse_completion(body, limits)
        ids = tokenizer(completion.prompt)["input_ids"]
        max_tokens = _budget(served, len(ids), completion.sampling, limits, "prompt")
        job = _job(ids, max_tokens, completion.sampling, completion.sampling.stop, strip=False)
        _submit(engine, job)
        reply = protocol.Reply(served.model_id, "text_completion")
        return await _respond(job, reply, request, len(ids), completion.sampling)

    return app
