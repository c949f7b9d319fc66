"""sample.py --chat=True without --start: the chat in the terminal (chat.py), run as a user runs it, turns written to
its stdin, on a tiny random Llama folder with a tokenizer.json (one token per character, so that a reply's text
encodes back to its tokens) and chat templates built here. The oracle for every reply is model.generate on the
whole conversation rendered from scratch (greedy), cut at the first stop id."""
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import checkpoint
import hf
import machine
import sample
from chat import Chat, check_options
from configurator import configure
from helpers import ROOT, TIMEOUT, assert_one_line_error
from model import GPT, GPTConfig
from tokenizer import HFTokenizer

# ChatML, short: one role letter; the earlier turns render the same each time, so the cache is kept across turns
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'][0] }}:{{ m['content'] }}<|im_end|>{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>a:{% endif %}")
# the number of messages first: every turn rewrites the start of the conversation, which is run again
REWRITING = '#{{ messages | length }}' + TEMPLATE
ARGS = ('--device=cpu', '--dtype=float32', '--chat=True', '--temperature=0')
MAX_NEW = 6


def write_folder(folder, template=TEMPLATE, block_size=64):
    """A random Llama (2 layers, grouped-query attention) exported as a Hugging Face folder, with a byte-level
    tokenizer.json without merges over printable ASCII and <|im_start|>, <|im_end|> (its EOS, the stop id)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    vocab = {'<|im_start|>': 0, '<|im_end|>': 1}
    for char in '\n' + ''.join(map(chr, range(32, 127))):
        vocab[byte_level.pre_tokenize_str(char)[0][0]] = len(vocab)  # the byte's symbol: 'Ġ' for a space
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.add_special_tokens(['<|im_start|>', '<|im_end|>'])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    os.makedirs(folder, exist_ok=True)
    tok.save(os.path.join(folder, 'tokenizer.json'))
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'eos_token': '<|im_end|>'}
    if template is not None:
        config['chat_template'] = template
    with open(os.path.join(folder, 'tokenizer_config.json'), 'w') as f:
        json.dump(config, f)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=block_size, vocab_size=len(vocab),
                          bias=False, norm='rmsnorm', pos_emb='rope', mlp='swiglu', d_ff=64, tie_embeddings=False))
    with torch.no_grad():
        for p in model.parameters():  # wider than at init: decisive logits, a greedy choice far from a tie
            p.add_(torch.randn_like(p) * 0.3)
    hf.export_hf(model, folder)
    return str(folder)


def write_json(folder, name, value):
    with open(os.path.join(folder, name), 'w') as f:
        json.dump(value, f)


@pytest.fixture(scope='module')
def folders(tmp_path_factory):
    """The model with TEMPLATE, the same with REWRITING, and with no template. generation_config.json makes the
    fourth token of the first reply to 'hi' a stop id too, so that a reply ends before max_new_tokens."""
    tmp = tmp_path_factory.mktemp('chat')
    folder = write_folder(tmp / 'chat')
    first = recompute(folder, ['hi'])['ids'][0]
    assert first[3] not in first[:3] and len(first) == MAX_NEW
    write_json(folder, 'generation_config.json', {'eos_token_id': [1, first[3]]})
    rewriting, plain = shutil.copytree(folder, tmp / 'rewriting'), shutil.copytree(folder, tmp / 'plain')
    write_json(rewriting, 'tokenizer_config.json', {'eos_token': '<|im_end|>', 'chat_template': REWRITING})
    write_json(plain, 'tokenizer_config.json', {'eos_token': '<|im_end|>'})
    return {'kept': folder, 'rewriting': str(rewriting), 'plain': str(plain)}


def recompute(folder, lines, max_new_tokens=MAX_NEW, system=''):
    """What the chat on folder answers to lines, each reply generated from scratch (model.generate on the whole
    conversation, greedy) and cut at its first stop id: the stdout expected (without the end's newline), each
    reply's ids, the tokens each turn can keep from the one before, the turns each drops, the messages refused."""
    model, _ = checkpoint.load_model(folder)
    tok = HFTokenizer(folder)
    room = model.config.block_size - max_new_tokens
    first = [{'role': 'system', 'content': system}] if system else []
    messages, ran, out = list(first), [], dict(stdout='', ids=[], kept=[], dropped=[], refused=0)
    for line in lines:
        out['stdout'] += 'you> '
        if line == '/exit':
            break
        if line == '/reset':
            messages, ran = list(first), []
            continue
        message = {'role': 'user', 'content': line}
        if len(tok.encode(tok.render_chat(first + [message]), bos=False)) > room:
            out['refused'] += 1
            continue
        messages.append(message)
        dropped = 0
        while len(ids := tok.encode(tok.render_chat(messages), bos=False)) > room:
            del messages[len(first):len(first) + 2]  # the oldest user message and its reply
            dropped += 1
        generated = model.generate(torch.tensor([ids]), max_new_tokens, temperature=0)[0, len(ids):].tolist()
        reply = sample.until_stop(generated, 0, tok.stop_ids)
        out['kept'].append(len(ran) if ids[:len(ran)] == ran else 0)
        ran = ids + reply
        messages.append({'role': 'assistant', 'content': tok.decode(reply)})
        out['stdout'] += tok.decode(reply) + '\n'
        out['ids'].append(reply)
        out['dropped'].append(dropped)
    return out


def chat(folder, lines, *argv):
    """sample.py --chat=True on folder as a user runs it, lines written to its stdin (then its end)."""
    command = [sys.executable, os.path.join(ROOT, 'sample.py'), f'--init_from={folder}', *ARGS, *argv]
    return subprocess.run(command, input=''.join(line + '\n' for line in lines), capture_output=True, text=True,
                          cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=TIMEOUT)


def kept_in_cache(stderr):
    return [int(n) for n in re.findall(r'(\d+) of them kept in the cache', stderr)]


@pytest.mark.parametrize('template', ['kept', 'rewriting'])
def test_multi_turn_replies_equal_a_recomputation_from_scratch(folders, template):
    """Several turns, /reset, the same first message again, then the end of stdin (Ctrl-D): each reply equals the
    greedy reply recomputed from the whole conversation; with TEMPLATE the turns after the first run only the new
    tokens (the rest kept in the cache), with REWRITING each turn runs from the start; the reply after /reset
    equals the first; the end of input ends the chat, exit 0."""
    lines = ['hi', 'how?', 'more', '/reset', 'hi']
    expected = recompute(folders[template], lines)
    result = chat(folders[template], lines, f'--max_new_tokens={MAX_NEW}')
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
    assert result.stdout == expected['stdout'] + 'you> \n'
    assert expected['ids'][0] == expected['ids'][3]
    assert kept_in_cache(result.stderr) == expected['kept']
    assert result.stderr.count('(a new conversation)') == 1 and 'dropped' not in result.stderr
    if template == 'kept':
        assert len(expected['ids'][0]) == 3  # ended at the stop id
        assert expected['kept'][1] > 0 and expected['kept'][2] > expected['kept'][1]
    else:
        assert expected['kept'] == [0, 0, 0, 0]


def test_a_long_conversation_drops_its_oldest_turns(folders):
    """A context of 64 tokens less 30 for the reply: each turn that would overflow drops the oldest turns, with a
    one-line notice, and keeps the system message (the replies depend on it); a message too long even alone is
    refused with a notice and the conversation goes on; /exit ends the chat (the line after it is not read)."""
    lines = ['hi', 'how?', 'more', 'x' * 30, 'again', '/exit', 'hi']
    argv = ['--max_new_tokens=30', '--system=Be brief.']
    expected = recompute(folders['kept'], lines, max_new_tokens=30, system='Be brief.')
    result = chat(folders['kept'], lines, *argv)
    assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr
    assert result.stdout == expected['stdout']
    notices = re.findall(r'the conversation outgrew the context \(block_size 64, max_new_tokens=30 kept for the '
                         r'reply\): dropped its oldest (\d+) turns?\n', result.stderr)
    assert [int(n) for n in notices] == [n for n in expected['dropped'] if n] and sum(expected['dropped']) >= 2
    assert expected['refused'] == 1 and result.stderr.count('write a shorter one') == 1
    assert kept_in_cache(result.stderr) == expected['kept']


def test_ctrl_c_ends_the_chat_and_each_reply_comes_before_the_next_turn(folders):
    """The reply to a turn is on stdout while the chat waits for the next one (printed as it comes, not at the
    end); Ctrl-C (SIGINT) there ends the chat, exit 0, no traceback."""
    command = [sys.executable, os.path.join(ROOT, 'sample.py'), f"--init_from={folders['kept']}", *ARGS,
               f'--max_new_tokens={MAX_NEW}']
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1'))
    try:
        process.stdin.write(b'hi\n')
        process.stdin.flush()
        stdout = b''
        while stdout.count(b'you> ') < 2:  # the reply, then the prompt for the next turn
            assert select.select([process.stdout], [], [], TIMEOUT)[0], 'no reply'
            chunk = os.read(process.stdout.fileno(), 4096)
            assert chunk, f'the chat ended: {process.stderr.read().decode()}'
            stdout += chunk
        process.send_signal(signal.SIGINT)
        rest, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert (stdout + rest).decode() == recompute(folders['kept'], ['hi'])['stdout'] + 'you> \n'
    assert process.returncode == 0 and b'Traceback' not in stderr, stderr.decode()


def test_a_reply_streams_token_by_token(folders):
    """From Python: Chat.reply writes the reply in pieces as it is sampled, and they make the reply; the KV cache
    grows with the conversation."""
    model, _ = checkpoint.load_model(folders['kept'])
    cfg = configure(sample.DEFAULTS, ['--temperature=0', f'--max_new_tokens={MAX_NEW}'])
    chunks = []
    conversation = Chat(model.eval(), HFTokenizer(folders['kept']), machine.Machine('cpu', 'float32', compile=False),
                        cfg, write=chunks.append)
    reply = conversation.reply('how?')
    assert len(chunks) == len(recompute(folders['kept'], ['how?'])['ids'][0]) + 1 > 2  # a piece per token, '\n'
    assert ''.join(chunks) == reply + '\n' and conversation.messages[-1] == {'role': 'assistant', 'content': reply}
    # the cache grows with the conversation (its start copied over), not allocated to block_size at once
    assert conversation.reply('more') + '\n' == recompute(folders['kept'], ['how?', 'more'])['stdout'].split('you> ')[2]
    assert len(conversation.cached) <= conversation.cache.max_len < model.config.block_size


def test_bad_chat_options_are_one_line_errors(folders):
    """A model without a chat template is a one-line error from the command line; so are (ValueErrors, which
    sample.py turns into one line) max_new_tokens that leaves no room for the conversation and --num_samples or
    --out_file, which a chat does not use."""
    assert_one_line_error(chat(folders['plain'], ['hi'], f'--max_new_tokens={MAX_NEW}'), 'no chat template')
    model, _ = checkpoint.load_model(folders['kept'])
    tokenizer = HFTokenizer(folders['kept'])
    for argv, words in [(['--max_new_tokens=64'], 'max_new_tokens=64 leaves no room .* context of 64 tokens'),
                        (['--max_new_tokens=8', '--num_samples=2'], '--num_samples does not apply to a chat'),
                        (['--max_new_tokens=8', '--out_file=chat.txt'], '--out_file does not apply to a chat')]:
        with pytest.raises(ValueError, match=words):
            check_options(configure(sample.DEFAULTS, argv), model, tokenizer)
