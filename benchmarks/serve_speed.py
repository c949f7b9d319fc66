"""
serve.py under load: total tokens/s and time to first token (p50, p99) with 1, 4 and 16 concurrent streaming
clients, each sending --requests requests one after the other (a closed loop), on random weights:

  baby   the baby GPT of config/train_shakespeare_char.py: 6 layers x 384, block 256, 65 characters
  smol   SmolLM2-135M's shape: 30 layers x 576, 9 heads (3 key/value), SwiGLU 1536, RMSNorm, rotary, block 2048,
         with GPT-2's BPE (vocab 50304: SmolLM2's own tokenizer is not read here)

    flock /tmp/timing.lock python benchmarks/serve_speed.py --model=baby
    flock /tmp/timing.lock python benchmarks/serve_speed.py --model=smol --tokens=32 --requests=2

The concurrencies run --rounds times in turn (1 4 16 1 4 16 ...). Every request has the same prompt length and
--tokens new tokens, so the clients of one round start together and stay in one batch (--prompts=mixed: client
i's prompt is 2i characters shorter, so each client is a group of its own, a forward per step). The reference: Hugging
Face transformers' generate at batch 1 (greedy, no EOS) on a random model of the same shape, in this process.
The server and the clients share the machine's cores.
"""

import os
import pickle
import re
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import checkpoint
import dataset
from configurator import cli, configure
from model import GPT, GPTConfig

DEFAULTS = dict(
    model='baby',  # baby or smol
    tokens=64,  # new tokens per request
    requests=3,  # requests per client, one after the other
    concurrency='1,4,16',
    rounds=2,
    max_batch=16,
    prompts='same',  # same: every prompt as long; mixed: client i's prompt is 2i characters shorter
)
MODELS = {
    'baby': dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False),
    'smol': dict(n_layer=30, n_head=9, n_kv_head=3, n_embd=576, d_ff=1536, block_size=2048, vocab_size=50304,
                 bias=False, norm='rmsnorm', pos_emb='rope', mlp='swiglu', rope_theta=100000.0),
}
CHARS = "\n !$&',-.3:;?" + string.ascii_uppercase + string.ascii_lowercase  # Tiny Shakespeare's 65 characters
PROMPT = 'the quick brown fox jumps over the lazy dog and'


def write_checkpoint(name, folder):
    """out_dir with a ckpt.pt of random weights (and for baby, the char dataset's meta.pkl it names)."""
    torch.manual_seed(0)
    config = GPTConfig(**MODELS[name])
    trained = {}
    if name == 'baby':
        meta = {'vocab_size': len(CHARS), 'stoi': {c: i for i, c in enumerate(CHARS)}, 'itos': dict(enumerate(CHARS)),
                'tokenizer': 'char', 'dtype': 'uint16'}
        os.makedirs(os.path.join(folder, 'data'))
        with open(os.path.join(folder, 'data', 'meta.pkl'), 'wb') as f:
            pickle.dump(meta, f)
        trained = {'data_dir': os.path.join(folder, 'data'), 'tokenizer': dataset.fingerprint(meta)}
    model = GPT(config)
    checkpoint.save({'model': model.state_dict(), 'model_args': checkpoint.model_args(config), 'iter_num': 0,
                     'best_val_loss': 0.0, 'config': trained}, os.path.join(folder, 'out', 'ckpt.pt'))
    return os.path.join(folder, 'out'), model


def start_server(out_dir, log_path, max_batch):
    log = open(log_path, 'w')
    server = subprocess.Popen([sys.executable, os.path.join(ROOT, 'serve.py'), f'--out_dir={out_dir}', '--device=cpu',
                               '--dtype=float32', '--port=0', f'--max_batch={max_batch}', '--max_queue=256'],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not (found := re.search(r'at (http://[^/]+)/', open(log_path).read())):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f'serve.py did not start:\n{open(log_path).read()}')
        time.sleep(0.1)
    return server, found.group(1)


def client_loop(url, prompt, tokens, requests, ttfts, counts, errors, start):
    try:
        with httpx.Client(timeout=600) as http:
            start.wait()  # every client ready (an httpx.Client takes milliseconds to make): they send together
            stream_requests(http, url, prompt, tokens, requests, ttfts, counts)
    except Exception as e:  # reported by measure
        errors.append(e)


