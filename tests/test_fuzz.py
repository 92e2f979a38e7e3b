"""Hostile input at scale: Hypothesis throws row filters, SQL, names, refs, as-of values and CLI
arguments at icetrain. Each gives a valid result or one of icetrain's one-line errors: never
another exception, never a write, never an MLflow run."""

from __future__ import annotations

import contextlib
import io

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from icetrain.cli import main
from pipeline.config.tree import PipelineConfig, apply_overrides, parse_config
from pipeline.data.reading import parse_filter, snapshot_schema
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import SnapshotRequest, parse_as_of
from pipeline.data.transform import check_transform, sandboxed_connection, transform_batch
from pipeline.errors import IcetrainError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from pipeline.names import check_ref_name, check_table_name
from tests.conftest import all_runs, tabular_rows, write_appends

FUZZ = hypothesis_settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
COLUMNS = ["id", "x1", "x2", "label", "nope", "`x1`", '"label"']
WORDS = [
    "and",
    "or",
    "not",
    "in",
    "is",
    "null",
    "nan",
    "true",
    "false",
    "select",
    "from",
    "snapshot",
    "where",
    "limit",
    "order",
    "by",
    "random()",
    "*",
    ",",
    "(",
    ")",
    ";",
    "--",
    "'",
    '"',
    "=",
    "<",
    ">=",
    "!=",
    "<>",
    "+",
    "/",
    "0",
    "-1",
    "1e308",
    "2.5",
    "'a'",
    "\\x00",
    "\t",
    "\n",
    "union",
    "join",
    "range(9)",
    "read_csv('/etc/passwd')",
    "copy",
    "attach",
    "pragma",
    "set",
    "install",
    "load",
]
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
@given(
    sql=st.one_of(
        text_soup,
        text_soup.map(lambda t: f"select {t} from snapshot"),
        text_soup.map(lambda t: f"select * from snapshot where {t}"),
    )
)
def test_sql_is_refused_in_one_line_or_runs_row_locally(sql: str) -> None:
    batch = pa.RecordBatch.from_pydict(
        {"id": pa.array(range(5)), "x1": pa.array([0.5] * 5), "label": pa.array([0, 1, 0, 1, 0])}
    )
    if not isinstance(only_icetrain_errors(check_transform, sql), IcetrainError):
        result = only_icetrain_errors(transform_batch, sandboxed_connection(), batch, sql)
        if not isinstance(result, IcetrainError):
            assert result.num_rows <= batch.num_rows, "a checked transform never adds rows"


@FUZZ
@given(
    name=st.one_of(
        st.text(max_size=40),
        text_soup,
        st.sampled_from(["demo.rows", "demo..rows", "../x.y", "a.b\x00", "demo.rows\t"]),
    ),
    ref=st.text(max_size=30),
)
def test_names_and_refs_resolve_or_fail_in_one_line(settings, catalog, rows, name: str, ref: str) -> None:
    table, _ = rows
    if not isinstance(only_icetrain_errors(check_table_name, name), IcetrainError):
        only_icetrain_errors(load_table, catalog, name)
    if not isinstance(only_icetrain_errors(check_ref_name, ref), IcetrainError):
        only_icetrain_errors(resolve_snapshot, table, SnapshotRequest("demo.rows", ref=ref), settings.catalog_name)
    assert [ns for ns in catalog.list_namespaces()] == [("demo",)] and len(table.refresh().snapshots()) == 1


@FUZZ
@given(
    value=st.one_of(
        st.text(max_size=30), st.integers().map(str), st.floats().map(str), st.datetimes().map(lambda d: d.isoformat())
    )
)
def test_as_of_values_resolve_or_fail_in_one_line(settings, rows, value: str) -> None:
    table, _ = rows
    when = only_icetrain_errors(parse_as_of, value)
    if not isinstance(when, IcetrainError):
        only_icetrain_errors(resolve_snapshot, table, SnapshotRequest("demo.rows", as_of=when), settings.catalog_name)


KEYS = ["seed", "data.table", "data.snapshot_id", "data.ref", "data.as_of", "data.filter", "data.sql", "data.label", "data.features", "data.classes", "data.val_fraction",
        "data.categorical", "data.max_categories", "data.min_frequency", "data.impute", "data.impute_indicator", "data.time_parts",
        "loader.batch_size", "loader.num_workers", "optim.lr", "optim.epochs", "optim.optimizer", "model.factory", "model.kwargs", "compute.nproc", "compute.device",
        "retrain.schedule", "gates.max_psi", "optim.early_stopping.patience", "nope.key", "optim"]  # fmt: skip


