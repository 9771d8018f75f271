"""``python -m adamtune`` runs the command-line interface."""

from adamtune.cli.main import main

if __name__ == "__main__":
    main()
