"""Seed recipes: plateau settings, the seed spaces, pretrained grey stems and timm backbones."""

from __future__ import annotations

import pytest
import torch

from ray_xray.config import TrainConfig
from ray_xray.train import engine


def _plateau_lrs(cfg: TrainConfig, metrics: list[float]) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = engine.Schedule(cfg, opt, 10)
    out = []
    for m in metrics:
        sched.step_epoch(m)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_plateau_factor_patience_and_floor_are_settings():
    flat = [0.5] * 8  # never improves after the first epoch
    # Defaults: the seeds' factor 0.5 after 5 stalled epochs.
    assert _plateau_lrs(TrainConfig(lr_scheduler="plateau", lr=1.0), flat)[-1] == 0.5
    brain = TrainConfig(
        lr_scheduler="plateau", lr=1e-5, plateau_factor=0.1, plateau_patience=3, min_lr=1e-6
    )
    lrs = _plateau_lrs(brain, flat)
    assert lrs[3] == pytest.approx(1e-5) and lrs[4] == pytest.approx(1e-6)  # after 3 stalls
    assert lrs[-1] == pytest.approx(1e-6)  # never below min_lr
    for bad in ({"plateau_factor": 1.0}, {"plateau_patience": -1}, {"min_lr": -1.0}):
        with pytest.raises(ValueError, match="plateau|min_lr"):
            TrainConfig(**bad)


SEEDS = {  # space -> what the seed's recipe trains with
    "seed_cnn": {
        "model": "cnn",
        "optimizer": "adam",
        "lr_scheduler": "plateau",
        "model_kwargs": {"head_dims": [4096, 2048], "width": 64, "pool_size": 7},
    },
    "seed_lstm": {
        "model": "lstm",
        "optimizer": "adam",
        "lr_scheduler": "plateau",
        "model_kwargs": {"hidden_size": 512, "proj_dim": 512, "num_layers": 3},
    },
    "seed_vit": {
        "model": "vit",
        "optimizer": "adamw",
        "lr_scheduler": "cosine",
        "model_kwargs": {"dim": 512, "depth": 6, "heads": 8, "patch_size": 16},
    },
    "seed_resnet18_cbam": {
        "model": "resnet18_cbam",
        "optimizer": "adam",
        "lr_scheduler": "plateau",
    },
}


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_seed_spaces_start_from_the_seeds_recipe(name):
    """A sweep's first trial in a seed space is the seed's recipe at its size (224 px)."""
    from ray_xray.spaces import load_space

    space = load_space(name)
    assert len(space.start) == 1
    cfg = space.resolve({**space.fixed_for(space.models[0]), **space.start[0]})
    want = SEEDS[name]
    assert cfg.img_size == 224 and 30 <= cfg.epochs <= 70 and cfg.focal_gamma == 0.0
    assert (cfg.model, cfg.optimizer, cfg.lr_scheduler) == (
        want["model"],
        want["optimizer"],
        want["lr_scheduler"],
    )
    for kw, value in want.get("model_kwargs", {}).items():
        assert cfg.model_kwargs[kw] == value, kw
    if cfg.lr_scheduler == "plateau":
        assert (cfg.plateau_factor, cfg.plateau_patience) == (0.5, 5)


def test_cpu_spaces_reach_the_seeds_model_sizes_but_default_small():
    from ray_xray.spaces import load_space

    vit, lstm, every = load_space("vit"), load_space("lstm"), load_space("all")
    assert 512 in vit.params["model.dim"].choices and vit.default_config()["model.dim"] == 128
    assert 512 in lstm.params["model.hidden_size"].choices
    assert lstm.default_config()["model.hidden_size"] == 64
    assert 512 in every.params_for("vit")["model.dim"].choices
    assert 512 in every.params_for("lstm")["model.hidden_size"].choices
    assert vit.fixed["optimizer"] == "adamw"  # CPU defaults
    # img_size is searched (issue 30) and starts at 128 px, the size the fixed recipes used
    assert vit.default_config()["img_size"] == 128 and 64 in vit.params["img_size"].choices


def test_rgb_pretrained_stem_is_kept_for_grey_input(tmp_path):
    """A local RGB state dict (as torchvision's ImageNet file) loaded into a grey resnet18: the
    stem's filters are summed over colour, so grey x gives what the RGB model gives (x, x, x)."""
    from ray_xray.models import create_model

    torch.manual_seed(0)
    rgb = create_model("resnet18_cbam", 3, in_chans=3, img_size=64).eval()
    path = tmp_path / "rgb.pt"
    torch.save(rgb.state_dict(), path)
    grey = create_model("resnet18_cbam", 3, in_chans=1, img_size=64, pretrained=path).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


TIMM = ["timm/convnext_tiny", "timm/densenet121", "timm/efficientnet_b0"]


def test_timm_models_are_registered_with_the_common_signature():
    from ray_xray.models import list_models, model_hparams

    assert set(TIMM) <= set(list_models())
    for name in TIMM:
        assert model_hparams(name) == {"dropout": 0.0, "hub_weights": False}


@pytest.mark.parametrize("name", TIMM)
def test_timm_models_build_train_and_load_grey_weights(name, tmp_path):
    """Built without weights (no download): grey forward/backward, a Grad-CAM layer, and a local
    RGB state dict loaded with its stem summed (the grey output equals the RGB one on x,x,x)."""
    pytest.importorskip("timm")
    from ray_xray.models import create_model

    torch.manual_seed(0)
    model = create_model(name, 3, in_chans=1, img_size=64, dropout=0.1)
    assert model.is_conv and model.cam_layer is not None
    out = model(torch.randn(2, 1, 64, 64))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    rgb = create_model(name, 3, in_chans=3, img_size=64).eval()
    torch.save(rgb.state_dict(), tmp_path / "rgb.pt")
    grey = create_model(name, 3, in_chans=1, img_size=64, pretrained=tmp_path / "rgb.pt").eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_timm_model_without_timm_says_what_to_install(monkeypatch):
    import builtins

    from ray_xray.models import create_model

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ValueError, match=r"needs timm: pip install 'ray_xray\[timm\]'"):
        create_model("timm/densenet121", 3)
