"""The method grid as data: registries of code paths, latent regularizers and decoder regularizers.

Ghosh et al. (2020) read a VAE as an autoencoder with a latent regularizer (the KL term) and a
decoder regularizer (the noise of the reparameterization). A method (:class:`jaxrae.methods.Method`)
names one entry of each registry below, and whatever the entries are, its training objective is

    loss = L_rec(x, D(c)) + beta * L_z + lambda * L_dec

with c the code that the code path hands to the decoder. :func:`make_loss_fn` looks the entries
up and does this arithmetic; :func:`make_codec` builds the evaluation-mode encode, decode and
prior from the code path; :func:`code_spec` and :func:`build_model` give the network's widths.

``CODE_PATHS`` (one :class:`CodePath` per encoder kind: how the encoder's output h is read)

    deterministic  z = h; codes ``identity`` (z) or ``fixed-noise`` (z + sigma0 * eps)
    gaussian       (mu, log var) = h; code ``reparameterize`` (mu + sigma * eps)
    categorical    N x K logits = h; codes ``argmax`` (one-hot with a gradient estimator) or
                   ``relaxed`` (a Gumbel-softmax sample)
    vq             N vectors of D = h; code ``nearest`` (codebook entry, straight-through)
    fsq            N groups of len(levels) = h; code ``round`` (finite scalar quantization)

``LATENT_REGS`` (one :class:`LatentReg` each, L_z): ``none``, ``l2`` (0.5 ||z||^2), ``kl`` (to
N(0, I)), ``mmd`` (WAE), ``kl-uniform`` (log K - H(q)), ``logit-l2`` (0.5 ||logits||^2), ``vq``
(codebook + 0.25 * commitment).

``DECODER_REGS`` (one :class:`DecoderReg` each, L_dec): ``none``, ``noise`` (the stochastic code
path is the regularizer), ``l2`` (on decoder weights), ``gp`` (gradient penalty), ``sn``
(spectral norm, in the network).

``SPECTRAL_NORM_LAYERS`` (which layers a spectral-norm regularizer normalizes: ``decoder``, or
``encoder+decoder`` as the official RAE configuration; ``none`` for the other regularizers) and
``DECODER_NORMS`` (``none`` or ``batch``: batch norm after the decoder's hidden layers) are the
choices of ``TrainConfig.spectral_norm`` and ``TrainConfig.decoder_norm``.

``LIKELIHOODS`` (one :class:`Likelihood` each, the decoder's observation model p(x | z) that
L_rec is the negative log of): ``gaussian`` (sigmoid outputs, summed squared error) and
``bernoulli`` (logits, summed binary cross-entropy). Every method and architecture takes either.

Which entries fit together is read from the entries themselves: a code path lists the names of
what it hands to the latent regularizers (``provides``), a latent regularizer the names it
``reads``, and a decoder regularizer says whether it needs a stochastic code. A new encoder kind
or regularizer is therefore one new entry in one of these dicts, e.g.
``grid.LATENT_REGS["l1"] = LatentReg(reads=frozenset({"z"}), penalty=my_l1)``; validation, the
loss, the model and the codec need no other change.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxrae import likelihood, losses, relax
from jaxrae.nets import AutoEncoder

if TYPE_CHECKING:  # the config module imports the presets, which import this module
    from jaxrae.config import TrainConfig

VQ_COMMITMENT = 0.25  # van den Oord et al. (2017), Sec. 3.2


class HParams(NamedTuple):
    """Per-run scalars that a sweep may vary (a vmapped axis next to the seed axis)."""

    lr: chex.Array
    beta: chex.Array
    lam: chex.Array
    tau: chex.Array


class CodeSpec(NamedTuple):
    """Static shapes of a method's code under a config."""

    encoder_out: int  # width of the encoder's output
    decoder_in: int  # width of the decoder's input
    n_vars: int  # latent_dim: code dims, or categorical variables / VQ vectors / FSQ groups
    n_classes: int  # classes per discrete variable (0 for continuous codes)


