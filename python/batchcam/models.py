"""Models for 28x28 single-channel images, each naming its Grad-CAM target layer.

| model            | target layer            | map   | notes                                        |
|------------------|-------------------------|-------|----------------------------------------------|
| simple-cnn       | third conv block (ReLU) | 7x7   | 3 convs, the paper's small model             |
| resnet18         | layer4                  | 4x4   | 3x3 stem, no max-pool (28 -> 28 -> 14 -> 7 -> 4)|
| resnet18 (imagenet_stem=True) | layer4     | 7x7   | 7x7/2 stem + max-pool, for 224x224 inputs    |
| convnext-v2-tiny | stage 4                 | 4x4   | GRN blocks, 3x3 stem, dims 96-192-384-768    |

Every model is `head(body(x))` with `body` ending at the target layer: `model.target_layer`
(= `model.body[-1]`) is the module whose output BatchCAM explains, and the split lets a trainer
compile the body and the head separately (see `batchcam.training`).
"""
import torch
from torch import nn
from torch.nn import functional as F


class CamModel(nn.Module):
    """`head(body(x))`; the body's last module is the Grad-CAM target layer."""

    @property
    def target_layer(self) -> nn.Module:
        return self.body[-1]

    def forward(self, x):
        return self.head(self.body(x))


class SimpleCNN(CamModel):
    def __init__(self, num_classes=10, in_channels=1, width=32):
        super().__init__()

        def block(cin, cout, pool):
            layers = [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)

        self.body = nn.Sequential(
            block(in_channels, width, True), block(width, 2 * width, True), block(2 * width, 4 * width, False)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(CamModel):
    def __init__(self, num_classes=10, in_channels=1, imagenet_stem=False):
        super().__init__()
        if imagenet_stem:
            stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                 nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        else:
            stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [stem], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):  # layer1 .. layer4
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt V2), on channels-last (B, H, W, C) input."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2Tiny(CamModel):
    """ConvNeXt V2 Tiny (depths 3-3-9-3, dims 96-192-384-768) for 28x28 inputs: a 3x3 stride-1
    stem instead of the 4x4 patchify one, and 3x3 stride-2 downsampling, so that stage 4 still
    has 4x4 maps (28 -> 14 -> 7 -> 4)."""

    def __init__(self, num_classes=10, in_channels=1, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(in_channels, dims[0], 3, 1, 1), LayerNorm2d(dims[0], eps=1e-6))]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            if i > 0:  # downsample, then the stage
                layers.append(nn.Sequential(LayerNorm2d(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 3, 2, 1)))
            layers.append(nn.Sequential(*(ConvNeXtV2Block(dim) for _ in range(depth))))
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.LayerNorm(dims[-1], eps=1e-6),
                                  nn.Linear(dims[-1], num_classes))


MODELS = {"simple-cnn": SimpleCNN, "resnet18": ResNet18, "convnext-v2-tiny": ConvNeXtV2Tiny}


def build_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """A model of MODELS by name."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {tuple(MODELS)}, got {name!r}")
    return MODELS[name](num_classes=num_classes, **kwargs)
