"""Encoders and decoders as Flax (linen) modules.

Three architectures, chosen by name (``arch``):

- ``mlp``: dense 512-256 encoder and 256-512 decoder with ReLU (the 784-512-256-16 network of
  the throughput benchmark).
- ``conv-small``: two stride-2 convolutions (32, 64) and a mirrored decoder; sized for a CPU.
- ``conv-paper``: the architecture of Ghosh et al. (2020), Appendix (after Tolstikhin et al.
  2018): four 4x4 stride-2 convolutions with 128-256-512-1024 filters, batch norm and ReLU, then
  a dense layer to the code; the decoder is a dense layer to 8x8x1024 followed by stride-2
  transposed convolutions (512, 256, ... halving) with batch norm and ReLU up to the padded image
  size, and a final stride-1 transposed convolution to the channels. Images whose side is not
  8*2^k (28x28 MNIST) are decoded at the next such size (32x32) and centre-cropped, as the paper
  pads MNIST to 32x32.

Your own modules: ``Arch(encoder=..., decoder=...)`` in place of a name (see :class:`Arch`).

Two switches change the built-in networks for controls of the spectral-norm results: spectral
normalization of every encoder layer (``Encoder.spectral_norm``; the official RAE configuration's
``spec_norm_on_dec_only: False`` normalizes encoder and decoder) and batch norm after every hidden
decoder layer (``Decoder.batch_norm``; ``None`` keeps the architecture's own: conv-paper has it,
mlp and conv-small do not).

The decoder ends in a sigmoid (images in [0, 1], the mean of a Gaussian decoder) or, with
``sigmoid_output=False``, returns the raw logits of a Bernoulli decoder. Batch-norm statistics and spectral-norm
power-iteration vectors live in the ``batch_stats`` collection, so a model's whole state is the
pytree ``{"params": ..., "batch_stats": ...}`` and training stays a pure function of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax

from jaxrae.errors import ConfigError, invalid, require

ARCHS = ("mlp", "conv-small", "conv-paper")


def _check_arch(arch: str) -> None:
    require(arch in ARCHS, "arch", arch, f"choose one of {', '.join(ARCHS)}")


def _maybe_spectral(layer: nn.Module, spectral_norm: bool, train: bool):
    """Wrap ``layer`` in spectral normalization (Miyato et al. 2018) when asked.

    The power-iteration vector is updated only while training, so evaluation is deterministic.
    """
    if not spectral_norm:
        return layer
    wrapped = nn.SpectralNorm(layer)
    return lambda x: wrapped(x, update_stats=train)


class Encoder(nn.Module):
    """x (B, H, W, C) in [0, 1] -> features (B, out_dim), linear output.

    ``spectral_norm``: every layer, the output layer included, is spectrally normalized
    (W / sigma_max(W), Miyato et al. 2018), as the official RAE-SN with ``spec_norm_on_dec_only: False``.
    """

    arch: str
    out_dim: int
    spectral_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        _check_arch(self.arch)
        sn = lambda layer: _maybe_spectral(layer, self.spectral_norm, train)
        if self.arch == "mlp":
            h = x.reshape((x.shape[0], -1))
            for width in (512, 256):
                h = nn.relu(sn(nn.Dense(width))(h))
            return sn(nn.Dense(self.out_dim))(h)
        if self.arch == "conv-small":
            h = x
            for filters in (32, 64):
                h = nn.relu(sn(nn.Conv(filters, (4, 4), strides=(2, 2), padding="SAME"))(h))
            h = h.reshape((h.shape[0], -1))
            return sn(nn.Dense(self.out_dim))(h)
        h = x  # conv-paper
        for filters in (128, 256, 512, 1024):
            h = sn(nn.Conv(filters, (4, 4), strides=(2, 2), padding="SAME", use_bias=False))(h)
            h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
        h = h.reshape((h.shape[0], -1))
        return sn(nn.Dense(self.out_dim))(h)


def _paper_upsampling_steps(side: int) -> int:
    """Number of stride-2 transposed convolutions from 8x8 to the smallest 8*2^k >= side."""
    return max(0, math.ceil(math.log2(max(side, 8) / 8)))


def has_decoder_batch_norm(arch: str) -> bool:
    """Whether the built-in decoder ``arch`` has batch norm after its hidden layers by default."""
    return arch == "conv-paper"


class Decoder(nn.Module):
    """code (B, D) -> image (B, H, W, C) in [0, 1], or its logits when ``sigmoid_output`` is False.

    ``batch_norm``: batch norm (Ioffe & Szegedy 2015; running averages at evaluation) after every
    hidden layer, before its ReLU; None: the architecture's own (:func:`has_decoder_batch_norm`).
    """

    arch: str
    image_shape: Sequence[int]
    spectral_norm: bool = False
    sigmoid_output: bool = True
    batch_norm: bool | None = None

    @nn.compact
    def __call__(self, z, train: bool):
        _check_arch(self.arch)
        height, width, channels = self.image_shape
        sn = lambda layer: _maybe_spectral(layer, self.spectral_norm, train)
        use_bn = has_decoder_batch_norm(self.arch) if self.batch_norm is None else self.batch_norm
        bn = (lambda h: nn.BatchNorm(use_running_average=not train)(h)) if use_bn else (lambda h: h)
        out_fn = nn.sigmoid if self.sigmoid_output else (lambda logits: logits)
        if self.arch == "mlp":
            h = z
            for w in (256, 512):
                h = nn.relu(bn(sn(nn.Dense(w))(h)))
            out = sn(nn.Dense(height * width * channels))(h)
            return out_fn(out.reshape((z.shape[0], height, width, channels)))
        if self.arch == "conv-small":
            h0, w0 = math.ceil(height / 4), math.ceil(width / 4)
            h = nn.relu(bn(sn(nn.Dense(h0 * w0 * 64))(z))).reshape((z.shape[0], h0, w0, 64))
            h = nn.relu(bn(sn(nn.ConvTranspose(32, (4, 4), strides=(2, 2), padding="SAME"))(h)))
            out = sn(nn.ConvTranspose(channels, (4, 4), strides=(2, 2), padding="SAME"))(h)
            return out_fn(out[:, :height, :width, :])
        steps = _paper_upsampling_steps(max(height, width))  # conv-paper
        h = sn(nn.Dense(8 * 8 * 1024))(z).reshape((z.shape[0], 8, 8, 1024))
        h = nn.relu(bn(h))
        for i in range(steps):
            # batch norm subtracts the batch mean, which would cancel a bias (the paper's layers have none)
            h = sn(nn.ConvTranspose(512 >> i, (4, 4), strides=(2, 2), padding="SAME", use_bias=not use_bn))(h)
            h = nn.relu(bn(h))
        out = sn(nn.ConvTranspose(channels, (4, 4), strides=(1, 1), padding="SAME"))(h)
        side = 8 << steps
        top, left = (side - height) // 2, (side - width) // 2
        return out_fn(out[:, top : top + height, left : left + width, :])


@dataclasses.dataclass(frozen=True)
class Arch:
    """Your own Flax (linen) modules as encoder and decoder: ``TrainConfig(arch=Arch(encoder, decoder))``.

    Contracts (both modules are called with the ``train`` flag, True in training steps, so batch
    norm or dropout can tell training from evaluation):

    - ``encoder(x, train)``: images x of shape (B, H, W, C), float in [0, 1] -> features of shape
      (B, F), any width F. jaxrae appends a linear layer (``head``) from F to the width the
      method's code path needs (d, 2d for a Gaussian, N*K logits), so the same encoder serves
      every method.
    - ``decoder(z, train)``: codes z of shape (B, D) (D set by the code path: d, or N*K one-hot)
      -> outputs of shape (B, H, W, C), unbounded; jaxrae applies the sigmoid that maps them to
      images in [0, 1] (so the decoder ends in a linear layer, as the built-in ones do).

    Modules are frozen dataclasses compared and hashed by their fields, so two equal ``Arch``
    give equal configs and share compiled programs. A decoder regularizer that rewrites layers
    (spectral norm) cannot reach inside your decoder and is a ConfigError. ``name`` labels the
    architecture in results and logs.
    """

    encoder: nn.Module
    decoder: nn.Module
    name: str = "custom"

    def __post_init__(self):
        for field in ("encoder", "decoder"):
            module = getattr(self, field)
            require(
                isinstance(module, nn.Module),
                f"arch.{field}",
                type(module).__name__,
                "must be a flax.linen.Module instance",
            )
            try:
                hash(module)
            except TypeError:
                raise invalid(
                    f"arch.{field}",
                    type(module).__name__,
                    "its fields must be hashable (tuples, not lists or arrays), so configs can key compiled programs",
                ) from None

    def to_dict(self) -> dict:
        """What JSON can hold of it: the name and each module's repr (its class and fields)."""
        return {"name": self.name, "encoder": repr(self.encoder), "decoder": repr(self.decoder)}


