"""
The command line, as in nanoGPT: config files, then --key=value overrides, applied in order; and the
one-line error that every script ends with when its input is wrong.

    python train.py config/train_shakespeare_char.py --batch_size=32 --compile=False

A config file is plain Python assignments (`n_layer = 6`); it may read the values set before it.
An override's value is parsed as a Python literal (`--lr=3e-4`, `--compile=False`) and kept as a
string when it is not one (`--device=cpu`). Unlike nanoGPT, an unknown key, a value of the wrong
type and a missing file are errors (ConfigError) that say what to write instead.
"""

import ast
import difflib
import os
import sys
import types
from collections.abc import Mapping


class ConfigError(ValueError):
    pass


class Config(Mapping):
    """A script's settings, read-only: cfg.batch_size (or cfg['batch_size']). `given` is the set of keys the
    command line set, by a config file or an override: what a checkpoint's own values must give way to."""

    def __init__(self, values, given=()):
        object.__setattr__(self, '_values', dict(values))
        object.__setattr__(self, 'given', frozenset(given))

    def __getitem__(self, key):
        return self._values[key]

    def __getattr__(self, key):
        if key.startswith('_'):
            raise AttributeError(key)
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f'no setting {key!r}') from None

    def __setattr__(self, key, value):
        raise AttributeError(f'settings are read-only: cfg.replace({key}=...) makes a changed copy')

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self):
        return f'Config({self._values!r})'

    def replace(self, **changes):
        return Config(dict(self._values, **changes), self.given)


def configure(defaults, argv, types_of_none=None):
    """A Config: `defaults` updated by argv (config file paths and --key=value), in order.
    The type of each key is the type of its default; for keys whose default is None,
    types_of_none gives it ({'d_ff': int}). The keys in types_of_none also accept None."""
    config = dict(defaults)
    types_of_none = types_of_none or {}
    given = set()
    for arg in argv:
        if arg in ('-h', '--help'):
            print(usage(defaults))
            raise SystemExit(0)
        if arg.startswith('--'):
            key, sep, text = arg[2:].partition('=')
            if not sep:
                raise ConfigError(f'{arg} has no value: write --{key}=VALUE')
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text  # a bare word such as cpu or resume is a string
            if isinstance(defaults.get(key), str) and not isinstance(value, str):
                value = text  # a string key keeps number-like text as it is: --start=1984, --out_dir=2024
            config[key] = check(defaults, key, value, f'--{key}', types_of_none)
            given.add(key)
        else:
            for key, value in read_config_file(arg, config).items():
                config[key] = check(defaults, key, value, arg, types_of_none)
                given.add(key)
    return Config(config, given)


def read_config_file(path, config):
    """The names a config file assigns (it runs with the current config visible to it)."""
    if not os.path.isfile(path):
        here = os.path.dirname(path) or '.'
        options = sorted(f for f in os.listdir(here) if f.endswith('.py')) if os.path.isdir(here) else []
        close = difflib.get_close_matches(os.path.basename(path), options, n=3)
        hint = f" (did you mean {', '.join(os.path.join(here, c) for c in close)}?)" if close else ''
        raise ConfigError(f'config file {path} not found{hint}; an override is written --key=value')
    namespace = dict(config)
    try:
        with open(path) as f:
            exec(compile(f.read(), path, 'exec'), namespace)
    except Exception as e:  # the config file is user code: report where it broke, in one line
        line = getattr(e, 'lineno', None)
        raise ConfigError(f'config file {path}{f" line {line}" if line else ""} failed: {type(e).__name__}: {e}') from None
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and not isinstance(v, (types.ModuleType, types.FunctionType, type))
            and (k not in config or v is not config[k])}


def check(defaults, key, value, source, types_of_none):
    """The value to store for key, or a ConfigError saying what is wrong with it."""
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else '; see --help for the known keys'
        raise ConfigError(f'unknown config key {key!r} in {source}{hint}')
    default = defaults[key]
    expected = type(default) if default is not None else types_of_none.get(key)
    if expected is None or (value is None and key in types_of_none):
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, float) and value.is_integer():
        return int(value)  # 1e4 for max_iters
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f'{key} expects {expected.__name__}, got {value!r} ({type(value).__name__}) in {source}')
    return value


def usage(defaults):
    lines = ['usage: python SCRIPT.py [config/FILE.py ...] [--key=value ...]', '', 'keys and their defaults:']
    lines += [f'  --{k}={v!r}' for k, v in defaults.items()]
    return '\n'.join(lines)


def one_line(e, limit=200):
    """An exception as one line of at most `limit` characters, for the error message that explains it."""
    return ' '.join(f'{type(e).__name__}: {e}'.split())[:limit]


def cli(main):
    """Run main(); an expected error (bad input: ValueError, OSError) becomes one line on stderr and
    exit code 1, a traceback meaning a bug. Set TRACEBACK=1 to see the traceback of any error."""
    try:
        main()
    except (ValueError, OSError) as e:
        if os.environ.get('TRACEBACK'):
            raise
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
