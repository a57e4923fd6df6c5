"""Latent-variable models: p(x) = ∫ p(x | z) p(z) dz."""

from ppgen.models.latent.cvae import ConditionalVAE
from ppgen.models.latent.flow_vae import IAFVAE, FlowPriorVAE
from ppgen.models.latent.linear_gaussian import PPCA, FactorAnalysis
from ppgen.models.latent.mixture import BernoulliMixture, GaussianMixture
from ppgen.models.latent.vae import VAE

__all__ = ["VAE", "ConditionalVAE", "FlowPriorVAE", "IAFVAE", "BernoulliMixture", "GaussianMixture", "PPCA", "FactorAnalysis"]
