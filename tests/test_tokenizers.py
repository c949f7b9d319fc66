"""Hugging Face tokenizers (tokenizer.py's HFTokenizer, prepare.py --tokenizer=FOLDER, sample.py's EOS and chat
template), offline: tiny BPE tokenizers built here with the `tokenizers` library and saved as a model folder's
tokenizer.json, tokenizer_config.json and generation_config.json; transformers, reading the same files, is the
reference for the ids, the text and the rendered chat."""
import json
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch

import dataset
import sample
import tokenizer as tokenizers
from helpers import ROOT, TINY, WORDS, assert_one_line_error, gpt2_encoding, make_text, run, run_all
from tokenizer import HFTokenizer

# the chat template of Qwen2.5 and SmolLM2-Instruct (ChatML), with a default system message
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
# Llama 3's way: the BOS written by the template, a namespace, tojson, loop controls and raise_exception
LLAMA_LIKE = ("{{ bos_token }}{% set ns = namespace(n=0) %}{% for message in messages %}"
              "{% if message['role'] not in ['system', 'user', 'assistant'] %}{{ raise_exception('bad role') }}"
              "{% endif %}{% if message['content'] == 'skip' %}{% continue %}{% endif %}{% set ns.n = ns.n + 1 %}"
              "<|im_start|>{{ message['role'] }} {{ ns.n }} {{ message | tojson }}\n{{ message['content'] | trim }}"
              "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXTS = ['hello world', 'the king, my lord!\n\nshall speak\tof love', ' leading and trailing spaces ',
         'héllo wörld 東京 🤗 naïve café ﬁ Ω ∑ \U0001f600\u200d', 'the <|im_end|> of a turn', '']
MESSAGES = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Who art thou? 東京'},
            {'role': 'assistant', 'content': 'A king.'}, {'role': 'user', 'content': 'skip'},
            {'role': 'user', 'content': '  And she?  '}]


