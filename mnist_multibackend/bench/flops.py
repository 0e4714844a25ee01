"""The model's arithmetic cost per image, counted from its layer shapes.

Only the multiply-adds of the convolutions and dense layers are counted, two
FLOPs each; bias adds, batch norm, ReLU, pooling and softmax add about 1 % more
and are left out, as is usual. Training is counted as three forward passes: the
backward pass computes an input gradient and a weight gradient, each costing
about one forward pass.
"""

from __future__ import annotations

TRAIN_FACTOR = 3


def layer_flops(model) -> dict[str, int]:
    """Forward FLOPs per image of each ``Conv2D`` and ``Dense`` layer, by layer name.

    Convolutions: ``2 * out_h * out_w * k_h * k_w * c_in * c_out`` (channels last);
    dense layers: ``2 * fan_in * fan_out``.
    """
    from keras import layers

    counts = {}
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            k_h, k_w, c_in, c_out = layer.kernel.shape
            _, out_h, out_w, _ = layer.output.shape
            counts[layer.name] = 2 * out_h * out_w * k_h * k_w * c_in * c_out
        elif isinstance(layer, layers.Dense):
            fan_in, fan_out = layer.kernel.shape
            counts[layer.name] = 2 * fan_in * fan_out
    return counts


def flops_per_image(model) -> dict:
    """``{"forward": F, "train": 3 F, "layers": {...}}``, FLOPs per image."""
    per_layer = layer_flops(model)
    forward = sum(per_layer.values())
    return {"forward": forward, "train": TRAIN_FACTOR * forward, "layers": per_layer}
