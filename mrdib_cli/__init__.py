"""mrdib: multimodal recommendation from raw Amazon reviews to evaluated models.

The package is organised by pipeline stage (see docs/architecture.md):
data -> features -> graphs -> models (+ mrdib objectives) -> training -> evaluation -> reporting.
"""

__version__ = "0.1.0"
