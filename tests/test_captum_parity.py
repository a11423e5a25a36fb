"""Captum's LayerGradCam test cases (captum tests/attr/layer/test_grad_cam.py), ported with their
expected numbers and computed through batchcam's own API: explain, and BatchCAM, with the
Captum-equivalent options (relu=False, normalize="none", maps at the layer's size; target 0).
Captum returns maps (B, 1, *S) where batchcam returns (B, *S). The models are Captum's test
models (captum.testing.helpers.basic_models), rebuilt here with the same fixed weights."""
import pytest
import torch
from torch import nn

import batchcam


class MultiRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, arg1, arg2):
        return self.relu1(arg1), self.relu2(arg2)


class BasicModelMultiLayer(nn.Module):
    """Captum's BasicModel_MultiLayer: linear0 is the identity; with multi_input_module the output
    goes through multi_relu (a tuple) and `relu` runs but does not reach the output."""

    def __init__(self, multi_input_module=False):
        super().__init__()
        self.multi_input_module = multi_input_module
        self.linear0 = nn.Linear(3, 3)
        self.linear1 = nn.Linear(3, 4)
        self.linear1_alt = nn.Linear(3, 4)
        self.linear2 = nn.Linear(4, 2)
        self.multi_relu = MultiRelu()
        self.relu = nn.ReLU()
        with torch.no_grad():
            self.linear0.weight.copy_(torch.eye(3))
            self.linear0.bias.zero_()
            for linear in (self.linear1, self.linear1_alt):
                linear.weight.fill_(1.0)
                linear.bias.copy_(torch.tensor([-10.0, 1.0, 1.0, 1.0]))
            self.linear2.weight.fill_(1.0)
            self.linear2.bias.copy_(torch.tensor([-1.0, 1.0]))

    def forward(self, x, add_input=None):
        x = x if add_input is None else x + add_input
        lin1_out = self.linear1(self.linear0(x))
        if self.multi_input_module:
            relu_out1, relu_out2 = self.multi_relu(lin1_out, self.linear1_alt(x))
            relu_out = relu_out1 + relu_out2
            self.relu(lin1_out)  # unused on purpose
        else:
            relu_out = self.relu(lin1_out)
        return self.linear2(relu_out)


class BasicModelConvNetOneConv(nn.Module):
    """Captum's BasicModel_ConvNet_One_Conv: conv1 (all-ones 3x3, biases -50, -75), relu1, fc1."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, 1)
        self.relu1 = nn.ReLU()
        self.fc1 = nn.Linear(8, 4)
        self.relu2 = nn.ReLU()
        with torch.no_grad():
            self.conv1.weight.fill_(1.0)
            self.conv1.bias.copy_(torch.tensor([-50.0, -75.0]))
            self.fc1.weight.copy_(torch.cat([torch.ones(4, 5), -torch.ones(4, 3)], dim=1))
            self.fc1.bias.zero_()

    def forward(self, x, x2=None):
        if x2 is not None:
            x = x + x2
        x = self.relu1(self.conv1(x)).view(-1, 8)
        return self.relu2(self.fc1(x))


def attribute(api, model, layer, inputs, relu=False, layer_input=False, sum_channels=True, forward_args=()):
    """Captum's LayerGradCam(model, layer).attribute(inputs, target=0, ...) through batchcam."""
    batch = (inputs[0] if isinstance(inputs, tuple) else inputs).shape[0]
    targets = torch.zeros(batch, dtype=torch.long)
    if api == "explain":
        return batchcam.explain(model, layer, inputs, targets, relu=relu, normalize="none", size="layer",
                                layer_input=layer_input, sum_channels=sum_channels, forward_args=forward_args)
    with batchcam.BatchCAM(model, layer, relu=relu, normalize="none", layer_input=layer_input,
                           sum_channels=sum_channels) as cam:
        return cam(inputs, targets, forward_args=forward_args)[1]


def assert_maps(got, expected, channel_dim_kept=False):
    """Captum's (B, 1, *S) expected maps (or a tuple of them) against batchcam's (B, *S)."""
    got, expected = (got, expected) if isinstance(expected, tuple) else ((got,), (expected,))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = torch.as_tensor(e, dtype=torch.float32)
        e = e if channel_dim_kept or e.dim() == 2 else e.squeeze(1)
        torch.testing.assert_close(g.detach(), e, rtol=0, atol=0.01)


APIS = ["explain", "BatchCAM"]


@pytest.mark.parametrize("api", APIS)
def test_simple_input_non_conv(api):
    net = BasicModelMultiLayer()
    assert_maps(attribute(api, net, net.linear0, torch.tensor([[0.0, 100.0, 0.0]])), [[400.0]])


