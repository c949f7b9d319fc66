"""Instruction data (prepare.py --format=chat, chat_data.py): the loss mask on the answers, token by token; the loss
of a step as the mean over its answer tokens across uneven micro-steps and processes; truncation; the one-line
errors of bad lines; training on it end to end. Offline, CPU, tiny models; the tokenizer with a chat template is a
word-level one built here, so that each token is a word and the expected mask can be written by hand."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import chat_data
import dataset
import tokenizer as tokenizers
from helpers import assert_one_line_error, files_under, finish, gpt2_encoding, read_metrics, run, run_all, start
from machine import Machine
from model import GPT, GPTConfig
from training import DEFAULTS, estimate_loss, train_step

# every turn is <|im_start|> ROLE CONTENT <|im_end|> <nl>: words split at spaces, so one token each; <nl> stands for
# the newline that ChatML writes after <|im_end|>, which is no part of the answer (the model stops at <|im_end|>)
TEMPLATE = ("{% for m in messages %}{{ '<|im_start|> ' + m['role'] + ' ' + m['content'] + ' <|im_end|> <nl> ' }}"
            "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|> assistant ' }}{% endif %}")
WORDS = 'system user assistant be brief who art thou a king and she queen say hi hello <nl> long'.split()
CONVERSATION = [{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'who art thou'},
                {'role': 'assistant', 'content': 'a king'}, {'role': 'user', 'content': 'and she'},
                {'role': 'assistant', 'content': 'a queen'}]
# the conversation's tokens, the answers' (content and end of turn) in brackets
EXPECTED = ('<|im_start|> system be brief <|im_end|> <nl> <|im_start|> user who art thou <|im_end|> <nl> '
            '<|im_start|> assistant [a] [king] [<|im_end|>] <nl> <|im_start|> user and she <|im_end|> <nl> '
            '<|im_start|> assistant [a] [queen] [<|im_end|>] <nl>').split()


def write_word_tokenizer(folder):
    """A tokenizer.json of WORDS and two special tokens, split at whitespace, with TEMPLATE and <|im_end|> as EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    os.makedirs(folder, exist_ok=True)
    vocab = {w: i for i, w in enumerate(['<unk>', '<|im_start|>', '<|im_end|>'] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(['<|im_start|>', '<|im_end|>'])
    tok.save(os.path.join(folder, 'tokenizer.json'))
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
        json.dump({'eos_token': '<|im_end|>', 'chat_template': TEMPLATE}, f)
    return str(folder)


def write_jsonl(path, records):
    with open(path, 'w') as f:
        f.writelines((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in records)
    return str(path)


def rows(data_dir, split='train'):
    """(ids, mask) of a chat dataset's split, one row per example."""
    meta = dataset.load_meta(data_dir)
    ids = np.fromfile(os.path.join(data_dir, f'{split}.bin'), dtype=meta['dtype']).reshape(-1, meta['block_size'] + 1)
    mask = np.fromfile(os.path.join(data_dir, f'{split}.mask.bin'), dtype=np.uint8).reshape(ids.shape)
    return ids, mask


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def words(tmp_path_factory):
    return write_word_tokenizer(tmp_path_factory.mktemp('words'))


def echo_records(n, seed=0):
    """n conversations that can be learned (the answer repeats the question), of uneven lengths, in both formats."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        question = ' '.join(rng.choice(['who', 'art', 'thou', 'a', 'king', 'queen', 'she'], rng.integers(1, 7)))
        if i % 2:
            records.append({'prompt': f'say {question}', 'completion': question})
        else:
            records.append({'messages': [{'role': 'user', 'content': question},
                                         {'role': 'assistant', 'content': question}]})
    return records


@pytest.fixture(scope='module')
def echo_data(words, tmp_path_factory):
    """A chat dataset of 200 echo conversations in rows of block_size 24 (read only)."""
    tmp = tmp_path_factory.mktemp('echo')
    source = write_jsonl(tmp / 'echo.jsonl', echo_records(200))
    ok(run('prepare.py', source, '--format=chat', f'--out_dir={tmp / "data"}', f'--tokenizer={words}',
           '--block_size=24'))
    return str(tmp / 'data')


# ----------------------------------------------------------------------------------------------
# the mask, token by token


def test_the_mask_covers_exactly_the_assistant_tokens(words, tmp_path):
    """prepare.py renders the conversation with the folder's chat template; the mask is 1 on the tokens of each
    answer and its <|im_end|> (not on the <nl> after it, nor the prompts, nor the padding); the prompt/completion
    form is one user turn and one assistant turn."""
    pair = {'prompt': 'say hi', 'completion': 'hello'}
    source = write_jsonl(tmp_path / 'chat.jsonl', [{'messages': CONVERSATION}, pair])
    result = ok(run('prepare.py', source, '--format=chat', f'--out_dir={tmp_path / "data"}', f'--tokenizer={words}',
                    '--block_size=40', '--val_fraction=0.5'))
    assert '1 train and 1 val examples in rows of 41 tokens' in result.stdout
    tok = tokenizers.for_data(str(tmp_path / 'data'))
    for split, expected in (('train', EXPECTED), ('val', '<|im_start|> user say hi <|im_end|> <nl> <|im_start|> '
                                                        'assistant [hello] [<|im_end|>] <nl>'.split())):
        ids, mask = rows(tmp_path / 'data', split)
        tokens = [tok.decode([i]) for i in ids[0]]
        marked = [f'[{t}]' if m else t for t, m in zip(tokens, mask[0])]
        assert marked[:len(expected)] == expected
        assert not mask[0, len(expected):].any() and set(ids[0, len(expected):]) == {chat_data.PAD_ID}
    meta = dataset.load_meta(str(tmp_path / 'data'))
    assert (meta['format'], meta['block_size'], meta['chat_template']) == ('chat', 40, TEMPLATE)


def test_the_answers_of_a_byte_level_chatml_tokenizer(tmp_path):
    """With a byte-level BPE and ChatML (Qwen's, SmolLM2's), the masked tokens are each answer's text and its
    <|im_end|>, to the character, whatever the spaces and newlines at its ends; a template that opens the
    assistant's turn otherwise than it writes it is a one-line error."""
    from test_tokenizers import CHATML, LLAMA_LIKE, write_tokenizer
    tok = tokenizers.HFTokenizer(write_tokenizer(tmp_path / 'chatml', bos=False, template=CHATML))
    answers = [' A king.  ', 'A queen.\n']
    messages = [{'role': 'user', 'content': 'Who art thou?'}, {'role': 'assistant', 'content': answers[0]},
                {'role': 'user', 'content': 'And she?'}, {'role': 'assistant', 'content': answers[1]}]
    ids, mask = chat_data.Renderer(tok).example(messages)
    assert tok.backend.decode(ids.tolist(), skip_special_tokens=False) == tok.render_chat(messages, False)
    starts, ends = np.flatnonzero(np.diff(mask, prepend=0) == 1), np.flatnonzero(np.diff(mask, append=0) == -1) + 1
    spans = [tok.backend.decode(ids[a:b].tolist(), skip_special_tokens=False) for a, b in zip(starts, ends)]
    assert spans == [answer + '<|im_end|>' for answer in answers]
    other = tokenizers.HFTokenizer(write_tokenizer(tmp_path / 'other', template=LLAMA_LIKE))
    with pytest.raises(ValueError, match='does not render the conversation turn by turn'):
        chat_data.Renderer(other).example(messages)


def test_the_default_template_for_gpt2_data(tmp_path):
    """GPT-2's BPE has no chat template: DEFAULT_CHAT_TEMPLATE, and the answer's tokens are its text's and the
    <|endoftext|> that ends it (a special token, as tiktoken encodes it), exactly."""
    enc = gpt2_encoding()
    messages = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Who art thou?'},
                {'role': 'assistant', 'content': 'A king.'}]
    text = tokenizers.render_template(tokenizers.DEFAULT_CHAT_TEMPLATE, messages, False,
                                      {'eos_token': '<|endoftext|>'}, 'the default template')
    assert text == '<|system|>\nBe brief.\n<|user|>\nWho art thou?\n<|assistant|>\nA king.<|endoftext|>'
    source = write_jsonl(tmp_path / 'chat.jsonl', [{'messages': messages}] * 2)
    ok(run('prepare.py', source, '--format=chat', f'--out_dir={tmp_path / "data"}', '--block_size=32'))
    ids, mask = rows(tmp_path / 'data')
    prompt = enc.encode('<|system|>\nBe brief.\n<|user|>\nWho art thou?\n<|assistant|>\n')
    answer = enc.encode('A king.') + [enc.eot_token]
    n = len(prompt) + len(answer)
    assert ids[0, :n].tolist() == prompt + answer
    assert mask[0].tolist() == [0] * len(prompt) + [1] * len(answer) + [0] * (33 - n)
    assert dataset.load_meta(str(tmp_path / 'data'))['tokenizer'] == 'gpt2'


def test_the_default_template_for_characters(tmp_path):
    """With characters the vocabulary is that of the rendered conversations (the template's markers included)."""
    source = write_jsonl(tmp_path / 'chat.jsonl', [{'prompt': 'Hi', 'completion': 'Yo'}] * 2)
    ok(run('prepare.py', source, '--format=chat', f'--out_dir={tmp_path / "data"}', '--tokenizer=char',
           '--block_size=40'))
    ids, mask = rows(tmp_path / 'data')
    tok = tokenizers.for_data(str(tmp_path / 'data'))
    text = '<|user|>\nHi\n<|assistant|>\nYo<|endoftext|>'
    assert tok.decode(ids[0, :len(text)].tolist()) == text
    answer = 'Yo<|endoftext|>'
    assert mask[0].tolist() == [0] * (len(text) - len(answer)) + [1] * len(answer) + [0] * (41 - len(text))


# ----------------------------------------------------------------------------------------------
# the loss: answers only, the mean over a step's answer tokens


def tiny_model(vocab_size, block_size=24):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size, bias=False))


