"""Methods as rows of the grid, and the named presets.

Ghosh et al. (2020) read a VAE as an autoencoder with a latent regularizer (the KL term) and a
decoder regularizer (the noise of the reparameterization). A method here is therefore a row

    encoder      how the encoder's output is read (a key of :data:`jaxrae.grid.CODE_PATHS`:
                 ``deterministic``, ``gaussian``, ``categorical``, ``vq``, ``fsq``)
    code         how the code reaches the decoder, one of that code path's ``codes``:
                 ``identity``, ``fixed-noise`` (mu + sigma0*eps), ``reparameterize``
                 (mu + sigma*eps), ``argmax`` (one-hot with a gradient estimator), ``relaxed``
                 (Gumbel-softmax sample), ``nearest`` (VQ), ``round`` (FSQ)
    latent_reg   a key of :data:`jaxrae.grid.LATENT_REGS`: ``none``, ``l2`` (0.5||z||^2), ``kl``
                 (to N(0, I)), ``mmd`` (WAE), ``kl-uniform`` (log K - H(q)), ``logit-l2``
                 (0.5||logits||^2), ``vq`` (codebook + 0.25 * commitment)
    decoder_reg  a key of :data:`jaxrae.grid.DECODER_REGS`: ``none``, ``noise`` (the stochastic
                 code path is the regularizer), ``l2``, ``gp``, ``sn``

plus default weights beta (latent) and lambda (decoder), stated for images of ``weight_pixels``
pixels (see below; None: the same on every image size). A custom method is a new
:class:`Method` value; no class hierarchy. Which choices fit together is read from the registry
entries (:mod:`jaxrae.grid`), so a newly registered encoder kind or regularizer is a valid
choice here at once.

Continuous defaults are the official MNIST settings of Ghosh et al. (repository
``Regularized_autoencoders-RAE-``, ``configurations/config.py`` and the loss modules), converted
to this code's normalisation: the reconstruction error is the squared error summed over the
pixels of an image (the Gaussian log-likelihood up to constants, as in the official VAE loss),
the latent term is 0.5 * ||z||^2 summed over the d code dimensions (paper, Eq. 11), KL terms are
summed over dimensions. The official VAE/CV-VAE losses already use these sums, so their KL weights
carry over unchanged (0.312, 0.039) on every image size: the ELBO is a likelihood. The official
RAE/WAE losses average the reconstruction over the P pixels and the latent term over the d
dimensions, so multiplying their loss by P gives

    beta_here = beta_official * 2 * P / d,   lambda_here = lambda_official * P,

with d = 16 (the official MNIST latent size) and P the pixels per image of the data at hand,
P = H * W * C, the number of terms the reconstruction error sums over. The table below states
these weights at P = 784 (28x28 MNIST) and marks them ``weight_pixels=784``; for data with P
pixels per image a config resolves them (:meth:`Method.weights`,
:meth:`jaxrae.config.TrainConfig.for_images`, which training calls once the data is known) as

    w(P) = w_784 * (P / 784)      (= beta_official * 2 * P / d, or lambda_official * P),

so a preset keeps the official balance between its regularizers and the summed squared error on
any image size (8x8 digits: P = 64, weights 64/784 of the MNIST ones), and on 784-pixel data
the weights are exactly the stated ones (P / 784 = 1.0). A beta or lambda you set yourself is
taken as given and never rescaled (unless you state the size it is meant for:
``TrainConfig.weight_pixels``). The discrete presets have no published settings: KL-based ones
take the VAE's weight (unscaled, as the VAE's), RAE-like ones the matching continuous lambda, and
their beta (0.01, about rae-l2's 0.0098 at 784 pixels) is chosen on the same scale, so they are
stated at 784 pixels and scaled like the continuous RAEs; they are what the experiments study.
"""

from __future__ import annotations

import dataclasses

