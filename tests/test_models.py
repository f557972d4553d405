"""Every registered model, tested without writing a test for it: build, forward and backward at
batch 2, output and aux-head shapes in train and eval mode, no NaN, a finite gradient for every
parameter, the registry's minimum input sizes, `in_channels`, channels_last and autocast.

Sizes are small (the model's measured minimum, capped at 64 px unless it needs more) so the whole
file runs in about two minutes on 2 CPU cores; full-size passes are in the slow test at the end.
"""

import math
from pathlib import Path

import pytest
import torch

from ps_trainer.models import (AuxOutputs, build, build_meta, describe, format_table, get_spec,
                               list_models, main_logits, model_table, training_loss)
from ps_trainer.models.summary import survives

NUM_CLASSES = 7  # odd on purpose: a hard-coded 10 or 1000 somewhere would show
MODELS = list_models()


def small_size(name: str) -> int:
    spec = get_spec(name)
    return max(spec.min_train_size, min(spec.input_size, 64))




@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_train_and_eval(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    model = build(name, num_classes=NUM_CLASSES)
    size = small_size(name)
    x = torch.randn(2, spec.in_channels, size, size)
    target = torch.tensor([1, 5])

    model.train()
    out = model(x)
    if spec.aux_heads:
        assert isinstance(out, AuxOutputs) and len(out.aux) == spec.aux_heads
        for aux in out.aux:
            assert aux.shape == (2, NUM_CLASSES) and torch.isfinite(aux).all()
    else:
        assert isinstance(out, torch.Tensor)
    logits = main_logits(out)
    assert logits.shape == (2, NUM_CLASSES) and torch.isfinite(logits).all()

    loss = training_loss(out, target, **spec.loss_options())
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradient in {bad[:5]}"

    model.eval()  # eval mode: plain logits, aux heads dropped, even at the smallest input size
    with torch.no_grad():
        for s in (size, spec.min_input_size):
            y = model(torch.randn(2, spec.in_channels, s, s))
            assert isinstance(y, torch.Tensor) and y.shape == (2, NUM_CLASSES)
            assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", MODELS)
def test_min_input_sizes_are_the_measured_ones(name):
    """`min_input_size` survives and one pixel less does not (meta device: shapes only)."""
    spec = get_spec(name)
    for train, smallest in ((False, spec.min_input_size), (True, spec.min_train_size)):
        assert survives(name, smallest, train=train), (name, train, smallest)
        assert smallest == 1 or not survives(name, smallest - 1, train=train), (name, train, smallest)


@pytest.mark.parametrize("name", MODELS)
def test_in_channels_is_honoured(name):
    spec = get_spec(name)
    model = build_meta(name, num_classes=NUM_CLASSES, in_channels=1).eval()
    size = max(spec.min_input_size, 32)
    y = model(torch.zeros(2, 1, size, size, device="meta"))
    assert y.shape == (2, NUM_CLASSES)


def test_aux_loss_is_weighted_as_the_papers_say():
    torch.manual_seed(0)
    spec = get_spec("googlenet")
    assert (spec.aux_heads, spec.aux_weight, spec.label_smoothing) == (2, 0.3, 0.0)
    v3 = get_spec("inception_v3")
    assert (v3.aux_heads, v3.label_smoothing) == (1, 0.1)
    model = build("googlenet", num_classes=NUM_CLASSES).train()
    out = model(torch.randn(2, 3, 96, 96))
    target = torch.tensor([0, 3])
    ce = torch.nn.functional.cross_entropy
    expected = ce(out.logits, target) + 0.3 * (ce(out.aux[0], target) + ce(out.aux[1], target))
    assert torch.allclose(training_loss(out, target, **spec.loss_options()), expected)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError) as err:
        build("resnet5")
    message = str(err.value)
    assert "unknown model 'resnet5'" in message
    for name in ("googlenet", "inception_v3", "resnet50", "vgg16_bn", "xception", "resnet20"):
        assert name in message


