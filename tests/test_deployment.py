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
        # a node whose key was never registered, and one without the CA certificate, try to
        # join while the run goes on (their refusal overlaps the run: about a minute of CI)
        intruder = deployment.start_node(0, register=False, name="intruder")
        stranger = deployment.start_node(1, with_ca=False, name="no-ca")
        out = deployment.run({**RUN, "concurrency": 2, "num-server-rounds": 4,
                              "run-name": "e2e", "output-dir": str(tmp_path / "out")},
                             timeout=400)
        events = read_rows(out / "events.csv")
        assert {r["client"] for r in events if not r["rejected"]} == {"0", "1"}
        assert all(r["staleness"] != "" for r in events)
        summary = (out / "summary.json").read_text()
        assert '"clock": "wall"' in summary
        assert float(read_rows(out / "evals.csv")[-1]["accuracy"]) > 0.2  # chance: 0.1
        assert wait_exit(intruder, 90) not in (None, 0)
        assert wait_exit(stranger, 90) not in (None, 0)
        assert "Failed to activate SuperNode" in deployment.log("intruder")
        assert "CERTIFICATE_VERIFY_FAILED" in deployment.log("no-ca")
        processes = list(deployment.processes.values())
    assert all(p.poll() is not None and group_gone(p) for p in processes)


def trains(deployment: Deployment, name: str) -> int:
    """Train messages node `name` received so far (its log spans its restarts)."""
    return deployment.log(name).count("Receiving: train message")


def kill_restart_then_stop(deployment: Deployment, name: str, down: float, stop_file,
                           done: threading.Event) -> None:
    """Kill node `name` (SIGKILL: no goodbye to the SuperLink) as soon as it has received its
    first train task, bring it back `down` seconds later (the SuperLink refuses it until its
    heartbeat expires; `restart_node` tries again until it is let in), and once it has been
    sent two more tasks (so a reply of its came back in between) end the run by its stop
    file. Each step waits on what the processes log, not on a clock."""
    def wait_for(condition) -> bool:
        while not condition():
            if done.wait(0.2):
                return False
        return True

    if not wait_for(lambda: trains(deployment, name) >= 1):
        return
    deployment.stop_node(name, kill=True)
    if done.wait(down):
        return
    deployment.restart_node(name)
    if wait_for(lambda: trains(deployment, name) >= 3):
        stop_file.touch()


def test_an_async_run_goes_on_when_a_node_dies_and_uses_it_again_when_it_is_back(tmp_path):
    done, stop_file = threading.Event(), tmp_path / "STOP"
    with Deployment(tmp_path / "deploy", nodes=3) as deployment:
        chaos = threading.Thread(target=kill_restart_then_stop,
                                 args=(deployment, "node2", 20.0, stop_file, done))
        chaos.start()
        try:
            out = deployment.run({**RUN, "concurrency": 3, "num-server-rounds": 100_000,
                                  "stop-file": str(stop_file), "reply-timeout": 20.0,
                                  "max-faults": 0, "retry-backoff": 1.0,
                                  "run-name": "node-lost", "output-dir": str(tmp_path / "out")},
                                 timeout=500)
        finally:
            done.set()
            chaos.join()
    assert stop_file.exists(), "the run ended before the node was back and trained again"
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
    assert '"status": "finished"' in (out / "summary.json").read_text()


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
