"""
Serve a trained model: an OpenAI-compatible API and a chat page in the browser.

    pip install fastapi uvicorn                       # (optional packages; only this script needs them)
    python serve.py --out_dir=out-sft-poems           # then open http://127.0.0.1:8000/
    python serve.py --init_from=hf:Qwen2.5-0.5B-Instruct --port=8080 --api_key=secret

Any checkpoint sample.py can load. The API follows OpenAI's, so the `openai` package and the
chat front-ends built on it work unchanged with base_url=http://127.0.0.1:8000/v1:

    GET  /v1/models              the one model served
    POST /v1/chat/completions    messages -> a reply, in the chat template of sample.py --chat
    POST /v1/completions         prompt -> its continuation (a base model's text)
    GET  /health                 status, context length, queue and batch counters
    GET  /                       the chat page (chat.html, one self-contained file)

Requests that arrive together are generated together: one thread owns the model and runs the
scheduler below. Each step it admits waiting requests (each prompt is prefilled on its own,
exactly as sample.py does), then decodes every active sequence in ONE forward pass over a
batched KV cache (model.decode_rows: rows of different lengths, each at its own position).
A sequence leaves the batch when it ends, when its client disconnects, or when a stop string
appears. The queue is bounded: beyond --max_queue waiting requests the answer is 429.

Prompt longer than the context: as sample.py --chat, the oldest exchanges are dropped whole
(a leading system prompt and the last message always stay) so that min(max_tokens, context/2)
tokens are left for the reply; a prompt whose last message alone does not fit is a 400
(context_length_exceeded). /v1/completions cuts a long prompt from the left to the same budget.

Why one file over 400 lines: a server is one story (settings, the model, the scheduler, the
requests' checks, the routes), and a reader follows a request from its route through the
scheduler to the reply without leaving the file.
"""
import asyncio
import collections
import hmac
import json
import os
import signal
import sys
import threading
import time
import uuid

import cli  # first: one-line errors, even during the torch import
from cli import die
import training
from configurator import configure
import torch

import tokenizer
from chat_data import ROLES, chat_ids, fit_history
from checkpoint import load_model
from model import sample_next

# ----------------------------------------------------------------------------- settings
out_dir = 'out'           # where train.py / finetune_sft.py wrote ckpt.pt
init_from = ''            # '' = out_dir's checkpoint; 'hf:<folder>' = a Hugging Face model folder
ckpt = 'ckpt.pt'          # ckpt.pt (latest) or best.pt (lowest val loss)
host = '127.0.0.1'        # only this machine can connect; 0.0.0.0 opens it to the network (set --api_key then)
port = 8000
api_key = ''              # if set (or env NANOLM_API_KEY): /v1/* and /health need "Authorization: Bearer <key>"
model_name = ''           # the id in /v1/models and responses; '' = the checkpoint's folder name
system = None             # chat's default system prompt when a request has none; None = the fine-tune's
                          # own (as sample.py --chat), '' = none
max_tokens = 200          # a request's reply length when it does not say (max_tokens)
temperature = 0.8         # defaults for requests that do not say; 0 = greedy
top_k = 200               # (a request may send top_k too, as vLLM and llama.cpp accept)
top_p = 1.0
max_batch = 8             # sequences decoded together in one forward pass
max_queue = 32            # requests waiting for a place in the batch; beyond: 429 with Retry-After
max_body = 1_000_000      # bytes a request body may have; beyond: 413
device = 'auto'           # 'auto' = cuda > mps > cpu
dtype = 'auto'            # 'auto' = bfloat16 on GPUs that have it, float16 on older ones, float32 elsewhere
# -----------------------------------------------------------------------------

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'chat.html')


class Seq:
    """One request as the scheduler sees it. The engine thread writes the counters; the request's
    own coroutine reads its events from `events` and sets `cancelled` (client gone, stop string)."""
    def __init__(self, ids, max_new, stop_ids, temperature, top_k, top_p, generator, post):
        self.ids, self.max_new, self.stop_ids = ids, max_new, stop_ids
        self.temperature, self.top_k, self.top_p, self.generator = temperature, top_k, top_p, generator
        self.post = post            # post(event) from the engine thread: ('token', id) or ('end', 'stop' | 'length')
        self.cancelled = False
        self.pos = 0                # tokens in the KV cache so far
        self.n_new = 0              # tokens sampled so far
        self.n_text = 0             # tokens of the reply the client got (usage.completion_tokens)
        self.last = None            # the newest token: the next step's input
        self.done = False


