import logging

import pytest
from hypothesis import settings

# no per-example wall-clock deadline: on a loaded machine a correct example can take longer than
# Hypothesis's default 200 ms, which fails the test for no fault of the code
settings.register_profile("asyncfl", deadline=None)
settings.load_profile("asyncfl")


@pytest.fixture(autouse=True)
def quiet_flower():
    logging.getLogger("flwr").setLevel(logging.WARNING)
    yield


@pytest.fixture
def out(tmp_path):
    """Keyword arguments that send a run's results into the test's temporary folder."""
    return {"output_dir": str(tmp_path / "outputs")}
