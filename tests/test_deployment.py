"""Real deployment on 127.0.0.1: a TLS SuperLink with node authentication and SuperNodes as
separate processes (bounded in time, every process stopped by its PID)."""

import threading
import time

import pytest

from asyncfl.runtime.deploy import Deployment
from asyncfl.runtime.flower_run import group_members
from tests.helpers import read_rows

RUN = {"strategy": "fedbuff", "buffer-size": 1, "clock": "wall", "delay-dist": "constant",
       "delay-mean": 0.01, "local-steps": 20, "batch-size": 16, "lr": 0.1}


def group_gone(process) -> bool:
    return not group_members(process.pid)


def wait_exit(process, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    return process.poll()


def test_tls_deployment_runs_fedbuff_and_refuses_strangers(tmp_path):
    with Deployment(tmp_path / "deploy", nodes=2) as deployment:
        out = deployment.run({**RUN, "concurrency": 2, "num-server-rounds": 4,
                              "run-name": "e2e", "output-dir": str(tmp_path / "out")},
                             timeout=400)
        events = read_rows(out / "events.csv")
        assert {r["client"] for r in events if not r["rejected"]} == {"0", "1"}
        assert all(r["staleness"] != "" for r in events)
        summary = (out / "summary.json").read_text()
        assert '"clock": "wall"' in summary
        assert float(read_rows(out / "evals.csv")[-1]["accuracy"]) > 0.2  # chance: 0.1
        # a node whose key was never registered, and one without the CA certificate
        intruder = deployment.start_node(0, register=False, name="intruder")
        stranger = deployment.start_node(1, with_ca=False, name="no-ca")
        assert wait_exit(intruder, 90) not in (None, 0)
        assert wait_exit(stranger, 90) not in (None, 0)
        assert "Failed to activate SuperNode" in deployment.log("intruder")
        assert "CERTIFICATE_VERIFY_FAILED" in deployment.log("no-ca")
        processes = list(deployment.processes.values())
    assert all(p.poll() is not None and group_gone(p) for p in processes)


def test_an_async_run_goes_on_when_a_node_dies(tmp_path):
    with Deployment(tmp_path / "deploy", nodes=3) as deployment:
        killer = threading.Timer(25.0, deployment.stop_node, args=("node2",))
        killer.start()
        try:
            out = deployment.run({**RUN, "concurrency": 3, "num-server-rounds": 5,
                                  "reply-timeout": 20.0, "max-faults": 1,
                                  "run-name": "node-lost", "output-dir": str(tmp_path / "out")},
                                 timeout=500)
        finally:
            killer.cancel()
    events = read_rows(out / "events.csv")
    lost = [r for r in events if r["rejected"]]
    assert lost and all(r["client"] == "2" for r in lost)
    # the SuperLink reports the missing heartbeat, or the server stops waiting
    assert ("Node Unavailable" in lost[0]["rejected"]
            or lost[0]["rejected"] == "no reply before timeout")
    applied = [r for r in events if not r["rejected"]]
    assert len(applied) == 5 and {"0", "1"} <= {r["client"] for r in applied}
    summary = (out / "summary.json").read_text()
    assert '"dropped_clients": [\n    2\n  ]' in summary


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