class Engine:
    """The scheduler: a thread that owns the model. Row i of the batched KV cache belongs to active[i]."""
    def __init__(self, model, env, max_batch=8, max_queue=32, n_vocab=None):
        self.model, self.env, self.max_batch, self.max_queue = model, env, max_batch, max_queue
        self.n_vocab = n_vocab      # the tokenizer's; ids above it (a vocabulary padded to 50304) are never picked
        self.waiting, self.active, self.cache = collections.deque(), [], None
        self.cv = threading.Condition()
        self.stopping = False
        self.failed = ''            # why the thread stopped, if it did on an error: new requests get a 503
        self.tokens_generated = 0   # all tokens sampled since start (tests watch it: a dropped client stops it)
        self.steps = 0              # batched decoding steps, and the rows they held: mean batch = rows / steps
        self.rows = 0
        self.thread = threading.Thread(target=self.run, name='nanolm-engine', daemon=True)

    def submit(self, seq):
        """-> False when the queue is full (the caller answers 429)."""
        with self.cv:
            if len(self.waiting) >= self.max_queue:
                return False
            self.waiting.append(seq)
            self.cv.notify()
            return True

    def stop(self):
        with self.cv:
            self.stopping = True
            self.cv.notify()
        if self.thread.is_alive():
            self.thread.join(timeout=10)

    def run(self):
        new = []  # the requests being let in: not waiting any more, not all active yet
        try:
            while True:
                with self.cv:
                    while not (self.waiting or self.active or self.stopping):
                        self.cv.wait()
                    if self.stopping:
                        return
                    room = self.max_batch - len(self.active)
                    new = [self.waiting.popleft() for _ in range(min(room, len(self.waiting)))]
                with torch.no_grad(), self.env.autocast:
                    for s in new:
                        if not s.cancelled:
                            self.prefill(s)
                    self.leave()
                    if self.active:
                        self.step()
                        self.leave()
        except Exception as e:  # a bug or an out-of-memory: every request hears of it, the server says why
            print(f"error: the generation thread stopped: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            for s in dict.fromkeys(self.active + new + list(self.waiting)):  # (each once: a prefilled one is in both)
                s.post(('error', f"generation failed: {type(e).__name__}: {e}"))
            self.active, self.cache = [], None
            self.waiting.clear()
            self.failed = f"{type(e).__name__}: {e}"
            self.stopping = True

    def prefill(self, s):
        """The prompt in one forward of its own (the same computation as model.stream's first step),
        then its cache joins the batch as a new row and its first token is sampled."""
        m = self.model
        x = torch.tensor([s.ids], dtype=torch.long, device=self.env.device)  # (1, T)
        own = m.new_cache(1, x.device, m.wte.weight.dtype, len(s.ids))
        logits, _ = m(x, cache=own, pos=0, last_only=True)                   # (1, 1, V)
        s.pos = len(s.ids)
        # the batch's cache is as long as its longest sequence will get: grow it (zeros) when this one needs more
        need = min(m.cfg.block_size, len(s.ids) + s.max_new)
        have = self.cache[0][0].size(2) if self.cache else 0
        L = max(need, have)

        def padded(t):  # (B, nkv, length, hs) -> (B, nkv, L, hs)
            return torch.cat([t, t.new_zeros(t.size(0), t.size(1), L - t.size(2), t.size(3))], 2) if t.size(2) < L else t
        if self.cache is None:
            self.cache = [(padded(k), padded(v)) for k, v in own]
        else:
            self.cache = [(torch.cat([padded(k), padded(k1)]), torch.cat([padded(v), padded(v1)]))
                          for (k, v), (k1, v1) in zip(self.cache, own)]
        self.active.append(s)
        self.sample([s], logits[:, -1])

    def step(self):
        """One token for every active sequence: one forward pass over the batch."""
        dev = self.env.device
        x = torch.tensor([[s.last] for s in self.active], dtype=torch.long, device=dev)  # (B, 1)
        pos = torch.tensor([s.pos for s in self.active], dtype=torch.long, device=dev)   # (B,)
        logits = self.model.decode_rows(x, self.cache, pos)                              # (B, V)
        for s in self.active:
            s.pos += 1
        self.steps, self.rows = self.steps + 1, self.rows + len(self.active)
        self.sample(self.active, logits)

    def sample(self, seqs, logits):
        """Each row with its own settings and random generator (a request's seed is its own). Greedy rows
        take one argmax for all; a row with top_k draws among its k likeliest tokens only (model.sample_next
        over them: the same distribution, but torch's multinomial over a 50k vocabulary costs ~5 ms a row
        on a CPU, as much as the whole batch's forward of a small model)."""
        if self.n_vocab and self.n_vocab < logits.size(-1):
            logits[:, self.n_vocab:] = float('-inf')  # (no text to decode them into)
        V = logits.size(-1)
        greedy = logits.argmax(-1).tolist() if any(s.temperature == 0 for s in seqs) else None  # (B,)
        k = max((s.top_k for s in seqs if s.temperature > 0 and 0 < s.top_k < V), default=0)
        if k:
            top, ids = logits.float().topk(k)  # (B, k): each row's k likeliest, likeliest first; one call for all
        for i, s in enumerate(seqs):
            if s.temperature == 0:
                t = greedy[i]
            elif 0 < s.top_k < V:
                t = ids[i, sample_next(top[i:i + 1, :s.top_k], s.temperature, None, s.top_p, s.generator)].item()
            else:
                t = sample_next(logits[i:i + 1], s.temperature, None, s.top_p, s.generator).item()
            s.last, s.n_new = t, s.n_new + 1
            self.tokens_generated += 1
            if t in s.stop_ids:
                s.done = True
                s.post(('end', 'stop'))
                continue
            s.post(('token', t))
            if s.n_new >= s.max_new:
                s.done = True
                s.post(('end', 'length'))

    def leave(self):
        """Finished and cancelled sequences leave the batch; their rows of the cache go too."""
        keep = [i for i, s in enumerate(self.active) if not (s.done or s.cancelled)]
        if len(keep) == len(self.active):
            return
        self.active = [self.active[i] for i in keep]
        if not keep:
            self.cache = None
            return
        rows = torch.tensor(keep, device=self.env.device)
        self.cache = [(k.index_select(0, rows), v.index_select(0, rows)) for k, v in self.cache]


# ----------------------------------------------------------------------------- requests: checks and errors

class ApiError(Exception):
    """-> an OpenAI-style error response: {"error": {"message", "type", "param", "code"}}."""
    def __init__(self, status, message, param=None, code=None, kind='invalid_request_error', headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind, self.headers = status, message, param, code, kind, headers


def error_body(message, kind='invalid_request_error', param=None, code=None):
    return {'error': {'message': message, 'type': kind, 'param': param, 'code': code}}


def number(body, key, default, lo, hi, integer=False, lo_open=False):
    """body[key] checked: a number (an int if integer) in [lo, hi] ((lo, hi] if lo_open); default if absent/null."""
    v = body.get(key)
    if v is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, kinds):
        raise ApiError(400, f"'{key}' must be {'an integer' if integer else 'a number'}, not {json.dumps(v)[:40]}", key, 'invalid_type')
    if v < lo or v > hi or (lo_open and v == lo):
        raise ApiError(400, f"'{key}' is {v}; it must be {'>' if lo_open else '>='} {lo} and <= {hi}", key, 'invalid_value')
    return v


def sampling(body, block, defaults):
    """The settings every generation request shares: -> dict of them, or ApiError."""
    out = {'temperature': number(body, 'temperature', defaults['temperature'], 0, 2),
           'top_p': number(body, 'top_p', defaults['top_p'], 0, 1, lo_open=True),
           'top_k': number(body, 'top_k', defaults['top_k'], 0, 1 << 31, integer=True),
           'seed': number(body, 'seed', None, -(1 << 63), (1 << 64) - 1, integer=True)}
    key = 'max_completion_tokens' if body.get('max_completion_tokens') is not None else 'max_tokens'
    out['max_tokens'] = number(body, key, min(defaults['max_tokens'], block - 1), 1, 1 << 31, integer=True)
    if out['max_tokens'] >= block:
        raise ApiError(400, f"'{key}' is {out['max_tokens']}, beyond this model's context of {block} tokens "
                            f"(prompt included); ask for at most {block - 1}", key, 'context_length_exceeded')
    if number(body, 'n', 1, 1, 1 << 31, integer=True) != 1:
        raise ApiError(400, "'n' must be 1: one reply per request here", 'n', 'invalid_value')
    stop = body.get('stop')
    stop = [stop] if isinstance(stop, str) else stop
    if stop is not None and not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a non-empty string or a list of up to 4 of them", 'stop', 'invalid_type')
    out['stop'] = stop or []
    out['stream'] = body.get('stream') is True
    for key, kind in (('stream', bool), ('model', str)):
        if body.get(key) is not None and not isinstance(body[key], kind):
            raise ApiError(400, f"'{key}' must be a {'boolean' if kind is bool else 'string'}", key, 'invalid_type')
    opts = body.get('stream_options')
    out['usage_chunk'] = isinstance(opts, dict) and opts.get('include_usage') is True
    return out


def chat_messages(body, default_system):
    """body['messages'] checked -> [{'role', 'content'}], with the default system prompt first when it
    has none; a system prompt that is '' means none (sample.py --system='')."""
    msgs = body.get('messages')
    if msgs is None:
        raise ApiError(400, "'messages' is missing: send a list of {\"role\": ..., \"content\": ...}", 'messages', 'missing_required_parameter')
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list of {\"role\": ..., \"content\": ...}", 'messages', 'invalid_value')
    out = []
    for n, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{n}] must be an object with 'role' and 'content'", f'messages[{n}]', 'invalid_type')
        role, content = m.get('role'), m.get('content')
        role = 'system' if role == 'developer' else role  # OpenAI's newer name for the system prompt
        if role not in ROLES:
            raise ApiError(400, f"messages[{n}] has the unknown role {json.dumps(role)[:40]}; roles: {', '.join(ROLES)}",
                           f'messages[{n}].role', 'invalid_value')
        if isinstance(content, list):  # OpenAI's content parts: only text ones here
            if not all(isinstance(p, dict) and p.get('type') == 'text' and isinstance(p.get('text'), str) for p in content):
                raise ApiError(400, f"messages[{n}].content: only text parts ({{\"type\": \"text\", \"text\": ...}}) can be read "
                                    f"by this model", f'messages[{n}].content', 'invalid_value')
            content = ''.join(p['text'] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{n}].content must be a string", f'messages[{n}].content', 'invalid_type')
        out.append({'role': role, 'content': content})
    if out[0]['role'] != 'system' and default_system:
        out.insert(0, {'role': 'system', 'content': default_system})
    return [m for i, m in enumerate(out) if not (i == 0 and m['role'] == 'system' and not m['content'])]