class TrainCode(NamedTuple):
    """What a code path hands to the rest of the training objective for one batch."""

    decoder_in: chex.Array  # (B, decoder_in): the code the decoder reads
    penalty_point: chex.Array  # (B, decoder_in): where a decoder gradient penalty is taken
    latent: dict  # name -> array: what the latent regularizers read (CodePath.provides)
    metrics: dict  # name -> scalar: extra per-step metrics (the temperature of categorical codes)


@dataclasses.dataclass(frozen=True)
class CodePath:
    """One encoder kind: how the encoder's output becomes a code, in training and evaluation.

    Every function of every entry has the signature given here; ``h`` is the encoder's output
    (B, encoder_out), ``params`` the model's parameters (a VQ codebook lives there), ``config``
    the :class:`~jaxrae.config.TrainConfig` (its ``method_spec`` says which code is used).
    """

    codes: tuple[str, ...]  # the values of Method.code this kind takes
    provides: frozenset[str]  # the names in TrainCode.latent
    discrete: bool  # evaluation codes are integers in [0, n_classes)
    spec: Callable[[TrainConfig], CodeSpec]
    # (config, params, h, key, tau) -> TrainCode; key draws the code's noise, tau is the
    # Gumbel temperature at this step
    train_code: Callable[[TrainConfig, Any, chex.Array, chex.Array, chex.Array], TrainCode]
    encode: Callable[[TrainConfig, Any, chex.Array], chex.Array]  # (config, params, h) -> codes
    decoder_input: Callable[[TrainConfig, Any, chex.Array], chex.Array]  # (config, params, codes) -> decoder input
    sample_prior: Callable[[CodeSpec, chex.Array, int], chex.Array]  # (spec, key, n) -> n codes
    stochastic: Callable[[str, str], bool]  # (code, estimator) -> whether the code draws noise
    needs_latent_reg: bool = False  # a latent regularizer other than "none" is part of the model
    codebook_shape: Callable[[TrainConfig], tuple[int, int] | None] = lambda config: None
    # (config, params, h) -> the encoder's distribution q(z | x) over the codes the decoder reads
    # in training (a likelihood.GaussianProposal or CategoricalProposal); None: no such distribution
    posterior: Callable[[TrainConfig, Any, chex.Array], Any] | None = None
    # (config, params, h) -> (B, N, K) scores of every class of every discrete variable, largest at
    # the encoder's code: the logits of an importance-sampling proposal (discrete paths only)
    proposal_logits: Callable[[TrainConfig, Any, chex.Array], chex.Array] | None = None


@dataclasses.dataclass(frozen=True)
class LatentReg:
    """A latent regularizer L_z: ``penalty(code, key) -> scalar`` averaged over the batch.

    ``reads`` names the entries of ``code.latent`` it uses; it fits every code path that
    provides them. ``key`` is independent of the code's noise (MMD draws its prior sample).
    """

    reads: frozenset[str]
    penalty: Callable[[TrainCode, chex.Array], chex.Array]
    kl_to_prior: bool = False  # L_z is KL(q(z | x) || p(z)) to the code path's prior: with decoder noise, a VAE


@dataclasses.dataclass(frozen=True)
class DecoderReg:
    """A decoder regularizer L_dec: ``penalty(params, decode, point) -> scalar``.

    ``decode(c)`` is the training-mode decoder (batch statistics of that pass discarded),
    ``point`` the code path's ``penalty_point``. ``needs_stochastic_code``: the regularizer is
    the code path's noise; ``spectral_norm``: the regularizer is built into the decoder.
    """

    penalty: Callable[[Any, Callable, chex.Array], chex.Array]
    needs_stochastic_code: bool = False
    spectral_norm: bool = False


# ---------------------------------------------------------------------------------- code paths


def _sample_normal(spec: CodeSpec, key: chex.Array, n: int) -> chex.Array:
    """n codes from the prior N(0, I) of a continuous code."""
    return jax.random.normal(key, (n, spec.n_vars))


def _sample_uniform(spec: CodeSpec, key: chex.Array, n: int) -> chex.Array:
    """n codes from the uniform prior over the n_classes values of each discrete variable."""
    return jax.random.randint(key, (n, spec.n_vars), 0, spec.n_classes, dtype=jnp.int32)


