"""Interchangeability with the reference implementations (torchvision, timm).

For every model that torchvision or timm also implements: the same parameter count, the same
state_dict keys and shapes, and after `load_state_dict(reference.state_dict(), strict=True)` (with
BatchNorm statistics randomized first, so they matter) the same eval-mode outputs to float32
tolerance, auxiliary heads included. This is what makes published ImageNet weights usable here.

Skipped in .venv, where torchvision / timm are not installed (PyPI's torchvision does not load
beside the CPU build of torch 2.13.0). `make test-reference` runs them in a second environment,
.venv-ref (torch 2.14.1, torchvision 0.29.1, timm; scripts/setup_reference.sh), with
PS_TRAINER_REFERENCE_REQUIRED=1: there a missing package is a failure, never a skip. Weights are
random (pretrained=False / weights=None): nothing is downloaded.
"""

import importlib
import os

import pytest
import torch

from ps_trainer.models import build

# our name -> (reference constructor name, its keyword arguments, our keyword arguments)
TORCHVISION = {
    "resnet18": ("resnet18", {}, {}),
    "resnet34": ("resnet34", {}, {}),
    "resnet50_tv": ("resnet50", {}, {}),
    "resnet101_tv": ("resnet101", {}, {}),
    "resnet152_tv": ("resnet152", {}, {}),
    "googlenet_tv": ("googlenet", {"aux_logits": True, "init_weights": True}, {}),
    "googlenet_tv/noaux+transform": ("googlenet", {"aux_logits": False, "transform_input": True,
                                                   "init_weights": True},
                                     {"aux_logits": False, "transform_input": True}),
    "inception_v3": ("inception_v3", {"aux_logits": True, "init_weights": True}, {}),
    "inception_v3/transform": ("inception_v3", {"aux_logits": True, "transform_input": True,
                                                "init_weights": True}, {"transform_input": True}),
    "alexnet_tv": ("alexnet", {}, {}),
    **{f"vgg{d}{bn}": (f"vgg{d}{bn}", {}, {}) for d in (11, 13, 16, 19) for bn in ("", "_bn")},
}
TIMM = {
    "inception_v4": (("inception_v4",), {}),
    "inception_resnet_v2": (("inception_resnet_v2",), {}),
    "xception": (("legacy_xception", "xception"), {}),  # renamed legacy_ in timm 0.9
}


def _reference(package: str):
    """torchvision or timm; skipped if absent, unless the run says it must be there (CI)."""
    if os.environ.get("PS_TRAINER_REFERENCE_REQUIRED") == "1":
        return importlib.import_module(package)  # an ImportError fails the test
    return pytest.importorskip(package)


def _randomize_batchnorm(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def _assert_interchangeable(ours: torch.nn.Module, ref: torch.nn.Module, size: int) -> None:
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert sorted(ours_sd) == sorted(ref_sd)
    assert {k: tuple(v.shape) for k, v in ours_sd.items()} == {k: tuple(v.shape) for k, v in ref_sd.items()}
    _randomize_batchnorm(ref)
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.eval(), ref.eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("case", list(TORCHVISION))
def test_torchvision_weights_load_and_give_the_same_outputs(case):
    tv = _reference("torchvision")
    name = case.split("/")[0]
    ref_name, ref_kwargs, our_kwargs = TORCHVISION[case]
    torch.manual_seed(0)
    ref = getattr(tv.models, ref_name)(weights=None, **ref_kwargs)
    ours = build(name, num_classes=1000, **our_kwargs)
    _assert_interchangeable(ours, ref, 299 if "inception" in name else 224)
    if ref_kwargs.get("aux_logits"):  # the auxiliary heads compute the same function too
        heads = [("aux1", 512, 14), ("aux2", 528, 14)] if "googlenet" in name else [("AuxLogits", 768, 17)]
        for attr, channels, side in heads:
            x = torch.randn(2, channels, side, side)
            with torch.no_grad():
                torch.testing.assert_close(getattr(ours, attr)(x), getattr(ref, attr)(x),
                                           rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_paper_resnets_load_torchvision_weights_too(depth):
    """Stride in the 1x1 or the 3x3: the same tensors, so the same checkpoints load (outputs differ)."""
    tv = _reference("torchvision")
    ref = getattr(tv.models, f"resnet{depth}")(weights=None)
    ours = build(f"resnet{depth}", num_classes=1000)
    ours.load_state_dict(ref.state_dict(), strict=True)


@pytest.mark.parametrize("name", list(TIMM))
def test_timm_weights_load_and_give_the_same_outputs(name):
    timm = _reference("timm")
    candidates, kwargs = TIMM[name]
    available = set(timm.list_models())
    ref_name = next(c for c in candidates if c in available)
    torch.manual_seed(0)
    ref = timm.create_model(ref_name, pretrained=False, num_classes=1000, **kwargs)
    ours = build(name, num_classes=1000)
    _assert_interchangeable(ours, ref, 299)
