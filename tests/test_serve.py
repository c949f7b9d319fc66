"""serve.py as a user runs it: a subprocess on a free loopback port serving a checkpoint that train.py wrote, called
with the official openai client, raw HTTP (httpx) and a real headless Chromium; every server is stopped at the end."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from helpers import ROOT, assert_one_line_error, make_text, run, run_all, write_char_dataset

CHROMIUM, CHROMEDRIVER = shutil.which('chromium'), shutil.which('chromedriver')
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    """A 2-layer char model (context 32) after 20 iterations of train.py on text with a few words."""
    root = tmp_path_factory.mktemp('serve')
    data = write_char_dataset(root / 'data', make_text(20_000))
    result = run('train.py', f'--data_dir={data}', '--dataset=tiny', f'--out_dir={root / "run"}', '--device=cpu',
                 '--compile=False', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=4',
                 '--gradient_accumulation_steps=1', '--eval_iters=1', '--eval_interval=20', '--max_iters=20',
                 '--warmup_iters=0', '--lr_decay_iters=20', '--learning_rate=1e-2')
    assert result.returncode == 0, result.stderr
    return str(root / 'run')


@pytest.fixture(scope='module')
def chat_run(tmp_path_factory):
    """A Hugging Face tokenizer folder (a byte-level BPE, a ChatML template, <|im_end|> its EOS), data prepare.py
    made with it, and a checkpoint on that data whose model always ranks one token X first and <|im_end|> second,
    e**-1 as likely: greedy repeats X, sampling stops after a few."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    import checkpoint
    import dataset
    import tokenizer as tokenizers
    from model import GPT, GPTConfig
    root = tmp_path_factory.mktemp('chat')
    os.makedirs(root / 'tokenizer')
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator([make_text(5_000)], trainers.BpeTrainer(
        vocab_size=300, special_tokens=['<|im_start|>', '<|im_end|>'], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(root / 'tokenizer' / 'tokenizer.json'))
    (root / 'tokenizer' / 'tokenizer_config.json').write_text(json.dumps({'eos_token': '<|im_end|>',
                                                                           'chat_template': CHATML}))
    (root / 'input.txt').write_text(make_text(5_000))
    result = run('prepare.py', root / 'input.txt', f'--out_dir={root / "data"}', f'--tokenizer={root / "tokenizer"}',
                 '--num_proc=1', '--val_fraction=0.1')
    assert result.returncode == 0, result.stderr
    tok = tokenizers.for_data(str(root / 'data'))
    x, im_end = tok.encode(' king', bos=False)[0], tok.stop_ids[0]
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=256, vocab_size=tok.vocab_size)
    state = GPT(config).state_dict()
    state['transformer.ln_f.weight'].zero_()
    state['transformer.ln_f.bias'].zero_()[0] = 1.0  # ln_f's output is e0: the logits are column 0 of wte (tied)
    state['transformer.wte.weight'][:, 0] = torch.zeros(tok.vocab_size).index_put_(
        (torch.tensor([x, im_end]),), torch.tensor([30.0, 29.0]))
    checkpoint.save({'model': state, 'model_args': checkpoint.model_args(config), 'iter_num': 0, 'best_val_loss': 0.0,
                     'config': {'data_dir': str(root / 'data'),
                                'tokenizer': dataset.fingerprint(dataset.load_meta(str(root / 'data')))}},
                    str(root / 'run' / 'ckpt.pt'))
    return str(root / 'run'), tok, tok.decode([x])


@contextlib.contextmanager
def serving(run_dir, log_path, *options):
    """`python serve.py` on a free port (port=0) until the block ends; yields its base URL. Its log goes to a file
    (a pipe nobody reads would fill up and stop the server)."""
    with open(log_path, 'w') as log:
        server = subprocess.Popen([sys.executable, os.path.join(ROOT, 'serve.py'), f'--out_dir={run_dir}',
                                   '--device=cpu', '--port=0', '--model_name=tiny', *options], cwd=ROOT,
                                  env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r'at (http://127\.0\.0\.1:\d+)/', open(log_path).read())):
            assert server.poll() is None and time.monotonic() < deadline, open(log_path).read()
            time.sleep(0.05)
        yield found.group(1)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope='module')
def server(run_dir, tmp_path_factory):
    """The default server; an idle engine waits 0.3 s for requests that arrive together (the batching test's)."""
    log = tmp_path_factory.mktemp('log') / 'serve.log'
    with serving(run_dir, log, '--batch_wait=0.3') as url:
        yield url, log


