"""A user's own feature transformer, for the tests of derived features (issue 17): importable from tests/ as
`feature_helpers:StayShape`, with fitted state that skops stores as plain attributes."""
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class StayShape(TransformerMixin, BaseEstimator):
    "Weekend and week nights → (total nights relative to the training mean, times `scale`; weekend share of the stay)."
    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def fit(self, X, y=None):
        X = np.asarray(X, dtype='float64')
        self.mean_total_ = float(np.nanmean(X.sum(axis=1))) or 1.0
        return self

    def transform(self, X):
        X = np.asarray(X, dtype='float64')
        total = X.sum(axis=1)
        with np.errstate(invalid='ignore', divide='ignore'):
            share = np.where(total > 0, X[:, 0] / total, np.nan)
        return np.column_stack([self.scale * total / self.mean_total_, share])


class Unstorable(StayShape):
    "A transformer whose fitted state skops cannot store (a generator), so a model holding it could not be registered."
    def fit(self, X, y=None):
        super().fit(X)
        self.stream_ = (i for i in range(3))
        return self
