"""ppgen: deep generative models as explicit Pyro programs, with one inference layer for all.

The names below are imported on first use (PEP 562), so ``import ppgen`` and ``ppgen --help``
do not pay for torch, Pyro or ArviZ until a model or an inference function is touched.
"""

from ppgen._lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "load_dataset": "ppgen.data",
    "compress": "ppgen.compression", "decompress": "ppgen.compression",
    "restore": "ppgen.inverse", "RestoreResult": "ppgen.inverse",
    **dict.fromkeys(["ConvergenceWarning", "DivergenceError", "NonFiniteLossError", "FitConfig", "FitResult", "LikelihoodResult", "ModelCheckError",
                     "Objective", "Program", "check_model", "fit", "log_likelihood", "elbo_report"],
                    "ppgen.inference"),
    "load_fitted": "ppgen.inference.checkpoint",
    "export_fitted": "ppgen.inference.checkpoint",
    **dict.fromkeys(["FVSBN", "MADE", "NADE", "PPCA", "VAE", "BayesianCPTs", "BayesNet", "BernoulliMixture",
                     "ConditionalVAE", "FactorAnalysis", "FullJointTable", "GaussianMixture", "GenerativeModel",
                     "IndependentBernoulli", "PixelCNN", "GreyPixelCNN", "RealNVP", "Glow", "MAF", "NSF", "VariationalDequantization", "FlowPriorVAE", "IAFVAE",
                     "GaussianDiffusion", "BinaryDiffusion", "RBM", "EBM", "GAN",
                     "CharNGram", "CharLSTM", "CharTransformer"],
                    "ppgen.models"),
}
__all__ = [
    "load_dataset", "compress", "decompress", "restore", "RestoreResult",
    "Program", "check_model", "ModelCheckError", "Objective",
    "fit", "load_fitted", "export_fitted", "FitConfig", "FitResult", "ConvergenceWarning", "DivergenceError", "NonFiniteLossError", "log_likelihood", "LikelihoodResult", "elbo_report",
    "GenerativeModel", "IndependentBernoulli", "FullJointTable", "BayesNet", "BayesianCPTs",
    "FVSBN", "NADE", "MADE", "PixelCNN", "GreyPixelCNN",
    "VAE", "ConditionalVAE", "BernoulliMixture", "GaussianMixture", "PPCA", "FactorAnalysis",
    "FlowPriorVAE", "IAFVAE",
    "RealNVP", "Glow", "MAF", "NSF", "VariationalDequantization",
    "GaussianDiffusion", "BinaryDiffusion",
    "RBM", "EBM", "GAN",
    "CharNGram", "CharLSTM", "CharTransformer",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, ["data", "models", "inference", "compression", "inverse", "plots", "cli"])
