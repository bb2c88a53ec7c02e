"""serve.py: batched decoding gives the tokens of one sequence at a time, the API's answers and
errors, greedy replies equal to sample.py --chat, the real `openai` client against a real uvicorn,
a client dropped mid-stream, the chat page in a headless Chromium, and the script's own start and
stop. FastAPI, uvicorn, httpx, openai and selenium are optional: the tests that need one skip
without it (the scheduler's tests need none)."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import serve
import training
import tokenizer
from conftest import ROOT, run
from model import GPT, make_config

SFT = ['--batch_size=8', '--learning_rate=3e-3', '--warmup_iters=5', '--eval_iters=4', '--log_interval=10',
       '--peak_flops=1e12', '--val_fraction=0.1']
CHARS = 'abcdefghijklmnopqrstuvwxyz .'
QUESTION = 'what does the king see?'


@pytest.fixture(scope='module')
def chat_dir(sft_base, tmp_path_factory):
    """A tiny chat model fine-tuned by finetune_sft.py, whose fine-tune system prompt is 'be brief.'."""
    base, chats = sft_base
    out = tmp_path_factory.mktemp('serve') / 'sft'
    run('finetune_sft.py', *SFT, f'--base_dir={base}', f'--data_file={chats}', f'--cache_dir={out}-cache', f'--out_dir={out}',
        '--max_iters=30', '--eval_interval=30', '--sample_system=be brief.')
    return out


def random_model(arch='gpt2', block=64, n_embd=32, **kw):
    """Random weights over CHARS: speed and batching do not depend on training. Under gpt2's LayerNorm the
    final hidden state sums to 0, so a zero row for end-of-text gives it logit 0 exactly, below the best
    of the others: greedy decoding then never stops early."""
    torch.manual_seed(0)
    model = GPT(make_config(arch, block_size=block, vocab_size=len(CHARS) + 1, n_layer=2, n_head=2, n_embd=n_embd, **kw)).eval()
    if arch == 'gpt2':
        with torch.no_grad():
            model.wte.weight[len(CHARS)] = 0
    return model


def cpu():
    return training.init_run('cpu', 'float32')


# ----------------------------------------------------------------------------- the scheduler (no optional packages)

@pytest.mark.parametrize('arch,kw', [('gpt2', {}), ('llama', {'n_kv_head': 1}), ('qwen3', {'n_kv_head': 1, 'head_dim': 24})])
def test_batched_decoding_gives_the_tokens_of_one_sequence_at_a_time(arch, kw):
    model = random_model(arch, **kw)
    engine = serve.Engine(model, cpu(), max_batch=8, max_queue=8)
    jobs = [([1, 2, 3], 20), (list(range(1, 12)), 14), ([5] * 6, 24), ([7], 9), ([4, 4, 9, 2], 11)]  # the last joins later
    got, ended = [[] for _ in jobs], [threading.Event() for _ in jobs]

    def seq(i):
        def post(event):
            if event[0] == 'token':
                got[i].append(event[1])
                if i == 0 and len(got[0]) == 3:  # while the first four are being decoded together, a fifth arrives
                    engine.submit(seq(4))
            else:
                assert event == ('end', 'length')
                ended[i].set()
        return serve.Seq(jobs[i][0], jobs[i][1], set(), 0.0, 0, 1.0, None, post)
    for i in range(4):
        engine.submit(seq(i))
    engine.thread.start()
    try:
        assert all(e.wait(60) for e in ended)
    finally:
        engine.stop()
    want = [model.generate(torch.tensor([ids]), n, temperature=0)[0, len(ids):].tolist() for ids, n in jobs]
    assert got == want
    # one forward per step over the batch: far fewer steps than rows decoded
    assert engine.rows == sum(n - 1 for _, n in jobs) and engine.steps <= max(n for _, n in jobs) + 3
    assert engine.active == [] and engine.cache is None  # finished rows left the batch, and their cache with them


def test_a_full_queue_refuses_and_a_cancelled_sequence_leaves_the_batch():
    engine = serve.Engine(random_model(), cpu(), max_batch=2, max_queue=1)
    done = threading.Event()
    b = serve.Seq([3], 1, set(), 0.0, 0, 1.0, None, lambda event: event[0] == 'end' and done.set())

    def post(event):  # a's client goes away after 5 tokens (serve.py's request coroutine sets the flag so)
        if a.n_new == 5:
            a.cancelled = True
            engine.submit(b)  # b's reply comes after a has left the batch: the step that saw the flag removes it
    a = serve.Seq([1, 2], 40, set(), 0.0, 0, 1.0, None, post)
    assert engine.submit(a) and not engine.submit(serve.Seq([3], 5, set(), 0.0, 0, 1.0, None, post))  # room for one
    engine.thread.start()
    try:
        assert done.wait(60)
    finally:
        engine.stop()
    assert a.n_new == 5 and engine.active == [] and engine.tokens_generated == 6


def test_stop_text_holds_back_what_may_start_a_stop_string():
    assert serve.stop_text('the cat sees', ['sees']) == (8, 0)
    assert serve.stop_text('the cat se', ['sees', 'x']) == (-1, 2)
    assert serve.stop_text('the cat', ['dog']) == (-1, 0)


# ----------------------------------------------------------------------------- the API in-process

@pytest.fixture(scope='module')
def loaded(request):
    pytest.importorskip('fastapi')
    pytest.importorskip('httpx')  # (first: without them no model is trained for nothing)
    chat_dir = request.getfixturevalue('chat_dir')
    return serve.setup(str(chat_dir), device='cpu', dtype='float32')  # (model, tok, env, name, system)


@pytest.fixture(scope='module')
def client(loaded):
    from fastapi.testclient import TestClient
    model, tok, env, name, system = loaded
    app = serve.make_app(serve.Engine(model, env), tok, name, system, body_limit=100_000)
    with TestClient(app) as c:  # runs the app's lifespan: the engine thread starts and stops with it
        yield c


def chat(client, content, **kw):
    r = client.post('/v1/chat/completions', json={'messages': [{'role': 'user', 'content': content}], **kw})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.slow
@pytest.mark.parametrize('system', [None, 'you write poems.'])
def test_a_greedy_reply_is_the_one_sample_py_chat_gives(client, request, system):
    chat_dir = request.getfixturevalue('chat_dir')
    s = run('sample.py', f'--out_dir={chat_dir}', '--chat', f'--start={QUESTION}', '--num_samples=1', '--max_new_tokens=30',
            '--temperature=0', '--device=cpu', '--dtype=float32', *([f'--system={system}'] if system else []))
    assert ('system prompt, as in fine-tuning: be brief.' in s.stderr) == (system is None)
    messages = ([{'role': 'system', 'content': system}] if system else []) + [{'role': 'user', 'content': QUESTION}]
    r = client.post('/v1/chat/completions', json={'messages': messages, 'temperature': 0, 'max_tokens': 30})
    reply = r.json()['choices'][0]['message']['content']
    assert reply and s.stdout == reply + '\n'


def test_responses_have_openais_fields(client, loaded):
    name = loaded[3]
    assert client.get('/v1/models').json()['data'][0]['id'] == name
    h = client.get('/health').json()
    assert h['status'] == 'ok' and h['chat'] and h['system'] == 'be brief.' and h['context'] == 64
    r = chat(client, QUESTION, temperature=0, max_tokens=5)
    assert r['object'] == 'chat.completion' and r['model'] == name and r['id'].startswith('chatcmpl-') and r['created'] > 0
    assert r['choices'][0]['finish_reason'] in ('stop', 'length') and r['choices'][0]['message']['role'] == 'assistant'
    u = r['usage']
    assert 0 < u['completion_tokens'] <= 5 and u['total_tokens'] == u['prompt_tokens'] + u['completion_tokens']
    assert client.post('/v1/completions', json={'prompt': 'the cat', 'max_tokens': 3}).json()['object'] == 'text_completion'
    page = client.get('/')
    assert page.status_code == 200 and '<title>nanolm chat</title>' in page.text
    assert not any(s in page.text for s in ('http://', 'https://', 'src=', '@import'))  # nothing from elsewhere: works offline


def test_stop_strings_cut_the_reply_streamed_or_not(client):
    full = client.post('/v1/completions', json={'prompt': 'the cat', 'temperature': 0, 'max_tokens': 20}).json()['choices'][0]['text']
    stop = full[5:8]
    want = full[:full.find(stop)]
    r = client.post('/v1/completions', json={'prompt': 'the cat', 'temperature': 0, 'max_tokens': 20, 'stop': [stop, 'zzz']}).json()
    assert r['choices'][0]['text'] == want and r['choices'][0]['finish_reason'] == 'stop'
    with client.stream('POST', '/v1/completions', json={'prompt': 'the cat', 'temperature': 0, 'max_tokens': 20,
                                                        'stop': stop, 'stream': True}) as s:
        events = [line[6:] for line in s.iter_lines() if line.startswith('data: ')]
    import json
    assert events[-1] == '[DONE]'
    chunks = [json.loads(e)['choices'][0] for e in events[:-1]]
    assert ''.join(c['text'] for c in chunks) == want and chunks[-1]['finish_reason'] == 'stop'


def test_seed_repeats_a_sampled_reply(client):
    a, b = (chat(client, QUESTION, temperature=1.0, seed=7, max_tokens=12)['choices'][0]['message']['content'] for _ in range(2))
    assert a == b


def test_long_prompts_lose_their_oldest_turns_or_are_cut_from_the_left(client):
    turns = []
    for i in range(8):
        turns += [{'role': 'user', 'content': f'what does the cat see {i}?'}, {'role': 'assistant', 'content': 'the cat sees the sea.'}]
    r = client.post('/v1/chat/completions', json={'messages': turns + [{'role': 'user', 'content': QUESTION}], 'max_tokens': 10})
    assert r.status_code == 200 and r.json()['usage']['prompt_tokens'] <= 64 - 10
    r = client.post('/v1/completions', json={'prompt': 'the cat sees the sea. ' * 30, 'max_tokens': 10}).json()
    assert r['usage']['prompt_tokens'] == 64 - 10  # the last 54 tokens of the prompt


BIG = 'the cat sees the sea. ' * 40
BAD = [  # (what, path, body: a dict for JSON or raw bytes, status, code, param)
    ('invalid JSON', '/v1/chat/completions', b'{"messages": [', 400, 'invalid_json', None),
    ('not an object', '/v1/chat/completions', b'[1, 2]', 400, 'invalid_json', None),
    ('no messages', '/v1/chat/completions', {'model': 'x'}, 400, 'missing_required_parameter', 'messages'),
    ('empty messages', '/v1/chat/completions', {'messages': []}, 400, 'invalid_value', 'messages'),
    ('messages a string', '/v1/chat/completions', {'messages': 'hi'}, 400, 'invalid_value', 'messages'),
    ('a message not an object', '/v1/chat/completions', {'messages': ['hi']}, 400, 'invalid_type', 'messages[0]'),
    ('unknown role', '/v1/chat/completions', {'messages': [{'role': 'wizard', 'content': 'hi'}]}, 400, 'invalid_value', 'messages[0].role'),
    ('content a number', '/v1/chat/completions', {'messages': [{'role': 'user', 'content': 5}]}, 400, 'invalid_type', 'messages[0].content'),
    ('temperature a string', '/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'hi'}], 'temperature': 'hot'}, 400, 'invalid_type', 'temperature'),
    ('temperature too high', '/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'hi'}], 'temperature': 9}, 400, 'invalid_value', 'temperature'),
    ('max_tokens 0', '/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 0}, 400, 'invalid_value', 'max_tokens'),
    ('max_tokens negative', '/v1/completions', {'prompt': 'hi', 'max_tokens': -3}, 400, 'invalid_value', 'max_tokens'),
    ('max_tokens a float', '/v1/completions', {'prompt': 'hi', 'max_tokens': 2.5}, 400, 'invalid_type', 'max_tokens'),
    ('max_tokens true', '/v1/completions', {'prompt': 'hi', 'max_tokens': True}, 400, 'invalid_type', 'max_tokens'),
    ('max_tokens beyond the context', '/v1/chat/completions', {'messages': [{'role': 'user', 'content': 'hi'}], 'max_tokens': 64}, 400, 'context_length_exceeded', 'max_tokens'),
    ('n 2', '/v1/completions', {'prompt': 'hi', 'n': 2}, 400, 'invalid_value', 'n'),
    ('stop a number', '/v1/completions', {'prompt': 'hi', 'stop': 5}, 400, 'invalid_type', 'stop'),
    ('top_p 0', '/v1/completions', {'prompt': 'hi', 'top_p': 0}, 400, 'invalid_value', 'top_p'),
    ('stream a string', '/v1/completions', {'prompt': 'hi', 'stream': 'yes'}, 400, 'invalid_type', 'stream'),
    ('no prompt', '/v1/completions', {'max_tokens': 3}, 400, 'missing_required_parameter', 'prompt'),
    ('prompt a number', '/v1/completions', {'prompt': 3}, 400, 'invalid_type', 'prompt'),
    ('one message longer than the context', '/v1/chat/completions', {'messages': [{'role': 'user', 'content': BIG}]}, 400, 'context_length_exceeded', 'messages'),
    ('a body over the limit', '/v1/completions', {'prompt': 'x' * 200_000}, 413, 'body_too_large', None),
]


@pytest.mark.parametrize('what,path,body,status,code,param', BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors_and_the_server_goes_on(client, what, path, body, status, code, param):
    r = client.post(path, **({'content': body, 'headers': {'content-type': 'application/json'}} if isinstance(body, bytes) else {'json': body}))
    assert r.status_code == status, r.text
    err = r.json()['error']
    assert set(err) == {'message', 'type', 'param', 'code'} and err['message'] and (err['code'], err['param']) == (code, param)
    assert chat(client, QUESTION, max_tokens=2)['choices'][0]['finish_reason'] in ('stop', 'length')  # still serving


def test_errors_without_a_bad_body(client):
    def chunks():  # no Content-Length: the limit is counted as the body comes
        for _ in range(30):
            yield b'x' * 10_000
    r = client.post('/v1/completions', content=chunks())
    assert r.status_code == 413 and r.json()['error']['code'] == 'body_too_large'
    r = client.get('/v1/chat/completions')
    assert r.status_code == 405 and set(r.json()['error']) == {'message', 'type', 'param', 'code'}
    assert client.get('/etc/passwd').status_code == 404  # no route reads a file a request names
    assert client.get('/health').json()['status'] == 'ok'


def test_the_api_key_and_a_full_queue(loaded):
    from fastapi.testclient import TestClient
    model, tok, env, name, system = loaded
    engine = serve.Engine(model, env, max_queue=0)  # (not started: nothing is ever admitted)
    c = TestClient(serve.make_app(engine, tok, name, system, key='s3cret'))
    for headers in ({}, {'Authorization': 'Bearer wrong'}, {'Authorization': 's3cret'}):
        r = c.get('/v1/models', headers=headers)
        assert r.status_code == 401 and r.json()['error']['code'] == 'invalid_api_key'
    assert c.post('/v1/completions', json={'prompt': 'hi'}).status_code == 401
    assert c.get('/health').status_code == 401
    assert c.get('/').status_code == 200  # the page itself is static: it asks for the key
    ok = {'Authorization': 'Bearer s3cret'}
    assert c.get('/v1/models', headers=ok).status_code == 200
    r = c.post('/v1/completions', json={'prompt': 'hi'}, headers=ok)
    assert r.status_code == 429 and r.headers['retry-after'] == '1' and r.json()['error']['type'] == 'rate_limit_error'


def test_a_base_model_cannot_chat_but_completes(tmp_path):
    pytest.importorskip('fastapi')
    from fastapi.testclient import TestClient
    tok = tokenizer.load({'kind': 'char', 'chars': CHARS})
    with TestClient(serve.make_app(serve.Engine(random_model(), cpu()), tok, 'rand')) as c:
        r = c.post('/v1/chat/completions', json={'messages': [{'role': 'user', 'content': 'hi'}]})
        assert r.status_code == 400 and r.json()['error']['code'] == 'model_cannot_chat'
        r = c.post('/v1/completions', json={'prompt': 'the cat', 'max_tokens': 5, 'temperature': 0})
        assert r.status_code == 200 and len(r.json()['choices'][0]['text']) == 5
        r = c.post('/v1/completions', json={'prompt': 'THE CAT'})  # not in the char vocabulary
        assert r.status_code == 400 and "'T'" in r.json()['error']['message']


def test_a_failing_generation_is_an_error_not_a_hang():
    pytest.importorskip('fastapi')
    from fastapi.testclient import TestClient
    model = random_model()

    def broken(*args, **kw):
        raise RuntimeError('out of memory (a stand-in)')
    # both the prompt's forward and the batched step fail: with only the step broken, a first token
    # sampled as end-of-text (a random model, no seed: ~1 run in 30) finished the request before it;
    # and a failure in the prompt's forward once left that request waiting forever
    model.forward = model.decode_rows = broken
    tok = tokenizer.load({'kind': 'char', 'chars': CHARS})
    with TestClient(serve.make_app(serve.Engine(model, cpu()), tok, 'rand')) as c:
        r = c.post('/v1/completions', json={'prompt': 'the cat', 'max_tokens': 5})
        assert r.status_code == 500 and 'out of memory (a stand-in)' in r.json()['error']['message']
        r = c.post('/v1/completions', json={'prompt': 'the cat', 'max_tokens': 5, 'stream': True})
        assert r.status_code == 503 and r.json()['error']['code'] == 'engine_failed'
        assert c.get('/health').json()['status'] == 'failed'

# ----------------------------------------------------------------------------- a real uvicorn


@contextlib.contextmanager
def live(app):
    """Run app under uvicorn on a free loopback port in a thread; -> its base URL."""
    uvicorn = pytest.importorskip('uvicorn')
    server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=0, log_level='warning'))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and thread.is_alive() and time.time() < deadline:
        time.sleep(0.01)  # waiting for uvicorn's own "started" flag, not guessing a duration
    assert server.started
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def no_proxy(monkeypatch):
    for k in ('HTTP_PROXY', 'HTTPS_PROXY', 'ALL_PROXY', 'http_proxy', 'https_proxy', 'all_proxy'):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')


def test_the_openai_package_works_unchanged(loaded, no_proxy):
    openai = pytest.importorskip('openai')
    model, tok, env, name, system = loaded
    with live(serve.make_app(serve.Engine(model, env), tok, name, system)) as url:
        client = openai.OpenAI(base_url=url + '/v1', api_key='none', max_retries=0)
        assert [m.id for m in client.models.list()] == [name]
        messages = [{'role': 'user', 'content': QUESTION}]
        r = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=20)
        reply = r.choices[0].message.content
        assert reply and r.choices[0].finish_reason in ('stop', 'length') and r.usage.completion_tokens > 0
        stream = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=20, stream=True,
                                                stream_options={'include_usage': True})
        chunks = list(stream)
        assert ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices) == reply
        assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
        c = client.completions.create(model=name, prompt='the cat', temperature=0, max_tokens=10)
        assert c.choices[0].text and c.usage.prompt_tokens > 0
        parts = client.completions.create(model=name, prompt='the cat', temperature=0, max_tokens=10, stream=True)
        assert ''.join(p.choices[0].text for p in parts) == c.choices[0].text
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=name, messages=[], max_tokens=5)
        assert e.value.status_code == 400 and e.value.code == 'invalid_value'
        # many clients at once get what each would alone
        replies = [None] * 6

        def ask(i):
            replies[i] = client.chat.completions.create(model=name, messages=messages, temperature=0, max_tokens=20).choices[0].message.content
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert replies == [reply] * 6


def test_a_client_that_leaves_mid_stream_stops_its_generation(no_proxy):
    httpx = pytest.importorskip('httpx')
    pytest.importorskip('fastapi')
    engine = serve.Engine(random_model(block=1024), cpu())
    tok = tokenizer.load({'kind': 'char', 'chars': CHARS})
    with live(serve.make_app(engine, tok, 'rand')) as url:
        body = {'prompt': 'the cat', 'max_tokens': 1000, 'temperature': 0, 'stream': True}
        with httpx.stream('POST', url + '/v1/completions', json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith('data: {'):
                    break  # the first piece of text has come: leave
        deadline = time.time() + 60
        while engine.active and time.time() < deadline:  # wait for the sequence to leave the batch
            time.sleep(0.01)
        assert engine.active == [] and engine.tokens_generated < 1000  # it did not run to its 1000 tokens
        assert httpx.get(url + '/health').json()['active'] == 0


# ----------------------------------------------------------------------------- the chat page in a real browser

def chromium():
    """A headless Chromium driven by Selenium, or skip saying what is missing."""
    webdriver = pytest.importorskip('selenium.webdriver', reason='the browser test needs selenium (a test extra)')
    browser, driver = shutil.which('chromium') or '/usr/bin/chromium', shutil.which('chromedriver') or '/usr/bin/chromedriver'
    if not (os.path.exists(browser) and os.path.exists(driver)):
        pytest.skip('the browser test needs Chromium and chromedriver (Debian: apt install chromium chromium-driver)')
    import tempfile
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ('--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
                 '--disable-sync', '--no-first-run', '--disable-dev-shm-usage', '--window-size=1100,700',
                 f'--user-data-dir={tempfile.mkdtemp(prefix="nanolm-chromium-")}'):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))


@pytest.mark.slow
def test_the_chat_page_streams_a_reply_and_says_when_the_server_is_gone(loaded, no_proxy):
    model, tok, env, name, system = loaded
    browser = chromium()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    wait = WebDriverWait(browser, 60)
    try:
        with live(serve.make_app(serve.Engine(model, env), tok, name, system)) as url:
            from fastapi.testclient import TestClient
            browser.get(url + '/')
            wait.until(lambda b: name in b.find_element(By.ID, 'model').text)
            assert browser.find_element(By.ID, 'system').get_attribute('value') == 'be brief.'
            assert browser.find_element(By.ID, 'max_tokens').get_attribute('value') == '63'  # 200, cut to the context
            temperature = browser.find_element(By.ID, 'temperature')
            temperature.clear()
            temperature.send_keys('0')
            replies = []
            for turn, text in enumerate([QUESTION, 'and then?']):
                browser.find_element(By.ID, 'input').send_keys(text + Keys.ENTER)
                wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, '.assistant:not(.streaming)')) == turn + 1)
                replies.append(browser.find_elements(By.CSS_SELECTOR, '.assistant')[-1].get_attribute('textContent'))
            # the page held the conversation: the API, asked with the same turns, says the same
            messages = [{'role': 'system', 'content': 'be brief.'}, {'role': 'user', 'content': QUESTION},
                        {'role': 'assistant', 'content': replies[0]}, {'role': 'user', 'content': 'and then?'}]
            with TestClient(serve.make_app(serve.Engine(model, env), tok, name, system)) as c:
                want = c.post('/v1/chat/completions', json={'messages': messages, 'temperature': 0, 'max_tokens': 63}).json()
            assert replies[0] and replies[1] == want['choices'][0]['message']['content']
            # an error from the server is shown as it said it
            tokens = browser.find_element(By.ID, 'max_tokens')
            tokens.clear()
            tokens.send_keys('100000')
            browser.find_element(By.ID, 'input').send_keys('hello' + Keys.ENTER)
            wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, '.error'))
            assert 'max_tokens' in browser.find_elements(By.CSS_SELECTOR, '.error')[-1].text
        # the server is gone now
        browser.find_element(By.ID, 'input').send_keys('hello?' + Keys.ENTER)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, '.error')) == 2)
        assert 'Cannot reach the server' in browser.find_elements(By.CSS_SELECTOR, '.error')[-1].text
        assert not browser.find_element(By.ID, 'send').get_attribute('disabled')  # ready for the next try
    finally:
        browser.quit()

# ----------------------------------------------------------------------------- the script


def read_until(p, marker, timeout=120):
    """Lines of p's stdout up to one containing marker, read by a thread (no read blocks past the deadline)."""
    import queue
    lines, got = [], queue.Queue()
    threading.Thread(target=lambda: [got.put(line) for line in p.stdout], daemon=True).start()
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            lines.append(got.get(timeout=1))
        except queue.Empty:
            if p.poll() is not None:
                break
            continue
        if marker in lines[-1]:
            return lines
    raise AssertionError(f"no {marker!r} in: {''.join(lines)}{p.stderr.read() if p.poll() is not None else ''}")


