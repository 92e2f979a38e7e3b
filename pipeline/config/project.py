"""Declared pipelines: the project file (``icetrain.yaml``) that names each pipeline and its config.

A pipeline is a name, a table and the config tree of ``pipeline.config.tree``; the CLI trains it
(``icetrain train --pipeline NAME``) and the Dagster layer turns each one into its own
assets, check, job, schedule and sensor. The file::

    defaults:                 # optional, laid under every pipeline
      optim: {epochs: 5}
    pipelines:
      churn:
        description: Weekly churn model
        data: {table: crm.customers, label: churned, features: [tenure, spend]}
        model: {factory: mypkg.models:churn_net, kwargs: {hidden: 64}}
    dagster:
      definitions: [mypkg.ingest:defs]   # your own Dagster code, merged into the code location

The file is found from ``--config PATH``, else ``ICETRAIN_CONFIG``, else ``./icetrain.yaml``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config.tree import PipelineConfig, apply_overrides, merge_trees, parse_config
from pipeline.errors import ConfigError

CONFIG_ENV = "ICETRAIN_CONFIG"
DEFAULT_FILE = "icetrain.yaml"
PIPELINE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
TOP_LEVEL_KEYS = ("defaults", "pipelines", "dagster")


@dataclass(frozen=True)
class Pipeline:
    """One declared pipeline: its name (used in Dagster keys and job names) and its config."""

    name: str
    config: PipelineConfig
    description: str = ""

    @property
    def table(self) -> str:
        assert self.config.data.table is not None
        return self.config.data.table

    @property
    def scoring_table(self) -> str:
        """The table the pipeline's champion scores (``predict.table``, else the training table)."""
        return self.config.predict.table or self.table

    @property
    def predictions_table(self) -> str:
        """Where its predictions go (``predict.into``, else ``NAME_predictions`` beside the training table)."""
        namespace = self.table.rsplit(".", 1)[0]
        return self.config.predict.into or f"{namespace}.{self.name}_predictions"

    @property
    def declares_gates(self) -> bool:
        """Whether the pipelines file gives this pipeline a ``gates`` section (then ``icetrain train`` runs the quality gates too)."""
        return "gates" in self.config.model_fields_set

    def with_overrides(self, assignments: list[str]) -> PipelineConfig:
        """This pipeline's config with ``section.key=value`` overrides applied and validated."""
        return parse_config(apply_overrides(self.config.model_dump(), assignments))


@dataclass(frozen=True)
class Project:
    """The pipelines declared in one file, and extra Dagster definitions to load with them."""

    path: Path | None
    pipelines: Mapping[str, Pipeline]
    definitions: tuple[str, ...] = ()

    def pipeline(self, name: str) -> Pipeline:
        """The pipeline called ``name``.

        Raises:
            ConfigError: no such pipeline; the message lists the declared ones.
        """
        if name not in self.pipelines:
            declared = ", ".join(self.pipelines) or "none"
            where = (
                str(self.path) if self.path else f"no pipelines file (looked for ./{DEFAULT_FILE} and ${CONFIG_ENV})"
            )
            raise ConfigError(f"no pipeline {name!r} in {where}; declared: {declared}")
        return self.pipelines[name]


def find_project_file(explicit: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The pipelines file in force: ``explicit``, else ``$ICETRAIN_CONFIG``, else ``./icetrain.yaml`` if it exists.

    Raises:
        ConfigError: an explicitly named file does not exist.
    """
    env = os.environ if environ is None else environ
    named = explicit or env.get(CONFIG_ENV)
    if named:
        path = Path(named).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"pipelines file {str(named)!r} not found")
        return path
    default = Path.cwd() / DEFAULT_FILE
    return default.resolve() if default.is_file() else None


def load_project(explicit: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Project:
    """Read and validate the pipelines file in force (an empty project when there is none).

    Raises:
        ConfigError: the file is not valid YAML, or a pipeline's name or config is invalid;
            the message names the file, the pipeline and the key path.
    """
    path = find_project_file(explicit, environ)
    if path is None:
        return Project(None, {})
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read pipelines file {path}: {' '.join(str(exc).split())}") from None
    return parse_project(document, path)


def parse_project(document: Any, path: Path | None = None) -> Project:
    """Validate a parsed pipelines file.

    Raises:
        ConfigError: as ``load_project``.
    """
    where = f"{path}: " if path else ""
    if not isinstance(document, Mapping):
        raise ConfigError(f"{where}expected a mapping with 'pipelines:'")
    unknown = [key for key in document if key not in TOP_LEVEL_KEYS]
    if unknown:
        raise ConfigError(f"{where}unknown top-level key {unknown[0]!r}; allowed: {', '.join(TOP_LEVEL_KEYS)}")
    defaults = document.get("defaults") or {}
    declared = document.get("pipelines") or {}
    if not isinstance(defaults, Mapping) or not isinstance(declared, Mapping):
        raise ConfigError(f"{where}'defaults' and 'pipelines' must be mappings")
    pipelines = {}
    for name, body in declared.items():
        pipelines[str(name)] = _parse_pipeline(str(name), body, defaults, where)
    return Project(path, pipelines, _definitions(document.get("dagster") or {}, where))


def _parse_pipeline(name: str, body: Any, defaults: Mapping[str, Any], where: str) -> Pipeline:
    if not PIPELINE_NAME.match(name):
        raise ConfigError(
            f"{where}pipeline name {name!r} must be lowercase letters, digits and '_', starting with a letter (it names Dagster assets and jobs)"
        )
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}pipeline {name!r} must be a mapping of config sections")
    tree = dict(body)
    description = str(tree.pop("description", "") or "")
    config = parse_config(merge_trees(defaults, tree), where=f"{where}pipeline {name!r}: ")
    if not config.data.table:
        raise ConfigError(f"{where}pipeline {name!r}: data.table: required ('namespace.table')")
    return Pipeline(name, config, description)


def _definitions(section: Any, where: str) -> tuple[str, ...]:
    if not isinstance(section, Mapping) or any(key != "definitions" for key in section):
        raise ConfigError(
            f"{where}'dagster' takes one key, 'definitions': a list of 'module:attribute' Dagster Definitions"
        )
    entries = section.get("definitions") or []
    if not isinstance(entries, list) or not all(isinstance(e, str) and ":" in e for e in entries):
        raise ConfigError(f"{where}dagster.definitions must be a list of 'module:attribute' strings")
    return tuple(entries)


__all__ = ["CONFIG_ENV", "DEFAULT_FILE", "Pipeline", "Project", "find_project_file", "load_project", "parse_project"]
