"""The buffered strategies beyond FedBuff (CA2FL, FedStaleWeight, FADAS) and the server
optimizers they share: exact rule tests on tiny arrays, bad settings, end-to-end runs."""

import numpy as np
import pytest

import asyncfl
from asyncfl.config import BUFFERED_STRATEGIES, SETTINGS_BY_KEY, ConfigError, validate_run_config
from asyncfl.strategies import (
    CA2FL,
    FADAS,
    OPTIMIZERS,
    STRATEGIES,
    FedBuff,
    FedStaleWeight,
    ServerOptimizer,
    constant,
)
from asyncfl.strategies.blocks import DEFAULT_LR, polynomial_default
from asyncfl.strategies.ca2fl import CA2FLRule
from asyncfl.strategies.fadas import FADASRule
from asyncfl.strategies.fedbuff import FedBuffRule
from asyncfl.strategies.fedstaleweight import FedStaleWeightRule


def model(*values: float) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype=np.float64)}


def deltas(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    return [{"a": rng.normal(size=(2, 3)), "b": rng.normal(size=4)} for _ in range(n)]


def start_model(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"a": rng.normal(size=(2, 3)), "b": rng.normal(size=4)}


# ---------------------------------------------------------------- server optimizers


def run_steps(optimizer: ServerOptimizer, directions: list[list[float]]) -> list[np.ndarray]:
    w = {"w": np.zeros(2, dtype=np.float32)}
    models = []
    for d in directions:
        w = optimizer.step(w, model(*d))
        models.append(w["w"])
    return models


def test_sgd_with_momentum_is_fedavgm_by_hand():
    """m <- 0.5 m + d, w <- w + 0.5 m: d = 2, -1, 4 gives m = 2, 0, 4 and w = 1, 1, 3."""
    optimizer = ServerOptimizer("sgd", lr=0.5, momentum=0.5)
    models = run_steps(optimizer, [[2, 0], [-1, 0], [4, 0]])
    assert [float(m[0]) for m in models] == [1.0, 1.0, 3.0]
    assert optimizer.moments["w"]["m"].tolist() == [4.0, 0.0] and optimizer.steps == 3
    assert models[-1].dtype == np.float32


def test_sgd_without_momentum_keeps_no_state():
    optimizer = ServerOptimizer("sgd", lr=2.0)
    assert [m.tolist() for m in run_steps(optimizer, [[1, -1], [0.5, 0]])] == [[2, -2], [3, -2]]
    assert optimizer.moments == {"w": {}}


# lr 0.3, beta1 0.5, beta2 0.75, epsilon 1; d1 = (4, -2), d2 = (0, 2). For every optimizer
# m1 = (2, -1), m2 = 0.5 m1 + 0.5 d2 = (1, 0.5); the second moments are computed by hand.
HAND = dict(lr=0.3, betas=(0.5, 0.75), epsilon=1.0)


def test_adam_by_hand():
    # v1 = 0.25 d1^2 = (4, 1); v2 = 0.75 v1 + 0.25 d2^2 = (3, 1.75)
    optimizer = ServerOptimizer("adam", **HAND)
    w1, w2 = run_steps(optimizer, [[4, -2], [0, 2]])
    np.testing.assert_allclose(w1, [0.3 * 2 / 3, 0.3 * -1 / 2], rtol=1e-6)
    np.testing.assert_allclose(
        w2, w1 + [0.3 * 1 / (np.sqrt(3) + 1), 0.3 * 0.5 / (np.sqrt(1.75) + 1)], rtol=1e-6)
    assert optimizer.moments["w"]["m"].tolist() == [1.0, 0.5]
    assert optimizer.moments["w"]["v"].tolist() == [3.0, 1.75]


def test_yogi_by_hand():
    # v1 = 0 - 0.25 d1^2 sign(0 - d1^2) = (4, 1); v2 = v1 - 0.25 d2^2 sign(v1 - d2^2)
    #    = (4 - 0, 1 - 1 * sign(1 - 4)) = (4, 2)
    optimizer = ServerOptimizer("yogi", **HAND)
    w1, w2 = run_steps(optimizer, [[4, -2], [0, 2]])
    np.testing.assert_allclose(w1, [0.2, -0.15], rtol=1e-6)
    np.testing.assert_allclose(w2, w1 + [0.3 * 1 / 3, 0.3 * 0.5 / (np.sqrt(2) + 1)], rtol=1e-6)
    assert optimizer.moments["w"]["v"].tolist() == [4.0, 2.0]


def test_adagrad_by_hand():
    # v1 = d1^2 = (16, 4); v2 = v1 + d2^2 = (16, 8)
    optimizer = ServerOptimizer("adagrad", **HAND)
    w1, w2 = run_steps(optimizer, [[4, -2], [0, 2]])
    np.testing.assert_allclose(w1, [0.3 * 2 / 5, 0.3 * -1 / 3], rtol=1e-6)
    np.testing.assert_allclose(w2, w1 + [0.3 * 1 / 5, 0.3 * 0.5 / (np.sqrt(8) + 1)], rtol=1e-6)
    assert optimizer.moments["w"]["v"].tolist() == [16.0, 8.0]


def test_amsgrad_by_hand():
    # v as adam: (4, 1) then (3, 1.75); v_max = (4, 1) then (4, 1.75)
    optimizer = ServerOptimizer("amsgrad", **HAND)
    w1, w2 = run_steps(optimizer, [[4, -2], [0, 2]])
    np.testing.assert_allclose(w1, [0.2, -0.15], rtol=1e-6)
    np.testing.assert_allclose(w2, w1 + [0.3 * 1 / 3, 0.3 * 0.5 / (np.sqrt(1.75) + 1)],
                               rtol=1e-6)
    assert optimizer.moments["w"]["v_max"].tolist() == [4.0, 1.75]
    assert optimizer.moments["w"]["v"].tolist() == [3.0, 1.75]


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(name="adamw"), "adamw.*unknown.*sgd, adam, yogi, adagrad, amsgrad"),
    (dict(name="adam", betas=(0.9, 1.0)), "beta2 = 1.0 is out of range"),
    (dict(name="yogi", betas=(-0.1, 0.9)), "beta1 = -0.1"),
    (dict(name="sgd", lr=float("nan")), "lr = nan"),
    (dict(name="adam", epsilon=0.0), "epsilon = 0.0"),
    (dict(name="sgd", momentum=1.0), "momentum = 1.0"),
    (dict(name="adam", momentum=0.9), "takes betas, not momentum"),
])
def test_a_bad_server_optimizer_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ServerOptimizer(**kwargs)


