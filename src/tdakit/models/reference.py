"""Small reference models for demos, tests and benchmarks.

Contract relied on elsewhere in tdakit: every model here has ``head``, its final
``nn.Linear``; ``features(x)`` returns the penultimate representation ``[B, h]``
(the input to ``head``); and ``forward(x) == head(features(x))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from tdakit.errors import ConfigError, require

__all__ = ["MLP", "MODELS", "LeNet", "LinearModel", "ResNet9", "build_model"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
}


def _positive(value: object, name: str) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    require(ok, f"{name} must be a positive integer, got {value!r}.")
    return int(value)  # type: ignore[arg-type]


class _Reference(nn.Module):
    """Shared ``forward = head(features(x))``; subclasses define ``features`` and ``head``."""

    head: nn.Linear

    def features(self, x: Tensor) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _flatten(x: Tensor, in_features: int, model: str) -> Tensor:
    require(
        x.dim() >= 2,
        f"{model} expects a batch [B, ...] with a leading batch dimension, got shape "
        f"{tuple(x.shape)}; use x.unsqueeze(0) for a single example.",
    )
    flat = x.flatten(1)
    require(
        flat.shape[1] == in_features,
        f"{model} expects {in_features} input features per example, got input of shape "
        f"{tuple(x.shape)} ({flat.shape[1]} per example). Pass a batch [B, ...] matching "
        "the in_features/in_shape the model was built with.",
    )
    return flat


class LinearModel(_Reference):
    """Logistic/linear regression: ``features`` flattens the input, ``head`` is the linear map."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.in_features = _positive(in_features, "in_features")
        self.head = nn.Linear(self.in_features, _positive(num_classes, "num_classes"))

    def features(self, x: Tensor) -> Tensor:
        return _flatten(x, self.in_features, "LinearModel")


