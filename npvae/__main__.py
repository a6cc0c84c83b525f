"""``python -m npvae`` runs the ``npvae`` command."""

import sys

try:
    from .cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules are imported
    print("npvae: interrupted while starting", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
