"""The Python API facade names real objects."""

import icetrain


def test_every_exported_name_resolves() -> None:
    for name in icetrain.__all__:
        assert getattr(icetrain, name) is not None, name