def test_a_masked_out_token_gets_no_gradient(echo_data):
    """The logits of the positions whose target is masked out (prompt, padding) get a gradient of exactly 0."""
    meta = dataset.load_meta(echo_data)
    batches = dataset.batches(echo_data, meta, 24, 4, 'cpu', 1337, meta['vocab_size'])
    x, y = batches.train_batch(0, 0)
    assert (y == -1).any() and (y != -1).any()
    model = tiny_model(meta['vocab_size'])
    logits = []

    def keep(module, args, out):
        out.retain_grad()
        logits.append(out)
    model.lm_head.register_forward_hook(keep)
    _, loss = model(x, y)
    loss.backward()
    grad = logits[0].grad  # (B, T, vocab)
    assert grad[y == -1].abs().max() == 0
    assert (grad[y != -1].abs().amax(dim=-1) > 0).all()


def hand_loss(model, pairs):
    """The mean over the answer targets of all (x, y) pairs, computed per token."""
    nats = [F.cross_entropy(model(x, y)[0].flatten(0, 1), y.flatten(), ignore_index=-1, reduction='sum')
            for x, y in pairs]
    return sum(nats) / sum(int((y != -1).sum()) for _, y in pairs)


def test_the_loss_is_the_mean_over_the_answer_tokens_of_the_step(echo_data):
    """train_step's loss and gradient over 3 micro-steps holding different numbers of answer tokens are those of the
    mean over all their answer tokens (not the mean of the micro-steps' means); answer_tokens counts them from the
    masks alone. The eval loss is also the mean over the answer tokens, and bits per byte their nats over their
    bytes."""
    meta = dataset.load_meta(echo_data)
    batches = dataset.batches(echo_data, meta, 24, 3, 'cpu', 1337, meta['vocab_size'])
    pairs = [batches.train_batch(0, m) for m in range(3)]
    counts = [int((y != -1).sum()) for _, y in pairs]
    assert len(set(counts)) == 3 and batches.answer_tokens(0, 3) == sum(counts)
    model = tiny_model(meta['vocab_size'])
    reference = hand_loss(model, pairs)
    means = sum(hand_loss(model, [p]) for p in pairs) / 3
    assert abs(means.item() - reference.item()) > 100 * 1e-6 * reference.item()  # far beyond the tolerance below
    reference.backward()
    expected = {name: p.detach() - p.grad for name, p in model.named_parameters()}  # one SGD step of lr 1
    model.zero_grad()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = dict(DEFAULTS, gradient_accumulation_steps=3, grad_clip=0.0)
    machine = Machine('cpu', 'float32', False)
    loss, _, _ = train_step(model, optimizer, torch.amp.GradScaler('cpu', enabled=False), batches, 0, cfg, machine)
    assert torch.allclose(loss, reference.detach(), rtol=1e-6, atol=0)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=0, atol=1e-6, msg=name)

    eval_pairs = [batches.eval_batch('val', k) for k in range(3)]
    losses = estimate_loss(model, batches, machine, eval_iters=3, splits=('val',))
    with torch.no_grad():
        nats = hand_loss(model, eval_pairs) * sum(int((y != -1).sum()) for _, y in eval_pairs)
    byte_lengths = batches.token_bytes
    answer_bytes = sum(byte_lengths[y[y != -1]].sum() for _, y in eval_pairs)
    assert losses['val'] == pytest.approx(nats.item() / sum(int((y != -1).sum()) for _, y in eval_pairs), rel=1e-6)
    assert losses['val_bpb'] == pytest.approx(nats.item() / answer_bytes.item() / np.log(2), rel=1e-6)


