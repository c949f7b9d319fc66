"""Your own BPE (prepare.py --tokenizer=bpe, bpe.py) and bits per byte: any Unicode round-trips through the bins,
training is deterministic and done once, and bits per byte (tokenizer.byte_lengths, train.py's val_bpb,
evaluate.py --task=bpb, plot.py --y=bpb) equals a sum made by hand, for characters, GPT-2's BPE and a trained BPE."""
import json
import math
import os

import numpy as np
import pytest

import corpus
from helpers import ROOT, assert_one_line_error, gpt2_encoding, make_text, read_bins, read_metrics, run, run_all

# what a byte-level BPE must carry through whole: emoji (a ZWJ sequence), CJK, combining marks, right-to-left,
# control characters, Windows newlines, an empty document (left out, as for every tokenizer), and a lone surrogate
# (read as U+FFFD, as tiktoken encodes it)
DOCUMENTS = ['Hello, world! 👩‍👩‍👧 Emoji and 世界 and 日本語のテキスト.', '', 'e\u0301 a\u0308 \u05e9\u05dc\u05d5\u05dd',
             'tab\tnull\x00 bell\x07\r\nwindows\r\n', 'lone \ud800 surrogate', make_text(4000, seed=1)]
READ_AS = [d.replace('\ud800', '\ufffd') for d in DOCUMENTS]
BPE = ['--tokenizer=bpe', '--vocab_size=300', '--num_proc=1']


def write_jsonl(path, documents):
    with open(path, 'w', encoding='utf-8') as f:  # JSON escapes: the lone surrogate is written as \ud800
        f.writelines(json.dumps({'text': d}) + '\n' for d in documents)
    return str(path)


def decoded(data_dir):
    import tokenizer as tokenizers
    _, train, val = read_bins(data_dir)
    return tokenizers.for_data(data_dir).decode(np.concatenate([train, val]).tolist())


def test_any_unicode_round_trips_and_the_bytes_add_up(tmp_path):
    out = tmp_path / 'data'
    result = run('prepare.py', write_jsonl(tmp_path / 'docs.jsonl', DOCUMENTS), f'--out_dir={out}', *BPE)
    assert result.returncode == 0, result.stderr
    assert 'bytes per token' in result.stdout and 'of the' in result.stdout  # the compression report
    assert sorted(os.listdir(out)) == ['meta.pkl', 'tokenizer.json', 'tokenizer_config.json', 'train.bin', 'val.bin']
    assert decoded(out) == ''.join(d + '<|endoftext|>' for d in READ_AS if d)  # an empty document holds no text
    import tokenizer as tokenizers
    tokenizer = tokenizers.for_data(str(out))
    assert tokenizer.vocab_size == 300 and tokenizer.backend.token_to_id('<|endoftext|>') == 0
    _, train, val = read_bins(out)
    lengths = tokenizers.byte_lengths(tokenizer)
    assert lengths[np.concatenate([train, val])].sum() == sum(len(d.encode()) for d in READ_AS)
    import bpe
    fast = bpe.tiktoken_encoding(tokenizer)  # what prepare.py encoded with
    for text in READ_AS + [open(os.path.join(ROOT, 'README.md'), encoding='utf-8').read()]:
        assert fast.encode_ordinary(text) == tokenizer.encode(text)  # tiktoken's ids are the tokenizers library's
        assert lengths[tokenizer.encode(text)].sum() == len(text.encode())  # the raw bytes, whole characters or not


