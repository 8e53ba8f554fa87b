"""``python -m napari_conch.cli``: the napari-conch command."""

import sys

from . import main

sys.exit(main())
