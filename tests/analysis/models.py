"""Small real models built from sepconv layers, for profiling tests and ``sepconv profile``.

``mobilenet_stack`` is a MobileNet-v1-style network: a dense stem, then depthwise-separable
blocks (depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6), global pooling and a
classifier. ``dense_stack`` is the same network with dense 3x3 convs in place of the
separable blocks, for ``sepconv compare``.
"""

from __future__ import annotations

from torch import nn

import sepconv

# (in_channels, out_channels, stride) of each separable block.
BLOCKS = ((16, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2))


def _stem(width: int) -> list[nn.Module]:
    """The stride-2 conv-BN-ReLU6 stem both stacks share."""
    return [
        nn.Conv2d(3, 16 * width, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16 * width),
        nn.ReLU6(inplace=True),
    ]


def mobilenet_stack(num_classes: int = 10, width: int = 1) -> nn.Sequential:
    """MobileNet-style stack for ``(N, 3, H, W)`` inputs (H, W >= 8)."""
    layers = _stem(width)
    for c, o, s in BLOCKS:
        layers.append(
            sepconv.SeparableConv2d(
                c * width,
                o * width,
                3,
                stride=s,
                padding=1,
                bias=False,
                mid_norm_layer="batchnorm",
                mid_act_layer="relu6",
                norm_layer="batchnorm",
                act_layer="relu6",
            )
        )
    # An Xception-style block: nothing between the stages, so it runs fused.
    layers.append(sepconv.SeparableConv2d(128 * width, 128 * width, 3, padding=1, act_layer="relu"))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128 * width, num_classes)]
    return nn.Sequential(*layers).eval()


def dense_stack(num_classes: int = 10, width: int = 1) -> nn.Sequential:
    """``mobilenet_stack`` with each separable block replaced by a dense 3x3 conv."""
    layers = _stem(width)
    for c, o, s in BLOCKS:
        layers.append(
            nn.Sequential(
                nn.Conv2d(c * width, o * width, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(o * width),
                nn.ReLU6(),
            )
        )
    layers.append(nn.Sequential(nn.Conv2d(128 * width, 128 * width, 3, padding=1), nn.ReLU()))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128 * width, num_classes)]
    return nn.Sequential(*layers).eval()
