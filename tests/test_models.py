"""Model zoo: shapes, gradients, trainability, registry API, pretrained loading and the CLI."""

from __future__ import annotations

import functools
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ray_xray.models import (
    count_params,
    create_model,
    is_convolutional,
    list_models,
    model_hparams,
    register_model,
    registry,
)

# timm's optional models have their own tests (test_recipes.py, skipped without timm).
MODELS = [m for m in list_models() if not m.startswith("timm/")]
# ~100M+ parameters: building them dominates test time, so they are built once per config.
HEAVY = {"cnn", "vgg16", "alexnet"}
BIG = {"vgg16", "alexnet"}  # over 50M parameters
CONV = {"cnn", "cnn_lstm", "resnet18", "resnet18_cbam", "alexnet", "vgg16"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny, so intra-op threads buy little; and when other processes load
    # the CPUs, OpenMP's spinning barriers made this file ~4x slower on 2 cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A small cache: building is slow, but keeping every 100M-parameter model alive (with its
# gradients) took the test process past 10 GB.
@functools.lru_cache(maxsize=3)
def _model(name: str, in_chans: int, img_size: int) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=3, in_chans=in_chans, img_size=img_size)


def _check_forward_backward(model: nn.Module, in_chans: int, img_size: int) -> None:
    torch.manual_seed(1)
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, in_chans, img_size, img_size)
    out = model(x)
    assert out.shape == (2, 3)
    assert torch.isfinite(out).all()
    F.cross_entropy(out, torch.tensor([0, 2])).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "some parameters got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0
    model.zero_grad(set_to_none=True)  # cached models should not carry gradients around


def test_registry_lists_every_family():
    assert MODELS == sorted(MODELS)
    assert set(MODELS) == {
        "alexnet",
        "cnn",
        "cnn_lstm",
        "conv1d_lstm",
        "lstm",
        "resnet18",
        "resnet18_cbam",
        "vgg16",
        "vit",
    }


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_64(name, in_chans):
    _check_forward_backward(_model(name, in_chans, 64), in_chans, 64)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_128(name):
    # 3 channels at 128 px only for the light models; 64 px already covers RGB for the heavy ones.
    for in_chans in (1,) if name in HEAVY else (1, 3):
        _check_forward_backward(_model(name, in_chans, 128), in_chans, 128)


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_forward(name):
    model = _model(name, 1, 64).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_matches(name):
    model = _model(name, 1, 64).eval()
    assert model.is_conv == (name in CONV) == is_convolutional(name)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        if model.is_conv:
            cl = model.to(memory_format=torch.channels_last)
            out = cl(x.contiguous(memory_format=torch.channels_last))
            model.to(memory_format=torch.contiguous_format)
            torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_cam_layer(name):
    model = _model(name, 1, 64).train()
    layer = model.cam_layer
    # The hook target must not be registered twice (it would duplicate state_dict entries).
    assert not any(k.startswith(("cam_layer", "cam_stages")) for k in model.state_dict())
    if name not in CONV:
        assert layer is None and model.cam_stages == ()
        return
    assert any(m is layer for m in model.modules())
    # Grad-CAM's candidate stages: submodules, shallow to deep, ending with cam_layer.
    mods = list(model.modules())
    order = [next(i for i, m in enumerate(mods) if m is st) for st in model.cam_stages]
    assert order == sorted(order) and model.cam_stages[-1] is layer
    seen = {}
    hooks = [
        layer.register_forward_hook(lambda m, i, o: seen.__setitem__("act", o)),
        layer.register_full_backward_hook(lambda m, gi, go: seen.__setitem__("grad", go[0])),
    ]
    try:
        model(torch.randn(2, 1, 64, 64)).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    assert seen["act"].dim() == 4 and seen["grad"].shape == seen["act"].shape


def test_reference_param_counts():
    assert count_params(create_model("lstm", 3, in_chans=3, img_size=224)) == 18_066_948
    assert count_params(create_model("vit", 3, in_chans=3, img_size=224)) == 19_411_971


