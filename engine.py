"""
The inference engine behind serve.py: one worker thread owns the model and generates for every request at once.

    engine = Engine(model, tokenizer, machine, max_batch=16, max_queue=64)
    job = engine.submit(prompt_ids, Sampling(max_tokens=50, temperature=0.8, seed=1), emit)  # emit(event): worker
    job.cancel()                                                                          # the client went away

Jobs admitted together whose prompts have the same length are prefilled as one batch; each decode step then runs
one forward per group of rows at the same position (a group shares one KV cache). A group a little ahead of
another skips steps until the one behind reaches its position, and the two merge. New jobs join between steps.
Each job samples its n rows with its own torch.Generator, so what it gets does not depend on what else is in the
batch. Text is decoded here: a stop string or a stop id ends a row, and text that may still be the start of a stop
string is held back, so a stream says what one reply says.
"""

import collections
import threading
import time
import traceback
from dataclasses import dataclass

import torch

from model import KVCache, sample_next


CATCH_UP = 64  # how far ahead (positions) a group waits for one behind it, and how many steps it may wait in all


class QueueFull(Exception):
    """More jobs are waiting than max_queue: the caller should answer 429 and retry later."""


class Stopped(Exception):
    """The engine is closed (the server is stopping): it takes no more jobs."""


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 1.0  # 0 is greedy
    top_k: int = None
    top_p: float = 1.0
    n: int = 1  # completions of the one prompt
    seed: int = None  # None: a fresh random seed
    stop: tuple = ()  # strings that end a completion (and are not part of it)


class Job:
    """A request in the engine. emit(event) is called from the worker thread with ('text', index, delta),
    ('done', index, finish_reason, completion_tokens) or ('error', message)."""

    def __init__(self, prompt_ids, sampling, emit, prompt_chars, device):
        self.prompt_ids, self.sampling, self.emit, self.prompt_chars = prompt_ids, sampling, emit, prompt_chars
        self.generator = torch.Generator(device)
        if sampling.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(sampling.seed)
        self.cancelled = False

    def cancel(self):
        self.cancelled = True  # read by the worker between steps: the job's rows leave the batch there


class Row:
    """One completion of a job: its choice index, every token id so far (the prompt's first), characters sent."""

    def __init__(self, job, index):
        self.job, self.index, self.ids, self.generated, self.sent = job, index, list(job.prompt_ids), 0, 0


@dataclass
class Group:
    """Rows at the same position: one KV cache, one forward per step; logits (B, 1, vocab) of the last forward.
    A job's rows are always next to each other."""
    rows: list
    cache: KVCache
    logits: torch.Tensor
    waited: int = 0  # steps skipped so that groups behind could catch up


