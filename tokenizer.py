"""
Text <-> token ids: the tokenizer of a prepared dataset (its meta.pkl: characters, a tiktoken encoding, or the
Hugging Face tokenizer.json that prepare.py copied beside the bins; no meta.pkl means GPT-2's BPE), and the one a
model was trained with or came with (a Hugging Face folder's tokenizer.json).

    tokenizer = tokenizers.for_model(model, source)       # sample.py, evaluate.py (import tokenizer as tokenizers)
    tokenizer = tokenizers.for_data('data/shakespeare')   # a prepared dataset's
    ids = tokenizer.encode('Hello')                       # with a BOS first where the model family wants one
    text = tokenizer.decode(ids)
    prompt = tokenizer.render_chat([{'role': 'user', 'content': 'Hi'}])  # the folder's chat template
    tokenizer.stop_ids                                    # generation ends at these: EOS, <|im_end|>, <|eot_id|>...

A Hugging Face tokenizer is read from fixed file names in its folder (TOKENIZER_FILES; a hub id's are downloaded
with huggingface_hub): tokenizer.json by the `tokenizers` library, the others as JSON and text. Its chat template
runs in jinja2's immutable sandbox, as transformers runs it: it formats the messages it is given and can reach
nothing else (no Python internals, no import, no file), so a hostile template fails in one line.
"""

import functools
import hashlib
import json
import os
import re

import dataset
from atomic import inside
from configurator import one_line

# the files of a Hugging Face tokenizer, the only names read in its folder (and copied by prepare.py)
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json',
                   'chat_template.jinja')
SPECIAL_TOKENS = ('bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token')
HUB_ID = re.compile(r'[\w.-]+/[\w.-]+')  # owner/name
# The chat template of a tokenizer that has none (GPT-2's and the other tiktoken encodings, characters, a BPE made
# by prepare.py --tokenizer=bpe), for prepare.py --format=chat: each turn is <|role|>, a newline and its content, then
# a newline; an assistant's turn ends with the end-of-text token instead, which the model learns to emit to stop:
#     <|user|>\nHi\n<|assistant|>\nHello!<|endoftext|>
DEFAULT_CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
                         "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
DEFAULT_EOS_TOKEN = '<|endoftext|>'  # its eos_token where the tokenizer names none: GPT-2's, as text for characters


class Tokenizer:
    """encode(str) -> list[int] and decode(list[int]) -> str for a dataset's meta (None means GPT-2 BPE).
    vocab_size is the number of ids it can decode: a model's vocabulary may be larger (GPT-2's padded 50304).
    Neither adds a BOS; only the data of a chat preparation (prepare.py --format=chat) has a chat template, the
    one it was rendered with, and with tiktoken it ends generation at <|endoftext|> (else nanoGPT's: it does not)."""

    stop_ids = ()

    def __init__(self, meta=None):
        self.fingerprint = dataset.fingerprint(meta)
        meta = meta or {'tokenizer': 'gpt2'}
        self.name = meta['tokenizer']
        if self.name == 'char':
            self.stoi, self.itos = meta['stoi'], meta['itos']
            self.vocab_size = len(self.stoi)
        else:
            import tiktoken
            try:
                self.enc = tiktoken.get_encoding(self.name)
            except ValueError:
                raise ValueError(f'unknown tokenizer {self.name!r} in meta.pkl: it is not a tiktoken encoding') from None
            self.vocab_size = self.enc.n_vocab
        self.chat_template = meta.get('chat_template')  # DEFAULT_CHAT_TEMPLATE: the assistant's turn ends with EOS
        if self.chat_template and self.name != 'char':
            self.stop_ids = (self.enc.eot_token,)

    def encode(self, text, bos=True):  # bos: for the interface's sake, there is none to add
        if self.name == 'char':
            unknown = sorted(set(c for c in text if c not in self.stoi))
            if unknown:
                raise ValueError(f'the text has characters missing from the vocabulary: {"".join(unknown)!r} '
                                 f'({len(unknown)} of them); the model knows only {"".join(sorted(self.stoi))!r}')
            return [self.stoi[c] for c in text]
        return self.enc.encode(text, allowed_special={'<|endoftext|>'})

    def decode(self, ids):
        if self.name == 'char':
            return ''.join(self.itos[i] for i in ids)
        return self.enc.decode(ids)

    def render_chat(self, messages, add_generation_prompt=True):
        if self.chat_template is None:
            raise ValueError(f'the {self.name} tokenizer has no chat template: chat needs a model whose folder has a '
                             'tokenizer.json and a chat template (tokenizer_config.json or chat_template.jinja), or '
                             'one finetuned on data of prepare.py --format=chat')
        return render_template(self.chat_template, messages, add_generation_prompt,
                               {'eos_token': DEFAULT_EOS_TOKEN}, 'the chat template of the dataset')