def test_a_default_learning_rate_per_optimizer():
    assert {name: ServerOptimizer(name).lr for name in OPTIMIZERS} == DEFAULT_LR


# ------------------------------------------------- FedBuff's measured-staleness step


def test_fedbuff_default_step_divides_by_the_measured_mean_staleness_weight():
    """K = 2, gamma = K / M = 0.5, s(tau) = (1 + tau)^-1/2. Step 1: staleness 0 and 3
    (weights 1, 0.5; s-bar 0.75): w = 1 + 0.5 (1 x 2 + 0.5 x 4) / (2 x 0.75) = 7/3. Step 2:
    staleness 8 and 0 (weights 1/3, 1; s-bar 17/24): w += 0.5 (1 + 3) / (2 x 17/24)."""
    rule = FedBuffRule(2, ServerOptimizer("sgd", lr=0.5), polynomial_default,
                       measured_staleness=True)
    w = {"x": np.array([1.0])}
    assert rule.fold(w, {"x": np.array([2.0])}, 1, 0, client=0) is None
    w = rule.fold(w, {"x": np.array([4.0])}, 1, 3, client=1)
    np.testing.assert_allclose(w["x"], [7 / 3], rtol=1e-12)
    assert rule.fold(w, {"x": np.array([3.0])}, 1, 8, client=0) is None
    w = rule.fold(w, {"x": np.array([3.0])}, 1, 0, client=1)
    np.testing.assert_allclose(w["x"], [7 / 3 + 0.5 * 4 / (2 * 17 / 24)], rtol=1e-12)