from jaxrae import grid, relax
from jaxrae.errors import invalid


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
    # pixels per image at which beta and lam are stated (scaled by P / weight_pixels on images of P
    # pixels: Method.weights); None: they mean the same on every image size (the VAE's KL weight)
    weight_pixels: int | None = None

    def __post_init__(self):
        where = f"(method {self.name!r})"
        for field, registry in (
            ("encoder", grid.CODE_PATHS),
            ("latent_reg", grid.LATENT_REGS),
            ("decoder_reg", grid.DECODER_REGS),
        ):
            value = getattr(self, field)
            if value not in registry:
                raise invalid(field, value, f"choose one of {', '.join(registry)} {where}")
        path = grid.CODE_PATHS[self.encoder]
        if self.code not in path.codes:
            raise invalid(
                "code", self.code, f"does not fit encoder={self.encoder!r} {where}; use one of {', '.join(path.codes)}"
            )
        fitting = grid.fitting_latent_regs(self.encoder)
        if self.latent_reg not in fitting:
            raise invalid(
                "latent_reg",
                self.latent_reg,
                f"does not fit encoder={self.encoder!r} {where}; use one of {', '.join(fitting)}",
            )
        if self.estimator not in relax.ESTIMATORS:
            raise invalid("estimator", self.estimator, f"choose one of {', '.join(relax.ESTIMATORS)} {where}")
        if grid.DECODER_REGS[self.decoder_reg].needs_stochastic_code and not self.stochastic:
            raise invalid(
                "decoder_reg",
                self.decoder_reg,
                f"needs a code that draws noise {where}; code={self.code!r} with estimator={self.estimator!r} draws none",
            )
        for field in ("beta", "lam"):
            if not getattr(self, field) >= 0:
                raise invalid(field, getattr(self, field), f"must be >= 0 {where}")
        for field in ("noise_std", "tau"):
            if not getattr(self, field) > 0:
                raise invalid(field, getattr(self, field), f"must be > 0 {where}")
        if self.weight_pixels is not None and not _is_count(self.weight_pixels):
            raise invalid("weight_pixels", self.weight_pixels, f"an integer >= 1, or None {where}")

    def weights(self, pixels: int) -> tuple[float, float]:
        """(beta, lam) for images of ``pixels`` values each (P = H * W * C).

        ``w(P) = w * (P / weight_pixels)`` for both weights when ``weight_pixels`` is set (the
        presets converted from Ghosh et al.'s per-pixel losses: see the module docstring), else
        ``(beta, lam)`` unchanged. At ``P == weight_pixels`` the factor is exactly 1.0, so the
        stated weights come back bit for bit.
        """
        if not _is_count(pixels):
            raise invalid("pixels", pixels, "the values per image, H * W * C: an integer >= 1")
        if self.weight_pixels is None:
            return float(self.beta), float(self.lam)
        scale = pixels / self.weight_pixels
        return float(self.beta) * scale, float(self.lam) * scale

    @property
    def discrete(self) -> bool:
        """True when codes are integers (categorical, VQ, FSQ)."""
        return grid.CODE_PATHS[self.encoder].discrete

    @property
    def stochastic(self) -> bool:
        """True when the code path draws noise (its code, or an argmax code's estimator)."""
        return grid.CODE_PATHS[self.encoder].stochastic(self.code, self.estimator)


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


_PIXELS, _DIMS = 784, 16  # MNIST, at which the official weights are converted and stated (see above)
_VAE_BETA = 0.312  # official VAE kl_weight, on a summed KL and a per-image squared error


def _from_official(beta: float) -> float:
    """beta on mean(z^2) with a per-pixel error -> beta on 0.5||z||^2 with a per-image error."""
    return beta * 2 * _PIXELS / _DIMS


def _lambda_from_official(lam: float) -> float:
    return lam * _PIXELS


# Discrete RAE: KL(q || uniform) is at most N log K nats (37 for 16 x 10), about the size of the
# RAE's 0.5||z||^2 at unit-scale codes; the RAE-L2 beta puts it at a few percent of the error.
_DRAE_BETA = 0.01

