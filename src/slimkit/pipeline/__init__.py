"""Recipes and the runner."""
from .recipe import Finetune, Recipe, Stage, Step
from .runner import Result, check_needs, compress

__all__ = ["Finetune", "Recipe", "Stage", "Step", "Result", "check_needs", "compress"]