def _codes_in(*codes: str) -> Callable[[str, str], bool]:
    return lambda code, estimator: code in codes


def _deterministic_spec(config: TrainConfig) -> CodeSpec:
    n = config.latent_dim
    return CodeSpec(n, n, n, 0)


def _deterministic_train_code(config: TrainConfig, params, h, key, tau) -> TrainCode:
    """z = h, or z + sigma0 * eps for ``fixed-noise`` (the CV-VAE, Ghosh et al. 2020, Sec. 2).

    The KL term of a deterministic code is taken at the fixed variance sigma0^2 = noise_std^2.
    """
    method = config.method_spec
    mean, log_var = h, jnp.full((), 2.0 * jnp.log(method.noise_std), h.dtype)
    code = losses.reparameterize(key, mean, log_var) if method.code == "fixed-noise" else mean
    return TrainCode(code, code, {"z": mean, "mean": mean, "log_var": log_var}, {})


def _gaussian_spec(config: TrainConfig) -> CodeSpec:
    n = config.latent_dim
    return CodeSpec(2 * n, n, n, 0)


def _gaussian_train_code(config: TrainConfig, params, h, key, tau) -> TrainCode:
    """(mu, log sigma^2) = h, z = mu + sigma * eps (Kingma & Welling 2014)."""
    mean, log_var = jnp.split(h, 2, axis=-1)
    code = losses.reparameterize(key, mean, log_var)
    return TrainCode(code, code, {"mean": mean, "log_var": log_var}, {})


def _categorical_spec(config: TrainConfig) -> CodeSpec:
    n, k = config.latent_dim, config.n_classes
    return CodeSpec(n * k, n * k, n, k)


def _categorical_train_code(config: TrainConfig, params, h, key, tau) -> TrainCode:
    """One-hot codes of N x K logits: a Gumbel-softmax sample at tau (``relaxed``, Jang et al.
    2017) or one_hot(argmax) with the method's gradient estimator (``argmax``). A gradient
    penalty is taken at the relaxed code softmax(logits / tau), where the decoder is smooth."""
    method = config.method_spec
    spec = _categorical_spec(config)
    batch = h.shape[0]
    logits = h.reshape((batch, spec.n_vars, spec.n_classes))
    if method.code == "relaxed":
        code = relax.gumbel_softmax(key, logits, tau, hard=False)
    else:
        code = relax.discrete_code(key, logits, method.estimator, tau, n_samples=config.gumbel_rao_samples)
    relaxed_code = jax.nn.softmax(logits / tau, axis=-1).reshape((batch, -1))
    latent = {"logits": logits, "flat_logits": h}  # (B, N, K), and the same as one vector per image
    return TrainCode(code.reshape((batch, -1)), relaxed_code, latent, {"tau": jnp.asarray(tau, h.dtype)})


def _categorical_encode(config: TrainConfig, params, h) -> chex.Array:
    spec = _categorical_spec(config)
    return jnp.argmax(h.reshape((h.shape[0], spec.n_vars, spec.n_classes)), axis=-1).astype(jnp.int32)


def _vq_spec(config: TrainConfig) -> CodeSpec:
    n = config.latent_dim
    return CodeSpec(n * config.code_dim, n * config.code_dim, n, config.n_classes)


def _vq_train_code(config: TrainConfig, params, h, key, tau) -> TrainCode:
    """The nearest codebook entry of each of N vectors, straight-through (van den Oord et al. 2017)."""
    z_e = h.reshape((h.shape[0], config.latent_dim, config.code_dim))
    z_q, _, codebook_loss, commitment_loss = relax.vector_quantize(z_e, params["codebook"])
    code = z_q.reshape((h.shape[0], -1))
    return TrainCode(code, code, {"codebook_loss": codebook_loss, "commitment_loss": commitment_loss}, {})


def _vq_encode(config: TrainConfig, params, h) -> chex.Array:
    z_e = h.reshape((h.shape[0], config.latent_dim, config.code_dim))
    return relax.vector_quantize(z_e, params["codebook"])[1].astype(jnp.int32)


