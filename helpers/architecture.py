"""Layer statistics of a Keras model, computed from its layers (notebook 02).

``layer_table(model)`` walks the model and gives, per layer: output shape, parameters,
multiply-accumulates (MACs) per image, receptive field and stride (the "jump" between two
neighbouring output positions, in input pixels) and activation memory per image. Nothing is
typed in by hand, so the same code describes the real VGG-Face (224 px, 145 M parameters)
and the miniature one of quick mode.

The two figures that tell the story, ``group_shares`` and ``plot_layer_table``, contrast where
the parameters live (the fully connected layers) with where the compute is (the convolutions).
``filter_grid`` and ``feature_map_grid`` turn first-layer kernels and feature maps into images;
``channel_maxima`` and ``top_activating`` find the faces that excite a channel most.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

# Layers that change nothing about positions: they keep the receptive field and the stride.
_SHAPE_KEEPING = (
    "InputLayer", "Activation", "ReLU", "Dropout", "BatchNormalization", "LayerNormalization",
    "Rescaling", "Normalization", "VGGFacePreprocess", "Softmax", "NamedSoftmax",
)
_POOLING = ("MaxPooling2D", "AveragePooling2D")
_GLOBAL_POOLING = ("GlobalAveragePooling2D", "GlobalMaxPooling2D")

COLUMNS = [
    "layer", "type", "output_shape", "params", "macs", "receptive_field", "stride",
    "activation_bytes", "params_share", "macs_share",
]


@dataclass(frozen=True)
class _Geometry:
    """Receptive field size and jump of one tensor along (height, width); jump None once non-spatial."""

    rf: tuple[int, int]
    jump: tuple[int, int] | None


def layer_table(model, *, include_input: bool = False) -> pd.DataFrame:
    """One row per layer of ``model`` (a functional chain such as VGG) plus nothing typed.

    Columns: ``layer``, ``type``, ``output_shape`` (without the batch axis), ``params``,
    ``macs`` (multiply-accumulates for one image), ``receptive_field`` and ``stride`` (input
    pixels along the height axis; for non-spatial layers the receptive field is the whole input
    and the stride is missing), ``activation_bytes`` (output of one image), ``params_share`` and
    ``macs_share`` (fractions of the totals). ``table.attrs["totals"]`` holds the totals;
    non-square geometry adds ``receptive_field_w`` and ``stride_w``.
    Raises ``ValueError`` naming the layer for a layer that changes spatial geometry in a way
    this module does not know (so the receptive fields are never silently wrong).
    """
    input_shape = _shape(model.inputs[0])
    if len(input_shape) != 3:
        raise ValueError(
            f"layer_table expects an image model with input (H, W, C); model {model.name!r} "
            f"has input shape {input_shape}"
        )
    image_hw = (input_shape[0], input_shape[1])
    geometry: dict[int, _Geometry] = {}  # id(tensor) -> geometry of that tensor
    rows = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            out = layer.output
            geometry[id(out)] = _Geometry((1, 1), (1, 1))
            if include_input:
                rows.append(_row(layer, kind, out, 0, 0, geometry[id(out)]))
            continue
        inputs = _as_list(layer.input)
        g_in = geometry.get(id(inputs[0]))
        if g_in is None:
            raise ValueError(
                f"layer {layer.name!r} ({kind}): its input does not come from a layer seen "
                "before it; layer_table expects the layers in graph order"
            )
        out = layer.output
        if isinstance(out, (list, tuple)):
            raise ValueError(f"layer {layer.name!r} ({kind}) has several outputs; not supported")
        in_shape, out_shape = _shape(inputs[0]), _shape(out)
        g_out = _propagate(layer, kind, g_in, in_shape, out_shape)
        geometry[id(out)] = g_out
        rows.append(_row(layer, kind, out, layer.count_params(), _macs(layer, kind, in_shape, out_shape), g_out))

    table = pd.DataFrame(rows)
    for col in ("receptive_field", "stride", "receptive_field_w", "stride_w"):
        table[col] = table[col].astype("Int64")
    if (table["receptive_field"].fillna(-1) == table["receptive_field_w"].fillna(-1)).all() and (
        table["stride"].fillna(-1) == table["stride_w"].fillna(-1)
    ).all():
        table = table.drop(columns=["receptive_field_w", "stride_w"])
    total_params = int(table["params"].sum())
    total_macs = int(table["macs"].sum())
    table["params_share"] = table["params"] / total_params if total_params else 0.0
    table["macs_share"] = table["macs"] / total_macs if total_macs else 0.0
    table.attrs["totals"] = {
        "params": total_params,
        "macs": total_macs,
        "activation_bytes": int(table["activation_bytes"].sum()),
        "input_hw": image_hw,
    }
    return table


def totals(table: pd.DataFrame) -> dict:
    """The totals of a ``layer_table``: params, MACs and activation bytes per image."""
    return dict(table.attrs["totals"])


def group_shares(table: pd.DataFrame, groups: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Parameters and MACs summed per group of layers, with their shares of the totals.

    ``groups`` maps a group name to layer names (e.g. ``helpers.vggface.layer_blocks(model)``);
    by default convolutions (``conv*``) against fully connected layers (``fc*``).
    """
    if groups is None:
        names = table["layer"]
        groups = {
            "convolutions": [n for n in names if n.startswith("conv")],
            "fully connected (fc6-fc8)": [n for n in names if n.startswith("fc")],
        }
    unknown = sorted({n for members in groups.values() for n in members} - set(table["layer"]))
    if unknown:
        raise ValueError(f"group_shares: layers not in the table: {', '.join(unknown)}")
    t = totals(table)
    rows = []
    for name, members in groups.items():
        part = table[table["layer"].isin(members)]
        params, macs = int(part["params"].sum()), int(part["macs"].sum())
        rows.append({
            "group": name, "layers": len(part), "params": params, "macs": macs,
            "params_share": params / t["params"] if t["params"] else 0.0,
            "macs_share": macs / t["macs"] if t["macs"] else 0.0,
        })
    return pd.DataFrame(rows)


