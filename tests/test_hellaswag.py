"""HellaSwag scoring (hellaswag.py, evaluate.py) against an independent implementation of llm.c's rule on
transformers' GPT2LMHeadModel, offline: examples in the HellaSwag format and a tiny random GPT-2 written by the
tests themselves."""
import json
import os
import pickle

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import dataset
import hellaswag
import hf
import machine
from helpers import WORDS, assert_one_line_error, gpt2_encoding, read_metrics, run
from model import GPT, GPTConfig
from tokenizer import Tokenizer

CPU = machine.Machine('cpu', 'float32', compile=False)
EXAMPLES = [
    ('A man is sitting on a roof. he', ['is using wrap to wrap a pair of skis.', 'is ripping level tiles off.',
                                        "is holding a rubik's cube.", 'starts pulling up roofing on a roof.'], 3),
    ('A lady walks to a barbell. She bends down and grabs the pole. The lady',
     ['swings and lands in her arms.', 'pulls the barbell forward.', 'pulls a rope attached to the barbell.',
      'stands and lifts the weight over her head.'], 3),
    ('Two women in a child are shown in a canoe while a man pulls the canoe while standing in the water, with '
     'other individuals visible in the background. The child and a different man',
     ['are then shown paddling down a river in a boat while a woman talks.', 'are driving the canoe, they go '
      'down the river flowing side to side.', 'sit in a canoe while the man paddles.', 'walking go down the '
      'rapids, while the man in his helicopter almost falls and goes out of canoehood.'], 2),
    ('A boy is running down a track. The boy', ['runs into a car.', 'gets in a mat.', 'lifts his body above the '
                                                'height of a pole.', 'stands on his hands and springs.'], 2),
    ('The boy lifts his body above the height of a pole. The boy lands on his back on to a red mat. The boy',
     ['turns his body around on the mat.', 'gets up from the mat.', 'continues to lift his body over the pole.',
      'wiggles out of the mat.'], 1),
    ('We see a woman standing in a kitchen. She', ['cuts a cake.', 'bakes', 'washes her hands in the sink and '
                                                   'dries them with a towel, then picks up a knife.', 'leaves.'], 0),
]


def write_examples(path, examples):
    """A jsonl file in the format of hellaswag_val.jsonl (with its extra keys, which the scoring ignores)."""
    with open(path, 'w') as f:
        for i, (ctx, endings, label) in enumerate(examples):
            f.write(json.dumps({'ind': 24 + i, 'activity_label': 'Roof shingle removal', 'ctx_a': ctx, 'ctx_b': '',
                                'ctx': ctx, 'split': 'val', 'split_type': 'indomain', 'label': label,
                                'endings': endings, 'source_id': f'activitynet~v_{i}'}) + '\n')
    return str(path)


def tiny_gpt2(folder, block_size=64, seed=0):
    """A random GPT-2 with OpenAI's vocabulary, written as a Hugging Face folder. Its weights are drawn wider than
    at init, so that the four endings' losses are far apart compared with float rounding."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=50257, bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    hf.export_hf(model, str(folder))
    return str(folder)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """(HF folder, examples file) of the tiny model and the 6 examples."""
    tmp = tmp_path_factory.mktemp('hellaswag')
    # seed 0: a model that gets some examples right and some wrong, by either rule, so that equal counts mean something
    return tiny_gpt2(tmp / 'model', seed=0), write_examples(tmp / 'val.jsonl', EXAMPLES)


def run_evaluate(*args):
    return run('evaluate.py', '--device=cpu', '--dtype=float32', *args)


def evaluate_json(*args):
    result = run_evaluate('--json=True', *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # the whole of stdout is one JSON object


# ----------------------------------------------------------------------------------------------
# the reference: llm.c's rule, written again on transformers' GPT-2 and tiktoken


def reference_rows(enc, ctx, endings, block_size):
    """Token rows and ending masks as the rule says: the context's tokens, then those of " " + ending; a long
    context keeps its last tokens so that every row fits the model's input (block_size) plus the last target."""
    ending_tokens = [enc.encode(' ' + e) for e in endings]
    context = enc.encode(ctx)
    keep = block_size + 1 - max(len(e) for e in ending_tokens)
    context = context[len(context) - keep:] if len(context) > keep else context
    return [(context + e, [0] * len(context) + [1] * len(e)) for e in ending_tokens]


def reference_losses(hf_model, rows):
    """Summed and mean cross-entropy of each row's masked tokens, one row at a time (no padding)."""
    summed, mean = [], []
    for tokens, mask in rows:
        tokens = torch.tensor([tokens])
        with torch.no_grad():
            logits = hf_model(tokens[:, :-1]).logits[0]
        losses = F.cross_entropy(logits, tokens[0, 1:], reduction='none')
        scored = torch.tensor(mask[1:], dtype=torch.bool)
        summed.append(losses[scored].sum().item())
        mean.append(losses[scored].mean().item())
    return summed, mean


