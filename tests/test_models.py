"""Generic tests over every registered SP model (timm ``tests/test_models.py`` style), plus the
per-stage settings and the vanilla equivalence."""
from __future__ import annotations

import pytest
import safetensors.torch
import timm
import torch
from timm.models.resnet import BasicBlock, Bottleneck
from timm.utils.model import reparameterize_model
from torch import nn

import timm_plugins
from spsearch import SPConv2d
from spsearch.models import SPStagedModel, format_alpha, parse_alpha, stage_specs
from spsearch.ops import fold_batchnorms

from helpers import CIFAR_MODELS, GOLDEN_COMPLEXITY, randomize_bn, small_input_size, sp_models

SP_MODELS = timm_plugins.list_sp_models()


def test_registry_lists_exactly_our_models():
    assert len(SP_MODELS) == len(set(SP_MODELS))
    assert set(SP_MODELS) == {
        'sp_resnet18', 'sp_resnet34', 'sp_resnet50', 'sp_resnet101', 'sp_resnet152', 'sp_resnext50_32x4d',
        'sp_wide_resnet50_2', 'sp_resnet20', 'sp_resnet56', 'sp_resnet110', 'sp_vgg16_cifar'}
    assert 'spnasnet_100' not in SP_MODELS


@pytest.mark.parametrize('name', sp_models())
def test_default_cfg(name):
    model = timm.create_model(name)
    cfg = model.pretrained_cfg
    assert cfg['tag'] == 'untrained'
    assert timm.models.get_pretrained_cfg(f'{name}.untrained') is not None
    assert cfg['num_classes'] == model.num_classes
    assert cfg['input_size'] == ((3, 32, 32) if name in CIFAR_MODELS else (3, 224, 224))
    first_conv = model.get_submodule(cfg['first_conv'])
    assert isinstance(first_conv, nn.Conv2d) and first_conv.in_channels == 3
    assert model.get_submodule(cfg['classifier']) is model.get_classifier()
    n_sp = sum(isinstance(m, SPConv2d) for m in model.modules())
    assert n_sp > 0
    with pytest.raises(RuntimeError, match='No pretrained weights'):
        timm.create_model(name, pretrained=True)


@pytest.mark.parametrize('name', sp_models())
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    # zero-initialised last norms would (correctly) stop the gradient to the convs before them
    model = timm.create_model(name, **({} if 'vgg' in name else dict(zero_init_last=False)))
    x = torch.randn(2, *small_input_size(name))
    out = model(x)
    assert out.shape == (2, model.num_classes)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        if pname.endswith('conv1x1.bias'):
            continue  # a bias right before a training-mode BN is cancelled by it (reference layout)
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize('name', sp_models())
def test_features_only(name):
    model = timm.create_model(name)
    info = model.feature_info
    out_indices = tuple(range(len(info)))[-3:]
    features = timm.create_model(name, features_only=True, out_indices=out_indices)
    c, h, w = small_input_size(name)
    outs = features(torch.randn(2, c, h, w))
    assert len(outs) == len(out_indices)
    for o, i in zip(outs, out_indices, strict=True):
        assert o.shape[1] == info[i]['num_chs']
        assert o.shape[2] == -(-h // info[i]['reduction'])
    assert features.feature_info.channels() == [info[i]['num_chs'] for i in out_indices]


@pytest.mark.parametrize('name', sp_models())
def test_forward_features_head_and_classifier_reset(name):
    model = timm.create_model(name, num_classes=7).eval()
    x = torch.randn(2, *small_input_size(name))
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 7)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize('name', sp_models())
def test_fuse_equivalence(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    randomize_bn(model)
    x = torch.randn(2, *small_input_size(name))
    with torch.no_grad():
        ref = model(x)
        fused = reparameterize_model(model)
        folded = fold_batchnorms(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        tol = 1e-5 * ref.abs().max()
        assert (fused(x) - ref).abs().max() <= tol
        assert (folded(x) - ref).abs().max() <= 2 * tol


@pytest.mark.parametrize('name', sp_models())
def test_checkpoint_round_trip_through_pretrained_cfg_overlay(name, tmp_path):
    kwargs = dict(sp_alpha=0.25, sp_groups=4) if name != 'sp_resnext50_32x4d' else dict(sp_alpha=0.25)
    src = timm.create_model(name, **kwargs)
    randomize_bn(src)
    state = src.state_dict()
    files = [tmp_path / 'model.safetensors', tmp_path / 'model.pth']
    safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, str(files[0]))
    if len(files) > 1:
        torch.save(state, files[1])
    for f in files:
        dst = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(f)), **kwargs)
        for k, v in dst.state_dict().items():
            torch.testing.assert_close(v, state[k], rtol=0, atol=0, msg=f'{f.suffix}: {k}')


