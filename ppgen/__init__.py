"""ppgen: deep generative models as explicit Pyro programs, with one inference layer for all."""

from ppgen.compression import compress, decompress
from ppgen.data import load_dataset
from ppgen.inference import (
    ConvergenceWarning, FitConfig, FitResult, LikelihoodResult, ModelCheckError, Objective, Program, check_model, fit,
    log_likelihood,
)
from ppgen.models import (
    FVSBN, MADE, NADE, PPCA, VAE, BayesianCPTs, BayesNet, BernoulliMixture, ConditionalVAE, FactorAnalysis,
    FullJointTable, GaussianMixture, GenerativeModel, IndependentBernoulli, PixelCNN,
)

__version__ = "0.1.0"
__all__ = [
    "load_dataset", "compress", "decompress",
    "Program", "check_model", "ModelCheckError", "Objective",
    "fit", "FitConfig", "FitResult", "ConvergenceWarning", "log_likelihood", "LikelihoodResult",
    "GenerativeModel", "IndependentBernoulli", "FullJointTable", "BayesNet", "BayesianCPTs",
    "FVSBN", "NADE", "MADE", "PixelCNN",
    "VAE", "ConditionalVAE", "BernoulliMixture", "GaussianMixture", "PPCA", "FactorAnalysis",
]
