"""L2-regularised multinomial logistic regression fitted with L-BFGS (Kornblith et al.'s transfer probe).

Objective, for features x_i [D], labels y_i and parameters W [C, D], b [C]:
    L(W, b) = (1/n) sum_i CE(W x_i + b, y_i) + (lambda / 2) ||W||_F^2
(the bias is not penalised). scikit-learn's ``LogisticRegression`` minimises
    C sum_i CE(W x_i + b, y_i) + (1/2) ||W||_F^2,
which is n*C times L when C = 1 / (lambda * n): both have the same minimiser under that mapping
(``sklearn_C``). The strength lambda is chosen from 45 log-spaced values in [1e-5, 1e5] on a validation
split (Kornblith et al., 2019; VCReg Appendix C.1), by the score the test split is reported in (top-1 or
mean per-class accuracy, ``evaluation.metrics``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from evaluation.metrics import top1_accuracy
from evaluation.progress import progress_bar


def default_l2_grid() -> list[float]:
    """45 logarithmically spaced regularisation strengths from 1e-5 to 1e5."""
    return np.logspace(-5, 5, 45).tolist()


def sklearn_C(l2: float, num_samples: int) -> float:
    """scikit-learn's inverse regularisation C that has the same minimiser as ``l2`` on ``num_samples``."""
    return 1.0 / (l2 * num_samples)


@dataclass
class LogisticModel:
    weight: Tensor  # [C, D]
    bias: Tensor    # [C]

    def logits(self, features: Tensor) -> Tensor:
        return features.to(self.weight) @ self.weight.T + self.bias

    def predict(self, features: Tensor) -> Tensor:
        """The most likely class of each row, on the CPU."""
        return self.logits(features).argmax(dim=1).cpu()

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        return top1_accuracy(self.predict(features), labels)


def objective(model: LogisticModel, features: Tensor, labels: Tensor, l2: float) -> Tensor:
    """Mean cross-entropy plus (l2 / 2) ||W||^2 (see the module docstring)."""
    return F.cross_entropy(model.logits(features), labels) + 0.5 * l2 * model.weight.square().sum()


def fit_logistic_regression(features: Tensor, labels: Tensor, num_classes: int, l2: float,
                            max_iter: int = 1000, tolerance: float = 1e-7,
                            init: LogisticModel | None = None) -> LogisticModel:
    """Minimise the objective with full-batch L-BFGS (strong-Wolfe line search) on ``features``' device/dtype.

    ``init`` warm-starts from another solution (the previous strength along a regularisation path).
    """
    if features.ndim != 2 or labels.shape != (features.shape[0],):
        raise ValueError(f"logistic regression needs features [N, D] and labels [N]; got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    labels = labels.to(features.device, torch.long)
    if init is None:
        weight = torch.zeros(num_classes, features.shape[1], device=features.device, dtype=features.dtype)
        bias = torch.zeros(num_classes, device=features.device, dtype=features.dtype)
    else:
        weight, bias = init.weight.detach().clone(), init.bias.detach().clone()
    model = LogisticModel(weight.requires_grad_(), bias.requires_grad_())
    optimizer = torch.optim.LBFGS([model.weight, model.bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=tolerance, tolerance_change=tolerance * 1e-3,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = objective(model, features, labels, l2)
        loss.backward()
        return loss

    optimizer.step(closure)
    return LogisticModel(model.weight.detach(), model.bias.detach())


@dataclass
class SelectionResult:
    l2: float
    grid: list[float]        # the strengths tried, strongest first
    val_scores: list[float]  # the validation score of each
    model: LogisticModel     # refitted on train + validation


def select_and_refit(train_x: Tensor, train_y: Tensor, val_x: Tensor, val_y: Tensor, num_classes: int,
                     l2_grid: Sequence[float] | None = None, max_iter: int = 1000,
                     score: Callable[[Tensor, Tensor], float] = top1_accuracy,
                     progress: bool = False) -> SelectionResult:
    """Fit every strength on train (strongest first, each warm-started from the previous), keep the one with
    the best ``score(predictions, labels)`` on validation (ties go to the stronger regularisation), refit it
    on train + validation. ``progress`` shows a bar of the fits."""
    grid = sorted(l2_grid if l2_grid is not None else default_l2_grid(), reverse=True)
    scores, model = [], None
    bar = progress_bar(total=len(grid) + 1, desc="L-BFGS path", enabled=progress)
    for l2 in grid:
        model = fit_logistic_regression(train_x, train_y, num_classes, l2, max_iter=max_iter, init=model)
        scores.append(score(model.predict(val_x), val_y))
        bar.update(1)
    best = int(np.argmax(scores))
    refit = fit_logistic_regression(torch.cat([train_x, val_x]), torch.cat([train_y, val_y.to(train_y)]),
                                    num_classes, grid[best], max_iter=max_iter)
    bar.update(1)
    bar.close()
    return SelectionResult(l2=grid[best], grid=grid, val_scores=scores, model=refit)
