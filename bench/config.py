"""A whole `specdec bench` experiment as one YAML file: every flag is a key (its long name, with - or _), flags
on the command line override the file, and each run writes the configuration it used back as config.yaml, so
the results folder holds what reproduces them.

    suite: [code, summarise]
    draft: [ngram]
    k: [1, 2, 4, 8]
    iterations: 3
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

# Flags that make no sense in a sweep file, or must not be written into one kept with the results (secrets).
NOT_IN_FILE = {"help", "config", "command", "verbose", "_parser", "_security", "auth_token", "api_key"}


def file_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The keys a sweep file may set: the parser's long options, by destination."""
    return {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_IN_FILE}


def read_config(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The file's values as parser defaults. Values become the strings a user would type (lists comma-joined),
    so each flag's own `type` parses them and a bad value is reported like a bad flag."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the sweep file: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a sweep file is a mapping of flag names to values")
    keys = file_keys(parser)
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        dest = str(key).replace("-", "_")
        if dest not in keys:
            known = ", ".join(sorted(k.replace("_", "-") for k in keys))
            raise ValueError(f"{path}: unknown key {key!r}; the keys are {known}")
        defaults[dest] = _as_flag_value(keys[dest], value, f"{path}: {key}")
    return defaults


def _as_flag_value(action: argparse.Action, value: Any, where: str) -> Any:
    if action.nargs == 0:  # a switch (store_true / --x/--no-x): the file gives a boolean
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    if value is None:
        return None
    if isinstance(value, list):
        return ",".join("" if v is None else str(v) for v in value)
    return str(value)


def write_config(path: Path, args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """The effective configuration of a run, in the format `read_config` takes."""
    values: dict[str, Any] = {}
    for dest in file_keys(parser):
        value = getattr(args, dest, None)
        if value is None or dest == "out":  # a rerun from the file writes its own results folder
            continue
        if isinstance(value, Path):
            value = str(value)
        values[dest.replace("_", "-")] = value
    path.write_text(yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
