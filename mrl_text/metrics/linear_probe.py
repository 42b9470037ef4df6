"""The project's linear probe on frozen embeddings, shared by the classification evaluator and
`AdaptiveClassifier`'s per-size heads."""


def fit_linear_probe(features, labels, seed=0, max_iter=1_000):
    """A logistic regression (fixed seed) fitted on `features` `(n, dim)`; has `predict` and `predict_proba`."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=max_iter, random_state=seed).fit(features, labels)


__all__ = ["fit_linear_probe"]
