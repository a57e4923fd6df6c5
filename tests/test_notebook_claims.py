"""Every number a tutorial's text quotes is a number its stored outputs show (issue 33).

Each claim is (quote, pattern): ``quote`` appears verbatim in one of the notebook's markdown cells and
starts with the number it checks; ``pattern`` is a regular expression with one group that must match
the stored output (stream text, text/plain or text/html) of one of its code cells, and the number it
captures must equal the quoted one to the quote's own precision (a quote of "-101.0" agrees with an
output of -100.99, "80%" with 80.5; signs are compared as written).
The notebooks are committed with the outputs of a full run, so this reads them and runs nothing.
"""

import json
import re
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NUMBER = re.compile(r"[-+−]?\d[\d,]*(?:\.\d+)?")


def _band_row(model: str, column: int) -> str:
    """Column ``column`` (0-6) of ``model``'s row of seven numbers in the autoregressive notebook's band-cost table."""
    cells = [r"\s+-?\d+\.\d+"] * 7
    cells[column] = r"\s+(-?\d+\.\d+)"
    return rf"(?m)^{model}" + "".join(cells) + "$"


def _restore_row(name: str, column: int) -> str:
    """Column ``column`` (0-3: MSE mean, MSE sample, diversity, max|Ax-y|) of ``name``'s row of the diffusion notebook's
    restore tables."""
    cells = [r"\s+\d\.\d{4}"] * 4
    cells[column] = r"\s+(\d\.\d{4})"
    return rf"(?m)^{re.escape(name)}\s.*?" + "".join(cells) + "$"


