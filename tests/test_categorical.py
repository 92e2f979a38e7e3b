"""Real tables' columns as features: text and boolean categories, learned from the pinned snapshot, recorded, replayed."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from mlflow.tracking import MlflowClient

from icetrain.cli import main
from pipeline.data.encoding import MISSING, UNKNOWN
from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from tests.conftest import all_runs, config_for
from training.prepare import PreparedRun
from training.reproduce import reproduce
from training.train import train

PURPOSES = ["car", "education", "home", "medical", "travel"]


def loans(start: int, count: int, purposes: list[str] = PURPOSES, seed: int = 0) -> pa.Table:
    """Loan applications as a real table holds them: an id, numbers, a text purpose (with gaps), a boolean, a label."""
    rng = np.random.default_rng(seed + start)
    purpose = rng.choice(purposes, count)
    verified = rng.random(count) < 0.5
    income = rng.normal(50, 10, count)
    risky = np.isin(purpose, ["travel", "medical"]) | (~verified & (income > 60))
    label = (risky == (rng.random(count) < 0.95)).astype(np.int64)
    purpose_column = pa.array([None if i % 17 == 0 else p for i, p in enumerate(purpose)], type=pa.string())
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + count), type=pa.int64()),
            "income": pa.array(income),
            "purpose": purpose_column,
            "verified": pa.array(verified),
            "label": pa.array(label),
        }
    )


QUICK = ("data.categorical=verified", "model.factory=mlp", "optim.epochs=4", "optim.lr=0.01")


@pytest.fixture
def loan_table(catalog) -> int:
    return append_arrow(catalog, "bank.loans", loans(0, 3000), source="test", identifier_fields=("id",))


def test_text_and_boolean_columns_train_as_they_come_and_reproduce_exactly(settings, loan_table) -> None:
    result = train(settings, config_for("bank.loans", *QUICK), pipeline="loans")
    assert result.final_metrics["val_accuracy"] > 0.8, "the categories carry the signal"

    run = MlflowClient(settings.tracking_uri).get_run(result.run_id)
    assert run.data.params["resolved.encoding.columns"] == "purpose,verified"
    assert run.data.params["resolved.encoding.categories"] == str(len(PURPOSES) + 2)

    outcome = reproduce(settings, result.run_id, progress_bar=False)
    assert outcome.reproduced and outcome.max_weight_difference == 0, outcome.differences


def test_batches_carry_the_categories_beside_the_numbers(settings, catalog, loan_table) -> None:
    table = load_table(catalog, "bank.loans")
    pinned = resolve_snapshot(table, SnapshotRequest("bank.loans"), settings.catalog_name)
    spec = ReadSpec(features=("income", "purpose", "verified"), categorical=("verified",))
    loader = open_loader(table, pinned, spec, LoaderConfig(batch_size=3000, shuffle=False))
    numeric, categories, labels = next(iter(loader))
    assert numeric.dtype == torch.float32 and numeric.shape == (3000, 1)
    assert categories.dtype == torch.int64 and categories.shape == (3000, 2)
    purpose = loader.layout.encoding.vocabulary("purpose")
    assert purpose.categories == tuple(PURPOSES)
    raw = loans(0, 3000).column("purpose").to_pylist()
    expected = [MISSING if p is None else 2 + PURPOSES.index(p) for p in raw]
    assert categories[:, 0].tolist() == expected
    assert set(categories[:, 1].tolist()) == {2, 3}, "false and true"
    assert labels.dtype == torch.int64


def test_a_newer_snapshot_with_an_unseen_category_trains_and_a_replay_maps_it_to_unknown(
    settings, catalog, loan_table, capsys
) -> None:
    first = train(settings, config_for("bank.loans", *QUICK), pipeline="loans")
    state = torch.load(settings.home / "checkpoints" / first.run_id / "last.pt", weights_only=False)
    resumable = PreparedRun.from_json(state["prepared"])
    assert resumable.encoding.vocabulary("purpose").categories == tuple(PURPOSES), "--resume takes the recorded one"
    append_arrow(catalog, "bank.loans", loans(3000, 2000, [*PURPOSES, "wedding"]), source="test")
    second = train(settings, config_for("bank.loans", *QUICK), pipeline="loans")
    params = {r.info.run_id: r.data.params for r in all_runs(settings)}
    assert params[second.run_id]["resolved.encoding.categories"] == str(len(PURPOSES) + 3), "wedding is learned"
    tags = MlflowClient(settings.tracking_uri).get_run(second.run_id).data.tags
    assert tags["icetrain.encoding.changes"] == f"since run {first.run_id}: purpose: +1 ('wedding')"

    assert main(["train", "--from-run", first.run_id, "--set", "data.snapshot_id=" + str(second.pinned.snapshot_id), "--no-progress"]) == 0  # fmt: skip
    replay = next(r for r in all_runs(settings) if r.data.tags.get("icetrain.replays") == first.run_id)
    assert replay.data.params["resolved.encoding.digest"] == params[first.run_id]["resolved.encoding.digest"]

    from pipeline.tracking.lineage import replay_encoding
    from training.prepare import RunOrigin, prepare_run

    recorded = replay_encoding(settings, first.run_id)
    prepared = prepare_run(settings, config_for("bank.loans", *QUICK), RunOrigin(), encoding=recorded)
    wedding = pa.array(["wedding", None, "car"])
    assert prepared.encoding.vocabulary("purpose").encode(wedding).tolist() == [UNKNOWN, MISSING, 2]


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (("data.features=income,tags",), "feature column 'tags' has type large_list<element: large_string>, which icetrain cannot encode"),
        (("data.categorical=income",), "data.categorical: column 'income' has type double; categories are text, booleans or integers"),
        (("data.features=income", "data.categorical=purpose"), "data.categorical names 'purpose', which is not among the features income"),
        (("data.features=income,code",), "distinct values in the training rows, more than 1000; set data.max_categories"),
        (("model.factory=cnn",), "model.factory 'cnn' takes no 'cardinalities', but purpose are categorical features"),
    ],
)  # fmt: skip
def test_columns_icetrain_cannot_encode_are_refused_in_one_line_before_a_run(
    settings, catalog, capsys, assignments, message
) -> None:
    rows = (
        loans(0, 1500)
        .append_column("tags", pa.array([["a"]] * 1500))
        .append_column("code", pa.array([f"c{i}" for i in range(1500)]))
    )
    append_arrow(catalog, "bank.loans", rows, source="test", identifier_fields=("id",))
    args = ["train", "--table", "bank.loans", "--no-progress"]
    for assignment in ("data.features=income,purpose", *assignments):
        args += ["--set", assignment]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert all_runs(settings) == []


def test_a_capped_vocabulary_keeps_the_most_frequent_categories_and_the_rest_are_unknown(settings, catalog) -> None:
    rows = loans(0, 1500).append_column("code", pa.array([f"c{i % 40 if i % 3 else 0}" for i in range(1500)]))
    append_arrow(catalog, "bank.loans", rows, source="test", identifier_fields=("id",))
    from training.prepare import prepare_run

    prepared = prepare_run(settings, config_for("bank.loans", "data.features=income,code", "data.max_categories=5"))
    kept = prepared.encoding.vocabulary("code").categories
    assert len(kept) == 5 and "c0" in kept and kept == tuple(sorted(kept))
    rare = prepare_run(settings, config_for("bank.loans", "data.features=income,code", "data.min_frequency=100"))
    assert rare.encoding.vocabulary("code").categories == ("c0",)


def test_a_missing_or_damaged_vocabulary_on_replay_is_one_line(settings, loan_table, capsys) -> None:
    result = train(settings, config_for("bank.loans", *QUICK), pipeline="loans")
    artifact = next(settings.home.rglob("encoding.json"))
    artifact.write_text(json.dumps({"columns": [{"column": "purpose", "categories": ["z", "a"]}]}))
    capsys.readouterr()
    assert main(["train", "--from-run", result.run_id, "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "encoding" in err[0] and "is damaged" in err[0], err

    artifact.unlink()
    assert main(["reproduce", result.run_id, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is missing" in err[0], err
    assert len(all_runs(settings)) == 1


def test_the_readmes_own_factory_takes_the_cardinalities_and_trains_on_categories(
    settings, loan_table, tmp_path, monkeypatch
) -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("```python\n# mypkg/models.py\n") + len("```python\n")
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text(readme[start : readme.index("```\n", start)])
    monkeypatch.syspath_prepend(str(tmp_path))

    config = config_for("bank.loans", "data.categorical=verified", "model.factory=mypkg.models:churn_net")
    result = train(settings, config.updated({"model.kwargs": {"hidden": 16}}))
    assert result.config.data.features == ("income", "purpose", "verified")
    assert result.final_metrics["val_accuracy"] > 0.6


def test_categorical_drift_is_measured_over_the_references_categories_with_unknown_and_missing_bins(
    settings, catalog, loan_table
) -> None:
    from pipeline.data.quality import assess_snapshot, judge

    table = load_table(catalog, "bank.loans")
    before = resolve_snapshot(table, SnapshotRequest("bank.loans"), settings.catalog_name)
    steady = append_arrow(catalog, "bank.loans", loans(3000, 3000, seed=1), source="test")
    shifted = append_arrow(catalog, "bank.loans", loans(6000, 6000, ["travel", "wedding", "cruise"]), source="test")
    spec = ReadSpec(features=("income", "purpose", "verified"), categorical=("verified",))

    table = load_table(catalog, "bank.loans")
    for snapshot_id, drifts in ((steady, False), (shifted, True)):
        pinned = resolve_snapshot(table, SnapshotRequest("bank.loans", snapshot_id=snapshot_id), settings.catalog_name)
        quality, _ = assess_snapshot(table, pinned, spec, before)
        contract, complete, drift = judge(quality, max_psi=0.25, max_null_fraction=0.0)
        assert contract.passed and complete.passed, "a null category is the missing category, not a gap"
        assert drift.passed is not drifts and (("purpose PSI" in drift.description) is drifts), drift.description
    purpose = quality.profiles["purpose"]
    assert purpose.categorical and set(purpose.categories) == set(PURPOSES), "the reference's categories are the bins"
    assert 0.3 < purpose.unknown_share < 0.5, "wedding and cruise are not among the reference's categories"
    assert purpose.top(1)[0][0] == "travel"


def test_two_ddp_processes_train_on_a_text_category_the_sql_transform_makes(settings, catalog) -> None:
    from tests.test_cli import icetrain
    from tests.test_train_script import numbered_rows

    for start in (0, 100, 200):
        append_arrow(catalog, "demo.numbered", numbered_rows(start, 100), source="test")
    sql = "SELECT *, CASE WHEN x > 0 THEN 'up' ELSE 'down' END AS side FROM snapshot"
    out = icetrain(
        "train", "--table", "demo.numbered", "--nproc", "2", "--epochs", "2", "--batch-size", "16",
        "--features", "row,x,side", "--sql", sql, "--model", "mlp", "--no-progress",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "300 rows, 2 processes" in out.stdout
    (run,) = all_runs(settings)
    assert run.data.params["resolved.encoding.columns"] == "side"
    assert run.data.params["resolved.encoding.categories"] == "2", "up and down, learned once by the launcher"
    assert run.data.metrics["val_accuracy"] > 0.8, "the category the SQL made carries the label"


def test_decode_workers_and_the_cache_hand_out_the_same_categories_as_one_process(
    settings, catalog, loan_table, tmp_path
) -> None:
    table = load_table(catalog, "bank.loans")
    pinned = resolve_snapshot(table, SnapshotRequest("bank.loans"), settings.catalog_name)
    spec = ReadSpec(features=("income", "purpose", "verified"), categorical=("verified",))

    def epoch(**config) -> list[torch.Tensor]:
        loader = open_loader(table, pinned, spec, LoaderConfig(batch_size=256, seed=3, **config))
        return [
            torch.cat([numeric, categories.double(), labels[:, None].double()], 1)
            for numeric, categories, labels in loader
        ]

    alone = epoch(num_workers=0, cache_mb=0)
    for other in (
        epoch(num_workers=2, cache_mb=0),
        epoch(cache_dir=str(tmp_path), cache_mb=64),
        epoch(cache_dir=str(tmp_path), cache_mb=64),
    ):
        assert len(other) == len(alone) and all(torch.equal(a, b) for a, b in zip(alone, other, strict=True))
