"""Turning icetrain's user errors into Dagster failures with a one-line description."""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Failure

from pipeline.config.secrets import scrub
from pipeline.errors import IcetrainError


@contextmanager
def user_errors_as_failures() -> Iterator[None]:
    """Raise ``dagster.Failure`` with the error's message for user mistakes, so the UI shows the cause first."""
    try:
        yield
    except IcetrainError as exc:
        raise Failure(description=scrub(str(exc))) from exc
