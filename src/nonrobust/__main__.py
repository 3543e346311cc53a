"""``python -m nonrobust`` (also what ``torchrun -m nonrobust`` runs)."""

from .cli import main

raise SystemExit(main())
