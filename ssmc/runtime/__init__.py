"""Runtime: compiled models, kernel dispatch, argument checks."""
