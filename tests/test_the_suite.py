"""The suite's own setup: the tests that start Ray share one xdist worker."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RAY_TEST = ("tests/test_flower_simulation.py::"
            "test_a_zombie_does_not_count_as_a_live_member_of_a_stopped_group")


def test_a_ray_test_is_put_in_the_ray_group():
    """xdist runs a group on one worker only if the group's name reaches the node id
    (`--dist loadgroup`); with a pytest that drops it, the `ray` tests would run side by side
    and quietly share clusters. The suite's own settings, in a fresh pytest."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
                           RAY_TEST], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "scheduling tests via LoadGroupScheduling" in done.stdout
    assert f"PASSED {RAY_TEST}@ray" in done.stdout
