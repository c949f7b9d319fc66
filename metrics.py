"""
out_dir/metrics.jsonl read back: for plot.py and the pictures (curves.py), and for a resumed run, which keeps the
records up to its checkpoint. runlog.py writes the file: strict JSON, one record per line.

    records = metrics.read_records('out/metrics.jsonl')   # [{'iter': 0, 'tokens': 0, 'train_loss': ..., ...}, ...]
"""

import json
import math
import os
import sys
from pathlib import Path

TEXTS = ('warning', 'message', 'reference')  # a record's text fields: a warning's (health.py), the reference's name


def read_records(path, before=math.inf, quiet=False):
    """metrics.jsonl's records; for a run resumed at iteration `before`, those up to it but its evaluation and what
    follows that (it evaluates that iteration again): its step and the warnings about the step stay. Lines that are
    not records are counted on stderr, but the last (a kill's)."""
    lines = Path(path).read_text().split('\n') if os.path.exists(path) else []
    records, foreign, evaluated = [], 0, False
    for i, line in enumerate(lines):
        try:
            r = record_of(line)
        except ValueError:
            foreign += bool(line.strip()) and i < len(lines) - 1  # not the last line: a kill cuts only that one
            continue
        evaluated |= r['iter'] == before and 'loss' not in r and 'warning' not in r
        if r['iter'] < before or (r['iter'] == before and not evaluated):
            records.append(r)
    if foreign and not quiet:
        print(f'note: {path}: skipped {foreign} line{"s" * (foreign > 1)} that are not records of train.py',
              file=sys.stderr)
    return records


def record_of(line):
    """A metrics.jsonl line as a record (NaN and infinities, which an older version wrote, as null), or a ValueError."""
    r = json.loads(line)
    if not isinstance(r, dict) or type(r.get('iter')) is not int or r['iter'] < 0 or not all(
            v is None or type(v) in (int, float) or k in TEXTS and type(v) is str for k, v in r.items()):
        raise ValueError('not a record')
    return {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in r.items()}
