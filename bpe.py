"""
Your own tokenizer: a byte-level BPE trained on your corpus with the `tokenizers` library (prepare.py
--tokenizer=bpe), and the compression report prepare.py prints for any dataset.

    python prepare.py data/shakespeare_char/input.txt --name=shakespeare_bpe --tokenizer=bpe --vocab_size=4096

The BPE is GPT-4's design: text is split by GPT-4's pre-tokenization pattern (words with their leading space or
punctuation, numbers of at most 3 digits, runs of spaces and newlines), each piece is seen as UTF-8 bytes (the
ByteLevel mapping: every byte one symbol, all 256 in the vocabulary from the start) and merges are learned on those,
so any text, emoji, CJK or broken UTF-8 included, encodes and decodes back exactly. The special tokens come first
(<|endoftext|>, the document separator, is id 0), then the 256 bytes, then the merges. Training is a pure function
of the text sample and the settings: the same corpus gives a byte-identical tokenizer.json, on any number of cores.
"""

import json
import os

from atomic import atomic_path

# GPT-4's (cl100k_base) pre-tokenization pattern, as tiktoken writes it
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                 r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
END_OF_TEXT = '<|endoftext|>'
MIN_VOCAB = 257  # the 256 bytes and <|endoftext|>


def check_settings(vocab_size, special_tokens, sample_bytes):
    """The BPE settings as one ValueError that names what is wrong, or the special tokens as a list."""
    specials = [END_OF_TEXT] + [t for t in (special_tokens.split(',') if special_tokens else []) if t != END_OF_TEXT]
    problems = []
    if not isinstance(vocab_size, int) or not MIN_VOCAB + len(specials) - 1 <= vocab_size <= 2 ** 32:
        problems.append(f'--vocab_size={vocab_size!r} must be a whole number from {MIN_VOCAB + len(specials) - 1} '
                        '(the 256 bytes and the special tokens) up, e.g. 4096 for Tiny Shakespeare, 32768 for a GB')
    if any(not t.strip() for t in specials) or len(set(specials)) < len(specials):
        problems.append(f'--special_tokens={special_tokens!r} must be distinct non-empty tokens separated by commas, '
                        'e.g. <|user|>,<|assistant|>')
    if not isinstance(sample_bytes, int) or sample_bytes < 1:
        problems.append(f'--tokenizer_sample_bytes={sample_bytes!r} must be a whole number of bytes, e.g. 100000000')
    if problems:
        raise ValueError('; '.join(problems))
    return specials