def write_tokenizer(folder, bos=True, template=CHATML, template_file=False, vocab=400):
    """A byte-level BPE trained on WORDS, with <s> </s> <|im_start|> <|im_end|> (ids 0..3); bos: Llama's way (the
    post-processor puts <s> first, tokenizer_config names it), else Qwen's (no BOS). </s> ends a text, and
    generation_config.json also names <|im_end|>; the chat template in tokenizer_config.json or chat_template.jinja."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    os.makedirs(folder, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=['<s>', '</s>', '<|im_start|>', '<|im_end|>'],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([make_text(20_000, seed=1)], trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single='<s> $A', special_tokens=[('<s>', 0)])
    tok.save(os.path.join(folder, 'tokenizer.json'))
    eos = {'__type': 'AddedToken', 'content': '</s>', 'lstrip': False, 'normalized': False, 'rstrip': False,
           'single_word': False, 'special': True}  # as older transformers wrote them
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'eos_token': eos, 'model_max_length': 2048}
    if bos:
        config['bos_token'] = '<s>'
    if template_file:
        with open(os.path.join(folder, 'chat_template.jinja'), 'w') as f:
            f.write(template)
    else:
        config['chat_template'] = template
    write_json(folder, 'tokenizer_config.json', config)
    write_json(folder, 'generation_config.json', {'eos_token_id': [1, 3]})
    return str(folder)


def write_json(folder, name, value):
    with open(os.path.join(folder, name), 'w') as f:
        json.dump(value, f)


def reference(folder):
    transformers = pytest.importorskip('transformers', reason='transformers is the reference for these tests')
    return transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """Two tokenizer folders: Llama-like (a BOS) with the template in tokenizer_config.json, and Qwen-like (none)
    with the template in chat_template.jinja."""
    tmp = tmp_path_factory.mktemp('tokenizers')
    return {'llama': write_tokenizer(tmp / 'llama', template=LLAMA_LIKE),
            'qwen': write_tokenizer(tmp / 'qwen', bos=False, template_file=True)}


# ----------------------------------------------------------------------------------------------
# the tokenizer against transformers, on the same files


@pytest.mark.parametrize('family', ['llama', 'qwen'])
def test_ids_text_and_special_tokens_equal_transformers(folders, family):
    ours, theirs = HFTokenizer(folders[family]), reference(folders[family])
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs(text)['input_ids'], text
        assert ours.decode(ids) == text  # arbitrary Unicode round trips, the BOS left out
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=False).removeprefix('<s>'), text
        assert ours.encode(text, bos=False) == theirs(text, add_special_tokens=False)['input_ids']
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert ours.add_bos == (family == 'llama') and ours.stop_ids == (1, 3)  # </s>, and <|im_end|> from generation
    assert ours.vocab_size == len(theirs)
    assert ours.encode('<|im_end|>', bos=False) == [3]  # special tokens in text are tokens, as in transformers


@pytest.mark.parametrize('family', ['llama', 'qwen'])
def test_render_chat_equals_apply_chat_template(folders, family):
    ours, theirs = HFTokenizer(folders[family]), reference(folders[family])
    for messages in (MESSAGES, MESSAGES[1:2], MESSAGES[:3]):
        for add_generation_prompt in (True, False):
            text = ours.render_chat(messages, add_generation_prompt)
            assert text == theirs.apply_chat_template(messages, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
            ids = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
            ids = ids['input_ids'] if isinstance(ids, dict) or hasattr(ids, 'keys') else ids
            assert ours.encode(text, bos=False) == list(ids)  # the template wrote the BOS, once
    with pytest.raises(ValueError, match='must be a list of dicts'):
        ours.render_chat('hi')
    if family == 'llama':  # the template's raise_exception, as one line
        with pytest.raises(ValueError, match='bad role'):
            ours.render_chat([{'role': 'tool', 'content': 'x'}])


def test_a_hostile_chat_template_cannot_run_code(folders, exported, tmp_path):
    """A template from a downloaded folder is untrusted: reaching Python's internals or the os module, mutating what
    it is given or looping without end fails in one line and runs nothing; an unsafe attribute that is only printed
    prints nothing (jinja2's sandbox makes it undefined), as in transformers. sample.py --chat: one line, exit 1."""
    marker = tmp_path / 'pwned'
    refused = [
        f"{{{{ cycler.__init__.__globals__.os.system('touch {marker}') }}}}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        f"{{{{ self._TemplateReference__context.cycler.__init__.__globals__.os.system('touch {marker}') }}}}",
        "{{ messages.append({'role': 'system', 'content': 'obey'}) }}",
        "{{ (messages | first).update({'content': 'obey'}) }}",
        "{% for i in range(10 ** 9) %}x{% endfor %}",
        "{{ namespace.__init__.__globals__ }}",
        "{% if %}",
    ]
    silent = ["{{ ''.__class__ }}", '{{ lipsum.__globals__ }}']
    folder = tmp_path / 'hostile'
    shutil.copytree(folders['qwen'], folder)
    for template in refused + silent:
        (folder / 'chat_template.jinja').write_text(template)
        messages = [{'role': 'user', 'content': 'hi'}]
        if template in silent:
            assert HFTokenizer(folder).render_chat(messages) == ''
            continue
        with pytest.raises(ValueError, match='chat template') as e:
            HFTokenizer(folder).render_chat(messages)
        assert '\n' not in str(e.value) and messages == [{'role': 'user', 'content': 'hi'}]
    (folder / 'chat_template.jinja').write_text(refused[0])
    result = run('sample.py', f'--init_from={model_folder(exported, folder, tmp_path / "model")}', '--device=cpu',
                 '--chat=True', '--max_new_tokens=1')
    assert_one_line_error(result, 'chat template', 'SecurityError', 'may not do')
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------
# prepare.py --tokenizer=FOLDER, a run from scratch on its bins, sample.py with its tokenizer


@pytest.fixture(scope='module')
def trained(folders, tmp_path_factory):
    """prepare.py with the Llama-like tokenizer on a .jsonl corpus, then a tiny train.py run on its bins."""
    tmp = tmp_path_factory.mktemp('hf_run')
    documents = [make_text(2_000, seed=i) for i in range(8)] + ['héllo wörld 東京 🤗', 'the end']
    with open(tmp / 'corpus.jsonl', 'w') as f:
        f.writelines(json.dumps({'text': d}) + '\n' for d in documents)
    data_dir, out_dir = tmp / 'data', tmp / 'out'
    result = run('prepare.py', tmp / 'corpus.jsonl', f'--out_dir={data_dir}', f"--tokenizer={folders['llama']}",
                 '--num_proc=2', '--val_fraction=0.2')
    assert result.returncode == 0, result.stderr
    result = run('train.py', f'--data_dir={data_dir}', f'--out_dir={out_dir}', '--dataset=tiny', '--device=cpu',
                 '--compile=False', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=128', '--batch_size=4',
                 '--max_iters=30', '--eval_interval=30', '--eval_iters=2', '--learning_rate=1e-2', '--bias=True')
    assert result.returncode == 0, result.stderr
    return {'documents': documents, 'data': str(data_dir), 'out': str(out_dir), 'tmp': tmp}


def test_prepare_writes_the_tokenizers_bins_and_files(folders, trained):
    data_dir, tok = trained['data'], HFTokenizer(folders['llama'])
    for name in ('tokenizer.json', 'tokenizer_config.json', 'generation_config.json'):
        with open(os.path.join(folders['llama'], name), 'rb') as a, open(os.path.join(data_dir, name), 'rb') as b:
            assert a.read() == b.read(), name
    meta = dataset.load_meta(data_dir)
    assert (meta['tokenizer'], meta['fingerprint'], meta['dtype']) == ('tokenizer.json', tok.fingerprint, 'uint16')
    assert meta['vocab_size'] == tok.vocab_size and dataset.fingerprint(meta) == tok.fingerprint
    ids = np.concatenate([np.fromfile(os.path.join(data_dir, f'{split}.bin'), np.uint16) for split in ('train', 'val')])
    expected = [i for d in trained['documents']  # each document: BOS, its tokens, EOS
                for i in [tok.bos_id] + tok.backend.encode(d, add_special_tokens=False).ids + [tok.eos_id]]
    assert ids.tolist() == expected
    assert not os.path.exists(os.path.join(data_dir, '.prepare'))


def test_sample_encodes_with_the_data_tokenizer_and_stops_at_eos(folders, trained, tmp_path):
    """sample.py encodes --start with the dataset's tokenizer.json (any Unicode round trips), decodes with it, and
    ends a sample at EOS or at generation_config's <|im_end|> without printing it; --chat renders the template."""
    import checkpoint
    out_dir = trained['out']
    ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), weights_only=True)
    assert ckpt['config']['tokenizer'] == HFTokenizer(folders['llama']).fingerprint

    def always(token_id, name):
        """The run's model edited to give token_id every time: ln_f's output is its bias, which lm_head maps to it."""
        def edit(state):
            state['transformer.ln_f.weight'].zero_()
            state['transformer.ln_f.bias'].zero_()[0] = 1.0
            for key in ('lm_head.weight', 'transformer.wte.weight'):  # tied: one matrix
                state[key][:, 0] = 0.0
                state[key][token_id, 0] = 30.0
        edited = dict(ckpt, model={k: v.clone() for k, v in ckpt['model'].items()})
        edit(edited['model'])
        checkpoint.save(edited, str(tmp_path / name / 'ckpt.pt'))
        return str(tmp_path / name)

    unicode = 'héllo wörld 東京 🤗 ∑'
    results = run_all(
        ('sample.py', f'--out_dir={out_dir}', '--device=cpu', f'--start={unicode}', '--max_new_tokens=0',
         '--num_samples=1'),
        ('sample.py', f"--out_dir={always(1, 'eos')}", '--device=cpu', '--start=the king', '--max_new_tokens=50',
         '--num_samples=3'),
        ('sample.py', f"--out_dir={always(3, 'im_end')}", '--device=cpu', '--start=my lord', '--max_new_tokens=50',
         '--num_samples=2', '--chat=True'),
    )
    for result in results:
        assert result.returncode == 0, result.stderr
    assert results[0].stdout == unicode + '\n' + sample.SEPARATOR + '\n'
    assert results[1].stdout == ('the king\n' + sample.SEPARATOR + '\n') * 3  # EOS at once: nothing printed
    assert '(3 x 1 tokens' in results[1].stderr  # and generation ended there, not after 50
    chat = HFTokenizer(folders['llama']).render_chat([{'role': 'user', 'content': 'my lord'}])
    assert chat.startswith('<s><|im_start|>user') and chat.endswith('<|im_start|>assistant\n')
    expected = chat.removeprefix('<s>') + '\n' + sample.SEPARATOR + '\n'  # the BOS is not printed
    assert results[2].stdout == expected * 2 and '(2 x 1 tokens' in results[2].stderr


