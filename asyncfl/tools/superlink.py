"""A private local simulation SuperLink: Flower's executables, their environment (own
FLWR_HOME, no update check or dependency installation), started and stopped by PID."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from asyncfl.tools.processes import free_port, stop_process_group

CONNECTION = "asyncfl-local"
STARTUP_SECONDS = 30.0


def flower_executable(name: str) -> str:
    """A Flower executable (`flwr`, `flower-superlink`, ...) next to the running interpreter,
    so `.venv/bin/python -m ...` works without an activated venv; else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found next to {sys.executable} or on PATH; install "
                           "flwr[simulation] into this interpreter's environment")
    return found


def flower_env(home: Path, ray_address: str = "") -> dict[str, str]:
    """The environment for Flower processes: their own FLWR_HOME, no update check or
    dependency installation, and the interpreter's folder first on PATH (the SuperLink starts
    `flower-superexec` and `flwr-simulation` by name). RAY_ADDRESS is `ray_address` or unset:
    the simulation engine's `ray.init` joins that cluster, else starts a Ray of its own."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PATH": path,
           "RAY_ADDRESS": ray_address}
    if not ray_address:
        del env["RAY_ADDRESS"]
    return env


def start_superlink(home: Path, app_dir: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """Start a simulation SuperLink in its own process group; return it and its API port."""
    api_port, control_port, fleet_port = free_port(), free_port(), free_port()
    command = [
        flower_executable("flower-superlink"), "--insecure", "--simulation",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(api_port),
        "--control-api-address", f"127.0.0.1:{control_port}",
        "--fleet-api-address", f"127.0.0.1:{fleet_port}",
        "--log-file", str(home / "superlink.log"),
    ]
    process = subprocess.Popen(command, env=env, cwd=app_dir, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with code {process.returncode}; "
                                   f"see {home / 'superlink.log'}")
            try:
                if httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=0.5).is_success:
                    return process, api_port
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not start within {STARTUP_SECONDS:.0f} s")
    except BaseException:  # a failed start, or SIGTERM / SIGINT meanwhile
        stop_process_group(process)
        raise


@contextmanager
def local_superlink(app_dir: Path, ray_address: str = "",
                    ) -> Iterator[tuple[subprocess.Popen, dict]]:
    """A private simulation SuperLink with its own FLWR_HOME and `asyncfl-local` connection
    (its simulations on the Ray cluster at `ray_address`, if given); yields the process and
    the environment for `flwr`; stops it by PID on exit."""
    home = Path(tempfile.mkdtemp(prefix="asyncfl-flwr-"))
    env = flower_env(home, ray_address)
    superlink = None
    try:
        superlink, api_port = start_superlink(home, app_dir, env)
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{api_port}"\ninsecure = true\n'
        )
        yield superlink, env
    finally:
        if superlink is not None:
            stop_process_group(superlink)
        shutil.rmtree(home, ignore_errors=True)