def style_layer_table(table: pd.DataFrame):
    """A pandas Styler for notebooks: thousands separators, MB, bars on the shares."""
    shown = table.copy()
    shown["activation_MB"] = shown.pop("activation_bytes") / 2**20
    shown["output_shape"] = shown["output_shape"].map(lambda s: " × ".join(str(d) for d in s))
    fmt = {"params": "{:,}", "macs": "{:,}", "activation_MB": "{:.3f}",
           "params_share": "{:.1%}", "macs_share": "{:.1%}"}
    return (
        shown.style.format(fmt, na_rep="")
        .bar(subset=["params_share"], color="#d65f5f", vmin=0, vmax=1)
        .bar(subset=["macs_share"], color="#5fba7d", vmin=0, vmax=1)
        .hide(axis="index")
    )


def plot_layer_table(table: pd.DataFrame, axes=None):
    """Bar chart: share of parameters and share of MACs per layer (layers with either)."""
    import matplotlib.pyplot as plt

    shown = table[(table["params"] > 0) | (table["macs"] > 0)]
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    y = np.arange(len(shown))
    for ax, col, title, color in (
        (axes[0], "params_share", "share of parameters", "#d65f5f"),
        (axes[1], "macs_share", "share of multiply-accumulates per image", "#5fba7d"),
    ):
        ax.barh(y, shown[col] * 100, color=color)
        ax.set_title(title)
        ax.set_xlabel("%")
        ax.set_yticks(y, shown["layer"])
    if not axes[0].yaxis_inverted():
        axes[0].invert_yaxis()  # first layer on top; sharey carries it to the other axes
    t = totals(table)
    axes[0].figure.suptitle(
        f"{t['params']:,} parameters, {t['macs'] / 1e6:,.1f} M MACs per image "
        f"({t['input_hw'][0]}×{t['input_hw'][1]} input)"
    )
    axes[0].figure.tight_layout()
    return axes