def _fsq_spec(config: TrainConfig) -> CodeSpec:
    levels = config.fsq_levels
    return CodeSpec(
        config.latent_dim * len(levels), config.latent_dim * len(levels), config.latent_dim, int(math.prod(levels))
    )


def _fsq_train_code(config: TrainConfig, params, h, key, tau) -> TrainCode:
    """N groups of len(levels) scalars, each bounded and rounded to its grid (Mentzer et al. 2023)."""
    z = h.reshape((h.shape[0], config.latent_dim, len(config.fsq_levels)))
    z_q, _, _ = relax.finite_scalar_quantize(z, config.fsq_levels)
    code = z_q.reshape((h.shape[0], -1))
    return TrainCode(code, code, {}, {})


def _fsq_encode(config: TrainConfig, params, h) -> chex.Array:
    z = h.reshape((h.shape[0], config.latent_dim, len(config.fsq_levels)))
    return relax.finite_scalar_quantize(z, config.fsq_levels)[2].astype(jnp.int32)


def _fixed_noise_posterior(config: TrainConfig, params, h) -> likelihood.GaussianProposal:
    """q(z | x) = N(h, sigma0^2 I), sigma0 = noise_std: the CV-VAE's posterior (Ghosh et al. 2020)."""
    return likelihood.GaussianProposal(h, jnp.full((), 2.0 * math.log(config.method_spec.noise_std), h.dtype))


def _gaussian_posterior(config: TrainConfig, params, h) -> likelihood.GaussianProposal:
    """q(z | x) = N(mu, diag exp(log sigma^2)) with (mu, log sigma^2) = h (Kingma & Welling 2014)."""
    mean, log_var = jnp.split(h, 2, axis=-1)
    return likelihood.GaussianProposal(mean, log_var)


def _categorical_logits(config: TrainConfig, params, h) -> chex.Array:
    spec = _categorical_spec(config)
    return h.reshape((h.shape[0], spec.n_vars, spec.n_classes))


def _categorical_posterior(config: TrainConfig, params, h) -> likelihood.CategoricalProposal:
    """q(c | x) = prod_v softmax(logits_v): the categorical distribution whose Gumbel-softmax
    relaxation trains the discrete VAE (Jang et al. 2017), evaluated as the discrete model."""
    return likelihood.categorical_proposal(_categorical_logits(config, params, h))


def _vq_proposal_logits(config: TrainConfig, params, h) -> chex.Array:
    """-||z_e - e_j||^2 for every codebook entry j of every one of the N vectors: (B, N, K)."""
    z_e = h.reshape((h.shape[0], config.latent_dim, config.code_dim))
    return -jnp.sum(jnp.square(z_e[:, :, None, :] - params["codebook"]), axis=-1)


def _fsq_proposal_logits(config: TrainConfig, params, h) -> chex.Array:
    """-||q(z_g) - c_j||^2 for every grid code c_j (j < prod(levels)) of every group g: (B, N, K),
    q(z_g) the group's quantized code in [-1, 1] (Mentzer et al. 2023), so the scores fall off
    with the distance on the grid from the encoder's code."""
    z = h.reshape((h.shape[0], config.latent_dim, len(config.fsq_levels)))
    codes = relax.finite_scalar_quantize(z, config.fsq_levels).codes
    grid_codes = relax.fsq_codes_from_index(jnp.arange(math.prod(config.fsq_levels)), config.fsq_levels, codes.dtype)
    return -jnp.sum(jnp.square(codes[:, :, None, :] - grid_codes), axis=-1)


