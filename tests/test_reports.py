"""What a run and a comparison report: participation (updates per client), comparison.md's
columns and target, the timeline's data, and the figures' numbers (axes, bands, whiskers)."""

import csv
import json

import numpy as np
import pytest

import asyncfl
from asyncfl.plots import spans_decades, timeline_segments
from asyncfl.results import participation
from asyncfl.tools.flower_launcher import COMPARISON_COLUMNS, write_comparison
from asyncfl.tools.sweep.figures import band, whiskers
from tests.helpers import read_rows

SMALL = dict(num_clients=6, local_steps=1, batch_size=16, eval_every=2)


def test_participation_by_hand():
    equal = participation([5, 5, 5, 5, 5, 5])
    assert equal["gini"] == 0 and equal["top_share"] == pytest.approx(1 / 6)
    assert not equal["dominated"]
    alone = participation([0, 0, 0, 0, 0, 12])
    assert alone["top_client"] == 5 and alone["top_share"] == 1
    assert alone["gini"] == pytest.approx(5 / 6)  # (n - 1) / n: one client made every update
    assert alone["dominated"]
    # more than a third, but with three clients a third is an equal share: not dominated
    assert not participation([4, 3, 3])["dominated"]
    assert participation([7, 1, 1])["dominated"]
    assert not participation([4, 2, 2, 2, 2, 0])["dominated"]  # 4/12: a third, not more
    assert participation([5, 2, 2, 2, 2, 0])["dominated"]
    assert participation([0, 0])["top_client"] is None


def run(tmp_path, name, **kw):
    return asyncfl.simulate(output_dir=str(tmp_path), run_name=name, **{**SMALL, **kw})


