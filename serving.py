"""
The HTTP side of serve.py: OpenAI's completions and chat completions API, the models list, a health check and the
web page, as a FastAPI app over an engine.Engine (which generates in its own thread: the event loop never waits for
the model).

    app = serving.create_app(engine, tokenizer, model_name, cfg)   # cfg: serve.py's settings
    uvicorn.run(app, host='127.0.0.1', port=8000)

Request bodies are declared below (Pydantic, strict types); every error is a JSON body in OpenAI's shape,
{"error": {"message", "type", "param", "code"}}, never a traceback.
"""

import asyncio
import hmac
import json
import os
import secrets
import sys
import time
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from engine import QueueFull, Sampling, Stopped

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'static', 'index.html')
POLL_SECONDS = 0.25  # how often a request with no new token checks whether its client is still there


class APIError(Exception):
    def __init__(self, status, message, type='invalid_request_error', param=None, code=None, headers=None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code, self.headers = \
            status, message, type, param, code, headers


def error_response(status, message, type='invalid_request_error', param=None, code=None, headers=None):
    body = {'error': {'message': message, 'type': type, 'param': param, 'code': code}}
    return JSONResponse(body, status_code=status, headers=headers)


# ---- the request bodies -----------------------------------------------------------------------------------------

class SamplingFields(BaseModel):
    """OpenAI's sampling fields (top_k is an extra); fields this server does not use (user, logprobs, ...) are
    ignored. Types are strict: "5" is not a number."""
    model_config = ConfigDict(strict=True, extra='ignore')
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)  # None: the server's default; more than --max_tokens_limit: the limit
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: dict | None = None  # {"include_usage": true}: a last chunk with the usage


class CompletionRequest(SamplingFields):
    prompt: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra='ignore')
    role: Literal['system', 'user', 'assistant']
    content: str


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)


# ---- the app ----------------------------------------------------------------------------------------------------

