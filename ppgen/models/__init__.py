"""Generative stories, one file per family."""

from ppgen.models.base import GenerativeModel
from ppgen.models.independent import IndependentBernoulli
from ppgen.models.latent import VAE

__all__ = ["GenerativeModel", "IndependentBernoulli", "VAE"]