def reference_scores(folder, examples):
    """(acc, acc_norm, per-example summed losses, per-example mean losses)."""
    enc = gpt2_encoding()
    transformers = pytest.importorskip('transformers', reason='transformers is the reference for these tests')
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    block_size = hf_model.config.n_positions
    correct = correct_norm = 0
    all_summed, all_mean = [], []
    for ctx, endings, label in examples:
        summed, mean = reference_losses(hf_model, reference_rows(enc, ctx, endings, block_size))
        correct += min(range(4), key=summed.__getitem__) == label
        correct_norm += min(range(4), key=mean.__getitem__) == label
        all_summed.append(summed)
        all_mean.append(mean)
    return correct / len(examples), correct_norm / len(examples), all_summed, all_mean


def assert_clear_choices(losses):
    """The best ending wins by more than rounding: otherwise two correct implementations could disagree."""
    for row in losses:
        best, second = sorted(row)[:2]
        assert second - best > 1e-3, row


def assert_same_losses(folder, examples, ref_summed, ref_mean):
    """hellaswag.py's summed and mean losses of every ending (its padded batch of 4) equal the reference's."""
    model, tokenizer = checkpoint.load_model(folder)[0].eval(), Tokenizer()
    for (ctx, endings, _), summed, mean in zip(examples, ref_summed, ref_mean):
        tokens, mask = hellaswag.render({'ctx': ctx, 'endings': endings}, tokenizer, model.config.block_size)
        with torch.no_grad():
            ours = hellaswag.ending_losses(model, tokens, mask)
        torch.testing.assert_close(ours[0], torch.tensor(summed), atol=1e-4, rtol=0)
        torch.testing.assert_close(ours[1], torch.tensor(mean), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------
# tests


def test_evaluate_equals_the_transformers_reference(setup):
    folder, data = setup
    acc, acc_norm, summed, mean = reference_scores(folder, EXAMPLES)
    assert_clear_choices(summed)
    assert_clear_choices(mean)
    assert 0 < acc < 1 and 0 < acc_norm < 1 and acc != acc_norm  # right and wrong answers: the counts mean something
    out = evaluate_json(f'--init_from={folder}', f'--data={data}')
    assert (out['n'], out['acc'], out['acc_norm']) == (len(EXAMPLES), acc, acc_norm)
    assert_same_losses(folder, EXAMPLES, summed, mean)


def test_a_long_context_keeps_its_end(tmp_path):
    enc = gpt2_encoding()
    folder = tiny_gpt2(tmp_path / 'model', block_size=32, seed=1)
    words = WORDS * 10
    n_words = next(n for n in range(len(words)) if len(enc.encode(' '.join(words[:n]))) >= 100)
    long_ctx = ' '.join(words[:n_words])
    assert len(enc.encode(long_ctx)) == 100
    examples = [(long_ctx, endings, label) for _, endings, label in EXAMPLES[:4]]
    acc, acc_norm, summed, mean = reference_scores(folder, examples)
    assert_clear_choices(summed)
    assert_clear_choices(mean)
    assert_same_losses(folder, examples, summed, mean)
    # each row is the context's end and an ending; the longest row fills the window of 32 inputs + 1 target
    endings = EXAMPLES[2][1]
    tokens, mask = hellaswag.render({'ctx': long_ctx, 'endings': endings}, Tokenizer(), 32)
    rows = reference_rows(enc, long_ctx, endings, 32)
    assert tokens.shape == (4, 33)
    for i, (row, row_mask) in enumerate(rows):
        padding = [0] * (33 - len(row))
        assert tokens[i].tolist() == row + padding and mask[i].tolist() == row_mask + padding
    out = evaluate_json(f'--init_from={folder}', f'--data={write_examples(tmp_path / "long.jsonl", examples)}')
    assert (out['n'], out['acc'], out['acc_norm']) == (4, acc, acc_norm)


def test_sharded_counts_sum_to_the_whole(setup):
    gpt2_encoding()
    folder, data = setup
    model, tokenizer = checkpoint.load_model(folder)[0], Tokenizer()
    examples = hellaswag.load_examples(data)
    whole = hellaswag.score(model, tokenizer, examples, CPU)
    shards = [hellaswag.score(model, tokenizer, examples, CPU, rank, 2) for rank in (0, 1)]
    assert [a + b for a, b in zip(*shards)] == list(whole) and shards[0][0] == shards[1][0] == 3
    n, correct, correct_norm = whole
    assert hellaswag.evaluate(model, tokenizer, examples, CPU) == {'acc': correct / n, 'acc_norm': correct_norm / n,
                                                                    'n': n}


def test_torchrun_splits_the_examples_and_prints_once(setup):
    gpt2_encoding()
    folder, data = setup
    result = run('evaluate.py', f'--init_from={folder}', f'--data={data}', '--device=cpu', '--dtype=float32',
                 '--json=True', processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)  # one object: only rank 0 prints
    whole = hellaswag.evaluate(checkpoint.load_model(folder)[0], Tokenizer(), hellaswag.load_examples(data), CPU)
    assert {k: out[k] for k in whole} == whole


def test_max_examples(setup):
    gpt2_encoding()
    folder, data = setup
    assert evaluate_json(f'--init_from={folder}', f'--data={data}', '--max_examples=2')['n'] == 2


def test_a_char_level_model_is_refused_in_one_line(char_data, tmp_path):
    vocab_size = dataset.load_meta(char_data)['vocab_size']
    config = GPTConfig(n_layer=1, n_head=2, n_embd=8, block_size=16, vocab_size=vocab_size)
    checkpoint.save({'model': GPT(config).state_dict(), 'model_args': checkpoint.model_args(config),
                     'config': {'data_dir': char_data}}, str(tmp_path / 'ckpt.pt'))
    data = write_examples(tmp_path / 'val.jsonl', EXAMPLES[:1])
    result = run_evaluate(f'--out_dir={tmp_path}', f'--data={data}')
    assert_one_line_error(result, "GPT-2's BPE", "'char'")
    assert result.stdout == ''


def test_an_unknown_task_lists_the_tasks():
    result = run_evaluate('--task=mmlu')
    assert result.returncode == 1 and result.stderr == "error: task='mmlu' is not one of the tasks: hellaswag, bpb\n"


def test_a_file_that_is_not_hellaswag_names_its_line(tmp_path):
    path = write_examples(tmp_path / 'val.jsonl', EXAMPLES[:2])
    with open(path, 'a') as f:
        f.write(json.dumps({'ctx': 'A test set example has', 'endings': ['no', 'label', 'at', 'all'], 'label': ''}))
    with pytest.raises(ValueError, match=r'val.jsonl line 3 is not a HellaSwag example'):
        hellaswag.load_examples(path)
    assert len(hellaswag.load_examples(path, max_examples=2)) == 2


class FakeResponse:
    def __init__(self, body):
        self.body = body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def raise_for_status(self):
        pass

    def iter_content(self, chunk_size):
        return [self.body[i:i + chunk_size] for i in range(0, len(self.body), chunk_size)]


def test_downloaded_once_into_the_cache(tmp_path, monkeypatch):
    body = open(write_examples(tmp_path / 'source.jsonl', EXAMPLES), 'rb').read()
    calls = []
    monkeypatch.setenv('HELLASWAG_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(hellaswag.requests, 'get', lambda url, **kw: calls.append(url) or FakeResponse(body))
    assert len(hellaswag.load_examples()) == len(EXAMPLES) and calls == [hellaswag.DATA_URL]
    assert open(tmp_path / 'cache' / 'hellaswag_val.jsonl', 'rb').read() == body
    assert len(hellaswag.load_examples(max_examples=3)) == 3 and len(calls) == 1  # read from the cache
    assert os.listdir(tmp_path / 'cache') == ['hellaswag_val.jsonl']  # no temporary file left


def test_a_failed_download_says_what_to_do(tmp_path, monkeypatch):
    def offline(url, **kw):
        raise hellaswag.requests.ConnectionError('no network')
    monkeypatch.setenv('HELLASWAG_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(hellaswag.requests, 'get', offline)
    with pytest.raises(OSError, match='could not download HellaSwag .* pass its path with --data=PATH'):
        hellaswag.load_examples()
    assert not os.path.exists(tmp_path / 'cache' / 'hellaswag_val.jsonl')


def test_train_scores_hellaswag_during_training(tmp_path):
    """train.py --hellaswag_interval logs HellaSwag to metrics.jsonl; the last record equals evaluate.py's score of
    the checkpoint saved at the same iteration."""
    gpt2_encoding()
    data = tmp_path / 'data'
    os.makedirs(data)
    ids = torch.randint(50257, (20_000,), generator=torch.Generator().manual_seed(0)).numpy().astype('uint16')
    ids[:18_000].tofile(data / 'train.bin')
    ids[18_000:].tofile(data / 'val.bin')
    with open(data / 'meta.pkl', 'wb') as f:
        pickle.dump({'vocab_size': 50257, 'dtype': 'uint16', 'tokenizer': 'gpt2', 'train_tokens': 18_000,
                     'val_tokens': 2_000}, f)
    examples = write_examples(tmp_path / 'hellaswag.jsonl', EXAMPLES)
    out_dir = tmp_path / 'out'
    result = run('train.py', f'--data_dir={data}', f'--out_dir={out_dir}', '--device=cpu', '--dtype=float32',
                 '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=32', '--batch_size=2',
                 '--gradient_accumulation_steps=1', '--eval_iters=2', '--eval_interval=4', '--max_iters=4',
                 '--hellaswag_interval=2', f'--hellaswag_data={examples}')
    assert result.returncode == 0, result.stderr
    scores = [r for r in read_metrics(out_dir) if 'hellaswag_acc' in r]
    assert [(r['iter'], r['hellaswag_n']) for r in scores] == [(0, 6), (2, 6), (4, 6)]
    final = evaluate_json('--init_from=resume', f'--out_dir={out_dir}', f'--data={examples}')
    assert (final['acc'], final['acc_norm']) == (scores[-1]['hellaswag_acc'], scores[-1]['hellaswag_acc_norm'])