# notebook stem -> [(quote in a markdown cell, regex with one group over the code cells' outputs)]
CLAIMS: dict[str, list[tuple[str, str]]] = {
    "bayesian_networks": [
        ("0.3577, and the sprinkler", r"P\(rain \| wet = yes\): no [\d.]+, yes ([\d.]+)"),
        ("0.6467): that is", r"P\(sprinkler \| wet = yes\): off [\d.]+, on ([\d.]+)"),
        (r"1.73 \times 10^{16}$", r"alarm\s+full joint ([\d.]+)e\+16"),
        ("509 against 68", r"alarm\s+full joint \S+\s+BN (\d+)"),
        ("68: the graph", r"alarm\s+full joint \S+\s+BN \d+\s+factorised (\d+)"),
        ("255 of `FullJointTable(8)`", r"FullJointTable\(8\) parameters: (\d+)"),
        ("0.074 (200 rows)", r"n =\s+200 samples: .* ([\d.]+)"),
        ("0.026 (2,000 rows)", r"n =\s+2000 samples: .* ([\d.]+)"),
        ("0.016 at 20,000 rows", r"n =\s+20000 samples: .* ([\d.]+)"),
        ("-3.890 nats per row", r"objective (-[\d.]+) ->"),
        ("2.8-fold in the median", r"shrinks ([\d.]+)-fold"),
        ("5.18e-05 nats", r"smallest step of the objective ([\d.e-]+) nats"),
        ("0.0).", r"largest difference from the CPTs of fit_mle: ([\d.]+)"),
        ("-1.7169 against", r"EM on all \d+ rows\s+mean log p\(observed entries\) = (-[\d.]+)"),
        ("-1.7167 nats", r"generating network\s+mean log p\(observed entries\) = (-[\d.]+)"),
        ("311 complete rows", r"complete rows only \((\d+)\)"),
        ("-1.7378: EM", r"complete rows only \(\d+\)\s+mean log p\(observed entries\) = (-[\d.]+)"),
        ("-1.147 against", r"the held-out rows (-[\d.]+) nats"),
        ("-1.272 nats per row for the training rows", r"scores the training rows (-[\d.]+) and"),
        ("0.049. The largest", r"SVI and the exact posterior means: ([\d.]+)"),
    ],
    "posterior_diagnostics": [
        ("1.0040, the smallest", r"largest R-hat ([\d.]+)"),
        ("1512 of the 2,000 draws", r"smallest bulk or tail ESS (\d+)"),
        ("0.557 and NUTS", r"mean step size ([\d.]+)"),
        ("-0.4639 and -0.4661", r"auto_multivariate_normal\s+final ELBO\s+(-[\d.]+)"),
        ("-0.4661 nats per example", r"auto_iaf_normal\s+final ELBO\s+(-[\d.]+)"),
        ("-0.4910). The ELBO", r"auto_normal\s+final ELBO\s+(-[\d.]+)"),
        ("1.17 for the mean-field guide", r"auto_normal\s+final ELBO.*k̂ = ([\d.]+)"),
        ("1.17, enter every", r"auto_normal\s+final ELBO.*k̂ = ([\d.]+)"),
        ("1.17) says", r"auto_normal\s+final ELBO.*k̂ = ([\d.]+)"),
        ("0.52 and 0.51 for the other two", r"auto_multivariate_normal\s+final ELBO.*k̂ = ([\d.]+)"),
        ("0.52), and all", r"auto_multivariate_normal\s+final ELBO.*k̂ = ([\d.]+)"),
        ("0.51 for the other two", r"auto_iaf_normal\s+final ELBO.*k̂ = ([\d.]+)"),
        ("0.05 of NUTS's", r"auto_normal\s+\|mean - NUTS\| / NUTS sd: ([\d.]+)"),
        ("0.52 of NUTS's, the full", r"auto_normal\s+\|mean - NUTS\| / NUTS sd: [\d.]+\s+sd / NUTS sd: ([\d.]+)"),
        ("0.98. The mean-field", r"auto_multivariate_normal\s+\|mean - NUTS\| / NUTS sd: [\d.]+\s+sd / NUTS sd: ([\d.]+)"),
        ("0.98. The mean-field", r"auto_iaf_normal\s+\|mean - NUTS\| / NUTS sd: [\d.]+\s+sd / NUTS sd: ([\d.]+)"),
        ("-127.28, every row", r"NUTS\s+elpd_loo\s+(-[\d.]+)"),
        ("0.36). The", r"NUTS\s+elpd_loo.*largest k̂ ([\d.]+)"),
        ("-127.30, every row below 0.7", r"auto_multivariate_normal\s+elpd_loo\s+(-[\d.]+)"),
        ("-127.29, with 2 rows", r"auto_iaf_normal\s+elpd_loo\s+(-[\d.]+)"),
        ("2 rows just above", r"auto_iaf_normal\s+elpd_loo.*k̂ > [\d.]+:\s+(\d+) of"),
        ("-121.53, six nats", r"auto_normal\s+elpd_loo\s+(-[\d.]+)"),
        ("300 of its rows", r"auto_normal\s+elpd_loo.*k̂ > [\d.]+:\s+(\d+) of 300"),
        ("1.0 for the other three", r"(?m)^NUTS\s+1\s+\S+\s+\S+\s+([\d.]+)"),
        ("0.2167 for the mean-field guide", r"(?m)^\s+auto_normal\s+(0\.\d+)$"),
        ("0.2278 for NUTS", r"(?m)^\s+NUTS\s+(0\.\d+)$"),
        ("39 rows predicted below 0.09", r"(\d+) rows predicted 0\.01 to 0\.09"),
        ("59 predicted 0.83 to 0.96", r"(\d+) rows predicted 0\.83 to 0\.96"),
        ("0.98 of the time)", r"rows predicted 0\.83 to 0\.96: ([\d.]+) of them"),
        ("50 rows predicted", r"(\d+) rows predicted 0\.09 to 0\.27"),
        ("0.06 of the time", r"rows predicted 0\.09 to 0\.27: ([\d.]+) of them"),
        ("14 and 31", r"(\d+) rows predicted 0\.38 to 0\.45"),
        ("0.64 of the time", r"rows predicted 0\.38 to 0\.45: ([\d.]+) of them"),
        ("0.331 and 0.323", r"naive Bayes\s+\[([\d.]+),"),
        ("0.323). Naive", r"logistic regression\s+\[([\d.]+),"),
        ("0.134 at 1,000 rows", r"naive Bayes\s+\[(?:[\d.]+, ){6}([\d.]+),"),
        ("0.144 on all", r"naive Bayes\s+\[(?:[\d.]+, ){7}([\d.]+)\]"),
        ("1,986): its", r"training rows \[(?:\d+, ){7}(\d+)\]"),
        ("0.056 on all rows", r"logistic regression\s+\[(?:[\d.]+, ){7}([\d.]+)\]"),
        ("0.228 against", r"'logistic regression \(NUTS\)': \{'validation error': ([\d.]+)"),
        ("0.261) and", r"'naive Bayes \(exact posterior\)': \{'validation error': ([\d.]+)"),
        ("-127.285 against", r"'logistic regression \(NUTS\)': \{'validation error': [\d.]+,\s+'elpd_loo of p\(y \| x\)': (-[\d.]+)"),
        ("-172.794)", r"'naive Bayes \(exact posterior\)': \{'validation error': [\d.]+,\s+'elpd_loo of p\(y \| x\)': (-[\d.]+)"),
        ("0.29 here", r"k̂ = ([\d.]+) \(good\)"),
        ("0.25 and 0.13", r"two Gaussians\s+elpd_loo.*largest k̂ ([\d.]+)"),
        ("0.13), so", r"one Gaussian\s+elpd_loo.*largest k̂ ([\d.]+)"),
        ("-257.22 against", r"two Gaussians\s+elpd_loo\s+(-[\d.]+)"),
        ("-304.43, by", r"one Gaussian\s+elpd_loo\s+(-[\d.]+)"),
        ("7.6).", r"(?m)^one Gaussian\s+-?[\d.]+\s+[\d.]+\s+-?[\d.]+\s+([\d.]+)"),
    ],
    "energy_models_and_gans": [
        ("0.501 nats at 10 temperatures", r"(?m)^ +10 temperatures: mean error .*spread \(sd\) ([\d.]+)"),
        ("0.448 at 30", r"(?m)^ +30 temperatures: mean error .*spread \(sd\) ([\d.]+)"),
        ("15 of 20 runs land below", r"(?m)^ +10 temperatures: mean error .*, (\d+) of 20 runs below"),
        ("15 of 20 runs land below", r"(?m)^ +30 temperatures: mean error .*, (\d+) of 20 runs below"),
        ("0.280 ± 0.112 nats at 10", r"(?m)^ +10 temperatures: mean error -([\d.]+)"),
        ("0.177 ± 0.100 at 30", r"(?m)^ +30 temperatures: mean error -([\d.]+)"),
        ("0.073 ± 0.031 at 100", r"(?m)^ +100 temperatures: mean error -([\d.]+)"),
        ("+0.017 ± 0.011 at 300", r"(?m)^ +300 temperatures: mean error (\+[\d.]+)"),
        ("0.839 and 0.267 nats", r"(?m)^ +30 temperatures: RAISE -([\d.]+)"),
        ("0.267 nats (all 20", r"(?m)^ +100 temperatures: RAISE -([\d.]+)"),
        ("20 seeds low at both", r"(?m)^ +30 temperatures: RAISE .*\((\d+) of 20 low\)"),
        ("20 seeds low at both", r"(?m)^ +100 temperatures: RAISE .*\((\d+) of 20 low\)"),
        ("0.177 and 0.073. As", r"(?m)^ +30 temperatures: RAISE .*AIS \+([\d.]+)"),
        ("0.073. As", r"(?m)^ +100 temperatures: RAISE .*AIS \+([\d.]+)"),
        ("0.017 nats", r"(?m)^ +300 temperatures: RAISE .*AIS -([\d.]+)"),
        ("0.041 ± 0.015", r"(?m)^ +300 temperatures: RAISE -([\d.]+)"),
        ("-179.451 nats per image", r"log-likelihood (-[\d.]+) nats/example \(AIS"),
        ("-178.038 and AIS", r"bracket \[(-[\d.]+), "),
        ("-177.850: the bracket", r"bracket \[-[\d.]+, (-[\d.]+)\]"),
        ("0.87 of the samples", r"60 steps \(the trained sampler\) *: ([\d.]+) of the samples"),
        ("0.095 and 0.135 of them", r"60 steps \(the trained sampler\) .*per mode ([\d.]+) to"),
        ("0.135 of them", r"60 steps \(the trained sampler\) .*per mode [\d.]+ to ([\d.]+)"),
        ("0.95 within 0.3", r"600 steps *: ([\d.]+) of the samples"),
        ("0.092 and 0.147)", r"600 steps *: .*per mode ([\d.]+) to"),
        ("0.147)", r"600 steps *: .*per mode [\d.]+ to ([\d.]+)"),
        ("0.049 to 0.166", r"share of samples within 0\.5 of each mode: \[(?:[\d.]+, ){6}([\d.]+)"),
        ("0.166 (an even", r"share of samples within 0\.5 of each mode: \[(?:[\d.]+, ){5}([\d.]+)"),
        ("-107.57 nats by IWAE", r"(?m)^VAE +(-[\d.]+) "),
        ("-113.13, exact", r"(?m)^MADE +(-[\d.]+) "),
        ("-179.45) sits", r"(?m)^RBM \(PCD\) +(-[\d.]+) "),
        ("-178.0 below AIS", r"on the first 100 rows RAISE (-[\d.]+)"),
        ("-177.8, is in the right order", r"on the first 100 rows RAISE -[\d.]+, AIS (-[\d.]+)"),
        ("-420.68)", r"(?m)^GAN +(-[\d.]+) "),
        ("1.00: every", r"(?m)^GAN +(?:-?[\d.]+ +){6}([\d.]+) "),
        ("0.43) and MADE's", r"(?m)^VAE +(?:-?[\d.]+ +){5}([\d.]+) "),
        ("0.75); the RBM's", r"(?m)^MADE +(?:-?[\d.]+ +){4}([\d.]+) "),
        ("0.00), as the Gibbs", r"(?m)^RBM \(PCD\) +(?:-?[\d.]+ +){5}([\d.]+) "),
        ("-109.68 against", r"(?m)^VAE decoder +(-[\d.]+) "),
        ("-109.86; both", r"IWAE on those rows (-[\d.]+)"),
    ],
    "normalizing_flows": [
        ("2.532 bits/dim after training", r"test: -[\d.]+ nats per image \(a lower bound on log P\(x\)\), ([\d.]+) bits/dim"),
        ("0.044 of their pixels", r"T = 1\.00: ([\d.]+) above half intensity"),
        ("0.125 in the test digits", r"test digits: ([\d.]+) of the pixels above half intensity"),
        ("0.016 at", r"T = 0\.85: ([\d.]+) above half intensity"),
        ("0.002 at $T = 0.7$", r"T = 0\.70: ([\d.]+) above half intensity"),
        ("0.09; so the grid", r"T = 0\.50: [\d.]+ above half intensity, brightest pixel ([\d.]+)"),
        ("0.02: the base's peak", r"T = 0\.00: [\d.]+ above half intensity, brightest pixel ([\d.]+)"),
        ("23.5 to 25.2", r"([\d.]+)(?=[^\n]*\(sqrt\(784\) = 28\))"),
        ("25.2, near", r"([\d.]+)(?=[^\n]*\(sqrt\(784\) = 28\))"),
        ("18.3 in the middle", r"straight line: \[(?:[\d.]+ +){4}([\d.]+)"),
        ("24.7 and 25.2 and", r"great circle: +\[(?:[\d.]+ +){7}([\d.]+)\]"),
        ("25.2 and the images", r"great circle: +\[([\d.]+)"),
    ],
    "autoregressive_models": [
        ("10,000 training digits", r"train: \((\d+), 784\)"),
        ("3.90, NADE", r"(?m)^FVSBN\s.*still gaining (\S+) nats/epoch"),
        ("3.03 and MADE", r"(?m)^NADE\s.*still gaining (\S+) nats/epoch"),
        ("3.15 nats an epoch", r"(?m)^MADE\s.*still gaining (\S+) nats/epoch"),
        ("0.20 nats an epoch at the end", r"(?m)^PixelCNN\s.*still gaining (\S+) nats/epoch"),
        ("204.97 nats)", r"(?m)^independent\s+(\S+)\s+0\.\d{4}$"),
        ("99.08 nats with", r"(?m)^PixelCNN\s+(\S+)\s+0\.\d{4}$"),
        ("119.33) ranks", r"(?m)^FVSBN\s+(\S+)\s+0\.\d{4}$"),
        ("120.90) and", r"(?m)^NADE\s+(\S+)\s+0\.\d{4}$"),
        ("120.90 in raster order", r"(?m)^NADE\s+(\S+)\s+0\.\d{4}$"),
        ("126.45), the", r"(?m)^MADE\s+(\S+)\s+0\.\d{4}$"),
        ("0.911 against", r"PixelCNN\s+ROC AUC clean vs corrupted: (\S+)"),
        *[("1.000 for the others", rf"{name}\s+ROC AUC clean vs corrupted: (\S+)")
          for name in ("FVSBN", "NADE", "MADE")],
        # the table of where the white band costs: s.d., total, row 1, rows 2-4, below, erased cost, erased AUC
        ("38.8 nats per digit", _band_row("PixelCNN", 1)),
        ("231 and 605", _band_row("NADE", 1)),
        ("605, while", _band_row("FVSBN", 1)),
        ("21.9 nats, so", _band_row("PixelCNN", 0)),
        ("22.7 nats for the first white row", _band_row("PixelCNN", 2)),
        ("22.7 of its 38.8 nats", _band_row("PixelCNN", 2)),
        ("38.8 nats)", _band_row("PixelCNN", 1)),
        ("4.9 nats for the next three rows", _band_row("PixelCNN", 3)),
        ("-5.4 and 4.2", _band_row("PixelCNN", 5)),
        ("4.2 nats), and", _band_row("MADE", 5)),
        ("0.419 to 0.534", _band_row("PixelCNN", 6)),
        ("0.534): PixelCNN", _band_row("MADE", 6)),
    ],
    "variational_autoencoders": [
        ("10,000 training digits", r"train: \((\d+), 784\)"),
        ("40 epochs for the VAE", r"FitResult\(VAE, \S+, \S+, (\d+) epochs"),
        ("0.26 nats an epoch", r"still rose by (\S+) nats per epoch"),
        ("-104.94 against", r"FitResult\(VAE, .* train (\S+), valid"),
        ("-110.94 at the end", r"FitResult\(VAE, .* valid (\S+) nats"),
        ("1.90 nats down", r"KL per dim, sorted\s+([\d.]+),"),
        ("22 dimensions hold", r"more than 0.1 nats of KL: (\d+) of"),
        ("26.04 of", r"holding (\S+) of the"),
        ("26.70 nats of KL", r"of the (\S+) nats; the other"),
        ("28 hold 0.66", r"the other (\d+) hold"),
        ("0.66 together", r"the other \d+ hold (\S+)"),
        ("50 of 50 as active", r"active units: (\d+) of 50"),
        ("84.93 nats)", r"reconstruction\s+-(\S+)\s+E_q"),
        ("26.70, and\n  the gap", r"KL\(z\)\s+(\S+)\s+analytic"),
        ("7.21 nats.", r"gap \(log p - ELBO\)\s+(\S+)"),
        ("1.825 against 1.431", r"meanfield K=5 .*\(\S+, ([\d.]+)\)"),
        ("1.431)", r"trace\s+K=5 .*\(\S+, ([\d.]+)\)"),
        ("0.702).", r"iwae\s+K=5 .*\(\S+, ([\d.]+)\)"),
        ("0.892 of the time", r"linear probe accuracy on 50-d codes: (\S+)"),
        ("-12.324 is 0.04", r"IWAE K=1\s+(\S+)"),
        ("-12.284, and the IWAE", r"exact log p\(x\): (\S+)"),
        ("-12.284) and the ELBO", r"exact log p\(x\): (\S+)"),
        ("-12.290 at", r"IWAE K=10\s+(\S+)"),
        ("-12.33\nwhatever", r"IWAE K=100\s+.*same draws\s+(\S+)\)"),
        ("0.98 of the validation digits", r"the classifier on the validation digits: (\S+) right"),
        ("0.978 of the validation labels", r"the classifier on the validation digits: (\S+) right"),
        ("0.87 of the samples", r"z_dim=2\s.*got c: (\S+) \("),
        ("0.66 for a 5", r"z_dim=2\s.*per class (?:\S+, ){5}(\S+),"),
        ("1.00 for an 8", r"z_dim=2\s.*per class (?:\S+, ){8}(\S+),"),
        ("0.40\nof the samples", r"z_dim=50\s.*got c: (\S+) \("),
        ("-101.71", r"CVAE \(z_dim=50\)\s+log p\(x \| y\)\s+(\S+),"),
        ("-104.75$ on the same digits", r"VAE \(z_dim=50\)\s+log p\(x\)\s+(\S+)"),
        ("1.76\nnats is the label's gain", r"CVAE \(z_dim=50\).* label gains (\S+) nats"),
        ("2.30 that a label", r"at most log 10 = (\S+)\)"),
        ("-103.47 against -104.75", r"CVAE \(z_dim=50\).* its own log p\(x\)\s+(\S+):"),
        ("0.857 of the validation digits", r"CVAE \(z_dim=50\).* right on (\S+)"),
        ("-137.59: two", r"CVAE \(z_dim=2 \)\s+log p\(x \| y\)\s+(\S+),"),
        ("0.46 nats (its class", r"CVAE \(z_dim=2 \).* label gains (\S+) nats"),
        ("0.901).", r"CVAE \(z_dim=2 \).* right on (\S+)"),
    ],
    "svi_by_hand": [
        ("1.9 minutes on one", r"this run: (\S+) minutes"),
        ("10,000\n  training digits", r"train \((\d+), 784\)"),
        ("16 seconds each", r"(\d+) s; the valid ELBO estimated"),
        ("-258.31 in the first epoch", r"epoch  1: train ELBO\s+(\S+),"),
        ("-122.30 in the tenth", r"epoch 10: train ELBO\s+(\S+),"),
        ("-123.92; the loop", r"epoch 10: train ELBO\s+\S+, valid ELBO\s+(\S+) nats"),
        ("16 s. The", r"(\d+) s; the valid ELBO estimated"),
        ("0.14 nats. That", r"estimated 10 times \(seeds 0-9\): mean \S+, sd (\S+)"),
        ("1,000 steps)", r"(?m)^FitResult\(model, trace, adam, 10 epochs / (\d+) steps"),
        ("-122.118 and a validation", r"(?m)^FitResult\(model, .* train (\S+), valid"),
        ("-123.705, in", r"(?m)^FitResult\(model, .* valid (\S+) nats"),
        ("15.6 s, about", r"(?m)^FitResult\(model, .*best epoch 10, (\S+) s on cpu"),
        ("16 s. And it warns", r"(\d+) s; the valid ELBO estimated"),
        ("3.25 nats an epoch over", r"ConvergenceWarning: fit model: the objective was still improving by (\S+) nats"),
        ("-123.92 and -123.86", r"(?m)^SVI by hand, seed 0\s+\S+\s+\S+\s+(\S+)\s+\S+$"),
        ("-123.86, a difference", r"(?m)^fit, seed 0\s+\S+\s+\S+\s+(\S+)\s+\S+$"),
        ("-0.06 nats, the size", r"hand - fit \(seed 0\), the mean of 10 evaluations: (\S+) nats"),
        ("0.06, from the spread", r"its Monte Carlo s\.e\. (\S+)\)"),
        ("0.14 of one estimate", r"estimated 10 times \(seeds 0-9\): mean \S+, sd (\S+)"),
        ("+0.24 nats from seed 0", r"seed 1 - seed 0 \(fit\), the same: (\S+) nats"),
        ("-1.65 in the second", r"SVI by hand, seed 0, valid ELBO minus fit's \(seed 0\) per epoch: \S+ (\S+)"),
        ("+1.71), and", r"fit, seed 1, valid ELBO minus fit's \(seed 0\) per epoch: \S+ (\S+)"),
        ("-0.22 for\nthe hand loop", r"SVI by hand, seed 0, valid ELBO minus fit's \(seed 0\) per epoch:(?: \S+){9} (\S+)"),
        ("+0.29 for seed 1", r"fit, seed 1, valid ELBO minus fit's \(seed 0\) per epoch:(?: \S+){9} (\S+)"),
        ("100 rows of the batch", r"data plate 'data' ranges over the (\d+) rows"),
        ("10,000/100) more", r"a minibatch of \d+ of (\d+) rows"),
        ("-2.21 nats per example", r"epoch 3: SVI's figure\s+(\S+),"),
        ("-209.26 as the intended", r"epoch 3: SVI's figure.*valid rows\s+(\S+) nats"),
        ("-205.82), which", r"no latent at all\), exact: (\S+) nats"),
        ("100 of 10,000 rows", r"a minibatch of (\d+) of \d+ rows"),
        ("3.25 nats an epoch (`fit`)", r"fit's training ELBO:\s+the objective was still improving by (\S+) nats"),
        ("3.22 (by hand)", r"the hand loop's, tested the same way: the objective was still improving by (\S+) nats"),
        ("6, step 500", r"resuming from \S+ at epoch (\d+), step"),
        ("500 (and says", r"resuming from \S+ at epoch \d+, step (\d+);"),
        ("5 to 10", r"changed: epochs (\d+) ->"),
        ("-122.118, valid -123.705, with", r"second call: FitResult\(.* train (\S+), valid"),
        ("-123.705, with the same", r"second call: FitResult\(.* valid (\S+) nats"),
        ("0.0). A hand loop", r"largest difference from the parameters of the run in one call: (\S+)"),
        ("1000$ the bound", r"IWAE K=(\d+):"),
        ("-118.661 nats per validation digit", r"log-likelihood (\S+) nats/example \(IWAE K=1000"),
        ("0.014), 5.20", r"IWAE K=1000: .*Monte Carlo s\.e\. (\S+)\)"),
        ("5.20 nats\nabove", r"the bound minus the ELBO of the same draws: (\S+) nats"),
        ("-123.858): that", r"IWAE K=1000: .* ELBO (\S+); s\.d\. over rows"),
        ("-122.118 and valid -123.705, and", r"ppgen\.VAE:\s+FitResult\(VAE, .* train (\S+), valid"),
        ("-123.705, and the same", r"ppgen\.VAE:\s+FitResult\(VAE, .* valid (\S+) nats"),
        ("0.0). The `fit(vae", r"largest difference between their trained parameters: (\S+)"),
    ],
    "what_is_a_generative_model": [
        ("80% of the validation patches", r"(?m)^\s+30 \|.*\| (\d+\.\d)%"),
        ("14%. From 100 to 3,000", r"(?m)^\s+10,000 \|.*\| (\d+\.\d)%"),
        ("-7.09 against -7.35", r"(?m)^\s+10,000 \|\s+(\S+) \|"),
        ("-7.35)", r"(?m)^\s+10,000 \|\s+\S+ \|\s+(\S+) \|"),
        ("-10.79 at 100", r"(?m)^\s+100 \|\s+\S+ \|\s+\S+ \|\s+(\S+) \|"),
        ("-10.74 at 10,000", r"(?m)^\s+10,000 \|\s+\S+ \|\s+\S+ \|\s+(\S+) \|"),
        ("-206 to", r"fully factorised\s+\|\s+784 \|\s+(\S+) \|"),
        ("-119), and", r"Bayesian network\s+\|\s+5,941 \|\s+(\S+) \|"),
        ("13 more", r"VAE minus Bayesian network: \+(\S+) nats"),
        ("-105.7)", r"VAE\s+\|\s+[\d,]+ \|\s+(\S+) \|"),
        ("85 parameters", r"Bayesian network (\d+), factorised"),
        ("0.854 against 0.838", r"16-d VAE codes\s+([\d.]+)"),
        ("0.838), though", r"784 raw pixels\s+([\d.]+)"),
        ("-10.08 to about", r"(?m)^\s+30 \|\s+(\S+) \|"),
    ],
    "language_models": [
        ("0.0109)", r"x_0 = '<start>'\) = (\S+)"),
        ("0.001299, is what", r"product of the conditionals: (\S+)"),
        ("4.790 bits/char on", r"(?m)^\s+1\s+1\s+1\s+\S+\s+\S+\s+(\S+)$"),
        ("2.327 bits/char)", r"(?m)^\s+6\s+[\d,]+\s+[\d,]+\s+\S+\s+(\S+)"),
        ("2.332)", r"(?m)^\s+7\s+[\d,]+\s+[\d,]+\s+\S+\s+(\S+)"),
        ("0.798 and keeps", r"'To be, or not to b': 'e' (\S+),"),
        ("84.2245 here)", r"log_prob\(row\): -(\S+) nats"),
        ("27.66 equally", r"(?m)^unigram\s+exact(?:\s+\S+){2}\s+(\S+)"),
        ("2.688 bits/char, perplexity", r"(?m)^LSTM\s+exact\s+\S+\s+(\S+)"),
        ("3.108, perplexity", r"(?m)^Transformer\s+exact\s+\S+\s+(\S+)"),
        ("1.76) than", r"6-gram\s+T=0.25: \S+\s+T=0.5: \S+\s+T=0.75: \S+\s+T=1.0: (\S+)"),
        ("1.36 bits/char)", r"T = 0.5, top_k = None: (\S+) bits/char"),
        ("1.31), and", r"top_k = 1: (\S+) bits/char"),
        ("5,781 bytes, 2.312", r"(?m)^6-gram\s+([\d,]+)\s"),
        ("2.482 bits/char and xz", r"(?m)bz2 -9\s+(\d\.\d+)\s*$"),
        ("1.03x. The", r"best generic / \S+: (\S+)x"),
        ("123 MB, hundreds", r"= (\d+) MB"),
        ("5.8 minutes on one", r"this run: (\S+) minutes"),
    ],
    "compression": [
        ("0.378: the ~90-byte header", r"(?m)^independent\s+(\S+)"),
        ("47 s in the", r"FitResult\(NADE, .* ([\d.]+) s on cpu\)"),
    ],
    "diffusion": [
        ("280,177 parameters", r"([\d,]+) parameters, all in the noise predictor"),
        ("279 s of it training", r"FitResult\(GaussianDiffusion, .* ([\d.]+) s on cpu\)"),
        ("2.65 and 4.27", r"t = 100: .* variance ([\d.]+) s\.e\."),
        ("4.27 standard errors", r"t =\s+1: .* variance ([\d.]+) s\.e\."),
        ("1488.0 ± 17.1", r"-ELBO = ([\d.]+) ± [\d.]+ nats per image"),
        ("17.1 nats per image", r"-ELBO = [\d.]+ ± ([\d.]+) nats per image"),
        ("2.738 bits/dim**", r"nats per image = ([\d.]+) bits/dim"),
        ("2.738 bits/dim is an *upper*", r"nats per image = ([\d.]+) bits/dim"),
        ("0.0110 nats: it has", r"L_T = ([\d.]+) nats"),
        (r"3.03 \times 10^{-5}", r"(?m)^linear: .*alpha_bar_T = ([\d.]+)e-05"),
        ("774.7 nats, and the decoder", r"sum of L_1..L_\(T-1\) = ([\d.]+) nats"),
        ("713.3 nats, almost half", r"L_0 = ([\d.]+) nats"),
        ("0.0 nats). One KL", r"nll_bound, 4 rows \(nats\): \[(-?[\d.]+)"),
        ("1.0471 nats)", r"by hand: ([\d.]+) nats"),
        ("1.0471 nats)", r"by hand: [\d.]+ nats; step_term: ([\d.]+)"),
        ("113.9 ± 1.0 nats", r"-ELBO = ([\d.]+) nats per image, [\d.]+ bits/dim"),
        ("1.0 nats per image (0.2096", r"ELBO: a lower bound on log p\(x\); Monte Carlo s\.e\. ([\d.]+)\)"),
        ("0.2096 bits/dim) on 1,000", r"-ELBO = [\d.]+ nats per image, ([\d.]+) bits/dim"),
        ("64 s). This", r"FitResult\(BinaryDiffusion, .* ([\d.]+) s on cpu\)"),
        ("83.7 s by the 200-step", r"ancestral, 200 steps\s*:\s*([\d.]+) s for"),
        ("16.1 s,", r"DDIM, 50 steps\s*:\s*([\d.]+) s for"),
        ("8.8 s and 4.4 s", r"DDIM, 20 steps\s*:\s*([\d.]+) s for"),
        ("4.4 s by DDIM", r"DDIM, 10 steps\s*:\s*([\d.]+) s for"),
        ("288, 296 and 319", r"DDIM, 50 steps .*KID = ([\d.]+)"),
        ("296 and 319", r"DDIM, 20 steps .*KID = ([\d.]+)"),
        ("319, against 299", r"DDIM, 10 steps .*KID = ([\d.]+)"),
        ("299 for the ancestral chain", r"ancestral, 200 steps .*KID = ([\d.]+)"),
        ("170 ± 30 against", r"KID = ([\d.]+) ± [\d.]+ \(real vs real\)"),
        ("30 against each other", r"KID = [\d.]+ ± ([\d.]+) \(real vs real\)"),
        ("0.0000). They differ", _restore_row("inpaint (bottom half hidden)", 3)),
        ("0.0660), and the mean", _restore_row("inpaint (bottom half hidden)", 2)),
        ("0.0283) is closer", _restore_row("inpaint (bottom half hidden)", 0)),
        ("0.0524), as averaging", _restore_row("inpaint (bottom half hidden)", 1)),
        ("0.0073 for the mean", _restore_row("super-resolution 14 -> 28", 0)),
        ("0.0104 for a sample", _restore_row("super-resolution 14 -> 28", 1)),
        ("0.0500 rather", _restore_row("super-resolution 14 -> 28", 3)),
        ("14.56% of pixels", r"outside \[0, 1\]: ([\d.]+)%"),
        ("0.050) and the sampler", r"largest excursion ([\d.]+)"),
        ("0.0045 (mean)", _restore_row("denoising, sigma = 0.2", 0)),
        ("0.0063 (sample)", _restore_row("denoising, sigma = 0.2", 1)),
        ("0.0402 for", r"MSE of the noisy measurement y itself: ([\d.]+)"),
        ("0.0215 for the measurement clipped", r"of y clipped to \[0, 1\]: ([\d.]+)"),
        ("0.0496 for the mean", _restore_row("BinaryDiffusion", 0)),
        ("0.0744 for a sample", _restore_row("BinaryDiffusion", 1)),
        ("0.0546\n    for the binary diffusion", _restore_row("BinaryDiffusion", 2)),
        ("0.0531 and 0.0703", _restore_row("VAE", 0)),
        ("0.0703.", _restore_row("VAE", 1)),
        ("0.0382 for the VAE", _restore_row("VAE", 2)),
        ("0.0628 and 0.1109", _restore_row("PixelCNN", 0)),
        ("0.1109, with", _restore_row("PixelCNN", 1)),
        ("0.1071, against", _restore_row("PixelCNN", 2)),
        ("0.2936), and each", _restore_row("exact posterior", 2)),
        ("0.3035, close", _restore_row("exact posterior", 1)),
        ("0.2957 = 0.1480", r"= ([\d.]+) \(the expected MSE of one exact sample\)"),
        ("0.1480 (the closed-form", r"MSE of the closed-form posterior mean: ([\d.]+);"),
        ("0.1477 (the mean posterior variance)", r"plus the mean posterior variance ([\d.]+) ="),
        ("0.1535, and is within", _restore_row("MSE regression", 0)),
        ("0.0048 of the exact", r"regression output vs the exact posterior mean, MSE: ([\d.]+)"),
        ("0.08$, against 0.49", r"(?m)^linear: .*alpha_bar at t = T/2: ([\d.]+)"),
        ("0.49 for the cosine", r"(?m)^cosine: .*alpha_bar at t = T/2: ([\d.]+)"),
    ],
    "write_your_own_model": [
        ("25,872 parameters) against", r"parameters: ([\d,]+) \(rank 16\)"),
        ("307,720)", r"and ([\d,]+) \(FVSBN\)"),
        ("16.4 nats for a twelfth", r"rank 16 gives up ([\d.]+) nats"),
        ("-1.524 nats per point", r"log-likelihood (-[\d.]+) nats/example \(exact\)"),
        ("-1.438 of the density", r"the density that drew the rows: (-[\d.]+) nats"),
        ("0.51 of its samples", r"within 0\.5 of some mode: ([\d.]+) of the samples"),
    ],
}