class _UserEncoder(nn.Module):
    """A user encoder followed by a linear head to the code path's width."""

    body: nn.Module
    out_dim: int

    @nn.compact
    def __call__(self, x, train: bool):
        h = self.body(x, train)
        require(
            h.ndim == 2 and h.shape[0] == x.shape[0],
            "arch.encoder output shape",
            tuple(h.shape),
            f"the encoder must map images {tuple(x.shape)} to features (B={x.shape[0]}, F)",
            ConfigError,
        )
        return nn.Dense(self.out_dim, name="head")(h)


class _UserDecoder(nn.Module):
    """A user decoder whose (B, H, W, C) output goes through a sigmoid, or is returned as the
    logits of a Bernoulli decoder (``sigmoid_output=False``), as the built-in decoders do."""

    body: nn.Module
    image_shape: Sequence[int]
    sigmoid_output: bool = True

    @nn.compact
    def __call__(self, z, train: bool):
        out = self.body(z, train)
        expected = (z.shape[0], *self.image_shape)
        require(
            tuple(out.shape) == expected,
            "arch.decoder output shape",
            tuple(out.shape),
            f"the decoder must map codes {tuple(z.shape)} to {expected}",
            ConfigError,
        )
        return nn.sigmoid(out) if self.sigmoid_output else out