def train_args(data, out_dir, *extra):
    return [f'--data_dir={data}', '--dataset=chat', f'--out_dir={out_dir}', '--device=cpu', '--compile=False',
            '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=24', '--batch_size=4',
            '--gradient_accumulation_steps=2', '--eval_iters=4', '--eval_interval=20', '--log_interval=1',
            '--max_iters=40', '--warmup_iters=0', '--lr_decay_iters=40', '--learning_rate=1e-2', '--dropout=0.0',
            *extra]


def test_prepare_train_learns_and_two_processes_equal_one(echo_data, tmp_path):
    """train.py on chat data, end to end: the loss (over the answers) falls; under torchrun with 2 processes (gloo)
    the logged losses are those of 1 process with the same global batch, to the last bit: each process weighs its
    micro-step by 2 x its answer tokens / the step's, DDP halves the sum of the two (both exact in floating point)."""
    one, two = start('train.py', *train_args(echo_data, tmp_path / 'one')), \
        start('train.py', *train_args(echo_data, tmp_path / 'two'), processes=2)
    ok(finish(one))
    ok(finish(two))
    losses = {name: [r['loss'] for r in read_metrics(tmp_path / name) if 'loss' in r] for name in ('one', 'two')}
    assert len(losses['one']) == 40
    assert np.mean(losses['one'][-5:]) < 0.6 * np.mean(losses['one'][:3])
    assert losses['two'] == losses['one']
    evals = {name: [r['val_loss'] for r in read_metrics(tmp_path / name) if 'val_loss' in r] for name in ('one', 'two')}
    assert evals['one'][-1] < evals['one'][0]
    assert evals['two'] == evals['one']