@FUZZ
@given(
    assignments=st.lists(
        st.tuples(
            st.sampled_from(KEYS),
            st.one_of(text_soup, st.text(max_size=20), st.integers().map(str), st.floats().map(str)),
        ),
        max_size=4,
    )
)
def test_config_assignments_parse_or_fail_in_one_line(assignments: list[tuple[str, str]]) -> None:
    only_icetrain_errors(
        lambda: parse_config(apply_overrides(PipelineConfig().model_dump(), [f"{k}={v}" for k, v in assignments]))
    )


FLAGS = [
    "--snapshot-id",
    "--ref",
    "--as-of",
    "--filter",
    "--sql",
    "--label",
    "--features",
    "--lr",
    "--seed",
    "--batch-size",
    "--model",
    "--precision",
]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``icetrain ARGV`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors (exit 2)
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(code: int, err: str, argv: list[str]) -> None:
    assert code in (1, 2), (argv, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("icetrain: "), (argv, err)


def trains_once_or_refuses_in_one_line(settings, argv: list[str]) -> None:
    """``icetrain ARGV`` trains one run, or exits with one line and records nothing; no run is left unfinished."""
    runs_before = len(all_runs(settings))
    code, _, err = run_cli(argv)
    runs = all_runs(settings)
    if code == 0:
        assert len(runs) == runs_before + 1, "a valid command trains once"
    else:
        assert_one_line_error(code, err, argv)
        assert len(runs) == runs_before, (argv, err)
    assert all(run.info.status == "FINISHED" for run in runs), "no run is left RUNNING or FAILED by a user mistake"


@FUZZ
@given(
    args=st.lists(
        st.tuples(st.sampled_from(FLAGS), st.one_of(text_soup, st.text(max_size=12), st.integers().map(str))),
        max_size=4,
    )
)
def test_the_train_command_trains_or_fails_in_one_line_and_leaves_nothing_running(
    settings, catalog, rows, args: list[tuple[str, str]]
) -> None:
    argv = [
        "train",
        "--table",
        "demo.rows",
        "--epochs",
        "1",
        "--no-progress",
        *[part for pair in args for part in pair],
    ]
    trains_once_or_refuses_in_one_line(settings, argv)
    assert len(load_table(catalog, "demo.rows").snapshots()) == 1


HOSTILE_NAMES = ["../../x", "/tmp/icetrain-escape", "a/b", "x\x00y", "n" * 5000, " padded ", "..", "ok\nnext", "é"]
HOSTILE_IDS = [
    "",
    "0",
    "-1",
    "nope",
    "../../etc",
    "x\x00",
    "9" * 40,
    "1" * 5000,
    "' or 1=1 --",
    "ffffffffffffffffffffffffffffffff",
]
DURATIONS = ["30d", "99999999999999999999d", "9" * 5000 + "s", "-1d", "1.5h", "", "0s", "1y", "nan", "100000w"]


def subcommands(run_id: str) -> st.SearchStrategy[list[str]]:
    """Every subcommand that reads or writes, with hostile names, ids and durations (and a real run id)."""
    name, ident, duration = (
        st.sampled_from(HOSTILE_NAMES + ["fraud-model"]),
        st.sampled_from(HOSTILE_IDS + [run_id]),
        st.sampled_from(DURATIONS),
    )
    table = st.sampled_from(["demo.rows", "demo..rows", "../x.y", "demo.rows\x00", "demo.none"])
    debug = st.sampled_from([[], ["--debug"]])
    return st.one_of(
        st.tuples(table).map(lambda t: ["maintain", t[0], "--target-file-mb", "0"]),
        st.tuples(table, duration).map(lambda t: ["maintain", t[0], "--expire-older-than", t[1]]),
        st.tuples(table, duration).map(lambda t: ["doctor", t[0], "--older-than", t[1]]),
        st.tuples(table, duration).map(lambda t: ["expire", t[0], "--older-than", t[1]]),
        st.tuples(ident, name).map(lambda t: ["register", t[0], "--name", t[1]]),
        st.tuples(name, ident).map(lambda t: ["unregister", t[0], t[1]]),
        st.tuples(ident, name, name).map(lambda t: ["register", t[0], "--name", "fraud-model", "--alias", t[2]]),
        st.tuples(name, ident, name).map(lambda t: ["promote", t[0], t[1], "--alias", t[2]]),
        st.tuples(table, ident, ident).map(lambda t: ["diff", t[0], t[1], t[2]]),
        st.tuples(ident, ident).map(lambda t: ["compare", t[0], t[1]]),
        st.tuples(ident).map(lambda t: ["reproduce", t[0], "--no-progress"]),
        st.tuples(ident).map(lambda t: ["train", "--resume", t[0], "--no-progress"]),
        st.tuples(ident, name).map(lambda t: ["train", "--from-run", t[0], "--experiment", t[1], "--no-progress"]),
        st.tuples(name).map(
            lambda t: ["train", "--table", "demo.rows", "--set", f"tracking.registered_model={t[0]}", "--no-progress"]
        ),
        st.tuples(name).map(lambda t: ["train", "--table", "demo.rows", "--experiment", t[0], "--no-progress"]),
        st.tuples(st.sampled_from(["--older-than", "--name", "--table", "--epochs"])).map(
            lambda t: ["expire", "demo.rows", t[0]]
        ),
    ).flatmap(lambda argv: debug.map(lambda d: [*argv, *d] if "--debug" not in argv else argv))


@pytest.fixture
def trained(settings, catalog, rows) -> str:
    """One finished training run on demo.rows; returns its id."""
    code, _, err = run_cli(["train", "--table", "demo.rows", "--epochs", "1", "--no-progress"])
    assert code == 0, err
    return all_runs(settings)[0].info.run_id


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=st.data())
def test_every_subcommand_answers_hostile_input_in_one_line_and_writes_nothing(
    settings, catalog, trained, tmp_path_factory, data
) -> None:
    argv = data.draw(subcommands(trained))
    if "--debug" in argv:
        argv.remove("--debug")  # tracebacks are what --debug is for; the edge is judged without it
    snapshots_before = len(load_table(catalog, "demo.rows").refresh().snapshots())
    refs_before = dict(load_table(catalog, "demo.rows").refresh().metadata.refs)
    runs_before = {run.info.run_id for run in all_runs(settings)}
    code, _, err = run_cli(argv)
    runs = all_runs(settings)
    if code != 0:
        assert_one_line_error(code, err, argv)
        assert {run.info.run_id for run in runs} == runs_before, (argv, "a refused command starts no run")
        assert len(load_table(catalog, "demo.rows").refresh().snapshots()) == snapshots_before
        assert dict(load_table(catalog, "demo.rows").refresh().metadata.refs) == refs_before
    assert all(run.info.status == "FINISHED" for run in runs), (argv, "no run is left RUNNING or FAILED")
    assert not any(
        ref.startswith("icetrain/") and ("\x00" in ref or len(ref) > 255)
        for ref in load_table(catalog, "demo.rows").refresh().metadata.refs
    )
    home = settings.home.resolve()
    for folder in (home.parent.parent / "x", home.parent / "x", __import__("pathlib").Path("/tmp/icetrain-escape")):
        assert not folder.exists(), f"{argv} wrote outside the project home: {folder}"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["train", "--table", "demo.rows", "--experiment", "../../x"], "experiment name '../../x' is not valid"),
        (
            ["train", "--table", "demo.rows", "--experiment", "/tmp/icetrain-escape"],
            "experiment name '/tmp/icetrain-escape' is not valid",
        ),
        (
            ["train", "--table", "demo.rows", "--set", "tracking.registered_model=../m"],
            "registered model name '../m' is not valid",
        ),
        (
            ["train", "--table", "demo.rows", "--set", "tracking.experiment=a\x00b"],
            "tracking.experiment: holds a NUL byte",
        ),
        (["train", "--table", "demo.rows", "--set", "tracking.run_name=a\x00b"], "tracking.run_name: holds a NUL byte"),
        (
            ["train", "--table", "demo.rows", "--sql", "select x1, label::hugeint as label from snapshot"],
            "has type decimal128(38, 0), which cannot hold classes",
        ),
        (
            [
                "train",
                "--table",
                "demo.rows",
                "--sql",
                "select x1, label::decimal(9, 2) as label from snapshot",
                "--set",
                "data.classes=0,1,2",
            ],
            "which cannot hold classes",
        ),
        (
            [
                "train",
                "--table",
                "demo.rows",
                "--sql",
                "select x1, label::decimal(9, 2) as label from snapshot",
                "--set",
                "data.task=regression",
            ],
            "regression needs a numeric label",
        ),
        (["expire", "demo.rows", "--older-than", "99999999999999999999d"], "is longer than 100 years"),
        (["doctor", "demo.rows", "--older-than", "9" * 5000 + "s"], "is longer than 100 years"),
        (["train", "--table"], "icetrain: error: argument --table: expected one argument"),
        (["train", "--table", "demo.rows", "--epochs", "--debug"], "argument --epochs: expected one argument"),
        (["register", "run"], "the following arguments are required: --name"),
        (["register", "run", "--name", "m\x00"], "registered model name 'm\\x00' is not valid"),
        (["register", "run", "--name", "m" * 5000], "is 5000 characters long; at most 128"),
        (["unregister", "../x", "1"], "registered model name '../x' is not valid"),
    ],
)
def test_each_hostile_kind_from_the_review_is_one_line_and_writes_nothing(
    settings, catalog, rows, argv: list[str], says: str
) -> None:
    code, _, err = run_cli(argv)
    assert_one_line_error(code, err, argv)
    assert says in err, err
    assert all_runs(settings) == [] and len(load_table(catalog, "demo.rows").snapshots()) == 1
    assert (
        not (settings.home.parent.parent / "x").exists()
        and not __import__("pathlib").Path("/tmp/icetrain-escape").exists()
    )


def test_a_hostile_experiment_from_the_environment_is_refused_before_anything_runs(
    settings, catalog, rows, monkeypatch
) -> None:
    monkeypatch.setenv("ICETRAIN_EXPERIMENT", "../../escaped")
    code, _, err = run_cli(["train", "--table", "demo.rows", "--no-progress"])
    assert_one_line_error(code, err, [])
    assert "ICETRAIN_EXPERIMENT" in err and all_runs(settings) == []


def test_debug_is_accepted_after_the_command_too(settings, catalog, rows) -> None:
    with pytest.raises(
        IcetrainError, match="no tag or branch 'nope'"
    ):  # --debug: the exception itself, for a traceback
        main(["train", "--table", "demo.rows", "--ref", "nope", "--debug"])
    code, _, err = run_cli(["train", "--table", "demo.rows", "--ref", "nope"])
    assert_one_line_error(code, err, [])


@pytest.mark.parametrize(
    "text",
    [
        "label < 5 or true",
        "true and false",
        "not true",
        "label in ()",
        "x1 > 'a'",
        "id is nan",
        "label <> 1e999",
        "x1 == 1",
        "id in (1, 'x')",
        "label not in ('a',)",
    ],
)
def test_filters_that_once_gave_tracebacks_are_one_line(rows, text: str) -> None:
    table, pinned = rows
    only_icetrain_errors(parse_filter, text, snapshot_schema(table, pinned), pinned)


CATEGORY_COLUMNS = [
    "x1",
    "plan",
    "flag",
    "tags",
    "code",
    "label",
    "id",
    "nope",
    "plan,flag",
    "x1,plan,code",
    "x1,tags",
    "x1,gap",
]
CATEGORY_KEYS = ["data.features", "data.categorical", "data.max_categories", "data.min_frequency", "model.factory",
                 "data.impute", "data.impute_indicator"]  # fmt: skip


@pytest.fixture
def category_rows(catalog):
    """A table whose columns need encoding: text (with nulls), a boolean, a list, a text column of 1200 values, a number with gaps."""
    count = 1200
    rows = tabular_rows(0, count).append_column(
        "plan", pa.array([None if i % 7 == 0 else f"p{i % 4}" for i in range(count)])
    )
    rows = rows.append_column("flag", pa.array([i % 3 == 0 for i in range(count)]))
    rows = rows.append_column("tags", pa.array([["a", "b"]] * count))
    rows = rows.append_column("code", pa.array([f"c{i}" for i in range(count)]))
    rows = rows.append_column("gap", pa.array([None if i % 9 == 0 else float(i) for i in range(count)]))
    append_arrow(catalog, "demo.kinds", rows, source="test", identifier_fields=("id",))


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    assignments=st.lists(
        st.tuples(
            st.sampled_from(CATEGORY_KEYS),
            st.one_of(
                st.sampled_from(CATEGORY_COLUMNS),
                st.sampled_from(["0", "1", "-3", "5", "mlp", "cnn", "linear"]),
                text_soup,
            ),
        ),
        max_size=3,
    )
)
def test_columns_of_every_kind_train_or_are_refused_in_one_line(
    settings, catalog, category_rows, assignments: list[tuple[str, str]]
) -> None:
    argv = ["train", "--table", "demo.kinds", "--epochs", "1", "--no-progress", "--set", "data.features=x1,plan,flag"]
    for key, value in assignments:
        argv += ["--set", f"{key}={value}"]
    trains_once_or_refuses_in_one_line(settings, argv)
