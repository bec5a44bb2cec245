"""``python -m introspect``."""

from .cli import main

raise SystemExit(main())
