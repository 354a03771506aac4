"""Optimizers as optax transformations that freeze a run in place, chosen by name.

jaxrae freezes a run whose step produced a non-finite loss or gradient (train.py). Written as
``jnp.where(alive, new_tree, old_tree)`` after an ordinary optax update, the freeze makes XLA
hold the old and the new parameters and moments at once: one extra copy of the whole state per
run, in every vmapped program (measured by benchmarks/scaling.py: 24.6 MiB per run instead of
16.6 for the MLP on Fashion-MNIST). Here the freeze is folded into the update's *scalar*
coefficients instead, so every leaf is one elementwise expression of its old value and XLA
updates it in place:

    frozen:  g -> 0,  beta_1, beta_2 -> 1,  lr -> 0   gives   m' = m, v' = v, update = 0 exactly.

Each optimizer is an ``optax.GradientTransformationExtraArgs`` whose ``update`` takes two extra
keyword arguments, ``alive`` (scalar bool: apply the step) and ``learning_rate`` (scalar, per
run under vmap, so a sweep over it is one program). It therefore chains with optax:
``optax.chain(optax.clip_by_global_norm(1.0), freezing_adam())`` passes both arguments through
to the freezing transformation and leaves the clipping as it is. A frozen step returns the
chain's state bit for bit when the transformations before the freezing one are stateless
(clipping, scaling); a stateful one (a schedule's count) would advance on a frozen step.
The updates are applied with ``optax.apply_updates`` (p + u; p + 0 is p).

:data:`OPTIMIZERS` maps the names a :class:`~jaxrae.config.TrainConfig` may give as
``optimizer`` to their transformations; :func:`make_optimizer` adds the clipping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8


def freezing_adam(
    b1: float = ADAM_B1, b2: float = ADAM_B2, eps: float = ADAM_EPS
) -> optax.GradientTransformationExtraArgs:
    """Adam (Kingma & Ba 2015, Algorithm 1) as updates, with no step where ``alive`` is False.

    With t = count + 1, ``update(g, state, params, alive=..., learning_rate=lr)`` gives
        m_t = (1 - b1) g + b1 m,   v_t = (1 - b2) g^2 + b2 v,
        u = (-lr) * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps),
    optax's ``adam`` step for step (``optax.tree.update_moment``,
    ``update_moment_per_elem_norm``, ``bias_correction``; the state is optax's own
    ``ScaleByAdamState``). Where ``alive`` is False the gradient is replaced by 0, b1 and b2 by 1
    and lr by 0: the moments and the count come back bit for bit and the update is exactly 0,
    even for NaN or infinite gradients (they are selected away before they touch the state).
    """

    def init(params: Any) -> optax.ScaleByAdamState:
        return optax.scale_by_adam(b1, b2, eps).init(params)

    def update(
        grads: Any,
        state: optax.ScaleByAdamState,
        params: Any = None,
        *,
        alive: jax.Array,
        learning_rate: jax.Array,
        **extra_args,
    ) -> tuple[Any, optax.ScaleByAdamState]:
        del params, extra_args
        dtype = jnp.result_type(learning_rate)
        b1_t = jnp.where(alive, jnp.asarray(b1, dtype), 1)
        b2_t = jnp.where(alive, jnp.asarray(b2, dtype), 1)
        step_size = jnp.where(alive, -learning_rate, 0)
        grads = jax.tree.map(lambda g: jnp.where(alive, g, 0), grads)
        mu = optax.tree.update_moment(grads, state.mu, b1_t, 1)
        nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2_t, 2)
        # The bias correction always uses the real betas and a count >= 1, so it stays finite (and
        # the frozen update, 0 * finite, is exactly 0) even for a run frozen at its first step.
        count_inc = optax.safe_increment(state.count)
        mu_hat = optax.tree.bias_correction(mu, jnp.asarray(b1, dtype), count_inc)
        nu_hat = optax.tree.bias_correction(nu, jnp.asarray(b2, dtype), count_inc)
        updates = jax.tree.map(lambda m, v: step_size * (m / (jnp.sqrt(v) + eps)), mu_hat, nu_hat)
        return updates, optax.ScaleByAdamState(count=jnp.where(alive, count_inc, state.count), mu=mu, nu=nu)

    return optax.GradientTransformationExtraArgs(init, update)


def freezing_sgd() -> optax.GradientTransformationExtraArgs:
    """Plain gradient descent, u = (-lr) * g (Robbins & Monro 1951), with u = 0 exactly where
    ``alive`` is False (NaN or infinite gradients included). Stateless."""

    def update(
        grads: Any,
        state: optax.EmptyState,
        params: Any = None,
        *,
        alive: jax.Array,
        learning_rate: jax.Array,
        **extra_args,
    ) -> tuple[Any, optax.EmptyState]:
        del params, extra_args
        step_size = jnp.where(alive, -learning_rate, 0)
        return jax.tree.map(lambda g: step_size * jnp.where(alive, g, 0), grads), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


#: name -> the freezing transformation it builds (TrainConfig.optimizer).
OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformationExtraArgs]] = {
    "adam": freezing_adam,
    "sgd": freezing_sgd,
}


def make_optimizer(name: str, max_grad_norm: float | None = None) -> optax.GradientTransformationExtraArgs:
    """The optimizer ``name`` of :data:`OPTIMIZERS`, after ``optax.clip_by_global_norm(max_grad_norm)``
    (g -> g * min(1, c / ||g||_2), Pascanu et al. 2013) when ``max_grad_norm`` is given.

    ``update(grads, state, params, alive=..., learning_rate=...)`` returns updates for
    ``optax.apply_updates``; a frozen step returns the state bit for bit and zero updates.
    """
    optimizer = OPTIMIZERS[name]()
    if max_grad_norm is None:
        return optimizer
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optimizer)


#: learning-rate schedules a TrainConfig may name as ``lr_schedule`` (see :func:`scheduled_learning_rate`).
SCHEDULES = ("constant", "cosine", "warmup-cosine", "exponential")


def scheduled_learning_rate(
    peak: jax.Array,
    step: jax.Array,
    *,
    schedule: str,
    steps: int,
    warmup_steps: int = 0,
    final_lr_fraction: float | None = None,
) -> jax.Array:
    """The learning rate of update ``step`` (0-based) for a run whose peak rate is ``peak``.

    With t = step, T = ``steps``, W = ``warmup_steps`` and f = ``final_lr_fraction``:

        constant:       lr_t = peak                     (``peak`` itself, bit for bit)
        cosine:         lr_t = peak * (f + (1 - f) * (1 + cos(pi * min(t, T) / T)) / 2)
        warmup-cosine:  lr_t = peak * t / W             for t < W, then the cosine from peak to
                        f * peak over the remaining T - W steps
        exponential:    lr_t = peak * f ** (t / T)      (f * peak after the last step)

    The cosine is SGDR's annealing (Loshchilov & Hutter 2017, Eq. 5) without restarts; all are
    optax's schedules (``cosine_decay_schedule``, ``warmup_cosine_decay_schedule`` from 0,
    ``exponential_decay``) evaluated at peak 1 and multiplied by ``peak``, so ``peak`` may be a
    traced per-run value and a sweep over the learning rate stays one vmapped program. The
    schedule reads only the step counter, so it composes with the divergence freeze: a frozen
    run's updates are 0 whatever the rate.
    """
    if schedule == "constant":
        return peak
    if schedule == "cosine":
        factor = optax.schedules.cosine_decay_schedule(1.0, decay_steps=steps, alpha=final_lr_fraction)
    elif schedule == "warmup-cosine":
        factor = optax.schedules.warmup_cosine_decay_schedule(
            0.0, 1.0, warmup_steps=warmup_steps, decay_steps=steps, end_value=final_lr_fraction
        )
    elif schedule == "exponential":
        factor = optax.schedules.exponential_decay(1.0, transition_steps=steps, decay_rate=final_lr_fraction)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; TrainConfig validates lr_schedule against SCHEDULES")
    return peak * jnp.asarray(factor(step), jnp.result_type(peak))