def test_streamer_stops_each_row_at_its_stop_id(folders):
    tok = HFTokenizer(folders['qwen'])
    hello = tok.encode('hello', bos=False)
    chunks = []
    streamer = sample.Streamer(tok, hello, chunks.append, rows=2)
    a, b = tok.encode(' king', bos=False)[0], tok.encode(' lord', bos=False)[0]
    assert streamer(torch.tensor([[a], [b]])) is False
    assert streamer(torch.tensor([[3], [a]])) is False  # row 0 ends (<|im_end|>): nothing more is printed for it
    assert streamer(torch.tensor([[b], [a]])) is False
    assert streamer(torch.tensor([[a], [1]])) is True  # every row has ended
    assert tok.decode(hello) + ''.join(chunks) == tok.decode(hello + [a])
    assert sample.until_stop(hello + [a, 3, b, 1], len(hello), tok.stop_ids) == hello + [a]
    assert sample.until_stop([3] + hello, 1, tok.stop_ids) == [3] + hello  # a stop id in the prompt is kept


def test_generate_ends_when_on_token_says_so():
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=32))
    seen = []
    out = model.generate(torch.zeros(2, 3, dtype=torch.long), 10, temperature=0,
                         on_token=lambda tokens: seen.append(tokens) or len(seen) == 4)
    assert out.shape == (2, 3 + 4) and torch.equal(torch.cat(seen, dim=1), out[:, 3:])


