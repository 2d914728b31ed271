"""Allow ``python -m medseg_auto ...`` (also what ``torchrun -m medseg_auto`` runs)."""

from medseg_auto.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
