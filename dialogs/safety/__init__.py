"""The risk screen run on every client message before any dialog logic.

Layers: :mod:`dialogs.safety.lexicon` (fast, explainable rules). More layers
combine with it here; every caller uses :func:`assess` from this package.
"""

from dialogs.safety.lexicon import LEVELS, Level, RiskAssessment, Signal, assess, known_reasons

__all__ = ["LEVELS", "Level", "RiskAssessment", "Signal", "assess", "known_reasons"]
