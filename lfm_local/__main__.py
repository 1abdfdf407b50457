"""``python -m lfm_local`` is the ``lfm`` command."""

from lfm_local.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
