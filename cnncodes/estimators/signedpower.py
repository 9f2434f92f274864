""":class:`SignedPower`: signed power normalisation of codes (Razavian et al. 2014)."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import FLOAT_DTYPES, check_is_fitted, validate_data

from ..errors import UsageError

__all__ = ["SignedPower"]


class SignedPower(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Signed power normalisation, element-wise: ``sign(x) * |x| ** alpha``.

    Razavian et al. (2014) improved linear SVMs on CNN codes with it (``alpha=0.5``, followed by
    L2 normalisation). ``alpha=1`` is the identity. Stateless; sparse input keeps its zeros.

    Parameters
    ----------
    alpha : float, default=0.5
        The exponent, > 0.

    Attributes
    ----------
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When fitted on a DataFrame with string column names.

    Examples
    --------
    >>> SignedPower(alpha=0.5).fit_transform([[4.0, -9.0], [0.0, 1.0]])
    array([[ 2., -3.],
           [ 0.,  1.]])
    """

    def __init__(self, alpha=0.5):
        self.alpha = alpha

    def _check_alpha(self):
        if (
            isinstance(self.alpha, bool)
            or not isinstance(self.alpha, numbers.Real)
            or not np.isfinite(self.alpha)
            or self.alpha <= 0
        ):
            raise UsageError(f"alpha={self.alpha!r}: expected a float > 0 (1.0 is the identity)")

    def fit(self, X, y=None):
        """Check ``alpha`` and record the number of features.

        Returns
        -------
        self : SignedPower
        """
        self._check_alpha()
        validate_data(self, X, accept_sparse=("csr", "csc"), dtype=FLOAT_DTYPES)
        return self

    def transform(self, X):
        """Apply ``sign(x) * |x| ** alpha`` to every value.

        Returns
        -------
        ndarray or sparse matrix of the same shape, floating point
        """
        check_is_fitted(self)
        X = validate_data(
            self, X, accept_sparse=("csr", "csc"), dtype=FLOAT_DTYPES, copy=True, reset=False
        )
        values = X.data if hasattr(X, "tocsr") else X
        np.multiply(np.sign(values), np.abs(values) ** self.alpha, out=values)
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.requires_fit = False
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
