"""Federated evaluation samples Flower's real node ids (random uint64, some above 2**63)."""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from asyncfl.engine.evaluation import FederatedEvaluation

#: node ids as Flower draws them: any uint64, including values a float64 cannot hold
REAL_IDS = [203928630026049990, 2**64 - 1, 2**63 + 1, 17, 9007199254740993,
            12345678901234567891]


@pytest.fixture(autouse=True)
def server_identity():
    """Messages are built as a ServerApp builds them (what the inline Grid sets up)."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0


def test_every_evaluate_message_goes_to_a_real_node():
    evaluation = FederatedEvaluation(fraction=0.5, min_nodes=2)
    for seed in range(20):
        messages = evaluation.instructions(3, ArrayRecord(), ConfigRecord(), REAL_IDS,
                                           np.random.default_rng(seed))
        targets = [m.metadata.dst_node_id for m in messages]
        assert len(targets) == 3 and len(set(targets)) == 3
        assert set(targets) <= set(REAL_IDS), targets


def test_the_whole_federation_is_evaluated_at_fraction_one():
    messages = FederatedEvaluation(fraction=1.0).instructions(
        0, ArrayRecord(), ConfigRecord(), REAL_IDS, np.random.default_rng(0))
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(REAL_IDS)