class Engine:
    def __init__(self, model, tokenizer, machine, max_batch=16, max_queue=64, batch_wait=0.01, stop_ids=()):
        self.model, self.tokenizer, self.machine = model, tokenizer, machine
        self.max_batch, self.max_queue, self.batch_wait = max_batch, max_queue, batch_wait
        self.stop_ids = frozenset(stop_ids)
        self.block_size = model.config.block_size
        self.waiting = collections.deque()
        self.groups = []  # the worker's alone
        self.running = 0  # rows in the groups
        self.rows_per_step = collections.Counter()  # a decode forward's batch size -> how many ran at it
        self.lock = threading.Condition()
        self.closed = False
        self.worker = threading.Thread(target=self.run, name='engine', daemon=True)
        self.worker.start()

    def submit(self, prompt_ids, sampling, emit):
        """Queue a job; QueueFull when max_queue jobs already wait. prompt_ids: 1..block_size ids, checked by the
        caller (serving.py truncates or refuses longer prompts)."""
        assert 0 < len(prompt_ids) <= self.block_size and sampling.n <= self.max_batch, 'checked by the caller'
        job = Job(list(prompt_ids), sampling, emit, len(self.tokenizer.decode(prompt_ids)), self.machine.device)
        with self.lock:
            if self.closed:
                raise Stopped('the server is stopping')
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f'{len(self.waiting)} requests are already waiting (max_queue={self.max_queue})')
            self.waiting.append(job)
            self.lock.notify()
        return job

    def stats(self):
        with self.lock:
            return {'running': self.running, 'waiting': len(self.waiting),
                    'rows_per_step': {str(k): v for k, v in sorted(self.rows_per_step.items())}}

    def close(self):
        with self.lock:
            self.closed = True
            self.lock.notify()
        self.worker.join(timeout=10)

    # ---- the worker thread ----------------------------------------------------------------------------------

    def run(self):
        try:
            with torch.no_grad(), self.machine.autocast():  # autocast is per thread: entered here, where it runs
                kind = self.machine.device_type
                self.cache_dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) \
                    else self.model.lm_head.weight.dtype
                while (jobs := self.admit()) is not None:
                    sizes = []
                    try:
                        self.prefill(jobs)
                        sizes = self.step()
                    except Exception as e:  # a bug fails the requests in flight, not the server
                        traceback.print_exc()
                        self.fail(jobs + self.running_jobs(), f'generation failed: {type(e).__name__}: {e}')
                        self.groups = []
                    with self.lock:  # what stats() reads, written under the lock
                        self.running = sum(len(group.rows) for group in self.groups)
                        self.rows_per_step.update(sizes)
        finally:  # closed, or the worker itself broke: no request may wait for it
            with self.lock:
                self.closed, waiting = True, list(self.waiting)
                self.waiting.clear()
            self.fail(waiting + self.running_jobs(), 'the server is stopping')

    def running_jobs(self):
        return [row.job for group in self.groups for row in group.rows]

    @staticmethod
    def fail(jobs, message):
        for job in dict.fromkeys(jobs):  # each once, in order
            job.emit(('error', message))

    def admit(self):
        """The waiting jobs that fit in the batch now (None once closed). With nothing running, waits for a job, then
        until batch_wait seconds pass with no other arriving (at most 10 x batch_wait, or a full batch): requests that
        arrive together, a burst of them a few milliseconds apart, start together."""
        with self.lock:
            if not self.groups:
                while not self.waiting and not self.closed:
                    self.lock.wait()
                give_up = time.monotonic() + 10 * self.batch_wait
                while not self.closed and sum(j.sampling.n for j in self.waiting) < self.max_batch:
                    arrived = len(self.waiting)
                    self.lock.wait(max(0.0, min(self.batch_wait, give_up - time.monotonic())))
                    if len(self.waiting) == arrived or time.monotonic() >= give_up:
                        break
            if self.closed:
                return None
            jobs = []
            while self.waiting and (self.waiting[0].cancelled
                                    or self.running + self.waiting[0].sampling.n <= self.max_batch):
                job = self.waiting.popleft()
                if not job.cancelled:
                    jobs.append(job)
                    self.running += job.sampling.n
            return jobs

    def new_cache(self, batch_size):
        return KVCache(self.model.config, batch_size, self.block_size, self.machine.device, self.cache_dtype)

    def prefill(self, jobs):
        """One group per prompt length, its rows' prompts in one forward."""
        by_length = collections.defaultdict(list)
        for job in jobs:
            by_length[len(job.prompt_ids)].append(job)
        for same in by_length.values():
            rows = [Row(job, i) for job in same for i in range(job.sampling.n)]
            cache = self.new_cache(len(rows))
            logits, _ = self.model(torch.tensor([row.ids for row in rows], device=self.machine.device), kv_cache=cache)
            self.groups.append(Group(rows, cache, logits))

    def step(self):
        """One token for every row: sample, emit, drop the rows that ended, run the others' next forward; the
        forwards' batch sizes."""
        sizes = []
        waiting = [group for group in self.groups if self.lets_others_catch_up(group)]
        for group in [group for group in self.groups if group not in waiting]:
            tokens = self.sample(group)
            keep = [i for i, (row, token) in enumerate(zip(group.rows, tokens)) if self.advance(row, token)]
            if not keep:
                self.groups.remove(group)
                continue
            if len(keep) < len(group.rows):
                at = torch.tensor(keep, device=self.machine.device)
                group.rows = [group.rows[i] for i in keep]
                group.cache.k = [k.index_select(0, at) for k in group.cache.k]
                group.cache.v = [v.index_select(0, at) for v in group.cache.v]
            if group.cache.pos == self.block_size:  # full: start again from the last half context, as generate does
                group.cache = self.new_cache(len(group.rows))
                ids = [row.ids[-(self.block_size // 2 or 1):] for row in group.rows]
            else:
                ids = [row.ids[-1:] for row in group.rows]
            group.logits, _ = self.model(torch.tensor(ids, device=self.machine.device), kv_cache=group.cache)
            sizes.append(len(group.rows))
        self.merge()
        return sizes

    def lets_others_catch_up(self, group):
        """Whether the group skips this step so that a group a little behind reaches its position and merges with it:
        one forward per step from then on instead of two. Each group skips at most CATCH_UP steps in all: none starves.
        """
        if group.waited < CATCH_UP and any(0 < group.cache.pos - other.cache.pos <= CATCH_UP for other in self.groups):
            group.waited += 1
            return True
        return False

    def sample(self, group):
        """Each job's next tokens from its rows' logits with its own generator: the list of B token ids."""
        logits = group.logits[:, -1, :self.tokenizer.vocab_size]
        tokens, start = [], 0
        while start < len(group.rows):
            job = group.rows[start].job
            end = start + 1
            while end < len(group.rows) and group.rows[end].job is job:
                end += 1
            s = job.sampling
            tokens.append(sample_next(logits[start:end], s.temperature, s.top_k, s.top_p, job.generator))
            start = end
        return torch.cat(tokens).view(-1).tolist()

    def advance(self, row, token):
        """Add token to the row and emit its new text; False when the row has ended (or its job was cancelled)."""
        job, s = row.job, row.job.sampling
        if job.cancelled:
            return False
        row.generated += 1
        finish = 'stop' if token in self.stop_ids else None
        if not finish:
            row.ids.append(token)
        text = self.tokenizer.decode(row.ids)[job.prompt_chars:]
        cut = min((i for i in (text.find(stop) for stop in s.stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], 'stop'
        elif not finish and row.generated >= s.max_tokens:
            finish = 'length'
        ready = text if finish else settled(text, s.stop)
        if len(ready) > row.sent:
            job.emit(('text', row.index, ready[row.sent:]))
            row.sent = len(ready)
        if finish:
            job.emit(('done', row.index, finish, row.generated))
        return not finish

    def merge(self):
        """Groups that reached the same position become one (a wider batch for the next steps)."""
        at_position = {}
        for group in list(self.groups):
            other = at_position.setdefault(group.cache.pos, group)
            if other is not group:
                other.rows += group.rows
                other.cache.k = [torch.cat(pair) for pair in zip(other.cache.k, group.cache.k)]
                other.cache.v = [torch.cat(pair) for pair in zip(other.cache.v, group.cache.v)]
                other.logits = torch.cat((other.logits, group.logits))
                other.waited = max(other.waited, group.waited)
                self.groups.remove(group)


def settled(text, stops):
    """The part of a growing text that will not change: less a partial UTF-8 character at its end (decoded as
    U+FFFD) and less an end that may be the start of a stop string."""
    text = text.rstrip('\ufffd')
    for k in range(min(len(text), max(map(len, stops), default=1) - 1), 0, -1):
        if any(stop.startswith(text[-k:]) for stop in stops):
            return text[:-k]
    return text
