"""The method grid: every method is four choices, and the named presets are rows of it.

Ghosh et al. (2020) read a VAE as an autoencoder with a latent regularizer (the KL term) and a
decoder regularizer (the noise of the reparameterization). A method here is therefore a row

    encoder      how the encoder's output is read: ``deterministic`` z, ``gaussian`` (mu, log var),
                 ``categorical`` logits (N x K), ``vq`` vectors (N x D), ``fsq`` scalars
    code         how the code reaches the decoder: ``identity``, ``reparameterize``
                 (mu + sigma*eps), ``fixed-noise`` (mu + sigma0*eps), ``argmax`` (one-hot with a
                 gradient estimator), ``relaxed`` (Gumbel-softmax sample), ``nearest`` (VQ),
                 ``round`` (FSQ)
    latent_reg   ``none``, ``l2`` (0.5||z||^2), ``kl`` (to N(0, I)), ``mmd`` (WAE),
                 ``kl-uniform`` (log K - H(q)), ``logit-l2`` (0.5||logits||^2), ``vq`` (codebook +
                 0.25 * commitment)
    decoder_reg  ``none``, ``noise`` (the stochastic code path is the regularizer), ``l2``,
                 ``gp``, ``sn``

plus default weights beta (latent) and lambda (decoder). A custom method is a new
:class:`Method` value; no class hierarchy.

Continuous defaults are the official MNIST settings of Ghosh et al. (repository
``Regularized_autoencoders-RAE-``, ``configurations/config.py`` and the loss modules), converted
to this code's normalisation: the reconstruction error is the squared error summed over the
pixels of an image (the Gaussian log-likelihood up to constants, as in the official VAE loss),
the latent term is 0.5 * ||z||^2 summed over the d code dimensions (paper, Eq. 11), KL terms are
summed over dimensions. The official VAE/CV-VAE losses already use these sums, so their KL weights
carry over unchanged (0.312, 0.039). The official RAE/WAE losses average the reconstruction over
the P pixels and the latent term over the d dimensions, so multiplying their loss by P gives

    beta_here = beta_official * 2 * P / d,   lambda_here = lambda_official * P,

evaluated at P = 784 (28x28 MNIST) and d = 16. For other image sizes the balance shifts; sweep
beta and lambda (``--sweep``) rather than trusting a default. The discrete presets have no
published settings: KL-based ones take the VAE's weight, RAE-like ones the matching continuous
lambda, and their beta is chosen on the same scale; they are what the experiments study.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxrae import losses, relax
from jaxrae.errors import ConfigError
from jaxrae.nets import AutoEncoder

ENCODERS = ("deterministic", "gaussian", "categorical", "vq", "fsq")
CODES = ("identity", "reparameterize", "fixed-noise", "argmax", "relaxed", "nearest", "round")
LATENT_REGS = ("none", "l2", "kl", "mmd", "kl-uniform", "logit-l2", "vq")
DECODER_REGS = ("none", "noise", "l2", "gp", "sn")

# Which code paths and latent regularizers make sense for each encoder reading.
_COMPATIBLE = {
    "deterministic": ({"identity", "fixed-noise"}, {"none", "l2", "kl", "mmd"}),
    "gaussian": ({"reparameterize"}, {"kl"}),
    "categorical": ({"argmax", "relaxed"}, {"none", "kl-uniform", "logit-l2"}),
    "vq": ({"nearest"}, {"vq"}),
    "fsq": ({"round"}, {"none"}),
}
_STOCHASTIC_CODES = {"reparameterize", "fixed-noise", "relaxed"}


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the method grid (see the module docstring)."""

    name: str
    encoder: str
    code: str
    latent_reg: str
    decoder_reg: str
    beta: float = 0.0
    lam: float = 0.0
    noise_std: float = 0.7  # CV-VAE's constant sigma (official MNIST/CIFAR config)
    tau: float = 1.0  # Gumbel temperature (initial value when annealed)
    anneal: bool = False  # tau_t = max(tau_min, tau * exp(-rate * t)), Jang et al. (2017)
    estimator: str = "st"  # gradient estimator of an ``argmax`` code
    summary: str = ""

    def __post_init__(self):
        for field, allowed in (
            ("encoder", ENCODERS),
            ("code", CODES),
            ("latent_reg", LATENT_REGS),
            ("decoder_reg", DECODER_REGS),
        ):
            value = getattr(self, field)
            if value not in allowed:
                raise ConfigError(f"method {self.name!r}: {field}={value!r} is unknown; choose one of {', '.join(allowed)}")
        codes, regs = _COMPATIBLE[self.encoder]
        if self.code not in codes:
            raise ConfigError(
                f"method {self.name!r}: code={self.code!r} does not fit encoder={self.encoder!r}; use one of {', '.join(sorted(codes))}"
            )
        if self.latent_reg not in regs:
            raise ConfigError(
                f"method {self.name!r}: latent_reg={self.latent_reg!r} does not fit encoder={self.encoder!r}; use one of {', '.join(sorted(regs))}"
            )
        if self.estimator not in relax.ESTIMATORS:
            raise ConfigError(f"method {self.name!r}: estimator={self.estimator!r} is unknown; choose one of {', '.join(relax.ESTIMATORS)}")
        if self.decoder_reg == "noise" and not self.stochastic:
            raise ConfigError(
                f"method {self.name!r}: decoder_reg='noise' needs a stochastic code path "
                f"({', '.join(sorted(_STOCHASTIC_CODES))}, or argmax with a sampling estimator), not code={self.code!r} with estimator={self.estimator!r}"
            )
        if self.beta < 0 or self.lam < 0:
            raise ConfigError(f"method {self.name!r}: beta and lam must be >= 0, got beta={self.beta}, lam={self.lam}")
        if self.noise_std <= 0 or self.tau <= 0:
            raise ConfigError(f"method {self.name!r}: noise_std and tau must be > 0, got {self.noise_std}, {self.tau}")

    @property
    def discrete(self) -> bool:
        """True when codes are integers (categorical, VQ, FSQ)."""
        return self.encoder in ("categorical", "vq", "fsq")

    @property
    def stochastic(self) -> bool:
        return self.code in _STOCHASTIC_CODES or (self.code == "argmax" and self.estimator != "st")


