"""Analyses of a pretrained encoder that the papers report (clustering, head diversity, localization)."""

__all__: list[str] = []