def test_greedy_sample_equals_recomputation_cut_at_the_first_stop(folders, trained, tmp_path, capsys):
    """The trained model's greedy sample equals a recomputation without a cache, cut before the first stop id: here
    the first generated token that differs from the ones before it, named a stop id in generation_config.json."""
    import checkpoint
    import machine
    model, source = checkpoint.load_model('resume', trained['out'])
    tok = tokenizers.for_model(model, source)
    assert isinstance(tok, HFTokenizer) and tok.fingerprint == HFTokenizer(folders['llama']).fingerprint
    prompt = tok.encode('the king')
    idx = torch.tensor([prompt])
    for _ in range(20):
        idx = torch.cat((idx, model(idx)[0][:, -1].argmax(-1, keepdim=True)), dim=1)
    generated = idx[0, len(prompt):].tolist()
    stop = next((t for j, t in enumerate(generated) if t not in generated[:j] and j), generated[0])
    folder = shutil.copytree(folders['llama'], tmp_path / 'stop')
    write_json(folder, 'generation_config.json', {'eos_token_id': [1, stop]})
    tok = HFTokenizer(folder)
    expected = sample.until_stop(idx[0].tolist(), len(prompt), tok.stop_ids)
    assert len(prompt) <= len(expected) < idx.size(1)  # it stops before the end
    cfg = dict(sample.DEFAULTS, start='the king', num_samples=1, max_new_tokens=20, temperature=0)
    samples = sample.generate_samples(model.eval(), tok, machine.Machine('cpu', 'float32', compile=False), cfg,
                                      write=lambda text: None)
    assert samples == [tok.decode(expected)]
    assert f'(1 x {len(expected) - len(prompt) + 1} tokens' in capsys.readouterr().err  # generation ended at the stop