@pytest.mark.parametrize("api", APIS)
def test_simple_multi_input_non_conv(api):
    net = BasicModelMultiLayer(multi_input_module=True)
    maps = attribute(api, net, net.multi_relu, torch.tensor([[0.0, 6.0, 0.0]]))
    assert isinstance(maps, tuple)
    assert_maps(maps, ([[21.0]], [[21.0]]))


@pytest.mark.parametrize("api", APIS)
def test_simple_input_conv(api):
    net = BasicModelConvNetOneConv()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    assert_maps(attribute(api, net, net.conv1, inp), [[[[11.25, 13.5], [20.25, 22.5]]]])


@pytest.mark.parametrize("api", APIS)
def test_simple_input_conv_split_channels(api):
    net = BasicModelConvNetOneConv()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    expected = [[[[-3.75, 3.0], [23.25, 30.0]], [[15.0, 10.5], [-3.0, -7.5]]]]
    assert_maps(attribute(api, net, net.conv1, inp, sum_channels=False), expected, channel_dim_kept=True)


@pytest.mark.parametrize("api", APIS)
def test_simple_input_conv_no_grad(api):
    net = BasicModelConvNetOneConv()
    for param in net.parameters():
        param.requires_grad = False
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    assert_maps(attribute(api, net, net.conv1, inp), [[[[11.25, 13.5], [20.25, 22.5]]]])


@pytest.mark.parametrize("api", APIS)
def test_simple_input_conv_relu(api):
    net = BasicModelConvNetOneConv()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    assert_maps(attribute(api, net, net.relu1, inp), [[[[0.0, 4.0], [28.0, 32.5]]]])


@pytest.mark.parametrize("api", APIS)
def test_simple_input_conv_without_final_relu(api):
    net = BasicModelConvNetOneConv()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    inp[0, 0, 1, 1] = -4.0  # a negative value: the final relu is not applied by default
    assert_maps(attribute(api, net, net.conv1, inp, layer_input=True), 0.5625 * inp)


@pytest.mark.parametrize("api", APIS)
def test_simple_input_conv_fc_with_final_relu(api):
    net = BasicModelConvNetOneConv()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    inp[0, 0, 1, 1] = -4.0
    expected = 0.5625 * inp
    expected[0, 0, 1, 1] = 0.0
    assert_maps(attribute(api, net, net.conv1, inp, layer_input=True, relu=True), expected)


@pytest.mark.parametrize("api", APIS)
def test_simple_multi_input_conv(api):
    net = BasicModelConvNetOneConv()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    inp2 = torch.ones((1, 1, 4, 4))
    assert_maps(attribute(api, net, net.conv1, (inp, inp2)), [[[[14.5, 19.0], [32.5, 37.0]]]])


@pytest.mark.parametrize("api", APIS)
def test_additional_forward_args(api):
    """Captum's additional_forward_args: the second input given as an extra argument instead."""
    net = BasicModelConvNetOneConv()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    maps = attribute(api, net, net.conv1, inp, forward_args=(torch.ones((1, 1, 4, 4)),))
    assert_maps(maps, [[[[14.5, 19.0], [32.5, 37.0]]]])


@pytest.mark.parametrize("api", APIS)
def test_relu_gradcam_with_unused_layer(api):
    """A layer that does not reach the output: zero maps, not torch's "not used in the graph"."""
    net = BasicModelMultiLayer(multi_input_module=True)
    maps = attribute(api, net, net.relu, torch.tensor([[0.0, 6.0, 0.0]]))
    assert maps.shape == (1, 1) and maps.abs().sum() == 0


def test_no_side_effects_with_the_new_options():
    """Tuple outputs, layer inputs, extra arguments: hooks removed, mode kept, no .grad written."""
    net = BasicModelConvNetOneConv().train()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    batchcam.explain(net, net.conv1, inp, layer_input=True, forward_args=(torch.ones(1, 1, 4, 4),))
    multi = BasicModelMultiLayer(multi_input_module=True)
    batchcam.explain(multi, multi.multi_relu, torch.tensor([[0.0, 6.0, 0.0]]), size="layer")
    for model in (net, multi):
        assert all(p.grad is None for p in model.parameters())
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert net.training


def test_options_that_need_each_other():
    net = BasicModelConvNetOneConv()
    inp = torch.arange(16).view(1, 1, 4, 4).float()
    with pytest.raises(ValueError, match="sum_channels=False gives per-channel terms"):
        batchcam.explain(net, net.conv1, inp, sum_channels=False)
    with pytest.raises(ValueError, match="normalize must be one of"):
        batchcam.explain(net, net.conv1, inp, normalize="max")
    multi = BasicModelMultiLayer(multi_input_module=True)
    with pytest.raises(ValueError, match="needs to be the only target layer"):
        batchcam.explain(multi, [multi.multi_relu, multi.linear0], torch.ones(2, 3), size=(1,))
