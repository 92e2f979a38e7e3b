"""Hostile input at scale: Hypothesis throws row filters, SQL, names, refs, as-of values and CLI
arguments at icetrain. Each gives a valid result or one of icetrain's one-line errors: never
another exception, never a write, never an MLflow run."""

from __future__ import annotations

import contextlib
import io

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings
from hypothesis import strategies as st

from icetrain.cli import main
from pipeline.catalog import load_table
from pipeline.config import PipelineConfig, apply_overrides, parse_config
from pipeline.errors import IcetrainError
from pipeline.names import check_ref_name, check_table_name
from pipeline.reading import parse_filter, snapshot_schema
from pipeline.snapshots import resolve_snapshot
from pipeline.specs import SnapshotRequest, parse_as_of
from pipeline.transform import check_transform, sandboxed_connection, transform_batch
from tests.conftest import all_runs, write_appends

FUZZ = hypothesis_settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
COLUMNS = ["id", "x1", "x2", "label", "nope", "`x1`", '"label"']
WORDS = ["and", "or", "not", "in", "is", "null", "nan", "true", "false", "select", "from", "snapshot", "where", "limit", "order", "by", "random()", "*", ",", "(", ")", ";", "--", "'", '"', "=", "<", ">=", "!=", "<>", "+", "/", "0", "-1", "1e308", "2.5", "'a'", "\\x00", "\t", "\n", "union", "join", "range(9)", "read_csv('/etc/passwd')", "copy", "attach", "pragma", "set", "install", "load"]
text_soup = st.lists(st.one_of(st.sampled_from(COLUMNS + WORDS), st.text(max_size=6)), max_size=12).map(" ".join)


@pytest.fixture
def rows(settings, catalog):
    write_appends(catalog, "demo.rows", [30])
    table = load_table(catalog, "demo.rows")
    return table, resolve_snapshot(table, SnapshotRequest("demo.rows"), settings.catalog_name)


def only_icetrain_errors(call, *args) -> object:
    try:
        return call(*args)
    except IcetrainError as exc:
        assert "\n" not in str(exc), str(exc)
        return exc


@FUZZ
@given(text=text_soup)
def test_row_filters_parse_or_fail_in_one_line(rows, text: str) -> None:
    table, pinned = rows
    only_icetrain_errors(parse_filter, text, snapshot_schema(table, pinned), pinned)


@FUZZ
@given(sql=st.one_of(text_soup, text_soup.map(lambda t: f"select {t} from snapshot"), text_soup.map(lambda t: f"select * from snapshot where {t}")))
def test_sql_is_refused_in_one_line_or_runs_row_locally(sql: str) -> None:
    batch = pa.RecordBatch.from_pydict({"id": pa.array(range(5)), "x1": pa.array([0.5] * 5), "label": pa.array([0, 1, 0, 1, 0])})
    if not isinstance(only_icetrain_errors(check_transform, sql), IcetrainError):
        result = only_icetrain_errors(transform_batch, sandboxed_connection(), batch, sql)
        if not isinstance(result, IcetrainError):
            assert result.num_rows <= batch.num_rows, "a checked transform never adds rows"


@FUZZ
@given(name=st.one_of(st.text(max_size=40), text_soup, st.sampled_from(["demo.rows", "demo..rows", "../x.y", "a.b\x00", "demo.rows\t"])), ref=st.text(max_size=30))
def test_names_and_refs_resolve_or_fail_in_one_line(settings, catalog, rows, name: str, ref: str) -> None:
    table, _ = rows
    if not isinstance(only_icetrain_errors(check_table_name, name), IcetrainError):
        only_icetrain_errors(load_table, catalog, name)
    if not isinstance(only_icetrain_errors(check_ref_name, ref), IcetrainError):
        only_icetrain_errors(resolve_snapshot, table, SnapshotRequest("demo.rows", ref=ref), settings.catalog_name)
    assert [ns for ns in catalog.list_namespaces()] == [("demo",)] and len(table.refresh().snapshots()) == 1


@FUZZ
@given(value=st.one_of(st.text(max_size=30), st.integers().map(str), st.floats().map(str), st.datetimes().map(lambda d: d.isoformat())))
def test_as_of_values_resolve_or_fail_in_one_line(settings, rows, value: str) -> None:
    table, _ = rows
    when = only_icetrain_errors(parse_as_of, value)
    if not isinstance(when, IcetrainError):
        only_icetrain_errors(resolve_snapshot, table, SnapshotRequest("demo.rows", as_of=when), settings.catalog_name)


KEYS = ["seed", "data.table", "data.snapshot_id", "data.ref", "data.as_of", "data.filter", "data.sql", "data.label", "data.features", "data.classes", "data.val_fraction",
        "loader.batch_size", "loader.num_workers", "optim.lr", "optim.epochs", "optim.optimizer", "model.factory", "model.kwargs", "compute.nproc", "compute.device",
        "retrain.schedule", "gates.max_psi", "optim.early_stopping.patience", "nope.key", "optim"]  # fmt: skip


@FUZZ
@given(assignments=st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(text_soup, st.text(max_size=20), st.integers().map(str), st.floats().map(str))), max_size=4))
def test_config_assignments_parse_or_fail_in_one_line(assignments: list[tuple[str, str]]) -> None:
    only_icetrain_errors(lambda: parse_config(apply_overrides(PipelineConfig().model_dump(), [f"{k}={v}" for k, v in assignments])))


FLAGS = ["--snapshot-id", "--ref", "--as-of", "--filter", "--sql", "--label", "--features", "--lr", "--seed", "--batch-size", "--model", "--precision"]


@FUZZ
@given(args=st.lists(st.tuples(st.sampled_from(FLAGS), st.one_of(text_soup, st.text(max_size=12), st.integers().map(str))), max_size=4))
def test_the_train_command_trains_or_fails_in_one_line_and_leaves_nothing_running(settings, catalog, rows, args: list[tuple[str, str]]) -> None:
    argv = ["train", "--table", "demo.rows", "--epochs", "1", "--no-progress", *[part for pair in args for part in pair]]
    runs_before = len(all_runs(settings))
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's own usage error (exit 2), one line after the usage text
            code = exit_.code
    runs = all_runs(settings)
    if code == 0:
        assert len(runs) == runs_before + 1, "a valid command trains once"
    else:
        assert code in (1, 2) and len(runs) == runs_before, (argv, err.getvalue())
        assert err.getvalue().strip().splitlines()[-1].startswith(("icetrain: error: ", "icetrain train: error: ")), err.getvalue()
    assert all(run.info.status == "FINISHED" for run in runs), "no run is left RUNNING or FAILED by a user mistake"
    assert len(load_table(catalog, "demo.rows").snapshots()) == 1


@pytest.mark.parametrize("text", ["label < 5 or true", "true and false", "not true", "label in ()", "x1 > 'a'", "id is nan", "label <> 1e999", "x1 == 1", "id in (1, 'x')", "label not in ('a',)"])
def test_filters_that_once_gave_tracebacks_are_one_line(rows, text: str) -> None:
    table, pinned = rows
    only_icetrain_errors(parse_filter, text, snapshot_schema(table, pinned), pinned)