# The presets read as a table, one row of the grid per entry; the formatter leaves it as written.
# fmt: off
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
               weight_pixels=_PIXELS,
               summary="RAE without decoder regularizer; official beta 0.5e-3"),
        Method("rae-l2", "deterministic", "identity", "l2", "l2", beta=_from_official(1e-4), lam=_lambda_from_official(1e-7),
               weight_pixels=_PIXELS,
               summary="RAE + L2 on decoder weights; official beta 1e-4, lambda 1e-7"),
        Method("rae-gp", "deterministic", "identity", "l2", "gp", beta=_from_official(1e-4), lam=_lambda_from_official(0.5e-7),
               weight_pixels=_PIXELS,
               summary="RAE + decoder gradient penalty; official beta 1e-4, lambda 0.5e-7"),
        Method("rae-sn", "deterministic", "identity", "l2", "sn", beta=_from_official(0.009),
               weight_pixels=_PIXELS,
               summary="RAE + spectral norm on the decoder; official beta 0.009"),
        Method("wae", "deterministic", "identity", "mmd", "none", beta=3e-2 * _PIXELS,
               weight_pixels=_PIXELS,
               summary="WAE-MMD, IMQ kernel (Tolstikhin et al. 2018); official weight 3e-2 on a per-pixel error"),
        # ---- discrete: the same reading carried to categorical codes ----
        Method("dae", "categorical", "argmax", "none", "none",
               summary="discrete AE: argmax code, straight-through, no regularizer"),
        Method("dvae", "categorical", "relaxed", "kl-uniform", "noise", beta=_VAE_BETA, anneal=True,
               summary="Gumbel-softmax VAE (Jang et al. 2017), KL to uniform, annealed tau; beta as vae"),
        Method("dvae-st", "categorical", "argmax", "kl-uniform", "noise", beta=_VAE_BETA, anneal=True,
               estimator="st-gumbel", summary="straight-through Gumbel-softmax VAE, annealed tau"),
        Method("drae", "categorical", "argmax", "kl-uniform", "none", beta=_DRAE_BETA,
               weight_pixels=_PIXELS,
               summary="discrete RAE: deterministic code + KL(q||uniform)"),
        Method("drae-noise", "categorical", "relaxed", "kl-uniform", "noise", beta=_DRAE_BETA, tau=1.0,
               weight_pixels=_PIXELS,
               summary="discrete CV-VAE: Gumbel perturbation at fixed tau as the decoder regularizer"),
        Method("drae-l2", "categorical", "argmax", "kl-uniform", "l2", beta=_DRAE_BETA, lam=_lambda_from_official(1e-7),
               weight_pixels=_PIXELS,
               summary="discrete RAE + L2 on decoder weights (lambda as rae-l2)"),
        Method("drae-gp", "categorical", "argmax", "kl-uniform", "gp", beta=_DRAE_BETA, lam=_lambda_from_official(0.5e-7),
               weight_pixels=_PIXELS,
               summary="discrete RAE + gradient penalty at the relaxed code (lambda as rae-gp)"),
        Method("drae-sn", "categorical", "argmax", "kl-uniform", "sn", beta=_DRAE_BETA,
               weight_pixels=_PIXELS,
               summary="discrete RAE + spectral norm on the decoder"),
        Method("vqvae", "vq", "nearest", "vq", "none", beta=1.0,
               summary="VQ-VAE (van den Oord et al. 2017): nearest codebook entry, commitment 0.25"),
        Method("fsq", "fsq", "round", "none", "none",
               summary="finite scalar quantization (Mentzer et al. 2023), levels 8-5-5-5"),
    )
}
# fmt: on


def names() -> list[str]:
    """Names of the presets, continuous first."""
    return list(PRESETS)


def get(name: str) -> Method:
    """The preset called ``name``; ConfigError listing the presets otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise invalid("method", name, f"choose one of {', '.join(PRESETS)}") from None