def test_pretrained_with_new_num_classes_keeps_backbone(tmp_path):
    src = timm.create_model('sp_resnet20')
    path = tmp_path / 'w.safetensors'
    safetensors.torch.save_file(src.state_dict(), str(path))
    dst = timm.create_model('sp_resnet20', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=4)
    assert dst.fc.out_features == 4
    torch.testing.assert_close(dst.layer3[2].conv2.gwc.weight, src.layer3[2].conv2.gwc.weight)


@pytest.mark.parametrize('name,timm_name', [('sp_resnet50', 'resnet50'), ('sp_resnet18', 'resnet18'),
                                            ('sp_resnext50_32x4d', 'resnext50_32x4d')])
def test_vanilla_is_exactly_timm_model(name, timm_name):
    torch.manual_seed(0)
    ours = timm.create_model(name, sp_alpha='vanilla').eval()
    torch.manual_seed(0)
    theirs = timm.create_model(timm_name).eval()
    assert not any(isinstance(m, SPConv2d) for m in ours.modules())
    a, b = ours.state_dict(), theirs.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_cifar_vanilla_resnet20_layout():
    model = timm.create_model('sp_resnet20', sp_alpha='vanilla')
    assert sum(p.numel() for p in model.parameters()) == 272_474
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert [b.conv1.out_channels for b in model.layer1] == [16] * 3
    assert isinstance(model.layer2[0].downsample[0], nn.Conv2d)  # 1x1 projection shortcut
    assert [i['reduction'] for i in model.feature_info] == [1, 1, 2, 4]


@pytest.mark.parametrize('value,expected', [
    ('vanilla', (None,) * 4),
    ((0.5, 'vanilla', None, 0.25), (0.5, None, None, 0.25)),
    ('(1/2, vanilla, 0.25, 1/8)', (0.5, None, 0.25, 0.125)),
    ('0.5,0.25,0.25,1', (0.5, 0.25, 0.25, 1.0)),
    ('1/4', (0.25,) * 4),
    (0.125, (0.125,) * 4),
])
def test_per_stage_alpha(value, expected):
    model = timm.create_model('sp_resnet50', sp_alpha=value, sp_groups=(1, 2, 4, 8))
    stages = [model.layer1, model.layer2, model.layer3, model.layer4]
    for stage, alpha, groups in zip(stages, expected, (1, 2, 4, 8), strict=True):
        for block in stage:
            if alpha is None:
                assert type(block) is Bottleneck and isinstance(block.conv2, nn.Conv2d)
            else:
                assert isinstance(block.conv2, SPConv2d)
                assert (block.conv2.alpha, block.conv2.groups) == (alpha, groups)


