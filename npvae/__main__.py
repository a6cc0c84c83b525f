"""``python -m npvae`` runs the ``npvae`` command."""

import sys

from .cli import main

sys.exit(main())