def test_training_is_deterministic_and_done_once(tmp_path, monkeypatch):
    text = tmp_path / 'input.txt'
    text.write_text(make_text(60_000, seed=2) + ' 世界 👍\n' * 50, encoding='utf-8')
    one, two = run_all(('prepare.py', text, f'--out_dir={tmp_path / "one"}', *BPE, '--vocab_size=600'),
                       ('prepare.py', text, f'--out_dir={tmp_path / "two"}', *BPE, '--vocab_size=600',
                        '--num_proc=2'))
    assert one.returncode == two.returncode == 0, one.stderr + two.stderr
    for name in ('tokenizer.json', 'tokenizer_config.json', 'train.bin', 'val.bin', 'meta.pkl'):
        assert (tmp_path / 'one' / name).read_bytes() == (tmp_path / 'two' / name).read_bytes(), name

    # interrupted while tokenizing, the preparation resumes with the tokenizer it trained: no second training
    import bpe
    monkeypatch.setattr(corpus, 'PART_BYTES', 1)
    folder = tmp_path / 'texts'
    folder.mkdir()
    for i in range(4):
        (folder / f'{i}.txt').write_text(make_text(20_000, seed=10 + i), encoding='utf-8')
    settings = {'vocab_size': 400, 'special_tokens': ['<|endoftext|>', '<|user|>'], 'sample_bytes': 10 ** 8}
    real_encoded, real_train, trainings, parts = corpus.encoded, bpe.train, [], []

    def interrupted_at_third_part(*args):
        parts.append(args)
        if len(parts) == 3:
            raise KeyboardInterrupt
        return real_encoded(*args)
    monkeypatch.setattr(corpus, 'encoded', interrupted_at_third_part)
    monkeypatch.setattr(bpe, 'train', lambda *args, **kw: trainings.append(args) or real_train(*args, **kw))
    with pytest.raises(KeyboardInterrupt):
        corpus.prepare_corpus(str(folder), str(tmp_path / 'resumed'), 'bpe', bpe_settings=settings)
    assert len(trainings) == 1 and not os.path.exists(tmp_path / 'resumed' / 'train.bin')
    assert sorted(os.listdir(tmp_path / 'resumed' / '.prepare'))[:4] == ['00000.train.bin', '00000.val.bin',
                                                                        '00001.train.bin', '00001.val.bin']
    stats = corpus.prepare_corpus(str(folder), str(tmp_path / 'resumed'), 'bpe', bpe_settings=settings)
    assert len(trainings) == 1 and stats['vocab_size'] == 400 and len(parts) == 5  # resumed: two parts left
    corpus.prepare_corpus(str(folder), str(tmp_path / 'whole'), 'bpe', bpe_settings=settings)
    for name in ('tokenizer.json', 'train.bin', 'val.bin'):
        assert (tmp_path / 'resumed' / name).read_bytes() == (tmp_path / 'whole' / name).read_bytes(), name
    assert decoded(tmp_path / 'whole').count('<|endoftext|>') == 4


@pytest.mark.parametrize('tokenizer', ['char', 'gpt2', 'bpe'])
def test_bits_per_byte_is_the_sum_by_hand(tmp_path, tokenizer):
    import torch
    import torch.nn.functional as F

    import dataset
    import machine as machines
    import tokenizer as tokenizers
    from model import GPT, GPTConfig
    from training import estimate_loss
    if tokenizer == 'gpt2':
        gpt2_encoding()  # or skip
    texts = [make_text(6000, seed=3) + ' naïve café 世界 😀\n', make_text(3000, seed=4) + ' ½ → ∞\n']
    path = write_jsonl(tmp_path / 'docs.jsonl', texts)
    bpe_settings = {'vocab_size': 500, 'special_tokens': ['<|endoftext|>'], 'sample_bytes': 10 ** 8}
    corpus.prepare_corpus(path, str(tmp_path), tokenizer, bpe_settings=bpe_settings if tokenizer == 'bpe' else None)
    meta, train, val = read_bins(tmp_path)
    lengths = tokenizers.byte_lengths(tokenizers.for_data(str(tmp_path)))
    # the table by itself: the ids of the corpus stand for its UTF-8 bytes exactly
    assert lengths[np.concatenate([train, val])].sum() == sum(len(t.encode()) for t in texts)

    machine = machines.setup('cpu', 'float32', False)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=dataset.padded_vocab(
        meta['vocab_size'])))
    batches = dataset.Batches(str(tmp_path), meta, 32, 4, 'cpu', 1337, model.config.vocab_size)
    result = estimate_loss(model, batches, machine, 3)
    nats = nbytes = 0
    with torch.no_grad():
        for k in range(3):
            x, y = batches.eval_batch('val', k)
            logits, _ = model(x, y)
            nats += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction='sum').item()
            nbytes += int(lengths[y.numpy()].sum())
    assert result['val_bpb'] == pytest.approx(nats / (math.log(2) * nbytes), rel=1e-9)


