"""``python -m requests_smartretry``: the same command as ``requests-smartretry``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
