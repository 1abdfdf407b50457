"""``python -m lfm_stream`` is the ``lfm`` command."""

from lfm_stream.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
