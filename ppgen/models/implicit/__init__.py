"""Implicit stories: a sampler x = G(z) and no density."""

from ppgen.models.implicit.gan import GAN, LOSSES, AdversarialObjective

__all__ = ["GAN", "AdversarialObjective", "LOSSES"]
