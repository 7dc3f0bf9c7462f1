"""mrdib: multimodal recommendation from raw Amazon reviews to evaluated models.

The package is organised in layers, each importing only the ones below it (docs/architecture.md):
data -> features -> graphs -> models -> evaluation -> training -> mrdib -> reporting -> workflow -> cli.
"""

__version__ = "0.1.0"