def test_train_evaluate_plot_and_a_foreign_bpe(tmp_path):
    text = tmp_path / 'input.txt'
    text.write_text(make_text(40_000, seed=5), encoding='utf-8')
    for name, vocab_size in (('bpe', 300), ('other', 301)):
        corpus.prepare_corpus(str(text), str(tmp_path / name), 'bpe', bpe_settings={
            'vocab_size': vocab_size, 'special_tokens': ['<|endoftext|>'], 'sample_bytes': 10 ** 8})
    out = tmp_path / 'run'
    sizes = ['--batch_size=4', '--block_size=32', '--eval_iters=3', '--dtype=float32', '--device=cpu']
    trained = run('train.py', f'--data_dir={tmp_path / "bpe"}', f'--out_dir={out}', '--n_layer=1', '--n_head=2',
                  '--n_embd=16', '--compile=False', '--max_iters=4', '--eval_interval=2', '--warmup_iters=0',
                  '--lr_decay_iters=4', '--gradient_accumulation_steps=1', *sizes)
    assert trained.returncode == 0, trained.stderr
    evals = [r for r in read_metrics(out) if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 2, 4] and all(r['val_bpb'] > 0 for r in evals)
    assert 'val bpb' in trained.stdout
    # evaluate.py draws the same batches from the checkpoint (saved at 4): the same figures
    evaluated, plotted, refused = run_all(
        ('evaluate.py', '--task=bpb', f'--out_dir={out}', '--json=True', *sizes),
        ('plot.py', out, '--y=bpb', f'--out={tmp_path / "bpb.png"}'),
        ('sample.py', f'--out_dir={out}', f'--data_dir={tmp_path / "other"}', '--device=cpu', '--max_new_tokens=2'))
    assert evaluated.returncode == 0, evaluated.stderr
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result['val_bpb'] == pytest.approx(evals[-1]['val_bpb'], rel=1e-12)
    assert result['val_loss'] == pytest.approx(evals[-1]['val_loss'], rel=1e-12)
    assert plotted.returncode == 0 and (tmp_path / 'bpb.png').read_bytes()[:4] == b'\x89PNG', plotted.stderr
    assert_one_line_error(refused, 'another vocabulary')  # the other BPE's ids mean other tokens


def test_bad_settings_are_one_line(tmp_path):
    text = tmp_path / 'input.txt'
    text.write_text(make_text(2000), encoding='utf-8')
    (tmp_path / 'run').mkdir()
    (tmp_path / 'run' / 'metrics.jsonl').write_text('{"iter": 0, "val_loss": 4.0}\n')  # a run logged before bpb
    small, twice, unplotted, no_model = run_all(
        ('prepare.py', text, f'--out_dir={tmp_path / "a"}', '--tokenizer=bpe', '--vocab_size=100'),
        ('prepare.py', text, f'--out_dir={tmp_path / "b"}', '--tokenizer=bpe', '--special_tokens=<|a|>,<|a|>'),
        ('plot.py', tmp_path / 'run', '--y=bpb'),
        ('prepare.py', text, f'--out_dir={tmp_path / "c"}', '--tokenizer=char', '--report_model=nothing.py'))
    assert_one_line_error(small, '--vocab_size=100', '257')
    assert_one_line_error(twice, '--special_tokens')
    assert_one_line_error(unplotted, 'no val_bpb')
    assert_one_line_error(no_model, '--report_model=nothing.py')
    assert not any(os.path.exists(tmp_path / name) for name in 'abc')  # refused before any work
