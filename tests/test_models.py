"""Tests of pose.models (HigherHRNet, official key layout, FLOPs) and pose.losses."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import yaml

from pose.codec import LOSS_PARTS, OUTPUT_STRIDES, Codec, codec_from_params
from pose.losses import ae_loss, heatmap_loss, total_loss
from pose.models import (
    HigherHRNet,
    build_model,
    count_flops,
    count_macs,
    count_params,
    init_weights,
    load_pretrained,
)
from pose.models.official_keys import (
    OFFICIAL_W32_ABSENT_KEYS,
    OFFICIAL_W32_CONFIG,
    OFFICIAL_W32_KEY_SHAPES,
    OFFICIAL_W32_PARAMS_M,
)

PARAMS = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
K = 17


def small_model(**overrides) -> HigherHRNet:
    """W16, one module per stage, one block everywhere: fast on CPU."""
    kwargs = dict(width=16, num_joints=K, tag_dim=1, stage_blocks=[1, 1, 1],
                  stem_blocks=1, branch_blocks=1, deconv_blocks=1)
    kwargs.update(overrides)
    return HigherHRNet(**kwargs)


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial weights and BN statistics so that outputs depend on every tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    return model


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("size", [256, 320])
def test_output_shapes_width16(size):
    model = HigherHRNet(width=16, num_joints=K, tag_dim=1, stage_blocks=[1, 1, 1], stem_blocks=4, branch_blocks=4,
                        deconv_blocks=4).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert isinstance(out, list) and len(out) == 2
    assert out[0].shape == (1, K + K, size // 4, size // 4)
    assert out[1].shape == (1, K, size // 2, size // 2)
    assert all(torch.isfinite(o).all() for o in out)


def test_output_shapes_follow_the_codec_tag_dim_2_non_square():
    model = small_model(tag_dim=2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert OUTPUT_STRIDES == (4, 2)
    codec = codec_from_params(dict(PARAMS["model"], tag_dim=2), None)
    assert codec.output_channels == (K + 2 * K, K)
    expected = [(2, c, 64 // s, 96 // s) for c, s in zip(codec.output_channels, OUTPUT_STRIDES)]
    assert [tuple(o.shape) for o in out] == expected
    (heatmaps, tags), (half, no_tags) = codec.split_outputs(out)
    assert heatmaps.shape == (2, K, 16, 24) and tags.shape == (2, K, 16, 24, 2)
    assert half is out[1] and no_tags is None
    # NumPy arrays split the same way (the onnxruntime path has no torch)
    _, np_tags = codec.split_tags(out[0].numpy())
    assert np_tags.shape == (2, K, 16, 24, 2) and (np_tags == tags.numpy()).all()
    with pytest.raises(ValueError, match="channels"):
        codec.split_tags(out[0][:, :-1])
    with pytest.raises(ValueError, match="2 outputs"):
        codec.split_outputs(out[:1])
    # channel K + d*K + k is tag dimension d of joint k
    assert torch.equal(tags[:, 3, :, :, 1], out[0][:, K + K + 3])
    assert torch.equal(tags[:, 5, :, :, 0], out[0][:, K + 5])


@pytest.mark.parametrize("shape", [(1, 3, 240, 240), (1, 3, 256, 100), (1, 3, 33, 64)])
def test_rejects_sizes_not_multiple_of_32(shape):
    model = small_model()
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.randn(*shape))


def test_rejects_wrong_channels_and_bad_config():
    with pytest.raises(ValueError):
        small_model()(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError):
        small_model(stage_blocks=[1, 1])
    with pytest.raises(ValueError):
        small_model(stage_blocks=[1, 0, 1])


def test_constructor_arguments_are_required_keywords():
    with pytest.raises(TypeError):
        HigherHRNet(16, 17, 1, [1, 1, 1], 1, 1, 1)  # positional
    with pytest.raises(TypeError):
        HigherHRNet(width=16, num_joints=17, tag_dim=1, stage_blocks=[1, 1, 1], stem_blocks=1,
                    branch_blocks=1)  # deconv_blocks missing: no default


def test_build_model_reads_params_yaml():
    m = PARAMS["model"]
    model = build_model(m)
    assert (model.width, model.num_joints, model.tag_dim) == (m["width"], m["num_joints"], m["tag_dim"])
    assert model.stage_blocks == tuple(m["stage_blocks"])
    assert len(model.stage2) == m["stage_blocks"][0]
    assert len(model.stage3) == m["stage_blocks"][1]
    assert len(model.stage4) == m["stage_blocks"][2]
    assert len(model.layer1) == m["stem_blocks"] and len(model.stage2[0].branches[0]) == 4  # published branch blocks
    assert len(model.deconv_layers) == len(OUTPUT_STRIDES) - 1  # one deconvolution per further stride
    assert len(model.deconv_layers[0]) == 1 + m["deconv_blocks"]
    assert model.final_layers[0].out_channels == m["num_joints"] * (1 + m["tag_dim"])
    bad = {k: v for k, v in m.items() if k != "width"}
    with pytest.raises(KeyError, match="width"):
        build_model(bad)
    with pytest.raises(ValueError, match="model.backbone"):
        build_model(dict(m, backbone="resnet"))


def test_official_key_names_in_small_model():
    keys = set(small_model().state_dict())
    for key in ["conv1.weight", "bn1.weight", "conv2.weight", "layer1.0.conv1.weight",
                "layer1.0.downsample.0.weight", "transition1.0.0.weight", "transition1.1.0.0.weight",
                "stage2.0.branches.0.0.conv1.weight", "stage2.0.fuse_layers.0.1.0.weight",
                "stage2.0.fuse_layers.1.0.0.0.weight", "transition2.2.0.0.weight",
                "stage3.0.fuse_layers.2.0.1.0.weight", "transition3.3.0.0.weight",
                "stage4.0.fuse_layers.0.3.0.weight", "final_layers.0.weight", "final_layers.0.bias",
                "final_layers.1.weight", "deconv_layers.0.0.0.weight", "deconv_layers.0.0.1.weight",
                "deconv_layers.0.1.0.conv1.weight"]:
        assert key in keys, key
    # the single stage-4 module is also the last one: it fuses to branch 0 only
    assert not any(k.startswith("stage4.0.fuse_layers.1.") for k in keys)


def test_official_w32_layout_and_param_count():
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = HigherHRNet(**OFFICIAL_W32_CONFIG)
    state = model.state_dict()
    for key, shape in OFFICIAL_W32_KEY_SHAPES.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    for key in OFFICIAL_W32_ABSENT_KEYS:
        assert key not in state, key
    assert count_params(model) / 1e6 == pytest.approx(OFFICIAL_W32_PARAMS_M, abs=0.05)
    # paper Table 2: 47.9 GFLOPs at 512 with the reference counting tool
    assert count_flops(model, 512, convention="reference") == pytest.approx(47.9, abs=0.05)
    exact = count_flops(model, 512)
    assert 45.0 < exact < 47.9


def test_state_dict_roundtrip_strict_identical_outputs(tmp_path):
    src = randomize(small_model(), seed=1).eval()
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    state = torch.load(path, weights_only=True)
    dst = small_model().eval()
    dst.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = src(x), dst(x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    with torch.no_grad():
        fresh = small_model().eval()(x)
    assert not torch.allclose(fresh[0], a[0])  # the weights matter


@pytest.mark.parametrize("wrap", ["raw", "state_dict", "model"])
def test_load_pretrained_wrappers_and_module_prefix(tmp_path, wrap):
    src = randomize(small_model(), seed=2)
    state = {"module." + k: v for k, v in src.state_dict().items()}
    obj = state if wrap == "raw" else {wrap: state, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    dst = small_model()
    assert load_pretrained(dst, path) is dst
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


def test_load_pretrained_reports_missing_unexpected_and_shape(tmp_path):
    state = small_model().state_dict()
    state.pop("conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    state["final_layers.1.bias"] = torch.zeros(5)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_pretrained(small_model(), path)
    msg = str(err.value)
    assert "conv1.weight" in msg and "extra.weight" in msg and "final_layers.1.bias" in msg
    with pytest.raises(FileNotFoundError):
        load_pretrained(small_model(), tmp_path / "nope.pth")


def test_count_macs_by_hand():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1),
                        nn.Flatten(), nn.Linear(2 * 64 * 64, 10))
    conv = 32 * 32 * 4 * 3 * 9
    deconv_exact = 32 * 32 * 4 * 2 * 16
    linear = 2 * 64 * 64 * 10
    assert count_macs(net, 32) == conv + deconv_exact + linear
    assert count_macs(net, (32, 32), convention="reference") == conv + 4 * deconv_exact + linear
    assert count_flops(net, 32) == pytest.approx((conv + deconv_exact + linear) / 1e9)
    assert count_params(net) == sum(p.numel() for p in net.parameters())
    with pytest.raises(ValueError):
        count_macs(net, 32, convention="bogus")


def test_count_flops_leaves_model_untouched():
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert count_flops(model, 256) > 0
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ----------------------------------------------------------------------------- losses


def test_heatmap_loss_by_hand():
    pred = torch.zeros(2, 2, 2, 2)
    target = torch.zeros(2, 2, 2, 2)
    pred[0, 0, 0, 0] = 1.0   # err^2 = 1, mask 1
    pred[0, 1, 1, 1] = 2.0   # err^2 = 4, mask 0 -> ignored
    target[0, 1, 0, 1] = 0.5  # err^2 = 0.25, mask 1
    pred[1, 0, 1, 0] = -3.0   # err^2 = 9, mask 1
    mask = torch.ones(2, 2, 2)
    mask[0, 1, 1] = 0.0
    loss = heatmap_loss(pred, target, mask, foreground_weight=0.0)
    assert loss.shape == (2,)
    # mean over K*H*W = 8 entries, masked ones count in the denominator
    assert torch.allclose(loss, torch.tensor([(1.0 + 0.25) / 8, 9.0 / 8]))
    # foreground weighting: the target-0.5 pixel weighs 1 + 2 * 0.5 = 2, background pixels 1
    weighted = heatmap_loss(pred, target, mask, foreground_weight=2.0)
    assert torch.allclose(weighted, torch.tensor([(1.0 + 2 * 0.25) / 8, 9.0 / 8]))
    assert torch.equal(heatmap_loss(pred, target, mask, foreground_weight=0.0), loss)
    with pytest.raises(ValueError):
        heatmap_loss(pred, target[:, :1], mask, foreground_weight=0.0)
    with pytest.raises(ValueError):
        heatmap_loss(pred, target, mask[:, :1], foreground_weight=0.0)
    with pytest.raises(ValueError, match="foreground_weight"):
        heatmap_loss(pred, target, mask, foreground_weight=-1.0)


def _joints(batch):
    """batch: list of images, each a list of people, each a list of (flat_index, visible)."""
    m = max(len(img) for img in batch)
    k = max(len(p) for img in batch for p in img)  # people of one test share K
    out = torch.zeros(len(batch), m, k, 2, dtype=torch.long)
    for b, img in enumerate(batch):
        for p, person in enumerate(img):
            for j, (idx, vis) in enumerate(person):
                out[b, p, j] = torch.tensor([idx, vis])
    return out


def test_ae_loss_by_hand():
    # K=2 joints, 2x2 map: flat index k*4 + y*2 + x over 8 tag values
    tags = torch.tensor([1.0, 9.0, 3.0, 9.0, 9.0, 2.0, 9.0, 4.0]).reshape(1, 2, 2, 2)
    tags = tags.repeat(3, 1, 1, 1)
    joints = _joints([
        # image 0: A = tags 1, 2 (mean 1.5); B = tags 3, 4 (mean 3.5); C has no visible joint
        [[(0, 1), (5, 1)], [(2, 1), (7, 1)], [(1, 0), (4, 0)]],
        # image 1: one person with tags 1, 3; a second person with no visible joint
        [[(0, 1), (2, 1)], [(1, 0), (3, 0)]],
        # image 2: nobody
        [],
    ])
    push, pull = ae_loss(tags, joints, push_type="exp", push_margin=1.0)

    pull_a = ((1 - 1.5) ** 2 + (2 - 1.5) ** 2) / 2   # 0.25
    pull_b = ((3 - 3.5) ** 2 + (4 - 3.5) ** 2) / 2   # 0.25
    expected_pull0 = (pull_a + pull_b) / 2
    # ordered pairs (A,B), (B,A): 2 * exp(-(1.5 - 3.5)^2); times 0.5 / (N (N-1)), N = 2
    expected_push0 = 0.5 * 2 * math.exp(-4.0) / (2 * 1)
    expected_pull1 = ((1 - 2) ** 2 + (3 - 2) ** 2) / 2  # 1.0, single person
    assert torch.allclose(push, torch.tensor([expected_push0, 0.0, 0.0]))
    assert torch.allclose(pull, torch.tensor([expected_pull0, expected_pull1, 0.0]))


def test_ae_loss_zero_pull_for_constant_person_tags_and_max_push_for_equal_people():
    k, h, w = 3, 4, 4
    tags = torch.zeros(1, k, h, w)
    joints = torch.zeros(1, 3, k, 2, dtype=torch.long)
    values = [0.7, -2.0, 5.0]
    for p, value in enumerate(values):
        for j in range(k):
            y, x = p, j
            tags[0, j, y, x] = value
            joints[0, p, j] = torch.tensor([j * h * w + y * w + x, 1])
    push, pull = ae_loss(tags, joints, push_type="exp", push_margin=1.0)
    assert pull.item() == 0.0
    d = [(a - b) ** 2 for i, a in enumerate(values) for j, b in enumerate(values) if i != j]
    assert push.item() == pytest.approx(0.5 * sum(math.exp(-x) for x in d) / 6)
    # every person at the same tag: push takes its maximum 0.5
    push_same, _ = ae_loss(torch.zeros(1, k, h, w), joints, push_type="exp", push_margin=1.0)
    assert push_same.item() == pytest.approx(0.5)


def test_ae_loss_tag_dim_2_matches_split_layout():
    torch.manual_seed(0)
    b, k, h, w, d = 2, 4, 3, 5, 2
    out = torch.randn(b, k + k * d, h, w)
    joints = torch.zeros(b, 3, k, 2, dtype=torch.long)
    joints[..., 0] = torch.randint(0, k * h * w, (b, 3, k))
    joints[..., 1] = 1
    push, pull = ae_loss(out[:, k:], joints, push_type="exp", push_margin=1.0)
    codec = Codec(num_joints=k, tag_dim=d, convention="project", strides=OUTPUT_STRIDES, flip_index=tuple(range(k)),
                  sigma=None, subpixel=None, max_people=None)
    _, tags = codec.split_tags(out)                   # (B, K, H, W, D)
    flat = tags.reshape(b, k * h * w, d)
    for i in range(b):
        person_tags = flat[i][joints[i, ..., 0]]          # (M, K, D)
        means = person_tags.mean(dim=1)                   # (M, D)
        exp_pull = ((person_tags - means[:, None]) ** 2).mean(dim=(1, 2)).mean()
        dist = ((means[:, None] - means[None]) ** 2).sum(-1)
        exp_push = (torch.exp(-dist).sum() - 3) * 0.5 / 6
        assert pull[i].item() == pytest.approx(exp_pull.item(), rel=1e-5)
        assert push[i].item() == pytest.approx(exp_push.item(), rel=1e-5)


def test_ae_loss_rejects_bad_input():
    tags = torch.zeros(1, 2, 2, 2)
    with pytest.raises(ValueError, match="index"):
        ae_loss(tags, torch.tensor([[[[8, 1], [0, 1]]]]), push_type="exp", push_margin=1.0)
    # out of range but invisible: fine
    ae_loss(tags, torch.tensor([[[[8, 0], [0, 1]]]]), push_type="exp", push_margin=1.0)
    with pytest.raises(ValueError):
        ae_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long), push_type="exp", push_margin=1.0)


def test_ae_loss_gradcheck():
    torch.manual_seed(0)
    tags = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    joints = _joints([[[(0, 1), (10, 1)], [(4, 1), (13, 1)], [(8, 1), (17, 0)]]])
    assert torch.autograd.gradcheck(lambda t: torch.stack(ae_loss(t, joints, push_type="exp", push_margin=1.0)),
                                    (tags,))


def test_total_loss_and_gradient_through_model():
    torch.manual_seed(0)
    model = small_model()
    x = torch.randn(2, 3, 64, 64)
    outputs = model(x)
    targets = [torch.rand(2, K, 16, 16), torch.rand(2, K, 32, 32)]
    masks = [torch.ones(2, 16, 16), torch.ones(2, 32, 32)]
    masks[0][:, :4] = 0
    joints = torch.zeros(2, 30, K, 2, dtype=torch.long)
    joints[:, :2, :, 0] = torch.randint(0, K * 16 * 16, (2, 2, K))
    joints[:, :2, :, 1] = 1
    params_loss = dict(PARAMS["loss"], push_weight=0.5, pull_weight=0.25, heatmap_weights=[1.0, 2.0],
                       foreground_weight=3.0)
    batch = {"heatmap_4": targets[0], "heatmap_2": targets[1], "mask_4": masks[0], "mask_2": masks[1], "joints": joints}
    loss, parts = total_loss(outputs, batch, params_loss)
    push, pull = ae_loss(outputs[0][:, K:], joints, push_type=params_loss["push_type"],
                         push_margin=params_loss["push_margin"])
    expected = (heatmap_loss(outputs[0][:, :K], targets[0], masks[0], foreground_weight=3.0).mean()
                + 2.0 * heatmap_loss(outputs[1], targets[1], masks[1], foreground_weight=3.0).mean()
                + 0.5 * push.mean() + 0.25 * pull.mean())
    assert loss.dim() == 0 and torch.allclose(loss, expected)
    assert LOSS_PARTS == ("heatmap_4", "heatmap_2", "push", "pull")
    assert set(parts) == {*LOSS_PARTS, "total"}
    assert torch.allclose(parts["heatmap_4"] + parts["heatmap_2"] + parts["push"] + parts["pull"], loss)
    assert torch.allclose(parts["heatmap_2"], 2.0 * heatmap_loss(outputs[1], targets[1], masks[1],
                                                                 foreground_weight=3.0).mean())
    assert not any(v.requires_grad for v in parts.values())
    loss.backward()
    for name in ["conv1.weight", "stage4.0.branches.3.0.conv1.weight", "final_layers.0.weight",
                 "final_layers.1.weight", "deconv_layers.0.0.0.weight"]:
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # extra batch keys (the image) are ignored; a missing target is named
    loss2, _ = total_loss([o.detach() for o in outputs], dict(batch, image=x), params_loss)
    assert torch.allclose(loss2, expected.detach())
    with pytest.raises(KeyError, match="mask_2"):
        total_loss(outputs, {k: v for k, v in batch.items() if k != "mask_2"}, params_loss)


def test_total_loss_with_params_yaml_and_errors():
    outputs = [torch.zeros(1, 2 * K, 8, 8), torch.zeros(1, K, 16, 16)]
    targets = [torch.ones(1, K, 8, 8), torch.ones(1, K, 16, 16)]
    masks = [torch.ones(1, 8, 8), torch.ones(1, 16, 16)]
    joints = torch.zeros(1, 4, K, 2, dtype=torch.long)
    batch = {"heatmap_4": targets[0], "heatmap_2": targets[1], "mask_4": masks[0], "mask_2": masks[1], "joints": joints}
    loss, parts = total_loss(outputs, batch, PARAMS["loss"])
    w, fg = PARAMS["loss"]["heatmap_weights"], PARAMS["loss"]["foreground_weight"]
    assert loss.item() == pytest.approx((w[0] + w[1]) * (1 + fg))  # err 1 and target 1 everywhere, no people
    assert parts["push"].item() == 0.0 and parts["pull"].item() == 0.0
    with pytest.raises(ValueError):
        total_loss(outputs[:1], batch, PARAMS["loss"])
    with pytest.raises(ValueError):
        total_loss(outputs, batch, dict(PARAMS["loss"], heatmap_weights=[1.0]))
    with pytest.raises(ValueError):
        total_loss([outputs[1], outputs[1]], batch, dict(PARAMS["loss"], heatmap_weights=[1, 1]))
    with pytest.raises(KeyError, match="push_weight"):
        total_loss(outputs, batch, {"heatmap_weights": [1, 1], "pull_weight": 1})


def test_hinge_push_separates_collapsed_tags():
    """The reference push exp(-d^2) has no gradient when all people share one tag; the
    CornerNet hinge (loss.push_type: hinge) does, and equals its formula."""
    h = w = 4
    joints = torch.zeros(1, 3, K, 2, dtype=torch.long)
    for person, x in enumerate((0, 1, 2)):  # joint 0 of three people, one pixel each
        joints[0, person, 0] = torch.tensor([x, 1])
    tags = torch.zeros(1, K, h, w, requires_grad=True)
    push_exp, _ = ae_loss(tags, joints, push_type="exp", push_margin=1.0)
    push_exp.sum().backward()
    assert push_exp.item() == pytest.approx(0.5) and tags.grad.abs().max().item() < 1e-6
    tags.grad = None
    push_hinge, _ = ae_loss(tags + 1e-3 * torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w), joints,
                            push_type="hinge", push_margin=1.0)
    push_hinge.sum().backward()
    assert tags.grad.abs().max().item() > 0.1  # collapsed tags get pushed apart
    values = torch.tensor([0.0, 0.3, 2.0])
    t = torch.zeros(1, K, h, w)
    t[0, 0, 0, :3] = values
    push, pull = ae_loss(t, joints, push_type="hinge", push_margin=1.0)
    d = (values[:, None] - values[None]).abs()
    expected = torch.relu(1.0 - d)[~torch.eye(3, dtype=torch.bool)].sum() / 6
    assert push.item() == pytest.approx(expected.item()) and pull.item() == 0.0
    with pytest.raises(ValueError, match="loss.push_type"):
        ae_loss(t, joints, push_type="cosine", push_margin=1.0)


def test_init_weights_schemes():
    torch.manual_seed(0)
    model = build_model(PARAMS["model"])
    ref = {n: p.clone() for n, p in model.state_dict().items()}
    assert init_weights(model, "kaiming") is model
    conv2 = model.conv2.weight  # 64 -> 64, 3x3: He std = sqrt(2 / fan_out) = sqrt(2 / 576)
    assert conv2.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    for head in model.final_layers:  # prediction layers stay ~0 so the first heatmaps / tags are ~0
        assert head.weight.std().item() == pytest.approx(0.001, rel=0.2)
        assert torch.count_nonzero(head.bias) == 0
    assert torch.equal(model.bn1.weight, torch.ones(64)) and torch.count_nonzero(model.bn1.bias) == 0
    init_weights(model, "reference")  # the constructor's N(0, 0.001) again
    for name, value in model.state_dict().items():
        if name.endswith("weight") and value.dim() == 4:
            assert value.std().item() == pytest.approx(ref[name].std().item(), rel=0.2), name
    with pytest.raises(ValueError, match="model.init"):
        init_weights(model, "xavier")


def test_losses_accept_bfloat16():
    pred = torch.rand(1, 2, 4, 4, dtype=torch.bfloat16)
    loss = heatmap_loss(pred, torch.zeros(1, 2, 4, 4), torch.ones(1, 4, 4), foreground_weight=0.0)
    assert loss.dtype == torch.float32
    push, pull = ae_loss(pred, torch.zeros(1, 2, 2, 2, dtype=torch.long), push_type="exp", push_margin=1.0)
    assert push.dtype == pull.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_and_losses_on_cuda():
    device = torch.device("cuda")
    model = small_model().to(device)
    outputs = model(torch.randn(2, 3, 64, 64, device=device))
    targets = [torch.rand(2, K, 16, 16, device=device), torch.rand(2, K, 32, 32, device=device)]
    masks = [torch.ones(2, 16, 16, device=device), torch.ones(2, 32, 32, device=device)]
    joints = torch.zeros(2, 4, K, 2, dtype=torch.long)  # CPU joints are moved to the tags' device
    joints[:, :2, :, 0] = torch.randint(0, K * 16 * 16, (2, 2, K))
    joints[:, :2, :, 1] = 1
    batch = {"heatmap_4": targets[0], "heatmap_2": targets[1], "mask_4": masks[0], "mask_2": masks[1], "joints": joints}
    loss, parts = total_loss(outputs, batch, PARAMS["loss"])
    assert loss.device.type == "cuda" and all(v.device.type == "cuda" for v in parts.values())
    loss.backward()
    assert model.conv1.weight.grad is not None


# ----------------------------------------------------------------------------- block counts


def test_stem_and_deconv_block_counts_from_params():
    m = dict(PARAMS["model"], width=16, stage_blocks=[1, 1, 1], stem_blocks=1, deconv_blocks=2)
    model = build_model(m)
    assert len(model.layer1) == 1
    assert [len(d) for d in model.deconv_layers] == [1 + 2]
    keys = set(model.state_dict())
    assert "layer1.0.downsample.0.weight" in keys and not any(k.startswith("layer1.1.") for k in keys)
    assert "deconv_layers.0.2.0.conv2.weight" in keys and not any(k.startswith("deconv_layers.0.3.") for k in keys)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in out] == [(1, 2 * K, 16, 16), (1, K, 32, 32)]
    fewer = count_params(model)
    assert fewer < count_params(build_model(dict(m, stem_blocks=4)))
    for key in ("stem_blocks", "deconv_blocks"):
        with pytest.raises(KeyError, match=key):
            build_model({k: v for k, v in m.items() if k != key})
    with pytest.raises(ValueError, match="stem_blocks"):
        build_model(dict(m, stem_blocks=0))


def test_published_block_counts_keep_the_official_layout():
    with torch.device("meta"):
        model = build_model(dict(PARAMS["model"], **OFFICIAL_W32_CONFIG, pretrained=""))
    assert OFFICIAL_W32_CONFIG["branch_blocks"] == 4  # build_model keeps the published branch blocks
    state = model.state_dict()
    assert all(key in state and tuple(state[key].shape) == shape for key, shape in OFFICIAL_W32_KEY_SHAPES.items())
    assert not any(key in state for key in OFFICIAL_W32_ABSENT_KEYS)


# ----------------------------------------------------------------------------- ImageNet backbones


def classification_state(*, width: int, stage_blocks, stem_blocks: int, branch_blocks: int, seed: int,
                         device: str = "cpu") -> dict[str, torch.Tensor]:
    """A randomly initialised HRNet ImageNet classifier state dict in the HRNet-Image-Classification
    layout (lib/models/cls_hrnet.py; timm's hrnet.py has the same names), built from the
    project's blocks: backbone + the last stage-4 module fused to all branches + incre_modules,
    downsamp_modules, final_layer, classifier."""
    from pose.models.hrnet import Bottleneck, HighResolutionModule, _residual_layer

    with torch.device(device):
        pose = HigherHRNet(width=width, num_joints=K, tag_dim=1, stage_blocks=stage_blocks,
                           stem_blocks=stem_blocks, branch_blocks=branch_blocks, deconv_blocks=1)
        ch = [width, 2 * width, 4 * width, 8 * width]
        parts = {"": pose,
                 f"stage4.{stage_blocks[2] - 1}.": HighResolutionModule(ch, ch, branch_blocks, multi_scale_output=True)}
        head_ch = [32, 64, 128, 256]
        for i, c in enumerate(ch):
            parts[f"incre_modules.{i}."] = _residual_layer(Bottleneck, c, head_ch[i], 1)
        for i in range(3):
            parts[f"downsamp_modules.{i}."] = nn.Sequential(
                nn.Conv2d(head_ch[i] * 4, head_ch[i + 1] * 4, 3, 2, 1), nn.BatchNorm2d(head_ch[i + 1] * 4), nn.ReLU())
        parts["final_layer."] = nn.Sequential(nn.Conv2d(1024, 2048, 1), nn.BatchNorm2d(2048), nn.ReLU())
        parts["classifier."] = nn.Linear(2048, 1000)
    state = {}
    for prefix, module in parts.items():
        if device != "meta":
            randomize(module, seed)
        for key, value in module.state_dict().items():
            if prefix == "" and key.split(".")[0] in ("final_layers", "deconv_layers"):
                continue  # a classifier has no pose head
            if prefix.startswith("stage4.") and not (key.startswith("fuse_layers.") and key.split(".")[1] != "0"):
                continue  # only the fusions to branches 1-3 are extra
            state[prefix + key] = value
    return state


SMALL_ARCH = dict(width=16, stage_blocks=[1, 1, 2], branch_blocks=1)


def small_pose(**overrides) -> HigherHRNet:
    kwargs = dict(SMALL_ARCH, num_joints=K, tag_dim=1, stem_blocks=2, deconv_blocks=1)
    kwargs.update(overrides)
    return HigherHRNet(**kwargs)


def test_classification_layout_key_names_w32():
    state = classification_state(width=32, stage_blocks=[1, 4, 3], stem_blocks=4, branch_blocks=4, seed=0,
                                 device="meta")
    # names of hrnet_w32-36af842e.pth (cls_hrnet.py) / timm hrnet_w32
    for key, shape in {"conv1.weight": (64, 3, 3, 3), "layer1.3.bn3.running_var": (256,),
                       "transition1.1.0.0.weight": (64, 256, 3, 3),
                       "stage4.2.fuse_layers.3.0.2.0.weight": (256, 32, 3, 3),
                       "incre_modules.0.0.conv1.weight": (32, 32, 1, 1),
                       "incre_modules.3.0.downsample.0.weight": (1024, 256, 1, 1),
                       "downsamp_modules.2.0.bias": (1024,), "final_layer.0.weight": (2048, 1024, 1, 1),
                       "classifier.weight": (1000, 2048)}.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith(("final_layers.", "deconv_layers.")) for k in state)


def _check_backbone_loaded(model, src, report, head_before):
    from pose.models.backbone import BACKBONE_MODULES

    own = model.state_dict()
    backbone_keys = sorted(k for k in own if k.split(".")[0] in BACKBONE_MODULES)
    assert report.loaded == backbone_keys and report.missing == []
    for key in backbone_keys:
        assert torch.equal(own[key], src[key]), key
    assert "classifier.weight" in report.skipped_classifier and "final_layer.0.weight" in report.skipped_classifier
    assert "stage4.1.fuse_layers.3.0.0.0.weight" in report.skipped_unused  # classifier fuses to every branch
    assert "layer1.3.conv1.weight" in report.skipped_unused  # checkpoint has 4 stem blocks, the model 2
    assert report.kept_initialised == sorted(head_before) and report.kept_initialised
    for key, value in head_before.items():
        assert torch.equal(own[key], value), key  # pose head untouched
    assert report.layout == "hrnet-classification"
    text = report.summary()
    assert f"loaded {len(backbone_keys)} tensors" in text and "missing 0" in text


def test_load_backbone_official_layout(tmp_path):
    from pose.models import load_backbone

    src = classification_state(**SMALL_ARCH, stem_blocks=4, seed=3)
    path = tmp_path / "hrnet_w16-official.pth"
    torch.save(src, path)
    model = small_pose()
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("final_layers", "deconv_layers"))}
    report = load_backbone(model, path)
    _check_backbone_loaded(model, src, report, head)
    assert report.container == "state dict"


@pytest.mark.parametrize("form", ["train_checkpoint", "safetensors", "ddp_prefix"])
def test_load_backbone_timm_layout(tmp_path, form):
    import argparse

    from pose.models import load_backbone

    src = classification_state(**SMALL_ARCH, stem_blocks=4, seed=4)
    if form == "train_checkpoint":  # timm train.py: model_best.pth.tar
        ema = {k: v + 1 if v.is_floating_point() else v for k, v in src.items()}
        path = tmp_path / "model_best.pth.tar"
        torch.save({"epoch": 7, "arch": "hrnet_w32", "state_dict": src, "state_dict_ema": ema, "version": 2,
                    "args": argparse.Namespace(model="hrnet_w32", lr=0.1), "metric": 78.1}, path)
    elif form == "safetensors":  # the hub's model.safetensors
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in src.items()}, str(path))
    else:
        path = tmp_path / "ddp.pth"
        torch.save({"module." + k: v for k, v in src.items()}, path)
    model = small_pose()
    head = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("final_layers", "deconv_layers"))}
    report = load_backbone(model, path)
    _check_backbone_loaded(model, src, report, head)


def test_load_backbone_errors_name_the_key(tmp_path):
    from pose.models import load_backbone

    path = tmp_path / "w24.pth"
    torch.save(classification_state(width=24, stage_blocks=[1, 1, 2], branch_blocks=1, stem_blocks=2, seed=5), path)
    with pytest.raises(ValueError, match=r"transition1\.0\.0\.weight: checkpoint \(24, 256, 3, 3\) vs model \(16, 256"):
        load_backbone(small_pose(), path)
    with pytest.raises(FileNotFoundError, match="model.pretrained_backbone"):
        load_backbone(small_pose(), tmp_path / "absent.pth")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "foo.pth")
    with pytest.raises(ValueError, match="no backbone key"):
        load_backbone(small_pose(), tmp_path / "foo.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_backbone(small_pose(), tmp_path / "junk.pth")


def test_build_training_model_loads_backbone_after_init(tmp_path, capsys):
    from pose.models import build_training_model

    src = classification_state(width=16, stage_blocks=[1, 1, 1], stem_blocks=4, branch_blocks=4, seed=6)
    path = tmp_path / "bb.pth"
    torch.save(src, path)
    mp = dict(PARAMS["model"], width=16, stage_blocks=[1, 1, 1], stem_blocks=4, deconv_blocks=1, init="kaiming",
              pretrained_backbone=str(path), pretrained="")
    model, report = build_training_model(mp, verbose=True)
    assert model.training and report is not None and report.missing == []
    assert torch.equal(model.conv1.weight, src["conv1.weight"])  # not overwritten by the init
    assert torch.equal(model.stage4[0].branches[3][3].bn2.running_var, src["stage4.0.branches.3.3.bn2.running_var"])
    deconv = model.deconv_layers[0][0][0].weight  # kaiming-initialised head; torch's fan_out of the
    assert deconv.std().item() == pytest.approx((2 / ((16 + 2 * K) * 16)) ** 0.5, rel=0.1)  # (C_in, C_out, 4, 4) weight
    assert "pretrained backbone" in capsys.readouterr().out
    model, report = build_training_model(dict(mp, pretrained_backbone=""), verbose=True)
    assert report is None and not torch.equal(model.conv1.weight, src["conv1.weight"])


def test_trained_checkpoint_loads_without_its_pretrained_files(tmp_path):
    import json

    from pose.train.checkpoint import load_trained_model, save_checkpoint

    mp = dict(PARAMS["model"], width=16, stage_blocks=[1, 1, 1], stem_blocks=1, deconv_blocks=1,
              pretrained_backbone=str(tmp_path / "gone/hrnet_w32-36af842e.pth"), pretrained=str(tmp_path / "gone.pt"))
    model = randomize(build_model(dict(mp, pretrained="")), seed=8).eval()
    save_checkpoint({"model": model.state_dict(), "model_params": json.dumps(mp, sort_keys=True)}, tmp_path / "best.pt")
    loaded = load_trained_model(tmp_path / "best.pt")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), loaded(x)))
    # a checkpoint written before stem_blocks / deconv_blocks / backbone existed was built with the published 4
    # blocks and HRNet, and records the removed num_deconv (always 1)
    newer = ("stem_blocks", "deconv_blocks", "pretrained_backbone", "backbone")
    legacy = {k: v for k, v in mp.items() if k not in newer}
    legacy["num_deconv"] = 1
    old = randomize(build_model(dict(mp, stem_blocks=4, deconv_blocks=4, pretrained="")), seed=9).eval()
    save_checkpoint({"model": old.state_dict(), "model_params": json.dumps(legacy)}, tmp_path / "old.pt")
    loaded = load_trained_model(tmp_path / "old.pt")
    assert len(loaded.layer1) == 4
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(old(x), loaded(x)))
    save_checkpoint({"model": old.state_dict(), "model_params": json.dumps(dict(legacy, num_deconv=2))},
                    tmp_path / "two.pt")
    with pytest.raises(ValueError, match="num_deconv"):
        load_trained_model(tmp_path / "two.pt")