CODE_PATHS: dict[str, CodePath] = {
    "deterministic": CodePath(
        codes=("identity", "fixed-noise"),
        provides=frozenset({"z", "mean", "log_var"}),
        discrete=False,
        spec=_deterministic_spec,
        train_code=_deterministic_train_code,
        encode=lambda config, params, h: h,
        decoder_input=lambda config, params, z: z,
        sample_prior=_sample_normal,
        stochastic=_codes_in("fixed-noise"),
        posterior=_fixed_noise_posterior,
    ),
    "gaussian": CodePath(
        codes=("reparameterize",),
        provides=frozenset({"mean", "log_var"}),
        discrete=False,
        spec=_gaussian_spec,
        train_code=_gaussian_train_code,
        encode=lambda config, params, h: jnp.split(h, 2, axis=-1)[0],
        decoder_input=lambda config, params, z: z,
        sample_prior=_sample_normal,
        stochastic=_codes_in("reparameterize"),
        needs_latent_reg=True,  # the KL term is what makes the encoder a posterior
        posterior=_gaussian_posterior,
    ),
    "categorical": CodePath(
        codes=("argmax", "relaxed"),
        provides=frozenset({"logits", "flat_logits"}),
        discrete=True,
        spec=_categorical_spec,
        train_code=_categorical_train_code,
        encode=_categorical_encode,
        decoder_input=lambda config, params, codes: jax.nn.one_hot(codes, config.n_classes),
        sample_prior=_sample_uniform,
        # argmax draws noise unless its estimator is plain straight-through
        stochastic=lambda code, estimator: code == "relaxed" or estimator != "st",
        posterior=_categorical_posterior,
        proposal_logits=_categorical_logits,
    ),
    "vq": CodePath(
        codes=("nearest",),
        provides=frozenset({"codebook_loss", "commitment_loss"}),
        discrete=True,
        spec=_vq_spec,
        train_code=_vq_train_code,
        encode=_vq_encode,
        decoder_input=lambda config, params, codes: params["codebook"][codes],
        sample_prior=_sample_uniform,
        stochastic=_codes_in(),
        needs_latent_reg=True,  # the codebook learns only through the codebook loss
        codebook_shape=lambda config: (config.n_classes, config.code_dim),
        proposal_logits=_vq_proposal_logits,
    ),
    "fsq": CodePath(
        codes=("round",),
        provides=frozenset(),
        discrete=True,
        spec=_fsq_spec,
        train_code=_fsq_train_code,
        encode=_fsq_encode,
        decoder_input=lambda config, params, codes: relax.fsq_codes_from_index(codes, config.fsq_levels),
        sample_prior=_sample_uniform,
        stochastic=_codes_in(),
        proposal_logits=_fsq_proposal_logits,
    ),
}


# --------------------------------------------------------------------------- latent regularizers


def _no_latent_penalty(code: TrainCode, key) -> chex.Array:
    return jnp.zeros((), code.decoder_in.dtype)


def _mmd_to_normal(code: TrainCode, key) -> chex.Array:
    """MMD between the batch of codes and as many draws from N(0, I) (Tolstikhin et al. 2018)."""
    z = code.latent["z"]
    return losses.imq_kernel_mmd(z, jax.random.normal(key, z.shape, z.dtype))


def _logit_l2(code: TrainCode, key) -> chex.Array:
    """0.5 * ||logits||^2 over an image's N x K logits, averaged over the batch."""
    return jnp.mean(0.5 * jnp.sum(jnp.square(code.latent["flat_logits"]), axis=-1))


def _vq_losses(code: TrainCode, key) -> chex.Array:
    """sum_n (||sg(z_e) - e||^2 + 0.25 ||z_e - sg(e)||^2) over an image's N vectors (van den Oord
    et al. 2017, Eq. 3), summed like the reconstruction error over pixels, averaged over the batch."""
    return jnp.mean(jnp.sum(code.latent["codebook_loss"] + VQ_COMMITMENT * code.latent["commitment_loss"], axis=-1))


LATENT_REGS: dict[str, LatentReg] = {
    "none": LatentReg(frozenset(), _no_latent_penalty),
    "l2": LatentReg(frozenset({"z"}), lambda code, key: losses.rae_latent_penalty(code.latent["z"])),
    "kl": LatentReg(
        frozenset({"mean", "log_var"}),
        lambda code, key: losses.gaussian_kl(code.latent["mean"], code.latent["log_var"]),
        kl_to_prior=True,
    ),
    "mmd": LatentReg(frozenset({"z"}), _mmd_to_normal),
    "kl-uniform": LatentReg(
        frozenset({"logits"}),
        lambda code, key: jnp.mean(jnp.sum(relax.categorical_kl_uniform(code.latent["logits"]), axis=-1)),
        kl_to_prior=True,
    ),
    "logit-l2": LatentReg(frozenset({"flat_logits"}), _logit_l2),
    "vq": LatentReg(frozenset({"codebook_loss", "commitment_loss"}), _vq_losses),
}


