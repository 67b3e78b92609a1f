"""``python -m thunder_serve``: the same as the ``thunder`` console script."""

from .cli import main

raise SystemExit(main())