@pytest.fixture(scope='module')
def small_server(run_dir, tmp_path_factory):
    """One row at a time, one request waiting, an API key, generations as long as asked."""
    log = tmp_path_factory.mktemp('log') / 'serve.log'
    with serving(run_dir, log, '--max_batch=1', '--max_queue=1', '--api_key=sesame',
                 '--max_tokens_limit=1000000', '--truncate_prompts=True') as url:
        yield url


def client(url, key='unused'):
    return openai.OpenAI(base_url=url + '/v1', api_key=key, max_retries=0, timeout=60)


def test_openai_client_completions(server, run_dir):
    url, log = server
    api = client(url)
    assert [m.id for m in api.models.list().data] == ['tiny']
    first = api.completions.create(model='tiny', prompt='the king', max_tokens=12, seed=3, temperature=1.0)
    text = first.choices[0].text
    assert len(text) == 12 and first.choices[0].finish_reason == 'length'  # a char model: a token is a character
    assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (8, 12, 20)
    again = api.completions.create(model='tiny', prompt='the king', max_tokens=12, seed=3, temperature=1.0)
    assert again.choices[0].text == text  # the seed
    streamed = api.completions.create(model='tiny', prompt='the king', max_tokens=12, seed=3, stream=True,
                                      stream_options={'include_usage': True})
    chunks = list(streamed)
    assert ''.join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == 'length'
    assert chunks[-1].usage.completion_tokens == 12
    three = api.completions.create(model='tiny', prompt='the king', max_tokens=12, n=3, seed=5)
    assert [c.index for c in three.choices] == [0, 1, 2] and len({c.text for c in three.choices}) > 1
    assert three.usage.completion_tokens == 36 and three.usage.prompt_tokens == 8
    stop = text[4:6]  # a string the seeded completion holds: it ends there, without it
    stopped = api.completions.create(model='tiny', prompt='the king', max_tokens=12, seed=3, stop=[stop, 'QQ'])
    assert stopped.choices[0].text == text[:text.find(stop)] and stopped.choices[0].finish_reason == 'stop'
    streamed = api.completions.create(model='tiny', prompt='the king', max_tokens=12, seed=3, stop=stop, stream=True)
    assert ''.join(c.choices[0].text for c in streamed) == stopped.choices[0].text
    assert re.search(r'"POST /v1/completions" 200 prompt_tokens=8 completion_tokens=12 \d+ ms', open(log).read())


def test_greedy_equals_sample_py(server, run_dir):
    """temperature 0 is sample.py's greedy output, past the context (32) too: the cache starts again as generate's."""
    result = run('sample.py', f'--out_dir={run_dir}', '--device=cpu', '--start=the king', '--temperature=0',
                 '--num_samples=1', '--max_new_tokens=60')
    assert result.returncode == 0, result.stderr
    expected = result.stdout.split('\n---------------\n')[0]
    got = client(server[0]).completions.create(model='tiny', prompt='the king', max_tokens=60, temperature=0)
    assert 'the king' + got.choices[0].text == expected


def test_chat_needs_a_chat_template(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server[0]).chat.completions.create(model='tiny', messages=[{'role': 'user', 'content': 'hi'}])
    assert e.value.status_code == 400 and e.value.code == 'no_chat_template' and 'chat template' in e.value.message