# -------------------------------------------------------------------------- decoder regularizers


def _no_decoder_penalty(params, decode, point) -> chex.Array:
    return jnp.zeros((), point.dtype)


DECODER_REGS: dict[str, DecoderReg] = {
    "none": DecoderReg(_no_decoder_penalty),
    "noise": DecoderReg(_no_decoder_penalty, needs_stochastic_code=True),
    "l2": DecoderReg(lambda params, decode, point: losses.decoder_l2_penalty(params["decoder"])),
    "gp": DecoderReg(lambda params, decode, point: losses.decoder_gradient_penalty(decode, point)),
    "sn": DecoderReg(_no_decoder_penalty, spectral_norm=True),
}


class Layers(NamedTuple):
    """Which of the networks a layer-wise change (spectral norm) applies to."""

    encoder: bool
    decoder: bool


#: TrainConfig.spectral_norm -> the networks whose every layer is spectrally normalized (Miyato et
#: al. 2018). A regularizer with ``spectral_norm`` takes the entries whose ``decoder`` is True,
#: every other one ``none``. The presets normalize the decoder only; Ghosh et al.'s official
#: configuration (``spec_norm_on_dec_only: False``) normalizes both networks.
SPECTRAL_NORM_LAYERS: dict[str, Layers] = {
    "none": Layers(encoder=False, decoder=False),
    "decoder": Layers(encoder=False, decoder=True),
    "encoder+decoder": Layers(encoder=True, decoder=True),
}

#: TrainConfig.decoder_norm -> whether the decoder has batch norm after its hidden layers (None in
#: the config: the architecture's own, :func:`jaxrae.nets.has_decoder_batch_norm`).
DECODER_NORMS: dict[str, bool] = {"none": False, "batch": True}


# ---------------------------------------------------------------------------------- likelihoods


@dataclasses.dataclass(frozen=True)
class Likelihood:
    """The decoder's observation model p(x | z), from the decoder's output ``out`` (B, H, W, C).

    ``sigmoid_output``: the decoder ends in a sigmoid (its output is an image in [0, 1]) or returns
    logits. ``reconstruction_loss(x, out)``: L_rec = mean_b -log p(x_b | z_b) up to a constant;
    ``to_images(out)``: the decoder's mean image in [0, 1] (what figures and metrics read);
    ``log_prob(x, out, variance)``: log p(x | z) summed over an image's pixels (``x`` and ``out``
    broadcast, so one image under n decoded codes gives (n,)); ``variance`` is the observation
    variance of a Gaussian (ignored by models without one); ``fits_variance``: evaluation fits
    that variance on the training set.
    """

    sigmoid_output: bool
    reconstruction_loss: Callable[[chex.Array, chex.Array], chex.Array]
    to_images: Callable[[chex.Array], chex.Array]
    log_prob: Callable[[chex.Array, chex.Array, Any], chex.Array]
    fits_variance: bool = False


#: Observation variance sigma^2 at which the summed squared error is -log N(x; x_hat, sigma^2 I)
#: up to the constant (D/2) log(pi): ||x - x_hat||^2 = (1 / (2 sigma^2)) ||x - x_hat||^2 at 1/2.
GAUSSIAN_TRAINING_VARIANCE = 0.5