@pytest.fixture(scope='module')
def exported(trained):
    """The trained run's model as a Hugging Face folder (export.py), with its data folder's tokenizer files."""
    folder = trained['tmp'] / 'exported'
    result = run('export.py', f"--out_dir={trained['out']}", f'--to={folder}')
    assert result.returncode == 0, result.stderr
    return folder


def test_export_brings_the_tokenizer_the_model_was_trained_with(folders, trained, exported):
    """export.py copies the data folder's tokenizer files (the model's tokenizer, by its fingerprint) and writes
    their BOS/EOS ids into config.json: transformers loads the folder with its tokenizer and encodes as we do."""
    tokenizer = HFTokenizer(folders['llama'])
    for name in ('tokenizer.json', 'tokenizer_config.json'):
        with open(os.path.join(trained['data'], name), 'rb') as a, open(exported / name, 'rb') as b:
            assert a.read() == b.read()
    with open(exported / 'config.json') as f:
        config = json.load(f)
    assert (config['bos_token_id'], config['eos_token_id']) == (tokenizer.bos_id, tokenizer.eos_id)
    text = 'héllo wörld 東京 🤗'
    assert reference(str(exported))(text)['input_ids'] == tokenizer.encode(text)


def test_export_leaves_out_a_tokenizer_replaced_since_training(trained, tmp_path):
    """A data folder prepared again with another tokenizer since the run: its files are not the model's, so
    export.py writes the weights and says that it brings no tokenizer."""
    data = tmp_path / 'data'
    shutil.copytree(trained['data'], data)
    write_tokenizer(data, vocab=300)  # another vocabulary in the run's data folder
    out = tmp_path / 'out'
    shutil.copytree(trained['out'], out)
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    ckpt['config']['data_dir'] = str(data)
    torch.save(ckpt, out / 'ckpt.pt')
    result = run('export.py', f'--out_dir={out}', f"--to={tmp_path / 'hf'}")
    assert result.returncode == 0, result.stderr
    assert 'holds another tokenizer than the one this model was trained with' in result.stdout
    assert not os.path.exists(tmp_path / 'hf' / 'tokenizer.json')


def model_folder(exported, tokenizer_folder, folder):
    """A model folder as the hub has them: the exported weights and a tokenizer's files."""
    shutil.copytree(exported, folder)
    for name in tokenizers.TOKENIZER_FILES:
        if os.path.exists(os.path.join(tokenizer_folder, name)):
            shutil.copy(os.path.join(tokenizer_folder, name), os.path.join(folder, name))
    return folder


def test_a_model_folder_samples_with_its_own_tokenizer(folders, exported, tmp_path):
    """A Hugging Face folder (the weights and the tokenizer files) samples with its tokenizer.json and chat
    template, without any dataset."""
    folder = model_folder(exported, folders['llama'], tmp_path / 'hf')
    result = run('sample.py', f'--init_from={folder}', '--device=cpu', '--start=Who art thou?', '--chat=True',
                 '--num_samples=1', '--max_new_tokens=0')
    assert result.returncode == 0, result.stderr
    chat = HFTokenizer(folders['llama']).render_chat([{'role': 'user', 'content': 'Who art thou?'}])
    assert result.stdout == chat.removeprefix('<s>') + '\n' + sample.SEPARATOR + '\n'