# ----------------------------------------------------------------------------------------------
# truncation, block_size and bad input


def test_long_examples_are_truncated_with_a_count_or_refused(words, tmp_path):
    """An example longer than block_size + 1 tokens is cut there and counted, or, with --truncate=False, refused in
    one line naming its line; one whose answer begins beyond the row is left out and counted. A chat dataset trains
    only at the block_size it was prepared for."""
    long = {'prompt': 'say ' + 'long ' * 10, 'completion': 'long ' * 10}  # 29 tokens, the answer from the 18th
    late = {'prompt': 'say ' + 'long ' * 30, 'completion': 'hello'}
    short = {'prompt': 'say hi', 'completion': 'hello'}
    source = write_jsonl(tmp_path / 'chat.jsonl', [short, long, late, short])
    prepare = ('prepare.py', source, '--format=chat', f'--tokenizer={words}', '--block_size=20')
    cut, refused, other_size = run_all((*prepare, f'--out_dir={tmp_path / "cut"}', '--val_fraction=0.25'),
                                       (*prepare, f'--out_dir={tmp_path / "refused"}', '--truncate=False'),
                                       (*prepare, f'--out_dir={tmp_path / "other_size"}'))
    ok(cut)
    assert '2 train and 1 val examples' in cut.stdout and '2 truncated' in cut.stdout and '1 left out' in cut.stdout
    ids, mask = rows(tmp_path / 'cut')
    assert mask[1].tolist() == [0] * 17 + [1] * 4 and (ids[1, 17:] == ids[1, 3]).all()  # 'long' to the row's end
    assert_one_line_error(refused, 'chat.jsonl line 2 is 29 tokens', 'block_size + 1 = 21', '--truncate=True')
    assert files_under(tmp_path / 'refused') == []
    ok(other_size)
    mismatch = run('train.py', *train_args(tmp_path / 'other_size', tmp_path / 'run'))
    assert_one_line_error(mismatch, 'rows of block_size=20', '--block_size=20', '--format=chat --block_size=24')


BAD_LINES = {
    'not JSON': ('{"messages": [', 'is not JSON'),
    'not an object': ('["user", "hi"]', 'has neither "messages" nor "prompt" and "completion"'),
    'missing keys': ('{"prompt": "say hi"}', 'has neither "messages" nor "prompt" and "completion"'),
    'unknown role': ('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "hello"}]}',
                     "message 2 has the unknown role 'bot'"),
    'empty messages': ('{"messages": []}', '"messages" is empty'),
    'empty content': ('{"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "hi"}]}',
                      'message 1 has empty content'),
    'empty completion': ('{"prompt": "say hi", "completion": ""}', 'the completion has empty content'),
    'no role': ('{"messages": [{"content": "hi"}]}', 'message 1 is not an object with "role" and "content"'),
    'no assistant turn': ('{"messages": [{"role": "user", "content": "hi"}]}', 'has no assistant turn'),
}


