"""jaxrae: regularized autoencoders in JAX."""