def stop_text(text, stops):
    """-> (where the first stop string starts, or -1; how many trailing characters could still start one,
    so streaming holds them back until the next token says)."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    if found:
        return min(found), 0
    hold = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return -1, hold


def check_chat_body(body, tok, block, defaults, default_system, im_end, no_chat):
    """A /v1/chat/completions body checked -> (the prompt's token ids in the chat template, sampling opts), or ApiError."""
    if im_end is None:
        raise ApiError(400, f"this model cannot chat: {no_chat}; fine-tune it (finetune_sft.py) or use /v1/completions",
                       code='model_cannot_chat')
    messages = chat_messages(body, default_system)
    opts = sampling(body, block, defaults)
    room = min(opts['max_tokens'], block // 2)  # as sample.py --chat: tokens kept free for the reply
    try:
        ids, _ = fit_history(tok, messages, block - room)
    except ValueError as e:  # a char vocabulary without some character
        raise ApiError(400, f"messages: {e}", 'messages', 'invalid_value')
    if len(ids) >= block:
        raise ApiError(400, f"the last message takes {len(ids)} tokens in the chat template; this model's context is "
                            f"{block}: shorten it", 'messages', 'context_length_exceeded')
    return ids, opts


def check_completion_body(body, tok, block, defaults):
    """A /v1/completions body checked -> (the prompt's token ids, cut to fit, sampling opts), or ApiError."""
    prompt = body.get('prompt')
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string", 'prompt', 'missing_required_parameter' if prompt is None else 'invalid_type')
    opts = sampling(body, block, defaults)
    try:
        ids = ([tok.bos] if tok.bos is not None else []) + tok.encode(prompt)  # as sample.py: BOS first where
        ids = ids or [tok.eot]  # the tokenizer adds one (Llama); '' starts from end-of-text, as sample.py --start=''
    except ValueError as e:
        raise ApiError(400, f"prompt: {e}", 'prompt', 'invalid_value')
    ids = ids[-(block - min(opts['max_tokens'], block // 2)):]  # too long: cut from the left
    return ids, opts


# ----------------------------------------------------------------------------- a request's reply

def start(engine, ids, max_new, stop_ids, opts):
    """Queue a sequence on the engine. -> (its Seq, an asyncio.Queue of its events)."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def post(event):
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is going down
            pass
    gen = torch.Generator(engine.env.device)
    gen.manual_seed(opts['seed'] % (1 << 63) if opts['seed'] is not None else int.from_bytes(os.urandom(8), 'little') >> 1)
    s = Seq(ids, max_new, stop_ids, opts['temperature'], opts['top_k'], opts['top_p'], gen, post)
    if engine.failed:
        raise ApiError(503, f"generation failed and stopped ({engine.failed}); restart serve.py", kind='server_error',
                       code='engine_failed')
    if not engine.submit(s):
        raise ApiError(429, f"the server is busy ({engine.max_queue} requests waiting); retry in a moment",
                       code='queue_full', kind='rate_limit_error', headers={'Retry-After': '1'})
    return s, events


async def pieces(tok, s, events, stops, request):
    """The reply's text as it comes: yields (text, None) pieces, then ('', finish_reason). Stop
    strings cut it (and end the sequence); a client that went away cancels it."""
    feed, text, sent, finish = tokenizer.text_decoder(tok), '', 0, None
    checked = time.monotonic()
    try:
        while finish is None:
            if time.monotonic() - checked > 0.25:  # a stream's client going away cancels this coroutine;
                checked = time.monotonic()          # a plain request's must be asked now and then
                if await request.is_disconnected():
                    return
            try:
                kind, value = await asyncio.wait_for(events.get(), timeout=0.25)
            except asyncio.TimeoutError:  # still queued, or a slow step
                continue
            if kind == 'error':
                raise ApiError(500, value, kind='server_error')
            if kind == 'token':
                s.n_text += 1
                text += feed(value)
            else:
                text, finish = text + feed(), value
            at, hold = stop_text(text, stops)
            if at >= 0:
                text, finish = text[:at], 'stop'
            elif finish is None:
                text_now = text[:len(text) - hold]
                if len(text_now) > sent:
                    yield text_now[sent:], None
                    sent = len(text_now)
                continue
            if len(text) > sent:
                yield text[sent:], None
                sent = len(text)
        yield '', finish
    finally:
        s.cancelled = True  # done, stopped by a stop string, or the client is gone: its row leaves the batch


def envelope(kind, chat_reply, name):
    return {'id': f"{'chatcmpl' if chat_reply else 'cmpl'}-{uuid.uuid4().hex[:24]}", 'object': kind,
            'created': int(time.time()), 'model': name}


def usage(s):
    n = s.n_text
    return {'prompt_tokens': len(s.ids), 'completion_tokens': n, 'total_tokens': len(s.ids) + n}


async def respond(request, tok, name, s, events, opts, chat_reply):
    """The whole reply as one JSON object, or (stream) a StreamingResponse of server-sent events."""
    if not opts['stream']:
        text, finish = '', None
        async for piece, end in pieces(tok, s, events, opts['stop'], request):
            text, finish = text + piece, end or finish
        choice = ({'index': 0, 'message': {'role': 'assistant', 'content': text}, 'logprobs': None, 'finish_reason': finish}
                  if chat_reply else {'index': 0, 'text': text, 'logprobs': None, 'finish_reason': finish})
        return {**envelope('chat.completion' if chat_reply else 'text_completion', chat_reply, name),
                'choices': [choice], 'usage': usage(s)}
    from fastapi.responses import StreamingResponse
    head = envelope('chat.completion.chunk' if chat_reply else 'text_completion', chat_reply, name)
    return StreamingResponse(sse(tok, s, events, opts, chat_reply, head, request), media_type='text/event-stream',
                             headers={'Cache-Control': 'no-cache'})


def sse_chunk(head, text, finish, chat_reply, first=False):
    """One server-sent event of a streamed reply: a chat delta (the first one carries the role) or a completion's text."""
    if chat_reply:
        delta = {'role': 'assistant', 'content': text} if first else ({'content': text} if text or not finish else {})
        choice = {'index': 0, 'delta': delta, 'logprobs': None, 'finish_reason': finish}
    else:
        choice = {'index': 0, 'text': text, 'logprobs': None, 'finish_reason': finish}
    return f"data: {json.dumps({**head, 'choices': [choice]}, ensure_ascii=False)}\n\n"


async def sse(tok, s, events, opts, chat_reply, head, request):
    """A streamed reply's events, ending with [DONE] (after the usage chunk, if the request asked for it)."""
    try:
        if chat_reply:
            yield sse_chunk(head, '', None, chat_reply, first=True)
        async for piece, end in pieces(tok, s, events, opts['stop'], request):
            yield sse_chunk(head, piece, end, chat_reply)
        if opts['usage_chunk']:
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage(s)})}\n\n"
    except ApiError as e:  # the status line has gone out already: the error travels as an event
        yield f"data: {json.dumps(error_body(e.message, e.kind, e.param, e.code))}\n\n"
    yield 'data: [DONE]\n\n'


# ----------------------------------------------------------------------------- the app

def engine_lifespan(engine):
    """FastAPI's lifespan: the engine's thread runs while the app does."""
    import contextlib

    @contextlib.asynccontextmanager
    async def run(app):
        if not engine.thread.is_alive():
            engine.thread.start()
        yield
        engine.stop()
    return run


def fail(status, message, kind='invalid_request_error', param=None, code=None, headers=None):
    from fastapi.responses import JSONResponse
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


def add_error_handlers(app):
    """Every error, ours or the framework's, answered in OpenAI's shape."""
    from starlette.exceptions import HTTPException

    @app.exception_handler(ApiError)
    async def api_error(request, e):
        return fail(e.status, e.message, e.kind, e.param, e.code, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):  # 404 unknown path, 405 wrong method: OpenAI's shape too
        return fail(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=str(e.status_code))

    @app.exception_handler(Exception)
    async def bug(request, e):
        return fail(500, f"server error: {type(e).__name__}: {e}", 'server_error')


def add_guard(app, key, body_limit):
    @app.middleware('http')
    async def guard(request, call_next):
        """The API key (the page itself, a static file, is open: it asks for the key) and the body limit."""
        path = request.url.path
        if key and path != '/':
            got = request.headers.get('authorization', '')
            if not hmac.compare_digest(got.encode(), f'Bearer {key}'.encode()):
                return fail(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                            'authentication_error', code='invalid_api_key', headers={'WWW-Authenticate': 'Bearer'})
        size = request.headers.get('content-length')
        if size and size.isdigit() and int(size) > body_limit:
            return fail(413, f"the request body is {int(size):,} bytes; at most {body_limit:,} are accepted", code='body_too_large')
        return await call_next(request)


async def read_json(request, body_limit):
    """The body as a JSON object, or ApiError; the limit holds also for a body sent without a Content-Length."""
    size, parts = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > body_limit:
            raise ApiError(413, f"the request body is over {body_limit:,} bytes", code='body_too_large')
        parts.append(chunk)
    try:
        body = json.loads(b''.join(parts))
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the body is not valid JSON ({e})", code='invalid_json')
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code='invalid_json')
    return body


def make_app(engine, tok, name, default_system='', key='', defaults=None, body_limit=1_000_000):
    """The FastAPI app around an Engine (started and stopped with the app). tests/test_serve.py builds
    one in-process; __main__ below runs it under uvicorn."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse

    defaults = {'temperature': 0.8, 'top_k': 200, 'top_p': 1.0, 'max_tokens': 200, **(defaults or {})}
    block = engine.model.cfg.block_size
    created = int(time.time())
    try:
        _, im_end = chat_ids(tok)
        no_chat = None
    except ValueError as e:
        im_end, no_chat = None, str(e)

    app = FastAPI(title='nanolm', lifespan=engine_lifespan(engine), docs_url=None, redoc_url=None, openapi_url=None)
    add_error_handlers(app)
    add_guard(app, key, body_limit)

    @app.get('/', response_class=HTMLResponse)
    async def page():
        with open(PAGE, encoding='utf-8') as f:
            return f.read()

    @app.get('/health')
    async def health():
        return {'status': 'ok' if engine.thread.is_alive() else 'failed' if engine.failed else 'stopped', 'model': name, 'context': block,
                'chat': im_end is not None, 'system': default_system, 'active': len(engine.active),
                'waiting': len(engine.waiting), 'tokens_generated': engine.tokens_generated,
                'mean_batch': round(engine.rows / engine.steps, 2) if engine.steps else 0}

    @app.get('/v1/models')
    async def models():
        return {'object': 'list', 'data': [{'id': name, 'object': 'model', 'created': created, 'owned_by': 'nanolm'}]}

    @app.post('/v1/chat/completions')
    async def chat_completions(request: Request):
        body = await read_json(request, body_limit)
        ids, opts = check_chat_body(body, tok, block, defaults, default_system, im_end, no_chat)
        s, events = start(engine, ids, min(opts['max_tokens'], block - len(ids)), {im_end, tok.eot}, opts)
        return await respond(request, tok, name, s, events, opts, chat_reply=True)

    @app.post('/v1/completions')
    async def completions(request: Request):
        body = await read_json(request, body_limit)
        ids, opts = check_completion_body(body, tok, block, defaults)
        s, events = start(engine, ids, min(opts['max_tokens'], block - len(ids)), {tok.eot}, opts)
        return await respond(request, tok, name, s, events, opts, chat_reply=False)

    return app


def setup(out_dir, ckpt='ckpt.pt', init_from='', device='auto', dtype='auto', system=None):
    """Load the model as sample.py does. -> (model on its device, tok, env, name, default system prompt)."""
    env = training.init_run(device, dtype)
    model, tok_spec, ck = load_model(out_dir, ckpt, init_from)
    model.to(env.device)
    where = init_from or os.path.join(out_dir, ckpt)
    if tok_spec is None:
        die(f"{where} has no tokenizer in it (made by something other than train.py?); it cannot be decoded")
    tok = tokenizer.load(tok_spec)
    if system is None:  # the fine-tune's own, as sample.py --chat
        system = (ck.get('config') or {}).get('sample_system') or ''
    name = os.path.basename(os.path.normpath(init_from[3:] if init_from.startswith('hf:') else out_dir)) or 'nanolm'
    return model, tok, env, name, str(system)


if __name__ == '__main__':
    configure(globals())
    api_key = api_key or os.environ.get('NANOLM_API_KEY', '')
    bad = [f"{k}={v!r} (needs {need})" for k, v, ok, need in [
        ('temperature', temperature, 0 <= temperature <= 2, '0 to 2; 0 = greedy'), ('top_p', top_p, 0 < top_p <= 1, '0 < top_p <= 1'),
        ('top_k', top_k, top_k >= 0, '>= 0; 0 = all'), ('max_tokens', max_tokens, max_tokens >= 1, '>= 1'),
        ('max_batch', max_batch, max_batch >= 1, '>= 1'), ('max_queue', max_queue, max_queue >= 0, '>= 0'),
        ('max_body', max_body, max_body >= 1024, '>= 1024'), ('port', port, 0 <= port < 65536, '0..65535')] if not ok]
    if bad:
        die(', '.join(bad))
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        die(f"serve.py needs {e.name}: pip install fastapi uvicorn")
    model, tok, env, name, default_system = setup(out_dir, ckpt, init_from, device, dtype, system)
    engine = Engine(model, env, max_batch, max_queue, tok.n_vocab)
    app = make_app(engine, tok, model_name or name, default_system, api_key,
                   dict(temperature=temperature, top_k=top_k, top_p=top_p, max_tokens=max_tokens), max_body)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level='warning', timeout_graceful_shutdown=3))
    if host not in ('127.0.0.1', 'localhost', '::1') and not api_key:
        print(f"(note: listening on {host} with no --api_key: anyone who can reach this machine can use the model)", file=sys.stderr)

    async def main():
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]  # the real port, also for --port=0
            shown = f"[{host}]" if ':' in host else host
            print(f"serving {name} ({model.num_params() / 1e6:.2f}M parameters, context {model.cfg.block_size}) on {env.device}\n"
                  f"chat page: http://{shown}:{bound}/\nAPI:       http://{shown}:{bound}/v1  (OpenAI-compatible; "
                  f"{'needs Authorization: Bearer <key>' if api_key else 'no key'})\nCtrl-C stops it", flush=True)
        await serving
    # uvicorn catches Ctrl-C / SIGTERM itself (stops taking requests, ends open streams within 3 s), then
    # raises the signal again once it is done: that last one is only noted here, and we exit as every
    # nanolm script does on a signal, with 128 + its number.
    stopped_by = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
    try:
        asyncio.run(main())
    finally:
        engine.stop()
    if stopped_by:
        print(f"stopped ({signal.Signals(stopped_by[0]).name})", file=sys.stderr, flush=True)
        sys.exit(128 + stopped_by[0])
    if not server.started:
        die(f"could not listen on {host}:{port} (in use? another --port)")
