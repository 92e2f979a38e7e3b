"""A killed ingest leaves no visible partial snapshot, and `icetrain doctor` finds and removes what it left behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.lake.catalog import load_table
from pipeline.lake.doctor import inspect_files
from tests.conftest import all_runs, write_appends

ICETRAIN = str(Path(sys.executable).parent / "icetrain")
BIG_APPEND = textwrap.dedent(
    """
    import numpy as np, pyarrow as pa
    from pipeline.config.settings import Settings
    from pipeline.lake.catalog import open_catalog
    from pipeline.lake.ingest import append_arrow
    n = 6_000_000
    rng = np.random.default_rng(0)
    rows = pa.table({"id": pa.array(np.arange(10**6, 10**6 + n)), "x1": pa.array(rng.random(n, dtype=np.float32)),
                     "x2": rng.random(n), "label": pa.array(np.arange(n) % 3)})
    append_arrow(open_catalog(Settings.from_env()), "demo.rows", rows, source="killed writer")
    """
)


def test_a_killed_ingest_commits_nothing_and_doctor_removes_its_files(settings, catalog) -> None:
    write_appends(catalog, "demo.rows", [50])
    before = load_table(catalog, "demo.rows")
    data_dir = Path(before.location().removeprefix("file://")) / "data"
    known = set(data_dir.iterdir())

    writer = subprocess.Popen([sys.executable, "-c", BIG_APPEND], env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not set(data_dir.iterdir()) - known:
        assert writer.poll() is None and time.monotonic() < deadline, "the writer ended before it wrote a data file"
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)

    after = load_table(catalog, "demo.rows")
    assert [s.snapshot_id for s in after.snapshots()] == [s.snapshot_id for s in before.snapshots()]
    assert after.scan().to_arrow().num_rows == 50
    stray = inspect_files(after, timedelta(0)).orphans
    assert stray and all("/data/" in f.path and Path(f.path.removeprefix("file://")) not in known for f in stray)
    assert inspect_files(after, timedelta(days=1)).orphans == (), "files younger than the window are kept"

    listed = subprocess.run(
        [ICETRAIN, "doctor", "demo.rows", "--older-than", "0s"], capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert all(f.path in listed.stdout for f in stray) and "--delete" in listed.stdout
    assert set(data_dir.iterdir()) - known, "listing deletes nothing"

    deleted = subprocess.run(
        [ICETRAIN, "doctor", "demo.rows", "--older-than", "0s", "--delete"], capture_output=True, text=True, timeout=120
    )
    assert deleted.returncode == 0, deleted.stderr
    assert f"deleted {len(stray)} unreferenced file" in deleted.stdout
    assert set(data_dir.iterdir()) == known
    assert load_table(catalog, "demo.rows").scan().to_arrow().num_rows == 50


def test_a_missing_or_damaged_data_file_is_named_with_its_table_and_snapshot(settings, catalog) -> None:
    (first, second) = write_appends(catalog, "demo.rows", [40, 60])
    table = load_table(catalog, "demo.rows")
    files = sorted(Path(f.removeprefix("file://")) for f in table.inspect.all_files().column("file_path").to_pylist())
    files[0].write_bytes(b"not parquet at all")
    files[1].unlink()

    for snapshot_id in (first, second):
        out = subprocess.run(
            [ICETRAIN, "train", "--table", "demo.rows", "--snapshot-id", str(snapshot_id)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert (
            out.stderr.startswith("icetrain: error: cannot read data file file://")
            and f"of demo.rows at snapshot {snapshot_id}: " in out.stderr
        )
    assert all_runs(settings) == []


def test_maintain_compacts_small_files_and_merges_manifests_keeping_every_row_and_older_snapshots(
    settings, catalog
) -> None:
    from pipeline.lake.expiry import parse_duration
    from pipeline.lake.maintenance import maintain

    snapshot_ids = write_appends(catalog, "demo.rows", [20] * 40)
    table = load_table(catalog, "demo.rows")
    rows_before = table.scan().to_arrow().sort_by("id")
    from pipeline.lake.refs import create_tag

    create_tag(table, "model-v1", snapshot_ids[9])

    out = subprocess.run(
        [ICETRAIN, "maintain", "demo.rows", "--expire-older-than", "0s"], capture_output=True, text=True, timeout=300
    )

    assert out.returncode == 0, out.stderr
    assert "data files 40 -> 1 (40 small files rewritten)" in out.stdout
    table = load_table(catalog, "demo.rows")
    assert table.scan().to_arrow().sort_by("id").equals(rows_before)
    assert len(table.current_snapshot().manifests(table.io)) <= 2
    assert table.scan(snapshot_id=snapshot_ids[9]).to_arrow().num_rows == 200, (
        "a tagged snapshot survives expiry with its rows"
    )
    assert {s.snapshot_id for s in table.snapshots()} == {snapshot_ids[9], table.current_snapshot().snapshot_id}
    again = maintain(table, expire_older_than=parse_duration("0s"))
    assert again.rewritten_files == 0 and again.files_after == 1


def test_appends_since_a_snapshot_are_refused_across_a_compaction(settings, catalog) -> None:
    from pipeline.errors import ConfigError
    from pipeline.lake.maintenance import maintain
    from tests.conftest import config_for
    from training.train import train

    first, *_ = write_appends(catalog, "demo.rows", [20, 20, 20])
    maintain(load_table(catalog, "demo.rows"))

    with pytest.raises(ConfigError, match=r"rewrote files \(operation overwrite: a delete, overwrite or compaction\)"):
        train(settings, config_for("demo.rows", f"data.since_snapshot_id={first}"), progress_bar=False)
    assert all_runs(settings) == []
