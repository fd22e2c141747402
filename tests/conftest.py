import logging

import pytest
from hypothesis import settings

# no per-example wall-clock deadline: on a loaded machine a correct example can take longer than
# Hypothesis's default 200 ms, which fails the test for no fault of the code
settings.register_profile("asyncfl", deadline=None)
settings.load_profile("asyncfl")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """The suite runs on two xdist workers (pyproject.toml). Tests marked `ray` form one
    xdist group: they run one after another, as in one process. Ray is made to be one per
    machine: `ray.init()` without an address joins the cluster that the machine's last
    `ray start` recorded, and each local cluster sets aside a share of memory for its objects."""
    for item in items:
        if item.get_closest_marker("ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))


@pytest.fixture(autouse=True)
def quiet_flower():
    logging.getLogger("flwr").setLevel(logging.WARNING)
    yield


@pytest.fixture
def out(tmp_path):
    """Keyword arguments that send a run's results into the test's temporary folder."""
    return {"output_dir": str(tmp_path / "outputs")}