def test_gpt2_as_a_tokenizer_json_prepares_tiktokens_bins(tmp_path):
    """GPT-2's BPE written as a tokenizer.json (from the files tiktoken reads) prepares the very bins that
    --tokenizer=gpt2 (tiktoken) does: two independent implementations, the same ids."""
    import sys
    enc = gpt2_encoding()  # or skip: its files are what the tokenizer.json is made of
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
    from prepare_speed import gpt2_tokenizer_folder
    folder = gpt2_tokenizer_folder(str(tmp_path / 'gpt2'))
    tok = HFTokenizer(folder)
    for text in TEXTS:
        assert tok.encode(text) == enc.encode(text, allowed_special='all') and tok.decode(tok.encode(text)) == text
    with open(tmp_path / 'corpus.jsonl', 'w') as f:
        f.writelines(json.dumps({'text': make_text(3_000, seed=i) + text}) + '\n' for i, text in enumerate(TEXTS))
    results = run_all(*[('prepare.py', tmp_path / 'corpus.jsonl', f'--out_dir={tmp_path / name}', f'--tokenizer={tok}',
                         '--num_proc=2') for name, tok in (('a', 'gpt2'), ('b', folder))])
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    for split in ('train.bin', 'val.bin'):
        assert (tmp_path / 'a' / split).read_bytes() == (tmp_path / 'b' / split).read_bytes()


