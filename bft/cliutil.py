"""What every `bft` subcommand shares, wherever it lives (bft/cli.py or a plugin's module):
`CliError`, the config loader with a clear error, and the state and key directories.

Plugins (adversary/, tui/) import these from here, never from bft/cli.py (which loads
the plugins: importing it from a plugin would be a cycle)."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any

from bft.config import (
    ClusterConfig,
    DuplicateKeyError,
    Keyring,
    default_state_dir,
    load_keyring,
)
from bft.errors import ConfigError

__all__ = ["CliError", "key_dir", "key_dir_reason", "load_config", "load_factory", "load_keys",
           "state_dir"]


class CliError(Exception):
    """A problem the user can fix (bad arguments, files in the way); printed without traceback."""


def load_config(path: Path) -> ClusterConfig:
    """The config at `path`; CliError if there is no such file, ConfigError if it is wrong."""
    if not Path(path).exists():
        raise CliError(f"config file not found: {path}")
    return ClusterConfig.load(path)


def state_dir(config: ClusterConfig, given: Path | None) -> Path:
    """`--state-dir` if given, else state/<cluster name>."""
    return Path(given) if given is not None else default_state_dir(config)


def key_dir(config: ClusterConfig, given_state_dir: Path | None,
            given_key_dir: Path | None = None) -> Path:
    """`--key-dir` if given, else the config's key_dir, else STATE_DIR/keys."""
    if given_key_dir is not None:
        return Path(given_key_dir)
    if config.key_dir is not None:
        return config.key_dir
    return state_dir(config, given_state_dir) / "keys"


def key_dir_reason(config: ClusterConfig, given_state_dir: Path | None,
                   given_key_dir: Path | None = None) -> str:
    """Why `key_dir(...)` chose its directory, for error messages."""
    if given_key_dir is not None:
        return "--key-dir"
    if config.key_dir is not None:
        return "the config's key_dir"
    if given_state_dir is not None:
        return "DIR/keys of --state-dir DIR"
    return "the default, state/<cluster name>/keys"


def load_keys(config: ClusterConfig, given_state_dir: Path | None,
              given_key_dir: Path | None = None) -> Keyring:
    """The keyring from the key directory every command uses (`key_dir`: --key-dir, else
    the config's key_dir, else STATE_DIR/keys with STATE_DIR from --state-dir or
    state/<cluster name>). A missing key raises ConfigError naming the directory, why it
    was chosen, and any other of those directories that holds the missing file."""
    directory = key_dir(config, given_state_dir, given_key_dir)
    try:
        return load_keyring(config, directory)
    except DuplicateKeyError:
        raise
    except ConfigError as exc:
        if exc.file is None or Path(exc.file).parent != directory or Path(exc.file).exists():
            raise
        name = Path(exc.file).name
        reason = key_dir_reason(config, given_state_dir, given_key_dir)
        others = [d for d in dict.fromkeys([
            *([config.key_dir] if config.key_dir is not None else []),
            *([Path(given_state_dir) / "keys"] if given_state_dir is not None else []),
            default_state_dir(config) / "keys"]) if d != directory and (d / name).exists()]
        tried = f"looked in {directory} ({reason})"
        if others:
            hint = (f"{name} is in {', '.join(str(d) for d in others)}: pass --key-dir "
                    f"{others[0]}, or move the keys")
        else:
            hint = (f"`bft keygen CONFIG` with the same --state-dir/--key-dir writes there; "
                    f"`--only {name.rsplit('.', 1)[0]}` makes one identity's key pair")
        raise ConfigError(f"{exc}; {tried}; {hint}") from None


def load_factory(spec: str, *, field: str = "--app") -> Any:
    """The callable named by `module:attribute` (e.g. `myapp:make_store`), the module found
    on sys.path or in the current directory; ConfigError if the module cannot be imported or
    has no such callable."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise ConfigError(f"expected MODULE:FACTORY, got {spec!r}", field=field,
                          fix="e.g. --app mypackage.store:make_store")
    # like `python -m`, look in the current directory too: `bft sim --app myapp:make` from
    # the directory holding myapp.py works without PYTHONPATH (installed modules still win)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module_name!r}: {exc}", field=field) from None
    obj: Any = module
    for name in attr.split("."):
        obj = getattr(obj, name, None)
        if obj is None:
            raise ConfigError(f"{module_name!r} has no {attr!r}", field=field)
    if not callable(obj):
        raise ConfigError(f"{spec!r} is not callable", field=field)
    return obj
