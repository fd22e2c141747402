"""The ClientApp, written as Flower's quickstart-pytorch writes it: momentum SGD for one local
epoch, weights back with its own metric names, and its own evaluate. Nothing here knows
asyncfl, except `client = "helper"`, which serves the same training through
`asyncfl.client` so that every asyncfl strategy can use it."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from plugin_quickstart.task import Net, accuracy, batches, load_data

app = ClientApp()


def data(context: Context):
    return load_data(int(context.node_config["partition-id"]),
                     int(context.node_config["num-partitions"]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local epoch of momentum SGD from the received model."""
    if context.run_config.get("client") == "helper":
        return helped_train(msg, context)
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


def helped_train(msg: Message, context: Context) -> Message:
    """The same training, one step at a time, through asyncfl's client helper."""
    raise NotImplementedError("filled in with asyncfl.client")