def _number(text: str) -> tuple[float, int]:
    match = NUMBER.match(text)
    assert match, f"{text!r} does not start with a number"
    digits = match.group().replace(",", "").replace("−", "-")
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits), decimals


def _cells(stem: str) -> tuple[list[str], list[str]]:
    notebook = json.loads((TUTORIALS / f"{stem}.ipynb").read_text())
    markdown, outputs = [], []
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            markdown.append("".join(cell["source"]))
        elif cell["cell_type"] == "code":
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                outputs.append("".join(out.get("text", "")) + "".join(data.get("text/plain", ""))
                               + "".join(data.get("text/html", "")))
    return markdown, outputs


@pytest.mark.parametrize("stem", sorted(CLAIMS))
def test_quoted_numbers_match_the_stored_outputs(stem):
    markdown, outputs = _cells(stem)
    for quote, pattern in CLAIMS[stem]:
        assert any(quote in cell for cell in markdown), f"{stem}: the text no longer quotes {quote!r}"
        shown = [m.group(1) for out in outputs for m in re.finditer(pattern, out)]
        assert shown, f"{stem}: no stored output matches {pattern!r} (quoted as {quote!r})"
        quoted, decimals = _number(quote)
        half_unit = 0.5 * 10.0 ** -decimals + 1e-9  # the quote rounds the output to its own decimals
        assert any(abs(_number(s)[0] - quoted) <= half_unit for s in shown), \
            f"{stem}: the text says {quote!r}, the outputs show {shown}"


def test_every_tutorial_has_its_claims_checked():
    tutorials = sorted(path.stem for path in TUTORIALS.glob("*.ipynb"))
    unchecked = [stem for stem in tutorials if not CLAIMS.get(stem)]
    assert tutorials and not unchecked, f"tutorials with no CLAIMS table (add one): {unchecked}"