class AutoEncoder(nn.Module):
    """Encoder and decoder under one variable tree: ``params/encoder``, ``params/decoder``.

    ``encoder_out`` is the width of the encoder's output (d for a deterministic code, 2d for a
    Gaussian, N*K logits for categorical codes). Extra code-path parameters (a VQ codebook) are
    declared by the method layer through ``codebook_shape``; ``sigmoid_output`` is the decoder's
    (False: logits of a Bernoulli decoder). ``spectral_norm`` normalizes the decoder's layers,
    ``encoder_spectral_norm`` the encoder's; ``decoder_batch_norm`` is :class:`Decoder`'s
    ``batch_norm`` (None: the architecture's own).
    """

    arch: str | Arch
    image_shape: Sequence[int]
    encoder_out: int
    spectral_norm: bool = False
    codebook_shape: tuple[int, int] | None = None
    sigmoid_output: bool = True
    encoder_spectral_norm: bool = False
    decoder_batch_norm: bool | None = None

    def setup(self):
        if isinstance(self.arch, Arch):
            require(
                not (self.spectral_norm or self.encoder_spectral_norm),
                "decoder_reg",
                "spectral norm",
                "spectral norm rewrites the built-in networks' layers and cannot reach into arch.encoder or "
                "arch.decoder; choose another decoder regularizer",
                ConfigError,
            )
            require(
                not self.decoder_batch_norm,
                "decoder_norm",
                "batch",
                "batch norm is added to the built-in decoders' layers and cannot reach into arch.decoder; "
                "put it in your decoder module",
                ConfigError,
            )
            self.encoder = _UserEncoder(self.arch.encoder, self.encoder_out)
            self.decoder = _UserDecoder(self.arch.decoder, tuple(self.image_shape), self.sigmoid_output)
        else:
            self.encoder = Encoder(self.arch, self.encoder_out, self.encoder_spectral_norm)
            self.decoder = Decoder(
                self.arch, tuple(self.image_shape), self.spectral_norm, self.sigmoid_output, self.decoder_batch_norm
            )
        if self.codebook_shape is not None:
            # Uniform(-1/K, 1/K) as in van den Oord et al.'s implementation: entries start close
            # together, near the encoder's initial outputs, so small moves of z_e switch entries
            # and every entry receives codebook-loss updates (a spread-out init collapses onto one).
            bound = 1.0 / self.codebook_shape[0]
            init = lambda key, shape: jax.random.uniform(key, shape, minval=-bound, maxval=bound)
            self.codebook = self.param("codebook", init, self.codebook_shape)

    def encode(self, x, train: bool):
        return self.encoder(x, train)

    def decode(self, z, train: bool):
        return self.decoder(z, train)

    def get_codebook(self):
        return self.codebook

    def __call__(self, x, z, train: bool):
        """Touch every submodule once (used by ``init``)."""
        out = (self.encoder(x, train), self.decoder(z, train))
        if self.codebook_shape is not None:
            out = out + (self.codebook,)
        return out


def count_params(tree) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))
