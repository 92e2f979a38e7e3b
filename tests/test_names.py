"""Names are checked at the edge: a hostile table or tag name is one line, and nothing is written."""

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import InvalidNameError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_file
from pipeline.names import check_ref_name, check_table_name
from tests.conftest import tabular_rows

ICETRAIN = str(Path(sys.executable).parent / "icetrain")
HOSTILE_TABLES = [
    "zz.t\t",
    "zz.t\n",
    " demo.digits",
    "demo.digits ",
    "demo.t?x",
    "demo.t#1",
    "../../etc",
    "demo..digits",
    "a/b.c",
    "demo.",
    "digits",
    "x" * 300 + ".t",
    "demo.t\u200b",
    "demo.tä",
]


@pytest.mark.parametrize("name", HOSTILE_TABLES)
def test_a_hostile_table_name_is_refused_with_one_line(name: str) -> None:
    with pytest.raises(InvalidNameError) as raised:
        check_table_name(name)
    assert "\n" not in str(raised.value) and repr(name)[:20] in str(raised.value)


@pytest.mark.parametrize("name", ["demo.digits", "crm.customers_2026", "lake.raw.events-v2", "_a.b"])
def test_ordinary_and_nested_table_names_pass(name: str) -> None:
    namespace, table = check_table_name(name)
    assert f"{namespace}.{table}" == name


@pytest.mark.parametrize("name", ["", " v1", "v1\n", "v\t1", "x" * 256])
def test_a_hostile_tag_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidNameError):
        check_ref_name(name)


def test_tag_names_may_be_paths_in_metadata() -> None:
    assert check_ref_name("icetrain/digits/v1") == "icetrain/digits/v1"


def test_ingest_under_a_hostile_name_writes_nothing(settings, catalog, tmp_path) -> None:
    data = tmp_path / "rows.csv"
    tabular_rows(0, 10).to_pandas().to_csv(data, index=False)
    for name in HOSTILE_TABLES:
        with pytest.raises(InvalidNameError):
            append_file(catalog, name, data)
    assert catalog.list_namespaces() == []
    assert not any(path.is_file() for path in settings.warehouse.rglob("*"))

    out = subprocess.run([ICETRAIN, "ingest", "zz.t\t", str(data)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stderr.count("\n") == 1
    assert out.stderr.startswith("icetrain: error: table name 'zz.t\\t' is not valid: part 't\\t' holds '\\t'")


def test_an_empty_tag_name_is_refused_and_nothing_is_committed(settings, catalog, digits) -> None:
    out = subprocess.run([ICETRAIN, "tag", "demo.digits", ""], capture_output=True, text=True, timeout=120)

    assert out.returncode == 1 and out.stderr == "icetrain: error: a tag name must not be empty\n"
    assert set(load_table(catalog, "demo.digits").metadata.refs) == {"main"}
