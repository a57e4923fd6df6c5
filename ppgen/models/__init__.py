"""Generative stories, one file per family."""

from ppgen.models.autoregressive import FVSBN, MADE, NADE, GreyPixelCNN, PixelCNN
from ppgen.models.base import GenerativeModel
from ppgen.models.bayesnet import BayesianCPTs, BayesNet, FullJointTable
from ppgen.models.classifiers import BayesianLogisticRegression, NaiveBayes
from ppgen.models.diffusion import BinaryDiffusion, GaussianDiffusion
from ppgen.models.energy import EBM, RBM
from ppgen.models.flows import MAF, NSF, Glow, RealNVP, VariationalDequantization
from ppgen.models.implicit import GAN
from ppgen.models.independent import IndependentBernoulli
from ppgen.models.sequence import CharLSTM, CharNGram, CharTransformer, SequenceModel
from ppgen.models.latent import (PPCA, VAE, BernoulliMixture, ConditionalVAE, FactorAnalysis, FlowPriorVAE,
                                 GaussianMixture, IAFVAE)

__all__ = [
    "GenerativeModel",
    "IndependentBernoulli", "FullJointTable",
    "BayesNet", "BayesianCPTs",
    "FVSBN", "NADE", "MADE", "PixelCNN", "GreyPixelCNN",
    "VAE", "ConditionalVAE", "FlowPriorVAE", "IAFVAE", "BernoulliMixture", "GaussianMixture", "PPCA", "FactorAnalysis",
    "NaiveBayes", "BayesianLogisticRegression",
    "RealNVP", "Glow", "MAF", "NSF", "VariationalDequantization",
    "GaussianDiffusion", "BinaryDiffusion",
    "RBM", "EBM", "GAN",
    "SequenceModel", "CharNGram", "CharLSTM", "CharTransformer",
]
