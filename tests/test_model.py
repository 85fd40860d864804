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


# --- architecture options (what mmseg's and semseg's PSPNets need); defaults = this project's own models ---

def test_old_configs_build_the_same_model():
    """A config written before the options existed builds the same network as before: stem 7x7,
    contracted dilation, dilated BasicBlock conv2, align_corners True everywhere."""
    from pspnet_deploy.model import build_model

    old = {"num_classes": 11, "backbone": "resnet18", "output_stride": 8, "deep_stem": False, "bins": [1, 2, 3, 6],
           "head_channels": 32, "aux_channels": 16, "dropout": 0.1}
    m = build_model(old)
    c = m.config
    assert c["stem_channels"] == [64] and c["strides"] == [1, 2, 1, 1] and c["dilations"] == [1, 1, 2, 4]
    assert c["contract_dilation"] is True and c["basic_conv2_dilated"] is True and c["align_corners"] is True
    assert m.backbone.layer4[0].conv2.dilation == (2, 2) and m.backbone.layer4[1].conv2.dilation == (4, 4)
    # and rebuilding from the recorded config gives the same state dict layout
    again = build_model(c)
    assert list(again.state_dict()) == list(m.state_dict())
    assert [tuple(v.shape) for v in again.state_dict().values()] == [tuple(v.shape) for v in m.state_dict().values()]


def test_contract_dilation_option():
    contracted = resnet("resnet50", contract_dilation=True)
    full = resnet("resnet50", contract_dilation=False)  # semseg: every block at 2 / 4
    assert contracted.layer3[0].conv2.dilation == (1, 1) and contracted.layer4[0].conv2.dilation == (2, 2)
    assert full.layer3[0].conv2.dilation == (2, 2) and full.layer4[0].conv2.dilation == (4, 4)
    assert full.layer3[0].conv2.padding == (2, 2) and full.layer4[-1].conv2.dilation == (4, 4)


def test_basic_block_conv2_undilated_option():
    net = resnet("resnet18", basic_conv2_dilated=False)  # mmseg's BasicBlock
    blk = net.layer4[1]
    assert blk.conv1.dilation == (4, 4) and blk.conv2.dilation == (1, 1) and blk.conv2.padding == (1, 1)
    with torch.no_grad():
        c3, c4 = net.eval()(torch.zeros(1, 3, 65, 97))
    assert tuple(c4.shape[-2:]) == (feature_size(65), feature_size(97))


def test_stem_widths_and_resnet152():
    v1c = resnet("resnet18", stem_channels=(32, 32, 64))  # mmseg ResNetV1c
    convs = [m for m in v1c.stem if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64] and v1c.layer1[0].downsample is None
    semseg = resnet("resnet50", deep_stem=True)
    assert [m.out_channels for m in semseg.stem if isinstance(m, torch.nn.Conv2d)] == [64, 64, 128]
    assert semseg.layer1[0].conv1.in_channels == 128
    r152 = resnet("resnet152")
    assert [len(r152.layer1), len(r152.layer2), len(r152.layer3), len(r152.layer4)] == [3, 8, 36, 3]
    with pytest.raises(ValueError, match="stem_channels"):
        resnet("resnet18", stem_channels=(32, 64))


@pytest.mark.parametrize("h,w", [(225, 289), (100, 131)])
def test_explicit_strides_with_dilation(h, w):
    """mmseg's d32 configs: stride 2 in stages 3 and 4 and still dilations 2 and 4."""
    m = PSPNet(3, "resnet18", strides=(1, 2, 2, 2), dilations=(1, 1, 2, 4), head_channels=16, aux_channels=8)
    assert m.config["output_stride"] == 32
    bb = m.backbone
    assert bb.layer4[0].conv1.stride == (2, 2) and bb.layer4[1].conv1.dilation == (4, 4)
    with torch.no_grad():
        c3, c4 = bb.eval()(torch.zeros(1, 3, h, w))
    assert tuple(c4.shape[-2:]) == (feature_size(h, 32), feature_size(w, 32))
    with pytest.raises(ValueError, match="strides"):
        PSPNet(3, "resnet18", strides=(2, 2, 1, 1), dilations=(1, 1, 1, 1))


def test_align_corners_and_ppm_channels_options():
    torch.manual_seed(0)
    a = PSPNet(3, "resnet18", head_channels=16, aux_channels=8, ppm_channels=24, align_corners=False).eval()
    assert a.ppm.stages[0][0].out_channels == 24 and a.ppm.out_channels == 512 + 4 * 24
    assert a.ppm.align_corners is False and a.config["ppm_align_corners"] is False
    b = PSPNet(3, "resnet18", head_channels=16, aux_channels=8, ppm_channels=24, align_corners=True).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 67, 93)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert ya.shape == yb.shape and not torch.allclose(ya, yb)
    mixed = PSPNet(3, "resnet18", align_corners=False, ppm_align_corners=True)
    assert mixed.ppm.align_corners is True and mixed.align_corners is False
