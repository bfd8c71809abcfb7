"""Recipes (ordered training sessions of one model) and `skyloom plan` (their cost and data plan)."""

from skyloom.recipes.recipe import Recipe, RecipeConfig, load_recipe

__all__ = ["Recipe", "RecipeConfig", "load_recipe"]