def test_per_stage_on_basic_and_vgg():
    r20 = timm.create_model('sp_resnet20', sp_alpha=('vanilla', 0.5, 0.25))
    assert type(r20.layer1[0]) is BasicBlock
    assert isinstance(r20.layer2[0].conv1, SPConv2d) and isinstance(r20.layer2[0].conv2, SPConv2d)
    assert r20.layer3[1].conv2.alpha == 0.25
    vgg = timm.create_model('sp_vgg16_cifar', sp_alpha=(0.5, 'vanilla', 0.25, 0.125, 1 / 16))
    convs = [m for m in vgg.features if isinstance(m, (nn.Conv2d, SPConv2d))]
    assert len(convs) == 13
    assert type(convs[0]) is nn.Conv2d and convs[0].bias is not None  # first conv vanilla, with bias
    assert isinstance(convs[1], SPConv2d) and convs[1].alpha == 0.5
    assert all(type(c) is nn.Conv2d for c in convs[2:4])
    assert [c.alpha for c in convs[4:7]] == [0.25] * 3
    assert [c.alpha for c in convs[10:13]] == [1 / 16] * 3


@pytest.mark.parametrize('kwargs,match', [
    (dict(sp_alpha=(0.5, 0.5)), 'sp_alpha has 2 entries but the model has 4 stages'),
    (dict(sp_alpha=0), 'sp_alpha=0 is out of range'),
    (dict(sp_alpha=(0.5, 2, 0.5, 0.5)), r'sp_alpha\[1\]=2 is out of range'),
    (dict(sp_alpha='half'), 'not a split ratio'),
    (dict(sp_groups=0), 'sp_groups=0 is invalid'),
    (dict(sp_groups=(2, 2, 2, 'x')), r'sp_groups\[3\]'),
    (dict(sp_groups=3), 'divisible by groups=3'),
])
def test_bad_stage_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('sp_resnet50', **kwargs)


def test_in_chans_and_grayscale():
    model = timm.create_model('sp_resnet20', in_chans=1, num_classes=10)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_reference_checkpoint_key_names():
    """The reference code's SP-ResNet names (torchvision layout + SPConv_3x3 submodules) are ours."""
    keys = set(timm.create_model('sp_resnet50').state_dict())
    for k in ['conv1.weight', 'layer1.0.conv2.gwc.weight', 'layer1.0.conv2.pwc.weight', 'layer1.0.conv2.conv1x1.bias',
              'layer2.0.conv2.bn1.running_var', 'layer4.2.conv2.bn2.weight', 'layer2.0.downsample.0.weight', 'fc.bias']:
        assert k in keys, k


@pytest.mark.parametrize('name', sp_models())
def test_stage_description_names_every_sp_site_once(name):
    """Every SPConv of the model is a site of exactly one stage, with its own channels and stride; the
    stage's modules exist; a vanilla model has the same sites (plain convs), so the description does not
    depend on the settings it describes."""
    model = timm.create_model(name, sp_alpha=(0.5, 'vanilla', 0.25, 1 / 8, 0.5)[:len(stage_specs(name))])
    assert isinstance(model, SPStagedModel)
    stages = model.sp_stages()
    sites = [site for stage in stages for site in stage.sites]
    assert len({s.module for s in sites}) == len(sites) > 0
    sp_convs = {n for n, m in model.named_modules() if isinstance(m, SPConv2d)}
    vanilla_stage = 1
    assert sp_convs == {s.module for i, st in enumerate(stages) if i != vanilla_stage for s in st.sites}
    for site in sites:
        conv = model.get_submodule(site.module)
        assert (site.in_channels, site.out_channels) == (conv.in_channels, conv.out_channels)
        assert site.stride == (conv.stride if isinstance(conv, SPConv2d) else conv.stride[0])
    for stage in stages:
        for module in stage.modules:
            model.get_submodule(module)
    assert stage_specs(name, sp_alpha='vanilla') == stages


def test_one_alpha_parser_and_formatter():
    assert parse_alpha('1/2') == parse_alpha(0.5) == 0.5
    assert parse_alpha('vanilla') is None and parse_alpha(None) is None
    for word in ('dense', 'conv'):  # "dense" is an implementation name, never a vanilla stage
        with pytest.raises(ValueError, match='not a split ratio'):
            timm.create_model('sp_resnet20', sp_alpha=word)
    assert [format_alpha(a) for a in (None, 0.5, 1.0, 0.01, 1 / 3, 0.3)] == ['vanilla', '1/2', '1', '1/100', '1/3',
                                                                             '3/10']


