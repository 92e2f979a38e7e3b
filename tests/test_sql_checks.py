"""SQL transforms are checked before use: one row-local, deterministic SELECT over `snapshot`, or a one-line refusal."""

import pyarrow as pa
import pytest

from pipeline.data.transform import check_transform, sandboxed_connection, transform_batch
from pipeline.errors import TransformError


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("select * from snapshot using sample 50%", "USING SAMPLE / TABLESAMPLE is random"),
        ("select * from snapshot tablesample 10%", "USING SAMPLE / TABLESAMPLE is random"),
        ("select * from snapshot order by random() limit 50", "LIMIT, ORDER BY is not row-local"),
        ("select *, random() as label2 from snapshot", "random() gives a different result each run"),
        ("select * from snapshot where random() < 0.5", "random() gives a different result each run"),
        ("select *, uuid() as u from snapshot", "uuid() gives a different result each run"),
        ("select *, now() as t from snapshot", "now() gives a different result each run"),
        ("select *, current_timestamp as t from snapshot", "current_timestamp gives a different result each run"),
        ("select *, today() as t from snapshot", "today() gives a different result each run"),
        (
            "select *, current_setting('TimeZone') as t from snapshot",
            "current_setting() gives a different result each run",
        ),
        ("select *, setseed(0.5) as s from snapshot", "setseed() gives a different result each run"),
        ("select * from snapshot, range(1000)", "it must read FROM snapshot only"),
        ("select * from snapshot join snapshot s2 using (id)", "it must read FROM snapshot only"),
        ("select * from read_parquet('/etc/passwd')", "it must read FROM snapshot only"),
        ("select unnest([1, 2]) as twice, * from snapshot", "unnest() returns several rows per row"),
        ("select distinct label from snapshot", "DISTINCT is not row-local"),
        ("select label, count(*) as n from snapshot group by label", "GROUP BY / HAVING aggregates rows"),
        ("select count(*) as n from snapshot", "aggregate count_star() combines rows"),
        ("select avg(x) as x from snapshot", "aggregate avg() combines rows"),
        ("select *, row_number() over () as n from snapshot", "window function 'row_number' is not row-local"),
        ("select * from snapshot where x > (select avg(x) from snapshot)", "subqueries are not supported"),
        ("with s as (select * from snapshot) select * from s", "WITH is not supported"),
        ("select * from snapshot union all select * from snapshot", "must be a plain SELECT"),
        ("select * from snapshot; select * from snapshot", "must be one statement, got 2"),
        ("select 1; drop table snapshot", "must be a SELECT over snapshot"),
        ("copy snapshot to '/tmp/x.csv'", "must be a SELECT over snapshot"),
        ("attach '/tmp/x.db'", "must be a SELECT over snapshot"),
        ("selec x from snapshot", "syntax error"),
        ("select 1 as label", "it must read FROM snapshot only"),
    ],
)
def test_a_transform_that_is_not_row_local_or_not_deterministic_is_refused_saying_why(sql: str, why: str) -> None:
    with pytest.raises(TransformError) as raised:
        check_transform(sql)
    assert why in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "sql",
    [
        "select label, x * 2 as y from snapshot where x > 0",
        "select * exclude (x), x + 1 as x, case when label > 5 then 1 else 0 end as big from snapshot",
        "select label::varchar as label, greatest(x, 0) as x, coalesce(y, 0) as y from snapshot",
        "select id % 4 as bucket, label from snapshot where id % 10 <> 0",
        "select label, x - 1 as x, hour(t) as h, strftime(t, '%H') as hh, t + interval 1 day as later from snapshot",
    ],
)
def test_row_local_transforms_pass(sql: str) -> None:
    assert check_transform(sql) == sql


def test_the_sandbox_still_holds_behind_the_check() -> None:
    rows = pa.RecordBatch.from_pylist([{"x": 1}])
    with pytest.raises(TransformError, match="disabled"):
        transform_batch(sandboxed_connection(), rows, "select * from read_csv('/etc/passwd')")


def test_time_zone_dependent_functions_give_the_same_answer_on_every_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """`hour(timestamptz)` reads the session's time zone; the sandbox pins it to UTC, whatever TZ says."""
    import datetime as dt

    at = dt.datetime(2024, 3, 31, 1, 30, tzinfo=dt.UTC)
    rows = pa.RecordBatch.from_pylist([{"t": at}])
    sql = check_transform("select hour(t) as h, t + interval 1 day as later from snapshot")
    answers = []
    for zone in ("UTC", "Europe/Berlin", "America/Los_Angeles"):
        monkeypatch.setenv("TZ", zone)
        answers.append(transform_batch(sandboxed_connection(), rows, sql).to_pylist())
    assert answers[0][0]["h"] == 1
    assert answers[1:] == [answers[0], answers[0]]


def test_the_sandbox_configuration_cannot_be_changed_by_a_query() -> None:
    rows = pa.RecordBatch.from_pylist([{"x": 1}])
    connection = sandboxed_connection()
    with pytest.raises(Exception, match="locked"):
        connection.execute("SET TimeZone = 'Europe/Berlin'")
    assert transform_batch(connection, rows, "select x from snapshot").to_pylist() == [{"x": 1}]