def filter_grid(kernel: np.ndarray, *, pad: int = 1, columns: int | None = None,
                bgr_to_rgb: bool = True) -> np.ndarray:
    """First-layer kernels (kh, kw, 3, n) as one RGB image grid in [0, 1].

    Each filter is scaled on its own (min to max) so that weak filters stay visible.
    ``bgr_to_rgb`` swaps the input channels because Caffe's (and VGG-Face's) first layer reads
    BGR: shown as RGB, a filter that responds to red looks red.
    """
    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 4 or kernel.shape[2] != 3:
        raise ValueError(f"filter_grid expects a kernel (kh, kw, 3, n), got shape {kernel.shape}")
    tiles = np.moveaxis(kernel, -1, 0)  # (n, kh, kw, 3)
    if bgr_to_rgb:
        tiles = tiles[..., ::-1]
    lo = tiles.min(axis=(1, 2, 3), keepdims=True)
    hi = tiles.max(axis=(1, 2, 3), keepdims=True)
    tiles = (tiles - lo) / np.maximum(hi - lo, 1e-12)
    return _tile(tiles, pad=pad, columns=columns, fill=1.0)


def feature_map_grid(maps: np.ndarray, *, max_maps: int = 64, pad: int = 1,
                     columns: int | None = None) -> np.ndarray:
    """Feature maps of ONE image (H, W, C) as a grey grid (each map scaled to [0, 1]).

    Shows the ``max_maps`` most active channels (largest mean), strongest first. Padding and
    empty cells are NaN, which ``imshow`` leaves blank whatever the colour map.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.ndim != 3:
        raise ValueError(f"feature_map_grid expects maps of one image (H, W, C), got shape {maps.shape}")
    order = np.argsort(-maps.mean(axis=(0, 1)), kind="stable")[:max_maps]
    tiles = np.moveaxis(maps[:, :, order], -1, 0)  # (n, H, W)
    hi = tiles.max(axis=(1, 2), keepdims=True)
    lo = tiles.min(axis=(1, 2), keepdims=True)
    tiles = (tiles - lo) / np.maximum(hi - lo, 1e-12)
    return _tile(tiles[..., None], pad=pad, columns=columns, fill=np.nan)[..., 0]


def channel_maxima(model, layers, images, batch_size: int = 32) -> dict[str, np.ndarray]:
    """For each layer in ``layers``, each image's strongest response per channel: (N, C).

    The maps are reduced inside the model (a global max pooling per layer), so many faces at
    full size cost (N, C) numbers per layer, not (N, H, W, C).
    """
    import keras

    layers = list(layers)
    outputs = []
    for name in layers:
        out = model.get_layer(name).output
        if len(out.shape) == 4:
            out = keras.layers.GlobalMaxPooling2D(name=f"{name}_max")(out)
        elif len(out.shape) != 2:
            raise ValueError(f"layer {name!r} has output shape {tuple(out.shape)}; expected (H, W, C) maps or (C,) units")
        outputs.append(out)
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # a tensor in, not a list of one
    reducer = keras.Model(inputs, outputs, name="channel_maxima")
    images = np.asarray(images, dtype=np.float32)
    parts: list[list[np.ndarray]] = [[] for _ in layers]
    for start in range(0, len(images), int(batch_size)):
        got = reducer(images[start:start + int(batch_size)], training=False)
        got = got if isinstance(got, (list, tuple)) else [got]
        for part, g in zip(parts, got):
            part.append(keras.ops.convert_to_numpy(g))
    return {name: np.concatenate(part) if part else np.zeros((0, 0), np.float32) for name, part in zip(layers, parts)}


def top_activating(maxima: np.ndarray, *, n_channels: int = 6, k: int = 6, channels=None) -> pd.DataFrame:
    """The images that excite each channel most: one row per (channel, rank).

    ``maxima`` is (N, C) (``channel_maxima``). Channels are ``channels`` or the ``n_channels``
    most selective ones: the largest spread (standard deviation) of their maxima across images,
    a channel that fires for some faces and not others (a channel that is always on, or never,
    says nothing about what it looks for). Columns: ``channel``, ``rank`` (0 = strongest),
    ``image`` (row index into the images), ``activation``, ``selectivity``.
    """
    m = np.asarray(maxima, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"maxima must be (N images, C channels), got shape {m.shape}")
    spread = m.std(axis=0)
    if channels is None:
        channels = np.argsort(-spread, kind="stable")[: int(n_channels)]
    rows = []
    for c in channels:
        c = int(c)
        if not 0 <= c < m.shape[1]:
            raise ValueError(f"channel {c} out of range 0..{m.shape[1] - 1}")
        order = np.argsort(-m[:, c], kind="stable")[: int(k)]
        rows += [{"channel": c, "rank": r, "image": int(i), "activation": float(m[i, c]), "selectivity": float(spread[c])}
                 for r, i in enumerate(order)]
    return pd.DataFrame(rows, columns=["channel", "rank", "image", "activation", "selectivity"])


# --- internals -------------------------------------------------------------------------------

def _propagate(layer, kind, g_in: _Geometry, in_shape, out_shape) -> _Geometry:
    if kind in ("Conv2D", "DepthwiseConv2D", *_POOLING):
        if g_in.jump is None:
            raise ValueError(f"layer {layer.name!r} ({kind}) follows a non-spatial layer")
        if kind in _POOLING:
            kernel, strides, dilation = layer.pool_size, layer.strides, (1, 1)
        else:
            kernel, strides, dilation = layer.kernel_size, layer.strides, layer.dilation_rate
        rf = tuple(r + (d * (k - 1)) * j for r, k, d, j in zip(g_in.rf, kernel, dilation, g_in.jump))
        jump = tuple(j * s for j, s in zip(g_in.jump, strides))
        return _Geometry(rf, jump)
    if kind == "Flatten" or kind in _GLOBAL_POOLING:
        if g_in.jump is None:
            return g_in
        # Reading the whole (H, W) map at once is a kernel the size of the map.
        rf = tuple(r + (size - 1) * j for r, size, j in zip(g_in.rf, in_shape[:2], g_in.jump))
        return _Geometry(rf, None)
    if kind == "Dense" or kind in ("ZeroPadding2D", "Cropping2D") or kind in _SHAPE_KEEPING:
        return g_in  # Dense on a map is a 1×1 convolution; after Flatten it sees what Flatten saw
    if in_shape == out_shape:
        return g_in  # an element-wise layer we do not know by name keeps the geometry
    raise ValueError(
        f"layer {layer.name!r} ({kind}) changes the shape {in_shape} -> {out_shape}; "
        "layer_table knows Conv2D, DepthwiseConv2D, MaxPooling2D, AveragePooling2D, global "
        "pooling, ZeroPadding2D, Cropping2D, Flatten, Dense and shape-keeping layers"
    )


def _macs(layer, kind, in_shape, out_shape) -> int:
    if kind == "Conv2D":
        kh, kw = layer.kernel_size
        groups = getattr(layer, "groups", 1) or 1
        return math.prod(out_shape) * kh * kw * (in_shape[-1] // groups)
    if kind == "DepthwiseConv2D":
        kh, kw = layer.kernel_size
        return math.prod(out_shape) * kh * kw
    if kind == "Dense":
        # Dense on an N-D input applies to the last axis at every leading position.
        return math.prod(out_shape[:-1]) * in_shape[-1] * out_shape[-1]
    if kind == "BatchNormalization":
        return math.prod(out_shape)  # one multiply-add per element at inference
    if layer.count_params() and kind not in _SHAPE_KEEPING:
        raise ValueError(
            f"layer {layer.name!r} ({kind}) has {layer.count_params():,} parameters but "
            "layer_table does not know how to count its multiply-accumulates"
        )
    return 0  # pooling, activations, reshapes: comparisons and copies, not MACs


def _row(layer, kind, out, params, macs, g: _Geometry) -> dict:
    shape = _shape(out)
    itemsize = np.dtype(getattr(out, "dtype", None) or "float32").itemsize
    rf, jump = g.rf, g.jump or (None, None)  # non-spatial units have no stride
    return {
        "layer": layer.name, "type": kind, "output_shape": shape, "params": int(params),
        "macs": int(macs), "receptive_field": rf[0], "stride": jump[0],
        "activation_bytes": int(math.prod(shape) * itemsize),
        "receptive_field_w": rf[1], "stride_w": jump[1],
    }


def _shape(tensor) -> tuple[int, ...]:
    shape = tuple(tensor.shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"layer_table needs a fixed input size; tensor {getattr(tensor, 'name', tensor)} "
            f"has shape {tuple(tensor.shape)}"
        )
    return tuple(int(d) for d in shape)


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _tile(tiles: np.ndarray, *, pad: int, columns: int | None, fill: float) -> np.ndarray:
    n, h, w, c = tiles.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad, c), fill, dtype=np.float32)
    for i in range(n):
        r, q = divmod(i, columns)
        grid[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = tiles[i]
    return grid