_PIXELS, _DIMS = 784, 16  # MNIST, at which the official weights are converted (see above)
_VAE_BETA = 0.312  # official VAE kl_weight, on a summed KL and a per-image squared error


def _from_official(beta: float) -> float:
    """beta on mean(z^2) with a per-pixel error -> beta on 0.5||z||^2 with a per-image error."""
    return beta * 2 * _PIXELS / _DIMS


def _lambda_from_official(lam: float) -> float:
    return lam * _PIXELS


# Discrete RAE: KL(q || uniform) is at most N log K nats (37 for 16 x 10), about the size of the
# RAE's 0.5||z||^2 at unit-scale codes; the RAE-L2 beta puts it at a few percent of the error.
_DRAE_BETA = 0.01

PRESETS: dict[str, Method] = {
    m.name: m
    for m in (
        # ---- continuous (Ghosh et al. 2020, Table 1) ----
        Method("ae", "deterministic", "identity", "none", "none", summary="plain autoencoder"),
        Method("vae", "gaussian", "reparameterize", "kl", "noise", beta=_VAE_BETA,
               summary="VAE (Kingma & Welling 2014); official KL weight 0.312"),
        Method("cv-vae", "deterministic", "fixed-noise", "kl", "noise", beta=0.039,
               summary="constant-variance VAE, sigma=0.7; official KL weight 0.039"),
        Method("rae", "deterministic", "identity", "l2", "none", beta=_from_official(0.5e-3),
               summary="RAE without decoder regularizer; official beta 0.5e-3"),
        Method("rae-l2", "deterministic", "identity", "l2", "l2", beta=_from_official(1e-4), lam=_lambda_from_official(1e-7),
               summary="RAE + L2 on decoder weights; official beta 1e-4, lambda 1e-7"),
        Method("rae-gp", "deterministic", "identity", "l2", "gp", beta=_from_official(1e-4), lam=_lambda_from_official(0.5e-7),
               summary="RAE + decoder gradient penalty; official beta 1e-4, lambda 0.5e-7"),
        Method("rae-sn", "deterministic", "identity", "l2", "sn", beta=_from_official(0.009),
               summary="RAE + spectral norm on the decoder; official beta 0.009"),
        Method("wae", "deterministic", "identity", "mmd", "none", beta=3e-2 * _PIXELS,
               summary="WAE-MMD, IMQ kernel (Tolstikhin et al. 2018); official weight 3e-2 on a per-pixel error"),
        # ---- discrete: the same reading carried to categorical codes ----
        Method("dae", "categorical", "argmax", "none", "none",
               summary="discrete AE: argmax code, straight-through, no regularizer"),
        Method("dvae", "categorical", "relaxed", "kl-uniform", "noise", beta=_VAE_BETA, anneal=True,
               summary="Gumbel-softmax VAE (Jang et al. 2017), KL to uniform, annealed tau; beta as vae"),
        Method("dvae-st", "categorical", "argmax", "kl-uniform", "noise", beta=_VAE_BETA, anneal=True,
               estimator="st-gumbel", summary="straight-through Gumbel-softmax VAE, annealed tau"),
        Method("drae", "categorical", "argmax", "kl-uniform", "none", beta=_DRAE_BETA,
               summary="discrete RAE: deterministic code + KL(q||uniform)"),
        Method("drae-noise", "categorical", "relaxed", "kl-uniform", "noise", beta=_DRAE_BETA, tau=1.0,
               summary="discrete CV-VAE: Gumbel perturbation at fixed tau as the decoder regularizer"),
        Method("drae-l2", "categorical", "argmax", "kl-uniform", "l2", beta=_DRAE_BETA, lam=_lambda_from_official(1e-7),
               summary="discrete RAE + L2 on decoder weights (lambda as rae-l2)"),
        Method("drae-gp", "categorical", "argmax", "kl-uniform", "gp", beta=_DRAE_BETA, lam=_lambda_from_official(0.5e-7),
               summary="discrete RAE + gradient penalty at the relaxed code (lambda as rae-gp)"),
        Method("drae-sn", "categorical", "argmax", "kl-uniform", "sn", beta=_DRAE_BETA,
               summary="discrete RAE + spectral norm on the decoder"),
        Method("vqvae", "vq", "nearest", "vq", "none", beta=1.0,
               summary="VQ-VAE (van den Oord et al. 2017): nearest codebook entry, commitment 0.25"),
        Method("fsq", "fsq", "round", "none", "none",
               summary="finite scalar quantization (Mentzer et al. 2023), levels 8-5-5-5"),
    )
}

