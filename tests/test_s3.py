"""The warehouse on S3-compatible object storage (moto's server on 127.0.0.1), through PyIceberg's FileIO:
ingest, time travel, streaming reads in worker processes, training and the doctor."""

import logging
from collections.abc import Iterator
from datetime import timedelta

import boto3
import pytest
from moto.server import ThreadedMotoServer

from icetrain.servers import free_port
from pipeline.config.settings import Settings
from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.lake.doctor import inspect_files
from tests.conftest import config_for, write_appends

KEYS = {
    "aws_access_key_id": "icetrain-test",
    "aws_secret_access_key": "icetrain-test-secret",
    "region_name": "us-east-1",
}


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, **KEYS).create_bucket(Bucket="lake")
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def on_s3(settings, tmp_path, monkeypatch, s3_endpoint) -> Settings:
    """Settings whose catalog keeps its warehouse in the bucket ``lake`` (catalog database on SQLite)."""
    properties = {
        "TYPE": "sql", "URI": f"sqlite:///{tmp_path / 'catalog.db'}", "WAREHOUSE": "s3://lake/warehouse",
        "S3__ENDPOINT": s3_endpoint, "S3__ACCESS_KEY_ID": KEYS["aws_access_key_id"],
        "S3__SECRET_ACCESS_KEY": KEYS["aws_secret_access_key"], "S3__REGION": KEYS["region_name"],
    }  # fmt: skip
    for name, value in properties.items():
        monkeypatch.setenv(f"PYICEBERG_CATALOG__LAKE__{name}", value)
    monkeypatch.setenv("ICETRAIN_CATALOG", "lake")
    return Settings.from_env()


def test_a_warehouse_on_s3_time_travels_streams_trains_and_is_checked(on_s3, s3_endpoint) -> None:
    catalog = open_catalog(on_s3)
    first, second = write_appends(catalog, "shop.rows", [300, 200])
    table = load_table(catalog, "shop.rows")
    assert table.location() == "s3://lake/warehouse/shop/rows"

    pinned = resolve_snapshot(table, SnapshotRequest("shop.rows", snapshot_id=first), on_s3.catalog_name)
    spec, loader_config = ReadSpec(features=("id",)), LoaderConfig(batch_size=32, num_workers=2, val_fraction=0.0)
    seen = [
        int(v) for features, _ in open_loader(table, pinned, spec, loader_config) for v in features.flatten().tolist()
    ]
    assert sorted(seen) == list(range(300)), "the first snapshot's rows, each once, read from S3 in worker processes"

    from training.train import train

    result = train(on_s3, config_for("shop.rows", f"data.snapshot_id={second}", "optim.epochs=1"), progress_bar=False)
    assert result.row_count == 500 and result.pinned.snapshot_id == second

    assert inspect_files(table, timedelta(0)).orphans == ()
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, **KEYS)
    s3.put_object(Bucket="lake", Key="warehouse/shop/rows/data/left-by-a-killed-writer.parquet", Body=b"PAR1")
    (stray,) = inspect_files(table, timedelta(0)).orphans
    assert stray.path == "s3://lake/warehouse/shop/rows/data/left-by-a-killed-writer.parquet"