def untrained():
    """The BPE before training: GPT-4's split, then each piece's bytes as symbols; decoded back to bytes."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior='isolated'),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])  # bytes -> symbols, no regex of its own
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train(texts, folder, vocab_size, special_tokens, progress=True):
    """Train a byte-level BPE of vocab_size tokens on texts (an iterable of strings; merges never cross two of
    them) and write its tokenizer.json and tokenizer_config.json into folder, each atomically."""
    from tokenizers import pre_tokenizers, trainers
    tokenizer = untrained()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens, show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    os.makedirs(folder, exist_ok=True)
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'eos_token': END_OF_TEXT,  # transformers reads it too
              'additional_special_tokens': special_tokens[1:], 'clean_up_tokenization_spaces': False}
    files = {'tokenizer.json': tokenizer.to_str(pretty=True), 'tokenizer_config.json': json.dumps(config)}
    for name, text in files.items():
        with atomic_path(os.path.join(folder, name)) as tmp, open(tmp, 'w', encoding='utf-8') as f:
            f.write(text)


def tiktoken_encoding(tokenizer):
    """A tiktoken Encoding that gives the same ids as tokenizer (a tokenizer.HFTokenizer) when it is a BPE that this
    module trained (its split, bytes, decoder and no normalizer), else None. prepare.py encodes with it: tiktoken's
    BPE is ~5x faster than the tokenizers library's here (docs/benchmarks.md), and it applies the merges in the
    same order, lowest rank first (the ids are tested equal in tests/test_bpe.py)."""
    import tiktoken
    from tokenizers import pre_tokenizers
    state, ours = json.loads(tokenizer.backend.to_str()), json.loads(untrained().to_str())
    if any(state.get(key) != ours[key] for key in ('normalizer', 'pre_tokenizer', 'decoder')) or \
            state['model'].get('type') != 'BPE' or state['model'].get('byte_fallback') or state['model'].get('dropout'):
        return None
    printable = sorted(ord(c) for c in pre_tokenizers.ByteLevel.alphabet() if ord(c) < 256)
    shifted = [b for b in range(256) if b not in printable]  # GPT-2's map: these bytes are written as chr(256 + i)
    byte_of = {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(shifted)}}
    specials = {added.content: i for i, added in tokenizer.backend.get_added_tokens_decoder().items()}
    vocab = state['model']['vocab']
    ranks = {bytes(byte_of[c] for c in token): i for token, i in vocab.items() if token not in specials}
    return tiktoken.Encoding('bpe', pat_str=SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def sample(pieces, limit):
    """The texts of pieces (corpus.Piece) up to limit UTF-8 bytes in all: the training sample."""
    taken = 0
    for piece in pieces:
        if taken >= limit:
            return
        text = piece.text[:limit - taken]  # at least one byte a character: the cut is at or past limit bytes
        taken += len(text.encode('utf-8'))
        yield text


# ----------------------------------------------------------------------------------------------
# the compression report


def report(data_dir, model_config, max_tokens=1 << 22):
    """Lines on how well data_dir's tokenizer compresses its val split (the first max_tokens tokens of val.bin):
    UTF-8 bytes per token for it, GPT-2's BPE and characters, and its vocabulary's share of the parameters of the
    model that the config file model_config trains (its GPTConfig keys)."""
    from dataclasses import fields

    import numpy as np
    import torch

    import dataset
    import tokenizer as tokenizers
    from configurator import read_config_file
    from model import GPT, GPTConfig
    meta = dataset.load_meta(data_dir)
    tokenizer = tokenizers.for_data(data_dir)
    ids = np.fromfile(os.path.join(data_dir, 'val.bin'), dtype=dataset.token_dtype(meta), count=max_tokens)
    nbytes = tokenizers.byte_lengths(tokenizer)[ids]
    text = tokenizer.decode(ids[nbytes > 0].tolist())  # without the separators (and BOS): only text has bytes
    n_bytes = int(nbytes.sum())
    scope = 'val.bin' if len(ids) < max_tokens else f'the first {len(ids):,} tokens of val.bin'
    lines = [f'compression of {scope} ({n_bytes:,} bytes of UTF-8 text), in bytes per token:',
             f'  {"this dataset":<15}{n_bytes / max(1, int((nbytes > 0).sum())):6.2f}  '
             f'({tokenizer.name}, vocabulary {tokenizer.vocab_size:,})']
    try:
        import tiktoken
        gpt2 = tiktoken.get_encoding('gpt2')
        lines.append(f'  {"gpt2":<15}{n_bytes / max(1, len(gpt2.encode_ordinary(text))):6.2f}  (vocabulary 50,257)')
    except Exception as e:  # a report, not a reason to fail: tiktoken downloads GPT-2's encoding on first use
        lines.append(f'  {"gpt2":<15}     -  (its encoding cannot be loaded: {type(e).__name__}; tiktoken downloads '
                     'it on first use, or reads TIKTOKEN_CACHE_DIR)')
    lines.append(f'  {"characters":<15}{n_bytes / max(1, len(text)):6.2f}  ({len(set(text)):,} distinct in this text)')
    names = {f.name for f in fields(GPTConfig)}
    architecture = {k: v for k, v in read_config_file(model_config, {}).items() if k in names}
    architecture['vocab_size'] = dataset.padded_vocab(tokenizer.vocab_size)
    with torch.device('meta'):  # the parameters counted, not allocated
        model = GPT(GPTConfig(**architecture))
    total, vocabulary = model.get_num_params(), model.transformer.wte.weight.numel()
    lines.append(f'the embedding ({architecture["vocab_size"]:,} x {model.config.n_embd}, tied with lm_head) is '
                 f'{vocabulary / total:.0%} of the {total / 1e6:.2f}M parameters of {model_config}\'s model '
                 '(--report_model=CONFIG_FILE for another)')
    return lines
