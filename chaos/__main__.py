"""``python -m chaos``: see :mod:`chaos.runner`."""

from chaos.runner import main

raise SystemExit(main())
