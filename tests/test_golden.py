"""The golden runs (tests/golden.py) still give their recorded final model, events and evals."""

import json

import pytest

from tests.golden import GOLDEN_DIR, RUNS, fingerprint, run


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run_is_unchanged(tmp_path, name):
    expected = json.loads((GOLDEN_DIR / f"{name}.json").read_text())
    actual = fingerprint(run(name, tmp_path))
    for table in ("events", "evals"):
        assert len(actual[table]) == len(expected[table]), f"{name}: {table}.csv rows"
        for i, (got, want) in enumerate(zip(actual[table], expected[table], strict=True)):
            assert got == want, f"{name}: {table}.csv row {i}"
    changed = sorted(k for k in expected["model"] if actual["model"].get(k) != expected["model"][k])
    assert actual["model"].keys() == expected["model"].keys() and not changed, changed