LIKELIHOODS: dict[str, Likelihood] = {
    # Gaussian: L_rec = ||x - x_hat||^2 = -log N(x; x_hat, I/2) - (D/2) log pi (Ghosh et al. 2020's
    # official VAE loss); reported likelihoods use a variance fitted on training residuals.
    "gaussian": Likelihood(
        True,
        losses.reconstruction_loss,
        lambda out: out,
        lambda x, out, variance: likelihood.gaussian_log_likelihood(x, out, variance),
        fits_variance=True,
    ),
    # Bernoulli: L_rec = summed binary cross-entropy with logits (Kingma & Welling 2014, App. C.1).
    "bernoulli": Likelihood(
        False,
        losses.bernoulli_reconstruction_loss,
        jax.nn.sigmoid,
        lambda x, out, variance: likelihood.bernoulli_log_likelihood(x, out),
    ),
}


# ---------------------------------------------------------------- the grid's shared arithmetic


def fitting_latent_regs(encoder: str) -> list[str]:
    """The latent regularizers that fit the code path ``encoder``: those whose ``reads`` it
    ``provides``, without ``none`` where the code path ``needs_latent_reg``."""
    path = CODE_PATHS[encoder]
    return [
        name
        for name, reg in LATENT_REGS.items()
        if reg.reads <= path.provides and (reg.reads or not path.needs_latent_reg)
    ]


def has_posterior(config: TrainConfig) -> bool:
    """Whether ``config``'s method is a VAE: its code path's noise is the decoder regularizer and
    its latent regularizer is the KL of that noise's distribution q(z | x) to the prior (vae,
    cv-vae, dvae, dvae-st, drae-noise), so the ELBO and IWAE-k bound its likelihood. Other rows
    are deterministic autoencoders, generated through an ex-post density."""
    method = config.method_spec
    path = CODE_PATHS[method.encoder]
    return (
        DECODER_REGS[method.decoder_reg].needs_stochastic_code
        and LATENT_REGS[method.latent_reg].kl_to_prior
        and path.posterior is not None
    )


def code_spec(config: TrainConfig) -> CodeSpec:
    """Encoder/decoder widths of ``config``'s method (its code path's ``spec``)."""
    return CODE_PATHS[config.method_spec.encoder].spec(config)


def code_bits(config: TrainConfig) -> float | None:
    """Capacity of ``config``'s discrete code in bits, log2 of the number of distinct codes
    (:func:`jaxrae.relax.code_capacity_bits` of the code path's spec): N log2 K for N categorical
    variables of K classes, N log2 C for N VQ vectors from a C-entry codebook, N sum_j log2 L_j for
    N FSQ groups of levels L_j. None for a continuous code."""
    path = CODE_PATHS[config.method_spec.encoder]
    if not path.discrete:
        return None
    spec = path.spec(config)
    return relax.code_capacity_bits(spec.n_vars, spec.n_classes)


def build_model(config: TrainConfig, image_shape) -> AutoEncoder:
    """The Flax AutoEncoder that ``config``'s method needs (spectral norm, decoder batch norm and
    codebook included)."""
    method = config.method_spec
    path = CODE_PATHS[method.encoder]
    sn_layers = SPECTRAL_NORM_LAYERS[config.spectral_norm]
    return AutoEncoder(
        arch=config.arch,
        image_shape=tuple(image_shape),
        encoder_out=path.spec(config).encoder_out,
        spectral_norm=DECODER_REGS[method.decoder_reg].spectral_norm,
        codebook_shape=path.codebook_shape(config),
        sigmoid_output=LIKELIHOODS[config.likelihood].sigmoid_output,
        encoder_spectral_norm=sn_layers.encoder,
        decoder_batch_norm=None if config.decoder_norm is None else DECODER_NORMS[config.decoder_norm],
    )


def temperature(config: TrainConfig, tau0: chex.Array, step: chex.Array) -> chex.Array:
    """Gumbel temperature at ``step``: annealed as Jang et al. (2017),
    tau_t = max(tau_min, tau0 * exp(-rate * t)), or fixed at tau0."""
    if config.method_spec.anneal:
        return relax.exponential_temperature(step, tau0, config.anneal_rate, config.tau_min)
    return tau0