@pytest.mark.parametrize("lr, staleness", [(0.5, constant), (1.0, polynomial_default)])
def test_fedbuff_measured_step_is_the_plain_step_without_weights_or_at_a_unit_step(
        lr, staleness):
    """Equal weights (s-bar = 1), or gamma = 1 (K >= M: the cap), leave the paper's step."""
    rng = np.random.default_rng(3)
    measured = FedBuffRule(3, ServerOptimizer("sgd", lr=lr), staleness, measured_staleness=True)
    plain = FedBuffRule(3, ServerOptimizer("sgd", lr=lr), staleness)
    w_measured = w_plain = start_model(rng)
    for i, delta in enumerate(deltas(rng, 12)):
        w_measured = measured.fold(w_measured, delta, 1.0, i % 4, i % 3) or w_measured
        w_plain = plain.fold(w_plain, delta, 1.0, i % 4, i % 3) or w_plain
    for key in w_plain:
        np.testing.assert_array_equal(w_measured[key], w_plain[key])


def test_fedbuff_uses_the_measured_step_only_at_its_default_server_step():
    assert FedBuff().rule.measured_staleness
    assert FedBuff(server_optimizer="sgd", server_momentum=0.9).rule.measured_staleness
    assert STRATEGIES["fedbuff"](**asyncfl.strategies.REGISTRY["fedbuff"].settings(
        validate_run_config({"strategy": "fedbuff"}))).rule.measured_staleness
    assert not FedBuff(server_lr=0.1).rule.measured_staleness
    assert not FedBuff(server_optimizer="adam").rule.measured_staleness


# ---------------------------------------------------------------- CA2FL


def test_ca2fl_with_every_client_once_per_step_equals_fedbuff():
    """N = K = 3, every client reports once per step (in a new order each step): the cached
    mean cancels against the calibration and the step is the mean of the new deltas."""
    rng = np.random.default_rng(0)
    ca2fl = CA2FLRule(3, ServerOptimizer("sgd", lr=0.7), num_clients=3)
    fedbuff = FedBuffRule(3, ServerOptimizer("sgd", lr=0.7), staleness=constant)
    w_ca2fl = w_fedbuff = start_model(rng)
    for step in range(4):
        for client, delta in zip(rng.permutation(3), deltas(rng, 3), strict=True):
            new_ca2fl = ca2fl.fold(w_ca2fl, delta, 1.0, step % 2, int(client))
            new_fedbuff = fedbuff.fold(w_fedbuff, delta, 1.0, step % 2, int(client))
        w_ca2fl, w_fedbuff = new_ca2fl, new_fedbuff
        for key in w_fedbuff:
            np.testing.assert_allclose(w_ca2fl[key], w_fedbuff[key], rtol=1e-12, atol=1e-12)


def test_ca2fl_cache_holds_exactly_each_clients_latest_update():
    rng = np.random.default_rng(1)
    rule = CA2FLRule(2, num_clients=5)
    w, latest = start_model(rng), {}
    for client, delta in zip(rng.integers(0, 4, size=25), deltas(rng, 25), strict=True):
        new = rule.fold(w, delta, 1.0, 0, int(client))
        w = new if new is not None else w
        latest[int(client)] = delta
        assert rule.cache.keys() == latest.keys()
        for c, d in latest.items():
            for key in d:
                np.testing.assert_array_equal(rule.cache[c][key], d[key])
    assert 4 not in rule.cache


def test_ca2fl_steps_by_hand_with_a_client_reporting_twice():
    """N = 2, K = 2. Step 1: client 0 reports 2, then 4 (no cache yet): v = 0 + (2 + 4) / 2
    = 3. Step 2: client 1 reports 1, client 0 reports 6: h = (4 + 0) / 2 = 2, calibration
    ((1 - 0) + (6 - 4)) / 2 = 1.5, v = 3.5."""
    rule = CA2FLRule(2, num_clients=2)
    w = model(0.0)
    assert rule.fold(w, model(2.0), 1.0, 0, 0) is None
    w = rule.fold(w, model(4.0), 1.0, 0, 0)
    assert w["w"].tolist() == [3.0]
    assert rule.fold(w, model(1.0), 1.0, 1, 1) is None
    w = rule.fold(w, model(6.0), 1.0, 0, 0)
    assert w["w"].tolist() == [6.5]
    assert rule.cache_sum["w"].tolist() == [7.0]  # h^0 + h^1 = 6 + 1


