"""`python -m pocketlm` runs the CLI."""

from pocketlm.cli.main import main

if __name__ == "__main__":  # guarded: spawned worker processes re-import this module
    raise SystemExit(main())
