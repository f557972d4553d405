import numpy as np
import pytest
import torch
import torch.nn as nn

from ps_trainer.core import FlatModel, ParamLayout
from ps_trainer.models import build


def test_layout_covers_every_parameter_once_and_shards_are_near_equal():
    model = build("digits_cnn")
    layout = ParamLayout.from_model(model)
    assert layout.num_params == sum(p.numel() for p in model.parameters())
    # offsets are contiguous, in named_parameters order
    ends = [e.offset + e.numel for e in layout.params]
    assert [e.offset for e in layout.params[1:]] == ends[:-1] and ends[-1] == layout.num_params
    # BatchNorm: running_mean and running_var, not num_batches_tracked (integer)
    assert {e.name.rsplit(".", 1)[1] for e in layout.buffers} == {"running_mean", "running_var"}
    for s in (1, 2, 3, 7):
        shards = layout.shards(s)
        sizes = [sh.num_params for sh in shards]
        assert sum(sizes) == layout.num_params and max(sizes) - min(sizes) <= 1
        assert shards[0].params[0] == 0 and all(a.params[1] == b.params[0] for a, b in zip(shards, shards[1:]))
        assert sum(sh.num_buffers for sh in shards) == layout.num_buffers


def test_too_many_shards_is_a_clear_error():
    layout = ParamLayout.from_model(nn.Linear(2, 1))  # 3 parameters
    with pytest.raises(ValueError, match=r"--ps-shards 4 is more than the model's 3 parameters"):
        layout.shards(4)
    with pytest.raises(ValueError, match="--ps-shards must be >= 1"):
        layout.shards(0)


def test_flat_model_parameters_grads_and_buffers_are_views():
    torch.manual_seed(0)
    model = build("digits_cnn")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    flat = FlatModel(model)
    for k, v in model.state_dict().items():  # values unchanged by re-pointing
        assert torch.equal(v, reference[k]), k
    x = torch.randn(4, 1, 8, 8)
    model(x).sum().backward()
    assert flat.grads_are_views()
    assert flat.grads.abs().sum() > 0
    # BatchNorm updated its running statistics inside the flat buffer
    assert not torch.equal(flat.buffers, torch.from_numpy(ParamLayout.from_model(build("digits_cnn")).flatten(build("digits_cnn"))[1]))
    # a write into the flat vector is a write into the model
    flat.params.zero_()
    assert all(float(p.detach().abs().sum()) == 0 for p in model.parameters())
    # gradients stay views across steps (zeroed in place, accumulated in place)
    flat.zero_grad()
    model(x).sum().backward()
    assert flat.grads_are_views() and flat.grads.abs().sum() > 0


def test_flatten_and_load_round_trip():
    model = build("digits_cnn")
    layout = ParamLayout.from_model(model)
    p, b = layout.flatten(model)
    other = build("digits_cnn")
    layout.load_into(other, p, b)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), other.state_dict().items()):
        if v.is_floating_point():
            assert torch.equal(v, v2), k
    assert layout.fingerprint() == ParamLayout.from_model(other).fingerprint()
    assert layout.fingerprint() != ParamLayout.from_model(build("digits_cnn", width=8)).fingerprint()
    assert p.dtype == np.float32 and p.flags.c_contiguous


