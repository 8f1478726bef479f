"""What every `bft` subcommand shares, wherever it lives (bft/cli.py or a plugin's module):
`CliError`, the config loader with a clear error, and the state and key directories.

Plugins (adversary/, tui/) import these from here, never from bft/cli.py (which loads
the plugins: importing it from a plugin would be a cycle)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from bft.config import ClusterConfig, default_state_dir
from bft.errors import ConfigError

__all__ = ["CliError", "key_dir", "load_config", "load_factory", "state_dir"]


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


def load_factory(spec: str, *, field: str = "--app") -> Any:
    """The callable named by `module:attribute` (e.g. `myapp:make_store`); ConfigError if the
    module cannot be imported or has no such callable."""
    module_name, colon, attr = spec.partition(":")
    if not colon or not module_name or not attr:
        raise ConfigError(f"expected MODULE:FACTORY, got {spec!r}", field=field,
                          fix="e.g. --app mypackage.store:make_store")
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