def stream_requests(http, url, prompt, tokens, requests, ttfts, counts):
    body = {'prompt': prompt, 'max_tokens': tokens, 'temperature': 1.0, 'stream': True,
            'stream_options': {'include_usage': True}}
    for _ in range(requests):
        t0, first = time.perf_counter(), None
        with http.stream('POST', url + '/v1/completions', json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if first is None and line.startswith('data: {') and '"text": ""' not in line:
                    first = time.perf_counter() - t0
                if '"usage"' in line:
                    counts.append(int(re.search(r'"completion_tokens": (\d+)', line).group(1)))
        ttfts.append(first)


def measure(url, clients, tokens, requests, mixed=False):
    ttfts, counts, errors = [], [], []
    prompts = [PROMPT[:len(PROMPT) - 2 * i] if mixed else PROMPT for i in range(clients)]
    start = threading.Barrier(clients + 1, timeout=60)
    threads = [threading.Thread(target=client_loop, args=(url, prompt, tokens, requests, ttfts, counts, errors, start))
               for prompt in prompts]
    steps_before = httpx.get(url + '/health').json()['rows_per_step']
    for thread in threads:
        thread.start()
    start.wait()
    t0 = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f'{len(errors)} of {clients} clients failed, the first with: {errors[0]!r}')
    assert len(counts) == clients * requests and all(n == tokens for n in counts), counts
    ttfts.sort()
    p99 = ttfts[min(len(ttfts) - 1, round(0.99 * (len(ttfts) - 1)))]
    steps_after = httpx.get(url + '/health').json()['rows_per_step']
    steps = {int(rows): n - steps_before.get(rows, 0) for rows, n in steps_after.items()}
    rows_per_forward = sum(rows * n for rows, n in steps.items()) / max(1, sum(steps.values()))
    return sum(counts) / seconds, statistics.median(ttfts), p99, rows_per_forward


def transformers_batch1(name, model, tokens):
    """tokens/s of transformers' generate at batch 1, greedy, on the same weights."""
    import transformers
    cfg = model.config
    if name == 'baby':
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd, n_positions=cfg.block_size,
            vocab_size=cfg.vocab_size))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=cfg.n_embd, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head, max_position_embeddings=cfg.block_size,
            vocab_size=cfg.vocab_size, rope_theta=cfg.rope_theta, rms_norm_eps=1e-5, tie_word_embeddings=True))
    hf.eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, len(PROMPT)))
    with torch.no_grad():
        hf.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False, pad_token_id=0)  # warm up
        t0 = time.perf_counter()
        hf.generate(prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    return tokens / (time.perf_counter() - t0)


def main():
    cfg = configure(DEFAULTS, sys.argv[1:])
    if cfg['model'] not in MODELS:
        raise ValueError(f"model={cfg['model']!r}: choose one of {', '.join(MODELS)}")
    if cfg['prompts'] not in ('same', 'mixed'):
        raise ValueError(f"prompts={cfg['prompts']!r}: choose same or mixed")
    concurrency = [int(c) for c in str(cfg['concurrency']).split(',')]
    with tempfile.TemporaryDirectory() as folder:
        out_dir, model = write_checkpoint(cfg['model'], folder)
        server, url = start_server(out_dir, os.path.join(folder, 'serve.log'), cfg['max_batch'])
        try:
            measure(url, 1, 4, 1)  # warm up
            results = {c: [] for c in concurrency}
            for _ in range(cfg['rounds']):
                for clients in concurrency:
                    results[clients].append(measure(url, clients, cfg['tokens'], cfg['requests'],
                                                    cfg['prompts'] == 'mixed'))
                    tps, p50, p99, rows = results[clients][-1]
                    print(f'{clients:3d} clients: {tps:7.1f} tokens/s, time to first token p50 {1000 * p50:.0f} ms, '
                          f'p99 {1000 * p99:.0f} ms, {rows:.1f} rows per decode forward', flush=True)
        finally:
            server.terminate()
            server.wait(timeout=30)
    reference = transformers_batch1(cfg['model'], model, cfg['tokens'])
    single = statistics.median(r[0] for r in results[concurrency[0]])
    print(f"\n| clients | tokens/s | x {concurrency[0]} client | TTFT p50, ms | TTFT p99, ms | rows per forward | "
          f"({cfg['model']}, "
          f"{cfg['prompts']} prompt lengths, "
          f"{cfg['tokens']} tokens x {cfg['requests']} requests per client, medians of {cfg['rounds']} rounds)")
    print('|---|---|---|---|---|---|')
    for clients, runs in results.items():
        tps, p50, p99, rows = (statistics.median(r[i] for r in runs) for i in range(4))
        print(f'| {clients} | {tps:.1f} | {tps / single:.1f}x | {1000 * p50:.0f} | {1000 * p99:.0f} | {rows:.1f} |')
    print(f'| transformers generate, batch 1 | {reference:.1f} | {reference / single:.1f}x | | | 1 |')


if __name__ == '__main__':
    cli(main)