@pytest.mark.slow
def test_the_script_prints_its_urls_wants_the_key_and_stops_on_sigterm(request, no_proxy):
    httpx = pytest.importorskip('httpx')
    pytest.importorskip('fastapi')
    pytest.importorskip('uvicorn')
    chat_dir = request.getfixturevalue('chat_dir')
    p = subprocess.Popen([sys.executable, str(ROOT / 'serve.py'), f'--out_dir={chat_dir}', '--port=0', '--device=cpu'],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, 'NANOLM_API_KEY': 'k3y'})
    try:
        out = ''.join(read_until(p, 'API:'))
        page = out.split('chat page: ')[1].split()[0]
        api = out.split('API:')[1].split()[0]
        assert page.startswith('http://127.0.0.1:') and api == page + 'v1'
        assert httpx.get(api + '/models').status_code == 401
        r = httpx.post(api + '/chat/completions', headers={'Authorization': 'Bearer k3y'},
                       json={'messages': [{'role': 'user', 'content': QUESTION}], 'max_tokens': 5})
        assert r.status_code == 200
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 128 + signal.SIGTERM
        err = p.stderr.read()
        assert 'Traceback' not in err and 'stopped (SIGTERM)' in err
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.slow
def test_without_fastapi_it_says_what_to_install(tmp_path):
    p = run('serve.py', f'--out_dir={tmp_path}', check=False, env={'PYTHONPATH': str(ROOT / 'tests' / 'without_extras')})
    assert p.returncode == 1 and p.stderr == 'error: serve.py needs fastapi: pip install fastapi uvicorn\n'
    p = run('serve.py', '--max_batch=0', check=False)
    assert p.returncode == 1 and p.stderr.startswith('error: max_batch=0') and p.stderr.count('\n') == 1