def test_last_attention():
    lstm = _model("lstm", 1, 64).eval()
    with torch.no_grad():
        lstm(torch.randn(2, 1, 64, 64))
    att = lstm.last_attention
    assert att.shape == (2, 64) and not att.requires_grad
    torch.testing.assert_close(att.sum(1), torch.ones(2))

    vit = _model("vit", 3, 64).train()
    vit(torch.randn(2, 3, 64, 64)).sum().backward()
    att = vit.last_attention
    assert att.shape == (2, 8, 17, 17) and not att.requires_grad  # 4x4 patches + CLS
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 8, 17))

    no_att = create_model("lstm", 3, img_size=64, attention=False, num_layers=1)
    assert no_att(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    assert no_att.last_attention is None


# Shrunk where a knob exists, so 20 steps stay fast; vgg16/alexnet have none and run as is.
TRAIN_HP = {
    "cnn": {"width": 8, "head_dims": (64,)},
    "lstm": {"proj_dim": 64, "hidden_size": 64, "num_layers": 1},
    "vit": {"dim": 64, "depth": 2, "heads": 4, "patch_size": 16},
    "resnet18_cbam": {"reduction": 8},
}
# vgg16's 25088x4096 layer costs the same at any size, so give it the smallest input it takes.
TRAIN_PX = {"vgg16": 32}


# The two 60-130M-parameter models take 5-15 s here: `make test` runs them, test-fast skips them.
@pytest.mark.parametrize(
    "name", [pytest.param(m, marks=pytest.mark.slow) if m in BIG else m for m in MODELS]
)
def test_adam_lowers_loss(name):
    torch.manual_seed(0)
    px, n = TRAIN_PX.get(name, 64), 6 if name in HEAVY else 8
    model = create_model(name, 3, in_chans=1, img_size=px, **TRAIN_HP.get(name, {}))
    model.train()
    # Dropout off for a deterministic loss; BatchNorm stays in train mode (batch statistics).
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.eval()
    y = torch.arange(n) % 3
    # A class-dependent bright band plus noise: learnable, not pure memorisation.
    x = 0.5 * torch.randn(n, 1, px, px)
    band = px // 3
    for i, c in enumerate(y.tolist()):
        x[i, :, c * band : (c + 1) * band, :] += 1.0
    lr = 1e-4 if name in HEAVY else 1e-3
    # fused: several times faster than the default for the 100M-parameter models on CPU.
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    initial = None
    # The two big ones halve their loss by step 6 (vgg16) and 11 (alexnet): 12 steps, not 20,
    # save ~10 s of make test's first pass
    for _ in range(12 if name in BIG else 20):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        initial = loss.item() if initial is None else initial
    with torch.no_grad():
        final = F.cross_entropy(model(x), y).item()
    assert final < 0.5 * initial, (initial, final)


def test_unknown_model():
    with pytest.raises(ValueError, match=r"unknown model 'nope'; choose from: alexnet, cnn"):
        create_model("nope", 3)


def test_unknown_hyperparameter():
    with pytest.raises(ValueError) as e:
        create_model("resnet18", 3, depth=50)
    msg = str(e.value)
    assert "resnet18" in msg and "depth" in msg and "dropout" in msg


def test_none_hyperparameters_dropped():
    model = create_model("resnet18", 3, dropout=None, bogus=None)
    assert model.avgpool[1].p == 0.0


def test_model_hparams():
    for name in MODELS:
        hp = model_hparams(name)
        sig = inspect.signature(registry._REGISTRY[name]).parameters
        assert set(hp) == set(sig) - {"num_classes", "in_chans", "img_size"}
    assert model_hparams("lstm")["hidden_size"] == 512
    assert model_hparams("vit") == {
        "patch_size": 16,
        "dim": 512,
        "depth": 6,
        "heads": 8,
        "mlp_ratio": 4.0,
        "dropout": 0.1,
    }
    assert model_hparams("cnn")["conv_dropout"] is None


def test_register_rejects_kwargs_swallowing():
    def sloppy(num_classes, in_chans=1, img_size=128, **hp):
        return nn.Linear(1, num_classes)

    with pytest.raises(TypeError):
        register_model(sloppy)
    assert "sloppy" not in list_models()


def test_vit_validates_geometry():
    with pytest.raises(ValueError, match="divisible by heads"):
        create_model("vit", 3, dim=100, heads=8)
    with pytest.raises(ValueError, match="divisible by patch_size"):
        create_model("vit", 3, img_size=100)


def test_rnn_type_gru_and_validation():
    model = create_model("lstm", 3, img_size=64, rnn_type="gru", num_layers=1)
    assert isinstance(model.rnn, nn.GRU)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="rnn_type"):
        create_model("cnn_lstm", 3, rnn_type="transformer")


def test_cnn_hyperparameters():
    model = create_model("cnn", 3, img_size=64, width=8, head_dims=[32, 16], conv_dropout=0.1)
    assert [b.conv.out_channels for b in model.features] == [8, 16, 32, 64, 64]
    assert all(b.drop.p == 0.1 for b in model.features)
    assert model.classifier[1].in_features == 64 * 7 * 7
    seed = create_model("cnn", 3, img_size=64, width=8, head_dims=(32,))
    assert [b.drop.p for b in seed.features] == [0.25, 0.25, 0.3, 0.3, 0.3]


@pytest.mark.parametrize("name", sorted(set(MODELS) - HEAVY))
def test_pretrained_round_trip(name, tmp_path):
    torch.manual_seed(0)
    src = create_model(name, 3, img_size=64)
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    dst = create_model(name, 3, img_size=64, pretrained=str(path))
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_pretrained_skips_mismatched_shapes(tmp_path):
    src = create_model("resnet18", 3, in_chans=3)
    path = tmp_path / "rgb_3class.pt"
    # Wrapped and DDP-prefixed, as a training checkpoint would be.
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    # The RGB stem is kept for the grey model (summed over colour); the head's class count differs.
    with pytest.warns(UserWarning, match=r"skipped 2 tensor\(s\).*fc\.weight.*fc\.bias"):
        dst = create_model("resnet18", 5, in_chans=1, pretrained=path)
    assert torch.equal(dst.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    assert torch.allclose(dst.conv1.weight, src.conv1.weight.sum(dim=1, keepdim=True))
    assert dst.fc.out_features == 5


def test_pretrained_missing_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(ValueError, match="nope.pt"):
        create_model("resnet18", 3, pretrained=missing)


def test_cli_json():
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_USAGE_STATS_ENABLED="0")
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "ray_xray.models", "--models", "cnn_lstm", "--json"]
    cmd += ["--img-size", "64", "--batch-size", "2", "--warmup", "1", "--steps", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    (row,) = report["models"]
    assert row["model"] == "cnn_lstm" and row["params"] > 0 and row["fp32_ms"] > 0
    assert "cnn_lstm" in proc.stderr  # progress goes to stderr, leaving stdout pure JSON