def test_golden_complexity_covers_every_registered_model():
    assert set(GOLDEN_COMPLEXITY) == set(SP_MODELS), 'run python tools/model_complexity.py after adding a model'


@pytest.mark.parametrize('name', SP_MODELS)
def test_complexity_matches_the_golden_file(name):
    """Params and MACs of the paper, vanilla and a mixed setting, as ``tools/model_complexity.py`` recorded them
    (pycls's ``dev/model_complexity.json``): a change that moves a model's complexity fails here until the file
    is regenerated deliberately."""
    from helpers import ROOT, load_script
    tool = load_script('model_complexity', ROOT / 'tools' / 'model_complexity.py')
    assert tool.complexity(name) == GOLDEN_COMPLEXITY[name]


WRN_FAMILY = """
\"\"\"SP-WRN-16-2 (CIFAR): a family added as one module, as README's "Add a model family" shows.\"\"\"
from timm.models import generate_default_cfgs, register_model

from spsearch.models.sp_resnet_cifar import CifarResNet, cifar_cfg, create_sp_cifar_resnet

default_cfgs = generate_default_cfgs({'sp_wrn16_2.untrained': cifar_cfg()})


@register_model
def sp_wrn16_2(pretrained: bool = False, **kwargs) -> CifarResNet:
    \"\"\"WRN-16-2: 3 stages x 2 BasicBlocks, 32/64/128 channels (alpha 1/2, G 2).\"\"\"
    model_args = dict(layers=(2, 2, 2), channels=(32, 64, 128))
    return create_sp_cifar_resnet('sp_wrn16_2', pretrained, **dict(model_args, **kwargs))
"""

ADD_FAMILY_CHECK = """
import sys
import spsearch, spsearch.models as models
assert spsearch.__file__.startswith(sys.argv[1]), spsearch.__file__  # the copy with the new module
import timm
from spsearch.cost import profile_model
from spsearch.space import SearchSpace
assert 'spsearch.models.sp_wrn' in [f.__name__ for f in models.FAMILIES]  # found, imported, registered
assert 'sp_wrn16_2' in models.list_sp_models()
space = SearchSpace.build('sp_wrn16_2')
assert space.num_stages == 3 and space.cost(space.paper_arch()) == space.cost_direct(space.paper_arch())
cost = profile_model(timm.create_model('sp_wrn16_2', sp_alpha=(0.5, 'vanilla', 0.25)), (3, 32, 32))
assert (cost.analytic_macs, cost.analytic_params) == (cost.macs, cost.params)
print('family ok', space)
"""


@pytest.mark.slow  # a fresh process, so the registry of this one stays as it is
def test_adding_a_family_is_one_module(tmp_path):
    """A family module (blocks, stage description and registrations) dropped into spsearch/models/ and nothing
    else: the package finds and registers it, timm builds it, the space, the cost tables and the counters take it."""
    import shutil
    import subprocess
    import sys

    from helpers import ROOT
    shutil.copytree(ROOT / 'spsearch', tmp_path / 'spsearch', ignore=shutil.ignore_patterns('__pycache__'))
    (tmp_path / 'spsearch' / 'models' / 'sp_wrn.py').write_text(WRN_FAMILY)
    done = subprocess.run([sys.executable, '-c', ADD_FAMILY_CHECK, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0 and 'family ok' in done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize('name', sp_models())
def test_fx_trace_of_every_registered_model(name):
    """torch.fx symbolic tracing (timm's feature_cls='fx', torchvision's feature extraction) gives the outputs."""
    from torch.fx import symbolic_trace
    model = timm.create_model(name).eval()
    randomize_bn(model)
    traced = symbolic_trace(model)
    x = torch.randn(2, *small_input_size(name))
    with torch.no_grad():
        expected = model(x)  # the fast path where the model has one; the trace runs the reference formulation
        scale = float(expected.abs().max())
        torch.testing.assert_close(traced(x), expected, rtol=1e-3, atol=1e-4 * scale)