def test_chat_with_a_template_stops_at_its_stop_id(chat_run, tmp_path):
    run_dir, tok, x = chat_run
    messages = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'my lord'}]
    prompt_tokens = len(tok.encode(tok.render_chat(messages), bos=False))
    with serving(run_dir, tmp_path / 'serve.log', '--max_tokens_limit=100') as url:
        api = client(url)
        capped = api.completions.create(model='tiny', prompt='the king', max_tokens=10 ** 9, temperature=0)
        assert capped.usage.completion_tokens == 100 and capped.choices[0].finish_reason == 'length'
        greedy = api.chat.completions.create(model='tiny', messages=messages, temperature=0, max_tokens=5)
        assert greedy.choices[0].message.content == x * 5 and greedy.choices[0].finish_reason == 'length'
        assert greedy.choices[0].message.role == 'assistant' and greedy.usage.prompt_tokens == prompt_tokens
        sampled = [api.chat.completions.create(model='tiny', messages=messages, max_tokens=100, seed=seed)
                   for seed in range(4)]
        for reply in sampled:  # X a few times, then <|im_end|>: counted, not shown
            assert reply.choices[0].finish_reason == 'stop'
            assert reply.choices[0].message.content == x * (reply.usage.completion_tokens - 1)
        assert len({reply.usage.completion_tokens for reply in sampled}) > 1
        chunks = list(api.chat.completions.create(model='tiny', messages=messages, max_tokens=100, seed=0,
                                                  stream=True))
        assert ''.join(c.choices[0].delta.content or '' for c in chunks) == sampled[0].choices[0].message.content
        assert chunks[0].choices[0].delta.role == 'assistant' and chunks[-1].choices[0].finish_reason == 'stop'
        # a prompt is text, never a path to read: FILE: is sample.py's --start convention, not the server's
        secret = tmp_path / 'secret.txt'
        secret.write_text('the king ' * 30)
        plain = api.completions.create(model='tiny', prompt=f'FILE:{secret}', max_tokens=1)
        assert plain.usage.prompt_tokens == len(tok.encode(f'FILE:{secret}'))


def test_concurrent_requests_are_batched_and_independent(server):
    """16 clients at once, with prompts of 4 lengths, are decoded together (the groups of shorter prompts catch up
    with the others), and each gets what it gets alone with its seed."""
    prompts = ('my lord', 'the king', 'O fair day', 'sweet night come')
    url, _ = server
    api = client(url)
    before = httpx.get(url + '/health').json()['rows_per_step']
    results, start = {}, threading.Barrier(16)

    def ask(seed):
        start.wait()
        results[seed] = api.completions.create(model='tiny', prompt=prompts[seed % 4], max_tokens=20, seed=seed,
                                               temperature=1.0, extra_body={'top_k': 10}).choices[0].text
    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    after = httpx.get(url + '/health').json()['rows_per_step']
    batched = {int(size): count - before.get(size, 0) for size, count in after.items() if int(size) > 1}
    assert sum(batched.values()) > 0 and max(size for size, count in batched.items() if count) >= 12, after
    assert len(results) == 16 and len(set(results.values())) > 8
    for seed in range(16):  # alone
        alone = api.completions.create(model='tiny', prompt=prompts[seed % 4], max_tokens=20, seed=seed,
                                       temperature=1.0, extra_body={'top_k': 10})
        assert alone.choices[0].text == results[seed]


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server):
    url, _ = server
    cases = [
        (b'{"prompt": "the", "max_tokens": ', 400, None),  # malformed JSON
        (b'[1, 2]', 400, None),  # not an object
        (json.dumps({'prompt': 'the', 'max_tokens': '5'}), 422, 'max_tokens'),  # a string for a number
        (json.dumps({'prompt': 'the', 'max_tokens': -1}), 422, 'max_tokens'),
        (json.dumps({'prompt': 'the', 'temperature': 9}), 422, 'temperature'),
        (json.dumps({'prompt': 'the', 'n': 10 ** 6}), 422, 'n'),
        (json.dumps({'prompt': 7}), 422, 'prompt'),
        (json.dumps({'max_tokens': 3}), 422, 'prompt'),  # no prompt
        (json.dumps({'prompt': 'the', 'model': 'gpt-4'}), 404, 'model'),
        (json.dumps({'prompt': 'the ~ unknown'}), 400, 'prompt'),  # a character the vocabulary lacks
        (json.dumps({'prompt': 'the king ' * 10}), 400, 'prompt'),  # longer than the context
        (json.dumps({'prompt': 'the' * 500_000}), 413, None),  # past --max_body_bytes
    ]
    for body, status, param in cases:
        response = httpx.post(url + '/v1/completions', content=body, headers={'Content-Type': 'application/json'})
        error = response.json()['error']
        assert response.status_code == status and error['param'] == param and error['message'], (body[:40], error)
        assert set(error) == {'message', 'type', 'param', 'code'} and 'Traceback' not in response.text
    missing = httpx.get(url + '/v1/nothing')
    assert missing.status_code == 404 and missing.json()['error']['type'] == 'not_found_error'
    good = httpx.post(url + '/v1/completions', json={'prompt': 'the', 'max_tokens': 3})
    assert good.status_code == 200 and len(good.json()['choices'][0]['text']) == 3


