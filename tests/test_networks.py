"""Per-client networks (`comm-profile`): each client's transfers take its own latency and its
own bandwidth down and up, exactly, in virtual time; replays are byte-identical."""

import pytest

import asyncfl
from asyncfl.config import ConfigError, validate_run_config
from asyncfl.engine.delays import NETWORK_CLASSES, DelayModel, Network, parse_network_profile
from tests.helpers import read_rows


def test_a_transfer_is_latency_plus_bytes_over_bandwidth_each_way():
    link = Network(latency=0.25, down=1000.0, up=500.0)
    assert link.transfer_time(2000, 1000) == 0.25 + 2.0 + 0.25 + 2.0
    assert Network(0.1).transfer_time(10**9, 10**9) == 0.2  # 0: unlimited


def test_profiles_name_classes_or_triples_and_cycle_over_clients():
    links = parse_network_profile("wifi*2,0.02:1e6:5e5")
    assert links == [NETWORK_CLASSES["wifi"]] * 2 + [Network(0.02, 1e6, 5e5)]
    model = DelayModel(step_times=[1.0] * 5, networks=tuple(links))
    assert model.comm_time(3, 100, 100) == NETWORK_CLASSES["wifi"].transfer_time(100, 100)
    assert model.comm_time(2, 1000, 500) == 0.02 + 0.001 + 0.02 + 0.001


@pytest.mark.parametrize("text", ["fibre", "1:2", "0.1:-1:5", "0.1:nan:1", "wifi*0", "1:inf:1"])
def test_a_bad_profile_is_refused_before_the_run_naming_the_setting(text):
    with pytest.raises(ConfigError, match="comm-profile"):
        validate_run_config({"comm-profile": text})


def test_every_task_takes_its_clients_own_link_in_virtual_time(out):
    """Four clients of equal speed behind four links: each event's duration is the steps'
    time plus the link's latency and bandwidth for the model down and the reply up."""
    profile = "0:0:0,0.5:0:0,0:20000:0,0.1:40000:10000"
    result = asyncfl.simulate(strategy="fedbuff", num_clients=4, num_server_rounds=6,
                              buffer_size=2, local_steps=2, delay_dist="constant",
                              delay_mean=1.0, comm_profile=profile, run_name="links", **out)
    links = parse_network_profile(profile)
    events = [r for r in read_rows(result.output_dir / "events.csv") if not r["rejected"]]
    assert {r["client"] for r in events} == {"0", "1", "2", "3"}
    for row in events:
        down, up = int(row["bytes_down"]), int(row["bytes_up"])
        expected = 2 * 1.0 + links[int(row["client"])].transfer_time(down, down)
        assert float(row["duration"]) == pytest.approx(expected, rel=1e-12), row
        assert up <= down * 1.01  # the reply is about model-sized, as the timing assumes
    again = asyncfl.simulate(strategy="fedbuff", num_clients=4, num_server_rounds=6,
                             buffer_size=2, local_steps=2, delay_dist="constant",
                             delay_mean=1.0, comm_profile=profile, run_name="links", **out)
    replayed = [r for r in read_rows(again.output_dir / "events.csv") if not r["rejected"]]

    def virtual(rows):  # every column but the wall clock's
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]

    assert virtual(replayed) == virtual(events)
    assert again.final_arrays().keys() == result.final_arrays().keys()
    assert all((again.final_arrays()[k] == result.final_arrays()[k]).all()
               for k in result.final_arrays())
