"""napari-conch: CONCH zero-shot pathology on whole-slide images, in napari and from Python.

The public names are listed once, in ``__init__.pyi``, and imported on first use
(scikit-image's lazy_loader), so ``import napari_conch`` stays cheap for napari's plugin
discovery, command-line start-up and dask workers.
"""

import logging

import lazy_loader

__version__ = "0.1.0.dev0"

# Library code logs; applications decide where logs go.
logging.getLogger(__name__).addHandler(logging.NullHandler())

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
__all__ = [*__all__, "__version__"]