class HFTokenizer:
    """A Hugging Face folder's tokenizer: tokenizer.json (the `tokenizers` library), the special tokens of
    tokenizer_config.json (else special_tokens_map.json), the stop ids of generation_config.json, the chat template.
    encode adds the BOS where the family does (Llama, TinyLlama; not Qwen or SmolLM2): the config's add_bos_token,
    else what tokenizer.json's post-processor puts first; decode leaves that BOS out, so decode(encode(s)) == s."""

    name = 'tokenizer.json'

    def __init__(self, folder, data_chat_template=None):
        """data_chat_template: the template a dataset's conversations were rendered with (meta.pkl's), used where the
        folder has none: a model finetuned on that data chats in it."""
        from tokenizers import Tokenizer as Backend
        self.folder = folder
        path = os.path.join(folder, 'tokenizer.json')
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{folder} has no tokenizer.json: give the folder of a Hugging Face model or '
                                    'tokenizer (its tokenizer.json, tokenizer_config.json...)')
        try:
            self.backend = Backend.from_file(path)
        except Exception as e:  # the library raises plain Exceptions
            raise ValueError(f'{path} is not a readable tokenizer.json ({one_line(e)}): it is damaged or not '
                             'a Hugging Face tokenizer; copy it again from the model') from None
        config = {**read_json(folder, 'special_tokens_map.json'), **read_json(folder, 'tokenizer_config.json')}
        vocab = self.backend.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values(), default=-1) + 1
        # the tokens by id: what the ids of a dataset or a checkpoint mean (dataset.fingerprint records it)
        tokens_by_id = json.dumps(sorted((i, t) for t, i in vocab.items()))
        self.fingerprint = hashlib.sha256(tokens_by_id.encode()).hexdigest()[:16]
        self.special_tokens = {key: token_text(config[key], key, folder) for key in SPECIAL_TOKENS if config.get(key)}
        self.bos_id, self.eos_id = self.token_id('bos_token'), self.token_id('eos_token')
        post_processor_bos = self.bos_id is not None and self.backend.encode('').ids[:1] == [self.bos_id]
        self.add_bos = self.bos_id is not None and bool(config.get('add_bos_token', post_processor_bos))
        generation_eos = read_json(folder, 'generation_config.json').get('eos_token_id')
        self.stop_ids = tuple(sorted({self.eos_id, *token_ids(generation_eos, self.vocab_size, folder)} - {None}))
        self.chat_template = read_chat_template(folder, config) or data_chat_template

    def token_id(self, key):
        if key not in self.special_tokens:
            return None
        token_id = self.backend.token_to_id(self.special_tokens[key])
        if token_id is None:
            raise ValueError(f'{self.folder}: the {key} {self.special_tokens[key]!r} of tokenizer_config.json is not '
                             'a token of tokenizer.json: the two files are from different tokenizers')
        return token_id

    def encode(self, text, bos=True):
        """text's ids, after the family's BOS when bos (a rendered chat carries its own: bos=False)."""
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if bos and self.add_bos else ids

    def decode(self, ids):
        ids = list(ids)
        if self.add_bos and ids[:1] == [self.bos_id]:
            ids = ids[1:]
        return self.backend.decode(ids, skip_special_tokens=False)

    def render_chat(self, messages, add_generation_prompt=True):
        """The chat template's text for messages ([{'role': ..., 'content': ...}]), ending with the assistant's turn
        opened when add_generation_prompt; as transformers' apply_chat_template renders it."""
        if self.chat_template is None:
            raise ValueError(f'{self.folder} has no chat template (in tokenizer_config.json or chat_template.jinja): '
                             'this is a base model: give it plain text, or finetune it on data of prepare.py '
                             '--format=chat')
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ValueError(f'messages must be a list of dicts such as {{"role": "user", "content": "Hi"}}, '
                             f'not {type(messages).__name__}')
        return render_template(self.chat_template, messages, add_generation_prompt, self.special_tokens,
                               f'the chat template of {self.folder}')


def render_template(template, messages, add_generation_prompt, special_tokens, what):
    """A chat template's text for messages, rendered in the sandbox (compile_template) with the special tokens as
    variables (bos_token, eos_token...); what names the template in the one-line error of a failure."""
    from jinja2.exceptions import SecurityError
    try:
        return compile_template(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                 tools=None, documents=None, **special_tokens)
    except Exception as e:  # a template's own error, or one the sandbox raised for what it may not do
        raise ValueError(f'{what} failed ({one_line(e)})' + (': it tried what a template may not do'
                         if isinstance(e, SecurityError) else ': fix the template or the messages')) from None


