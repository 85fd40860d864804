"""The static pyramid pooling equals nn.AdaptiveAvgPool2d at every size (PyTorch is the oracle)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pspnet_deploy.errors import UserError
from pspnet_deploy.model import feature_size
from pspnet_deploy.model.static_pool import (StaticAdaptiveAvgPool2d, adaptive_windows, make_static, pool_mode,
                                             pooling_matrix)

from conftest import make_tiny_model

SIZES = range(1, 129)
BINS = (1, 2, 3, 6, 4, 5, 7, 8, 13)


def test_pooling_matrix_equals_adaptive_pool_1d_exhaustive():
    """Every input length 1..128 with bin counts 1..24, around n/2, n and beyond: P @ x equals
    F.adaptive_avg_pool1d to float rounding (about 3,000 cases)."""
    g = torch.Generator().manual_seed(0)
    for n in SIZES:
        x = torch.randn(1, 8, n, generator=g, dtype=torch.float64) * 10
        for b in sorted(set(range(1, min(n, 24) + 1)) | {max(1, n // 2), max(1, n - 1), n, n + 1, 2 * n + 3}):
            ref = F.adaptive_avg_pool1d(x, b)
            ours = x @ pooling_matrix(n, b, torch.float64).t()
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12, msg=f"n={n} b={b}")


def test_windows_follow_pytorch_formula():
    assert adaptive_windows(8, 3) == [(0, 3), (2, 6), (5, 8)]  # overlapping, unequal
    assert adaptive_windows(64, 6)[0] == (0, 11) and adaptive_windows(64, 6)[-1] == (53, 64)
    assert adaptive_windows(45, 6)[1] == (7, 15)
    p = pooling_matrix(90, 6)
    assert torch.allclose(p.sum(1), torch.ones(6))


@pytest.mark.parametrize("b", BINS)
def test_module_equals_adaptive_avg_pool2d_all_feature_sizes(b):
    """Feature sizes 1..128 (H) with a varying W, float32, for each bin: equal to float rounding."""
    g = torch.Generator().manual_seed(b)
    for h in SIZES:
        w = 1 + (h * 37 + b) % 128
        x = torch.randn(2, 3, h, w, generator=g) * 4 + 1
        ref = nn.AdaptiveAvgPool2d(b)(x)
        mod = StaticAdaptiveAvgPool2d((h, w), b)
        out = mod(x)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5, msg=f"{h}x{w} bin {b} ({mod.mode})")
        assert mod.mode == ("avgpool" if h % b == 0 and w % b == 0 else "matmul")


def test_rectangular_bins_and_modes():
    x = torch.randn(1, 5, 45, 60)
    for out_size in [(3, 4), (6, 6), (2, 7), (45, 60), (1, 60)]:
        torch.testing.assert_close(StaticAdaptiveAvgPool2d((45, 60), out_size)(x), nn.AdaptiveAvgPool2d(out_size)(x),
                                   rtol=1e-5, atol=1e-5)
    assert pool_mode((64, 128), 2) == "avgpool"
    assert pool_mode((64, 128), 6) == "matmul"  # 512x1024 input: mmdeploy's floor kernel is wrong here
    assert pool_mode((45, 60), 3) == "avgpool" and pool_mode((45, 60), 2) == "matmul"


def test_wrong_input_size_is_refused():
    mod = StaticAdaptiveAvgPool2d((8, 12), 3)
    with pytest.raises(ValueError, match="8x12"):
        mod(torch.zeros(1, 1, 9, 12))


def test_fp16_and_double_inputs():
    x = torch.randn(1, 4, 9, 13, dtype=torch.float64)
    torch.testing.assert_close(StaticAdaptiveAvgPool2d((9, 13), 6)(x), nn.AdaptiveAvgPool2d(6)(x))


@pytest.mark.parametrize("size,feat", [((713, 713), 90), ((360, 480), (45, 60)), ((512, 1024), (64, 128)),
                                       ((65, 97), (9, 13)), ((473, 473), 60)])
def test_make_static_uses_real_feature_size(size, feat):
    m = make_tiny_model()
    s = make_static(m, size)
    fh, fw = (feat, feat) if isinstance(feat, int) else feat
    assert s.static_feature_size == (fh, fw) == (feature_size(size[0]), feature_size(size[1]))
    assert all(isinstance(p, StaticAdaptiveAvgPool2d) and p.in_size == (fh, fw) for p in s.ppm.pools)
    assert s.aux_head is None and not s.training
    assert not any(isinstance(x, (nn.Dropout, nn.Dropout2d)) for x in s.modules())
    # the original is untouched
    assert all(isinstance(p, nn.AdaptiveAvgPool2d) for p in m.ppm.pools)


@pytest.mark.parametrize("h,w", [(64, 96), (65, 97), (50, 71), (49, 49)])
def test_deployed_model_equals_original(h, w):
    m = make_tiny_model()
    s = make_static(m, (h, w))
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        torch.testing.assert_close(s(x), m(x), rtol=1e-5, atol=1e-5)


def test_output_stride_16_feature_size():
    from pspnet_deploy.model import PSPNet

    m = PSPNet(3, "resnet18", output_stride=16, head_channels=16, aux=False).eval()
    s = make_static(m, (360, 480))
    assert s.static_feature_size == (feature_size(360, 16), feature_size(480, 16)) == (23, 30)
    x = torch.randn(1, 3, 360, 480)
    with torch.no_grad():
        torch.testing.assert_close(s(x), m(x), rtol=1e-5, atol=1e-5)


def test_input_too_small_for_deepest_bin():
    m = make_tiny_model()
    with pytest.raises(UserError, match="smaller than the deepest pyramid bin 6.*at least"):
        make_static(m, (32, 96))  # feature 4x12 < bin 6
