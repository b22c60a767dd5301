"""Recipe files (YAML), importable as ``streampro.recipes`` so an installed ``streampro reproduce`` finds its own
(``recipes/reproduce/*.yaml``; see pyproject.toml's package-data)."""
