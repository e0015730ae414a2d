"""Analytic memory estimators: pure Python, no torch import (installed as `memprof.estimators`)."""

from .errors import MemprofUserError
from .vocabulary import CATEGORIES, PHASES, Category, Phase

__all__ = ["MemprofUserError", "CATEGORIES", "PHASES", "Category", "Phase"]