class MLP(_Reference):
    """Multi-layer perceptron; flattens its input, so it accepts images ``[B, C, H, W]``."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (64,),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.in_features = _positive(in_features, "in_features")
        num_classes = _positive(num_classes, "num_classes")
        require(
            activation in _ACTIVATIONS,
            f"Unknown activation {activation!r}; choose one of {', '.join(_ACTIVATIONS)}.",
        )
        require(
            not isinstance(hidden, (str, bytes)) and isinstance(hidden, Sequence),
            f"hidden must be a sequence of widths such as (64,) or (128, 64), got {hidden!r}.",
        )
        widths = [_positive(h, "each hidden width") for h in hidden]
        layers: list[nn.Module] = []
        prev = self.in_features
        for width in widths:
            layers += [nn.Linear(prev, width), _ACTIVATIONS[activation]()]
            prev = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(prev, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(_flatten(x, self.in_features, "MLP"))


class LeNet(_Reference):
    """LeNet-5 style: conv(6)-pool-conv(16)-pool-fc(120)-fc(84)-head, ReLU activations.

    Both 5x5 convolutions use padding 2, so any square ``image_size >= 4`` works
    (8 for digits, 28 for (Fashion-)MNIST).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> None:
        super().__init__()
        in_channels = _positive(in_channels, "in_channels")
        num_classes = _positive(num_classes, "num_classes")
        self.image_size = _positive(image_size, "image_size")
        require(image_size >= 4, f"LeNet needs image_size >= 4 (two poolings), got {image_size}.")
        self.in_channels = in_channels
        side = image_size // 2 // 2
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * side * side, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.head = nn.Linear(84, num_classes)

    def features(self, x: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        require(
            x.dim() == 4 and tuple(x.shape[1:]) == expected,
            f"LeNet expects images [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}.",
        )
        return self.fc(self.conv(x))


def _conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class ResNet9(_Reference):
    """Small ResNet-9 (Myrtle-style): widths ``w, 2w, 4w, 8w``, two residual blocks.

    Uses BatchNorm: call ``model.eval()`` before attribution. Any image size works
    (poolings use ``ceil_mode`` and the last pooling is global).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        in_channels = _positive(in_channels, "in_channels")
        num_classes = _positive(num_classes, "num_classes")
        w = _positive(width, "width")
        self.in_channels = in_channels
        self.body = nn.Sequential(
            _conv_bn(in_channels, w),
            _conv_bn(w, 2 * w, pool=True),
            _Residual(2 * w),
            _conv_bn(2 * w, 4 * w, pool=True),
            _conv_bn(4 * w, 8 * w, pool=True),
            _Residual(8 * w),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * w, num_classes)

    def features(self, x: Tensor) -> Tensor:
        require(
            x.dim() == 4 and x.shape[1] == self.in_channels,
            f"ResNet9 expects images [B, {self.in_channels}, H, W], got {tuple(x.shape)}.",
        )
        return self.body(x)


def _image_shape(in_shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    require(
        len(in_shape) == 3,
        f"{name} needs in_shape=(channels, height, width) for images, got {in_shape}.",
    )
    c, h, w = in_shape
    return c, h, w


def _make_lenet(in_shape: tuple[int, ...], num_classes: int, **kw: object) -> nn.Module:
    c, h, w = _image_shape(in_shape, "lenet")
    require(h == w, f"lenet needs square images, got in_shape={in_shape}.")
    return LeNet(c, num_classes, image_size=h, **kw)  # type: ignore[arg-type]


def _make_resnet9(in_shape: tuple[int, ...], num_classes: int, **kw: object) -> nn.Module:
    c, _, _ = _image_shape(in_shape, "resnet9")
    return ResNet9(c, num_classes, **kw)  # type: ignore[arg-type]


def _make_mlp(in_shape: tuple[int, ...], num_classes: int, **kw: object) -> nn.Module:
    return MLP(math.prod(in_shape), num_classes, **kw)  # type: ignore[arg-type]


def _make_linear(in_shape: tuple[int, ...], num_classes: int, **kw: object) -> nn.Module:
    return LinearModel(math.prod(in_shape), num_classes, **kw)  # type: ignore[arg-type]


class TinyBert(nn.Module):
    """A Hugging Face BERT classifier built from a config (no download) on token ids
    ``[B, T]``, 0 = padding (masked out); returns the logits. Needs ``transformers``."""

    def __init__(
        self,
        seq_len: int,
        num_classes: int,
        vocab: int = 64,
        hidden: int = 16,
        layers: int = 1,
        heads: int = 2,
    ) -> None:
        super().__init__()
        try:
            from transformers import BertConfig, BertForSequenceClassification
        except ImportError as err:
            raise ConfigError(
                "The tiny_bert model needs transformers: pip install transformers (no weights "
                "are downloaded: the model is built from a config)."
            ) from err
        config = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=2 * hidden,
            max_position_embeddings=seq_len,
            num_labels=num_classes,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.bert = BertForSequenceClassification(config)

    def forward(self, ids: Tensor) -> Tensor:
        ids = ids.long()
        return self.bert(input_ids=ids, attention_mask=(ids != 0).long()).logits


def _make_tiny_bert(in_shape: tuple[int, ...], num_classes: int, **kw: object) -> nn.Module:
    require(len(in_shape) == 1, f"tiny_bert needs in_shape=(seq_len,), got {in_shape}.")
    return TinyBert(in_shape[0], num_classes, **kw)  # type: ignore[arg-type]


MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear": _make_linear,
    "mlp": _make_mlp,
    "lenet": _make_lenet,
    "resnet9": _make_resnet9,
    "tiny_bert": _make_tiny_bert,
}
_OPTIONS = {
    "linear": "none",
    "mlp": "hidden, activation",
    "lenet": "none",
    "resnet9": "width",
    "tiny_bert": "vocab, hidden, layers, heads",
}


def build_model(
    name: str, in_shape: Sequence[int], num_classes: int, seed: int = 0, **kw: object
) -> nn.Module:
    """Build reference model ``name`` for inputs of shape ``in_shape`` (no batch dimension).

    Parameters are initialised on the CPU from ``seed`` inside a forked RNG, so the
    global torch RNG is untouched and the same seed always gives identical parameters;
    move the model with ``.to(device)`` afterwards.
    ``kw`` goes to the model class (``hidden``/``activation`` for mlp, ``width`` for resnet9).
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ConfigError(f"Unknown model {name!r}; choose one of {', '.join(MODELS)}.")
    shape = tuple(in_shape)
    require(
        len(shape) >= 1 and all(isinstance(s, int) and s >= 1 for s in shape),
        f"in_shape must be a non-empty tuple of positive ints without the batch dimension, "
        f"e.g. (1, 8, 8) or (30,); got {in_shape!r}.",
    )
    require(
        isinstance(seed, int) and not isinstance(seed, bool),
        f"seed must be an integer, got {seed!r}.",
    )
    # Build on the CPU with a forked, seeded CPU generator: the global RNG state (CPU and
    # CUDA) is left untouched and the result does not depend on the default device.
    with torch.random.fork_rng(devices=[]), torch.device("cpu"):
        torch.random.default_generator.manual_seed(seed)
        try:
            return MODELS[key](shape, num_classes, **kw)
        except TypeError as exc:
            raise ConfigError(
                f"Bad options for model {key!r}: {exc}. Valid extra options: {_OPTIONS[key]}."
            ) from exc
