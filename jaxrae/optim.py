"""Adam with a per-run freeze that costs no second copy of the run's state.

jaxrae freezes a run whose step produced a non-finite loss or gradient (train.py). Written as
``jnp.where(alive, new_tree, old_tree)`` after an ordinary optax update, the freeze makes XLA
hold the old and the new parameters and moments at once: one extra copy of the whole state per
run, in every vmapped program (measured by benchmarks/scaling.py: 24.6 MiB per run instead of
16.6 for the MLP on Fashion-MNIST). Here the freeze is folded into the update's *scalar*
coefficients instead, so every leaf is one elementwise expression of its old value and XLA
updates it in place:

    frozen:  g -> 0,  beta_1, beta_2 -> 1,  lr -> 0   gives   m' = m, v' = v, p' = p  exactly.

Otherwise the arithmetic is optax's ``adam`` step for step (optax.tree.update_moment,
update_moment_per_elem_norm, bias_correction, then ``p + (-lr) * u``), and the state is optax's
own ``ScaleByAdamState``; tests/test_train.py checks it against
``optax.inject_hyperparams(optax.adam)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8


def adam_init(params: Any) -> optax.ScaleByAdamState:
    """Zero moments and count, as ``optax.scale_by_adam().init``."""
    return optax.scale_by_adam(ADAM_B1, ADAM_B2, ADAM_EPS).init(params)


def adam_step_or_freeze(params: Any, state: optax.ScaleByAdamState, grads: Any, lr: jax.Array,
                        apply: jax.Array) -> tuple[Any, optax.ScaleByAdamState]:
    """One Adam step (Kingma & Ba 2015, Algorithm 1) where ``apply`` is True, none where False.

    With t = count + 1:
        m_t = (1 - b1) g + b1 m,   v_t = (1 - b2) g^2 + b2 v,
        p_t = p + (-lr) * (m_t / (1 - b1^t)) / (sqrt(v_t / (1 - b2^t)) + eps).
    Where ``apply`` is False the gradient is replaced by 0, b1 and b2 by 1 and lr by 0, which
    returns params and moments bit for bit (the count stays too). Gradients may then be NaN or
    infinite: they are selected away before they touch the state.

    Args:
      params, grads: pytrees of the same structure.
      state: the ScaleByAdamState of ``adam_init``.
      lr: scalar learning rate (per run under vmap).
      apply: scalar bool.
    Returns:
      (new params, new state).
    """
    dtype = jnp.result_type(lr)
    b1 = jnp.where(apply, jnp.asarray(ADAM_B1, dtype), 1)
    b2 = jnp.where(apply, jnp.asarray(ADAM_B2, dtype), 1)
    step_size = jnp.where(apply, -lr, 0)
    grads = jax.tree.map(lambda g: jnp.where(apply, g, 0), grads)
    mu = optax.tree.update_moment(grads, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(grads, state.nu, b2, 2)
    # The bias correction always uses the real betas and a count >= 1, so it stays finite (and
    # the frozen update, 0 * finite, is exactly 0) even for a run frozen at its first step.
    count_inc = optax.safe_increment(state.count)
    mu_hat = optax.tree.bias_correction(mu, jnp.asarray(ADAM_B1, dtype), count_inc)
    nu_hat = optax.tree.bias_correction(nu, jnp.asarray(ADAM_B2, dtype), count_inc)
    new_params = jax.tree.map(
        lambda p, m, v: jnp.asarray(p + step_size * (m / (jnp.sqrt(v) + ADAM_EPS))).astype(p.dtype),
        params, mu_hat, nu_hat)
    new_state = optax.ScaleByAdamState(count=jnp.where(apply, count_inc, state.count), mu=mu, nu=nu)
    return new_params, new_state