def test_ca2fl_needs_the_number_of_clients():
    with pytest.raises(ValueError, match="num_clients"):
        CA2FLRule(1).fold(model(0.0), model(1.0), 1.0, 0, 0)


# ---------------------------------------------------------------- FADAS


def test_fadas_below_its_threshold_equals_fedbuff_with_amsgrad():
    rng = np.random.default_rng(2)
    fadas = FADASRule(3, ServerOptimizer("amsgrad", lr=0.05), delay_threshold=10)
    fedbuff = FedBuffRule(3, ServerOptimizer("amsgrad", lr=0.05), staleness=constant)
    w_fadas = w_fedbuff = start_model(rng)
    for i, delta in enumerate(deltas(rng, 12)):
        staleness = int(rng.integers(0, 11))
        new_fadas = fadas.fold(w_fadas, delta, 1.0, staleness, i % 4)
        new_fedbuff = fedbuff.fold(w_fedbuff, delta, 1.0, staleness, i % 4)
        assert (new_fadas is None) == (new_fedbuff is None)
        if new_fadas is not None:
            w_fadas, w_fedbuff = new_fadas, new_fedbuff
            for key in w_fadas:
                np.testing.assert_array_equal(w_fadas[key], w_fedbuff[key])
    assert fadas.optimizer.steps == 4


def test_fadas_learning_rate_shrinks_above_the_threshold():
    """tau_c = 2, eta = 0.5: a buffer whose stalest update is 5 versions old steps with
    min(0.5, 1/5) = 0.2; one at 2 with eta."""
    rule = FADASRule(2, ServerOptimizer("sgd", lr=0.5), delay_threshold=2)
    assert rule.fold(model(0.0), model(1.0), 1.0, 5, 0) is None
    assert rule.fold(model(0.0), model(3.0), 1.0, 1, 1)["w"].tolist() == [0.2 * 2.0]
    assert rule.fold(model(0.0), model(1.0), 1.0, 2, 0) is None
    assert rule.fold(model(0.0), model(3.0), 1.0, 0, 1)["w"].tolist() == [0.5 * 2.0]
    assert rule.learning_rate(1000) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="delay_threshold"):
        FADASRule(delay_threshold=-1)


# ---------------------------------------------------------------- FedStaleWeight


def test_fedstaleweight_with_equal_speeds_equals_fedbuff():
    """Equal speeds: every client sees the same staleness, so all weights are equal."""
    rng = np.random.default_rng(3)
    fsw = FedStaleWeightRule(4, ServerOptimizer("sgd", lr=0.5, momentum=0.3))
    fedbuff = FedBuffRule(4, ServerOptimizer("sgd", lr=0.5, momentum=0.3), staleness=constant)
    w_fsw = w_fedbuff = start_model(rng)
    for step in range(3):
        for client, delta in enumerate(deltas(rng, 4)):
            new_fsw = fsw.fold(w_fsw, delta, 1.0, step, client)
            new_fedbuff = fedbuff.fold(w_fedbuff, delta, 1.0, step, client)
        w_fsw, w_fedbuff = new_fsw, new_fedbuff
        for key in w_fsw:
            np.testing.assert_allclose(w_fsw[key], w_fedbuff[key], rtol=1e-12, atol=1e-12)


def test_fedstaleweight_weights_by_average_staleness_by_hand():
    """K = 2. Client 0 at staleness 0 (a = 1) and client 1 at 3 (a = 4): (1*1 + 4*6) / 5 = 5.
    Then client 1 at 1 (mean staleness 2, a = 3), client 0 at 2 (mean 1, a = 2):
    (3*2 + 2*-3) / 5 = 0."""
    rule = FedStaleWeightRule(2)
    assert rule.fold(model(0.0), model(1.0), 1.0, 0, 0) is None
    assert rule.fold(model(0.0), model(6.0), 1.0, 3, 1)["w"].tolist() == [5.0]
    assert rule.fold(model(5.0), model(2.0), 1.0, 1, 1) is None
    assert rule.fold(model(5.0), model(-3.0), 1.0, 2, 0)["w"].tolist() == [5.0]
    assert rule.reports == {0: 2, 1: 2} and rule.staleness_sum == {0: 2, 1: 4}


