"""Implicit stories: a sampler x = G(z) and no density."""

from ppgen.models.implicit.gan import DISCRIMINATOR_NORMS, GAN, LOSSES, AdversarialObjective

__all__ = ["GAN", "AdversarialObjective", "LOSSES", "DISCRIMINATOR_NORMS"]
