"""GPU workers (run with `make test-gpu` on a machine with CUDA; CI has none)."""

import copy

import numpy as np
import pytest
import torch

from ps_trainer.core import FlatModel, LRSchedule, NesterovMomentum, ParamLayout, ShardState
from ps_trainer.data import Batches, load_dataset
from ps_trainer.models import build
from ps_trainer.transport import InProcessClient
from ps_trainer.worker.worker import Worker

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("model_name", ["digits_cnn", "resnet20"])
def test_gpu_worker_zero_staleness_equals_torch_sgd_on_the_gpu(model_name):
    torch.backends.cudnn.deterministic = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(0)
    data = load_dataset("digits", seed=0)
    in_ch = 1 if model_name == "digits_cnn" else 3
    model = build(model_name, num_classes=10, in_channels=in_ch)
    ref = copy.deepcopy(model).cuda()
    layout = ParamLayout.from_model(model)
    p, b = layout.flatten(model)
    specs = layout.shards(2)
    shards = [ShardState(s.index, p[slice(*s.params)], b[slice(*s.buffers)],
                         optimizer=NesterovMomentum(0.9, 5e-4), schedule=LRSchedule(0.05))
              for s in specs]
    flat = FlatModel(model, layout, device="cuda")
    assert flat.params.is_cuda and all(q.is_cuda for q in model.parameters())
    size = 8 if model_name == "digits_cnn" else 32
    worker = Worker(0, flat, specs, InProcessClient(shards), Batches(data.x_train, data.y_train, 16, 1),
                    in_channels=in_ch, image_size=size, device="cuda", max_inflight=0)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    batches = Batches(data.x_train, data.y_train, 16, 1)
    from ps_trainer.trainer.evaluate import prepare

    for _ in range(10):
        worker.step()
        x, y = next(batches)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(ref(prepare(x, in_ch, size, "cuda")),
                                          torch.from_numpy(y).cuda()).backward()
        opt.step()
    ours = np.concatenate([s.params for s in shards])
    np.testing.assert_allclose(ours, layout.flatten(ref)[0], rtol=1e-4, atol=1e-5)
    assert flat.grads_are_views()
