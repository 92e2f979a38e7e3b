"""One config tree: key paths, one-line errors that name them, overrides, MLflow params and their versions."""

import json

import pytest
from pydantic import ValidationError

from pipeline.config.project import parse_project
from pipeline.config.tree import PipelineConfig, apply_overrides, field_annotation, parse_config
from pipeline.errors import ConfigError
from pipeline.tracking.params import CONFIG_VERSION, VERSION_PARAM, from_params, to_params

DOCUMENTED_KEYS = [
    "data.table", "data.label", "data.features", "data.filter", "data.sql", "data.snapshot_id", "data.ref",
    "model.factory", "model.kwargs", "optim.epochs", "optim.lr", "loader.batch_size", "loader.num_workers",
    "compute.device", "compute.precision", "tracking.experiment",
]  # fmt: skip


@pytest.mark.parametrize("path", DOCUMENTED_KEYS)
def test_every_documented_key_path_exists(path: str) -> None:
    field_annotation(path)
    assert path in to_params(PipelineConfig())


def test_overrides_read_values_as_yaml_but_text_keys_as_text() -> None:
    tree = apply_overrides(
        PipelineConfig().model_dump(),
        [
            "optim.lr=1e-2",
            "data.features=[x1, x2]",
            "model.kwargs={hidden: 64, widths: [8, 4]}",
            "data.sql=select a: b from snapshot",
            "data.filter=label < 5",
            "optim.early_stopping.metric=val_loss",
        ],
    )
    config = parse_config(tree)
    assert config.optim.lr == 0.01
    assert config.data.features == ("x1", "x2")
    assert config.model.kwargs == {"hidden": 64, "widths": [8, 4]}
    assert config.data.sql == "select a: b from snapshot"
    assert config.data.filter == "label < 5"
    assert config.optim.early_stopping.metric == "val_loss"
    assert parse_config(apply_overrides(tree, ["data.features=a, b", "data.classes=no,yes"])).data.features == (
        "a",
        "b",
    )
    assert parse_config(apply_overrides(tree, ["data.classes=[0, 1]"])).data.classes == ("0", "1")
    cleared = parse_config(apply_overrides(tree, ["optim.early_stopping.metric=null", "data.filter="]))
    assert (cleared.optim.early_stopping.metric, cleared.data.filter) == (None, None)


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["optim.lr=0"], "optim.lr: Input should be greater than 0 (got 0)"),
        (["optim.lr=.nan"], "optim.lr:"),
        (["optim.rate=1"], "optim.rate: unknown key; allowed in optim: optimizer, lr,"),
        (["optimizer.lr=1"], "optimizer: unknown key; allowed in the top level: seed, data,"),
        (["optim=3"], "optim is a section; set one of its keys: optimizer, lr,"),
        (["optim.lr.x=3"], "optim.lr is a value, not a section"),
        (["compute.device=gpu"], "compute.device: must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["data.snapshot_id=5", "data.ref=v1"], "give at most one of data.snapshot_id, data.ref, data.as_of"),
        (["data.as_of=yesterday"], "data.as_of: as-of time 'yesterday' is neither ISO 8601"),
        (["data.as_of=99999999999999999999"], "data.as_of: as-of time '99999999999999999999'"),
        (["data.table=demo..digits"], "data.table: table name 'demo..digits' is not valid: it has an empty part"),
        (["data.features=[]"], "data.features names no column"),
        (["loader.batch_size=0"], "loader.batch_size: Input should be greater than or equal to 1"),
        (["retrain.schedule=every night"], "retrain.schedule: must be a 5-field cron expression"),
        (["data.image_shape=[1, 8, 8]"], "data.image_shape needs data.features to name exactly one column"),
        (["model.kwargs={x: .inf}"], "model.kwargs: must hold JSON values"),
    ],
)
def test_a_bad_key_or_value_is_one_line_naming_the_key_path(assignments: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(apply_overrides(PipelineConfig().model_dump(), assignments))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_the_config_round_trips_through_mlflow_params() -> None:
    config = parse_config(
        apply_overrides(
            PipelineConfig().model_dump(),
            ["data.table=demo.rows", "data.snapshot_id=7649098236878454242", "data.features=[x1]", "data.classes=['a', 'b']",
             "model.factory=mypkg.models:net", "model.kwargs={hidden: 8}", "optim.lr=0.25", "loader.block_rows=512", "data.sql=select * from snapshot"],
        )
    )  # fmt: skip
    params = to_params(config)
    assert params[VERSION_PARAM] == str(CONFIG_VERSION)
    assert params["data.snapshot_id"] == '"7649098236878454242"' and params["data.ref"] == ""
    assert params["model.kwargs"] == '{"hidden": 8}'
    assert all(isinstance(v, str) for v in params.values())
    assert from_params(params) == config


def test_params_of_a_run_from_before_the_config_tree_are_migrated() -> None:
    version_0 = {
        "read.label": "label", "read.features": "x1,x2", "read.row_filter": "id >= 10", "read.sql": "select * from snapshot",
        "train.epochs": "3", "train.batch_size": "32", "train.learning_rate": "0.01", "train.seed": "4", "train.val_fraction": "0.25",
        "train.model": "mlp", "train.device": "cpu", "train.num_workers": "0", "train.progress": "True",
        "data.snapshot_id": "12345", "data.classes": "0,1,2", "loader.split": "train", "device": "cpu",
    }  # fmt: skip
    config = from_params(version_0)
    assert (config.data.features, config.data.filter, config.data.sql) == (
        ("x1", "x2"),
        "id >= 10",
        "select * from snapshot",
    )
    assert (config.optim.epochs, config.loader.batch_size, config.optim.lr, config.seed) == (3, 32, 0.01, 4)
    assert (config.data.val_fraction, config.data.split_seed, config.model.factory) == (0.25, 4, "mlp")
    assert (config.data.snapshot_id, config.data.classes, config.optim.optimizer) == (12345, ("0", "1", "2"), "adam")


def test_params_from_a_newer_icetrain_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="recorded by a newer icetrain \\(config version 99"):
        from_params({VERSION_PARAM: "99"}, run_id="abc")


