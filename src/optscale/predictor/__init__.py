"""Prior predictor of OptScale^t: problem text -> prior (mu0, sigma0) on the problem's verifier-score
distribution (normal truncated to [0, 1]) plus the prior's spread (sd_mu, sd_sigma).

>>> from optscale.predictor import load_default
>>> priors = load_default().priors_for(["What is 1 + 1?"])   # float64 [P, 4]: mu0, sigma0, sd_mu, sd_sigma

Heavy dependencies (llama-cpp-python, torch) are imported only when embeddings are computed.
See docs/PREDICTOR.md for the method, the label conversion and the measured accuracy.
"""

from optscale.predictor.base import DEFAULT_WEIGHTS, Predictor, Priors, load_default, metrics

__all__ = ["Predictor", "Priors", "load_default", "metrics", "DEFAULT_WEIGHTS"]
