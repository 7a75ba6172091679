"""The book's own machinery, kept apart from the solver core: a chapter imports it, a user of the solvers
need not.

* :mod:`.claims`      the claims ledger a chapter records its verdicts in, and ``glue`` for numbers in prose
* :mod:`.chapter`     the first call of every chapter: seeds, device, ledger
* :mod:`.experiments` error against NFE, fitted orders, NFE to a matched error, divergence counts
* :mod:`.metrics`     sample metrics (MMD and its noise floor, W2 between sample sets)
* :mod:`.gap`         the ODE-SDE gap of a learned score: paired samplers, residual statistics, the W2 bound
* :mod:`.digits_metrics` Frechet distance and accuracy in the features of the project's digits classifier
* :mod:`.dc`          chapter 10's guided targets and DC-Solver's shipped ratios (``python -m companion.lab.dc``)
* :mod:`.data`        sklearn's digits and generated 2-D data sets
* :mod:`.models`      the networks the project trains and ships (safetensors + cards)
* :mod:`.train`       ``python -m companion.lab.train``: the recipes that retrain them
* :mod:`.search`      ``python -m companion.lab.search``: S^3 solver search over ``usf`` plans (imported on use)
"""

from . import chapter, claims, data, digits_metrics, experiments, gap, metrics, models

__all__ = ["chapter", "claims", "data", "digits_metrics", "experiments", "gap", "metrics", "models"]
