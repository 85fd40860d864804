import pytest
import torch

from pspnet_deploy.model import PSPNet, feature_size, min_input_size
from pspnet_deploy.model.resnet import resnet


@pytest.mark.parametrize("size,expected", [(713, 90), (473, 60), (360, 45), (512, 64), (480, 60), (97, 13), (1, 1)])
def test_feature_size_formula(size, expected):
    assert feature_size(size, 8) == expected


@pytest.mark.parametrize("h,w", [(64, 96), (65, 97), (50, 71), (360, 480)])
@pytest.mark.parametrize("os_", [8, 16])
def test_feature_size_matches_backbone(h, w, os_):
    net = resnet("resnet18", output_stride=os_).eval()
    with torch.no_grad():
        c3, c4 = net(torch.zeros(1, 3, h, w))
    assert tuple(c4.shape[-2:]) == (feature_size(h, os_), feature_size(w, os_))
    assert c3.shape[1] == 256 and c4.shape[1] == 512


@pytest.mark.parametrize("backbone,ch", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_backbone_channels_and_dilation(backbone, ch):
    net = resnet(backbone, output_stride=8)
    assert net.out_channels == ch
    assert net.layer4[-1].conv2.dilation == (4, 4)
    assert net.layer3[-1].conv2.dilation == (2, 2)
    assert net.layer3[0].conv1.stride == (1, 1) or net.layer3[0].conv2.stride == (1, 1)


def test_deep_stem_has_three_convs():
    net = resnet("resnet18", deep_stem=True)
    convs = [m for m in net.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 3


@pytest.mark.parametrize("h,w", [(64, 96), (67, 93), (33, 41)])
def test_pspnet_train_and_eval_outputs(h, w):
    m = PSPNet(5, "resnet18", head_channels=32, aux_channels=16)
    m.train()
    out, aux = m(torch.randn(2, 3, h, w))
    assert out.shape == (2, 5, h, w) and aux.shape == (2, 5, h, w)
    m.eval()
    with torch.no_grad():
        y = m(torch.randn(1, 3, h, w))
    assert y.shape == (1, 5, h, w)


def test_ppm_structure_matches_paper():
    m = PSPNet(3, "resnet18")
    assert m.ppm.bins == (1, 2, 3, 6)
    assert m.ppm.out_channels == 512 + 4 * 128
    stage = m.ppm.stages[0]
    assert isinstance(stage[0], torch.nn.Conv2d) and stage[0].out_channels == 128
    assert isinstance(stage[1], torch.nn.BatchNorm2d) and isinstance(stage[2], torch.nn.ReLU)
    assert m.head[0].out_channels == 512 and isinstance(m.head[3], torch.nn.Dropout2d)
    assert m.aux_head[0].in_channels == 256 and m.aux_head[0].out_channels == 256


def test_no_aux_head_in_deploy_form():
    m = PSPNet(3, "resnet18", aux=False).train()
    out = m(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor)


def test_min_input_size():
    s = min_input_size((1, 2, 3, 6))
    assert feature_size(s) >= 6 > feature_size(s - 1)