def test_aliases_and_expected_names_are_registered():
    assert get_spec("inception_v2").name == "bn_inception"
    assert get_spec("inception_v1").name == "googlenet"
    expected = {"googlenet", "googlenet_tv", "bn_inception", "inception_v3", "inception_v4",
                "inception_resnet_v1", "inception_resnet_v2", "xception", "alexnet", "alexnet_tv",
                "resnet20", "resnet32", "resnet56", "small_inception", "digits_cnn"}
    expected |= {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    expected |= {f"resnet{d}_tv" for d in (50, 101, 152)}
    expected |= {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    assert expected <= set(MODELS)


def test_model_table_lists_every_model_with_counts():
    rows = model_table()
    assert [r["name"] for r in rows] == MODELS
    by_name = {r["name"]: r for r in rows}
    assert by_name["resnet50"]["params"] == 25_557_032 and by_name["resnet50"]["input_size"] == 224
    assert by_name["inception_v3"]["input_size"] == 299 and by_name["inception_v3"]["aux_heads"] == 1
    assert by_name["googlenet"]["aux_heads"] == 2
    assert all(r["macs"] > 0 and r["params"] > 0 for r in rows)
    assert describe("inception_v2") == by_name["bn_inception"]
    text = format_table(rows)
    assert "resnet50" in text and "25,557,032" in text and len(text.splitlines()) == len(rows) + 2


def test_docs_table_is_current():
    """docs/models.md's table is what `model_table()` computes today."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    documented = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("`"):
            documented[cells[0].strip("`")] = (int(cells[1].replace(",", "")), int(cells[2]),
                                               float(cells[3]), int(cells[4]))
    computed = {r["name"]: (r["params"], r["input_size"], round(r["gmacs"], 3), r["aux_heads"])
                for r in model_table()}
    assert documented == computed


CHANNELS_LAST = ["resnet18", "googlenet", "googlenet_tv", "small_inception", "xception",
                 "inception_resnet_v1", "bn_inception", "resnet20"]


@pytest.mark.parametrize("name", CHANNELS_LAST)
def test_channels_last_gives_the_same_outputs_and_trains(name):
    torch.manual_seed(0)
    spec = get_spec(name)
    size = small_size(name)
    model = build(name, num_classes=NUM_CLASSES).eval()
    x = torch.randn(2, spec.in_channels, size, size)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        y = model(x.to(memory_format=torch.channels_last))
    assert torch.allclose(y, reference, atol=1e-4, rtol=1e-4)
    model.train()
    loss = training_loss(model(x.to(memory_format=torch.channels_last)), torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet18", "googlenet", "inception_v4", "small_inception",
                                  "alexnet", "xception"])
def test_autocast_runs_in_reduced_precision(name):
    """No float32 constants are created in forward: autocast's bfloat16 flows through."""
    spec = get_spec(name)
    size = small_size(name)
    model = build(name, num_classes=NUM_CLASSES).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(torch.randn(2, spec.in_channels, size, size))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_full_size_forward_backward(name):
    """One forward+backward at batch 2 at the paper's input size fits this machine."""
    spec = get_spec(name)
    model = build(name, num_classes=1000).train()
    x = torch.randn(2, spec.in_channels, spec.input_size, spec.input_size)
    loss = training_loss(model(x), torch.tensor([0, 999]), **spec.loss_options())
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["googlenet", "googlenet_tv", "bn_inception", "inception_v3",
                                  "inception_v4", "inception_resnet_v2", "resnet50", "xception",
                                  "vgg16_bn", "small_inception"])
def test_cuda_channels_last_autocast_train_step(name):
    """The GPU worker's path: channels_last weights and inputs, bf16 autocast, full input size."""
    spec = get_spec(name)
    model = build(name, num_classes=1000).cuda().to(memory_format=torch.channels_last).train()
    x = torch.randn(8, 3, spec.input_size, spec.input_size, device="cuda")
    x = x.to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
        loss = training_loss(out, torch.randint(0, 1000, (8,), device="cuda"), **spec.loss_options())
    assert main_logits(out).dtype == torch.bfloat16
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