def test_ids_above_65535_are_written_as_uint32(tmp_path):
    """A vocabulary of more than 65,536 tokens (Qwen's, Llama 3's): uint32 bins, which Batches reads back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    folder = tmp_path / 'big'
    folder.mkdir()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    names = sorted(alphabet) + [f'filler{i}' for i in range(70_000 - len(alphabet))]
    vocab = {name: i for i, name in enumerate(names)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.add_special_tokens(['<|endoftext|>'])  # id 70000
    tok.save(str(folder / 'tokenizer.json'))
    write_json(folder, 'tokenizer_config.json', {'eos_token': '<|endoftext|>'})
    documents = [' '.join(WORDS[i:i + 5]) + ' 東京' for i in range(0, 50, 5)]
    with open(tmp_path / 'input.jsonl', 'w') as f:
        f.writelines(json.dumps({'text': d}) + '\n' for d in documents)
    result = run('prepare.py', tmp_path / 'input.jsonl', f"--out_dir={tmp_path / 'data'}", f'--tokenizer={folder}',
                 '--num_proc=1')
    assert result.returncode == 0, result.stderr
    data_dir = str(tmp_path / 'data')
    meta = dataset.load_meta(data_dir)
    assert (meta['dtype'], meta['vocab_size']) == ('uint32', 70_001)
    ids = np.concatenate([np.fromfile(os.path.join(data_dir, f'{s}.bin'), np.uint32) for s in ('train', 'val')])
    assert ids.tolist() == [i for d in documents for i in tok.encode(d).ids + [70_000]]  # no BOS: none named
    hf = tokenizers.for_data(data_dir)
    assert hf.decode(ids.tolist()) == ''.join(d + '<|endoftext|>' for d in documents)
    batches = dataset.Batches(data_dir, meta, 4, 64, 'cpu', 0, 70_016)
    x, y = batches.train_batch(0, 0)
    assert x.dtype == torch.int64 and int(torch.cat([x, y]).max()) == 70_000  # the EOS, read whole


# ----------------------------------------------------------------------------------------------
# bad files: one line, exit 1


def test_damaged_or_foreign_tokenizer_files_are_one_line_errors(folders, tmp_path):
    """Each damaged file is an error naming it, in one line (prepare.py's exit 1 shown for two of them)."""
    def variant(name, edit):
        folder = tmp_path / name
        shutil.copytree(folders['llama'], folder)
        edit(folder)
        return folder

    def truncate(folder):
        path = folder / 'tokenizer.json'
        path.write_bytes(path.read_bytes()[:500])

    bad = {
        'tokenizer.json is not a readable': variant('truncated', truncate),
        'tokenizer_config.json is unreadable': variant('config',
                                                       lambda f: (f / 'tokenizer_config.json').write_text('{')),
        'is not a token of tokenizer.json': variant('eos', lambda f: write_json(f, 'tokenizer_config.json',
                                                                                 {'eos_token': '<|nope|>'})),
        'eos_token_id=': variant('generation', lambda f: write_json(f, 'generation_config.json',
                                                                    {'eos_token_id': [1, 10 ** 9]})),
        'not a JSON object': variant('list', lambda f: write_json(f, 'tokenizer_config.json', [])),
        'chat_template is a dict': variant('template', lambda f: write_json(f, 'tokenizer_config.json',
                                                                            {'chat_template': {}})),
        'has no tokenizer.json': variant('missing', lambda f: (f / 'tokenizer.json').unlink()),
    }
    for words, folder in bad.items():
        with pytest.raises((ValueError, OSError), match=re.escape(words)) as e:
            HFTokenizer(folder)
        assert '\n' not in str(e.value)
    corpus = tmp_path / 'corpus.txt'
    corpus.write_text(make_text(2_000))
    results = run_all(('prepare.py', corpus, f"--out_dir={tmp_path / 'data'}", f"--tokenizer={tmp_path / 'truncated'}"),
                      ('prepare.py', corpus, f"--out_dir={tmp_path / 'data'}", '--tokenizer=NoSuchOrg/no-such-model'))
    assert_one_line_error(results[0], 'truncated/tokenizer.json is not a readable tokenizer.json')
    assert_one_line_error(results[1], 'could not download the tokenizer of NoSuchOrg/no-such-model', 'HF_HUB_OFFLINE')
    assert not os.path.exists(tmp_path / 'data')  # nothing written


def test_a_replaced_or_outside_tokenizer_is_refused(folders, trained, tmp_path):
    """The dataset's tokenizer.json replaced by another vocabulary, linked to a file outside its folder, or meta.pkl
    naming a file outside it: refused in one line (sample.py and train.py shown); so is sampling a checkpoint with
    another tokenizer's data (the checkpoint's fingerprint)."""
    import corpus

    def data_copy(name, edit):
        folder = tmp_path / name
        shutil.copytree(trained['data'], folder)
        edit(folder)
        return folder

    another = write_tokenizer(tmp_path / 'another', vocab=300)  # another vocabulary: other ids

    def replace(folder):
        shutil.copy(os.path.join(another, 'tokenizer.json'), folder / 'tokenizer.json')

    def link_out(folder):
        outside = tmp_path / 'elsewhere.json'
        shutil.copy(folder / 'tokenizer.json', outside)
        (folder / 'tokenizer.json').unlink()
        (folder / 'tokenizer.json').symlink_to(outside)

    def name_out(folder):
        with open(folder / 'meta.pkl', 'rb') as f:
            meta = pickle.load(f)
        with open(folder / 'meta.pkl', 'wb') as f:
            pickle.dump(dict(meta, tokenizer='../elsewhere/tokenizer.json'), f)

    replaced, linked = data_copy('replaced', replace), data_copy('linked', link_out)
    for folder, words in ((replaced, 'is not the tokenizer its bins were made with'), (linked, 'which is outside'),
                          (data_copy('named', name_out), "tokenizer='../elsewhere/tokenizer.json' is not")):
        with pytest.raises(ValueError, match=re.escape(words)):
            tokenizers.for_data(str(folder))
    other = tmp_path / 'other_data'
    (tmp_path / 'corpus.txt').write_text(make_text(3_000))
    corpus.prepare_corpus(str(tmp_path / 'corpus.txt'), str(other), another)
    results = run_all(
        ('sample.py', f"--out_dir={trained['out']}", f'--data_dir={replaced}', '--device=cpu', '--max_new_tokens=2'),
        ('sample.py', f"--out_dir={trained['out']}", f'--data_dir={other}', '--device=cpu', '--max_new_tokens=2'),
        ('train.py', f"--out_dir={tmp_path / 'run'}", f'--data_dir={linked}', *TINY, '--hellaswag_interval=1'))
    assert_one_line_error(results[0], 'is not the tokenizer its bins were made with')
    assert_one_line_error(results[1], 'describes another vocabulary than', 'ckpt.pt')
    assert_one_line_error(results[2], 'which is outside')


def test_hellaswag_encodes_with_the_models_tokenizer(folders):
    """An ending is scored after the context's BOS, without one of its own."""
    import hellaswag
    tok = HFTokenizer(folders['llama'])
    tokens, mask = hellaswag.render({'ctx': 'the king', 'endings': ['speaks', 'is', 'my lord', 'no']}, tok, 32)
    context = tok.encode('the king')
    for row, row_mask, ending in zip(tokens.tolist(), mask.tolist(), ['speaks', 'is', 'my lord', 'no']):
        n = len(tok.encode(' ' + ending, bos=False))
        assert row[:len(context) + n] == context + tok.encode(' ' + ending, bos=False)
        assert row_mask[len(context):len(context) + n] == [1] * n and sum(row_mask) == n
    hellaswag.check_tokenizer(tok)  # accepted, as GPT-2's BPE is


def test_evaluate_scores_hellaswag_in_the_models_tokens(trained, tmp_path):
    """evaluate.py on a run trained on tokenizer.json bins: its acc and acc_norm equal llm.c's rule computed here
    one unpadded row at a time, in the dataset's tokens (the context after its BOS, each ending without one)."""
    import torch.nn.functional as F

    import checkpoint
    sentences = [' '.join(WORDS[i:i + 4]) for i in range(0, 48, 4)]
    examples = [{'ctx': sentences[i].capitalize(), 'endings': [s + '.' for s in sentences[i + 1:i + 5]], 'label': i % 4}
                for i in range(6)]
    with open(tmp_path / 'val.jsonl', 'w') as f:
        f.writelines(json.dumps(e) + '\n' for e in examples)
    result = run('evaluate.py', f"--out_dir={trained['out']}", f"--data={tmp_path / 'val.jsonl'}", '--device=cpu',
                 '--dtype=float32', '--json=True')
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    model, source = checkpoint.load_model('resume', trained['out'])
    tok = tokenizers.for_model(model.eval(), source)
    correct = correct_norm = 0
    for example in examples:
        context, summed, mean = tok.encode(example['ctx']), [], []
        for ending in example['endings']:
            row = torch.tensor([context + tok.encode(' ' + ending, bos=False)])
            with torch.no_grad():
                logits = model(row[:, :-1], targets=row[:, 1:])[0][0]
            losses = F.cross_entropy(logits[len(context) - 1:], row[0, len(context):], reduction='none')
            summed.append(losses.sum().item())
            mean.append(losses.mean().item())
        for losses in (summed, mean):
            best, second = sorted(losses)[:2]
            assert second - best > 1e-4, losses  # a clear choice: rounding cannot flip it
        correct += min(range(4), key=summed.__getitem__) == example['label']
        correct_norm += min(range(4), key=mean.__getitem__) == example['label']
    assert (out['n'], out['acc'], out['acc_norm']) == (6, correct / 6, correct_norm / 6)


def test_export_never_copies_a_tokenizer_file_linked_out_of_its_folder(folders, trained, exported, tmp_path):
    """A tokenizer file planted as a link to a file outside the folder (here a 'secret') in the run's data folder,
    or in a Hugging Face folder given to --init_from: export.py refuses in one line, before writing anything,
    and the secret is never copied into the export."""
    secret = tmp_path / 'secret.json'
    secret.write_text('{"api_key": "do not copy me"}')
    data = tmp_path / 'data'
    shutil.copytree(trained['data'], data)
    (data / 'tokenizer_config.json').unlink()
    (data / 'tokenizer_config.json').symlink_to(secret)
    out = tmp_path / 'out'
    shutil.copytree(trained['out'], out)
    ckpt = torch.load(out / 'ckpt.pt', weights_only=True)
    ckpt['config']['data_dir'] = str(data)
    torch.save(ckpt, out / 'ckpt.pt')
    source = model_folder(exported, folders['llama'], tmp_path / 'source')
    (source / 'special_tokens_map.json').symlink_to(secret)
    results = run_all(('export.py', f'--out_dir={out}', f"--to={tmp_path / 'from_run'}"),
                      ('export.py', f'--init_from={source}', f"--to={tmp_path / 'from_folder'}"))
    for result, to in zip(results, ('from_run', 'from_folder')):
        assert_one_line_error(result, 'which is outside')
        assert not os.path.exists(tmp_path / to) or not os.listdir(tmp_path / to)
