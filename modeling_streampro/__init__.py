"""StreamPro model, configuration and processor (also shipped verbatim as Hub remote code)."""