# ---------------------------------------------------------------- faces and run config


@pytest.mark.parametrize("cls", [CA2FL, FedStaleWeight, FADAS])
def test_a_face_takes_a_server_optimizer_and_checks_its_settings(cls):
    optimizer = ServerOptimizer("yogi")
    assert cls(buffer_size=3, server_optimizer=optimizer).rule.optimizer is optimizer
    with pytest.raises(ValueError, match="buffer_size"):
        cls(buffer_size=0)
    with pytest.raises(ValueError, match="client_returns"):
        cls(client_returns="gradient")


def test_fedbuff_takes_either_lr_and_momentum_or_a_server_optimizer():
    assert FedBuff(server_lr=0.5, server_momentum=0.9).rule.optimizer.momentum == 0.9
    assert FADAS().rule.optimizer.name == "amsgrad" and CA2FL().rule.optimizer.name == "sgd"
    with pytest.raises(ValueError, match="server_lr and server_momentum"):
        FedBuff(server_lr=0.5, server_optimizer=ServerOptimizer("adam"))


def test_the_run_config_names_every_optimizer_and_buffered_strategy():
    assert set(SETTINGS_BY_KEY["server-optimizer"].choices) == {"auto", *OPTIMIZERS}
    assert set(BUFFERED_STRATEGIES) <= set(STRATEGIES)
    lr_help = SETTINGS_BY_KEY["server-lr"].help
    # sgd's run-config default scales with the staleness (server_app.server_lr)
    assert all(f"{name} {lr:g}" in lr_help for name, lr in DEFAULT_LR.items() if name != "sgd")
    assert "min(1, B/M) for sgd" in lr_help


@pytest.mark.parametrize(("overrides", "match"), [
    (dict(strategy="fedasync", **{"server-optimizer": "adam"}), "buffered strategies"),
    (dict(strategy="fadas", **{"server-momentum": 0.9}), "server-beta1"),
    (dict(strategy="fedbuff", **{"server-optimizer": "adam", "server-momentum": 0.5}),
     "server-beta1"),
    (dict(strategy="ca2fl", **{"server-optimizer": "nadam"}), "choose one of: auto, sgd"),
    (dict(strategy="ca2fl", **{"server-beta2": 1.0}), "'server-beta2' = 1.0 is out of range"),
    (dict(strategy="fadas", **{"server-epsilon": float("inf")}), "not a finite number"),
    (dict(strategy="fadas", **{"fadas-threshold": -1}), "'fadas-threshold' = -1"),
])
def test_bad_optimizer_settings_are_refused_before_work_starts(overrides, match):
    with pytest.raises(ConfigError, match=match):
        validate_run_config(overrides)


@pytest.mark.parametrize("strategy", ["ca2fl", "fedstaleweight", "fadas"])
def test_the_new_strategies_train_on_digits(out, strategy):
    result = asyncfl.simulate(strategy=strategy, num_clients=6, num_server_rounds=60,
                              buffer_size=3, local_steps=5, batch_size=10, lr=0.1,
                              delay_dist="uniform", eval_every=60, run_name=strategy, **out)
    assert result.summary["final_version"] == 60
    assert result.summary["accuracy"] > 0.7  # from 8% at the start; 0.79 to 0.87 here


def test_fedbuff_with_an_adaptive_server_optimizer_trains_on_digits(out):
    result = asyncfl.simulate(strategy="fedbuff", server_optimizer="adam", num_clients=6,
                              num_server_rounds=60, buffer_size=3, local_steps=5,
                              batch_size=10, lr=0.1, delay_dist="uniform", eval_every=60,
                              run_name="fedbuff-adam", **out)
    assert result.summary["accuracy"] > 0.7