def test_a_dominated_run_and_its_comparison_say_so(tmp_path):
    fedavg = run(tmp_path, "sync", strategy="fedavg", num_server_rounds=2,
                 delay_profile="0.01,1,1,1,1,1")
    fedbuff = run(tmp_path, "fast-one", strategy="fedbuff", num_server_rounds=12, buffer_size=2,
                  delay_profile="0.01,1,1,1,1,1", time_budget=fedavg.summary["virtual_time"])
    report = fedbuff.summary["participation"]
    assert report["top_client"] == 0 and report["dominated"]
    assert sum(report["updates_per_client"]) == fedbuff.summary["updates"]
    assert not fedavg.summary["participation"]["dominated"]
    dest = tmp_path / "compare"
    dest.mkdir()
    write_comparison([fedavg.output_dir, fedbuff.output_dir], dest)
    text = (dest / "comparison.md").read_text()
    assert text.startswith("Target accuracy: 0.9 (`target-accuracy` of the first run, fedavg)")
    header = next(line for line in text.splitlines() if line.startswith("| "))
    assert header == "| " + " | ".join(COMPARISON_COLUMNS) + " |"
    counts = report["updates_per_client"]
    assert (f"**Warning:** fedbuff: client 0 made {counts[0]} of its {sum(counts)} updates"
            in text)
    with (dest / "comparison.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(COMPARISON_COLUMNS)
    assert [r["dominated"] for r in rows] == ["no", "yes"]
    assert float(rows[1]["top_client_share"]) == round(report["top_share"], 3)
    assert float(rows[1]["gini_updates"]) == round(report["gini"], 3)
    assert all(r["target_accuracy"] == "0.9" for r in rows)
    assert (dest / "comparison.png").stat().st_size > 0


def test_an_even_comparison_says_no_client_dominates(tmp_path):
    outs = [run(tmp_path, s, strategy=s, num_server_rounds=4, buffer_size=3).output_dir
            for s in ("fedavg", "fedbuff")]
    dest = tmp_path / "compare"
    dest.mkdir()
    write_comparison(outs, dest)
    text = (dest / "comparison.md").read_text()
    assert "No client made more than a third of any run's updates." in text
    assert "Warning" not in text
    with (dest / "comparison.csv").open() as f:
        fedavg, fedbuff = csv.DictReader(f)
    final = read_rows(outs[0] / "evals.csv")[-1]["accuracy"]
    to_final = [float(r["virtual_time"]) for r in read_rows(outs[1] / "evals.csv")
                if float(r["accuracy"]) >= float(final)]
    assert float(fedavg["speedup_to_first_final"]) == 1.0
    if to_final:
        assert float(fedbuff["time_to_first_final_s"]) == round(to_final[0], 2)
        assert float(fedbuff["speedup_to_first_final"]) == round(
            float(fedavg["time_to_first_final_s"]) / to_final[0], 1)
        assert "x sooner" in text
    else:
        assert fedbuff["speedup_to_first_final"] == ""


def test_timeline_accounts_for_every_client_second(tmp_path):
    """Per client the segments tile [0, the run's end] without overlap; each applied update
    is one training segment with its staleness, between transfers of comm-latency + bytes /
    bandwidth; each rejected reply one `rejected` segment."""
    latency, bandwidth = 0.05, 2e6
    result = run(tmp_path, "timeline", strategy="fedbuff", num_server_rounds=8, buffer_size=2,
                 concurrency=4, comm_latency=latency, comm_bandwidth=bandwidth,
                 fault_fraction=0.34, fault_kinds="nan", max_faults=5)
    segments = timeline_segments(result.output_dir)
    with (result.output_dir / "events.csv").open() as f:
        events = list(csv.DictReader(f))
    finish = max(s["end"] for s in segments)
    assert finish == pytest.approx(max(float(e["virtual_time"]) for e in events))
    for client in range(6):
        mine = [s for s in segments if s["client"] == client]
        assert mine[0]["start"] == 0 and mine[-1]["end"] == pytest.approx(finish)
        assert all(a["end"] == pytest.approx(b["start"])
                   for a, b in zip(mine, mine[1:], strict=False))
        applied = [e for e in events if int(e["client"]) == client and not e["rejected"]]
        training = [s for s in mine if s["kind"] == "training"]
        assert [s["staleness"] for s in training] == [int(e["staleness"]) for e in applied]
        for s, e in zip(training, applied, strict=True):
            down = latency + float(e["bytes_down"]) / bandwidth
            assert s["start"] == pytest.approx(float(e["dispatch_time"]) + down)
        rejected = [e for e in events if int(e["client"]) == client and e["rejected"]]
        assert len([s for s in mine if s["kind"] == "rejected"]) == len(rejected)
    assert any(s["kind"] == "rejected" for s in segments)
    assert any(s["kind"] == "idle" for s in segments)
    transfers = [s for s in segments if s["kind"] == "transfer"]
    assert len(transfers) == 2 * sum(not e["rejected"] for e in events)
    assert (result.output_dir / "timeline.png").stat().st_size > 0


def test_timeline_draws_each_clients_own_link_and_its_offline_time(tmp_path):
    """With per-client links the transfers are each client's own (clients.csv); with
    availability the time a client had no task splits into idle where it was online and
    offline elsewhere (availability.csv)."""
    from asyncfl.engine.availability import OnOffWindows
    from asyncfl.engine.delays import parse_network_profile

    profile = "0.1:1e5:2e4,0.01:0:0"
    result = run(tmp_path, "links", strategy="fedbuff", num_server_rounds=10, buffer_size=2,
                 concurrency=3, comm_profile=profile, availability="exponential",
                 availability_on=15.0, availability_off=10.0)
    links = parse_network_profile(profile)
    windows = OnOffWindows(15.0, 10.0, result.config["seed"])
    segments = timeline_segments(result.output_dir)
    with (result.output_dir / "events.csv").open() as f:
        applied = [e for e in csv.DictReader(f) if not e["rejected"]]
    for client in range(6):
        mine = [s for s in segments if s["client"] == client]
        training = [s for s in mine if s["kind"] == "training"]
        for s, e in zip(training, [e for e in applied if int(e["client"]) == client],
                        strict=True):
            link = links[client % 2]
            down = link.transfer_time(int(e["bytes_down"]), 0) - link.latency
            assert s["start"] == pytest.approx(float(e["dispatch_time"]) + down)
        for s in mine:
            middle = (s["start"] + s["end"]) / 2
            if s["kind"] == "offline":
                assert not windows.online(client, middle), s
            elif s["kind"] == "idle":
                assert windows.online(client, middle), s
    assert any(s["kind"] == "offline" for s in segments)


def test_figures_numbers():
    assert spans_decades([0, 2.0, 1600]) and not spans_decades([0, 1, 50])
    times, mean, low, high = band([[(0, 0.05), (1, 0.9)], [(0, 0.5), (1, 1.0)],
                                   [(0, 0.0), (1, 1.0)]])
    assert list(times) == [0, 1]
    assert np.all(low >= 0) and np.all(high <= 1) and np.all(low <= mean) and np.all(mean <= high)
    assert low[0] == 0 and high[1] == 1  # the +- std band left [0, 1] there: clipped
    below, above = whiskers([10.0, 2.0], [4.0, 5.0])
    assert list(below) == [4.0, 2.0] and list(above) == [4.0, 5.0]


def test_run_summary_names_changed_settings_and_figure_title(tmp_path):
    result = run(tmp_path, "titled", strategy="fedbuff", num_server_rounds=2, buffer_size=3)
    assert result.summary["changed_settings"] == {"buffer-size": 3}
    config = json.loads((result.output_dir / "config.json").read_text())
    from asyncfl.plots import run_title

    title = run_title(config, result.summary)
    assert title.splitlines()[0] == ("fedbuff on digits, 6 clients (iid), lognormal step times "
                                     "(mean 1 s, std 0.5 s)")
    assert "buffer-size 3" in title.splitlines()[1]
