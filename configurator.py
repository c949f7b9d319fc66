"""nanoGPT's command line (config files and --key=value, in order), checked; and cli(): one line per bad input."""

import ast
import difflib
import os
import pathlib
import sys
import types
from collections.abc import Mapping


class ConfigError(ValueError):
    pass


class Config(Mapping):
    """Read-only settings, cfg.x or cfg['x']; `given`: the keys the command line set (a checkpoint's give way)."""

    def __init__(self, values, given=()):
        vars(self).update(_values=dict(values), given=frozenset(given))  # not through the read-only __setattr__

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __getattr__(self, key):  # for the names that are not attributes; _values itself while it is unset (copy)
        if key.startswith('_') or key not in self._values:
            raise AttributeError(f'no setting {key!r}')
        return self._values[key]

    def __setattr__(self, key, value):
        raise AttributeError(f'settings are read-only: cfg.replace({key}=...) makes a changed copy')

    def replace(self, **changes):
        return Config(dict(self._values, **changes), self.given)


def configure(defaults, argv, types_of_none=None):
    """`defaults` updated by argv, in order; a None default's type is in types_of_none ({'d_ff': int}), or None."""
    config, given = dict(defaults), set()
    for arg in argv:
        if arg in ('-h', '--help'):
            print('usage: python SCRIPT.py [config/FILE.py ...] [--key=value ...]\n\nkeys and their defaults:')
            print('\n'.join(f'  --{k}={v!r}' for k, v in defaults.items()))
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
            changes, source = {key: value}, f'--{key}'
        else:
            changes, source = read_config_file(arg, config), arg
        for key, value in changes.items():
            config[key] = check(defaults, key, value, source, types_of_none or {})
            given.add(key)
    return Config(config, given)


def read_config_file(path, config):
    """The names a config file assigns (it runs with the current config visible to it)."""
    if not os.path.isfile(path):
        here = os.path.dirname(path) or '.'
        options = [f for f in os.listdir(here) if f.endswith('.py')] if os.path.isdir(here) else []
        close = difflib.get_close_matches(os.path.basename(path), options, n=3)
        hint = f" (did you mean {', '.join(os.path.join(here, c) for c in close)}?)" if close else ''
        raise ConfigError(f'config file {path} not found{hint}; an override is written --key=value')
    namespace = dict(config)
    try:
        exec(compile(pathlib.Path(path).read_text(), path, 'exec'), namespace)
    except Exception as e:  # the config file is user code: report where it broke, in one line
        at = f" line {e.lineno}" if getattr(e, 'lineno', None) else ''
        raise ConfigError(f'config file {path}{at} failed: {type(e).__name__}: {e}') from None
    return {k: v for k, v in namespace.items()
            if not k.startswith('_') and not isinstance(v, (types.ModuleType, types.FunctionType, type))
            and (k not in config or v is not config[k])}


def check(defaults, key, value, source, types_of_none):
    """The value to store for key, or a ConfigError saying what is wrong with it."""
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else '; see --help for the known keys'
        raise ConfigError(f'unknown config key {key!r} in {source}{hint}')
    expected = type(defaults[key]) if defaults[key] is not None else types_of_none.get(key)
    if expected is None or (value is None and key in types_of_none):
        return value
    if (expected is float and isinstance(value, int) and not isinstance(value, bool)
            or expected is int and isinstance(value, float) and value.is_integer()):
        return expected(value)  # --learning_rate=1, --max_iters=1e4
    if not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
        raise ConfigError(f'{key} expects {expected.__name__}, got {value!r} ({type(value).__name__}) in {source}')
    return value


def one_line(e, limit=200):
    """An exception as one line of at most `limit` characters, for the error message that explains it."""
    return ' '.join(f'{type(e).__name__}: {e}'.split())[:limit]


def cli(main):
    """Run main(): bad input (ValueError, OSError) is one line on stderr and exit code 1 (TRACEBACK=1 shows it all)."""
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
