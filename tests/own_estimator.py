"""A small scikit-learn-compatible classifier written outside mlcycle: L2-regularised logistic regression by Newton's
method in numpy. The charter declares it (development.estimators) to show that stage 03 takes any estimator."""
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class NewtonLogit(ClassifierMixin, BaseEstimator):
    "Binary logistic regression, `alpha` the L2 penalty, fitted by `steps` Newton steps."
    def __init__(self, alpha: float = 1.0, steps: int = 8):
        self.alpha, self.steps = alpha, steps

    def fit(self, X, y, sample_weight=None):
        X = np.asarray(X, float); self.classes_, t = np.unique(np.asarray(y), return_inverse=True)
        if len(self.classes_) != 2: raise ValueError(f'NewtonLogit is binary; got {len(self.classes_)} classes')
        Z = np.column_stack([np.ones(len(X)), X]); w = np.zeros(Z.shape[1])
        s = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, float)
        reg = np.r_[0.0, np.full(X.shape[1], self.alpha)]
        for _ in range(self.steps):
            p = 1 / (1 + np.exp(-Z @ w))
            H = (Z * (s * p * (1 - p))[:, None]).T @ Z + np.diag(reg)
            w -= np.linalg.solve(H, Z.T @ (s * (p - t)) + reg * w)
        self.coef_, self.n_features_in_ = w, X.shape[1]
        return self

    def predict_proba(self, X):
        p = 1 / (1 + np.exp(-(np.asarray(X, float) @ self.coef_[1:] + self.coef_[0])))
        return np.column_stack([1 - p, p])

    def predict(self, X): return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]
