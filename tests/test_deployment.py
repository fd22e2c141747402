"""Real deployment on 127.0.0.1: a TLS SuperLink with node authentication and SuperNodes as
separate processes (bounded in time, every process stopped by its PID)."""

import threading
import time

import pytest

from asyncfl.tools.deploy import Deployment
from asyncfl.tools.processes import group_members
from tests.helpers import read_rows

pytestmark = pytest.mark.slow  # a real SuperLink and SuperNodes

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


def kill_during_first_task_then_restart(deployment: Deployment, name: str, down: float,
                                        stop: threading.Event) -> None:
    """Kill node `name` (SIGKILL: no goodbye to the SuperLink) as soon as it has received its
    first train task, bring it back `down` seconds later; the SuperLink refuses it until its
    heartbeat expires, and `restart_node` tries again until it is let in."""
    while "Receiving: train message" not in deployment.log(name):
        if stop.wait(0.2):
            return
    deployment.stop_node(name, kill=True)
    if not stop.wait(down):
        deployment.restart_node(name)


def test_an_async_run_goes_on_when_a_node_dies_and_uses_it_again_when_it_is_back(tmp_path):
    stop = threading.Event()
    with Deployment(tmp_path / "deploy", nodes=3) as deployment:
        chaos = threading.Thread(target=kill_during_first_task_then_restart,
                                 args=(deployment, "node2", 20.0, stop))
        chaos.start()
        try:
            out = deployment.run({**RUN, "concurrency": 3, "num-server-rounds": 1000,
                                  # the node is refused for up to 2 x 30 s after the kill
                                  # (its heartbeat), then needs a task of its own
                                  "time-budget": 120.0, "reply-timeout": 20.0,
                                  "max-faults": 0, "retry-backoff": 1.0,
                                  "run-name": "node-lost", "output-dir": str(tmp_path / "out")},
                                 timeout=500)
        finally:
            stop.set()
            chaos.join()
    events = read_rows(out / "events.csv")
    lost = [i for i, r in enumerate(events) if r["rejected"] and r["client"] == "2"]
    assert lost, "the killed node's task is not in events.csv"
    # the SuperLink reports the missing heartbeat, or the server stops waiting
    assert all("Node Unavailable" in events[i]["rejected"]
               or events[i]["rejected"].startswith("no reply") for i in lost)
    # the others went on meanwhile, and the node was used again once it was back
    assert {"0", "1"} <= {r["client"] for r in events[lost[0]:] if not r["rejected"]}
    assert any(r["client"] == "2" and not r["rejected"] for r in events[lost[-1]:])
    assert '"dropped_clients": []' in (out / "summary.json").read_text()


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
