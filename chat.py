"""
A chat in the terminal in the model's chat template: what `sample.py --chat=True` runs when no --start is given.

    python sample.py --init_from=path/to/SmolLM2-135M-Instruct --chat=True
    python sample.py --init_from=path/to/Qwen2.5-0.5B-Instruct --chat=True --system="Be brief." --max_new_tokens=200

Each line read after `you> ` is the user's turn: the whole conversation is rendered with the template, the
assistant's turn opened, and the reply is printed as it is sampled until a stop id (or max_new_tokens); it joins
the conversation. /reset starts a new conversation; /exit, Ctrl-D or Ctrl-C ends. The keys and values of the tokens
run so far stay in a KV cache across turns: when the newly rendered conversation starts with those tokens, only
the rest is run; a template that rewrites earlier turns (one that drops their thinking) is run from its start.
A conversation that leaves less than max_new_tokens of the context drops its oldest turns, with a notice.
"""

import contextlib
import sys
import time

import torch

import machine as machines
from model import KVCache, sample_next
from sampling import Streamer, print_now


class Chat:
    """A conversation with the model: its messages, and the KV cache that holds the keys and values of `cached`,
    the token ids run so far (the last rendered conversation and the reply sampled after it)."""

    def __init__(self, model, tokenizer, machine, cfg, write=print_now):
        self.model, self.tokenizer, self.machine, self.cfg, self.write = model, tokenizer, machine, cfg, write
        self.room = model.config.block_size - cfg['max_new_tokens']  # for the conversation; the rest for the reply
        self.dtype = machines.DTYPES[machine.dtype] if machine.dtype != 'float32' else model.lm_head.weight.dtype
        self.cache = KVCache(model.config, 1, 0, machine.device, self.dtype)  # grown as the conversation grows
        self.system = opening(cfg)
        self.reset()

    def reset(self):
        self.messages, self.cached, self.cache.pos = list(self.system), [], 0

    def encode(self, messages):
        return self.tokenizer.encode(self.tokenizer.render_chat(messages), bos=False)  # the template writes the BOS

    def prompt(self):
        """The conversation's ids, the assistant's turn opened, after dropping its oldest turns (a user's message and
        the reply to it; the system message stays) while it leaves less than max_new_tokens of the context. None,
        and the user's last message is taken back, when that message does not fit even alone."""
        start = len(self.system)
        alone = len(self.encode(self.system + self.messages[-1:]))
        if alone > self.room:
            self.messages.pop()
            notice(f'that message is {alone} tokens in the template, more than the {self.room} the context '
                   f"(block_size {self.model.config.block_size}) leaves beside max_new_tokens="
                   f"{self.cfg['max_new_tokens']}: write a shorter one")
            return None
        dropped = 0
        while len(ids := self.encode(self.messages)) > self.room:
            end = next(i for i in range(start + 1, len(self.messages)) if self.messages[i]['role'] == 'user')
            del self.messages[start:end]
            dropped += 1
        if dropped:
            notice(f'the conversation outgrew the context (block_size {self.model.config.block_size}, '
                   f"max_new_tokens={self.cfg['max_new_tokens']} kept for the reply): dropped its oldest "
                   f"{dropped} turn{'s' * (dropped > 1)}")
        return ids

    def grow(self, kept, needed):
        """A cache of at least `needed` positions, the first `kept` copied over: doubled as the conversation grows
        up to block_size, not allocated whole at the start (131,072 positions for Llama 3.2 would be gigabytes)."""
        if needed > self.cache.max_len:
            size = min(self.model.config.block_size, max(needed, 2 * self.cache.max_len))
            cache = KVCache(self.model.config, 1, size, self.machine.device, self.dtype)
            for old, new in zip(self.cache.k + self.cache.v, cache.k + cache.v):
                new[:, :, :kept] = old[:, :, :kept]
            self.cache = cache

    def run(self, ids):
        """Run ids after the cached tokens; the last one's logits (1, 1, vocab)."""
        self.cached += ids
        logits, _ = self.model(torch.tensor([ids], dtype=torch.long, device=self.machine.device), kv_cache=self.cache)
        return logits

    def reply(self, text):
        """Add the user's message text, write the assistant's reply as it is sampled and add it; returns the reply
        (None when the message does not fit in the context)."""
        self.messages.append({'role': 'user', 'content': text})
        ids = self.prompt()
        if ids is None:
            return None
        kept = len(self.cached) if len(ids) > len(self.cached) and ids[:len(self.cached)] == self.cached else 0
        self.grow(kept, len(ids) + self.cfg['max_new_tokens'])
        self.cached, self.cache.pos = self.cached[:kept], kept  # from the start when the template rewrote the past
        cfg, streamer, reply = self.cfg, Streamer(self.tokenizer, [], self.write), []
        t0 = time.time()
        with torch.no_grad(), self.machine.autocast():
            logits = self.run(ids[kept:])
            for _ in range(cfg['max_new_tokens']):
                token = sample_next(logits[:, -1, :self.tokenizer.vocab_size], cfg['temperature'], cfg['top_k'],
                                    cfg['top_p'])
                if streamer(token):  # a stop id: not part of the reply
                    break
                reply.append(token.item())
                logits = self.run(reply[-1:])  # also after the last token: the next turn starts with it
        dt = time.time() - t0
        text = self.tokenizer.decode(reply)
        self.write(text[streamer.printed:] + '\n')  # a partial character held back at max_new_tokens
        self.messages.append({'role': 'assistant', 'content': text})
        notice(f'({len(reply)} tokens in {dt:.1f}s, {len(reply) / max(dt, 1e-9):.0f} tokens/s; the conversation: '
               f'{len(ids)} tokens, {kept} of them kept in the cache)')
        return text


def notice(text):
    print(text, file=sys.stderr, flush=True)


def opening(cfg):
    """The messages that open every conversation: the system message, if any."""
    return [{'role': 'system', 'content': cfg['system']}] if cfg['system'] else []


def check_options(cfg, model, tokenizer):
    # a model without a chat template, or a template that fails, is a one-line error now, not after the first turn
    tokenizer.render_chat(opening(cfg) + [{'role': 'user', 'content': 'hi'}])
    if cfg['max_new_tokens'] >= model.config.block_size:
        raise ValueError(f"max_new_tokens={cfg['max_new_tokens']} leaves no room for the conversation in the "
                         f'context of {model.config.block_size} tokens: pass a smaller one, e.g. '
                         f'--max_new_tokens={model.config.block_size // 4}')
    for key in ('num_samples', 'out_file'):
        if key in cfg.given:
            raise ValueError(f'--{key} does not apply to a chat, which writes one reply per turn to the terminal: '
                             f'leave it out, or give --start to sample replies to one message')


def talk(model, tokenizer, machine, cfg):
    """The chat: read the user's turns from stdin until /exit or its end; returns the conversation's messages."""
    check_options(cfg, model, tokenizer)
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):  # not on every platform
            import readline  # noqa: F401  line editing and history for input()
    chat = Chat(model, tokenizer, machine, cfg)
    try:
        while (line := input('you> ').strip()) != '/exit':
            if line == '/reset':
                chat.reset()
                notice('(a new conversation)')
            elif line:
                chat.reply(line)
    except (EOFError, KeyboardInterrupt):  # Ctrl-D, Ctrl-C: the end of the chat, not an error
        print_now('\n')
    return chat.messages
