"""The champion from the command line: register with an alias, promote a version, as Dagster's evaluation moves it."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from icetrain.cli import main
from tests.conftest import config_for, write_appends
from training.train import train


@pytest.fixture
def two_runs(settings, catalog) -> tuple[str, str]:
    write_appends(catalog, "demo.rows", [200])
    return tuple(
        train(settings, config_for("demo.rows", "optim.epochs=1"), progress_bar=False).run_id for _ in range(2)
    )


def test_register_with_an_alias_then_promote_moves_the_champion(settings, two_runs, capsys) -> None:
    first, second = two_runs
    assert main(["register", first, "--name", "rows-model", "--alias", "champion"]) == 0
    assert "rows-model@champion is now version 1: models:/rows-model@champion loads it" in capsys.readouterr().out
    mlflow.set_tracking_uri(settings.tracking_uri)
    assert mlflow.pytorch.load_model("models:/rows-model@champion") is not None

    assert main(["register", second, "--name", "rows-model"]) == 0
    client = MlflowClient(settings.tracking_uri)
    assert str(client.get_model_version_by_alias("rows-model", "champion").version) == "1", "registering moves nothing"

    capsys.readouterr()
    assert main(["promote", "rows-model", "2"]) == 0
    assert "rows-model@champion is now version 2 (was version 1)" in capsys.readouterr().out
    assert client.get_model_version_by_alias("rows-model", "champion").run_id == second
    roles = {v: client.get_model_version("rows-model", v).tags["icetrain.eval.role"] for v in ("1", "2")}
    assert roles == {"1": "former champion", "2": "champion"}

    assert main(["promote", "rows-model", "2"]) == 0
    assert "already version 2; nothing changed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["promote", "rows-model", "9"], "no version '9' of registered model 'rows-model'"),
        (["promote", "rows-model", "1", "--alias", "latest"], "alias 'latest' is not valid"),
        (["promote", "rows-model", "1", "--alias", "v3"], "alias 'v3' is not valid"),
        (["promote", "../x", "1"], "registered model name '../x' is not valid"),
    ],
)
def test_promoting_what_does_not_exist_is_one_line(settings, two_runs, capsys, argv, message) -> None:
    assert main(["register", two_runs[0], "--name", "rows-model"]) == 0
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    with pytest.raises(mlflow.exceptions.MlflowException):
        MlflowClient(settings.tracking_uri).get_model_version_by_alias("rows-model", "champion")
