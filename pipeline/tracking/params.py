"""The pipeline config as MLflow params, and back: stable, versioned key names.

Every leaf of the config tree is one param named by its key path (``optim.lr``), its value
text (lists and mappings as JSON, "not given" as an empty string, integers beyond 2^53 such
as snapshot ids as JSON strings, ``"7649098236878454242"``, so that MLflow's compare view,
which plots whatever parses as a number in JavaScript, never draws them with wrong digits), plus
``icetrain.config_version``. Reading params back migrates older versions key by key, so a
rename never strands old runs: add the rename to ``MIGRATIONS`` and bump ``CONFIG_VERSION``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from pipeline.config.tree import PipelineConfig, is_text_field, parse_config
from pipeline.data.encoding import Encoding
from pipeline.errors import ConfigError

CONFIG_VERSION = 2
VERSION_PARAM = "icetrain.config_version"
JS_SAFE_INTEGER = 2**53 - 1


def to_params(config: PipelineConfig) -> dict[str, str]:
    """Every config leaf as ``{"section.key": text}``, with the config version."""
    params = {VERSION_PARAM: str(CONFIG_VERSION)}
    _flatten(config, "", params)
    return params


def from_params(params: Mapping[str, str], *, run_id: str = "") -> PipelineConfig:
    """Rebuild the config a run logged, migrating params of older icetrain versions.

    Raises:
        ConfigError: the params come from a newer icetrain, or no longer validate (the
            message names the key path).
    """
    version_text = params.get(VERSION_PARAM, "0")
    try:
        version = int(version_text)
    except ValueError:
        raise ConfigError(f"run {run_id}: param {VERSION_PARAM}={version_text!r} is not a version number") from None
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"run {run_id} was recorded by a newer icetrain (config version {version}, this one reads up to {CONFIG_VERSION}); upgrade icetrain"
        )
    current = dict(params)
    while version < CONFIG_VERSION:
        current = MIGRATIONS[version](current)
        version += 1
    tree: dict[str, Any] = {}
    _unflatten(PipelineConfig, "", current, tree)
    return parse_config(tree, where=f"run {run_id} recorded a config that no longer validates: " if run_id else "")


def _flatten(node: BaseModel, prefix: str, out: dict[str, str]) -> None:
    for name in type(node).model_fields:
        value = getattr(node, name)
        if isinstance(value, BaseModel):
            _flatten(value, f"{prefix}{name}.", out)
        elif value is None:
            out[f"{prefix}{name}"] = ""
        elif isinstance(value, (list, tuple, dict)):
            out[f"{prefix}{name}"] = json.dumps(value, sort_keys=True)
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > JS_SAFE_INTEGER:
            out[f"{prefix}{name}"] = json.dumps(str(value))
        else:
            out[f"{prefix}{name}"] = str(value)


def _unflatten(model: type[BaseModel], prefix: str, params: Mapping[str, str], tree: dict[str, Any]) -> None:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            child: dict[str, Any] = {}
            _unflatten(annotation, f"{key}.", params, child)
            tree[name] = child
        elif key in params:
            tree[name] = _parse_leaf(params[key], annotation)


def _parse_leaf(text: str, annotation: Any) -> Any:
    if text == "" or is_text_field(annotation):
        return text
    if text[:1] in '[{"':
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _from_v0(params: dict[str, str]) -> dict[str, str]:
    """Params from before the config tree: prefixes from class names (``train.``, ``read.``)."""
    renamed = {
        "read.label": "data.label",
        "read.row_filter": "data.filter",
        "read.sql": "data.sql",
        "train.epochs": "optim.epochs",
        "train.batch_size": "loader.batch_size",
        "train.learning_rate": "optim.lr",
        "train.seed": "seed",
        "train.val_fraction": "data.val_fraction",
        "train.model": "model.factory",
        "train.device": "compute.device",
        "train.num_workers": "loader.num_workers",
        "train.block_rows": "loader.block_rows",
    }
    migrated = {new: params[old] for old, new in renamed.items() if old in params}
    if "read.features" in params:
        migrated["data.features"] = json.dumps(params["read.features"].split(",")) if params["read.features"] else ""
    if params.get("data.classes"):
        migrated["data.classes"] = json.dumps(params["data.classes"].split(","))
    if "data.snapshot_id" in params:
        migrated["data.snapshot_id"] = params["data.snapshot_id"]
    # Before version 1 the split was seeded by the training seed, and the optimizer was Adam.
    migrated["data.split_seed"] = params.get("train.seed", "0")
    migrated["optim.optimizer"] = "adam"
    return migrated


def _from_v1(params: dict[str, str]) -> dict[str, str]:
    """Version 1 split rows by data file and position only."""
    return {**params, "data.split_by": "position"}


MIGRATIONS: dict[int, Callable[[dict[str, str]], dict[str, str]]] = {0: _from_v0, 1: _from_v1}


ENCODING_DIGEST_PARAM = "resolved.encoding.digest"


def encoding_params(encoding: Encoding | None) -> dict[str, str]:
    """A run's encoding as params: its columns, size, fills and digest (the whole encoding is an artifact)."""
    if encoding is None:
        return {}
    params = {
        "resolved.encoding.columns": ",".join(encoding.columns),
        "resolved.encoding.categories": str(encoding.size),
        ENCODING_DIGEST_PARAM: encoding.digest,
    }
    if encoding.fills:
        params["resolved.encoding.fills"] = ",".join(f"{f.column}={f.strategy}:{f.value:.6g}" for f in encoding.fills)
    return params


__all__ = ["CONFIG_VERSION", "ENCODING_DIGEST_PARAM", "VERSION_PARAM", "encoding_params", "from_params", "to_params"]
