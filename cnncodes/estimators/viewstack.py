"""ViewStack: each view of an image a training row (augmentation of codes), their mean to predict."""

from __future__ import annotations

import numpy as np
from scipy.sparse import issparse
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.utils import get_tags
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ..errors import InputTypeError, UsageError

__all__ = ["ViewStack"]


def _estimator_has(method):
    """Whether the wrapped estimator (fitted, else as given) has ``method``."""

    def check(self):
        inner = self.estimator_ if hasattr(self, "estimator_") else self.estimator
        getattr(inner, method)  # AttributeError: the method is not available
        return True

    return check


class ViewStack(MetaEstimatorMixin, BaseEstimator):
    """Train an estimator on every view's codes; predict from the mean of an image's views.

    The final step after :class:`~cnncodes.CNNCodes` with ``view_reduce="stack"``, whose codes
    have shape ``(n_images, n_views, n_features)``. ``fit`` makes each view a training row
    (``(n_images * n_views, n_features)``, every label and sample weight repeated per view:
    augmentation of the training codes); ``predict``, ``predict_proba``, ``decision_function``
    and ``score`` average each image's views first (test-time augmentation). 2-D input is taken
    as one view per image. Splits of a grid search are over images, so all the views of an
    image fall on the same side.

    Parameters
    ----------
    estimator : estimator
        What is trained on the rows, e.g. a classifier or a ``Pipeline`` of a scaler and one.

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone of ``estimator``.
    classes_ : ndarray
        The classes, where the estimator has them.
    n_views_ : int
        Views per image seen in fit.
    n_features_in_ : int
        Features per view.

    Examples
    --------
    >>> from sklearn.linear_model import LogisticRegression
    >>> X = np.array([[[0.0, 1.0], [0.2, 1.0]], [[1.0, 0.0], [1.0, 0.2]]])  # 2 images x 2 views
    >>> model = ViewStack(LogisticRegression()).fit(X, ["a", "b"])
    >>> model.predict(X).tolist(), model.classes_.tolist()
    (['a', 'b'], ['a', 'b'])
    """

    def __init__(self, estimator):
        self.estimator = estimator

    @staticmethod
    def _check_X(X):
        if issparse(X):
            raise InputTypeError(
                "ViewStack got a sparse matrix; it takes dense codes of shape (n_images, "
                "n_views, n_features) or (n_images, n_features): use X.toarray()"
            )
        X = np.asarray(X)
        if X.ndim == 2:
            return X[:, None, :]
        if X.ndim != 3:
            raise UsageError(
                f"ViewStack expects codes of shape (n_images, n_views, n_features) or "
                f"(n_images, n_features), got an array of shape {X.shape}. Reshape your data: "
                "X.reshape(-1, 1) for a single feature, X.reshape(1, -1) for a single image"
            )
        return X

    def fit(self, X, y, sample_weight=None, **fit_params):
        """Fit the estimator on every view of every image, labels repeated per view.

        Parameters
        ----------
        X : array of shape (n_images, n_views, n_features) or (n_images, n_features)
        y : array-like of shape (n_images,)
        sample_weight : array-like of shape (n_images,), optional
            Repeated per view, passed on to the estimator's fit.
        **fit_params :
            Passed on to the estimator's fit as they are.

        Returns
        -------
        self : ViewStack
        """
        X = self._check_X(X)
        n, views, features = X.shape
        y = np.asarray(y)
        if len(y) != n:
            raise UsageError(f"X has {n} images, but y has {len(y)} labels")
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight)
            if len(sample_weight) != n:
                raise UsageError(f"X has {n} images, but sample_weight has {len(sample_weight)}")
            fit_params["sample_weight"] = np.repeat(sample_weight, views)
        # Row k of the reshape is image k // views: labels repeated in the same order.
        self.estimator_ = clone(self.estimator).fit(
            X.reshape(n * views, features), np.repeat(y, views, axis=0), **fit_params
        )
        if hasattr(self.estimator_, "classes_"):
            self.classes_ = self.estimator_.classes_
        self.n_views_ = views
        self.n_features_in_ = features
        return self

    def _mean(self, X):
        check_is_fitted(self)
        X = self._check_X(X)
        if X.shape[2] != self.n_features_in_:
            raise UsageError(
                f"X has {X.shape[2]} features, but ViewStack is expecting "
                f"{self.n_features_in_} features as input (per view)"
            )
        return X.mean(axis=1) if X.shape[1] > 1 else X[:, 0]

    def predict(self, X):
        """The estimator's predictions for the mean of each image's views."""
        X = self._mean(X)  # first: it checks that this is fitted
        return self.estimator_.predict(X)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        """The estimator's class probabilities for the mean of each image's views."""
        X = self._mean(X)  # first: it checks that this is fitted
        return self.estimator_.predict_proba(X)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X):
        """The estimator's log probabilities for the mean of each image's views."""
        X = self._mean(X)  # first: it checks that this is fitted
        return self.estimator_.predict_log_proba(X)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X):
        """The estimator's decision values for the mean of each image's views."""
        X = self._mean(X)  # first: it checks that this is fitted
        return self.estimator_.decision_function(X)

    def score(self, X, y, sample_weight=None):
        """The estimator's score on the mean of each image's views."""
        X = self._mean(X)
        kwargs = {} if sample_weight is None else {"sample_weight": sample_weight}
        return self.estimator_.score(X, y, **kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.input_tags.three_d_array = True
        return tags