@pytest.mark.parametrize("name", ["resnet20", "small_inception"])
def test_channels_last_keeps_parameters_aliased_and_pull_and_push_move_the_real_weights(name):
    """FlatModel(channels_last=True): conv weights are channels_last views of the flat buffer
    (no re-allocation), a pull in the server's order lands in the model, and the gradient pushed
    in the server's order equals that of the same model in the usual memory format."""
    from ps_trainer.core import FlatModel, ParamLayout
    from ps_trainer.models import build

    torch.manual_seed(0)
    plain = build(name, num_classes=10)
    channels_last = build(name, num_classes=10)
    layout = ParamLayout.from_model(plain)
    a, b = FlatModel(plain, layout), FlatModel(channels_last, layout, channels_last=True)
    assert b.permuted and all(len(e.shape) == 4 for e in b.permuted)
    start, end = b.params.data_ptr(), b.params.data_ptr() + 4 * b.params.numel()
    for p in channels_last.parameters():
        assert start <= p.data_ptr() < end  # still a view of the flat buffer
        if p.dim() == 4:
            assert p.is_contiguous(memory_format=torch.channels_last)
            assert p.shape[-2:] == (1, 1) or not p.is_contiguous()  # (1x1: both at once)
    # A pull: weights in the server's (out, in, kH, kW) order land in both models alike.
    wire = torch.randn(layout.num_params) * 0.05
    a.load(0, layout.num_params, wire)
    b.load(0, layout.num_params, wire)
    assert torch.equal(b.wire_params(), wire)
    flat_b, _ = layout.flatten(channels_last)  # read back through the model's own tensors
    np.testing.assert_array_equal(flat_b, wire.numpy())
    # A push: the same batch gives the same gradient, in the server's order.
    x = torch.randn(4, 3, *(32, 32) if name == "resnet20" else (28, 28))
    y = torch.randint(0, 10, (4,))
    plain.train()
    channels_last.train()
    for model, inputs in ((plain, x), (channels_last, x.contiguous(memory_format=torch.channels_last))):
        torch.manual_seed(1)  # the same dropout masks
        out = model(inputs)
        out = out[0] if isinstance(out, tuple) else out
        torch.nn.functional.cross_entropy(out, y).backward()
    assert b.grads_are_views()
    # channels_last convolutions sum in another order: equal to float32 rounding, ~1e-3 of the
    # largest gradient at one thread; the flat buffer itself (another order) is far from it
    tol = 2e-3 * float(a.grads.abs().max())
    torch.testing.assert_close(b.wire_grads(), a.grads, rtol=1e-3, atol=tol)
    assert float((b.grads - a.grads).abs().max()) > 20 * tol


@pytest.mark.parametrize("num_shards", [1, 3])
def test_alias_points_the_parameters_at_the_snapshot_and_copies_only_the_cut_tensors(num_shards):
    """FlatModel.alias: each tensor wholly inside a shard's range becomes a view of that shard's
    snapshot (no copy), a tensor a shard boundary cuts is copied into `params`; the model then
    computes exactly what it computes after a copying `load`, its gradients stay views of the
    flat gradient buffer, and the snapshots are not written. `load` undoes it."""
    torch.manual_seed(0)
    layout = ParamLayout.from_model(build("resnet20", num_classes=10))
    copied, aliased = (FlatModel(build("resnet20", num_classes=10), layout) for _ in range(2))
    wire = torch.randn(layout.num_params) * 0.05
    specs = layout.shards(num_shards)
    snapshots = [wire[s.params[0]:s.params[1]].clone() for s in specs]
    before = [t.clone() for t in snapshots]
    for s, snap in zip(specs, snapshots):
        copied.load(*s.params, snap)
        aliased.alias(*s.params, snap)
    assert aliased.aliased and torch.equal(aliased.wire_params(), wire)
    ranges = [(s.params, snap.data_ptr(), snap.data_ptr() + 4 * snap.numel())
              for s, snap in zip(specs, snapshots)]
    inside = cut = 0
    for p, e in aliased._entries:
        lo, hi = e.offset, e.offset + e.numel
        home = [r for r in ranges if r[0][0] <= lo and hi <= r[0][1]]
        if home:  # wholly inside one shard: a view of its snapshot
            inside += 1
            assert home[0][1] <= p.data_ptr() < home[0][2], e.name
        else:  # cut by a boundary: in the flat buffer
            cut += 1
            assert aliased.params.data_ptr() <= p.data_ptr() < aliased.params.data_ptr() + 4 * layout.num_params
    assert cut == num_shards - 1 and inside == len(layout.params) - cut  # (no boundary on an edge here)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for flat in (copied, aliased):
        flat.model.train()
        torch.nn.functional.cross_entropy(flat.model(x), y).backward()
    assert aliased.grads_are_views()
    assert torch.equal(aliased.grads, copied.grads) and aliased.grads.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(snapshots, before))  # read, never written
    # A copying load points everything back at `params`.
    aliased.load(0, layout.num_params, wire * 2)
    assert not any(r[1] <= p.data_ptr() < r[2] for p in aliased.model.parameters() for r in ranges)
    assert torch.equal(aliased.wire_params(), wire * 2) and torch.equal(aliased.params, wire * 2)


def test_alias_refuses_a_channels_last_model():
    layout = ParamLayout.from_model(build("resnet20", num_classes=10))
    flat = FlatModel(build("resnet20", num_classes=10), layout, channels_last=True)
    with pytest.raises(ValueError, match="alias: only for CPU models in the wire order"):
        flat.alias(0, layout.num_params, torch.zeros(layout.num_params))