def make_loss_fn(config: TrainConfig, model: AutoEncoder) -> Callable:
    """The training objective of ``config``'s method (Ghosh et al. 2020, Eq. 11):

        loss = L_rec(x, D(c)) + beta * L_z + lambda * L_dec

    with the code c and what L_z reads from the method's code path, L_z and L_dec from its
    regularizer entries, and L_rec the config's likelihood entry's ``reconstruction_loss`` of the
    decoder output (squared error or binary cross-entropy with logits, summed over pixels). A
    decoder gradient penalty is taken on the decoder's mean image (``to_images``). Returns
    ``loss_fn(params, batch_stats, key, x, hp, step) -> (loss, (batch_stats, metrics))``; the
    key is split into one key for the code's noise and one for the latent regularizer.
    """
    method = config.method_spec
    path = CODE_PATHS[method.encoder]
    latent_reg = LATENT_REGS[method.latent_reg]
    decoder_reg = DECODER_REGS[method.decoder_reg]
    observation = LIKELIHOODS[config.likelihood]

    def loss_fn(params, batch_stats, key, x, hp: HParams, step):
        variables = {"params": params, "batch_stats": batch_stats}
        key_code, key_reg = jax.random.split(key)
        h, updates = model.apply(variables, x, True, method=AutoEncoder.encode, mutable=["batch_stats"])
        variables = {"params": params, "batch_stats": updates.get("batch_stats", batch_stats)}
        code = path.train_code(config, params, h, key_code, temperature(config, hp.tau, step))
        latent = latent_reg.penalty(code, key_reg)

        x_hat, updates = model.apply(
            variables, code.decoder_in, True, method=AutoEncoder.decode, mutable=["batch_stats"]
        )
        new_batch_stats = updates.get("batch_stats", batch_stats)
        rec = observation.reconstruction_loss(x, x_hat)

        def decode(c):
            # Batch statistics from this extra pass are discarded: the penalty must not
            # move the running averages twice per step.
            out, _ = model.apply(variables, c, True, method=AutoEncoder.decode, mutable=["batch_stats"])
            return observation.to_images(out)

        dec = decoder_reg.penalty(params, decode, code.penalty_point)
        total = rec + hp.beta * latent + hp.lam * dec
        metrics = dict(code.metrics, loss=total, rec=rec, latent_reg=latent, decoder_reg=dec)
        return total, (new_batch_stats, metrics)

    return loss_fn


class Codec(NamedTuple):
    """Evaluation-mode maps between images and codes for one model (no randomness).

    Continuous codes are float (n, d); discrete codes are integer (n, n_vars) with values in
    [0, n_classes): categorical argmax, VQ codebook index, FSQ flat index per group.
    """

    encode: Callable  # (variables, images) -> codes
    decode: Callable  # (variables, codes) -> images
    sample_prior: Callable  # (key, n) -> codes from N(0, I) or the uniform prior
    discrete: bool
    n_vars: int
    n_classes: int
    decode_output: Callable | None = None  # (variables, codes) -> the decoder's raw output (images or logits)


def make_codec(config: TrainConfig, model: AutoEncoder) -> Codec:
    """Deterministic encode/decode of ``config``'s method and its prior (Ghosh et al. 2020, Sec. 4):
    encode(x) = the code path's evaluation code of E(x), decode(c) = D(the code path's decoder
    input of c) mapped to images by the config's likelihood (``to_images``), ``decode_output`` the
    same without that map, sample_prior from N(0, I) (continuous) or uniform over the classes
    (discrete)."""
    path = CODE_PATHS[config.method_spec.encoder]
    spec = path.spec(config)
    to_images = LIKELIHOODS[config.likelihood].to_images

    def encode(variables, x):
        return path.encode(config, variables["params"], model.apply(variables, x, False, method=AutoEncoder.encode))

    def decode_output(variables, codes):
        decoder_in = path.decoder_input(config, variables["params"], codes)
        return model.apply(variables, decoder_in.reshape((decoder_in.shape[0], -1)), False, method=AutoEncoder.decode)

    def decode(variables, codes):
        return to_images(decode_output(variables, codes))

    def sample_prior(key, n):
        return path.sample_prior(spec, key, n)

    return Codec(encode, decode, sample_prior, path.discrete, spec.n_vars, spec.n_classes, decode_output)