@functools.lru_cache(maxsize=8)
def compile_template(source):
    """The chat template compiled in jinja2's immutable sandbox, with transformers' settings and helpers."""
    import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # no HTML escaping
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters['tojson'] = tojson
    env.globals.update(raise_exception=raise_exception,
                       strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f'the chat template is not a valid jinja2 template (line {e.lineno}: {e.message})') from None


def read_json(folder, name):
    """A JSON object from folder/name, {} when the file is absent."""
    import hf  # the reader of a Hugging Face folder's JSON files
    path = os.path.join(folder, name)
    return hf.read_json(path, 'a JSON object') if os.path.exists(path) else {}


def token_text(value, key, folder):
    """A special token as tokenizer_config.json writes it: its text, or {"content": text, ...} (an AddedToken)."""
    text = value.get('content') if isinstance(value, dict) else value
    if not isinstance(text, str):
        raise ValueError(f'{folder}/tokenizer_config.json: {key}={value!r} is not a token (a string, or an object '
                         'with "content"): the file is damaged')
    return text


def token_ids(value, vocab_size, folder):
    """generation_config.json's eos_token_id: an id, a list of ids or nothing."""
    ids = [] if value is None else value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size for i in ids):
        raise ValueError(f'{folder}/generation_config.json: eos_token_id={value!r} is not a token id (or a list of '
                         f'them) below the vocabulary size {vocab_size}: the file is damaged')
    return ids


def read_chat_template(folder, config):
    """chat_template.jinja (where transformers 4.5x and later save it), else tokenizer_config.json's chat_template:
    a string, or a list of named templates of which 'default' is the one used."""
    path = os.path.join(folder, 'chat_template.jinja')
    if os.path.exists(path):
        try:
            with open(path, encoding='utf-8') as f:
                return f.read()
        except (OSError, ValueError) as e:
            raise ValueError(f'{path} is unreadable ({one_line(e)}): copy it again from the model') from None
    template = config.get('chat_template')
    if isinstance(template, list):
        named = {t.get('name'): t.get('template') for t in template if isinstance(t, dict)}
        template = named.get('default')
    if template is not None and not isinstance(template, str):
        raise ValueError(f'{folder}/tokenizer_config.json: chat_template is a {type(template).__name__}, not a '
                         'template (a string, or a list of {"name", "template"}): the file is damaged')
    return template


# ----------------------------------------------------------------------------------------------
# which tokenizer: of a dataset, of a model, of prepare.py's --tokenizer


def for_data(data_dir):
    """The tokenizer data_dir's bins were made with (its meta.pkl; none means GPT-2's BPE)."""
    meta = dataset.load_meta(data_dir)
    if meta is None or meta['tokenizer'] != HFTokenizer.name:
        return Tokenizer(meta)
    for name in TOKENIZER_FILES:  # prepare.py copied these in: a link out of the folder was planted
        inside(data_dir, name)
    tokenizer = HFTokenizer(data_dir, meta.get('chat_template'))
    if tokenizer.fingerprint != meta['fingerprint']:
        raise ValueError(f'{data_dir}/tokenizer.json is not the tokenizer its bins were made with (fingerprint '
                         f"{tokenizer.fingerprint}, meta.pkl has {meta['fingerprint']}): it was replaced; prepare "
                         'the dataset again')
    return tokenizer


def for_model(model, source, data_dir=''):
    """The tokenizer of data_dir, else of the data the source (checkpoint.load_model's) was trained on, else the
    pretrained model's own (its folder's tokenizer.json; GPT-2's BPE for gpt2*); checked against the fingerprint
    the checkpoint recorded and the model's vocab_size."""
    trained = (source.ckpt or {}).get('config') or {}
    if not data_dir and (trained.get('data_dir') or trained.get('dataset')):
        data_dir = dataset.folder(trained.get('dataset'), trained.get('data_dir'))
    if data_dir or source.ckpt is not None:
        meta = dataset.load_meta(data_dir) if data_dir else None
        dataset.check_fingerprint(trained.get('tokenizer'), meta, data_dir, source.path,
                                  'pass the --data_dir of the data it was trained on')
        tokenizer = for_data(data_dir) if data_dir else Tokenizer()
    else:
        tokenizer = of_pretrained(source.path)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f'the tokenizer ({tokenizer.name}, {tokenizer.vocab_size} tokens) does not fit the model '
                         f'(vocab_size={model.config.vocab_size}): pass the --data_dir of the data it was trained on')
    return tokenizer


