"""scripts/independent_check.py rebuilds each architecture from its definition: on the same weights it gives nonrobust's logits."""

from __future__ import annotations

import pytest
import torch

from helpers import load_script
from nonrobust import models

check = load_script("independent_check")


def _randomised_statistics(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """BatchNorms with non-trivial running statistics and affine weights, so a misplaced BatchNorm shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            for t in (m.running_mean, m.bias):
                t.data.copy_(torch.randn(t.shape, generator=g) * 0.1)
            for t in (m.running_var, m.weight):
                t.data.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("arch, options", [("wrn28_10", {"depth": 10, "widen": 1}), ("wrn28_10", {"depth": 16, "widen": 2}),
                                           ("small_cnn", {"width": 4}), ("vgg16", {})])
def test_independent_networks_give_nonrobusts_logits(tmp_path, arch, options):
    torch.manual_seed(0)
    ours = _randomised_statistics(models.build(arch, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], **options), seed=1)
    path = tmp_path / "m.safetensors"
    models.save(ours, path, models.make_meta(ours))
    theirs, meta = check.load(path)
    assert meta["arch"] == arch
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), rtol=1e-4, atol=1e-4)


def test_independent_check_refuses_an_architecture_it_has_no_definition_of(tmp_path):
    model = models.build("tiny_cnn")
    models.save(model, tmp_path / "t.safetensors", models.make_meta(model))
    with pytest.raises(SystemExit, match="no independent definition of architecture 'tiny_cnn'"):
        check.load(tmp_path / "t.safetensors")


def test_a_misplaced_shortcut_would_be_caught():
    """The check above can fail: the independent WRN with its shortcut taken from the raw input (a plausible slip) differs."""
    torch.manual_seed(0)
    ours = _randomised_statistics(models.build("wrn28_10", depth=10, widen=1), seed=1)
    theirs = check.WRN(10, 1)
    state = {k: v for k, v in ours.state_dict().items() if not k.startswith("normalize.")}
    theirs.load_state_dict({**state, "mean": ours.normalize.mean.view(1, 3, 1, 1), "std": ours.normalize.std.view(1, 3, 1, 1)})
    theirs.eval()
    block = theirs.block2[0]
    block.forward = lambda x, b=block: b.conv2(torch.relu(b.bn2(b.conv1(torch.relu(b.bn1(x)))))) + b.shortcut(x)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(theirs(x), ours(x), atol=1e-3)