def test_a_pipelines_file_lays_defaults_under_each_pipeline() -> None:
    project = parse_project(
        {
            "defaults": {"optim": {"epochs": 4, "lr": 0.5}, "tracking": {"experiment": "team"}},
            "pipelines": {
                "a": {"data": {"table": "x.a"}, "optim": {"lr": 0.1}},
                "b": {"description": "B", "data": {"table": "x.b"}},
            },
        }
    )
    a, b = project.pipeline("a"), project.pipeline("b")
    assert (a.config.optim.epochs, a.config.optim.lr, b.config.optim.lr) == (4, 0.1, 0.5)
    assert (b.description, b.config.tracking.experiment) == ("B", "team")
    assert a.with_overrides(["optim.epochs=9"]).optim.epochs == 9


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"pipelines": {"Bad-Name": {"data": {"table": "x.y"}}}}, "pipeline name 'Bad-Name' must be lowercase"),
        ({"pipelines": {"a": {"data": {}}}}, "pipeline 'a': data.table: required"),
        (
            {"pipelines": {"a": {"data": {"table": "x.y"}, "optim": {"lr": -1}}}},
            "pipeline 'a': optim.lr: Input should be greater than 0",
        ),
        ({"pipeline": {}}, "unknown top-level key 'pipeline'; allowed: defaults, pipelines, dagster"),
        ({"dagster": {"definitions": ["nocolon"]}}, "dagster.definitions must be a list of 'module:attribute' strings"),
        ([1, 2], "expected a mapping with 'pipelines:'"),
    ],
)
def test_a_bad_pipelines_file_is_one_line(document, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_project(document)
    assert message in str(raised.value)


def test_asking_for_an_undeclared_pipeline_lists_the_declared_ones() -> None:
    project = parse_project({"pipelines": {"a": {"data": {"table": "x.a"}}}})
    with pytest.raises(ConfigError, match="no pipeline 'b' in .*; declared: a"):
        project.pipeline("b")


def test_the_config_is_frozen_and_json_serialisable() -> None:
    config = PipelineConfig()
    with pytest.raises(ValidationError):
        config.seed = 3  # type: ignore[misc]
    assert parse_config(json.loads(json.dumps(config.model_dump(mode="json")))) == config
