import logging

import pytest


@pytest.fixture(autouse=True)
def quiet_flower():
    logging.getLogger("flwr").setLevel(logging.WARNING)
    yield


@pytest.fixture
def out(tmp_path):
    """Keyword arguments that send a run's results into the test's temporary folder."""
    return {"output_dir": str(tmp_path / "outputs")}