def test_each_bad_line_is_a_one_line_error_with_its_number(words, tmp_path):
    """Each kind of bad line is one error line naming the file and the line number (read here; two of them from the
    command line, as the user sees them); nothing is written, and the dataset already in the folder is unchanged."""
    good = json.dumps({'prompt': 'say hi', 'completion': 'hello'})
    sources = {kind: write_jsonl(tmp_path / f'{i}.jsonl', [good, '', good, line])
               for i, (kind, (line, _)) in enumerate(BAD_LINES.items())}
    for kind, (_, error) in BAD_LINES.items():
        with pytest.raises(ValueError) as raised:
            list(chat_data.read_conversations([sources[kind]]))
        assert f'{sources[kind]} line 4' in str(raised.value) and error in str(raised.value)
        assert '\n' not in str(raised.value)
    (tmp_path / 'latin1.jsonl').write_bytes(good.encode() + b'\n' + '{"prompt": "café"}'.encode('latin-1') + b'\n')
    with pytest.raises(ValueError, match='latin1.jsonl line 2 is not UTF-8 text'):
        list(chat_data.read_conversations([str(tmp_path / 'latin1.jsonl')]))
    data = tmp_path / 'data'
    ok(run('prepare.py', write_jsonl(tmp_path / 'good.jsonl', [good] * 4), '--format=chat', f'--out_dir={data}',
           f'--tokenizer={words}', '--block_size=12'))
    before = {name: (data / name).read_bytes() for name in files_under(data)}
    kinds = ('not JSON', 'no assistant turn')
    results = run_all(*[('prepare.py', sources[kind], '--format=chat', f'--out_dir={data}', f'--tokenizer={words}',
                         '--block_size=12') for kind in kinds])
    for kind, result in zip(kinds, results):
        assert_one_line_error(result, f'{sources[kind]} line 4', BAD_LINES[kind][1])
    assert {name: (data / name).read_bytes() for name in files_under(data)} == before


def test_a_model_finetuned_on_default_template_data_chats(tmp_path):
    """A char model trained on chat data prepared with the default template (no tokenizer of its own has one)
    chats with that template: sample.py --chat=True renders --start as the dataset's conversations were, and the
    terminal chat (no --start) answers a turn and ends at /exit."""
    source = write_jsonl(tmp_path / 'chat.jsonl', [{'prompt': 'Hi', 'completion': 'Yo'}] * 8)
    ok(run('prepare.py', source, '--format=chat', f'--out_dir={tmp_path / "data"}', '--tokenizer=char',
           '--block_size=40'))
    ok(run('train.py', *train_args(tmp_path / 'data', tmp_path / 'out', '--block_size=40', '--max_iters=4')))
    once, chat = run_all(
        ('sample.py', f"--out_dir={tmp_path / 'out'}", '--device=cpu', '--chat=True', '--start=Hi',
         '--num_samples=1', '--max_new_tokens=3', '--temperature=0'),
        ('-c', 'import subprocess, sys; sys.exit(subprocess.run([sys.executable, "sample.py", *sys.argv[1:]], '
               'input="Hi\\n/exit\\n", text=True).returncode)',
         f"--out_dir={tmp_path / 'out'}", '--device=cpu', '--chat=True', '--max_new_tokens=3', '--temperature=0'))
    ok(once)
    assert once.stdout.startswith('<|user|>\nHi\n<|assistant|>\n')
    ok(chat)
    assert 'you> ' in chat.stdout


def test_a_model_finetuned_with_its_own_bpe_on_default_template_data_chats(tmp_path):
    """A BPE of the user's own (prepare.py --tokenizer=bpe: a tokenizer.json without a chat template) renders chat
    data with the default template; the model finetuned on it chats in that template."""
    import bpe
    bpe.train(['<|user|>\nHi\n<|assistant|>\nYo'] * 4, str(tmp_path / 'bpe'), 300, [bpe.END_OF_TEXT], progress=False)
    source = write_jsonl(tmp_path / 'chat.jsonl', [{'prompt': 'Hi', 'completion': 'Yo'}] * 8)
    ok(run('prepare.py', source, '--format=chat', f'--out_dir={tmp_path / "data"}', f'--tokenizer={tmp_path / "bpe"}',
           '--block_size=24'))
    ok(run('train.py', *train_args(tmp_path / 'data', tmp_path / 'out', '--max_iters=4')))
    once = ok(run('sample.py', f"--out_dir={tmp_path / 'out'}", '--device=cpu', '--chat=True', '--start=Hi',
                  '--num_samples=1', '--max_new_tokens=3', '--temperature=0'))
    assert once.stdout.startswith('<|user|>\nHi\n<|assistant|>\n')
