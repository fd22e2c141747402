"""The ClientApp, written as Flower's quickstart-pytorch writes it: momentum SGD for one local
epoch, weights back with its own metric names, and its own evaluate; `app` knows nothing of
asyncfl. `helped_app` serves the same training one step at a time through `asyncfl.client`,
so that every asyncfl strategy can use it (point the pyproject's clientapp at it)."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import nn

from asyncfl.client import TorchTraining, Trained, TrainInstruction, evaluate_reply, register
from plugin_quickstart.task import BATCH_SIZE, Net, accuracy, batches, load_data

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


def evaluation(msg: Message, context: Context) -> tuple[dict[str, float], int]:
    """The received model's loss and accuracy on this node's own held-out examples."""
    net = Net()
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    _, (x, y) = data(context)
    loss, acc = accuracy(net, x, y)
    return {"eval_loss": loss, "eval_acc": acc}, len(y)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    metrics, count = evaluation(msg, context)
    return Message(RecordDict({"metrics": MetricRecord({**metrics, "num-examples": count})}),
                   reply_to=msg)


#: where a node keeps its place in its shuffled epochs, and its momentum between segments
EPOCH_STATE, MOMENTUM_STATE = "quickstart-epoch", "quickstart-momentum"


class Batches:
    """This node's minibatches as a training loop draws them: shuffled epoch after epoch (each
    new epoch's order from the seed of the task it starts in), the place kept in the node's
    state, so consecutive tasks go on through the data instead of starting over."""

    def __init__(self, context: Context, count: int, batch_size: int, seed: int) -> None:
        self.state, self.count, self.seed = context.state, count, seed
        self.batch_size = batch_size or count  # 0: the whole partition (FedSGD)
        saved = self.state.get(EPOCH_STATE)
        fits = saved is not None and saved["batch-size"] == self.batch_size
        self.order = list(saved["order"]) if fits else []
        self.position = int(saved["position"]) if fits else 0

    def next(self) -> torch.Tensor:
        if self.position >= len(self.order):
            self.order = [int(i) for i in np.random.default_rng(self.seed).permutation(self.count)]
            self.position = 0
        batch = self.order[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        return torch.tensor(batch)

    def save(self) -> None:
        self.state[EPOCH_STATE] = ConfigRecord({"order": self.order, "position": self.position,
                                                "batch-size": self.batch_size})


class QuickstartTraining(TorchTraining):
    """`TorchTraining` that also keeps the data's place and, within one segmented task (APSB),
    the optimizer's momentum in the node's state."""

    def __init__(self, net: Net, optimizer: torch.optim.SGD, loader: Batches,
                 context: Context, **kwargs) -> None:
        def step(index: int) -> float:
            batch = loader.next()
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            return loss.item()

        (x, y), _ = data(context)
        super().__init__(net, step, **kwargs)
        self.optimizer, self.loader, self.state = optimizer, loader, context.state

    def __call__(self, arrays, first_step: int, num_steps: int,
                 instruction: TrainInstruction) -> Trained:
        continues = instruction.segment and instruction.segment_start > 0
        if continues and MOMENTUM_STATE in self.state:
            buffers = self.state[MOMENTUM_STATE].to_torch_state_dict()
            for i, parameter in enumerate(self.model.parameters()):
                self.optimizer.state[parameter]["momentum_buffer"] = buffers[str(i)]
        trained = super().__call__(arrays, first_step, num_steps, instruction)
        self.loader.save()
        if instruction.segment and not instruction.final:
            self.state[MOMENTUM_STATE] = ArrayRecord({
                str(i): self.optimizer.state[p]["momentum_buffer"]
                for i, p in enumerate(self.model.parameters())})
        elif MOMENTUM_STATE in self.state:
            del self.state[MOMENTUM_STATE]
        return trained


def step_training(context: Context, instruction: TrainInstruction) -> TorchTraining:
    """The same training as `train`, one optimizer step at a time, for asyncfl's helper: it
    runs the steps each strategy asks for (the batch size it names, 0 for the whole
    partition), and sends what it wants back."""
    net = Net()
    (_, y), _ = data(context)
    optimizer = torch.optim.SGD(net.parameters(), lr=instruction.lr, momentum=0.9)
    batch_size = int(instruction.config.get("batch-size", BATCH_SIZE))
    loader = Batches(context, len(y), batch_size, instruction.seed)
    steps_per_epoch = -(-len(y) // loader.batch_size)
    return QuickstartTraining(net, optimizer, loader, context,
                              steps_per_epoch=steps_per_epoch, num_examples=len(y))


#: the same ClientApp with its training served through asyncfl's helper
helped_app = ClientApp()
register(helped_app, step_training)  # @app.train() and @app.train("segment")


@helped_app.evaluate()
def helped_evaluate(msg: Message, context: Context) -> Message:
    """`evaluate`, replying through the helper: the count also under the strategy's key."""
    metrics, count = evaluation(msg, context)
    return evaluate_reply(msg, metrics, count)


#: what the pyproject runs: `app`, or `helped_app` with run config client = "helped"
chosen_app = ClientApp()


@chosen_app.train()
@chosen_app.train("segment")
@chosen_app.evaluate()
def chosen(msg: Message, context: Context) -> Message:
    """The message handled by the app the run config's `client` names."""
    helped = str(context.run_config.get("client", "plain")) == "helped"
    return (helped_app if helped else app)(msg, context)