def create_app(engine, tokenizer, model_name, cfg):
    app = FastAPI(title='nanoGPT', docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(RequestLog)
    created = int(time.time())
    api_key = cfg['api_key']

    @app.exception_handler(APIError)
    async def api_error(request, e):
        return error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):  # unknown paths (404), wrong methods (405)
        kind = 'not_found_error' if e.status_code == 404 else 'invalid_request_error'
        return error_response(e.status_code, f'{request.method} {request.url.path}: {e.detail}', kind)

    @app.exception_handler(Exception)
    async def server_error(request, e):  # a bug: the traceback goes to the server's log, not to the client
        return error_response(500, f'internal error ({type(e).__name__}); see the server log', 'server_error')

    def authorize(request: Request):
        if not api_key:
            return
        scheme, _, given = request.headers.get('authorization', '').partition(' ')
        if scheme.lower() != 'bearer' or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(401, 'missing or wrong API key: send the header "Authorization: Bearer <key>"',
                           'authentication_error', code='invalid_api_key')

    async def parse(request, schema):
        """The body as `schema`: 413 past max_body_bytes, 400 for what is not a JSON object, 422 for wrong fields."""
        limit, length = cfg['max_body_bytes'], request.headers.get('content-length') or '0'
        if length.isdigit() and int(length) > limit:  # uvicorn refuses a malformed one before this
            raise APIError(413, f'the request body is larger than {limit} bytes (--max_body_bytes)')
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f'the request body is larger than {limit} bytes (--max_body_bytes)')
        try:
            return schema.model_validate_json(bytes(body))
        except ValidationError as e:
            first = e.errors()[0]
            if first['type'] in ('json_invalid', 'json_type', 'model_type') or not first['loc']:
                raise APIError(400, f'the body is not a JSON object: {first["msg"]}') from None
            param = '.'.join(map(str, first['loc']))
            raise APIError(422, f'{param}: {first["msg"]}' + (f' (and {len(e.errors()) - 1} more problems)'
                                                              if len(e.errors()) > 1 else ''), param=param) from None

    def sampling_of(req):
        if req.model not in (None, model_name):
            raise APIError(404, f'model {req.model!r} not found: this server serves {model_name!r}',
                           'not_found_error', 'model', 'model_not_found')
        if req.n > engine.max_batch:
            raise APIError(422, f'n={req.n} is more than the server runs at once (--max_batch={engine.max_batch})',
                           param='n')
        stop = [req.stop] if isinstance(req.stop, str) else req.stop or []
        if len(stop) > 4 or not all(stop):
            raise APIError(422, 'stop: at most 4 strings, none empty', param='stop')
        max_tokens = min(req.max_tokens or cfg['default_max_tokens'], cfg['max_tokens_limit'])
        return Sampling(max_tokens, req.temperature, req.top_k, req.top_p, req.n, req.seed, tuple(stop))

    async def prompt_ids(text, bos=True):
        """text's ids (after the BOS the model family adds, when bos), never more than the context; encoded in a
        thread: a megabyte of prompt would hold the event loop."""
        try:
            ids = await asyncio.to_thread(tokenizer.encode, text, bos=bos)
        except ValueError as e:  # e.g. characters a char-level vocabulary lacks
            raise APIError(400, str(e), param='prompt') from None
        if not ids:
            raise APIError(400, 'the prompt is empty: give at least one token', param='prompt')
        context = engine.block_size
        if len(ids) > context and not cfg['truncate_prompts']:
            raise APIError(400, f'the prompt is {len(ids)} tokens, more than the model\'s context of {context}: '
                           'shorten it (or start the server with --truncate_prompts=True to keep its end)',
                           param='prompt', code='context_length_exceeded')
        return ids[-context:]

    def submit(request, ids, sampling):
        """The job and its event queue; 429 when the engine's queue is full."""
        loop, events = asyncio.get_running_loop(), asyncio.Queue()

        def emit(event):  # called from the engine's thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the event loop has closed: the server is stopping
                pass
        try:
            job = engine.submit(ids, sampling, emit)
        except QueueFull as e:
            raise APIError(429, f'the server is busy: {e}; retry later', 'rate_limit_error',
                           headers={'Retry-After': '1'}) from None
        except Stopped as e:
            raise APIError(503, str(e), 'server_error') from None
        request.scope['usage'] = {'prompt_tokens': len(ids), 'completion_tokens': 0}
        return job, events

    async def each_event(request, job, events):
        """The job's events until each of its rows is done; stops early (and cancels it) when the client leaves."""
        open_rows, checked = job.sampling.n, time.monotonic()
        try:
            while open_rows:
                if time.monotonic() - checked > POLL_SECONDS:  # a reply that is not streamed sends nothing till the end
                    if await request.is_disconnected():
                        return
                    checked = time.monotonic()
                try:
                    event = events.get_nowait() if not events.empty() else \
                        await asyncio.wait_for(events.get(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    continue
                if event[0] == 'error':
                    raise APIError(500, event[1], 'server_error')
                if event[0] == 'done':
                    open_rows -= 1
                    request.scope['usage']['completion_tokens'] += event[3]
                yield event
        finally:
            job.cancel()

    async def respond(request, req, ids, chat):
        sampling = sampling_of(req)
        job, events = submit(request, ids, sampling)
        kind = 'chat.completion' if chat else 'text_completion'
        head = {'id': ('chatcmpl-' if chat else 'cmpl-') + secrets.token_hex(12), 'object': kind,
                'created': int(time.time()), 'model': model_name}

        def choice(index, text, finish_reason, delta=False):
            if not chat:
                return {'index': index, 'text': text, 'logprobs': None, 'finish_reason': finish_reason}
            content = {'content': text} if text or not delta else {}
            return {'index': index, ('delta' if delta else 'message'): {'role': 'assistant', **content},
                    'finish_reason': finish_reason}

        def usage():
            used = request.scope['usage']
            return dict(used, total_tokens=used['prompt_tokens'] + used['completion_tokens'])

        if not req.stream:
            texts, finish = [''] * sampling.n, [None] * sampling.n
            async for event in each_event(request, job, events):
                if event[0] == 'text':
                    texts[event[1]] += event[2]
                else:
                    finish[event[1]] = event[2]
            if None in finish:  # the client left; nobody reads this
                return error_response(499, 'the client closed the request')
            return {**head, 'choices': [choice(i, t, f) for i, (t, f) in enumerate(zip(texts, finish))],
                    'usage': usage()}

        async def chunks():
            chunk = dict(head, object=kind + '.chunk' if chat else kind)
            try:
                async for event in each_event(request, job, events):
                    text, finish_reason = (event[2], None) if event[0] == 'text' else ('', event[2])
                    yield sse(dict(chunk, choices=[choice(event[1], text, finish_reason, delta=True)]))
                if (req.stream_options or {}).get('include_usage'):
                    yield sse(dict(chunk, choices=[], usage=usage()))
            except APIError as e:  # the status is sent already: the error goes in the stream
                yield sse({'error': {'message': e.message, 'type': e.type, 'param': None, 'code': None}})
            yield 'data: [DONE]\n\n'
        return JobStream(chunks(), job)

    @app.post('/v1/completions', dependencies=[Depends(authorize)])
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        return await respond(request, req, await prompt_ids(req.prompt), chat=False)

    @app.post('/v1/chat/completions', dependencies=[Depends(authorize)])
    async def chat_completions(request: Request):
        req = await parse(request, ChatRequest)
        if tokenizer.chat_template is None:  # a base model: characters, GPT-2's BPE, a folder without a template
            raise APIError(400, f'model {model_name!r} has no chat template ({tokenizer.name} tokenizer): use '
                           '/v1/completions with a plain prompt', param='messages', code='no_chat_template')
        try:  # in the tokenizer's sandbox: a template formats the messages and reaches nothing else
            text = tokenizer.render_chat([m.model_dump() for m in req.messages], add_generation_prompt=True)
        except ValueError as e:  # the template failed on these messages
            raise APIError(400, f'model {model_name!r}: {e}', param='messages') from None
        return await respond(request, req, await prompt_ids(text, bos=False), chat=True)  # the template wrote any BOS

    @app.get('/v1/models', dependencies=[Depends(authorize)])
    async def models():
        return {'object': 'list', 'data': [{'id': model_name, 'object': 'model', 'created': created,
                                            'owned_by': 'nanogpt'}]}

    @app.get('/health')
    async def health():
        return {'status': 'ok', 'model': model_name, 'context': engine.block_size, **engine.stats()}

    @app.get('/', response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding='utf-8') as f:
            return f.read()

    return app


def sse(obj):
    return f'data: {json.dumps(obj)}\n\n'


class JobStream(StreamingResponse):
    """A server-sent event stream that cancels its job however it ends (the client may leave mid-stream)."""

    def __init__(self, content, job):
        super().__init__(content, media_type='text/event-stream', headers={'Cache-Control': 'no-cache'})
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


class RequestLog:
    """One line per request on stdout: client, method, path, status, token counts, latency (streams: until the
    last chunk)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]

        async def send_and_see(message):
            if message['type'] == 'http.response.start':
                status[0] = message['status']
            await send(message)
        try:
            await self.app(scope, receive, send_and_see)
        finally:
            used = scope.get('usage')
            tokens = f" prompt_tokens={used['prompt_tokens']} completion_tokens={used['completion_tokens']}" \
                if used else ''
            client = scope.get('client') or ('-', 0)
            print(f'{client[0]} "{scope["method"]} {scope["path"]}" {status[0]}{tokens} '
                  f'{1000 * (time.perf_counter() - t0):.0f} ms', file=sys.stdout, flush=True)
