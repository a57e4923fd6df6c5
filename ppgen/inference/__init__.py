"""The inference layer: fit, score and diagnose any ppgen model or Pyro program.

The posterior tools (``to_arviz``, ``run_nuts``, ``pareto_khat``, ``loo``, ``compare``) import
ArviZ and xarray, so they load on first use (PEP 562); the rest needs only torch and Pyro.
"""

from ppgen._lazy import lazy_exports
from ppgen.inference.anomaly import roc_auc
from ppgen.inference.diagnostics import (
    ELBOReport, ELBOTerms, GradientStats, elbo_report, elbo_terms, format_report, gradient_stats, plot_elbo_report,
)
from ppgen.inference.likelihood import LikelihoodResult, log_likelihood
from ppgen.inference.representation import linear_probe_accuracy
from ppgen.inference.fit import (
    ConvergenceWarning, DivergenceError, EarlyStopping, FitConfig, FitResult, NonFiniteLossError, Trainer,
    TrainState, fit,
)
from ppgen.inference.objectives import ELBO, MaximumLikelihood, Objective
from ppgen.inference.program import Inspection, ModelCheck, ModelCheckError, Program, check_model

__all__ = ["fit", "FitConfig", "FitResult", "Trainer", "TrainState", "EarlyStopping", "ConvergenceWarning",
           "NonFiniteLossError", "DivergenceError", "Program", "Inspection", "check_model", "ModelCheck",
           "ModelCheckError", "Objective", "ELBO", "MaximumLikelihood", "log_likelihood", "LikelihoodResult", "roc_auc",
           "to_arviz", "run_nuts", "pareto_khat", "ParetoKhat", "loo", "loo_approximate_posterior", "compare",
           "elbo_terms", "elbo_report", "ELBOTerms", "ELBOReport", "GradientStats", "gradient_stats",
           "format_report", "plot_elbo_report", "linear_probe_accuracy"]

__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(
    ["ParetoKhat", "compare", "loo", "loo_approximate_posterior", "pareto_khat", "run_nuts", "to_arviz"],
    "ppgen.inference.posterior"), ["posterior"])