def test_api_key(small_server):
    url = small_server
    for headers in ({}, {'Authorization': 'Bearer nope'}, {'Authorization': 'sesame'}):
        response = httpx.get(url + '/v1/models', headers=headers)
        assert response.status_code == 401 and response.json()['error']['code'] == 'invalid_api_key'
    with pytest.raises(openai.AuthenticationError):
        client(url, 'wrong').completions.create(model='tiny', prompt='the', max_tokens=2)
    api = client(url, 'sesame')
    assert api.models.list().data[0].id == 'tiny'
    long = api.completions.create(model='tiny', prompt='the king ' * 10, max_tokens=2)  # --truncate_prompts=True
    assert long.usage.prompt_tokens == 32  # the context: the prompt's last 32 characters
    assert httpx.get(url + '/health').status_code == 200  # no key needed


def test_queue_full_health_and_disconnect(small_server):
    """One row runs, one request waits, the next gets 429; /health answers during the generation; a client that
    leaves frees its place, and the waiting request gets it."""
    url, auth = small_server, {'Authorization': 'Bearer sesame'}
    endless = {'prompt': 'the king', 'max_tokens': 1_000_000, 'stream': True}
    with httpx.Client(timeout=30, headers=auth) as http:
        with http.stream('POST', url + '/v1/completions', json=endless) as running:
            lines = running.iter_lines()
            assert next(line for line in lines if line.startswith('data:'))  # generating
            with http.stream('POST', url + '/v1/completions', json=endless) as waiting:
                waiting_lines = waiting.iter_lines()
                deadline = time.monotonic() + 10
                while httpx.get(url + '/health').json()['waiting'] != 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                refused = http.post(url + '/v1/completions', json={'prompt': 'the', 'max_tokens': 2})
                assert refused.status_code == 429 and refused.headers['Retry-After'] == '1'
                assert refused.json()['error']['type'] == 'rate_limit_error'
                t0 = time.monotonic()
                health = httpx.get(url + '/health').json()
                assert time.monotonic() - t0 < 1 and health['running'] == 1, health
                running.close()  # the first client leaves: the waiting one starts
                assert next(line for line in waiting_lines if line.startswith('data:'))
            wait_until_idle(url)  # the second client left too
        with pytest.raises(httpx.ReadTimeout):  # a reply that is not streamed: the client gives up waiting
            http.post(url + '/v1/completions', json=dict(endless, stream=False), timeout=1)
        wait_until_idle(url)
        done = http.post(url + '/v1/completions', json={'prompt': 'the', 'max_tokens': 2})
        assert done.status_code == 200


def wait_until_idle(url, seconds=10):
    """Until the engine runs and queues nothing (clients that left freed their places)."""
    deadline = time.monotonic() + seconds
    while (health := httpx.get(url + '/health').json())['running'] or health['waiting']:
        assert time.monotonic() < deadline, health
        time.sleep(0.05)


def test_bad_options_are_one_line_errors(tmp_path):
    options, no_checkpoint = run_all(('serve.py', '--max_batch=0', '--port=70000'),
                                     ('serve.py', f'--out_dir={tmp_path}', '--device=cpu'))
    assert_one_line_error(options, 'max_batch=0', 'port=70000')
    assert_one_line_error(no_checkpoint, str(tmp_path))


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason='needs chromium and chromedriver (Debian: apt-get install '
                                                            'chromium chromium-driver)')
def test_page_streams_in_chromium(server, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        browser.set_page_load_timeout(30)
        browser.get(server[0] + '/')
        wait = WebDriverWait(browser, 30, poll_frequency=0.02)
        wait.until(lambda b: 'tiny' in b.find_element(By.ID, 'model').text)
        browser.find_element(By.ID, 'prompt').send_keys('the king')
        tokens = browser.find_element(By.ID, 'max_tokens')
        tokens.clear()
        tokens.send_keys('3000')
        browser.find_element(By.ID, 'send').click()
        # text arrives while the generation still runs: streamed, not all at the end
        wait.until(lambda b: b.find_element(By.ID, 'completion').text and 'generating' in
                   b.find_element(By.ID, 'status').text)
        browser.save_screenshot(str(tmp_path / 'page.png'))
        browser.find_element(By.ID, 'stop').click()
        wait.until(lambda b: not b.find_element(By.ID, 'send').get_attribute('disabled'))
        assert os.path.getsize(tmp_path / 'page.png') > 0 and not browser.find_element(By.ID, 'error').text
    finally:
        browser.quit()
