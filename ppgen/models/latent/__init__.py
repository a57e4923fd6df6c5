"""Latent-variable models: p(x) = ∫ p(x | z) p(z) dz."""

from ppgen.models.latent.vae import VAE

__all__ = ["VAE"]
