"""The ClientApp, written as Flower's quickstart-pytorch writes it: momentum SGD for one local
epoch, weights back with its own metric names, and its own evaluate; `app` knows nothing of
asyncfl. `helped_app` serves the same training one step at a time through `asyncfl.client`,
so that every asyncfl strategy can use it (point the pyproject's clientapp at it)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from asyncfl.client import TorchTraining, TrainInstruction, register
from plugin_quickstart.task import Net, accuracy, batches, load_data

app = ClientApp()


def data(context: Context):
    return load_data(int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch of momentum SGD from the received model."""
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    (x, y), _ = data(context)
    optimizer = torch.optim.SGD(net.parameters(), lr=float(msg.content["config"]["lr"]),
                                momentum=0.9)
    losses = []
    for batch in batches(len(y)):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    metrics = MetricRecord({"train_loss": sum(losses) / len(losses), "num-examples": len(y)})
    return Message(RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The received model on this node's own held-out examples."""
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, (x, y) = data(context)
    loss, acc = accuracy(net, x, y)
    metrics = MetricRecord({"eval_loss": loss, "eval_acc": acc, "num-examples": len(y)})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def step_training(context: Context, instruction: TrainInstruction) -> TorchTraining:
    """The same training as `train`, one optimizer step at a time, for asyncfl's helper: it
    runs the steps each strategy asks for and sends what it wants back."""
    net = Net()
    (x, y), _ = data(context)
    optimizer = torch.optim.SGD(net.parameters(), lr=instruction.lr, momentum=0.9)
    order = list(batches(len(y)))

    def step(index: int) -> float:
        batch = order[index % len(order)]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
        loss.backward()
        optimizer.step()
        return loss.item()

    return TorchTraining(net, step, steps_per_epoch=len(order), num_examples=len(y))


#: the same ClientApp with its training served through asyncfl's helper
helped_app = ClientApp()
register(helped_app, step_training)  # @app.train() and @app.train("segment")
helped_app.evaluate()(evaluate)