def of_pretrained(name_or_path):
    """A pretrained model's tokenizer: its folder's tokenizer.json, or its hub repository's (downloaded); GPT-2's
    BPE for OpenAI's gpt2* and for a GPT-2 folder without a tokenizer.json."""
    import hf
    if os.path.isfile(os.path.join(name_or_path, 'tokenizer.json')):
        return HFTokenizer(name_or_path)
    if os.path.isdir(name_or_path) or name_or_path in hf.PRETRAINED:
        return Tokenizer()
    return HFTokenizer(download(name_or_path))


def hf_folder(name):
    """The folder of prepare.py's --tokenizer=NAME when it names a Hugging Face tokenizer (a folder with a
    tokenizer.json, or a hub id owner/name, downloaded), else None: 'char' or a tiktoken encoding."""
    import tiktoken
    if name == 'char' or name in tiktoken.list_encoding_names():
        return None
    if os.path.isdir(name):
        return name
    if HUB_ID.fullmatch(name):
        return download(name)
    raise ValueError(f"unknown tokenizer {name!r}: use char, a tiktoken encoding "
                     f"({', '.join(tiktoken.list_encoding_names())}), a folder with a tokenizer.json, or a Hugging "
                     'Face hub id such as HuggingFaceTB/SmolLM2-135M')


def download(repo_id):
    """The local folder of a hub repository's tokenizer files (TOKENIZER_FILES only), downloaded by huggingface_hub
    into its cache unless they are there already."""
    from huggingface_hub import snapshot_download
    try:
        return snapshot_download(repo_id, allow_patterns=list(TOKENIZER_FILES))
    except Exception as e:  # requests' errors are OSErrors, httpx's (huggingface_hub 1.0 and later) are not
        raise OSError(f'could not download the tokenizer of {repo_id} from the Hugging Face hub ({one_line(e, 120)}): '
                      'check the name and the network (and HF_HUB_OFFLINE), or download its tokenizer.json and '
                      'tokenizer_config.json into a folder and give that folder') from None


# ----------------------------------------------------------------------------------------------
# what each token stands for in bytes of text: bits per byte's denominator


def byte_lengths(tokenizer):
    """The UTF-8 bytes each token id stands for, an int64 array of tokenizer.vocab_size, so that the ids of a text
    add up to len(text.encode()): a character's own; a BPE token's raw bytes, part of a character or not (GPT-2's
    decode_single_token_bytes; a byte-level tokenizer.json writes each byte as one symbol; SentencePiece's <0xNN>
    is one byte and its ▁ a space); a special token (<|endoftext|>, BOS) none: it is no text."""
    import numpy as np
    lengths = np.zeros(tokenizer.vocab_size, np.int64)
    if tokenizer.name == 'char':
        for i, ch in tokenizer.itos.items():
            lengths[i] = len(ch.encode('utf-8', 'surrogatepass'))
    elif isinstance(tokenizer, HFTokenizer):
        from tokenizers import pre_tokenizers
        byte_symbols = set(pre_tokenizers.ByteLevel.alphabet())
        byte_level = 'ByteLevel' in json.dumps(json.loads(tokenizer.backend.to_str()).get('decoder'))
        for token, i in tokenizer.backend.get_vocab(with_added_tokens=False).items():
            if byte_level:
                lengths[i] = sum(1 if c in byte_symbols else len(c.encode('utf-8')) for c in token)
            elif re.fullmatch(r'<0x[0-9A-Fa-f]{2}>', token):  # SentencePiece's byte fallback
                lengths[i] = 1
            else:
                lengths[i] = len(token.replace('▁', ' ').encode('utf-8'))
        for i, added in tokenizer.backend.get_added_tokens_decoder().items():
            lengths[i] = 0 if added.special else len(added.content.encode('utf-8'))
    else:
        special = {tokenizer.enc.encode_single_token(t) for t in tokenizer.enc.special_tokens_set}
        for i in range(tokenizer.enc.n_vocab):
            if i not in special:
                try:
                    lengths[i] = len(tokenizer.enc.decode_single_token_bytes(i))
                except KeyError:  # an id the encoding leaves unused (cl100k_base has a few)
                    pass
    return lengths


def byte_table(data_dir, vocab_size, device):
    """byte_lengths of data_dir's tokenizer as a float64 tensor of vocab_size on device, for train.py's bits per
    byte; all 0, said once, when the tokenizer cannot be read (GPT-2's tiktoken encoding offline): no bpb."""
    import numpy as np
    import torch
    try:
        lengths = byte_lengths(for_data(data_dir))
    except Exception as e:  # a displayed number never stops a run
        print(f'note: no bits per byte for {data_dir}: its tokenizer cannot be read ({one_line(e)})')
        lengths = np.zeros(0, np.int64)
    return torch.from_numpy(np.pad(lengths, (0, max(0, vocab_size - len(lengths)))).astype(np.float64)).to(device)