VQ_COMMITMENT = 0.25  # van den Oord et al. (2017), Sec. 3.2


def names() -> list[str]:
    """Names of the presets, continuous first."""
    return list(PRESETS)


def get(name: str) -> Method:
    """The preset called ``name``; ConfigError listing the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"method={name!r} is unknown; choose one of {', '.join(PRESETS)}") from None


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


def code_spec(method: Method, config) -> CodeSpec:
    """Encoder/decoder widths for ``method`` under ``config`` (a TrainConfig)."""
    n = config.latent_dim
    if method.encoder == "deterministic":
        return CodeSpec(n, n, n, 0)
    if method.encoder == "gaussian":
        return CodeSpec(2 * n, n, n, 0)
    if method.encoder == "categorical":
        k = config.n_classes
        return CodeSpec(n * k, n * k, n, k)
    if method.encoder == "vq":
        return CodeSpec(n * config.code_dim, n * config.code_dim, n, config.n_classes)
    levels = config.fsq_levels
    return CodeSpec(n * len(levels), n * len(levels), n, int(math.prod(levels)))


def build_model(method: Method, config, image_shape) -> AutoEncoder:
    """The Flax AutoEncoder that ``method`` needs (spectral norm and codebook included)."""
    spec = code_spec(method, config)
    return AutoEncoder(
        arch=config.arch,
        image_shape=tuple(image_shape),
        encoder_out=spec.encoder_out,
        spectral_norm=method.decoder_reg == "sn",
        codebook_shape=(config.n_classes, config.code_dim) if method.encoder == "vq" else None,
    )


def temperature(method: Method, config, tau0: chex.Array, step: chex.Array) -> chex.Array:
    """Gumbel temperature at ``step``: annealed as Jang et al. (2017) or fixed at tau0."""
    if method.anneal:
        return relax.exponential_temperature(step, tau0, config.anneal_rate, config.tau_min)
    return tau0


def make_loss_fn(method: Method, config, model: AutoEncoder) -> Callable:
    """The training objective of ``method``:

        loss = L_rec(x, D(c)) + beta * L_z + lambda * L_reg

    with the code c from the method's code path. Returns
    ``loss_fn(params, batch_stats, key, x, hp, step) -> (loss, (batch_stats, metrics))``.
    """
    spec = code_spec(method, config)

    def loss_fn(params, batch_stats, key, x, hp: HParams, step):
        variables = {"params": params, "batch_stats": batch_stats}
        key_code, key_reg = jax.random.split(key)
        h, updates = model.apply(variables, x, True, method=AutoEncoder.encode, mutable=["batch_stats"])
        variables = {"params": params, "batch_stats": updates.get("batch_stats", batch_stats)}
        batch = x.shape[0]
        tau = temperature(method, config, hp.tau, step)
        metrics = {}

        # ---- code path and latent regularizer ----
        relaxed_code = None
        if method.encoder in ("deterministic", "gaussian"):
            if method.encoder == "gaussian":
                mean, log_var = jnp.split(h, 2, axis=-1)
                code = losses.reparameterize(key_code, mean, log_var)
            else:
                mean, log_var = h, jnp.full((), 2.0 * jnp.log(method.noise_std), h.dtype)
                code = mean
                if method.code == "fixed-noise":
                    code = losses.reparameterize(key_code, mean, log_var)
            latent = {
                "none": lambda: jnp.zeros((), h.dtype),
                "l2": lambda: losses.rae_latent_penalty(mean),
                "kl": lambda: losses.gaussian_kl(mean, log_var),
                "mmd": lambda: losses.imq_kernel_mmd(mean, jax.random.normal(key_reg, mean.shape, mean.dtype)),
            }[method.latent_reg]()
            decoder_in = code
        elif method.encoder == "categorical":
            logits = h.reshape((batch, spec.n_vars, spec.n_classes))
            if method.code == "relaxed":
                code = relax.gumbel_softmax(key_code, logits, tau, hard=False)
            else:
                code = relax.discrete_code(key_code, logits, method.estimator, tau, n_samples=config.gumbel_rao_samples)
            relaxed_code = jax.nn.softmax(logits / tau, axis=-1).reshape((batch, -1))
            latent = {
                "none": lambda: jnp.zeros((), h.dtype),
                "kl-uniform": lambda: jnp.mean(jnp.sum(relax.categorical_kl_uniform(logits), axis=-1)),
                "logit-l2": lambda: jnp.mean(0.5 * jnp.sum(jnp.square(h), axis=-1)),
            }[method.latent_reg]()
            decoder_in = code.reshape((batch, -1))
            metrics["tau"] = jnp.asarray(tau, h.dtype)
        elif method.encoder == "vq":
            z_e = h.reshape((batch, spec.n_vars, config.code_dim))
            codebook = params["codebook"]
            z_q, _, codebook_loss, commitment_loss = relax.vector_quantize(z_e, codebook)
            # Summed over an image's N vectors (each already summed over D), like the
            # reconstruction error is summed over its pixels; averaged over the batch.
            latent = jnp.mean(jnp.sum(codebook_loss + VQ_COMMITMENT * commitment_loss, axis=-1))
            decoder_in = z_q.reshape((batch, -1))
        else:  # fsq
            z = h.reshape((batch, spec.n_vars, len(config.fsq_levels)))
            z_q, _, _ = relax.finite_scalar_quantize(z, config.fsq_levels)
            latent = jnp.zeros((), h.dtype)
            decoder_in = z_q.reshape((batch, -1))

        # ---- decoder and decoder regularizer ----
        x_hat, updates = model.apply(variables, decoder_in, True, method=AutoEncoder.decode, mutable=["batch_stats"])
        new_batch_stats = updates.get("batch_stats", batch_stats)
        rec = losses.reconstruction_loss(x, x_hat)
        if method.decoder_reg == "l2":
            dec = losses.decoder_l2_penalty(params["decoder"])
        elif method.decoder_reg == "gp":
            point = relaxed_code if relaxed_code is not None else decoder_in

            def decode(c):
                # Batch statistics from this extra pass are discarded: the penalty must not
                # move the running averages twice per step.
                out, _ = model.apply(variables, c, True, method=AutoEncoder.decode, mutable=["batch_stats"])
                return out

            dec = losses.decoder_gradient_penalty(decode, point)
        else:
            dec = jnp.zeros((), h.dtype)

        total = rec + hp.beta * latent + hp.lam * dec
        metrics.update(loss=total, rec=rec, latent_reg=latent, decoder_reg=dec)
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


def make_codec(method: Method, config, model: AutoEncoder) -> Codec:
    """Deterministic encode/decode of ``method`` and its prior (Ghosh et al. 2020, Sec. 4)."""
    spec = code_spec(method, config)

    def features(variables, x):
        return model.apply(variables, x, False, method=AutoEncoder.encode)

    def to_images(variables, decoder_in):
        return model.apply(variables, decoder_in.reshape((decoder_in.shape[0], -1)), False, method=AutoEncoder.decode)

    if method.encoder in ("deterministic", "gaussian"):

        def encode(variables, x):
            h = features(variables, x)
            return jnp.split(h, 2, axis=-1)[0] if method.encoder == "gaussian" else h

        def decode(variables, z):
            return to_images(variables, z)

        def sample_prior(key, n):
            return jax.random.normal(key, (n, spec.n_vars))

    else:
        if method.encoder == "categorical":

            def encode(variables, x):
                logits = features(variables, x).reshape((x.shape[0], spec.n_vars, spec.n_classes))
                return jnp.argmax(logits, axis=-1).astype(jnp.int32)

            def decode(variables, codes):
                return to_images(variables, jax.nn.one_hot(codes, spec.n_classes))

        elif method.encoder == "vq":

            def encode(variables, x):
                z_e = features(variables, x).reshape((x.shape[0], spec.n_vars, config.code_dim))
                return relax.vector_quantize(z_e, variables["params"]["codebook"])[1].astype(jnp.int32)

            def decode(variables, codes):
                return to_images(variables, variables["params"]["codebook"][codes])

        else:

            def encode(variables, x):
                z = features(variables, x).reshape((x.shape[0], spec.n_vars, len(config.fsq_levels)))
                return relax.finite_scalar_quantize(z, config.fsq_levels)[2].astype(jnp.int32)

            def decode(variables, codes):
                return to_images(variables, relax.fsq_codes_from_index(codes, config.fsq_levels))

        def sample_prior(key, n):
            return jax.random.randint(key, (n, spec.n_vars), 0, spec.n_classes, dtype=jnp.int32)

    return Codec(encode, decode, sample_prior, method.discrete, spec.n_vars, spec.n_classes)
