"""The Ray documentation's parameter server, asynchronous version: a baseline for
bench_server_capacity.py, kept as close to the published code as a zero-compute benchmark allows.

Source: "Parameter Server", https://docs.ray.io/en/latest/ray-core/examples/plot_parameter_server.html
(ray-project/ray, doc/source/ray-core/examples/plot_parameter_server.ipynb). As published: one
`ParameterServer` actor holding a torch model and `torch.optim.SGD(lr=1e-2)`; `apply_gradients(
*gradients)` sums lists of numpy arrays (`np.stack(...).sum(axis=0)`), sets them as the parameters'
`.grad`, steps the optimizer and returns `get_weights()` (the model's state_dict, tensors);
`DataWorker.compute_gradients(weights)` loads the weights (`load_state_dict`) and returns its
gradients as a list of numpy arrays; the driver keeps one `compute_gradients` task in flight per
worker, takes whichever finishes first (`ray.wait`), applies it on the server and sends the new
weights to that worker. The four model helpers are the docs' `ConvNet` methods, verbatim.

What differs, all of it:
- the model is ResNet-50 from ps_trainer.models (25.6M parameters; --smoke: four Linear layers
  of a hundredth of that) instead of the docs' MNIST ConvNet, wrapped in `DocsModel` for the
  helpers; the server and the workers take the model's name as an argument;
- zero compute: no data loader, no forward/backward. Each worker's gradients are fixed tensors of
  the right shapes (small values), set once, so `compute_gradients` is `set_weights` +
  `get_gradients` (the docs' `zero_grad()` would set them to None, so it is left out with the
  backward it prepares for), as the zero-compute workers of ps-trainer's side do;
- torch runs one thread in each process (the docs leave torch's default), as ps-trainer's
  shards and workers do;
- the driver loop runs for a time and at least a number of updates (not `iterations *
  num_workers` steps), leaves out the evaluation every 10 updates (a `ray.get` of the weights into
  the driver plus a test pass), returns when each update was issued so the benchmark can count
  them, and ends by waiting for the last update and the gradients still in flight.
"""

from __future__ import annotations

import time

import numpy as np
import ray
import torch
import torch.nn as nn


class DocsModel(nn.Module):
    """Any model, with the docs' ConvNet helper methods (copied unchanged)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def get_weights(self):
        return {k: v.cpu() for k, v in self.state_dict().items()}

    def set_weights(self, weights):
        self.load_state_dict(weights)

    def get_gradients(self):
        grads = []
        for p in self.parameters():
            grad = None if p.grad is None else p.grad.data.cpu().numpy()
            grads.append(grad)
        return grads

    def set_gradients(self, gradients):
        for g, p in zip(gradients, self.parameters()):
            if g is not None:
                p.grad = torch.from_numpy(g)


def build_model(spec: str | int) -> DocsModel:
    """A model name from ps_trainer.models ('resnet50'), or a parameter count: four Linear layers
    adding up to about that many (the smoke mode's stand-in: only its parameters matter, it never
    runs a forward pass)."""
    if isinstance(spec, int):
        layers = [nn.Linear(1000, max(1, spec // 1000 // 4)) for _ in range(4)]
        return DocsModel(nn.Sequential(*layers))
    from ps_trainer.models import build

    return DocsModel(build(spec))


@ray.remote
class ParameterServer(object):
    def __init__(self, lr, model="resnet50"):
        torch.set_num_threads(1)  # as every process here (the docs leave torch's default)
        self.model = build_model(model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)

    def apply_gradients(self, *gradients):
        summed_gradients = [
            np.stack(gradient_zip).sum(axis=0) for gradient_zip in zip(*gradients)
        ]
        self.optimizer.zero_grad()
        self.model.set_gradients(summed_gradients)
        self.optimizer.step()
        return self.model.get_weights()

    def get_weights(self):
        return self.model.get_weights()


@ray.remote
class DataWorker(object):
    def __init__(self, model="resnet50"):
        torch.set_num_threads(1)
        self.model = build_model(model)
        for p in self.model.parameters():  # zero compute: these stand for every backward's result
            p.grad = torch.full_like(p, 1e-4)

    def compute_gradients(self, weights):
        self.model.set_weights(weights)
        return self.model.get_gradients()


def run_async(ps, workers: list, seconds: float, at_least: int = 0) -> list[float]:
    """The docs' asynchronous driver loop, for `seconds` and `at_least` updates; the time.time()
    at which each update was issued (a gradient arrived and `apply_gradients` was called on it)."""
    current_weights = ps.get_weights.remote()

    gradients = {}
    for worker in workers:
        gradients[worker.compute_gradients.remote(current_weights)] = worker

    issued = []
    deadline = time.time() + seconds
    while time.time() < deadline or len(issued) < at_least:
        ready_gradient_list, _ = ray.wait(list(gradients))
        ready_gradient_id = ready_gradient_list[0]
        worker = gradients.pop(ready_gradient_id)

        # Compute and apply gradients.
        current_weights = ps.apply_gradients.remote(*[ready_gradient_id])
        gradients[worker.compute_gradients.remote(current_weights)] = worker
        issued.append(time.time())

    # Drain (not fetched here): the last update applied, no gradient left running into the next run.
    ray.wait([current_weights, *gradients], num_returns=1 + len(gradients), fetch_local=False)
    return issued
